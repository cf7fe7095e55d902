//! Retention: how long finished instances are kept, and the background task that deletes them.
//!
//! Without it nothing is ever deleted: every finished saga keeps its record, history, inbox
//! entries and status entry forever. With a [`Retention`] for a saga, the runtime deletes its
//! completed, compensated and cancelled instances once they finished longer ago than the policy
//! keeps them (a failed one waits for an operator however old it is; once repaired and
//! finished it is deleted like the others).
//!
//! - **Found by age, not by scanning.** The store indexes an instance once, by saga and the time
//!   it finished, in the commit that finishes it ([`Store::expired_instances`]), so a pass reads
//!   only what it deletes, however many younger instances are kept.
//! - **Never in the hot path's way.** Each pass reads and deletes in batches of
//!   [`SagaRuntimeBuilder::retention_batch`] (a store write each, small and bounded, like any
//!   unit's commit), yielding between them; an instance with a long history loses it over
//!   several writes ([`PRUNE_BATCH`](crate::store::PRUNE_BATCH) keys each), its record last.
//! - **Safe beside the engine and other replicas.** A deletion is checked against the version
//!   it was read at: an instance that changed meanwhile (a late reply recorded, an operator's
//!   action) is left for the next pass; replicas on one shared store pruning at once delete each
//!   instance once.
//! - **Inboxes.** With [`SagaRuntimeBuilder::inbox_horizon`], inbox entries (one per message
//!   handled, there to drop redeliveries) are deleted once they are older than the horizon, by
//!   the wall clock, in sweeps that go on from pass to pass: a participant's, and a saga
//!   instance's while it lives (a long-lived instance, one that applies events for months,
//!   gains an entry per message). A finished instance's go with it when retention deletes it.
//! - **Dead letters** the store keeps (the durable local bus's and the PostgreSQL bus's), with
//!   [`SagaRuntimeBuilder::keep_dead_letters`]: older than an age or past a count, oldest
//!   first. A broker keeps its own: a policy on RabbitMQ's `.dead` queues (`message-ttl`,
//!   `max-length`), [`NatsOptions::dead_letter_max_age`](crate::bus) on NATS.
//! - **Tombstones.** A deleted instance leaves a [`Tombstone`] for the policy's window
//!   ([`Retention::tombstone_for`], 7 days by default): a late duplicate of its start message
//!   within the window is skipped as a duplicate, as it would have been while the instance
//!   existed. After the window the tombstone goes too, and a start message with the same
//!   correlation key starts a new instance: the key is free again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use uuid::Uuid;

use super::Core;
use crate::message::Timestamp;
use crate::store::{InstanceCursor, InstanceQuery, PruneOutcome, StoreError, Tombstone};

/// How long the tombstones of deleted instances are kept by default.
pub const DEFAULT_TOMBSTONE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a saga's finished instances are kept ([`SagaRuntimeBuilder::retention`](super::SagaRuntimeBuilder::retention)).
///
/// ```
/// use std::time::Duration;
/// use saga_core::engine::Retention;
/// // Keep finished orders a week; recognise a duplicate order for 30 days.
/// let policy = Retention::keep(Duration::from_secs(7 * 86_400)).tombstone_for(Duration::from_secs(30 * 86_400));
/// assert_eq!(policy.kept(), Duration::from_secs(7 * 86_400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    keep: Duration,
    tombstone: Duration,
}

impl Retention {
    /// Deletes finished instances `keep` after they finished, leaving tombstones for
    /// [`DEFAULT_TOMBSTONE_WINDOW`].
    pub fn keep(keep: Duration) -> Self {
        Retention { keep, tombstone: DEFAULT_TOMBSTONE_WINDOW }
    }

    /// How long a deleted instance's tombstone recognises a late duplicate of its start.
    pub fn tombstone_for(mut self, window: Duration) -> Self {
        self.tombstone = window;
        self
    }

    /// How long finished instances are kept.
    pub fn kept(&self) -> Duration {
        self.keep
    }

