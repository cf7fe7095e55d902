//! Local async steps: run at least once, with a stable idempotency key, compensated locally.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sagaflow::bus::InMemoryBus;
use sagaflow::message::Message;
use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

/// Every local call made: (instance key, step, idempotency key).
static CALLS: Mutex<Vec<(u32, &'static str, String)>> = Mutex::new(Vec::new());
/// While set, the notify step of a `hang` request never returns (a process about to die).
static HANG: AtomicBool = AtomicBool::new(true);

fn calls(id: u32) -> Vec<(&'static str, String)> {
    CALLS.lock().unwrap().iter().filter(|c| c.0 == id).map(|c| (c.1, c.2.clone())).collect()
}

fn record(id: u32, step: &'static str, ctx: &StepContext) {
    CALLS.lock().unwrap().push((id, step, ctx.idempotency_key.clone()));
}

#[derive(Debug, Serialize, Deserialize)]
struct QuotaRequested {
    id: u32,
    fail: bool,
    hang: bool,
}

impl Message for QuotaRequested {
    const NAME: &'static str = "quota.requested";
    fn correlation_key(&self) -> Option<String> {
        Some(self.id.to_string())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Quota {
    id: u32,
    fail: bool,
    hang: bool,
    reserved: bool,
    notified: bool,
}

impl Saga for Quota {
    const NAME: &'static str = "quota";

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(|r: &QuotaRequested| Quota { id: r.id, fail: r.fail, hang: r.hang, ..Quota::default() })
            .step(
                Step::local("reserve", |mut q: Quota, ctx| async move {
                    record(q.id, "reserve", &ctx);
                    q.reserved = true;
                    Ok(q)
                })
                .compensate_local(|mut q: Quota, ctx| async move {
                    record(q.id, "release", &ctx);
                    q.reserved = false;
                    Ok(q)
                }),
            )
            .step(Step::local("notify", |mut q: Quota, ctx| async move {
                record(q.id, "notify", &ctx);
                if q.hang && HANG.load(Ordering::SeqCst) {
                    futures::future::pending::<()>().await;
                }
                if q.fail {
                    return Err(StepError::Failed("mail server refused".into()));
                }
                q.notified = true;
                Ok(q)
            }))
    }
}

async fn status(runtime: &SagaRuntime, id: u32) -> SagaInstance {
    runtime.saga::<Quota>(&id.to_string()).await.unwrap().unwrap()
}

#[tokio::test]
async fn local_steps_run_in_order_and_complete_the_saga() {
    let runtime = SagaRuntime::builder().store(MemoryStore::new()).saga::<Quota>().build().await.unwrap();
    runtime.publish(&QuotaRequested { id: 1, fail: false, hang: false }).await.unwrap();
    runtime.settle().await;

    let instance = status(&runtime, 1).await;
    assert_eq!(instance.status(), &SagaStatus::Completed);
    let q: Quota = instance.state().unwrap();
    assert!(q.reserved && q.notified);
    let steps: Vec<_> = calls(1).into_iter().map(|c| c.0).collect();
    assert_eq!(steps, ["reserve", "notify"]);
}

#[tokio::test]
async fn a_failing_local_step_runs_the_local_compensations() {
    let runtime = SagaRuntime::builder().store(MemoryStore::new()).saga::<Quota>().build().await.unwrap();
    runtime.publish(&QuotaRequested { id: 2, fail: true, hang: false }).await.unwrap();
    runtime.settle().await;

    let instance = status(&runtime, 2).await;
    assert_eq!(instance.status(), &SagaStatus::Compensated);
    assert_eq!(instance.failure(), Some("step notify failed: mail server refused"));
    assert!(!instance.state::<Quota>().unwrap().reserved);
    let steps: Vec<_> = calls(2).into_iter().map(|c| c.0).collect();
    assert_eq!(steps, ["reserve", "notify", "release"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_step_interrupted_by_a_crash_runs_again_on_restart_with_the_same_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let bus = InMemoryBus::new();
    let open = || SagaRuntime::builder().store(SledStore::open(dir.path()).unwrap()).bus(bus.clone()).saga::<Quota>();
    let runtime = open().build().await.unwrap();
    runtime.publish(&QuotaRequested { id: 3, fail: false, hang: true }).await.unwrap();
    while !calls(3).iter().any(|c| c.0 == "notify") {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(status(&runtime, 3).await.current_step(), Some("notify"));
    runtime.kill().await;

    HANG.store(false, Ordering::SeqCst);
    let runtime = open().build().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status(&runtime, 3).await.status() != &SagaStatus::Completed && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(status(&runtime, 3).await.status(), &SagaStatus::Completed);
    let notify: Vec<_> = calls(3).into_iter().filter(|c| c.0 == "notify").map(|c| c.1).collect();
    assert_eq!(notify.len(), 2, "at least once: the interrupted run and the re-run");
    assert_eq!(notify[0], notify[1], "the idempotency key is stable across re-runs");
    assert_eq!(calls(3).iter().filter(|c| c.0 == "reserve").count(), 1);
}
