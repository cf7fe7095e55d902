//! The outbox relay: publishes committed messages, then removes them from the store.
//!
//! Entries reach the relay only after the commit that wrote them is durable, so nothing is
//! published that a crash could take back. An entry is removed only after the bus confirmed
//! it; a crash in between publishes it again on the next start, and consumers deduplicate on
//! its (derived, stable) message id.
//!
//! Entries are published **independently**: one the bus will not take never holds up the
//! others, except those of the same saga instance (the same correlation id), which go out one
//! at a time and in order, so that a compensation never overtakes the command it undoes. A failed publish is tried again with capped backoff; a message the bus refuses for
//! good ([`BusError::Refused`], too large, say) is parked at once, and one that no
//! subscription takes ([`BusError::Unroutable`]) is tried again until it has been unroutable
//! for the runtime's grace period (its consumer may be deploying), then parked. A parked entry
//! leaves the outbox for the store's parked outbox, with its reason, where an operator finds
//! it (`SagaRuntime::parked_outbox`); nothing else fails.
//!
//! On start-up a sweep task pages through what the store's outbox holds (what an earlier run
//! left) and hands it to the relay like any other entries, a page at a time while the relay
//! has room: new commits' entries go on meanwhile, and `build()` does not wait for it. The sweep
//! counts as work in flight until it is done, so `settle()` waits for it.
//!
//! In a store several processes share, the outbox also holds the entries of processes that
//! are alive and publishing them: the sweep may not take those. There a sweeper runs on every
//! process for as long as it runs, every third of the store's claim lease, and takes only the
//! entries that nobody removed within a lease of their commit ([`Store::claim_stale_outbox`]:
//! a dead process's, or one whose publish keeps failing), each claimed so that one sweeper at
//! a time publishes it. The committing process's own hand-off stays the fast path. An entry
//! may then go out twice (its process was only slow); its derived message id lets the
//! consumers' inboxes drop the copy.
//!
//! [`Store::claim_stale_outbox`]: crate::store::Store::claim_stale_outbox

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::Core;
use crate::activity::ActivityGuard;
use crate::bus::BusError;
use crate::saga::RetryPolicy;
use crate::store::{OutboxEntry, StoreError};

/// How many publishes run at once, and how many entries one page of the start-up sweep reads.
const IN_FLIGHT: usize = 512;
/// How many published entries are removed from the store in one call.
const REMOVE_BATCH: usize = 512;

/// How a failed publish is tried again: without end, at most 30 s apart.
fn publish_retry() -> RetryPolicy {
    RetryPolicy::forever(Duration::from_millis(50)).max_delay(Duration::from_secs(30))
}

/// The relay's inbox of durable outbox entries.
#[derive(Clone)]
pub(crate) struct RelayHandle {
    tx: mpsc::UnboundedSender<Vec<OutboxEntry>>,
    /// How many entries the relay holds, so that the sweep feeds it at its pace.
    held: Arc<AtomicUsize>,
    room: Arc<tokio::sync::Notify>,
}

impl RelayHandle {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Vec<OutboxEntry>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (RelayHandle { tx, held: Arc::default(), room: Arc::default() }, rx)
    }

    /// Waits until the relay holds fewer than `IN_FLIGHT` entries.
    async fn has_room(&self) {
        loop {
            let room = self.room.notified();
            if self.held.load(Ordering::SeqCst) < IN_FLIGHT {
                return;
            }
            room.await;
        }
    }

    /// Hands durable entries to the relay (they are already counted as activity).
    pub(crate) fn send(&self, entries: Vec<OutboxEntry>) {
        if !entries.is_empty() {
            // Fails only during shutdown: the entries stay in the store for the next start.
            let _ = self.tx.send(entries);
        }
    }
}

/// An entry the relay holds, with its history of failed publishes.
struct Pending {
    entry: OutboxEntry,
    failures: u32,
    unroutable_since: Option<Instant>,
    /// Its correlation's turn is its own (it is being published or waits for a retry).
    has_turn: bool,
}

impl Pending {
    fn new(entry: OutboxEntry) -> Self {
        Pending { entry, failures: 0, unroutable_since: None, has_turn: false }
    }
}

type Published = BoxFuture<'static, (Pending, Result<(), BusError>)>;

