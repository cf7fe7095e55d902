//! The operators' view of a runtime: list, count, inspect and repair saga instances on any
//! store (repairs: see [`Operation`]).
//!
//! [`Admin`] is what an HTTP endpoint, a CLI or a test asks; it reads through the
//! [`Store`](crate::store::Store) and [`Bus`](crate::bus::Bus) traits only, so it answers the
//! same way on the memory, sled and PostgreSQL stores and on every bus.
//!
//! Every read is bounded: a listing returns at most [`MAX_PAGE`] instances and looks at no
//! more than [`SCAN_BUDGET`](crate::store::SCAN_BUDGET) per call (a page may come back short,
//! even empty, with a cursor to go on from); an inspection reads at most a page of history (or
//! the first [`SCANNED`] entries, to trace the instance's path through its saga's chart), the
//! first [`SCANNED`] outbox entries and dead letters per subscription. Counting walks the
//! instances in bounded reads, one after the other, so it costs a scan of the status index on
//! sled and one `GROUP BY` on PostgreSQL, and holds nothing the engine waits for.

mod actions;
mod dead_letters;
mod filter;
#[cfg(feature = "admin")]
pub mod http;
mod parked;
mod readiness;

pub(crate) use actions::OperatorRequest;
pub use actions::{ActionResult, Operation, UnknownOperation};
pub use dead_letters::{DeadLetterDetail, DeadMessage};
pub use filter::{BadFilter, FilterText};
pub use parked::ParkedMessage;
pub use readiness::{PROBE_WITHIN, Readiness};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use crate::Error;
use crate::engine::Core;
use crate::message::{CodecExt, Envelope, Timestamp};
use crate::saga::diagram::{Diagram, InstancePath};
use crate::store::{
    Awaiting, HistoryEntry, InstanceCount, InstanceCursor, InstanceQuery, InstanceRecord, SagaStatus, StatusKind,
};

/// The most instances one listing returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;
/// How many outbox entries, parked entries and dead letters (per subscription) an inspection
/// looks through for the instance's own.
pub const SCANNED: usize = 1000;

/// Lists, counts and inspects saga instances: from [`SagaRuntime::admin`](crate::engine::SagaRuntime::admin).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::{engine::SagaRuntime, store::{InstanceQuery, MemoryStore, StatusKind}};
/// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
/// let admin = runtime.admin();
/// let page = admin.list(&InstanceQuery::default().status(StatusKind::Failed), 50).await.unwrap();
/// for instance in &page.instances {
///     println!("{} {} failed: {:?}", instance.saga, instance.key, instance.reason);
/// }
/// assert!(page.next.is_none()); // nothing more to read
/// # });
/// ```
#[derive(Clone)]
pub struct Admin {
    core: Arc<Core>,
    subscriptions: Arc<[Arc<str>]>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("subscriptions", &self.subscriptions).finish_non_exhaustive()
    }
}

/// One instance in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InstanceSummary {
    /// The instance id.
    pub id: Uuid,
    /// The saga's name.
    pub saga: String,
    /// The correlation key that started it.
    pub key: String,
    /// Where it stands.
    pub status: StatusKind,
    /// The step it runs or compensates (its name), if it is not finished.
    pub step: Option<String>,
    /// Why it is `Failed` or `Cancelled`, if it is.
    pub reason: Option<String>,
    /// Why it started compensating, if it did.
    pub failure: Option<String>,
    /// Commits so far.
    pub version: u64,
    /// When it started.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstancePage {
    /// The instances, in status then id order.
    pub instances: Vec<InstanceSummary>,
    /// Pass it back as the query's `after` for the next page; `None` at the end.
    pub next: Option<InstanceCursor>,
}

/// A message that concerns an instance: in the outbox, parked by the relay or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MessageSummary {
    /// The message id.
    pub message_id: Uuid,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// The subscription it was dead-lettered from (dead letters only).
    pub subscription: Option<String>,
    /// Why it was parked or dead-lettered.
    pub reason: Option<String>,
    /// When it was parked or dead-lettered.
    pub at: Option<Timestamp>,
}

impl MessageSummary {
    fn of(envelope: &Envelope) -> Self {
        MessageSummary {
            message_id: envelope.message_id,
            name: envelope.name.clone(),
            created_at: envelope.created_at,
            subscription: None,
            reason: None,
            at: None,
        }
    }
}

