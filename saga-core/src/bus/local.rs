//! The durable in-process transport: the in-memory bus's queues, kept in the store.
//!
//! A runtime on a persistent store (sled) whose sagas and participants live in one process
//! needs no broker to survive a crash, only queues that do. [`LocalBus`] is the
//! [`InMemoryBus`] (same routing, competing consumers, exclusivity, nack with delay, delivery
//! limits, refusal of unroutable publishes) with every queued copy also written to the
//! store's queue section ([`Store::enqueue`]):
//!
//! - **publish** writes one entry per bound subscription and returns only once the store
//!   says they are durable. The relay removes an outbox entry only after that, so a message
//!   is always in the outbox, in a queue, or both.
//! - **ack** removes the entry. The engine acks after its consumer's commit is durable, so a
//!   crash before the removal redelivers a message whose effects are already recorded, and
//!   the consumer's inbox turns that redelivery into a no-op. The removal itself is not
//!   flushed for the same reason.
//! - **nack and redelivery** rewrite the entry with its delivery count, so a restart does not
//!   reset a delivery limit; **dead-lettering** moves the entry to the store's dead letters,
//!   with the reason, in one write.
//! - **subscribe** loads the subscription's entries into its queue before binding it to any
//!   name: after a kill -9, reopening the store and building the runtime redelivers exactly
//!   what was not consumed.
//!
//! Over a shared database the queues are the [`PostgresBus`](crate::bus)'s instead: a queue
//! table keyed by subscription and position, consumers in any process claiming rows with
//! `FOR UPDATE SKIP LOCKED` under a lease instead of holding them in memory. A `LocalBus` over
//! a shared store delivers only in the process that holds its queues.

use std::sync::Arc;

use uuid::Uuid;

use super::{Bus, BusError, Consumer, DeadLetter, InMemoryBus};
use crate::activity::Activity;
use crate::message::Envelope;
use crate::store::{QueueDeadLetter, QueuedMessage, Store, StoreError};

/// A durable, in-process [`Bus`]: queues kept in the store, so a crash loses nothing queued.
///
/// The runtime uses it by default when its store is persistent (see
/// [`Store::is_persistent`]); build one yourself to set a delivery limit or to share it
/// between runtimes of one process. Several `LocalBus`es must not be opened on one store.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use saga_core::bus::{Bus, LocalBus};
/// use saga_core::message::Envelope;
/// use saga_core::store::SledStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = Arc::new(SledStore::open(dir.path()).unwrap());
/// let bus = LocalBus::open(store.clone());
/// bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
/// bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())).await.unwrap();
/// drop(bus); // as a crash would: the message was never consumed
///
/// let bus = LocalBus::open(store);
/// let mut consumer = bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
/// consumer.next().await.unwrap().ack().await.unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct LocalBus {
    queues: InMemoryBus,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").field("queues", &self.queues).finish_non_exhaustive()
    }
}

impl LocalBus {
    /// A bus whose queues `store` keeps, redelivering without limit (the engine settles
    /// what it cannot handle itself).
    pub fn open(store: Arc<dyn Store>) -> Self {
        LocalBus { queues: InMemoryBus::journaled(store.clone(), None), store }
    }

    /// Like [`LocalBus::open`], but a message delivered `max` times without an ack is
    /// dead-lettered instead of delivered again (the count survives restarts).
    pub fn open_with_max_deliveries(store: Arc<dyn Store>, max: u32) -> Self {
        LocalBus { queues: InMemoryBus::journaled(store.clone(), Some(max)), store }
    }

    /// Dead-lettered messages of every subscription, oldest first, from the store (so those
    /// of earlier runs too), at most `limit`.
    pub async fn all_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        self.read_dead_letters(None, limit).await
    }

    async fn read_dead_letters(&self, subscription: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let found = self.scan_dead_letters(|d| subscription.is_none_or(|s| s == d.subscription), limit).await?;
        Ok(found
            .into_iter()
            .map(|d| DeadLetter { subscription: d.subscription, envelope: d.envelope, reason: d.reason, at: d.at })
            .collect())
    }

    /// The store's dead letters that `keep` selects, oldest first, at most `limit`.
    async fn scan_dead_letters(
        &self,
        keep: impl Fn(&QueueDeadLetter) -> bool,
        limit: usize,
    ) -> Result<Vec<QueueDeadLetter>, BusError> {
        const PAGE: usize = 256;
        let mut found = Vec::new();
        let mut after = None;
        while found.len() < limit {
            let page = self.store.queue_dead_letters(after, PAGE).await.map_err(store_failed)?;
            let last = page.len() < PAGE;
            after = page.last().map(|d| d.seq);
            found.extend(page.into_iter().filter(|d| keep(d)));
            if last {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// The positions of `subscription`'s dead letters of `message_id`.
    async fn dead_seqs(&self, subscription: &str, message_id: Uuid) -> Result<Vec<u64>, BusError> {
        let dead = self
            .scan_dead_letters(|d| d.subscription == subscription && d.envelope.message_id == message_id, usize::MAX)
            .await?;
        Ok(dead.iter().map(|d| d.seq).collect())
    }
}

fn store_failed(e: StoreError) -> BusError {
    BusError::Transport(format!("the store that keeps the local bus's queues failed: {e}"))
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.queues.publish(envelope).await
    }
    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.queues.subscribe(subscription, names).await
    }
    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.queues.subscribe_exclusive(subscription, names).await
    }
    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        self.queues.unsubscribe(subscription).await
    }
    fn has_subscribers(&self, name: &str) -> Option<bool> {
        self.queues.has_subscribers(name)
    }
    fn activity(&self) -> Option<Arc<Activity>> {
        self.queues.activity()
    }
    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        self.read_dead_letters(Some(subscription), limit).await
    }
    async fn replay_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        let mut revived = Vec::new();
        for seq in self.dead_seqs(subscription, message_id).await? {
            revived.extend(self.store.revive_queue_dead_letter(seq).await.map_err(store_failed)?);
        }
        let count = revived.len();
        // Durable in the queue already: if the subscription is not loaded in this process (an
        // offline admin), its next subscribe delivers them.
        let _ = self.queues.deliver_stored(revived);
        Ok(count)
    }
    async fn discard_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        let mut discarded = 0;
        for seq in self.dead_seqs(subscription, message_id).await? {
            discarded += usize::from(self.store.remove_queue_dead_letter(seq).await.map_err(store_failed)?);
        }
        Ok(discarded)
    }
    fn stored_routes(&self, store: &dyn Store, name: &str) -> Option<Vec<String>> {
        if store.identity() != self.store.identity() {
            return None;
        }
        Some(self.queues.bound(name)).filter(|routes| !routes.is_empty())
    }
    fn deliver_stored(&self, messages: Vec<QueuedMessage>) -> Result<(), BusError> {
        self.queues.deliver_stored(messages)
    }
}