struct Relay {
    core: Arc<Core>,
    handle: RelayHandle,
    /// Every position the relay holds: ready, being published, waiting to be retried, or
    /// published and waiting to be removed.
    known: HashSet<u64>,
    ready: VecDeque<Pending>,
    retries: BTreeMap<(Instant, u64), Pending>,
    in_flight: FuturesUnordered<Published>,
    published: Vec<u64>,
    /// Correlations with an entry out (being published or waiting to be retried), and the
    /// entries of theirs that wait for it, in order.
    turns: HashMap<Uuid, VecDeque<Pending>>,
}

/// The relay task.
pub(crate) async fn run(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Vec<OutboxEntry>>) {
    let handle = core.relay.clone();
    let mut relay = Relay {
        core,
        handle,
        known: HashSet::new(),
        ready: VecDeque::new(),
        retries: BTreeMap::new(),
        in_flight: FuturesUnordered::new(),
        published: Vec::new(),
        turns: HashMap::new(),
    };
    loop {
        relay.start_publishing();
        if relay.published.len() >= REMOVE_BATCH || (!relay.published.is_empty() && relay.in_flight.is_empty()) {
            relay.remove_published().await;
        }
        relay.handle.held.store(relay.known.len(), Ordering::SeqCst);
        relay.handle.room.notify_waiters();
        let next_retry = relay.retries.keys().next().map(|(at, _)| *at);
        tokio::select! {
            entries = rx.recv() => match entries {
                Some(entries) => relay.accept(entries),
                None => return,
            },
            Some((pending, result)) = relay.in_flight.next(), if !relay.in_flight.is_empty() => {
                relay.settle(pending, result).await
            }
            _ = tokio::time::sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                relay.release_due_retries()
            }
        }
    }
}

impl Relay {
    fn accept(&mut self, entries: Vec<OutboxEntry>) {
        for entry in entries {
            if self.known.insert(entry.seq) {
                self.ready.push_back(Pending::new(entry));
            } else {
                // Both the start-up sweep and a commit handed it over: it was counted twice.
                self.core.activity.done(1);
            }
        }
    }

    fn start_publishing(&mut self) {
        while self.in_flight.len() < IN_FLIGHT {
            let Some(mut pending) = self.ready.pop_front() else { break };
            if let (Some(correlation), false) = (pending.entry.envelope.correlation_id, pending.has_turn) {
                if let Some(waiting) = self.turns.get_mut(&correlation) {
                    waiting.push_back(pending);
                    continue;
                }
                self.turns.insert(correlation, VecDeque::new());
                pending.has_turn = true;
            }
            let bus = self.core.bus.clone();
            let took = self.core.metrics.publish_duration();
            self.in_flight.push(Box::pin(async move {
                let started = std::time::Instant::now();
                let result = bus.publish(pending.entry.envelope.clone()).await;
                took.record(started.elapsed().as_secs_f64());
                (pending, result)
            }));
        }
    }

    /// The entry is out of the relay's hands: the next one of its correlation may go.
    fn pass_turn(&mut self, pending: &Pending) {
        let Some(correlation) = pending.entry.envelope.correlation_id.filter(|_| pending.has_turn) else { return };
        match self.turns.get_mut(&correlation).and_then(VecDeque::pop_front) {
            Some(mut next) => {
                next.has_turn = true;
                self.ready.push_front(next);
            }
            None => {
                self.turns.remove(&correlation);
            }
        }
    }

    async fn settle(&mut self, mut pending: Pending, result: Result<(), BusError>) {
        let e = match result {
            Ok(()) => {
                self.pass_turn(&pending);
                return self.published.push(pending.entry.seq);
            }
            Err(e) => e,
        };
        pending.failures += 1;
        let envelope = &pending.entry.envelope;
        let now = Instant::now();
        match &e {
            BusError::Refused { .. } => return self.park(pending, e.to_string()).await,
            BusError::Unroutable { .. } => {
                let since = *pending.unroutable_since.get_or_insert(now);
                let grace = self.core.unroutable_grace;
                if now.duration_since(since) >= grace {
                    let reason = format!("{e} (for {grace:?}, the runtime's park_unroutable_after)");
                    return self.park(pending, reason).await;
                }
            }
            _ => pending.unroutable_since = None,
        }
        let delay = publish_retry().delay_before_retry(pending.failures, envelope.message_id).unwrap_or_default();
        if pending.failures.is_power_of_two() {
            tracing::warn!(
                message_name = %envelope.name,
                message_id = %envelope.message_id,
                correlation_id = ?envelope.correlation_id,
                failures = pending.failures,
                ?delay,
                error = %e,
                "publishing an outbox entry failed; it stays in the outbox and is tried again"
            );
        }
        self.retries.insert((now + delay, pending.entry.seq), pending);
    }

