//! The pluggable transport.
//!
//! A [`Bus`] publishes [`Envelope`]s by message name and delivers them to named
//! subscriptions. A subscription is a competing-consumer group: every subscription bound to a
//! name gets a copy of each message, and within one subscription each copy goes to one
//! consumer. Every [`Delivery`] must be settled exactly once: acked, nacked (redelivered after
//! a delay) or dead-lettered with a reason. A delivery dropped unsettled (its consumer crashed)
//! is redelivered: the bus is at-least-once and consumers deduplicate on `message_id`.
//!
//! [`LocalBus`] is the default transport on a persistent store: in-process queues kept in the
//! store, so a crash loses nothing. [`InMemoryBus`] is the same without the store, for tests
//! and stores that are not durable either (a crash loses its queues); broker adapters
//! implement the same trait.
//! [`EventBus`] layers the seed's typed and dynamic integration-event handlers on top.

pub mod conformance;
mod delivery;
mod handlers;
mod local;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;

pub use conformance::{InMemoryTarget, LocalTarget};
pub use delivery::{Acker, Consumer, Delivery, DeliveryStream};
pub use handlers::{DynamicEventHandler, EventBus, EventHandler, SubscriptionHandle};
pub use local::LocalBus;
pub use memory::{DeadLetter, InMemoryBus};
#[cfg(feature = "nats")]
pub use nats::{NatsBus, NatsOptions, NatsTarget};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBus, PostgresBusTarget};
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{RabbitMqBus, RabbitMqOptions, RabbitMqTarget};

use std::sync::Arc;

use crate::activity::Activity;
use crate::message::Envelope;
use crate::store::{QueuedMessage, Store};

