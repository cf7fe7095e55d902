//! The runtime's metrics, through the [`metrics`] facade: the application installs a recorder
//! (a Prometheus exporter, say) and sees sagas started and finished, step and saga durations,
//! retries, compensations, timer lag, dead letters, commit and publish latency, and sampled
//! gauges. docs/observability.md lists every name and label.
//!
//! Why it is built this way:
//!
//! - **Handles are registered once, when the runtime is built**, for every saga and step it
//!   runs: a unit of work then records without building labels or looking up a recorder, so
//!   the hot path pays an atomic add. The recorder must therefore be installed before the
//!   runtime is built (as the `metrics` crate asks of libraries anyway).
//! - **Labels come from definitions, never from instances**: saga and step names, subscriptions
//!   and a fixed set of reason classes. The number of series is bounded by the code, however
//!   many instances run.
//! - **Saga metrics are read off the commit** (its history events and the instance's timestamps)
//!   once the store took it: every path that changes an instance (a step, a timer, an operator's
//!   action, a commit retried after a store outage) is counted once, and a unit that lost a
//!   version conflict, whose commit the store refused, is not counted at all.

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Core;
use crate::message::Timestamp;
use crate::store::{Commit, HistoryEvent, InstanceQuery, SagaStatus, StatusKind};

/// Metric names (docs/observability.md explains each).
pub(crate) mod names {
    pub const SAGAS_STARTED: &str = "sagaflow_sagas_started_total";
    pub const SAGAS_COMPLETED: &str = "sagaflow_sagas_completed_total";
    pub const SAGAS_COMPENSATED: &str = "sagaflow_sagas_compensated_total";
    pub const SAGAS_FAILED: &str = "sagaflow_sagas_failed_total";
    pub const SAGAS_CANCELLED: &str = "sagaflow_sagas_cancelled_total";
    pub const SAGA_DURATION: &str = "sagaflow_saga_duration_seconds";
    pub const STEP_DURATION: &str = "sagaflow_step_duration_seconds";
    pub const STEP_RETRIES: &str = "sagaflow_step_retries_total";
    pub const COMPENSATIONS: &str = "sagaflow_compensations_total";
    pub const SAGAS_IN_FLIGHT: &str = "sagaflow_sagas_in_flight";
    pub const SAGAS_STUCK: &str = "sagaflow_sagas_stuck";
    pub const OUTBOX_DEPTH: &str = "sagaflow_outbox_depth";
    pub const OUTBOX_OLDEST_AGE: &str = "sagaflow_outbox_oldest_age_seconds";
    pub const TIMER_LAG: &str = "sagaflow_timer_lag_seconds";
    pub const DEAD_LETTERS: &str = "sagaflow_dead_letters_total";
    pub const COMMIT_DURATION: &str = "sagaflow_commit_duration_seconds";
    pub const COMMIT_BATCH_SIZE: &str = "sagaflow_commit_batch_size";
    pub const PUBLISH_DURATION: &str = "sagaflow_bus_publish_duration_seconds";
}

struct StepMetrics {
    duration: Histogram,
    retries: Counter,
    compensation_retries: Counter,
    compensations: Counter,
}

struct SagaMetrics {
    started: Counter,
    completed: Counter,
    compensated: Counter,
    failed: Counter,
    cancelled: Counter,
    completed_after: Histogram,
    compensated_after: Histogram,
    failed_after: Histogram,
    cancelled_after: Histogram,
    in_flight: Gauge,
    stuck: Gauge,
    steps: Vec<StepMetrics>,
}

