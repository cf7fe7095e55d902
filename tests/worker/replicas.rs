//! Replicas of the order workload (`examples/crash_worker.rs`) on one PostgreSQL database:
//! start, kill and restart worker processes, watch their progress, and compare what they
//! leave with a clean run of the same seed on sled.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sagaflow::store::{PostgresStore, PostgresTarget, StatusKind, Store};

pub const SEED: u64 = 0x0005_CA1E;
/// The replicas' claim lease: how long a dead replica's work waits for another.
const LEASE_MS: &str = "2000";
/// At most this many orders unfinished: the replicas' queues stay shorter than a step's 30 s
/// timeout on this machine, as they must for a run to end as the clean one does.
const WINDOW: &str = "400";

pub struct Replica {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

pub struct Deployment {
    pub worker: PathBuf,
    /// The database's URL.
    pub database: String,
    pub bus: String,
    pub orders: u64,
    pub replicas: Vec<Replica>,
}

/// The URL of a new, empty database on `target`'s server, for worker processes.
pub async fn fresh_database_url(target: &PostgresTarget) -> String {
    let options = target.fresh_database().await;
    let mut url = url::Url::parse(&std::env::var("SAGA_TEST_POSTGRES_URL").unwrap()).expect("a PostgreSQL URL");
    url.set_path(options.get_database().expect("the test database's name"));
    url.to_string()
}

impl Deployment {
    /// `replicas` replicas (not started) of `worker` on a new database of `target`'s server.
    pub async fn new(target: &PostgresTarget, worker: &Path, bus: &str, orders: u64, replicas: usize) -> Self {
        Deployment {
            worker: worker.to_owned(),
            database: fresh_database_url(target).await,
            bus: bus.to_owned(),
            orders,
            replicas: (0..replicas).map(|_| Replica { dir: tempfile::tempdir().unwrap(), child: None }).collect(),
        }
    }

    /// A store connection to the deployment's database, for watching it.
    pub async fn watch(&self) -> PostgresStore {
        PostgresStore::connect(&self.database).await.unwrap()
    }

    /// The outcomes `check` finds in the database.
    pub fn outcomes(&self) -> String {
        check(&self.worker, self.replicas[0].dir.path(), Some(&self.database), self.orders)
    }

    pub fn start(&mut self, n: usize) {
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

    pub fn kill(&mut self, n: usize) {
        let mut child = self.replicas[n].child.take().expect("a running replica");
        assert!(child.try_wait().unwrap().is_none(), "replica {n} finished before it could be killed");
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    /// Waits until `n` orders are terminal, watching that no replica failed.
    pub async fn wait_for(&mut self, store: &PostgresStore, n: u64, limit: Duration) {
        let started = Instant::now();
        loop {
            let mut done = 0;
            for kind in [StatusKind::Completed, StatusKind::Compensated, StatusKind::Failed] {
                // While the database restarts, count nothing.
                done += store.instances_with_status(kind, usize::MAX).await.map_or(0, |ids| ids.len() as u64);
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

    pub fn wait_all(&mut self, limit: Duration) {
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
pub fn check(worker: &Path, dir: &Path, database: Option<&str>, orders: u64) -> String {
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
pub fn clean_outcomes(worker: &Path, orders: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(worker)
        .args(["run", dir.path().to_str().unwrap(), "local", &orders.to_string(), &SEED.to_string()])
        .status()
        .expect("the worker runs");
    assert!(status.success(), "the clean run failed");
    check(worker, dir.path(), None, orders)
}
