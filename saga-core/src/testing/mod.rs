//! Drive sagas and inspect their state in tests: deterministic, no sleeps.
//!
//! [`SagaTestHarness`] wires a runtime on a memory store (or a sled store in a temporary
//! directory), a recording in-memory bus and a [`ManualClock`], then [`TestRuntime`] offers:
//!
//! - [`TestRuntime::settle`]: returns when nothing is in flight (no polling in your test);
//! - [`TestRuntime::advance`]: virtual time, firing every timer that comes due on the way,
//!   in due order, including timers scheduled by the timers it fires;
//! - [`TestRuntime::saga`]: an instance's status, step, typed state, version and timeline,
//!   with assertions that print the timeline when they fail;
//! - [`TestRuntime::published`] and [`TestRuntime::sent`]: messages of the current phase only
//!   ([`TestRuntime::new_phase`] starts the next), so nothing leaks between phases or tests;
//! - participant stubs ([`Stub`]) and fault injection: duplicated or reordered deliveries, a
//!   failing commit, a restart of the runtime on the same store.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use saga_core::testing::SagaTestHarness;
//! let h = SagaTestHarness::new().start().await;
//! h.settle().await;
//! assert!(h.dead_letters().is_empty());
//! # });
//! ```

mod bus;
mod scenario;
mod store;
mod stub;
mod timeline;

pub use scenario::Scenario;
pub use stub::Stub;
pub use timeline::render as render_timeline;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::bus::DeadLetter;
use crate::clock::{Clock, ManualClock};
use crate::engine::{Handler, SagaInstance, SagaRuntime, SagaRuntimeBuilder};
use crate::message::{CodecExt, Envelope, JsonCodec, Message, Timestamp};
use crate::saga::Saga;
use crate::store::{HistoryEntry, Intercepted, MemoryStore, SagaStatus, SledStore, Store};
use bus::{Faults, HarnessBus};
use store::FailCommits;
use stub::{Delayed, StubHandler};

type Registration = Arc<dyn Fn(SagaRuntimeBuilder) -> SagaRuntimeBuilder + Send + Sync>;

enum StoreSource {
    Memory(Arc<MemoryStore>),
    Sled(tempfile::TempDir),
}

/// Configures a [`TestRuntime`]: sagas, handlers, stubs and faults.
pub struct SagaTestHarness {
    /// What to register on every (re)start; stubs carry their name so they can be replaced.
    registrations: Vec<(Option<String>, Registration)>,
    store: StoreSource,
    faults: Faults,
    fail_commits: Vec<u64>,
    clock: ManualClock,
    delayed: Delayed,
}

impl Default for SagaTestHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl SagaTestHarness {
    /// A harness on a memory store, starting at a fixed virtual time.
    pub fn new() -> Self {
        SagaTestHarness {
            registrations: Vec::new(),
            store: StoreSource::Memory(Arc::new(MemoryStore::new())),
            faults: Faults::default(),
            fail_commits: Vec::new(),
            clock: ManualClock::starting_at(1_700_000_000_000),
            delayed: Delayed::default(),
        }
    }

    /// The same harness on a sled store in a temporary directory (removed on drop), to test
    /// persistence paths such as [`TestRuntime::restart`].
    pub fn with_sled() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        Ok(SagaTestHarness { store: StoreSource::Sled(dir), ..Self::new() })
    }

    /// Runs saga `S`.
    pub fn saga<S: Saga>(mut self) -> Self {
        self.registrations.push((None, Arc::new(|b| b.saga::<S>())));
        self
    }

    /// Runs a real participant (cloned again on every restart).
    pub fn handler<H: Handler + Clone>(mut self, handler: H) -> Self {
        self.registrations.push((None, Arc::new(move |b| b.handler(handler.clone()))));
        self
    }

    /// Answers command `C` with a stub; a later stub for the same command replaces it.
    pub fn stub<C: Message>(mut self, answer: impl Fn(&C) -> Stub + Send + Sync + 'static) -> Self {
        let name = format!("stub.{}", C::NAME);
        let stub = StubHandler::<C> {
            answer: Arc::new(answer),
            delayed: self.delayed.clone(),
            clock: Arc::new(self.clock.clone()),
            name: name.clone(),
            _command: PhantomData,
        };
        self.registrations.retain(|(key, _)| key.as_deref() != Some(name.as_str()));
        self.registrations.push((Some(name), Arc::new(move |b| b.handler(stub.clone()))));
        self
    }

    /// Delivers every message twice (same id).
    pub fn duplicate_deliveries(mut self) -> Self {
        self.faults.duplicate = true;
        self
    }

    /// Holds back up to `window` messages and releases them in an order drawn from `seed`.
    pub fn reorder_deliveries(mut self, window: usize, seed: u64) -> Self {
        self.faults.reorder_window = window;
        self.faults.seed = seed;
        self
    }

    /// Makes the `n`-th commit (counting from 1, over the harness's life) fail once.
    pub fn fail_commit(mut self, n: u64) -> Self {
        self.fail_commits.push(n);
        self
    }

    /// Builds and starts the runtime.
    pub async fn start(self) -> TestRuntime {
        let bus = HarnessBus::default();
        bus.set_faults(self.faults);
        let mut runtime = TestRuntime {
            runtime: None,
            registrations: self.registrations,
            store: self.store,
            fail_commits: Arc::new(Mutex::new(self.fail_commits)),
            bus,
            clock: self.clock,
            delayed: self.delayed,
        };
        runtime.boot().await;
        runtime
    }
}

