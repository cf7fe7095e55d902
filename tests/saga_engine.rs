//! The durable engine's guarantees, through the public API.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sagaflow::bus::{Bus, InMemoryBus};
use sagaflow::clock::ManualClock;
use sagaflow::message::{Envelope, JsonCodec, Message};
use sagaflow::prelude::*;
use sagaflow::store::{HistoryEvent, Store, TimerPurpose};

fn memory_runtime(script: &Script, clock: &ManualClock) -> sagaflow::engine::SagaRuntimeBuilder {
    trip_runtime(script).store(MemoryStore::new()).clock(clock.clone())
}

#[tokio::test]
async fn a_failing_third_step_compensates_steps_two_and_one_in_reverse_order_exactly_once() {
    let script = Script::default();
    script.answer(Charge::NAME, 1, Answer::Refuse);
    let runtime = memory_runtime(&script, &ManualClock::default()).build().await.unwrap();

    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;

    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Compensated));
    let commands: Vec<_> = script.log().into_iter().map(|(c, _)| c).collect();
    assert_eq!(commands, [BookFlight::NAME, BookHotel::NAME, Charge::NAME, CancelHotel::NAME, CancelFlight::NAME]);
    let store = runtime.store();
    assert_eq!(effects(&*store, CancelHotel::NAME, 1).await, 1);
    assert_eq!(effects(&*store, CancelFlight::NAME, 1).await, 1);
    let trip: Trip = runtime.saga::<Trip>("1").await.unwrap().unwrap().state().unwrap();
    assert!(!trip.flight && !trip.hotel && !trip.paid);
}

/// A bus that delivers every message twice (same id), as a broker may after a lost ack.
#[derive(Clone, Default)]
struct DuplicatingBus(InMemoryBus);

#[async_trait::async_trait]
impl Bus for DuplicatingBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), sagaflow::bus::BusError> {
        self.0.publish(envelope.clone()).await?;
        self.0.publish(envelope).await
    }
    async fn subscribe(&self, s: &str, names: &[&str]) -> Result<sagaflow::bus::Consumer, sagaflow::bus::BusError> {
        self.0.subscribe(s, names).await
    }
    async fn unsubscribe(&self, s: &str) -> Result<(), sagaflow::bus::BusError> {
        self.0.unsubscribe(s).await
    }
    fn activity(&self) -> Option<Arc<sagaflow::activity::Activity>> {
        self.0.activity()
    }
}

