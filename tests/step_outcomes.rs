//! What a step's attempts decide: which reply counts, what a timeout means for compensation,
//! the pivot's contract, late replies, and local code that panics.
//!
//! The participants are played by hand on their own subscription, so that each test decides
//! exactly which attempt is answered, how and when.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sagaflow::clock::ManualClock;
use sagaflow::message::{Envelope, Message, headers};
use sagaflow::prelude::*;
use sagaflow::store::HistoryEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

macro_rules! keyed_messages {
    ($($ty:ident => $name:literal),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        struct $ty { k: u32 }
        impl Message for $ty {
            const NAME: &'static str = $name;
            fn correlation_key(&self) -> Option<String> { Some(self.k.to_string()) }
        }
    )*};
}

keyed_messages! {
    Start => "outcomes.start",
    Reserve => "outcomes.reserve",
    Reserved => "outcomes.reserved",
    ReserveRefused => "outcomes.reserve-refused",
    Release => "outcomes.release",
    Released => "outcomes.released",
    Charge => "outcomes.charge",
    Charged => "outcomes.charged",
    ChargeRefused => "outcomes.charge-refused",
}

/// What every saga of this file keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    k: u32,
    reserved: bool,
    charged: bool,
}

/// The sagas below differ in their steps only; they share their state through this.
trait HasOrder: Saga + Default {
    fn order(&mut self) -> &mut Order;
    fn k(&self) -> u32;
    fn start(m: &Start) -> Self {
        let mut s = Self::default();
        s.order().k = m.k;
        s
    }
}

macro_rules! order_sagas {
    ($($ty:ident),*) => {$(
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        struct $ty(Order);
        impl HasOrder for $ty {
            fn order(&mut self) -> &mut Order { &mut self.0 }
            fn k(&self) -> u32 { self.0.k }
        }
    )*};
}

order_sagas!(Reservation, Purchase, BoundedPurchase);

/// Reserve: compensatable, 10 s timeout, three attempts 1 s apart.
fn reserve<S: HasOrder>() -> Step<S> {
    Step::send("reserve", |s: &S| Reserve { k: s.k() })
        .on_success(|s: &mut S, _: &Reserved| s.order().reserved = true)
        .on_failure(|_: &mut S, _: &ReserveRefused| {})
        .timeout(Duration::from_secs(10))
        .retry(RetryPolicy::exponential(3, Duration::from_secs(1)).without_jitter())
        .compensate_send(|s: &S| Release { k: s.k() })
        .on_compensated(|s: &mut S, _: &Released| s.order().reserved = false)
}

/// Charge: the pivot, 10 s timeout.
fn charge<S: HasOrder>() -> Step<S> {
    Step::send("charge", |s: &S| Charge { k: s.k() })
        .on_success(|s: &mut S, _: &Charged| s.order().charged = true)
        .on_failure(|_: &mut S, _: &ChargeRefused| {})
        .timeout(Duration::from_secs(10))
        .pivot()
}

impl Saga for Reservation {
    const NAME: &'static str = "outcomes.reservation";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new().start_with(Self::start).step(reserve())
    }
}

impl Saga for Purchase {
    const NAME: &'static str = "outcomes.purchase";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new().start_with(Self::start).step(reserve()).step(charge())
    }
}

impl Saga for BoundedPurchase {
    const NAME: &'static str = "outcomes.bounded-purchase";
    fn definition() -> SagaDefinition<Self> {
        let charge = charge().retry(RetryPolicy::exponential(3, Duration::from_secs(1)).without_jitter());
        SagaDefinition::new().start_with(Self::start).step(reserve()).step(charge)
    }
}

/// A runtime of saga `S` on virtual time, and the commands it sent to the participants, who
/// are played by the test (every command is taken, acked, and kept here in order).
struct World {
    runtime: SagaRuntime,
    clock: ManualClock,
    bus: InMemoryBus,
    commands: mpsc::UnboundedReceiver<Envelope>,
}

