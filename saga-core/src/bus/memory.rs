//! The in-process transport.
//!
//! Subscriptions are FIFO queues that live as long as the bus, like durable broker queues:
//! a runtime that is dropped and rebuilt on the same `InMemoryBus` finds its messages waiting.
//! The bus itself is only as durable as the process: **a crash loses every queued message**.
//!
//! Because every subscription lives in this process, the bus knows when a message would reach
//! nobody, and refuses it ([`BusError::Unroutable`]) instead of dropping it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, OnceCell, mpsc};
use uuid::Uuid;

use super::{Acker, Bus, BusError, Consumer, Delivery, DeliveryStream};
use crate::activity::Activity;
use crate::message::{Envelope, Timestamp};
use crate::store::{QueueEntry, QueuedMessage, Store, StoreError};

/// A message the bus parked because it could not be handled.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The subscription it was delivered on.
    pub subscription: String,
    /// The message as last delivered.
    pub envelope: Envelope,
    /// Why it was parked.
    pub reason: String,
    /// When it was parked.
    pub at: Timestamp,
}

/// An in-memory, at-least-once [`Bus`]: redelivery on nack and on dropped deliveries,
/// competing consumers, fan-out to every bound subscription, and a dead-letter list.
///
/// **Not durable:** its queues live in memory, so a crash (or the end of the process) loses
/// every message queued or in flight, including commands the outbox relay had already handed
/// over. Use it for tests and with stores that are not durable either; with a durable store
/// in production, put a broker underneath. A publish that no subscription takes is refused
/// with [`BusError::Unroutable`] (subscribe, or build the runtime, first), and
/// [`InMemoryBus::new`] redelivers without limit ([`InMemoryBus::with_max_deliveries`] sets one).
///
/// Cloning gives another handle to the same bus.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::bus::{Bus, InMemoryBus};
/// use saga_core::message::Envelope;
/// let bus = InMemoryBus::new();
/// let mut c = bus.subscribe("audit", &["x"]).await.unwrap();
/// bus.publish(Envelope::new("x", vec![])).await.unwrap();
/// c.next().await.unwrap().dead_letter("cannot parse").await.unwrap();
/// assert_eq!(bus.all_dead_letters()[0].reason, "cannot parse");
/// # });
/// ```
#[derive(Clone, Default)]
pub struct InMemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InMemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBus").field("pending", &self.inner.activity.pending()).finish()
    }
}

#[derive(Default)]
pub(super) struct Inner {
    topology: Mutex<Topology>,
    dead: Mutex<Vec<DeadLetter>>,
    activity: Arc<Activity>,
    max_deliveries: Option<u32>,
    /// Where the queues are kept for the [`LocalBus`](super::LocalBus); `None`: memory only.
    journal: Option<Arc<dyn Store>>,
}

/// A queued copy of a message and its position in the journal (0 when there is none).
struct Item {
    envelope: Envelope,
    seq: u64,
    /// A commit wrote it to the journal, and it is the message's only copy
    /// ([`QueueEntry::only_copy`]).
    only_copy: bool,
}

/// The moment a message is durable in its queue and no consumer has it yet (published, or
/// written by a commit).
fn kept_not_delivered() {
    crate::crash_points::crash_point!("local_bus.after_enqueue_before_delivery");
}

fn journal_error(e: StoreError) -> BusError {
    BusError::Transport(format!("the store that keeps the local bus's queues failed: {e}"))
}

#[derive(Default)]
struct Topology {
    queues: HashMap<String, Arc<Queue>>,
    bindings: HashMap<String, Vec<Arc<Queue>>>,
}

struct Queue {
    name: String,
    tx: mpsc::UnboundedSender<Item>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Item>>,
    closed: AtomicBool,
    closing: Notify,
    consumers: Mutex<Consumers>,
    /// Set once the journal's messages for this subscription were loaded into the queue.
    loaded: OnceCell<()>,
    /// With a journal: the positions of the messages this queue holds in memory (queued, or
    /// delivered and not yet settled), so that no journal entry is in memory twice (see
    /// `Inner::load`).
    known: Mutex<HashSet<u64>>,
}

