//! Several runtimes of one process on one durable local bus: what one leaves in flight reaches
//! the next, and a runtime with a store of its own deduplicates as on any bus.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sagaflow::bus::LocalBus;
use sagaflow::prelude::*;
use sagaflow::store::Store;

const WAIT: Duration = Duration::from_secs(60);
const TRIPS: u32 = 200;

fn sled(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(dir).unwrap())
}

async fn assert_every_trip_completed_with_each_effect_once(runtime: &SagaRuntime, effects_store: &dyn Store) {
    runtime.wait_until_all_terminal(WAIT).await.unwrap();
    for trip in 0..TRIPS {
        assert_eq!(status(runtime, trip).await, Some(SagaStatus::Completed), "trip {trip}");
    }
    let effects = all_effects(effects_store).await;
    assert_eq!(effects.len(), 3 * TRIPS as usize, "three bookings per trip");
    assert!(effects.values().all(|&n| n == 1), "each applied once: {effects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_killed_mid_flight_leaves_nothing_stranded_for_the_next_runtime_on_the_same_bus() {
    let dir = tempfile::tempdir().unwrap();
    let store = sled(dir.path());
    let bus = LocalBus::open(store.clone());
    let first = trip_runtime(&Script::default()).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    for trip in 0..TRIPS {
        first.publish_idempotent(&format!("trip-{trip}"), &BookTrip { trip }).await.unwrap();
    }
    // Killed in the middle of the work: some commits are durable and their queued copies not
    // yet handed to the bus.
    first.kill().await;

    let next = trip_runtime(&Script::default()).store(store.clone()).bus(bus).build().await.unwrap();
    assert_every_trip_completed_with_each_effect_once(&next, &*store).await;
    assert_eq!(next.outbox_len().await.unwrap(), 0);
    next.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_with_a_store_of_their_own_on_a_shared_local_bus_apply_each_command_once() {
    let (saga_dir, participant_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (saga_store, participant_store) = (sled(saga_dir.path()), sled(participant_dir.path()));
    // The bus keeps its queues in the saga's store; the participants commit to theirs.
    let bus = LocalBus::open(saga_store.clone());
    let script = Script::default();
    let participants = SagaRuntime::builder()
        .handler(scripted::<BookFlight>(&script))
        .handler(scripted::<CancelFlight>(&script))
        .handler(scripted::<BookHotel>(&script))
        .handler(scripted::<CancelHotel>(&script))
        .handler(scripted::<Charge>(&script))
        .store(participant_store.clone())
        .bus(bus.clone())
        .build()
        .await
        .unwrap();
    let sagas = SagaRuntime::builder().saga::<Trip>().store(saga_store).bus(bus).build().await.unwrap();
    for trip in 0..TRIPS {
        sagas.publish_idempotent(&format!("trip-{trip}"), &BookTrip { trip }).await.unwrap();
    }
    assert_every_trip_completed_with_each_effect_once(&sagas, &*participant_store).await;
    sagas.shutdown().await.unwrap();
    participants.shutdown().await.unwrap();
}
