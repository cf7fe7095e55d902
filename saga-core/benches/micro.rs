//! Micro benchmarks of the hot path's pieces (criterion): `cargo bench -p saga-core --bench micro`.
//!
//! - envelope: a command's envelope encoded and decoded (JSON payload, as on the bus) and the
//!   same envelope as the store encodes it in the outbox (postcard);
//! - ids: `derive_id` (every outgoing message and timer) and `instance_id`;
//! - commit: one saga-start-shaped commit (inbox, instance, status index, history, one outbox
//!   entry, one timer) on `MemoryStore`, and on `SledStore` with `Durability::None` (applied,
//!   not flushed).
//!
//! The end-to-end figures are `benches/throughput` at the workspace root.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use saga_core::message::{Envelope, JsonCodec, Message, Timestamp, derive_id};
use saga_core::saga::instance_id;
use saga_core::store::{
    Commit, Durability, HistoryEntry, HistoryEvent, InstanceRecord, InstanceWrite, MemoryStore, SagaStatus,
    SledOptions, SledStore, Store, TimerKey, TimerPurpose, TimerRecord,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    product_id: u32,
    units: u32,
}

/// Shaped like the order example's `ReserveStock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReserveStock {
    order_id: Uuid,
    items: Vec<Item>,
}

impl Message for ReserveStock {
    const NAME: &'static str = "catalog.reserve-stock";
    fn correlation_key(&self) -> Option<String> {
        Some(self.order_id.to_string())
    }
}

fn command() -> ReserveStock {
    ReserveStock {
        order_id: Uuid::from_u128(0x5a6a_0000_0000_0000_0000_0000_0000_0001),
        items: vec![Item { product_id: 7, units: 2 }, Item { product_id: 13, units: 1 }],
    }
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let cmd = command();
    g.bench_function("json encode", |b| b.iter(|| Envelope::encode(&JsonCodec, std::hint::black_box(&cmd))));
    let env = Envelope::encode(&JsonCodec, &cmd).expect("encode");
    g.bench_function("json decode", |b| b.iter(|| std::hint::black_box(&env).decode::<ReserveStock>(&JsonCodec)));
    g.bench_function("postcard encode (outbox)", |b| b.iter(|| postcard::to_stdvec(std::hint::black_box(&env))));
    let bytes = postcard::to_stdvec(&env).expect("encode");
    g.bench_function("postcard decode (outbox)", |b| {
        b.iter(|| postcard::from_bytes::<Envelope>(std::hint::black_box(&bytes)))
    });
    g.finish();
}

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("ids");
    let (consumer, cause) = (Uuid::from_u128(1), Uuid::from_u128(2));
    g.bench_function("derive_id", |b| b.iter(|| derive_id(std::hint::black_box(consumer), cause, 3)));
    g.bench_function("instance_id", |b| {
        b.iter(|| instance_id(std::hint::black_box("order-fulfilment"), "5a6a0000-0000-0000-0000-000000000001"))
    });
    g.finish();
}

/// A commit shaped like a saga's start: new instance, inbox, history, one command, one timer.
fn start_commit(n: u64) -> Commit {
    let id = Uuid::from_u128(u128::from(n) << 64 | 1);
    let message = Uuid::from_u128(u128::from(n) << 64 | 2);
    let now = Timestamp(1_700_000_000_000);
    let timer =
        TimerKey { due: now.plus(Duration::from_secs(30)), instance_id: id, timer_id: derive_id(id, message, 1) };
    let record = InstanceRecord {
        id,
        saga: "order-fulfilment".into(),
        saga_version: 1,
        key: id.to_string(),
        status: SagaStatus::Running { step: 0 },
        version: 1,
        state: serde_json::to_vec(&command()).expect("encode"),
        awaiting: None,
        failure: None,
        created_at: now,
        updated_at: now,
    };
    let mut env = Envelope::encode(&JsonCodec, &command()).expect("encode");
    env.message_id = derive_id(id, message, 0);
    env.correlation_id = Some(id);
    Commit {
        inbox: Some((id, message)),
        instance: Some(InstanceWrite { record, previous: None, previous_updated_at: None }),
        outbox: vec![env],
        timers_add: vec![TimerRecord {
            key: timer,
            saga: "order-fulfilment".into(),
            purpose: TimerPurpose::Timeout { step: 0, phase: saga_core::store::Phase::Action, attempt: 1 },
            trace: Default::default(),
        }],
        history: Some(HistoryEntry {
            version: 1,
            at: now,
            cause: None,
            events: vec![HistoryEvent::StatusChanged { to: SagaStatus::Running { step: 0 } }],
        }),
        ..Commit::default()
    }
}

fn commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime");
    let mut g = c.benchmark_group("commit");
    let next = AtomicU64::new(0);
    let memory = MemoryStore::new();
    g.bench_function("MemoryStore", |b| {
        b.to_async(&rt).iter_batched(
            || start_commit(next.fetch_add(1, Ordering::Relaxed)),
            |commit| async { memory.commit(commit).await.expect("commit").durable.await.expect("durable") },
            BatchSize::SmallInput,
        )
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sled = SledStore::open_with(dir.path(), SledOptions::default().durability(Durability::None)).expect("open");
    g.bench_function("SledStore, Durability::None", |b| {
        b.to_async(&rt).iter_batched(
            || start_commit(next.fetch_add(1, Ordering::Relaxed)),
            |commit| async { sled.commit(commit).await.expect("commit").durable.await.expect("durable") },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = envelope, ids, commit
}
criterion_main!(micro);
