//! Lanes: single writer per instance, pipelined durability.
//!
//! Work is routed to a lane by a hash of its instance id, and a lane runs one unit at a time,
//! so one instance is never transitioned concurrently while different instances run in
//! parallel. A lane does not wait for the flush of its commit: it hands the commit's durable
//! future, the delivery and the outbox to its completion task and moves on. The completion task
//! acks, relays, delivers the messages the commit wrote into local-bus queues and releases
//! follow-up work strictly after durability. The next unit for the
//! same instance may read the not-yet-durable state: if the process dies, both commits are lost
//! together (the store's log is ordered) and both deliveries are redelivered, because neither
//! was acked.
//!
//! A store failure is never charged to the message (see `health`): the lane keeps the unit and
//! runs it again with capped backoff, and the completion task keeps a commit whose flush failed
//! until the store confirms it durable, keeping the delivery alive meanwhile. A timer whose
//! unit fails for any other reason parks its instance: refiring it would fail the same way.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use super::Core;
use super::driver::{Driver, Failure, Input, PendingCommit, Unit};
use super::metrics::DeadLetterClass;
use crate::activity::ActivityGuard;
use crate::bus::Delivery;
use crate::saga::RetryPolicy;
use crate::store::{Durable, OutboxEntry, QueuedMessage, StoreError, TimerKey};
use crate::trace::TraceContext;

/// How many times a unit of work is re-run after optimistic-concurrency conflicts before its
/// message is redelivered later.
const CONFLICT_RETRIES: u32 = 16;

/// How long a timer whose unit of work could not be run or parked waits before it may fire again.
const FAILED_TIMER_PAUSE: Duration = Duration::from_secs(1);

/// How a unit that met a store failure, or a commit whose flush failed, is tried again:
/// without end (a store outage is not the message's fault), at most 2 s apart.
fn store_retry() -> RetryPolicy {
    RetryPolicy::forever(Duration::from_millis(50)).max_delay(Duration::from_secs(2))
}

/// One unit of work waiting for its lane.
pub(crate) struct Work {
    pub(crate) driver: Arc<dyn Driver>,
    /// The subscription the input came from (for timers: the saga's).
    pub(crate) subscription: Arc<str>,
    pub(crate) lane_key: Uuid,
    pub(crate) input: Input,
    pub(crate) delivery: Option<Delivery>,
    pub(crate) guard: ActivityGuard,
    /// The trace an input without an envelope continues (a message carries its own): the
    /// unit that scheduled a timer, the operator who asked for an action.
    pub(crate) trace: Option<TraceContext>,
}

/// What a unit's log lines name, so that an operator can find the message and its instance.
struct UnitContext {
    consumer: String,
    subscription: Arc<str>,
    message: String,
    message_id: Uuid,
    correlation_id: String,
}

impl UnitContext {
    fn new(driver: &dyn Driver, subscription: Arc<str>, lane_key: Uuid, input: &Input) -> Self {
        let (message, message_id, correlation) = match input {
            Input::Message { envelope, .. } => {
                let correlation = if driver.is_saga() { Some(lane_key) } else { envelope.correlation_id };
                (envelope.name.clone(), envelope.message_id, correlation)
            }
            Input::Timer(t) => (format!("timer:{:?}", t.purpose), t.key.timer_id, Some(t.key.instance_id)),
            Input::Operator(r) => (format!("operator:{}", r.operation.as_str()), r.id, Some(lane_key)),
        };
        UnitContext {
            consumer: driver.name().to_owned(),
            subscription,
            message,
            message_id,
            correlation_id: correlation.map_or_else(|| "none".to_owned(), |c| c.to_string()),
        }
    }
}

/// Logs at `$level` with the unit's context as fields.
macro_rules! log_unit {
    ($level:ident, $ctx:expr, $($rest:tt)+) => {
        tracing::$level!(
            consumer = %$ctx.consumer,
            subscription = %$ctx.subscription,
            message_name = %$ctx.message,
            message_id = %$ctx.message_id,
            correlation_id = %$ctx.correlation_id,
            $($rest)+
        )
    };
}

/// What the completion task does once a unit's commit is durable.
enum Settle {
    Ack,
    Nack(Duration),
    DeadLetter(String),
}

struct Completion {
    durable: Option<Durable>,
    delivery: Option<Delivery>,
    settle: Settle,
    outbox: Vec<OutboxEntry>,
    queued: Vec<QueuedMessage>,
    follow_up: Option<Work>,
    timer: Option<TimerKey>,
    timers_added: bool,
    /// The unit wrote a commit (not skipped, not failed).
    committed: bool,
    /// That commit removed the delivery's queue entry (`Commit::consumes`).
    consumed: bool,
    context: UnitContext,
    _guard: ActivityGuard,
}

