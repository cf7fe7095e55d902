//! The order saga across processes: the orchestrator and the catalog, payment and shipping
//! services each run as their own process with their own sled store, talking over RabbitMQ
//! (or NATS JetStream with `--bus nats`). With `--store postgres` (feature `postgres`) every
//! process uses one PostgreSQL database (`DATABASE_URL`), so each service can run as several
//! replicas competing for its messages, over RabbitMQ or, with `--bus postgres`, over queues
//! in the same database. `run.sh` beside this file starts them, pushes orders, kills a process
//! mid-run with SIGKILL, and prints the summary.
//!
//! ```text
//! cargo run --example order_distributed --features rabbitmq -- orchestrator --dir DIR
//! cargo run --example order_distributed --features rabbitmq -- service catalog --dir DIR
//! cargo run --example order_distributed --features rabbitmq -- push --orders 300
//! cargo run --example order_distributed --features rabbitmq -- summary --dir DIR --orders 300
//! DATABASE_URL=postgres://… cargo run --example order_distributed --features rabbitmq,postgres -- \
//!     --store postgres --bus postgres orchestrator --dir DIR --replica 1
//! ```

#[path = "../order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../order_saga/services.rs"]
#[allow(dead_code)]
mod services;
#[path = "../order_saga/workload.rs"]
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sagaflow::bus::{Bus, EventBus, RabbitMqBus, RabbitMqOptions};
use sagaflow::engine::SagaRuntimeBuilder;
use sagaflow::prelude::*;
use sagaflow::store::Store;

use domain::*;
use services::*;
use workload::*;

#[derive(Parser)]
#[command(about = "The order saga across processes on a real broker")]
struct Args {
    /// The broker.
    #[arg(long, value_enum, default_value_t = Broker::Rabbitmq, global = true)]
    bus: Broker,
    /// Where each service keeps its progress: a sled store of its own in DIR, or the one
    /// PostgreSQL database `DATABASE_URL` names, shared by every process.
    #[arg(long, value_enum, default_value_t = StoreKind::Sled, global = true)]
    store: StoreKind,
    #[command(subcommand)]
    role: Role,
}

#[derive(Clone, Copy, ValueEnum)]
enum Broker {
    Rabbitmq,
    Nats,
    /// The PostgreSQL bus: queues in the `--store postgres` database.
    Postgres,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum StoreKind {
    Sled,
    Postgres,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Service {
    Catalog,
    Payment,
    Shipping,
}

#[derive(Subcommand)]
enum Role {
    /// Runs the order saga, writing progress to DIR/orchestrator.status.
    Orchestrator {
        #[arg(long)]
        dir: PathBuf,
        /// Which replica this is (on PostgreSQL); replica 0 writes DIR/orchestrator.status.
        #[arg(long, default_value_t = 0)]
        replica: u32,
    },
    /// Runs one participant service.
    Service {
        #[arg(value_enum)]
        service: Service,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Delivers stock and submits orders.
    Push {
        #[arg(long, default_value_t = 300)]
        orders: u32,
    },
    /// Reads every store (the processes must be stopped) and prints the summary.
    Summary {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        orders: u32,
    },
}

/// The bus `broker` names; the PostgreSQL bus is the default bus of the PostgreSQL `store`.
async fn connect(broker: Broker, store: &dyn Store) -> Result<Arc<dyn Bus>, Box<dyn std::error::Error>> {
    Ok(match broker {
        Broker::Postgres => store.default_bus().ok_or("--bus postgres needs --store postgres")?,
        Broker::Rabbitmq => {
            let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
            Arc::new(RabbitMqBus::connect(RabbitMqOptions::new(url).namespace("order-demo")).await?)
        }
        #[cfg(feature = "nats")]
        Broker::Nats => {
            use sagaflow::bus::{NatsBus, NatsOptions};
            let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
            Arc::new(NatsBus::connect(NatsOptions::new(url).prefix("order-demo").stream("ORDER_DEMO")).await?)
        }
        #[cfg(not(feature = "nats"))]
        Broker::Nats => return Err("this build has no NATS transport: build with --features nats".into()),
    })
}

/// Service `name`'s store: its own sled store in `dir`, or the shared PostgreSQL database.
async fn store(kind: StoreKind, dir: &Path, name: &str) -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
    match kind {
        StoreKind::Sled => {
            std::fs::create_dir_all(dir)?;
            Ok(Arc::new(SledStore::open(dir.join(name))?))
        }
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/order_demo".into());
            Ok(Arc::new(sagaflow::store::PostgresStore::connect(&url).await?))
        }
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres => Err("this build has no PostgreSQL store: build with --features postgres".into()),
    }
}

fn participants(builder: SagaRuntimeBuilder, service: Service) -> SagaRuntimeBuilder {
    match service {
        Service::Catalog => builder.handler(restock).handler(reserve_stock).handler(release_stock),
        Service::Payment => builder.handler(charge_payment),
        Service::Shipping => builder.handler(ship_order),
    }
}

fn service_name(service: Service) -> &'static str {
    match service {
        Service::Catalog => "catalog",
        Service::Payment => "payment",
        Service::Shipping => "shipping",
    }
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
async fn until_stopped(runtime: SagaRuntime, mut tick: impl FnMut() -> Option<tokio::task::JoinHandle<()>>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = every.tick() => { if let Some(t) = tick() { let _ = t.await; } }
        }
    }
    if let Err(e) = runtime.shutdown().await {
        eprintln!("shutdown: {e}");
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    match args.role {
        Role::Orchestrator { dir, replica } => {
            let store = store(args.store, &dir, "orchestrator").await?;
            let bus = connect(args.bus, &*store).await?;
            let runtime = SagaRuntime::builder().store(store).bus(bus).saga::<OrderSaga>().build().await?;
            let status_file = match replica {
                0 => dir.join("orchestrator.status"),
                n => dir.join(format!("orchestrator.{n}.status")),
            };
            let store = runtime.store();
            until_stopped(runtime, || {
                let (store, status_file) = (store.clone(), status_file.clone());
                Some(tokio::spawn(async move {
                    let count = |k| {
                        let store = store.clone();
                        async move { store.instances_with_status(k, usize::MAX).await.map(|v| v.len()).unwrap_or(0) }
                    };
                    let line = format!(
                        "completed={} compensated={} failed={} open={}\n",
                        count(StatusKind::Completed).await,
                        count(StatusKind::Compensated).await,
                        count(StatusKind::Failed).await,
                        count(StatusKind::Running).await + count(StatusKind::Compensating).await,
                    );
                    let _ = std::fs::write(&status_file, line);
                }))
            })
            .await;
            Ok(true)
        }
        Role::Service { service, dir } => {
            let store = store(args.store, &dir, service_name(service)).await?;
            let bus = connect(args.bus, &*store).await?;
            let builder = SagaRuntime::builder().store(store).bus(bus);
            let runtime = participants(builder, service).build().await?;
            until_stopped(runtime, || None).await;
            Ok(true)
        }
        Role::Push { orders } => {
            // Only the PostgreSQL bus needs the store (its queues are there).
            let bus = match args.bus {
                Broker::Postgres => connect(args.bus, &*store(args.store, Path::new("."), "push").await?).await?,
                broker => connect(broker, &sagaflow::store::MemoryStore::new()).await?,
            };
            let events = EventBus::new(bus.clone());
            for product_id in 1..=PRODUCTS {
                events.publish(&StockAdded { product_id, units: UNITS_PER_PRODUCT }).await?;
            }
            for n in 0..orders {
                events.publish(&order(n)).await?;
            }
            bus.close().await?;
            Ok(true)
        }
        Role::Summary { dir, orders } => summary(args.store, &dir, orders).await,
    }
}

