//! One trace per saga across services: W3C trace context on every envelope, continued by the
//! unit that consumes it, with the spans an OpenTelemetry exporter receives (collected in
//! memory here). The brokers' and the PostgreSQL bus's variants run when `SAGA_TEST_AMQP_URL`,
//! `SAGA_TEST_NATS_URL` or `SAGA_TEST_POSTGRES_URL` is set.
#![cfg(feature = "otel")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sagaflow::bus::{Bus, BusError};
use sagaflow::message::{Envelope, JsonCodec, Message, headers};
use sagaflow::prelude::*;
use sagaflow::store::Store as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Every span of this test binary, exported as it ends. One subscriber for the whole binary:
/// the runtimes' tasks run on the tokio workers, which a thread-local default would miss.
fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("sagaflow-test"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();
        exporter
    })
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// The finished spans of `trace`, by id.
fn trace_spans(trace: TraceId) -> HashMap<SpanId, SpanData> {
    let all = spans().get_finished_spans().unwrap();
    all.into_iter().filter(|s| s.span_context.trace_id() == trace).map(|s| (s.span_context.span_id(), s)).collect()
}

/// The trace id of the producer span of message `id`.
async fn trace_of_message(id: uuid::Uuid) -> TraceId {
    let mut found = None;
    until("the message's producer span", async || {
        found = spans()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|s| s.span_kind == SpanKind::Producer && attribute(s, "messaging.message.id") == Some(id.to_string()))
            .map(|s| s.span_context.trace_id());
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// The names from the span named `leaf` up to the root of `trace`, following parent links;
/// waits until that span has ended.
async fn path_to_root(trace: TraceId, leaf: &str) -> Vec<String> {
    until(&format!("span {leaf:?} in the saga's trace"), async || trace_spans(trace).values().any(|s| s.name == leaf))
        .await;
    let spans = trace_spans(trace);
    let mut span = spans.values().find(|s| s.name == leaf);
    let mut path = Vec::new();
    while let Some(s) = span {
        path.push(s.name.to_string());
        span = spans.get(&s.parent_span_id);
    }
    path
}

/// Start → command → participant handler → reply → next step, to the last reply.
const TRIP_PATH: [&str; 14] = [
    "process payment.charged",
    "create payment.charged",
    "process payment.charge",
    "create payment.charge",
    "process hotel.booked",
    "create hotel.booked",
    "process hotel.book",
    "create hotel.book",
    "process flight.booked",
    "create flight.booked",
    "process flight.book",
    "create flight.book",
    "process trip.book",
    "send trip.book",
];

/// A trip through a saga runtime and a participants' runtime on their own buses (two
/// connections to one broker): one trace from the start to the last reply.
async fn one_trace_across_two_runtimes(saga_bus: impl Bus, participants_bus: impl Bus, trip: u32) {
    one_trace_across_two_runtimes_on((MemoryStore::new(), saga_bus), (MemoryStore::new(), participants_bus), trip)
        .await;
}

/// As [`one_trace_across_two_runtimes`], each runtime on a store of its own choosing.
async fn one_trace_across_two_runtimes_on(
    (saga_store, saga_bus): (impl sagaflow::store::Store, impl Bus),
    (participants_store, participants_bus): (impl sagaflow::store::Store, impl Bus),
    trip: u32,
) {
    spans();
    let script = Script::default();
    let participants = SagaRuntime::builder()
        .handler(scripted::<BookFlight>(&script))
        .handler(scripted::<BookHotel>(&script))
        .handler(scripted::<Charge>(&script))
        .handler(scripted::<CancelFlight>(&script))
        .handler(scripted::<CancelHotel>(&script))
        .store(participants_store)
        .bus(participants_bus)
        .build()
        .await
        .unwrap();
    let saga = SagaRuntime::builder().saga::<Trip>().store(saga_store).bus(saga_bus).build().await.unwrap();
    let id = saga.publish(&BookTrip { trip }).await.unwrap();
    saga.wait_until_terminal(&[sagaflow::saga::instance_id(Trip::NAME, &trip.to_string())], Duration::from_secs(60))
        .await
        .unwrap();
    let trace = trace_of_message(id).await;
    assert_eq!(path_to_root(trace, "process payment.charged").await, TRIP_PATH);

    let spans = trace_spans(trace);
    let handler = spans.values().find(|s| s.name == "process hotel.book").unwrap();
    assert_eq!(handler.span_kind, SpanKind::Consumer);
    assert_eq!(attribute(handler, "messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(attribute(handler, "participant").as_deref(), Some("hotel.book"));
    let step = spans.values().find(|s| s.name == "process hotel.booked").unwrap();
    assert_eq!(attribute(step, "saga").as_deref(), Some(Trip::NAME));
    let instance = sagaflow::saga::instance_id(Trip::NAME, &trip.to_string()).to_string();
    assert_eq!(attribute(step, "messaging.message.conversation_id"), Some(instance));
    let command = spans.values().find(|s| s.name == "create hotel.book").unwrap();
    assert_eq!(command.span_kind, SpanKind::Producer);
    saga.shutdown().await.unwrap();
    participants.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_and_its_participants_in_two_runtimes_make_one_trace() {
    let bus = InMemoryBus::new();
    one_trace_across_two_runtimes(bus.clone(), bus, 1).await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_across_rabbitmq_makes_one_trace() {
    use sagaflow::bus::{RabbitMqBus, RabbitMqOptions};
    let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else {
        return sagaflow::bus::conformance::say_skipped("tracing across RabbitMQ", "SAGA_TEST_AMQP_URL");
    };
    let options = RabbitMqOptions::new(url).namespace(format!("trace-{}", uuid::Uuid::now_v7().simple()));
    let (a, b) = (RabbitMqBus::connect(options.clone()).await.unwrap(), RabbitMqBus::connect(options).await.unwrap());
    one_trace_across_two_runtimes(a, b, 2).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_across_nats_makes_one_trace() {
    use sagaflow::bus::{NatsBus, NatsOptions};
    let Ok(url) = std::env::var("SAGA_TEST_NATS_URL") else {
        return sagaflow::bus::conformance::say_skipped("tracing across NATS", "SAGA_TEST_NATS_URL");
    };
    let run = uuid::Uuid::now_v7().simple().to_string();
    let options = NatsOptions::new(url)
        .prefix(format!("trace{run}"))
        .stream(format!("TRACE_{run}"))
        .dead_letter_stream(format!("TRACE_DEAD_{run}"))
        .max_age(Duration::from_secs(600));
    let (a, b) = (NatsBus::connect(options.clone()).await.unwrap(), NatsBus::connect(options).await.unwrap());
    one_trace_across_two_runtimes(a, b, 3).await;
}

/// The PostgreSQL bus: both runtimes on one database, each with a connection pool of its own.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_across_the_postgresql_bus_makes_one_trace() {
    use sagaflow::bus::PostgresBus;
    use sagaflow::store::{PostgresStore, PostgresTarget};
    let Some(target) = PostgresTarget::from_env() else {
        return sagaflow::bus::conformance::say_skipped("tracing across the PostgreSQL bus", "SAGA_TEST_POSTGRES_URL");
    };
    let database = target.fresh_database().await;
    let saga_store = PostgresStore::connect_options(database.clone(), 4).await.unwrap();
    let participants_store = PostgresStore::connect_options(database, 4).await.unwrap();
    let (saga_bus, participants_bus) = (PostgresBus::new(&saga_store), PostgresBus::new(&participants_store));
    one_trace_across_two_runtimes_on((saga_store, saga_bus), (participants_store, participants_bus), 9).await;
}

fn refuse_flight_booking(e: &Envelope) -> Option<BusError> {
    (e.name == BookFlight::NAME).then(|| BusError::Transport("the broker is down".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_relayed_after_a_restart_continues_the_trace_of_the_unit_that_sent_it() {
    spans();
    let store = Arc::new(MemoryStore::new());
    let script = Script::default();
    let down = Refusing { inner: InMemoryBus::new(), refuse: refuse_flight_booking };
    let first = trip_runtime(&script).store(store.clone()).bus(down.clone()).build().await.unwrap();
    let id = first.publish(&BookTrip { trip: 4 }).await.unwrap();
    until("the booking to wait in the outbox", async || !store.outbox(None, 10).await.unwrap().is_empty()).await;
    first.kill().await;
    let waiting = store.outbox(None, 10).await.unwrap();
    let carried = waiting[0].envelope.header(headers::TRACEPARENT).expect("the stored command carries its trace");

    let second = trip_runtime(&script).store(store.clone()).bus(down.inner.clone()).build().await.unwrap();
    second.wait_until_terminal(&[sagaflow::saga::instance_id(Trip::NAME, "4")], Duration::from_secs(30)).await.unwrap();
    let trace = trace_of_message(id).await;
    assert!(carried.contains(&trace.to_string()), "{carried} is not in trace {trace}");
    assert_eq!(path_to_root(trace, "process payment.charged").await, TRIP_PATH);
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_traced_producer_is_handled_in_its_trace_and_what_the_handler_publishes_stays_in_it() {
    spans();
    let bus = InMemoryBus::new();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let incoming = Envelope::encode(&JsonCodec, &BookTrip { trip: 5 })
        .unwrap()
        .with_header(headers::TRACEPARENT, parent)
        .with_header(headers::TRACESTATE, "vendor=opaque");
    let script = Script::default();
    let runtime = trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    bus.publish(incoming).await.unwrap();
    runtime
        .wait_until_terminal(&[sagaflow::saga::instance_id(Trip::NAME, "5")], Duration::from_secs(30))
        .await
        .unwrap();
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let mut path = path_to_root(trace, "process payment.charged").await;
    assert_eq!(path.pop().as_deref(), Some("process trip.book"), "the start continues the producer's span");
    let start = trace_spans(trace).into_values().find(|s| s.name == "process trip.book").unwrap();
    assert_eq!(start.parent_span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
    assert!(start.parent_span_is_remote);
    runtime.shutdown().await.unwrap();
}

/// A step's timeout is a durable timer, fired by the store's scan; the unit it runs and the
/// compensation it starts stay in the trace of the unit that scheduled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_fired_from_the_store_continues_the_instances_trace() {
    spans();
    let script = Script::default();
    script.answer(BookHotel::NAME, 8, Answer::Ignore);
    let clock = sagaflow::clock::ManualClock::default();
    let runtime = trip_runtime(&script).store(MemoryStore::new()).clock(clock.clone()).build().await.unwrap();
    let id = runtime.publish(&BookTrip { trip: 8 }).await.unwrap();
    runtime.settle().await;
    advance(&runtime, &clock, Duration::from_secs(31), 1).await;
    let instance = sagaflow::saga::instance_id(Trip::NAME, "8");
    runtime.wait_until_terminal(&[instance], Duration::from_secs(30)).await.unwrap();
    let trace = trace_of_message(id).await;
    let path = path_to_root(trace, "process flight.cancelled").await;
    let timeout = path.iter().position(|s| s == "timer:timeout").unwrap_or_else(|| panic!("no timeout in {path:?}"));
    assert_eq!(path[timeout + 1], "process flight.booked", "the unit that sent the hotel booking scheduled it");
    assert_eq!(path.last().map(String::as_str), Some("send trip.book"));
    runtime.shutdown().await.unwrap();
}

/// An input whose `traceparent` is not W3C is handled as any other, in a trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_costs_the_message_nothing() {
    spans();
    let bus = InMemoryBus::new();
    let script = Script::default();
    let runtime = trip_runtime(&script).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    let incoming = Envelope::encode(&JsonCodec, &BookTrip { trip: 6 }).unwrap().with_header(headers::TRACEPARENT, "zz");
    bus.publish(incoming).await.unwrap();
    runtime
        .wait_until_terminal(&[sagaflow::saga::instance_id(Trip::NAME, "6")], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status(&runtime, 6).await, Some(SagaStatus::Completed));
    runtime.shutdown().await.unwrap();
}

/// An eShop service (a foreign client, Python's pika, writing `traceparent` as eShop's
/// OpenTelemetry propagator does) publishes an event; a Rust handler takes it in that trace,
/// and the event it publishes in turn stays in it.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eshop_event_is_handled_in_its_trace_and_the_events_its_handler_publishes_carry_that_trace() {
    use sagaflow::bus::{EventBus, EventHandler, RabbitMqBus, RabbitMqOptions};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, Message)]
    #[serde(rename_all = "PascalCase")]
    struct OrderStatusChangedToPaidIntegrationEvent {
        order_id: u32,
    }
    #[derive(Debug, Clone, Serialize, Deserialize, Message)]
    #[serde(rename_all = "PascalCase")]
    struct OrderStatusChangedToShippedIntegrationEvent {
        order_id: u32,
    }
    struct Ship(EventBus);
    #[async_trait::async_trait]
    impl EventHandler<OrderStatusChangedToPaidIntegrationEvent> for Ship {
        async fn handle(&self, paid: OrderStatusChangedToPaidIntegrationEvent) -> Result<(), HandlerError> {
            let shipped = OrderStatusChangedToShippedIntegrationEvent { order_id: paid.order_id };
            self.0.publish(&shipped).await.map_err(HandlerError::transient)
        }
    }

    spans();
    let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else {
        return sagaflow::bus::conformance::say_skipped("eShop trace context", "SAGA_TEST_AMQP_URL");
    };
    if !std::process::Command::new("python3").args(["-c", "import pika"]).status().is_ok_and(|s| s.success()) {
        return sagaflow::bus::conformance::say_skipped("eShop trace context", "pika: python3 -m pip install pika");
    }
    let bus = RabbitMqBus::connect(RabbitMqOptions::eshop(url.clone())).await.unwrap();
    let run = uuid::Uuid::now_v7().simple();
    let (ordering, webhooks) = (format!("Rust.Ordering.{run}"), format!("Rust.Webhooks.{run}"));
    let mut shipped = bus.subscribe(&webhooks, &[OrderStatusChangedToShippedIntegrationEvent::NAME]).await.unwrap();
    let events = EventBus::new(bus.clone());
    let handle = events.subscribe(&ordering, Ship(events.clone())).await.unwrap();

    let traceparent = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01";
    let body =
        serde_json::json!({"Id": uuid::Uuid::now_v7(), "CreationDate": "2026-12-07T10:00:00.0000000Z", "OrderId": 7});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/eshop_pika.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            "publish-json",
            &url,
            OrderStatusChangedToPaidIntegrationEvent::NAME,
            &body.to_string(),
            traceparent,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let delivery = tokio::time::timeout(Duration::from_secs(10), shipped.next()).await.unwrap().unwrap();
    let carried = delivery.envelope().header(headers::TRACEPARENT).unwrap().to_owned();
    delivery.ack().await.unwrap();
    assert!(carried.starts_with("00-5b8efff798038103d269b633813fc60c-"), "{carried}");
    let trace = TraceId::from_hex("5b8efff798038103d269b633813fc60c").unwrap();
    let handled = format!("process {}", OrderStatusChangedToPaidIntegrationEvent::NAME);
    let mut path = path_to_root(trace, &format!("send {}", OrderStatusChangedToShippedIntegrationEvent::NAME)).await;
    assert_eq!(path.pop(), Some(handled.clone()), "the handler's publish is a child of the handler's span");
    let handler = trace_spans(trace).into_values().find(|s| s.name == handled).unwrap();
    assert_eq!(handler.parent_span_id, SpanId::from_hex("eee19b7ec3c1b174").unwrap(), "eShop's span is the parent");
    drop(handle);
    bus.unsubscribe(&ordering).await.unwrap();
    bus.unsubscribe(&webhooks).await.unwrap();
}
