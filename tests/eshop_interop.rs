//! eShopOnContainers wire compatibility, both ways, with a foreign client (Python's pika).
//! Runs when `SAGA_TEST_AMQP_URL` is set and `python3 -c "import pika"` works.
#![cfg(feature = "rabbitmq")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use sagaflow::bus::{Bus, RabbitMqBus, RabbitMqOptions};
use sagaflow::message::{Envelope, JsonCodec, Message};
use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OrderStockItem {
    product_id: u32,
    units: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[serde(rename_all = "PascalCase")]
struct OrderStatusChangedToPaidIntegrationEvent {
    order_id: u32,
    order_status: String,
    buyer_name: String,
    order_stock_items: Vec<OrderStockItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[serde(rename_all = "PascalCase")]
struct OrderStatusChangedToShippedIntegrationEvent {
    order_id: u32,
    order_status: String,
    buyer_name: String,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/eshop_pika.py");

fn setup() -> Option<String> {
    let say = sagaflow::bus::conformance::say_skipped;
    let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else {
        say("eShop interop test", "SAGA_TEST_AMQP_URL");
        return None;
    };
    let pika = Command::new("python3").args(["-c", "import pika"]).status();
    if !pika.is_ok_and(|s| s.success()) {
        say("eShop interop test", "up pika: python3 -m pip install pika");
        return None;
    }
    Some(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_handler_receives_what_an_eshop_service_publishes() {
    let Some(url) = setup() else { return };
    let bus = RabbitMqBus::connect(RabbitMqOptions::eshop(url.clone())).await.unwrap();
    let queue = format!("Rust.Ordering.{}", uuid::Uuid::now_v7().simple());
    let mut consumer = bus.subscribe(&queue, &[OrderStatusChangedToPaidIntegrationEvent::NAME]).await.unwrap();

    let out = Command::new("python3").args([SCRIPT, "publish", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.unwrap().unwrap();

    let envelope = delivery.envelope().clone();
    assert_eq!(envelope.message_id.to_string(), sent["Id"].as_str().unwrap(), "eShop's Id is the message id");
    assert!(envelope.created_at.0 > 1_700_000_000_000, "CreationDate was read: {:?}", envelope.created_at);
    let event: OrderStatusChangedToPaidIntegrationEvent = envelope.decode(&JsonCodec).unwrap();
    assert_eq!((event.order_id, event.buyer_name.as_str()), (4711, "alice"));
    assert_eq!(event.order_stock_items, [OrderStockItem { product_id: 7, units: 2 }]);
    delivery.ack().await.unwrap();
    bus.unsubscribe(&queue).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eshop_service_receives_what_rust_publishes() {
    let Some(url) = setup() else { return };
    let queue = format!("Python.Webhooks.{}", uuid::Uuid::now_v7().simple());
    let mut consumer =
        Command::new("python3").args([SCRIPT, "consume", &url, &queue]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(consumer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let bus = RabbitMqBus::connect(RabbitMqOptions::eshop(url)).await.unwrap();
    let event = OrderStatusChangedToShippedIntegrationEvent {
        order_id: 4711,
        order_status: "shipped".into(),
        buyer_name: "alice".into(),
    };
    let envelope = Envelope::encode(&JsonCodec, &event).unwrap();
    let id = envelope.message_id;
    bus.publish(envelope).await.unwrap();

    let body: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(consumer.wait().unwrap().success());
    assert_eq!(body["OrderId"], 4711);
    assert_eq!(body["BuyerName"], "alice");
    assert_eq!(body["Id"], id.to_string());
    assert!(body["CreationDate"].as_str().is_some_and(|d| d.ends_with('Z')), "{body}");
}

/// Starts the pika consumer of `OrderStatusChangedToShippedIntegrationEvent` on a fresh queue;
/// returns it and its output, once it is ready.
fn eshop_consumer(url: &str) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let queue = format!("Python.Webhooks.{}", uuid::Uuid::now_v7().simple());
    let mut consumer =
        Command::new("python3").args([SCRIPT, "consume", url, &queue]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(consumer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    (consumer, lines)
}

fn shipped() -> OrderStatusChangedToShippedIntegrationEvent {
    OrderStatusChangedToShippedIntegrationEvent {
        order_id: 4711,
        order_status: "shipped".into(),
        buyer_name: "alice".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_eshop_bus_still_publishes_to_eshop_event_bus() {
    let Some(url) = setup() else { return };
    let (mut consumer, mut lines) = eshop_consumer(&url);
    let namespace = format!("staging-{}", Uuid::now_v7().simple());
    let bus = RabbitMqBus::connect(RabbitMqOptions::eshop(url).namespace(namespace)).await.unwrap();
    bus.publish(Envelope::encode(&JsonCodec, &shipped()).unwrap()).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(consumer.wait().unwrap().success());
    assert_eq!(body["OrderId"], 4711, "the .NET service got it: {body}");
}

/// A Rust event type with eShop's own `Id` and `CreationDate` properties.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[serde(rename_all = "PascalCase")]
#[message(name = "OrderStatusChangedToShippedIntegrationEvent")]
struct ShippedWithId {
    id: Uuid,
    creation_date: String,
    order_id: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_event_with_its_own_id_fields_is_sent_with_the_envelopes_id_and_time() {
    let Some(url) = setup() else { return };
    let (mut consumer, mut lines) = eshop_consumer(&url);
    let bus = RabbitMqBus::connect(RabbitMqOptions::eshop(url)).await.unwrap();
    let own = Uuid::now_v7();
    let event = ShippedWithId { id: own, creation_date: "2020-01-01T00:00:00Z".into(), order_id: 4711 };
    let envelope = Envelope::encode(&JsonCodec, &event).unwrap();
    let id = envelope.message_id;
    bus.publish(envelope).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(consumer.wait().unwrap().success());
    assert_eq!(body["Id"], id.to_string(), "the envelope's id wins over the struct's own {own}");
    assert_ne!(body["CreationDate"], "2020-01-01T00:00:00Z");
}

/// eShop's basket service, as far as these tests need it.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[serde(rename_all = "PascalCase")]
struct OrderStartedIntegrationEvent {
    user_id: String,
}

/// Counts each event it handles in its records, by message id (other tests publish the same
/// eShop events to the shared exchange, so a queue bound to them sees theirs too).
#[derive(Clone)]
struct Counting<M>(std::marker::PhantomData<fn(M)>);

#[async_trait::async_trait]
impl<M: Message> Handler for Counting<M> {
    type Input = M;
    fn name(&self) -> &str {
        M::NAME
    }
    fn scope(&self) -> &str {
        "ordering"
    }
    async fn handle(&self, _: M, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        let key = ctx.message_id().to_string();
        let seen: u32 = ctx.load(&key).await?.unwrap_or(0);
        ctx.save(&key, &(seen + 1)).await
    }
}

async fn count(runtime: &SagaRuntime, id: Uuid) -> u32 {
    runtime.record::<u32>("ordering", &id.to_string()).await.unwrap().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_takes_a_dotnet_services_place_on_its_one_queue_and_an_id_seen_twice_is_one_event() {
    let Some(url) = setup() else { return };
    let queue = format!("Ordering.{}", Uuid::now_v7().simple());
    let bus = RabbitMqBus::connect(RabbitMqOptions::eshop(url.clone())).await.unwrap();
    let runtime = SagaRuntime::builder()
        .store(MemoryStore::new())
        .bus(bus)
        .subscription(queue.as_str())
        .handler(Counting::<OrderStartedIntegrationEvent>(std::marker::PhantomData))
        .handler(Counting::<OrderStatusChangedToPaidIntegrationEvent>(std::marker::PhantomData))
        .build()
        .await
        .unwrap();
    let publish = |key: &str, body: serde_json::Value| {
        let out =
            Command::new("python3").args([SCRIPT, "publish-json", &url, key, &body.to_string()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let now = "2026-12-01T10:00:00.0000000Z";
    let (started, paid) = (Uuid::now_v7(), Uuid::now_v7());
    publish("OrderStartedIntegrationEvent", serde_json::json!({"Id": started, "CreationDate": now, "UserId": "alice"}));
    let paid_event = |buyer: &str| {
        serde_json::json!({"Id": paid, "CreationDate": now, "OrderId": 1, "OrderStatus": "paid", "BuyerName": buyer,
            "OrderStockItems": []})
    };
    publish("OrderStatusChangedToPaidIntegrationEvent", paid_event("alice"));
    // The same Id with another body: the same event to eShop, so handled once.
    publish("OrderStatusChangedToPaidIntegrationEvent", paid_event("mallory"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&runtime, paid).await == 0 || count(&runtime, started).await == 0 {
        assert!(std::time::Instant::now() < deadline, "both events did not arrive on {queue}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&runtime, started).await, 1);
    assert_eq!(count(&runtime, paid).await, 1, "a reused Id is a duplicate");
    runtime.kill().await;
}
