//! The PostgreSQL store: the [`Store`] contract in one database, one SQL transaction per unit
//! of work.
//!
//! A commit is one transaction: the inbox entry is inserted if absent (or, for a local-bus
//! message's only copy, its queue row deleted), the instance and participant records are
//! written only at the version read (`UPDATE … WHERE version = $read`, or an insert that finds
//! no row), and the outbox, queue, timer and history rows go with them. It is durable at
//! `COMMIT` (PostgreSQL's `synchronous_commit` decides what that means on the server), so
//! `Committed::durable` is resolved when `commit` returns and there is nothing to flush.
//!
//! The schema is created and upgraded by the versioned migrations in `migrations/postgres`,
//! which [`PostgresStore::connect`] runs (under PostgreSQL's advisory lock, so processes
//! starting together do not race). A database that an unknown, newer migration touched is
//! refused with [`StoreError::UnsupportedFormat`], like a sled store of a newer format.
//!
//! Every database error is [`StoreError::Io`]: a lost connection, a failover or a
//! serialization failure is retried by the engine without spending a message's retries.
//!
//! Records are postcard-encoded, as in the sled store; identifiers, versions, positions and due
//! times are columns, so that the queries the engine pages with are index ranges.
//!
//! Several processes may share one database ([`Store::is_shared`]). What one process must not
//! do while another does it is claimed, with the database's clock so that the processes'
//! clocks do not matter: a due timer is claimed (`FOR UPDATE SKIP LOCKED`) by the process that
//! fires it, for [`PostgresStore::with_claim_lease`] (15 s by default); a local step's timer is
//! claimed by the commit that schedules the step and the claim is extended while the step
//! runs, so another process takes the step over only once its runner stopped extending (it
//! died); an outbox row that nobody removed within a lease of its commit (its process died, or
//! its publish keeps failing) is claimed by one process's sweeper and published again (the
//! consumers' inboxes drop the copy). The claims are an economy and a bound on takeover time;
//! correctness across processes comes from the version checks and the inbox.
//!
//! Known limits: the due times of timers come from the clock of the process that scheduled
//! them (so that a test's virtual clock drives them), so processes' clocks should agree to
//! well within a timer's precision. The schema's version lives in sqlx's `_sqlx_migrations`
//! table: give the store a database (or a `search_path` schema) that no other sqlx-migrated
//! application uses.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::layout as key;
mod query;

use super::{
    Commit, Committed, Durable, Enqueued, EntityRecord, HistoryEntry, InstanceCounts, InstanceListing, InstanceQuery,
    InstanceRecord, OutboxEntry, PRUNE_BATCH, ParkedOutboxEntry, PruneOutcome, QueueDeadLetter, QueuedMessage,
    RetentionCandidate, StatusKind, Store, StoreError, TimerKey, TimerPurpose, TimerRecord, Tombstone,
};
use crate::message::{Envelope, Timestamp};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A [`Store`] in PostgreSQL (feature `postgres`).
///
/// ```no_run
/// # async fn run() -> Result<(), saga_core::store::StoreError> {
/// use saga_core::store::PostgresStore;
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Where it connects, without credentials, for error messages.
    place: Arc<str>,
    /// Whose claims this handle takes: one id per connected store (its clones share it).
    owner: Uuid,
    lease: Duration,
}

/// How long a claim lasts unless [`PostgresStore::with_claim_lease`] says otherwise.
const DEFAULT_LEASE: Duration = Duration::from_secs(15);

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.place)
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// A database error. One about the data (SQLSTATE class 22: a NUL byte in a text column, say)
/// fails the same way every time, so it is not an outage; everything else (connections,
/// failover, serialization failures, deadlocks) may pass and is retried as one.
fn db(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")) => {
            StoreError::Encode { what: "PostgreSQL row", reason: e.to_string() }
        }
        _ => StoreError::Io(format!("PostgreSQL: {e}")),
    }
}

fn ready() -> Durable {
    futures::future::ready(Ok(())).boxed()
}

fn status_code(kind: StatusKind) -> i16 {
    match kind {
        StatusKind::Running => 0,
        StatusKind::Compensating => 1,
        StatusKind::Completed => 2,
        StatusKind::Compensated => 3,
        StatusKind::Failed => 4,
        StatusKind::Cancelled => 5,
    }
}

