//! The store contract, on both engines.

use saga_core::message::{Envelope, Timestamp};
use saga_core::store::{
    Commit, Durability, EntityWrite, InstanceRecord, InstanceWrite, MemoryStore, Phase, SagaStatus, SledOptions,
    SledStore, StatusKind, Store, StoreError, TimerKey, TimerPurpose, TimerRecord,
};
use uuid::Uuid;

fn record(id: Uuid, version: u64, status: SagaStatus) -> InstanceRecord {
    InstanceRecord {
        id,
        saga: "s".into(),
        saga_version: 1,
        key: "k".into(),
        status,
        version,
        state: b"{}".to_vec(),
        awaiting: None,
        failure: None,
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
    }
}

fn timer(due: u64, instance_id: Uuid) -> TimerRecord {
    TimerRecord {
        key: TimerKey { due: Timestamp(due), instance_id, timer_id: Uuid::now_v7() },
        saga: "s".into(),
        purpose: TimerPurpose::Timeout { step: 0, phase: Phase::Action, attempt: 1 },
    }
}

async fn commit(store: &dyn Store, c: Commit) -> Result<(), StoreError> {
    store.commit(c).await?.durable.await
}

async fn contract(store: &dyn Store) {
    let id = Uuid::now_v7();
    let msg = Uuid::now_v7();
    let created = Commit {
        inbox: Some((id, msg)),
        instance: Some(InstanceWrite { record: record(id, 1, SagaStatus::Running { step: 0 }), previous: None }),
        outbox: vec![Envelope::new("a", vec![1]), Envelope::new("b", vec![2])],
        timers_add: vec![timer(50, id), timer(10, id)],
        ..Commit::default()
    };
    commit(store, created.clone()).await.unwrap();

    // The inbox rejects the same message for the same consumer, atomically.
    assert!(matches!(commit(store, created).await, Err(StoreError::Duplicate { .. })));
    assert!(store.processed(id, msg).await.unwrap());
    assert_eq!(store.instance(id).await.unwrap().unwrap().version, 1);

    // The optimistic check: a writer that read version 0 loses.
    let stale = Commit {
        instance: Some(InstanceWrite {
            record: record(id, 1, SagaStatus::Completed),
            previous: Some((0, StatusKind::Running)),
        }),
        ..Commit::default()
    };
    assert!(matches!(commit(store, stale).await, Err(StoreError::Conflict { expected: 0, found: 1, .. })));

    // The status index follows the status, also from a step to the next of the same kind.
    let next_step = Commit {
        instance: Some(InstanceWrite {
            record: record(id, 2, SagaStatus::Running { step: 1 }),
            previous: Some((1, StatusKind::Running)),
        }),
        ..Commit::default()
    };
    commit(store, next_step).await.unwrap();
    assert_eq!(store.instances_with_status(StatusKind::Running, 10).await.unwrap(), vec![id]);
    let done = Commit {
        instance: Some(InstanceWrite {
            record: record(id, 3, SagaStatus::Completed),
            previous: Some((2, StatusKind::Running)),
        }),
        ..Commit::default()
    };
    commit(store, done).await.unwrap();
    assert!(store.instances_with_status(StatusKind::Running, 10).await.unwrap().is_empty());
    assert_eq!(store.instances_with_status(StatusKind::Completed, 10).await.unwrap(), vec![id]);

    // Timers come back in due order; the outbox in commit order until removed.
    let due: Vec<u64> = store.timers_due(Timestamp(60), None, 10).await.unwrap().iter().map(|t| t.key.due.0).collect();
    assert_eq!(due, vec![10, 50]);
    assert_eq!(store.timers_due(Timestamp(20), None, 10).await.unwrap().len(), 1);
    assert_eq!(store.next_timer(Timestamp(10)).await.unwrap().map(|k| k.due.0), Some(50));
    let outbox = store.outbox(None, 10).await.unwrap();
    assert_eq!(outbox.iter().map(|e| e.envelope.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    store.remove_outbox(&[outbox[0].seq]).await.unwrap();
    assert_eq!(store.outbox(None, 10).await.unwrap().len(), 1);

    // Participant records are versioned too.
    let write = |expected| Commit {
        entities: vec![EntityWrite {
            scope: "catalog".into(),
            key: "stock/1".into(),
            expected_version: expected,
            value: b"7".to_vec(),
        }],
        ..Commit::default()
    };
    commit(store, write(0)).await.unwrap();
    assert!(matches!(commit(store, write(0)).await, Err(StoreError::Conflict { .. })));
    commit(store, write(1)).await.unwrap();
    assert_eq!(store.entity("catalog", "stock/1").await.unwrap().unwrap().version, 2);
    assert_eq!(store.entities("catalog", 10).await.unwrap()[0].0, "stock/1");

    // A commit writes messages into queues, and one that consumes a queue entry in place of
    // its inbox entry takes it once: a second commit for it is a duplicate, and no inbox
    // entry is written.
    let sent = Commit { queued: vec![("billing".into(), Envelope::new("c", vec![3]))], ..Commit::default() };
    let committed = store.commit(sent).await.unwrap();
    committed.durable.await.unwrap();
    let entry = committed.queued[0].seq;
    assert_eq!(store.queued("billing", None, 10).await.unwrap().len(), 1);
    let (consumer, message) = (Uuid::now_v7(), committed.queued[0].envelope.message_id);
    let consume =
        Commit { inbox: Some((consumer, message)), consumes: Some(("billing".into(), entry)), ..Commit::default() };
    assert!(store.commit(consume.clone()).await.unwrap().consumed_queue_entry);
    assert!(store.queued("billing", None, 10).await.unwrap().is_empty(), "the entry went with the commit");
    assert!(matches!(commit(store, consume).await, Err(StoreError::Duplicate { .. })));
    assert!(!store.processed(consumer, message).await.unwrap(), "the entry was the dedupe record, not the inbox");
}

#[tokio::test]
async fn the_memory_store_keeps_the_store_contract() {
    contract(&MemoryStore::new()).await;
}

#[tokio::test]
async fn the_sled_store_keeps_the_store_contract_under_every_durability() {
    for durability in [Durability::Immediate, Durability::default(), Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        contract(&SledStore::open_with(dir.path(), SledOptions::default().durability(durability)).unwrap()).await;
    }
}

#[tokio::test]
async fn committed_work_survives_reopening_the_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::now_v7();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let c = Commit {
            instance: Some(InstanceWrite { record: record(id, 1, SagaStatus::Running { step: 0 }), previous: None }),
            outbox: vec![Envelope::new("a", vec![])],
            ..Commit::default()
        };
        commit(&store, c).await.unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.instance(id).await.unwrap().unwrap().status, SagaStatus::Running { step: 0 });
    // Outbox positions continue after the ones already used.
    let c = Commit { outbox: vec![Envelope::new("b", vec![])], ..Commit::default() };
    let outbox = store.commit(c).await.unwrap().outbox;
    let first = store.outbox(None, 1).await.unwrap()[0].seq;
    assert!(outbox[0].seq > first);
}

