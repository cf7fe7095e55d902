//! Replicas on one PostgreSQL database: three worker processes (`examples/crash_worker.rs`)
//! run the order workload together as competing consumers, one is SIGKILLed mid-run and
//! started again later, another is SIGKILLed and never comes back. Every order must end as it
//! does in a clean run of the same seed on sled in one process, every participant effect
//! applied once, and nothing left: no outbox entry, timer, queued message or dead letter (so
//! what the dead replicas held was taken over). Once on the PostgreSQL bus alone, once on
//! RabbitMQ with the PostgreSQL store.
//!
//! `SAGA_SCALE_ORDERS` orders (default 5,000). Runs when `SAGA_TEST_POSTGRES_URL` is set
//! (feature `postgres`; the RabbitMQ case also `SAGA_TEST_AMQP_URL` and feature `rabbitmq`).
#![cfg(feature = "postgres")]

mod worker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sagaflow::store::{PostgresStore, PostgresTarget, StatusKind, Store};
use worker::{assert_same_outcomes, env_or, worker};

const SEED: u64 = 0x0005_CA1E;
/// The replicas' claim lease: how long a dead replica's work waits for another.
const LEASE_MS: &str = "2000";
/// At most this many orders unfinished: the replicas' queues stay shorter than a step's 30 s
/// timeout on this machine, as they must for a run to end as the clean one does.
const WINDOW: &str = "400";

struct Replica {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

struct Deployment {
    worker: PathBuf,
    database: String,
    bus: String,
    orders: u64,
    replicas: Vec<Replica>,
}

impl Deployment {
    fn start(&mut self, n: usize) {
        let replica = &mut self.replicas[n];
        let mut cmd = Command::new(&self.worker);
        let dir = replica.dir.path().to_str().expect("a UTF-8 path");
        cmd.args(["run", dir, &self.bus, &self.orders.to_string(), &SEED.to_string()])
            .env("SAGA_WORKER_DATABASE", &self.database)
            .env("SAGA_WORKER_LEASE_MS", LEASE_MS)
            .env("SAGA_WORKER_WINDOW", WINDOW)
            .stderr(Stdio::inherit());
        if n > 0 {
            cmd.env("SAGA_WORKER_SUBMIT", "0");
        }
        replica.child = Some(cmd.spawn().expect("the worker starts"));
    }

    fn kill(&mut self, n: usize) {
        let mut child = self.replicas[n].child.take().expect("a running replica");
        assert!(child.try_wait().unwrap().is_none(), "replica {n} finished before it could be killed");
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    /// Waits until `n` orders are terminal, watching that no replica failed.
    async fn wait_for(&mut self, store: &PostgresStore, n: u64, limit: Duration) {
        let started = Instant::now();
        loop {
            let mut done = 0;
            for kind in [StatusKind::Completed, StatusKind::Compensated, StatusKind::Failed] {
                done += store.instances_with_status(kind, usize::MAX).await.unwrap().len() as u64;
            }
            if done >= n {
                return;
            }
            for (i, r) in self.replicas.iter_mut().enumerate() {
                if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    assert!(status.success(), "replica {i} failed: {status}");
                }
            }
            assert!(started.elapsed() < limit, "only {done} of {n} orders terminal after {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn wait_all(&mut self, limit: Duration) {
        let started = Instant::now();
        for (i, r) in self.replicas.iter_mut().enumerate() {
            let Some(child) = r.child.as_mut() else { continue };
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "replica {i} failed: {status}");
                    break;
                }
                if started.elapsed() > limit {
                    let _ = child.kill();
                    panic!("replica {i} did not finish within {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The worker's `check` on `dir` (with `database`, or sled there): the outcome lines.
fn check(worker: &Path, dir: &Path, database: Option<&str>, orders: u64) -> String {
    let mut cmd = Command::new(worker);
    cmd.args(["check", dir.to_str().unwrap(), &orders.to_string(), &SEED.to_string()]);
    if let Some(url) = database {
        cmd.env("SAGA_WORKER_DATABASE", url);
    }
    let out = cmd.output().expect("the checker runs");
    assert!(out.status.success(), "the check failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 outcomes")
}

/// The clean run: one process, sled, the durable local bus.
fn clean_outcomes(worker: &Path, orders: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(worker)
        .args(["run", dir.path().to_str().unwrap(), "local", &orders.to_string(), &SEED.to_string()])
        .status()
        .expect("the worker runs");
    assert!(status.success(), "the clean run failed");
    check(worker, dir.path(), None, orders)
}

async fn replicas_lose_and_repeat_nothing(features: &str, bus: &str) {
    let Some(target) = PostgresTarget::from_env() else { return };
    let orders = env_or("SAGA_SCALE_ORDERS", 5_000);
    let (_bin, worker) = worker(features);
    let started = Instant::now();
    let expected = clean_outcomes(&worker, orders);
    let clean_took = started.elapsed();

    let options = target.fresh_database().await;
    let mut url = url::Url::parse(&std::env::var("SAGA_TEST_POSTGRES_URL").unwrap()).expect("a PostgreSQL URL");
    url.set_path(options.get_database().expect("the test database's name"));
    let mut deployment = Deployment {
        worker: worker.clone(),
        database: url.to_string(),
        bus: bus.to_owned(),
        orders,
        replicas: (0..3).map(|_| Replica { dir: tempfile::tempdir().unwrap(), child: None }).collect(),
    };
    let started = Instant::now();
    for n in 0..3 {
        deployment.start(n);
    }
    let store = PostgresStore::connect(url.as_str()).await.unwrap();
    let limit = Duration::from_secs(600);
    deployment.wait_for(&store, orders * 15 / 100, limit).await;
    deployment.kill(1);
    deployment.wait_for(&store, orders * 35 / 100, limit).await;
    deployment.kill(2);
    deployment.wait_for(&store, orders * 55 / 100, limit).await;
    deployment.start(1);
    deployment.wait_all(limit);
    let outcomes = check(&worker, deployment.replicas[0].dir.path(), Some(&deployment.database), orders);
    assert_same_outcomes(&expected, &outcomes, "replicas");
    eprintln!(
        "{orders} orders on 3 replicas ({bus}): clean run on sled {clean_took:.1?}; replicas {:.1?} with one \
         SIGKILLed and restarted, one SIGKILLed for good; every order ended as in the clean run",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgresql_alone_two_killed_end_every_order_as_a_clean_run() {
    replicas_lose_and_repeat_nothing("postgres", "local").await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgresql_and_rabbitmq_two_killed_end_every_order_as_a_clean_run() {
    if std::env::var("SAGA_TEST_AMQP_URL").is_err() {
        sagaflow::bus::conformance::say_skipped("scale-out on RabbitMQ", "SAGA_TEST_AMQP_URL");
        return;
    }
    let namespace = format!("rabbitmq:scale-{}", uuid::Uuid::now_v7().simple());
    replicas_lose_and_repeat_nothing("postgres,rabbitmq", &namespace).await;
}
