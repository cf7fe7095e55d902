//! Wall-clock time, real or virtual.
//!
//! Durable timers are stored as wall-clock [`Timestamp`]s, so they survive restarts and can be
//! compared across processes. Tests swap in a [`ManualClock`] and move time forward by hand:
//! a 30-second timeout then fires at once and deterministically.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::message::Timestamp;

/// A source of wall-clock time that the timer task can sleep on.
#[async_trait::async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Returns once `now() >= due`, or earlier (callers re-check).
    async fn sleep_until(&self, due: Timestamp);
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep_until(&self, due: Timestamp) {
        let now = self.now();
        if due > now {
            tokio::time::sleep(Duration::from_millis(due.0 - now.0)).await;
        }
    }
}

/// A clock that only moves when told to; share it (it is cheap to clone) between a test and
/// the runtimes it starts, so time survives a simulated restart.
///
/// ```
/// use saga_core::clock::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::starting_at(1_000);
/// clock.advance(Duration::from_secs(30));
/// assert_eq!(clock.now().0, 31_000);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now_ms: AtomicU64,
    moved: Notify,
}

impl ManualClock {
    /// A clock reading `ms` milliseconds since the epoch.
    pub fn starting_at(ms: u64) -> Self {
        ManualClock { inner: Arc::new(ManualInner { now_ms: AtomicU64::new(ms), moved: Notify::new() }) }
    }

    /// Moves time forward and wakes every sleeper.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.inner.now_ms.fetch_add(ms, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::starting_at(Timestamp::now().0)
    }
}

#[async_trait::async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.inner.now_ms.load(Ordering::SeqCst))
    }

    async fn sleep_until(&self, due: Timestamp) {
        loop {
            let moved = self.inner.moved.notified();
            if self.now() >= due {
                return;
            }
            moved.await;
        }
    }
}
