//! The jobs a child process runs: one configuration (and its baseline), a scale run, or one
//! half of the recovery run. Each returns an [`Outcome`] that the parent prints.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sagaflow::bus::Bus;
use sagaflow::clock::ManualClock;
use sagaflow::engine::Retention;
use sagaflow::message::Timestamp;
use sagaflow::prelude::*;
use sagaflow::store::{Intercepted, KvStore, Store};
use serde::{Deserialize, Serialize};

use crate::baseline::{self, FlushPattern, Shape, ShapeKv};
use crate::domain::ReserveStock;
use crate::probe::{Latency, Probe, ProbeBus, ProbeCommits, Release, cpu_time, dir_bytes, proc_status_mib};
use crate::saga::{HoldStock, parked_order, register};
use crate::workload::order;

/// How many publishes run concurrently (the publisher is not what is measured).
const PUBLISHERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Config {
    Memory,
    SledNone,
    SledGroup,
    /// sled `Group` with the durable local bus: the embedded default.
    SledGroupLocal,
    /// The embedded default with retention deleting finished sagas a second after they end
    /// (and the participants' inbox entries a second after they are written).
    SledGroupLocalRetained,
    SledImmediate,
    /// RabbitMQ with the memory store: the broker path alone, as its baseline measures it.
    RabbitMq,
    /// RabbitMQ with sled `Group`: the durable deployment.
    RabbitMqSled,
    /// `processes` runtime processes (each with its own connection pool and claims) on one
    /// PostgreSQL database, on the PostgreSQL bus or on RabbitMQ (see `postgres.rs`).
    Postgres {
        processes: u8,
        rabbitmq: bool,
    },
}

impl Config {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "memory" => Config::Memory,
            "sled-none" => Config::SledNone,
            "sled-group" => Config::SledGroup,
            "sled-group-local" => Config::SledGroupLocal,
            "sled-group-local-retained" => Config::SledGroupLocalRetained,
            "sled-immediate" => Config::SledImmediate,
            "rabbitmq" => Config::RabbitMq,
            "rabbitmq-sled" => Config::RabbitMqSled,
            "postgres" => Config::Postgres { processes: 1, rabbitmq: false },
            "postgres-3" => Config::Postgres { processes: 3, rabbitmq: false },
            "postgres-rabbitmq" => Config::Postgres { processes: 1, rabbitmq: true },
            "postgres-rabbitmq-3" => Config::Postgres { processes: 3, rabbitmq: true },
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Config::Memory => "memory store, in-memory bus",
            Config::SledNone => "sled None, in-memory bus",
            Config::SledGroup => "sled Group, in-memory bus",
            Config::SledGroupLocal => "sled Group, durable local bus",
            Config::SledGroupLocalRetained => "sled Group, durable local bus, retention on",
            Config::SledImmediate => "sled Immediate, in-memory bus",
            Config::RabbitMq => "memory store, RabbitMQ bus",
            Config::RabbitMqSled => "sled Group, RabbitMQ bus",
            Config::Postgres { processes: 1, rabbitmq: false } => "PostgreSQL store and bus, 1 process",
            Config::Postgres { rabbitmq: false, .. } => "PostgreSQL store and bus, 3 processes",
            Config::Postgres { processes: 1, rabbitmq: true } => "PostgreSQL store, RabbitMQ bus, 1 process",
            Config::Postgres { rabbitmq: true, .. } => "PostgreSQL store, RabbitMQ bus, 3 processes",
        }
    }

    fn durability(self) -> Option<Durability> {
        match self {
            Config::Memory | Config::RabbitMq | Config::Postgres { .. } => None,
            Config::SledNone => Some(Durability::None),
            Config::SledImmediate => Some(Durability::Immediate),
            Config::SledGroup | Config::SledGroupLocal | Config::SledGroupLocalRetained | Config::RabbitMqSled => {
                Some(Durability::default())
            }
        }
    }
}

