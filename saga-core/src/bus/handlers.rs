//! Plain integration-event handlers on any [`Bus`], in the shape of the seed's event bus:
//! `Subscribe<T, TH>` becomes [`EventBus::subscribe`] with an [`EventHandler<T>`], and
//! `SubscribeDynamic` becomes [`EventBus::subscribe_dynamic`] with raw JSON.
//!
//! These handlers keep no state in the saga store: they get at-least-once delivery, decode
//! errors dead-lettered, and retries with backoff. Handlers that must not repeat an effect
//! are participants of the runtime (`SagaRuntimeBuilder::handler`), which dedupe durably.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::{Bus, BusError, Consumer, Delivery};
use crate::HandlerError;
use crate::message::{Codec, Envelope, JsonCodec, Message};
use crate::saga::RetryPolicy;

/// Handles one integration event type (the seed's `IIntegrationEventHandler<T>`).
///
/// ```
/// use saga_core::{HandlerError, bus::EventHandler, message::Message};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct PriceChanged { product_id: u64, cents: u64 }
/// impl Message for PriceChanged { const NAME: &'static str = "catalog.price-changed"; }
///
/// struct UpdateBasket;
/// #[async_trait::async_trait]
/// impl EventHandler<PriceChanged> for UpdateBasket {
///     async fn handle(&self, event: PriceChanged) -> Result<(), HandlerError> {
///         let _ = (event.product_id, event.cents);
///         Ok(())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait EventHandler<M: Message>: Send + Sync + 'static {
    /// Handles one event.
    async fn handle(&self, event: M) -> Result<(), HandlerError>;
}

/// Handles events by name as raw JSON (the seed's `IDynamicIntegrationEventHandler`).
#[async_trait::async_trait]
pub trait DynamicEventHandler: Send + Sync + 'static {
    /// Handles one event.
    async fn handle(&self, name: &str, payload: serde_json::Value) -> Result<(), HandlerError>;
}

/// A running subscription's consumer task; dropping the handle stops it.
#[derive(Debug)]
pub struct SubscriptionHandle {
    task: Option<JoinHandle<()>>,
}

