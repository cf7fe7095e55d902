//! The reliability suite's worker: the whole order workload in one process (the order saga
//! and its catalog, payment and shipping participants) on a sled store, on the default durable
//! local bus or on RabbitMQ, so that a test can SIGKILL it at any moment, start it again on the
//! same directory, and check that nothing was lost or done twice.
//!
//! ```text
//! crash_worker run DIR BUS ORDERS SEED   seeds stock and submits the orders (idempotent across
//!                                        restarts), then works until killed or done
//! crash_worker check DIR ORDERS SEED     prints each order's outcome; exits 0 if every order is
//!                                        terminal, the books balance and nothing is left queued
//! crash_worker verify DIR ACKS           exits 0 if every commit listed in the file ACKS is in the store
//! ```
//!
//! `BUS` is `local` (the durable local bus, the default for a sled store) or
//! `rabbitmq:NAMESPACE` (feature `rabbitmq`, broker at `SAGA_TEST_AMQP_URL`). `SEED` picks the
//! workload: which buyers' cards are declined, what each order buys, which orders the carrier
//! is busy for once. Two stores that ran the same seed print the same outcomes from `check`,
//! whatever crashes one of them went through.
//!
//! With `SAGA_WORKER_DATABASE` set to a PostgreSQL URL (feature `postgres`), the store is a
//! `PostgresStore` there instead of sled in `DIR` (which then keeps only the worker's own
//! files), `local` means the store's default bus (the PostgreSQL bus), and several workers
//! may run on the one database at once, as replicas: `SAGA_WORKER_SUBMIT=0` makes one only
//! work, and `SAGA_WORKER_LEASE_MS` sets the claims' lease (default 2,000).
//! `SAGA_WORKER_WINDOW` caps how many submitted orders may be unfinished at once (default: no
//! cap).
//!
//! Built with the `failpoints` feature, it also aborts at the crash point `FAILPOINTS` names.
//! With `SAGA_PRINT_ACKS=1`, `run` prints a line on stdout for every commit the moment it is
//! durable (when the engine may ack what caused it): `instance <id> <version>`,
//! `inbox <consumer> <message id>`, or `consumed <subscription> <position>` for a message
//! whose local-bus queue entry the commit removed in place of an inbox entry; `verify` reads
//! such lines back (the power-loss test).

#[path = "order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "order_saga/services.rs"]
#[allow(dead_code)]
mod services;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sagaflow::engine::SagaRuntimeBuilder;
use sagaflow::message::Timestamp;
use sagaflow::prelude::*;
use sagaflow::store::{Commit, CommitHook, Committed, Intercepted, Store, StoreError};
use uuid::Uuid;

use domain::*;
use services::*;

const PRODUCTS: u32 = 8;
const UNITS: u32 = 10_000;
/// Where `run` writes the runtime's subscription names, for `check` to look at their queues.
const SUBSCRIPTIONS: &str = "subscriptions";

/// The orders of one seed.
struct Workload {
    orders: u32,
    seed: u64,
}

impl Workload {
    fn parse(orders: &str, seed: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(Workload { orders: orders.parse()?, seed: seed.parse()? })
    }

    /// Order `n`: about one buyer in ten has a card that is declined; stock is ample, so no
    /// order's outcome depends on which ran first. The carrier is busy once for an order
    /// whose id is a multiple of five (see `services::ship_order`).
    fn order(&self, n: u32) -> OrderSubmitted {
        let mut random = fastrand::Rng::with_seed(self.seed ^ (u64::from(n) << 32));
        let buyer = if random.u32(..10) == 0 { format!("declined-{n}") } else { format!("buyer-{n}") };
        let items = vec![OrderItem { product_id: random.u32(1..=PRODUCTS), units: random.u32(1..=3) }];
        OrderSubmitted { order_id: Uuid::from_u64_pair(self.seed, u64::from(n)), buyer, items, total_cents: 1_000 }
    }
}

/// Prints what each commit made durable, once it is (see the module docs).
struct PrintAcks;

