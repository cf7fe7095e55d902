//! Property: two runtimes on one PostgreSQL database (each with its own connections and
//! claims, as two processes have), competing on the PostgreSQL bus, end the order saga as one
//! runtime on the memory store does, whatever happens meanwhile: submissions sent to either
//! runtime, every submission sent twice (a client retrying), one runtime killed after a random
//! order and started again. Orders use distinct products, so their outcomes do not depend on
//! which one reaches the shelf first (see `tests/properties.rs`).
//!
//! `PROPTEST_CASES` sets the number of cases (default 8). Runs when `SAGA_TEST_POSTGRES_URL`
//! is set (feature `postgres`).
#![cfg(feature = "postgres")]

#[path = "../examples/order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../examples/order_saga/services.rs"]
#[allow(dead_code)]
mod services;

use std::sync::Arc;
use std::time::Duration;

use domain::*;
use proptest::prelude::*;
use sagaflow::engine::SagaRuntimeBuilder;
use sagaflow::prelude::*;
use sagaflow::store::{PgConnectOptions, PostgresStore, PostgresTarget, Store};
use services::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Order {
    id: u128,
    units: u32,
    stock: u32,
    declined: bool,
}

#[derive(Debug, Clone)]
struct Faults {
    /// Which runtime each submission goes to.
    to_second: Vec<bool>,
    /// Every submission sent twice under its key.
    twice: bool,
    /// Kill the second runtime after submitting this order, and start it again.
    kill_after: Option<usize>,
}

#[derive(Debug, PartialEq)]
struct Outcome {
    status: StatusKind,
    on_shelf: u32,
    released: Option<bool>,
    charged: Option<u64>,
    shipped: Option<u32>,
    ship_requests: u32,
}

fn orders() -> impl Strategy<Value = Vec<Order>> {
    prop::collection::vec((1u128..40, 1u32..4, 0u32..5, prop::bool::weighted(0.25)), 1..6).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (id, units, stock, declined))| Order { id: id * 8 + i as u128, units, stock, declined })
            .collect()
    })
}

fn faults(orders: usize) -> impl Strategy<Value = Faults> {
    (prop::collection::vec(any::<bool>(), orders), any::<bool>(), prop::option::of(0..orders))
        .prop_map(|(to_second, twice, kill_after)| Faults { to_second, twice, kill_after })
}

fn product(order: &Order) -> u32 {
    order.id as u32
}

fn runtime(store: impl Store) -> SagaRuntimeBuilder {
    register(SagaRuntime::builder().store(store))
}

async fn replica(database: &PgConnectOptions) -> SagaRuntime {
    let store =
        PostgresStore::connect_options(database.clone(), 4).await.unwrap().with_claim_lease(Duration::from_secs(1));
    runtime(store).build().await.unwrap()
}

async fn record<T: serde::de::DeserializeOwned>(store: &dyn Store, scope: &str, key: &str) -> Option<T> {
    serde_json::from_slice(&store.entity(scope, key).await.unwrap()?.value).ok()
}

async fn submit(to: &SagaRuntime, i: usize, o: &Order) {
    let buyer = if o.declined { format!("declined-{i}") } else { format!("buyer-{i}") };
    let items = vec![OrderItem { product_id: product(o), units: o.units }];
    let order = OrderSubmitted { order_id: Uuid::from_u128(o.id), buyer, items, total_cents: 100 };
    to.publish_idempotent(&format!("order-{}", o.id), &order).await.unwrap();
}

/// Runs the orders on `runtimes` (one, or two on one database with `faults`) and reads what
/// each order left behind.
async fn run(
    orders: &[Order],
    mut runtimes: Vec<SagaRuntime>,
    database: Option<&PgConnectOptions>,
    f: &Faults,
) -> Vec<Outcome> {
    let store: Arc<dyn Store> = runtimes[0].store();
    for o in orders {
        runtimes[0]
            .publish_idempotent(&format!("stock-{}", o.id), &StockAdded { product_id: product(o), units: o.stock })
            .await
            .unwrap();
    }
    // The stock is on the shelves before the orders (the restock and reserve queues are worked
    // in no set order by competing runtimes).
    for o in orders {
        while store.entity("catalog", &stock_key(product(o))).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for (i, o) in orders.iter().enumerate() {
        let to = usize::from(f.to_second.get(i).copied().unwrap_or(false) && runtimes.len() > 1);
        submit(&runtimes[to], i, o).await;
        if f.twice {
            submit(&runtimes[runtimes.len() - 1 - to], i, o).await;
        }
        if f.kill_after == Some(i) && runtimes.len() > 1 {
            runtimes.pop().unwrap().kill().await;
            runtimes.push(replica(database.unwrap()).await);
        }
    }
    // By the instances' ids: a start message waiting in the bus's queue is no runtime's work in
    // flight, so `wait_until_all_terminal` could return before its instance exists.
    let ids: Vec<Uuid> = orders
        .iter()
        .map(|o| sagaflow::saga::instance_id("order-fulfilment", &Uuid::from_u128(o.id).to_string()))
        .collect();
    runtimes[0].wait_until_terminal(&ids, Duration::from_secs(60)).await.unwrap();
    for r in &runtimes {
        r.wait_until_all_terminal(Duration::from_secs(60)).await.unwrap();
    }
    let mut outcomes = Vec::with_capacity(orders.len());
    for o in orders {
        let id = Uuid::from_u128(o.id);
        let saga = runtimes[0].saga::<OrderSaga>(&id.to_string()).await.unwrap().expect("the order's saga");
        outcomes.push(Outcome {
            status: saga.status().kind(),
            on_shelf: record(&*store, "catalog", &stock_key(product(o))).await.unwrap_or(0),
            released: record::<Reservation>(&*store, "catalog", &reservation_key(id)).await.map(|r| r.released),
            charged: record::<Charge>(&*store, "payment.charge", &format!("charge/{id}")).await.map(|c| c.amount_cents),
            shipped: record(&*store, "shipping.ship", &format!("shipment/{id}")).await,
            ship_requests: record(&*store, "shipping.ship", &format!("attempts/{id}")).await.unwrap_or(0),
        });
    }
    for r in runtimes {
        r.shutdown().await.unwrap();
    }
    outcomes
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(f)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn two_runtimes_on_one_database_end_like_one_runtime_on_memory(
        (orders, faults) in orders().prop_flat_map(|o| { let n = o.len(); (Just(o), faults(n)) })
    ) {
        let Some(target) = PostgresTarget::from_env() else { return Ok(()) };
        let none = Faults { to_second: Vec::new(), twice: false, kill_after: None };
        let clean = block_on(async {
            let one = runtime(MemoryStore::new()).build().await.unwrap();
            run(&orders, vec![one], None, &none).await
        });
        let shared = block_on(async {
            let database = target.fresh_database().await;
            let two = vec![replica(&database).await, replica(&database).await];
            run(&orders, two, Some(&database), &faults).await
        });
        prop_assert_eq!(shared, clean);
    }
}