impl SagaMetrics {
    fn register(saga: &str, steps: &[String]) -> Self {
        let saga = saga.to_owned();
        let after =
            |outcome: &'static str| histogram!(names::SAGA_DURATION, "saga" => saga.clone(), "outcome" => outcome);
        SagaMetrics {
            started: counter!(names::SAGAS_STARTED, "saga" => saga.clone()),
            completed: counter!(names::SAGAS_COMPLETED, "saga" => saga.clone()),
            compensated: counter!(names::SAGAS_COMPENSATED, "saga" => saga.clone()),
            failed: counter!(names::SAGAS_FAILED, "saga" => saga.clone()),
            cancelled: counter!(names::SAGAS_CANCELLED, "saga" => saga.clone()),
            completed_after: after("completed"),
            compensated_after: after("compensated"),
            failed_after: after("failed"),
            cancelled_after: after("cancelled"),
            in_flight: gauge!(names::SAGAS_IN_FLIGHT, "saga" => saga.clone()),
            stuck: gauge!(names::SAGAS_STUCK, "saga" => saga.clone()),
            steps: steps
                .iter()
                .map(|step| {
                    let labels = [("saga", saga.clone()), ("step", step.clone())];
                    let phase = |phase: &'static str| {
                        let mut labels = labels.to_vec();
                        labels.push(("phase", phase.to_owned()));
                        counter!(names::STEP_RETRIES, &labels)
                    };
                    StepMetrics {
                        duration: histogram!(names::STEP_DURATION, &labels),
                        retries: phase("action"),
                        compensation_retries: phase("compensation"),
                        compensations: counter!(names::COMPENSATIONS, &labels),
                    }
                })
                .collect(),
        }
    }

    fn step(&self, step: u32) -> Option<&StepMetrics> {
        self.steps.get(step as usize)
    }
}

/// What each metric is, for exporters that show it (Prometheus's `# HELP`).
fn describe() {
    use names::*;
    describe_counter!(SAGAS_STARTED, Unit::Count, "Saga instances started");
    describe_counter!(SAGAS_COMPLETED, Unit::Count, "Saga instances that completed");
    describe_counter!(SAGAS_COMPENSATED, Unit::Count, "Saga instances that failed and were compensated");
    describe_counter!(SAGAS_FAILED, Unit::Count, "Saga instances that ended failed (need an operator)");
    describe_counter!(SAGAS_CANCELLED, Unit::Count, "Saga instances an operator cancelled");
    describe_histogram!(SAGA_DURATION, Unit::Seconds, "From an instance's start to its end, by outcome");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "From a step attempt's start to its outcome");
    describe_counter!(STEP_RETRIES, Unit::Count, "Step attempts after the first, by phase");
    describe_counter!(COMPENSATIONS, Unit::Count, "Compensations started, by step");
    describe_gauge!(SAGAS_IN_FLIGHT, Unit::Count, "Instances running or compensating (sampled)");
    describe_gauge!(
        SAGAS_STUCK,
        Unit::Count,
        "Instances in flight with no change for longer than the threshold (sampled)"
    );
    describe_gauge!(OUTBOX_DEPTH, Unit::Count, "Outbox entries waiting for the relay (sampled, counted up to 10,000)");
    describe_gauge!(OUTBOX_OLDEST_AGE, Unit::Seconds, "Age of the oldest outbox entry (sampled)");
    describe_histogram!(TIMER_LAG, Unit::Seconds, "How late a durable timer fired");
    describe_counter!(DEAD_LETTERS, Unit::Count, "Messages dead-lettered, by subscription and reason class");
    describe_histogram!(COMMIT_DURATION, Unit::Seconds, "From a unit's commit until the runtime sees it durable");
    describe_histogram!(COMMIT_BATCH_SIZE, Unit::Count, "Commits made durable by one group flush (sled)");
    describe_histogram!(PUBLISH_DURATION, Unit::Seconds, "One publish to the bus");
}

enum Mark<'a> {
    Count(&'a Counter),
    Time(&'a Histogram, f64),
}

/// A commit's saga metrics, recorded once the store took the commit.
pub(crate) struct Observed<'a>(Vec<Mark<'a>>);