/// The senders of every lane.
#[derive(Clone)]
pub(crate) struct Lanes {
    senders: Arc<Vec<mpsc::Sender<Work>>>,
}

/// The receiving ends of the lanes, until their tasks start.
pub(crate) struct LaneReceivers(Vec<mpsc::Receiver<Work>>);

impl Lanes {
    /// Creates `count` lanes; start them with [`LaneReceivers::start`] once the core exists.
    pub(crate) fn new(count: usize) -> (Self, LaneReceivers) {
        let (senders, receivers) = (0..count.max(1)).map(|_| mpsc::channel::<Work>(256)).unzip();
        (Lanes { senders: Arc::new(senders) }, LaneReceivers(receivers))
    }

    /// Queues work on the lane of its instance; waits while that lane is full.
    pub(crate) async fn dispatch(&self, work: Work) {
        let (hi, lo) = work.lane_key.as_u64_pair();
        let lane = ((hi ^ lo) % self.senders.len() as u64) as usize;
        if let Some(tx) = self.senders.get(lane) {
            // A send fails only while the runtime shuts down; the dropped work's delivery is
            // then redelivered by the transport.
            let _ = tx.send(work).await;
        }
    }
}

impl LaneReceivers {
    /// Spawns every lane and its completion task.
    pub(crate) fn start(self, core: &Arc<Core>, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
        for rx in self.0 {
            let (follow_tx, follow_rx) = mpsc::unbounded_channel::<Work>();
            let (done_tx, done_rx) = mpsc::channel::<Completion>(1024);
            tasks.push(tokio::spawn(run_lane(core.clone(), rx, follow_rx, done_tx)));
            tasks.push(tokio::spawn(run_completions(core.clone(), done_rx, follow_tx)));
        }
    }
}

async fn run_lane(
    core: Arc<Core>,
    mut rx: mpsc::Receiver<Work>,
    mut follow_ups: mpsc::UnboundedReceiver<Work>,
    done: mpsc::Sender<Completion>,
) {
    loop {
        let work = tokio::select! {
            biased;
            Some(w) = follow_ups.recv() => w,
            Some(w) = rx.recv() => w,
            else => break,
        };
        let completion = run_unit(&core, work).await;
        if done.send(completion).await.is_err() {
            break;
        }
    }
}

/// Keeps a delivery alive while the engine waits for the store.
async fn keep_alive(delivery: &Option<Delivery>) {
    if let Some(d) = delivery {
        if let Err(e) = d.keep_alive().await {
            tracing::debug!(error = %e, "could not tell the transport that a delivery is still being worked on");
        }
    }
}

/// Reports a store failure: once when the store's state changes, then at growing intervals.
fn report_store_failure(core: &Core, context: &UnitContext, error: &StoreError, failures: u32, what: &str) {
    let changed = core.health.store_failed(error, core.clock.now());
    if matches!(error, StoreError::Broken { .. }) {
        if changed {
            log_unit!(
                error,
                context,
                %error,
                "{what}: the store is broken, so this runtime stops consuming; restart the process to recover"
            );
        }
    } else if changed || failures.is_power_of_two() {
        log_unit!(warn, context, %error, failures, "{what}: the store failed; trying again without spending the message's retries");
    }
}

