//! The PostgreSQL transport: queues in the database a [`PostgresStore`] uses, so that N
//! processes need PostgreSQL and nothing else (as NServiceBus's PostgreSQL transport and
//! MassTransit's SQL transport do).
//!
//! Everything a broker would hold is a row, so every process sees the same topology:
//!
//! - **Bindings** (`saga_bus_bindings`): a subscription's names. A publish inserts one queue
//!   row per bound subscription in one statement, and refuses a name nobody takes as
//!   [`BusError::Unroutable`]. It returns once the row is committed: durable as the store's
//!   commits are.
//! - **Claims**: a consumer claims ready rows with `FOR UPDATE SKIP LOCKED`, so consumers in
//!   any process compete without blocking each other, each row going to one of them. A claim
//!   lasts the store's lease by the database's clock and is extended, for every row the
//!   process holds, every third of it, so a row stays with a live process however long its
//!   handler takes, and returns to the queue a lease after its process died (or after a
//!   settle that failed, the database being away: the copy delivered again then finds its
//!   consumer's inbox entry). Each claim counts
//!   as a delivery (the envelope's `attempt`), so a delivery limit survives crashes.
//! - **Settling**: ack deletes the row; nack clears the claim and hides the row until its
//!   delay has passed; dead-lettering moves it, with the reason, to the dead letters in one
//!   statement; a delivery dropped unsettled clears its claim.
//! - **Wake-ups**: a publish sends `NOTIFY saga_queue` with the subscription, and each bus
//!   `LISTEN`s, so a consumer waiting in another process claims within a round trip. A
//!   notification is only a hint: they are lost while a listener reconnects, and a nack's delay
//!   or a dead process's claim expiring sends none, so every consumer also polls
//!   ([`PostgresBus::with_poll_interval`]). Polling is the source of truth.
//! - **Exclusive consumers**: consumers are rows too, kept alive by the same heartbeat, so an
//!   exclusive subscription is refused to a second consumer in any process, and freed when its
//!   holder leaves or a lease after its process died.
//!
//! A message is published through the runtime's outbox (the relay publishes it once the commit
//! is durable, and a sweeper on every node publishes what a dead node left), so a message can be
//! queued twice; the consumers' inboxes make the copy a no-op.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

use super::{Acker, Bus, BusError, Consumer, DeadLetter, Delivery, DeliveryStream};
use crate::message::{Envelope, Timestamp};
use crate::saga::RetryPolicy;
use crate::store::{self, PostgresStore, StoreError, layout};

/// The channel publishes notify on; the payload is the subscription.
const CHANNEL: &str = "saga_queue";

/// A [`Bus`] whose queues are tables in a [`PostgresStore`]'s database (feature `postgres`).
///
/// The runtime uses it when given a `PostgresStore` and no bus, so replicas of a service on one
/// database compete for their subscriptions' messages without a broker. Build one yourself to
/// set its polling, prefetch or delivery limit.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use saga_core::bus::{Bus, PostgresBus};
/// use saga_core::message::Envelope;
/// use saga_core::store::PostgresStore;
///
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let bus = PostgresBus::new(&store).with_max_deliveries(10);
/// let mut consumer = bus.subscribe("billing", &["ordering.order-paid"]).await?;
/// bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())).await?;
/// consumer.next().await.unwrap().ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBus {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Whose claims this bus takes; each bus has its own.
    owner: Uuid,
    lease: Duration,
    poll: Duration,
    prefetch: usize,
    max_deliveries: Option<u32>,
    /// The wake-up of each live consumer, by subscription.
    wakers: Mutex<HashMap<String, Vec<Weak<Notify>>>>,
    /// This bus's live consumers, whose rows the heartbeat keeps alive.
    consumers: Mutex<HashSet<Uuid>>,
    /// Consumers that went away and whose rows are still to be deleted.
    departed: Mutex<Vec<Uuid>>,
    /// The queue rows this bus's deliveries hold, whose claims the heartbeat extends (a count,
    /// since a row released and claimed again may briefly have two deliveries here). A
    /// delivery whose settling failed (the database was away) is no longer held: its claim
    /// runs out and the row is delivered again, which the consumer's inbox makes harmless.
    held: Mutex<HashMap<(String, u64), usize>>,
    /// The heartbeat and the listener, started with the first consumer.
    background: OnceLock<[tokio::task::AbortHandle; 2]>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.background.get().into_iter().flatten() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBus").field("owner", &self.inner.owner).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn transport(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Transport(format!("PostgreSQL bus: cannot {what}: {e}"))
}

