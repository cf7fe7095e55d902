//! The PostgreSQL rows: 1 or 3 runtime processes on one fresh database, on the PostgreSQL bus
//! or on RabbitMQ, then the raw sqlx replay of the commits they made (`baseline_postgres`).
//!
//! With 3 processes the row's child is the *driver*: it runs one runtime and the publisher, and
//! starts two *replicas* (this binary again, [`Job::PostgresReplica`]), each a runtime of its
//! own on the same database and bus, competing for the same messages. They speak over pipes,
//! one line each way at a time:
//!
//! ```text
//! replica → driver   BENCH-READY                       subscribed, taking work
//!                    BENCH-FINISHED <i> <unix ns> <kind>  it committed order saga i's end
//!                    BENCH-REPLAYED                    its share of the baseline is done
//!                    BENCH-RESULT <outcome JSON>       its commit counts and CPU time
//! driver → replica   stop                              every saga finished: shut down
//!                    replay <database>                 replay your commits there, now
//! ```
//!
//! Each process replays the commits it made, all at once, so the baseline does the same
//! transactions in the same split over the same number of processes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use sagaflow::bus::{Bus, PostgresBus};
use sagaflow::prelude::*;
use sagaflow::store::{Commit, Intercepted, PgConnectOptions, PostgresStore, PostgresTarget, StatusKind};
use tokio::sync::mpsc;

use crate::baseline_postgres::{RecordCommits, replay};
use crate::probe::{Probe, ProbeBus, Release, cpu_time, unix_ns};
use crate::run::{BaselineOutcome, Config, Job, Outcome, build, drive, fill};

/// Connections per runtime's pool.
const POOL: u32 = 8;

/// One runtime on `database`: its store records its commits into `record`.
async fn runtime(
    database: PgConnectOptions,
    rabbitmq: Option<&str>,
    probe: &Arc<Probe>,
    record: &RecordCommits,
) -> SagaRuntime {
    let store = PostgresStore::connect_options(database, POOL).await.expect("connect to PostgreSQL");
    let bus: Arc<dyn Bus> = match rabbitmq {
        Some(namespace) => rabbit_bus(namespace).await,
        None => Arc::new(PostgresBus::new(&store)),
    };
    build(Intercepted::new(store, record.clone()), ProbeBus::new(bus, probe.clone()), probe).await
}

#[cfg(feature = "rabbitmq")]
async fn rabbit_bus(namespace: &str) -> Arc<dyn Bus> {
    Arc::new(crate::run::rabbit_bus(namespace).await)
}

#[cfg(not(feature = "rabbitmq"))]
async fn rabbit_bus(_namespace: &str) -> Arc<dyn Bus> {
    panic!("the RabbitMQ configurations need --features rabbitmq")
}

/// The RabbitMQ names of a row on RabbitMQ.
fn rabbit_namespace(rabbitmq: bool) -> Option<String> {
    #[cfg(feature = "rabbitmq")]
    return rabbitmq.then(crate::run::rabbit_namespace);
    #[cfg(not(feature = "rabbitmq"))]
    rabbitmq.then(|| panic!("the RabbitMQ configurations need --features rabbitmq"))
}