impl SubscriptionHandle {
    /// Lets the consumer run for as long as the process does.
    pub fn detach(mut self) {
        self.task.take();
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Typed publish and subscribe on top of a [`Bus`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::bus::{EventBus, InMemoryBus};
/// use saga_core::message::Message;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping;
/// impl Message for Ping { const NAME: &'static str = "ping"; }
/// let bus = EventBus::new(InMemoryBus::new());
/// // On the in-memory bus a message nobody subscribed to would be lost, so it is refused.
/// assert!(bus.publish(&Ping).await.is_err());
/// # });
/// ```
#[derive(Clone)]
pub struct EventBus {
    bus: Arc<dyn Bus>,
    codec: Arc<dyn Codec>,
    retry: RetryPolicy,
}

impl EventBus {
    /// Typed access to `bus` with the JSON codec and the default retry policy.
    pub fn new(bus: impl Bus) -> Self {
        Self::with_codec(bus, JsonCodec)
    }

    /// Typed access to `bus` with another codec.
    pub fn with_codec(bus: impl Bus, codec: impl Codec) -> Self {
        EventBus { bus: Arc::new(bus), codec: Arc::new(codec), retry: RetryPolicy::default() }
    }

    /// How transient handler errors are retried before the message is dead-lettered.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Publishes an event with a fresh id.
    pub async fn publish<M: Message>(&self, event: &M) -> Result<(), crate::Error> {
        let mut envelope = Envelope::encode(&*self.codec, event)?;
        crate::trace::stamp(&mut envelope, crate::trace::Produced::Published);
        self.bus.publish(envelope).await?;
        Ok(())
    }

    /// Subscribes `handler` to `M` on the competing-consumer group `subscription`.
    pub async fn subscribe<M: Message, H: EventHandler<M>>(
        &self,
        subscription: &str,
        handler: H,
    ) -> Result<SubscriptionHandle, BusError> {
        let consumer = self.bus.subscribe(subscription, &[M::NAME]).await?;
        let codec = self.codec.clone();
        let handler = Arc::new(handler);
        Ok(self.spawn(consumer, move |env| {
            let handler = handler.clone();
            let decoded = env.decode::<M>(&*codec);
            async move {
                match decoded {
                    Ok(event) => handler.handle(event).await,
                    Err(e) => Err(HandlerError::permanent(e)),
                }
            }
        }))
    }

    /// Subscribes `handler` to the events named `name`, delivered as raw JSON.
    pub async fn subscribe_dynamic<H: DynamicEventHandler>(
        &self,
        subscription: &str,
        name: &str,
        handler: H,
    ) -> Result<SubscriptionHandle, BusError> {
        let consumer = self.bus.subscribe(subscription, &[name]).await?;
        let handler = Arc::new(handler);
        Ok(self.spawn(consumer, move |env| {
            let handler = handler.clone();
            let name = env.name.clone();
            let parsed = serde_json::from_slice::<serde_json::Value>(&env.payload);
            async move {
                match parsed {
                    Ok(json) => handler.handle(&name, json).await,
                    Err(e) => Err(HandlerError::permanent(format!("payload is not JSON: {e}"))),
                }
            }
        }))
    }

    /// Removes a subscription from the bus.
    pub async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        self.bus.unsubscribe(subscription).await
    }

    fn spawn<F, Fut>(&self, mut consumer: Consumer, handle: F) -> SubscriptionHandle
    where
        F: Fn(&Envelope) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), HandlerError>> + Send,
    {
        let retry = self.retry.clone();
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let envelope = delivery.envelope();
                let span = tracing::info_span!(
                    "event handler",
                    subscription = %consumer.subscription(),
                    message_name = %envelope.name,
                    message_id = %envelope.message_id,
                    otel.name = %format_args!("process {}", envelope.name),
                    otel.kind = "consumer",
                    messaging.operation.type = "process",
                );
                let trace = crate::trace::TraceContext::of(envelope);
                crate::trace::continue_trace(&span, trace.as_ref());
                // A panicking handler (or payload decoder) fails its message, not the subscription.
                let outcome = match span.in_scope(|| crate::panics::catch(|| handle(envelope))) {
                    Ok(running) => {
                        crate::trace::within(trace, crate::panics::catch_async(running).instrument(span)).await
                    }
                    Err(panic) => Err(panic),
                }
                .unwrap_or_else(|panic| Err(HandlerError::permanent(format!("the handler panicked: {panic}"))));
                let (subscription, name, id, correlation) = (
                    consumer.subscription().to_owned(),
                    delivery.envelope().name.clone(),
                    delivery.envelope().message_id,
                    delivery.envelope().correlation_id,
                );
                if let Err(e) = settle(delivery, outcome, &retry, &subscription).await {
                    tracing::warn!(
                        subscription = %subscription,
                        message_name = %name,
                        message_id = %id,
                        correlation_id = correlation.map(tracing::field::display),
                        error = %e,
                        "could not settle a delivery; the transport will redeliver it"
                    );
                }
            }
        });
        SubscriptionHandle { task: Some(task) }
    }
}

/// Acks, retries or dead-letters a delivery according to the handler's outcome.
pub(crate) async fn settle(
    delivery: Delivery,
    outcome: Result<(), HandlerError>,
    retry: &RetryPolicy,
    subscription: &str,
) -> Result<(), BusError> {
    use crate::engine::metrics::{DeadLetterClass, dead_lettered};
    let attempt = delivery.envelope().attempt;
    match outcome {
        Ok(()) => delivery.ack().await,
        Err(HandlerError::Transient(reason)) => match retry.delay_before_retry(attempt, delivery.envelope().message_id)
        {
            Some(delay) => {
                tracing::debug!(attempt, %reason, ?delay, "transient handler failure, retrying");
                delivery.nack(delay).await
            }
            None => {
                dead_lettered(subscription, DeadLetterClass::GaveUp);
                delivery.dead_letter(format!("gave up after {attempt} attempts: {reason}")).await
            }
        },
        Err(HandlerError::Permanent(reason)) => {
            dead_lettered(subscription, DeadLetterClass::Rejected);
            delivery.dead_letter(reason).await
        }
    }
}