/// Who consumes a queue, for exclusive subscriptions.
#[derive(Default)]
struct Consumers {
    shared: usize,
    exclusive: bool,
}

/// How long a subscribe waits for the consumers that hold a queue to go away before it is
/// refused: a runtime dropped a moment ago lets go of its consumers when its tasks end.
const HOLDER_WAIT: Duration = Duration::from_secs(2);

/// Keeps a consumer counted on its queue while its stream lives.
struct Holder {
    queue: Arc<Queue>,
    exclusive: bool,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut c = lock(&self.queue.consumers);
        if self.exclusive {
            c.exclusive = false;
        } else {
            c.shared = c.shared.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain maps; the data
    // is still structurally valid, so keep serving rather than cascading the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InMemoryBus {
    /// A new bus with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus that dead-letters a message instead of redelivering it once it has been
    /// delivered `max` times.
    pub fn with_max_deliveries(max: u32) -> Self {
        InMemoryBus { inner: Arc::new(Inner { max_deliveries: Some(max), ..Inner::default() }) }
    }

    /// A bus whose queues `journal` keeps, for the local bus.
    pub(super) fn journaled(journal: Arc<dyn Store>, max_deliveries: Option<u32>) -> Self {
        InMemoryBus { inner: Arc::new(Inner { max_deliveries, journal: Some(journal), ..Inner::default() }) }
    }

    /// Everything dead-lettered so far on every subscription, oldest first (a snapshot for
    /// tests; [`Bus::dead_letters`] reads one subscription's).
    pub fn all_dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.inner.dead).clone()
    }

    fn queue(&self, subscription: &str) -> Arc<Queue> {
        let mut topo = lock(&self.inner.topology);
        topo.queues
            .entry(subscription.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                Arc::new(Queue {
                    name: subscription.to_owned(),
                    tx,
                    rx: tokio::sync::Mutex::new(rx),
                    closed: AtomicBool::new(false),
                    closing: Notify::new(),
                    consumers: Mutex::default(),
                    loaded: OnceCell::new(),
                    known: Mutex::default(),
                })
            })
            .clone()
    }

    fn bind(&self, queue: &Arc<Queue>, names: &[&str]) {
        let mut topo = lock(&self.inner.topology);
        for name in names {
            let bound = topo.bindings.entry((*name).to_owned()).or_default();
            if !bound.iter().any(|q| Arc::ptr_eq(q, queue)) {
                bound.push(queue.clone());
            }
        }
    }

    /// Counts one more consumer on `queue`, waiting a little for holders that are going away.
    async fn hold(&self, queue: &Arc<Queue>, exclusive: bool) -> Result<Holder, BusError> {
        let deadline = tokio::time::Instant::now() + HOLDER_WAIT;
        loop {
            {
                let mut c = lock(&queue.consumers);
                let free = !c.exclusive && (!exclusive || c.shared == 0);
                if free {
                    if exclusive {
                        c.exclusive = true;
                    } else {
                        c.shared += 1;
                    }
                    return Ok(Holder { queue: queue.clone(), exclusive });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let detail = if exclusive {
                    "it already has a consumer, and an exclusive subscription must be its only one"
                } else {
                    "its consumer subscribed exclusively (a runtime whose store one process owns)"
                };
                return Err(BusError::SubscriptionInUse { subscription: queue.name.clone(), detail: detail.into() });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn consumer(&self, subscription: &str, names: &[&str], exclusive: bool) -> Result<Consumer, BusError> {
        let queue = self.queue(subscription);
        // Bound only once the consumer is let in: a refused one changes no routing.
        let holder = self.hold(&queue, exclusive).await?;
        let loaded_before = queue.loaded.initialized();
        queue.loaded.get_or_try_init(|| self.inner.load(&queue)).await?;
        if loaded_before {
            // A consumer of an earlier runtime on this bus may have gone away between a
            // commit and the delivery of its queued copies: take up what the journal holds
            // and this queue does not.
            self.inner.load(&queue).await?;
        }
        self.bind(&queue, names);
        Ok(Consumer::new(subscription, Box::new(MemoryStream { bus: self.inner.clone(), queue, _holder: holder })))
    }

    /// The subscriptions bound to `name` right now.
    pub(super) fn bound(&self, name: &str) -> Vec<String> {
        lock(&self.inner.topology)
            .bindings
            .get(name)
            .map_or_else(Vec::new, |b| b.iter().map(|q| q.name.clone()).collect())
    }

    /// Queues messages already kept in the journal (a durable commit wrote them there). A
    /// subscription removed meanwhile no longer takes its copy.
    pub(super) fn deliver_stored(&self, messages: Vec<QueuedMessage>) -> Result<(), BusError> {
        kept_not_delivered();
        for m in messages {
            let queue = lock(&self.inner.topology).queues.get(&m.subscription).cloned();
            if let Some(queue) = queue {
                self.inner.enqueue(&queue, Item { envelope: m.envelope, seq: m.seq, only_copy: true })?;
            }
        }
        Ok(())
    }

    /// Puts a message straight onto one subscription's queue, whatever its name is bound to,
    /// as an operator would with a broker's admin tool (and as a stale binding would).
    pub fn inject(&self, subscription: &str, envelope: Envelope) -> Result<(), BusError> {
        let queue = lock(&self.inner.topology)
            .queues
            .get(subscription)
            .cloned()
            .ok_or_else(|| BusError::UnknownSubscription(subscription.to_owned()))?;
        self.inner.enqueue(&queue, Item { envelope, seq: 0, only_copy: false })
    }
}

impl Inner {
    /// Puts what the journal holds for a subscription and its queue does not hold into the
    /// queue: at its first subscribe (before the queue is bound to any name), and again at
    /// later ones. Only what the store says is durable is delivered: a commit whose delivery
    /// was cut short may not be yet. A message already in memory (`Queue::known`) is not
    /// added again, so nothing is delivered twice by a load racing a publish or a commit's
    /// delivery.
    async fn load(&self, queue: &Queue) -> Result<(), BusError> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let mut after = None;
        loop {
            let page = journal.queued(&queue.name, after, 1_000).await.map_err(journal_error)?;
            let Some(last) = page.last() else { return Ok(()) };
            after = Some(last.seq);
            journal.barrier().await.map_err(journal_error)?;
            for m in page {
                self.enqueue(queue, Item { envelope: m.envelope, seq: m.seq, only_copy: false })?;
            }
        }
    }

    /// Keeps copies for `targets` in the journal (when there is one) and waits until they are
    /// durable: only then has the bus taken responsibility for the message.
    async fn journal(&self, targets: &[Arc<Queue>], envelope: &Envelope) -> Result<Vec<u64>, BusError> {
        let Some(journal) = &self.journal else { return Ok(vec![0; targets.len()]) };
        let copies = targets.iter().map(|q| (q.name.clone(), envelope.clone())).collect();
        let enqueued = journal.enqueue(copies).await.map_err(journal_error)?;
        enqueued.durable.await.map_err(journal_error)?;
        kept_not_delivered();
        Ok(enqueued.seqs)
    }

    fn enqueue(&self, queue: &Queue, item: Item) -> Result<(), BusError> {
        if queue.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if self.journal.is_some() && !lock(&queue.known).insert(item.seq) {
            return Ok(());
        }
        self.activity.add(1);
        if queue.tx.send(item).is_err() {
            self.activity.done(1);
            return Err(BusError::Closed);
        }
        Ok(())
    }

    /// Removes and returns the dead letters of `message_id` on `subscription`.
    fn take_dead(&self, subscription: &str, message_id: Uuid) -> Vec<DeadLetter> {
        let mut dead = lock(&self.dead);
        let (taken, kept) = std::mem::take(&mut *dead)
            .into_iter()
            .partition(|d| d.subscription == subscription && d.envelope.message_id == message_id);
        *dead = kept;
        taken
    }

    async fn park(&self, queue: &Queue, item: Item, reason: String) -> Result<(), BusError> {
        let subscription = queue.name.as_str();
        tracing::debug!(
            subscription,
            message_name = %item.envelope.name,
            message_id = %item.envelope.message_id,
            %reason,
            "message dead-lettered"
        );
        let at = Timestamp::now();
        if let Some(journal) = &self.journal {
            let message =
                QueuedMessage { subscription: subscription.to_owned(), seq: item.seq, envelope: item.envelope };
            // On failure the message stays queued, delivered again after a restart.
            let seq = message.seq;
            let parked = journal.dead_letter_queued(message, &reason, at).await.map_err(journal_error);
            if parked.is_ok() {
                lock(&queue.known).remove(&seq);
            }
            self.activity.done(1);
            return parked;
        }
        lock(&self.dead).push(DeadLetter {
            subscription: subscription.to_owned(),
            envelope: item.envelope,
            reason,
            at,
        });
        self.activity.done(1);
        Ok(())
    }

    /// Puts a delivered message back, or parks it if it has used up its deliveries. The
    /// journal's copy learns the new delivery count, so a restart does not reset the limit.
    async fn redeliver(self: &Arc<Self>, queue: &Arc<Queue>, mut item: Item) -> Result<(), BusError> {
        if let Some(max) = self.max_deliveries {
            if item.envelope.attempt >= max {
                let reason = format!("delivered {} times without being acked", item.envelope.attempt);
                return self.park(queue, item, reason).await;
            }
        }
        item.envelope.attempt = item.envelope.attempt.saturating_add(1);
        let mut result = Ok(());
        if let Some(journal) = &self.journal {
            let message = QueuedMessage { subscription: queue.name.clone(), seq: item.seq, envelope: item.envelope };
            result = journal.requeue(&message).await.map_err(journal_error);
            item.envelope = message.envelope;
        }
        // Already counted while delivered: move the count back to the queue, do not add.
        if queue.closed.load(Ordering::SeqCst) || queue.tx.send(item).is_err() {
            self.activity.done(1);
        }
        result
    }

    /// Removes a consumed message from the journal. A failure leaves it there, so a restart
    /// delivers it again, which the consumer's inbox makes harmless.
    async fn consumed(&self, queue: &Queue, seq: u64) -> Result<(), BusError> {
        self.activity.done(1);
        match &self.journal {
            Some(journal) => {
                crate::crash_points::crash_point!("local_bus.before_ack_removal");
                let removed = journal.dequeue(&queue.name, &[seq]).await.map_err(journal_error);
                lock(&queue.known).remove(&seq);
                removed
            }
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Bus for InMemoryBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let targets = lock(&self.inner.topology).bindings.get(&envelope.name).cloned().unwrap_or_default();
        if targets.is_empty() {
            return Err(BusError::Unroutable {
                name: envelope.name,
                detail: "the in-memory bus delivers only to subscriptions that exist when a message is \
                         published, and none is bound to this name: subscribe first (a runtime subscribes \
                         its sagas and handlers in build())"
                    .into(),
            });
        }
        let seqs = self.inner.journal(&targets, &envelope).await?;
        for (queue, seq) in targets.iter().zip(seqs) {
            self.inner.enqueue(queue, Item { envelope: envelope.clone(), seq, only_copy: false })?;
        }
        Ok(())
    }

    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.consumer(subscription, names, false).await
    }

    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.consumer(subscription, names, true).await
    }

    fn has_subscribers(&self, name: &str) -> Option<bool> {
        Some(lock(&self.inner.topology).bindings.get(name).is_some_and(|b| !b.is_empty()))
    }

    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        let queue = {
            let mut topo = lock(&self.inner.topology);
            let queue = topo
                .queues
                .remove(subscription)
                .ok_or_else(|| BusError::UnknownSubscription(subscription.to_owned()))?;
            for bound in topo.bindings.values_mut() {
                bound.retain(|q| !Arc::ptr_eq(q, &queue));
            }
            topo.bindings.retain(|_, v| !v.is_empty());
            queue
        };
        queue.closed.store(true, Ordering::SeqCst);
        queue.closing.notify_waiters();
        // Close first, then drain: a publish racing with us either lands before the close (and
        // is drained and uncounted here) or fails to send (and uncounts itself).
        let mut rx = queue.rx.lock().await;
        rx.close();
        let mut discarded = 0;
        while rx.try_recv().is_ok() {
            discarded += 1;
        }
        self.inner.activity.done(discarded);
        if let Some(journal) = &self.inner.journal {
            // The journal holds every queued copy (those just drained, and those of a
            // subscription never loaded): remove them page by page.
            let mut after = None;
            loop {
                let page = journal.queued(subscription, after, 1_000).await.map_err(journal_error)?;
                let Some(last) = page.last() else { break };
                after = Some(last.seq);
                let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
                journal.dequeue(subscription, &seqs).await.map_err(journal_error)?;
            }
        }
        Ok(())
    }

    fn activity(&self) -> Option<Arc<Activity>> {
        Some(self.inner.activity.clone())
    }

    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let dead = lock(&self.inner.dead);
        Ok(dead.iter().filter(|d| d.subscription == subscription).take(limit).cloned().collect())
    }

    async fn replay_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        if !lock(&self.inner.topology).queues.contains_key(subscription) {
            return Err(BusError::UnknownSubscription(subscription.to_owned()));
        }
        let revived = self.inner.take_dead(subscription, message_id);
        let count = revived.len();
        for mut dead in revived {
            dead.envelope.attempt = 1;
            self.inject(subscription, dead.envelope)?;
        }
        Ok(count)
    }

    async fn discard_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        Ok(self.inner.take_dead(subscription, message_id).len())
    }
}