impl World {
    async fn start<S: Saga>() -> World {
        let clock = ManualClock::default();
        let bus = InMemoryBus::new();
        let mut services =
            bus.subscribe("outcomes.services", &[Reserve::NAME, Release::NAME, Charge::NAME]).await.unwrap();
        let (tx, commands) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(delivery) = services.next().await {
                let _ = tx.send(delivery.envelope().clone());
                delivery.ack().await.unwrap();
            }
        });
        let runtime = SagaRuntime::builder()
            .saga::<S>()
            .store(MemoryStore::new())
            .bus(bus.clone())
            .clock(clock.clone())
            .build()
            .await
            .unwrap();
        runtime.publish(&Start { k: 1 }).await.unwrap();
        runtime.settle().await;
        World { runtime, clock, bus, commands }
    }

    /// The next command the saga sent.
    async fn command(&mut self) -> Envelope {
        self.runtime.settle().await;
        self.commands.try_recv().expect("a command was sent")
    }

    /// The names of the commands sent and not looked at yet.
    async fn drain(&mut self) -> Vec<String> {
        self.runtime.settle().await;
        let mut names = Vec::new();
        while let Ok(e) = self.commands.try_recv() {
            names.push(e.name);
        }
        names
    }

    /// The participant answers `command` with `M`, as a sagaflow participant would.
    async fn answer<M: Message>(&self, command: &Envelope, reply: M) {
        let mut e = Envelope::encode(&sagaflow::message::JsonCodec, &reply).unwrap();
        e.correlation_id = command.correlation_id;
        e.causation_id = Some(command.message_id);
        self.bus.publish(e).await.unwrap();
        self.runtime.settle().await;
    }

    /// Answers the reservation and returns the pivot's first charge.
    async fn reserved(&mut self) -> Envelope {
        let reserve = self.command().await;
        self.answer(&reserve, Reserved { k: 1 }).await;
        self.command().await
    }

    /// Lets the first attempt time out and the retry start: returns the second attempt.
    async fn retried(&mut self) -> Envelope {
        self.wait(Duration::from_secs(11)).await;
        self.wait(Duration::from_secs(2)).await;
        self.command().await
    }

    /// Lets virtual time pass, firing what comes due.
    async fn wait(&self, by: Duration) {
        self.runtime.settle().await;
        self.clock.advance(by);
        self.runtime.fire_due_timers().await;
        self.runtime.settle().await;
    }

    async fn instance<S: Saga>(&self) -> SagaInstance {
        self.runtime.saga::<S>("1").await.unwrap().expect("the instance exists")
    }
}

#[tokio::test]
async fn a_failure_reply_to_an_earlier_attempt_is_ignored_and_the_current_attempt_decides() {
    let mut w = World::start::<Reservation>().await;
    let first = w.command().await;
    let second = w.retried().await; // attempt 1 times out: a retry in 1 s
    assert_eq!((first.name.as_str(), second.name.as_str()), (Reserve::NAME, Reserve::NAME));
    assert_ne!(first.message_id, second.message_id);
    assert_eq!(first.header(headers::IDEMPOTENCY_KEY), second.header(headers::IDEMPOTENCY_KEY));

    // Attempt 1 is refused late (out of stock back then); attempt 2 succeeds.
    w.answer(&first, ReserveRefused { k: 1 }).await;
    let instance = w.instance::<Reservation>().await;
    assert_eq!(instance.status(), &SagaStatus::Running { step: 0 }, "the stale refusal changed nothing");
    w.answer(&second, Reserved { k: 1 }).await;

    let instance = w.instance::<Reservation>().await;
    assert_eq!(instance.status(), &SagaStatus::Completed);
    assert!(instance.state::<Reservation>().unwrap().0.reserved);
    let history = w.runtime.history(instance.id(), usize::MAX).await.unwrap();
    assert!(
        history
            .iter()
            .flat_map(|h| &h.events)
            .any(|e| matches!(e, HistoryEvent::Ignored { reason } if reason.contains("answers an earlier attempt"))),
        "the stale reply is recorded as ignored"
    );
}

#[tokio::test]
async fn a_step_that_timed_out_before_it_gave_up_is_compensated_itself() {
    let mut w = World::start::<Reservation>().await;
    let _first = w.command().await;
    let second = w.retried().await;
    // Attempt 2 is refused, and the step gives up: attempt 1 may still have reserved.
    w.answer(&second, ReserveRefused { k: 1 }).await;
    let release = w.command().await;
    assert_eq!(release.name, Release::NAME, "the step's own compensation runs");
    w.answer(&release, Released { k: 1 }).await;
    assert_eq!(w.instance::<Reservation>().await.status(), &SagaStatus::Compensated);
}

#[tokio::test]
async fn a_step_refused_at_its_only_attempt_is_not_compensated_itself() {
    let mut w = World::start::<Reservation>().await;
    let first = w.command().await;
    w.answer(&first, ReserveRefused { k: 1 }).await;
    assert_eq!(w.instance::<Reservation>().await.status(), &SagaStatus::Compensated);
    assert_eq!(w.drain().await, Vec::<String>::new(), "nothing happened, so nothing is released");
}

#[tokio::test]
async fn a_pivot_that_times_out_is_sent_again_under_the_same_key_and_nothing_is_compensated() {
    let mut w = World::start::<Purchase>().await;
    let first = w.reserved().await;
    assert_eq!(first.name, Charge::NAME);
    let mut sent = vec![first.name];
    for _ in 0..6 {
        w.wait(Duration::from_secs(70)).await; // past the timeout and the longest backoff
        sent.extend(w.drain().await);
    }
    let instance = w.instance::<Purchase>().await;
    assert_eq!(instance.status(), &SagaStatus::Running { step: 1 }, "still waiting for a definitive answer");
    assert!(sent.len() >= 4, "the charge was sent {} times", sent.len());
    assert!(sent.iter().all(|name| name == Charge::NAME), "only charges were sent: {sent:?}");
    assert!(instance.state::<Purchase>().unwrap().0.reserved, "the stock stays reserved");
}

