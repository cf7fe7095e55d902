//! The store conformance suite on the memory store and on sled under each durability, and
//! what is particular to sled (reopening, group commit, the format check).

use saga_core::message::{Envelope, Timestamp};
use saga_core::store::{
    Commit, Durability, InstanceRecord, InstanceWrite, SagaStatus, SledOptions, SledStore, Store, StoreError,
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

async fn commit(store: &dyn Store, c: Commit) -> Result<(), StoreError> {
    store.commit(c).await?.durable.await
}

mod memory {
    saga_core::store_conformance_tests!(async { Some(saga_core::store::MemoryTarget) });
}

mod sled_immediate {
    saga_core::store_conformance_tests!(async {
        Some(saga_core::store::SledTarget::new(saga_core::store::Durability::Immediate))
    });
}

mod sled_group {
    saga_core::store_conformance_tests!(async {
        Some(saga_core::store::SledTarget::new(saga_core::store::Durability::default()))
    });
}

mod sled_unsynced {
    saga_core::store_conformance_tests!(async {
        Some(saga_core::store::SledTarget::new(saga_core::store::Durability::None))
    });
}

#[tokio::test]
async fn committed_work_survives_reopening_the_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::now_v7();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let c = Commit {
            instance: Some(InstanceWrite {
                record: record(id, 1, SagaStatus::Running { step: 0 }),
                previous: None,
                previous_updated_at: None,
            }),
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

/// sled itself on a store's directory. sled's own I/O threads may hold the directory's lock
/// a moment after a store there is dropped: wait for them to let go.
fn open_sled_directly(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => panic!("cannot open {} with sled: {e}", path.display()),
        }
    }
}

/// Opens a store whose format marker was overwritten with `version`.
fn open_store_of_format(version: u32) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    {
        let db = open_sled_directly(dir.path());
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
        let db = open_sled_directly(dir.path());
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

#[cfg(feature = "postgres")]
mod postgres {
    saga_core::store_conformance_tests!(async { saga_core::store::PostgresTarget::from_env() });
}
