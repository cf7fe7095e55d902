//! One implementation of [`Store`] over any ordered key-value engine.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use uuid::Uuid;

use super::layout as key;
use super::{
    Commit, Committed, Durable, Enqueued, EntityRecord, FORMAT_VERSION, HistoryEntry, InstanceCount, InstanceCounts,
    InstanceCursor, InstanceListing, InstanceQuery, InstanceRecord, OutboxEntry, PRUNE_BATCH, ParkedOutboxEntry,
    PruneOutcome, QueueDeadLetter, QueuedMessage, RetentionCandidate, SCAN_BUDGET, StatusKind, Store, StoreError,
    TimerKey, TimerRecord, Tombstone,
};
use crate::message::{Envelope, Timestamp};

/// Why a [`Batch`]'s checks refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The inbox already holds the message.
    Duplicate {
        /// Consumer id.
        consumer: Uuid,
        /// Message id.
        message_id: Uuid,
    },
    /// A versioned record is not at the version the writer read.
    Conflict {
        /// What the record is.
        what: String,
        /// The version the writer read.
        expected: u64,
        /// The version found.
        found: u64,
    },
}

impl From<Rejection> for StoreError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Duplicate { consumer, message_id } => StoreError::Duplicate { consumer, message_id },
            Rejection::Conflict { what, expected, found } => StoreError::Conflict { what, expected, found },
        }
    }
}

enum Check {
    Absent { key: Vec<u8>, rejection: Rejection },
    Present { key: Vec<u8>, rejection: Rejection },
    Version { key: Vec<u8>, expected: u64, what: Subject },
}

/// What a versioned record is, formatted only when a check fails (the hot path never does).
enum Subject {
    Instance(Uuid),
    Entity { scope: String, key: String },
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Instance(id) => write!(f, "saga instance {id}"),
            Subject::Entity { scope, key } => write!(f, "record {key:?} of {scope:?}"),
        }
    }
}

/// A parked outbox entry as stored (its serde form is part of the store format).
#[derive(serde::Serialize, serde::Deserialize)]
struct Parked {
    reason: String,
    parked_at: Timestamp,
    envelope: Envelope,
}

/// A dead-lettered queue message as stored (its serde form is part of the store format).
#[derive(serde::Serialize, serde::Deserialize)]
struct DeadQueued {
    subscription: String,
    reason: String,
    at: Timestamp,
    envelope: Envelope,
}

/// One write of a batch.
///
/// Its serde form is stored: [`SledKv`](super::SledKv) keeps a batch's writes as a
/// write-ahead record while it applies them, so changing this enum changes the store format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Write {
    /// Insert or replace.
    Put(Vec<u8>, Vec<u8>),
    /// Remove.
    Delete(Vec<u8>),
}

/// The writes of one commit with the checks that must hold before any of them is applied.
///
/// An engine applies a batch by running [`Batch::check`] and then every write **in order**
/// (a status index entry is removed before its successor is put, which may be the same key),
/// with no other batch in between, and so that a crash keeps all of its writes or none (a
/// transaction, or a write-ahead record as [`SledKv`](super::SledKv) does). The check reads the
/// first eight bytes of versioned values.
#[derive(Default)]
pub struct Batch {
    checks: Vec<Check>,
    writes: Vec<Write>,
}