#[tokio::test]
async fn a_pivot_retried_after_a_timeout_keeps_its_idempotency_key_and_its_answer_counts() {
    let mut w = World::start::<Purchase>().await;
    let first = w.reserved().await;
    let second = w.retried().await;
    assert_eq!(second.name, Charge::NAME);
    assert_eq!(first.header(headers::IDEMPOTENCY_KEY), second.header(headers::IDEMPOTENCY_KEY));
    // The payment service deduplicates on the key: it answers the retry with the charge it made.
    w.answer(&second, Charged { k: 1 }).await;
    let instance = w.instance::<Purchase>().await;
    assert_eq!(instance.status(), &SagaStatus::Completed);
    assert!(instance.state::<Purchase>().unwrap().0.charged);
}

#[tokio::test]
async fn a_pivot_whose_bounded_retries_run_out_parks_the_instance_as_outcome_unknown() {
    let mut w = World::start::<BoundedPurchase>().await;
    let first = w.reserved().await;
    for _ in 0..5 {
        w.wait(Duration::from_secs(15)).await;
    }
    let instance = w.instance::<BoundedPurchase>().await;
    let SagaStatus::Failed { reason } = instance.status() else {
        panic!("expected the instance parked, it is {:?}", instance.status());
    };
    assert!(reason.starts_with("pivot outcome unknown"), "{reason}");
    let mut sent = vec![first.name];
    sent.extend(w.drain().await);
    assert_eq!(sent, [Charge::NAME; 3], "three charges and no release");
    assert!(instance.state::<BoundedPurchase>().unwrap().0.reserved, "nothing was compensated around it");
}

#[tokio::test]
async fn a_refused_pivot_is_compensated_around_even_after_a_timeout() {
    // A refusal under the pivot's idempotency key answers for every attempt.
    let mut w = World::start::<Purchase>().await;
    w.reserved().await;
    let second = w.retried().await;
    w.answer(&second, ChargeRefused { k: 1 }).await;
    let release = w.command().await;
    assert_eq!(release.name, Release::NAME);
    w.answer(&release, Released { k: 1 }).await;
    assert_eq!(w.instance::<Purchase>().await.status(), &SagaStatus::Compensated);
}

#[tokio::test]
async fn a_late_success_reply_for_a_parked_instance_is_recorded_in_its_history() {
    let mut w = World::start::<BoundedPurchase>().await;
    let first = w.reserved().await;
    for _ in 0..5 {
        w.wait(Duration::from_secs(15)).await;
    }
    let parked = w.instance::<BoundedPurchase>().await;
    assert!(matches!(parked.status(), SagaStatus::Failed { .. }));
    w.answer(&first, Charged { k: 1 }).await;

    let after = w.instance::<BoundedPurchase>().await;
    assert_eq!(after.status(), parked.status(), "the instance stays parked for its operator");
    let last = w.runtime.history(after.id(), usize::MAX).await.unwrap().pop().unwrap();
    assert_eq!(
        last.events,
        [HistoryEvent::LateReply { name: Charged::NAME.into(), success: true, status: StatusKind::Failed }]
    );
}

static PANICS: AtomicU32 = AtomicU32::new(0);

/// A local step whose code always panics, with a compensation that records it ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Panicky {
    k: u32,
    undone: bool,
}

impl Saga for Panicky {
    const NAME: &'static str = "outcomes.panicky";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new().start_with(|m: &Start| Panicky { k: m.k, undone: false }).step(
            Step::local("call_out", |_: Panicky, _| async move {
                PANICS.fetch_add(1, Ordering::SeqCst);
                panic!("the remote call blew up")
            })
            .retry(RetryPolicy::exponential(3, Duration::from_secs(1)).without_jitter())
            .compensate_local(|mut s: Panicky, _| async move {
                s.undone = true;
                Ok(s)
            }),
        )
    }
}

#[tokio::test]
async fn a_local_step_that_always_panics_fails_its_attempts_under_its_policy_and_is_compensated() {
    let clock = ManualClock::default();
    let runtime =
        SagaRuntime::builder().saga::<Panicky>().store(MemoryStore::new()).clock(clock.clone()).build().await.unwrap();
    runtime.publish(&Start { k: 1 }).await.unwrap();
    for _ in 0..5 {
        runtime.settle().await;
        clock.advance(Duration::from_secs(5));
        runtime.fire_due_timers().await;
    }
    runtime.settle().await;
    let instance = runtime.saga::<Panicky>("1").await.unwrap().unwrap();
    assert_eq!(instance.status(), &SagaStatus::Compensated);
    assert_eq!(PANICS.load(Ordering::SeqCst), 3, "three attempts, as the policy says");
    assert!(instance.state::<Panicky>().unwrap().undone, "it may have acted before it panicked: it is undone");
    let failures: Vec<String> = runtime
        .history(instance.id(), usize::MAX)
        .await
        .unwrap()
        .iter()
        .flat_map(|h| h.events.clone())
        .filter_map(|e| match e {
            HistoryEvent::StepFailed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 3);
    assert!(failures[0].contains("the remote call blew up"), "{failures:?}");
}
