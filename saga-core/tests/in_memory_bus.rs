//! The in-memory transport and the typed/dynamic handler layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use saga_core::HandlerError;
use saga_core::bus::{Bus, BusError, DynamicEventHandler, EventBus, EventHandler, InMemoryBus};
use saga_core::message::{Envelope, Message};
use saga_core::saga::RetryPolicy;
use serde::{Deserialize, Serialize};

fn env(name: &str) -> Envelope {
    Envelope::new(name, b"{}".to_vec())
}

#[tokio::test]
async fn each_subscription_gets_a_copy_and_its_consumers_compete_for_it() {
    let bus = InMemoryBus::new();
    let mut billing_a = bus.subscribe("billing", &["paid"]).await.unwrap();
    let mut billing_b = bus.subscribe("billing", &["paid"]).await.unwrap();
    let mut audit = bus.subscribe("audit", &["paid"]).await.unwrap();
    for _ in 0..4 {
        bus.publish(env("paid")).await.unwrap();
    }
    let mut billed = 0;
    for _ in 0..2 {
        billing_a.next().await.unwrap().ack().await.unwrap();
        billing_b.next().await.unwrap().ack().await.unwrap();
        billed += 2;
    }
    for _ in 0..4 {
        audit.next().await.unwrap().ack().await.unwrap();
    }
    assert_eq!(billed, 4);
    assert_eq!(bus.activity().unwrap().pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_nacked_message_comes_back_after_its_delay_with_the_next_attempt() {
    let bus = InMemoryBus::new();
    let mut c = bus.subscribe("s", &["m"]).await.unwrap();
    let sent = env("m");
    bus.publish(sent.clone()).await.unwrap();
    let first = c.next().await.unwrap();
    assert_eq!(first.envelope().attempt, 1);
    let started = tokio::time::Instant::now();
    first.nack(Duration::from_secs(5)).await.unwrap();
    let again = c.next().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!((again.envelope().message_id, again.envelope().attempt), (sent.message_id, 2));
    again.ack().await.unwrap();
}

#[tokio::test]
async fn a_delivery_dropped_unsettled_is_redelivered() {
    let bus = InMemoryBus::new();
    let mut c = bus.subscribe("s", &["m"]).await.unwrap();
    bus.publish(env("m")).await.unwrap();
    drop(c.next().await.unwrap());
    let again = c.next().await.unwrap();
    assert_eq!(again.envelope().attempt, 2);
    again.ack().await.unwrap();
}

#[tokio::test]
async fn a_bus_with_a_delivery_limit_dead_letters_what_exceeds_it() {
    let bus = InMemoryBus::with_max_deliveries(2);
    let mut c = bus.subscribe("s", &["m"]).await.unwrap();
    bus.publish(env("m")).await.unwrap();
    c.next().await.unwrap().nack(Duration::ZERO).await.unwrap();
    c.next().await.unwrap().nack(Duration::ZERO).await.unwrap();
    assert_eq!(bus.all_dead_letters()[0].reason, "delivered 2 times without being acked");
    assert_eq!(bus.activity().unwrap().pending(), 0);
}

#[tokio::test]
async fn an_unsubscribed_subscription_receives_nothing_more() {
    let bus = InMemoryBus::new();
    let mut c = bus.subscribe("s", &["m"]).await.unwrap();
    bus.publish(env("m")).await.unwrap();
    bus.unsubscribe("s").await.unwrap();
    let refused = bus.publish(env("m")).await;
    assert!(matches!(refused, Err(BusError::Unroutable { .. })), "{refused:?}");
    assert!(c.next().await.is_none());
    assert_eq!(bus.activity().unwrap().pending(), 0);
    assert!(bus.unsubscribe("s").await.is_err());
}

#[derive(Debug, Serialize, Deserialize)]
struct PriceChanged {
    product: u32,
}

impl Message for PriceChanged {
    const NAME: &'static str = "catalog.price-changed";
}

struct FlakyBasket(Arc<AtomicU32>);

#[async_trait::async_trait]
impl EventHandler<PriceChanged> for FlakyBasket {
    async fn handle(&self, event: PriceChanged) -> Result<(), HandlerError> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(HandlerError::transient("basket store busy"));
        }
        assert_eq!(event.product, 3);
        Ok(())
    }
}

struct Raw(Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

#[async_trait::async_trait]
impl DynamicEventHandler for Raw {
    async fn handle(&self, name: &str, payload: serde_json::Value) -> Result<(), HandlerError> {
        assert_eq!(name, PriceChanged::NAME);
        self.0.lock().unwrap().push(payload);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn typed_handlers_retry_transient_errors_and_dead_letter_what_does_not_decode() {
    let bus = InMemoryBus::new();
    let events = EventBus::new(bus.clone()).retry(RetryPolicy::exponential(3, Duration::from_millis(10)));
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _typed = events.subscribe("basket", FlakyBasket(calls.clone())).await.unwrap();
    let _raw = events.subscribe_dynamic("audit", PriceChanged::NAME, Raw(seen.clone())).await.unwrap();

    events.publish(&PriceChanged { product: 3 }).await.unwrap();
    bus.inject("basket", Envelope::new(PriceChanged::NAME, b"\"oops\"".to_vec())).unwrap();
    let activity = bus.activity().unwrap();
    while activity.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(calls.load(Ordering::SeqCst), 2, "one failure, one success");
    assert_eq!(seen.lock().unwrap().as_slice(), [serde_json::json!({ "product": 3 })]);
    let dead = bus.all_dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("cannot decode"), "{}", dead[0].reason);
}

/// Panics on the first price it sees; counts every call.
struct PanickyBasket(Arc<AtomicU32>);

#[async_trait::async_trait]
impl EventHandler<PriceChanged> for PanickyBasket {
    async fn handle(&self, event: PriceChanged) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        assert_ne!(event.product, 1, "the basket cannot price product 1");
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_event_handler_dead_letters_its_message_with_the_panic_and_goes_on() {
    let bus = InMemoryBus::new();
    let events = EventBus::new(bus.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let _basket = events.subscribe("basket", PanickyBasket(calls.clone())).await.unwrap();
    events.publish(&PriceChanged { product: 1 }).await.unwrap();
    events.publish(&PriceChanged { product: 2 }).await.unwrap();
    let activity = bus.activity().unwrap();
    while activity.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the subscription lived on after the panic");
    let dead = bus.all_dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("the basket cannot price product 1"), "{}", dead[0].reason);
}

#[tokio::test]
async fn a_publish_before_anything_subscribed_is_refused_not_dropped() {
    let bus = InMemoryBus::new();
    let early = bus.publish(env("ordering.order-submitted")).await;
    let Err(BusError::Unroutable { name, detail }) = early else { panic!("expected a refusal, got {early:?}") };
    assert_eq!(name, "ordering.order-submitted");
    assert!(detail.contains("subscribe first"), "{detail}");
    assert_eq!(bus.activity().unwrap().pending(), 0, "nothing half-accepted");
    let mut c = bus.subscribe("ordering", &["ordering.order-submitted"]).await.unwrap();
    bus.publish(env("ordering.order-submitted")).await.unwrap();
    c.next().await.unwrap().ack().await.unwrap();
}

mod conformance {
    saga_core::conformance_tests!(async { Some(saga_core::bus::InMemoryTarget::default()) });
}