/// Everything about one instance an operator needs to decide what to do with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct InstanceDetail {
    /// The summary, as a listing shows it.
    #[serde(flatten)]
    pub summary: InstanceSummary,
    /// The saga's state as JSON, when the runtime's codec can read it as JSON.
    pub state: Option<serde_json::Value>,
    /// Why `state` is missing, when it is.
    pub state_error: Option<String>,
    /// What it waits for: step, phase, attempt, the timer that fires if nothing comes.
    pub awaiting: Option<Awaiting>,
    /// Its history, oldest first, at most the page asked for.
    pub history: Vec<HistoryEntry>,
    /// Whether there is more history after `history` (ask [`Admin::history`]).
    pub more_history: bool,
    /// Its commands and replies waiting in the outbox.
    pub outbox: Vec<MessageSummary>,
    /// Its messages the relay parked.
    pub parked: Vec<MessageSummary>,
    /// Its messages dead-lettered on this runtime's subscriptions.
    pub dead_letters: Vec<MessageSummary>,
    /// The saga's Mermaid flowchart with the path this instance took highlighted, when this
    /// runtime runs the saga.
    pub diagram: Option<String>,
    /// That path: the nodes it reached, the edges it took, where it is or failed.
    pub path: Option<InstancePath>,
}

impl Admin {
    pub(crate) fn new(core: Arc<Core>, subscriptions: Arc<[Arc<str>]>) -> Self {
        Admin { core, subscriptions }
    }

    /// An admin over a store that no runtime holds: offline inspection and repair (the
    /// `sagaflow --store DIR` CLI). Nothing runs beside it: no relay, no timers, no
    /// consumers, so the store changes only when asked. It reads everything a runtime's admin
    /// reads (dead letters of the store's own queues, the local bus's, by subscription name),
    /// and replays or discards parked entries (a replayed entry waits in the outbox for the
    /// next runtime's start). Actions on instances need the saga's code and are refused:
    /// run them through a runtime that runs the saga.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{admin::Admin, store::{InstanceQuery, SledStore}};
    /// let dir = tempfile::tempdir().unwrap();
    /// let admin = Admin::offline(SledStore::open(dir.path()).unwrap());
    /// assert!(admin.list(&InstanceQuery::default(), 10).await.unwrap().instances.is_empty());
    /// # });
    /// ```
    pub fn offline(store: impl crate::store::Store) -> Self {
        let store: Arc<dyn crate::store::Store> = Arc::new(store);
        let parts = crate::engine::Parts {
            bus: crate::engine::default_bus(&store),
            store,
            codec: Arc::new(crate::message::JsonCodec),
            clock: Arc::new(crate::clock::SystemClock),
            max_message_bytes: usize::MAX,
            retention: Default::default(),
        };
        let (lanes, _) = crate::engine::Lanes::new(1);
        let (core, _) = Core::assemble(parts, Default::default(), lanes, std::time::Duration::MAX);
        Admin { core, subscriptions: Arc::new([]) }
    }