async fn record<T: serde::de::DeserializeOwned>(store: &dyn Store, scope: &str, key: &str) -> Option<T> {
    let r = store.entity(scope, key).await.ok()??;
    serde_json::from_slice(&r.value).ok()
}

async fn summary(kind: StoreKind, dir: &Path, orders: u32) -> Result<bool, Box<dyn std::error::Error>> {
    let orchestrator = store(kind, dir, "orchestrator").await?;
    let (catalog, payment, shipping) =
        (store(kind, dir, "catalog").await?, store(kind, dir, "payment").await?, store(kind, dir, "shipping").await?);
    let ids = |k| orchestrator.instances_with_status(k, usize::MAX);
    let (completed, compensated) = (ids(StatusKind::Completed).await?, ids(StatusKind::Compensated).await?);
    let failed = ids(StatusKind::Failed).await?.len();
    let open = ids(StatusKind::Running).await?.len() + ids(StatusKind::Compensating).await?.len();
    let mut on_shelves = 0u64;
    for product in 1..=PRODUCTS {
        on_shelves += u64::from(record::<u32>(&*catalog, "catalog", &stock_key(product)).await.unwrap_or(0));
    }
    let (mut reserved, mut charges, mut shipments) = (0u64, 0usize, 0usize);
    for id in &completed {
        let Some(instance) = orchestrator.instance(*id).await? else { continue };
        let state: OrderSaga = serde_json::from_slice(&instance.state)?;
        if let Some(r) = record::<Reservation>(&*catalog, "catalog", &reservation_key(state.order_id)).await {
            reserved += if r.released { 0 } else { r.items.iter().map(|i| u64::from(i.units)).sum::<u64>() };
        }
        charges += usize::from(
            record::<Charge>(&*payment, "payment.charge", &format!("charge/{}", state.order_id)).await.is_some(),
        );
        shipments += usize::from(
            record::<u32>(&*shipping, "shipping.ship", &format!("shipment/{}", state.order_id)).await.is_some(),
        );
    }
    println!("order saga across processes: {orders} orders, stores in {}", dir.display());
    let books = Books {
        completed: completed.len(),
        compensated: compensated.len(),
        failed,
        open,
        on_shelves,
        reserved,
        charges,
        shipments,
        ..Books::default()
    };
    Ok(books.print(orders))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