/// What can go wrong talking to a transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The transport is closed or was shut down.
    #[error("the bus is closed")]
    Closed,
    /// The subscription does not exist (it was never created or was removed).
    #[error("no subscription named {0:?}: subscribe before settling or injecting")]
    UnknownSubscription(String),
    /// The broker failed an operation; it may work when tried again.
    #[error("transport error: {0}")]
    Transport(String),
    /// No subscription takes the message's name, so nobody would receive it: it was not
    /// accepted. It may be routable later (once its consumer subscribes).
    #[error("no subscription takes message {name:?}: {detail}")]
    Unroutable {
        /// The message name.
        name: String,
        /// What to do about it.
        detail: String,
    },
    /// The transport refused the message for good (it is too large, say): trying again
    /// cannot help.
    #[error("the transport refused message {name:?} for good: {reason}")]
    Refused {
        /// The message name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The subscription was asked for exclusively and another consumer holds it (or
    /// exclusively while this one asked to share it).
    #[error("subscription {subscription:?} is in use by another consumer: {detail}")]
    SubscriptionInUse {
        /// The subscription.
        subscription: String,
        /// Who holds it, as far as the transport can tell.
        detail: String,
    },
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

    /// Like [`Bus::subscribe`], but the returned consumer must be the subscription's only one:
    /// while it lives, another consumer on the subscription (in this process or another) is
    /// refused with [`BusError::SubscriptionInUse`], and if another one exists this call is.
    /// A runtime whose store one process owns subscribes this way, so that a second runtime
    /// with its own store cannot take messages for instances it does not hold.
    ///
    /// The default subscribes without exclusivity (for wrappers around another bus, which
    /// should forward this call); every transport of this crate enforces it.
    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.subscribe(subscription, names).await
    }

    /// Removes a subscription and its bindings; messages still queued on it are discarded.
    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError>;

    /// Whether some subscription takes `name` right now, for transports that know every
    /// subscription (the in-memory one): `Some(false)` means a message of that name would be
    /// refused as [`BusError::Unroutable`]. `None` (the default): the transport cannot tell
    /// without asking a broker.
    fn has_subscribers(&self, _name: &str) -> Option<bool> {
        None
    }

    /// The largest payload the transport carries, if it has a limit; the runtime refuses
    /// larger outgoing messages when they are committed, with a clear error, rather than
    /// finding out when they are published.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// Whether the bus is connected to its broker now, for readiness probes; `None` (the
    /// default) for a bus that has no connection to lose or cannot tell.
    fn connected(&self) -> Option<bool> {
        None
    }

    /// Closes the connection gracefully (the runtime's `shutdown` calls it). Default: nothing.
    async fn close(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Work this bus holds in flight, for transports that can tell (the in-memory one);
    /// the runtime's `settle` waits on it.
    fn activity(&self) -> Option<Arc<Activity>> {
        None
    }

    /// The subscriptions that take `name`, for a bus that keeps its queues in `store` (the
    /// [`LocalBus`]): the runtime then writes a committed message into those queues in the
    /// commit itself, instead of into the outbox for the relay to publish, and hands the
    /// copies over with [`Bus::deliver_stored`] once the commit is durable. One write instead
    /// of four (outbox entry, publish's enqueue, outbox removal, flush), and the same
    /// guarantee: the message is in the store from the moment the commit is.
    ///
    /// `None` (the default, and for a store that is not the bus's own or a name nobody
    /// takes): the message goes through the outbox and [`Bus::publish`]. Wrappers around
    /// another bus should forward this and `deliver_stored`, or leave both to the defaults.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use saga_core::bus::{Bus, LocalBus};
    /// use saga_core::message::Envelope;
    /// use saga_core::store::{Commit, SledStore, Store};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    /// let bus = LocalBus::open(store.clone());
    /// let mut billing = bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
    /// // What the runtime does with a unit's outgoing message:
    /// let routes = bus.stored_routes(&*store, "ordering.order-paid").unwrap();
    /// let queued = routes.into_iter().map(|r| (r, Envelope::new("ordering.order-paid", b"{}".to_vec()))).collect();
    /// let committed = store.commit(Commit { queued, ..Commit::default() }).await.unwrap();
    /// committed.durable.await.unwrap();
    /// bus.deliver_stored(committed.queued).unwrap();
    /// billing.next().await.unwrap().ack().await.unwrap();
    /// # });
    /// ```
    fn stored_routes(&self, store: &dyn Store, name: &str) -> Option<Vec<String>> {
        let _ = (store, name);
        None
    }

    /// Takes messages a durable commit wrote into this bus's queues (see
    /// [`Bus::stored_routes`]) and delivers them. They are already kept: a failure only
    /// delays them until the store's queues are loaded again (the bus's next subscribe to
    /// them, or the next start).
    fn deliver_stored(&self, messages: Vec<QueuedMessage>) -> Result<(), BusError> {
        let _ = messages;
        Err(BusError::Transport("this bus keeps no queues in a store: it cannot take stored messages".to_owned()))
    }

    /// Reads, without removing, up to `limit` messages the bus dead-lettered on
    /// `subscription` (the name the runtime subscribed with), oldest first, each with the
    /// reason it was parked. Every transport of this crate keeps them in the same shape;
    /// [`SagaRuntime::dead_letters`](crate::engine::SagaRuntime::dead_letters) reads those
    /// of all a runtime's subscriptions.
    ///
    /// The default says the transport cannot list them (a bus of your own that parks
    /// messages should implement it).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::bus::{Bus, InMemoryBus};
    /// let bus = InMemoryBus::new();
    /// for dead in bus.dead_letters("billing", 50).await.unwrap() {
    ///     eprintln!("{} {}: {}", dead.envelope.name, dead.envelope.message_id, dead.reason);
    /// }
    /// # });
    /// ```
    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let _ = (subscription, limit);
        Err(BusError::Transport(
            "this bus cannot list its dead letters: implement Bus::dead_letters for it, or read them on the broker"
                .to_owned(),
        ))
    }

    /// Hands every dead letter of `message_id` on `subscription` back to that subscription
    /// (and no other one bound to its name), with its delivery count reset so that it gets a
    /// fresh retry budget, and removes it from the dead letters; returns how many it replayed
    /// (0: there is none). Fix what made it fail first. The message keeps its id, and a
    /// consumer that had recorded it would skip it; a dead-lettered message was not recorded.
    ///
    /// The default says the transport cannot (a bus of your own that parks messages should
    /// implement it, and [`Bus::discard_dead_letter`]).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::bus::{Bus, InMemoryBus};
    /// use saga_core::message::Envelope;
    /// let bus = InMemoryBus::new();
    /// let mut billing = bus.subscribe("billing", &["ordering.order-paid"]).await.unwrap();
    /// bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())).await.unwrap();
    /// let delivery = billing.next().await.unwrap();
    /// let id = delivery.envelope().message_id;
    /// delivery.dead_letter("the tax service was down").await.unwrap();
    ///
    /// assert_eq!(bus.replay_dead_letter("billing", id).await.unwrap(), 1);
    /// let again = billing.next().await.unwrap();
    /// assert_eq!((again.envelope().message_id, again.envelope().attempt), (id, 1));
    /// again.ack().await.unwrap();
    /// assert!(bus.dead_letters("billing", 10).await.unwrap().is_empty());
    /// # });
    /// ```
    async fn replay_dead_letter(&self, subscription: &str, message_id: uuid::Uuid) -> Result<usize, BusError> {
        let _ = (subscription, message_id);
        Err(BusError::Transport(
            "this bus cannot replay its dead letters: implement Bus::replay_dead_letter".to_owned(),
        ))
    }

    /// Deletes every dead letter of `message_id` on `subscription` for good; returns how many.
    async fn discard_dead_letter(&self, subscription: &str, message_id: uuid::Uuid) -> Result<usize, BusError> {
        let _ = (subscription, message_id);
        Err(BusError::Transport(
            "this bus cannot discard its dead letters: implement Bus::discard_dead_letter".to_owned(),
        ))
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
    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        (**self).subscribe_exclusive(subscription, names).await
    }
    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        (**self).unsubscribe(subscription).await
    }
    fn has_subscribers(&self, name: &str) -> Option<bool> {
        (**self).has_subscribers(name)
    }
    fn max_payload(&self) -> Option<usize> {
        (**self).max_payload()
    }
    fn connected(&self) -> Option<bool> {
        (**self).connected()
    }
    async fn close(&self) -> Result<(), BusError> {
        (**self).close().await
    }
    fn activity(&self) -> Option<Arc<Activity>> {
        (**self).activity()
    }
    fn stored_routes(&self, store: &dyn Store, name: &str) -> Option<Vec<String>> {
        (**self).stored_routes(store, name)
    }
    fn deliver_stored(&self, messages: Vec<QueuedMessage>) -> Result<(), BusError> {
        (**self).deliver_stored(messages)
    }
    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        (**self).dead_letters(subscription, limit).await
    }
    async fn replay_dead_letter(&self, subscription: &str, message_id: uuid::Uuid) -> Result<usize, BusError> {
        (**self).replay_dead_letter(subscription, message_id).await
    }
    async fn discard_dead_letter(&self, subscription: &str, message_id: uuid::Uuid) -> Result<usize, BusError> {
        (**self).discard_dead_letter(subscription, message_id).await
    }
}
