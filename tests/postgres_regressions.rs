//! The review's reproductions R1, R1b and R8 (`shared/review/turn2-repro.rs`) on a shared
//! `PostgresStore`: two runtimes, each with a store connection of its own (its own claims, as
//! two processes have), on one database. Where two runtimes with stores of their own lost
//! replies (R1, R1b) and a second runtime on one store re-ran a local step in flight (R8), the
//! shared database must finish every saga once and run the step once. Runs when
//! `SAGA_TEST_POSTGRES_URL` is set (feature `postgres`; R1b on RabbitMQ also
//! `SAGA_TEST_AMQP_URL` and feature `rabbitmq`, on NATS `SAGA_TEST_NATS_URL` and `nats`).
#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use sagaflow::bus::{Bus, PostgresBus};
use sagaflow::prelude::*;
use sagaflow::store::{PgConnectOptions, PostgresStore, PostgresTarget};
use serde::{Deserialize, Serialize};

const TRIPS: u32 = 40;
const WAIT: Duration = Duration::from_secs(60);

async fn database() -> Option<PgConnectOptions> {
    Some(PostgresTarget::from_env()?.fresh_database().await)
}

async fn connect(database: &PgConnectOptions) -> PostgresStore {
    PostgresStore::connect_options(database.clone(), 4).await.unwrap().with_claim_lease(Duration::from_secs(2))
}

/// Two trip runtimes on `database`, each on the bus `bus` gives it, compete for 40 trips
/// published through the first: every trip completes, with each participant effect once.
async fn two_runtimes_finish_every_trip_once(
    database: &PgConnectOptions,
    bus: impl Fn(&PostgresStore) -> std::sync::Arc<dyn Bus>,
) {
    let script = Script::default();
    let mut runtimes = Vec::new();
    for _ in 0..2 {
        let store = connect(database).await;
        let on = bus(&store);
        runtimes.push(trip_runtime(&script).store(store).bus(on).build().await.unwrap());
    }
    for trip in 0..TRIPS {
        runtimes[0].publish(&BookTrip { trip }).await.unwrap();
    }
    for r in &runtimes {
        r.wait_until_all_terminal(WAIT).await.unwrap();
    }
    let store = runtimes[1].store();
    for trip in 0..TRIPS {
        for r in &runtimes {
            assert_eq!(status(r, trip).await, Some(SagaStatus::Completed), "trip {trip}");
        }
        for command in [BookFlight::NAME, BookHotel::NAME, Charge::NAME] {
            assert_eq!(effects(&*store, command, trip).await, 1, "trip {trip}'s {command}");
        }
    }
    for r in runtimes {
        r.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_two_runtimes_on_one_postgres_store_and_its_bus_finish_every_trip_once() {
    let Some(database) = database().await else { return };
    two_runtimes_finish_every_trip_once(&database, |store| std::sync::Arc::new(PostgresBus::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_two_runtimes_on_one_postgres_store_and_a_shared_in_memory_bus_finish_every_trip_once() {
    let Some(database) = database().await else { return };
    let bus = InMemoryBus::new();
    two_runtimes_finish_every_trip_once(&database, |_| std::sync::Arc::new(bus.clone())).await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1b_two_runtimes_on_one_postgres_store_and_rabbitmq_finish_every_trip_once() {
    use sagaflow::bus::{RabbitMqBus, RabbitMqOptions};
    let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else {
        sagaflow::bus::conformance::say_skipped("R1b on PostgreSQL and RabbitMQ", "SAGA_TEST_AMQP_URL");
        return;
    };
    let Some(database) = database().await else { return };
    let namespace = format!("r1b-{}", uuid::Uuid::now_v7().simple());
    let mut buses = Vec::new();
    for _ in 0..2 {
        buses.push(RabbitMqBus::connect(RabbitMqOptions::new(url.clone()).namespace(namespace.clone())).await.unwrap());
    }
    let next = std::sync::Mutex::new(buses.into_iter());
    two_runtimes_finish_every_trip_once(&database, |_| std::sync::Arc::new(next.lock().unwrap().next().unwrap())).await;
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlowStart {
    k: u32,
}
impl Message for SlowStart {
    const NAME: &'static str = "slow.start";
    fn correlation_key(&self) -> Option<String> {
        Some(self.k.to_string())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Slow {
    k: u32,
}
impl Saga for Slow {
    const NAME: &'static str = "slow";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new().start_with(|m: &SlowStart| Slow { k: m.k }).step(
            Step::local("charge_card", |s: Slow, _| async move {
                RUNS.fetch_add(1, Ordering::SeqCst); // an external effect (an HTTP charge)
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(s)
            })
            .timeout(Duration::from_secs(10)),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r8_a_second_runtime_on_one_postgres_store_does_not_rerun_a_local_step_in_flight() {
    let Some(database) = database().await else { return };
    let a = SagaRuntime::builder().saga::<Slow>().store(connect(&database).await).build().await.unwrap();
    a.publish(&SlowStart { k: 1 }).await.unwrap();
    while RUNS.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second replica starts while the first is inside the step.
    let b = SagaRuntime::builder().saga::<Slow>().store(connect(&database).await).build().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.wait_until_all_terminal(WAIT).await.unwrap();
    b.wait_until_all_terminal(WAIT).await.unwrap();
    assert_eq!(RUNS.load(Ordering::SeqCst), 1, "the local step (its external effect) ran in both runtimes");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1b_two_runtimes_on_one_postgres_store_and_nats_jetstream_finish_every_trip_once() {
    use sagaflow::bus::{NatsBus, NatsOptions};
    let Ok(url) = std::env::var("SAGA_TEST_NATS_URL") else {
        sagaflow::bus::conformance::say_skipped("R1b on PostgreSQL and NATS", "SAGA_TEST_NATS_URL");
        return;
    };
    let Some(database) = database().await else { return };
    // A v7 id's leading digits are the millisecond; its tail keeps two runs apart.
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let mut buses = Vec::new();
    for _ in 0..2 {
        let options = NatsOptions::new(url.clone())
            .prefix(format!("r1b{id}"))
            .stream(format!("R1B_{id}"))
            .dead_letter_stream(format!("R1B_DEAD_{id}"))
            .max_age(Duration::from_secs(600));
        buses.push(NatsBus::connect(options).await.unwrap());
    }
    let next = std::sync::Mutex::new(buses.into_iter());
    two_runtimes_finish_every_trip_once(&database, |_| std::sync::Arc::new(next.lock().unwrap().next().unwrap())).await;
}
