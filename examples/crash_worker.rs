//! The reliability suite's worker: the whole order workload in one process (the order saga
//! and its catalog, payment and shipping participants) on a sled store and RabbitMQ, so that a
//! test can SIGKILL it at any moment, start it again on the same directory, and check that
//! nothing was lost or done twice.
//!
//! ```text
//! crash_worker run DIR NAMESPACE ORDERS     seeds stock and submits orders once (idempotent across
//!                                           restarts), then works until killed or done
//! crash_worker check DIR ORDERS             exits 0 if every order is terminal and the books balance
//! crash_worker verify DIR ACKS              exits 0 if every commit listed in the file ACKS is in the store
//! ```
//!
//! Built with the `failpoints` feature, it also aborts at the crash point `FAILPOINTS` names.
//! With `SAGA_PRINT_ACKS=1`, `run` prints a line on stdout for every commit the moment it is
//! durable (when the engine may ack what caused it): `instance <id> <version>` or
//! `inbox <consumer> <message id>`; `verify` reads such lines back (the power-loss test).

#[path = "order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "order_saga/services.rs"]
#[allow(dead_code)]
mod services;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sagaflow::bus::{Bus, RabbitMqBus, RabbitMqOptions};
use sagaflow::message::{Envelope, JsonCodec};
use sagaflow::prelude::*;
use sagaflow::store::{Commit, CommitHook, Committed, Intercepted, Store, StoreError};
use uuid::Uuid;

use domain::*;
use services::*;

const PRODUCTS: u32 = 8;
const UNITS: u32 = 10_000;

fn order(n: u32) -> OrderSubmitted {
    let buyer = if n % 10 == 3 { format!("declined-{n}") } else { format!("buyer-{n}") };
    let items = vec![OrderItem { product_id: 1 + n % PRODUCTS, units: 1 + n % 3 }];
    OrderSubmitted { order_id: Uuid::from_u128(7_000_000 + u128::from(n)), buyer, items, total_cents: 1_000 }
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
        if let Some((consumer, message)) = commit.inbox {
            lines.push(format!("inbox {consumer} {message}"));
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

async fn run(dir: &Path, namespace: &str, orders: u32) -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SAGA_TEST_AMQP_URL")?;
    let bus = RabbitMqBus::connect(RabbitMqOptions::new(url).namespace(namespace)).await?;
    let store = SledStore::open(dir.join("store"))?;
    let builder = SagaRuntime::builder().bus(bus.clone());
    let builder = match std::env::var("SAGA_PRINT_ACKS").as_deref() {
        Ok("1") => builder.store(Intercepted::new(store, PrintAcks)),
        _ => builder.store(store),
    };
    let runtime = register(builder).build().await?;
    // Submitting again after a crash is harmless: the messages keep their ids, so the catalog's
    // inbox drops a second delivery of the stock, and a second start finds its instance.
    let marker = dir.join("submitted");
    if !marker.exists() {
        let fixed = |n: u128, mut e: Envelope| {
            e.message_id = Uuid::from_u128(n);
            e
        };
        for product_id in 1..=PRODUCTS {
            let e = Envelope::encode(&JsonCodec, &StockAdded { product_id, units: UNITS })?;
            bus.publish(fixed(u128::from(product_id), e)).await?;
        }
        for n in 0..orders {
            bus.publish(fixed(1_000 + u128::from(n), Envelope::encode(&JsonCodec, &order(n))?)).await?;
        }
        std::fs::write(&marker, b"")?;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let store = runtime.store();
        let open = store.instances_with_status(StatusKind::Running, usize::MAX).await?.len()
            + store.instances_with_status(StatusKind::Compensating, usize::MAX).await?.len();
        let done = store.instances_with_status(StatusKind::Completed, usize::MAX).await?.len()
            + store.instances_with_status(StatusKind::Compensated, usize::MAX).await?.len();
        if open == 0 && done >= orders as usize {
            break;
        }
    }
    runtime.shutdown().await?;
    Ok(())
}

/// Every commit the file lists (lines `run` printed) must be in the store.
async fn verify(dir: &Path, acks: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let store = SledStore::open(dir.join("store"))?;
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
            // The last line may have been cut short by the kill.
            _ => {}
        }
    }
    Ok(problems)
}