    fn release_due_retries(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    /// Moves an entry to the parked outbox, where an operator sees it with its reason.
    async fn park(&mut self, pending: Pending, reason: String) {
        let envelope = &pending.entry.envelope;
        match self.core.store.park_outbox(pending.entry.seq, &reason, self.core.clock.now()).await {
            Ok(()) => {
                tracing::error!(
                    message_name = %envelope.name,
                    message_id = %envelope.message_id,
                    correlation_id = ?envelope.correlation_id,
                    %reason,
                    "parked an outbox entry the bus will not take; the other entries go on"
                );
                self.known.remove(&pending.entry.seq);
                self.pass_turn(&pending);
                self.core.activity.done(1);
            }
            Err(e) => {
                tracing::warn!(message_id = %envelope.message_id, error = %e, "cannot park an outbox entry; trying again");
                self.retries.insert((Instant::now() + Duration::from_secs(1), pending.entry.seq), pending);
            }
        }
    }

    async fn remove_published(&mut self) {
        crate::crash_points::crash_point!("relay.after_publish_before_outbox_removal");
        let published = std::mem::take(&mut self.published);
        if let Err(e) = self.core.store.remove_outbox(&published).await {
            // Left in the store, they are published again on the next start and deduplicated.
            tracing::warn!(error = %e, entries = published.len(), "could not remove published outbox entries");
        }
        for seq in &published {
            self.known.remove(seq);
        }
        self.core.activity.done(published.len());
    }
}

/// The sweeper of a shared store: hands the relay the outbox entries nobody published within
/// a lease, now and every third of a lease, for as long as the runtime runs.
pub(crate) async fn sweep_stale(core: Arc<Core>, lease: Duration) {
    let mut failures = 0u32;
    loop {
        core.relay.has_room().await;
        match core.store.claim_stale_outbox(IN_FLIGHT).await {
            Ok(page) if page.is_empty() => tokio::time::sleep(lease / 3).await,
            Ok(page) => {
                failures = 0;
                tracing::info!(entries = page.len(), "publishing outbox entries nobody published within a lease");
                core.activity.add(page.len());
                core.relay.send(page);
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot sweep the outbox for entries nobody published; trying again");
                let delay = publish_retry().delay_before_retry(failures, uuid::Uuid::nil()).unwrap_or_default();
                tokio::time::sleep(delay.min(lease / 3)).await;
            }
        }
    }
}

/// The start-up sweep of a store this process owns: hands the relay what the store's outbox
/// holds, a page at a time while the relay has room. `guard` keeps the sweep counted as work
/// in flight until it is done.
pub(crate) async fn sweep(core: Arc<Core>, guard: ActivityGuard) {
    let (mut cursor, mut swept, mut failures) = (None, 0usize, 0u32);
    loop {
        core.relay.has_room().await;
        let page = match core.store.outbox(cursor, IN_FLIGHT).await {
            Ok(page) => page,
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(error = %e, "an outbox record does not decode; the sweep of the outbox stops there");
                break;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot read the outbox left by an earlier run; trying again");
                tokio::time::sleep(publish_retry().delay_before_retry(failures, uuid::Uuid::nil()).unwrap_or_default())
                    .await;
                continue;
            }
        };
        let Some(last) = page.last().map(|e| e.seq) else { break };
        // The page must be durable before it is published: a store reopened in this process
        // may hold commits that are applied but not flushed yet.
        if let Err(e) = core.store.barrier().await {
            failures += 1;
            tracing::warn!(error = %e, "the store cannot confirm the outbox durable; trying again");
            tokio::time::sleep(publish_retry().delay_before_retry(failures, uuid::Uuid::nil()).unwrap_or_default())
                .await;
            continue;
        }
        cursor = Some(last);
        swept += page.len();
        core.activity.add(page.len());
        core.relay.send(page);
    }
    if swept > 0 {
        tracing::info!(entries = swept, "took over the outbox entries an earlier run left");
    }
    drop(guard);
}
