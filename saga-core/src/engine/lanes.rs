//! Lanes: single writer per instance, pipelined durability.
//!
//! Work is routed to a lane by a hash of its instance id, and a lane runs one unit at a time,
//! so one instance is never transitioned concurrently while different instances run in
//! parallel. A lane does not wait for the flush of its commit: it hands the commit's durable
//! future, the delivery and the outbox to its completion task and moves on. The completion task
//! acks, relays and releases follow-up work strictly after durability. The next unit for the
//! same instance may read the not-yet-durable state: if the process dies, both commits are lost
//! together (the store's log is ordered) and both deliveries are redelivered, because neither
//! was acked.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use super::Core;
use super::driver::{Driver, Failure, Input, Unit};
use crate::activity::ActivityGuard;
use crate::bus::Delivery;
use crate::store::{Durable, OutboxEntry};

/// How many times a unit of work is re-run after optimistic-concurrency conflicts before its
/// message is redelivered later.
const CONFLICT_RETRIES: u32 = 16;

/// How long a timer whose unit of work failed waits before it may fire again.
const FAILED_TIMER_PAUSE: Duration = Duration::from_secs(1);

/// One unit of work waiting for its lane.
pub(crate) struct Work {
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) lane_key: Uuid,
    pub(crate) input: Input,
    pub(crate) delivery: Option<Delivery>,
    pub(crate) guard: ActivityGuard,
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
    follow_up: Option<Work>,
    timer: Option<crate::store::TimerKey>,
    timers_added: bool,
    /// The unit wrote a commit (not skipped, not failed).
    committed: bool,
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

async fn run_unit(core: &Arc<Core>, work: Work) -> Completion {
    let Work { driver, lane_key, input, delivery, guard } = work;
    let (message, message_id) = match &input {
        Input::Message { envelope, .. } => (envelope.name.clone(), envelope.message_id),
        Input::Timer(t) => (format!("timer:{:?}", t.purpose), t.key.timer_id),
    };
    let timer = match &input {
        Input::Timer(t) => Some(t.key),
        Input::Message { .. } => None,
    };
    let span = tracing::info_span!(
        "unit_of_work",
        saga = tracing::field::Empty,
        participant = tracing::field::Empty,
        instance = %lane_key,
        step = tracing::field::Empty,
        message_name = %message,
        message_id = %message_id,
    );
    span.record(if driver.is_saga() { "saga" } else { "participant" }, driver.name());
    let attempt = delivery.as_ref().map_or(1, |d| d.envelope().attempt);
    let mut conflicts = 0;
    let outcome = loop {
        // A panic in user code (or ours) fails this unit, not the lane and every instance on it.
        let unit = AssertUnwindSafe(driver.process(core, lane_key, &input)).catch_unwind();
        let result = match unit.instrument(span.clone()).await {
            Ok(result) => result,
            Err(panic) => Err(Failure::Retry(format!("the unit of work panicked: {}", panic_message(&panic)))),
        };
        match result {
            Err(Failure::Conflict) if conflicts < CONFLICT_RETRIES => conflicts += 1,
            other => break other,
        }
    };
    let _enter = span.enter();
    let mut completion = Completion {
        durable: None,
        delivery,
        settle: Settle::Ack,
        outbox: Vec::new(),
        follow_up: None,
        timer,
        timers_added: false,
        committed: false,
        _guard: guard,
    };
    match outcome {
        Ok(Unit::Committed { committed, follow_up, timers_added }) => {
            core.activity.add(committed.outbox.len());
            completion.committed = true;
            completion.timers_added = timers_added;
            completion.outbox = committed.outbox;
            completion.durable = Some(committed.durable);
            completion.follow_up = follow_up.map(|t| Work {
                driver: driver.clone(),
                lane_key,
                input: Input::Timer(t),
                delivery: None,
                guard: core.activity.guard(),
            });
        }
        Ok(Unit::Skipped(reason)) => {
            tracing::debug!(%reason, "nothing to do");
            completion.durable = Some(core.store.barrier());
        }
        Err(Failure::DeadLetter(reason)) => completion.settle = Settle::DeadLetter(reason),
        Err(Failure::Retry(reason)) => {
            completion.settle = match driver.retry_policy().delay_before_retry(attempt, message_id) {
                Some(delay) => {
                    tracing::warn!(%reason, attempt, ?delay, "unit of work failed, will retry");
                    Settle::Nack(delay)
                }
                None => Settle::DeadLetter(format!("gave up after {attempt} attempts: {reason}")),
            }
        }
        Err(Failure::Conflict) => {
            tracing::warn!(conflicts, "unit of work kept conflicting, will retry");
            completion.settle = Settle::Nack(Duration::from_millis(50));
        }
    }
    completion
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

/// Waits for a commit to become durable, retrying the flush a few times: the commit is already
/// visible, so giving up on it would strand its outbox until a restart.
async fn await_durable(core: &Core, durable: Durable) -> Result<(), crate::store::StoreError> {
    let mut result = durable.await;
    let mut backoff = Duration::from_millis(50);
    for _ in 0..8 {
        let Err(e) = &result else { break };
        tracing::warn!(error = %e, ?backoff, "flush failed, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        result = core.store.barrier().await;
    }
    result
}

async fn run_completions(core: Arc<Core>, mut rx: mpsc::Receiver<Completion>, follow_ups: mpsc::UnboundedSender<Work>) {
    while let Some(c) = rx.recv().await {
        let durable = match c.durable {
            Some(d) => await_durable(&core, d).await,
            None => Ok(()),
        };
        let outbox_len = c.outbox.len();
        let settle = match durable {
            Ok(()) => {
                if c.committed {
                    crate::crash_points::crash_point!("lane.after_flush_before_ack");
                }
                core.relay.send(c.outbox);
                if c.timers_added {
                    core.timers.poke();
                }
                if let Some(f) = c.follow_up {
                    let _ = follow_ups.send(f);
                }
                c.settle
            }
            Err(e) => {
                tracing::error!(error = %e, "commit did not become durable; the message will be redelivered");
                core.activity.done(outbox_len);
                Settle::Nack(Duration::from_secs(1))
            }
        };
        let failed = !matches!(settle, Settle::Ack);
        if let Some(delivery) = c.delivery {
            let result = match settle {
                Settle::Ack => delivery.ack().await,
                Settle::Nack(delay) => delivery.nack(delay).await,
                Settle::DeadLetter(reason) => delivery.dead_letter(reason).await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not settle a delivery; the transport will redeliver it");
            }
        } else if let Settle::DeadLetter(reason) = settle {
            tracing::error!(%reason, "a timer could not be processed");
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
