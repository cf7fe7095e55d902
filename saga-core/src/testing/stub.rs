//! Participant stubs: answer a command the way a test needs.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::HandlerError;
use crate::engine::{Handler, HandlerContext};
use crate::message::{Envelope, Message, Timestamp};

type ReplyFn = Box<dyn FnOnce(&mut HandlerContext) -> Result<(), HandlerError> + Send>;
type EnvelopeFn = Box<dyn FnOnce(&HandlerContext) -> Result<Envelope, HandlerError> + Send>;

/// How a stubbed participant answers one command.
///
/// ```
/// use saga_core::testing::Stub;
/// use saga_core::HandlerError;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Charged;
/// # impl saga_core::message::Message for Charged { const NAME: &'static str = "charged"; }
/// let _ok = Stub::reply(Charged);
/// let _slow = Stub::delayed(std::time::Duration::from_secs(40), Charged);
/// let _down = Stub::error(HandlerError::permanent("gateway gone"));
/// let _lost = Stub::silence();
/// ```
pub struct Stub(pub(crate) Answer);

pub(crate) enum Answer {
    Reply(ReplyFn),
    Delayed(Duration, EnvelopeFn),
    Error(HandlerError),
    Silence,
}

impl Stub {
    /// Reply with `message` (a success or a failure reply) right away.
    pub fn reply<M: Message>(message: M) -> Self {
        Stub(Answer::Reply(Box::new(move |ctx| ctx.reply(&message))))
    }

    /// Reply with `message` once virtual time has advanced by `after`.
    pub fn delayed<M: Message>(after: Duration, message: M) -> Self {
        Stub(Answer::Delayed(
            after,
            // Outside the commit: the harness publishes it when virtual time comes.
            Box::new(move |ctx| ctx.envelope(&message, u32::MAX)),
        ))
    }

    /// Fail the delivery (a transient error is redelivered, a permanent one dead-lettered).
    pub fn error(error: HandlerError) -> Self {
        Stub(Answer::Error(error))
    }

    /// Never answer (the saga's timeout decides).
    pub fn silence() -> Self {
        Stub(Answer::Silence)
    }
}

/// Replies the harness releases when virtual time reaches them.
pub(crate) type Delayed = Arc<Mutex<Vec<(Timestamp, Envelope)>>>;

pub(crate) struct StubHandler<C> {
    pub(crate) answer: Arc<dyn Fn(&C) -> Stub + Send + Sync>,
    pub(crate) delayed: Delayed,
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
    pub(crate) name: String,
    pub(crate) _command: PhantomData<fn(C)>,
}

impl<C> Clone for StubHandler<C> {
    fn clone(&self) -> Self {
        StubHandler {
            answer: self.answer.clone(),
            delayed: self.delayed.clone(),
            clock: self.clock.clone(),
            name: self.name.clone(),
            _command: PhantomData,
        }
    }
}

#[async_trait::async_trait]
impl<C: Message> Handler for StubHandler<C> {
    type Input = C;

    fn name(&self) -> &str {
        &self.name
    }

    fn retry_policy(&self) -> crate::saga::RetryPolicy {
        crate::saga::RetryPolicy::exponential(3, Duration::from_millis(1))
    }

    async fn handle(&self, command: C, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        match (self.answer)(&command).0 {
            Answer::Reply(reply) => reply(ctx),
            Answer::Delayed(after, envelope) => {
                let envelope = envelope(ctx)?;
                let due = self.clock.now().plus(after);
                self.delayed.lock().unwrap_or_else(|e| e.into_inner()).push((due, envelope));
                Ok(())
            }
            Answer::Error(e) => Err(e),
            Answer::Silence => Ok(()),
        }
    }
}
