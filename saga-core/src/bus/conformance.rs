//! The transport conformance suite: what every [`Bus`] must do, runnable against any of them.
//!
//! A transport crate (ours or a third party's) implements [`ConformanceTarget`] and expands
//! [`conformance_tests!`](crate::conformance_tests) in a test module, which generates one
//! `#[tokio::test]` per check. Each check uses fresh subscription and message names, so runs
//! against a shared broker do not see each other.
//!
//! Ordering is not part of the contract: transports differ (a nacked message goes to the back
//! of an in-memory or RabbitMQ queue; JetStream redelivers per consumer). Consumers must not
//! depend on order; the engine does not.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Bus, BusError, Consumer, Delivery};
use crate::message::{Envelope, headers};

/// A transport under test.
#[async_trait::async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// A connected bus (a new connection or a shared one).
    async fn bus(&self) -> Arc<dyn Bus>;

    /// Removes what a check left behind on the broker for `subscription` (dead-letter queues).
    async fn clean_up(&self, _bus: &Arc<dyn Bus>, _subscription: &str) {}

    /// How long to wait for something that should arrive (brokers need more than memory).
    fn patience(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// Says on the terminal, past the test harness's output capture, that a suite was skipped.
pub fn say_skipped(suite: &str, how: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {suite} (set {how} to run it)");
}

/// A name no other run uses.
pub fn unique(base: &str) -> String {
    format!("conformance.{base}.{}", uuid::Uuid::now_v7().simple())
}

async fn next(consumer: &mut Consumer, patience: Duration) -> Result<Delivery, String> {
    match tokio::time::timeout(patience, consumer.next()).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(format!("the subscription {} closed", consumer.subscription())),
        Err(_) => Err(format!("nothing arrived on {} within {patience:?}", consumer.subscription())),
    }
}

async fn nothing(consumer: &mut Consumer, wait: Duration) -> Result<(), String> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(d)) => Err(format!("unexpected delivery of {} {}", d.envelope().name, d.envelope().message_id)),
        _ => Ok(()),
    }
}

fn sample(name: &str) -> Envelope {
    let mut e = Envelope::new(name, br#"{"order":42}"#.to_vec());
    e.correlation_id = Some(uuid::Uuid::now_v7());
    e.causation_id = Some(uuid::Uuid::now_v7());
    e.reply_to = Some("saga.order".into());
    e.with_header(headers::CONTENT_TYPE, "application/json").with_header("x-tenant", "acme")
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.into()) }
}

