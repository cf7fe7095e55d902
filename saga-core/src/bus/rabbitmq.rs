//! The RabbitMQ transport (lapin).
//!
//! Topology, all durable and declared idempotently:
//!
//! | what | name | purpose |
//! | --- | --- | --- |
//! | direct exchange | `sagaflow` (configurable) | every message, routing key = message name |
//! | queue | the subscription's name | one per subscription, bound once per message name |
//! | queues | `<subscription>.retry.<ms>` | delayed redelivery: a queue TTL, then dead-lettered back to the subscription's queue |
//! | direct exchange | `sagaflow.dead` | dead letters, routing key = subscription |
//! | queue | `<subscription>.dead` | the subscription's dead letters, each with its reason header |
//!
//! Guarantees: messages are persistent and `publish` returns only after the broker's publisher
//! confirm, so the engine removes an outbox entry only once RabbitMQ holds the message. Every
//! publish is `mandatory`: one that no queue is bound to is returned by the broker, and
//! `publish` fails with [`BusError::Unroutable`] instead of reporting a confirm for a message
//! nobody will get (the outbox keeps it and tries again).
//! Deliveries are acked manually, after the engine's commit is durable; a channel or
//! connection that dies with unacked deliveries has them requeued by the broker. A nack
//! republishes the message (with its attempt count) to the retry queue whose TTL is the first
//! at or above the delay, then acks the original: RabbitMQ without plugins cannot delay a
//! message by an arbitrary time, and per-message TTLs would block behind each other in one
//! queue. Dead-lettering republishes to the dead-letter exchange with the reason, then acks.
//! Each consumer has its own channel with a prefetch limit. Connections recover on their own
//! (lapin's auto-recovery, with backoff), redeclaring the topology and the consumers.
//! [`Bus::subscribe_exclusive`] consumes with AMQP's `exclusive` flag: the broker then refuses
//! any other consumer on the queue while this one lives (and this one while another lives).
//!
//! Message ids: ours travel as the `message-id` property. A message from a foreign producer
//! without one (and, in eShop mode, without an `Id` in its body) is given an id when it is first
//! received: the transport republishes it to its queue with a fresh id and acks the original,
//! so that a redelivery keeps the id and two equal publishes stay two messages. A crash between
//! the republish and the ack delivers that message twice under two ids; producers that set a
//! `message-id` never see this.
//!
//! Ordering: per queue, in publication order, except that nacked messages come back later.
//! Credentials in the URL are never logged; `amqps://` URLs use TLS (rustls).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use uuid::Uuid;

use super::{Acker, Bus, BusError, Consumer, DeadLetter, Delivery, DeliveryStream};
use crate::message::{Envelope, Timestamp, headers};

const NAME: &str = "sagaflow-name";
const CREATED_AT: &str = "sagaflow-created-at";
const CAUSATION: &str = "sagaflow-causation-id";
const ATTEMPT: &str = "sagaflow-attempt";
const REASON: &str = "sagaflow-dead-reason";
/// When a dead letter was parked (ms since the epoch), beside its reason.
const DEAD_AT: &str = "sagaflow-dead-at";
const USER_HEADER: &str = "sagaflow-h-";

/// Retry queue delays, in milliseconds: a nack waits in the first one at or above its delay.
const RETRY_BUCKETS_MS: [u64; 13] =
    [50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000];

/// How a [`RabbitMqBus`] connects and names things.
///
/// ```
/// use saga_core::bus::RabbitMqOptions;
/// let options = RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f").exchange("orders").prefetch(32);
/// assert_eq!(options.redacted_url(), "amqp://***@127.0.0.1:5672/%2f");
/// ```
#[derive(Clone)]
pub struct RabbitMqOptions {
    url: String,
    exchange: String,
    dead_letter_exchange: String,
    prefetch: u16,
    namespace: Option<String>,
    eshop: bool,
    max_message_bytes: usize,
}