/// A running saga engine under test. See the module docs.
pub struct TestRuntime {
    runtime: Option<SagaRuntime>,
    registrations: Vec<(Option<String>, Registration)>,
    store: StoreSource,
    fail_commits: Arc<Mutex<Vec<u64>>>,
    bus: HarnessBus,
    clock: ManualClock,
    delayed: Delayed,
}

impl TestRuntime {
    async fn boot(&mut self) {
        let store: Arc<dyn Store> = match &self.store {
            StoreSource::Memory(m) => m.clone(),
            StoreSource::Sled(dir) => match SledStore::open(dir.path()) {
                Ok(s) => Arc::new(s),
                Err(e) => panic!("the harness cannot open its sled store: {e}"),
            },
        };
        let store = Intercepted::new(store, FailCommits::new(self.fail_commits.clone()));
        let mut builder = SagaRuntime::builder().store(store).bus(self.bus.clone()).clock(self.clock.clone());
        for (_, register) in &self.registrations {
            builder = register(builder);
        }
        match builder.build().await {
            Ok(runtime) => self.runtime = Some(runtime),
            Err(e) => panic!("the harness cannot start the runtime: {e}"),
        }
    }

    /// The runtime under test.
    pub fn runtime(&self) -> &SagaRuntime {
        match &self.runtime {
            Some(r) => r,
            None => unreachable!("the runtime is only absent during a restart"),
        }
    }

    /// The virtual clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Publishes a message (a start message or an event), without waiting.
    pub async fn publish<M: Message>(&self, message: &M) {
        if let Err(e) = self.runtime().publish(message).await {
            panic!("publishing {} failed: {e}", M::NAME);
        }
    }

    /// Publishes a prepared envelope (for replies and malformed input), without waiting.
    pub async fn publish_envelope(&self, envelope: Envelope) {
        if let Err(e) = crate::bus::Bus::publish(&self.bus, envelope).await {
            panic!("publishing failed: {e}");
        }
    }

    /// Returns when no message is queued or being handled, no outbox entry is unpublished,
    /// no held-back delivery is left and no stub reply is due.
    pub async fn settle(&self) {
        loop {
            self.runtime().settle().await;
            if self.release_due_replies().await > 0 {
                continue;
            }
            match self.bus.release_one().await {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => panic!("releasing a held-back message failed: {e}"),
            }
        }
    }

