//! The store conformance suite: what every [`Store`] must do, runnable against any of them.
//!
//! A store (ours or a third party's) implements [`StoreTarget`] and expands
//! [`store_conformance_tests!`](crate::store_conformance_tests) in a test module, which
//! generates one `#[tokio::test]` per check. The engine relies on nothing else a store does,
//! so a store that passes can run every saga.
//!
//! Each check uses fresh ids and names and looks only at what it wrote, so the checks may run
//! concurrently against one shared database and find other runs' data beside their own.
//!
//! ```
//! mod memory_store {
//!     saga_core::store_conformance_tests!(async { Some(saga_core::store::MemoryTarget) });
//! }
//! ```

use std::sync::Arc;

use uuid::Uuid;

use super::{
    Commit, EntityWrite, HistoryEntry, InstanceQuery, InstanceRecord, InstanceWrite, MemoryStore, Phase, PruneOutcome,
    SagaStatus, StatusKind, Store, StoreError, TimerKey, TimerPurpose, TimerRecord, Tombstone,
};
use crate::message::{Envelope, Timestamp};

/// A store under test.
#[async_trait::async_trait]
pub trait StoreTarget: Send + Sync {
    /// A store to run one check on (a new one, or a shared one: checks only read their own
    /// writes).
    async fn store(&self) -> Arc<dyn Store>;

    /// Another handle onto the same store, as a second runtime would have: the same `Arc` for
    /// a store one process owns (the default), a second connection pool for a database.
    async fn another_handle(&self, store: &Arc<dyn Store>) -> Arc<dyn Store> {
        store.clone()
    }
}

/// `MemoryStore` as a conformance target.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryTarget;

#[async_trait::async_trait]
impl StoreTarget for MemoryTarget {
    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }
}

/// `SledStore` under one durability as a conformance target: a store in a new temporary
/// directory per check, removed with the target (after the check).
#[cfg(feature = "sled")]
#[derive(Debug)]
pub struct SledTarget {
    durability: super::Durability,
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

#[cfg(feature = "sled")]
impl SledTarget {
    /// Stores with `durability`.
    pub fn new(durability: super::Durability) -> Self {
        SledTarget { durability, dirs: std::sync::Mutex::default() }
    }
}

#[cfg(feature = "sled")]
#[async_trait::async_trait]
impl StoreTarget for SledTarget {
    async fn store(&self) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = super::SledStore::open_with(dir.path(), super::SledOptions::default().durability(self.durability))
            .expect("a sled store in a new directory");
        // The directory outlives the check's store: the target keeps it until it is dropped.
        self.dirs.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
        Arc::new(store)
    }
}

type Outcome = Result<(), String>;

fn check(ok: bool, what: impl Into<String>) -> Outcome {
    if ok { Ok(()) } else { Err(what.into()) }
}

