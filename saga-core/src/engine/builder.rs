//! [`SagaRuntimeBuilder`]: what a runtime is made of, checked and started.

use std::sync::Arc;
use std::time::Duration;

use super::driver::Driver;
use super::lanes::Lanes;
use super::{
    Core, Handler, Parts, Retention, Router, SagaRuntime, consume, default_bus, metrics, participant, relay, retention,
    saga_driver, timers,
};
use crate::Error;
use crate::bus::Bus;
use crate::clock::{Clock, SystemClock};
use crate::message::{Codec, JsonCodec};
use crate::saga::Saga;
use crate::store::Store;

/// Configures and starts a [`SagaRuntime`].
pub struct SagaRuntimeBuilder {
    store: Option<Arc<dyn Store>>,
    bus: Option<Arc<dyn Bus>>,
    codec: Arc<dyn Codec>,
    clock: Arc<dyn Clock>,
    lanes: usize,
    max_message_bytes: usize,
    unroutable_grace: Duration,
    subscription: Option<String>,
    drivers: Vec<Arc<dyn Driver>>,
    errors: Vec<String>,
    retention: retention::Policies,
    sampling: metrics::Sampling,
}

impl Default for SagaRuntimeBuilder {
    fn default() -> Self {
        SagaRuntimeBuilder {
            store: None,
            bus: None,
            codec: Arc::new(JsonCodec),
            clock: Arc::new(SystemClock),
            lanes: 16,
            max_message_bytes: 4 * 1024 * 1024,
            unroutable_grace: Duration::from_secs(600),
            subscription: None,
            drivers: Vec::new(),
            errors: Vec::new(),
            retention: retention::Policies::default(),
            sampling: metrics::Sampling::default(),
        }
    }
}

impl SagaRuntimeBuilder {
    /// Where saga progress is kept (required): `SledStore::open(dir)?` or `MemoryStore::new()`.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The transport. Default: the store's own bus when it has one ([`Store::default_bus`]:
    /// a `PostgresStore` gives the `PostgresBus` on its database, which every replica
    /// shares); else a [`LocalBus`](crate::bus::LocalBus) on the runtime's store when the store is persistent
    /// (sled), so in-process messages survive a crash; a new [`InMemoryBus`](crate::bus::InMemoryBus) otherwise (the
    /// in-memory store loses everything anyway).
    pub fn bus(mut self, bus: impl Bus) -> Self {
        self.bus = Some(Arc::new(bus));
        self
    }

    /// The codec for payloads and state (default: [`JsonCodec`]).
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// The clock durable timers follow (default: the system clock; tests use `ManualClock`).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How many lanes run units of work in parallel (default 16).
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// The largest payload accepted (default 4 MiB); larger deliveries are dead-lettered
    /// before they are decoded, and larger outgoing messages are refused when they are
    /// committed (so is anything over the bus's own limit, [`Bus::max_payload`]).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How long the outbox relay keeps trying a message that no subscription takes
    /// ([`BusError::Unroutable`](crate::bus::BusError::Unroutable): its consumer has not
    /// subscribed yet) before it parks it for an operator (default 10 minutes).
    pub fn park_unroutable_after(mut self, grace: Duration) -> Self {
        self.unroutable_grace = grace;
        self
    }

    /// Consumes every saga's and handler's messages from one subscription named `name`
    /// (by default each has its own: `saga.<name>` for a saga, the handler's name for a
    /// handler), dispatching each delivery by its message name. This is how a service takes
    /// the place of a .NET eShop service, whose one queue (its `SubscriptionClientName`) is
    /// bound to every event it handles. Each message name may then be consumed by one saga or
    /// handler only; [`Self::build`] says which clash.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).subscription("Ordering").build().await.unwrap();
    /// # drop(runtime);
    /// # });
    /// ```
    pub fn subscription(mut self, name: impl Into<String>) -> Self {
        self.subscription = Some(name.into());
        self
    }

    /// Runs saga `S`. Its definition is validated here; errors surface from [`Self::build`].
    pub fn saga<S: Saga>(mut self) -> Self {
        match saga_driver::SagaDriver::<S>::new() {
            Ok(driver) => self.drivers.push(Arc::new(driver)),
            Err(e) => self.errors.push(e.to_string()),
        }
        self
    }

