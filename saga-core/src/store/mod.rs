//! Where saga progress lives.
//!
//! The [`Store`] trait is the engine's one way to persist: a unit of work hands it a single
//! [`Commit`] (instance state at `version + 1`, inbox entry, outbox entries, timer changes,
//! history) and the store applies all of it or none. The commit becomes *visible* when
//! [`Store::commit`] returns and *durable* when the returned [`Durable`] future resolves;
//! the engine acks the delivery only after the latter, which is what makes a crash at any
//! point lose nothing.
//!
//! [`KvStore`] implements the trait once over any ordered key-value engine ([`OrderedKv`]):
//! [`SledStore`] (the embedded, durable default) and [`MemoryStore`] (tests) share every line
//! of layout and commit logic, so they cannot drift apart.

pub mod conformance;
mod intercept;
mod kv;
pub(crate) mod layout;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
pub mod query;
mod records;
#[cfg(feature = "sled")]
mod sled;

#[cfg(feature = "sled")]
pub use conformance::SledTarget;
pub use conformance::{MemoryTarget, StoreTarget};
pub use intercept::{CommitHook, Intercepted};
pub use kv::{Batch, KeyValue, KvStore, OrderedKv, Rejection, Write, leading_version};
pub use memory::{MemoryKv, MemoryStore};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresTarget};
#[cfg(feature = "postgres")]
pub(crate) use postgres::{remove_dead_letter, revive_dead_letter};
pub use query::{
    BadCursor, InstanceCount, InstanceCounts, InstanceCursor, InstanceListing, InstanceQuery, SCAN_BUDGET,
};
pub use records::{
    Awaiting, EntityRecord, HistoryEntry, HistoryEvent, InstanceRecord, MessageRef, OutboxEntry, ParkedOutboxEntry,
    Phase, PruneOutcome, QueueDeadLetter, QueueEntry, QueuedMessage, RetentionCandidate, SagaStatus, StatusKind,
    TimerKey, TimerPurpose, TimerRecord, Tombstone, UnknownStatus,
};
#[cfg(feature = "sled")]
pub use sled::{SledKv, SledOptions, SledStore};
/// sqlx's PostgreSQL connection options, for [`PostgresStore::connect_options`].
#[cfg(feature = "postgres")]
pub use sqlx::postgres::PgConnectOptions;

use std::time::Duration;

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::message::{Envelope, Timestamp};

/// The on-disk format this build writes and reads (4: the local bus's durable queues and their
/// dead letters; 3: an instance remembers the command of its current attempt and whether an
/// attempt's outcome is unknown, instance ids encode the saga name's length, and the outbox
/// has a parked section).
pub const FORMAT_VERSION: u32 = 4;

/// A future that resolves once a commit is durable under the store's [`Durability`].
pub type Durable = BoxFuture<'static, Result<(), StoreError>>;

/// When a commit counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flush (fsync) after every commit; the simplest and slowest safe choice.
    Immediate,
    /// Group commit: commits share one flush. A flush starts as soon as the previous one is
    /// done and covers every commit that arrived meanwhile (up to `max_batch`), after waiting
    /// at most `max_delay` for more. Acks still wait for the flush, so this is as safe as
    /// `Immediate` and close to the disk's throughput.
    Group {
        /// The longest a commit waits for company before its flush starts (0: none; the
        /// commits that arrive during a flush share the next one anyway).
        max_delay: Duration,
        /// The most commits one flush covers.
        max_batch: usize,
    },
    /// Never flush explicitly (the engine's background flush runs every second). A crash
    /// can lose the last second of acked work: for tests and CPU benchmarks only.
    None,
}

impl Default for Durability {
    /// `Group { max_delay: 0, max_batch: 512 }`: batches form from the commits that arrive
    /// while a flush runs, so a quiet system pays one flush of latency, not a waiting period.
    fn default() -> Self {
        Durability::Group { max_delay: Duration::ZERO, max_batch: 512 }
    }
}

