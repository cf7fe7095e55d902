//! The engine on `PostgresStore` in one process: the trip saga and its participants on the
//! default bus, which on a PostgreSQL store is the PostgreSQL bus, its queues in the database.
//! Runs when `SAGA_TEST_POSTGRES_URL` is set (feature `postgres`), each test in a database of
//! its own.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::*;
use sagaflow::prelude::*;
use sagaflow::store::PostgresTarget;

const WAIT: Duration = Duration::from_secs(60);
const TRIPS: u32 = 100;

/// Every seventh trip's hotel refuses: that trip is compensated (its flight cancelled).
fn script() -> Script {
    let script = Script::default();
    for trip in (0..TRIPS).filter(|t| t % 7 == 3) {
        script.answer(BookHotel::NAME, trip, Answer::Refuse);
    }
    script
}

async fn assert_every_trip_ended_as_scripted(runtime: &SagaRuntime) {
    runtime.wait_until_all_terminal(WAIT).await.unwrap();
    let store = runtime.store();
    for trip in 0..TRIPS {
        let refused = trip % 7 == 3;
        let expected = if refused { SagaStatus::Compensated } else { SagaStatus::Completed };
        assert_eq!(status(runtime, trip).await, Some(expected), "trip {trip}");
        assert_eq!(effects(&*store, BookFlight::NAME, trip).await, 1, "trip {trip}'s flight booked once");
        assert_eq!(effects(&*store, CancelFlight::NAME, trip).await, u32::from(refused), "trip {trip}'s cancellation");
        assert_eq!(effects(&*store, Charge::NAME, trip).await, u32::from(!refused), "trip {trip}'s charge");
    }
    assert_eq!(runtime.outbox_len().await.unwrap(), 0);
    assert!(runtime.pending_timers(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_on_postgres_with_their_queues_there_end_as_scripted_and_apply_each_effect_once() {
    let Some(target) = PostgresTarget::from_env() else { return };
    let store = target.fresh_store().await;
    let runtime = trip_runtime(&script()).store(store).build().await.unwrap();
    for trip in 0..TRIPS {
        runtime.publish_idempotent(&format!("trip-{trip}"), &BookTrip { trip }).await.unwrap();
    }
    assert_every_trip_ended_as_scripted(&runtime).await;
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_killed_mid_flight_on_postgres_loses_and_repeats_nothing_after_a_restart() {
    let Some(target) = PostgresTarget::from_env() else { return };
    let store = target.fresh_store().await;
    let first = trip_runtime(&script()).store(store.clone()).build().await.unwrap();
    for trip in 0..TRIPS {
        first.publish_idempotent(&format!("trip-{trip}"), &BookTrip { trip }).await.unwrap();
    }
    first.kill().await;
    // A new process would reconnect; its bus is new too, and claims what the killed one held
    // once they were released or their lease ran out.
    let next = trip_runtime(&script()).store(store).build().await.unwrap();
    assert_every_trip_ended_as_scripted(&next).await;
    next.shutdown().await.unwrap();
}