#[async_trait::async_trait]
impl CommitHook for PrintAcks {
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
        let mut lines = Vec::new();
        if let Some(w) = &commit.instance {
            lines.push(format!("instance {} {}", w.record.id, w.record.version));
        }
        match (&commit.inbox, &commit.consumes) {
            (Some(_), Some((subscription, seq))) => lines.push(format!("consumed {subscription} {seq}")),
            (Some((consumer, message)), None) => lines.push(format!("inbox {consumer} {message}")),
            (None, _) => {}
        }
        let mut committed = store.commit(commit).await?;
        let durable = committed.durable;
        committed.durable = Box::pin(async move {
            durable.await?;
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            let _ = out.flush();
            Ok(())
        });
        Ok(committed)
    }
}

/// Puts the runtime on the bus `spec` names (see the module docs).
async fn on_bus(builder: SagaRuntimeBuilder, spec: &str) -> Result<SagaRuntimeBuilder, Box<dyn std::error::Error>> {
    match spec.split_once(':') {
        None if spec == "local" => Ok(builder),
        #[cfg(feature = "rabbitmq")]
        Some(("rabbitmq", namespace)) => {
            use sagaflow::bus::{RabbitMqBus, RabbitMqOptions};
            let url = std::env::var("SAGA_TEST_AMQP_URL")?;
            Ok(builder.bus(RabbitMqBus::connect(RabbitMqOptions::new(url).namespace(namespace)).await?))
        }
        _ => Err(format!("unknown bus {spec:?}: `local`, or `rabbitmq:NAMESPACE` with the rabbitmq feature").into()),
    }
}

