//! What the store keeps: instances, timers, history and participant entities.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Timestamp;

/// Where a saga instance stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaStatus {
    /// Executing step `step` (0-based).
    Running {
        /// The current step.
        step: u32,
    },
    /// A step failed; undoing step `step` (compensations run in reverse step order).
    Compensating {
        /// The step being compensated.
        step: u32,
    },
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was compensated.
    Compensated,
    /// Parked for an operator: a compensation or a step after the pivot kept failing, a
    /// command could not be encoded, or the definition no longer has the instance's step.
    Failed {
        /// What went wrong.
        reason: String,
    },
    /// Stopped by an operator without compensating (see [`admin`](crate::admin)): what its
    /// steps did stays done.
    Cancelled {
        /// Who cancelled it and why.
        reason: String,
    },
}

impl SagaStatus {
    /// The status without its data, as indexed by the store.
    pub fn kind(&self) -> StatusKind {
        match self {
            SagaStatus::Running { .. } => StatusKind::Running,
            SagaStatus::Compensating { .. } => StatusKind::Compensating,
            SagaStatus::Completed => StatusKind::Completed,
            SagaStatus::Compensated => StatusKind::Compensated,
            SagaStatus::Failed { .. } => StatusKind::Failed,
            SagaStatus::Cancelled { .. } => StatusKind::Cancelled,
        }
    }

    /// Whether the instance will never move again on its own.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed { .. } | SagaStatus::Cancelled { .. }
        )
    }
}

/// [`SagaStatus`] without data: what the status index is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    /// See [`SagaStatus::Running`].
    Running,
    /// See [`SagaStatus::Compensating`].
    Compensating,
    /// See [`SagaStatus::Completed`].
    Completed,
    /// See [`SagaStatus::Compensated`].
    Compensated,
    /// See [`SagaStatus::Failed`].
    Failed,
    /// See [`SagaStatus::Cancelled`].
    Cancelled,
}

impl StatusKind {
    /// Every kind, in index order.
    pub const ALL: [StatusKind; 6] = [
        StatusKind::Running,
        StatusKind::Compensating,
        StatusKind::Completed,
        StatusKind::Compensated,
        StatusKind::Failed,
        StatusKind::Cancelled,
    ];

    /// Its name in lower case, as the admin API and the CLI write it (`failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Running => "running",
            StatusKind::Compensating => "compensating",
            StatusKind::Completed => "completed",
            StatusKind::Compensated => "compensated",
            StatusKind::Failed => "failed",
            StatusKind::Cancelled => "cancelled",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            StatusKind::Running => 1,
            StatusKind::Compensating => 2,
            StatusKind::Completed => 3,
            StatusKind::Compensated => 4,
            StatusKind::Failed => 5,
            StatusKind::Cancelled => 6,
        }
    }
}

impl std::fmt::Display for StatusKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is none of [`StatusKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown saga status {0:?}: running, compensating, completed, compensated, failed or cancelled")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for StatusKind {
    type Err = UnknownStatus;
    /// Parses [`StatusKind::as_str`]'s names, in any case.
    ///
    /// ```
    /// use saga_core::store::StatusKind;
    /// assert_eq!("Failed".parse::<StatusKind>().unwrap(), StatusKind::Failed);
    /// assert!("stuck".parse::<StatusKind>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StatusKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Whether an action or its compensation is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// The step's forward action.
    Action,
    /// The step's compensation.
    Compensation,
}

/// What the instance waits for before it can move on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaiting {
    /// The step.
    pub step: u32,
    /// Its action or its compensation.
    pub phase: Phase,
    /// 1 for the first try, then counting retries.
    pub attempt: u32,
    /// The timer that fires if nothing arrives (timeout, retry backoff or local run lease).
    pub timer: Option<TimerKey>,
    /// The id of the command the current attempt sent. A participant's reply carries it as
    /// its causation id, which is how a reply is matched to the attempt that caused it.
    /// `None` while no command is out for the current attempt (a local run, a retry wait).
    pub command: Option<Uuid>,
    /// Whether some attempt of this step and phase may have acted without saying so (no reply
    /// came in time, or its local code panicked). When the step gives up, its own compensation
    /// then runs too, and a pivot is parked instead of compensated around.
    pub outcome_unknown: bool,
}