/// RabbitMQ's own default `max_message_size` since 4.0 (16 MiB).
const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The namespace of the ids derived from foreign `message-id`s that are not UUIDs.
const FOREIGN_IDS: Uuid = Uuid::from_u128(0x3c8e_51f4_9b1d_4f6a_a7e2_0d5b_6c91_e8a4);

/// How long a dropped consumer's channel stays open for the acks of deliveries in hand.
const CHANNEL_LINGER: Duration = Duration::from_secs(15);

/// How long an exclusive subscribe waits for a consumer that is going away (a runtime of this
/// process dropped a moment ago closes its channels in the background).
const EXCLUSIVE_WAIT: Duration = Duration::from_secs(3);

impl std::fmt::Debug for RabbitMqOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqOptions")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

impl RabbitMqOptions {
    /// Options for the broker at `url` (`amqp://` or `amqps://`).
    pub fn new(url: impl Into<String>) -> Self {
        RabbitMqOptions {
            url: url.into(),
            exchange: "sagaflow".into(),
            dead_letter_exchange: "sagaflow.dead".into(),
            prefetch: 64,
            namespace: None,
            eshop: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The eShopOnContainers wire format, so that a Rust service can join an eShop system:
    /// the direct exchange `eshop_event_bus` (not durable, as eShop declares it), routing key
    /// = event type name, and a JSON body carrying the event's `Id` and `CreationDate`. Give
    /// the message types eShop's names and `#[serde(rename_all = "PascalCase")]`.
    ///
    /// ```
    /// use saga_core::bus::RabbitMqOptions;
    /// let options = RabbitMqOptions::eshop("amqp://guest:guest@127.0.0.1:5672/%2f");
    /// # let _ = options;
    /// ```
    pub fn eshop(url: impl Into<String>) -> Self {
        let mut options = Self::new(url).exchange("eshop_event_bus");
        options.eshop = true;
        options
    }

    /// Puts every exchange and queue of this bus under `namespace` (`<namespace>.sagaflow`,
    /// `<namespace>.<subscription>`), so that environments or test runs can share a broker.
    ///
    /// In eShop mode only sagaflow's own objects are prefixed (its queues and its dead-letter
    /// exchange): the `eshop_event_bus` exchange keeps its name, or publishes would reach no
    /// .NET service.
    ///
    /// ```
    /// use saga_core::bus::RabbitMqOptions;
    /// let options = RabbitMqOptions::eshop("amqp://guest:guest@127.0.0.1:5672/%2f").namespace("staging");
    /// assert_eq!(options.exchange_name(), "eshop_event_bus");
    /// assert_eq!(RabbitMqOptions::new("amqp://127.0.0.1").namespace("staging").exchange_name(), "staging.sagaflow");
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        if self.eshop {
            self.dead_letter_exchange = format!("{namespace}.{}.dead", self.exchange);
        } else {
            self.exchange = format!("{namespace}.{}", self.exchange);
            self.dead_letter_exchange = format!("{}.dead", self.exchange);
        }
        self.namespace = Some(namespace);
        self
    }

    /// The exchange messages are published to.
    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }

    /// The largest payload the broker takes (default 16 MiB, RabbitMQ's own `max_message_size`
    /// since 4.0): set it to the broker's value. The runtime refuses larger outgoing messages
    /// when they are committed.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The queue of a subscription.
    fn queue(&self, subscription: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}.{subscription}"),
            None => subscription.to_owned(),
        }
    }

    /// The exchange messages are published to (default `sagaflow`); the dead-letter exchange
    /// is named after it (`<exchange>.dead`).
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self.dead_letter_exchange = format!("{}.dead", self.exchange);
        self
    }

    /// How many unacked deliveries one consumer may hold (default 64).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The URL with its credentials hidden, for logs and errors.
    pub fn redacted_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &self.url[..scheme + 3], &self.url[at..]),
            _ => self.url.clone(),
        }
    }
}

fn transport(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Transport(format!("RabbitMQ {what}: {e}"))
}

