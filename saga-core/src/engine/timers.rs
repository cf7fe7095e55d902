//! Durable timers: one task sleeps until the next due timer and feeds it to the lanes.
//!
//! Timers live in the store's due-time index, written in the same commit as the transition
//! that scheduled them, so they survive restarts. A fired timer enters the same unit of work as
//! a message (its id is the message id, so firing twice is deduplicated), and the unit removes
//! it. Timers handed to a lane and not yet finished are remembered in memory so that the task
//! does not hand them out twice. A timer whose unit failed stays remembered, held back until a
//! pause has passed on the runtime's clock, so that it is not refired in a tight loop; the hold
//! is a time, not a sleeping task, so that virtual time in tests releases it deterministically.
//!
//! In a store several processes share ([`Store::is_shared`](crate::store::Store::is_shared)),
//! the store's claims decide which process fires a due timer ([`Store::claim_timers`]), and
//! the in-memory set only keeps this process from handing out what it already holds. Another
//! process's timers come due without a wake-up here, so the task also looks every third of a
//! claim lease. A local step's timer is the lease the step runs under: [`keep_claimed`] extends
//! it while the step runs, and a process that dies stops extending it, so another takes the
//! step over once the lease ran out. There is no start-up pass over local steps then: a
//! starting replica must not re-run a step that another is running. In a store one process
//! owns, every local step's timer at start belongs to a run that died, so they run again at
//! once.
//!
//! [`Store::claim_timers`]: crate::store::Store::claim_timers

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::Core;
use super::lanes::Work;
use crate::message::Timestamp;
use crate::store::{TimerKey, TimerPurpose, TimerRecord};

const BATCH: usize = 512;

/// Shared between the timer task, the lanes and the runtime.
#[derive(Default)]
pub(crate) struct TimerService {
    /// `None`: in a lane; `Some(t)`: its unit failed, it may fire again from `t`.
    in_flight: Mutex<HashMap<TimerKey, Option<Timestamp>>>,
    wake: Notify,
}

impl TimerService {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<TimerKey, Option<Timestamp>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims a timer for a lane; false if it is in a lane or held back.
    pub(crate) fn claim(&self, key: TimerKey) -> bool {
        match self.in_flight().entry(key) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(None);
                true
            }
        }
    }

    /// Forgets holds that have ended (also of timers a later commit removed).
    fn end_holds(&self, now: Timestamp) {
        self.in_flight().retain(|_, hold| hold.is_none_or(|until| until > now));
    }

    /// Whether a timer is held back after a failed unit.
    pub(crate) fn is_held(&self, key: &TimerKey) -> bool {
        matches!(self.in_flight().get(key), Some(Some(_)))
    }

    /// When the earliest held-back timer may fire again.
    pub(crate) fn next_release(&self) -> Option<Timestamp> {
        self.in_flight().values().flatten().min().copied()
    }

    /// A lane finished with a timer: its commit removed it.
    pub(crate) fn release(&self, key: TimerKey) {
        self.in_flight().remove(&key);
        self.wake.notify_one();
    }

    /// A lane failed a timer's unit: it may fire again from `until`.
    pub(crate) fn hold(&self, key: TimerKey, until: Timestamp) {
        self.in_flight().insert(key, Some(until));
        self.wake.notify_one();
    }

    /// New timers may have been scheduled.
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }
}

/// Hands every due timer not already in flight to its lane; returns how many.
pub(crate) async fn fire_due(core: &Arc<Core>, upto: Timestamp, only: Option<fn(&TimerRecord) -> bool>) -> usize {
    let mut fired = 0;
    let mut after = None;
    core.timers.end_holds(core.clock.now());
    // Only this runtime's sagas' timers: another runtime on a shared store fires the others.
    let sagas: Vec<String> = core.sagas.keys().cloned().collect();
    loop {
        let timers = match core.store.claim_timers(upto, after, BATCH, &sagas).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read due timers");
                return fired;
            }
        };
        let full = timers.len() == BATCH;
        after = timers.last().map(|t| t.key);
        for timer in timers {
            if only.is_some_and(|keep| !keep(&timer)) {
                continue;
            }
            let Some(driver) = core.sagas.get(&timer.saga).cloned() else {
                tracing::debug!(saga = %timer.saga, "timer of a saga this runtime does not run");
                continue;
            };
            if !core.timers.claim(timer.key) {
                continue;
            }
            fired += 1;
            core.metrics.timer_fired(timer.key.due, core.clock.now());
            crate::crash_points::crash_point!("timers.before_fire");
            let work = Work {
                subscription: driver.subscription().into(),
                driver,
                lane_key: timer.key.instance_id,
                trace: crate::trace::TraceContext::of_timer(&timer),
                input: super::driver::Input::Timer(timer),
                delivery: None,
                guard: core.activity.guard(),
            };
            core.lanes.dispatch(work).await;
        }
        if !full {
            return fired;
        }
    }
}

fn is_local_run(t: &TimerRecord) -> bool {
    matches!(t.purpose, TimerPurpose::RunLocal { .. })
}

/// Runs `work` on a claimed timer (a local step), extending the claim every third of the
/// store's lease until it is done; `None`, without running it, when another process holds the
/// claim (this one's ran out before the work started: it waited in a busy lane). Nothing to
/// extend in a store one process owns.
pub(crate) async fn keep_claimed<T>(core: &Core, key: TimerKey, work: impl Future<Output = T>) -> Option<T> {
    let Some(lease) = core.store.claim_lease() else { return Some(work.await) };
    match core.store.extend_timer_claims(&[key]).await {
        Ok(lost) if lost.is_empty() => {}
        Ok(_) => return None,
        // The store is out of reach: the unit's commit would fail too, and the timer comes back.
        Err(e) => tracing::warn!(instance = %key.instance_id, error = %e, "cannot extend a local step's lease"),
    }
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            _ = ticks.tick() => match core.store.extend_timer_claims(&[key]).await {
                Ok(lost) if lost.is_empty() => {}
                Ok(_) => tracing::warn!(
                    instance = %key.instance_id,
                    "a local step's lease ran out while it ran (the store was out of reach for longer than the \
                     lease?): another process may run it too; the instance's version check lets one result in"
                ),
                Err(e) => tracing::warn!(instance = %key.instance_id, error = %e, "cannot extend a local step's lease"),
            },
        }
    }
}

/// The timer task: first re-runs local steps a crash interrupted (in a store this process
/// owns), then fires timers as they come due.
pub(crate) async fn run(core: Arc<Core>) {
    let poll = core.store.claim_lease().map(|lease| (lease / 3).min(Duration::from_secs(1)));
    if poll.is_none() {
        let recovered = fire_due(&core, Timestamp(u64::MAX), Some(is_local_run)).await;
        if recovered > 0 {
            tracing::info!(recovered, "re-running local steps interrupted by a restart");
        }
    }
    loop {
        let wake = core.timers.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let now = core.clock.now();
        fire_due(&core, now, None).await;
        match core.store.next_timer(now).await {
            Ok(next) => {
                let due = next.map(|t| t.due).into_iter().chain(core.timers.next_release()).min();
                let look = async {
                    match poll {
                        Some(poll) => tokio::time::sleep(poll).await,
                        None => std::future::pending().await,
                    }
                };
                match due {
                    Some(due) => {
                        tokio::select! {
                            _ = core.clock.sleep_until(due) => {}
                            _ = &mut wake => {}
                            _ = look => {}
                        }
                    }
                    None => {
                        tokio::select! {
                            _ = &mut wake => {}
                            _ = look => {}
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the timer index; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