/// What a child is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Job {
    /// The order workload on one configuration; `rate` paces it (sagas/s) instead of pushing.
    /// `observed`: with tracing to OpenTelemetry and metrics to a recorder (see `observed.rs`).
    Workload { config: Config, sagas: u64, in_flight: usize, rate: Option<f64>, baseline: bool, observed: bool },
    /// Up to `parked` sagas left in flight (parking stops after `park_budget_s`), then the
    /// order workload on sled `Group`.
    Scale { parked: u64, park_budget_s: f64, sagas: u64, in_flight: usize },
    /// Leaves `sagas` order sagas in flight in `dir`, their first command still in the outbox,
    /// on a clock frozen at `clock_ms`.
    RecoverySetup { dir: PathBuf, sagas: u64, clock_ms: u64 },
    /// Reopens `dir` (clock still frozen at `clock_ms`) and times until every one of `sagas`
    /// moved a step.
    Recovery { dir: PathBuf, sagas: u64, clock_ms: u64 },
    /// `sagas` order sagas on the embedded default with retention on, memory and disk sampled
    /// as they run: see `soak.rs`.
    Soak { sagas: u64, in_flight: usize },
    /// One more runtime process of a PostgreSQL row, on the driver's database `database`
    /// (and RabbitMQ `namespace`, if on RabbitMQ): see `postgres.rs`.
    PostgresReplica { database: String, namespace: Option<String>, sagas: u64 },
}

/// A baseline's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineOutcome {
    pub name: String,
    /// What the rate counts: "commits" or "messages".
    pub unit: String,
    pub units: u64,
    pub elapsed_s: f64,
    /// CPU time of the process while the baseline ran (every thread).
    pub cpu_s: f64,
    pub rate: f64,
    /// The configuration's rate in the same unit.
    pub config_rate: f64,
    pub ratio: f64,
}

/// What a job measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub label: String,
    pub kind: String,
    pub sagas: u64,
    pub in_flight: usize,
    pub rate_target: Option<f64>,
    pub elapsed_s: f64,
    pub sagas_per_s: f64,
    pub commits: u64,
    pub commits_per_s: f64,
    pub transitions: u64,
    pub transitions_per_s: f64,
    pub refused: u64,
    pub messages: u64,
    pub messages_per_s: f64,
    pub payload_bytes_per_message: f64,
    pub latency: Option<Latency>,
    pub peak_rss_mib: f64,
    pub cpu_s_per_1k: f64,
    pub cpu_s: f64,
    pub completed: u64,
    pub compensated: u64,
    pub failed: u64,
    pub bytes_per_commit: Option<f64>,
    pub baseline: Option<BaselineOutcome>,
    /// Scale: sagas parked in flight, how long parking took, memory and disk after it.
    pub parked: Option<u64>,
    pub park_s: Option<f64>,
    pub rss_after_park_mib: Option<f64>,
    pub store_bytes: Option<u64>,
    /// Recovery: open, build (outbox drained), every saga moved a step (from the open).
    pub open_s: Option<f64>,
    pub build_s: Option<f64>,
    pub recovered_s: Option<f64>,
    pub pending_outbox: Option<u64>,
    pub pending_timers: Option<u64>,
    /// Soak: the rate's first and last tenth, memory and disk over the run.
    pub soak: Option<crate::soak::SoakFigures>,
    pub notes: Vec<String>,
}

pub fn run(job: Job) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match job {
        Job::Workload { config, sagas, in_flight, rate, baseline, observed } => {
            let mut outcome = rt.block_on(workload(config, sagas, in_flight, rate));
            if observed {
                outcome.label.push_str(", traced and metered");
            }
            // The PostgreSQL rows replay their own recorded commits (`workload` did it).
            if baseline && outcome.baseline.is_none() {
                outcome.baseline = Some(run_baseline(&rt, config, &mut outcome, in_flight));
            }
            outcome
        }
        Job::Scale { parked, park_budget_s, sagas, in_flight } => {
            rt.block_on(scale(parked, Duration::from_secs_f64(park_budget_s.max(1.0)), sagas, in_flight))
        }
        Job::Soak { sagas, in_flight } => rt.block_on(crate::soak::soak(sagas, in_flight)),
        Job::RecoverySetup { dir, sagas, clock_ms } => rt.block_on(recovery_setup(dir, sagas, clock_ms)),
        Job::Recovery { dir, sagas, clock_ms } => rt.block_on(recovery(dir, sagas, clock_ms)),
        #[cfg(feature = "postgres")]
        Job::PostgresReplica { database, namespace, sagas } => {
            rt.block_on(crate::postgres::replica(database, namespace, sagas))
        }
        #[cfg(not(feature = "postgres"))]
        Job::PostgresReplica { .. } => panic!("the PostgreSQL configurations need --features postgres"),
    }
}