/// Positions, versions and times are `u64` in the engine and `BIGINT` here.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn small(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PostgresStore {
    /// Connects with a pool of up to 8 connections and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, 8).await
    }

    /// Connects with a pool of up to `max_connections` and brings the schema up to date.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|e| StoreError::Open {
            path: url.rsplit('@').next().unwrap_or(url).to_owned(),
            reason: format!("not a PostgreSQL URL: {e}"),
        })?;
        Self::connect_options(options, max_connections).await
    }

    /// Connects with sqlx's connection options (host, database, TLS, timeouts...) and a pool
    /// of up to `max_connections`, and brings the schema up to date.
    pub async fn connect_options(options: PgConnectOptions, max_connections: u32) -> Result<Self, StoreError> {
        let place: Arc<str> =
            format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("")).into();
        let open = |reason: String| StoreError::Open { path: place.to_string(), reason };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .map_err(|e| open(format!("cannot connect: {e}")))?;
        MIGRATIONS.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(found) => StoreError::UnsupportedFormat {
                path: place.to_string(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: MIGRATIONS.iter().map(|m| m.version).max().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            },
            other => open(format!("cannot bring the schema up to date: {other}")),
        })?;
        let store = PostgresStore { pool, place, owner: Uuid::now_v7(), lease: DEFAULT_LEASE };
        store.fill_instance_columns().await?;
        Ok(store)
    }

    /// How long this process's claims on timers, local steps and stale outbox rows last
    /// (default 15 s): the longest a dead process's work waits before another takes it over.
    /// Claims held by running work are extended every third of it. Shorter means faster
    /// takeover and more claim traffic; a lease shorter than a database failover makes work
    /// change hands during one (harmless, but it repeats local steps).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), saga_core::store::StoreError> {
    /// use saga_core::store::PostgresStore;
    /// use std::time::Duration;
    /// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test")
    ///     .await?
    ///     .with_claim_lease(Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn with_claim_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// The connection pool, shared with the [`PostgresBus`](crate::bus::PostgresBus) on it.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How long claims last ([`PostgresStore::with_claim_lease`]).
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(db)
    }

    async fn apply(&self, tx: &mut Transaction<'static, Postgres>, commit: &Commit) -> Result<CommitRows, StoreError> {
        if let Some((consumer, message_id)) = commit.inbox {
            let taken =
                match &commit.consumes {
                    Some((subscription, seq)) => {
                        sqlx::query("DELETE FROM saga_queue WHERE subscription = $1 AND seq = $2")
                            .bind(subscription)
                            .bind(big(*seq))
                            .execute(&mut **tx)
                            .await
                    }
                    None => sqlx::query(
                        "INSERT INTO saga_inbox (consumer, message_id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(consumer)
                    .bind(message_id)
                    .bind(big(Timestamp::now().0))
                    .execute(&mut **tx)
                    .await,
                }
                .map_err(db)?;
            if taken.rows_affected() == 0 {
                return Err(StoreError::Duplicate { consumer, message_id });
            }
        }
        if let Some(w) = &commit.instance {
            let r = &w.record;
            let record = key::encode("instance", r)?;
            let status = status_code(r.status.kind());
            let written = match w.previous {
                None => sqlx::query(
                    "INSERT INTO saga_instances (id, version, status, record, saga, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(r.id)
                .bind(big(r.version))
                .bind(status)
                .bind(record)
                .bind(&r.saga)
                .bind(big(r.updated_at.0)),
                Some((read, _)) => sqlx::query(
                    "UPDATE saga_instances SET version = $2, status = $3, record = $4, updated_at = $6 \
                     WHERE id = $1 AND version = $5",
                )
                .bind(r.id)
                .bind(big(r.version))
                .bind(status)
                .bind(record)
                .bind(big(read))
                .bind(big(r.updated_at.0)),
            }
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            if written.rows_affected() == 0 {
                let found = self.version_in(tx, "SELECT version FROM saga_instances WHERE id = $1", r.id).await?;
                let expected = w.previous.map_or(0, |(v, _)| v);
                return Err(StoreError::Conflict { what: format!("saga instance {}", r.id), expected, found });
            }
            // Indexed once, when it finishes (see the kv store's `prepare`).
            if r.status.kind().is_prunable() && !w.previous.is_some_and(|(_, kind)| kind.is_prunable()) {
                sqlx::query(
                    "INSERT INTO saga_finished (saga, finished_at, id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(&r.saga)
                .bind(big(r.updated_at.0))
                .bind(r.id)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            }
            if let Some(h) = &commit.history {
                sqlx::query("INSERT INTO saga_history (instance_id, version, entry) VALUES ($1, $2, $3)")
                    .bind(r.id)
                    .bind(big(h.version))
                    .bind(key::encode("history", h)?)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
            }
        }
        for e in &commit.entities {
            let query = if e.expected_version == 0 {
                "INSERT INTO saga_entities (scope, key, version, value) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
            } else {
                "UPDATE saga_entities SET version = $3, value = $4 WHERE scope = $1 AND key = $2 AND version = $5"
            };
            let written = sqlx::query(query)
                .bind(&e.scope)
                .bind(&e.key)
                .bind(big(e.expected_version + 1))
                .bind(&e.value)
                .bind(big(e.expected_version))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            if written.rows_affected() == 0 {
                let found = sqlx::query("SELECT version FROM saga_entities WHERE scope = $1 AND key = $2")
                    .bind(&e.scope)
                    .bind(&e.key)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db)?
                    .map_or(0, |row| small(row.get(0)));
                return Err(StoreError::Conflict {
                    what: format!("record {:?} of {:?}", e.key, e.scope),
                    expected: e.expected_version,
                    found,
                });
            }
        }
        let mut rows = CommitRows::default();
        for envelope in &commit.outbox {
            let row = sqlx::query("INSERT INTO saga_outbox (envelope) VALUES ($1) RETURNING seq")
                .bind(key::encode("outbox", envelope)?)
                .fetch_one(&mut **tx)
                .await
                .map_err(db)?;
            rows.outbox.push(small(row.get(0)));
        }
        for (subscription, envelope) in &commit.queued {
            rows.queued.push(insert_queued(tx, subscription, envelope).await?);
        }
        for t in &commit.timers_add {
            // A local step's timer is its lease: claimed by the process that runs the step.
            sqlx::query(
                "INSERT INTO saga_timers \
                 (due, instance_id, timer_id, record, run_local, claimed_by, claimed_until, saga) \
                 VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 THEN $6::uuid END, \
                 CASE WHEN $5 THEN now() + $7::bigint * interval '1 millisecond' END, $8) ON CONFLICT DO NOTHING",
            )
            .bind(big(t.key.due.0))
            .bind(t.key.instance_id)
            .bind(t.key.timer_id)
            .bind(key::encode("timer", t)?)
            .bind(matches!(t.purpose, TimerPurpose::RunLocal { .. }))
            .bind(self.owner)
            .bind(self.lease_ms())
            .bind(&t.saga)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        }
        for t in &commit.timers_remove {
            sqlx::query("DELETE FROM saga_timers WHERE due = $1 AND instance_id = $2 AND timer_id = $3")
                .bind(big(t.due.0))
                .bind(t.instance_id)
                .bind(t.timer_id)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        if !commit.parked_remove.is_empty() {
            let seqs: Vec<i64> = commit.parked_remove.iter().map(|s| big(*s)).collect();
            sqlx::query("DELETE FROM saga_parked_outbox WHERE seq = ANY($1)")
                .bind(seqs)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        Ok(rows)
    }

    /// The rows of a table sequenced by `seq`, after `after`, at most `limit`: `query` selects
    /// with `seq > $1 ORDER BY seq LIMIT $2`.
    async fn page(&self, query: &str, after: Option<u64>, limit: usize) -> Result<Vec<PgRow>, StoreError> {
        sqlx::query(query).bind(after.map_or(-1, big)).bind(self::limit(limit)).fetch_all(&self.pool).await.map_err(db)
    }

    async fn version_in(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        query: &str,
        id: Uuid,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(query).bind(id).fetch_optional(&mut **tx).await.map_err(db)?;
        Ok(row.map_or(0, |row| small(row.get(0))))
    }
}

/// The positions a commit's outbox and queued rows were given.
#[derive(Default)]
struct CommitRows {
    outbox: Vec<u64>,
    queued: Vec<u64>,
}

async fn insert_queued(
    tx: &mut Transaction<'static, Postgres>,
    subscription: &str,
    envelope: &Envelope,
) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO saga_queue (subscription, seq, envelope) VALUES ($1, nextval('saga_queue_seq'), $2) RETURNING seq",
    )
    .bind(subscription)
    .bind(key::encode("queued message", envelope)?)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    Ok(small(row.get(0)))
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    id: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { what, key: id.to_string(), reason: e.to_string() })
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let mut tx = self.begin().await?;
        // An error drops the transaction, which rolls it back.
        let rows = self.apply(&mut tx, &commit).await?;
        tx.commit().await.map_err(db)?;
        let consumed_queue_entry = commit.takes_queue_entry();
        let outbox =
            rows.outbox.into_iter().zip(commit.outbox).map(|(seq, envelope)| OutboxEntry { seq, envelope }).collect();
        let queued = rows
            .queued
            .into_iter()
            .zip(commit.queued)
            .map(|(seq, (subscription, envelope))| QueuedMessage { subscription, seq, envelope })
            .collect();
        Ok(Committed { durable: ready(), outbox, queued, consumed_queue_entry })
    }

    fn barrier(&self) -> Durable {
        ready()
    }

    async fn instance(&self, id: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        let row = sqlx::query("SELECT record FROM saga_instances WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|row| decode("instance", id, row.get::<&[u8], _>(0))).transpose()
    }

    async fn instances_with_status(&self, status: StatusKind, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let rows = sqlx::query("SELECT id FROM saga_instances WHERE status = $1 ORDER BY id LIMIT $2")
            .bind(status_code(status))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        self.history_page(id, None, usize::MAX).await
    }

    async fn history_page(&self, id: Uuid, after: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT entry FROM saga_history WHERE instance_id = $1 AND version > $2 ORDER BY version LIMIT $3",
        )
        .bind(id)
        .bind(after.map_or(-1, big))
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|row| decode("history", id, row.get::<&[u8], _>(0))).collect()
    }

    async fn list_instances(&self, query: &InstanceQuery, limit: usize) -> Result<InstanceListing, StoreError> {
        self.select_instances(query, limit).await
    }

    async fn count_instances(&self, query: &InstanceQuery) -> Result<InstanceCounts, StoreError> {
        self.count_by_saga_and_status(query).await
    }

    async fn processed(&self, consumer: Uuid, message_id: Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM saga_inbox WHERE consumer = $1 AND message_id = $2")
            .bind(consumer)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    async fn entity(&self, scope: &str, key: &str) -> Result<Option<EntityRecord>, StoreError> {
        let row = sqlx::query("SELECT version, value FROM saga_entities WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|row| EntityRecord { version: small(row.get(0)), value: row.get(1) }))
    }

    async fn entities(&self, scope: &str, limit: usize) -> Result<Vec<(String, EntityRecord)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, version, value FROM saga_entities WHERE scope = $1 ORDER BY key COLLATE \"C\" LIMIT $2",
        )
        .bind(scope)
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get(0), EntityRecord { version: small(row.get(1)), value: row.get(2) }))
            .collect())
    }

    async fn timers_due(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let limit = self::limit(limit);
        let rows = match after {
            None => sqlx::query(
                "SELECT record FROM saga_timers WHERE due <= $1 ORDER BY due, instance_id, timer_id LIMIT $2",
            )
            .bind(big(upto.0))
            .bind(limit),
            Some(k) => sqlx::query(
                "SELECT record FROM saga_timers WHERE due <= $1 AND (due, instance_id, timer_id) > ($3, $4, $5) \
                 ORDER BY due, instance_id, timer_id LIMIT $2",
            )
            .bind(big(upto.0))
            .bind(limit)
            .bind(big(k.due.0))
            .bind(k.instance_id)
            .bind(k.timer_id),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|row| decode("timer", "saga_timers", row.get::<&[u8], _>(0))).collect()
    }

    async fn next_timer(&self, after: Timestamp) -> Result<Option<TimerKey>, StoreError> {
        let row = sqlx::query(
            "SELECT due, instance_id, timer_id FROM saga_timers WHERE due > $1 ORDER BY due, instance_id, timer_id LIMIT 1",
        )
        .bind(big(after.0))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.map(|row| TimerKey { due: Timestamp(small(row.get(0))), instance_id: row.get(1), timer_id: row.get(2) }))
    }

    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self
            .page("SELECT seq, envelope FROM saga_outbox WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit)
            .await?;
        rows.iter()
            .map(|row| {
                let seq = small(row.get(0));
                Ok(OutboxEntry { seq, envelope: decode("outbox", seq, row.get::<&[u8], _>(1))? })
            })
            .collect()
    }

    async fn remove_outbox(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let seqs: Vec<i64> = seqs.iter().map(|s| big(*s)).collect();
        sqlx::query("DELETE FROM saga_outbox WHERE seq = ANY($1)").bind(seqs).execute(&self.pool).await.map_err(db)?;
        Ok(())
    }

    async fn park_outbox(&self, seq: u64, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query("DELETE FROM saga_outbox WHERE seq = $1 RETURNING envelope")
            .bind(big(seq))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if let Some(row) = row {
            sqlx::query("INSERT INTO saga_parked_outbox (seq, reason, parked_at, envelope) VALUES ($1, $2, $3, $4)")
                .bind(big(seq))
                .bind(reason)
                .bind(big(at.0))
                .bind(row.get::<&[u8], _>(0))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn parked_outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<ParkedOutboxEntry>, StoreError> {
        let rows = self
            .page(
                "SELECT seq, reason, parked_at, envelope FROM saga_parked_outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
                after,
                limit,
            )
            .await?;
        rows.iter()
            .map(|row| {
                let seq = small(row.get(0));
                Ok(ParkedOutboxEntry {
                    seq,
                    reason: row.get(1),
                    parked_at: Timestamp(small(row.get(2))),
                    envelope: decode("parked outbox", seq, row.get::<&[u8], _>(3))?,
                })
            })
            .collect()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn default_bus(&self) -> Option<Arc<dyn crate::bus::Bus>> {
        Some(Arc::new(crate::bus::PostgresBus::new(self)))
    }

    fn claim_lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    async fn claim_timers(
        &self,
        upto: Timestamp,
        after: Option<TimerKey>,
        limit: usize,
        sagas: &[String],
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let after = after.unwrap_or(TimerKey { due: Timestamp(0), instance_id: Uuid::nil(), timer_id: Uuid::nil() });
        let rows = sqlx::query(
            "WITH picked AS (SELECT due, instance_id, timer_id FROM saga_timers \
               WHERE (due <= $1 OR run_local) AND (claimed_until IS NULL OR claimed_until < now()) \
                 AND (saga = ANY($8) OR saga = '') \
                 AND (due, instance_id, timer_id) > ($3, $4, $5) \
               ORDER BY due, instance_id, timer_id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE saga_timers t SET claimed_by = $6, claimed_until = now() + $7::bigint * interval '1 millisecond' \
             FROM picked WHERE (t.due, t.instance_id, t.timer_id) = (picked.due, picked.instance_id, picked.timer_id) \
             RETURNING t.record",
        )
        .bind(big(upto.0))
        .bind(self::limit(limit))
        .bind(big(after.due.0))
        .bind(after.instance_id)
        .bind(after.timer_id)
        .bind(self.owner)
        .bind(self.lease_ms())
        .bind(sagas)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut timers: Vec<TimerRecord> =
            rows.iter().map(|row| decode("timer", "saga_timers", row.get::<&[u8], _>(0))).collect::<Result<_, _>>()?;
        timers.sort_by_key(|t| t.key);
        Ok(timers)
    }

    async fn extend_timer_claims(&self, keys: &[TimerKey]) -> Result<Vec<TimerKey>, StoreError> {
        let mut lost = Vec::new();
        for k in keys {
            let extended = sqlx::query(
                "UPDATE saga_timers SET claimed_until = now() + $5::bigint * interval '1 millisecond' \
                 WHERE due = $1 AND instance_id = $2 AND timer_id = $3 AND claimed_by = $4",
            )
            .bind(big(k.due.0))
            .bind(k.instance_id)
            .bind(k.timer_id)
            .bind(self.owner)
            .bind(self.lease_ms())
            .execute(&self.pool)
            .await
            .map_err(db)?;
            if extended.rows_affected() == 0 {
                lost.push(*k);
            }
        }
        Ok(lost)
    }

    async fn claim_stale_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(
            "WITH picked AS (SELECT seq FROM saga_outbox \
               WHERE created_at < now() - $2::bigint * interval '1 millisecond' \
                 AND (claimed_until IS NULL OR claimed_until < now()) \
               ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE saga_outbox o SET claimed_until = now() + $2::bigint * interval '1 millisecond' \
             FROM picked WHERE o.seq = picked.seq RETURNING o.seq, o.envelope",
        )
        .bind(self::limit(limit))
        .bind(self.lease_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut entries = rows
            .iter()
            .map(|row| {
                let seq = small(row.get(0));
                Ok(OutboxEntry { seq, envelope: decode("outbox", seq, row.get::<&[u8], _>(1))? })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    async fn enqueue(&self, messages: Vec<(String, Envelope)>) -> Result<Enqueued, StoreError> {
        let mut tx = self.begin().await?;
        let mut seqs = Vec::with_capacity(messages.len());
        for (subscription, envelope) in &messages {
            seqs.push(insert_queued(&mut tx, subscription, envelope).await?);
        }
        tx.commit().await.map_err(db)?;
        Ok(Enqueued { seqs, durable: ready() })
    }

    async fn queued(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, envelope FROM saga_queue WHERE subscription = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(subscription)
        .bind(after.map_or(-1, big))
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let seq = small(row.get(0));
                Ok(QueuedMessage {
                    subscription: subscription.to_owned(),
                    seq,
                    envelope: decode("queued message", seq, row.get::<&[u8], _>(1))?,
                })
            })
            .collect()
    }

    async fn requeue(&self, message: &QueuedMessage) -> Result<(), StoreError> {
        sqlx::query("UPDATE saga_queue SET envelope = $3 WHERE subscription = $1 AND seq = $2")
            .bind(&message.subscription)
            .bind(big(message.seq))
            .bind(key::encode("queued message", &message.envelope)?)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn dequeue(&self, subscription: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let seqs: Vec<i64> = seqs.iter().map(|s| big(*s)).collect();
        sqlx::query("DELETE FROM saga_queue WHERE subscription = $1 AND seq = ANY($2)")
            .bind(subscription)
            .bind(seqs)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn dead_letter_queued(&self, message: QueuedMessage, reason: &str, at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM saga_queue WHERE subscription = $1 AND seq = $2")
            .bind(&message.subscription)
            .bind(big(message.seq))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO saga_queue_dead (seq, subscription, reason, at, envelope) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(big(message.seq))
        .bind(&message.subscription)
        .bind(reason)
        .bind(big(at.0))
        .bind(key::encode("dead letter", &message.envelope)?)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn revive_queue_dead_letter(&self, seq: u64) -> Result<Option<QueuedMessage>, StoreError> {
        revive_dead_letter(&self.pool, seq).await
    }

    async fn remove_queue_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        remove_dead_letter(&self.pool, seq).await
    }

    async fn expired_instances(
        &self,
        saga: &str,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<RetentionCandidate>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.id, f.finished_at, i.record FROM saga_finished f LEFT JOIN saga_instances i ON i.id = f.id \
             WHERE f.saga = $1 AND f.finished_at < $2 ORDER BY f.finished_at LIMIT $3",
        )
        .bind(saga)
        .bind(big(before.0))
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut found = Vec::new();
        for row in &rows {
            let (id, finished_at): (Uuid, i64) = (row.get(0), row.get(1));
            let record: Option<InstanceRecord> =
                row.get::<Option<&[u8]>, _>(2).map(|bytes| decode("instance", id, bytes)).transpose()?;
            match record {
                Some(record) if record.status.kind().is_prunable() => {
                    found.push(RetentionCandidate { record, finished_at: Timestamp(small(finished_at)) });
                }
                // Gone, or brought back by an operator: the entry is stale.
                _ => {
                    sqlx::query("DELETE FROM saga_finished WHERE saga = $1 AND finished_at = $2 AND id = $3")
                        .bind(saga)
                        .bind(finished_at)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(db)?;
                }
            }
        }
        Ok(found)
    }

    async fn prune_instance(
        &self,
        candidate: &RetentionCandidate,
        tombstone: &Tombstone,
    ) -> Result<PruneOutcome, StoreError> {
        let record = &candidate.record;
        let mut tx = self.begin().await?;
        // Locks the row at the version read, or finds that it moved on.
        let current = sqlx::query("SELECT 1 FROM saga_instances WHERE id = $1 AND version = $2 FOR UPDATE")
            .bind(record.id)
            .bind(big(record.version))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if current.is_none() {
            return Ok(PruneOutcome::Changed);
        }
        for (table, column) in [("saga_history", "instance_id"), ("saga_inbox", "consumer")] {
            let deleted = sqlx::query(&format!(
                "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {column} = $1 LIMIT $2)"
            ))
            .bind(record.id)
            .bind(limit(PRUNE_BATCH))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if deleted.rows_affected() == PRUNE_BATCH as u64 {
                tx.commit().await.map_err(db)?;
                return Ok(PruneOutcome::Partly);
            }
        }
        sqlx::query("DELETE FROM saga_instances WHERE id = $1").bind(record.id).execute(&mut *tx).await.map_err(db)?;
        sqlx::query("DELETE FROM saga_finished WHERE saga = $1 AND finished_at = $2 AND id = $3")
            .bind(&record.saga)
            .bind(big(candidate.finished_at.0))
            .bind(record.id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO saga_tombstones (id, saga, status, pruned_at, until) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET saga = $2, status = $3, pruned_at = $4, until = $5",
        )
        .bind(record.id)
        .bind(&tombstone.saga)
        .bind(tombstone.status.as_str())
        .bind(big(tombstone.pruned_at.0))
        .bind(big(tombstone.until.0))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(PruneOutcome::Pruned)
    }

    async fn prune_inbox(
        &self,
        consumer: Uuid,
        before: Timestamp,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(usize, Option<Uuid>), StoreError> {
        let row = sqlx::query(
            "WITH page AS (SELECT message_id, at FROM saga_inbox WHERE consumer = $1 AND message_id > $2 \
                           ORDER BY message_id LIMIT $3), \
                  gone AS (DELETE FROM saga_inbox i USING page p \
                           WHERE i.consumer = $1 AND i.message_id = p.message_id AND (p.at IS NULL OR p.at < $4) \
                           RETURNING 1) \
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM page), \
                    (SELECT message_id FROM page ORDER BY message_id DESC LIMIT 1)",
        )
        .bind(consumer)
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(self::limit(limit))
        .bind(big(before.0))
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let (deleted, seen, last): (i64, i64, Option<Uuid>) = (row.get(0), row.get(1), row.get(2));
        let next = last.filter(|_| usize::try_from(seen).is_ok_and(|n| n == limit));
        Ok((usize::try_from(deleted).unwrap_or_default(), next))
    }

    async fn prune_queue_dead_letters(
        &self,
        before: Timestamp,
        keep: usize,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM saga_queue_dead WHERE seq IN ( \
               SELECT seq FROM saga_queue_dead WHERE at < $1 \
               UNION SELECT seq FROM (SELECT seq FROM saga_queue_dead ORDER BY seq DESC OFFSET $2) AS past \
               ORDER BY seq LIMIT $3)",
        )
        .bind(big(before.0))
        .bind(self::limit(keep))
        .bind(self::limit(limit))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(usize::try_from(deleted.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError> {
        let row = sqlx::query("SELECT saga, status, pruned_at, until FROM saga_tombstones WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|row| {
            let status: &str = row.get(1);
            Ok(Tombstone {
                saga: row.get(0),
                status: status.parse().map_err(|e: super::UnknownStatus| StoreError::Corrupt {
                    what: "tombstone",
                    key: id.to_string(),
                    reason: e.to_string(),
                })?,
                pruned_at: Timestamp(small(row.get(2))),
                until: Timestamp(small(row.get(3))),
            })
        })
        .transpose()
    }

    async fn prune_tombstones(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM saga_tombstones WHERE id IN (SELECT id FROM saga_tombstones WHERE until < $1 LIMIT $2)",
        )
        .bind(big(now.0))
        .bind(self::limit(limit))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(usize::try_from(deleted.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn queue_dead_letters(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueueDeadLetter>, StoreError> {
        let rows = self.page("SELECT seq, subscription, reason, at, envelope FROM saga_queue_dead WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit).await?;
        rows.iter()
            .map(|row| {
                let seq = small(row.get(0));
                Ok(QueueDeadLetter {
                    seq,
                    subscription: row.get(1),
                    reason: row.get(2),
                    at: Timestamp(small(row.get(3))),
                    envelope: decode("dead letter", seq, row.get::<&[u8], _>(4))?,
                })
            })
            .collect()
    }
}

/// Moves dead letter `seq` back into its queue (the local bus's and the PostgreSQL bus's are
/// the same table), unclaimed, visible now and with no deliveries counted, in one transaction.
pub(crate) async fn revive_dead_letter(pool: &PgPool, seq: u64) -> Result<Option<QueuedMessage>, StoreError> {
    let mut tx = pool.begin().await.map_err(db)?;
    let Some(row) = sqlx::query("DELETE FROM saga_queue_dead WHERE seq = $1 RETURNING subscription, envelope")
        .bind(big(seq))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
    else {
        return Ok(None);
    };
    let subscription: String = row.get(0);
    let mut envelope: Envelope = decode("dead letter", seq, row.get::<&[u8], _>(1))?;
    envelope.attempt = 1;
    sqlx::query("INSERT INTO saga_queue (subscription, seq, envelope) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(&subscription)
        .bind(big(seq))
        .bind(key::encode("queued message", &envelope)?)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(Some(QueuedMessage { subscription, seq, envelope }))
}

/// Deletes dead letter `seq`; whether there was one.
pub(crate) async fn remove_dead_letter(pool: &PgPool, seq: u64) -> Result<bool, StoreError> {
    let deleted = sqlx::query("DELETE FROM saga_queue_dead WHERE seq = $1").bind(big(seq)).execute(pool).await;
    Ok(deleted.map_err(db)?.rows_affected() > 0)
}

/// `PostgresStore` as a store conformance target, on the server `SAGA_TEST_POSTGRES_URL`
/// names: each store it hands out is in a new database of its own (claims and sweeps see
/// everything in a database), and its other handles connect to that database.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    url: String,
    /// The database of each store handed out, by [`Store::identity`].
    databases: Arc<std::sync::Mutex<Vec<(usize, PgConnectOptions)>>>,
}

impl PostgresTarget {
    /// The target when `SAGA_TEST_POSTGRES_URL` is set; otherwise `None`, after saying on the
    /// terminal that the suite was skipped.
    pub fn from_env() -> Option<Self> {
        match std::env::var("SAGA_TEST_POSTGRES_URL") {
            Ok(url) => Some(PostgresTarget { url, databases: Arc::default() }),
            Err(_) => {
                crate::bus::conformance::say_skipped(
                    "the PostgreSQL store suite",
                    "SAGA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test",
                );
                None
            }
        }
    }
}

/// The claim lease of the conformance suite's stores: long enough that no pause of a loaded
/// machine between two statements outlasts it, short enough to wait out in a test.
const TARGET_LEASE: Duration = Duration::from_secs(3);

impl PostgresTarget {
    /// A new, empty database on the same server (named `saga_test_…`), for a test that needs
    /// the database to itself: connect a store per simulated process to it
    /// ([`PostgresStore::connect_options`]), each with claims of its own.
    pub async fn fresh_database(&self) -> PgConnectOptions {
        let options: PgConnectOptions = self.url.parse().expect("a PostgreSQL URL");
        let mut admin = PgConnection::connect_with(&options).await.expect("connect to PostgreSQL");
        let name = format!("saga_test_{}", Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create a test database");
        options.database(&name)
    }

    async fn connect(&self, database: PgConnectOptions) -> PostgresStore {
        let store = PostgresStore::connect_options(database, 4).await.expect("connect to the test database");
        store.with_claim_lease(TARGET_LEASE)
    }

    /// A store in a new, empty database (see [`Self::fresh_database`]).
    pub async fn fresh_store(&self) -> PostgresStore {
        PostgresStore::connect_options(self.fresh_database().await, 8).await.expect("open the test database")
    }
}

#[async_trait::async_trait]
impl super::StoreTarget for PostgresTarget {
    async fn store(&self) -> Arc<dyn Store> {
        let database = self.fresh_database().await;
        let store: Arc<dyn Store> = Arc::new(self.connect(database.clone()).await);
        self.databases.lock().unwrap_or_else(|e| e.into_inner()).push((store.identity(), database));
        store
    }

    async fn another_handle(&self, store: &Arc<dyn Store>) -> Arc<dyn Store> {
        let database = {
            let databases = self.databases.lock().unwrap_or_else(|e| e.into_inner());
            databases.iter().find(|(id, _)| *id == store.identity()).map(|(_, d)| d.clone())
        };
        Arc::new(self.connect(database.expect("a store this target handed out")).await)
    }
}