struct Inner {
    connection: Connection,
    publisher: Channel,
    options: RabbitMqOptions,
}

/// A [`Bus`] on RabbitMQ. Cloning shares the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), saga_core::bus::BusError> {
/// use saga_core::bus::{RabbitMqBus, RabbitMqOptions};
/// let bus = RabbitMqBus::connect(RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f")).await?;
/// # let _ = bus; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RabbitMqBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitMqBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqBus").field("options", &self.inner.options).finish()
    }
}

impl RabbitMqBus {
    /// Connects (with automatic recovery) and declares the exchanges.
    pub async fn connect(options: RabbitMqOptions) -> Result<Self, BusError> {
        let properties = ConnectionProperties::default().with_connection_name("sagaflow".into()).enable_auto_recover();
        let connection = Connection::connect(&options.url, properties)
            .await
            .map_err(|e| transport(&format!("connection to {}", options.redacted_url()), e))?;
        let publisher = connection.create_channel().await.map_err(|e| transport("channel", e))?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| transport("confirm mode", e))?;
        // eShop declares its exchange non-durable; declaring it otherwise would be refused.
        let exchanges = [(&options.exchange, !options.eshop), (&options.dead_letter_exchange, true)];
        for (exchange, durable) in exchanges {
            publisher
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions { durable, ..ExchangeDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| transport(&format!("declaring exchange {exchange}"), e))?;
        }
        tracing::info!(url = %options.redacted_url(), exchange = %options.exchange, "connected to RabbitMQ");
        Ok(RabbitMqBus { inner: Arc::new(Inner { connection, publisher, options }) })
    }

    /// Publishes (mandatory) with a publisher confirm, retrying once the connection has recovered.
    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
        extra: FieldTable,
    ) -> Result<(), BusError> {
        let properties = properties(envelope, extra);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let sent = self
                .inner
                .publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                    &envelope.payload,
                    properties.clone(),
                )
                .await;
            let confirmed = match sent {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            };
            match confirmed {
                Ok(c) if c.is_ack() => {
                    return match c.take_message() {
                        // Confirmed, but returned first: no queue is bound to the routing key.
                        Some(_) => Err(BusError::Unroutable {
                            name: envelope.name.clone(),
                            detail: format!(
                                "RabbitMQ returned it: no queue is bound to routing key {routing_key:?} on exchange \
                                 {exchange:?} (has its consumer declared its queue yet?)"
                            ),
                        }),
                        None => Ok(()),
                    };
                }
                Ok(_) => return Err(transport("publish", "the broker refused the message (nack)")),
                Err(e) if attempts < 5 => {
                    tracing::warn!(
                        message_name = %envelope.name,
                        message_id = %envelope.message_id,
                        correlation_id = envelope.correlation_id.map(tracing::field::display),
                        error = %e,
                        "RabbitMQ publish failed, waiting for the connection to recover"
                    );
                    if self.inner.publisher.wait_for_recovery(e).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
                    }
                }
                Err(e) => return Err(transport("publish", e)),
            }
        }
    }

    /// Declares a subscription's queue and its dead-letter queue.
    async fn declare_subscription(&self, channel: &Channel, subscription: &str) -> Result<(), BusError> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let dead = format!("{subscription}.dead");
        for queue in [subscription, dead.as_str()] {
            channel
                .queue_declare(queue.into(), durable, FieldTable::default())
                .await
                .map_err(|e| transport(&format!("declaring queue {queue}"), e))?;
        }
        let options = &self.inner.options;
        channel
            .queue_bind(
                dead.as_str().into(),
                options.dead_letter_exchange.as_str().into(),
                subscription.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| transport("binding the dead-letter queue", e))?;
        Ok(())
    }

    /// Binds a subscription's queue to the names it consumes.
    async fn bind(&self, channel: &Channel, subscription: &str, names: &[&str]) -> Result<(), BusError> {
        let options = &self.inner.options;
        for name in names {
            channel
                .queue_bind(
                    subscription.into(),
                    options.exchange.as_str().into(),
                    (*name).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| transport(&format!("binding {subscription} to {name}"), e))?;
        }
        Ok(())
    }

    /// Declares a subscription's queue, consumes it on a channel of its own, and binds it.
    async fn consume(&self, subscription: &str, names: &[&str], exclusive: bool) -> Result<Consumer, BusError> {
        let channel = self.inner.connection.create_channel().await.map_err(|e| transport("channel", e))?;
        channel
            .basic_qos(self.inner.options.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| transport("prefetch", e))?;
        let queue = self.inner.options.queue(subscription);
        self.declare_subscription(&channel, &queue).await?;
        let options = BasicConsumeOptions { exclusive, ..BasicConsumeOptions::default() };
        let consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), options, FieldTable::default())
            .await
            .map_err(|e| {
                // The broker closes the channel with ACCESS_REFUSED when the queue has an
                // exclusive consumer, or when an exclusive consume finds other consumers.
                let text = e.to_string();
                if text.contains("ACCESS_REFUSED") || text.contains("exclusive") {
                    BusError::SubscriptionInUse {
                        subscription: subscription.to_owned(),
                        detail: format!("RabbitMQ refused to let this process consume queue {queue}: {text}"),
                    }
                } else {
                    transport(&format!("consuming {queue}"), e)
                }
            })?;
        // Bound only once the consumer is let in: a refused one changes no routing.
        self.bind(&channel, &queue, names).await?;
        Ok(Consumer::new(subscription, Box::new(RabbitStream { bus: self.clone(), channel, consumer, queue })))
    }

    /// The retry queue for `delay`, declared on first use.
    async fn retry_queue(&self, subscription: &str, delay: Duration) -> Result<String, BusError> {
        let wanted = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let bucket = RETRY_BUCKETS_MS.iter().copied().find(|b| *b >= wanted).unwrap_or(RETRY_BUCKETS_MS[12]);
        let queue = format!("{subscription}.retry.{bucket}");
        let mut arguments = FieldTable::default();
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(bucket as i64));
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(subscription.into()));
        // Unused retry queues go away on their own.
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt((bucket * 10 + 60_000) as i64));
        self.inner
            .publisher
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
                arguments,
            )
            .await
            .map_err(|e| transport(&format!("declaring retry queue {queue}"), e))?;
        Ok(queue)
    }
}

