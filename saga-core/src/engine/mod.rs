//! The runtime: drives sagas and participants through units of work.
//!
//! For every delivered message (or fired timer) and every consumer of it, a unit of work:
//!
//! 1. **route**: find the instance (a hash of the saga and the correlation key, or the
//!    envelope's correlation id for replies) and the lane that owns it; unknown names and, for
//!    sagas, undecodable payloads are dead-lettered here (participants decode in the unit);
//! 2. **dedupe**: a message this instance or participant already processed is acked and dropped;
//! 3. **transition**: the saga's state machine or the participant's handler computes the new
//!    state, outgoing messages (with ids derived from the cause) and timers;
//! 4. **commit**: one atomic store commit (instance at `version + 1`, inbox, outbox, timers,
//!    history); a version conflict re-runs the unit on fresh state;
//! 5. **durable, then ack**: the delivery is acked only after the store made the commit durable;
//! 6. **relay**: the outbox entries are published, each on its own, then removed (or parked
//!    with the reason when the bus will not take them).
//!
//! A store that fails is not a message's fault: see [`Health`] for what the runtime does then.
//! See `docs/architecture.md` for why each step is where it is.

mod builder;
pub(crate) mod driver;
mod health;
mod inspect;
mod instance;
mod lanes;
pub(crate) mod metrics;
mod participant;
mod relay;
mod retention;
mod saga_driver;
mod timers;
mod transition;

pub use builder::SagaRuntimeBuilder;
pub use health::{Health, StoreHealth};
pub use instance::SagaInstance;
pub use participant::{Handler, HandlerContext, HandlerOutput};
pub use retention::{DEFAULT_TOMBSTONE_WINDOW, Pruned, Retention};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Error;
use crate::activity::Activity;
use crate::bus::{Bus, Consumer, InMemoryBus, LocalBus};
use crate::clock::Clock;
use crate::message::{Codec, CodecExt, Envelope, Message};
use crate::saga::{Saga, instance_id};
use crate::store::{Commit, Committed, HistoryEntry, ParkedOutboxEntry, QueueEntry, StatusKind, Store, StoreError};
use driver::Driver;
use health::HealthState;
pub(crate) use lanes::Lanes;
use lanes::Work;
use relay::RelayHandle;
use timers::TimerService;

/// What every task of a runtime shares.
pub(crate) struct Core {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) relay: RelayHandle,
    pub(crate) timers: Arc<TimerService>,
    pub(crate) sagas: HashMap<String, Arc<dyn Driver>>,
    pub(crate) lanes: Lanes,
    pub(crate) max_message_bytes: usize,
    /// The largest outgoing payload: the smaller of `max_message_bytes` and the bus's limit.
    pub(crate) max_outgoing: usize,
    /// How long an outbox entry may stay unroutable before the relay parks it.
    pub(crate) unroutable_grace: Duration,
    pub(crate) health: HealthState,
    pub(crate) retention: retention::Policies,
    pub(crate) metrics: metrics::Metrics,
}

/// The bus of a runtime built without one: the store's own, the durable local bus over a
/// persistent store, or the in-memory bus.
pub(crate) fn default_bus(store: &Arc<dyn Store>) -> Arc<dyn Bus> {
    store.default_bus().unwrap_or_else(|| -> Arc<dyn Bus> {
        if store.is_persistent() { Arc::new(LocalBus::open(store.clone())) } else { Arc::new(InMemoryBus::new()) }
    })
}

/// What a [`Core`] is made of, besides the engine's own parts.
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_message_bytes: usize,
    pub(crate) retention: retention::Policies,
}