struct MemoryStream {
    bus: Arc<Inner>,
    queue: Arc<Queue>,
    _holder: Holder,
}

#[async_trait::async_trait]
impl DeliveryStream for MemoryStream {
    async fn next(&mut self) -> Option<Delivery> {
        let closing = self.queue.closing.notified();
        if self.queue.closed.load(Ordering::SeqCst) {
            return None;
        }
        let item = tokio::select! {
            biased;
            _ = closing => None,
            item = async { self.queue.rx.lock().await.recv().await } => item,
        }?;
        let acker =
            MemoryAcker { bus: self.bus.clone(), queue: self.queue.clone(), seq: item.seq, only_copy: item.only_copy };
        Some(Delivery::new(item.envelope, Box::new(acker)))
    }
}

struct MemoryAcker {
    bus: Arc<Inner>,
    queue: Arc<Queue>,
    seq: u64,
    only_copy: bool,
}

impl MemoryAcker {
    /// Redelivers in the background: after `delay`, and off the caller's stack (an abandoned
    /// delivery is settled from `Drop`). A failed journal write is logged: the message is
    /// queued again in memory either way, and the journal keeps its older copy.
    fn redeliver_later(self: Box<Self>, envelope: Envelope, delay: Duration) {
        let item = Item { envelope, seq: self.seq, only_copy: self.only_copy };
        if delay.is_zero() && self.bus.journal.is_none() {
            // Nothing to write: the message is back in its queue before this returns.
            let _ = self.bus.redeliver(&self.queue, item).now_or_never();
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (the process is ending): the journal still holds the message.
            self.bus.activity.done(1);
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = self.bus.redeliver(&self.queue, item).await {
                tracing::warn!(subscription = %self.queue.name, error = %e, "could not record a redelivery");
            }
        });
    }
}

#[async_trait::async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.bus.consumed(&self.queue, self.seq).await
    }

    async fn nack(self: Box<Self>, envelope: Envelope, delay: Duration) -> Result<(), BusError> {
        if delay.is_zero() {
            let item = Item { envelope, seq: self.seq, only_copy: self.only_copy };
            return self.bus.redeliver(&self.queue, item).await;
        }
        self.redeliver_later(envelope, delay);
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: String) -> Result<(), BusError> {
        self.bus.park(&self.queue, Item { envelope, seq: self.seq, only_copy: self.only_copy }, reason).await
    }

    fn queue_entry(&self) -> Option<QueueEntry> {
        self.bus.journal.as_ref().map(|journal| QueueEntry {
            subscription: self.queue.name.clone(),
            seq: self.seq,
            store: journal.identity(),
            only_copy: self.only_copy,
        })
    }

    async fn ack_consumed(self: Box<Self>) -> Result<(), BusError> {
        // The consumer's commit removed the entry: nothing left to write.
        lock(&self.queue.known).remove(&self.seq);
        self.bus.activity.done(1);
        Ok(())
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        self.redeliver_later(envelope, Duration::ZERO);
    }
}