fn header_str(headers: &Option<FieldTable>, key: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_u64(headers: &Option<FieldTable>, key: &str) -> Option<u64> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

fn properties(e: &Envelope, mut table: FieldTable) -> BasicProperties {
    table.insert(NAME.into(), AMQPValue::LongString(e.name.as_str().into()));
    table.insert(CREATED_AT.into(), AMQPValue::LongLongInt(i64::try_from(e.created_at.0).unwrap_or(i64::MAX)));
    table.insert(ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(e.attempt)));
    if let Some(c) = e.causation_id {
        table.insert(CAUSATION.into(), AMQPValue::LongString(c.to_string().as_str().into()));
    }
    for (k, v) in &e.headers {
        let key = if headers::TRACE_CONTEXT.contains(&k.as_str()) { k.clone() } else { format!("{USER_HEADER}{k}") };
        table.insert(key.into(), AMQPValue::LongString(v.as_str().into()));
    }
    let mut p = BasicProperties::default()
        .with_message_id(e.message_id.to_string().into())
        .with_type(ShortString::from(e.name.as_str()))
        .with_delivery_mode(2)
        .with_timestamp(e.created_at.0 / 1000)
        .with_headers(table);
    if let Some(ct) = e.header(headers::CONTENT_TYPE) {
        p = p.with_content_type(ct.into());
    }
    if let Some(c) = e.correlation_id {
        p = p.with_correlation_id(c.to_string().into());
    }
    if let Some(r) = &e.reply_to {
        p = p.with_reply_to(r.as_str().into());
    }
    p
}