fn seq_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PostgresBus {
    /// A bus on `store`'s database, sharing its connection pool, with claims lasting the
    /// store's lease ([`PostgresStore::with_claim_lease`]), polling every second, 32 messages
    /// prefetched per consumer and no delivery limit (the engine settles what it cannot
    /// handle itself).
    pub fn new(store: &PostgresStore) -> Self {
        PostgresBus {
            inner: Arc::new(Inner {
                pool: store.pool().clone(),
                owner: Uuid::now_v7(),
                lease: store.lease(),
                poll: Duration::from_secs(1),
                prefetch: 32,
                max_deliveries: None,
                wakers: Mutex::default(),
                consumers: Mutex::default(),
                departed: Mutex::default(),
                held: Mutex::default(),
                background: OnceLock::new(),
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => change(inner),
            None => tracing::warn!("PostgresBus settings must be made before the bus is cloned; ignored"),
        }
        self
    }

    /// How often an idle consumer looks for rows no notification announced (a nack's delay
    /// passed, a dead process's claim expired, a notification lost in a reconnect): the
    /// longest such a row waits. Default 1 s.
    pub fn with_poll_interval(self, every: Duration) -> Self {
        self.configure(|inner| inner.poll = every.max(Duration::from_millis(10)))
    }

    /// How many messages a consumer holds claimed at most, delivered or waiting to be
    /// (RabbitMQ's prefetch). Default 32.
    pub fn with_prefetch(self, messages: usize) -> Self {
        self.configure(|inner| inner.prefetch = messages.max(1))
    }

    /// Dead-letters a message once it was delivered `max` times without being settled
    /// (crashes count: each claim is a delivery).
    pub fn with_max_deliveries(self, max: u32) -> Self {
        self.configure(|inner| inner.max_deliveries = Some(max.max(1)))
    }

    async fn subscribe_as(&self, subscription: &str, names: &[&str], exclusive: bool) -> Result<Consumer, BusError> {
        let inner = &self.inner;
        let consumer = Uuid::now_v7();
        let departed: Vec<Uuid> = lock(&inner.departed).clone();
        let mut tx = inner.pool.begin().await.map_err(|e| transport("subscribe", e))?;
        // One subscriber of a subscription at a time decides who else may join.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7227))")
            .bind(subscription)
            .execute(&mut *tx)
            .await
            .map_err(|e| transport("subscribe", e))?;
        sqlx::query(
            "DELETE FROM saga_bus_consumers WHERE subscription = $1 AND (alive_until < now() OR consumer = ANY($2))",
        )
        .bind(subscription)
        .bind(&departed)
        .execute(&mut *tx)
        .await
        .map_err(|e| transport("subscribe", e))?;
        let present: Vec<bool> = sqlx::query_scalar("SELECT exclusive FROM saga_bus_consumers WHERE subscription = $1")
            .bind(subscription)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| transport("subscribe", e))?;
        if present.iter().any(|&held| held) || (exclusive && !present.is_empty()) {
            let detail = if present.iter().any(|&held| held) {
                "an exclusive consumer holds it (in this process or another on the same database)".to_owned()
            } else {
                format!("{} consumer(s) share it", present.len())
            };
            return Err(BusError::SubscriptionInUse { subscription: subscription.to_owned(), detail });
        }
        sqlx::query(
            "INSERT INTO saga_bus_consumers (subscription, consumer, exclusive, alive_until) \
             VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond')",
        )
        .bind(subscription)
        .bind(consumer)
        .bind(exclusive)
        .bind(millis(inner.lease))
        .execute(&mut *tx)
        .await
        .map_err(|e| transport("subscribe", e))?;
        sqlx::query(
            "INSERT INTO saga_bus_bindings (name, subscription) SELECT unnest($2::text[]), $1 ON CONFLICT DO NOTHING",
        )
        .bind(subscription)
        .bind(names)
        .execute(&mut *tx)
        .await
        .map_err(|e| transport("subscribe", e))?;
        tx.commit().await.map_err(|e| transport("subscribe", e))?;
        lock(&inner.departed).retain(|d| !departed.contains(d));
        lock(&inner.consumers).insert(consumer);
        self.start_background();

        let wake = Arc::new(Notify::new());
        lock(&inner.wakers).entry(subscription.to_owned()).or_default().push(Arc::downgrade(&wake));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = ClaimTask {
            bus: inner.clone(),
            subscription: subscription.to_owned(),
            wake: wake.clone(),
            permits: Arc::new(Semaphore::new(inner.prefetch)),
            tx,
        };
        tokio::spawn(task.run());
        let stream = PgStream { rx, bus: inner.clone(), consumer, _wake: wake };
        Ok(Consumer::new(subscription, Box::new(stream)))
    }

    fn start_background(&self) {
        self.inner.background.get_or_init(|| {
            let weak = Arc::downgrade(&self.inner);
            let heartbeat = tokio::spawn(heartbeat(weak.clone())).abort_handle();
            let listener = tokio::spawn(listen(weak)).abort_handle();
            [heartbeat, listener]
        });
    }
}

impl Inner {
    fn wake(&self, subscription: &str) {
        let mut wakers = lock(&self.wakers);
        if let Some(list) = wakers.get_mut(subscription) {
            list.retain(|w| w.upgrade().inspect(|n| n.notify_one()).is_some());
        }
    }

    fn wake_all(&self) {
        let mut wakers = lock(&self.wakers);
        for list in wakers.values_mut() {
            list.retain(|w| w.upgrade().inspect(|n| n.notify_one()).is_some());
        }
    }

    /// Moves a queue row to the dead letters with `reason`, in one statement.
    async fn dead_letter(&self, subscription: &str, seq: u64, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH moved AS (DELETE FROM saga_queue WHERE subscription = $1 AND seq = $2 RETURNING seq, envelope) \
             INSERT INTO saga_queue_dead (seq, subscription, reason, at, envelope) \
             SELECT seq, $1, $3, $4, envelope FROM moved ON CONFLICT DO NOTHING",
        )
        .bind(subscription)
        .bind(seq_of(seq))
        .bind(reason)
        .bind(i64::try_from(Timestamp::now().0).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// The positions of `subscription`'s dead letters of `message_id` (the id is inside the
    /// stored envelope, so they are read page by page).
    async fn dead_seqs(&self, subscription: &str, message_id: Uuid) -> Result<Vec<u64>, BusError> {
        const PAGE: i64 = 500;
        let failed = |e: &dyn std::fmt::Display| transport("find a dead letter", e);
        let (mut found, mut after) = (Vec::new(), -1_i64);
        loop {
            let rows = sqlx::query(
                "SELECT seq, envelope FROM saga_queue_dead WHERE subscription = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(subscription)
            .bind(after)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| failed(&e))?;
            for row in &rows {
                let seq: i64 = row.get(0);
                after = seq;
                let envelope: Envelope = layout::decode("dead letter", &seq.to_be_bytes(), row.get::<&[u8], _>(1))
                    .map_err(|e| failed(&e))?;
                if envelope.message_id == message_id {
                    found.push(u64::try_from(seq).unwrap_or_default());
                }
            }
            if rows.len() < PAGE as usize {
                return Ok(found);
            }
        }
    }

    /// Returns a row this bus holds to the queue, visible again after `delay`.
    async fn release(&self, subscription: &str, seq: u64, delay: Duration) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE saga_queue SET claimed_by = NULL, claimed_until = NULL, \
             visible_at = now() + $4::bigint * interval '1 millisecond' \
             WHERE subscription = $1 AND seq = $2 AND claimed_by = $3",
        )
        .bind(subscription)
        .bind(seq_of(seq))
        .bind(self.owner)
        .bind(millis(delay))
        .execute(&self.pool)
        .await
        .map(drop)
    }
}

