//! PostgreSQL restarted (`pg_ctlcluster … restart`) while two replicas on it run 1,000 orders
//! (`examples/crash_worker.rs` on the PostgreSQL bus alone): nothing is lost, nothing is
//! dead-lettered because of the outage, and every order ends as in a clean run on sled.
//!
//! It stops the database every other test uses, so it runs alone: set
//! `SAGA_TEST_POSTGRES_RESTART=1` (and `SAGA_TEST_POSTGRES_URL`), with `pg_ctlcluster` on the
//! PATH and one cluster in `/etc/postgresql`, as `.ci/run` does.
#![cfg(feature = "postgres")]

mod worker;

#[path = "worker/replicas.rs"]
mod replicas;

use std::process::Command;
use std::time::{Duration, Instant};

use replicas::{Deployment, clean_outcomes};
use sagaflow::store::PostgresTarget;
use worker::{assert_same_outcomes, env_or, worker};

/// Restarts the one PostgreSQL cluster this machine has.
fn restart_postgresql() -> Duration {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql lists the clusters")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .expect("a PostgreSQL cluster");
    let started = Instant::now();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster {version} main restart failed");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_during_1000_orders_loses_nothing_and_dead_letters_nothing() {
    let Some(target) = PostgresTarget::from_env() else { return };
    if std::env::var("SAGA_TEST_POSTGRES_RESTART").as_deref() != Ok("1") {
        sagaflow::bus::conformance::say_skipped("the PostgreSQL restart test", "SAGA_TEST_POSTGRES_RESTART=1");
        return;
    }
    let orders = env_or("SAGA_RESTART_ORDERS", 1_000);
    let (_bin, worker) = worker();
    let expected = clean_outcomes(&worker, orders);

    let mut deployment = Deployment::new(&target, &worker, "local", orders, 2).await;
    deployment.start(0);
    deployment.start(1);
    let store = deployment.watch().await;
    let limit = Duration::from_secs(600);
    // Every order submitted (the client does not retry), a fifth of them done: the rest are in
    // flight when the database goes away.
    let submitted = deployment.replicas[0].dir.path().join("submitted");
    while !submitted.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    deployment.wait_for(&store, orders / 5, limit).await;
    let outage = restart_postgresql();
    deployment.wait_all(limit);
    let outcomes = deployment.outcomes();
    assert_same_outcomes(&expected, &outcomes, "after the restart");
    eprintln!(
        "{orders} orders, PostgreSQL restarted mid-run (down for {outage:.1?}): every order ended as in the clean run"
    );
}
