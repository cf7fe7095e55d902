//! Given / when / then, for one saga instance (in the manner of Axon's saga fixture).

use std::marker::PhantomData;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{SagaTestHarness, SagaView, TestRuntime};
use crate::message::{Envelope, JsonCodec, Message};
use crate::saga::{Saga, instance_id};
use crate::store::SagaStatus;

type Action = Box<dyn for<'a> FnOnce(&'a TestRuntime) -> BoxFuture<'a, ()> + Send>;
type Check<S> = Box<dyn FnOnce(&TestRuntime, &SagaView<S>) -> Result<(), String> + Send>;

/// A scenario for the instance of saga `S` with correlation key `key`: messages given before,
/// one thing that happens, and what must hold after. Messages are correlated with the
/// instance, so replies can be given directly. Expectations on messages only see what the
/// `when` part caused. A failed expectation panics with the instance's timeline.
///
/// ```no_run
/// # async fn demo() {
/// # use saga_core::testing::{SagaTestHarness, Scenario};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Order; impl saga_core::saga::Saga for Order { const NAME: &'static str = "o"; fn definition() -> saga_core::saga::SagaDefinition<Self> { unimplemented!() } }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Submitted; impl saga_core::message::Message for Submitted { const NAME: &'static str = "s"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Failed; impl saga_core::message::Message for Failed { const NAME: &'static str = "f"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Release; impl saga_core::message::Message for Release { const NAME: &'static str = "r"; }
/// Scenario::<Order>::new(SagaTestHarness::new().saga::<Order>(), "42")
///     .given(Submitted)
///     .when(Failed)
///     .then_status(saga_core::store::SagaStatus::Compensating { step: 0 })
///     .then_sent(|_: &Release| true)
///     .run()
///     .await;
/// # }
/// ```
pub struct Scenario<S: Saga> {
    harness: SagaTestHarness,
    key: String,
    given: Vec<Action>,
    when: Vec<Action>,
    then: Vec<Check<S>>,
    _saga: PhantomData<fn() -> S>,
}

impl<S: Saga> Scenario<S> {
    /// A scenario on `harness` for the instance keyed `key`.
    pub fn new(harness: SagaTestHarness, key: &str) -> Self {
        Scenario {
            harness,
            key: key.to_owned(),
            given: Vec::new(),
            when: Vec::new(),
            then: Vec::new(),
            _saga: PhantomData,
        }
    }

    fn correlated<M: Message>(&self, message: &M) -> Envelope {
        let mut envelope = match Envelope::encode(&JsonCodec, message) {
            Ok(e) => e,
            Err(e) => panic!("{} does not encode: {e}", M::NAME),
        };
        envelope.correlation_id = Some(instance_id(S::NAME, &self.key));
        envelope
    }

    fn deliver<M: Message>(&self, message: &M) -> Action {
        let envelope = self.correlated(message);
        Box::new(move |h| Box::pin(async move { h.publish_envelope(envelope).await }))
    }

    /// A message that arrived before (the instance's past).
    pub fn given<M: Message>(mut self, message: M) -> Self {
        let action = self.deliver(&message);
        self.given.push(action);
        self
    }

    /// The message that arrives now.
    pub fn when<M: Message>(mut self, message: M) -> Self {
        let action = self.deliver(&message);
        self.when.push(action);
        self
    }

    /// Virtual time that passes now.
    pub fn when_time_passes(mut self, by: Duration) -> Self {
        self.when.push(Box::new(move |h| Box::pin(async move { h.advance(by).await })));
        self
    }

    /// The instance's status afterwards.
    pub fn then_status(mut self, expected: SagaStatus) -> Self {
        self.then.push(Box::new(move |_, view| {
            if view.status() == &expected { Ok(()) } else { Err(format!("expected status {expected:?}")) }
        }));
        self
    }

    /// A predicate on the state afterwards.
    pub fn then_state(mut self, what: &str, check: impl FnOnce(&S) -> bool + Send + 'static) -> Self {
        let what = what.to_owned();
        self.then.push(Box::new(move |_, view| {
            if check(&view.state()) { Ok(()) } else { Err(format!("expected the state to satisfy: {what}")) }
        }));
        self
    }

    /// A command of type `M` matching `check` was sent by the `when` part.
    pub fn then_sent<M: Message>(mut self, check: impl Fn(&M) -> bool + Send + 'static) -> Self {
        self.then.push(Box::new(move |h, _| {
            let sent = h.sent::<M>();
            if sent.iter().any(&check) {
                Ok(())
            } else {
                Err(format!("expected a matching {} to be sent; {} were sent", M::NAME, sent.len()))
            }
        }));
        self
    }

    /// No command of type `M` was sent by the `when` part.
    pub fn then_not_sent<M: Message>(mut self) -> Self {
        self.then.push(Box::new(move |h, _| {
            let sent = h.sent::<M>().len();
            if sent == 0 { Ok(()) } else { Err(format!("expected no {} to be sent; {sent} were", M::NAME)) }
        }));
        self
    }

    /// Runs the scenario; panics with the timeline on the first failed expectation.
    pub async fn run(self) -> TestRuntime {
        let h = self.harness.start().await;
        for action in self.given {
            action(&h).await;
            h.settle().await;
        }
        h.new_phase();
        for action in self.when {
            action(&h).await;
            h.settle().await;
        }
        let view = h.expect_saga::<S>(&self.key).await;
        for check in self.then {
            if let Err(failure) = check(&h, &view) {
                panic!("{failure}\n{}", view.dump());
            }
        }
        h
    }
}
