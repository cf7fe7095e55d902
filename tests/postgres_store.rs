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
    // A start message the killed runtime had claimed waits in the database until its lease
    // runs out; waiting for the instances there are would miss the trips it starts.
    until("every trip started", async || {
        for trip in 0..TRIPS {
            if status(runtime, trip).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
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
    // What a killed runtime published but had not yet removed from the outbox is published
    // again (and dropped by the consumers' inboxes) once nobody touched it for a lease.
    until("the outbox is empty", async || runtime.outbox_len().await.unwrap() == 0).await;
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

/// Instances written before schema version 5 (no `saga` or `updated_at` column values) are
/// filled in when a store connects, so listings by saga and age find them, and the finished
/// ones are indexed for retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_from_before_the_listing_columns_are_listed_after_a_reconnect() {
    use sagaflow::store::{InstanceQuery, PostgresStore, Store};
    use sqlx::Connection;
    let Some(target) = PostgresTarget::from_env() else { return };
    let database = target.fresh_database().await;
    let store = PostgresStore::connect_options(database.clone(), 2).await.unwrap();
    let runtime = trip_runtime(&Script::default()).store(store.clone()).build().await.unwrap();
    for trip in 0..3 {
        runtime.publish_idempotent(&format!("trip-{trip}"), &BookTrip { trip }).await.unwrap();
    }
    runtime.wait_until_all_terminal(WAIT).await.unwrap();
    runtime.shutdown().await.unwrap();
    let mut raw = sqlx::PgConnection::connect_with(&database).await.unwrap();
    sqlx::query("UPDATE saga_instances SET saga = NULL, updated_at = NULL").execute(&mut raw).await.unwrap();
    let by_saga = InstanceQuery::default().saga(Trip::NAME).updated_before(sagaflow::message::Timestamp(u64::MAX));
    assert!(store.list_instances(&by_saga, 10).await.unwrap().records.is_empty(), "the columns are empty");

    // Nor were they indexed as finished: the index came with version 6.
    sqlx::query("DELETE FROM saga_finished").execute(&mut raw).await.unwrap();

    let reconnected = PostgresStore::connect_options(database, 2).await.unwrap();
    assert_eq!(reconnected.list_instances(&by_saga, 10).await.unwrap().records.len(), 3);
    let finished = reconnected.expired_instances(Trip::NAME, sagaflow::message::Timestamp(u64::MAX), 10).await.unwrap();
    assert_eq!(finished.len(), 3, "retention finds them");
}