pub(crate) fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("sagaflow-bench-{tag}-")).tempdir().expect("a temporary directory")
}

/// sled's cache for every store of the benchmark: the store's default (64 MiB) unless
/// `SAGA_BENCH_SLED_CACHE_MB` says otherwise (an experiment knob, not used for the table).
fn sled_cache_bytes() -> u64 {
    std::env::var("SAGA_BENCH_SLED_CACHE_MB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(64) * 1024 * 1024
}

pub(crate) fn sled(dir: &std::path::Path, durability: Durability) -> SledStore {
    let options = SledOptions::default().durability(durability).cache_bytes(sled_cache_bytes());
    SledStore::open_with(dir, options).expect("open the sled store")
}

pub(crate) async fn build(store: impl Store, bus: impl Bus, probe: &Arc<Probe>) -> SagaRuntime {
    build_with(store, bus, probe, None, false).await
}

/// How long the retention rows keep finished sagas and inbox entries.
const RETAINED_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// How long they keep the tombstones of deleted sagas: short, so that a run of a few minutes
/// reaches the steady state in which tombstones go as fast as they come (with the default
/// week, a service holds a week of them: its rate times the window).
const TOMBSTONES_FOR: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) async fn build_with(
    store: impl Store,
    bus: impl Bus,
    probe: &Arc<Probe>,
    clock: Option<ManualClock>,
    retained: bool,
) -> SagaRuntime {
    // The parked saga's warehouse: it takes every hold request and never answers (a command
    // that nothing takes would be refused by the bus).
    let mut warehouse = bus.subscribe("bench.warehouse", &[HoldStock::NAME]).await.expect("subscribe the warehouse");
    tokio::spawn(async move {
        while let Some(delivery) = warehouse.next().await {
            let _ = delivery.ack().await;
        }
    });
    let mut builder = SagaRuntime::builder().store(Intercepted::new(store, ProbeCommits(probe.clone()))).bus(bus);
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    if retained {
        builder = builder
            .retention::<crate::domain::OrderSaga>(Retention::keep(RETAINED_FOR).tombstone_for(TOMBSTONES_FOR))
            .inbox_horizon(RETAINED_FOR)
            .retention_every(RETAINED_FOR / 4);
    }
    register(builder).build().await.expect("build the runtime")
}

/// The RabbitMQ names of this run (a PostgreSQL row's replicas are handed the driver's).
#[cfg(feature = "rabbitmq")]
pub(crate) fn rabbit_namespace() -> String {
    format!("sagaflow-bench-{}", std::process::id())
}

/// A RabbitMQ bus on `SAGA_TEST_AMQP_URL` with its names under `namespace`.
#[cfg(feature = "rabbitmq")]
pub(crate) async fn rabbit_bus(namespace: &str) -> sagaflow::bus::RabbitMqBus {
    use sagaflow::bus::{RabbitMqBus, RabbitMqOptions};
    let url = std::env::var("SAGA_TEST_AMQP_URL").expect("SAGA_TEST_AMQP_URL is set");
    RabbitMqBus::connect(RabbitMqOptions::new(url).namespace(namespace)).await.expect("connect to RabbitMQ")
}

