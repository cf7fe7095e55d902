//! Outbox entries the relay parked (the bus refused them for good, or nothing took their name
//! for too long): listed, replayed into the outbox, or discarded.
//!
//! A replay is one commit that puts the entry's envelope back into the outbox (or, on the
//! local bus, into its subscribers' queues) and removes the parked entry, so the message is
//! never both parked and pending, nor neither. It keeps its message id: should it be replayed
//! twice, or have reached a consumer before it was parked, the consumers' inboxes drop the copy.

use serde::Serialize;
use uuid::Uuid;

use super::{Admin, MessageSummary};
use crate::Error;
use crate::store::{Commit, ParkedOutboxEntry};

/// A parked outbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// Its position among the parked entries: what [`Admin::replay_parked`] and
    /// [`Admin::discard_parked`] take.
    pub seq: u64,
    /// The saga instance it belongs to, when it is a saga's command.
    pub instance: Option<Uuid>,
    /// The message, why and when it was parked.
    #[serde(flatten)]
    pub message: MessageSummary,
}

impl ParkedMessage {
    fn of(entry: &ParkedOutboxEntry) -> Self {
        ParkedMessage {
            seq: entry.seq,
            instance: entry.envelope.correlation_id,
            message: MessageSummary {
                reason: Some(entry.reason.clone()),
                at: Some(entry.parked_at),
                ..MessageSummary::of(&entry.envelope)
            },
        }
    }
}

impl Admin {
    /// Parked outbox entries after position `after`, oldest first, at most `limit`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// for parked in runtime.admin().parked(None, 100).await.unwrap() {
    ///     println!("#{} {}: {:?}", parked.seq, parked.message.name, parked.message.reason);
    /// }
    /// # });
    /// ```
    pub async fn parked(&self, after: Option<u64>, limit: usize) -> Result<Vec<ParkedMessage>, Error> {
        let entries = self.core.store.parked_outbox(after, limit.min(super::MAX_PAGE)).await?;
        Ok(entries.iter().map(ParkedMessage::of).collect())
    }

    async fn parked_entry(&self, seq: u64) -> Result<ParkedOutboxEntry, Error> {
        let found = self.core.store.parked_outbox(seq.checked_sub(1), 1).await?;
        found.into_iter().find(|e| e.seq == seq).ok_or_else(|| Error::NotFound(format!("parked outbox entry #{seq}")))
    }

    /// Puts parked entry `seq` back into the outbox, for the relay to publish (fix what made
    /// the bus refuse it first: bind its name, say), and removes it from the parked ones.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let err = runtime.admin().replay_parked(7).await.unwrap_err();
    /// assert!(matches!(err, saga_core::Error::NotFound(_)), "{err}");
    /// # });
    /// ```
    pub async fn replay_parked(&self, seq: u64) -> Result<(), Error> {
        let entry = self.parked_entry(seq).await?;
        let commit = Commit { outbox: vec![entry.envelope], parked_remove: vec![seq], ..Commit::default() };
        let mut committed = self.core.commit(commit).await?;
        std::mem::replace(&mut committed.durable, Box::pin(async { Ok(()) })).await?;
        self.core.activity.add(committed.outbox.len());
        self.core.relay.send(committed.outbox);
        if !committed.queued.is_empty() {
            // Already in the store's queues: the bus's next subscribe delivers them if this fails.
            let _ = self.core.bus.deliver_stored(committed.queued);
        }
        Ok(())
    }

    /// Deletes parked entry `seq` for good.
    pub async fn discard_parked(&self, seq: u64) -> Result<(), Error> {
        self.parked_entry(seq).await?;
        let committed = self.core.commit(Commit { parked_remove: vec![seq], ..Commit::default() }).await?;
        committed.durable.await?;
        Ok(())
    }
}