impl Core {
    /// A core whose relay reads the returned receiver (nothing reads it until the runtime
    /// starts its relay task: entries handed over meanwhile stay in the store).
    pub(crate) fn assemble(
        parts: Parts,
        sagas: HashMap<String, Arc<dyn Driver>>,
        lanes: Lanes,
        unroutable_grace: Duration,
    ) -> (Arc<Core>, tokio::sync::mpsc::UnboundedReceiver<Vec<crate::store::OutboxEntry>>) {
        let Parts { store, bus, codec, clock, max_message_bytes, retention } = parts;
        let (relay, relay_rx) = RelayHandle::new();
        let metrics = metrics::Metrics::register(
            sagas.iter().map(|(name, d)| (name.as_str(), (0..).map_while(|i| d.step_name(i)).collect())),
        );
        let max_outgoing = bus.max_payload().map_or(max_message_bytes, |limit| limit.min(max_message_bytes));
        let core = Core {
            store,
            bus,
            codec,
            clock,
            activity: Activity::new(),
            relay,
            timers: Arc::new(TimerService::default()),
            sagas,
            lanes,
            max_message_bytes,
            max_outgoing,
            unroutable_grace,
            health: HealthState::default(),
            retention,
            metrics,
        };
        (Arc::new(core), relay_rx)
    }

    /// Queues an operator's request on the lane of `instance`, for the driver of `saga`;
    /// `false` when this runtime does not run that saga.
    pub(crate) async fn dispatch_operator(
        &self,
        saga: &str,
        instance: Uuid,
        request: Arc<crate::admin::OperatorRequest>,
    ) -> bool {
        let Some(driver) = self.sagas.get(saga).cloned() else { return false };
        let work = Work {
            subscription: driver.subscription().into(),
            driver,
            lane_key: instance,
            input: driver::Input::Operator(request),
            delivery: None,
            guard: self.activity.guard(),
            trace: crate::trace::current(),
        };
        self.lanes.dispatch(work).await;
        true
    }

    /// Publishes straight to the bus, timed.
    async fn publish(&self, envelope: crate::message::Envelope) -> Result<(), crate::bus::BusError> {
        let started = std::time::Instant::now();
        let result = self.bus.publish(envelope).await;
        self.metrics.publish_duration().record(started.elapsed().as_secs_f64());
        result
    }

    /// Commits a unit of work. Its messages for subscriptions whose queues the store keeps (the
    /// local bus, see [`Bus::stored_routes`]) are written into those queues by the commit
    /// itself; the others go to the outbox, for the relay.
    pub(crate) async fn commit(&self, mut commit: Commit) -> Result<Committed, StoreError> {
        let produced = commit.outbox.iter_mut().chain(commit.queued.iter_mut().map(|(_, envelope)| envelope));
        for envelope in produced {
            crate::trace::stamp(envelope, crate::trace::Produced::Committed);
        }
        commit.timers_add.iter_mut().for_each(crate::trace::stamp_timer);
        if !commit.outbox.is_empty() {
            let mut relayed = Vec::with_capacity(commit.outbox.len());
            for envelope in std::mem::take(&mut commit.outbox) {
                match self.bus.stored_routes(&*self.store, &envelope.name) {
                    Some(mut routes) => {
                        let last = routes.pop();
                        commit.queued.extend(routes.into_iter().map(|r| (r, envelope.clone())));
                        commit.queued.extend(last.map(|r| (r, envelope)));
                    }
                    None => relayed.push(envelope),
                }
            }
            commit.outbox = relayed;
        }
        let observed = self.metrics.observe(&commit);
        let started = std::time::Instant::now();
        let mut committed = self.store.commit(commit).await?;
        observed.record();
        let durable = committed.durable;
        let metrics = self.metrics.commit_duration();
        committed.durable = Box::pin(async move {
            let result = durable.await;
            metrics.record(started.elapsed().as_secs_f64());
            result
        });
        Ok(committed)
    }
}

/// The queue entry a consumer's commit takes in place of its inbox entry: a message's only
/// copy ([`QueueEntry::only_copy`]), kept in the store this runtime commits to (a consumer
/// with a store of its own deduplicates in its inbox, as on any bus).
pub(crate) fn only_copy(core: &Core, entry: Option<&QueueEntry>) -> Option<(String, u64)> {
    entry.filter(|e| e.only_copy && e.store == core.store.identity()).map(|e| (e.subscription.clone(), e.seq))
}