/// Why the store could not do what was asked, and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened.
    #[error(
        "cannot open the store at {path}: {reason}. If the directory is damaged, restore it from a backup or move it aside to start empty"
    )]
    Open {
        /// The directory.
        path: String,
        /// The engine's error.
        reason: String,
    },
    /// The store was written in another (or an unknown) format.
    #[error(
        "the store at {path} has format version {found}; this build reads version {supported} only: run a newer sagaflow for a newer format, finish the store's sagas with the release that wrote it for an older one, or open a store this version wrote"
    )]
    UnsupportedFormat {
        /// The directory.
        path: String,
        /// The version found on disk.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A stored record does not decode.
    #[error("corrupted {what} record at key {key}: {reason}; restore the store from a backup")]
    Corrupt {
        /// The kind of record.
        what: &'static str,
        /// The key, hex-encoded.
        key: String,
        /// The decoder's error.
        reason: String,
    },
    /// The optimistic concurrency check failed: someone else wrote first. Reload and retry.
    #[error("{what} changed concurrently: expected version {expected}, found {found}")]
    Conflict {
        /// What was written.
        what: String,
        /// The version the writer read.
        expected: u64,
        /// The version in the store.
        found: u64,
    },
    /// The inbox already holds this message for this consumer: it was processed before.
    #[error("message {message_id} was already processed by consumer {consumer}")]
    Duplicate {
        /// The consumer (instance or participant id).
        consumer: Uuid,
        /// The message.
        message_id: Uuid,
    },
    /// The storage engine failed (disk full, I/O error, the database unreachable). The same
    /// operation may succeed later: the engine retries it without spending a message's retry
    /// budget.
    #[error("storage engine failed: {0}")]
    Io(String),
    /// The store stopped accepting writes and will not accept them again while it stays open:
    /// a sync failed (the kernel may have dropped the unsynced data, so a later sync that
    /// succeeds proves nothing), or a commit failed half applied. Reopening it (restarting
    /// the process) recovers what is on disk.
    #[error(
        "the store no longer accepts writes: {reason}; restart the process (reopening the store recovers what is on disk)"
    )]
    Broken {
        /// What happened.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode a {what} record: {reason}")]
    Encode {
        /// The kind of record.
        what: &'static str,
        /// The encoder's error.
        reason: String,
    },
}

/// The instance part of a commit.
#[derive(Debug, Clone)]
pub struct InstanceWrite {
    /// The new record; its `version` must be `previous.version + 1` (or 1 for a new instance).
    pub record: InstanceRecord,
    /// The version and status read before the transition, `None` for a new instance.
    pub previous: Option<(u64, StatusKind)>,
    /// When the instance last changed before this transition, `None` for a new instance: what
    /// the runtime's step duration is measured from (stores ignore it).
    pub previous_updated_at: Option<Timestamp>,
}

/// A participant's record written with a commit.
#[derive(Debug, Clone)]
pub struct EntityWrite {
    /// The participant's namespace.
    pub scope: String,
    /// The record's key within it.
    pub key: String,
    /// The version read (0 when it did not exist); the write is at `expected_version + 1`.
    pub expected_version: u64,
    /// The new value.
    pub value: Vec<u8>,
}

/// Everything one unit of work changes, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Marks `(consumer, message_id)` processed; the commit fails with
    /// [`StoreError::Duplicate`] if it already was.
    pub inbox: Option<(Uuid, Uuid)>,
    /// With `inbox`: the `(subscription, position)` of the delivered message's queue entry
    /// when that entry is the message's only copy ([`QueueEntry::only_copy`]). The commit
    /// then requires the entry and removes it instead of writing an inbox entry: a message
    /// enqueued once and consumed by removing it cannot be processed twice, and the consumer
    /// saves a write (and its ack a removal).
    pub consumes: Option<(String, u64)>,
    /// The saga instance's new state.
    pub instance: Option<InstanceWrite>,
    /// Participant records.
    pub entities: Vec<EntityWrite>,
    /// Messages to publish once the commit is durable.
    pub outbox: Vec<Envelope>,
    /// Messages for subscriptions whose queues this store keeps (the durable local bus), one
    /// `(subscription, envelope)` each: written to those queues with the commit, so they need
    /// no outbox entry and no relay (`Bus::stored_routes`).
    pub queued: Vec<(String, Envelope)>,
    /// Timers to add.
    pub timers_add: Vec<TimerRecord>,
    /// Timers to remove.
    pub timers_remove: Vec<TimerKey>,
    /// The instance's history entry (requires `instance`).
    pub history: Option<HistoryEntry>,
    /// Parked outbox entries to remove, by position: an operator replayed them (their
    /// envelopes in `outbox` again) or discarded them.
    pub parked_remove: Vec<u64>,
}