/// Rebuilds an envelope. A message from a foreign producer may lack our headers: its name is
/// the routing key; a `message-id` that is not a UUID ("order-42-created") becomes one derived
/// from it, the same on every redelivery; without a `message-id` it gets a fresh id (which the
/// consumer then makes last, see `RabbitStream::stamp`).
fn envelope(routing_key: &str, p: &BasicProperties, payload: Vec<u8>, redelivered: bool) -> Envelope {
    let parse = |s: &Option<ShortString>| s.as_ref().and_then(|v| Uuid::parse_str(v.as_str()).ok());
    let h = p.headers();
    let message_id = match p.message_id() {
        Some(id) => Uuid::parse_str(id.as_str()).unwrap_or_else(|_| Uuid::new_v5(&FOREIGN_IDS, id.as_str().as_bytes())),
        None => crate::message::new_message_id(),
    };
    let name = header_str(h, NAME)
        .or_else(|| p.kind().as_ref().map(|k| k.as_str().to_owned()))
        .unwrap_or_else(|| routing_key.to_owned());
    let mut user_headers = std::collections::BTreeMap::new();
    if let Some(table) = h {
        for (k, v) in table.inner() {
            if let (Some(key), AMQPValue::LongString(value)) = (k.as_str().strip_prefix(USER_HEADER), v) {
                user_headers.insert(key.to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
        }
    }
    for key in headers::TRACE_CONTEXT {
        if let Some(value) = header_str(h, key) {
            user_headers.insert(key.to_owned(), value);
        }
    }
    if let Some(ct) = p.content_type() {
        user_headers.entry(headers::CONTENT_TYPE.to_owned()).or_insert_with(|| ct.as_str().to_owned());
    }
    let attempt = header_u64(h, ATTEMPT).and_then(|a| u32::try_from(a).ok()).unwrap_or(1);
    Envelope {
        message_id,
        name,
        payload,
        created_at: Timestamp(header_u64(h, CREATED_AT).unwrap_or_else(|| p.timestamp().unwrap_or(0) * 1000)),
        correlation_id: parse(p.correlation_id()),
        causation_id: header_str(h, CAUSATION).and_then(|c| Uuid::parse_str(&c).ok()),
        reply_to: p.reply_to().as_ref().map(|r| r.as_str().to_owned()),
        headers: user_headers,
        attempt: attempt.saturating_add(u32::from(redelivered)),
    }
}

/// How many dead letters of a subscription a replay or discard looks through at most: the
/// dead-letter queue is read from its head, every message it passes is held until the end.
const DEAD_LETTER_SCAN: usize = 10_000;

impl RabbitMqBus {
    /// The next message of `subscription`'s dead-letter queue on `channel`, unacked (it goes
    /// back when the channel closes unless its acker acks it), or `None` at the end.
    async fn next_dead_letter(
        &self,
        channel: &Channel,
        subscription: &str,
    ) -> Result<Option<(lapin::Acker, DeadLetter)>, BusError> {
        let queue = format!("{}.dead", self.inner.options.queue(subscription));
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| transport(&format!("reading {queue}"), e))?;
        let Some(message) = got else { return Ok(None) };
        let d = message.delivery;
        let reason = header_str(d.properties.headers(), REASON).unwrap_or_default();
        let at = header_u64(d.properties.headers(), DEAD_AT).map_or_else(Timestamp::now, Timestamp);
        let envelope = envelope(&d.routing_key.to_string(), &d.properties, d.data, d.redelivered);
        Ok(Some((d.acker, DeadLetter { subscription: subscription.to_owned(), envelope, reason, at })))
    }

    /// Replays (to the subscription's queue, nowhere else) or discards the dead letters of
    /// `message_id`, among the first [`DEAD_LETTER_SCAN`] of the subscription.
    async fn settle_dead_letters(&self, subscription: &str, message_id: Uuid, replay: bool) -> Result<usize, BusError> {
        let channel = self.inner.connection.create_channel().await.map_err(|e| transport("channel", e))?;
        let queue = self.inner.options.queue(subscription);
        let mut settled = 0;
        let scan = async {
            for _ in 0..DEAD_LETTER_SCAN {
                let Some((acker, mut dead)) = self.next_dead_letter(&channel, subscription).await? else { break };
                if dead.envelope.message_id != message_id {
                    continue;
                }
                if replay {
                    dead.envelope.attempt = 1;
                    // Published before the ack: a lost ack leaves a dead copy, never no copy.
                    self.publish_to("", &queue, &dead.envelope, FieldTable::default()).await.map_err(|e| match e {
                        BusError::Unroutable { .. } => BusError::UnknownSubscription(subscription.to_owned()),
                        other => other,
                    })?;
                }
                acker.ack(BasicAckOptions::default()).await.map_err(|e| transport("settle a dead letter", e))?;
                settled += 1;
            }
            Ok(())
        }
        .await;
        let _ = channel.close(200, "dead letters settled".into()).await;
        scan.map(|()| settled)
    }
}

#[async_trait::async_trait]
impl Bus for RabbitMqBus {
    async fn publish(&self, mut envelope: Envelope) -> Result<(), BusError> {
        if self.inner.options.eshop {
            envelope.payload = eshop::body(&envelope)?;
        }
        let exchange = self.inner.options.exchange.clone();
        self.publish_to(&exchange, &envelope.name.clone(), &envelope, FieldTable::default()).await
    }

    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.consume(subscription, names, false).await
    }

    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        let deadline = tokio::time::Instant::now() + EXCLUSIVE_WAIT;
        loop {
            match self.consume(subscription, names, true).await {
                Err(BusError::SubscriptionInUse { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let channel = self.inner.connection.create_channel().await.map_err(|e| transport("channel", e))?;
        let mut out = Vec::new();
        let read = async {
            while out.len() < limit {
                let Some((_, dead)) = self.next_dead_letter(&channel, subscription).await? else { break };
                out.push(dead);
            }
            Ok(())
        }
        .await;
        // Closing the channel hands the unacked messages back to the queue.
        let _ = channel.close(200, "peeked".into()).await;
        read.map(|()| out)
    }

    async fn replay_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        self.settle_dead_letters(subscription, message_id, true).await
    }

    async fn discard_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        self.settle_dead_letters(subscription, message_id, false).await
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.inner.options.max_message_bytes)
    }

    fn connected(&self) -> Option<bool> {
        Some(self.inner.connection.status().connected())
    }

    async fn close(&self) -> Result<(), BusError> {
        // A connection that cannot close cleanly (it is reconnecting) is dropped anyway.
        if let Err(e) = self.inner.connection.close(200, "sagaflow shutting down".into()).await {
            tracing::debug!(error = %e, "RabbitMQ connection did not close cleanly");
        }
        Ok(())
    }

    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        let queue = self.inner.options.queue(subscription);
        self.inner
            .publisher
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| transport(&format!("deleting queue {queue}"), e))?;
        // Dead letters stay for an operator, unless there are none.
        let dead = format!("{queue}.dead");
        let _ = self
            .inner
            .publisher
            .queue_delete(dead.as_str().into(), QueueDeleteOptions { if_empty: true, ..QueueDeleteOptions::default() })
            .await;
        Ok(())
    }
}

