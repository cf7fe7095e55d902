//! Property: whatever the bus and the process do to the messages — duplicate every delivery,
//! hold back and reorder them, fail commits, restart the runtime mid-flight — the order saga
//! ends in the same terminal state with the same effects as a clean run.
//!
//! Orders use distinct products, so their outcomes do not depend on which order reaches the
//! shelf first: any difference from the clean run is a lost or repeated effect. The catalog's
//! stock has no idempotence guard of its own and the carrier counts every ship request it
//! applies, so a command applied twice changes the figures compared.
//!
//! `PROPTEST_CASES` sets the number of cases (default 32); docs/reliability.md has the long run.

#[path = "../examples/order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../examples/order_saga/services.rs"]
#[allow(dead_code)]
mod services;

use std::time::Duration;

use domain::*;
use proptest::prelude::*;
use sagaflow::prelude::*;
use sagaflow::testing::{SagaTestHarness, TestRuntime};
use services::*;
use uuid::Uuid;

/// One order: its id picks whether the carrier delays it (every fifth id), the rest whether
/// it finds stock and whether the card is declined.
#[derive(Debug, Clone)]
struct Order {
    id: u128,
    units: u32,
    stock: u32,
    declined: bool,
}

#[derive(Debug, Clone)]
struct Faults {
    duplicate: bool,
    reorder: Option<(usize, u64)>,
    failed_commits: Vec<u64>,
    /// Restart after publishing the order at each index (before anything settles).
    restarts_after: Vec<usize>,
    sled: bool,
}

impl Faults {
    fn none() -> Self {
        Faults { duplicate: false, reorder: None, failed_commits: Vec::new(), restarts_after: Vec::new(), sled: false }
    }
}

/// What a run leaves behind for each order, as the saga and the participants recorded it.
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
            // Distinct ids keep the orders apart; `id % 5` still varies.
            .map(|(i, (id, units, stock, declined))| Order { id: id * 8 + i as u128, units, stock, declined })
            .collect()
    })
}

fn faults(orders: usize) -> impl Strategy<Value = Faults> {
    (
        any::<bool>(),
        prop::option::of((2usize..8, any::<u64>())),
        prop::collection::vec(1u64..60, 0..3),
        prop::collection::vec(0..orders, 0..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(duplicate, reorder, failed_commits, restarts_after, sled)| Faults {
            duplicate,
            reorder,
            failed_commits,
            restarts_after,
            sled,
        })
}

fn product(order: &Order) -> u32 {
    order.id as u32
}

async fn run(orders: &[Order], faults: &Faults) -> Vec<Outcome> {
    let mut harness = if faults.sled {
        SagaTestHarness::with_sled().expect("a temporary sled store")
    } else {
        SagaTestHarness::new()
    };
    harness = register_all(harness);
    if faults.duplicate {
        harness = harness.duplicate_deliveries();
    }
    if let Some((window, seed)) = faults.reorder {
        harness = harness.reorder_deliveries(window, seed);
    }
    for &n in &faults.failed_commits {
        harness = harness.fail_commit(n);
    }
    let mut h = harness.start().await;
    for o in orders {
        h.publish(&StockAdded { product_id: product(o), units: o.stock }).await;
    }
    h.settle().await;
    for (i, o) in orders.iter().enumerate() {
        let buyer = if o.declined { format!("declined-{i}") } else { format!("buyer-{i}") };
        let items = vec![OrderItem { product_id: product(o), units: o.units }];
        h.publish(&OrderSubmitted { order_id: Uuid::from_u128(o.id), buyer, items, total_cents: 100 }).await;
        for _ in faults.restarts_after.iter().filter(|&&r| r == i) {
            h.restart().await;
        }
    }
    // The carrier's retry waits on a timer: let virtual time pass until nothing is running.
    for _ in 0..20 {
        h.advance(Duration::from_secs(10)).await;
        if h.runtime().instances(StatusKind::Running, usize::MAX).await.expect("instances").is_empty()
            && h.runtime().instances(StatusKind::Compensating, usize::MAX).await.expect("instances").is_empty()
        {
            break;
        }
    }
    let mut outcomes = Vec::with_capacity(orders.len());
    for o in orders {
        outcomes.push(outcome(&h, o).await);
    }
    outcomes
}

fn register_all(h: SagaTestHarness) -> SagaTestHarness {
    h.saga::<OrderSaga>()
        .handler(restock)
        .handler(reserve_stock)
        .handler(release_stock)
        .handler(charge_payment)
        .handler(ship_order)
}

async fn outcome(h: &TestRuntime, o: &Order) -> Outcome {
    let id = Uuid::from_u128(o.id);
    let saga = h.expect_saga::<OrderSaga>(&id.to_string()).await;
    Outcome {
        status: saga.status().kind(),
        on_shelf: h.record("catalog", &stock_key(product(o))).await.unwrap_or(0),
        released: h.record::<Reservation>("catalog", &reservation_key(id)).await.map(|r| r.released),
        charged: h.record::<Charge>("payment.charge", &format!("charge/{id}")).await.map(|c| c.amount_cents),
        shipped: h.record("shipping.ship", &format!("shipment/{id}")).await,
        ship_requests: h.record("shipping.ship", &format!("attempts/{id}")).await.unwrap_or(0),
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

/// What the cases injected, printed after the last one (for docs/reliability.md).
#[derive(Default)]
struct Tally {
    cases: u32,
    orders: usize,
    duplicated: u32,
    reordered: u32,
    failed_commits: usize,
    restarts: usize,
    on_sled: u32,
}

static TALLY: std::sync::Mutex<Option<Tally>> = std::sync::Mutex::new(None);

fn tally(orders: &[Order], f: &Faults) {
    let mut guard = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    let t = guard.get_or_insert_with(Tally::default);
    t.cases += 1;
    t.orders += orders.len();
    t.duplicated += u32::from(f.duplicate);
    t.reordered += u32::from(f.reorder.is_some());
    t.failed_commits += f.failed_commits.len();
    t.restarts += f.restarts_after.len();
    t.on_sled += u32::from(f.sled);
    if t.cases == cases() {
        eprintln!(
            "{} cases, {} orders: {} with every delivery duplicated, {} reordered, {} commit failures asked for, \
             {} restarts mid-flight, {} on sled; every case ended like its clean run",
            t.cases, t.orders, t.duplicated, t.reordered, t.failed_commits, t.restarts, t.on_sled
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn duplicates_reorderings_failed_commits_and_restarts_end_like_a_clean_run(
        (orders, faults) in orders().prop_flat_map(|o| { let n = o.len(); (Just(o), faults(n)) })
    ) {
        let clean = block_on(run(&orders, &Faults::none()));
        for (o, c) in orders.iter().zip(&clean) {
            prop_assert!(matches!(c.status, StatusKind::Completed | StatusKind::Compensated), "clean run of {o:?}: {c:?}");
        }
        let faulty = block_on(run(&orders, &faults));
        prop_assert_eq!(faulty, clean);
        tally(&orders, &faults);
    }
}
