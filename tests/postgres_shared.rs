//! Several runtimes on one PostgreSQL database, as replicas of one service would be: a local
//! step runs under a lease, so a replica that starts does not run it again while another runs
//! it, and a replica that dies has its step taken over once the lease ran out; the outbox
//! entries a dead replica left are published by another's sweeper. Each "process" is a
//! runtime with a store connection of its own (its own claims); they share an in-memory bus as
//! competing consumers. Runs when `SAGA_TEST_POSTGRES_URL` is set (feature `postgres`).
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::until;

use sagaflow::message::{Envelope, JsonCodec};
use sagaflow::prelude::*;
use sagaflow::store::{Commit, PgConnectOptions, PostgresStore, PostgresTarget, Store};
use serde::{Deserialize, Serialize};

const LEASE: Duration = Duration::from_secs(1);

/// How many times each gate's local step started.
static RUNS: Mutex<Option<HashMap<u32, u32>>> = Mutex::new(None);
/// While false, a waiting gate's first run waits (the step is "running" in a live process).
static OPEN: AtomicBool = AtomicBool::new(false);

fn runs(id: u32) -> u32 {
    RUNS.lock().unwrap().as_ref().and_then(|r| r.get(&id).copied()).unwrap_or(0)
}

#[derive(Debug, Serialize, Deserialize)]
struct GateRequested {
    id: u32,
    /// The first run never returns (its process is about to die).
    hang: bool,
    /// The first run waits until [`OPEN`] (it runs in a live process).
    wait: bool,
}

impl Message for GateRequested {
    const NAME: &'static str = "gate.requested";
    fn correlation_key(&self) -> Option<String> {
        Some(self.id.to_string())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Gate {
    id: u32,
    hang: bool,
    wait: bool,
    passed: bool,
}

impl Saga for Gate {
    const NAME: &'static str = "gate";

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(|r: &GateRequested| Gate { id: r.id, hang: r.hang, wait: r.wait, passed: false })
            .step(Step::local("pass", |mut g: Gate, _ctx| async move {
                let run = {
                    let mut runs = RUNS.lock().unwrap();
                    let count = runs.get_or_insert_default().entry(g.id).or_default();
                    *count += 1;
                    *count
                };
                if run == 1 && g.hang {
                    futures::future::pending::<()>().await;
                }
                while run == 1 && g.wait && !OPEN.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                g.passed = true;
                Ok(g)
            }))
    }
}

/// A replica: a runtime with a store connection (and so claims) of its own.
async fn replica(database: &PgConnectOptions, bus: &InMemoryBus) -> SagaRuntime {
    let store = PostgresStore::connect_options(database.clone(), 4).await.unwrap().with_claim_lease(LEASE);
    SagaRuntime::builder().store(store).bus(bus.clone()).saga::<Gate>().build().await.unwrap()
}

async fn completed(runtime: &SagaRuntime, id: u32) -> bool {
    let instance = runtime.saga::<Gate>(&id.to_string()).await.unwrap();
    instance.is_some_and(|i| i.status() == &SagaStatus::Completed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_starts_does_not_run_again_a_local_step_another_replica_is_running() {
    let Some(target) = PostgresTarget::from_env() else { return };
    let database = target.fresh_database().await;
    let bus = InMemoryBus::new();
    let first = replica(&database, &bus).await;
    first.publish(&GateRequested { id: 1, hang: false, wait: true }).await.unwrap();
    until("the step runs", async || runs(1) == 1).await;
    let second = replica(&database, &bus).await;
    // Three leases: the running replica extends its lease all along.
    tokio::time::sleep(LEASE * 3).await;
    assert_eq!(runs(1), 1, "the step ran again while it was running");
    OPEN.store(true, Ordering::SeqCst);
    until("the saga completes", async || completed(&first, 1).await).await;
    assert_eq!(runs(1), 1);
    second.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_step_of_a_replica_that_died_is_taken_over_once_its_lease_ran_out() {
    let Some(target) = PostgresTarget::from_env() else { return };
    let database = target.fresh_database().await;
    let bus = InMemoryBus::new();
    let doomed = replica(&database, &bus).await;
    doomed.publish(&GateRequested { id: 2, hang: true, wait: false }).await.unwrap();
    until("the step runs", async || runs(2) == 1).await;
    let survivor = replica(&database, &bus).await;
    doomed.kill().await;
    until("the survivor completes the saga", async || completed(&survivor, 2).await).await;
    assert_eq!(runs(2), 2, "run once by the replica that died, once by the one that took over");
    survivor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_entries_a_dead_replica_left_are_published_by_another_replicas_sweeper() {
    let Some(target) = PostgresTarget::from_env() else { return };
    let database = target.fresh_database().await;
    // A process committed a message to its outbox and died before it published it.
    let dead = PostgresStore::connect_options(database.clone(), 1).await.unwrap();
    let envelope = Envelope::encode(&JsonCodec, &GateRequested { id: 3, hang: false, wait: false }).unwrap();
    dead.commit(Commit { outbox: vec![envelope], ..Commit::default() }).await.unwrap().durable.await.unwrap();
    let survivor = replica(&database, &InMemoryBus::new()).await;
    until("the swept message's saga completes", async || completed(&survivor, 3).await).await;
    until("the outbox is empty", async || survivor.outbox_len().await.unwrap() == 0).await;
    survivor.shutdown().await.unwrap();
}
