//! Errors users meet: from their own handlers, and from the runtime.

use crate::bus::BusError;
use crate::message::CodecError;
use crate::store::StoreError;

/// What a participant or event handler reports when it cannot handle a message.
///
/// A `Transient` error is retried (redelivered with backoff) until the retry policy runs out,
/// then the message is dead-lettered; a `Permanent` one is dead-lettered at once. A business
/// refusal ("out of stock") is not an error: reply with a failure message instead.
///
/// ```
/// use saga_core::HandlerError;
/// let e = HandlerError::transient("payment gateway timed out");
/// assert!(e.is_transient());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed if tried again later.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Will never succeed for this message.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(reason: impl std::fmt::Display) -> Self {
        HandlerError::Transient(reason.to_string())
    }

    /// A failure not worth retrying.
    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(reason.to_string())
    }

    /// Whether a retry might help.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandlerError::Transient(_))
    }
}

/// Errors from the runtime's public operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A message or state could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The runtime was configured inconsistently.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// What an operator asked for does not exist (a parked outbox entry already replayed).
    #[error("{0} not found")]
    NotFound(String),
    /// An operator's action does not apply to the instance as it stands (see
    /// [`Admin::act`](crate::admin::Admin::act)); nothing was changed.
    #[error("cannot {action} instance {instance}: {reason}")]
    Refused {
        /// The action asked for.
        action: &'static str,
        /// The instance.
        instance: uuid::Uuid,
        /// Why it does not apply.
        reason: String,
    },
    /// A wait ([`SagaRuntime::wait_until_terminal`](crate::engine::SagaRuntime::wait_until_terminal)
    /// or [`wait_until_all_terminal`](crate::engine::SagaRuntime::wait_until_all_terminal)) ran out.
    #[error(
        "after waiting {waited:?}, {} saga instance(s) are not terminal{} and {in_flight} message(s) or unit(s) of \
         work are in flight; look at them with SagaRuntime::instance and SagaRuntime::history (a saga waiting on a \
         timer needs the clock to reach it)",
        .unfinished.len(),
        .unfinished.first().map(|id| format!(" (the first: {id})")).unwrap_or_default()
    )]
    TimedOut {
        /// How long the call waited.
        waited: std::time::Duration,
        /// Instances that were not terminal when it gave up (for a wait on all of them, at
        /// most 100).
        unfinished: Vec<uuid::Uuid>,
        /// Messages queued in this process and units of work running when it gave up.
        in_flight: usize,
    },
}