    /// Deletes saga `S`'s finished instances once `policy` has kept them long enough (see
    /// [`Retention`]); by default nothing is ever deleted.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use saga_core::{engine::{Retention, SagaRuntime}, store::MemoryStore};
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Order;
    /// # impl saga_core::saga::Saga for Order {
    /// #     const NAME: &'static str = "order";
    /// #     fn definition() -> saga_core::saga::SagaDefinition<Self> { saga_core::saga::SagaDefinition::new() }
    /// # }
    /// let runtime = SagaRuntime::builder()
    ///     .store(MemoryStore::new())
    ///     .retention::<Order>(Retention::keep(Duration::from_secs(7 * 86_400)))
    ///     .build()
    ///     .await;
    /// # drop(runtime);
    /// # });
    /// ```
    pub fn retention<S: Saga>(mut self, policy: Retention) -> Self {
        self.retention.by_saga.insert(S::NAME.to_owned(), policy);
        self
    }

    /// How often the gauges the runtime reads from its store are sampled: sagas in flight and
    /// stuck (by saga), outbox depth and oldest age (default every 15 s; `None`: never). Each
    /// sample counts the running and compensating instances, so make it rarer for stores with
    /// very many of them. The metrics the runtime records as it works need no sampling; see
    /// docs/observability.md.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder()
    ///     .store(MemoryStore::new())
    ///     .sample_gauges_every(Some(Duration::from_secs(60)))
    ///     .stuck_after(Duration::from_secs(600))
    ///     .build()
    ///     .await
    ///     .unwrap();
    /// # });
    /// ```
    pub fn sample_gauges_every(mut self, every: Option<Duration>) -> Self {
        self.sampling.every = every;
        self
    }

    /// How long a running or compensating instance may go without a change before the
    /// `sagaflow_sagas_stuck` gauge counts it (default 5 minutes).
    pub fn stuck_after(mut self, after: Duration) -> Self {
        self.sampling.stuck_after = after;
        self
    }

    /// How often retention runs a pass (default every minute), when a saga has a policy.
    pub fn retention_every(mut self, every: Duration) -> Self {
        self.retention.every = every;
        self
    }

    /// Deletes the inbox entries of this runtime's participants and of its saga instances
    /// (while they live; a finished one's go with it) once they are older than `horizon` by
    /// the wall clock (by default they are kept for ever). A redelivery of a message after
    /// that is handled again, so make it longer than anything that redelivers: the bus's ack
    /// timeout and retry delays, and how long a consumer may be down.
    pub fn inbox_horizon(mut self, horizon: Duration) -> Self {
        self.retention.inbox_horizon = Some(horizon);
        self
    }

    /// Deletes the dead letters the store keeps (those of the durable local bus and of the
    /// PostgreSQL bus) once older than `max_age` by the wall clock, and the oldest past the
    /// newest `max_count`; by default they are kept until an operator replays or discards
    /// them. Brokers keep theirs: see docs/operations.md.
    pub fn keep_dead_letters(mut self, max_age: Duration, max_count: usize) -> Self {
        self.retention.dead_letters = Some((max_age, max_count));
        self
    }

    /// How many instances a retention pass reads and deletes at a time (default 500).
    pub fn retention_batch(mut self, batch: usize) -> Self {
        self.retention.batch = batch.max(1);
        self
    }

