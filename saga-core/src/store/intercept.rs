//! Wrapping a store's commits: fault injection, measurement, tracing.
//!
//! A wrapper that cares only about commits still has to forward every other [`Store`] call.
//! [`Intercepted`] forwards them once, so a wrapper is just its [`CommitHook`].

use uuid::Uuid;

use super::{
    Commit, Committed, Durable, Enqueued, EntityRecord, HistoryEntry, InstanceCounts, InstanceListing, InstanceQuery,
    InstanceRecord, OutboxEntry, ParkedOutboxEntry, PruneOutcome, QueueDeadLetter, QueuedMessage, RetentionCandidate,
    StatusKind, Store, StoreError, TimerKey, TimerRecord, Tombstone,
};
use crate::message::{Envelope, Timestamp};

/// What [`Intercepted`] does with each commit.
///
/// ```
/// use saga_core::store::{Commit, CommitHook, Committed, Intercepted, MemoryStore, Store, StoreError};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// Counts the commits that succeed.
/// #[derive(Default)]
/// struct Count(AtomicU64);
///
/// #[async_trait::async_trait]
/// impl CommitHook for Count {
///     async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
///         let committed = store.commit(commit).await?;
///         self.0.fetch_add(1, Ordering::Relaxed);
///         Ok(committed)
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = Intercepted::new(MemoryStore::new(), Count::default());
/// store.commit(Commit::default()).await.unwrap();
/// assert_eq!(store.hook().0.load(Ordering::Relaxed), 1);
/// # });
/// ```
#[async_trait::async_trait]
pub trait CommitHook: Send + Sync + 'static {
    /// Commits `commit` through `store` (or refuses it), doing what the hook is for around it.
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError>;

    /// The store's durability barrier; the default passes it through (a fault-injecting hook
    /// can fail it too, as a disk that cannot sync would).
    fn barrier(&self, store: &dyn Store) -> Durable {
        store.barrier()
    }
}

/// A [`Store`] whose commits go through a [`CommitHook`]; every other call goes straight to
/// the store inside (see [`CommitHook`] for an example).
pub struct Intercepted<S, H> {
    store: S,
    hook: H,
}

impl<S: Store, H: CommitHook> Intercepted<S, H> {
    /// Wraps `store`.
    pub fn new(store: S, hook: H) -> Self {
        Intercepted { store, hook }
    }

    /// The hook, to read what it recorded.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

#[async_trait::async_trait]
impl<S: Store, H: CommitHook> Store for Intercepted<S, H> {
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        self.hook.commit(&self.store, commit).await
    }
    fn barrier(&self) -> Durable {
        self.hook.barrier(&self.store)
    }
    async fn instance(&self, id: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        self.store.instance(id).await
    }
    async fn instances_with_status(&self, status: StatusKind, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        self.store.instances_with_status(status, limit).await
    }
    async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        self.store.history(id).await
    }
    async fn history_page(&self, id: Uuid, after: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        self.store.history_page(id, after, limit).await
    }
    async fn list_instances(&self, query: &InstanceQuery, limit: usize) -> Result<InstanceListing, StoreError> {
        self.store.list_instances(query, limit).await
    }
    async fn count_instances(&self, query: &InstanceQuery) -> Result<InstanceCounts, StoreError> {
        self.store.count_instances(query).await
    }
    async fn processed(&self, consumer: Uuid, message_id: Uuid) -> Result<bool, StoreError> {
        self.store.processed(consumer, message_id).await
    }
    async fn entity(&self, scope: &str, key: &str) -> Result<Option<EntityRecord>, StoreError> {
        self.store.entity(scope, key).await
    }
    async fn entities(&self, scope: &str, limit: usize) -> Result<Vec<(String, EntityRecord)>, StoreError> {
        self.store.entities(scope, limit).await
    }
    async fn timers_due(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        self.store.timers_due(upto, after, limit).await
    }
    async fn next_timer(&self, after: Timestamp) -> Result<Option<TimerKey>, StoreError> {
        self.store.next_timer(after).await
    }
    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.store.outbox(after, limit).await
    }
    async fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.store.remove_outbox(seqs).await
    }
    async fn park_outbox(&self, seq: u64, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        self.store.park_outbox(seq, reason, at).await
    }
    async fn parked_outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<ParkedOutboxEntry>, StoreError> {
        self.store.parked_outbox(after, limit).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }
    fn is_shared(&self) -> bool {
        self.store.is_shared()
    }
    fn default_bus(&self) -> Option<std::sync::Arc<dyn crate::bus::Bus>> {
        self.store.default_bus()
    }
    fn is_persistent(&self) -> bool {
        self.store.is_persistent()
    }
    fn claim_lease(&self) -> Option<std::time::Duration> {
        self.store.claim_lease()
    }
    async fn claim_timers(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
        sagas: &[String],
    ) -> Result<Vec<TimerRecord>, StoreError> {
        self.store.claim_timers(upto, after, limit, sagas).await
    }
    async fn extend_timer_claims(&self, keys: &[TimerKey]) -> Result<Vec<TimerKey>, StoreError> {
        self.store.extend_timer_claims(keys).await
    }
    async fn claim_stale_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.store.claim_stale_outbox(limit).await
    }
    fn identity(&self) -> usize {
        self.store.identity()
    }
    async fn enqueue(&self, messages: Vec<(String, Envelope)>) -> Result<Enqueued, StoreError> {
        self.store.enqueue(messages).await
    }
    async fn queued(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        self.store.queued(subscription, after, limit).await
    }
    async fn requeue(&self, message: &QueuedMessage) -> Result<(), StoreError> {
        self.store.requeue(message).await
    }
    async fn dequeue(&self, subscription: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.store.dequeue(subscription, seqs).await
    }
    async fn dead_letter_queued(&self, message: QueuedMessage, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        self.store.dead_letter_queued(message, reason, at).await
    }
    async fn queue_dead_letters(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueueDeadLetter>, StoreError> {
        self.store.queue_dead_letters(after, limit).await
    }
    async fn revive_queue_dead_letter(&self, seq: u64) -> Result<Option<QueuedMessage>, StoreError> {
        self.store.revive_queue_dead_letter(seq).await
    }
    async fn remove_queue_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        self.store.remove_queue_dead_letter(seq).await
    }
    async fn expired_instances(
        &self,
        saga: &str,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<RetentionCandidate>, StoreError> {
        self.store.expired_instances(saga, before, limit).await
    }
    async fn prune_instance(
        &self,
        candidate: &RetentionCandidate,
        tombstone: &Tombstone,
    ) -> Result<PruneOutcome, StoreError> {
        self.store.prune_instance(candidate, tombstone).await
    }
    async fn prune_inbox(
        &self,
        consumer: Uuid,
        before: Timestamp,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(usize, Option<Uuid>), StoreError> {
        self.store.prune_inbox(consumer, before, after, limit).await
    }
    async fn prune_queue_dead_letters(
        &self,
        before: Timestamp,
        keep: usize,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.store.prune_queue_dead_letters(before, keep, limit).await
    }
    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError> {
        self.store.tombstone(id).await
    }
    async fn prune_tombstones(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.store.prune_tombstones(now, limit).await
    }
}