impl Batch {
    /// Runs the checks with `version_of(key)`, which returns `None` for an absent key and the
    /// value's leading big-endian `u64` (0 if shorter) otherwise.
    pub fn check<E>(
        &self,
        mut version_of: impl FnMut(&[u8]) -> Result<Option<u64>, E>,
    ) -> Result<Result<(), Rejection>, E> {
        for check in &self.checks {
            match check {
                Check::Absent { key, rejection } => {
                    if version_of(key)?.is_some() {
                        return Ok(Err(rejection.clone()));
                    }
                }
                Check::Present { key, rejection } => {
                    if version_of(key)?.is_none() {
                        return Ok(Err(rejection.clone()));
                    }
                }
                Check::Version { key, expected, what } => {
                    let found = version_of(key)?.unwrap_or(0);
                    if found != *expected {
                        return Ok(Err(Rejection::Conflict { what: what.to_string(), expected: *expected, found }));
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    /// The writes, to apply in this order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// The writes, owned, to apply in this order.
    pub fn into_writes(self) -> Vec<Write> {
        self.writes
    }

    pub(crate) fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.writes.push(Write::Put(k, v));
    }

    pub(crate) fn delete(&mut self, k: Vec<u8>) {
        self.writes.push(Write::Delete(k));
    }
}

/// The leading version of a stored value, as [`Batch::check`] wants it.
pub fn leading_version(value: &[u8]) -> u64 {
    value.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b))
}

/// A key and its value, as scans return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An ordered key-value engine that [`KvStore`] can run on.
pub trait OrderedKv: Send + Sync + 'static {
    /// A point read.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keys in `[from, to)` in order, at most `limit`.
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError>;
    /// The greatest key in `[from, to)`.
    fn last_key(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies a batch atomically if its checks hold.
    fn apply(&self, batch: Batch) -> Result<Result<(), Rejection>, StoreError>;
    /// Finishes what a crash interrupted (a half-applied batch), before the store is used.
    /// [`KvStore::on`] calls it once, after the format check. The default does nothing.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Removes keys (not necessarily atomically).
    fn remove(&self, keys: &[Vec<u8>]) -> Result<(), StoreError>;
    /// A future that resolves when everything applied so far is durable under the engine's
    /// durability policy.
    fn durable(&self) -> Durable;
    /// Flushes everything applied so far.
    fn flush(&self) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Where the data lives, for error messages.
    fn location(&self) -> String;
    /// Whether durable data survives the process (see [`Store::is_persistent`]). Default: no.
    fn is_persistent(&self) -> bool {
        false
    }
}

/// The [`Store`] over an [`OrderedKv`] engine; see [`SledStore`](super::SledStore) and
/// [`MemoryStore`](super::MemoryStore).
pub struct KvStore<B> {
    kv: B,
    next_outbox_seq: AtomicU64,
    next_queue_seq: AtomicU64,
}

impl<B> std::fmt::Debug for KvStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").finish_non_exhaustive()
    }
}

