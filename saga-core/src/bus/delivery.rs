use std::time::Duration;

use super::BusError;
use crate::message::Envelope;
use crate::store::QueueEntry;

/// How a transport settles one delivery. Implemented by each transport.
#[async_trait::async_trait]
pub trait Acker: Send + Sync + 'static {
    /// The message was handled; do not deliver it again.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// The message could not be handled now; deliver it again after `delay`.
    async fn nack(self: Box<Self>, envelope: Envelope, delay: Duration) -> Result<(), BusError>;
    /// The message can never be handled; park it with `reason` for an operator.
    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: String) -> Result<(), BusError>;
    /// The delivery was dropped unsettled (its consumer went away): make it deliverable again.
    /// Called from `Drop`, so it must not block.
    fn abandon(self: Box<Self>, envelope: Envelope);
    /// The message is still being worked on: restart whatever clock would hand it to another
    /// consumer (JetStream's `ack_wait`). The default does nothing, for transports without one.
    async fn keep_alive(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Where the message waits in a queue the runtime's store keeps (the local bus), so that
    /// the consumer's commit can remove it ([`Commit::consumes`](crate::store::Commit::consumes)).
    /// Default: `None`, the transport keeps its queues itself.
    fn queue_entry(&self) -> Option<QueueEntry> {
        None
    }

    /// Acks a delivery whose queue entry the consumer's durable commit already removed
    /// (see [`Acker::queue_entry`]). Default: a plain [`Acker::ack`].
    async fn ack_consumed(self: Box<Self>) -> Result<(), BusError> {
        self.ack().await
    }
}

/// One delivered copy of a message, to be settled exactly once.
///
/// Dropping a delivery without settling it hands it back to the transport for redelivery,
/// which is what happens to everything in flight when a consumer crashes.
pub struct Delivery {
    envelope: Envelope,
    acker: Option<Box<dyn Acker>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("envelope", &self.envelope).finish_non_exhaustive()
    }
}

impl Delivery {
    /// Wraps a received envelope with its transport's acker.
    pub fn new(envelope: Envelope, acker: Box<dyn Acker>) -> Self {
        Delivery { envelope, acker: Some(acker) }
    }

    /// The delivered message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    fn take(&mut self) -> Result<(Box<dyn Acker>, Envelope), BusError> {
        let acker = self.acker.take().ok_or(BusError::Closed)?;
        Ok((acker, std::mem::replace(&mut self.envelope, Envelope::new("", Vec::new()))))
    }

    /// Settles the delivery as handled.
    pub async fn ack(mut self) -> Result<(), BusError> {
        let (acker, _) = self.take()?;
        acker.ack().await
    }

    /// Asks for redelivery after `delay`.
    pub async fn nack(mut self, delay: Duration) -> Result<(), BusError> {
        let (acker, envelope) = self.take()?;
        acker.nack(envelope, delay).await
    }

    /// Says the message is still being worked on (the engine calls it while it waits for the
    /// store to come back), so that the transport does not hand it to another consumer.
    pub async fn keep_alive(&self) -> Result<(), BusError> {
        match &self.acker {
            Some(acker) => acker.keep_alive().await,
            None => Err(BusError::Closed),
        }
    }

    /// Where the message waits in a queue the runtime's store keeps, for transports that
    /// keep their queues there (the local bus); see [`Acker::queue_entry`].
    pub fn queue_entry(&self) -> Option<QueueEntry> {
        self.acker.as_ref().and_then(|a| a.queue_entry())
    }

    /// Acks a delivery whose queue entry the consumer's durable commit removed (the engine
    /// calls it after a commit with [`Commit::consumes`](crate::store::Commit::consumes)).
    pub async fn ack_consumed(mut self) -> Result<(), BusError> {
        let (acker, _) = self.take()?;
        acker.ack_consumed().await
    }

    /// Parks the message with a reason; it will not be delivered again.
    pub async fn dead_letter(mut self, reason: impl Into<String>) -> Result<(), BusError> {
        let (acker, envelope) = self.take()?;
        acker.dead_letter(envelope, reason.into()).await
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Ok((acker, envelope)) = self.take() {
            acker.abandon(envelope);
        }
    }
}

/// The receiving side of a transport's subscription.
#[async_trait::async_trait]
pub trait DeliveryStream: Send + 'static {
    /// The next delivery, or `None` once the subscription is closed.
    async fn next(&mut self) -> Option<Delivery>;
}

/// One consumer on a subscription; several consumers on one subscription compete.
pub struct Consumer {
    subscription: String,
    stream: Box<dyn DeliveryStream>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("subscription", &self.subscription).finish_non_exhaustive()
    }
}

impl Consumer {
    /// Wraps a transport's stream.
    pub fn new(subscription: impl Into<String>, stream: Box<dyn DeliveryStream>) -> Self {
        Consumer { subscription: subscription.into(), stream }
    }

    /// The subscription this consumer competes on.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The next delivery, or `None` once the subscription is closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.stream.next().await
    }
}
