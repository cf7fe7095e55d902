//! The eShop ordering flow as a durable saga on the embedded sled store.
//!
//! `cargo run --example order_saga` submits a few hundred orders; some are rejected for lack
//! of stock, some have their card declined (their stock is released again), every fifth is
//! delayed once by the carrier (the retriable ship step tries again). It prints a summary and
//! checks that every order finished and that the stock, charges and shipments add up.

mod admin;
mod domain;
mod metrics;
mod services;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use sagaflow::prelude::*;
use uuid::Uuid;

use domain::*;
use services::*;
use workload::*;

#[derive(Parser)]
#[command(about = "Run the order saga on a sled store and print a summary")]
struct Args {
    /// How many orders to submit.
    #[arg(long, default_value_t = 300)]
    orders: u32,
    /// Store directory (emptied first); default: target/order-saga-store.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print the saga as a Mermaid flowchart and exit.
    #[arg(long)]
    diagram: bool,
    /// Serve the admin endpoint on this address (127.0.0.1:9180, say) and keep running after
    /// the summary until Ctrl-C; actions need the token in SAGAFLOW_ADMIN_TOKEN (build with
    /// `--features admin`).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Order 3's card processor is unreachable for this many seconds from the start: its
    /// charge is dead-lettered, and after the 30 s payment timeout the order is parked as
    /// failed (the charge may have happened). Retry it once the outage is over.
    #[arg(long, value_name = "SECONDS")]
    payment_outage: Option<u64>,
    /// Serve the runtime's metrics as Prometheus text on http://ADDR/metrics (127.0.0.1:9181,
    /// say) and keep running after the summary until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// The order the payment outage hits.
const OUTAGE_ORDER: u32 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let args = Args::parse();
    if args.diagram {
        print!("{}", OrderSaga::mermaid());
        return ExitCode::SUCCESS;
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let dir = args.store.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/order-saga-store"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let store = SledStore::open(&dir)?;
    if let Some(seconds) = args.payment_outage {
        let until = Instant::now() + Duration::from_secs(seconds);
        let _ = PAYMENT_OUTAGE.set((order(OUTAGE_ORDER).order_id, until));
        println!("the card processor of order {OUTAGE_ORDER} is unreachable for {seconds} s");
    }
    // Before the runtime is built: it registers its metrics with the recorder then.
    let metrics = match args.metrics {
        Some(addr) => Some(metrics::serve(metrics::install()?, addr).await?),
        None => None,
    };
    // On a persistent store the default bus is the durable local bus: a crash loses no message.
    let runtime = register(SagaRuntime::builder().store(store)).build().await?;
    let endpoint = match args.admin {
        Some(addr) => Some(admin::serve(&runtime, addr).await?),
        None => None,
    };

    // A key per submission: a client that retries after a crash or a timeout submits the same
    // message again, and the runtime turns it into one saga.
    for product_id in 1..=PRODUCTS {
        let stock = StockAdded { product_id, units: UNITS_PER_PRODUCT };
        runtime.publish_idempotent(&format!("stock-{product_id}"), &stock).await?;
    }
    runtime.settle().await;

    let started = Instant::now();
    for n in 0..args.orders {
        runtime.publish_idempotent(&format!("order-{n}"), &order(n)).await?;
    }
    // Settled is not finished (a step may wait for its retry timer): wait until every saga
    // ended. If some do not, the summary counts them as still running.
    if let Err(e) = runtime.wait_until_all_terminal(Duration::from_secs(120)).await {
        eprintln!("{e}");
    }
    let elapsed = started.elapsed();
    let ok = summary(&runtime, args.orders, elapsed, &dir).await?;
    // tests/console_browser.rs waits for this line.
    match (&endpoint, &metrics) {
        (Some(_), _) => println!("serving the admin endpoint until Ctrl-C"),
        (None, Some(_)) => println!("serving the metrics until Ctrl-C"),
        (None, None) => {}
    }
    if endpoint.is_some() || metrics.is_some() {
        tokio::signal::ctrl_c().await?;
    }
    if let Some(endpoint) = endpoint {
        admin::stop(endpoint).await?;
    }
    runtime.shutdown().await?;
    Ok(ok)
}

async fn summary(
    runtime: &SagaRuntime,
    orders: u32,
    elapsed: Duration,
    dir: &std::path::Path,
) -> Result<bool, Box<dyn std::error::Error>> {
    let count = |ids: Vec<Uuid>| ids.len();
    let completed = runtime.instances(StatusKind::Completed, orders as usize).await?;
    let compensated = runtime.instances(StatusKind::Compensated, orders as usize).await?;
    let failed = runtime.instances(StatusKind::Failed, orders as usize).await?;
    let open = count(runtime.instances(StatusKind::Running, orders as usize).await?)
        + count(runtime.instances(StatusKind::Compensating, orders as usize).await?);

    let (mut out_of_stock, mut declined) = (0, 0);
    for id in &compensated {
        if let Some(instance) = runtime.instance(*id).await? {
            let state: OrderSaga = instance.state()?;
            match state.failure.as_deref() {
                Some(f) if f.starts_with("out of stock") => out_of_stock += 1,
                _ => declined += 1,
            }
        }
    }

    // The catalog's books must balance: what is on the shelves plus what is reserved for
    // orders that went through equals what was delivered.
    let mut on_shelves = 0u64;
    for product_id in 1..=PRODUCTS {
        on_shelves += u64::from(runtime.record::<u32>("catalog", &stock_key(product_id)).await?.unwrap_or(0));
    }
    let (mut reserved, mut charges, mut shipments) = (0u64, 0usize, 0usize);
    // A failed order waits for an operator with its stock still reserved.
    for id in completed.iter().chain(&failed) {
        let state: OrderSaga = match runtime.instance(*id).await? {
            Some(i) => i.state()?,
            None => continue,
        };
        if let Some(r) = runtime.record::<Reservation>("catalog", &reservation_key(state.order_id)).await? {
            if !r.released {
                reserved += r.items.iter().map(|i| u64::from(i.units)).sum::<u64>();
            }
        }
        if !completed.contains(id) {
            continue;
        }
        charges += usize::from(
            runtime.record::<Charge>("payment.charge", &format!("charge/{}", state.order_id)).await?.is_some(),
        );
        shipments += usize::from(
            runtime.record::<u32>("shipping.ship", &format!("shipment/{}", state.order_id)).await?.is_some(),
        );
    }
    println!(
        "order saga: {orders} orders on the sled store at {}, over the durable local bus (its queues in the store)",
        dir.display()
    );
    let books = Books {
        completed: completed.len(),
        compensated: compensated.len(),
        compensated_detail: format!("  (out of stock {out_of_stock}, payment declined {declined})"),
        failed: failed.len(),
        open,
        on_shelves,
        reserved,
        charges,
        shipments,
    };
    let ok = books.print(orders);
    println!(
        "  took {:.2} s ({:.0} orders/s)",
        elapsed.as_secs_f64(),
        f64::from(orders) / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(ok)
}