/// Whether `consumer` already processed a delivered message: its inbox entry says so, or, for
/// a message whose queue entry is its only copy, that entry is gone (the commit that
/// processed it removed it).
pub(crate) async fn already_processed(
    core: &Core,
    consumer: Uuid,
    envelope: &Envelope,
    entry: Option<&QueueEntry>,
) -> Result<bool, StoreError> {
    match only_copy(core, entry) {
        Some((subscription, seq)) => {
            let found = core.store.queued(&subscription, seq.checked_sub(1), 1).await?;
            Ok(found.first().is_none_or(|m| m.seq != seq))
        }
        None => core.store.processed(consumer, envelope.message_id).await,
    }
}

/// One subscription of the runtime and the saga or handlers that consume it.
struct Router {
    subscription: Arc<str>,
    /// The drivers by message name, when several share the subscription.
    by_name: HashMap<&'static str, Arc<dyn Driver>>,
    /// The one driver of a subscription of its own.
    only: Option<Arc<dyn Driver>>,
}

impl Router {
    /// One router per driver, or one for all of them on a shared subscription.
    fn plan(drivers: &[Arc<dyn Driver>], shared: Option<&str>) -> Result<Vec<Router>, Error> {
        let Some(shared) = shared else {
            return Ok(drivers
                .iter()
                .map(|d| Router {
                    subscription: d.subscription().into(),
                    by_name: HashMap::new(),
                    only: Some(d.clone()),
                })
                .collect());
        };
        let mut by_name: HashMap<&'static str, Arc<dyn Driver>> = HashMap::new();
        for d in drivers {
            for name in d.names() {
                if let Some(other) = by_name.insert(name, d.clone()) {
                    return Err(Error::Config(format!(
                        "{} and {} both consume {name} on the shared subscription {shared:?}: on one subscription \
                         each message name goes to one saga or handler",
                        other.name(),
                        d.name()
                    )));
                }
            }
        }
        Ok(vec![Router { subscription: shared.into(), by_name, only: None }])
    }

    fn names(&self) -> Vec<&'static str> {
        match &self.only {
            Some(d) => d.names(),
            None => {
                let mut names: Vec<_> = self.by_name.keys().copied().collect();
                names.sort_unstable();
                names
            }
        }
    }

    fn driver(&self, name: &str) -> Option<&Arc<dyn Driver>> {
        self.only.as_ref().or_else(|| self.by_name.get(name))
    }
}

async fn consume(core: Arc<Core>, router: Arc<Router>, mut consumer: Consumer) {
    loop {
        // No new delivery while the store cannot take work (see `health`); waiting for one
        // stops when the store fails (the transports' `next` can be cancelled safely).
        core.health.usable().await;
        let next = tokio::select! {
            biased;
            () = core.health.unusable() => continue,
            next = consumer.next() => next,
        };
        let Some(delivery) = next else {
            // The runtime stops its consumers by aborting them: a stream that ends is the
            // transport's doing, and nothing is consumed from this subscription any more.
            tracing::error!(
                subscription = %router.subscription,
                "the transport ended this subscription's consumer; nothing more is consumed from it until a restart"
            );
            core.health.subscription_ended(&router.subscription);
            break;
        };
        let guard = core.activity.guard();
        let envelope = delivery.envelope();
        let size = envelope.payload.len();
        let Some(driver) = router.driver(&envelope.name).cloned() else {
            let reason =
                format!("no saga or handler on subscription {} consumes {}", router.subscription, envelope.name);
            dead_letter(&router, "none", delivery, reason).await;
            continue;
        };
        let routed = if size > core.max_message_bytes {
            Err(format!("payload of {size} bytes exceeds the limit of {} bytes", core.max_message_bytes))
        } else {
            // User code runs here (a message's correlation_key, its Deserialize impl): a panic
            // fails this message only.
            crate::panics::catch(|| driver.route(&*core.codec, envelope)).unwrap_or_else(|panic| {
                Err(format!("routing {} panicked (in its correlation_key or its decoding): {panic}", envelope.name))
            })
        };
        match routed {
            Ok(mut routed) => {
                if let driver::Input::Message { queue_entry, .. } = &mut routed.input {
                    *queue_entry = delivery.queue_entry();
                }
                core.lanes
                    .dispatch(Work {
                        driver,
                        subscription: router.subscription.clone(),
                        lane_key: routed.lane_key,
                        input: routed.input,
                        delivery: Some(delivery),
                        guard,
                        trace: None,
                    })
                    .await
            }
            Err(reason) => dead_letter(&router, driver.name(), delivery, reason).await,
        }
    }
}

