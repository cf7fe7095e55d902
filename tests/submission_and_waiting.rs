//! Submitting work from outside (idempotent, durable) and waiting for it, through the public
//! API, on the embedded default (sled with the durable local bus).

mod common;

use std::time::Duration;

use common::*;
use sagaflow::Error;
use sagaflow::prelude::*;
use sagaflow::saga::instance_id;

const WAIT: Duration = Duration::from_secs(30);

fn trip_id(trip: u32) -> uuid::Uuid {
    instance_id(Trip::NAME, &trip.to_string())
}

/// Once all is done: the three bookings of one trip, each applied once.
async fn assert_one_trip_with_each_effect_once(runtime: &SagaRuntime) {
    runtime.wait_until_all_terminal(WAIT).await.unwrap();
    let effects = all_effects(&*runtime.store()).await;
    assert_eq!(effects.len(), 3, "{effects:?}");
    assert!(effects.values().all(|&n| n == 1), "{effects:?}");
}

#[tokio::test]
async fn a_retried_submission_with_the_same_key_takes_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = trip_runtime(&Script::default()).store(SledStore::open(dir.path()).unwrap()).build().await.unwrap();
    // A participant's command, submitted twice under one key (a client retrying), then under
    // another key.
    let first = runtime.publish_idempotent("charge-1", &Charge { trip: 1 }).await.unwrap();
    let retried = runtime.publish_idempotent("charge-1", &Charge { trip: 1 }).await.unwrap();
    let other = runtime.publish_idempotent("charge-1-again", &Charge { trip: 1 }).await.unwrap();
    runtime.wait_until_all_terminal(WAIT).await.unwrap();
    assert_eq!(first, retried);
    assert_ne!(first, other);
    assert_eq!(effects(&*runtime.store(), Charge::NAME, 1).await, 2, "one effect per key");
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retried_saga_start_runs_one_saga_with_each_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = trip_runtime(&Script::default()).store(SledStore::open(dir.path()).unwrap()).build().await.unwrap();
    for _ in 0..3 {
        runtime.publish_idempotent("trip-5", &BookTrip { trip: 5 }).await.unwrap();
    }
    let done = runtime.wait_until_terminal(&[trip_id(5)], WAIT).await.unwrap();
    assert_eq!(done[0].status(), &SagaStatus::Completed);
    assert_one_trip_with_each_effect_once(&runtime).await;
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_submission_accepted_just_before_a_crash_runs_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = trip_runtime(&Script::default()).store(SledStore::open(dir.path()).unwrap()).build().await.unwrap();
    runtime.publish_idempotent("trip-9", &BookTrip { trip: 9 }).await.unwrap();
    // Killed as soon as the submission is accepted: whatever ran of it is committed, the rest
    // is still queued in the store.
    runtime.kill().await;

    let runtime = trip_runtime(&Script::default()).store(SledStore::open(dir.path()).unwrap()).build().await.unwrap();
    // Nothing is submitted again: the trip ends from what the first process accepted.
    let done = runtime.wait_until_terminal(&[trip_id(9)], WAIT).await.unwrap();
    assert_eq!(done[0].status(), &SagaStatus::Completed);
    // The client, unsure whether it got through, submits again: still one trip.
    runtime.publish_idempotent("trip-9", &BookTrip { trip: 9 }).await.unwrap();
    assert_one_trip_with_each_effect_once(&runtime).await;
    assert!(runtime.pending_timers(10).await.unwrap().is_empty());
    assert_eq!(runtime.outbox_len().await.unwrap(), 0);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn waiting_on_an_instance_that_never_ends_names_it_when_the_wait_runs_out() {
    let script = Script::default();
    script.answer(BookHotel::NAME, 3, Answer::Ignore); // the 30 s hotel timeout is far away
    let runtime = trip_runtime(&script).store(MemoryStore::new()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 3 }).await.unwrap();
    let err = runtime.wait_until_terminal(&[trip_id(3)], Duration::from_millis(300)).await.unwrap_err();
    match &err {
        Error::TimedOut { unfinished, .. } => assert_eq!(unfinished, &[trip_id(3)]),
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(err.to_string().contains("not terminal"), "{err}");
    let err = runtime.wait_until_all_terminal(Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(err, Error::TimedOut { ref unfinished, .. } if unfinished == &[trip_id(3)]), "{err}");
    // The open instance's step timeout is a pending timer; nothing waits in the outbox.
    let timers = runtime.pending_timers(10).await.unwrap();
    assert_eq!(timers.len(), 1, "{timers:?}");
    assert_eq!(timers[0].key.instance_id, trip_id(3));
    assert_eq!(runtime.outbox_len().await.unwrap(), 0);
}

#[tokio::test]
async fn dead_letters_of_every_subscription_are_listed_by_the_runtime_on_the_local_bus() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
    let bus = LocalBus::open(store.clone());
    let runtime = trip_runtime(&Script::default()).store(store).bus(bus.clone()).build().await.unwrap();
    // A payload the saga cannot decode: dead-lettered where it came in, with the reason.
    let bad = sagaflow::message::Envelope::new(BookTrip::NAME, b"{not json".to_vec());
    bus.publish(bad).await.unwrap();
    runtime.wait_until_all_terminal(WAIT).await.unwrap();
    let dead = runtime.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].envelope.name, BookTrip::NAME);
    assert!(!dead[0].reason.is_empty());
    runtime.shutdown().await.unwrap();
}