    /// How long tombstones are kept.
    pub fn tombstone_window(&self) -> Duration {
        self.tombstone
    }
}

/// A runtime's retention: a policy per saga, the inbox horizon of its participants, and how
/// its passes run.
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    pub(crate) by_saga: HashMap<String, Retention>,
    pub(crate) inbox_horizon: Option<Duration>,
    /// How long and how many of the store's dead letters are kept (local and PostgreSQL buses).
    pub(crate) dead_letters: Option<(Duration, usize)>,
    /// The inbox ids of this runtime's participants.
    pub(crate) participants: Vec<Uuid>,
    pub(crate) every: Duration,
    pub(crate) batch: usize,
    /// Where the sweep of each participant's inbox goes on from at the next pass.
    sweeps: Arc<Mutex<HashMap<Uuid, Uuid>>>,
    /// Where the sweep of each saga's instances' inboxes goes on from at the next pass.
    saga_sweeps: Arc<Mutex<HashMap<String, InstanceCursor>>>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            by_saga: HashMap::new(),
            inbox_horizon: None,
            dead_letters: None,
            participants: Vec::new(),
            every: Duration::from_secs(60),
            batch: 500,
            sweeps: Arc::default(),
            saga_sweeps: Arc::default(),
        }
    }
}

impl Policies {
    /// Whether a retention task has anything to do.
    pub(crate) fn is_active(&self) -> bool {
        !self.by_saga.is_empty() || self.inbox_horizon.is_some() || self.dead_letters.is_some()
    }
}

/// How many inbox entries of one participant a pass looks at, per batch of instances: inbox
/// entries are read in message id order, not by age, so the sweep walks all of them, a stretch
/// per pass, and goes on where it stopped at the next one.
const INBOX_SWEEP_PER_BATCH: usize = 20;

/// What one retention pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// Finished instances deleted (each leaving a tombstone).
    pub instances: usize,
    /// Tombstones deleted after their window.
    pub tombstones: usize,
    /// Participants' inbox entries deleted past the horizon.
    pub inbox_entries: usize,
    /// Saga instances' inbox entries deleted past the horizon.
    pub instance_inbox_entries: usize,
    /// Dead letters deleted for their age or past the count kept.
    pub dead_letters: usize,
}

