//! The RabbitMQ transport against a running broker (set `SAGA_TEST_AMQP_URL`).
#![cfg(feature = "rabbitmq")]

mod conformance {
    saga_core::conformance_tests!(saga_core::bus::RabbitMqTarget::from_env());
}

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use saga_core::bus::conformance::unique;
use saga_core::bus::{Bus, RabbitMqBus, RabbitMqOptions};

async fn broker() -> Option<(String, RabbitMqBus)> {
    let url = std::env::var("SAGA_TEST_AMQP_URL").ok()?;
    Some((url.clone(), RabbitMqBus::connect(RabbitMqOptions::new(url)).await.unwrap()))
}

/// Publishes `body` to the `sagaflow` exchange as a foreign client would: no message id.
async fn publish_foreign(url: &str, routing_key: &str, body: &[u8]) {
    publish_foreign_with(url, routing_key, body, BasicProperties::default()).await
}

async fn publish_foreign_with(url: &str, routing_key: &str, body: &[u8], properties: BasicProperties) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let options = BasicPublishOptions::default();
    let confirm = ch.basic_publish("sagaflow".into(), routing_key.into(), options, body, properties).await.unwrap();
    confirm.await.unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_without_a_message_id_are_distinct_messages_whose_id_survives_redelivery() {
    let Some((url, bus)) = broker().await else { return };
    let (sub, note, cancel) = (unique("foreign"), unique("note"), unique("cancel"));
    let mut c = bus.subscribe(&sub, &[&note, &cancel]).await.unwrap();
    for key in [&note, &note, &cancel] {
        publish_foreign(&url, key, br#"{"trip":5}"#).await;
    }
    let mut ids = Vec::new();
    let mut abandoned = None;
    for i in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap();
        ids.push((d.envelope().name.clone(), d.envelope().message_id));
        if i == 0 {
            abandoned = Some(d.envelope().message_id);
            drop(d); // handed back unsettled, as by a crashed consumer
        } else {
            d.ack().await.unwrap();
        }
    }
    let again = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap();
    assert_eq!(Some(again.envelope().message_id), abandoned, "a redelivery keeps the id it was given");
    again.ack().await.unwrap();
    let mut names: Vec<&str> = ids.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected = vec![note.as_str(), note.as_str(), cancel.as_str()];
    expected.sort_unstable();
    assert_eq!(names, expected, "the name is the routing key");
    let distinct: std::collections::HashSet<_> = ids.iter().map(|(_, id)| *id).collect();
    assert_eq!(distinct.len(), 3, "three publishes are three messages, equal bodies or not: {ids:?}");
    bus.unsubscribe(&sub).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_id_that_is_not_a_uuid_gives_the_same_id_every_time() {
    let Some((url, bus)) = broker().await else { return };
    let (sub, name) = (unique("foreign-id"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    let with_id = || BasicProperties::default().with_message_id("order-42-created".into());
    publish_foreign_with(&url, &name, br#"{"order":42}"#, with_id()).await;
    publish_foreign_with(&url, &name, br#"{"order":42}"#, with_id()).await;
    let first = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap();
    let id = first.envelope().message_id;
    drop(first); // handed back: redelivered
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap();
        ids.push(d.envelope().message_id);
        d.ack().await.unwrap();
    }
    assert_eq!(ids, [id, id], "a redelivery and a second publish under the same message-id keep one id");
    bus.unsubscribe(&sub).await.unwrap();
}