/// One saga instance as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Instance id (derived from the saga name and the correlation key).
    pub id: Uuid,
    /// The saga definition's name.
    pub saga: String,
    /// The saga definition's version.
    pub saga_version: u32,
    /// The correlation key that started it.
    pub key: String,
    /// Where it stands.
    pub status: SagaStatus,
    /// Bumped by one on every commit; the optimistic concurrency check compares it.
    pub version: u64,
    /// The user's state, encoded by the runtime's codec.
    pub state: Vec<u8>,
    /// What it is waiting for, if anything.
    pub awaiting: Option<Awaiting>,
    /// Why it started compensating.
    pub failure: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerPurpose {
    /// No reply came in time for this attempt.
    Timeout {
        /// The step.
        step: u32,
        /// Action or compensation.
        phase: Phase,
        /// The attempt it guards.
        attempt: u32,
    },
    /// Time to try again.
    Retry {
        /// The step.
        step: u32,
        /// Action or compensation.
        phase: Phase,
        /// The attempt to make.
        attempt: u32,
    },
    /// Run a local step; if the process dies during the run, the timer runs it again.
    RunLocal {
        /// The step.
        step: u32,
        /// Action or compensation.
        phase: Phase,
        /// The attempt.
        attempt: u32,
    },
}

/// Identifies a stored timer; ordered by due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimerKey {
    /// When it fires.
    pub due: Timestamp,
    /// The instance it belongs to.
    pub instance_id: Uuid,
    /// Its own id; the fired timer's message id, so firing twice is deduplicated.
    pub timer_id: Uuid,
}

/// A durable timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRecord {
    /// Its key.
    pub key: TimerKey,
    /// The saga definition of the instance.
    pub saga: String,
    /// What it does.
    pub purpose: TimerPurpose,
    /// The W3C trace context (`traceparent`, `tracestate`) of the unit of work that scheduled
    /// it, so that the unit it fires continues the instance's trace. Last and lenient: a
    /// record written before it existed decodes with none.
    #[serde(default, deserialize_with = "lenient_trace")]
    pub trace: BTreeMap<String, String>,
}

/// Decodes a timer's trace context, or none where the record ends before it: timers written
/// by a build without the field are still read, and an unreadable trace context costs the
/// timer nothing but its trace (the field is the record's last, so nothing after it is read
/// wrongly).
fn lenient_trace<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(BTreeMap::deserialize(d).unwrap_or_default())
}

/// A message that went into or out of a unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// Its id.
    pub id: Uuid,
    /// Its wire name.
    pub name: String,
}

/// Something that happened to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryEvent {
    /// The instance was created.
    Started,
    /// A step's action began (a command sent or a local run scheduled).
    StepStarted {
        /// Step index.
        step: u32,
        /// Step name.
        name: String,
        /// Attempt.
        attempt: u32,
    },
    /// A step's action succeeded.
    StepSucceeded {
        /// Step index.
        step: u32,
        /// Step name.
        name: String,
    },
    /// A step's action failed.
    StepFailed {
        /// Step index.
        step: u32,
        /// Step name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A step's compensation began.
    CompensationStarted {
        /// Step index.
        step: u32,
        /// Step name.
        name: String,
        /// Attempt.
        attempt: u32,
    },
    /// A step was compensated.
    StepCompensated {
        /// Step index.
        step: u32,
        /// Step name.
        name: String,
    },
    /// A compensation attempt failed.
    CompensationFailed {
        /// Step index.
        step: u32,
        /// Step name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An integration event was applied to the state.
    EventHandled {
        /// Event name.
        name: String,
    },
    /// A message was put in the outbox.
    MessageSent(MessageRef),
    /// A timer was scheduled.
    TimerScheduled {
        /// The timer.
        key: TimerKey,
        /// What it will do.
        purpose: TimerPurpose,
    },
    /// A timer fired.
    TimerFired {
        /// The timer.
        key: TimerKey,
    },
    /// A message arrived that no longer applies (a late reply, an abort past the pivot).
    Ignored {
        /// Why it was ignored.
        reason: String,
    },
    /// The status changed.
    StatusChanged {
        /// The new status.
        to: SagaStatus,
    },
    /// A reply arrived after the instance had finished (kept so that an operator sees, say,
    /// that a pivot whose outcome was unknown did succeed).
    LateReply {
        /// The reply's name.
        name: String,
        /// Whether it is the step's success reply.
        success: bool,
        /// The status the instance had finished with.
        status: StatusKind,
    },
    /// An operator acted on the instance (see [`admin`](crate::admin)).
    Operator {
        /// The action: `retry`, `skip`, `abort`, `resume` or `cancel`.
        action: String,
        /// Who, as the operator gave it.
        by: String,
        /// Why, as the operator gave it.
        reason: String,
    },
}

impl TimerPurpose {
    /// What a fired timer is named as the cause of its unit of work (in the instance's history,
    /// and as its span's name): its kind only, so that the names are few.
    pub(crate) fn cause_name(&self) -> &'static str {
        match self {
            TimerPurpose::Timeout { .. } => "timer:timeout",
            TimerPurpose::Retry { .. } => "timer:retry",
            TimerPurpose::RunLocal { .. } => "timer:run-local",
        }
    }
}

