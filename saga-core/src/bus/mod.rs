//! The pluggable transport.
//!
//! A [`Bus`] publishes [`Envelope`]s by message name and delivers them to named
//! subscriptions. A subscription is a competing-consumer group: every subscription bound to a
//! name gets a copy of each message, and within one subscription each copy goes to one
//! consumer. Every [`Delivery`] must be settled exactly once: acked, nacked (redelivered after
//! a delay) or dead-lettered with a reason. A delivery dropped unsettled (its consumer crashed)
//! is redelivered: the bus is at-least-once and consumers deduplicate on `message_id`.
//!
//! [`InMemoryBus`] is the default transport; broker adapters implement the same trait.
//! [`EventBus`] layers the seed's typed and dynamic integration-event handlers on top.

pub mod conformance;
mod delivery;
mod handlers;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;

pub use conformance::InMemoryTarget;
pub use delivery::{Acker, Consumer, Delivery, DeliveryStream};
pub use handlers::{DynamicEventHandler, EventBus, EventHandler, SubscriptionHandle};
pub use memory::{DeadLetter, InMemoryBus};
#[cfg(feature = "nats")]
pub use nats::{NatsBus, NatsOptions, NatsTarget};
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{RabbitMqBus, RabbitMqOptions, RabbitMqTarget};

use std::sync::Arc;

use crate::activity::Activity;
use crate::message::Envelope;

/// What can go wrong talking to a transport.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The transport is closed or was shut down.
    #[error("the bus is closed")]
    Closed,
    /// The subscription does not exist (it was never created or was removed).
    #[error("no subscription named {0:?}: subscribe before settling or injecting")]
    UnknownSubscription(String),
    /// The broker refused or failed an operation.
    #[error("transport error: {0}")]
    Transport(String),
}

/// A message transport: publish by name, consume through named subscriptions.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::bus::{Bus, InMemoryBus};
/// use saga_core::message::Envelope;
/// let bus = InMemoryBus::new();
/// let mut consumer = bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
/// bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())).await.unwrap();
/// let delivery = consumer.next().await.unwrap();
/// assert_eq!(delivery.envelope().name, "ordering.order-paid");
/// delivery.ack().await.unwrap();
/// # });
/// ```
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes to every subscription bound to `envelope.name`. Returns once the transport
    /// has taken responsibility for the message (a publisher confirm on a broker).
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;

    /// Creates (idempotently) the subscription `subscription`, binds it to `names`, and
    /// returns one more consumer competing on it.
    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError>;

    /// Removes a subscription and its bindings; messages still queued on it are discarded.
    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError>;

    /// Closes the connection gracefully (the runtime's `shutdown` calls it). Default: nothing.
    async fn close(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Work this bus holds in flight, for transports that can tell (the in-memory one);
    /// the runtime's `settle` waits on it.
    fn activity(&self) -> Option<Arc<Activity>> {
        None
    }
}

#[async_trait::async_trait]
impl<B: Bus + ?Sized> Bus for Arc<B> {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        (**self).publish(envelope).await
    }
    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        (**self).subscribe(subscription, names).await
    }
    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        (**self).unsubscribe(subscription).await
    }
    async fn close(&self) -> Result<(), BusError> {
        (**self).close().await
    }
    fn activity(&self) -> Option<Arc<Activity>> {
        (**self).activity()
    }
}
