//! What the benchmark observes, through public extension points only.
//!
//! [`ProbeCommits`] hooks any [`Store`]'s commits (through [`sagaflow::store::Intercepted`])
//! and counts every commit the engine makes; for the order saga's commits that finish an
//! instance (or, while parking, start one) it wraps the commit's
//! `Durable` future, so a saga's end time is the moment the engine itself sees its last commit
//! durable, which is when it would ack. [`ProbeBus`] wraps any [`Bus`] and counts publishes
//! (and the messages a commit wrote into local-bus queues).
//! The wrappers cost one branch per commit and one boxed future per finished saga.

use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use sagaflow::activity::Activity;
use sagaflow::bus::{Bus, BusError, Consumer};
use sagaflow::message::{Envelope, Message};
use sagaflow::saga::Saga;
use sagaflow::store::{
    Commit, CommitHook, Committed, InstanceRecord, QueuedMessage, SagaStatus, StatusKind, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::domain::OrderSaga;
use crate::saga::{PARK_BASE, Parked};

/// Which durable event hands a permit back to the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// An order saga reached a terminal status.
    Terminal,
    /// An order saga's first commit (it exists and waits on its first step).
    OrderStarted,
    /// A parked saga's first commit.
    ParkedStarted,
}

/// Counters and per-saga timestamps shared by the wrappers and the driver.
pub struct Probe {
    epoch: Instant,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    /// The epoch on the wall clock, so that a finish seen in another process can be placed.
    epoch_unix_ns: u64,
    /// Told of every order saga this process finished (a replica forwards them to the driver).
    on_finish: OnceLock<Box<dyn Fn(usize, StatusKind) + Send + Sync>>,
    order_base: u128,
    start_ns: Vec<AtomicU64>,
    end_ns: Vec<AtomicU64>,
    release: AtomicU8,
    /// Bounds the sagas in flight: the publisher takes a permit, the release event returns it.
    pub permits: Arc<Semaphore>,
    /// Successful `Store::commit` calls.
    pub commits: AtomicU64,
    /// Successful commits that carried a saga instance (step transitions).
    pub transitions: AtomicU64,
    /// Commits the store refused (conflicts, duplicates).
    pub refused: AtomicU64,
    /// `Bus::publish` calls and their payload bytes.
    pub publishes: AtomicU64,
    pub publish_bytes: AtomicU64,
    /// Order sagas finished durably, by outcome.
    pub completed: AtomicU64,
    pub compensated: AtomicU64,
    pub failed: AtomicU64,
    /// Order sagas whose start commit is durable.
    pub order_started: AtomicU64,
    /// Order sagas whose first transition after the start is durable (they moved a step).
    pub moved: AtomicU64,
    /// Parked sagas whose start commit is durable.
    pub parked: AtomicU64,
    /// Stock reservations (the first step's participant commits) durable.
    pub reserved: AtomicU64,
    last_event_ns: AtomicU64,
}

impl Probe {
    /// A probe for order sagas `0..sagas` (indices of `workload::order`).
    pub fn new(sagas: usize, in_flight: usize, release: Release) -> Arc<Self> {
        let order_base = crate::workload::order(0).order_id.as_u128();
        Arc::new(Probe {
            epoch: Instant::now(),
            epoch_unix_ns: unix_ns(),
            on_finish: OnceLock::new(),
            order_base,
            start_ns: (0..sagas).map(|_| AtomicU64::new(0)).collect(),
            end_ns: (0..sagas).map(|_| AtomicU64::new(0)).collect(),
            release: AtomicU8::new(release as u8),
            permits: Arc::new(Semaphore::new(in_flight)),
            commits: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            publish_bytes: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            compensated: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            order_started: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            last_event_ns: AtomicU64::new(0),
        })
    }

    /// Zeroes the commit and message counters (after a set-up phase).
    pub fn reset_counts(&self) {
        for c in [&self.commits, &self.transitions, &self.refused, &self.publishes, &self.publish_bytes] {
            c.store(0, Ordering::SeqCst);
        }
    }