async fn dead_letter(router: &Router, consumer: &str, delivery: crate::bus::Delivery, reason: String) {
    metrics::dead_lettered(&router.subscription, metrics::DeadLetterClass::Rejected);
    let envelope = delivery.envelope();
    tracing::warn!(
        %consumer,
        subscription = %router.subscription,
        message_name = %envelope.name,
        message_id = %envelope.message_id,
        correlation_id = ?envelope.correlation_id,
        %reason,
        "dead-lettering a message that cannot be handled"
    );
    let (name, id) = (envelope.name.clone(), envelope.message_id);
    if let Err(e) = delivery.dead_letter(reason).await {
        tracing::warn!(
            %consumer,
            subscription = %router.subscription,
            message_name = %name,
            message_id = %id,
            error = %e,
            "could not dead-letter; the transport will redeliver"
        );
    }
}

/// A running saga engine: consumers, lanes, the outbox relay and the timer task.
///
/// Dropping it stops every task at once, as a crash would (nothing committed is lost; what
/// was in flight is redelivered). [`SagaRuntime::shutdown`] stops it gracefully.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::{bus::InMemoryBus, engine::SagaRuntime, store::MemoryStore};
/// let runtime = SagaRuntime::builder()
///     .store(MemoryStore::new())
///     .bus(InMemoryBus::new())
///     .build()
///     .await
///     .unwrap();
/// runtime.settle().await;
/// runtime.shutdown().await.unwrap();
/// # });
/// ```
pub struct SagaRuntime {
    core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
    drivers: Vec<Arc<dyn Driver>>,
    /// The bus subscriptions the runtime consumes (for its dead letters).
    subscriptions: Vec<Arc<str>>,
}