impl<B: OrderedKv> KvStore<B> {
    /// Opens a store on `kv`: checks (or, for an empty engine, writes) the format version.
    pub fn on(kv: B) -> Result<Self, StoreError> {
        match kv.get(key::META_FORMAT)? {
            Some(bytes) => {
                let found =
                    <[u8; 4]>::try_from(bytes.as_slice()).map(u32::from_be_bytes).map_err(|_| StoreError::Corrupt {
                        what: "format marker",
                        key: key::hex(key::META_FORMAT),
                        reason: format!("{} bytes instead of 4", bytes.len()),
                    })?;
                if found != FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        path: kv.location(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            None => {
                if !kv.scan(&[], &[u8::MAX], 1)?.is_empty() {
                    return Err(StoreError::Open {
                        path: kv.location(),
                        reason: "it holds data but no sagaflow format marker, so it is not a sagaflow store".into(),
                    });
                }
                let mut batch = Batch::default();
                batch.put(key::META_FORMAT.to_vec(), FORMAT_VERSION.to_be_bytes().to_vec());
                kv.apply(batch)?.map_err(StoreError::from)?;
            }
        }
        kv.recover()?;
        // Parked entries keep their position, so a new entry must come after them too.
        let mut next = 1;
        for prefix in [key::OUTBOX, key::PARKED] {
            if let Some(k) = kv.last_key(&[prefix], &key::prefix_end(&[prefix]))? {
                next = next.max(key::u64_at("outbox", &k, 1)? + 1);
            }
        }
        let next_queue = Self::last_queue_seq(&kv)? + 1;
        let store = KvStore { kv, next_outbox_seq: AtomicU64::new(next), next_queue_seq: AtomicU64::new(next_queue) };
        store.index_finished_before_retention()?;
        Ok(store)
    }

    /// Adds to the index of finished instances (by saga and finish time, what retention reads)
    /// the instances that finished before a commit wrote it, so that retention finds them
    /// too: once, at the first open by a version that has the index, a page of the status
    /// index per write (their last change stands in for the time they finished).
    fn index_finished_before_retention(&self) -> Result<(), StoreError> {
        const PAGE: usize = 1000;
        if self.kv.get(key::META_FINISHED_INDEXED)?.is_some() {
            return Ok(());
        }
        for kind in StatusKind::ALL.into_iter().filter(|k| k.is_prunable()) {
            let prefix = key::status_prefix(kind);
            let (mut from, end) = (prefix.clone(), key::prefix_end(&prefix));
            loop {
                let page = self.kv.scan(&from, &end, PAGE)?;
                let mut batch = Batch::default();
                for (k, _) in &page {
                    let id = key::uuid_at("status index", k, 2)?;
                    if let Some(record) = self.read_instance(id)? {
                        batch.put(key::finished(&record.saga, record.updated_at, id), Vec::new());
                    }
                }
                self.kv.apply(batch)?.map_err(StoreError::from)?;
                match page.last() {
                    Some((last, _)) if page.len() == PAGE => from = [last.as_slice(), &[0]].concat(),
                    _ => break,
                }
            }
        }
        let mut batch = Batch::default();
        batch.put(key::META_FINISHED_INDEXED.to_vec(), Vec::new());
        self.kv.apply(batch)?.map_err(StoreError::from)
    }

    /// The highest position any queued or dead-lettered message has. Queues are keyed by
    /// subscription first, so this hops from one subscription's last key to the next
    /// subscription: two reads per subscription, whatever the queues hold.
    fn last_queue_seq(kv: &B) -> Result<u64, StoreError> {
        let mut last = match kv.last_key(&[key::DEAD], &key::prefix_end(&[key::DEAD]))? {
            Some(k) => key::u64_at("dead letter", &k, 1)?,
            None => 0,
        };
        let end = key::prefix_end(&[key::QUEUE]);
        let mut from = vec![key::QUEUE];
        while let Some((first, _)) = kv.scan(&from, &end, 1)?.into_iter().next() {
            let prefix = &first[..key::queue_prefix_len("queued message", &first)?];
            let next = key::prefix_end(prefix);
            if let Some(k) = kv.last_key(prefix, &next)? {
                last = last.max(key::u64_at("queued message", &k, prefix.len())?);
            }
            from = next;
        }
        Ok(last)
    }

    fn decode_queued(k: &[u8], v: &[u8]) -> Result<QueuedMessage, StoreError> {
        let len = key::queue_prefix_len("queued message", k)?;
        Ok(QueuedMessage {
            subscription: String::from_utf8_lossy(&k[3..len]).into_owned(),
            seq: key::u64_at("queued message", k, len)?,
            envelope: key::decode("queued message", k, v)?,
        })
    }

    fn read_instance(&self, id: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        let k = key::instance(id);
        match self.kv.get(&k)? {
            Some(v) => {
                let (_, body) = key::split_versioned("instance", &k, &v)?;
                Ok(Some(key::decode("instance", &k, body)?))
            }
            None => Ok(None),
        }
    }

    /// Walks the status index from `query`'s cursor, handing each matching instance to `take`
    /// until it returns `false` or [`SCAN_BUDGET`] entries were looked at; returns where to go
    /// on from (`None` at the end of the index).
    fn walk_instances(
        &self,
        query: &InstanceQuery,
        mut take: impl FnMut(InstanceRecord) -> bool,
    ) -> Result<Option<InstanceCursor>, StoreError> {
        const PAGE: usize = 256;
        let mut budget = SCAN_BUDGET;
        for status in query.statuses() {
            let prefix = key::status_prefix(status);
            let end = key::prefix_end(&prefix);
            let mut from = match query.after {
                Some(cursor) if cursor.status == status => key::just_after(&key::status(status, cursor.id)),
                _ => prefix.clone(),
            };
            loop {
                let asked = PAGE.min(budget);
                let page = self.kv.scan(&from, &end, asked)?;
                for (k, _) in &page {
                    budget -= 1;
                    let id = key::uuid_at("status index", k, 2)?;
                    // An index entry whose record is gone (pruned meanwhile) or moved on
                    // (its new status's entry is elsewhere) is passed over.
                    let matched = self.read_instance(id)?.filter(|r| query.matches(r));
                    let more = matched.is_none_or(&mut take);
                    if !more || budget == 0 {
                        return Ok(Some(InstanceCursor::new(status, id)));
                    }
                }
                match page.last() {
                    Some((k, _)) if page.len() == asked => from = key::just_after(k),
                    _ => break,
                }
            }
        }
        Ok(None)
    }

    /// The engine underneath.
    pub fn engine(&self) -> &B {
        &self.kv
    }

    /// The commit's writes, with the positions given to its outbox and queued messages.
    fn prepare(&self, commit: &Commit) -> Result<(Batch, Vec<u64>, Vec<u64>), StoreError> {
        let mut b = Batch::default();
        let mut seqs = Vec::with_capacity(commit.outbox.len());
        let mut queue_seqs = Vec::with_capacity(commit.queued.len());
        if let Some((consumer, message_id)) = commit.inbox {
            let rejection = Rejection::Duplicate { consumer, message_id };
            match &commit.consumes {
                // The message's only copy: consuming it is its dedupe record.
                Some((subscription, seq)) => {
                    let k = key::queued(subscription, *seq);
                    b.checks.push(Check::Present { key: k.clone(), rejection });
                    b.delete(k);
                }
                None => {
                    let k = key::inbox(consumer, message_id);
                    b.checks.push(Check::Absent { key: k.clone(), rejection });
                    // When, by the wall clock, so that retention can drop it past the bus's
                    // redelivery horizon (entries written before had no value: time 0).
                    b.put(k, Timestamp::now().0.to_be_bytes().to_vec());
                }
            }
        }
        if let Some(w) = &commit.instance {
            let id = w.record.id;
            let k = key::instance(id);
            let (expected, old_kind) = w.previous.map_or((0, None), |(v, kind)| (v, Some(kind)));
            b.checks.push(Check::Version { key: k.clone(), expected, what: Subject::Instance(id) });
            // Most transitions keep the status (a step follows a step): then the index entry
            // stays as it is, two random-key writes saved.
            let new_kind = w.record.status.kind();
            if old_kind != Some(new_kind) {
                if let Some(kind) = old_kind {
                    b.delete(key::status(kind, id));
                }
                b.put(key::status(new_kind, id), Vec::new());
                // Indexed once, when it finishes; an entry left by an instance an operator
                // brought back is dropped by retention when it finds the instance running.
                if new_kind.is_prunable() && !old_kind.is_some_and(StatusKind::is_prunable) {
                    b.put(key::finished(&w.record.saga, w.record.updated_at, id), Vec::new());
                }
            }
            b.put(k, key::versioned(w.record.version, &key::encode("instance", &w.record)?));
            if let Some(h) = &commit.history {
                b.put(key::history(id, h.version), key::encode("history", h)?);
            }
        }
        for e in &commit.entities {
            let k = key::entity(&e.scope, &e.key);
            b.checks.push(Check::Version {
                key: k.clone(),
                expected: e.expected_version,
                what: Subject::Entity { scope: e.scope.clone(), key: e.key.clone() },
            });
            b.put(k, key::versioned(e.expected_version + 1, &e.value));
        }
        if !commit.outbox.is_empty() {
            let n = commit.outbox.len() as u64;
            let first = self.next_outbox_seq.fetch_add(n, Ordering::SeqCst);
            for (seq, env) in (first..).zip(&commit.outbox) {
                b.put(key::outbox(seq), key::encode("outbox", env)?);
                seqs.push(seq);
            }
        }
        if !commit.queued.is_empty() {
            let first = self.next_queue_seq.fetch_add(commit.queued.len() as u64, Ordering::SeqCst);
            for (seq, (subscription, env)) in (first..).zip(&commit.queued) {
                b.put(key::queued(subscription, seq), key::encode("queued message", env)?);
                queue_seqs.push(seq);
            }
        }
        for t in &commit.timers_add {
            b.put(key::timer(&t.key), key::encode("timer", t)?);
        }
        for t in &commit.timers_remove {
            b.delete(key::timer(t));
        }
        for seq in &commit.parked_remove {
            b.delete(key::parked(*seq));
        }
        Ok((b, seqs, queue_seqs))
    }
}

#[async_trait::async_trait]
impl<B: OrderedKv> Store for KvStore<B> {
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let consumed_queue_entry = commit.takes_queue_entry();
        let (batch, seqs, queue_seqs) = self.prepare(&commit)?;
        self.kv.apply(batch)?.map_err(StoreError::from)?;
        crate::crash_points::crash_point!("store.after_commit_before_flush");
        let outbox = seqs.into_iter().zip(commit.outbox).map(|(seq, envelope)| OutboxEntry { seq, envelope }).collect();
        let queued = queue_seqs
            .into_iter()
            .zip(commit.queued)
            .map(|(seq, (subscription, envelope))| QueuedMessage { subscription, seq, envelope })
            .collect();
        Ok(Committed { durable: self.kv.durable(), outbox, queued, consumed_queue_entry })
    }

    fn barrier(&self) -> Durable {
        self.kv.durable()
    }

    async fn instance(&self, id: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        self.read_instance(id)
    }

    async fn instances_with_status(&self, status: StatusKind, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let prefix = key::status_prefix(status);
        self.kv
            .scan(&prefix, &key::prefix_end(&prefix), limit)?
            .iter()
            .map(|(k, _)| key::uuid_at("status index", k, 2))
            .collect()
    }

    async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        let prefix = key::history_prefix(id);
        self.kv
            .scan(&prefix, &key::prefix_end(&prefix), usize::MAX)?
            .iter()
            .map(|(k, v)| key::decode("history", k, v))
            .collect()
    }

