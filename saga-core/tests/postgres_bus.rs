//! The PostgreSQL bus: the transport conformance suite, and what several processes on one
//! database do (each "process" is a bus with a store connection of its own). Runs when
//! `SAGA_TEST_POSTGRES_URL` is set (feature `postgres`).
#![cfg(feature = "postgres")]

use std::time::Duration;

use saga_core::bus::{Bus, BusError, Consumer, Delivery, PostgresBus};
use saga_core::message::Envelope;
use saga_core::store::{PgConnectOptions, PostgresStore, PostgresTarget};

mod conformance {
    saga_core::conformance_tests!(async {
        let target = saga_core::store::PostgresTarget::from_env()?;
        Some(saga_core::bus::PostgresBusTarget::new(&target.fresh_store().await))
    });
}

async fn database() -> Option<PgConnectOptions> {
    Some(PostgresTarget::from_env()?.fresh_database().await)
}

async fn store(database: &PgConnectOptions, lease: Duration) -> PostgresStore {
    PostgresStore::connect_options(database.clone(), 4).await.unwrap().with_claim_lease(lease)
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), consumer.next()).await.expect("a delivery within 20 s").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_in_one_process_wakes_a_consumer_in_another_without_waiting_for_its_poll() {
    let Some(database) = database().await else { return };
    let publisher = PostgresBus::new(&store(&database, Duration::from_secs(5)).await);
    // A poll this slow would fail the 20 s patience: only the notification can deliver in time.
    let consumer_side =
        PostgresBus::new(&store(&database, Duration::from_secs(5)).await).with_poll_interval(Duration::from_secs(600));
    let mut consumer = consumer_side.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
    // Let the consumer's first (empty) claim pass, so it is waiting when the message comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Envelope::new("ordering.order-paid", b"{}".to_vec());
    publisher.publish(sent.clone()).await.unwrap();
    let got = next(&mut consumer).await;
    assert_eq!(got.envelope().message_id, sent.message_id);
    got.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_dead_process_held_is_delivered_elsewhere_once_its_lease_ran_out() {
    let Some(database) = database().await else { return };
    let lease = Duration::from_millis(600);
    let sent = Envelope::new("ordering.order-paid", b"{}".to_vec());

    // The doomed process runs on a runtime of its own, so that stopping the runtime stops its
    // heartbeat as a kill would, and its delivery is forgotten unsettled.
    let (doomed_db, doomed_sent) = (database.clone(), sent.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async {
            let bus = PostgresBus::new(&store(&doomed_db, lease).await);
            let mut consumer = bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
            bus.publish(doomed_sent.clone()).await.unwrap();
            let held = next(&mut consumer).await;
            assert_eq!(held.envelope().message_id, doomed_sent.message_id);
            std::mem::forget(held);
            std::mem::forget(consumer);
        });
        runtime.shutdown_background();
    })
    .join()
    .unwrap();

    let survivor = PostgresBus::new(&store(&database, lease).await).with_poll_interval(Duration::from_millis(100));
    let mut consumer = survivor.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(again.envelope().message_id, sent.message_id);
    assert_eq!(again.envelope().attempt, 2, "the dead process's claim counts as a delivery");
    again.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_subscription_is_refused_to_another_process_until_its_holder_leaves() {
    let Some(database) = database().await else { return };
    let first = PostgresBus::new(&store(&database, Duration::from_secs(5)).await);
    let second = PostgresBus::new(&store(&database, Duration::from_secs(5)).await);
    let held = first.subscribe_exclusive("saga.order", &["order.placed"]).await.unwrap();
    match second.subscribe("saga.order", &["order.placed"]).await {
        Err(BusError::SubscriptionInUse { .. }) => {}
        other => panic!("another process joined an exclusive subscription: {other:?}"),
    }
    drop(held);
    // The holder's row goes with its next heartbeat (a third of the lease) or its next subscribe.
    let mut joined = None;
    for _ in 0..100 {
        match second.subscribe_exclusive("saga.order", &["order.placed"]).await {
            Ok(c) => {
                joined = Some(c);
                break;
            }
            Err(BusError::SubscriptionInUse { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(joined.is_some(), "the subscription stayed held after its holder left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_too_often_is_dead_lettered_with_the_count() {
    let Some(database) = database().await else { return };
    let bus = PostgresBus::new(&store(&database, Duration::from_secs(5)).await)
        .with_max_deliveries(2)
        .with_poll_interval(Duration::from_millis(100));
    let mut consumer = bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
    bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())).await.unwrap();
    for attempt in 1..=2 {
        let d = next(&mut consumer).await;
        assert_eq!(d.envelope().attempt, attempt);
        d.nack(Duration::ZERO).await.unwrap();
    }
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = bus.dead_letters("billing", 10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "delivered 2 times without being acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_gives_its_connection_back_while_its_caller_is_busy_elsewhere() {
    let Some(database) = database().await else { return };
    // Two connections: the listener's, and one for everything else.
    let store = PostgresStore::connect_options(database, 2).await.unwrap();
    let bus = PostgresBus::new(&store);
    let mut consumer = bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
    let mut publish = Box::pin(bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())));
    // The publish starts, then is left unpolled while its caller needs the pool (as the relay
    // does with the publishes it keeps in flight).
    assert!(futures::poll!(&mut publish).is_pending());
    let other =
        tokio::time::timeout(Duration::from_secs(10), saga_core::store::Store::instance(&store, uuid::Uuid::nil()));
    other.await.expect("a connection came back to the pool").unwrap();
    publish.await.unwrap();
    next(&mut consumer).await.ack().await.unwrap();
}