impl std::fmt::Debug for SagaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaRuntime")
            .field("consumers", &self.drivers.iter().map(|d| d.name().to_owned()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SagaRuntime {
    /// Starts configuring a runtime.
    pub fn builder() -> SagaRuntimeBuilder {
        SagaRuntimeBuilder::default()
    }

    /// Publishes a message with a fresh id (to start sagas or notify participants). Fails
    /// with [`BusError::Unroutable`](crate::bus::BusError::Unroutable) when nothing would
    /// receive it. A client that may retry should use [`Self::publish_idempotent`].
    pub async fn publish<M: Message>(&self, message: &M) -> Result<Uuid, Error> {
        let mut envelope = Envelope::encode(&*self.core.codec, message)?;
        crate::trace::stamp(&mut envelope, crate::trace::Produced::Published);
        let id = envelope.message_id;
        self.core.publish(envelope).await?;
        Ok(id)
    }

    /// Publishes a message under an id derived from its name and the caller's idempotency
    /// `key` (an order number, a request id), and returns that id once the message is durable.
    ///
    /// For a client that must not lose an accepted submission nor repeat it:
    ///
    /// - **durable**: the call returns only once the bus holds the message durably (the
    ///   durable local bus: written to the store and synced; RabbitMQ: confirmed by the broker;
    ///   NATS JetStream: acknowledged by the stream). A crash after it returns does not lose
    ///   the message. The in-memory bus keeps nothing across a crash.
    /// - **idempotent**: publishing the same name and key again (a client retrying after a
    ///   timeout or a crash) gives the same message id, and every consumer that already
    ///   processed it takes the second copy for a redelivery: one saga instance, one effect.
    ///   The consumers' inboxes remember ids as long as their records are kept.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{bus::{Bus, InMemoryBus}, engine::SagaRuntime, message::Message, store::MemoryStore};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct PlaceOrder { order: u32 }
    /// impl Message for PlaceOrder { const NAME: &'static str = "order.place"; }
    ///
    /// let bus = InMemoryBus::new();
    /// let mut ordering = bus.subscribe("ordering", &["order.place"]).await.unwrap();
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).bus(bus).build().await.unwrap();
    /// let first = runtime.publish_idempotent("order-7", &PlaceOrder { order: 7 }).await.unwrap();
    /// let retried = runtime.publish_idempotent("order-7", &PlaceOrder { order: 7 }).await.unwrap();
    /// assert_eq!(first, retried);
    /// // Both copies carry the id, so a consumer's inbox drops the second.
    /// assert_eq!(ordering.next().await.unwrap().envelope().message_id, first);
    /// assert_eq!(ordering.next().await.unwrap().envelope().message_id, first);
    /// # });
    /// ```
    pub async fn publish_idempotent<M: Message>(&self, key: &str, message: &M) -> Result<Uuid, Error> {
        let mut envelope = Envelope::encode(&*self.core.codec, message)?;
        envelope.message_id = crate::message::idempotent_message_id(M::NAME, key);
        crate::trace::stamp(&mut envelope, crate::trace::Produced::Published);
        let id = envelope.message_id;
        self.core.publish(envelope).await?;
        Ok(id)
    }

    /// The instance with this id.
    pub async fn instance(&self, id: Uuid) -> Result<Option<crate::engine::SagaInstance>, Error> {
        let Some(record) = self.core.store.instance(id).await? else {
            return Ok(None);
        };
        let step = match &record.status {
            crate::store::SagaStatus::Running { step } | crate::store::SagaStatus::Compensating { step } => Some(*step),
            _ => None,
        };
        let step_name = step.and_then(|s| self.core.sagas.get(&record.saga).and_then(|d| d.step_name(s)));
        Ok(Some(SagaInstance { record, step_name, codec: self.core.codec.clone() }))
    }

    /// The instance of saga `S` correlated by `key`.
    pub async fn saga<S: Saga>(&self, key: &str) -> Result<Option<SagaInstance>, Error> {
        self.instance(instance_id(S::NAME, key)).await
    }

    /// Ids of up to `limit` instances with a status (from the status index). To page through
    /// many, or filter by saga and age, use [`admin`](Self::admin)'s listing.
    pub async fn instances(&self, status: StatusKind, limit: usize) -> Result<Vec<Uuid>, Error> {
        Ok(self.core.store.instances_with_status(status, limit).await?)
    }

    /// Runs a retention pass now, as the background task does every
    /// [`retention_every`](SagaRuntimeBuilder::retention_every): deletes the finished
    /// instances every policy kept long enough, then tombstones past their window.
    pub async fn prune_now(&self) -> Result<Pruned, Error> {
        Ok(retention::pass(&self.core).await?)
    }

    /// The first `limit` entries of an instance's history, oldest first (to page on, see
    /// [`Admin::history`](crate::admin::Admin::history)).
    pub async fn history(&self, id: Uuid, limit: usize) -> Result<Vec<HistoryEntry>, Error> {
        Ok(self.core.store.history_page(id, None, limit).await?)
    }

    /// A participant's record, decoded.
    pub async fn record<T: DeserializeOwned>(&self, scope: &str, key: &str) -> Result<Option<T>, Error> {
        match self.core.store.entity(scope, key).await? {
            Some(r) => Ok(Some(self.core.codec.decode(&r.value)?)),
            None => Ok(None),
        }
    }

    /// The Mermaid flowchart of a saga this runtime runs, by name.
    pub fn diagram(&self, saga: &str) -> Option<String> {
        self.core.sagas.get(saga).and_then(|d| d.diagram()).map(|d| d.mermaid())
    }

    /// The operators' view: list, count and inspect instances (see [`Admin`](crate::admin::Admin)).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::{InstanceQuery, MemoryStore}};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let page = runtime.admin().list(&InstanceQuery::default(), 100).await.unwrap();
    /// assert!(page.instances.is_empty());
    /// # });
    /// ```
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(self.core.clone(), self.subscriptions.clone().into())
    }

    /// The store the runtime commits to.
    pub fn store(&self) -> Arc<dyn Store> {
        self.core.store.clone()
    }

    /// Whether the runtime can work: a store that fails or broke stops consumption (see
    /// [`StoreHealth`]).
    pub fn health(&self) -> Health {
        self.core.health.current()
    }

    /// Outbox entries the relay parked (the bus refused them for good, or nothing took their
    /// name for [`SagaRuntimeBuilder::park_unroutable_after`]), oldest first, at most `limit`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// for parked in runtime.parked_outbox(100).await.unwrap() {
    ///     eprintln!("{} {}: {}", parked.envelope.name, parked.envelope.message_id, parked.reason);
    /// }
    /// # });
    /// ```
    pub async fn parked_outbox(&self, limit: usize) -> Result<Vec<ParkedOutboxEntry>, Error> {
        Ok(self.core.store.parked_outbox(None, limit).await?)
    }

    /// Returns once nothing is in flight: no message queued on the bus (when the bus can
    /// tell), no unit of work running, no outbox entry unpublished. Timers due in the future
    /// are not "in flight": advance the clock and call [`Self::fire_due_timers`].
    pub async fn settle(&self) {
        let mut counters = vec![self.core.activity.clone()];
        counters.extend(self.core.bus.activity());
        crate::activity::settle(&counters).await;
    }

    /// Hands every timer due by the clock's current time to its lane now, instead of waiting
    /// for the timer task to wake up; returns how many. Pair with [`Self::settle`].
    pub async fn fire_due_timers(&self) -> usize {
        timers::fire_due(&self.core, self.core.clock.now(), None).await
    }

    /// When the earliest timer held back after a failed unit may fire again (the test
    /// harness advances virtual time to it).
    pub(crate) fn next_held_timer(&self) -> Option<crate::message::Timestamp> {
        self.core.timers.next_release()
    }

    /// Whether every timer due by now is held back after a failed unit (so none is waiting to
    /// be fired at this instant).
    pub(crate) async fn only_held_timers_due(&self) -> Result<bool, Error> {
        let due = self.core.store.timers_due(self.core.clock.now(), None, 512).await?;
        Ok(due.iter().all(|t| self.core.timers.is_held(&t.key)))
    }

    /// Stops consuming, lets the work in hand finish (up to 10 s), flushes the store and closes
    /// the bus.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown_within(Duration::from_secs(10)).await
    }

    /// [`Self::shutdown`] with a bound on the wait for in-hand work.
    pub async fn shutdown_within(mut self, grace: Duration) -> Result<(), Error> {
        for t in self.consumers.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let core = self.core.clone();
        let drained = tokio::time::timeout(grace, async move {
            while core.activity.pending() > 0 {
                let changed = core.activity.changed();
                if core.activity.pending() == 0 {
                    break;
                }
                changed.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period over with work in flight; it will be redelivered");
        }
        self.stop_tasks().await;
        self.core.store.flush().await?;
        self.core.bus.close().await?;
        Ok(())
    }

    /// Stops every task at once, as a crash would, and waits until they are gone (so the
    /// store can be reopened). Committed work is kept; work in flight is redelivered.
    pub async fn kill(mut self) {
        for t in self.consumers.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.stop_tasks().await;
    }

    async fn stop_tasks(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for SagaRuntime {
    fn drop(&mut self) {
        for t in self.consumers.iter().chain(&self.tasks) {
            t.abort();
        }
    }
}