/// Pushes order sagas `0..sagas` (or paces them at `rate`/s) and waits until all finished.
/// Returns the elapsed time from the first publish to the last durable finish, and the CPU
/// time the process spent meanwhile.
pub(crate) async fn drive(
    runtime: &Arc<SagaRuntime>,
    probe: &Arc<Probe>,
    sagas: u64,
    rate: Option<f64>,
) -> (Duration, Duration) {
    let cpu = cpu_time();
    let t0 = Instant::now();
    match rate {
        None => {
            futures::stream::iter(0..sagas)
                .for_each_concurrent(PUBLISHERS, |i| async move {
                    probe.permits.acquire().await.expect("the permits stay open").forget();
                    probe.started(i as usize);
                    runtime.publish(&order(i as u32)).await.expect("publish an order");
                })
                .await
        }
        Some(rate) => {
            for i in 0..sagas {
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                probe.permits.acquire().await.expect("the permits stay open").forget();
                probe.started(i as usize);
                runtime.publish(&order(i as u32)).await.expect("publish an order");
            }
        }
    }
    wait_for(|| probe.done() >= sagas, sagas, "sagas to finish", || probe.done()).await;
    let elapsed = probe.last_event().saturating_sub(probe.since_epoch(t0));
    (elapsed, cpu_time().saturating_sub(cpu))
}

/// Polls `done` every millisecond; gives up (panics, naming what it waited for) when nothing
/// moved for 60 s.
async fn wait_for(done: impl Fn() -> bool, total: u64, what: &str, count: impl Fn() -> u64) {
    let (mut last, mut last_change) = (count(), Instant::now());
    while !done() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = count();
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(60) {
            panic!("stuck waiting for {what}: {now} of {total} after 60 s without progress");
        }
    }
}

pub(crate) fn fill(outcome: &mut Outcome, probe: &Probe, sagas: u64, elapsed: Duration, cpu: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    outcome.sagas = sagas;
    outcome.elapsed_s = secs;
    outcome.sagas_per_s = sagas as f64 / secs;
    outcome.commits = load(&probe.commits);
    outcome.commits_per_s = outcome.commits as f64 / secs;
    outcome.transitions = load(&probe.transitions);
    outcome.transitions_per_s = outcome.transitions as f64 / secs;
    outcome.refused = load(&probe.refused);
    outcome.messages = load(&probe.publishes);
    outcome.messages_per_s = outcome.messages as f64 / secs;
    outcome.payload_bytes_per_message = load(&probe.publish_bytes) as f64 / (outcome.messages.max(1)) as f64;
    outcome.latency = Latency::of(&probe.latencies());
    outcome.cpu_s = cpu.as_secs_f64();
    outcome.cpu_s_per_1k = cpu.as_secs_f64() / sagas.max(1) as f64 * 1000.0;
    outcome.completed = load(&probe.completed);
    outcome.compensated = load(&probe.compensated);
    outcome.failed = load(&probe.failed);
    outcome.peak_rss_mib = proc_status_mib("VmHWM");
}

async fn workload(config: Config, sagas: u64, in_flight: usize, rate: Option<f64>) -> Outcome {
    let probe = Probe::new(sagas as usize, if rate.is_some() { usize::MAX >> 4 } else { in_flight }, Release::Terminal);
    let dir = temp_dir("store");
    #[cfg(feature = "postgres")]
    if let Config::Postgres { .. } = config {
        return crate::postgres::workload(config, &probe, sagas, in_flight).await;
    }
    let runtime = match config {
        Config::Memory => build(MemoryStore::new(), ProbeBus::new(InMemoryBus::new(), probe.clone()), &probe).await,
        Config::SledNone | Config::SledGroup | Config::SledImmediate => {
            let store = sled(dir.path(), config.durability().unwrap_or_default());
            build(store, ProbeBus::new(InMemoryBus::new(), probe.clone()), &probe).await
        }
        Config::SledGroupLocal | Config::SledGroupLocalRetained => {
            let store: Arc<dyn Store> = Arc::new(sled(dir.path(), config.durability().unwrap_or_default()));
            let bus = ProbeBus::new(LocalBus::open(store.clone()), probe.clone());
            build_with(store, bus, &probe, None, config == Config::SledGroupLocalRetained).await
        }
        Config::RabbitMq | Config::RabbitMqSled => {
            #[cfg(feature = "rabbitmq")]
            {
                let bus = ProbeBus::new(rabbit_bus(&rabbit_namespace()).await, probe.clone());
                match config.durability() {
                    Some(d) => build(sled(dir.path(), d), bus, &probe).await,
                    None => build(MemoryStore::new(), bus, &probe).await,
                }
            }
            #[cfg(not(feature = "rabbitmq"))]
            panic!("the RabbitMQ configuration needs --features rabbitmq")
        }
        Config::Postgres { .. } => panic!("the PostgreSQL configurations need --features postgres"),
    };
    let runtime = Arc::new(runtime);
    let (elapsed, cpu) = drive(&runtime, &probe, sagas, rate).await;
    let mut outcome = Outcome {
        label: match rate {
            Some(r) => format!("{} at {r:.0} sagas/s", config.label()),
            None => config.label().to_owned(),
        },
        kind: "workload".into(),
        in_flight: if rate.is_some() { 0 } else { in_flight },
        rate_target: rate,
        ..Outcome::default()
    };
    fill(&mut outcome, &probe, sagas, elapsed, cpu);
    if let Ok(runtime) = Arc::try_unwrap(runtime) {
        runtime.shutdown().await.expect("shut the runtime down");
    }
    #[cfg(feature = "rabbitmq")]
    if matches!(config, Config::RabbitMq | Config::RabbitMqSled) {
        clean_rabbit().await;
    }
    outcome
}

