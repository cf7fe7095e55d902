//! Regression tests for defects a review found (each failed before its fix).
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use sagaflow::clock::ManualClock;
use sagaflow::message::Message;
use sagaflow::prelude::*;
use sagaflow::store::{Commit, CommitHook, Committed, Intercepted, Store, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// 1. A second saga that consumes the same reply name hijacks another saga's instance.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LiteStart {
    trip: u32,
}
impl Message for LiteStart {
    const NAME: &'static str = "lite.start";
    fn correlation_key(&self) -> Option<String> {
        Some(self.trip.to_string())
    }
}

/// Another saga that books flights through the same participant (so it consumes
/// "flight.booked" too). Its state is a subset of Trip's, as is common.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Lite {
    trip: u32,
    flight: bool,
}
impl Saga for Lite {
    const NAME: &'static str = "lite";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new().start_with(|m: &LiteStart| Lite { trip: m.trip, flight: false }).step(
            Step::send("book_flight", |t: &Lite| BookFlight { trip: t.trip })
                .on_success(|t: &mut Lite, _: &FlightBooked| t.flight = true)
                .on_failure(|_: &mut Lite, _: &FlightRefused| {}),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_saga_consuming_the_same_reply_must_not_touch_trip_instances() {
    let script = Script::default();
    let runtime = trip_runtime(&script)
        .saga::<Lite>()
        .store(MemoryStore::new())
        .clock(ManualClock::default())
        .build()
        .await
        .unwrap();
    for trip in 0..50 {
        runtime.publish(&BookTrip { trip }).await.unwrap();
    }
    runtime.settle().await;
    let store = runtime.store();
    let mut wrong = Vec::new();
    for trip in 0..50 {
        let st = status(&runtime, trip).await;
        let charged = effects(&*store, Charge::NAME, trip).await;
        let state = runtime.saga::<Trip>(&trip.to_string()).await.unwrap().unwrap().state::<Trip>();
        let ok = matches!(&state, Ok(s) if s.paid && s.hotel);
        if st != Some(SagaStatus::Completed) || charged != 1 || !ok {
            wrong.push((trip, st, charged, state.map(|s| (s.hotel, s.paid)).map_err(|e| e.to_string())));
        }
    }
    assert!(wrong.is_empty(), "{} of 50 trips hijacked by saga `lite`, e.g. {:?}", wrong.len(), wrong.first());
}

// ---------------------------------------------------------------------------------------
// 2. Outgoing ids derived only from (cause, position) collide across consumers of one cause.
// ---------------------------------------------------------------------------------------

/// A second saga started by the same BookTrip that also books a flight.
/// Its state does not decode from Trip's (required field), isolating the id collision.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Insurance {
    trip: u32,
    policy: String,
    flight: bool,
}
impl Saga for Insurance {
    const NAME: &'static str = "insurance";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(|m: &BookTrip| Insurance { trip: m.trip, policy: "p".into(), flight: false })
            .step(
                Step::send("book_flight", |t: &Insurance| BookFlight { trip: t.trip + 1000 })
                    .on_success(|t: &mut Insurance, _: &FlightBooked| t.flight = true)
                    .on_failure(|_: &mut Insurance, _: &FlightRefused| {}),
            )
    }
}

#[tokio::test]
async fn two_sagas_started_by_one_message_both_reach_the_shared_participant() {
    let script = Script::default();
    let runtime = trip_runtime(&script)
        .saga::<Insurance>()
        .store(MemoryStore::new())
        .clock(ManualClock::default())
        .build()
        .await
        .unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let booked: Vec<_> = script.log().into_iter().filter(|(c, _)| *c == BookFlight::NAME).collect();
    // Trip books flight 1, Insurance books flight 1001: two distinct commands.
    assert_eq!(booked.len(), 2, "participant saw {booked:?}");
}

// ---------------------------------------------------------------------------------------
// 3. A commit whose flush fails once strands its outbox until the next process start.
// ---------------------------------------------------------------------------------------

/// Fails the durability of the first `n` commits.
struct FlakyDurability(AtomicUsize);

#[async_trait::async_trait]
impl CommitHook for FlakyDurability {
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
        let mut c = store.commit(commit).await?;
        if self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            c.durable = Box::pin(async { Err(StoreError::Io("fsync: EIO (transient)".into())) });
        }
        Ok(c)
    }
}