impl Commit {
    /// Whether the commit takes its delivery's queue entry in place of an inbox entry
    /// ([`Commit::consumes`], which counts only with an inbox entry to replace).
    pub fn takes_queue_entry(&self) -> bool {
        self.inbox.is_some() && self.consumes.is_some()
    }
}

/// What [`Store::commit`] hands back.
pub struct Committed {
    /// Resolves once the commit is durable; ack the delivery after it.
    pub durable: Durable,
    /// The commit's outbox messages with the positions the store gave them, in order: hand
    /// them to the relay once `durable` resolved.
    pub outbox: Vec<OutboxEntry>,
    /// The commit's queued messages with their queue positions, in order: hand them to the
    /// bus (`Bus::deliver_stored`) once `durable` resolved.
    pub queued: Vec<QueuedMessage>,
    /// The commit removed its delivery's queue entry ([`Commit::consumes`]): settle the
    /// delivery with `Delivery::ack_consumed`, which has nothing left to remove.
    pub consumed_queue_entry: bool,
}

/// What [`Store::enqueue`] hands back.
pub struct Enqueued {
    /// The positions the messages were given, in order.
    pub seqs: Vec<u64>,
    /// Resolves once they are durable: only then has the queue taken responsibility.
    pub durable: Durable,
}

impl std::fmt::Debug for Enqueued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enqueued").field("seqs", &self.seqs).finish_non_exhaustive()
    }
}

impl StoreError {
    /// Whether the store itself is unavailable (its engine failed, or it is broken), as
    /// opposed to a problem with what was asked (a conflict, a duplicate, a corrupt record).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Broken { .. } | StoreError::Open { .. })
    }
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seqs: Vec<u64> = self.outbox.iter().map(|e| e.seq).collect();
        f.debug_struct("Committed").field("outbox_seqs", &seqs).finish_non_exhaustive()
    }
}

