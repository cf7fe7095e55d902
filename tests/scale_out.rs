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

#[path = "worker/replicas.rs"]
mod replicas;

use std::time::{Duration, Instant};

use replicas::{Deployment, clean_outcomes};
use sagaflow::store::PostgresTarget;
use worker::{assert_same_outcomes, env_or, worker};

/// The two deployments run one after the other: together they would be six processes and a
/// database on two cores, queueing orders past their steps' timeouts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn replicas_lose_and_repeat_nothing(bus: &str) {
    let Some(target) = PostgresTarget::from_env() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let orders = env_or("SAGA_SCALE_ORDERS", 5_000);
    let (_bin, worker) = worker();
    let started = Instant::now();
    let expected = clean_outcomes(&worker, orders);
    let clean_took = started.elapsed();

    let mut deployment = Deployment::new(&target, &worker, bus, orders, 3).await;
    let started = Instant::now();
    for n in 0..3 {
        deployment.start(n);
    }
    let store = deployment.watch().await;
    let limit = Duration::from_secs(600);
    deployment.wait_for(&store, orders * 15 / 100, limit).await;
    deployment.kill(1);
    deployment.wait_for(&store, orders * 35 / 100, limit).await;
    deployment.kill(2);
    deployment.wait_for(&store, orders * 55 / 100, limit).await;
    deployment.start(1);
    deployment.wait_all(limit);
    let outcomes = deployment.outcomes();
    assert_same_outcomes(&expected, &outcomes, "replicas");
    eprintln!(
        "{orders} orders on 3 replicas ({bus}): clean run on sled {clean_took:.1?}; replicas {:.1?} with one \
         SIGKILLed and restarted, one SIGKILLed for good; every order ended as in the clean run",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgresql_alone_two_killed_end_every_order_as_a_clean_run() {
    replicas_lose_and_repeat_nothing("local").await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgresql_and_rabbitmq_two_killed_end_every_order_as_a_clean_run() {
    if std::env::var("SAGA_TEST_AMQP_URL").is_err() {
        sagaflow::bus::conformance::say_skipped("scale-out on RabbitMQ", "SAGA_TEST_AMQP_URL");
        return;
    }
    let namespace = format!("rabbitmq:scale-{}", uuid::Uuid::now_v7().simple());
    replicas_lose_and_repeat_nothing(&namespace).await;
}
