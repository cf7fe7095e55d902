//! Bad input gets a clear reason (dead-lettered where it came from the bus) and nothing
//! already accepted is lost.

mod common;

use common::*;
use sagaflow::bus::InMemoryBus;
use sagaflow::message::{Envelope, JsonCodec, Message};
use sagaflow::prelude::*;

async fn trips(bus: &InMemoryBus) -> SagaRuntime {
    trip_runtime(&Script::default())
        .store(MemoryStore::new())
        .bus(bus.clone())
        .max_message_bytes(1024)
        .build()
        .await
        .unwrap()
}

fn reasons(bus: &InMemoryBus) -> Vec<String> {
    bus.dead_letters().into_iter().map(|d| d.reason).collect()
}

#[tokio::test]
async fn an_oversized_message_is_dead_lettered_before_decoding() {
    let bus = InMemoryBus::new();
    let runtime = trips(&bus).await;
    let huge = format!("{{\"trip\":1,\"padding\":\"{}\"}}", "x".repeat(4096));
    bus.inject("saga.trip", Envelope::new(BookTrip::NAME, huge.into_bytes())).unwrap();
    runtime.publish(&BookTrip { trip: 2 }).await.unwrap();
    runtime.settle().await;

    assert_eq!(reasons(&bus), ["payload of 4119 bytes exceeds the limit of 1024 bytes"]);
    assert_eq!(status(&runtime, 1).await, None);
    assert_eq!(status(&runtime, 2).await, Some(SagaStatus::Completed));
}

#[tokio::test]
async fn messages_that_cannot_find_their_saga_are_dead_lettered() {
    let bus = InMemoryBus::new();
    let runtime = trips(&bus).await;
    // A reply must carry the instance id; an event needs a correlation key.
    bus.inject("saga.trip", Envelope::encode(&JsonCodec, &FlightBooked { trip: 1 }).unwrap()).unwrap();
    bus.inject("saga.trip", Envelope::new(BookTrip::NAME, b"null".to_vec())).unwrap();
    runtime.settle().await;

    let reasons = reasons(&bus);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.contains(&"reply flight.booked carries no correlation id: it cannot find its saga".to_owned()));
    assert!(reasons.iter().any(|r| r.starts_with("undecodable trip.book")), "{reasons:?}");
}

#[tokio::test]
async fn a_message_for_a_finished_saga_changes_nothing() {
    let bus = InMemoryBus::new();
    let runtime = trips(&bus).await;
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let done = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!(done.status(), &SagaStatus::Completed);

    runtime.publish(&TripCancelled { trip: 1 }).await.unwrap();
    let mut late = Envelope::encode(&JsonCodec, &HotelBooked { trip: 1 }).unwrap();
    late.correlation_id = Some(done.id());
    bus.inject("saga.trip", late).unwrap();
    runtime.settle().await;

    let after = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!((after.status(), after.version()), (&SagaStatus::Completed, done.version()));
    assert!(bus.dead_letters().is_empty(), "late messages are acknowledged, not parked");
}
