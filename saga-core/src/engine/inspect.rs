//! Waiting and looking: what a user or a test asks a running runtime about its work.
//!
//! Every call here reads through the [`Store`](crate::store::Store) and [`Bus`] traits, so it
//! answers the same way on every store and every bus. None of them holds a lock the engine
//! needs: they are safe to call while the runtime works, and what they return is a snapshot.
//!
//! The waits poll (every [`POLL`]) instead of subscribing to commits: a commit may be made by
//! another unit, a timer, or a restarted process on the same store, and polling the store sees
//! them all without a notification path through every writer.

use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::{SagaInstance, SagaRuntime};
use crate::Error;
use crate::bus::DeadLetter;
use crate::message::Timestamp;
use crate::store::{StatusKind, TimerRecord};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);
/// How many records one read of a paged scan asks for.
const PAGE: usize = 1024;
/// How many unfinished ids a timed-out wait on every instance reports.
const REPORTED: usize = 100;

impl SagaRuntime {
    /// Waits until each instance in `ids` exists and is terminal (completed, compensated or
    /// failed), then returns them in the order of `ids`.
    ///
    /// An instance whose start message is still on its way counts as not terminal, and so
    /// does one waiting on a timer, even one due far in the future: the wait ends when the
    /// saga does, or with [`Error::TimedOut`] after `timeout`, naming the ones still open.
    /// With a manual clock, advance it yourself (the test harness does).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use saga_core::{engine::SagaRuntime, saga::instance_id, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// // An order saga's instance for order 42, which nothing started: the wait runs out.
    /// let id = instance_id("order", "42");
    /// let err = runtime.wait_until_terminal(&[id], Duration::from_millis(50)).await.unwrap_err();
    /// assert!(matches!(err, saga_core::Error::TimedOut { ref unfinished, .. } if unfinished == &[id]));
    /// # });
    /// ```
    pub async fn wait_until_terminal(&self, ids: &[Uuid], timeout: Duration) -> Result<Vec<SagaInstance>, Error> {
        let started = Instant::now();
        let mut done: Vec<Option<SagaInstance>> = ids.iter().map(|_| None).collect();
        loop {
            for (id, slot) in ids.iter().zip(done.iter_mut()).filter(|(_, slot)| slot.is_none()) {
                *slot = self.instance(*id).await?.filter(|i| i.status().is_terminal());
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().collect());
            }
            if started.elapsed() >= timeout {
                let unfinished = ids.iter().zip(&done).filter(|(_, d)| d.is_none()).map(|(id, _)| *id).collect();
                return Err(Error::TimedOut { waited: started.elapsed(), unfinished, in_flight: self.in_flight() });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every instance in the store is terminal and nothing is in flight in this
    /// process (no queued message, unit of work or unpublished outbox entry), so that no new
    /// instance is about to start either.
    ///
    /// Messages still on a broker are not seen: a runtime on RabbitMQ or NATS may return
    /// before an instance whose start message has not arrived yet exists. Wait on the ids
    /// ([`Self::wait_until_terminal`]) when that matters. Fails with [`Error::TimedOut`] after
    /// `timeout`, naming up to 100 instances still open.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// runtime.wait_until_all_terminal(Duration::from_secs(5)).await.unwrap();
    /// # });
    /// ```
    pub async fn wait_until_all_terminal(&self, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            let mut unfinished = Vec::new();
            for status in [StatusKind::Running, StatusKind::Compensating] {
                let room = REPORTED - unfinished.len();
                unfinished.extend(self.core.store.instances_with_status(status, room).await?);
            }
            let in_flight = self.in_flight();
            if unfinished.is_empty() && in_flight == 0 {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(Error::TimedOut { waited: started.elapsed(), unfinished, in_flight });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Timers the store holds, due or not, earliest first, at most `limit`: retries waiting
    /// for their delay, step timeouts, local steps in progress.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// assert!(runtime.pending_timers(100).await.unwrap().is_empty());
    /// # });
    /// ```
    pub async fn pending_timers(&self, limit: usize) -> Result<Vec<TimerRecord>, Error> {
        let mut found: Vec<TimerRecord> = Vec::new();
        while found.len() < limit {
            let after = found.last().map(|t| t.key);
            let asked = PAGE.min(limit - found.len());
            let page = self.core.store.timers_due(Timestamp(u64::MAX), after, asked).await?;
            let last = page.len() < asked;
            found.extend(page);
            if last {
                break;
            }
        }
        Ok(found)
    }

    /// How many committed messages wait in the outbox for the relay to publish them (parked
    /// ones not counted: see [`Self::parked_outbox`]). Reads the whole outbox.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// runtime.settle().await;
    /// assert_eq!(runtime.outbox_len().await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn outbox_len(&self) -> Result<usize, Error> {
        let (mut count, mut after) = (0, None);
        loop {
            let page = self.core.store.outbox(after, PAGE).await?;
            count += page.len();
            match page.last() {
                Some(entry) if page.len() == PAGE => after = Some(entry.seq),
                _ => return Ok(count),
            }
        }
    }

    /// Dead letters of this runtime's subscriptions, oldest first, at most `limit`, with the
    /// reason each was given up on; the same on every bus (see [`Bus::dead_letters`](crate::bus::Bus::dead_letters)).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// for dead in runtime.dead_letters(100).await.unwrap() {
    ///     eprintln!("{} on {}: {}", dead.envelope.name, dead.subscription, dead.reason);
    /// }
    /// # });
    /// ```
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let mut found = Vec::new();
        for subscription in &self.subscriptions {
            found.extend(self.core.bus.dead_letters(subscription, limit).await?);
        }
        found.sort_by_key(|d| d.at);
        found.truncate(limit);
        Ok(found)
    }

    /// The bus subscriptions this runtime consumes, one per saga and handler (`saga.<name>`, the
    /// handler's name) or the one set with
    /// [`SagaRuntimeBuilder::subscription`](super::SagaRuntimeBuilder::subscription): the names
    /// a broker's queues, a bus's dead letters and the local bus's queues in the store go by.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).subscription("Ordering").build().await.unwrap();
    /// assert_eq!(runtime.subscriptions().collect::<Vec<_>>(), ["Ordering"]);
    /// # });
    /// ```
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().map(|s| &**s)
    }

    /// Messages queued in this process (when the bus can tell) and units of work running.
    fn in_flight(&self) -> usize {
        self.core.activity.pending() + self.core.bus.activity().map_or(0, |a| a.pending())
    }
}