struct RabbitStream {
    bus: RabbitMqBus,
    channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
}

impl Drop for RabbitStream {
    fn drop(&mut self) {
        // Cancel the consumer, so that an exclusive one lets go of its queue now rather than
        // when the connection closes. What the broker sent before the cancel and nobody took
        // (prefetched, or a message handed back while the cancel was on its way, which RabbitMQ
        // may redeliver to this very consumer) is requeued at once: waiting for the channel to
        // close would keep it from every other consumer for the linger. The channel stays open
        // a while so that deliveries in hand can still be acked (a graceful shutdown finishes
        // them), then closes.
        let (channel, mut consumer) = (self.channel.clone(), self.consumer.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.basic_cancel(consumer.tag(), lapin::options::BasicCancelOptions::default()).await;
                let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                let untaken = async {
                    while let Some(Ok(d)) = consumer.next().await {
                        let _ = d.acker.nack(requeue).await;
                    }
                };
                let _ = tokio::time::timeout(CHANNEL_LINGER, untaken).await;
                tokio::time::sleep(CHANNEL_LINGER).await;
                let _ = channel.close(200, "consumer dropped".into()).await;
            });
        }
    }
}

impl RabbitStream {
    /// Gives a foreign message without an id one that survives redelivery: republishes it to
    /// the queue with a fresh `message-id`, then acks the original (see the module docs).
    ///
    /// It runs as a task of its own, so that a consumer that stops waiting for its next delivery
    /// (the engine does when its store fails) cannot leave a message republished and unacked.
    async fn stamp(&self, envelope: &Envelope, acker: &lapin::Acker) -> Result<(), BusError> {
        let (bus, queue, envelope, acker) = (self.bus.clone(), self.queue.clone(), envelope.clone(), acker.clone());
        let stamping = tokio::spawn(async move {
            bus.publish_to("", &queue, &envelope, FieldTable::default()).await?;
            acker.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(|e| transport("ack", e))
        });
        stamping.await.map_err(|e| transport("giving a foreign message an id", e))?
    }
}