    async fn history_page(&self, id: Uuid, after: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let prefix = key::history_prefix(id);
        let from = match after {
            Some(version) => key::just_after(&key::history(id, version)),
            None => prefix.clone(),
        };
        self.kv
            .scan(&from, &key::prefix_end(&prefix), limit)?
            .iter()
            .map(|(k, v)| key::decode("history", k, v))
            .collect()
    }

    async fn list_instances(&self, query: &InstanceQuery, limit: usize) -> Result<InstanceListing, StoreError> {
        let mut listing = InstanceListing::default();
        if limit == 0 {
            listing.next = query.after;
            return Ok(listing);
        }
        listing.next = self.walk_instances(query, |record| {
            listing.records.push(record);
            listing.records.len() < limit
        })?;
        Ok(listing)
    }

    async fn count_instances(&self, query: &InstanceQuery) -> Result<InstanceCounts, StoreError> {
        let mut counts: std::collections::BTreeMap<(String, u8), InstanceCount> = Default::default();
        let next = self.walk_instances(query, |record| {
            let status = record.status.kind();
            counts
                .entry((record.saga.clone(), status.tag()))
                .or_insert_with(|| InstanceCount { saga: record.saga, status, count: 0 })
                .count += 1;
            true
        })?;
        Ok(InstanceCounts { counts: counts.into_values().collect(), next })
    }