#[tokio::test]
async fn a_transient_flush_failure_does_not_strand_the_outbox() {
    let script = Script::default();
    let store = Intercepted::new(MemoryStore::new(), FlakyDurability(AtomicUsize::new(1)));
    let runtime = trip_runtime(&script).store(store).clock(ManualClock::default()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await; // BookTrip nacked (1 s), redelivered, skipped, acked
    let left = runtime.store().outbox(None, 10).await.unwrap();
    assert_eq!(
        status(&runtime, 1).await,
        Some(SagaStatus::Completed),
        "outbox left unpublished: {:?}",
        left.iter().map(|e| &e.envelope.name).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// 4. A panic in user code kills its lane for good.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Boom {
    n: u32,
}
impl Message for Boom {
    const NAME: &'static str = "boom";
}
#[derive(Debug, Serialize, Deserialize)]
struct Other {
    n: u32,
}
impl Message for Other {
    const NAME: &'static str = "other";
}

static PANICKED: AtomicBool = AtomicBool::new(false);
static OTHER_SEEN: AtomicUsize = AtomicUsize::new(0);

struct Boomer;
#[async_trait::async_trait]
impl Handler for Boomer {
    type Input = Boom;
    fn name(&self) -> &str {
        "boomer"
    }
    async fn handle(&self, _m: Boom, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        if !PANICKED.swap(true, Ordering::SeqCst) {
            panic!("bug in user handler (first attempt only)");
        }
        Ok(())
    }
}
struct OtherHandler;
#[async_trait::async_trait]
impl Handler for OtherHandler {
    type Input = Other;
    fn name(&self) -> &str {
        "other-handler"
    }
    async fn handle(&self, _m: Other, _ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        OTHER_SEEN.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_take_its_lane_down() {
    let runtime = SagaRuntime::builder()
        .handler(Boomer)
        .handler(OtherHandler)
        .lanes(1)
        .store(MemoryStore::new())
        .build()
        .await
        .unwrap();
    runtime.publish(&Boom { n: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    runtime.publish(&Other { n: 1 }).await.unwrap();
    let settled = tokio::time::timeout(Duration::from_secs(3), runtime.settle()).await;
    let other = OTHER_SEEN.load(Ordering::SeqCst);
    runtime.kill().await;
    assert!(settled.is_ok() && other == 1, "settled: {}, other handled {other} times", settled.is_ok());
}

// ---------------------------------------------------------------------------------------
// 5. A local step that times out (cancelled mid-flight) is not compensated itself.
// ---------------------------------------------------------------------------------------

static LOCAL_CALLS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

#[derive(Debug, Serialize, Deserialize)]
struct PayStart {
    id: u32,
}
impl Message for PayStart {
    const NAME: &'static str = "pay.start";
    fn correlation_key(&self) -> Option<String> {
        Some(self.id.to_string())
    }
}
#[derive(Debug, Default, Serialize, Deserialize)]
struct Pay {
    id: u32,
}
impl Saga for Pay {
    const NAME: &'static str = "pay";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(|m: &PayStart| Pay { id: m.id })
            .step(
                Step::local("charge_card", |p: Pay, _ctx| async move {
                    LOCAL_CALLS.lock().unwrap().push("charge");
                    // The gateway takes the money, then the reply is slow.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(p)
                })
                .timeout(Duration::from_millis(100))
                .compensate_local(|p: Pay, _ctx| async move {
                    LOCAL_CALLS.lock().unwrap().push("refund");
                    Ok(p)
                }),
            )
            .step(Step::local("ship", |p: Pay, _ctx| async move { Ok(p) }))
    }
}

#[tokio::test]
async fn a_timed_out_local_step_is_compensated_like_a_timed_out_command() {
    let runtime = SagaRuntime::builder()
        .saga::<Pay>()
        .store(MemoryStore::new())
        .clock(ManualClock::default())
        .build()
        .await
        .unwrap();
    runtime.publish(&PayStart { id: 1 }).await.unwrap();
    runtime.settle().await;
    let inst = runtime.saga::<Pay>("1").await.unwrap().unwrap();
    let calls = LOCAL_CALLS.lock().unwrap().clone();
    assert_eq!(inst.status(), &SagaStatus::Compensated);
    assert_eq!(calls, ["charge", "refund"], "a step cancelled mid-flight may have acted");
}

// ---------------------------------------------------------------------------------------
// 6. Durability::Immediate awaits sled's flush_async from many completion tasks at once.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn immediate_durability_under_concurrency_does_not_hang() {
    stress(Durability::Immediate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn group_durability_under_concurrency_does_not_hang() {
    stress(Durability::default()).await
}

async fn stress(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(dir.path(), SledOptions::default().durability(durability)).unwrap();
    let script = Script::default();
    let runtime = trip_runtime(&script).store(store).clock(ManualClock::default()).build().await.unwrap();
    for trip in 0..400 {
        runtime.publish(&BookTrip { trip }).await.unwrap();
    }
    let settled = tokio::time::timeout(Duration::from_secs(60), runtime.settle()).await;
    assert!(settled.is_ok(), "runtime did not settle within 60 s with {durability:?}");
    runtime.shutdown().await.unwrap();
}

#[test]
fn retry_policy_without_a_cap_does_not_panic() {
    let p = RetryPolicy::exponential(100, Duration::from_secs(1)).max_delay(Duration::MAX).without_jitter();
    let r = std::panic::catch_unwind(|| p.delay_before_retry(80, Uuid::nil()));
    assert!(r.is_ok(), "delay_before_retry panicked");
}
