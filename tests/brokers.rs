//! The order saga on real brokers (set `SAGA_TEST_AMQP_URL`; the restart test also needs
//! `SAGA_TEST_RABBITMQ_RESTART=1` and `rabbitmqctl` on the PATH, as `.ci/run` provides).
#![cfg(feature = "rabbitmq")]

#[path = "../examples/order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../examples/order_saga/services.rs"]
#[allow(dead_code)]
mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::*;
use sagaflow::bus::{Bus, RabbitMqBus, RabbitMqOptions};
use sagaflow::prelude::*;
use sagaflow::store::Store;
use services::*;
use uuid::Uuid;

async fn rabbitmq() -> Option<RabbitMqBus> {
    let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else {
        sagaflow::bus::conformance::say_skipped("order saga on RabbitMQ", "SAGA_TEST_AMQP_URL");
        return None;
    };
    // A fresh namespace per run keeps runs apart on a shared broker.
    let namespace = format!("test-{}", Uuid::now_v7().simple());
    Some(RabbitMqBus::connect(RabbitMqOptions::new(url).namespace(namespace)).await.expect("RabbitMQ is reachable"))
}

fn order(n: u32) -> OrderSubmitted {
    let buyer = if n % 10 == 3 { format!("declined-{n}") } else { format!("buyer-{n}") };
    let items = vec![OrderItem { product_id: 1 + n % 4, units: 1 + n % 3 }];
    OrderSubmitted { order_id: Uuid::from_u128(1_000_000 + u128::from(n)), buyer, items, total_cents: 1_000 }
}

/// Waits until no instance is running or compensating; returns how many finished how.
async fn finish(runtime: &SagaRuntime, deadline: Duration) -> (usize, usize, usize) {
    let until = Instant::now() + deadline;
    loop {
        let open = runtime.instances(StatusKind::Running, usize::MAX).await.unwrap().len()
            + runtime.instances(StatusKind::Compensating, usize::MAX).await.unwrap().len();
        if open == 0 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = |s| async move { runtime.instances(s, usize::MAX).await.unwrap().len() };
    (count(StatusKind::Completed).await, count(StatusKind::Compensated).await, count(StatusKind::Failed).await)
}

/// Every effect applied once: stock on shelves plus reserved equals delivered, one charge and
/// one shipment per completed order.
async fn assert_books_balance(runtime: &SagaRuntime, delivered: u64) {
    let mut on_shelves = 0;
    for product in 1..=4 {
        on_shelves += u64::from(runtime.record::<u32>("catalog", &stock_key(product)).await.unwrap().unwrap_or(0));
    }
    let mut reserved = 0;
    for id in runtime.instances(StatusKind::Completed, usize::MAX).await.unwrap() {
        let o: OrderSaga = runtime.instance(id).await.unwrap().unwrap().state().unwrap();
        let r: Reservation = runtime.record("catalog", &reservation_key(o.order_id)).await.unwrap().unwrap();
        assert!(!r.released);
        reserved += r.items.iter().map(|i| u64::from(i.units)).sum::<u64>();
        assert!(runtime.record::<Charge>("payment.charge", &format!("charge/{}", o.order_id)).await.unwrap().is_some());
        assert!(runtime.record::<u32>("shipping.ship", &format!("shipment/{}", o.order_id)).await.unwrap().is_some());
    }
    assert_eq!(on_shelves + reserved, delivered, "stock on shelves + reserved = delivered");
}

async fn run_orders<F: std::future::Future<Output = ()>>(
    bus: impl Bus,
    orders: u32,
    during: impl FnOnce(Arc<dyn Store>) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        register(SagaRuntime::builder().store(SledStore::open(dir.path()).unwrap()).bus(bus)).build().await.unwrap();
    for product_id in 1..=4 {
        runtime.publish(&StockAdded { product_id, units: 1_000 }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Orders keep coming while `during` disturbs the system, once the first ones went through.
    // Every wait is bounded, so a broker that never comes back fails the test, saying where.
    let publishing = async {
        let until = Instant::now() + Duration::from_secs(120);
        for n in 0..orders {
            while let Err(e) = runtime.publish(&order(n)).await {
                assert!(Instant::now() < until, "order {n} could not be published within 120 s: {e}");
                tracing::warn!(error = %e, "publish failed, retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let store = runtime.store();
    let disturbing = async {
        let until = Instant::now() + Duration::from_secs(60);
        while store.instances_with_status(StatusKind::Completed, usize::MAX).await.unwrap().len() < 50 {
            assert!(Instant::now() < until, "50 orders did not complete within 60 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        during(store.clone()).await;
    };
    tokio::join!(publishing, disturbing);
    let (completed, compensated, failed) = finish(&runtime, Duration::from_secs(180)).await;
    assert_eq!((completed + compensated, failed), (orders as usize, 0), "every order terminal");
    assert_eq!(compensated, (0..orders).filter(|n| n % 10 == 3).count(), "only declined cards compensate");
    assert_books_balance(&runtime, 4_000).await;
    tokio::time::timeout(Duration::from_secs(60), runtime.shutdown())
        .await
        .expect("the runtime shuts down within 60 s")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_saga_runs_across_rabbitmq() {
    let Some(bus) = rabbitmq().await else { return };
    run_orders(bus, 200, |_| async {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_during_1000_sagas_loses_and_duplicates_nothing() {
    if std::env::var("SAGA_TEST_RABBITMQ_RESTART").is_err() {
        sagaflow::bus::conformance::say_skipped("RabbitMQ restart test", "SAGA_TEST_RABBITMQ_RESTART=1");
        return;
    }
    let Some(bus) = rabbitmq().await else { return };
    let restart = |store: Arc<dyn Store>| async move {
        let open = store.instances_with_status(StatusKind::Running, usize::MAX).await.unwrap().len();
        assert!(open > 0, "the broker must go down with sagas in flight");
        eprintln!("restarting RabbitMQ with {open} sagas running");
        // `timeout` bounds a rabbitmqctl that cannot reach its node.
        let ctl = |verb: &str| {
            let out = std::process::Command::new("timeout")
                .args(["60", "rabbitmqctl", verb])
                .output()
                .expect("timeout and rabbitmqctl run");
            eprintln!("rabbitmqctl {verb}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
            out
        };
        // stop_app stops the broker (connections drop, durable queues and persistent messages
        // stay on disk) and start_app brings it back, as a broker restart does.
        assert!(ctl("stop_app").status.success(), "rabbitmqctl stop_app");
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("bringing RabbitMQ back");
        assert!(ctl("start_app").status.success(), "rabbitmqctl start_app");
    };
    run_orders(bus, 1000, restart).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_saga_runs_across_nats_jetstream() {
    use sagaflow::bus::{NatsBus, NatsOptions};
    let Ok(url) = std::env::var("SAGA_TEST_NATS_URL") else {
        sagaflow::bus::conformance::say_skipped("order saga on NATS", "SAGA_TEST_NATS_URL");
        return;
    };
    let run = Uuid::now_v7().simple().to_string();
    let options = NatsOptions::new(url)
        .prefix(format!("orders-{run}"))
        .stream(format!("ORDERS_{run}"))
        .dead_letter_stream(format!("ORDERS_{run}_DEAD"));
    run_orders(NatsBus::connect(options).await.unwrap(), 200, |_| async {}).await;
}