/// A published envelope arrives whole: id, name, payload, correlation, causation, reply-to,
/// headers, creation time, first attempt.
pub async fn round_trips_every_envelope_field(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let (sub, name) = (unique("roundtrip"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    let sent = sample(&name);
    bus.publish(sent.clone()).await.map_err(|e| e.to_string())?;
    let got = next(&mut c, t.patience()).await?;
    let e = got.envelope().clone();
    got.ack().await.map_err(|e| e.to_string())?;
    check(e.message_id == sent.message_id, "message id changed")?;
    check(e.name == sent.name && e.payload == sent.payload, "name or payload changed")?;
    check(e.correlation_id == sent.correlation_id && e.causation_id == sent.causation_id, "correlation changed")?;
    check(e.reply_to == sent.reply_to, "reply-to changed")?;
    check(e.header("x-tenant") == Some("acme"), format!("headers changed: {:?}", e.headers))?;
    check(e.created_at == sent.created_at, "creation time changed")?;
    check(e.attempt == 1, format!("first delivery has attempt {}", e.attempt))?;
    bus.unsubscribe(&sub).await.map_err(|e| e.to_string())
}

/// After unsubscribing, a subscription receives nothing (and a publish that nothing else
/// takes is refused as unroutable).
pub async fn unsubscribed_subscriptions_receive_nothing(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let (sub, name) = (unique("unsub"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    bus.unsubscribe(&sub).await.map_err(|e| e.to_string())?;
    match bus.publish(sample(&name)).await {
        Err(BusError::Unroutable { .. }) => {}
        other => return Err(format!("a publish to a name no subscription takes returned {other:?}")),
    }
    nothing(&mut c, Duration::from_millis(500)).await
}

/// Consumers of one subscription share its messages: each message goes to one of them.
pub async fn competing_consumers_share_a_subscription(t: &dyn ConformanceTarget) -> Result<(), String> {
    const N: usize = 40;
    let bus = t.bus().await;
    let (sub, name) = (unique("compete"), unique("event"));
    let mut a = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    let mut b = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    for _ in 0..N {
        bus.publish(sample(&name)).await.map_err(|e| e.to_string())?;
    }
    let mut seen = HashSet::new();
    let (mut got_a, mut got_b) = (0, 0);
    while seen.len() < N {
        let d = tokio::select! {
            d = next(&mut a, t.patience()) => { got_a += 1; d? }
            d = next(&mut b, t.patience()) => { got_b += 1; d? }
        };
        check(seen.insert(d.envelope().message_id), "a message was delivered to both consumers")?;
        d.ack().await.map_err(|e| e.to_string())?;
    }
    check(got_a > 0 && got_b > 0, format!("one consumer got everything ({got_a} / {got_b})"))?;
    nothing(&mut a, Duration::from_millis(300)).await?;
    bus.unsubscribe(&sub).await.map_err(|e| e.to_string())
}

/// Every subscription bound to a name gets its own copy.
pub async fn every_subscription_gets_a_copy(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let (s1, s2, name) = (unique("fanout-a"), unique("fanout-b"), unique("event"));
    let mut c1 = bus.subscribe(&s1, &[&name]).await.map_err(|e| e.to_string())?;
    let mut c2 = bus.subscribe(&s2, &[&name]).await.map_err(|e| e.to_string())?;
    let sent = sample(&name);
    bus.publish(sent.clone()).await.map_err(|e| e.to_string())?;
    for c in [&mut c1, &mut c2] {
        let d = next(c, t.patience()).await?;
        check(d.envelope().message_id == sent.message_id, "another message arrived")?;
        d.ack().await.map_err(|e| e.to_string())?;
    }
    bus.unsubscribe(&s1).await.map_err(|e| e.to_string())?;
    bus.unsubscribe(&s2).await.map_err(|e| e.to_string())
}

/// A nacked message comes back after its delay, with the next attempt number.
pub async fn nacked_messages_return_after_their_delay(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let (sub, name) = (unique("nack"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    let sent = sample(&name);
    bus.publish(sent.clone()).await.map_err(|e| e.to_string())?;
    let first = next(&mut c, t.patience()).await?;
    let delay = Duration::from_millis(700);
    let nacked_at = tokio::time::Instant::now();
    first.nack(delay).await.map_err(|e| e.to_string())?;
    let again = next(&mut c, t.patience() + delay).await?;
    let waited = nacked_at.elapsed();
    check(again.envelope().message_id == sent.message_id, "another message arrived")?;
    check(again.envelope().attempt == 2, format!("redelivery has attempt {}", again.envelope().attempt))?;
    // Brokers' delay timers are coarse; half the delay is the floor that still shows a delay.
    check(waited >= delay / 2, format!("redelivered after {waited:?}, asked for {delay:?}"))?;
    again.ack().await.map_err(|e| e.to_string())?;
    bus.unsubscribe(&sub).await.map_err(|e| e.to_string())
}

/// A dead-lettered message is not delivered again and is kept with its reason.
pub async fn dead_letters_keep_their_reason(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let (sub, name) = (unique("dead"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    let sent = sample(&name);
    bus.publish(sent.clone()).await.map_err(|e| e.to_string())?;
    let d = next(&mut c, t.patience()).await?;
    d.dead_letter("payload is not an order").await.map_err(|e| e.to_string())?;
    nothing(&mut c, Duration::from_millis(500)).await?;
    let dead = dead_letters_once_there(&*bus, &sub, 1, t.patience()).await?;
    check(dead[0].envelope.message_id == sent.message_id, "another message was dead-lettered")?;
    check(dead[0].reason == "payload is not an order", format!("reason {:?}", dead[0].reason))?;
    check(dead[0].subscription == sub, format!("parked on {:?}", dead[0].subscription))?;
    bus.unsubscribe(&sub).await.map_err(|e| e.to_string())?;
    t.clean_up(&bus, &sub).await;
    Ok(())
}

/// The dead letters of `subscription` once there are `count` of them (a broker may take a
/// moment to route one), or an error saying how many there were.
async fn dead_letters_once_there(
    bus: &dyn Bus,
    subscription: &str,
    count: usize,
    patience: Duration,
) -> Result<Vec<super::DeadLetter>, String> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let dead = bus.dead_letters(subscription, 100).await.map_err(|e| e.to_string())?;
        if dead.len() >= count || tokio::time::Instant::now() >= deadline {
            check(dead.len() == count, format!("{} dead letters, expected {count}", dead.len()))?;
            return Ok(dead);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replayed dead letter comes back to its own subscription only, counted as a first
/// delivery, and leaves the dead letters; a discarded one is gone; neither touches the others.
pub async fn dead_letters_are_replayed_to_their_subscription_or_discarded(
    t: &dyn ConformanceTarget,
) -> Result<(), String> {
    let bus = t.bus().await;
    let (sub, bystander, name) = (unique("replay"), unique("bystander"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    let mut other = bus.subscribe(&bystander, &[&name]).await.map_err(|e| e.to_string())?;
    let (replayed, discarded) = (sample(&name), sample(&name));
    for m in [&replayed, &discarded] {
        bus.publish(m.clone()).await.map_err(|e| e.to_string())?;
    }
    for _ in 0..2 {
        next(&mut c, t.patience()).await?.dead_letter("the tax service was down").await.map_err(|e| e.to_string())?;
        next(&mut other, t.patience()).await?.ack().await.map_err(|e| e.to_string())?;
    }
    dead_letters_once_there(&*bus, &sub, 2, t.patience()).await?;
    let count = bus.replay_dead_letter(&sub, replayed.message_id).await.map_err(|e| e.to_string())?;
    check(count == 1, format!("replayed {count} dead letters, expected 1"))?;
    let again = next(&mut c, t.patience()).await?;
    check(again.envelope().message_id == replayed.message_id, "another message arrived")?;
    check(again.envelope().attempt == 1, format!("replayed as attempt {}", again.envelope().attempt))?;
    check(again.envelope().payload == replayed.payload, "the payload changed")?;
    again.ack().await.map_err(|e| e.to_string())?;
    nothing(&mut other, Duration::from_millis(500)).await.map_err(|e| format!("another subscription: {e}"))?;
    let left = dead_letters_once_there(&*bus, &sub, 1, t.patience()).await?;
    check(left[0].envelope.message_id == discarded.message_id, "the replayed message is still dead-lettered")?;
    let count = bus.discard_dead_letter(&sub, discarded.message_id).await.map_err(|e| e.to_string())?;
    check(count == 1, format!("discarded {count} dead letters, expected 1"))?;
    dead_letters_once_there(&*bus, &sub, 0, t.patience()).await?;
    let count = bus.replay_dead_letter(&sub, discarded.message_id).await.map_err(|e| e.to_string())?;
    check(count == 0, format!("replayed {count} discarded dead letters"))?;
    nothing(&mut c, Duration::from_millis(500)).await?;
    for s in [&sub, &bystander] {
        bus.unsubscribe(s).await.map_err(|e| e.to_string())?;
        t.clean_up(&bus, s).await;
    }
    Ok(())
}

/// What a consumer held unsettled when it went away is delivered again.
pub async fn unsettled_deliveries_survive_a_consumer_crash(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let (sub, name) = (unique("crash"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    let sent = sample(&name);
    bus.publish(sent.clone()).await.map_err(|e| e.to_string())?;
    let held = next(&mut c, t.patience()).await?;
    drop(c);
    drop(held);
    let mut again = bus.subscribe(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    let d = next(&mut again, t.patience()).await?;
    check(d.envelope().message_id == sent.message_id, "another message arrived")?;
    d.ack().await.map_err(|e| e.to_string())?;
    bus.unsubscribe(&sub).await.map_err(|e| e.to_string())
}

/// A message no subscription takes is refused as unroutable, not confirmed and dropped.
pub async fn publishes_no_subscription_takes_are_refused(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let name = unique("nobody");
    match bus.publish(sample(&name)).await {
        Err(BusError::Unroutable { name: refused, .. }) => check(refused == name, format!("refused {refused:?}")),
        other => Err(format!("a publish nothing takes returned {other:?}")),
    }
}

/// An exclusive consumer is its subscription's only one until it goes away.
pub async fn an_exclusive_subscription_has_one_consumer_at_a_time(t: &dyn ConformanceTarget) -> Result<(), String> {
    let bus = t.bus().await;
    let (sub, name) = (unique("exclusive"), unique("event"));
    let mut only = bus.subscribe_exclusive(&sub, &[&name]).await.map_err(|e| e.to_string())?;
    for (what, second) in [
        ("a second exclusive", bus.subscribe_exclusive(&sub, &[&name]).await),
        ("a plain", bus.subscribe(&sub, &[&name]).await),
    ] {
        match second {
            Err(BusError::SubscriptionInUse { .. }) => {}
            Err(e) => return Err(format!("{what} consumer was refused with another error: {e}")),
            Ok(_) => return Err(format!("{what} consumer was let in beside an exclusive one")),
        }
    }
    let sent = sample(&name);
    bus.publish(sent.clone()).await.map_err(|e| e.to_string())?;
    let d = next(&mut only, t.patience()).await?;
    check(d.envelope().message_id == sent.message_id, "another message arrived")?;
    d.ack().await.map_err(|e| e.to_string())?;
    drop(only);
    let again = bus.subscribe_exclusive(&sub, &[&name]).await.map_err(|e| format!("after the owner left: {e}"))?;
    drop(again);
    bus.unsubscribe(&sub).await.map_err(|e| e.to_string())
}

/// Expands to one `#[tokio::test]` per conformance check, each calling `$target` (an
/// expression giving a [`ConformanceTarget`], or `None` to skip with a message).
///
/// ```ignore
/// saga_core::conformance_tests!(async { Some(saga_core::bus::InMemoryTarget) });
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($target:expr) => {
        $crate::conformance_tests!(@each $target;
            round_trips_every_envelope_field,
            unsubscribed_subscriptions_receive_nothing,
            competing_consumers_share_a_subscription,
            every_subscription_gets_a_copy,
            nacked_messages_return_after_their_delay,
            dead_letters_keep_their_reason,
            dead_letters_are_replayed_to_their_subscription_or_discarded,
            unsettled_deliveries_survive_a_consumer_crash,
            publishes_no_subscription_takes_are_refused,
            an_exclusive_subscription_has_one_consumer_at_a_time,
        );
    };
    (@each $target:expr; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            match $target.await {
                Some(target) => {
                    if let Err(failure) = $crate::bus::conformance::$check(&target).await {
                        panic!("{}: {failure}", stringify!($check));
                    }
                }
                None => {}
            }
        }
    )*};
}

/// The in-memory bus as a conformance target.
#[derive(Debug, Default, Clone)]
pub struct InMemoryTarget(super::InMemoryBus);

#[async_trait::async_trait]
impl ConformanceTarget for InMemoryTarget {
    async fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.0.clone())
    }
}

/// The durable local bus as a conformance target, on the store it is given.
#[derive(Clone)]
pub struct LocalTarget(super::LocalBus);

impl LocalTarget {
    /// A target whose bus keeps its queues in `store`.
    pub fn new(store: Arc<dyn crate::store::Store>) -> Self {
        LocalTarget(super::LocalBus::open_with_max_deliveries(store, 1_000))
    }
}

#[async_trait::async_trait]
impl ConformanceTarget for LocalTarget {
    async fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.0.clone())
    }
}
