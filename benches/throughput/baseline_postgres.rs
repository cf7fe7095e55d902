//! The PostgreSQL rows' baseline: the engine run's own commits, recorded, replayed with raw
//! sqlx on a fresh database of the same schema, without the engine. Each commit is one
//! transaction writing the same rows with the same statements as `PostgresStore::commit`
//! (inbox, instance, history, participant records, outbox, timers), except that the version
//! checks are upserts (a replay cannot race the way the run did); each outbox message then
//! makes the PostgreSQL bus's round of its own: the publish, the claim, the ack and the outbox
//! removal (on the PostgreSQL bus; a run on RabbitMQ replays the commits alone). Eight
//! connections replay concurrently, as the store's pool has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sagaflow::store::{Commit, CommitHook, Committed, PgConnectOptions, Store, StoreError};
use sqlx::postgres::PgPoolOptions;

/// Keeps a copy of every commit that went through.
#[derive(Default, Clone)]
pub struct RecordCommits(pub Arc<Mutex<Vec<Commit>>>);

#[async_trait::async_trait]
impl CommitHook for RecordCommits {
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
        let copy = commit.clone();
        let committed = store.commit(commit).await?;
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(copy);
        Ok(committed)
    }
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("a record encodes")
}

/// Replays `commits` on the database `options` names (its schema already migrated), with the
/// PostgreSQL bus's round for each outbox message when `bus_rounds` (not for a run on a
/// broker), and returns how long it took.
pub async fn replay(options: PgConnectOptions, commits: &[Commit], bus_rounds: bool) -> Duration {
    const CONNECTIONS: usize = 8;
    let pool = PgPoolOptions::new().max_connections(CONNECTIONS as u32).connect_with(options).await.expect("connect");
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let workers = (0..CONNECTIONS).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(commit) = commits.get(i) else { return };
            apply(&pool, commit, bus_rounds).await.expect("a replayed commit applies");
        }
    });
    futures::future::join_all(workers).await;
    started.elapsed()
}

async fn apply(pool: &sqlx::PgPool, c: &Commit, bus_rounds: bool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some((consumer, message)) = c.inbox {
        sqlx::query("INSERT INTO saga_inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(consumer)
            .bind(message)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(w) = &c.instance {
        let r = &w.record;
        sqlx::query(
            "INSERT INTO saga_instances (id, version, status, record, saga, updated_at) VALUES ($1, $2, 0, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET version = $2, record = $3, updated_at = $5",
        )
        .bind(r.id)
        .bind(big(r.version))
        .bind(bytes(r))
        .bind(&r.saga)
        .bind(big(r.updated_at.0))
        .execute(&mut *tx)
        .await?;
        if let Some(h) = &c.history {
            sqlx::query(
                "INSERT INTO saga_history (instance_id, version, entry) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(r.id)
            .bind(big(h.version))
            .bind(bytes(h))
            .execute(&mut *tx)
            .await?;
        }
    }
    for e in &c.entities {
        sqlx::query(
            "INSERT INTO saga_entities (scope, key, version, value) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope, key) DO UPDATE SET version = $3, value = $4",
        )
        .bind(&e.scope)
        .bind(&e.key)
        .bind(big(e.expected_version + 1))
        .bind(&e.value)
        .execute(&mut *tx)
        .await?;
    }
    let mut outbox = Vec::new();
    for envelope in &c.outbox {
        let seq: i64 = sqlx::query_scalar("INSERT INTO saga_outbox (envelope) VALUES ($1) RETURNING seq")
            .bind(bytes(envelope))
            .fetch_one(&mut *tx)
            .await?;
        outbox.push((seq, bytes(envelope)));
    }
    for t in &c.timers_add {
        sqlx::query(
            "INSERT INTO saga_timers (due, instance_id, timer_id, record, saga) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(big(t.key.due.0))
        .bind(t.key.instance_id)
        .bind(t.key.timer_id)
        .bind(bytes(t))
        .bind(&t.saga)
        .execute(&mut *tx)
        .await?;
    }
    for k in &c.timers_remove {
        sqlx::query("DELETE FROM saga_timers WHERE due = $1 AND instance_id = $2 AND timer_id = $3")
            .bind(big(k.due.0))
            .bind(k.instance_id)
            .bind(k.timer_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if !bus_rounds {
        return Ok(());
    }
    // The bus's round for each message: publish, claim, ack, and the relay's outbox removal.
    for (seq, envelope) in outbox {
        let queued: i64 = sqlx::query_scalar(
            "INSERT INTO saga_queue (subscription, seq, envelope) VALUES ('baseline', nextval('saga_queue_seq'), $1) \
             RETURNING seq",
        )
        .bind(envelope)
        .fetch_one(pool)
        .await?;
        sqlx::query(
            "UPDATE saga_queue SET claimed_by = gen_random_uuid(), claimed_until = now() + interval '15 seconds', \
             deliveries = deliveries + 1 WHERE subscription = 'baseline' AND seq = $1",
        )
        .bind(queued)
        .execute(pool)
        .await?;
        sqlx::query("DELETE FROM saga_queue WHERE subscription = 'baseline' AND seq = $1")
            .bind(queued)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM saga_outbox WHERE seq = ANY($1)").bind(vec![seq]).execute(pool).await?;
    }
    Ok(())
}