fn take(record: &RecordCommits) -> Vec<Commit> {
    std::mem::take(&mut *record.0.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The database `name` on the server of `SAGA_TEST_POSTGRES_URL`.
fn database(name: &str) -> PgConnectOptions {
    let url = std::env::var("SAGA_TEST_POSTGRES_URL").expect("SAGA_TEST_POSTGRES_URL is set");
    url.parse::<PgConnectOptions>().expect("a PostgreSQL URL").database(name)
}

/// A replica the driver started, and what it said.
struct Replica {
    child: Child,
    stdin: ChildStdin,
    reader: std::thread::JoinHandle<Option<Outcome>>,
}

/// What a replica's line means to the driver.
enum Said {
    Ready,
    Replayed,
}

impl Replica {
    /// Starts a replica; its finishes go straight into `probe`, its other lines to `said`.
    fn start(job: &Job, probe: Arc<Probe>, said: mpsc::UnboundedSender<Said>) -> Replica {
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut child = Command::new(exe)
            .arg("--child")
            .arg(serde_json::to_string(job).expect("a job in JSON"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a replica process");
        let stdin = child.stdin.take().expect("the replica's stdin is piped");
        let stdout = child.stdout.take().expect("the replica's stdout is piped");
        let reader = std::thread::spawn(move || {
            let mut result = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "BENCH-READY" {
                    let _ = said.send(Said::Ready);
                } else if line == "BENCH-REPLAYED" {
                    let _ = said.send(Said::Replayed);
                } else if let Some(json) = line.strip_prefix("BENCH-RESULT ") {
                    result = serde_json::from_str(json).ok();
                } else if let Some(rest) = line.strip_prefix("BENCH-FINISHED ") {
                    let mut parts = rest.splitn(3, ' ');
                    let i = parts.next().and_then(|v| v.parse().ok());
                    let at = parts.next().and_then(|v| v.parse().ok());
                    let kind = parts.next().and_then(|v| serde_json::from_str::<StatusKind>(v).ok());
                    if let (Some(i), Some(at), Some(kind)) = (i, at, kind) {
                        probe.finished_elsewhere(i, kind, at);
                    }
                }
            }
            result
        });
        Replica { child, stdin, reader }
    }

    fn tell(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()).expect("write to a replica");
    }

    /// Closes its stdin, waits for it to exit and returns its result.
    fn finish(self) -> Outcome {
        let Replica { mut child, stdin, reader } = self;
        drop(stdin);
        let status = child.wait().expect("wait for a replica");
        let outcome = reader.join().ok().flatten();
        match outcome {
            Some(outcome) if status.success() => outcome,
            _ => panic!("a replica failed ({status})"),
        }
    }
}

/// Waits for `n` messages of kind `what` from the replicas.
async fn hear(said: &mut mpsc::UnboundedReceiver<Said>, n: usize, what: fn(&Said) -> bool) {
    let mut heard = 0;
    while heard < n {
        let message = said.recv().await.expect("a replica stopped talking");
        heard += usize::from(what(&message));
    }
}

/// The driver of a PostgreSQL row (see the module docs).
pub async fn workload(config: Config, probe: &Arc<Probe>, sagas: u64, in_flight: usize) -> Outcome {
    let Config::Postgres { processes, rabbitmq } = config else { unreachable!("a PostgreSQL row") };
    let target = PostgresTarget::from_env().expect("SAGA_TEST_POSTGRES_URL is set");
    let options = target.fresh_database().await;
    let name = options.get_database().expect("a fresh database has a name").to_owned();
    let namespace = rabbit_namespace(rabbitmq);
    let record = RecordCommits::default();
    let own = Arc::new(runtime(options, namespace.as_deref(), probe, &record).await);
    let (tx, mut said) = mpsc::unbounded_channel();
    let job = Job::PostgresReplica { database: name, namespace: namespace.clone(), sagas };
    let mut replicas: Vec<Replica> = (1..processes).map(|_| Replica::start(&job, probe.clone(), tx.clone())).collect();
    hear(&mut said, replicas.len(), |s| matches!(s, Said::Ready)).await;

    let (elapsed, cpu) = drive(&own, probe, sagas, None).await;
    let mut outcome =
        Outcome { label: config.label().to_owned(), kind: "workload".into(), in_flight, ..Outcome::default() };
    fill(&mut outcome, probe, sagas, elapsed, cpu);
    for replica in &mut replicas {
        replica.tell("stop");
    }
    if let Ok(own) = Arc::try_unwrap(own) {
        own.shutdown().await.expect("shut the runtime down");
    }

    let replay_database = target.fresh_database().await;
    drop(PostgresStore::connect_options(replay_database.clone(), 1).await.expect("migrate the replay database"));
    let replay_name = replay_database.get_database().expect("a fresh database has a name").to_owned();
    let commits = take(&record);
    let cpu = cpu_time();
    let started = Instant::now();
    for replica in &mut replicas {
        replica.tell(&format!("replay {replay_name}"));
    }
    let mut units = commits.len() as u64;
    replay(replay_database, &commits, !rabbitmq).await;
    hear(&mut said, replicas.len(), |s| matches!(s, Said::Replayed)).await;
    let replayed = started.elapsed();
    let mut baseline_cpu = cpu_time().saturating_sub(cpu).as_secs_f64();

    let mut peaks = vec![format!("{:.0}", outcome.peak_rss_mib)];
    let mut shares = vec![outcome.commits.to_string()];
    for replica in replicas {
        let theirs = replica.finish();
        add_counts(&mut outcome, &theirs);
        peaks.push(format!("{:.0}", theirs.peak_rss_mib));
        shares.push(theirs.commits.to_string());
        if let Some(b) = &theirs.baseline {
            units += b.units;
            baseline_cpu += b.cpu_s;
        }
    }
    #[cfg(feature = "rabbitmq")]
    if rabbitmq {
        crate::run::clean_rabbit().await;
    }
    if processes > 1 {
        outcome.notes.push(format!(
            "{processes} processes on 2 cores (no room to scale): commits per process {}, peak RSS {} MiB, CPU summed",
            shares.join(" / "),
            peaks.join(" / ")
        ));
    }
    outcome.notes.push(format!(
        "{:.0} refused commits (version conflicts re-run, duplicates dropped) per 1,000 sagas",
        outcome.refused as f64 * 1000.0 / sagas.max(1) as f64
    ));
    let rate = units as f64 / replayed.as_secs_f64().max(1e-9);
    outcome.baseline = Some(BaselineOutcome {
        name: match (rabbitmq, processes > 1) {
            (true, false) => "raw sqlx, the run's commits replayed",
            (false, false) => "raw sqlx, the run's commits and bus rounds",
            (true, true) => "raw sqlx, each process's commits replayed by it",
            (false, true) => "raw sqlx, each process's commits and bus rounds replayed by it",
        }
        .into(),
        unit: "commits".into(),
        units,
        elapsed_s: replayed.as_secs_f64(),
        cpu_s: baseline_cpu,
        rate,
        config_rate: outcome.commits_per_s,
        ratio: outcome.commits_per_s / rate.max(1e-9),
    });
    outcome
}

/// Adds a replica's commit and message counts and CPU time to the driver's row.
fn add_counts(outcome: &mut Outcome, replica: &Outcome) {
    let secs = outcome.elapsed_s.max(1e-9);
    let bytes = outcome.payload_bytes_per_message * outcome.messages as f64
        + replica.payload_bytes_per_message * replica.messages as f64;
    outcome.commits += replica.commits;
    outcome.transitions += replica.transitions;
    outcome.refused += replica.refused;
    outcome.messages += replica.messages;
    outcome.commits_per_s = outcome.commits as f64 / secs;
    outcome.transitions_per_s = outcome.transitions as f64 / secs;
    outcome.messages_per_s = outcome.messages as f64 / secs;
    outcome.payload_bytes_per_message = bytes / outcome.messages.max(1) as f64;
    outcome.cpu_s += replica.cpu_s;
    outcome.cpu_s_per_1k = outcome.cpu_s / outcome.sagas.max(1) as f64 * 1000.0;
}

/// A replica (see the module docs): a runtime on `database` until told to stop, then its
/// share of the baseline.
pub async fn replica(database_name: String, namespace: Option<String>, sagas: u64) -> Outcome {
    let probe = Probe::new(sagas as usize, usize::MAX >> 4, Release::Terminal);
    probe.forward_finishes(|i, kind| {
        let kind = serde_json::to_string(&kind).expect("a status kind in JSON");
        println!("BENCH-FINISHED {i} {} {kind}", unix_ns());
    });
    let record = RecordCommits::default();
    let own = runtime(database(&database_name), namespace.as_deref(), &probe, &record).await;
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let cpu = cpu_time();
    let started = Instant::now();
    println!("BENCH-READY");
    let mut outcome = Outcome { label: "PostgreSQL replica".into(), kind: "replica".into(), ..Outcome::default() };
    while let Some(line) = lines.recv().await {
        if line == "stop" {
            fill(&mut outcome, &probe, 0, started.elapsed(), cpu_time().saturating_sub(cpu));
            own.shutdown().await.expect("shut the replica's runtime down");
            break;
        }
    }
    if let Some(line) = lines.recv().await
        && let Some(name) = line.strip_prefix("replay ")
    {
        let commits = take(&record);
        let cpu = cpu_time();
        let elapsed = replay(database(name), &commits, namespace.is_none()).await;
        println!("BENCH-REPLAYED");
        outcome.baseline = Some(BaselineOutcome {
            name: "a replica's share".into(),
            unit: "commits".into(),
            units: commits.len() as u64,
            elapsed_s: elapsed.as_secs_f64(),
            cpu_s: cpu_time().saturating_sub(cpu).as_secs_f64(),
            rate: 0.0,
            config_rate: 0.0,
            ratio: 0.0,
        });
    }
    // The driver closes stdin once it heard every replica replay.
    while lines.recv().await.is_some() {}
    outcome
}
