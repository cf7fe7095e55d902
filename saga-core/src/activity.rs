//! Counting work in flight, so that "nothing is left to do" can be awaited without polling.
//!
//! The bus counts messages queued or delivered but not yet settled; the runtime counts units
//! of work and outbox entries not yet relayed. Each piece of work is counted *before* the
//! piece that produced it is released (a message is acked only after its commit added the
//! outbox entries to the count), so the sum never dips to zero while anything is pending.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A counter of pending work with a wake-up when it changes.
#[derive(Debug, Default)]
pub struct Activity {
    pending: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// A new, idle counter.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts `n` more pieces of work.
    pub fn add(&self, n: usize) {
        if n > 0 {
            self.pending.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// Marks `n` pieces of work finished.
    pub fn done(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.pending.fetch_sub(n, Ordering::SeqCst);
        debug_assert!(before >= n, "activity counter underflow");
        self.changed.notify_waiters();
    }

    /// Work currently pending.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Counts one piece of work until the returned guard is dropped.
    pub fn guard(self: &Arc<Self>) -> ActivityGuard {
        self.add(1);
        ActivityGuard(Some(self.clone()))
    }

    /// A future that completes at the next change; create it before checking `pending`.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// Keeps one piece of work counted while alive.
#[derive(Debug)]
pub struct ActivityGuard(Option<Arc<Activity>>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.done(1);
        }
    }
}

/// Waits until every counter reads zero at the same time.
pub(crate) async fn settle(counters: &[Arc<Activity>]) {
    loop {
        let waits: Vec<_> = counters.iter().map(|c| Box::pin(c.changed())).collect();
        let mut waits = waits;
        for w in &mut waits {
            w.as_mut().enable();
        }
        if counters.iter().all(|c| c.pending() == 0) {
            // One more look after letting spawned tasks run: work handed between tasks is
            // counted before release, so two consecutive zero readings mean quiescence.
            tokio::task::yield_now().await;
            if counters.iter().all(|c| c.pending() == 0) {
                return;
            }
            continue;
        }
        futures::future::select_all(waits).await;
    }
}
