//! Dead letters of a runtime's subscriptions, in one shape whatever the bus.

use serde::Serialize;
use uuid::Uuid;

use super::{Admin, MessageSummary};
use crate::Error;
use crate::bus::{BusError, DeadLetter};
use crate::message::CodecExt;

/// A message a bus gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeadMessage {
    /// The saga instance it concerns, when it carries one.
    pub instance: Option<Uuid>,
    /// The message, the subscription it was dead-lettered on, why and when.
    #[serde(flatten)]
    pub message: MessageSummary,
}

/// A dead letter in full ([`Admin::dead_letter`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DeadLetterDetail {
    /// What a listing shows: the message, its subscription, why and when.
    #[serde(flatten)]
    pub summary: DeadMessage,
    /// The instance it concerns, for a saga's message.
    pub correlation_id: Option<Uuid>,
    /// The message that caused it.
    pub causation_id: Option<Uuid>,
    /// Where its answer was to go.
    pub reply_to: Option<String>,
    /// The delivery attempt it was dead-lettered at.
    pub attempt: u32,
    /// Its headers (trace context, eShop's, the transport's).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Its payload, when the runtime's codec reads it as JSON.
    pub payload: Option<serde_json::Value>,
    /// Otherwise its bytes as text (invalid UTF-8 replaced).
    pub payload_text: Option<String>,
}

impl DeadMessage {
    fn of(dead: &DeadLetter) -> Self {
        DeadMessage {
            instance: dead.envelope.correlation_id,
            message: MessageSummary {
                subscription: Some(dead.subscription.clone()),
                reason: Some(dead.reason.clone()),
                at: Some(dead.at),
                ..MessageSummary::of(&dead.envelope)
            },
        }
    }
}

impl Admin {
    /// Dead letters of `subscription` (of every subscription of this runtime when `None`),
    /// oldest first, at most `limit` (and [`MAX_PAGE`](super::MAX_PAGE)).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// for dead in runtime.admin().dead_letters(None, 100).await.unwrap() {
    ///     println!("{} on {:?}: {:?}", dead.message.name, dead.message.subscription, dead.message.reason);
    /// }
    /// # });
    /// ```
    pub async fn dead_letters(&self, subscription: Option<&str>, limit: usize) -> Result<Vec<DeadMessage>, Error> {
        let limit = limit.min(super::MAX_PAGE);
        let mut found = Vec::new();
        let names: Vec<&str> = match subscription {
            Some(name) => vec![name],
            None => self.subscriptions.iter().map(|s| &**s).collect(),
        };
        for name in names {
            found.extend(self.core.bus.dead_letters(name, limit).await?);
        }
        found.sort_by_key(|d| d.at);
        found.truncate(limit);
        Ok(found.iter().map(DeadMessage::of).collect())
    }

    /// One dead letter in full, to see what it carried before replaying or discarding it: the
    /// dead letter of message `message_id` on `subscription`, among the first
    /// [`SCANNED`](super::SCANNED) there; `None` if there is none.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// assert!(runtime.admin().dead_letter("billing", uuid::Uuid::nil()).await.unwrap().is_none());
    /// # });
    /// ```
    pub async fn dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<Option<DeadLetterDetail>, Error> {
        let dead = match self.core.bus.dead_letters(subscription, super::SCANNED).await {
            Ok(dead) => dead,
            Err(BusError::UnknownSubscription(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(dead) = dead.into_iter().find(|d| d.envelope.message_id == message_id) else { return Ok(None) };
        let e = &dead.envelope;
        let (payload, payload_text) = match self.core.codec.decode::<serde_json::Value>(&e.payload) {
            Ok(json) => (Some(json), None),
            Err(_) => (None, Some(String::from_utf8_lossy(&e.payload).into_owned())),
        };
        Ok(Some(DeadLetterDetail {
            summary: DeadMessage::of(&dead),
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            reply_to: e.reply_to.clone(),
            attempt: e.attempt,
            headers: e.headers.clone(),
            payload,
            payload_text,
        }))
    }

    /// Sends the dead letters of message `message_id` on `subscription` back to that
    /// subscription, and no other, with a fresh retry budget (fix what made them fail first),
    /// and removes them from the dead letters; returns how many. `by` and `reason` go to the
    /// log (a dead letter need not belong to an instance, so there is no history to write).
    ///
    /// A subscription the bus no longer has is refused ([`Error::NotFound`]) and its dead
    /// letters are kept; so is a message with no dead letter there.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let err = runtime.admin().replay_dead_letter("billing", uuid::Uuid::nil(), "ops", "fixed").await.unwrap_err();
    /// assert!(matches!(err, saga_core::Error::NotFound(_)), "{err}");
    /// # });
    /// ```
    pub async fn replay_dead_letter(
        &self,
        subscription: &str,
        message_id: Uuid,
        by: &str,
        reason: &str,
    ) -> Result<usize, Error> {
        let replayed = self.core.bus.replay_dead_letter(subscription, message_id).await.map_err(|e| match e {
            BusError::UnknownSubscription(s) => Error::NotFound(format!("subscription {s:?} (was it removed?)")),
            other => Error::Bus(other),
        })?;
        settled(replayed, "replayed", subscription, message_id, by, reason)
    }

    /// Deletes the dead letters of message `message_id` on `subscription` for good; returns
    /// how many ([`Error::NotFound`] when there is none). `by` and `reason` go to the log.
    pub async fn discard_dead_letter(
        &self,
        subscription: &str,
        message_id: Uuid,
        by: &str,
        reason: &str,
    ) -> Result<usize, Error> {
        let discarded = self.core.bus.discard_dead_letter(subscription, message_id).await?;
        settled(discarded, "discarded", subscription, message_id, by, reason)
    }
}

fn settled(
    count: usize,
    done: &str,
    subscription: &str,
    message_id: Uuid,
    by: &str,
    reason: &str,
) -> Result<usize, Error> {
    if count == 0 {
        return Err(Error::NotFound(format!("a dead letter of message {message_id} on subscription {subscription:?}")));
    }
    tracing::info!(subscription, %message_id, count, by, reason, "dead letter {done} by an operator");
    Ok(count)
}