impl std::fmt::Display for TimerPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, step, phase, attempt) = match self {
            TimerPurpose::Timeout { step, phase, attempt } => ("timeout", step, phase, attempt),
            TimerPurpose::Retry { step, phase, attempt } => ("retry", step, phase, attempt),
            TimerPurpose::RunLocal { step, phase, attempt } => ("local run", step, phase, attempt),
        };
        let side = if *phase == Phase::Compensation { " compensation" } else { "" };
        write!(f, "{what} of step #{step}{side}, attempt {attempt}")
    }
}

/// One line a person reads: `step charge_payment failed: declined`. A timer says when it is
/// due as Unix milliseconds; timelines that know the start write it relative to that.
impl std::fmt::Display for HistoryEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HistoryEvent::Started => f.write_str("started"),
            HistoryEvent::StepStarted { name, attempt, .. } => write!(f, "step {name} started (attempt {attempt})"),
            HistoryEvent::StepSucceeded { name, .. } => write!(f, "step {name} succeeded"),
            HistoryEvent::StepFailed { name, reason, .. } => write!(f, "step {name} failed: {reason}"),
            HistoryEvent::CompensationStarted { name, attempt, .. } => {
                write!(f, "compensation of {name} started (attempt {attempt})")
            }
            HistoryEvent::StepCompensated { name, .. } => write!(f, "step {name} compensated"),
            HistoryEvent::CompensationFailed { name, reason, .. } => {
                write!(f, "compensation of {name} failed: {reason}")
            }
            HistoryEvent::EventHandled { name } => write!(f, "event {name} applied"),
            HistoryEvent::MessageSent(m) => write!(f, "sent {}", m.name),
            HistoryEvent::TimerScheduled { key, purpose } => write!(f, "timer set for {} ms: {purpose}", key.due.0),
            HistoryEvent::TimerFired { .. } => f.write_str("timer fired"),
            HistoryEvent::Ignored { reason } => write!(f, "ignored: {reason}"),
            HistoryEvent::StatusChanged { to } => write!(f, "status -> {to:?}"),
            HistoryEvent::LateReply { name, status, .. } => write!(f, "late reply {name} (the saga had {status:?})"),
            HistoryEvent::Operator { action, by, reason } => write!(f, "operator {by}: {action} ({reason})"),
        }
    }
}

/// Everything one commit did to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The instance version this commit produced.
    pub version: u64,
    /// When.
    pub at: Timestamp,
    /// The message (or fired timer) that caused it.
    pub cause: Option<MessageRef>,
    /// What happened, in order.
    pub events: Vec<HistoryEvent>,
}

/// A participant's stored record (its own data, committed with its inbox and outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRecord {
    /// Bumped by one on every write; the optimistic concurrency check compares it.
    pub version: u64,
    /// The encoded value.
    pub value: Vec<u8>,
}

/// An outbox entry the relay gave up on (the bus refused it for good, or nothing took its
/// name for too long), kept with the reason for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedOutboxEntry {
    /// Its position in the outbox.
    pub seq: u64,
    /// The message.
    pub envelope: crate::message::Envelope,
    /// Why it was parked.
    pub reason: String,
    /// When it was parked.
    pub parked_at: Timestamp,
}

/// A message waiting in the outbox to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox (commit order; the relay publishes a batch concurrently).
    pub seq: u64,
    /// The message.
    pub envelope: crate::message::Envelope,
}

