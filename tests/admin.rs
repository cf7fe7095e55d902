//! The operators' read side (`SagaRuntime::admin`): listings by filter and cursor, counts by
//! saga and status, and one instance inspected, on the memory, sled and PostgreSQL stores
//! (the last when `SAGA_TEST_POSTGRES_URL` is set, feature `postgres`).

#[path = "../examples/order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../examples/order_saga/services.rs"]
#[allow(dead_code)]
mod services;
#[path = "../examples/order_saga/workload.rs"]
#[allow(dead_code)]
mod workload;

use std::collections::HashSet;
use std::time::Duration;

use domain::{OrderSaga, StockAdded};
use sagaflow::prelude::*;
use sagaflow::saga::instance_id;
use sagaflow::store::{InstanceQuery, MemoryStore, Store};

const ORDERS: u32 = 20;

/// Runs `ORDERS` orders of the workload (only product 1 is in stock, so some are compensated) to their end on
/// `store`, then checks what the admin API says about them.
async fn orders_are_listed_counted_and_inspected(store: impl Store) {
    let runtime = services::register(SagaRuntime::builder().store(store)).build().await.expect("build");
    runtime.publish(&StockAdded { product_id: 1, units: 1_000_000 }).await.expect("restock");
    let mut ids = Vec::new();
    for n in 0..ORDERS {
        let order = workload::order(n);
        ids.push(instance_id(OrderSaga::NAME, &order.order_id.to_string()));
        runtime.publish(&order).await.expect("publish an order");
    }
    let done = runtime.wait_until_terminal(&ids, Duration::from_secs(60)).await.expect("every order ends");
    let compensated: HashSet<_> =
        done.iter().filter(|i| *i.status() == SagaStatus::Compensated).map(|i| i.id()).collect();
    assert!(!compensated.is_empty(), "some orders ask for products out of stock");
    let admin = runtime.admin();

    let counts = admin.counts(&InstanceQuery::default().saga(OrderSaga::NAME)).await.expect("counts");
    let count = |status| counts.iter().find(|c| c.status == status).map_or(0, |c| c.count);
    assert_eq!(count(StatusKind::Compensated), compensated.len() as u64);
    assert_eq!(count(StatusKind::Completed), u64::from(ORDERS) - compensated.len() as u64);

    // Page by 1 through the compensated orders: each exactly once.
    let mut query = InstanceQuery::default().saga(OrderSaga::NAME).status(StatusKind::Compensated);
    let mut listed = Vec::new();
    loop {
        let page = admin.list(&query, 1).await.expect("a page");
        assert!(page.instances.len() <= 1);
        listed.extend(page.instances.iter().map(|i| i.id));
        match page.next {
            Some(next) => query = query.after(Some(next)),
            None => break,
        }
    }
    assert_eq!(listed.len(), compensated.len(), "no repeats");
    assert_eq!(listed.into_iter().collect::<HashSet<_>>(), compensated);

    let id = *compensated.iter().next().expect("one compensated order");
    let detail = admin.inspect(id, 1).await.expect("inspect").expect("the instance exists");
    assert_eq!(detail.summary.status, StatusKind::Compensated);
    assert_eq!(detail.summary.step, None);
    assert!(detail.summary.failure.as_deref().is_some_and(|f| f.contains("failed")), "{detail:?}");
    let state = detail.state.as_ref().expect("the JSON codec's state reads as JSON");
    assert_eq!(state["paid"], serde_json::Value::Bool(false));
    assert_eq!(detail.history.len(), 1, "a page of the history");
    assert!(detail.more_history);
    let rest = admin.history(id, Some(detail.history[0].version), 100).await.expect("the rest of the history");
    assert!(!rest.is_empty() && rest[0].version > detail.history[0].version);
    assert_eq!(rest.last().map(|h| h.version), Some(detail.summary.version));
    assert!(detail.outbox.is_empty() && detail.dead_letters.is_empty());
    assert!(detail.diagram.as_deref().is_some_and(|d| d.contains("charge_payment")));
    assert!(admin.inspect(uuid::Uuid::nil(), 10).await.expect("inspect").is_none());
    runtime.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_store_orders_are_listed_counted_and_inspected() {
    orders_are_listed_counted_and_inspected(MemoryStore::new()).await;
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sled_orders_are_listed_counted_and_inspected() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    orders_are_listed_counted_and_inspected(sagaflow::store::SledStore::open(dir.path()).expect("open sled")).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_orders_are_listed_counted_and_inspected() {
    let Some(target) = sagaflow::store::PostgresTarget::from_env() else { return };
    orders_are_listed_counted_and_inspected(target.fresh_store().await).await;
}