async fn run_unit(core: &Arc<Core>, work: Work) -> Completion {
    let Work { driver, subscription, lane_key, input, delivery, guard, trace } = work;
    let context = UnitContext::new(&*driver, subscription, lane_key, &input);
    let timer = match &input {
        Input::Timer(t) => Some(t.key),
        Input::Message { .. } | Input::Operator(_) => None,
    };
    let span_name = match &input {
        Input::Timer(t) => t.purpose.cause_name(),
        Input::Message { .. } | Input::Operator(_) => &context.message,
    };
    let otel = crate::trace::UnitAttributes::new(
        matches!(input, Input::Message { .. }),
        span_name,
        &context.subscription,
        &context.correlation_id,
    );
    let span = tracing::info_span!(
        "unit_of_work",
        saga = driver.is_saga().then(|| driver.name()),
        participant = (!driver.is_saga()).then(|| driver.name()),
        instance = %lane_key,
        step = tracing::field::Empty,
        message_name = %context.message,
        message_id = %context.message_id,
        otel.name = otel.name.as_deref(),
        otel.kind = otel.kind,
        messaging.operation.type = otel.operation,
        messaging.consumer.group.name = otel.group,
        messaging.message.conversation_id = otel.conversation,
    );
    let trace = match &input {
        Input::Message { envelope, .. } => TraceContext::of(envelope),
        Input::Timer(_) | Input::Operator(_) => trace,
    };
    crate::trace::continue_trace(&span, trace.as_ref());
    let attempt = delivery.as_ref().map_or(1, |d| d.envelope().attempt);
    let (mut conflicts, mut store_failures) = (0, 0u32);
    // Set when a timer's unit failed: a timer cannot be dead-lettered, and refiring it would
    // fail the same way, so its instance is parked instead.
    let mut park: Option<String> = None;
    // A computed commit to try again as it is (see `Failure::Store`).
    let mut pending: Option<Box<PendingCommit>> = None;
    let outcome = loop {
        let result = match pending.take() {
            // In the unit's span and trace, as its first run: the retried commit's messages are
            // stamped now (Core::commit), from the unit's context.
            Some(p) => crate::trace::within(trace.clone(), retry_commit(core, *p).instrument(span.clone())).await,
            None => {
                // A panic in user code (or ours) fails this unit, not the lane and every instance on it.
                let unit = match (&park, &input) {
                    (Some(reason), Input::Timer(t)) => {
                        crate::panics::catch_async(driver.park_timer(core, t, reason.clone()))
                    }
                    _ => crate::panics::catch_async(driver.process(core, lane_key, &input)),
                };
                crate::trace::within(trace.clone(), unit.instrument(span.clone()))
                    .await
                    .unwrap_or_else(|panic| Err(Failure::Retry(format!("the unit of work panicked: {panic}"))))
            }
        };
        match result {
            Err(Failure::Conflict) if conflicts < CONFLICT_RETRIES => conflicts += 1,
            Err(Failure::Store(e, commit)) => {
                pending = commit;
                store_failures += 1;
                report_store_failure(core, &context, &e, store_failures, "a unit of work could not run");
                keep_alive(&delivery).await;
                let delay = store_retry().delay_before_retry(store_failures, context.message_id).unwrap_or_default();
                tokio::time::sleep(delay).await;
            }
            Err(Failure::Retry(reason) | Failure::DeadLetter(reason)) if timer.is_some() && park.is_none() => {
                log_unit!(error, context, %reason, "a timer's unit of work failed; parking its instance");
                park = Some(reason);
            }
            other => break other,
        }
    };
    core.health.store_ok();
    let _enter = span.enter();
    let mut completion = Completion {
        durable: None,
        delivery,
        settle: Settle::Ack,
        outbox: Vec::new(),
        queued: Vec::new(),
        follow_up: None,
        timer,
        timers_added: false,
        committed: false,
        consumed: false,
        context,
        _guard: guard,
    };
    match outcome {
        Ok(Unit::Committed { committed, follow_up, timers_added }) => {
            core.activity.add(committed.outbox.len());
            completion.committed = true;
            completion.consumed = committed.consumed_queue_entry;
            completion.timers_added = timers_added;
            completion.outbox = committed.outbox;
            completion.queued = committed.queued;
            completion.durable = Some(committed.durable);
            completion.follow_up = follow_up.map(|t| Work {
                driver: driver.clone(),
                subscription: completion.context.subscription.clone(),
                lane_key,
                input: Input::Timer(t),
                delivery: None,
                guard: core.activity.guard(),
                trace: crate::trace::current().or_else(|| trace.clone()),
            });
        }
        Ok(Unit::Skipped(reason)) => {
            tracing::debug!(%reason, "nothing to do");
            completion.durable = Some(core.store.barrier());
        }
        Err(Failure::DeadLetter(reason)) => {
            log_unit!(warn, completion.context, %reason, "dead-lettering a message that cannot be handled");
            if completion.delivery.is_some() {
                super::metrics::dead_lettered(&completion.context.subscription, DeadLetterClass::Rejected);
            }
            completion.settle = Settle::DeadLetter(reason);
        }
        Err(Failure::Retry(reason)) => {
            completion.settle = match driver.retry_policy().delay_before_retry(attempt, completion.context.message_id) {
                Some(delay) => {
                    log_unit!(warn, completion.context, %reason, attempt, ?delay, "unit of work failed, will retry");
                    Settle::Nack(delay)
                }
                None => {
                    let reason = format!("gave up after {attempt} attempts: {reason}");
                    log_unit!(warn, completion.context, %reason, "unit of work failed for the last time; dead-lettering");
                    if completion.delivery.is_some() {
                        super::metrics::dead_lettered(&completion.context.subscription, DeadLetterClass::GaveUp);
                    }
                    Settle::DeadLetter(reason)
                }
            }
        }
        Err(Failure::Conflict) => {
            log_unit!(warn, completion.context, conflicts, "unit of work kept conflicting, will retry");
            completion.settle = Settle::Nack(Duration::from_millis(50));
        }
        // The loop above retries store failures until something else happens.
        Err(Failure::Store(..)) => completion.settle = Settle::Nack(Duration::from_secs(1)),
    }
    completion
}