    /// Changes which event returns a permit.
    pub fn release_on(&self, release: Release) {
        self.release.store(release as u8, Ordering::SeqCst);
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// Marks order saga `i` as published now.
    pub fn started(&self, i: usize) {
        if let Some(slot) = self.start_ns.get(i) {
            slot.store(self.now_ns(), Ordering::Relaxed);
        }
    }

    /// Order sagas finished durably.
    pub fn done(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
            + self.compensated.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }

    /// The time of the last release event, from the probe's epoch.
    pub fn last_event(&self) -> Duration {
        Duration::from_nanos(self.last_event_ns.load(Ordering::Relaxed))
    }

    /// The time of a moment, from the probe's epoch.
    pub fn since_epoch(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    fn index(&self, record: &InstanceRecord) -> Option<usize> {
        let id: Uuid = record.key.parse().ok()?;
        let i = usize::try_from(id.as_u128().checked_sub(self.order_base)?).ok()?;
        (i < self.start_ns.len()).then_some(i)
    }

    fn event(&self, release: Release) {
        self.event_at(release, self.now_ns());
    }

    fn event_at(&self, release: Release, at_ns: u64) {
        self.last_event_ns.fetch_max(at_ns, Ordering::Relaxed);
        if release as u8 == self.release.load(Ordering::SeqCst) {
            self.permits.add_permits(1);
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    /// Calls `f` for every order saga this process finishes from now on (once per probe).
    pub fn forward_finishes(&self, f: impl Fn(usize, StatusKind) + Send + Sync + 'static) {
        let _ = self.on_finish.set(Box::new(f));
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    /// Records order saga `i` finished by another process at `at_unix_ns` on the wall clock.
    pub fn finished_elsewhere(&self, i: usize, kind: StatusKind, at_unix_ns: u64) {
        let end = at_unix_ns.saturating_sub(self.epoch_unix_ns).max(1);
        self.record_finish(Some(i), kind, end);
    }

    fn finished(&self, i: Option<usize>, kind: StatusKind) {
        if let (Some(i), Some(f)) = (i, self.on_finish.get()) {
            f(i, kind);
        }
        self.record_finish(i, kind, self.now_ns());
    }

    fn record_finish(&self, i: Option<usize>, kind: StatusKind, end: u64) {
        if let Some(i) = i {
            self.end_ns[i].store(end, Ordering::Relaxed);
        }
        match kind {
            StatusKind::Completed => &self.completed,
            StatusKind::Compensated => &self.compensated,
            _ => &self.failed,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.event_at(Release::Terminal, end);
    }

    /// When each finished saga finished (durable terminal commit), from the probe's epoch, sorted.
    pub fn finish_times(&self) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .end_ns
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .filter(|e| *e > 0)
            .map(Duration::from_nanos)
            .collect();
        out.sort_unstable();
        out
    }

    /// Saga latencies (publish to durable terminal commit) of every finished saga, sorted.
    pub fn latencies(&self) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .start_ns
            .iter()
            .zip(&self.end_ns)
            .filter_map(|(s, e)| {
                let (s, e) = (s.load(Ordering::Relaxed), e.load(Ordering::Relaxed));
                (s > 0 && e >= s).then(|| Duration::from_nanos(e - s))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// What a commit means to the benchmark, decided before it is handed to the store.
    fn classify(&self, commit: &Commit) -> Watch {
        let Some(w) = &commit.instance else {
            let reserved = commit.outbox.iter().any(|e| e.name == crate::domain::StockReserved::NAME);
            return if reserved { Watch::Reserved } else { Watch::Nothing };
        };
        let record = &w.record;
        if record.saga == Parked::NAME {
            return if w.previous.is_none() { Watch::ParkedStart } else { Watch::Nothing };
        }
        if record.saga != OrderSaga::NAME {
            return Watch::Nothing;
        }
        match (&record.status, w.previous) {
            (status, _) if status.is_terminal() => Watch::Finish(self.index(record), status.kind()),
            (_, None) => Watch::OrderStart,
            // The first transition after the start: the saga moved a step.
            (SagaStatus::Running { .. } | SagaStatus::Compensating { .. }, Some((1, _))) => Watch::Moved,
            _ => Watch::Nothing,
        }
    }
}

enum Watch {
    Nothing,
    Finish(Option<usize>, StatusKind),
    OrderStart,
    Moved,
    ParkedStart,
    Reserved,
}

/// Counts commits and watches the ones the benchmark times; wraps a store through
/// [`sagaflow::store::Intercepted`].
pub struct ProbeCommits(pub Arc<Probe>);

#[async_trait::async_trait]
impl CommitHook for ProbeCommits {
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
        let watch = self.0.classify(&commit);
        let transition = commit.instance.is_some();
        let mut committed = match store.commit(commit).await {
            Ok(c) => c,
            Err(e) => {
                self.0.refused.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.0.commits.fetch_add(1, Ordering::Relaxed);
        if transition {
            self.0.transitions.fetch_add(1, Ordering::Relaxed);
        }
        if !matches!(watch, Watch::Nothing) {
            let probe = self.0.clone();
            let durable = committed.durable;
            committed.durable = async move {
                let result = durable.await;
                if result.is_ok() {
                    match watch {
                        Watch::Finish(i, kind) => probe.finished(i, kind),
                        Watch::OrderStart => {
                            probe.order_started.fetch_add(1, Ordering::Relaxed);
                            probe.event(Release::OrderStarted);
                        }
                        Watch::Moved => {
                            probe.moved.fetch_add(1, Ordering::Relaxed);
                            probe.last_event_ns.fetch_max(probe.now_ns(), Ordering::Relaxed);
                        }
                        Watch::Reserved => {
                            probe.reserved.fetch_add(1, Ordering::Relaxed);
                        }
                        Watch::ParkedStart => {
                            probe.parked.fetch_add(1, Ordering::Relaxed);
                            probe.event(Release::ParkedStarted);
                        }
                        Watch::Nothing => {}
                    }
                }
                result
            }
            .boxed();
        }
        Ok(committed)
    }
}

/// A [`Bus`] that counts publishes and can refuse one message name (to strand an outbox).
pub struct ProbeBus<B> {
    inner: B,
    probe: Arc<Probe>,
    refuse: Option<&'static str>,
}

impl<B: Bus> ProbeBus<B> {
    pub fn new(inner: B, probe: Arc<Probe>) -> Self {
        ProbeBus { inner, probe, refuse: None }
    }

    /// Fails every publish of `M` (the relay keeps retrying; the entries stay in the outbox).
    pub fn refusing<M: Message>(mut self) -> Self {
        self.refuse = Some(M::NAME);
        self
    }
}

#[async_trait::async_trait]
impl<B: Bus> Bus for ProbeBus<B> {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        if self.refuse == Some(envelope.name.as_str()) {
            return Err(BusError::Transport("held back by the recovery benchmark".into()));
        }
        self.probe.publishes.fetch_add(1, Ordering::Relaxed);
        self.probe.publish_bytes.fetch_add(envelope.payload.len() as u64, Ordering::Relaxed);
        self.inner.publish(envelope).await
    }
    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.inner.subscribe(subscription, names).await
    }
    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        self.inner.unsubscribe(subscription).await
    }
    async fn close(&self) -> Result<(), BusError> {
        self.inner.close().await
    }
    fn activity(&self) -> Option<Arc<Activity>> {
        self.inner.activity()
    }
    fn stored_routes(&self, store: &dyn Store, name: &str) -> Option<Vec<String>> {
        self.inner.stored_routes(store, name)
    }
    /// Counted like publishes: on the local bus a commit's messages go this way instead.
    fn deliver_stored(&self, messages: Vec<QueuedMessage>) -> Result<(), BusError> {
        self.probe.publishes.fetch_add(messages.len() as u64, Ordering::Relaxed);
        let bytes: usize = messages.iter().map(|m| m.envelope.payload.len()).sum();
        self.probe.publish_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.inner.deliver_stored(messages)
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of sorted samples.
    pub fn of(sorted: &[Duration]) -> Option<Self> {
        let rank = |q: f64| {
            let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[i].as_secs_f64() * 1e3
        };
        (!sorted.is_empty()).then(|| Latency { p50_ms: rank(0.50), p99_ms: rank(0.99), max_ms: rank(1.0) })
    }
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
/// Now on the wall clock, in nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// Process-wide CPU time (user + system, every thread) so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given, which is zeroed and owned here.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A field of /proc/self/status in MiB (`VmHWM` is the peak resident set, `VmRSS` the current).
pub fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes under a directory.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Order saga ids for the parked sagas do not overlap the workload's.
pub fn parked_order_id(n: u64) -> Uuid {
    Uuid::from_u128(PARK_BASE + u128::from(n))
}