    /// Runs participant `handler`.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.drivers.push(Arc::new(participant::ParticipantDriver::new(handler)));
        self
    }

    /// Subscribes every saga and participant and starts consuming. What a previous run left
    /// in the outbox is published in the background, and interrupted local steps run again
    /// (in a shared store: once their lease ran out, by whichever process claims them).
    ///
    /// Refused with [`Error::Config`] when the definitions clash, when a saga sends a
    /// command nothing consumes on a bus that knows it would vanish (the in-memory bus), or
    /// when another consumer holds one of the subscriptions while the store belongs to this
    /// process alone (see [`Store::is_shared`]).
    pub async fn build(self) -> Result<SagaRuntime, Error> {
        if !self.errors.is_empty() {
            return Err(Error::Config(self.errors.join("; ")));
        }
        let store = self.store.ok_or_else(|| {
            Error::Config("no store: call .store(SledStore::open(dir)?) or .store(MemoryStore::new())".into())
        })?;
        let mut seen = std::collections::HashSet::new();
        for d in &self.drivers {
            if !seen.insert(d.subscription()) {
                return Err(Error::Config(format!(
                    "two sagas or handlers share the name {:?}: names must be unique",
                    d.name()
                )));
            }
        }
        let routers = Router::plan(&self.drivers, self.subscription.as_deref())?;
        let bus = self.bus.unwrap_or_else(|| default_bus(&store));
        let (lanes, lane_receivers) = Lanes::new(self.lanes);
        let sagas = self.drivers.iter().filter(|d| d.is_saga()).map(|d| (d.name().to_owned(), d.clone())).collect();
        let mut retention = self.retention;
        retention.participants =
            self.drivers.iter().filter(|d| !d.is_saga()).map(|d| participant::participant_id(d.name())).collect();
        let (core, relay_rx) = Core::assemble(
            Parts {
                store,
                bus,
                codec: self.codec,
                clock: self.clock,
                max_message_bytes: self.max_message_bytes,
                retention,
            },
            sagas,
            lanes,
            self.unroutable_grace,
        );
        // Subscribe before anything is published, so that no message (ours or a leftover)
        // goes to a name nobody is bound to yet. A store this process owns must not be shared
        // through a subscription with another runtime.
        let exclusive = !core.store.is_shared();
        let subscriptions = routers.iter().map(|r| r.subscription.clone()).collect();
        let mut consumers = Vec::new();
        for router in routers {
            let names = router.names();
            let subscribed = if exclusive {
                core.bus.subscribe_exclusive(&router.subscription, &names).await
            } else {
                core.bus.subscribe(&router.subscription, &names).await
            };
            let consumer = subscribed.map_err(|e| match e {
                crate::bus::BusError::SubscriptionInUse { .. } => Error::Config(format!(
                    "{e}. This runtime's store belongs to this process alone, so the runtime must be the only \
                     consumer of its subscriptions: a second runtime with a store of its own would take replies \
                     for instances it does not hold. Run one runtime per subscription, or run replicas on one \
                     shared store"
                )),
                other => Error::Bus(other),
            })?;
            consumers.push((router, consumer));
        }
        check_commands_are_consumed(&core, &self.drivers)?;
        let mut tasks = Vec::new();
        lane_receivers.start(&core, &mut tasks);
        tasks.push(tokio::spawn(relay::run(core.clone(), relay_rx)));
        tasks.push(match core.store.claim_lease() {
            Some(lease) => tokio::spawn(relay::sweep_stale(core.clone(), lease)),
            None => tokio::spawn(relay::sweep(core.clone(), core.activity.guard())),
        });
        tasks.push(tokio::spawn(timers::run(core.clone())));
        if core.retention.is_active() {
            tasks.push(tokio::spawn(retention::run(core.clone())));
        }
        if let Some(every) = self.sampling.every {
            tasks.push(tokio::spawn(metrics::sample(core.clone(), every, self.sampling.stuck_after)));
        }
        let consumer_tasks = consumers
            .into_iter()
            .map(|(router, consumer)| tokio::spawn(consume(core.clone(), Arc::new(router), consumer)))
            .collect();
        Ok(SagaRuntime { core, tasks, consumers: consumer_tasks, drivers: self.drivers, subscriptions })
    }
}

/// Every command a saga sends must reach a consumer: one of this runtime's handlers, or a
/// subscription the bus knows. A bus that can tell (the in-memory one) makes a command
/// nothing takes an error, since it could only vanish; for a broker it is a warning (the
/// consumer may be another service that has not subscribed yet).
fn check_commands_are_consumed(core: &Core, drivers: &[Arc<dyn Driver>]) -> Result<(), Error> {
    let consumed: std::collections::HashSet<&str> = drivers.iter().flat_map(|d| d.names()).collect();
    let mut missing = Vec::new();
    for saga in drivers.iter().filter(|d| d.is_saga()) {
        for (step, command) in saga.sends() {
            if consumed.contains(command) {
                continue;
            }
            match core.bus.has_subscribers(command) {
                Some(true) => {}
                Some(false) => missing.push(format!("{command} (step {step} of saga {})", saga.name())),
                None => tracing::warn!(
                    saga = %saga.name(),
                    %step,
                    %command,
                    "no handler of this runtime consumes the command; it needs a consumer elsewhere on the bus"
                ),
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "nothing consumes {}: register a handler for each with .handler(...), or subscribe to it before build() \
         (on this bus a command without a subscription would be lost)",
        missing.join(", ")
    )))
}