/// Keeps this bus's claims and consumer rows alive, every third of the lease, and deletes the
/// rows of consumers that went away.
async fn heartbeat(bus: Weak<Inner>) {
    let Some(every) = bus.upgrade().map(|b| b.lease / 3) else { return };
    loop {
        tokio::time::sleep(every).await;
        let Some(bus) = bus.upgrade() else { return };
        let live: Vec<Uuid> = lock(&bus.consumers).iter().copied().collect();
        let (subscriptions, seqs): (Vec<String>, Vec<i64>) =
            lock(&bus.held).keys().map(|(subscription, seq)| (subscription.clone(), seq_of(*seq))).unzip();
        let departed: Vec<Uuid> = lock(&bus.departed).clone();
        let lease = millis(bus.lease);
        let beat = async {
            sqlx::query(
                "UPDATE saga_queue q SET claimed_until = now() + $2::bigint * interval '1 millisecond' \
                 FROM unnest($3::text[], $4::bigint[]) AS h(subscription, seq) \
                 WHERE q.subscription = h.subscription AND q.seq = h.seq AND q.claimed_by = $1",
            )
            .bind(bus.owner)
            .bind(lease)
            .bind(&subscriptions)
            .bind(&seqs)
            .execute(&bus.pool)
            .await?;
            sqlx::query(
                "UPDATE saga_bus_consumers SET alive_until = now() + $2::bigint * interval '1 millisecond' \
                 WHERE consumer = ANY($1)",
            )
            .bind(&live)
            .bind(lease)
            .execute(&bus.pool)
            .await?;
            sqlx::query("DELETE FROM saga_bus_consumers WHERE consumer = ANY($1)")
                .bind(&departed)
                .execute(&bus.pool)
                .await
        };
        match beat.await {
            Ok(_) => lock(&bus.departed).retain(|d| !departed.contains(d)),
            // Missing beats for a whole lease lets other processes take the claims over: the
            // redeliveries are deduplicated by the consumers' inboxes.
            Err(e) => tracing::warn!(error = %e, "PostgreSQL bus: cannot extend this process's claims; retrying"),
        }
    }
}