    async fn processed(&self, consumer: Uuid, message_id: Uuid) -> Result<bool, StoreError> {
        Ok(self.kv.get(&key::inbox(consumer, message_id))?.is_some())
    }

    async fn entity(&self, scope: &str, k: &str) -> Result<Option<EntityRecord>, StoreError> {
        let k = key::entity(scope, k);
        match self.kv.get(&k)? {
            Some(v) => {
                let (version, body) = key::split_versioned("entity", &k, &v)?;
                Ok(Some(EntityRecord { version, value: body.to_vec() }))
            }
            None => Ok(None),
        }
    }

    async fn entities(&self, scope: &str, limit: usize) -> Result<Vec<(String, EntityRecord)>, StoreError> {
        let prefix = key::entity_prefix(scope);
        self.kv
            .scan(&prefix, &key::prefix_end(&prefix), limit)?
            .into_iter()
            .map(|(k, v)| {
                let (version, body) = key::split_versioned("entity", &k, &v)?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((name, EntityRecord { version, value: body.to_vec() }))
            })
            .collect()
    }

    async fn timers_due(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let from = match after {
            // The successor of a key: the key with a zero byte appended.
            Some(t) => {
                let mut k = key::timer(&t);
                k.push(0);
                k
            }
            None => vec![key::TIMER],
        };
        let to = key::timers_after_due(upto);
        if from >= to {
            return Ok(Vec::new());
        }
        self.kv.scan(&from, &to, limit)?.iter().map(|(k, v)| key::decode("timer", k, v)).collect()
    }