impl Observed<'_> {
    pub(crate) fn record(self) {
        for mark in self.0 {
            match mark {
                Mark::Count(counter) => counter.increment(1),
                Mark::Time(histogram, seconds) => histogram.record(seconds),
            }
        }
    }
}

/// Why a message was dead-lettered, as a label with few values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DeadLetterClass {
    /// Retried until the policy gave up.
    GaveUp,
    /// Failed for good at once: it does not decode, the handler called the failure permanent,
    /// or nothing in the runtime can take it.
    Rejected,
}

impl DeadLetterClass {
    fn label(self) -> &'static str {
        match self {
            DeadLetterClass::GaveUp => "gave_up",
            DeadLetterClass::Rejected => "rejected",
        }
    }
}

/// Every handle the runtime records into.
pub(crate) struct Metrics {
    sagas: HashMap<String, SagaMetrics>,
    timer_lag: Histogram,
    commit_duration: Histogram,
    publish_duration: Histogram,
    outbox_depth: Gauge,
    outbox_oldest_age: Gauge,
}

impl Metrics {
    /// Registers the handles of `sagas` (each with its steps' names, in order).
    pub(crate) fn register<'a>(sagas: impl IntoIterator<Item = (&'a str, Vec<String>)>) -> Self {
        describe();
        Metrics {
            sagas: sagas
                .into_iter()
                .map(|(name, steps)| (name.to_owned(), SagaMetrics::register(name, &steps)))
                .collect(),
            timer_lag: histogram!(names::TIMER_LAG),
            commit_duration: histogram!(names::COMMIT_DURATION),
            publish_duration: histogram!(names::PUBLISH_DURATION),
            outbox_depth: gauge!(names::OUTBOX_DEPTH),
            outbox_oldest_age: gauge!(names::OUTBOX_OLDEST_AGE),
        }
    }

    /// What `commit` does to its instance's metrics, to record once the store took it (see
    /// the module docs).
    pub(crate) fn observe(&self, commit: &Commit) -> Observed<'_> {
        let mut marks = Vec::new();
        let (Some(write), Some(history)) = (&commit.instance, &commit.history) else { return Observed(marks) };
        let Some(saga) = self.sagas.get(&write.record.saga) else { return Observed(marks) };
        let record = &write.record;
        let since = |from: Timestamp| seconds(from, record.updated_at);
        // An operator's skip marks a step done after the instance sat failed: not a duration.
        let by_operator = history.events.iter().any(|e| matches!(e, HistoryEvent::Operator { .. }));
        for event in &history.events {
            match event {
                HistoryEvent::Started => marks.push(Mark::Count(&saga.started)),
                HistoryEvent::StepStarted { step, attempt, .. } if *attempt > 1 => {
                    marks.extend(saga.step(*step).map(|s| Mark::Count(&s.retries)));
                }
                HistoryEvent::CompensationStarted { step, attempt, .. } => {
                    let step = saga.step(*step);
                    let counter = step.map(|s| if *attempt > 1 { &s.compensation_retries } else { &s.compensations });
                    marks.extend(counter.map(Mark::Count));
                }
                HistoryEvent::StepSucceeded { step, .. } | HistoryEvent::StepFailed { step, .. } => {
                    if let (Some(s), Some(from), false) = (saga.step(*step), write.previous_updated_at, by_operator) {
                        marks.push(Mark::Time(&s.duration, since(from)));
                    }
                }
                HistoryEvent::StatusChanged { to } => {
                    let (count, after) = match to {
                        SagaStatus::Completed => (&saga.completed, &saga.completed_after),
                        SagaStatus::Compensated => (&saga.compensated, &saga.compensated_after),
                        SagaStatus::Failed { .. } => (&saga.failed, &saga.failed_after),
                        SagaStatus::Cancelled { .. } => (&saga.cancelled, &saga.cancelled_after),
                        _ => continue,
                    };
                    marks.push(Mark::Count(count));
                    marks.push(Mark::Time(after, since(record.created_at)));
                }
                _ => {}
            }
        }
        Observed(marks)
    }

    /// A timer fired `due` → `now` late.
    pub(crate) fn timer_fired(&self, due: Timestamp, now: Timestamp) {
        self.timer_lag.record(seconds(due, now));
    }

    /// Where a commit's time from the store's call to durability goes.
    pub(crate) fn commit_duration(&self) -> Histogram {
        self.commit_duration.clone()
    }

    /// Where the time of a publish to the bus goes.
    pub(crate) fn publish_duration(&self) -> Histogram {
        self.publish_duration.clone()
    }

    /// The outbox's sampled depth and the age of its oldest entry.
    pub(crate) fn outbox(&self, depth: usize, oldest: Option<Timestamp>, now: Timestamp) {
        self.outbox_depth.set(depth as f64);
        self.outbox_oldest_age.set(oldest.map_or(0.0, |t| seconds(t, now)));
    }

    /// A saga's sampled in-flight and stuck counts.
    pub(crate) fn instances(&self, saga: &str, in_flight: u64, stuck: u64) {
        if let Some(s) = self.sagas.get(saga) {
            s.in_flight.set(in_flight as f64);
            s.stuck.set(stuck as f64);
        }
    }
}