/// Runs trip 1 to its end and returns its final version and history length.
async fn clean_run_version() -> (u64, usize) {
    let runtime = memory_runtime(&Script::default(), &ManualClock::default()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let instance = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    (instance.version(), runtime.history(instance.id(), usize::MAX).await.unwrap().len())
}

#[tokio::test]
async fn a_start_message_delivered_twice_starts_one_instance_once() {
    let script = Script::default();
    let bus = InMemoryBus::new();
    let runtime = memory_runtime(&script, &ManualClock::default()).bus(bus.clone()).build().await.unwrap();

    let start = Envelope::encode(&JsonCodec, &BookTrip { trip: 1 }).unwrap();
    bus.publish(start.clone()).await.unwrap();
    bus.publish(start).await.unwrap();
    runtime.settle().await;

    let instance = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!(
        (instance.version(), runtime.history(instance.id(), usize::MAX).await.unwrap().len()),
        clean_run_version().await
    );
    assert_eq!(effects(&*runtime.store(), BookFlight::NAME, 1).await, 1);
}

#[tokio::test]
async fn replies_and_commands_delivered_twice_change_nothing_the_second_time() {
    let script = Script::default();
    let runtime =
        memory_runtime(&script, &ManualClock::default()).bus(DuplicatingBus::default()).build().await.unwrap();

    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;

    let instance = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!(instance.status(), &SagaStatus::Completed);
    assert_eq!(
        (instance.version(), runtime.history(instance.id(), usize::MAX).await.unwrap().len()),
        clean_run_version().await
    );
    let store = runtime.store();
    for command in [BookFlight::NAME, BookHotel::NAME, Charge::NAME] {
        assert_eq!(effects(&*store, command, 1).await, 1, "{command} applied more than once");
    }
}

#[tokio::test]
async fn a_timer_fired_twice_changes_nothing_the_second_time() {
    let script = Script::default();
    script.answer(BookHotel::NAME, 1, Answer::Ignore);
    let clock = ManualClock::default();
    let runtime = memory_runtime(&script, &clock).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let store = runtime.store();
    let timeout = store
        .timers_due(sagaflow::message::Timestamp(u64::MAX), None, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|t| matches!(t.purpose, TimerPurpose::Timeout { .. }))
        .expect("the hotel step has a timeout timer");

    advance(&runtime, &clock, Duration::from_secs(31), 1).await;
    let after_first = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!(after_first.status(), &SagaStatus::Compensated);

    // The same timer again, as if its removal had been lost.
    let committed =
        store.commit(sagaflow::store::Commit { timers_add: vec![timeout], ..Default::default() }).await.unwrap();
    committed.durable.await.unwrap();
    advance(&runtime, &clock, Duration::from_secs(1), 1).await;

    let after_second = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!(after_second.version(), after_first.version());
    assert_eq!(effects(&*store, CancelFlight::NAME, 1).await, 1);
    assert!(store.next_timer(sagaflow::message::Timestamp(0)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_step_timeout_compensates_in_virtual_time_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    script.answer(BookHotel::NAME, 3, Answer::Ignore);
    let clock = ManualClock::default();
    let bus = InMemoryBus::new();

    let runtime = trip_runtime(&script)
        .store(SledStore::open(dir.path()).unwrap())
        .bus(bus.clone())
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    runtime.publish(&BookTrip { trip: 3 }).await.unwrap();
    runtime.settle().await;
    let waiting = runtime.saga::<Trip>("3").await.unwrap().unwrap();
    assert_eq!(waiting.current_step(), Some("book_hotel"));
    runtime.kill().await;

    let runtime = trip_runtime(&script)
        .store(SledStore::open(dir.path()).unwrap())
        .bus(bus)
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    advance(&runtime, &clock, Duration::from_secs(29), 1).await;
    assert!(matches!(status(&runtime, 3).await, Some(SagaStatus::Running { step: 1 })));
    advance(&runtime, &clock, Duration::from_secs(2), 1).await;

    assert_eq!(status(&runtime, 3).await, Some(SagaStatus::Compensated));
    let store = runtime.store();
    // The hotel may have been booked after all: a timed-out step is compensated too.
    assert_eq!(effects(&*store, CancelHotel::NAME, 3).await, 1);
    assert_eq!(effects(&*store, CancelFlight::NAME, 3).await, 1);
    let instance = runtime.saga::<Trip>("3").await.unwrap().unwrap();
    assert!(instance.failure().unwrap().contains("no reply within 30s"), "{:?}", instance.failure());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_dropped_mid_flight_with_1000_sagas_finishes_all_on_reopen_without_duplicated_effects() {
    const TRIPS: u32 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let script = Script::default();
    for trip in (0..TRIPS).filter(|t| t % 10 == 0) {
        script.answer(Charge::NAME, trip, Answer::Refuse);
    }
    let bus = InMemoryBus::new();
    let open = || trip_runtime(&script).store(SledStore::open(dir.path()).unwrap()).bus(bus.clone());

    let runtime = open().build().await.unwrap();
    for trip in 0..TRIPS {
        runtime.publish(&BookTrip { trip }).await.unwrap();
    }
    // Let some finish and leave the rest at every stage of flight.
    while runtime.instances(StatusKind::Completed, usize::MAX).await.unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let in_flight = runtime.instances(StatusKind::Running, usize::MAX).await.unwrap().len();
    assert!(in_flight > 0, "the runtime must be killed with sagas in flight");
    runtime.kill().await;

    let runtime = open().build().await.unwrap();
    runtime.settle().await;

    let completed = runtime.instances(StatusKind::Completed, usize::MAX).await.unwrap().len();
    let compensated = runtime.instances(StatusKind::Compensated, usize::MAX).await.unwrap().len();
    assert_eq!((completed, compensated), (900, 100));
    let effects = all_effects(&*runtime.store()).await;
    for trip in 0..TRIPS {
        let refused = trip % 10 == 0;
        for (command, expected) in [
            (BookFlight::NAME, 1),
            (BookHotel::NAME, 1),
            (Charge::NAME, 1),
            (CancelHotel::NAME, u32::from(refused)),
            (CancelFlight::NAME, u32::from(refused)),
        ] {
            let applied = effects.get(&effect_key(command, trip)).copied().unwrap_or(0);
            assert_eq!(applied, expected, "{command} for trip {trip}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_for_one_instance_never_interleave() {
    const NOTES: u32 = 200;
    let script = Script::default();
    script.answer(BookHotel::NAME, 9, Answer::Ignore);
    let store = Arc::new(MemoryStore::new());
    let bus = InMemoryBus::new();
    // Two runtimes on one store each get every message (each on a subscription of its own):
    // within each, lanes serialize an instance; between them, the optimistic version check
    // and the inbox do.
    let a = trip_runtime(&script).store(store.clone()).bus(bus.clone()).subscription("a").build().await.unwrap();
    let b = trip_runtime(&script).store(store.clone()).bus(bus.clone()).subscription("b").build().await.unwrap();
    a.publish(&BookTrip { trip: 9 }).await.unwrap();
    a.settle().await;

    futures::future::join_all((0..NOTES).map(|_| a.publish(&TripNote { trip: 9 }))).await;
    a.settle().await;
    b.settle().await;

    let instance = a.saga::<Trip>("9").await.unwrap().unwrap();
    assert_eq!(instance.state::<Trip>().unwrap().notes, NOTES);
    let history = a.history(instance.id(), usize::MAX).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|h| h.version).collect();
    assert_eq!(versions, (1..=instance.version()).collect::<Vec<_>>());
    let notes =
        history.iter().filter(|h| h.events.iter().any(|e| matches!(e, HistoryEvent::EventHandled { .. }))).count();
    assert_eq!(notes, NOTES as usize, "one commit per note");
}

#[tokio::test]
async fn undecodable_payloads_and_unknown_names_are_dead_lettered_and_consuming_goes_on() {
    let script = Script::default();
    let bus = InMemoryBus::new();
    let runtime = memory_runtime(&script, &ManualClock::default()).bus(bus.clone()).build().await.unwrap();

    bus.inject("saga.trip", Envelope::new(BookTrip::NAME, b"{not json".to_vec())).unwrap();
    bus.inject("saga.trip", Envelope::new("trip.teleport", b"{}".to_vec())).unwrap();
    bus.inject(BookFlight::NAME, Envelope::new(BookFlight::NAME, b"[1,2]".to_vec())).unwrap();
    bus.inject(
        "saga.trip",
        Envelope::new(BookTrip::NAME, b"{\"trip\":5}".to_vec()).with_header("content-type", "application/xml"),
    )
    .unwrap();
    runtime.publish(&BookTrip { trip: 4 }).await.unwrap();
    runtime.settle().await;

    let reasons: Vec<String> = bus.all_dead_letters().into_iter().map(|d| d.reason).collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    for expected in [
        "undecodable trip.book: cannot decode",
        "unknown message name \"trip.teleport\": saga trip does not handle it",
        "undecodable flight.book: cannot decode",
        "undecodable trip.book: content type \"application/xml\" is not \"application/json\"",
    ] {
        assert!(reasons.iter().any(|r| r.starts_with(expected)), "no {expected:?} in {reasons:#?}");
    }
    assert_eq!(status(&runtime, 4).await, Some(SagaStatus::Completed));
}

#[tokio::test]
async fn a_failing_compensation_is_retried_per_policy_then_parks_only_its_instance_as_failed() {
    let script = Script::default();
    script.answer(Charge::NAME, 7, Answer::Refuse).answer(CancelFlight::NAME, 7, Answer::Refuse);
    let clock = ManualClock::default();
    let runtime = memory_runtime(&script, &clock).build().await.unwrap();

    runtime.publish(&BookTrip { trip: 7 }).await.unwrap();
    runtime.publish(&BookTrip { trip: 8 }).await.unwrap();
    runtime.settle().await;
    advance(&runtime, &clock, Duration::from_secs(1), 5).await;

    let failed = runtime.saga::<Trip>("7").await.unwrap().unwrap();
    let SagaStatus::Failed { reason } = failed.status() else {
        panic!("trip 7 should be parked, is {:?}", failed.status());
    };
    assert_eq!(reason, "compensation of step book_flight failed after 3 attempts: flight.cancel-refused received");
    assert_eq!(effects(&*runtime.store(), CancelFlight::NAME, 7).await, 3);
    assert_eq!(runtime.instances(StatusKind::Failed, usize::MAX).await.unwrap(), vec![failed.id()]);
    assert_eq!(status(&runtime, 8).await, Some(SagaStatus::Completed));
}
