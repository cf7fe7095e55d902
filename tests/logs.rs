//! Log lines an operator can act on: every warning and error about a unit of work names the
//! consumer (saga or handler), its subscription, the message's name and id, and the instance.

mod common;

use common::*;
use sagaflow::bus::InMemoryBus;
use sagaflow::message::{Envelope, Message};
use sagaflow::prelude::*;

/// The flight service, failing transiently every time.
struct Overbooked;

#[async_trait::async_trait]
impl Handler for Overbooked {
    type Input = BookFlight;
    fn name(&self) -> &str {
        "flights"
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(2, std::time::Duration::from_millis(1)).without_jitter()
    }
    async fn handle(&self, _: BookFlight, _: &mut HandlerContext) -> Result<(), HandlerError> {
        Err(HandlerError::transient("the booking system timed out"))
    }
}

#[tokio::test]
async fn a_failing_unit_is_logged_with_its_consumer_subscription_message_and_instance() {
    let captured = Captured::default();
    let _guard = captured.start(tracing::Level::WARN);
    let bus = InMemoryBus::new();
    let script = Script::default();
    let runtime = SagaRuntime::builder()
        .saga::<Trip>()
        .handler(Overbooked)
        .handler(scripted::<CancelFlight>(&script))
        .handler(scripted::<BookHotel>(&script))
        .handler(scripted::<CancelHotel>(&script))
        .handler(scripted::<Charge>(&script))
        .store(MemoryStore::new())
        .bus(bus.clone())
        .build()
        .await;
    let runtime = runtime.unwrap_or_else(|e| panic!("{e}"));
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let instance = runtime.saga::<Trip>("1").await.unwrap().unwrap().id();
    let command = bus.all_dead_letters().pop().expect("the command was dead-lettered").envelope;

    for what in ["unit of work failed, will retry", "unit of work failed for the last time"] {
        let lines = captured.lines(what);
        assert!(!lines.is_empty(), "no line says {what:?}");
        for line in lines {
            for field in [
                "consumer=flights".to_owned(),
                "subscription=flights".to_owned(),
                format!("message_name={}", BookFlight::NAME),
                format!("message_id={}", command.message_id),
                format!("correlation_id={instance}"),
                "the booking system timed out".to_owned(),
            ] {
                assert!(line.contains(&field), "{field} missing from: {line}");
            }
        }
    }
}

#[tokio::test]
async fn a_message_dead_lettered_at_routing_is_logged_with_its_consumer_and_subscription() {
    let captured = Captured::default();
    let _guard = captured.start(tracing::Level::WARN);
    let bus = InMemoryBus::new();
    let runtime = trip_runtime(&Script::default()).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    let garbage = Envelope::new(BookTrip::NAME, b"not json".to_vec());
    let id = garbage.message_id;
    bus.inject("saga.trip", garbage).unwrap();
    runtime.settle().await;
    let lines = captured.lines("dead-lettering a message that cannot be handled");
    assert_eq!(lines.len(), 1, "{lines:?}");
    for field in ["consumer=trip", "subscription=saga.trip", "message_name=trip.book", &format!("message_id={id}")] {
        assert!(lines[0].contains(field), "{field} missing from: {}", lines[0]);
    }
}
