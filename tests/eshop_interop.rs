//! eShopOnContainers wire compatibility, both ways, with a foreign client (Python's pika).
//! Runs when `SAGA_TEST_AMQP_URL` is set and `python3 -c "import pika"` works.
#![cfg(feature = "rabbitmq")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use sagaflow::bus::{Bus, RabbitMqBus, RabbitMqOptions};
use sagaflow::message::{Envelope, JsonCodec};
use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

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
