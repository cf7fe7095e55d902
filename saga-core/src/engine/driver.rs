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
use crate::store::{Commit, Committed, QueueEntry, StoreError, TimerRecord};

/// The input of a unit of work.
pub(crate) enum Input {
    /// A delivered message, decoded by `route` where the driver needed it to pick a lane.
    Message {
        envelope: Envelope,
        decoded: Option<Decoded>,
        /// The correlation key, where the driver extracted one.
        key: String,
        /// Where it waits in a queue the store keeps (the local bus), set by the consumer.
        queue_entry: Option<QueueEntry>,
    },
    /// A fired durable timer.
    Timer(TimerRecord),
    /// An operator's action on the lane's instance (see [`crate::admin`]).
    Operator(std::sync::Arc<crate::admin::OperatorRequest>),
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

/// A computed commit that the store could not take, with what its unit returns once it does.
pub(crate) struct PendingCommit {
    pub(crate) commit: Commit,
    pub(crate) follow_up: Option<TimerRecord>,
    pub(crate) timers_added: bool,
}

/// Why a unit of work did not commit.
pub(crate) enum Failure {
    /// Someone else committed first: reload and run again.
    Conflict,
    /// The store is unavailable: run the unit again once it is back, without counting it
    /// against the message's retry policy (see `health`). With a commit, only that commit is
    /// tried again: the unit ran code with effects outside the store (a local step), which
    /// must not run again for every retry of an outage.
    Store(StoreError, Option<Box<PendingCommit>>),
    /// Might work later: redeliver with backoff, per the driver's retry policy.
    Retry(String),
    /// Will never work: dead-letter with the reason.
    DeadLetter(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => Failure::Conflict,
            e if e.is_unavailable() => Failure::Store(e, None),
            other => Failure::DeadLetter(other.to_string()),
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
    /// The saga's flowchart, for inspection.
    fn diagram(&self) -> Option<crate::saga::diagram::Diagram> {
        None
    }
    /// The name of step `step`, for inspection.
    fn step_name(&self, _step: u32) -> Option<String> {
        None
    }
    /// The commands it sends: (step, command name), to check at build time that something
    /// consumes each.
    fn sends(&self) -> Vec<(String, &'static str)> {
        Vec::new()
    }
    /// Parks the instance of a timer whose unit keeps failing (a timer cannot be
    /// dead-lettered, and refiring it would fail the same way).
    async fn park_timer(&self, _core: &Core, _timer: &TimerRecord, reason: String) -> Result<Unit, Failure> {
        Err(Failure::DeadLetter(reason))
    }
}