/// Wakes the consumers a notification names; after a lost connection, all of them (what was
/// notified meanwhile is lost).
async fn listen(bus: Weak<Inner>) {
    let retry = RetryPolicy::forever(Duration::from_millis(100)).max_delay(Duration::from_secs(10));
    let mut failures = 0u32;
    loop {
        let Some(pool) = bus.upgrade().map(|b| b.pool.clone()) else { return };
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(listener) => listener,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "PostgreSQL bus: cannot listen for notifications; consumers poll meanwhile");
                tokio::time::sleep(retry.delay_before_retry(failures, Uuid::nil()).unwrap_or_default()).await;
                continue;
            }
        };
        failures = 0;
        if let Some(bus) = bus.upgrade() {
            bus.wake_all();
        }
        while let Ok(Some(note)) = listener.try_recv().await {
            let Some(bus) = bus.upgrade() else { return };
            bus.wake(note.payload());
        }
        tracing::debug!("PostgreSQL bus: the notification connection closed; reconnecting");
    }
}

/// One consumer's claimer: claims ready rows while the consumer has room, and waits for a
/// wake-up or the poll interval when there are none.
struct ClaimTask {
    bus: Arc<Inner>,
    subscription: String,
    wake: Arc<Notify>,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Delivery>,
}

impl ClaimTask {
    async fn run(self) {
        let retry = RetryPolicy::forever(Duration::from_millis(50)).max_delay(self.bus.poll);
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                permit = self.permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
                () = self.tx.closed() => return,
            };
            let mut permits = vec![first];
            while let Ok(p) = self.permits.clone().try_acquire_owned() {
                permits.push(p);
            }
            let idle = match self.claim(&mut permits).await {
                Ok(delivered) => {
                    failures = 0;
                    if delivered == usize::MAX {
                        return;
                    }
                    (delivered == 0).then_some(self.bus.poll)
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(subscription = %self.subscription, error = %e, "PostgreSQL bus: cannot claim messages; retrying");
                    Some(retry.delay_before_retry(failures, Uuid::nil()).unwrap_or_default())
                }
            };
            drop(permits);
            if let Some(wait) = idle {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                    () = self.tx.closed() => return,
                }
            }
        }
    }

    /// Claims up to one row per permit and hands them to the consumer; how many it delivered,
    /// or `usize::MAX` once the consumer is gone.
    async fn claim(&self, permits: &mut Vec<OwnedSemaphorePermit>) -> Result<usize, sqlx::Error> {
        let rows = sqlx::query(
            "WITH next AS ( \
               SELECT seq FROM saga_queue \
               WHERE subscription = $1 AND visible_at <= now() AND (claimed_until IS NULL OR claimed_until < now()) \
               ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE saga_queue q SET claimed_by = $3, deliveries = q.deliveries + 1, \
               claimed_until = now() + $4::bigint * interval '1 millisecond' \
             FROM next WHERE q.subscription = $1 AND q.seq = next.seq \
             RETURNING q.seq, q.envelope, q.deliveries",
        )
        .bind(&self.subscription)
        .bind(i64::try_from(permits.len()).unwrap_or(1))
        .bind(self.bus.owner)
        .bind(millis(self.bus.lease))
        .fetch_all(&self.bus.pool)
        .await?;
        let mut claimed: Vec<(u64, Result<Envelope, StoreError>, u32)> = rows
            .iter()
            .map(|row| {
                let seq = u64::try_from(row.get::<i64, _>(0)).unwrap_or_default();
                let envelope = layout::decode("queued message", &seq.to_be_bytes(), row.get::<&[u8], _>(1));
                (seq, envelope, u32::try_from(row.get::<i32, _>(2)).unwrap_or(1))
            })
            .collect();
        claimed.sort_by_key(|(seq, ..)| *seq);
        let mut delivered = 0;
        for (seq, envelope, deliveries) in claimed {
            use crate::engine::metrics::{DeadLetterClass, dead_lettered};
            // What a warning about this message names, where it decodes.
            let decoded = envelope.as_ref().ok();
            let (name, id, correlation) = (
                decoded.map(|e| e.name.clone()),
                decoded.map(|e| e.message_id),
                decoded.and_then(|e| e.correlation_id),
            );
            let refusal = match envelope {
                Err(e) => Err((DeadLetterClass::Rejected, format!("the queued message does not decode: {e}"))),
                Ok(mut envelope) => {
                    envelope.attempt = envelope.attempt.max(1).saturating_add(deliveries.saturating_sub(1));
                    match self.bus.max_deliveries {
                        Some(max) if envelope.attempt > max => {
                            Err((DeadLetterClass::GaveUp, format!("delivered {max} times without being acked")))
                        }
                        _ => Ok(envelope),
                    }
                }
            };
            let envelope = match refusal {
                Ok(envelope) => envelope,
                Err((class, reason)) => {
                    let moved = self.bus.dead_letter(&self.subscription, seq, &reason).await;
                    if moved.is_ok() {
                        dead_lettered(&self.subscription, class);
                    }
                    tracing::warn!(
                        subscription = %self.subscription,
                        message_name = name.as_deref(),
                        message_id = id.map(tracing::field::display),
                        correlation_id = correlation.map(tracing::field::display),
                        seq,
                        %reason,
                        error = moved.as_ref().err().map(tracing::field::display),
                        "PostgreSQL bus: {}",
                        if moved.is_ok() {
                            "message dead-lettered"
                        } else {
                            "cannot dead-letter a message; it returns after the lease"
                        }
                    );
                    continue;
                }
            };
            let Some(permit) = permits.pop() else { break };
            *lock(&self.bus.held).entry((self.subscription.clone(), seq)).or_default() += 1;
            let acker =
                PgAcker { bus: self.bus.clone(), subscription: self.subscription.clone(), seq, _permit: permit };
            if self.tx.send(Delivery::new(envelope, Box::new(acker))).is_err() {
                // The consumer is gone: the undelivered delivery was dropped, which released it.
                return Ok(usize::MAX);
            }
            delivered += 1;
        }
        Ok(delivered)
    }
}

