//! The outbox relay: publishes committed messages, then removes them from the store.
//!
//! Entries reach the relay only after the commit that wrote them is durable, so nothing is
//! published that a crash could take back. An entry is removed only after the bus confirmed
//! it; a crash in between publishes it again on the next start, and consumers deduplicate on
//! its (derived, stable) message id. On start-up the relay first drains what the store holds.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::mpsc;

use super::Core;
use crate::store::OutboxEntry;

/// How many entries one relay round publishes at most.
const BATCH: usize = 512;

/// The relay's inbox of durable outbox entries.
#[derive(Clone)]
pub(crate) struct RelayHandle {
    tx: mpsc::UnboundedSender<Vec<OutboxEntry>>,
}

impl RelayHandle {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Vec<OutboxEntry>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (RelayHandle { tx }, rx)
    }

    /// Hands durable entries to the relay (they are already counted as activity).
    pub(crate) fn send(&self, entries: Vec<OutboxEntry>) {
        if !entries.is_empty() {
            // Fails only during shutdown: the entries stay in the store for the next start.
            let _ = self.tx.send(entries);
        }
    }
}

/// Publishes what an earlier run left in the outbox. Runs before any consumer starts.
pub(crate) async fn drain_leftovers(core: &Core) -> Result<usize, crate::Error> {
    // A store reopened in this process may hold commits that are applied but not yet flushed.
    core.store.barrier().await?;
    let mut total = 0;
    loop {
        let entries = core.store.outbox(BATCH).await?;
        if entries.is_empty() {
            return Ok(total);
        }
        total += entries.len();
        core.activity.add(entries.len());
        publish(core, entries).await;
    }
}

/// The relay task.
pub(crate) async fn run(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Vec<OutboxEntry>>) {
    while let Some(mut entries) = rx.recv().await {
        while entries.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => entries.extend(more),
                Err(_) => break,
            }
        }
        publish(&core, entries).await;
    }
}

/// Publishes entries (retrying failed publishes with backoff until they succeed), then
/// removes them from the store and from the activity count.
async fn publish(core: &Core, entries: Vec<OutboxEntry>) {
    let count = entries.len();
    let mut pending = entries;
    let mut published = Vec::with_capacity(count);
    let mut backoff = Duration::from_millis(50);
    while !pending.is_empty() {
        let results = join_all(pending.iter().map(|e| core.bus.publish(e.envelope.clone()))).await;
        let mut failed = Vec::new();
        for (entry, result) in pending.into_iter().zip(results) {
            match result {
                Ok(()) => published.push(entry.seq),
                Err(e) => {
                    tracing::warn!(error = %e, message = %entry.envelope.name, "publish failed, retrying");
                    failed.push(entry);
                }
            }
        }
        pending = failed;
        if !pending.is_empty() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    crate::crash_points::crash_point!("relay.after_publish_before_outbox_removal");
    if let Err(e) = core.store.remove_outbox(&published).await {
        // Left in the store, they are published again on the next start and deduplicated.
        tracing::warn!(error = %e, "could not remove published outbox entries");
    }
    core.activity.done(count);
}
