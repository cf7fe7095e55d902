//! What the lanes run: one unit of work per delivered message or fired timer.
//!
//! A [`Driver`] is the engine's view of a saga definition or a participant, with types erased:
//! it routes a delivery to a lane (by instance, so one instance never runs concurrently) and
//! processes a unit of work up to the commit. Acking after durability, relaying the outbox and
//! retrying on conflicts is the lane's job, the same for every driver.

use uuid::Uuid;

use super::Core;
use crate::message::{Codec, Envelope};
use crate::saga::{Decoded, RetryPolicy};
use crate::store::{Committed, TimerRecord};

/// The input of a unit of work.
pub(crate) enum Input {
    /// A delivered message, decoded by `route` where the driver needed it to pick a lane.
    Message {
        envelope: Envelope,
        decoded: Option<Decoded>,
        /// The correlation key, where the driver extracted one.
        key: String,
    },
    /// A fired durable timer.
    Timer(TimerRecord),
}

/// A delivery routed to a lane.
pub(crate) struct Routed {
    pub(crate) lane_key: Uuid,
    pub(crate) input: Input,
}

/// What a unit of work did.
pub(crate) enum Unit {
    /// It committed; ack after `committed.durable`, then relay the outbox.
    Committed {
        committed: Committed,
        follow_up: Option<TimerRecord>,
        /// Whether the commit scheduled timers (the timer task must look again).
        timers_added: bool,
    },
    /// Nothing to do (a duplicate, a message for a finished saga); ack once what was read is durable.
    Skipped(String),
}

/// Why a unit of work did not commit.
pub(crate) enum Failure {
    /// Someone else committed first: reload and run again.
    Conflict,
    /// Might work later: redeliver with backoff.
    Retry(String),
    /// Will never work: dead-letter with the reason.
    DeadLetter(String),
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict { .. } => Failure::Conflict,
            crate::store::StoreError::Corrupt { .. } | crate::store::StoreError::Encode { .. } => {
                Failure::DeadLetter(e.to_string())
            }
            other => Failure::Retry(other.to_string()),
        }
    }
}

#[async_trait::async_trait]
pub(crate) trait Driver: Send + Sync + 'static {
    /// The saga's or participant's name (for logs and spans).
    fn name(&self) -> &str;
    /// Whether this drives a saga (rather than a participant).
    fn is_saga(&self) -> bool {
        false
    }
    /// The bus subscription it consumes.
    fn subscription(&self) -> String;
    /// The message names it consumes.
    fn names(&self) -> Vec<&'static str>;
    /// Picks the lane for a delivery; `Err` is a dead-letter reason.
    fn route(&self, codec: &dyn Codec, envelope: &Envelope) -> Result<Routed, String>;
    /// Runs one unit of work up to its commit.
    async fn process(&self, core: &Core, lane_key: Uuid, input: &Input) -> Result<Unit, Failure>;
    /// How redeliveries after transient failures are spaced.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }
    /// The saga's Mermaid flowchart, for inspection.
    fn diagram(&self) -> Option<String> {
        None
    }
    /// The name of step `step`, for inspection.
    fn step_name(&self, _step: u32) -> Option<String> {
        None
    }
}