    async fn release_due_replies(&self) -> usize {
        let now = self.clock.now();
        let due: Vec<Envelope> = {
            let mut delayed = self.delayed.lock().unwrap_or_else(|e| e.into_inner());
            let (due, later): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|(at, _)| *at <= now);
            *delayed = later;
            due.into_iter().map(|(_, e)| e).collect()
        };
        let count = due.len();
        for envelope in due {
            self.publish_envelope(envelope).await;
        }
        count
    }

    async fn only_held_timers_due(&self) -> bool {
        match self.runtime().only_held_timers_due().await {
            Ok(held) => held,
            Err(e) => panic!("reading due timers failed: {e}"),
        }
    }

    /// The next moment something comes due: a timer, a delayed reply, or a timer held back
    /// after a failed unit. Timers due now count unless all of them are held back (they wait
    /// for their release time instead).
    async fn next_due(&self) -> Option<Timestamp> {
        let now = self.clock.now();
        let after = if self.only_held_timers_due().await { now } else { Timestamp(now.0.saturating_sub(1)) };
        let timer = match self.runtime().store().next_timer(after).await {
            Ok(t) => t.map(|k| k.due),
            Err(e) => panic!("reading timers failed: {e}"),
        };
        let reply = self.delayed.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(at, _)| *at).min();
        let held = self.runtime().next_held_timer();
        timer.into_iter().chain(reply).chain(held).min()
    }

    /// Moves virtual time forward by `by`, stopping at every timer or delayed reply that comes
    /// due on the way (in due order) and settling after each.
    pub async fn advance(&self, by: Duration) {
        let target = self.clock.now().plus(by);
        self.settle().await;
        let mut stalls = 0;
        loop {
            let now = self.clock.now();
            let step_to = match self.next_due().await {
                Some(due) if due <= target => due.max(now),
                _ => target,
            };
            // A timer that stays due (its unit keeps failing) must not spin forever.
            stalls = if step_to == now { stalls + 1 } else { 0 };
            if stalls > 10_000 {
                panic!("a timer due at {step_to:?} keeps firing without being consumed: see the dead letters and logs");
            }
            if stalls > 0 {
                tokio::task::yield_now().await;
            }
            self.clock.advance(Duration::from_millis(step_to.0 - now.0));
            self.runtime().fire_due_timers().await;
            self.settle().await;
            if step_to >= target && self.next_due().await.is_none_or(|due| due > target) {
                return;
            }
        }
    }

    /// The instance of saga `S` correlated by `key`, if there is one.
    pub async fn saga<S: Saga>(&self, key: &str) -> Option<SagaView<S>> {
        let instance = match self.runtime().saga::<S>(key).await {
            Ok(i) => i?,
            Err(e) => panic!("loading saga {} {key:?} failed: {e}", S::NAME),
        };
        // A test's instance: its whole history, to assert on.
        let history = match self.runtime().history(instance.id(), usize::MAX).await {
            Ok(h) => h,
            Err(e) => panic!("loading the history of {} failed: {e}", instance.id()),
        };
        Some(SagaView { instance, history, _saga: PhantomData })
    }

    /// The instance of saga `S` correlated by `key`; panics if there is none.
    pub async fn expect_saga<S: Saga>(&self, key: &str) -> SagaView<S> {
        match self.saga::<S>(key).await {
            Some(view) => view,
            None => panic!("no instance of saga {} with key {key:?}", S::NAME),
        }
    }

    fn decode_all<M: Message>(&self, filter: impl Fn(&Envelope) -> bool) -> Vec<M> {
        self.bus
            .logged(M::NAME)
            .iter()
            .filter(|e| filter(e))
            .map(|e| match JsonCodec.decode(&e.payload) {
                Ok(m) => m,
                Err(err) => panic!("a published {} does not decode: {err}", M::NAME),
            })
            .collect()
    }

    /// Every `M` published in the current phase (events, commands and replies alike).
    pub fn published<M: Message>(&self) -> Vec<M> {
        self.decode_all(|_| true)
    }

    /// Every `M` a saga sent as a command in the current phase.
    pub fn sent<M: Message>(&self) -> Vec<M> {
        self.decode_all(|e| e.reply_to.is_some())
    }

    /// Starts a new phase: [`Self::published`] and [`Self::sent`] forget earlier messages.
    pub fn new_phase(&self) {
        self.bus.new_phase();
    }

    /// Messages parked by the bus, with their reasons.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.bus.memory().all_dead_letters()
    }

    /// A participant's record.
    pub async fn record<T: DeserializeOwned>(&self, scope: &str, key: &str) -> Option<T> {
        match self.runtime().record(scope, key).await {
            Ok(r) => r,
            Err(e) => panic!("reading record {key:?} of {scope:?} failed: {e}"),
        }
    }

    /// Stops the runtime as a crash would and starts a new one on the same store, bus and clock.
    pub async fn restart(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.kill().await;
        }
        self.boot().await;
    }
}

/// One saga instance as a test sees it: status, step, typed state, version and timeline.
pub struct SagaView<S> {
    instance: SagaInstance,
    history: Vec<HistoryEntry>,
    _saga: PhantomData<fn() -> S>,
}

impl<S: Saga> std::fmt::Debug for SagaView<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.dump())
    }
}

impl<S: Saga> SagaView<S> {
    /// Where it stands.
    pub fn status(&self) -> &SagaStatus {
        self.instance.status()
    }

    /// The step it runs or compensates.
    pub fn current_step(&self) -> Option<&str> {
        self.instance.current_step()
    }

    /// Commits so far.
    pub fn version(&self) -> u64 {
        self.instance.version()
    }

    /// Why it compensated, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.instance.failure()
    }

    /// Its typed state.
    pub fn state(&self) -> S {
        match self.instance.state() {
            Ok(s) => s,
            Err(e) => panic!("the state of {} does not decode: {e}\n{}", self.instance.id(), self.dump()),
        }
    }

    /// Its history, one entry per commit.
    pub fn history(&self) -> &[HistoryEntry] {
        &self.history
    }

    /// A readable account: identity, status, and the timeline.
    pub fn dump(&self) -> String {
        format!(
            "saga {} {:?} (instance {}) is {:?} at version {}\n{}",
            S::NAME,
            self.instance.key(),
            self.instance.id(),
            self.instance.status(),
            self.instance.version(),
            timeline::render(&self.history)
        )
    }

    /// Panics, showing the timeline, unless the status is `expected`.
    #[track_caller]
    pub fn assert_status(&self, expected: &SagaStatus) -> &Self {
        if self.status() != expected {
            panic!("expected status {expected:?}\n{}", self.dump());
        }
        self
    }

    /// Panics, showing the timeline, unless `check` holds for the state.
    #[track_caller]
    pub fn assert_state(&self, what: &str, check: impl FnOnce(&S) -> bool) -> &Self {
        if !check(&self.state()) {
            panic!("expected the state to satisfy: {what}\n{}", self.dump());
        }
        self
    }
}
