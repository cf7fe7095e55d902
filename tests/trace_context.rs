//! W3C trace context without OpenTelemetry: a service that does not trace passes the context
//! of what it consumed on to what it produces, so it does not break the trace of the services
//! around it that do. (With OpenTelemetry: tests/tracing.rs.)

mod common;

use std::time::Duration;

use common::*;
use sagaflow::bus::Bus;
use sagaflow::message::{Envelope, JsonCodec, Message, headers};
use sagaflow::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_and_replies_of_a_saga_carry_the_trace_context_of_the_message_that_started_it() {
    let bus = InMemoryBus::new();
    let mut watcher = bus.subscribe("watcher", &[BookFlight::NAME, FlightBooked::NAME, Charge::NAME]).await.unwrap();
    let script = Script::default();
    let runtime = trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let start = Envelope::encode(&JsonCodec, &BookTrip { trip: 1 })
        .unwrap()
        .with_header(headers::TRACEPARENT, parent)
        .with_header(headers::TRACESTATE, "congo=t61rcWkgMzE");
    bus.publish(start).await.unwrap();
    runtime
        .wait_until_terminal(&[sagaflow::saga::instance_id(Trip::NAME, "1")], Duration::from_secs(30))
        .await
        .unwrap();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap();
        let envelope = delivery.envelope();
        assert_eq!(envelope.header(headers::TRACEPARENT), Some(parent), "{}", envelope.name);
        assert_eq!(envelope.header(headers::TRACESTATE), Some("congo=t61rcWkgMzE"), "{}", envelope.name);
        delivery.ack().await.unwrap();
    }
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_started_without_trace_context_sends_none() {
    let bus = InMemoryBus::new();
    let mut watcher = bus.subscribe("watcher", &[BookFlight::NAME]).await.unwrap();
    let script = Script::default();
    let runtime = trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 2 }).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap();
    assert_eq!(delivery.envelope().header(headers::TRACEPARENT), None);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_not_passed_on() {
    let bus = InMemoryBus::new();
    let mut watcher = bus.subscribe("watcher", &[BookFlight::NAME]).await.unwrap();
    let script = Script::default();
    let runtime = trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    let start = Envelope::encode(&JsonCodec, &BookTrip { trip: 3 })
        .unwrap()
        .with_header(headers::TRACEPARENT, "zz")
        .with_header(headers::TRACESTATE, "congo=t61rcWkgMzE");
    bus.publish(start).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap();
    assert_eq!(delivery.envelope().header(headers::TRACEPARENT), None);
    assert_eq!(delivery.envelope().header(headers::TRACESTATE), None);
    runtime.shutdown().await.unwrap();
}

/// A trip checked by a local step before its flight is booked.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CheckedTrip {
    trip: u32,
}

impl Saga for CheckedTrip {
    const NAME: &'static str = "checked-trip";

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(|m: &BookTrip| CheckedTrip { trip: m.trip })
            .step(Step::local("check", |trip: CheckedTrip, _| async move { Ok(trip) }))
            .step(
                Step::send("book_flight", |t: &CheckedTrip| BookFlight { trip: t.trip })
                    .on_success(|_: &mut CheckedTrip, _: &FlightBooked| {})
                    .on_failure(|_: &mut CheckedTrip, _: &FlightRefused| {}),
            )
    }
}

/// Refuses, once, the commit that sends the flight booking (the local step's), as a full disk
/// would: the runtime then commits the same writes again.
#[derive(Default)]
struct FailsTheBookingOnce(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl sagaflow::store::CommitHook for FailsTheBookingOnce {
    async fn commit(
        &self,
        store: &dyn sagaflow::store::Store,
        commit: sagaflow::store::Commit,
    ) -> Result<sagaflow::store::Committed, sagaflow::store::StoreError> {
        let booking = commit.outbox.iter().any(|e| e.name == BookFlight::NAME);
        if booking && !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(sagaflow::store::StoreError::Io("No space left on device (simulated)".into()));
        }
        store.commit(commit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_steps_commit_retried_after_a_store_failure_keeps_the_trace_context() {
    let bus = InMemoryBus::new();
    let mut watcher = bus.subscribe("watcher", &[BookFlight::NAME]).await.unwrap();
    let store = sagaflow::store::Intercepted::new(MemoryStore::new(), FailsTheBookingOnce::default());
    let runtime = SagaRuntime::builder()
        .saga::<CheckedTrip>()
        .handler(scripted::<BookFlight>(&Script::default()))
        .store(store)
        .bus(bus.clone())
        .build()
        .await
        .unwrap();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let start = Envelope::encode(&JsonCodec, &BookTrip { trip: 4 }).unwrap().with_header(headers::TRACEPARENT, parent);
    bus.publish(start).await.unwrap();
    runtime
        .wait_until_terminal(&[sagaflow::saga::instance_id(CheckedTrip::NAME, "4")], Duration::from_secs(30))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap();
    assert_eq!(delivery.envelope().header(headers::TRACEPARENT), Some(parent));
    runtime.shutdown().await.unwrap();
}
