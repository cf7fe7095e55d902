//! Which runtimes may consume what: one runtime per subscription while its store belongs to one
//! process, commands that reach a consumer, and one shared subscription for a whole service.
//! The broker sections run when `SAGA_TEST_AMQP_URL` / `SAGA_TEST_NATS_URL` are set.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sagaflow::bus::Bus;
use sagaflow::message::Message;
use sagaflow::prelude::*;

fn refused_for_sharing(built: Result<SagaRuntime, Error>) -> String {
    match built {
        Err(Error::Config(reason)) if reason.contains("belongs to this process alone") => reason,
        other => panic!("expected a refusal to share the subscription, got {other:?}"),
    }
}

/// Used by the broker tests only.
#[cfg_attr(not(any(feature = "rabbitmq", feature = "nats")), allow(dead_code))]
async fn completes(runtime: &SagaRuntime, trip: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while status(runtime, trip).await != Some(SagaStatus::Completed) {
        assert!(Instant::now() < deadline, "trip {trip} is {:?} after {within:?}", status(runtime, trip).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_second_runtime_with_a_store_of_its_own_is_refused_its_subscriptions() {
    let bus = InMemoryBus::new();
    let script = Script::default();
    let first = trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    let reason = refused_for_sharing(trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone()).build().await);
    assert!(reason.contains("saga.trip"), "the refusal names the subscription: {reason}");
    first.publish(&BookTrip { trip: 1 }).await.unwrap();
    first.settle().await;
    assert_eq!(status(&first, 1).await, Some(SagaStatus::Completed), "the first runtime works on");
}

#[tokio::test]
async fn a_second_runtime_on_the_same_process_owned_store_is_refused_too() {
    let bus = InMemoryBus::new();
    let store = std::sync::Arc::new(MemoryStore::new());
    let script = Script::default();
    let _first = trip_runtime(&script).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    refused_for_sharing(trip_runtime(&script).store(store).bus(bus).build().await);
}

#[tokio::test]
async fn a_runtime_started_after_the_first_stopped_gets_its_subscriptions() {
    let bus = InMemoryBus::new();
    let store = std::sync::Arc::new(MemoryStore::new());
    let script = Script::default();
    let first = trip_runtime(&script).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    first.kill().await;
    let second = trip_runtime(&script).store(store).bus(bus).build().await.unwrap();
    second.publish(&BookTrip { trip: 2 }).await.unwrap();
    second.settle().await;
    assert_eq!(status(&second, 2).await, Some(SagaStatus::Completed));
}

#[tokio::test]
async fn a_saga_command_nothing_consumes_is_refused_at_build_on_the_in_memory_bus() {
    // The saga without its participants: its commands would vanish on the in-memory bus.
    let built = SagaRuntime::builder().saga::<Trip>().store(MemoryStore::new()).build().await;
    let Err(Error::Config(reason)) = built else { panic!("expected a configuration error, got {built:?}") };
    assert!(reason.contains("hotel.book (step book_hotel of saga trip)"), "{reason}");
}

#[tokio::test]
async fn a_command_subscribed_to_before_build_counts_as_consumed() {
    let bus = InMemoryBus::new();
    let _elsewhere = bus
        .subscribe("by-hand", &[BookFlight::NAME, CancelFlight::NAME, BookHotel::NAME, CancelHotel::NAME, Charge::NAME])
        .await
        .unwrap();
    SagaRuntime::builder().saga::<Trip>().store(MemoryStore::new()).bus(bus).build().await.unwrap();
}

#[tokio::test]
async fn one_shared_subscription_dispatches_each_message_to_its_saga_or_handler() {
    let bus = InMemoryBus::new();
    let runtime = trip_runtime(&Script::default())
        .store(MemoryStore::new())
        .bus(bus.clone())
        .subscription("Travel")
        .build()
        .await;
    let runtime = runtime.unwrap();
    runtime.publish(&BookTrip { trip: 3 }).await.unwrap();
    runtime.settle().await;
    assert_eq!(status(&runtime, 3).await, Some(SagaStatus::Completed));
    // Every name goes to the one queue: a consumer of "Travel" elsewhere is refused.
    assert!(bus.subscribe("Travel", &[BookTrip::NAME]).await.is_err());
}

#[tokio::test]
async fn two_consumers_of_one_name_on_a_shared_subscription_are_refused() {
    let built = SagaRuntime::builder()
        .saga::<Trip>()
        .handler(Noter("a"))
        .store(MemoryStore::new())
        .subscription("Travel")
        .build()
        .await;
    let Err(Error::Config(reason)) = built else { panic!("expected a configuration error, got {built:?}") };
    assert!(reason.contains("both consume trip.note"), "{reason}");
}

/// A participant of its own for trip notes (which the trip saga consumes too).
struct Noter(&'static str);

#[async_trait::async_trait]
impl Handler for Noter {
    type Input = TripNote;
    fn name(&self) -> &str {
        self.0
    }
    async fn handle(&self, _: TripNote, _: &mut HandlerContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The broker halves: the same two guarantees on RabbitMQ and on NATS.
macro_rules! on_a_broker {
    ($module:ident, $feature:literal, $connect:path) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_second_runtime_with_its_own_sled_store_is_refused_its_subscriptions() {
                let Some(bus) = $connect().await else { return };
                let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
                let script = Script::default();
                let first =
                    trip_runtime(&script).store(SledStore::open(a.path()).unwrap()).bus(bus.clone()).build().await;
                let first = first.unwrap();
                let second = trip_runtime(&script).store(SledStore::open(b.path()).unwrap()).bus(bus).build().await;
                refused_for_sharing(second);
                first.publish(&BookTrip { trip: 1 }).await.unwrap();
                completes(&first, 1, Duration::from_secs(20)).await;
                first.kill().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_command_sent_before_its_consumer_subscribed_arrives_once_it_has() {
                let Some(bus) = $connect().await else { return };
                let script = Script::default();
                // The saga's service starts first; its participants' service later.
                let saga = SagaRuntime::builder().saga::<Trip>().store(MemoryStore::new()).bus(bus.clone());
                let saga = saga.build().await.unwrap();
                saga.publish(&BookTrip { trip: 1 }).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
                assert_eq!(status(&saga, 1).await, Some(SagaStatus::Running { step: 0 }));
                let services = trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone());
                let services = services.subscription("trip-services").build().await;
                let services = services.expect("the participants' runtime on a store of its own");
                completes(&saga, 1, Duration::from_secs(30)).await;
                assert!(saga.parked_outbox(10).await.unwrap().is_empty());
                saga.kill().await;
                services.kill().await;
            }
        }
    };
}

#[cfg(feature = "rabbitmq")]
async fn rabbitmq() -> Option<sagaflow::bus::RabbitMqBus> {
    use sagaflow::bus::{RabbitMqBus, RabbitMqOptions};
    let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else {
        sagaflow::bus::conformance::say_skipped("topology on RabbitMQ", "SAGA_TEST_AMQP_URL");
        return None;
    };
    let namespace = format!("topology-{}", uuid::Uuid::now_v7().simple());
    Some(RabbitMqBus::connect(RabbitMqOptions::new(url).namespace(namespace)).await.expect("RabbitMQ is reachable"))
}

#[cfg(feature = "nats")]
async fn nats() -> Option<sagaflow::bus::NatsBus> {
    use sagaflow::bus::{NatsBus, NatsOptions};
    let Ok(url) = std::env::var("SAGA_TEST_NATS_URL") else {
        sagaflow::bus::conformance::say_skipped("topology on NATS", "SAGA_TEST_NATS_URL");
        return None;
    };
    // The random tail: a v7 id's leading digits are the millisecond, which two tests started
    // together share.
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let options = NatsOptions::new(url)
        .prefix(format!("topology{id}"))
        .stream(format!("TOPOLOGY_{id}"))
        .dead_letter_stream(format!("TOPOLOGY_DEAD_{id}"))
        .inactive_threshold(Duration::from_secs(120))
        .max_age(Duration::from_secs(600));
    Some(NatsBus::connect(options).await.expect("NATS is reachable"))
}

on_a_broker!(on_rabbitmq, "rabbitmq", rabbitmq);
on_a_broker!(on_nats, "nats", nats);
