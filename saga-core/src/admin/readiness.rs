//! Whether a runtime can do its work, for a load balancer's readiness probe and for people.
//!
//! Liveness (the process answers) needs nothing from here; readiness asks the store for one
//! record with a deadline, so a store that hangs reads as not ready instead of hanging the
//! probe, and adds what the runtime already knows: a store latched broken, consumers the
//! transport ended, a bus that lost its connection. The relay backlog and parked entries are
//! reported but do not make a runtime unready: a backlog drains by itself, and a runtime that
//! is taken out of rotation for one cannot drain it.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Admin, SCANNED};
use crate::engine::StoreHealth;
use crate::message::Timestamp;

/// How long the store probe may take before the store counts as unreachable.
pub const PROBE_WITHIN: Duration = Duration::from_secs(2);

/// What [`Admin::readiness`] finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Readiness {
    /// Whether the runtime can take work: the store answered, is not broken, no consumer
    /// ended and the bus (when it can tell) is connected.
    pub ready: bool,
    /// What is wrong, one line each, when it is not ready.
    pub problems: Vec<String>,
    /// How long the store probe took, in milliseconds (the deadline when it did not answer).
    pub store_probe_ms: u64,
    /// The store's state as the engine last saw it: `healthy`, `unavailable` or `broken`.
    pub store: &'static str,
    /// Whether the bus is connected; `None` for a bus that cannot tell (in-process ones).
    pub bus_connected: Option<bool>,
    /// Subscriptions whose consumer the transport ended.
    pub ended_subscriptions: Vec<String>,
    /// Outbox entries waiting for the relay, counted up to [`SCANNED`].
    pub relay_backlog: usize,
    /// Whether there are more than `relay_backlog`.
    pub relay_backlog_more: bool,
    /// When the oldest waiting outbox entry was created.
    pub relay_oldest: Option<Timestamp>,
    /// Outbox entries the relay parked, counted up to [`SCANNED`].
    pub parked: usize,
}

impl Admin {
    /// Probes the store and reports whether this runtime can take work.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let readiness = runtime.admin().readiness().await;
    /// assert!(readiness.ready, "{:?}", readiness.problems);
    /// assert_eq!(readiness.relay_backlog, 0);
    /// # });
    /// ```
    pub async fn readiness(&self) -> Readiness {
        let mut problems = Vec::new();
        let started = Instant::now();
        let probe = tokio::time::timeout(PROBE_WITHIN, async {
            let outbox = self.core.store.outbox(None, SCANNED + 1).await?;
            let parked = self.core.store.parked_outbox(None, SCANNED).await?;
            Ok::<_, crate::store::StoreError>((outbox, parked))
        })
        .await;
        let store_probe_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (mut relay_backlog, mut relay_backlog_more, mut relay_oldest, mut parked) = (0, false, None, 0);
        match probe {
            Ok(Ok((outbox, parked_entries))) => {
                relay_backlog_more = outbox.len() > SCANNED;
                relay_backlog = outbox.len().min(SCANNED);
                relay_oldest = outbox.iter().map(|e| e.envelope.created_at).min();
                parked = parked_entries.len();
            }
            Ok(Err(e)) => problems.push(format!("the store did not answer: {e}")),
            Err(_) => problems.push(format!("the store did not answer within {PROBE_WITHIN:?}")),
        }
        let health = self.core.health.current();
        let store = match &health.store {
            StoreHealth::Healthy => "healthy",
            StoreHealth::Unavailable { reason, .. } => {
                problems.push(format!("units of work fail on the store: {reason}"));
                "unavailable"
            }
            StoreHealth::Broken { reason } => {
                problems.push(format!("the store is broken ({reason}): restart the process"));
                "broken"
            }
        };
        for subscription in &health.ended_subscriptions {
            problems.push(format!("the consumer of {subscription} ended: nothing is consumed from it"));
        }
        let bus_connected = self.core.bus.connected();
        if bus_connected == Some(false) {
            problems.push("the bus is not connected (it reconnects on its own)".to_owned());
        }
        Readiness {
            ready: problems.is_empty(),
            problems,
            store_probe_ms,
            store,
            bus_connected,
            ended_subscriptions: health.ended_subscriptions,
            relay_backlog,
            relay_backlog_more,
            relay_oldest,
            parked,
        }
    }
}