struct PgStream {
    rx: mpsc::UnboundedReceiver<Delivery>,
    bus: Arc<Inner>,
    consumer: Uuid,
    /// Keeps this consumer's wake-up registered while it lives.
    _wake: Arc<Notify>,
}

#[async_trait::async_trait]
impl DeliveryStream for PgStream {
    async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

impl Drop for PgStream {
    fn drop(&mut self) {
        lock(&self.bus.consumers).remove(&self.consumer);
        lock(&self.bus.departed).push(self.consumer);
    }
}

struct PgAcker {
    bus: Arc<Inner>,
    subscription: String,
    seq: u64,
    /// The consumer's prefetch slot, freed when the delivery is settled.
    _permit: OwnedSemaphorePermit,
}

impl Drop for PgAcker {
    fn drop(&mut self) {
        let mut held = lock(&self.bus.held);
        let key = (std::mem::take(&mut self.subscription), self.seq);
        if let Some(count) = held.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&key);
            }
        }
    }
}

#[async_trait::async_trait]
impl Acker for PgAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        sqlx::query("DELETE FROM saga_queue WHERE subscription = $1 AND seq = $2")
            .bind(&self.subscription)
            .bind(seq_of(self.seq))
            .execute(&self.bus.pool)
            .await
            .map_err(|e| transport("ack", e))?;
        Ok(())
    }

    async fn nack(self: Box<Self>, _envelope: Envelope, delay: Duration) -> Result<(), BusError> {
        self.bus.release(&self.subscription, self.seq, delay).await.map_err(|e| transport("nack", e))?;
        let bus = self.bus.clone();
        let subscription = self.subscription.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            bus.wake(&subscription);
        });
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, _envelope: Envelope, reason: String) -> Result<(), BusError> {
        self.bus.dead_letter(&self.subscription, self.seq, &reason).await.map_err(|e| transport("dead-letter", e))
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        // Without a runtime (the process is ending) the claim expires after the lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            match self.bus.release(&self.subscription, self.seq, Duration::ZERO).await {
                Ok(()) => self.bus.wake(&self.subscription),
                Err(e) => tracing::debug!(error = %e, "PostgreSQL bus: cannot release a dropped delivery; it returns after the lease"),
            }
        });
    }

    async fn keep_alive(&self) -> Result<(), BusError> {
        sqlx::query(
            "UPDATE saga_queue SET claimed_until = now() + $4::bigint * interval '1 millisecond' \
             WHERE subscription = $1 AND seq = $2 AND claimed_by = $3",
        )
        .bind(&self.subscription)
        .bind(seq_of(self.seq))
        .bind(self.bus.owner)
        .bind(millis(self.bus.lease))
        .execute(&self.bus.pool)
        .await
        .map_err(|e| transport("extend a claim", e))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Bus for PostgresBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let bytes = layout::encode("queued message", &envelope)
            .map_err(|e| BusError::Refused { name: envelope.name.clone(), reason: e.to_string() })?;
        // The statement runs in a task of its own, so that it finishes and gives its
        // connection back even while the caller does not poll it: the relay keeps many
        // publishes in flight and polls them only between its own store calls, which need a
        // connection from the same pool.
        let pool = self.inner.pool.clone();
        let name = envelope.name.clone();
        let targets: Vec<String> = tokio::spawn(async move {
            sqlx::query_scalar(
                "WITH queued AS ( \
                   INSERT INTO saga_queue (subscription, seq, envelope) \
                   SELECT subscription, nextval('saga_queue_seq'), $2 FROM saga_bus_bindings WHERE name = $1 \
                   RETURNING subscription) \
                 SELECT subscription FROM queued, LATERAL pg_notify($3, subscription)",
            )
            .bind(name)
            .bind(bytes)
            .bind(CHANNEL)
            .fetch_all(&pool)
            .await
        })
        .await
        .map_err(|e| transport("publish", e))?
        .map_err(|e| transport("publish", e))?;
        if targets.is_empty() {
            return Err(BusError::Unroutable {
                name: envelope.name,
                detail: "no subscription in this database is bound to the name: subscribe first (a runtime \
                         subscribes its sagas and handlers in build())"
                    .into(),
            });
        }
        for subscription in &targets {
            self.inner.wake(subscription);
        }
        Ok(())
    }

    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.subscribe_as(subscription, names, false).await
    }

    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.subscribe_as(subscription, names, true).await
    }

    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        let mut tx = self.inner.pool.begin().await.map_err(|e| transport("unsubscribe", e))?;
        for table in ["saga_bus_bindings", "saga_queue", "saga_bus_consumers"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE subscription = $1"))
                .bind(subscription)
                .execute(&mut *tx)
                .await
                .map_err(|e| transport("unsubscribe", e))?;
        }
        tx.commit().await.map_err(|e| transport("unsubscribe", e))
    }

    async fn replay_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        let bound: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saga_bus_bindings WHERE subscription = $1)")
            .bind(subscription)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| transport("replay a dead letter", e))?;
        if !bound {
            return Err(BusError::UnknownSubscription(subscription.to_owned()));
        }
        let mut replayed = 0;
        for seq in self.inner.dead_seqs(subscription, message_id).await? {
            if store::revive_dead_letter(&self.inner.pool, seq)
                .await
                .map_err(|e| transport("replay a dead letter", e))?
                .is_some()
            {
                replayed += 1;
            }
        }
        if replayed > 0 {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(subscription)
                .execute(&self.inner.pool)
                .await
                .map_err(|e| transport("replay a dead letter", e))?;
        }
        Ok(replayed)
    }

    async fn discard_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        let mut discarded = 0;
        for seq in self.inner.dead_seqs(subscription, message_id).await? {
            if store::remove_dead_letter(&self.inner.pool, seq)
                .await
                .map_err(|e| transport("discard a dead letter", e))?
            {
                discarded += 1;
            }
        }
        Ok(discarded)
    }

    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let rows = sqlx::query(
            "SELECT seq, reason, at, envelope FROM saga_queue_dead WHERE subscription = $1 ORDER BY seq LIMIT $2",
        )
        .bind(subscription)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| transport("read dead letters", e))?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let envelope = layout::decode("dead letter", &seq.to_be_bytes(), row.get::<&[u8], _>(3))
                    .map_err(|e| transport("read dead letters", e))?;
                Ok(DeadLetter {
                    subscription: subscription.to_owned(),
                    envelope,
                    reason: row.get(1),
                    at: Timestamp(u64::try_from(row.get::<i64, _>(2)).unwrap_or_default()),
                })
            })
            .collect()
    }
}

/// The PostgreSQL bus as a transport conformance target, on a [`PostgresStore`]'s database.
#[derive(Debug, Clone)]
pub struct PostgresBusTarget(PostgresBus);

impl PostgresBusTarget {
    /// A target whose bus keeps its queues in `store`'s database, polling often (the checks
    /// wait for nacked messages) and dead-lettering after 1,000 deliveries.
    pub fn new(store: &PostgresStore) -> Self {
        PostgresBusTarget(
            PostgresBus::new(store).with_poll_interval(Duration::from_millis(100)).with_max_deliveries(1_000),
        )
    }
}

#[async_trait::async_trait]
impl super::conformance::ConformanceTarget for PostgresBusTarget {
    async fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.0.clone())
    }
}