#[async_trait::async_trait]
impl DeliveryStream for RabbitStream {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.consumer.next().await? {
                Ok(d) => {
                    let mut envelope = envelope(d.routing_key.as_str(), &d.properties, d.data, d.redelivered);
                    let mut has_id = d.properties.message_id().is_some();
                    if self.bus.inner.options.eshop {
                        has_id |= eshop::adopt_metadata(&mut envelope, &d.properties);
                    }
                    if !has_id {
                        match self.stamp(&envelope, &d.acker).await {
                            Ok(()) => continue,
                            Err(e) => tracing::warn!(
                                queue = %self.queue,
                                message_name = %envelope.name,
                                error = %e,
                                "could not give a foreign message a lasting id; delivering it with a fresh one"
                            ),
                        }
                    }
                    let acker = RabbitAcker { bus: self.bus.clone(), acker: d.acker, queue: self.queue.clone() };
                    return Some(Delivery::new(envelope, Box::new(acker)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %self.queue, "RabbitMQ consumer error, waiting for recovery");
                    if self.channel.wait_for_recovery(e).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

struct RabbitAcker {
    bus: RabbitMqBus,
    acker: lapin::Acker,
    /// The subscription's queue.
    queue: String,
}

impl RabbitAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.acker.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(|e| transport("ack", e))
    }
}

#[async_trait::async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        RabbitAcker::ack(&self).await
    }

    async fn nack(self: Box<Self>, mut envelope: Envelope, delay: Duration) -> Result<(), BusError> {
        envelope.attempt = envelope.attempt.saturating_add(1);
        let queue = if delay.is_zero() { self.queue.clone() } else { self.bus.retry_queue(&self.queue, delay).await? };
        // Publish the copy first: if the ack is then lost, the message is redelivered twice,
        // which consumers deduplicate; the other order could lose it.
        self.bus.publish_to("", &queue, &envelope, FieldTable::default()).await?;
        RabbitAcker::ack(&self).await
    }

    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: String) -> Result<(), BusError> {
        let mut extra = FieldTable::default();
        extra.insert(REASON.into(), AMQPValue::LongString(LongString::from(reason.as_str())));
        let at = i64::try_from(Timestamp::now().0).unwrap_or(i64::MAX);
        extra.insert(DEAD_AT.into(), AMQPValue::LongLongInt(at));
        let exchange = self.bus.inner.options.dead_letter_exchange.clone();
        self.bus.publish_to(&exchange, &self.queue, &envelope, extra).await?;
        RabbitAcker::ack(&self).await
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = self.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
            });
        }
    }
}