fn failed(what: &str) -> impl FnOnce(StoreError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn record(id: Uuid, version: u64, status: SagaStatus) -> InstanceRecord {
    InstanceRecord {
        id,
        saga: "conformance".into(),
        saga_version: 1,
        key: id.to_string(),
        status,
        version,
        state: b"{}".to_vec(),
        awaiting: None,
        failure: None,
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
    }
}

fn write(id: Uuid, version: u64, status: SagaStatus, previous: Option<(u64, StatusKind)>) -> InstanceWrite {
    InstanceWrite { record: record(id, version, status), previous, previous_updated_at: None }
}

fn timer(due: u64, instance_id: Uuid) -> TimerRecord {
    TimerRecord {
        key: TimerKey { due: Timestamp(due), instance_id, timer_id: Uuid::now_v7() },
        saga: "conformance".into(),
        purpose: TimerPurpose::Timeout { step: 0, phase: Phase::Action, attempt: 1 },
        // Stored and returned as it is (the timers' tests compare whole records).
        trace: [(
            crate::message::headers::TRACEPARENT.to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]
        .into(),
    }
}

fn unique(base: &str) -> String {
    format!("conformance.{base}.{}", Uuid::now_v7().simple())
}

async fn durably(store: &dyn Store, commit: Commit) -> Result<super::Committed, StoreError> {
    let mut committed = store.commit(commit).await?;
    std::mem::replace(&mut committed.durable, Box::pin(async { Ok(()) })).await?;
    Ok(committed)
}

/// A commit applies its instance, inbox entry, outbox, timers and history together, and its
/// outbox comes back with increasing positions.
pub async fn a_commit_applies_instance_inbox_outbox_timers_and_history_together(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let (id, msg) = (Uuid::now_v7(), Uuid::now_v7());
    let (a, b) = (unique("a"), unique("b"));
    let history = super::HistoryEntry { version: 1, at: Timestamp(0), cause: None, events: Vec::new() };
    let (late, early) = (timer(50, id), timer(10, id));
    let committed = durably(
        &*store,
        Commit {
            inbox: Some((id, msg)),
            instance: Some(write(id, 1, SagaStatus::Running { step: 0 }, None)),
            outbox: vec![Envelope::new(&a, vec![1]), Envelope::new(&b, vec![2])],
            timers_add: vec![late.clone(), early.clone()],
            history: Some(history),
            ..Commit::default()
        },
    )
    .await
    .map_err(failed("the first commit"))?;
    check(committed.outbox.len() == 2 && committed.outbox[0].seq < committed.outbox[1].seq, "outbox positions")?;
    let found = store.instance(id).await.map_err(failed("instance"))?;
    check(found.is_some_and(|r| r.version == 1), "the instance at version 1")?;
    check(store.processed(id, msg).await.map_err(failed("processed"))?, "the inbox entry")?;
    check(store.history(id).await.map_err(failed("history"))?.len() == 1, "one history entry")?;
    let mut due = Vec::new();
    let mut after = None;
    loop {
        let page = store.timers_due(Timestamp(60), after, 100).await.map_err(failed("timers_due"))?;
        after = page.last().map(|t| t.key);
        let last = page.len() < 100;
        due.extend(page.into_iter().filter(|t| t.key.instance_id == id));
        if last {
            break;
        }
    }
    check(due == [early, late], format!("the instance's timers as written, in due order, got {due:?}"))?;
    // Other runs' timers may sit in between on a shared store: the next one after 10 is due by 50.
    let next = store.next_timer(Timestamp(10)).await.map_err(failed("next_timer"))?;
    check(next.is_some_and(|k| k.due.0 > 10 && k.due.0 <= 50), format!("a next timer after 10, got {next:?}"))?;
    let outbox = outbox_named(&*store, &[&a, &b]).await?;
    check(outbox == [a.as_str(), b.as_str()], format!("the outbox in commit order, got {outbox:?}"))
}

async fn outbox_named<'a>(store: &dyn Store, names: &[&'a str]) -> Result<Vec<&'a str>, String> {
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let page = store.outbox(after, 500).await.map_err(failed("outbox"))?;
        after = page.last().map(|e| e.seq);
        let last = page.len() < 500;
        found.extend(page.iter().filter_map(|e| names.iter().find(|n| **n == e.envelope.name).copied()));
        if last {
            return Ok(found);
        }
    }
}

/// A second commit with the same `(consumer, message)` inbox entry is refused as a duplicate
/// and changes nothing.
pub async fn the_inbox_refuses_a_message_its_consumer_processed(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let (id, msg) = (Uuid::now_v7(), Uuid::now_v7());
    let first = Commit {
        inbox: Some((id, msg)),
        instance: Some(write(id, 1, SagaStatus::Running { step: 0 }, None)),
        ..Commit::default()
    };
    durably(&*store, first).await.map_err(failed("the first commit"))?;
    let again = Commit {
        inbox: Some((id, msg)),
        instance: Some(write(id, 2, SagaStatus::Completed, Some((1, StatusKind::Running)))),
        ..Commit::default()
    };
    let refused = durably(&*store, again).await;
    check(matches!(refused, Err(StoreError::Duplicate { .. })), format!("a duplicate, got {:?}", refused.err()))?;
    let found = store.instance(id).await.map_err(failed("instance"))?;
    check(found.is_some_and(|r| r.version == 1), "the instance untouched by the refused commit")
}

/// A writer that read an older version loses with a conflict naming both versions, and its
/// commit changes nothing; participant records are checked the same way.
pub async fn a_stale_version_loses_and_changes_nothing(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let id = Uuid::now_v7();
    let create = Commit { instance: Some(write(id, 1, SagaStatus::Running { step: 0 }, None)), ..Commit::default() };
    durably(&*store, create).await.map_err(failed("create"))?;
    let stale_timer = timer(5, id);
    let stale = Commit {
        instance: Some(write(id, 1, SagaStatus::Completed, Some((0, StatusKind::Running)))),
        timers_add: vec![stale_timer.clone()],
        ..Commit::default()
    };
    let lost = durably(&*store, stale).await;
    check(
        matches!(lost, Err(StoreError::Conflict { expected: 0, found: 1, .. })),
        format!("a conflict expecting 0 and finding 1, got {:?}", lost.err()),
    )?;
    let timers = store.timers_due(Timestamp(10), None, 10_000).await.map_err(failed("timers_due"))?;
    check(!timers.iter().any(|t| t.key == stale_timer.key), "the losing commit's timer is not there")?;

    let (scope, key) = (unique("scope"), "record/1".to_owned());
    let entity = |expected| Commit {
        entities: vec![EntityWrite {
            scope: scope.clone(),
            key: key.clone(),
            expected_version: expected,
            value: b"7".to_vec(),
        }],
        ..Commit::default()
    };
    durably(&*store, entity(0)).await.map_err(failed("the record's first write"))?;
    let lost = durably(&*store, entity(0)).await;
    check(matches!(lost, Err(StoreError::Conflict { .. })), "a second write from version 0 conflicts")?;
    durably(&*store, entity(1)).await.map_err(failed("the record's second write"))?;
    let found = store.entity(&scope, &key).await.map_err(failed("entity"))?;
    check(found.is_some_and(|r| r.version == 2 && r.value == b"7"), "the record at version 2")?;
    let listed = store.entities(&scope, 10).await.map_err(failed("entities"))?;
    check(listed.len() == 1 && listed[0].0 == key, "the scope lists the record")
}

