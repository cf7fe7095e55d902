//! End-to-end benchmark of the saga engine: throughput, latency, memory, scale and recovery,
//! each configuration measured against a baseline run in the same process (issue 7).
//!
//! ```text
//! cargo bench --bench throughput --features rabbitmq            # the full table (< 20 min)
//! cargo bench --bench throughput -- --smoke                     # seconds, for CI
//! cargo bench --bench throughput -- --config memory --sagas 2000   # one configuration in this
//!                                                               # process (for a profiler)
//! ```
//!
//! The workload is the order saga of `examples/order_saga` (start, reserve stock, charge payment,
//! ship; every tenth payment is declined, so 10% of the sagas compensate) with the participants
//! in `saga.rs`. Each configuration runs in a child process (this binary run again with
//! `--child`), so that its peak RSS is its own. The table goes to stdout and, as Markdown and
//! JSON, to `target/bench/`. See `docs/performance.md`.

#[allow(dead_code)]
#[path = "../../examples/order_saga/domain.rs"]
mod domain;
#[allow(dead_code)]
#[path = "../../examples/order_saga/workload.rs"]
mod workload;

mod baseline;
#[cfg(feature = "postgres")]
mod baseline_postgres;
#[cfg(feature = "otel")]
mod observed;
#[cfg(feature = "postgres")]
mod postgres;
mod probe;
mod report;
mod run;
mod saga;
mod soak;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::Parser;

use run::{Config, Job, Outcome};

#[derive(Parser, Debug)]
#[command(about = "End-to-end benchmark of the saga engine (see docs/performance.md)")]
struct Args {
    /// Tiny sizes (a few seconds), for CI. The default under `cargo test`.
    #[arg(long)]
    smoke: bool,
    /// Full sizes (the default under `cargo bench`).
    #[arg(long)]
    full: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Run one configuration in this process and print its row (memory, sled-none, sled-group,
    /// sled-group-local, sled-immediate, rabbitmq, rabbitmq-sled): for profilers, which do not follow child processes.
    #[arg(long)]
    config: Option<String>,
    /// Sagas for `--config`.
    #[arg(long, default_value_t = 2000)]
    sagas: u64,
    /// Sagas in flight for `--config`.
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// Run only these parts (comma-separated: memory, sled-none, sled-group, sled-group-local, sled-immediate, postgres,
    /// paced, rabbitmq, scale, recovery, retention, soak).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The largest number of sagas parked in flight for the scale run.
    #[arg(long)]
    scale_max: Option<u64>,
    /// Sagas of the soak row (1,000,000 in the full table).
    #[arg(long)]
    soak_sagas: Option<u64>,
    /// A job for a child process (JSON).
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: &'static str,
    pub in_flight: usize,
    pub memory: u64,
    pub sled_none: u64,
    pub sled_group: u64,
    /// How often the two sled Group rows run, interleaved; each reports its median run.
    pub sled_group_rounds: usize,
    pub sled_immediate: u64,
    pub paced_seconds: f64,
    pub rabbitmq: u64,
    pub postgres: u64,
    pub scale_small: u64,
    pub scale_large: u64,
    pub scale_sagas: u64,
    pub recovery: u64,
    /// Sagas of the soak row (the embedded default with retention on, memory and disk sampled).
    pub soak: u64,
    /// The whole run's time budget in seconds; parking for the large scale run gets what is left.
    pub budget_s: f64,
    /// Kept back from the budget for the large scale run's measurement and shutdown.
    pub scale_reserve_s: f64,
}

impl Plan {
    fn full() -> Self {
        Plan {
            mode: "full",
            in_flight: 1024,
            memory: 30_000,
            sled_none: 5_000,
            sled_group: 5_000,
            sled_group_rounds: 3,
            sled_immediate: 1_000,
            paced_seconds: 6.0,
            rabbitmq: 3_000,
            postgres: 2_000,
            scale_small: 1_000,
            scale_large: 1_000_000,
            scale_sagas: 20_000,
            recovery: 100_000,
            soak: 1_000_000,
            budget_s: 560.0,
            scale_reserve_s: 45.0,
        }
    }