    fn summary(&self, record: &InstanceRecord) -> InstanceSummary {
        let (step, reason) = match &record.status {
            SagaStatus::Running { step } | SagaStatus::Compensating { step } => (Some(*step), None),
            SagaStatus::Failed { reason } | SagaStatus::Cancelled { reason } => (None, Some(reason.clone())),
            SagaStatus::Completed | SagaStatus::Compensated => (None, None),
        };
        let step = step.map(|s| {
            let named = self.core.sagas.get(&record.saga).and_then(|d| d.step_name(s));
            named.unwrap_or_else(|| format!("step {s}"))
        });
        InstanceSummary {
            id: record.id,
            saga: record.saga.clone(),
            key: record.key.clone(),
            status: record.status.kind(),
            step,
            reason,
            failure: record.failure.clone(),
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }

    /// A page of the instances that match `query`, at most `limit` (and [`MAX_PAGE`]).
    ///
    /// A short page does not mean the end: only `next == None` does. Go on with
    /// `query.after(page.next)`.
    pub async fn list(&self, query: &InstanceQuery, limit: usize) -> Result<InstancePage, Error> {
        let listing = self.core.store.list_instances(query, limit.min(MAX_PAGE)).await?;
        Ok(InstancePage { instances: listing.records.iter().map(|r| self.summary(r)).collect(), next: listing.next })
    }

    /// How many instances match `query`, by saga and status, sorted by saga then status.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::{InstanceQuery, MemoryStore}};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// assert!(runtime.admin().counts(&InstanceQuery::default()).await.unwrap().is_empty());
    /// # });
    /// ```
    pub async fn counts(&self, query: &InstanceQuery) -> Result<Vec<InstanceCount>, Error> {
        let mut merged: BTreeMap<(String, u8), InstanceCount> = BTreeMap::new();
        let mut query = query.clone();
        loop {
            let page = self.core.store.count_instances(&query).await?;
            for c in page.counts {
                merged
                    .entry((c.saga.clone(), c.status.tag()))
                    .or_insert_with(|| InstanceCount { count: 0, ..c.clone() })
                    .count += c.count;
            }
            match page.next {
                Some(next) => query = query.after(Some(next)),
                None => return Ok(merged.into_values().collect()),
            }
        }
    }

    /// The instances started with correlation key `key`: of saga `saga`, or of any saga this
    /// runtime runs (an instance's id follows from its saga and key, so this reads one record
    /// per saga).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// assert!(runtime.admin().find("order-42", Some("order-fulfilment")).await.unwrap().is_empty());
    /// # });
    /// ```
    pub async fn find(&self, key: &str, saga: Option<&str>) -> Result<Vec<InstanceSummary>, Error> {
        let mut sagas: Vec<&str> = match saga {
            Some(saga) => vec![saga],
            None => self.core.sagas.keys().map(String::as_str).collect(),
        };
        sagas.sort_unstable();
        let mut found = Vec::new();
        for saga in sagas {
            if let Some(record) = self.core.store.instance(crate::saga::instance_id(saga, key)).await? {
                found.push(self.summary(&record));
            }
        }
        Ok(found)
    }

    /// History entries of instance `id` after version `after`, oldest first, at most `limit`.
    pub async fn history(&self, id: Uuid, after: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, Error> {
        Ok(self.core.store.history_page(id, after, limit).await?)
    }

    /// Everything about instance `id`, with up to `history` entries of its history; `None`
    /// if there is no such instance.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// assert!(runtime.admin().inspect(uuid::Uuid::nil(), 100).await.unwrap().is_none());
    /// # });
    /// ```
    pub async fn inspect(&self, id: Uuid, history: usize) -> Result<Option<InstanceDetail>, Error> {
        let Some(record) = self.core.store.instance(id).await? else { return Ok(None) };
        let (state, state_error) = match self.core.codec.decode::<serde_json::Value>(&record.state) {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(format!("the state does not read as JSON with this runtime's codec: {e}"))),
        };
        // With the saga's chart, the path is traced through up to [`SCANNED`] entries and the
        // page shown is the first `history` of them: one read serves both.
        let diagram = self.diagram(&record.saga);
        let read = if diagram.is_some() { history.max(SCANNED) } else { history };
        let mut entries = self.core.store.history_page(id, None, read.saturating_add(1)).await?;
        let path = diagram.as_ref().map(|d| {
            let events = entries.iter().take(read).flat_map(|e| &e.events);
            let mut path = InstancePath::trace(d, events, &record.status, record.awaiting.as_ref());
            path.partial = entries.len() > read;
            path
        });
        let more_history = entries.len() > history;
        entries.truncate(history);
        let mine = |e: &Envelope| e.correlation_id == Some(id);
        let outbox = self.core.store.outbox(None, SCANNED).await?;
        let outbox = outbox.iter().filter(|e| mine(&e.envelope)).map(|e| MessageSummary::of(&e.envelope)).collect();
        let parked = self.core.store.parked_outbox(None, SCANNED).await?;
        let parked = parked
            .iter()
            .filter(|p| mine(&p.envelope))
            .map(|p| MessageSummary {
                reason: Some(p.reason.clone()),
                at: Some(p.parked_at),
                ..MessageSummary::of(&p.envelope)
            })
            .collect();
        let mut dead_letters = Vec::new();
        for subscription in self.subscriptions.iter() {
            // A bus that cannot list dead letters has none to show here.
            let Ok(dead) = self.core.bus.dead_letters(subscription, SCANNED).await else { continue };
            dead_letters.extend(dead.iter().filter(|d| mine(&d.envelope)).map(|d| MessageSummary {
                subscription: Some(d.subscription.clone()),
                reason: Some(d.reason.clone()),
                at: Some(d.at),
                ..MessageSummary::of(&d.envelope)
            }));
        }
        Ok(Some(InstanceDetail {
            summary: self.summary(&record),
            state,
            state_error,
            awaiting: record.awaiting.clone(),
            history: entries,
            more_history,
            outbox,
            parked,
            dead_letters,
            diagram: diagram.as_ref().zip(path.as_ref()).map(|(d, p)| d.mermaid_with(p)),
            path,
        }))
    }

    /// The flowchart of saga `saga`, when this runtime runs it.
    pub fn diagram(&self, saga: &str) -> Option<Diagram> {
        self.core.sagas.get(saga).and_then(|d| d.diagram())
    }
}
