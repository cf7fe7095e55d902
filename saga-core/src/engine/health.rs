//! Whether the store can take work, as the runtime sees it.
//!
//! A store error is not a message's fault, so it never counts against a message's retry
//! budget: the lane that hit it keeps the unit and runs it again with capped backoff, the
//! completion task keeps a commit whose flush failed until the store confirms it durable,
//! and the consumers stop taking new deliveries until a unit gets through again. A store that
//! latched broken ([`StoreError::Broken`]) cannot get better while it is open: the runtime
//! stops consuming for good, says so once at error level, and reports it here until the
//! process is restarted.

use tokio::sync::watch;

use crate::message::Timestamp;
use crate::store::StoreError;

/// What [`SagaRuntime::health`](super::SagaRuntime::health) reports.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::engine::{SagaRuntime, StoreHealth};
/// use saga_core::store::MemoryStore;
/// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
/// let health = runtime.health();
/// assert_eq!(health.store, StoreHealth::Healthy);
/// assert!(health.ended_subscriptions.is_empty());
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The store's state.
    pub store: StoreHealth,
    /// Subscriptions whose consumer ended on its own (the transport closed it: the queue was
    /// deleted, another process took its exclusive claim): nothing is consumed from them any
    /// more. Restart the process once the cause is dealt with.
    pub ended_subscriptions: Vec<String>,
}

/// The store's state, as the runtime last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreHealth {
    /// The last unit of work got through.
    Healthy,
    /// Units fail with store errors; they are retried, and no new delivery is taken meanwhile.
    Unavailable {
        /// The last error.
        reason: String,
        /// When the first of these failures happened.
        since: Timestamp,
    },
    /// The store stopped accepting writes until it is reopened: nothing is consumed any more.
    /// Restart the process.
    Broken {
        /// Why.
        reason: String,
    },
}

impl StoreHealth {
    fn is_healthy(&self) -> bool {
        matches!(self, StoreHealth::Healthy)
    }
}

pub(crate) struct HealthState {
    store: watch::Sender<StoreHealth>,
    ended: std::sync::Mutex<Vec<String>>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState { store: watch::channel(StoreHealth::Healthy).0, ended: Default::default() }
    }
}

impl HealthState {
    pub(crate) fn current(&self) -> Health {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Health { store: self.store.borrow().clone(), ended_subscriptions: ended }
    }

    /// A subscription's consumer ended on its own.
    pub(crate) fn subscription_ended(&self, subscription: &str) {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).push(subscription.to_owned());
    }

    /// Records a store failure; returns whether it changed the state (to log it once).
    pub(crate) fn store_failed(&self, error: &StoreError, now: Timestamp) -> bool {
        self.store.send_if_modified(|state| {
            if matches!(state, StoreHealth::Broken { .. }) {
                return false;
            }
            if let StoreError::Broken { reason } = error {
                *state = StoreHealth::Broken { reason: reason.clone() };
                return true;
            }
            match state {
                // Keep `since`; follow the latest reason without waking anyone.
                StoreHealth::Unavailable { reason, .. } => {
                    *reason = error.to_string();
                    false
                }
                _ => {
                    *state = StoreHealth::Unavailable { reason: error.to_string(), since: now };
                    true
                }
            }
        })
    }

    /// A unit got through: the store works (a broken store stays broken).
    pub(crate) fn store_ok(&self) {
        if matches!(*self.store.borrow(), StoreHealth::Unavailable { .. }) {
            self.store.send_if_modified(|state| match state {
                StoreHealth::Unavailable { .. } => {
                    *state = StoreHealth::Healthy;
                    true
                }
                _ => false,
            });
        }
    }

    pub(crate) fn is_broken(&self) -> bool {
        matches!(*self.store.borrow(), StoreHealth::Broken { .. })
    }

    /// Returns once the store is healthy (never, for a broken one).
    pub(crate) async fn usable(&self) {
        let mut rx = self.store.subscribe();
        let _ = rx.wait_for(StoreHealth::is_healthy).await;
    }

    /// Returns once the store is not healthy.
    pub(crate) async fn unusable(&self) {
        let mut rx = self.store.subscribe();
        let _ = rx.wait_for(|h| !h.is_healthy()).await;
    }
}