/// Persistence for the saga engine. See the module docs for the contract.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::store::{Commit, MemoryStore, Store};
/// let store = MemoryStore::new();
/// let committed = store.commit(Commit::default()).await.unwrap();
/// committed.durable.await.unwrap(); // now it is safe to ack the delivery
/// # });
/// ```
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies a commit atomically; its `durable` future resolves when it is durable.
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError>;
    /// Resolves once everything applied so far is durable: wait on it before acking a
    /// message that was skipped because of something read from the store (a duplicate).
    fn barrier(&self) -> Durable;
    /// Loads an instance.
    async fn instance(&self, id: Uuid) -> Result<Option<InstanceRecord>, StoreError>;
    /// Ids of instances with a status, from the status index, at most `limit`.
    async fn instances_with_status(&self, status: StatusKind, limit: usize) -> Result<Vec<Uuid>, StoreError>;
    /// An instance's history, oldest first.
    async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError>;
    /// A page of an instance's history: entries after version `after` (from the first),
    /// oldest first, at most `limit`.
    async fn history_page(&self, id: Uuid, after: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError>;
    /// A page of the instances that match `query`, in status then id order, at most `limit`,
    /// having looked at no more than [`SCAN_BUDGET`] instances (see [`query`](self::query)).
    async fn list_instances(&self, query: &InstanceQuery, limit: usize) -> Result<InstanceListing, StoreError>;
    /// Instance counts by saga and status among those that match `query` (its cursor
    /// included), as far as one bounded read got: go on from `next` until it is `None`.
    async fn count_instances(&self, query: &InstanceQuery) -> Result<InstanceCounts, StoreError>;
    /// Whether `consumer` already processed `message_id`.
    async fn processed(&self, consumer: Uuid, message_id: Uuid) -> Result<bool, StoreError>;
    /// A participant's record.
    async fn entity(&self, scope: &str, key: &str) -> Result<Option<EntityRecord>, StoreError>;
    /// A participant's records, in key order, at most `limit`.
    async fn entities(&self, scope: &str, limit: usize) -> Result<Vec<(String, EntityRecord)>, StoreError>;
    /// Timers due at or before `upto`, in due order, after `after` (for paging), at most `limit`.
    async fn timers_due(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError>;
    /// The earliest timer due strictly after `after`.
    async fn next_timer(&self, after: Timestamp) -> Result<Option<TimerKey>, StoreError>;
    /// Outbox entries in publication order, after position `after` (for paging), at most `limit`.
    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Removes published outbox entries.
    async fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError>;
    /// Moves an outbox entry the relay gave up on to the parked outbox, with the reason.
    async fn park_outbox(&self, seq: u64, reason: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Parked outbox entries in position order, after `after`, at most `limit`.
    async fn parked_outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<ParkedOutboxEntry>, StoreError>;
    /// Makes everything committed so far durable.
    async fn flush(&self) -> Result<(), StoreError>;
    /// Whether several processes may run on this store at once (a shared database). A store
    /// one process owns (sled, memory) answers `false`, and the runtime then refuses to share
    /// its subscriptions with another consumer: a second runtime on its own store would take
    /// messages for instances it does not hold.
    fn is_shared(&self) -> bool {
        false
    }
    /// The bus a runtime on this store uses when it is given none. `None` (the default): the
    /// runtime picks the durable local bus on a persistent store and the in-memory bus
    /// otherwise. A shared store answers with a bus that every process on it shares (the
    /// PostgreSQL store: its [`PostgresBus`](crate::bus::PostgresBus)), since queues one
    /// process holds would strand the others' messages.
    fn default_bus(&self) -> Option<std::sync::Arc<dyn crate::bus::Bus>> {
        None
    }
    /// How long a claim on a timer or an outbox entry lasts in a shared store, from the
    /// database's clock (see [`Self::claim_timers`]); `None` for a store one process owns,
    /// where the runtime's memory is the claim.
    fn claim_lease(&self) -> Option<Duration> {
        None
    }
    /// Claims timers due at or before `upto` (paged like [`Self::timers_due`]) for this store
    /// handle's process until [`Self::claim_lease`] has passed: in a shared store, timers
    /// another live process claimed are left out, and a claim that ran out is anyone's, so
    /// each due timer fires in one process at a time. A local step's timer
    /// ([`TimerPurpose::RunLocal`]) is claimed by the commit that writes it and is taken over
    /// as soon as its claim runs out, whenever it is due: it is the lease its step runs under.
    /// Only timers of the `sagas` named are claimed: a process claims what it can fire. A
    /// store one process owns hands out every due timer of those sagas ([`Self::timers_due`]).
    async fn claim_timers(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
        sagas: &[String],
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let mut due = self.timers_due(upto, after, limit).await?;
        due.retain(|t| sagas.contains(&t.saga));
        Ok(due)
    }
    /// Extends this process's claims on timers it is still working on (a local step that is
    /// running) by another [`Self::claim_lease`]; returns the keys whose claim was lost to
    /// another process meanwhile. Nothing to do in a store one process owns.
    async fn extend_timer_claims(&self, keys: &[TimerKey]) -> Result<Vec<TimerKey>, StoreError> {
        let _ = keys;
        Ok(Vec::new())
    }
    /// In a shared store: outbox entries committed longer than [`Self::claim_lease`] ago that
    /// nobody removed (their process died, or its publish keeps failing), in position order,
    /// at most `limit`, each claimed for this process for a lease so that one sweeper at a time
    /// publishes it. A store one process owns has no one else's entries: none.
    async fn claim_stale_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }
    /// Whether what the store acknowledged as durable survives the process (sled: yes; the
    /// in-memory store: no). A runtime on a persistent store queues its in-process messages
    /// in it by default (the local bus).
    fn is_persistent(&self) -> bool {
        false
    }
    /// What tells this store apart from every other one, through any wrapper (`Arc`,
    /// [`Intercepted`]): a bus that keeps its queues in a store writes a commit's messages
    /// into them only when the commit goes to that very store.
    fn identity(&self) -> usize {
        (self as *const Self).cast::<()>().addr()
    }

    /// Appends messages to subscriptions' durable queues, one `(subscription, envelope)` each,
    /// for the local bus. They are readable at once and durable when `durable` resolves.
    async fn enqueue(&self, messages: Vec<(String, Envelope)>) -> Result<Enqueued, StoreError>;
    /// A subscription's queued messages in position order, after `after`, at most `limit`.
    async fn queued(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError>;
    /// Rewrites a queued message in place (its delivery count grew); nothing if it is gone.
    async fn requeue(&self, message: &QueuedMessage) -> Result<(), StoreError>;
    /// Removes consumed messages from a subscription's queue.
    async fn dequeue(&self, subscription: &str, seqs: &[u64]) -> Result<(), StoreError>;
    /// Moves a queued message to the dead letters, with the reason, in one atomic write.
    async fn dead_letter_queued(&self, message: QueuedMessage, reason: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Dead-lettered queue messages in position order, after `after`, at most `limit`.
    async fn queue_dead_letters(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueueDeadLetter>, StoreError>;
    /// Moves dead letter `seq` back into its subscription's queue, at the position it had and
    /// with its delivery count reset, in one atomic write, durable when this returns: the
    /// message as queued now, or `None` if there is no such dead letter.
    async fn revive_queue_dead_letter(&self, seq: u64) -> Result<Option<QueuedMessage>, StoreError>;
    /// Deletes dead letter `seq`; whether there was one.
    async fn remove_queue_dead_letter(&self, seq: u64) -> Result<bool, StoreError>;

    /// Retention: up to `limit` instances of `saga` that finished (completed, compensated or
    /// cancelled, see [`StatusKind::is_prunable`]) before `before`, oldest first. An
    /// instance that finished before the store indexed finished instances (format 1 on sled,
    /// schema 5 on PostgreSQL) is not found.
    async fn expired_instances(
        &self,
        saga: &str,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<RetentionCandidate>, StoreError>;
    /// Retention: deletes a finished instance that is still as it was read (its version): its
    /// record, history, inbox and status entry, writing `tombstone` in their place, in one
    /// atomic write. An instance with more than [`PRUNE_BATCH`] history and inbox entries
    /// loses them over several calls ([`PruneOutcome::Partly`]), its record last.
    async fn prune_instance(
        &self,
        candidate: &RetentionCandidate,
        tombstone: &Tombstone,
    ) -> Result<PruneOutcome, StoreError>;
    /// Retention: looks at up to `limit` of `consumer`'s inbox entries after message `after`
    /// (from the first), in message id order, and deletes those written before `before` (by
    /// the wall clock; entries written by a version that did not record the time count as
    /// old). Returns how many it deleted and where to go on from (`None`: the end).
    async fn prune_inbox(
        &self,
        consumer: Uuid,
        before: Timestamp,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(usize, Option<Uuid>), StoreError>;
    /// Retention of the dead letters this store keeps for the local and PostgreSQL buses:
    /// deletes, oldest first and at most `limit`, those dead-lettered before `before` and
    /// those past the newest `keep`; how many it deleted.
    async fn prune_queue_dead_letters(&self, before: Timestamp, keep: usize, limit: usize)
    -> Result<usize, StoreError>;
    /// The tombstone of instance `id`, if retention deleted it and the tombstone is kept still.
    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError>;
    /// Deletes at most `limit` tombstones kept until before `now`; how many it deleted.
    async fn prune_tombstones(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError>;
}

/// The most keys (history entries and inbox entries) one [`Store::prune_instance`] call
/// deletes, so that one write stays small however long the instance lived.
pub const PRUNE_BATCH: usize = 1000;

#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        (**self).commit(commit).await
    }
    fn barrier(&self) -> Durable {
        (**self).barrier()
    }
    async fn instance(&self, id: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        (**self).instance(id).await
    }
    async fn instances_with_status(&self, status: StatusKind, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        (**self).instances_with_status(status, limit).await
    }
    async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        (**self).history(id).await
    }
    async fn history_page(&self, id: Uuid, after: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        (**self).history_page(id, after, limit).await
    }
    async fn list_instances(&self, query: &InstanceQuery, limit: usize) -> Result<InstanceListing, StoreError> {
        (**self).list_instances(query, limit).await
    }
    async fn count_instances(&self, query: &InstanceQuery) -> Result<InstanceCounts, StoreError> {
        (**self).count_instances(query).await
    }
    async fn processed(&self, consumer: Uuid, message_id: Uuid) -> Result<bool, StoreError> {
        (**self).processed(consumer, message_id).await
    }
    async fn entity(&self, scope: &str, key: &str) -> Result<Option<EntityRecord>, StoreError> {
        (**self).entity(scope, key).await
    }
    async fn entities(&self, scope: &str, limit: usize) -> Result<Vec<(String, EntityRecord)>, StoreError> {
        (**self).entities(scope, limit).await
    }
    async fn timers_due(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        (**self).timers_due(upto, after, limit).await
    }
    async fn next_timer(&self, after: Timestamp) -> Result<Option<TimerKey>, StoreError> {
        (**self).next_timer(after).await
    }
    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        (**self).outbox(after, limit).await
    }
    async fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        (**self).remove_outbox(seqs).await
    }
    async fn park_outbox(&self, seq: u64, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        (**self).park_outbox(seq, reason, at).await
    }
    async fn parked_outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<ParkedOutboxEntry>, StoreError> {
        (**self).parked_outbox(after, limit).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        (**self).flush().await
    }
    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }
    fn default_bus(&self) -> Option<std::sync::Arc<dyn crate::bus::Bus>> {
        (**self).default_bus()
    }
    fn is_persistent(&self) -> bool {
        (**self).is_persistent()
    }
    fn claim_lease(&self) -> Option<Duration> {
        (**self).claim_lease()
    }
    async fn claim_timers(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
        sagas: &[String],
    ) -> Result<Vec<TimerRecord>, StoreError> {
        (**self).claim_timers(upto, after, limit, sagas).await
    }
    async fn extend_timer_claims(&self, keys: &[TimerKey]) -> Result<Vec<TimerKey>, StoreError> {
        (**self).extend_timer_claims(keys).await
    }
    async fn claim_stale_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        (**self).claim_stale_outbox(limit).await
    }
    fn identity(&self) -> usize {
        (**self).identity()
    }
    async fn enqueue(&self, messages: Vec<(String, Envelope)>) -> Result<Enqueued, StoreError> {
        (**self).enqueue(messages).await
    }
    async fn queued(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        (**self).queued(subscription, after, limit).await
    }
    async fn requeue(&self, message: &QueuedMessage) -> Result<(), StoreError> {
        (**self).requeue(message).await
    }
    async fn dequeue(&self, subscription: &str, seqs: &[u64]) -> Result<(), StoreError> {
        (**self).dequeue(subscription, seqs).await
    }
    async fn dead_letter_queued(&self, message: QueuedMessage, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        (**self).dead_letter_queued(message, reason, at).await
    }
    async fn queue_dead_letters(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueueDeadLetter>, StoreError> {
        (**self).queue_dead_letters(after, limit).await
    }
    async fn revive_queue_dead_letter(&self, seq: u64) -> Result<Option<QueuedMessage>, StoreError> {
        (**self).revive_queue_dead_letter(seq).await
    }
    async fn remove_queue_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        (**self).remove_queue_dead_letter(seq).await
    }
    async fn expired_instances(
        &self,
        saga: &str,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<RetentionCandidate>, StoreError> {
        (**self).expired_instances(saga, before, limit).await
    }
    async fn prune_instance(
        &self,
        candidate: &RetentionCandidate,
        tombstone: &Tombstone,
    ) -> Result<PruneOutcome, StoreError> {
        (**self).prune_instance(candidate, tombstone).await
    }
    async fn prune_inbox(
        &self,
        consumer: Uuid,
        before: Timestamp,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(usize, Option<Uuid>), StoreError> {
        (**self).prune_inbox(consumer, before, after, limit).await
    }
    async fn prune_queue_dead_letters(
        &self,
        before: Timestamp,
        keep: usize,
        limit: usize,
    ) -> Result<usize, StoreError> {
        (**self).prune_queue_dead_letters(before, keep, limit).await
    }
    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError> {
        (**self).tombstone(id).await
    }
    async fn prune_tombstones(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        (**self).prune_tombstones(now, limit).await
    }
}
