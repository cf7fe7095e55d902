//! When the store or the bus fails: no message is dead-lettered for it, nothing committed is
//! lost, and one thing that cannot go on stalls nothing else.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use sagaflow::bus::{Bus, BusError, Consumer};
use sagaflow::engine::StoreHealth;
use sagaflow::message::{Envelope, Message};
use sagaflow::prelude::*;
use sagaflow::store::{Commit, CommitHook, Committed, Durable, Intercepted, Store, StoreError};

/// Fails every saga commit after the first (the steps after the start) while it is down.
#[derive(Default)]
struct StepCommitsFail {
    down: AtomicBool,
    error: Mutex<Option<StoreError>>,
}

impl StepCommitsFail {
    fn fail_with(&self, error: StoreError) {
        *self.error.lock().unwrap() = Some(error);
        self.down.store(true, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl CommitHook for StepCommitsFail {
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
        let step = commit.instance.as_ref().is_some_and(|w| w.previous.is_some());
        if step && self.down.load(Ordering::SeqCst) {
            if let Some(e) = self.error.lock().unwrap().clone() {
                return Err(e);
            }
        }
        store.commit(commit).await
    }
}

async fn wait_for(what: &str, deadline: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ready().await {
        assert!(started.elapsed() < deadline, "{what} did not happen within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_spends_no_retries_and_the_saga_completes_once_the_store_is_back() {
    let bus = InMemoryBus::new();
    let store = Arc::new(Intercepted::new(MemoryStore::new(), StepCommitsFail::default()));
    store.hook().fail_with(StoreError::Io("No space left on device (simulated)".into()));
    let runtime = trip_runtime(&Script::default()).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    wait_for("the outage showing in health", Duration::from_secs(5), async || {
        matches!(runtime.health().store, StoreHealth::Unavailable { .. })
    })
    .await;
    // Far longer than the five deliveries of the default retry policy would last.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(bus.all_dead_letters().is_empty(), "dead-lettered during the outage: {:?}", bus.all_dead_letters());
    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Running { step: 0 }));

    store.hook().down.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), runtime.settle()).await.expect("settles after the outage");
    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Completed));
    assert_eq!(runtime.health().store, StoreHealth::Healthy);
    assert_eq!(effects(&*runtime.store(), BookFlight::NAME, 1).await, 1);
    assert!(bus.all_dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_store_stops_consumption_is_reported_and_dead_letters_nothing() {
    let bus = InMemoryBus::new();
    let store = Arc::new(Intercepted::new(MemoryStore::new(), StepCommitsFail::default()));
    store.hook().fail_with(StoreError::Broken { reason: "a flush failed (simulated EIO)".into() });
    let runtime = trip_runtime(&Script::default()).store(store).bus(bus.clone()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    wait_for("the broken store showing in health", Duration::from_secs(5), async || {
        matches!(runtime.health().store, StoreHealth::Broken { .. })
    })
    .await;
    let StoreHealth::Broken { reason } = runtime.health().store else { unreachable!() };
    assert!(reason.contains("simulated EIO"), "{reason}");

    // Nothing more is taken from the bus: a new order stays queued, not dead-lettered.
    runtime.publish(&BookTrip { trip: 2 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status(&runtime, 2).await, None, "consumption stopped");
    assert!(bus.all_dead_letters().is_empty(), "{:?}", bus.all_dead_letters());
    assert!(bus.activity().unwrap().pending() > 0, "the messages wait on the bus for the restart");
    runtime.kill().await;
}

/// Fails the durability of every commit and barrier until a moment has passed.
struct FlushesFailUntil(Mutex<Option<Instant>>);

impl FlushesFailUntil {
    fn failing(&self) -> bool {
        self.0.lock().unwrap().is_some_and(|until| Instant::now() < until)
    }

    fn failed() -> Durable {
        Box::pin(async { Err(StoreError::Io("fdatasync: Input/output error (simulated)".into())) })
    }
}

#[async_trait::async_trait]
impl CommitHook for FlushesFailUntil {
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
        let mut committed = store.commit(commit).await?;
        if self.failing() {
            committed.durable = Self::failed();
        }
        Ok(committed)
    }

    fn barrier(&self, store: &dyn Store) -> Durable {
        if self.failing() { Self::failed() } else { store.barrier() }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_flush_failed_is_relayed_once_the_store_is_durable_again_without_a_restart() {
    let bus = InMemoryBus::new();
    let store = Arc::new(Intercepted::new(MemoryStore::new(), FlushesFailUntil(Mutex::new(None))));
    let runtime = trip_runtime(&Script::default()).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    *store.hook().0.lock().unwrap() = Some(Instant::now() + Duration::from_secs(3));
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(effects(&*runtime.store(), BookFlight::NAME, 1).await, 0, "nothing is published before it is durable");

    tokio::time::timeout(Duration::from_secs(15), runtime.settle()).await.expect("settles once flushes work");
    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Completed));
    assert!(runtime.store().outbox(None, 10).await.unwrap().is_empty());
    assert!(bus.all_dead_letters().is_empty());
}

fn trip_one(e: &Envelope) -> bool {
    e.name == BookFlight::NAME && e.payload == br#"{"trip":1}"#
}

async fn other_trips_complete(runtime: &SagaRuntime) {
    for trip in 2..=6 {
        runtime.publish(&BookTrip { trip }).await.unwrap();
    }
    wait_for("trips 2 to 6 completing", Duration::from_secs(10), async || {
        for trip in 2..=6 {
            if status(runtime, trip).await != Some(SagaStatus::Completed) {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_entry_the_bus_refuses_for_good_is_parked_with_its_reason_and_stalls_nothing_else() {
    let store = Arc::new(MemoryStore::new());
    let bus = Refusing {
        inner: InMemoryBus::new(),
        refuse: |e| {
            trip_one(e).then(|| BusError::Refused { name: e.name.clone(), reason: "maximum payload exceeded".into() })
        },
    };
    let script = Script::default();
    let runtime = trip_runtime(&script).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    other_trips_complete(&runtime).await;
    runtime.settle().await;
    let parked = runtime.parked_outbox(10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].envelope.name, BookFlight::NAME);
    assert!(parked[0].reason.contains("maximum payload exceeded"), "{}", parked[0].reason);
    assert!(store.outbox(None, 10).await.unwrap().is_empty(), "it left the outbox");
    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Running { step: 0 }), "its saga waits for an operator");
}

/// While set, the bus of the replay test refuses trip 1's flight booking.
static REFUSE_TRIP_ONE: AtomicBool = AtomicBool::new(true);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_outbox_entry_replayed_by_an_operator_is_published_and_its_saga_goes_on() {
    let bus = Refusing {
        inner: InMemoryBus::new(),
        refuse: |e| {
            (trip_one(e) && REFUSE_TRIP_ONE.load(Ordering::SeqCst))
                .then(|| BusError::Refused { name: e.name.clone(), reason: "maximum payload exceeded".into() })
        },
    };
    let runtime = trip_runtime(&Script::default()).store(MemoryStore::new()).bus(bus).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let admin = runtime.admin();
    let parked = admin.parked(None, 10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].message.name, BookFlight::NAME);
    assert_eq!(parked[0].instance, Some(sagaflow::saga::instance_id(Trip::NAME, "1")));

    REFUSE_TRIP_ONE.store(false, Ordering::SeqCst);
    admin.replay_parked(parked[0].seq).await.unwrap();
    runtime.wait_until_all_terminal(Duration::from_secs(30)).await.unwrap();
    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Completed));
    assert!(admin.parked(None, 10).await.unwrap().is_empty(), "no longer parked");
    assert_eq!(effects(&*runtime.store(), BookFlight::NAME, 1).await, 1);
    let again = admin.replay_parked(parked[0].seq).await.unwrap_err();
    assert!(matches!(again, sagaflow::Error::NotFound(_)), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_outbox_entry_discarded_by_an_operator_is_gone_for_good() {
    let store = Arc::new(MemoryStore::new());
    let bus = Refusing {
        inner: InMemoryBus::new(),
        refuse: |e| trip_one(e).then(|| BusError::Refused { name: e.name.clone(), reason: "too big".into() }),
    };
    let runtime = trip_runtime(&Script::default()).store(store.clone()).bus(bus).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let admin = runtime.admin();
    let parked = admin.parked(None, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    admin.discard_parked(parked[0].seq).await.unwrap();
    assert!(admin.parked(None, 10).await.unwrap().is_empty());
    assert!(store.outbox(None, 10).await.unwrap().is_empty(), "and not back in the outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_entry_that_keeps_failing_stalls_no_other_saga_and_no_restart() {
    let store = Arc::new(MemoryStore::new());
    let bus = Refusing {
        inner: InMemoryBus::new(),
        refuse: |e| trip_one(e).then(|| BusError::Transport("connection reset (simulated)".into())),
    };
    let script = Script::default();
    let runtime = trip_runtime(&script).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    other_trips_complete(&runtime).await;
    assert_eq!(store.outbox(None, 10).await.unwrap().len(), 1, "the failing entry stays in the outbox");

    runtime.kill().await;
    let restarted = tokio::time::timeout(
        Duration::from_secs(2),
        trip_runtime(&script).store(store.clone()).bus(bus.clone()).build(),
    )
    .await
    .expect("build() returns while the outbox entry still fails")
    .unwrap();
    assert_eq!(store.outbox(None, 10).await.unwrap().len(), 1, "and it is still kept");
    restarted.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nothing_takes_is_retried_then_parked_after_the_grace_period() {
    let bus = Refusing {
        inner: InMemoryBus::new(),
        refuse: |e| {
            trip_one(e).then(|| BusError::Unroutable { name: e.name.clone(), detail: "its queue is not there".into() })
        },
    };
    let runtime = trip_runtime(&Script::default())
        .store(MemoryStore::new())
        .bus(bus)
        .park_unroutable_after(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), runtime.settle()).await.expect("settles once it is parked");
    let parked = runtime.parked_outbox(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0].reason.contains("its queue is not there"), "{}", parked[0].reason);
}

/// The in-memory bus, failing the first publishes of trip 1's flight booking, and recording
/// the order in which trip 1's messages went out.
#[derive(Clone, Default)]
struct Flaky {
    inner: InMemoryBus,
    failures_left: Arc<Mutex<u32>>,
    sent: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl Bus for Flaky {
    async fn publish(&self, e: Envelope) -> Result<(), BusError> {
        if trip_one(&e) {
            let mut left = self.failures_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(BusError::Transport("connection reset (simulated)".into()));
            }
        }
        let name = e.name.clone();
        let trip_one_message = e.payload == br#"{"trip":1}"#;
        self.inner.publish(e).await?;
        if trip_one_message {
            self.sent.lock().unwrap().push(name);
        }
        Ok(())
    }
    async fn subscribe(&self, s: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.inner.subscribe(s, names).await
    }
    async fn subscribe_exclusive(&self, s: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.inner.subscribe_exclusive(s, names).await
    }
    async fn unsubscribe(&self, s: &str) -> Result<(), BusError> {
        self.inner.unsubscribe(s).await
    }
    fn activity(&self) -> Option<Arc<sagaflow::activity::Activity>> {
        self.inner.activity()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instances_messages_go_out_in_order_even_when_a_publish_fails() {
    let bus = Flaky::default();
    *bus.failures_left.lock().unwrap() = 6;
    let runtime = trip_runtime(&Script::default()).store(MemoryStore::new()).bus(bus.clone()).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    // The customer cancels while the flight booking cannot be published: its compensation
    // (cancel the flight) must not reach the airline before the booking does.
    tokio::time::sleep(Duration::from_millis(100)).await;
    runtime.publish(&TripCancelled { trip: 1 }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), runtime.settle()).await.expect("settles once publishing works");
    let sent = bus.sent.lock().unwrap().clone();
    let (book, cancel) =
        (sent.iter().position(|n| n == BookFlight::NAME), sent.iter().position(|n| n == CancelFlight::NAME));
    assert!(matches!((book, cancel), (Some(b), Some(c)) if b < c), "trip 1's messages went out as {sent:?}");
    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Compensated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_waits_for_the_outbox_an_earlier_run_left() {
    let store = Arc::new(MemoryStore::new());
    let bus =
        Refusing { inner: InMemoryBus::new(), refuse: |e| trip_one(e).then(|| BusError::Transport("down".into())) };
    let script = Script::default();
    let first = trip_runtime(&script).store(store.clone()).bus(bus.clone()).build().await.unwrap();
    first.publish(&BookTrip { trip: 1 }).await.unwrap();
    wait_for("the booking to be committed", Duration::from_secs(5), async || {
        !store.outbox(None, 10).await.unwrap().is_empty()
    })
    .await;
    first.kill().await;
    // The next run, on a bus that takes it: settle returns only once the leftover is out.
    let second = trip_runtime(&script).store(store.clone()).bus(bus.inner.clone()).build().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), second.settle()).await.expect("settles");
    assert!(store.outbox(None, 10).await.unwrap().is_empty(), "settle returned with the leftover unpublished");
    assert_eq!(status(&second, 1).await, Some(SagaStatus::Completed));
}