/// The store the module docs describe: PostgreSQL when `SAGA_WORKER_DATABASE` names one,
/// else sled in `dir`.
async fn open(dir: &Path) -> Result<std::sync::Arc<dyn Store>, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("SAGA_WORKER_DATABASE") {
        #[cfg(feature = "postgres")]
        {
            let lease = std::env::var("SAGA_WORKER_LEASE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
            let store = sagaflow::store::PostgresStore::connect(&url).await?;
            return Ok(std::sync::Arc::new(store.with_claim_lease(Duration::from_millis(lease))));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(format!("SAGA_WORKER_DATABASE={url} needs the postgres feature").into());
    }
    Ok(std::sync::Arc::new(SledStore::open(dir.join("store"))?))
}

/// How many orders have ended.
async fn terminal(store: &dyn Store) -> Result<usize, StoreError> {
    let mut done = 0;
    for kind in [StatusKind::Completed, StatusKind::Compensated, StatusKind::Failed] {
        done += store.instances_with_status(kind, usize::MAX).await?.len();
    }
    Ok(done)
}

/// Whether nothing is left to do anywhere in the store: every order terminal, no outbox entry
/// (a dead replica's too), no timer, nothing queued for this runtime's subscriptions.
async fn all_done(runtime: &SagaRuntime, orders: u32) -> Result<bool, Box<dyn std::error::Error>> {
    let store = runtime.store();
    let mut idle = terminal(&*store).await? >= orders as usize
        && store.outbox(None, 1).await?.is_empty()
        && store.next_timer(Timestamp(0)).await?.is_none();
    for subscription in runtime.subscriptions() {
        idle = idle && store.queued(subscription, None, 1).await?.is_empty();
    }
    Ok(idle)
}

async fn run(dir: &Path, bus: &str, work: &Workload) -> Result<(), Box<dyn std::error::Error>> {
    let store = open(dir).await?;
    let builder = on_bus(SagaRuntime::builder(), bus).await?;
    let builder = match std::env::var("SAGA_PRINT_ACKS").as_deref() {
        Ok("1") => builder.store(Intercepted::new(store, PrintAcks)),
        _ => builder.store(store),
    };
    let runtime = register(builder).build().await?;
    std::fs::write(dir.join(SUBSCRIPTIONS), runtime.subscriptions().collect::<Vec<_>>().join("\n"))?;
    // Submitting again after a crash is harmless, as for any client that retries: the ids come
    // from idempotency keys, so the catalog's inbox drops a second delivery of the stock, and a
    // second start finds its instance. The marker only saves the time of doing it again.
    let marker = dir.join("submitted");
    if !marker.exists() && std::env::var("SAGA_WORKER_SUBMIT").as_deref() != Ok("0") {
        for product_id in 1..=PRODUCTS {
            runtime
                .publish_idempotent(&format!("stock-{product_id}"), &StockAdded { product_id, units: UNITS })
                .await?;
        }
        // The stock is on the shelves before the first order: with competing consumers the
        // restock and reserve queues are worked in no particular order across processes, and
        // an order that overtook its product's stock would be refused where a clean run is not.
        for product_id in 1..=PRODUCTS {
            while runtime.store().entity("catalog", &stock_key(product_id)).await?.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let orders: Vec<u32> = (0..work.orders).collect();
        let window = std::env::var("SAGA_WORKER_WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
        for (n, batch) in orders.chunks(100).enumerate() {
            // At most `window` orders unfinished, as a client paced by its users would be: a
            // backlog longer than a step's timeout would make orders time out that a clean
            // run completes.
            while (n * 100).saturating_sub(terminal(&*runtime.store()).await?) >= window {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let submissions = batch.iter().map(|&n| {
                let order = work.order(n);
                let runtime = &runtime;
                async move { runtime.publish_idempotent(&format!("order-{n}"), &order).await }
            });
            futures::future::try_join_all(submissions).await?;
        }
        std::fs::write(&marker, b"")?;
    }
    loop {
        // Timers and retries are counted as open, so this returns once the work is done. A
        // store outage (a database restarting) is waited out, as the engine waits it out.
        let finished = async {
            runtime.wait_until_all_terminal(Duration::from_secs(3_600)).await?;
            all_done(&runtime, work.orders).await
        };
        match finished.await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => eprintln!("cannot tell whether the work is done ({e}); asking again"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime.shutdown().await?;
    Ok(())
}

/// Every commit the file lists (lines `run` printed) must be in the store.
async fn verify(dir: &Path, acks: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let store = open(dir).await?;
    let mut problems = Vec::new();
    for line in std::fs::read_to_string(acks)?.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["instance", id, version] => {
                let (id, version): (Uuid, u64) = (id.parse()?, version.parse()?);
                match store.instance(id).await? {
                    Some(r) if r.version >= version => {}
                    found => problems.push(format!(
                        "acked version {version} of instance {id} is lost: the store has {:?}",
                        found.map(|r| r.version)
                    )),
                }
            }
            ["inbox", consumer, message] if !store.processed(consumer.parse()?, message.parse()?).await? => {
                problems.push(format!("acked message {message} of consumer {consumer} is not in its inbox"));
            }
            ["consumed", subscription, seq] => {
                let seq: u64 = seq.parse()?;
                let left = store.queued(subscription, seq.checked_sub(1), 1).await?;
                if left.first().is_some_and(|m| m.seq == seq) {
                    problems
                        .push(format!("acked consumption of {subscription}'s entry {seq} is lost: it is queued again"));
                }
            }
            // The last line may have been cut short by the kill.
            _ => {}
        }
    }
    Ok(problems)
}

async fn record<T: serde::de::DeserializeOwned>(store: &dyn Store, scope: &str, key: &str) -> Option<T> {
    serde_json::from_slice(&store.entity(scope, key).await.ok()??.value).ok()
}

/// What `check` found: one line per order and product (the same for two runs of one seed),
/// and the broken invariants.
#[derive(Default)]
struct Audit {
    outcomes: Vec<String>,
    problems: Vec<String>,
}

async fn check(dir: &Path, work: &Workload) -> Result<Audit, Box<dyn std::error::Error>> {
    let store = open(dir).await?;
    let store = &*store;
    let mut audit = Audit::default();
    let mut by_order = BTreeMap::new();
    for kind in StatusKind::ALL {
        for id in store.instances_with_status(kind, usize::MAX).await? {
            let Some(instance) = store.instance(id).await? else { continue };
            let saga: OrderSaga = serde_json::from_slice(&instance.state)?;
            by_order.insert(saga.order_id, (instance.status, saga));
        }
    }
    let mut reserved = 0u64;
    for n in 0..work.orders {
        let order = work.order(n);
        let id = order.order_id;
        let Some((status, saga)) = by_order.remove(&id) else {
            audit.problems.push(format!("order {n} ({id}) has no saga instance"));
            continue;
        };
        let reservation = record::<Reservation>(store, "catalog", &reservation_key(id)).await;
        let charged = record::<Charge>(store, "payment.charge", &format!("charge/{id}")).await.is_some();
        let shipped = record::<u32>(store, "shipping.ship", &format!("shipment/{id}")).await.is_some();
        // The carrier counts every ship request it applies: one, or two where it was busy the
        // first time. A request applied twice shows here.
        let requests = record::<u32>(store, "shipping.ship", &format!("attempts/{id}")).await.unwrap_or(0);
        let held = reservation.as_ref().is_some_and(|r| !r.released);
        if held {
            reserved += reservation.iter().flat_map(|r| &r.items).map(|i| u64::from(i.units)).sum::<u64>();
        }
        let declined = order.buyer.starts_with("declined-");
        let expected = match (&status, declined) {
            (SagaStatus::Completed, false) => {
                let requests_expected = if id.as_u128() % 5 == 0 { 2 } else { 1 };
                (held && charged && shipped && requests == requests_expected)
                    .then_some(())
                    .ok_or(format!("held {held}, charged {charged}, shipped {shipped}, {requests} ship requests"))
            }
            (SagaStatus::Compensated, true) => (!held && !charged && !shipped && requests == 0)
                .then_some(())
                .ok_or(format!("held {held}, charged {charged}, shipped {shipped}, {requests} ship requests")),
            (status, _) => Err(format!("ended {status:?} with a buyer {}", order.buyer)),
        };
        if let Err(what) = expected {
            audit.problems.push(format!("order {n} ({id}): {what}"));
        }
        audit.outcomes.push(format!(
            "order {n} {status:?} failure={:?} reservation={} charged={charged} shipped={shipped} ship_requests={requests}",
            saga.failure,
            match reservation {
                None => "none",
                Some(r) if r.released => "released",
                Some(_) => "held",
            },
        ));
    }
    for (id, (status, _)) in by_order {
        audit.problems.push(format!("instance for unknown order {id} ({status:?})"));
    }
    let mut on_shelves = 0u64;
    for p in 1..=PRODUCTS {
        let units = record::<u32>(store, "catalog", &stock_key(p)).await.unwrap_or(0);
        on_shelves += u64::from(units);
        audit.outcomes.push(format!("product {p} {units} on the shelves"));
    }
    let delivered = u64::from(PRODUCTS * UNITS);
    if on_shelves + reserved != delivered {
        audit.problems.push(format!("stock: {on_shelves} on shelves + {reserved} reserved != {delivered} delivered"));
    }
    if !store.outbox(None, 10).await?.is_empty() {
        audit.problems.push("the outbox is not empty".into());
    }
    if let Some(t) = store.next_timer(Timestamp(0)).await? {
        audit.problems.push(format!("a timer is left: {t:?}"));
    }
    // The local bus's queues live in the store; on a broker they are empty here.
    for subscription in std::fs::read_to_string(dir.join(SUBSCRIPTIONS))?.lines() {
        if let Some(left) = store.queued(subscription, None, 1).await?.first() {
            audit.problems.push(format!("{subscription}'s queue still holds {}", left.envelope.name));
        }
    }
    if let Some(dead) = store.queue_dead_letters(None, 1).await?.first() {
        audit.problems.push(format!("a message was dead-lettered: {} ({})", dead.envelope.name, dead.reason));
    }
    Ok(audit)
}

#[tokio::main]
async fn main() -> ExitCode {
    // With the `failpoints` feature, `FAILPOINTS=name=...` arms the engine's crash points.
    #[cfg(feature = "failpoints")]
    let _armed = sagaflow::crash_points::arm_from_env();
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        [_, "run", dir, bus, orders, seed] => match Workload::parse(orders, seed) {
            Ok(work) => run(Path::new(dir), bus, &work).await.map(|()| Audit::default()),
            Err(e) => Err(e),
        },
        [_, "check", dir, orders, seed] => match Workload::parse(orders, seed) {
            Ok(work) => check(Path::new(dir), &work).await,
            Err(e) => Err(e),
        },
        [_, "verify", dir, acks] => {
            verify(Path::new(dir), Path::new(acks)).await.map(|problems| Audit { problems, ..Audit::default() })
        }
        _ => Err("usage: crash_worker run DIR BUS ORDERS SEED | check DIR ORDERS SEED | verify DIR ACKS".into()),
    };
    match result {
        Ok(audit) => {
            for line in &audit.outcomes {
                println!("{line}");
            }
            for p in &audit.problems {
                eprintln!("{p}");
            }
            if audit.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
