use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt};

use super::kv::{Batch, KeyValue, KvStore, OrderedKv, Rejection, Write, leading_version};
use super::{Durable, StoreError};

/// The store kept in memory: same layout and semantics as [`SledStore`](super::SledStore),
/// durable only as long as the process. For tests and for the CPU side of benchmarks.
///
/// ```
/// use saga_core::store::MemoryStore;
/// let store = MemoryStore::new();
/// # let _ = store;
/// ```
pub type MemoryStore = KvStore<MemoryKv>;

impl KvStore<MemoryKv> {
    /// An empty in-memory store.
    pub fn new() -> Self {
        // An empty engine always accepts the format marker.
        match KvStore::on(MemoryKv::default()) {
            Ok(store) => store,
            Err(e) => unreachable!("an empty in-memory store cannot fail to open: {e}"),
        }
    }
}

impl Default for KvStore<MemoryKv> {
    fn default() -> Self {
        Self::new()
    }
}

/// A `BTreeMap` under a mutex, as an [`OrderedKv`] engine.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // Writes to the map are single calls that do not unwind halfway; a poisoned lock
        // still guards a consistent map.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OrderedKv for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self
            .map()
            .range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_key(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map()
            .range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to)))
            .next_back()
            .map(|(k, _)| k.clone()))
    }

    fn apply(&self, batch: Batch) -> Result<Result<(), Rejection>, StoreError> {
        let mut map = self.map();
        let verdict = batch.check(|k| Ok::<_, StoreError>(map.get(k).map(|v| leading_version(v))))?;
        if verdict.is_ok() {
            for write in batch.into_writes() {
                match write {
                    Write::Put(k, v) => map.insert(k, v),
                    Write::Delete(k) => map.remove(&k),
                };
            }
        }
        Ok(verdict)
    }

    fn remove(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut map = self.map();
        for k in keys {
            map.remove(k);
        }
        Ok(())
    }

    fn durable(&self) -> Durable {
        futures::future::ready(Ok(())).boxed()
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