/// The status index follows an instance's status, also across steps of the same kind.
pub async fn the_status_index_follows_the_status(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let id = Uuid::now_v7();
    let listed = |kind| {
        let store = store.clone();
        async move {
            Ok::<_, String>(
                store.instances_with_status(kind, usize::MAX).await.map_err(failed("status"))?.contains(&id),
            )
        }
    };
    let steps = [
        (SagaStatus::Running { step: 0 }, None),
        (SagaStatus::Running { step: 1 }, Some((1, StatusKind::Running))),
        (SagaStatus::Completed, Some((2, StatusKind::Running))),
    ];
    for (version, (status, previous)) in (1..).zip(steps) {
        let kind = status.kind();
        durably(&*store, Commit { instance: Some(write(id, version, status, previous)), ..Commit::default() })
            .await
            .map_err(failed("a transition"))?;
        check(listed(kind).await?, format!("listed as {kind:?} at version {version}"))?;
    }
    check(!listed(StatusKind::Running).await?, "no longer listed as running")
}

/// Every page of `query` (`limit` per page), followed from cursor to cursor, the pages' sizes
/// checked against `limit`.
async fn every_page(store: &dyn Store, query: InstanceQuery, limit: usize) -> Result<Vec<InstanceRecord>, String> {
    let (mut found, mut query) = (Vec::new(), query);
    for _ in 0..1000 {
        let page = store.list_instances(&query, limit).await.map_err(failed("a listing"))?;
        check(page.records.len() <= limit, format!("a page of {} records for a limit of {limit}", page.records.len()))?;
        found.extend(page.records);
        match page.next {
            Some(next) => query = query.after(Some(next)),
            None => return Ok(found),
        }
    }
    Err("a listing did not end after 1,000 pages".into())
}