    fn smoke() -> Self {
        Plan {
            mode: "smoke",
            in_flight: 128,
            memory: 300,
            sled_none: 200,
            sled_group: 200,
            sled_group_rounds: 1,
            sled_immediate: 20,
            paced_seconds: 0.5,
            rabbitmq: 50,
            postgres: 50,
            scale_small: 100,
            scale_large: 1_000,
            scale_sagas: 200,
            recovery: 500,
            soak: 2_000,
            budget_s: 60.0,
            scale_reserve_s: 10.0,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let child_job: Option<Job> = args.child.as_ref().map(|job| serde_json::from_str(job).expect("a child job in JSON"));
    match &child_job {
        #[cfg(feature = "otel")]
        Some(Job::Workload { observed: true, .. }) => observed::install(),
        _ => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
            .init(),
    }
    if let Some(job) = child_job {
        let outcome = run::run(job);
        println!("BENCH-RESULT {}", serde_json::to_string(&outcome).expect("an outcome in JSON"));
        return ExitCode::SUCCESS;
    }
    if let Some(name) = &args.config {
        let Some(config) = Config::parse(name) else {
            eprintln!(
                "unknown configuration {name:?}: memory, sled-none, sled-group, sled-group-local, sled-group-local-retained, sled-immediate, rabbitmq or rabbitmq-sled"
            );
            return ExitCode::FAILURE;
        };
        let job = Job::Workload {
            config,
            sagas: args.sagas,
            in_flight: args.in_flight,
            rate: None,
            baseline: false,
            observed: false,
        };
        let outcome = run::run(job);
        print!("{}", report::table(&[outcome]));
        return ExitCode::SUCCESS;
    }
    let mut plan = if args.smoke || !(args.bench || args.full) { Plan::smoke() } else { Plan::full() };
    if let Some(max) = args.scale_max {
        plan.scale_large = max;
    }
    if let Some(sagas) = args.soak_sagas {
        plan.soak = sagas;
    }
    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|o| o == part);
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut notes = Vec::new();
    let failures = std::cell::Cell::new(0);
    let job = |job: Job, outcomes: &mut Vec<Outcome>| -> Option<Outcome> {
        let outcome = child(&job);
        match &outcome {
            Some(o) => {
                eprintln!("  {} done after {:.0} s in all", o.label, started.elapsed().as_secs_f64());
                outcomes.push(o.clone());
            }
            None => failures.set(failures.get() + 1),
        }
        outcome
    };
    let observed = |config, sagas| Job::Workload {
        config,
        sagas,
        in_flight: plan.in_flight,
        rate: None,
        baseline: false,
        observed: true,
    };
    let workload = |config, sagas| Job::Workload {
        config,
        sagas,
        in_flight: plan.in_flight,
        rate: None,
        baseline: true,
        observed: false,
    };
    // Tracing and metrics cost: each row beside its twin with them on (feature `otel`).
    let observe = cfg!(feature = "otel") && (wanted("memory") || wanted("sled-group") || wanted("observed"));
    if wanted("memory") || observe {
        job(workload(Config::Memory, plan.memory), &mut outcomes);
    }
    if observe {
        job(observed(Config::Memory, plan.memory), &mut outcomes);
    }
    if wanted("sled-none") {
        job(workload(Config::SledNone, plan.sled_none), &mut outcomes);
    }
    let mut group_rate = None;
    // The two sled Group rows are compared with each other, and one run of either moves by
    // several percent on this shared machine: they run interleaved, `sled_group_rounds` times,
    // and each row is its median run, so that one noisy moment does not decide the comparison.
    let group_rows = [
        (workload(Config::SledGroup, plan.sled_group), wanted("sled-group") || wanted("paced") || observe),
        (observed(Config::SledGroup, plan.sled_group), observe),
        (
            workload(Config::SledGroupLocal, plan.sled_group),
            wanted("sled-group") || wanted("sled-group-local") || wanted("retention"),
        ),
        (workload(Config::SledGroupLocalRetained, plan.sled_group), wanted("sled-group") || wanted("retention")),
    ];
    let mut group_runs: [Vec<Outcome>; 4] = Default::default();
    for _ in 0..plan.sled_group_rounds {
        for ((row, on), runs) in group_rows.iter().zip(&mut group_runs) {
            if *on {
                job(row.clone(), runs);
            }
        }
    }
    for (i, mut runs) in group_runs.into_iter().enumerate() {
        runs.sort_by(|a, b| a.sagas_per_s.total_cmp(&b.sagas_per_s));
        if runs.len() > 1 {
            let rates: Vec<String> = runs.iter().map(|o| format!("{:.0}", o.sagas_per_s)).collect();
            notes.push(format!(
                "{}: the median of {} interleaved runs ({} sagas/s)",
                runs[0].label,
                runs.len(),
                rates.join(", ")
            ));
        }
        if !runs.is_empty() {
            let median = runs.swap_remove(runs.len() / 2);
            if i == 0 {
                group_rate = Some(median.sagas_per_s);
            }
            outcomes.push(median);
        }
    }
    for config in [Config::Memory, Config::SledGroup] {
        let rate = |label: &str| outcomes.iter().find(|o| o.label == label).map(|o| o.sagas_per_s);
        let observed = format!("{}, traced and metered", config.label());
        if let (Some(off), Some(on)) = (rate(config.label()), rate(&observed)) {
            notes.push(format!(
                "tracing (OpenTelemetry, an exporter that discards) and metrics (a Prometheus recorder) on {}: {:.0} sagas/s against {:.0} off, {:.1}%",
                config.label(),
                on,
                off,
                on / off * 100.0
            ));
        }
    }
    if wanted("paced") {
        if let Some(peak) = group_rate {
            let rate = peak / 2.0;
            let sagas = ((rate * plan.paced_seconds) as u64).max(100);
            let paced = Job::Workload {
                config: Config::SledGroup,
                sagas,
                in_flight: 0,
                rate: Some(rate),
                baseline: false,
                observed: false,
            };
            job(paced, &mut outcomes);
        }
    }
    if wanted("sled-immediate") {
        job(workload(Config::SledImmediate, plan.sled_immediate), &mut outcomes);
    }
    if wanted("rabbitmq") {
        match (cfg!(feature = "rabbitmq"), std::env::var("SAGA_TEST_AMQP_URL").is_ok()) {
            (true, true) => {
                job(workload(Config::RabbitMq, plan.rabbitmq), &mut outcomes);
                let sled = Job::Workload {
                    config: Config::RabbitMqSled,
                    sagas: plan.rabbitmq,
                    in_flight: plan.in_flight,
                    rate: None,
                    baseline: false,
                    observed: false,
                };
                job(sled, &mut outcomes);
            }
            (false, _) => notes.push(
                "RabbitMQ configuration skipped: the `rabbitmq` feature is off (run with --features rabbitmq)"
                    .to_owned(),
            ),
            (true, false) => notes.push(
                "RabbitMQ configuration skipped: set SAGA_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
                    .to_owned(),
            ),
        }
    }
    if wanted("postgres") {
        match (cfg!(feature = "postgres"), std::env::var("SAGA_TEST_POSTGRES_URL").is_ok()) {
            (true, true) => {
                let rabbit = cfg!(feature = "rabbitmq") && std::env::var("SAGA_TEST_AMQP_URL").is_ok();
                for rabbitmq in [false, true].into_iter().filter(|&r| !r || rabbit) {
                    for processes in [1, 3] {
                        job(workload(Config::Postgres { processes, rabbitmq }, plan.postgres), &mut outcomes);
                    }
                }
            }
            (false, _) => notes.push(
                "PostgreSQL configurations skipped: the `postgres` feature is off (run with --features postgres)"
                    .to_owned(),
            ),
            (true, false) => notes.push(
                "PostgreSQL configurations skipped: set SAGA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"
                    .to_owned(),
            ),
        }
    }
    if wanted("scale") {
        let small = Job::Scale {
            parked: plan.scale_small,
            park_budget_s: 60.0,
            sagas: plan.scale_sagas,
            in_flight: plan.in_flight,
        };
        job(small, &mut outcomes);
    }
    if wanted("recovery") {
        let dir = tempfile::Builder::new().prefix("sagaflow-bench-recovery-").tempdir().expect("a temporary directory");
        let store = dir.path().join("store");
        let clock_ms = sagaflow::message::Timestamp::now().0;
        let setup = Job::RecoverySetup { dir: store.clone(), sagas: plan.recovery, clock_ms };
        if let Some(setup) = job(setup, &mut Vec::new()) {
            notes.push(format!(
                "recovery setup: {} sagas started in {:.1} s, leaving {} outbox entries and {} timers",
                report::num(setup.sagas as f64),
                setup.elapsed_s,
                report::num(setup.pending_outbox.unwrap_or(0) as f64),
                report::num(setup.pending_timers.unwrap_or(0) as f64)
            ));
            job(Job::Recovery { dir: store, sagas: plan.recovery, clock_ms }, &mut outcomes);
        }
    }
    if wanted("scale") {
        // Parking is the slow part: it gets what is left of the budget, less the measurement.
        let left = plan.budget_s - started.elapsed().as_secs_f64() - plan.scale_reserve_s;
        let large = Job::Scale {
            parked: plan.scale_large,
            park_budget_s: left,
            sagas: plan.scale_sagas,
            in_flight: plan.in_flight,
        };
        job(large, &mut outcomes);
    }
    // Outside the budget: the soak is long by design (some 7 minutes at full size).
    if wanted("soak") {
        job(Job::Soak { sagas: plan.soak, in_flight: plan.in_flight }, &mut outcomes);
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    let total = started.elapsed();
    let table = report::table(&outcomes);
    let targets = report::targets(&outcomes, &plan);
    print!("{table}");
    println!();
    print!("{}", report::targets_table(&targets));
    println!();
    println!("total time {:.0} s ({} mode)", total.as_secs_f64(), plan.mode);
    let out = target_dir().join("bench");
    // A partial run (--only, --scale-max) does not overwrite the full table.
    let partial = !args.only.is_empty() || args.scale_max.is_some() || args.soak_sagas.is_some();
    let name = match (plan.mode, partial) {
        ("full", false) => "throughput",
        ("full", true) => "throughput-partial",
        _ => "throughput-smoke",
    };
    match report::write(&out, name, &plan, &outcomes, &targets, &notes, total) {
        Ok(()) => println!("wrote {0}/{name}.md and {0}/{name}.json", out.display()),
        Err(e) => eprintln!("could not write the report to {}: {e}", out.display()),
    }
    if failures.get() > 0 {
        eprintln!("{} part(s) of the benchmark failed", failures.get());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs a job in a child process (this binary with `--child`); `None` if the child failed.
fn child(job: &Job) -> Option<Outcome> {
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let spec = serde_json::to_string(job).expect("a job in JSON");
    let output = Command::new(exe)
        .arg("--child")
        .arg(&spec)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("start a child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout.lines().find_map(|l| l.strip_prefix("BENCH-RESULT "));
    match (output.status.success(), result) {
        (true, Some(json)) => match serde_json::from_str(json) {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                eprintln!("a child's result does not parse ({e}): {json}");
                None
            }
        },
        _ => {
            eprintln!("the child for {spec} failed ({})", output.status);
            None
        }
    }
}

/// `target/` (the benchmark runs from `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}