async fn record<T: serde::de::DeserializeOwned>(store: &dyn Store, scope: &str, key: &str) -> Option<T> {
    serde_json::from_slice(&store.entity(scope, key).await.ok()??.value).ok()
}

async fn check(dir: &Path, orders: u32) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let store = SledStore::open(dir.join("store"))?;
    let mut problems = Vec::new();
    let ids = |k| store.instances_with_status(k, usize::MAX);
    let completed = ids(StatusKind::Completed).await?;
    let compensated = ids(StatusKind::Compensated).await?;
    let open = ids(StatusKind::Running).await?.len() + ids(StatusKind::Compensating).await?.len();
    let failed = ids(StatusKind::Failed).await?.len();
    if open + failed > 0 || completed.len() + compensated.len() != orders as usize {
        problems.push(format!(
            "not all terminal: {} completed, {} compensated, {failed} failed, {open} open of {orders}",
            completed.len(),
            compensated.len()
        ));
    }
    let declined = (0..orders).filter(|n| n % 10 == 3).count();
    if compensated.len() != declined {
        problems.push(format!("{} compensated, expected the {declined} declined", compensated.len()));
    }
    let mut on_shelves = 0u64;
    for p in 1..=PRODUCTS {
        on_shelves += u64::from(record::<u32>(&store, "catalog", &stock_key(p)).await.unwrap_or(0));
    }
    let mut reserved = 0u64;
    for id in &completed {
        let Some(instance) = store.instance(*id).await? else { continue };
        let o: OrderSaga = serde_json::from_slice(&instance.state)?;
        match record::<Reservation>(&store, "catalog", &reservation_key(o.order_id)).await {
            Some(r) if !r.released => reserved += r.items.iter().map(|i| u64::from(i.units)).sum::<u64>(),
            _ => problems.push(format!("order {} completed without a held reservation", o.order_id)),
        }
        if record::<Charge>(&store, "payment.charge", &format!("charge/{}", o.order_id)).await.is_none() {
            problems.push(format!("order {} completed without a charge", o.order_id));
        }
        if record::<u32>(&store, "shipping.ship", &format!("shipment/{}", o.order_id)).await.is_none() {
            problems.push(format!("order {} completed without a shipment", o.order_id));
        }
        // The carrier counts every ship request it applies: one, or two where it was busy the
        // first time. A request applied twice shows here.
        let requests = record::<u32>(&store, "shipping.ship", &format!("attempts/{}", o.order_id)).await.unwrap_or(0);
        let expected = if o.order_id.as_u128() % 5 == 0 { 2 } else { 1 };
        if requests != expected {
            problems.push(format!("order {} had {requests} ship requests applied, expected {expected}", o.order_id));
        }
    }
    let delivered = u64::from(PRODUCTS * UNITS);
    if on_shelves + reserved != delivered {
        problems.push(format!("stock: {on_shelves} on shelves + {reserved} reserved != {delivered} delivered"));
    }
    if !store.outbox(None, 10).await?.is_empty() {
        problems.push("the outbox is not empty".into());
    }
    if let Some(t) = store.next_timer(sagaflow::message::Timestamp(0)).await? {
        problems.push(format!("a timer is left: {t:?}"));
    }
    Ok(problems)
}

#[tokio::main]
async fn main() -> ExitCode {
    // With the `failpoints` feature, `FAILPOINTS=name=...` arms the engine's crash points.
    #[cfg(feature = "failpoints")]
    let _armed = sagaflow::crash_points::arm_from_env();
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 5 => match args[4].parse() {
            Ok(orders) => run(Path::new(&args[2]), &args[3], orders).await.map(|()| Vec::new()),
            Err(e) => Err(e.into()),
        },
        Some("check") if args.len() == 4 => match args[3].parse() {
            Ok(orders) => check(Path::new(&args[2]), orders).await,
            Err(e) => Err(e.into()),
        },
        Some("verify") if args.len() == 4 => verify(Path::new(&args[2]), Path::new(&args[3])).await,
        _ => Err("usage: crash_worker run DIR NAMESPACE ORDERS | check DIR ORDERS | verify DIR ACKS".into()),
    };
    match result {
        Ok(problems) if problems.is_empty() => ExitCode::SUCCESS,
        Ok(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