/// Tries a computed commit again as it is.
async fn retry_commit(core: &Core, p: PendingCommit) -> Result<Unit, Failure> {
    let PendingCommit { commit, follow_up, timers_added } = p;
    let kept = commit.clone();
    match core.commit(commit).await {
        Ok(committed) => Ok(Unit::Committed { committed, follow_up, timers_added }),
        Err(StoreError::Duplicate { message_id, .. }) => Ok(Unit::Skipped(format!("{message_id} already processed"))),
        Err(e) if e.is_unavailable() => {
            Err(Failure::Store(e, Some(Box::new(PendingCommit { commit: kept, follow_up, timers_added }))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits until a commit is durable, however long the store takes: the commit is already
/// visible (its redelivery would be skipped as a duplicate), so its delivery is settled and
/// its outbox relayed only once the store confirms it. A broken store never confirms: the
/// completion then waits until the runtime is stopped, and the delivery is redelivered after
/// the restart.
async fn wait_durable(core: &Core, durable: Durable, context: &UnitContext, delivery: &Option<Delivery>) {
    let mut result = durable.await;
    let mut failures = 0;
    while let Err(e) = result {
        failures += 1;
        report_store_failure(core, context, &e, failures, "a commit did not become durable");
        if core.health.is_broken() {
            std::future::pending::<()>().await;
        }
        keep_alive(delivery).await;
        let delay = store_retry().delay_before_retry(failures, context.message_id).unwrap_or_default();
        tokio::time::sleep(delay).await;
        result = core.store.barrier().await;
    }
    if failures > 0 {
        core.health.store_ok();
        log_unit!(info, context, failures, "the commit is durable after all");
    }
}

async fn run_completions(core: Arc<Core>, mut rx: mpsc::Receiver<Completion>, follow_ups: mpsc::UnboundedSender<Work>) {
    while let Some(mut c) = rx.recv().await {
        if let Some(durable) = c.durable.take() {
            wait_durable(&core, durable, &c.context, &c.delivery).await;
        }
        if c.committed {
            crate::crash_points::crash_point!("lane.after_flush_before_ack");
        }
        core.relay.send(std::mem::take(&mut c.outbox));
        if !c.queued.is_empty() {
            if let Err(e) = core.bus.deliver_stored(std::mem::take(&mut c.queued)) {
                // They are in the store's queues: the bus's next subscribe to them, or the next
                // start, delivers them.
                log_unit!(warn, c.context, error = %e, "could not deliver this unit's messages; they wait in the store for the next subscribe or start");
            }
        }
        if c.timers_added {
            core.timers.poke();
        }
        if let Some(f) = c.follow_up.take() {
            // In flight from now on: the timer task must not hand it to a lane as well.
            if let Input::Timer(t) = &f.input {
                core.timers.claim(t.key);
            }
            let _ = follow_ups.send(f);
        }
        let failed = !matches!(c.settle, Settle::Ack);
        if let Some(delivery) = c.delivery.take() {
            let result = match std::mem::replace(&mut c.settle, Settle::Ack) {
                Settle::Ack if c.consumed => delivery.ack_consumed().await,
                Settle::Ack => delivery.ack().await,
                Settle::Nack(delay) => delivery.nack(delay).await,
                Settle::DeadLetter(reason) => delivery.dead_letter(reason).await,
            };
            if let Err(e) = result {
                log_unit!(warn, c.context, error = %e, "could not settle a delivery; the transport will redeliver it");
            }
        } else if let Settle::DeadLetter(reason) = &c.settle {
            log_unit!(error, c.context, %reason, "a timer could not be processed");
        }
        if let Some(key) = c.timer {
            if failed {
                // Do not refire a failing timer in a tight loop.
                core.timers.hold(key, core.clock.now().plus(FAILED_TIMER_PAUSE));
            } else {
                core.timers.release(key);
            }
        }
    }
}