/// Listings filter by saga, status and age, page with a cursor that loses and repeats
/// nothing, and counts by saga and status add up; an instance's history comes a page at a time.
pub async fn listings_filter_page_and_count_instances(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let statuses = [SagaStatus::Running { step: 0 }, SagaStatus::Completed, SagaStatus::Failed { reason: "x".into() }];
    let (a, b) = (unique("a"), unique("b"));
    let mut written = Vec::new();
    for i in 0..30u64 {
        let mut r = record(Uuid::now_v7(), 1, statuses[(i % 3) as usize].clone());
        r.saga = if i % 2 == 0 { a.clone() } else { b.clone() };
        r.updated_at = Timestamp(i * 10);
        durably(
            &*store,
            Commit {
                instance: Some(InstanceWrite { record: r.clone(), previous: None, previous_updated_at: None }),
                ..Commit::default()
            },
        )
        .await
        .map_err(failed("a start"))?;
        written.push(r);
    }
    let ids = |records: &[InstanceRecord]| {
        let mut ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let expect =
        |keep: &dyn Fn(&InstanceRecord) -> bool| ids(&written.iter().filter(|r| keep(r)).cloned().collect::<Vec<_>>());
    let mine = |r: &InstanceRecord| r.saga == a || r.saga == b;
    let all = every_page(&*store, InstanceQuery::default(), 7).await?;
    let all: Vec<InstanceRecord> = all.into_iter().filter(mine).collect();
    check(all.len() == 30, format!("paging by 7 saw {} of the 30 instances (a repeat or a loss)", all.len()))?;
    check(ids(&all) == expect(&|_| true), "paging by 7 saw other instances than the 30 written")?;
    let failed_b = every_page(&*store, InstanceQuery::default().saga(&b).status(StatusKind::Failed), 2).await?;
    let want = expect(&|r| r.saga == b && r.status.kind() == StatusKind::Failed);
    check(ids(&failed_b) == want, format!("saga b, failed: {} instances, expected {}", failed_b.len(), want.len()))?;
    let old = every_page(&*store, InstanceQuery::default().saga(&a).updated_before(Timestamp(100)), 50).await?;
    let want = expect(&|r| r.saga == a && r.updated_at < Timestamp(100));
    check(ids(&old) == want, format!("saga a, changed before 100: {} instances, expected {}", old.len(), want.len()))?;

    let mut counted = std::collections::BTreeMap::new();
    let mut query = InstanceQuery::default();
    loop {
        let counts = store.count_instances(&query).await.map_err(failed("counting"))?;
        for c in counts.counts.into_iter().filter(|c| c.saga == a || c.saga == b) {
            *counted.entry((c.saga, c.status.as_str())).or_insert(0) += c.count;
        }
        match counts.next {
            Some(next) => query = query.after(Some(next)),
            None => break,
        }
    }
    for saga in [&a, &b] {
        for status in StatusKind::ALL {
            let want = written.iter().filter(|r| r.saga == *saga && r.status.kind() == status).count() as u64;
            let got = counted.get(&(saga.clone(), status.as_str())).copied().unwrap_or(0);
            check(got == want, format!("count of {saga} {status}: {got}, expected {want}"))?;
        }
    }

    let id = written[0].id;
    for version in 2..=6 {
        let mut r = written[0].clone();
        r.version = version;
        let history = HistoryEntry { version, at: Timestamp(version), cause: None, events: Vec::new() };
        let previous = Some((version - 1, r.status.kind()));
        durably(
            &*store,
            Commit {
                instance: Some(InstanceWrite { record: r, previous, previous_updated_at: None }),
                history: Some(history),
                ..Commit::default()
            },
        )
        .await
        .map_err(failed("a transition"))?;
    }
    let page: Vec<u64> =
        store.history_page(id, Some(3), 2).await.map_err(failed("a history page"))?.iter().map(|h| h.version).collect();
    check(page == [4, 5], format!("history after version 3, 2 entries: {page:?}"))?;
    let first: Vec<u64> =
        store.history_page(id, None, 1).await.map_err(failed("a history page"))?.iter().map(|h| h.version).collect();
    check(first == [2], format!("the first history entry: {first:?}"))
}

/// Published outbox entries can be removed; one the relay gives up on is parked with its
/// reason and leaves the outbox.
pub async fn outbox_entries_are_removed_or_parked_with_their_reason(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let (a, b) = (unique("a"), unique("b"));
    let committed = durably(
        &*store,
        Commit { outbox: vec![Envelope::new(&a, vec![]), Envelope::new(&b, vec![])], ..Commit::default() },
    )
    .await
    .map_err(failed("commit"))?;
    let (first, second) = (committed.outbox[0].seq, committed.outbox[1].seq);
    store.remove_outbox(&[first]).await.map_err(failed("remove_outbox"))?;
    store.park_outbox(second, "nobody takes it", Timestamp(7)).await.map_err(failed("park_outbox"))?;
    check(outbox_named(&*store, &[&a, &b]).await?.is_empty(), "both entries left the outbox")?;
    let parked = store.parked_outbox(None, 100_000).await.map_err(failed("parked_outbox"))?;
    check(
        parked.iter().any(|p| p.seq == second && p.reason == "nobody takes it" && p.envelope.name == b),
        "the parked entry with its reason",
    )?;
    // An operator's replay: the envelope back in the outbox, the parked entry gone, together.
    let envelope = parked.iter().find(|p| p.seq == second).map(|p| p.envelope.clone()).ok_or("parked")?;
    durably(&*store, Commit { outbox: vec![envelope], parked_remove: vec![second], ..Commit::default() })
        .await
        .map_err(failed("a replay"))?;
    check(outbox_named(&*store, &[&b]).await? == [b.as_str()], "the replayed entry is in the outbox again")?;
    let parked = store.parked_outbox(None, 100_000).await.map_err(failed("parked_outbox"))?;
    check(!parked.iter().any(|p| p.seq == second), "and no longer parked")
}

/// A commit writes queued copies with it; a consumer's commit that takes its entry in place
/// of an inbox entry does so once, and writes no inbox entry.
pub async fn a_queued_message_commits_with_its_unit_and_is_consumed_once(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let subscription = unique("billing");
    let sent = Commit { queued: vec![(subscription.clone(), Envelope::new("c", vec![3]))], ..Commit::default() };
    let committed = durably(&*store, sent).await.map_err(failed("the producing commit"))?;
    let entry = committed.queued.first().ok_or("the queued copy comes back with its position")?.clone();
    let queued = store.queued(&subscription, None, 10).await.map_err(failed("queued"))?;
    check(queued.len() == 1 && queued[0].seq == entry.seq, "the copy is queued")?;
    let (consumer, message) = (Uuid::now_v7(), entry.envelope.message_id);
    let consume = Commit {
        inbox: Some((consumer, message)),
        consumes: Some((subscription.clone(), entry.seq)),
        ..Commit::default()
    };
    let taken = durably(&*store, consume.clone()).await.map_err(failed("the consuming commit"))?;
    check(taken.consumed_queue_entry, "the commit says it took the entry")?;
    check(store.queued(&subscription, None, 10).await.map_err(failed("queued"))?.is_empty(), "the entry is gone")?;
    let again = durably(&*store, consume).await;
    check(matches!(again, Err(StoreError::Duplicate { .. })), "a second consumption is a duplicate")?;
    check(!store.processed(consumer, message).await.map_err(failed("processed"))?, "no inbox entry was written")
}

/// Queue entries keep their delivery count when rewritten, leave when dequeued, and move to
/// the dead letters with their reason.
pub async fn queue_entries_are_rewritten_removed_and_dead_lettered(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let subscription = unique("audit");
    let enqueued = store
        .enqueue((0..3).map(|n| (subscription.clone(), Envelope::new("e", vec![n]))).collect())
        .await
        .map_err(failed("enqueue"))?;
    enqueued.durable.await.map_err(failed("enqueue's durability"))?;
    let mut queued = store.queued(&subscription, None, 10).await.map_err(failed("queued"))?;
    check(queued.len() == 3, "three entries")?;
    queued[0].envelope.attempt = 4;
    store.requeue(&queued[0]).await.map_err(failed("requeue"))?;
    store.dequeue(&subscription, &[queued[1].seq]).await.map_err(failed("dequeue"))?;
    store.dead_letter_queued(queued[2].clone(), "cannot parse", Timestamp(9)).await.map_err(failed("dead letter"))?;
    let left = store.queued(&subscription, None, 10).await.map_err(failed("queued"))?;
    check(left.len() == 1 && left[0].envelope.attempt == 4, "one entry left, with its delivery count")?;
    let later = store.queued(&subscription, Some(left[0].seq), 10).await.map_err(failed("queued after"))?;
    check(later.is_empty(), "paging after the last entry finds nothing")?;
    let dead = store.queue_dead_letters(None, 100_000).await.map_err(failed("queue_dead_letters"))?;
    check(
        dead.iter().any(|d| d.subscription == subscription && d.reason == "cannot parse" && d.envelope.payload == [2]),
        "the dead letter with its reason",
    )?;
    let seq = queued[2].seq;
    let revived = store.revive_queue_dead_letter(seq).await.map_err(failed("revive_queue_dead_letter"))?;
    let Some(revived) = revived.filter(|m| m.subscription == subscription && m.envelope.attempt == 1) else {
        return Err("a revived dead letter is queued again on its subscription, as a first delivery".into());
    };
    let left = store.queued(&subscription, None, 10).await.map_err(failed("queued"))?;
    check(left.iter().any(|m| m.seq == seq && m.envelope.payload == [2]), "the revived entry is in the queue")?;
    let dead = store.queue_dead_letters(None, 100_000).await.map_err(failed("queue_dead_letters"))?;
    check(!dead.iter().any(|d| d.seq == seq), "a revived dead letter is no longer dead")?;
    check(store.revive_queue_dead_letter(seq).await.map_err(failed("revive"))?.is_none(), "it revives once")?;
    store.dead_letter_queued(revived, "again", Timestamp(10)).await.map_err(failed("dead letter"))?;
    check(store.remove_queue_dead_letter(seq).await.map_err(failed("remove_queue_dead_letter"))?, "removed")?;
    check(!store.remove_queue_dead_letter(seq).await.map_err(failed("remove"))?, "a removed dead letter is gone")?;
    let dead = store.queue_dead_letters(None, 100_000).await.map_err(failed("queue_dead_letters"))?;
    check(!dead.iter().any(|d| d.seq == seq), "a removed dead letter is not listed")
}

/// Retention finds a finished instance by the time it finished and deletes it at the version
/// it was read, with its history, inbox, status and index entries, leaving a tombstone until
/// its time; a stale read deletes nothing; a running instance is never a candidate.
pub async fn a_pruned_instance_leaves_only_its_tombstone(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let saga = unique("retained");
    let (id, running, first, second) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let entry = |version| HistoryEntry { version, at: Timestamp(0), cause: None, events: Vec::new() };
    let at = |mut w: InstanceWrite, updated: u64| {
        w.record.saga = saga.clone();
        w.record.updated_at = Timestamp(updated);
        w
    };
    let steps = [
        (first, at(write(id, 1, SagaStatus::Running { step: 0 }, None), 10), entry(1)),
        (second, at(write(id, 2, SagaStatus::Completed, Some((1, StatusKind::Running))), 50), entry(2)),
        (first, at(write(running, 1, SagaStatus::Running { step: 0 }, None), 10), entry(1)),
    ];
    for (message, instance, history) in steps {
        let inbox = Some((instance.record.id, message));
        let commit = Commit { inbox, instance: Some(instance), history: Some(history), ..Commit::default() };
        durably(&*store, commit).await.map_err(failed("a commit"))?;
    }
    let expired = |before| store.expired_instances(&saga, Timestamp(before), 100);
    check(expired(50).await.map_err(failed("expired_instances"))?.is_empty(), "nothing finished before 50")?;
    let found = expired(51).await.map_err(failed("expired_instances"))?;
    check(found.len() == 1 && found[0].record.id == id, format!("the finished instance only, got {found:?}"))?;
    let tombstone = Tombstone {
        saga: saga.clone(),
        status: StatusKind::Completed,
        pruned_at: Timestamp(100),
        until: Timestamp(200),
    };
    let mut stale = found[0].clone();
    stale.record.version = 1;
    let outcome = store.prune_instance(&stale, &tombstone).await.map_err(failed("prune_instance"))?;
    check(outcome == PruneOutcome::Changed, format!("a stale read prunes nothing, got {outcome:?}"))?;
    check(store.instance(id).await.map_err(failed("instance"))?.is_some(), "the instance is still there")?;

    let outcome = store.prune_instance(&found[0], &tombstone).await.map_err(failed("prune_instance"))?;
    check(outcome == PruneOutcome::Pruned, format!("pruned, got {outcome:?}"))?;
    check(store.instance(id).await.map_err(failed("instance"))?.is_none(), "the record is gone")?;
    check(store.history(id).await.map_err(failed("history"))?.is_empty(), "its history is gone")?;
    for message in [first, second] {
        check(!store.processed(id, message).await.map_err(failed("processed"))?, "its inbox is gone")?;
    }
    let completed =
        every_page(&*store, InstanceQuery::default().saga(&saga).status(StatusKind::Completed), 100).await?;
    check(completed.is_empty(), "its status entry is gone")?;
    check(expired(1_000).await.map_err(failed("expired_instances"))?.is_empty(), "its index entry is gone")?;
    check(store.instance(running).await.map_err(failed("instance"))?.is_some(), "the running instance is kept")?;
    check(store.tombstone(id).await.map_err(failed("tombstone"))? == Some(tombstone.clone()), "its tombstone")?;

    store.prune_tombstones(Timestamp(150), 100_000).await.map_err(failed("prune_tombstones"))?;
    check(store.tombstone(id).await.map_err(failed("tombstone"))?.is_some(), "the tombstone is kept until its time")?;
    store.prune_tombstones(Timestamp(201), 100_000).await.map_err(failed("prune_tombstones"))?;
    check(store.tombstone(id).await.map_err(failed("tombstone"))?.is_none(), "the tombstone goes after its time")
}

/// Retention sweeps a consumer's inbox page by page and deletes the entries written before
/// the horizon, and no other consumer's.
pub async fn inbox_entries_older_than_the_horizon_are_swept(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let (consumer, other) = (Uuid::now_v7(), Uuid::now_v7());
    let messages: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for (who, message) in messages.iter().map(|m| (consumer, *m)).chain([(other, messages[0])]) {
        durably(&*store, Commit { inbox: Some((who, message)), ..Commit::default() })
            .await
            .map_err(failed("a commit"))?;
    }
    let sweep = |before: Timestamp| {
        let store = store.clone();
        async move {
            let (mut deleted, mut after, mut pages) = (0, None, 0);
            loop {
                let (gone, next) =
                    store.prune_inbox(consumer, before, after, 2).await.map_err(failed("prune_inbox"))?;
                deleted += gone;
                pages += 1;
                match next {
                    Some(next) => after = Some(next),
                    None => return Ok::<_, String>((deleted, pages)),
                }
            }
        }
    };
    let (deleted, pages) = sweep(Timestamp(1)).await?;
    check(deleted == 0 && pages == 3, format!("nothing is older than the epoch: {deleted} deleted in {pages} pages"))?;
    let (deleted, _) = sweep(Timestamp::now().plus(std::time::Duration::from_secs(1))).await?;
    check(deleted == 5, format!("every entry is older than a second from now: {deleted} deleted"))?;
    for message in &messages {
        check(!store.processed(consumer, *message).await.map_err(failed("processed"))?, "the entry is gone")?;
    }
    check(store.processed(other, messages[0]).await.map_err(failed("processed"))?, "another consumer's entry stays")
}

/// Retention of the queues' dead letters: those older than the cut go, then the oldest past
/// the count kept.
pub async fn dead_letters_past_their_age_or_count_are_pruned(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let subscription = unique("audit");
    let enqueued = store
        .enqueue((0..4).map(|n| (subscription.clone(), Envelope::new("e", vec![n]))).collect())
        .await
        .map_err(failed("enqueue"))?;
    enqueued.durable.await.map_err(failed("enqueue's durability"))?;
    let queued = store.queued(&subscription, None, 10).await.map_err(failed("queued"))?;
    for (n, message) in (1..).zip(queued) {
        store.dead_letter_queued(message, "bad", Timestamp(n * 10)).await.map_err(failed("dead letter"))?;
    }
    let payloads = |store: Arc<dyn Store>| async move {
        let dead = store.queue_dead_letters(None, 100).await.map_err(failed("queue_dead_letters"))?;
        Ok::<_, String>(dead.into_iter().map(|d| d.envelope.payload[0]).collect::<Vec<u8>>())
    };
    let deleted = store.prune_queue_dead_letters(Timestamp(25), 100, 100).await.map_err(failed("prune"))?;
    check(deleted == 2, format!("the two dead-lettered before 25 go, {deleted} went"))?;
    check(payloads(store.clone()).await? == [2, 3], "the younger two stay")?;
    let deleted = store.prune_queue_dead_letters(Timestamp(0), 1, 100).await.map_err(failed("prune"))?;
    check(deleted == 1, format!("one past the count of one goes, {deleted} went"))?;
    check(payloads(store.clone()).await? == [3], "the newest stays")
}

/// Writers on several handles racing on one instance: for each version exactly one commit
/// wins, the others conflict, and no update is lost; of concurrent commits of one inbox
/// entry exactly one is applied.
pub async fn concurrent_writers_on_one_instance_serialize(t: &dyn StoreTarget) -> Outcome {
    const WRITERS: usize = 4;
    const ROUNDS: u64 = 10;
    let store = t.store().await;
    let mut handles = vec![store.clone()];
    for _ in 1..WRITERS {
        handles.push(t.another_handle(&store).await);
    }
    let id = Uuid::now_v7();
    durably(
        &*store,
        Commit { instance: Some(write(id, 1, SagaStatus::Running { step: 0 }, None)), ..Commit::default() },
    )
    .await
    .map_err(failed("create"))?;
    for version in 1..=ROUNDS {
        let attempts = handles.iter().map(|h| {
            let h = h.clone();
            async move {
                let step = SagaStatus::Running { step: version as u32 };
                let c = Commit {
                    instance: Some(write(id, version + 1, step, Some((version, StatusKind::Running)))),
                    ..Commit::default()
                };
                durably(&*h, c).await
            }
        });
        let results = futures::future::join_all(attempts).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results.iter().filter(|r| matches!(r, Err(StoreError::Conflict { .. }))).count();
        check(won == 1 && conflicts == WRITERS - 1, format!("round {version}: {won} won, {conflicts} conflicted"))?;
    }
    let found = store.instance(id).await.map_err(failed("instance"))?;
    check(found.is_some_and(|r| r.version == ROUNDS + 1), "every round's winner is kept")?;

    let (consumer, message) = (Uuid::now_v7(), Uuid::now_v7());
    let (scope, key) = (unique("effects"), "count".to_owned());
    let attempts = handles.iter().map(|h| {
        let (h, scope, key) = (h.clone(), scope.clone(), key.clone());
        async move {
            let c = Commit {
                inbox: Some((consumer, message)),
                entities: vec![EntityWrite { scope, key, expected_version: 0, value: b"1".to_vec() }],
                ..Commit::default()
            };
            durably(&*h, c).await
        }
    });
    let applied = futures::future::join_all(attempts).await.iter().filter(|r| r.is_ok()).count();
    check(applied == 1, format!("one of the concurrent copies applied, not {applied}"))
}

fn mine(timers: &[TimerRecord], of: Uuid) -> Vec<&TimerKey> {
    timers.iter().filter(|t| t.key.instance_id == of).map(|t| &t.key).collect()
}

/// A process claims only the timers of the sagas it runs. In a shared store a due timer is
/// claimed by one process at a time, a local step's timer is
/// claimed by the commit that writes it and its holder extends that claim, and a claim that ran
/// out is anyone's (another handle is another process). A store one process owns hands every
/// due timer to whoever asks: the runtime's memory is the claim there.
pub async fn due_timers_and_local_steps_are_claimed_by_one_process_at_a_time(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let other = t.another_handle(&store).await;
    let id = Uuid::now_v7();
    let due = timer(1, id);
    let mut local = timer(u64::MAX / 2, id);
    local.purpose = TimerPurpose::RunLocal { step: 0, phase: Phase::Action, attempt: 1 };
    let c = Commit { timers_add: vec![due.clone(), local.clone()], ..Commit::default() };
    durably(&*store, c).await.map_err(failed("commit"))?;
    let saga = vec![due.saga.clone()];
    let elsewhere = other.claim_timers(Timestamp(10), None, 1000, &["another saga".into()]).await;
    let elsewhere = elsewhere.map_err(failed("claim for another saga"))?;
    check(mine(&elsewhere, id).is_empty(), format!("a process claims only its sagas' timers, got {elsewhere:?}"))?;
    let claim = |s: Arc<dyn Store>| {
        let saga = saga.clone();
        async move { s.claim_timers(Timestamp(10), None, 1000, &saga).await }
    };
    let Some(lease) = store.claim_lease() else {
        for handle in [&store, &other] {
            let got = claim(handle.clone()).await.map_err(failed("claim"))?;
            check(mine(&got, id) == vec![&due.key], format!("every ask gets the due timer only, got {got:?}"))?;
        }
        return Ok(());
    };
    let got = claim(other.clone()).await.map_err(failed("claim"))?;
    check(mine(&got, id) == vec![&due.key], format!("the due timer, not the local step's lease, got {got:?}"))?;
    let got = claim(store.clone()).await.map_err(failed("claim again"))?;
    check(mine(&got, id).is_empty(), format!("nothing another process holds, got {got:?}"))?;
    let lost = store.extend_timer_claims(&[local.key]).await.map_err(failed("extend"))?;
    check(lost.is_empty(), "the committing process holds its local step's lease")?;
    let lost = other.extend_timer_claims(&[local.key]).await.map_err(failed("extend elsewhere"))?;
    check(lost == vec![local.key], "another process cannot extend a lease it does not hold")?;
    tokio::time::sleep(lease + lease / 4).await;
    let got = claim(other.clone()).await.map_err(failed("claim after the lease"))?;
    let expected = vec![&due.key, &local.key];
    check(mine(&got, id) == expected, format!("claims that ran out are anyone's, got {got:?}"))?;
    let lost = store.extend_timer_claims(&[local.key]).await.map_err(failed("extend a lost lease"))?;
    check(lost == vec![local.key], "a lease taken over is lost to its former holder")
}

/// In a shared store an outbox entry nobody removed within a lease of its commit (its process
/// died) is handed to one sweeper at a time; a fresh entry is its committer's. A store one
/// process owns has no one else's entries to sweep.
pub async fn outbox_entries_nobody_published_within_a_lease_go_to_one_sweeper(t: &dyn StoreTarget) -> Outcome {
    let store = t.store().await;
    let other = t.another_handle(&store).await;
    let envelope = Envelope::new(unique("stale"), b"x".to_vec());
    let c = Commit { outbox: vec![envelope.clone()], ..Commit::default() };
    let seq = durably(&*store, c).await.map_err(failed("commit"))?.outbox[0].seq;
    let swept = |s: Arc<dyn Store>| async move {
        let page = s.claim_stale_outbox(1000).await?;
        Ok::<_, StoreError>(page.iter().filter(|e| e.seq == seq).count())
    };
    let Some(lease) = store.claim_lease() else {
        return check(
            swept(other).await.map_err(failed("sweep"))? == 0,
            "nothing to sweep in a store one process owns",
        );
    };
    check(swept(other.clone()).await.map_err(failed("sweep"))? == 0, "a fresh entry is left to its committer")?;
    tokio::time::sleep(lease + lease / 4).await;
    check(swept(other.clone()).await.map_err(failed("sweep late"))? == 1, "a stale entry goes to a sweeper")?;
    check(swept(store.clone()).await.map_err(failed("sweep again"))? == 0, "and to one sweeper at a time")?;
    let entry = store.outbox(Some(seq - 1), 1).await.map_err(failed("outbox"))?;
    check(entry.first().is_some_and(|e| e.envelope.message_id == envelope.message_id), "the entry is intact")
}

/// Expands to one `#[tokio::test]` per check of the store conformance suite, each on the
/// [`StoreTarget`] the given future yields (`None`: the store is not configured here, and the
/// check passes without running).
#[macro_export]
macro_rules! store_conformance_tests {
    ($target:expr) => {
        $crate::store_conformance_tests!(@each $target;
            a_commit_applies_instance_inbox_outbox_timers_and_history_together,
            the_inbox_refuses_a_message_its_consumer_processed,
            a_stale_version_loses_and_changes_nothing,
            the_status_index_follows_the_status,
            listings_filter_page_and_count_instances,
            outbox_entries_are_removed_or_parked_with_their_reason,
            a_queued_message_commits_with_its_unit_and_is_consumed_once,
            queue_entries_are_rewritten_removed_and_dead_lettered,
            a_pruned_instance_leaves_only_its_tombstone,
            inbox_entries_older_than_the_horizon_are_swept,
            dead_letters_past_their_age_or_count_are_pruned,
            concurrent_writers_on_one_instance_serialize,
            due_timers_and_local_steps_are_claimed_by_one_process_at_a_time,
            outbox_entries_nobody_published_within_a_lease_go_to_one_sweeper,
        );
    };
    (@each $target:expr; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            if let Some(target) = $target.await {
                if let Err(failure) = $crate::store::conformance::$check(&target).await {
                    panic!("{}: {failure}", stringify!($check));
                }
            }
        }
    )*};
}