/// Runs a pass every `every` until the runtime stops; a failing store is logged and tried
/// again at the next pass (nothing is lost by waiting).
pub(crate) async fn run(core: Arc<Core>) {
    loop {
        tokio::time::sleep(core.retention.every).await;
        match pass(&core).await {
            Ok(pruned) if pruned != Pruned::default() => {
                tracing::debug!(instances = pruned.instances, tombstones = pruned.tombstones, "retention pass");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again at the next one"),
        }
    }
}

/// Deletes what every policy says has been kept long enough, then tombstones past their window.
pub(crate) async fn pass(core: &Core) -> Result<Pruned, StoreError> {
    let now = core.clock.now();
    let batch = core.retention.batch.max(1);
    let mut pruned = Pruned::default();
    for (saga, policy) in &core.retention.by_saga {
        let before = now.minus(policy.keep);
        loop {
            let candidates = core.store.expired_instances(saga, before, batch).await?;
            let mut changed = 0;
            for candidate in &candidates {
                let tombstone = Tombstone {
                    saga: saga.clone(),
                    status: candidate.record.status.kind(),
                    pruned_at: now,
                    until: now.plus(policy.tombstone),
                };
                loop {
                    match core.store.prune_instance(candidate, &tombstone).await? {
                        PruneOutcome::Pruned => pruned.instances += 1,
                        PruneOutcome::Partly => continue,
                        PruneOutcome::Changed => changed += 1,
                    }
                    break;
                }
            }
            // A batch of instances that all changed since they were read would be read again
            // as they are: leave them to the next pass.
            if candidates.len() < batch || changed == candidates.len() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    loop {
        let deleted = core.store.prune_tombstones(now, batch).await?;
        pruned.tombstones += deleted;
        if deleted < batch {
            break;
        }
        tokio::task::yield_now().await;
    }
    if let Some(horizon) = core.retention.inbox_horizon {
        // By the wall clock: a broker redelivers by it.
        let before = Timestamp::now().minus(horizon);
        pruned.inbox_entries = sweep_inboxes(core, before, batch).await?;
        pruned.instance_inbox_entries = sweep_saga_inboxes(core, before, batch).await?;
    }
    if let Some((age, count)) = core.retention.dead_letters {
        let before = Timestamp::now().minus(age);
        loop {
            let deleted = core.store.prune_queue_dead_letters(before, count, batch).await?;
            pruned.dead_letters += deleted;
            if deleted < batch {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(pruned)
}

/// Deletes participants' inbox entries written before `before`: a message redelivered after
/// that is not recognised as a duplicate, so the horizon must be longer than any redelivery
/// (ack timeouts, retry delays, an outage of the consumer).
async fn sweep_inboxes(core: &Core, before: Timestamp, batch: usize) -> Result<usize, StoreError> {
    let budget = batch.saturating_mul(INBOX_SWEEP_PER_BATCH);
    let mut deleted = 0;
    for consumer in &core.retention.participants {
        let mut after = lock(&core.retention.sweeps).get(consumer).copied();
        let mut seen = 0;
        while seen < budget {
            let (gone, next) = core.store.prune_inbox(*consumer, before, after, batch).await?;
            deleted += gone;
            seen += batch;
            after = next;
            if after.is_none() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut sweeps = lock(&core.retention.sweeps);
        match after {
            Some(at) => sweeps.insert(*consumer, at),
            None => sweeps.remove(consumer),
        };
    }
    Ok(deleted)
}

/// Deletes the inbox entries of this runtime's saga instances written before `before`. An
/// instance's inbox is found by its id, so the sweep walks the instances, saga by saga, in the
/// listing's order, at most `batch` × [`INBOX_SWEEP_PER_BATCH`] per saga and pass, and goes on
/// where it stopped at the next pass. An old reply redelivered after its entry went is still
/// ignored (it answers an attempt the instance no longer waits for); an event would be applied
/// again, which is why the horizon must outlast redelivery, as for participants.
async fn sweep_saga_inboxes(core: &Core, before: Timestamp, batch: usize) -> Result<usize, StoreError> {
    let budget = batch.saturating_mul(INBOX_SWEEP_PER_BATCH);
    let mut sagas: Vec<&String> = core.sagas.keys().collect();
    sagas.sort_unstable();
    let mut deleted = 0;
    for saga in sagas {
        let mut after = lock(&core.retention.saga_sweeps).get(saga).copied();
        let mut seen = 0;
        loop {
            let query = InstanceQuery::default().saga(saga.as_str()).after(after);
            let listing = core.store.list_instances(&query, batch).await?;
            for record in &listing.records {
                let mut from = None;
                loop {
                    let (gone, next) = core.store.prune_inbox(record.id, before, from, batch).await?;
                    deleted += gone;
                    from = next;
                    if from.is_none() {
                        break;
                    }
                }
            }
            // A short page still counts: a listing may stop at its scan budget with nothing in it.
            seen += listing.records.len().max(1);
            after = listing.next;
            if after.is_none() || seen >= budget {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut sweeps = lock(&core.retention.saga_sweeps);
        match after {
            Some(at) => sweeps.insert(saga.clone(), at),
            None => sweeps.remove(saga),
        };
    }
    Ok(deleted)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a start message for instance `id` of `saga` is a late duplicate of an instance
/// retention deleted (its tombstone is within its window at `now`).
pub(crate) async fn deleted_recently(
    core: &Core,
    saga: &str,
    id: Uuid,
    now: Timestamp,
) -> Result<Option<Tombstone>, StoreError> {
    if !core.retention.by_saga.contains_key(saga) {
        return Ok(None);
    }
    Ok(core.store.tombstone(id).await?.filter(|t| now < t.until))
}