/// RabbitMQ as a conformance target, from `SAGA_TEST_AMQP_URL`.
#[derive(Debug, Clone)]
pub struct RabbitMqTarget {
    bus: RabbitMqBus,
}

impl RabbitMqTarget {
    /// Connects to `SAGA_TEST_AMQP_URL`, or returns `None` (saying so) when it is not set.
    pub async fn from_env() -> Option<Self> {
        let Ok(url) = std::env::var("SAGA_TEST_AMQP_URL") else {
            super::conformance::say_skipped(
                "RabbitMQ suite",
                "SAGA_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f",
            );
            return None;
        };
        match RabbitMqBus::connect(RabbitMqOptions::new(url)).await {
            Ok(bus) => Some(RabbitMqTarget { bus }),
            Err(e) => panic!("SAGA_TEST_AMQP_URL is set but RabbitMQ is not reachable: {e}"),
        }
    }

    /// The connected bus.
    pub fn bus(&self) -> &RabbitMqBus {
        &self.bus
    }
}

#[async_trait::async_trait]
impl super::conformance::ConformanceTarget for RabbitMqTarget {
    async fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.bus.clone())
    }

    async fn clean_up(&self, _: &Arc<dyn Bus>, subscription: &str) {
        let dead = format!("{}.dead", self.bus.inner.options.queue(subscription));
        let _ = self.bus.inner.publisher.queue_delete(dead.as_str().into(), QueueDeleteOptions::default()).await;
    }
}

/// The eShopOnContainers wire format: `Id` and `CreationDate` inside the JSON body.
mod eshop {
    use lapin::BasicProperties;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    use uuid::Uuid;

    use super::{BusError, NAME, transport};
    use crate::message::{Envelope, Timestamp};

    /// The payload with `Id` and `CreationDate` set from the envelope.
    pub(super) fn body(envelope: &Envelope) -> Result<Vec<u8>, BusError> {
        let mut json: serde_json::Value = serde_json::from_slice(&envelope.payload)
            .map_err(|e| transport("eShop format", format!("{} is not JSON: {e}", envelope.name)))?;
        let Some(object) = json.as_object_mut() else {
            return Err(transport("eShop format", format!("{} is not a JSON object", envelope.name)));
        };
        let nanos = i128::from(envelope.created_at.0) * 1_000_000;
        let created = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .ok_or_else(|| transport("eShop format", "creation time out of range"))?;
        object.insert("Id".into(), envelope.message_id.to_string().into());
        object.insert("CreationDate".into(), created.into());
        serde_json::to_vec(&json).map_err(|e| transport("eShop format", e))
    }

    /// Takes the message id and creation time from the body of a message an eShop service
    /// published (it carries none of our headers); returns whether the body had an `Id`.
    /// The `Id` is the event's identity, as in eShop: a second message with the same `Id` is
    /// the same event, deduplicated whatever its body.
    pub(super) fn adopt_metadata(envelope: &mut Envelope, properties: &BasicProperties) -> bool {
        let ours = properties.headers().as_ref().is_some_and(|h| h.inner().contains_key(NAME));
        if ours {
            return false;
        }
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&envelope.payload) else { return false };
        let id = json.get("Id").and_then(|v| v.as_str()).and_then(|s| Uuid::parse_str(s).ok());
        if let Some(id) = id {
            envelope.message_id = id;
        }
        let created = json.get("CreationDate").and_then(|v| v.as_str()).and_then(|s| {
            // .NET writes seven fractional digits and may leave out the offset (UTC is meant).
            OffsetDateTime::parse(s, &Rfc3339).or_else(|_| OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339)).ok()
        });
        if let Some(t) = created {
            envelope.created_at = Timestamp(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
        }
        id.is_some()
    }
}