/// Deletes the queues and exchanges of the RabbitMQ configuration.
#[cfg(feature = "rabbitmq")]
pub(crate) async fn clean_rabbit() {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else { return };
    let Ok(connection) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else { return };
    let ns = rabbit_namespace();
    let subscriptions =
        ["saga.order-fulfilment", "saga.bench-parked-order", "catalog.reserve", "catalog.release", "payment.charge"];
    for sub in subscriptions.iter().chain(&["shipping.ship"]) {
        for queue in [format!("{ns}.{sub}"), format!("{ns}.{sub}.dead")] {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
    }
    for exchange in [format!("{ns}.sagaflow"), format!("{ns}.sagaflow.dead")] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = connection.close(200, "benchmark done".into()).await;
}

/// Records the shape of every commit of a small run on a [`ShapeKv`] memory store.
async fn commit_shapes(sagas: u64) -> Vec<Shape> {
    let kv = ShapeKv::default();
    let shapes = kv.shapes();
    let store = KvStore::on(kv).expect("an empty ShapeKv opens");
    let probe = Probe::new(sagas as usize, 1024, Release::Terminal);
    let runtime = Arc::new(build(store, InMemoryBus::new(), &probe).await);
    drive(&runtime, &probe, sagas, None).await;
    if let Ok(runtime) = Arc::try_unwrap(runtime) {
        runtime.shutdown().await.expect("shut the runtime down");
    }
    std::mem::take(&mut *shapes.lock().unwrap_or_else(|e| e.into_inner()))
}

fn run_baseline(
    rt: &tokio::runtime::Runtime,
    config: Config,
    outcome: &mut Outcome,
    in_flight: usize,
) -> BaselineOutcome {
    let cpu = cpu_time();
    let (name, unit, units, elapsed, config_rate) = match config {
        Config::Memory => {
            let hops = (outcome.messages as f64 / outcome.sagas.max(1) as f64).round() as u64;
            let elapsed = rt.block_on(baseline::channel_hops(outcome.sagas, hops, in_flight));
            let name = format!("tokio mpsc hops ({hops} per saga)");
            (name, "messages", outcome.sagas * hops, elapsed, outcome.messages_per_s)
        }
        // The local bus row is measured against the in-memory row's baseline (the same commits
        // without the queue writes), so the two rows compare directly.
        Config::SledNone
        | Config::SledGroup
        | Config::SledGroupLocal
        | Config::SledGroupLocalRetained
        | Config::SledImmediate => {
            let shapes = rt.block_on(commit_shapes(500));
            let bytes = shapes.iter().map(Shape::bytes).sum::<u64>() as f64 / shapes.len().max(1) as f64;
            outcome.bytes_per_commit = Some(bytes);
            let (pattern, name) = match config.durability() {
                Some(Durability::Immediate) => (FlushPattern::PerCommit, "raw sled, flush per commit"),
                Some(Durability::Group { max_delay, max_batch }) => {
                    (FlushPattern::Group { max_delay, max_batch }, "raw sled, grouped flush")
                }
                _ => (FlushPattern::None, "raw sled, no flush"),
            };
            let dir = temp_dir("raw-sled");
            let elapsed = baseline::raw_sled(dir.path(), &shapes, outcome.commits, pattern);
            (name.to_owned(), "commits", outcome.commits, elapsed, outcome.commits_per_s)
        }
        Config::RabbitMq | Config::RabbitMqSled => {
            #[cfg(feature = "rabbitmq")]
            {
                let url = std::env::var("SAGA_TEST_AMQP_URL").expect("SAGA_TEST_AMQP_URL is set");
                let payload = outcome.payload_bytes_per_message.round() as usize;
                let elapsed = rt.block_on(baseline::lapin_round_trips(&url, outcome.messages, payload, 4));
                let name = "raw lapin, confirm + ack".to_owned();
                (name, "messages", outcome.messages, elapsed, outcome.messages_per_s)
            }
            #[cfg(not(feature = "rabbitmq"))]
            unreachable!("the RabbitMQ configuration needs --features rabbitmq")
        }
        Config::Postgres { .. } => unreachable!("the PostgreSQL rows measure their baseline with their run"),
    };
    let cpu = cpu_time().saturating_sub(cpu);
    let rate = units as f64 / elapsed.as_secs_f64().max(1e-9);
    BaselineOutcome {
        cpu_s: cpu.as_secs_f64(),
        name,
        unit: unit.to_owned(),
        units,
        elapsed_s: elapsed.as_secs_f64(),
        rate,
        config_rate,
        ratio: config_rate / rate.max(1e-9),
    }
}

async fn scale(wanted: u64, budget: Duration, sagas: u64, in_flight: usize) -> Outcome {
    const PARKING_IN_FLIGHT: usize = 4096;
    let probe = Probe::new(sagas as usize, PARKING_IN_FLIGHT, Release::ParkedStarted);
    let dir = temp_dir("scale");
    let store = sled(dir.path(), Durability::default());
    let runtime = Arc::new(build(store, ProbeBus::new(InMemoryBus::new(), probe.clone()), &probe).await);
    let t0 = Instant::now();
    let deadline = t0 + budget;
    let published = std::sync::atomic::AtomicU64::new(0);
    let (runtime_ref, probe_ref, published_ref) = (&runtime, &probe, &published);
    futures::stream::iter(0..wanted)
        .for_each_concurrent(PUBLISHERS, |i| async move {
            probe_ref.permits.acquire().await.expect("the permits stay open").forget();
            if Instant::now() >= deadline {
                probe_ref.permits.add_permits(1);
                return;
            }
            published_ref.fetch_add(1, Ordering::SeqCst);
            runtime_ref.publish(&parked_order(i)).await.expect("publish a parked order");
        })
        .await;
    let parked = published.load(Ordering::SeqCst);
    let parked_count = || probe.parked.load(Ordering::Relaxed);
    wait_for(|| parked_count() >= parked, parked, "parked sagas to start", parked_count).await;
    let park = t0.elapsed();
    // Every parking permit is back: keep `in_flight` of them for the workload.
    probe.release_on(Release::Terminal);
    let excess = u32::try_from(PARKING_IN_FLIGHT.saturating_sub(in_flight)).unwrap_or(0);
    if excess > 0 {
        probe.permits.acquire_many(excess).await.expect("the permits stay open").forget();
    }
    let rss_after_park = proc_status_mib("VmRSS");
    probe.reset_counts();
    let (elapsed, cpu) = drive(&runtime, &probe, sagas, None).await;
    let mut outcome = Outcome {
        label: format!("sled Group, {} sagas parked in flight", crate::report::num(parked as f64)),
        kind: "scale".into(),
        in_flight,
        parked: Some(parked),
        park_s: Some(park.as_secs_f64()),
        rss_after_park_mib: Some(rss_after_park),
        ..Outcome::default()
    };
    fill(&mut outcome, &probe, sagas, elapsed, cpu);
    if parked < wanted {
        outcome.notes.push(format!(
            "parking stopped at {} of {} sagas when its time budget ({:.0} s) ran out",
            crate::report::num(parked as f64),
            crate::report::num(wanted as f64),
            budget.as_secs_f64()
        ));
    }
    if let Ok(runtime) = Arc::try_unwrap(runtime) {
        runtime.shutdown().await.expect("shut the runtime down");
    }
    outcome.store_bytes = Some(dir_bytes(dir.path()));
    outcome
}

async fn recovery_setup(dir: PathBuf, sagas: u64, clock_ms: u64) -> Outcome {
    let probe = Probe::new(sagas as usize, 4096, Release::OrderStarted);
    // A frozen clock, shared with the recovery run: the step timeouts are pending but never
    // due, so the measurement is the backlog itself, not timeouts firing under it.
    let clock = ManualClock::starting_at(clock_ms);
    let store = sled(&dir, Durability::default());
    let bus = ProbeBus::new(InMemoryBus::new(), probe.clone()).refusing::<ReserveStock>();
    let runtime = Arc::new(build_with(store, bus, &probe, Some(clock), false).await);
    let t0 = Instant::now();
    let (runtime_ref, probe_ref) = (&runtime, &probe);
    futures::stream::iter(0..sagas)
        .for_each_concurrent(PUBLISHERS, |i| async move {
            probe_ref.permits.acquire().await.expect("the permits stay open").forget();
            runtime_ref.publish(&order(i as u32)).await.expect("publish an order");
        })
        .await;
    let started = || probe.order_started.load(Ordering::Relaxed);
    wait_for(|| started() >= sagas, sagas, "order sagas to start", started).await;
    let store = runtime.store();
    store.flush().await.expect("flush the store");
    let outbox = store.outbox(None, usize::MAX).await.expect("read the outbox").len() as u64;
    let timers = store.timers_due(Timestamp(u64::MAX), None, usize::MAX).await.expect("read the timers").len() as u64;
    drop(store);
    let setup = t0.elapsed();
    if let Ok(runtime) = Arc::try_unwrap(runtime) {
        // As a crash would: the relay never published the first commands.
        runtime.kill().await;
    }
    Outcome {
        label: format!("recovery setup: {} sagas in flight", crate::report::num(sagas as f64)),
        kind: "recovery-setup".into(),
        sagas,
        elapsed_s: setup.as_secs_f64(),
        pending_outbox: Some(outbox),
        pending_timers: Some(timers),
        peak_rss_mib: proc_status_mib("VmHWM"),
        ..Outcome::default()
    }
}

async fn recovery(dir: PathBuf, sagas: u64, clock_ms: u64) -> Outcome {
    let probe = Probe::new(sagas as usize, 1, Release::Terminal);
    let cpu = cpu_time();
    let t0 = Instant::now();
    let store = sled(&dir, Durability::default());
    let open = t0.elapsed();
    let bus = ProbeBus::new(InMemoryBus::new(), probe.clone());
    let runtime = build_with(store, bus, &probe, Some(ManualClock::starting_at(clock_ms)), false).await;
    let built = t0.elapsed();
    let reserved = || probe.reserved.load(Ordering::Relaxed);
    wait_for(|| reserved() >= sagas, sagas, "the stranded commands to be handled", reserved).await;
    let handled = t0.elapsed();
    let moved = || probe.moved.load(Ordering::Relaxed);
    wait_for(|| moved() >= sagas, sagas, "recovered sagas to move a step", moved).await;
    let recovered = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu);
    let mut outcome = Outcome {
        label: format!("recovery: {} sagas in flight", crate::report::num(sagas as f64)),
        kind: "recovery".into(),
        sagas,
        elapsed_s: recovered.as_secs_f64(),
        sagas_per_s: sagas as f64 / recovered.as_secs_f64().max(1e-9),
        commits: probe.commits.load(Ordering::Relaxed),
        cpu_s_per_1k: cpu.as_secs_f64() / sagas.max(1) as f64 * 1000.0,
        open_s: Some(open.as_secs_f64()),
        build_s: Some(built.as_secs_f64()),
        recovered_s: Some(recovered.as_secs_f64()),
        peak_rss_mib: proc_status_mib("VmHWM"),
        ..Outcome::default()
    };
    outcome.notes.push(format!(
        "every stranded command handled at {:.2} s; every saga moved a step at {:.2} s, after {} commits",
        handled.as_secs_f64(),
        recovered.as_secs_f64(),
        outcome.commits
    ));
    runtime.kill().await;
    outcome
}