    async fn next_timer(&self, after: Timestamp) -> Result<Option<TimerKey>, StoreError> {
        let prefix = [key::TIMER];
        match self.kv.scan(&key::timers_after_due(after), &key::prefix_end(&prefix), 1)?.first() {
            Some((k, _)) => Ok(Some(TimerKey {
                due: Timestamp(key::u64_at("timer", k, 1)?),
                instance_id: key::uuid_at("timer", k, 9)?,
                timer_id: key::uuid_at("timer", k, 25)?,
            })),
            None => Ok(None),
        }
    }

    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let from = key::sequenced_from(key::OUTBOX, after);
        self.kv
            .scan(&from, &key::prefix_end(&[key::OUTBOX]), limit)?
            .iter()
            .map(|(k, v)| {
                Ok(OutboxEntry {
                    seq: key::u64_at("outbox", k, 1)?,
                    envelope: key::decode::<Envelope>("outbox", k, v)?,
                })
            })
            .collect()
    }

    async fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let keys: Vec<_> = seqs.iter().map(|s| key::outbox(*s)).collect();
        self.kv.remove(&keys)
    }

    async fn park_outbox(&self, seq: u64, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        let k = key::outbox(seq);
        let Some(bytes) = self.kv.get(&k)? else {
            // Already published and removed (by a sweep that raced with this one): nothing to park.
            return Ok(());
        };
        let envelope: Envelope = key::decode("outbox", &k, &bytes)?;
        let parked = Parked { reason: reason.to_owned(), parked_at: at, envelope };
        let mut batch = Batch::default();
        batch.delete(k);
        batch.put(key::parked(seq), key::encode("parked outbox", &parked)?);
        self.kv.apply(batch)?.map_err(StoreError::from)
    }

    async fn parked_outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<ParkedOutboxEntry>, StoreError> {
        let from = key::sequenced_from(key::PARKED, after);
        self.kv
            .scan(&from, &key::prefix_end(&[key::PARKED]), limit)?
            .iter()
            .map(|(k, v)| {
                let parked: Parked = key::decode("parked outbox", k, v)?;
                Ok(ParkedOutboxEntry {
                    seq: key::u64_at("parked outbox", k, 1)?,
                    envelope: parked.envelope,
                    reason: parked.reason,
                    parked_at: parked.parked_at,
                })
            })
            .collect()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush().await
    }

    fn is_persistent(&self) -> bool {
        self.kv.is_persistent()
    }

    async fn enqueue(&self, messages: Vec<(String, Envelope)>) -> Result<Enqueued, StoreError> {
        let first = self.next_queue_seq.fetch_add(messages.len() as u64, Ordering::SeqCst);
        let mut batch = Batch::default();
        let mut seqs = Vec::with_capacity(messages.len());
        for (seq, (subscription, envelope)) in (first..).zip(&messages) {
            batch.put(key::queued(subscription, seq), key::encode("queued message", envelope)?);
            seqs.push(seq);
        }
        self.kv.apply(batch)?.map_err(StoreError::from)?;
        Ok(Enqueued { seqs, durable: self.kv.durable() })
    }

    async fn queued(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let prefix = key::queue_prefix(subscription);
        let from = match after.and_then(|s| s.checked_add(1)) {
            Some(next) => key::queued(subscription, next),
            None if after.is_some() => return Ok(Vec::new()),
            None => prefix.clone(),
        };
        self.kv.scan(&from, &key::prefix_end(&prefix), limit)?.iter().map(|(k, v)| Self::decode_queued(k, v)).collect()
    }

    async fn requeue(&self, message: &QueuedMessage) -> Result<(), StoreError> {
        let k = key::queued(&message.subscription, message.seq);
        if self.kv.get(&k)?.is_none() {
            return Ok(());
        }
        let mut batch = Batch::default();
        batch.put(k, key::encode("queued message", &message.envelope)?);
        self.kv.apply(batch)?.map_err(StoreError::from)
    }

    async fn dequeue(&self, subscription: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let keys: Vec<_> = seqs.iter().map(|s| key::queued(subscription, *s)).collect();
        self.kv.remove(&keys)
    }

    async fn dead_letter_queued(&self, message: QueuedMessage, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        let dead = DeadQueued {
            subscription: message.subscription.clone(),
            reason: reason.to_owned(),
            at,
            envelope: message.envelope,
        };
        let mut batch = Batch::default();
        batch.delete(key::queued(&message.subscription, message.seq));
        batch.put(key::dead(message.seq), key::encode("dead letter", &dead)?);
        self.kv.apply(batch)?.map_err(StoreError::from)
    }

    async fn revive_queue_dead_letter(&self, seq: u64) -> Result<Option<QueuedMessage>, StoreError> {
        let k = key::dead(seq);
        let Some(v) = self.kv.get(&k)? else { return Ok(None) };
        let dead: DeadQueued = key::decode("dead letter", &k, &v)?;
        let mut envelope = dead.envelope;
        envelope.attempt = 1;
        let mut batch = Batch::default();
        batch.delete(k);
        batch.put(key::queued(&dead.subscription, seq), key::encode("queued message", &envelope)?);
        self.kv.apply(batch)?.map_err(StoreError::from)?;
        self.kv.durable().await?;
        Ok(Some(QueuedMessage { subscription: dead.subscription, seq, envelope }))
    }

    async fn remove_queue_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let k = key::dead(seq);
        if self.kv.get(&k)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.delete(k);
        self.kv.apply(batch)?.map_err(StoreError::from)?;
        self.kv.durable().await?;
        Ok(true)
    }

    async fn expired_instances(
        &self,
        saga: &str,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<RetentionCandidate>, StoreError> {
        let prefix = key::finished_prefix(saga);
        let mut found = Vec::new();
        let mut stale = Vec::new();
        for (k, _) in self.kv.scan(&prefix, &key::finished_at(saga, before), limit)? {
            let finished_at = Timestamp(key::u64_at("finished instance", &k, prefix.len())?);
            let id = key::uuid_at("finished instance", &k, prefix.len() + 8)?;
            match self.instance(id).await? {
                // Finished still: an operator may have retried a failed instance that then
                // finished again, which indexed it again, later.
                Some(record) if record.status.kind().is_prunable() => {
                    found.push(RetentionCandidate { record, finished_at })
                }
                _ => stale.push(k),
            }
        }
        // Entries of instances that are gone, or were brought back (an operator's retry).
        self.kv.remove(&stale)?;
        Ok(found)
    }

    async fn prune_instance(
        &self,
        candidate: &RetentionCandidate,
        tombstone: &Tombstone,
    ) -> Result<PruneOutcome, StoreError> {
        let record = &candidate.record;
        let id = record.id;
        let k = key::instance(id);
        // History and inbox entries extend the record's key.
        let children = self.kv.scan(&key::just_after(&k), &key::prefix_end(&k), PRUNE_BATCH)?;
        let more = children.len() == PRUNE_BATCH;
        let mut batch = Batch::default();
        batch.checks.push(Check::Version { key: k.clone(), expected: record.version, what: Subject::Instance(id) });
        for (child, _) in children {
            batch.delete(child);
        }
        if !more {
            batch.delete(k);
            batch.delete(key::status(record.status.kind(), id));
            batch.delete(key::finished(&record.saga, candidate.finished_at, id));
            batch.put(key::tombstone(id), key::encode("tombstone", tombstone)?);
            batch.put(key::tombstone_expiry(tombstone.until, id), Vec::new());
        }
        Ok(match self.kv.apply(batch)? {
            Err(_) => PruneOutcome::Changed,
            Ok(()) if more => PruneOutcome::Partly,
            Ok(()) => PruneOutcome::Pruned,
        })
    }

    async fn prune_inbox(
        &self,
        consumer: Uuid,
        before: Timestamp,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(usize, Option<Uuid>), StoreError> {
        let prefix = key::inbox_prefix(consumer);
        let from = after.map_or_else(|| prefix.clone(), |m| key::just_after(&key::inbox(consumer, m)));
        let page = self.kv.scan(&from, &key::prefix_end(&prefix), limit)?;
        let next = match page.last() {
            Some((k, _)) if page.len() == limit => Some(key::uuid_at("inbox entry", k, prefix.len())?),
            _ => None,
        };
        let old: Vec<Vec<u8>> =
            page.into_iter().filter(|(_, v)| Timestamp(leading_version(v)) < before).map(|(k, _)| k).collect();
        self.kv.remove(&old)?;
        Ok((old.len(), next))
    }

    async fn prune_queue_dead_letters(
        &self,
        before: Timestamp,
        keep: usize,
        limit: usize,
    ) -> Result<usize, StoreError> {
        // Positions follow arrival, so the oldest come first. Of the first `keep + limit`, those
        // past `keep` are over the count whatever lies beyond (at most `limit` go anyway).
        let (from, to) = (vec![key::DEAD], key::prefix_end(&[key::DEAD]));
        let head = self.kv.scan(&from, &to, keep.saturating_add(limit))?;
        let mut over = head.len().saturating_sub(keep);
        let mut doomed = Vec::new();
        for (k, v) in head.into_iter().take(limit) {
            let dead: DeadQueued = key::decode("dead letter", &k, &v)?;
            if over == 0 && dead.at >= before {
                break;
            }
            over = over.saturating_sub(1);
            doomed.push(k);
        }
        self.kv.remove(&doomed)?;
        Ok(doomed.len())
    }

    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError> {
        let k = key::tombstone(id);
        self.kv.get(&k)?.map(|v| key::decode("tombstone", &k, &v)).transpose()
    }

    async fn prune_tombstones(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let expired = self.kv.scan(&[key::TOMBSTONE_EXPIRY], &key::tombstone_expiry(now, Uuid::nil()), limit)?;
        let mut batch = Batch::default();
        for (k, _) in &expired {
            let until = Timestamp(key::u64_at("tombstone expiry", k, 1)?);
            let id = key::uuid_at("tombstone expiry", k, 9)?;
            // The instance may have started again and been deleted again since: its newer
            // tombstone stays.
            if self.tombstone(id).await?.is_some_and(|t| t.until == until) {
                batch.delete(key::tombstone(id));
            }
            batch.delete(k.clone());
        }
        self.kv.apply(batch)?.map_err(StoreError::from)?;
        Ok(expired.len())
    }

    async fn queue_dead_letters(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueueDeadLetter>, StoreError> {
        let from = key::sequenced_from(key::DEAD, after);
        self.kv
            .scan(&from, &key::prefix_end(&[key::DEAD]), limit)?
            .iter()
            .map(|(k, v)| {
                let dead: DeadQueued = key::decode("dead letter", k, v)?;
                Ok(QueueDeadLetter {
                    seq: key::u64_at("dead letter", k, 1)?,
                    subscription: dead.subscription,
                    envelope: dead.envelope,
                    reason: dead.reason,
                    at: dead.at,
                })
            })
            .collect()
    }
}
