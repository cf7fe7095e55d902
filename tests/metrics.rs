//! The runtime's metrics, read back through a recording exporter after a known workload:
//! every counter, and the number of values in every histogram.
//!
//! One test in this binary: the recorder is global, and its snapshot resets what it read.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sagaflow::bus::Bus;
use sagaflow::message::{Envelope, Message};
use sagaflow::prelude::*;

/// `name{labels}` → value, labels sorted, as one string per series.
type Series = HashMap<String, DebugValue>;

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

fn counter(all: &Series, name: &str, labels: &[(&str, &str)]) -> u64 {
    match all.get(&series(name, labels)) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{} is {other:?}", series(name, labels)),
    }
}

fn observations(all: &Series, name: &str, labels: &[(&str, &str)]) -> usize {
    match all.get(&series(name, labels)) {
        Some(DebugValue::Histogram(values)) => values.len(),
        other => panic!("{} is {other:?}", series(name, labels)),
    }
}

fn gauge(all: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    match all.get(&series(name, labels)) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{} is {other:?}", series(name, labels)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_shows_in_every_counter_and_histogram() {
    // Installed before the runtime is built: it registers its handles then.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // Trips 0..10: 0 fails (its flight cannot be cancelled: three attempts), 1..=3 are
    // compensated (no hotel), 4..=9 complete; trip 10 waits for ever for its flight, and a
    // malformed booking is dead-lettered.
    let script = Script::default();
    script.answer(BookHotel::NAME, 0, Answer::Refuse).answer(CancelFlight::NAME, 0, Answer::Refuse);
    for trip in 1..=3 {
        script.answer(BookHotel::NAME, trip, Answer::Refuse);
    }
    script.answer(BookFlight::NAME, 10, Answer::Ignore);
    let dir = tempfile::tempdir().unwrap();
    let bus = InMemoryBus::new();
    let runtime = trip_runtime(&script)
        .store(SledStore::open(dir.path()).unwrap())
        .bus(bus.clone())
        .sample_gauges_every(Some(Duration::from_millis(50)))
        .stuck_after(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    for trip in 0..=10 {
        runtime.publish(&BookTrip { trip }).await.unwrap();
    }
    let finished: Vec<_> = (0..10).map(|t| sagaflow::saga::instance_id(Trip::NAME, &t.to_string())).collect();
    runtime.wait_until_terminal(&finished, Duration::from_secs(60)).await.unwrap();
    let malformed = Envelope::new(BookFlight::NAME, b"not json".to_vec());
    bus.publish(malformed).await.unwrap();
    until("the malformed booking to be dead-lettered", async || {
        !runtime.admin().dead_letters(None, 10).await.unwrap().is_empty()
    })
    .await;
    // Long enough for a gauge sample after everything above.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let all: Series = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels: Vec<(String, String)> =
                key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            (series(key.key().name(), &labels), value)
        })
        .collect();
    let trip = [("saga", Trip::NAME)];
    assert_eq!(counter(&all, "sagaflow_sagas_started_total", &trip), 11);
    assert_eq!(counter(&all, "sagaflow_sagas_completed_total", &trip), 6);
    assert_eq!(counter(&all, "sagaflow_sagas_compensated_total", &trip), 3);
    assert_eq!(counter(&all, "sagaflow_sagas_failed_total", &trip), 1);
    for (outcome, count) in [("completed", 6), ("compensated", 3), ("failed", 1)] {
        let labels = [("saga", Trip::NAME), ("outcome", outcome)];
        assert_eq!(observations(&all, "sagaflow_saga_duration_seconds", &labels), count, "{outcome}");
    }
    // Every step's outcome is timed: book_flight succeeded ten times, book_hotel succeeded six
    // times and failed four, charge succeeded six times.
    for (step, count) in [("book_flight", 10), ("book_hotel", 10), ("charge", 6)] {
        let labels = [("saga", Trip::NAME), ("step", step)];
        assert_eq!(observations(&all, "sagaflow_step_duration_seconds", &labels), count, "{step}");
    }
    let flight = [("saga", Trip::NAME), ("step", "book_flight")];
    assert_eq!(counter(&all, "sagaflow_compensations_total", &flight), 4);
    assert_eq!(counter(&all, "sagaflow_compensations_total", &[("saga", Trip::NAME), ("step", "book_hotel")]), 0);
    let retried = [("saga", Trip::NAME), ("step", "book_flight"), ("phase", "compensation")];
    assert_eq!(counter(&all, "sagaflow_step_retries_total", &retried), 2, "trip 0's cancellation, tried three times");
    let not_retried = [("saga", Trip::NAME), ("step", "book_flight"), ("phase", "action")];
    assert_eq!(counter(&all, "sagaflow_step_retries_total", &not_retried), 0);
    // The two retries of trip 0's cancellation waited on durable timers.
    assert_eq!(observations(&all, "sagaflow_timer_lag_seconds", &[]), 2);
    let dead = all
        .iter()
        .filter(|(k, _)| k.starts_with("sagaflow_dead_letters_total{") && k.contains("reason=rejected"))
        .map(|(_, v)| match v {
            DebugValue::Counter(n) => *n,
            other => panic!("{other:?}"),
        })
        .sum::<u64>();
    assert_eq!(dead, 1, "the malformed booking");
    // Eleven publishes by the test and the relay's of every command and reply; every commit
    // and group flush timed.
    assert!(observations(&all, "sagaflow_bus_publish_duration_seconds", &[]) > 11);
    assert!(observations(&all, "sagaflow_commit_duration_seconds", &[]) >= 11 * 2);
    assert!(observations(&all, "sagaflow_commit_batch_size", &[]) > 0);
    // Sampled: trip 10 is in flight and, with no change for more than a millisecond, stuck.
    assert_eq!(gauge(&all, "sagaflow_sagas_in_flight", &trip), 1.0);
    assert_eq!(gauge(&all, "sagaflow_sagas_stuck", &trip), 1.0);
    assert_eq!(gauge(&all, "sagaflow_outbox_depth", &[]), 0.0);
    runtime.shutdown().await.unwrap();
}
