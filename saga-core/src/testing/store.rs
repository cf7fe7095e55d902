//! A store that fails chosen commits, for fault-injection tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

use crate::message::Timestamp;
use crate::store::{
    Commit, Committed, Durable, EntityRecord, HistoryEntry, InstanceRecord, OutboxEntry, StatusKind, Store, StoreError,
    TimerKey, TimerRecord,
};

/// Delegates to a store, failing the commit whose number (from 1) is in `fail_at`.
pub(crate) struct FaultyStore {
    pub(crate) inner: Arc<dyn Store>,
    commits: AtomicU64,
    fail_at: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl FaultyStore {
    pub(crate) fn new(inner: Arc<dyn Store>, fail_at: Arc<std::sync::Mutex<Vec<u64>>>) -> Self {
        FaultyStore { inner, commits: AtomicU64::new(0), fail_at }
    }
}

#[async_trait::async_trait]
impl Store for FaultyStore {
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = {
            let mut fail_at = self.fail_at.lock().unwrap_or_else(|e| e.into_inner());
            let hit = fail_at.contains(&n);
            fail_at.retain(|f| *f != n);
            hit
        };
        if fail {
            return Err(StoreError::Io(format!("injected failure of commit #{n}")));
        }
        self.inner.commit(commit).await
    }
    fn barrier(&self) -> Durable {
        self.inner.barrier()
    }
    async fn instance(&self, id: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        self.inner.instance(id).await
    }
    async fn instances_with_status(&self, status: StatusKind, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        self.inner.instances_with_status(status, limit).await
    }
    async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        self.inner.history(id).await
    }
    async fn processed(&self, consumer: Uuid, message_id: Uuid) -> Result<bool, StoreError> {
        self.inner.processed(consumer, message_id).await
    }
    async fn entity(&self, scope: &str, key: &str) -> Result<Option<EntityRecord>, StoreError> {
        self.inner.entity(scope, key).await
    }
    async fn entities(&self, scope: &str, limit: usize) -> Result<Vec<(String, EntityRecord)>, StoreError> {
        self.inner.entities(scope, limit).await
    }
    async fn timers_due(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        self.inner.timers_due(upto, after, limit).await
    }
    async fn next_timer(&self, after: Timestamp) -> Result<Option<TimerKey>, StoreError> {
        self.inner.next_timer(after).await
    }
    async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.outbox(limit).await
    }
    async fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.inner.remove_outbox(seqs).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
}