/// Where a delivered message waits in a queue its store keeps (the local bus), for the
/// consumer's commit to remove it ([`Commit::consumes`](super::Commit::consumes)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The subscription whose queue holds it.
    pub subscription: String,
    /// Its position there.
    pub seq: u64,
    /// The [`Store::identity`](super::Store::identity) of the store that keeps it: only a
    /// consumer committing to that store can take the entry in its commit.
    pub store: usize,
    /// A commit wrote it in the same atomic write that produced the message, and nothing
    /// enqueues that message again (its id derives from that commit's cause): this entry is
    /// its only copy, so the entry's presence tells whether the consumer processed it.
    /// Messages published (a submission, the relay) or loaded after a restart say `false`
    /// and are deduplicated by the consumer's inbox.
    pub only_copy: bool,
}

/// A message waiting in a subscription's durable queue (the local bus keeps its queues in the
/// store, so that a crash loses none of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The subscription it waits on.
    pub subscription: String,
    /// Its position, unique in the store (arrival order).
    pub seq: u64,
    /// The message, with the number of deliveries so far in `attempt`.
    pub envelope: crate::message::Envelope,
}

/// A queued message that was dead-lettered, with why and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeadLetter {
    /// The position it had in its queue.
    pub seq: u64,
    /// The subscription it was delivered on.
    pub subscription: String,
    /// The message as last delivered.
    pub envelope: crate::message::Envelope,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When.
    pub at: crate::message::Timestamp,
}

/// What retention leaves of an instance it deleted, until `until`: enough for a late duplicate
/// of its start message to be recognised and skipped rather than start the saga again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    /// The saga the instance belonged to.
    pub saga: String,
    /// The status it ended with.
    pub status: StatusKind,
    /// When it was deleted.
    pub pruned_at: crate::message::Timestamp,
    /// Until when the tombstone is kept; after that the instance's id is free again.
    pub until: crate::message::Timestamp,
}

/// A finished instance old enough for retention, as [`Store::expired_instances`](super::Store::expired_instances)
/// finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionCandidate {
    /// The instance as it was read.
    pub record: InstanceRecord,
    /// When it finished, as the store indexed it.
    pub finished_at: crate::message::Timestamp,
}

/// What [`Store::prune_instance`](super::Store::prune_instance) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneOutcome {
    /// The instance is gone; its tombstone is written.
    Pruned,
    /// Part of its history and inbox is gone; call again for the rest.
    Partly,
    /// It changed since it was read (or is gone): nothing was deleted.
    Changed,
}

impl StatusKind {
    /// Whether retention deletes instances that ended so: completed, compensated and
    /// cancelled ones. A failed instance waits for an operator, however old it is.
    pub fn is_prunable(self) -> bool {
        matches!(self, StatusKind::Completed | StatusKind::Compensated | StatusKind::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timer as builds before the trace context wrote it: the same fields, without `trace`.
    #[derive(Serialize)]
    struct TimerWithoutTrace {
        key: TimerKey,
        saga: String,
        purpose: TimerPurpose,
    }

    #[test]
    fn a_timer_stored_before_timers_carried_a_trace_is_read_with_none() {
        let key = TimerKey { due: Timestamp(7), instance_id: Uuid::now_v7(), timer_id: Uuid::now_v7() };
        let purpose = TimerPurpose::Retry { step: 1, phase: Phase::Action, attempt: 2 };
        let old = TimerWithoutTrace { key, saga: "trip".into(), purpose: purpose.clone() };
        let read: TimerRecord = postcard::from_bytes(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!(read, TimerRecord { key, saga: "trip".into(), purpose, trace: BTreeMap::new() });
    }

    #[test]
    fn a_timers_trace_context_is_stored_with_it() {
        let key = TimerKey { due: Timestamp(7), instance_id: Uuid::now_v7(), timer_id: Uuid::now_v7() };
        let timer = TimerRecord {
            key,
            saga: "trip".into(),
            purpose: TimerPurpose::Timeout { step: 0, phase: Phase::Action, attempt: 1 },
            trace: [("traceparent".to_owned(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned())]
                .into(),
        };
        let read: TimerRecord = postcard::from_bytes(&postcard::to_stdvec(&timer).unwrap()).unwrap();
        assert_eq!(read, timer);
    }
}