/// When the gauges read from the store are sampled (`SagaRuntimeBuilder::sample_gauges_every`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sampling {
    pub(crate) every: Option<Duration>,
    pub(crate) stuck_after: Duration,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { every: Some(Duration::from_secs(15)), stuck_after: Duration::from_secs(300) }
    }
}

/// How many outbox entries a sample reads at most: the depth gauge stops there.
const OUTBOX_SCANNED: usize = 10_000;

/// Samples the gauges read from the store every `every`, until the runtime stops.
pub(crate) async fn sample(core: Arc<Core>, every: Duration, stuck_after: Duration) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = sample_once(&core, stuck_after).await {
            tracing::debug!(error = %e, "could not sample the store's gauges; trying again at the next sample");
        }
    }
}

async fn sample_once(core: &Core, stuck_after: Duration) -> Result<(), crate::store::StoreError> {
    let now = core.clock.now();
    let outbox = core.store.outbox(None, OUTBOX_SCANNED).await?;
    core.metrics.outbox(outbox.len(), outbox.iter().map(|e| e.envelope.created_at).min(), now);
    let mut counts: HashMap<&str, (u64, u64)> = core.metrics.sagas.keys().map(|s| (s.as_str(), (0, 0))).collect();
    for status in [StatusKind::Running, StatusKind::Compensating] {
        for stuck in [false, true] {
            let mut query = InstanceQuery::default().status(status);
            if stuck {
                query = query.updated_before(now.minus(stuck_after));
            }
            loop {
                let page = core.store.count_instances(&query).await?;
                for c in &page.counts {
                    if let Some((in_flight, stuck_count)) = counts.get_mut(c.saga.as_str()) {
                        *if stuck { stuck_count } else { in_flight } += c.count;
                    }
                }
                match page.next {
                    Some(next) => query = query.after(Some(next)),
                    None => break,
                }
            }
        }
    }
    for (saga, (in_flight, stuck)) in counts {
        core.metrics.instances(saga, in_flight, stuck);
    }
    Ok(())
}

/// A dead letter of `subscription`: rare, so its handle is looked up each time.
pub(crate) fn dead_lettered(subscription: &str, class: DeadLetterClass) {
    counter!(names::DEAD_LETTERS, "subscription" => subscription.to_owned(), "reason" => class.label()).increment(1);
}

/// A group commit of `size` commits reached the disk (the sled store's flusher).
pub(crate) fn commit_batch(size: usize) {
    histogram!(names::COMMIT_BATCH_SIZE).record(size as f64);
}

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    to.0.saturating_sub(from.0) as f64 / 1000.0
}