#[tokio::test]
async fn a_group_commit_resolves_every_waiter_of_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions::default()
        .durability(Durability::Group { max_delay: std::time::Duration::from_millis(5), max_batch: 64 });
    let store = SledStore::open_with(dir.path(), options).unwrap();
    let mut pending = Vec::new();
    for _ in 0..200 {
        let c = Commit { outbox: vec![Envelope::new("a", vec![])], ..Commit::default() };
        pending.push(store.commit(c).await.unwrap().durable);
    }
    for result in futures::future::join_all(pending).await {
        result.unwrap();
    }
    assert_eq!(store.outbox(None, 1000).await.unwrap().len(), 200);
}

/// Opens a store whose format marker was overwritten with `version`.
fn open_store_of_format(version: u32) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"mformat", &version.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    SledStore::open(dir.path()).unwrap_err()
}

#[test]
fn a_store_of_a_newer_format_is_refused_with_a_clear_error() {
    let err = open_store_of_format(99);
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found: 99, supported: saga_core::store::FORMAT_VERSION, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("run a newer sagaflow"), "{err}");
}

#[test]
fn a_store_of_an_older_format_is_refused_with_a_clear_error() {
    let err = open_store_of_format(saga_core::store::FORMAT_VERSION - 1);
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found, supported: saga_core::store::FORMAT_VERSION, .. } if found + 1 == saga_core::store::FORMAT_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("the release that wrote it"), "{err}");
}

#[test]
fn a_directory_of_foreign_data_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"hello", b"world").unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a sagaflow store"), "{err}");
}

#[test]
fn a_corrupted_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0xA5; 4096]).unwrap();
        }
    }
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("cannot open the store at"), "{err}");
    assert!(err.to_string().contains("restore it from a backup"), "{err}");
}
