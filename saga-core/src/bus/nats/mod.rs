//! The NATS JetStream transport (feature `nats`).
//!
//! [`NatsBus`] carries envelopes over JetStream: every publish is stored by the server before
//! it returns, every delivery is acked explicitly after the engine's commit, and what is not
//! acked comes back.
//!
//! # Topology
//!
//! With the default [`NatsOptions`] (prefix `sagaflow`):
//!
//! | what | name | purpose |
//! | --- | --- | --- |
//! | stream | `SAGAFLOW` | captures `sagaflow.msg.>`: every message; file storage, interest retention, discard new |
//! | subject | `sagaflow.msg.<name>` | one per message name (the name encoded, see below) |
//! | durable pull consumer | `<subscription>_<hash>_<name>_<hash>` | one per subscription and bound message name, filtered on that name's subject, explicit acks |
//! | stream | `SAGAFLOW_DEAD` | captures `sagaflow.dead.>`: dead letters; file storage, limits retention |
//! | subject | `sagaflow.dead.<subscription>` | a subscription's dead letters, each with a `sagaflow-dead-reason` header |
//! | key-value bucket | `SAGAFLOW_OWNERS` | who consumes each exclusive subscription (see `ownership`) |
//! | object store | `SAGAFLOW_PAYLOADS` | payloads too large for one NATS message (see `large`) |
//!
//! Both streams are created on [`NatsBus::connect`], or brought in line if they exist (their
//! subjects, retention, age limit and replicas; other settings an operator tuned are kept).
//!
//! A subscription is a set of durable consumers, one per message name bound to it. Every
//! [`Consumer`] returned by `subscribe` pulls from all of them, and consumers of one
//! subscription (in this process or another) compete: each message goes to one of them.
//! Different subscriptions have different durables, so each gets its own copy. One durable
//! per name rather than one durable with several filter subjects keeps the transport working
//! on nats-server 2.9, whose consumers filter a single subject; binding a new name to an
//! existing subscription simply adds its durable, and never removes another one. Interest
//! retention means a message is kept until every subscription bound to its name has acked it,
//! and that the stream drops a message no durable is bound to; so `publish` first checks that
//! some durable filters on the message's subject (from a listing of the stream's durables,
//! trusted for 30 s) and refuses it as [`BusError::Unroutable`] otherwise, and the outbox keeps
//! it and tries again. A durable removed within those 30 s can still lose a message.
//!
//! # Guarantees
//!
//! - **Publish is confirmed.** [`Bus::publish`] returns only once JetStream acknowledged that
//!   the stream stored the message. The message id travels as `Nats-Msg-Id`, so a publish
//!   retried after a lost confirmation (the outbox relay does that) is deduplicated by the
//!   server within the stream's duplicate window (two minutes by default).
//! - **Acked after the commit.** The engine acks a delivery after its effects are durable; the
//!   ack is a double ack by default (the server confirms it, [`NatsOptions::confirm_acks`]).
//!   A delivery that is not acked within `ack_wait` (the consumer crashed or hung) is delivered
//!   again. Delivery is at least once: consumers deduplicate on the message id.
//! - **Redelivery with a delay.** A nack is a JetStream `-NAK` with that delay; the next
//!   delivery carries the next attempt number (the JetStream delivery count). A delivery the
//!   engine keeps while it waits for its store is kept alive with `+WPI` (in progress), which
//!   restarts its `ack_wait`.
//! - **Large messages.** A payload over the server's `max_payload` travels through the object
//!   store (claim check), so the bus carries whatever the engine accepts.
//! - **Exclusive subscriptions.** [`Bus::subscribe_exclusive`] takes a claim on the
//!   subscription that another live process cannot take, and that a crashed one loses at once.
//! - **Dead letters** are copied to the dead-letter stream with their reason, and the copy is
//!   confirmed by the server before the original is terminated (`+TERM`). A message delivered
//!   [`NatsOptions::max_deliver`] times without being acked is dead-lettered with the reason
//!   "delivered N times without being acked", whether the last attempt was nacked or its
//!   consumer went away. [`Bus::dead_letters`] reads them back.
//! - **Malformed messages are not lost.** A message without sagaflow headers (published by
//!   another tool) is delivered with what can be inferred: its name from the subject, its id
//!   from `Nats-Msg-Id` or from its stream position, so the engine handles it or dead-letters
//!   it. A message whose sagaflow headers are present but unreadable is dead-lettered by the
//!   transport with the reason, and logged.
//! - **Reconnection.** async-nats reconnects on its own, with backoff and without limit; pull
//!   requests are renewed after a reconnect and a consumer whose stream of messages fails is
//!   reopened with backoff. Disconnections and reconnections are logged (`tracing`), with the
//!   server URL's credentials replaced by `***`.
//!
//! # Ordering
//!
//! Within one durable, JetStream delivers in stream order, but a nacked message comes back
//! after its delay, a message whose ack timed out comes back later, competing consumers
//! interleave, and names of one subscription are pulled independently. The engine does not
//! depend on order; nor should handlers.
//!
//! # Configuration
//!
//! [`NatsOptions`] holds the server URL (several comma-separated URLs for a cluster;
//! `nats://user:password@host` or `nats://token@host` for credentials, `tls://` for TLS), the
//! subject prefix and stream names (so several environments share a server), `ack_wait`
//! (longer than the slowest handler), `max_deliver`, the prefetch per consumer, and stream
//! limits. Consumer settings (`ack_wait`, `max_ack_pending`, `inactive_threshold`) are applied
//! to a subscription's durables whenever it is subscribed, so a redeployment with new values
//! takes effect, and processes sharing a subscription should agree on them.
//!
//! # Wire format
//!
//! The body is the payload. Everything else is in headers: `sagaflow-message-id`,
//! `sagaflow-name`, `sagaflow-created-at` (milliseconds since the epoch),
//! `sagaflow-correlation-id`, `sagaflow-causation-id`, `sagaflow-reply-to`, and each envelope
//! header `k` as `sagaflow-h-k`. Header values are percent-encoded where NATS could not carry
//! them (`%`, control characters, leading and trailing white space). Message names become one
//! or more subject tokens: `[A-Za-z0-9_-]` and inner single dots are kept, every other byte is
//! written `%XX`, so `ordering.order-paid` stays `ordering.order-paid` and `a b*` becomes
//! `a%20b%2A`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), saga_core::bus::BusError> {
//! use saga_core::bus::{Bus, NatsBus, NatsOptions};
//! use saga_core::message::Envelope;
//! let bus = NatsBus::connect(NatsOptions::new("nats://127.0.0.1:4222").prefix("shop")).await?;
//! let mut consumer = bus.subscribe("billing", &["ordering.order-paid"]).await?;
//! bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())).await?;
//! if let Some(delivery) = consumer.next().await {
//!     delivery.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::{PublishMessage as Publish, StreamMessage};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{Acker, Bus, BusError, Consumer, DeadLetter, Delivery, DeliveryStream};
use crate::message::{Envelope, Timestamp};

mod large;
mod ownership;

const H_MESSAGE_ID: &str = "sagaflow-message-id";
const H_NAME: &str = "sagaflow-name";
const H_CREATED_AT: &str = "sagaflow-created-at";
const H_CORRELATION_ID: &str = "sagaflow-correlation-id";
const H_CAUSATION_ID: &str = "sagaflow-causation-id";
const H_REPLY_TO: &str = "sagaflow-reply-to";
const H_USER_PREFIX: &str = "sagaflow-h-";
const H_ATTEMPT: &str = "sagaflow-attempt";
const H_DEAD_REASON: &str = "sagaflow-dead-reason";
const H_DEAD_SUBSCRIPTION: &str = "sagaflow-dead-subscription";
const H_DEAD_AT: &str = "sagaflow-dead-at";
const H_DEAD_SUBJECT: &str = "sagaflow-dead-subject";
const H_DEAD_SEQUENCE: &str = "sagaflow-dead-sequence";
/// On a replayed dead letter: the one subscription it is for. It is published on its name's
/// subject (a durable filters on one subject), so the other subscriptions bound to that name
/// get it too, and ack it unseen.
const H_REPLAY_FOR: &str = "sagaflow-replay-for";

/// How long one pull request waits on the server before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says an idle pull request is still alive.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// When a dead letter could not be stored, the original comes back after this long.
const RETRY_PARKING_AFTER: Duration = Duration::from_secs(5);
/// Namespace of the hashes in consumer names and of derived message ids.
const HASH_NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_f10e_4e75_4a1b_9b6c_7d2e_1f0a_3c44);

/// Settings of a [`NatsBus`], builder style.
///
/// ```
/// use std::time::Duration;
/// use saga_core::bus::NatsOptions;
/// let options = NatsOptions::new("nats://127.0.0.1:4222")
///     .prefix("shop")
///     .stream("SHOP")
///     .dead_letter_stream("SHOP_DEAD")
///     .ack_wait(Duration::from_secs(60))
///     .max_deliver(10)
///     .prefetch(16);
/// // Debug output never shows credentials.
/// let secret = NatsOptions::new("nats://app:s3cret@nats.internal:4222");
/// assert!(!format!("{secret:?}").contains("s3cret"));
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct NatsOptions {
    url: String,
    prefix: String,
    stream: String,
    dead_letter_stream: String,
    ack_wait: Duration,
    max_deliver: u32,
    prefetch: usize,
    max_ack_pending: i64,
    replicas: usize,
    max_age: Duration,
    dead_letter_max_age: Duration,
    inactive_threshold: Option<Duration>,
    request_timeout: Duration,
    connect_timeout: Duration,
    connection_name: Option<String>,
    credentials_file: Option<PathBuf>,
    confirm_acks: bool,
    large_payload_max_age: Duration,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("stream", &self.stream)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("prefetch", &self.prefetch)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("replicas", &self.replicas)
            .field("max_age", &self.max_age)
            .field("dead_letter_max_age", &self.dead_letter_max_age)
            .field("inactive_threshold", &self.inactive_threshold)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("connection_name", &self.connection_name)
            .field("credentials_file", &self.credentials_file)
            .field("confirm_acks", &self.confirm_acks)
            .field("large_payload_max_age", &self.large_payload_max_age)
            .finish()
    }
}

impl NatsOptions {
    /// Options for the server(s) at `url` (`nats://host:4222`, `tls://host:4222`, several
    /// separated by commas; `nats://user:password@host` or `nats://token@host` for
    /// credentials), with the defaults: prefix `sagaflow`, streams `SAGAFLOW` and
    /// `SAGAFLOW_DEAD`, `ack_wait` 30 s, `max_deliver` 20, prefetch 32, confirmed acks.
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222");
    /// # let _ = options;
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            prefix: "sagaflow".into(),
            stream: "SAGAFLOW".into(),
            dead_letter_stream: "SAGAFLOW_DEAD".into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            prefetch: 32,
            max_ack_pending: 1000,
            replicas: 1,
            max_age: Duration::ZERO,
            dead_letter_max_age: Duration::ZERO,
            inactive_threshold: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connection_name: None,
            credentials_file: None,
            confirm_acks: true,
            large_payload_max_age: Duration::from_secs(7 * 86_400),
        }
    }

    /// The first subject token(s) of every subject the bus uses (default `sagaflow`):
    /// messages go to `<prefix>.msg.<name>`, dead letters to `<prefix>.dead.<subscription>`.
    /// Give each environment sharing a server its own prefix and streams.
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").prefix("staging.shop");
    /// # let _ = options;
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The stream that stores messages (default `SAGAFLOW`).
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").stream("SHOP");
    /// # let _ = options;
    /// ```
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The stream that stores dead letters (default `SAGAFLOW_DEAD`).
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").dead_letter_stream("SHOP_DEAD");
    /// # let _ = options;
    /// ```
    pub fn dead_letter_stream(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_stream = name.into();
        self
    }

    /// How long a delivery may stay unsettled before the server delivers it again
    /// (default 30 s). Make it longer than the slowest handler, or handlers' work is duplicated.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").ack_wait(Duration::from_secs(120));
    /// # let _ = options;
    /// ```
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How many deliveries a message gets before it is dead-lettered as "delivered N times
    /// without being acked" (default 20, at least 1).
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").max_deliver(5);
    /// # let _ = options;
    /// ```
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// How many messages each consumer asks the server for at once, per bound name (default
    /// 32). Prefetched messages count against `ack_wait` while they wait to be handled.
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").prefetch(8);
    /// # let _ = options;
    /// ```
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// How many deliveries of one durable may be unacked at once, over all its consumers
    /// (default 1000); the server pauses delivery beyond it.
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").max_ack_pending(256);
    /// # let _ = options;
    /// ```
    pub fn max_ack_pending(mut self, max_ack_pending: u32) -> Self {
        self.max_ack_pending = i64::from(max_ack_pending);
        self
    }

    /// Replicas of the streams and consumers in a JetStream cluster (default 1, at most 5).
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://n1:4222,nats://n2:4222,nats://n3:4222").replicas(3);
    /// # let _ = options;
    /// ```
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// How long the message stream keeps a message nobody acked (default zero: forever).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").max_age(Duration::from_secs(7 * 86_400));
    /// # let _ = options;
    /// ```
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How long the dead-letter stream keeps a dead letter (default zero: until an operator
    /// removes it).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222")
    ///     .dead_letter_max_age(Duration::from_secs(30 * 86_400));
    /// # let _ = options;
    /// ```
    pub fn dead_letter_max_age(mut self, max_age: Duration) -> Self {
        self.dead_letter_max_age = max_age;
        self
    }

    /// Lets the server delete a subscription's durables after this long without any
    /// consumer (default: never). Useful for short-lived environments and tests; in
    /// production a subscription should outlive its consumers' downtime.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222")
    ///     .inactive_threshold(Duration::from_secs(3600));
    /// # let _ = options;
    /// ```
    pub fn inactive_threshold(mut self, threshold: Duration) -> Self {
        self.inactive_threshold = Some(threshold);
        self
    }

    /// How long to wait for the server to answer a JetStream request, publish confirmations
    /// and confirmed acks included (default 5 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").request_timeout(Duration::from_secs(10));
    /// # let _ = options;
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long [`NatsBus::connect`] tries to reach a server (default 5 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").connect_timeout(Duration::from_secs(2));
    /// # let _ = options;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The connection name the server shows in its monitoring (`connz`).
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").connection_name("billing-7f9c");
    /// # let _ = options;
    /// ```
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Authenticates with a NATS credentials file (JWT and NKey seed), as issued by `nsc`.
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("tls://connect.example.com:4222")
    ///     .credentials_file("/etc/sagaflow/app.creds");
    /// # let _ = options;
    /// ```
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Whether acks, nacks and terminations wait for the server's confirmation (default
    /// true). Without it an ack lost in a disconnection shows up later as a redelivery.
    ///
    /// ```
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222").confirm_acks(false);
    /// # let _ = options;
    /// ```
    pub fn confirm_acks(mut self, confirm: bool) -> Self {
        self.confirm_acks = confirm;
        self
    }

    /// How long the payload of a message too large for one NATS message is kept in the object
    /// store (default 7 days; see the module docs): make it longer than a message may wait
    /// unconsumed.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = saga_core::bus::NatsOptions::new("nats://127.0.0.1:4222")
    ///     .large_payload_max_age(Duration::from_secs(30 * 86_400));
    /// # let _ = options;
    /// ```
    pub fn large_payload_max_age(mut self, max_age: Duration) -> Self {
        self.large_payload_max_age = max_age;
        self
    }

    fn validate(&self) -> Result<(), BusError> {
        let invalid = |what: String| Err(BusError::Transport(format!("invalid NatsOptions: {what}")));
        if self.url.trim().is_empty() {
            return invalid("the server URL is empty".into());
        }
        if let Some(problem) = prefix_problem(&self.prefix) {
            return invalid(format!("subject prefix {:?} {problem}", self.prefix));
        }
        for name in [&self.stream, &self.dead_letter_stream] {
            if let Some(problem) = stream_name_problem(name) {
                return invalid(format!("stream name {name:?} {problem}"));
            }
        }
        if self.stream == self.dead_letter_stream {
            return invalid(format!("the message and dead-letter streams are both named {:?}", self.stream));
        }
        if self.ack_wait.is_zero() {
            return invalid("ack_wait is zero".into());
        }
        if self.max_deliver == 0 {
            return invalid("max_deliver is zero".into());
        }
        if self.prefetch == 0 {
            return invalid("prefetch is zero".into());
        }
        if self.replicas == 0 || self.replicas > 5 {
            return invalid(format!("replicas is {} (1 to 5)", self.replicas));
        }
        Ok(())
    }
}

/// A [`Bus`] on NATS JetStream (feature `nats`).
///
/// Topology, with the default [`NatsOptions`] (all created or brought in line on connect and
/// subscribe, all file-backed):
///
/// | what | name | purpose |
/// | --- | --- | --- |
/// | stream | `SAGAFLOW` | captures `sagaflow.msg.>`, interest retention: a message stays until every subscription bound to its name acked it |
/// | subject | `sagaflow.msg.<name>` | one per message name; `[A-Za-z0-9_-]` and inner dots kept, other bytes `%XX` |
/// | durable pull consumer | `<subscription>_<hash>_<name>_<hash>` | one per subscription and bound name, explicit acks; a subscription's consumers compete on it |
/// | stream | `SAGAFLOW_DEAD` | captures `sagaflow.dead.>` |
/// | subject | `sagaflow.dead.<subscription>` | a subscription's dead letters, with a `sagaflow-dead-reason` header |
///
/// Guarantees: `publish` returns once JetStream stored the message (`Nats-Msg-Id` = message id,
/// so a retried publish is deduplicated); deliveries are acked (confirmed) after the engine's
/// commit, and what is not acked within `ack_wait` is delivered again (at least once); a nack
/// is a `-NAK` with its delay; a dead letter is stored, confirmed, before the original is
/// terminated; a message delivered `max_deliver` times is dead-lettered; a message with
/// unreadable sagaflow headers is dead-lettered by the transport. async-nats reconnects on its
/// own and consumers resume. Order is not guaranteed (redeliveries, competing consumers).
///
/// Cloning gives another handle on the same connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), saga_core::bus::BusError> {
/// use saga_core::bus::{Bus, NatsBus, NatsOptions};
/// use saga_core::message::Envelope;
/// let bus = NatsBus::connect(NatsOptions::new("nats://127.0.0.1:4222")).await?;
/// let mut audit = bus.subscribe("audit", &["ordering.order-paid"]).await?;
/// bus.publish(Envelope::new("ordering.order-paid", b"{}".to_vec())).await?;
/// if let Some(delivery) = audit.next().await {
///     delivery.dead_letter("cannot audit this order").await?;
/// }
/// for dead in bus.dead_letters("audit", 100).await? {
///     println!("{} {}: {}", dead.envelope.name, dead.envelope.message_id, dead.reason);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.options.prefix)
            .field("stream", &self.inner.options.stream)
            .field("dead_letter_stream", &self.inner.options.dead_letter_stream)
            .finish_non_exhaustive()
    }
}

struct Inner {
    options: NatsOptions,
    /// The URL with its credentials replaced, for logs and errors.
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    dead: stream::Stream,
    /// Subscriptions with consumers in this process: set to true when unsubscribed.
    subscriptions: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Set to true by `close`.
    closed: watch::Sender<bool>,
    /// The subjects some durable consumes, as last listed.
    interest: Mutex<Interest>,
    owners: ownership::Owners,
    payloads: large::Payloads,
}

/// What the bus knows of the durables that take each subject: a message published to a
/// subject no durable filters on is dropped by the interest-retention stream, so `publish`
/// refuses it instead.
#[derive(Default)]
struct Interest {
    subjects: std::collections::HashSet<String>,
    listed: Option<std::time::Instant>,
}

/// How long a listing of the stream's durables is trusted for a subject it showed.
const INTEREST_FRESH: Duration = Duration::from_secs(30);
/// How soon a subject no durable took may be looked up again.
const INTEREST_RELIST: Duration = Duration::from_millis(250);

/// One message name bound to one subscription: one durable consumer.
struct Binding {
    subscription: String,
    name: String,
    durable: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays structurally valid if a holder panicked; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NatsBus {
    /// Connects to NATS and creates (or brings in line) the message and dead-letter streams.
    ///
    /// Fails if no server answers within the connect timeout, if the credentials are refused,
    /// or if JetStream is not available; the error says what to check. Once connected, the
    /// client reconnects on its own.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), saga_core::bus::BusError> {
    /// use saga_core::bus::{NatsBus, NatsOptions};
    /// let bus = NatsBus::connect(NatsOptions::new("nats://127.0.0.1:4222").prefix("shop").stream("SHOP")).await?;
    /// # let _ = bus;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(options: NatsOptions) -> Result<NatsBus, BusError> {
        options.validate()?;
        let url = redact_url(&options.url);
        let (servers, credentials) = split_servers(&options.url)
            .map_err(|e| BusError::Transport(format!("invalid NATS URL {url}: {e}; expected nats://host:4222")))?;

        let mut connect = async_nats::ConnectOptions::new();
        if let Some(path) = &options.credentials_file {
            connect = connect.credentials_file(path).await.map_err(|e| {
                BusError::Transport(format!(
                    "cannot read the NATS credentials file {}: {e}; check the path and its permissions",
                    path.display()
                ))
            })?;
        }
        connect = match credentials {
            Credentials::None => connect,
            Credentials::UserPassword(user, password) => connect.user_and_password(user, password),
            Credentials::Token(token) => connect.token(token),
        };
        if let Some(name) = &options.connection_name {
            connect = connect.name(name);
        }
        let events_url = url.clone();
        connect = connect
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            .event_callback(move |event| {
                let url = events_url.clone();
                async move { log_event(&url, event) }
            });

        let client = connect.connect(servers).await.map_err(|e| {
            BusError::Transport(format!(
                "cannot connect to NATS at {url}: {e}; check that nats-server is running and reachable there, \
                 and the URL's scheme, credentials and TLS settings"
            ))
        })?;
        let js = jetstream::ContextBuilder::new().timeout(options.request_timeout).build(client.clone());
        let stream = ensure_stream(&js, main_stream_config(&options), &url).await?;
        let dead = ensure_stream(&js, dead_stream_config(&options), &url).await?;
        tracing::info!(
            server = %url,
            prefix = %options.prefix,
            stream = %options.stream,
            dead_letter_stream = %options.dead_letter_stream,
            "NATS JetStream bus connected"
        );
        let (closed, _) = watch::channel(false);
        Ok(NatsBus {
            inner: Arc::new(Inner {
                options,
                url,
                client,
                js,
                stream,
                dead,
                subscriptions: Mutex::new(HashMap::new()),
                closed,
                interest: Mutex::default(),
                owners: ownership::Owners::default(),
                payloads: large::Payloads::default(),
            }),
        })
    }

    /// Removes every dead letter of `subscription` (after an operator replayed or discarded
    /// them), returning how many were removed.
    ///
    /// ```no_run
    /// # async fn demo(bus: saga_core::bus::NatsBus) -> Result<(), saga_core::bus::BusError> {
    /// let removed = bus.purge_dead_letters("billing").await?;
    /// # let _ = removed;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn purge_dead_letters(&self, subscription: &str) -> Result<u64, BusError> {
        let subject = self.inner.dead_subject(subscription)?;
        let purged = self.inner.dead.purge().filter(subject).await.map_err(|e| {
            BusError::Transport(format!(
                "cannot purge dead letters of {subscription:?} from stream {} at {}: {e}; check the connection to NATS",
                self.inner.options.dead_letter_stream, self.inner.url
            ))
        })?;
        Ok(purged.purged)
    }

    /// Creates the subscription's durables and pulls from them; `exclusive` first takes the
    /// subscription's claim (see `ownership`), a plain consumer checks that nobody holds one.
    async fn consume(&self, subscription: &str, names: &[&str], exclusive: bool) -> Result<Consumer, BusError> {
        if subscription.is_empty() {
            return Err(BusError::Transport("the subscription name is empty".into()));
        }
        if *self.inner.closed.borrow() {
            return Err(BusError::Closed);
        }
        let claim = if exclusive {
            Some(self.inner.claim(subscription).await?)
        } else {
            self.inner.check_not_owned(subscription).await?;
            None
        };
        let mut names: Vec<&str> = names.to_vec();
        names.sort_unstable();
        names.dedup();
        let mut bound = Vec::with_capacity(names.len());
        for name in names {
            let binding = Arc::new(Binding {
                subscription: subscription.to_owned(),
                name: name.to_owned(),
                durable: durable_name(subscription, name),
            });
            let consumer = self.inner.ensure_consumer(&binding).await?;
            bound.push((binding, consumer));
        }
        let closed = self.inner.register(subscription);
        let (tx, rx) = mpsc::channel(1);
        let pumps = bound
            .into_iter()
            .map(|(binding, consumer)| {
                tokio::spawn(pump(self.inner.clone(), binding, consumer, tx.clone(), closed.clone()))
            })
            .collect::<Vec<_>>();
        // With no name bound there is nothing to pump, yet the consumer lasts until closed.
        let idle = pumps.is_empty().then_some(tx);
        Ok(Consumer::new(
            subscription,
            Box::new(NatsDeliveries {
                rx,
                pumps,
                closed,
                bus_closed: self.inner.closed.subscribe(),
                _idle: idle,
                claim,
            }),
        ))
    }
}

fn log_event(url: &str, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => tracing::info!(server = %url, "NATS connection established"),
        Event::Disconnected => {
            tracing::warn!(server = %url, "NATS connection lost; reconnecting (publishes and acks wait or fail meanwhile)")
        }
        Event::LameDuckMode => {
            tracing::warn!(server = %url, "NATS server entering lame duck mode; the client will move to another server")
        }
        Event::Draining => tracing::info!(server = %url, "NATS connection draining"),
        Event::Closed => tracing::info!(server = %url, "NATS connection closed"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(server = %url, subscription_id = sid, "NATS slow consumer: messages were dropped by the client")
        }
        Event::ServerError(e) => tracing::warn!(server = %url, error = %e, "NATS server error"),
        // Every failed reconnection attempt reports one; the disconnection was logged already.
        Event::ClientError(async_nats::ClientError::Other(e)) => {
            tracing::debug!(server = %url, error = %e, "NATS reconnection attempt failed")
        }
        Event::ClientError(e) => tracing::error!(server = %url, error = %e, "NATS client error"),
    }
}

fn main_stream_config(o: &NatsOptions) -> stream::Config {
    stream::Config {
        name: o.stream.clone(),
        description: Some("sagaflow messages".into()),
        subjects: vec![format!("{}.msg.>", o.prefix)],
        retention: RetentionPolicy::Interest,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        num_replicas: o.replicas,
        max_age: o.max_age,
        ..Default::default()
    }
}

fn dead_stream_config(o: &NatsOptions) -> stream::Config {
    stream::Config {
        name: o.dead_letter_stream.clone(),
        description: Some("sagaflow dead letters".into()),
        subjects: vec![format!("{}.dead.>", o.prefix)],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        num_replicas: o.replicas,
        max_age: o.dead_letter_max_age,
        ..Default::default()
    }
}

/// Creates the stream, or updates the settings we own on an existing one (keeping the rest).
async fn ensure_stream(js: &jetstream::Context, wanted: stream::Config, url: &str) -> Result<stream::Stream, BusError> {
    let name = wanted.name.clone();
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        BusError::Transport(format!(
            "cannot {what} JetStream stream {name} at {url}: {e}; check that nats-server runs with JetStream \
             enabled (-js), that the account may use JetStream, and that no other stream captures {:?}",
            wanted.subjects
        ))
    };
    // Two processes may race to create it: the loser finds it on its second look.
    for look in 0..2 {
        match js.get_stream(&name).await {
            Ok(existing) => {
                let current = existing.cached_info().config.clone();
                let mut next = current.clone();
                for subject in &wanted.subjects {
                    if !next.subjects.contains(subject) {
                        next.subjects.push(subject.clone());
                    }
                }
                if next.retention != wanted.retention {
                    tracing::warn!(stream = %name, from = ?next.retention, to = ?wanted.retention, "changing the retention of an existing stream");
                    next.retention = wanted.retention;
                }
                next.max_age = wanted.max_age;
                next.num_replicas = wanted.num_replicas;
                if next.storage != wanted.storage {
                    tracing::warn!(stream = %name, storage = ?next.storage, "the stream uses another storage than file; keeping it");
                }
                if next != current {
                    js.update_stream(next).await.map_err(|e| failed("update", &e))?;
                    tracing::info!(stream = %name, "updated the JetStream stream's settings");
                }
                return Ok(existing);
            }
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND) => {
                match js.create_stream(wanted.clone()).await {
                    Ok(created) => {
                        tracing::info!(stream = %name, subjects = ?wanted.subjects, "created the JetStream stream");
                        return Ok(created);
                    }
                    Err(e) if look == 0 => {
                        tracing::debug!(stream = %name, error = %e, "stream creation raced; looking again")
                    }
                    Err(e) => return Err(failed("create", &e)),
                }
            }
            Err(e) => return Err(failed("look up", &e)),
        }
    }
    Err(BusError::Transport(format!("cannot create or find JetStream stream {name} at {url}")))
}

impl Inner {
    fn msg_subject(&self, name: &str) -> Result<String, BusError> {
        if name.is_empty() {
            return Err(BusError::Transport("the message name is empty: every message needs a name".into()));
        }
        Ok(format!("{}.msg.{}", self.options.prefix, subject_token(name)))
    }

    fn dead_subject(&self, subscription: &str) -> Result<String, BusError> {
        if subscription.is_empty() {
            return Err(BusError::Transport("the subscription name is empty".into()));
        }
        Ok(format!("{}.dead.{}", self.options.prefix, subject_token(subscription)))
    }

    /// The name a message subject carries, if it is one of ours.
    fn name_of_subject(&self, subject: &str) -> Option<Result<String, String>> {
        let rest = subject.strip_prefix(&self.options.prefix)?.strip_prefix(".msg.")?;
        Some(decode_subject_token(rest))
    }

    fn register(&self, subscription: &str) -> watch::Receiver<bool> {
        let mut subscriptions = lock(&self.subscriptions);
        let sender = subscriptions.entry(subscription.to_owned()).or_insert_with(|| watch::channel(false).0);
        sender.subscribe()
    }

    fn deregister(&self, subscription: &str) -> bool {
        match lock(&self.subscriptions).remove(subscription) {
            Some(sender) => {
                sender.send_replace(true);
                true
            }
            None => false,
        }
    }

    async fn ensure_consumer(&self, binding: &Binding) -> Result<PullConsumer, BusError> {
        let config = pull::Config {
            durable_name: Some(binding.durable.clone()),
            description: Some(format!("sagaflow subscription {:?} consuming {:?}", binding.subscription, binding.name)),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.options.ack_wait,
            // The limit is enforced here, so that a message over it is dead-lettered rather
            // than left unacked in the stream by the server; see `receive`.
            max_deliver: -1,
            filter_subject: self.msg_subject(&binding.name)?,
            max_ack_pending: self.options.max_ack_pending,
            inactive_threshold: self.options.inactive_threshold.unwrap_or_default(),
            num_replicas: self.options.replicas,
            ..Default::default()
        };
        let subject = config.filter_subject.clone();
        let consumer = self.stream.create_consumer(config).await.map_err(|e| {
            BusError::Transport(format!(
                "cannot create durable consumer {} on stream {} at {} for subscription {:?} and message {:?}: {e}; \
                 check the connection to NATS, and if the durable exists with another configuration, delete it \
                 (`nats consumer rm {} {}`) or align the options",
                binding.durable,
                self.options.stream,
                self.url,
                binding.subscription,
                binding.name,
                self.options.stream,
                binding.durable
            ))
        })?;
        lock(&self.interest).subjects.insert(subject);
        Ok(consumer)
    }

    /// Whether some durable takes `subject`, from a listing of the stream's durables that is at
    /// most [`INTEREST_FRESH`] old (a durable removed since may still count).
    async fn has_interest(&self, subject: &str) -> Result<bool, BusError> {
        {
            let interest = lock(&self.interest);
            let age = interest.listed.map(|at| at.elapsed());
            let known = interest.subjects.iter().any(|filter| subject_matches(filter, subject));
            match age {
                Some(age) if known && age < INTEREST_FRESH => return Ok(true),
                Some(age) if !known && age < INTEREST_RELIST => return Ok(false),
                _ => {}
            }
        }
        let mut subjects = std::collections::HashSet::new();
        let mut consumers = self.stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| {
                BusError::Transport(format!(
                    "cannot list the durable consumers of stream {} at {}: {e}; check the connection to NATS",
                    self.options.stream, self.url
                ))
            })?;
            // No filter at all (neither form) takes the whole stream: the empty filter.
            if info.config.filter_subjects.is_empty() {
                subjects.insert(info.config.filter_subject);
            } else {
                subjects.extend(info.config.filter_subjects);
            }
        }
        let mut interest = lock(&self.interest);
        let known = subjects.iter().any(|filter| subject_matches(filter, subject));
        *interest = Interest { subjects, listed: Some(std::time::Instant::now()) };
        Ok(known)
    }

    /// Opens a stream of messages on a durable; `None` if the durable is gone.
    async fn open(
        &self,
        binding: &Binding,
        consumer: &PullConsumer,
        check: bool,
    ) -> Result<Option<pull::Stream>, String> {
        if check {
            match self.stream.consumer_info(&binding.durable).await {
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(format!("cannot look up durable {}: {e}", binding.durable)),
            }
        }
        consumer
            .stream()
            .max_messages_per_batch(self.options.prefetch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map(Some)
            .map_err(|e| format!("cannot pull from durable {}: {e}", binding.durable))
    }

    /// Turns a received message into a delivery, or parks it if it cannot be one.
    async fn receive(self: &Arc<Self>, binding: &Arc<Binding>, message: jetstream::Message) -> Option<Delivery> {
        let (delivered, sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(e) => {
                tracing::error!(
                    subscription = %binding.subscription,
                    subject = %message.subject,
                    error = %e,
                    "received a message without JetStream metadata; it cannot be acked and is ignored"
                );
                return None;
            }
        };
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        let (raw, acker) = message.split();
        if let Some(target) = header(raw.headers.as_ref(), H_REPLAY_FOR) {
            if decode_value(target).ok().as_deref() != Some(binding.subscription.as_str()) {
                if let Err(e) = acker.ack_with(AckKind::Ack).await {
                    tracing::debug!(error = %e, "could not ack another subscription's replay; it comes back");
                }
                return None;
            }
        }
        let acker = NatsAcker {
            inner: self.clone(),
            binding: binding.clone(),
            acker,
            sequence,
            subject: raw.subject.to_string(),
        };
        let fallback_id = Uuid::new_v5(&HASH_NAMESPACE, format!("{}:{sequence}", self.options.stream).as_bytes());
        let payload = match self.check_out(raw.headers.as_ref(), &raw.payload).await {
            Ok(payload) => Ok(payload),
            Err(large::CheckOut::Missing(reason)) => Err(reason),
            Err(large::CheckOut::Unavailable(reason)) => {
                tracing::warn!(
                    subscription = %binding.subscription,
                    subject = %raw.subject,
                    sequence,
                    %reason,
                    "cannot fetch a large message's payload now; it comes back in {RETRY_PARKING_AFTER:?}"
                );
                if let Err(e) = acker.acker.ack_with(AckKind::Nak(Some(RETRY_PARKING_AFTER))).await {
                    tracing::debug!(error = %e, "nak failed too; the server redelivers after ack_wait");
                }
                return None;
            }
        };
        let decoded = payload.and_then(|payload| {
            decode_envelope(raw.headers.as_ref(), &payload, self.name_of_subject(&raw.subject), fallback_id)
                .map_err(|problem| format!("malformed sagaflow metadata: {problem}"))
        });
        use crate::engine::metrics::{DeadLetterClass, dead_lettered};
        let (headers, payload, reason) = match decoded {
            Ok(mut envelope) => {
                envelope.attempt = attempt;
                if attempt <= self.options.max_deliver {
                    return Some(Delivery::new(envelope, Box::new(acker)));
                }
                let reason = exhausted(self.options.max_deliver);
                tracing::warn!(
                    subscription = %binding.subscription,
                    message_name = %envelope.name,
                    message_id = %envelope.message_id,
                    correlation_id = envelope.correlation_id.map(tracing::field::display),
                    %reason,
                    "dead-lettering a message that keeps coming back"
                );
                dead_lettered(&binding.subscription, DeadLetterClass::GaveUp);
                match envelope_headers(&envelope) {
                    Ok(headers) => (headers, envelope.payload, reason),
                    Err(e) => (copy_headers(raw.headers.as_ref()), raw.payload.to_vec(), format!("{reason} ({e})")),
                }
            }
            Err(reason) => {
                tracing::warn!(
                    subscription = %binding.subscription,
                    subject = %raw.subject,
                    sequence,
                    %reason,
                    "dead-lettering a message that cannot be read"
                );
                dead_lettered(&binding.subscription, DeadLetterClass::Rejected);
                (copy_headers(raw.headers.as_ref()), raw.payload.to_vec(), reason)
            }
        };
        if let Err(e) = acker.park(headers, payload, &reason, attempt).await {
            tracing::error!(
                subscription = %binding.subscription,
                subject = %acker.subject,
                sequence,
                error = %e,
                "could not dead-letter a message; it comes back in {RETRY_PARKING_AFTER:?}"
            );
            if let Err(e) = acker.acker.ack_with(AckKind::Nak(Some(RETRY_PARKING_AFTER))).await {
                tracing::debug!(error = %e, "nak failed too; the server redelivers after ack_wait");
            }
        }
        None
    }

    fn read_dead_letter(&self, subscription: &str, message: &StreamMessage) -> DeadLetter {
        let headers = Some(&message.headers);
        let reason = header(headers, H_DEAD_REASON)
            .and_then(|v| decode_value(v).ok())
            .unwrap_or_else(|| "(no reason recorded)".to_owned());
        let at = header(headers, H_DEAD_AT).and_then(|v| v.parse().ok()).map_or_else(Timestamp::now, Timestamp);
        let original_subject = header(headers, H_DEAD_SUBJECT).and_then(|v| decode_value(v).ok());
        let subject_name = original_subject.as_deref().and_then(|s| self.name_of_subject(s));
        let fallback_id = Uuid::new_v5(
            &HASH_NAMESPACE,
            format!("{}:{}", self.options.dead_letter_stream, message.sequence).as_bytes(),
        );
        let envelope =
            decode_envelope(headers, &message.payload, subject_name.clone(), fallback_id).unwrap_or_else(|_| {
                // Parked because it could not be read: show it as well as it can be.
                let name = match subject_name {
                    Some(Ok(name)) => name,
                    _ => original_subject.unwrap_or_default(),
                };
                let mut envelope = Envelope::new(name, message.payload.to_vec());
                envelope.message_id = fallback_id;
                envelope
            });
        DeadLetter { subscription: subscription.to_owned(), envelope, reason, at }
    }
}

/// Whether a consumer filtering on `filter` takes `subject` (an empty filter takes the whole
/// stream; `*` matches one token, a trailing `>` the rest).
fn subject_matches(filter: &str, subject: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let (mut f, mut s) = (filter.split('.'), subject.split('.'));
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn exhausted(max_deliver: u32) -> String {
    format!("delivered {max_deliver} times without being acked")
}

/// A dead letter sent back to the one subscription it came from.
struct Replay<'a> {
    subscription: &'a str,
    /// Its position in the dead-letter stream, which makes its publish id: the message's own
    /// id would be deduplicated by the server within the duplicate window.
    dead_sequence: u64,
}

impl NatsBus {
    /// Replays (to that subscription only) or discards `subscription`'s dead letters of
    /// `message_id`.
    async fn settle_dead_letters(&self, subscription: &str, message_id: Uuid, replay: bool) -> Result<usize, BusError> {
        let inner = &self.inner;
        if replay {
            let durables = durable_prefix(subscription);
            let mut names = inner.stream.consumer_names();
            let mut bound = false;
            while let Some(name) = names.next().await {
                bound |= name.is_ok_and(|n| n.starts_with(&durables));
            }
            if !bound {
                return Err(BusError::UnknownSubscription(subscription.to_owned()));
            }
        }
        let failed = |e: &dyn std::fmt::Display| {
            BusError::Transport(format!(
                "cannot settle dead letters of {subscription:?} in stream {} at {}: {e}; \
                 check that the stream exists and the connection to NATS",
                inner.options.dead_letter_stream, inner.url
            ))
        };
        let subject = inner.dead_subject(subscription)?;
        let (mut settled, mut sequence) = (0, 1);
        loop {
            let request = inner.dead.raw_message_builder().sequence(sequence).next_by_subject(subject.clone());
            let message = match request.send().await {
                Ok(message) => message,
                Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => return Ok(settled),
                Err(e) => return Err(failed(&e)),
            };
            sequence = message.sequence.saturating_add(1);
            let mut dead = inner.read_dead_letter(subscription, &message);
            if dead.envelope.message_id != message_id {
                continue;
            }
            if replay {
                dead.envelope.payload =
                    inner.check_out(Some(&message.headers), &message.payload).await.map_err(|e| match e {
                        large::CheckOut::Missing(reason) | large::CheckOut::Unavailable(reason) => failed(&reason),
                    })?;
                dead.envelope.attempt = 1;
                let to = Replay { subscription, dead_sequence: message.sequence };
                self.publish_envelope(dead.envelope, Some(to)).await?;
            }
            inner.dead.delete_message(message.sequence).await.map_err(|e| failed(&e))?;
            settled += 1;
        }
    }

    async fn publish_envelope(&self, mut envelope: Envelope, replay: Option<Replay<'_>>) -> Result<(), BusError> {
        let inner = &self.inner;
        if *inner.closed.borrow() {
            return Err(BusError::Closed);
        }
        let subject = inner.msg_subject(&envelope.name)?;
        if !inner.has_interest(&subject).await? {
            return Err(BusError::Unroutable {
                name: envelope.name,
                detail: format!(
                    "no durable consumer of stream {} filters on {subject}, and the stream keeps a message only \
                     for the consumers it has (has its consumer subscribed yet?)",
                    inner.options.stream
                ),
            });
        }
        let mut headers = envelope_headers(&envelope)
            .map_err(|e| BusError::Transport(format!("cannot publish message {}: {e}", envelope.message_id)))?;
        let id = match &replay {
            Some(replay) => {
                put(&mut headers, H_REPLAY_FOR, replay.subscription).map_err(BusError::Transport)?;
                format!("{}:replay:{}", envelope.message_id, replay.dead_sequence)
            }
            None => envelope.message_id.to_string(),
        };
        insert(&mut headers, async_nats::header::NATS_MESSAGE_ID, &id);
        insert(&mut headers, async_nats::header::NATS_EXPECTED_STREAM, &inner.options.stream);
        let (name, payload) = (envelope.name.clone(), std::mem::take(&mut envelope.payload));
        let body = inner.check_in(&mut headers, &id, payload).await?;
        let publish = Publish::build().payload(body.into()).headers(headers);
        let failed = |e: &dyn std::fmt::Display, kind: Option<PublishErrorKind>| {
            let hint = match kind {
                Some(PublishErrorKind::StreamNotFound) => format!(
                    "stream {} does not capture {subject}: it is created on connect; was it deleted or changed?",
                    inner.options.stream
                ),
                Some(PublishErrorKind::TimedOut) => format!(
                    "the server did not confirm within {:?}; the message may or may not be stored, and \
                     publishing it again is safe (deduplicated on its id); check the connection to NATS",
                    inner.options.request_timeout
                ),
                Some(PublishErrorKind::MaxPayloadExceeded) => {
                    "the message exceeds the server's max_payload; raise it or send smaller messages".to_owned()
                }
                _ => "check the connection to NATS and the stream's limits".to_owned(),
            };
            BusError::Transport(format!(
                "publishing {} ({}) to {subject} at {} failed: {e}; {hint}",
                envelope.name, envelope.message_id, inner.url
            ))
        };
        let refused = |e: &dyn std::fmt::Display, kind: PublishErrorKind| match kind {
            PublishErrorKind::MaxPayloadExceeded => {
                BusError::Refused { name: name.clone(), reason: format!("{}", failed(e, Some(kind))) }
            }
            other => failed(e, Some(other)),
        };
        let confirmation = inner.js.send_publish(subject.clone(), publish).await.map_err(|e| refused(&e, e.kind()))?;
        let ack = confirmation.await.map_err(|e| refused(&e, e.kind()))?;
        if ack.duplicate {
            tracing::debug!(message_name = %envelope.name, message_id = %envelope.message_id, "already stored; deduplicated");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.publish_envelope(envelope, None).await
    }

    async fn replay_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        self.settle_dead_letters(subscription, message_id, true).await
    }

    async fn discard_dead_letter(&self, subscription: &str, message_id: Uuid) -> Result<usize, BusError> {
        self.settle_dead_letters(subscription, message_id, false).await
    }

    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.consume(subscription, names, false).await
    }

    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.consume(subscription, names, true).await
    }

    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        let inner = &self.inner;
        let local = inner.deregister(subscription);
        // Its durables go: the next publish must look again rather than trust the listing.
        lock(&inner.interest).listed = None;
        let prefix = durable_prefix(subscription);
        let failed = |e: &dyn std::fmt::Display| {
            BusError::Transport(format!(
                "cannot remove the durable consumers of {subscription:?} from stream {} at {}: {e}; \
                 check the connection to NATS and retry",
                inner.options.stream, inner.url
            ))
        };
        let mut durables = Vec::new();
        let mut names = inner.stream.consumer_names();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| failed(&e))?;
            if name.starts_with(&prefix) {
                durables.push(name);
            }
        }
        for durable in &durables {
            match inner.stream.delete_consumer(durable).await {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(ref err) if err.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
                    {}
                Err(e) => return Err(failed(&e)),
            }
        }
        if !local && durables.is_empty() {
            return Err(BusError::UnknownSubscription(subscription.to_owned()));
        }
        tracing::debug!(subscription, removed = durables.len(), "unsubscribed");
        Ok(())
    }

    fn connected(&self) -> Option<bool> {
        Some(self.inner.client.connection_state() == async_nats::connection::State::Connected)
    }

    async fn close(&self) -> Result<(), BusError> {
        self.inner.closed.send_replace(true);
        self.inner
            .client
            .drain()
            .await
            .map_err(|e| BusError::Transport(format!("closing the NATS connection to {} failed: {e}", self.inner.url)))
    }

    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let subject = self.inner.dead_subject(subscription)?;
        let mut found = Vec::new();
        let mut sequence = 1;
        while found.len() < limit {
            let request = self.inner.dead.raw_message_builder().sequence(sequence).next_by_subject(subject.clone());
            match request.send().await {
                Ok(message) => {
                    sequence = message.sequence.saturating_add(1);
                    let mut dead = self.inner.read_dead_letter(subscription, &message);
                    if let Ok(payload) = self.inner.check_out(Some(&message.headers), &message.payload).await {
                        dead.envelope.payload = payload;
                    }
                    found.push(dead);
                }
                Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => break,
                Err(e) => {
                    return Err(BusError::Transport(format!(
                        "cannot read dead letters of {subscription:?} from stream {} at {}: {e}; \
                         check that the stream exists and the connection to NATS",
                        self.inner.options.dead_letter_stream, self.inner.url
                    )));
                }
            }
        }
        Ok(found)
    }
}

/// Pulls from one durable into a consumer's channel, reopening what fails, until the
/// subscription or the bus is closed, the durable is deleted, or the consumer is dropped.
async fn pump(
    inner: Arc<Inner>,
    binding: Arc<Binding>,
    consumer: PullConsumer,
    tx: mpsc::Sender<Delivery>,
    mut closed: watch::Receiver<bool>,
) {
    let mut bus_closed = inner.closed.subscribe();
    let mut backoff = Backoff::default();
    let mut check = false;
    loop {
        match inner.open(&binding, &consumer, check).await {
            Ok(Some(mut messages)) => loop {
                let item = tokio::select! {
                    biased;
                    _ = closed_signal(&mut closed) => return,
                    _ = closed_signal(&mut bus_closed) => return,
                    item = messages.next() => item,
                };
                match item {
                    Some(Ok(message)) => {
                        backoff = Backoff::default();
                        if let Some(delivery) = inner.receive(&binding, message).await {
                            tokio::select! {
                                sent = tx.send(delivery) => if sent.is_err() { return },
                                _ = closed_signal(&mut closed) => return,
                            }
                        }
                    }
                    Some(Err(e)) => match e.kind() {
                        MessagesErrorKind::ConsumerDeleted => {
                            tracing::info!(subscription = %binding.subscription, durable = %binding.durable, "durable consumer deleted; its consumers end");
                            return;
                        }
                        MessagesErrorKind::PushBasedConsumer | MessagesErrorKind::RequestLimitExceeded => {
                            tracing::error!(
                                subscription = %binding.subscription,
                                durable = %binding.durable,
                                error = %e,
                                "cannot pull from this durable: it was reconfigured outside sagaflow; delete it and subscribe again"
                            );
                            return;
                        }
                        _ => {
                            tracing::warn!(subscription = %binding.subscription, durable = %binding.durable, error = %e, "pulling failed; reopening");
                            break;
                        }
                    },
                    None => {
                        if *bus_closed.borrow() {
                            return;
                        }
                        tracing::warn!(subscription = %binding.subscription, durable = %binding.durable, "message stream ended; reopening");
                        break;
                    }
                }
            },
            Ok(None) => {
                tracing::info!(subscription = %binding.subscription, durable = %binding.durable, "durable consumer is gone; its consumers end");
                return;
            }
            Err(e) => {
                tracing::warn!(subscription = %binding.subscription, error = %e, "cannot open the durable; retrying");
            }
        }
        check = true;
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = closed_signal(&mut closed) => return,
            _ = closed_signal(&mut bus_closed) => return,
        }
    }
}

/// Resolves once the flag is set (or its sender is gone, which only happens on teardown).
async fn closed_signal(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|closed| *closed).await;
}

#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(100u64.saturating_mul(1 << self.0.min(6))).min(Duration::from_secs(5));
        self.0 = self.0.saturating_add(1);
        delay
    }
}

struct NatsDeliveries {
    rx: mpsc::Receiver<Delivery>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    closed: watch::Receiver<bool>,
    bus_closed: watch::Receiver<bool>,
    _idle: Option<mpsc::Sender<Delivery>>,
    /// An exclusive consumer's claim on its subscription, given up with the consumer; the
    /// consumer ends if the claim is lost.
    claim: Option<ownership::Claim>,
}

impl Drop for NatsDeliveries {
    fn drop(&mut self) {
        // Deliveries still in the channel are dropped with it, which hands them back (nak).
        for pump in &self.pumps {
            pump.abort();
        }
    }
}

#[async_trait::async_trait]
impl DeliveryStream for NatsDeliveries {
    async fn next(&mut self) -> Option<Delivery> {
        if *self.closed.borrow() || *self.bus_closed.borrow() {
            return None;
        }
        let mut lost = self.claim.as_ref().map(|c| c.lost.clone());
        let claim_lost = async {
            match &mut lost {
                Some(lost) => closed_signal(lost).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = closed_signal(&mut self.closed) => None,
            _ = closed_signal(&mut self.bus_closed) => None,
            () = claim_lost => None,
            delivery = self.rx.recv() => delivery,
        }
    }
}

struct NatsAcker {
    inner: Arc<Inner>,
    binding: Arc<Binding>,
    acker: jetstream::message::Acker,
    sequence: u64,
    subject: String,
}

impl NatsAcker {
    async fn settle(&self, kind: AckKind) -> Result<(), String> {
        let result = if self.inner.options.confirm_acks {
            self.acker.double_ack_with(kind).await
        } else {
            self.acker.ack_with(kind).await
        };
        result.map_err(|e| e.to_string())
    }

    fn settle_failed(&self, what: &str, message_id: Option<Uuid>, e: &str) -> BusError {
        let id = message_id.map(|id| format!(" {id}")).unwrap_or_default();
        BusError::Transport(format!(
            "cannot {what} message{id} (stream sequence {}) on subscription {:?} at {}: {e}; the server delivers \
             it again after ack_wait ({:?}); check the connection to NATS",
            self.sequence, self.binding.subscription, self.inner.url, self.inner.options.ack_wait
        ))
    }

    /// Copies the message to the dead-letter stream (confirmed), then terminates the original.
    async fn park(&self, mut headers: HeaderMap, payload: Vec<u8>, reason: &str, attempt: u32) -> Result<(), BusError> {
        let inner = &self.inner;
        let subject = inner.dead_subject(&self.binding.subscription)?;
        let extra = [
            (H_DEAD_REASON, reason.to_owned()),
            (H_DEAD_SUBSCRIPTION, self.binding.subscription.clone()),
            (H_DEAD_AT, Timestamp::now().0.to_string()),
            (H_DEAD_SUBJECT, self.subject.clone()),
            (H_DEAD_SEQUENCE, self.sequence.to_string()),
            (H_ATTEMPT, attempt.to_string()),
        ];
        for (name, value) in extra {
            put(&mut headers, name, &value).map_err(BusError::Transport)?;
        }
        // One dead letter per stored message and durable, however often parking is retried.
        insert(
            &mut headers,
            async_nats::header::NATS_MESSAGE_ID,
            &format!("{}:{}", self.binding.durable, self.sequence),
        );
        insert(&mut headers, async_nats::header::NATS_EXPECTED_STREAM, &inner.options.dead_letter_stream);
        let failed = |e: &dyn std::fmt::Display| {
            BusError::Transport(format!(
                "cannot store a dead letter of {:?} in stream {} at {}: {e}; the message is delivered again \
                 later; check the stream (its limits, that it exists) and the connection to NATS",
                self.binding.subscription, inner.options.dead_letter_stream, inner.url
            ))
        };
        let object = format!("dead-{}-{}", self.binding.durable, self.sequence);
        let body = inner.check_in(&mut headers, &object, payload).await?;
        let publish = Publish::build().payload(body.into()).headers(headers);
        inner.js.send_publish(subject, publish).await.map_err(|e| failed(&e))?.await.map_err(|e| failed(&e))?;
        self.settle(AckKind::Term).await.map_err(|e| self.settle_failed("terminate the dead-lettered", None, &e))
    }
}

#[async_trait::async_trait]
impl Acker for NatsAcker {
    async fn keep_alive(&self) -> Result<(), BusError> {
        // `+WPI`: the server restarts this delivery's ack_wait.
        self.acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| self.settle_failed("extend the ack wait of", None, &e.to_string()))
    }

    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.settle(AckKind::Ack).await.map_err(|e| self.settle_failed("ack", None, &e))
    }

    async fn nack(self: Box<Self>, envelope: Envelope, delay: Duration) -> Result<(), BusError> {
        if envelope.attempt >= self.inner.options.max_deliver {
            let reason = exhausted(self.inner.options.max_deliver);
            crate::engine::metrics::dead_lettered(
                &self.binding.subscription,
                crate::engine::metrics::DeadLetterClass::GaveUp,
            );
            return self.dead_letter(envelope, reason).await;
        }
        let kind = if delay.is_zero() { AckKind::Nak(None) } else { AckKind::Nak(Some(delay)) };
        self.settle(kind).await.map_err(|e| self.settle_failed("nack", Some(envelope.message_id), &e))
    }

    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: String) -> Result<(), BusError> {
        tracing::debug!(
            subscription = %self.binding.subscription,
            message_name = %envelope.name,
            message_id = %envelope.message_id,
            %reason,
            "message dead-lettered"
        );
        let headers = envelope_headers(&envelope).map_err(BusError::Transport)?;
        let result = self.park(headers, envelope.payload, &reason, envelope.attempt).await;
        if result.is_err() {
            // Bring it back soon rather than after ack_wait, to be parked again.
            if let Err(e) = self.acker.ack_with(AckKind::Nak(Some(RETRY_PARKING_AFTER))).await {
                tracing::debug!(error = %e, "nak after a failed dead-lettering failed; redelivered after ack_wait");
            }
        }
        result
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = self.acker.ack_with(AckKind::Nak(None)).await {
                        tracing::debug!(
                            message_id = %envelope.message_id,
                            error = %e,
                            "could not hand back an abandoned delivery; redelivered after ack_wait"
                        );
                    }
                });
            }
            Err(_) => tracing::debug!(
                message_id = %envelope.message_id,
                "abandoned outside a tokio runtime; redelivered after ack_wait"
            ),
        }
    }
}

// ---- envelope <-> headers ----

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_str(name).map_err(|_| format!("invalid header name {name:?}"))
}

/// Sets a header to an encoded value.
fn put(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), String> {
    let value = HeaderValue::from_str(&encode_value(value)).map_err(|_| format!("invalid value for header {name}"))?;
    headers.insert(header_name(name)?, value);
    Ok(())
}

/// Sets a header whose value is known to be plain (ids, stream names).
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn name_str(name: &HeaderName) -> &str {
    name.as_ref()
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let name = HeaderName::from_str(name).ok()?;
    headers?.get_last(name).map(|v| v.as_str())
}

fn envelope_headers(envelope: &Envelope) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    put(&mut headers, H_MESSAGE_ID, &envelope.message_id.to_string())?;
    put(&mut headers, H_NAME, &envelope.name)?;
    put(&mut headers, H_CREATED_AT, &envelope.created_at.0.to_string())?;
    if let Some(id) = envelope.correlation_id {
        put(&mut headers, H_CORRELATION_ID, &id.to_string())?;
    }
    if let Some(id) = envelope.causation_id {
        put(&mut headers, H_CAUSATION_ID, &id.to_string())?;
    }
    if let Some(reply_to) = &envelope.reply_to {
        put(&mut headers, H_REPLY_TO, reply_to)?;
    }
    for (key, value) in &envelope.headers {
        if crate::message::headers::TRACE_CONTEXT.contains(&key.as_str()) {
            // As W3C-instrumented NATS clients write them: plain, unescaped (a W3C value is
            // printable ASCII).
            insert(&mut headers, header_name(key)?, value);
        } else {
            put(&mut headers, &format!("{H_USER_PREFIX}{}", encode_header_key(key)), value)?;
        }
    }
    Ok(headers)
}

/// Rebuilds an envelope from headers. `subject_name` is the name the subject carries (for
/// messages on `<prefix>.msg.>`); messages from other publishers fall back on it for the name
/// and on `fallback_id` for the id. Present but unreadable metadata is an error.
fn decode_envelope(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    subject_name: Option<Result<String, String>>,
    fallback_id: Uuid,
) -> Result<Envelope, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        header(headers, name).map(|v| decode_value(v).map_err(|e| format!("header {name}: {e}"))).transpose()
    };
    let uuid = |name: &str| -> Result<Option<Uuid>, String> {
        text(name)?
            .map(|v| Uuid::parse_str(&v).map_err(|e| format!("header {name} is not a UUID ({v:?}): {e}")))
            .transpose()
    };
    let subject_name = subject_name.transpose().map_err(|e| format!("the subject does not carry a valid name: {e}"))?;
    let name = match (text(H_NAME)?, subject_name) {
        (Some(named), Some(routed)) if named != routed => {
            return Err(format!("header {H_NAME} says {named:?} but the message was published to {routed:?}"));
        }
        (Some(named), _) => named,
        (None, Some(routed)) => routed,
        (None, None) => return Err(format!("no {H_NAME} header")),
    };
    if name.is_empty() {
        return Err("the message name is empty".into());
    }
    let message_id = match uuid(H_MESSAGE_ID)? {
        Some(id) => id,
        None => header(headers, "Nats-Msg-Id").and_then(|v| Uuid::parse_str(v).ok()).unwrap_or(fallback_id),
    };
    let created_at = match text(H_CREATED_AT)? {
        Some(v) => Timestamp(v.parse().map_err(|e| format!("header {H_CREATED_AT} is not milliseconds ({v:?}): {e}"))?),
        None => Timestamp::now(),
    };
    let attempt = match text(H_ATTEMPT)? {
        Some(v) => v.parse().map_err(|e| format!("header {H_ATTEMPT} is not a count ({v:?}): {e}"))?,
        None => 1,
    };
    let mut envelope = Envelope::new(name, payload.to_vec());
    envelope.message_id = message_id;
    envelope.created_at = created_at;
    envelope.correlation_id = uuid(H_CORRELATION_ID)?;
    envelope.causation_id = uuid(H_CAUSATION_ID)?;
    envelope.reply_to = text(H_REPLY_TO)?;
    envelope.attempt = attempt;
    for key in crate::message::headers::TRACE_CONTEXT {
        if let Some(value) = header(headers, key) {
            envelope.headers.insert(key.to_owned(), value.to_owned());
        }
    }
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let Some(key) = name_str(name).strip_prefix(H_USER_PREFIX) else { continue };
            let key = unescape(key).map_err(|e| format!("header {name}: {e}"))?;
            if let Some(value) = values.last() {
                let value = decode_value(value.as_str()).map_err(|e| format!("header {name}: {e}"))?;
                envelope.headers.insert(key, value);
            }
        }
    }
    Ok(envelope)
}

/// The headers of a message to park as is, without those that steer JetStream.
fn copy_headers(headers: Option<&HeaderMap>) -> HeaderMap {
    let mut copy = HeaderMap::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        if name_str(name).get(..5).is_some_and(|p| p.eq_ignore_ascii_case("nats-")) {
            continue;
        }
        for value in values {
            copy.append(name.clone(), value.clone());
        }
    }
    copy
}

// ---- encodings ----

fn escape_byte(out: &mut String, byte: u8) {
    let _ = write!(out, "%{byte:02X}");
}

/// Reverses the `%XX` escapes of every encoding here.
fn unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte =
                hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// A name as subject tokens: `[A-Za-z0-9_-]` and dots between two kept characters are kept,
/// every other byte is `%XX`. Injective, never empty for a non-empty name, never a wildcard.
fn subject_token(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let dot_ok =
            b == b'.' && !out.is_empty() && !out.ends_with('.') && bytes.get(i + 1).is_some_and(|&next| next != b'.');
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || dot_ok {
            out.push(char::from(b));
        } else {
            escape_byte(&mut out, b);
        }
    }
    out
}

fn decode_subject_token(token: &str) -> Result<String, String> {
    let name = unescape(token)?;
    if subject_token(&name) == token { Ok(name) } else { Err(format!("{token:?} is not a sagaflow-encoded name")) }
}

/// A header value NATS carries unchanged: `%`, control characters, and white space at either
/// end are escaped.
fn encode_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        if c == '%' || c.is_control() || ((i == 0 || i == last) && c.is_whitespace()) {
            let mut buf = [0; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                escape_byte(&mut out, b);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn decode_value(value: &str) -> Result<String, String> {
    unescape(value)
}

/// A header key usable in a NATS header name: printable ASCII but `:` and `%`; the rest `%XX`.
fn encode_header_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_graphic() && b != b':' && b != b'%' {
            out.push(char::from(b));
        } else {
            escape_byte(&mut out, b);
        }
    }
    out
}

fn short_hash(s: &str) -> String {
    let hash = Uuid::new_v5(&HASH_NAMESPACE, s.as_bytes());
    hash.as_bytes()[..8].iter().fold(String::with_capacity(16), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Readable part of a consumer name: `[A-Za-z0-9-]`, the rest `-`, at most 32 characters.
fn readable(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(32).collect()
}

/// What every durable of a subscription's name starts with. The readable part has no `_`, so
/// the prefix (with the subscription's hash) belongs to one subscription only.
fn durable_prefix(subscription: &str) -> String {
    format!("{}_{}_", readable(subscription), short_hash(subscription))
}

fn durable_name(subscription: &str, name: &str) -> String {
    format!("{}{}_{}", durable_prefix(subscription), readable(name), short_hash(name))
}

fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        return Some("is empty");
    }
    if prefix.starts_with('$') {
        return Some("starts with $, which NATS reserves");
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Some("has an empty token (a leading, trailing or double dot)");
        }
        if token == "*" || token == ">" || token.contains(['*', '>']) {
            return Some("contains a wildcard");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Some("contains white space or control characters");
        }
    }
    None
}

fn stream_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.len() > 255 {
        return Some("is longer than 255 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
        return Some("contains white space, '.', '*', '>', '/' or '\\'");
    }
    None
}

// ---- URLs and credentials ----

enum Credentials {
    None,
    UserPassword(String, String),
    Token(String),
}

/// Splits `scheme://userinfo@host...` into (scheme, userinfo, rest).
fn split_userinfo(url: &str) -> (&str, Option<&str>, &str) {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => (scheme, Some(&rest[..at]), &rest[at + 1..]),
        None => (scheme, None, rest),
    }
}

/// The URL(s) with any credentials replaced by `***`, for logs and errors.
fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match split_userinfo(one.trim()) {
            (scheme, Some(_), rest) => format!("{scheme}***@{rest}"),
            (_, None, _) => one.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The server URLs without credentials, and the credentials (from the first URL carrying any).
fn split_servers(url: &str) -> Result<(Vec<async_nats::ServerAddr>, Credentials), String> {
    let mut servers = Vec::new();
    let mut credentials = Credentials::None;
    for one in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (scheme, userinfo, rest) = split_userinfo(one);
        if let (Some(userinfo), Credentials::None) = (userinfo, &credentials) {
            credentials = match userinfo.split_once(':') {
                Some((user, password)) => Credentials::UserPassword(unescape(user)?, unescape(password)?),
                None => Credentials::Token(unescape(userinfo)?),
            };
        }
        let clean = format!("{scheme}{rest}");
        servers.push(clean.parse().map_err(|e| format!("{}: {e}", redact_url(one)))?);
    }
    if servers.is_empty() {
        return Err("no server address".into());
    }
    Ok((servers, credentials))
}

// ---- conformance target ----

const TEST_PREFIX: &str = "sagaflow-conformance";
const TEST_STREAM: &str = "SAGAFLOW_CONFORMANCE";
const TEST_DEAD_STREAM: &str = "SAGAFLOW_CONFORMANCE_DEAD";

/// The NATS bus as a [`ConformanceTarget`](super::conformance::ConformanceTarget).
///
/// Checks run on their own prefix and streams (`sagaflow-conformance`,
/// `SAGAFLOW_CONFORMANCE`, `SAGAFLOW_CONFORMANCE_DEAD`) with fresh names, so runs sharing a
/// server do not see each other or an application's messages. What they leave behind goes
/// away on its own: interest retention drops messages once their subscription is removed,
/// durables left by a failed run are deleted by the server after an hour without consumers,
/// and dead letters expire after a day.
///
/// ```no_run
/// # async fn demo() {
/// use saga_core::bus::NatsTarget;
/// use saga_core::bus::conformance;
/// if let Some(target) = NatsTarget::from_env().await {
///     conformance::dead_letters_keep_their_reason(&target).await.unwrap();
/// }
/// # }
/// ```
pub struct NatsTarget {
    bus: Result<NatsBus, String>,
}

impl std::fmt::Debug for NatsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTarget").field("bus", &self.bus).finish()
    }
}

impl NatsTarget {
    /// A target on the server `SAGA_TEST_NATS_URL` names, or `None` (saying on stderr that the
    /// suite is skipped) when it is unset. If the server cannot be reached, every check fails
    /// with the connection error.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// let target = saga_core::bus::NatsTarget::from_env().await;
    /// # let _ = target;
    /// # }
    /// ```
    pub async fn from_env() -> Option<Self> {
        let Ok(url) = std::env::var("SAGA_TEST_NATS_URL") else {
            super::conformance::say_skipped("NATS conformance suite", "SAGA_TEST_NATS_URL=nats://127.0.0.1:4222");
            return None;
        };
        Some(Self::connect(Self::options(url)).await)
    }

    /// The options the suite uses: its own prefix and streams, `ack_wait` of 2 s (so a
    /// crashed consumer's messages come back quickly), durables and dead letters that expire.
    /// Tweak them for transport-specific tests and pass them to [`NatsTarget::connect`].
    ///
    /// ```
    /// let options = saga_core::bus::NatsTarget::options("nats://127.0.0.1:4222").max_deliver(3);
    /// # let _ = options;
    /// ```
    pub fn options(url: impl Into<String>) -> NatsOptions {
        NatsOptions::new(url)
            .prefix(TEST_PREFIX)
            .stream(TEST_STREAM)
            .dead_letter_stream(TEST_DEAD_STREAM)
            .ack_wait(Duration::from_secs(2))
            .inactive_threshold(Duration::from_secs(3600))
            .dead_letter_max_age(Duration::from_secs(86_400))
            .connection_name("sagaflow conformance")
    }

    /// A target connected with `options`; a connection failure is kept and reported by every
    /// operation of its bus.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// use saga_core::bus::NatsTarget;
    /// let target = NatsTarget::connect(NatsTarget::options("nats://127.0.0.1:4222").max_deliver(3)).await;
    /// # let _ = target;
    /// # }
    /// ```
    pub async fn connect(options: NatsOptions) -> Self {
        NatsTarget { bus: NatsBus::connect(options).await.map_err(|e| e.to_string()) }
    }

    /// The connected bus, or why it could not connect.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), saga_core::bus::BusError> {
    /// use saga_core::bus::NatsTarget;
    /// if let Some(target) = NatsTarget::from_env().await {
    ///     use saga_core::bus::Bus as _;
    ///     let dead = target.nats_bus()?.dead_letters("billing", 10).await?;
    ///     # let _ = dead;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn nats_bus(&self) -> Result<&NatsBus, BusError> {
        self.bus.as_ref().map_err(|e| BusError::Transport(e.clone()))
    }
}

#[async_trait::async_trait]
impl super::conformance::ConformanceTarget for NatsTarget {
    async fn bus(&self) -> Arc<dyn Bus> {
        match &self.bus {
            Ok(bus) => Arc::new(bus.clone()),
            Err(e) => Arc::new(Unreachable(e.clone())),
        }
    }

    async fn clean_up(&self, _: &Arc<dyn Bus>, subscription: &str) {
        if let Ok(bus) = &self.bus {
            if let Err(e) = bus.purge_dead_letters(subscription).await {
                tracing::warn!(error = %e, "cannot purge dead letters");
            }
        }
    }
}

/// The bus of a target that could not connect: every operation reports why.
struct Unreachable(String);

#[async_trait::async_trait]
impl Bus for Unreachable {
    async fn publish(&self, _: Envelope) -> Result<(), BusError> {
        Err(BusError::Transport(self.0.clone()))
    }
    async fn subscribe(&self, _: &str, _: &[&str]) -> Result<Consumer, BusError> {
        Err(BusError::Transport(self.0.clone()))
    }
    async fn unsubscribe(&self, _: &str) -> Result<(), BusError> {
        Err(BusError::Transport(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_round_trip_and_stay_valid() {
        for name in [
            "ordering.order-paid",
            "order paid",
            "a*b",
            ">",
            "*",
            "a..b",
            ".lead",
            "trail.",
            ".",
            "..",
            "100%",
            "naïve→",
            "tab\there",
            "%41",
            "x",
        ] {
            let token = subject_token(name);
            assert!(!token.is_empty(), "{name:?}");
            assert!(!token.starts_with('.') && !token.ends_with('.') && !token.contains(".."), "{name:?} -> {token}");
            assert!(!token.contains(['*', '>', ' ', '\t', '\r', '\n']), "{name:?} -> {token}");
            assert!(token.split('.').all(|t| !t.is_empty()), "{name:?} -> {token}");
            assert_eq!(decode_subject_token(&token).as_deref(), Ok(name), "{token}");
        }
        assert_eq!(subject_token("ordering.order-paid"), "ordering.order-paid");
        assert_eq!(subject_token("a b*"), "a%20b%2A");
        assert_ne!(subject_token("a.b"), subject_token("a%2Eb"));
        assert!(decode_subject_token("a%2G").is_err());
        assert!(decode_subject_token("a%2e").is_err(), "only the canonical encoding is accepted");
    }

    #[test]
    fn header_values_survive_nats_trimming_and_line_breaks() {
        for value in ["plain", " padded ", "line\r\nbreak", "50%", "\u{3000}wide", "", "a b"] {
            let encoded = encode_value(value);
            assert!(HeaderValue::from_str(&encoded).is_ok());
            assert_eq!(encoded.trim(), encoded, "{value:?}");
            assert_eq!(decode_value(&encoded).as_deref(), Ok(value));
        }
        assert_eq!(encode_value("application/json"), "application/json");
        assert_eq!(encode_value("a b"), "a b");
    }

    #[test]
    fn envelopes_round_trip_through_headers() {
        let mut sent = Envelope::new("ordering.order paid", b"{}".to_vec())
            .with_header("x-tenant", "acme")
            .with_header("weird key: é", " spaced\nvalue ");
        sent.correlation_id = Some(Uuid::now_v7());
        sent.reply_to = Some("saga.order".into());
        let headers = envelope_headers(&sent).unwrap();
        let got = decode_envelope(Some(&headers), &sent.payload, Some(Ok(sent.name.clone())), Uuid::nil()).unwrap();
        assert_eq!(got, sent);
        let mismatch = decode_envelope(Some(&headers), &sent.payload, Some(Ok("other".into())), Uuid::nil());
        assert!(mismatch.unwrap_err().contains("published to"));
    }

    #[test]
    fn foreign_messages_get_a_name_and_a_stable_id_and_broken_ones_are_refused() {
        let id = Uuid::now_v7();
        let got = decode_envelope(None, b"{}", Some(Ok("paid".into())), id).unwrap();
        assert_eq!((got.name.as_str(), got.message_id, got.attempt), ("paid", id, 1));
        let mut headers = HeaderMap::new();
        put(&mut headers, H_MESSAGE_ID, "not-a-uuid").unwrap();
        assert!(decode_envelope(Some(&headers), b"", Some(Ok("paid".into())), id).is_err());
        let mut headers = HeaderMap::new();
        put(&mut headers, H_CREATED_AT, "yesterday").unwrap();
        assert!(decode_envelope(Some(&headers), b"", Some(Ok("paid".into())), id).is_err());
        assert!(decode_envelope(None, b"", None, id).is_err());
    }

    #[test]
    fn urls_are_redacted_and_credentials_taken_out() {
        assert_eq!(redact_url("nats://app:s3cret@host:4222"), "nats://***@host:4222");
        assert_eq!(redact_url("nats://tok@a:1, nats://b:2"), "nats://***@a:1,nats://b:2");
        assert_eq!(redact_url("127.0.0.1:4222"), "127.0.0.1:4222");
        let (servers, credentials) = split_servers("nats://app:p%40ss@host:4222,nats://other:4222").unwrap();
        assert_eq!(servers.len(), 2);
        assert!(servers.iter().all(|s| s.username().is_none() && s.password().is_none()));
        assert!(matches!(credentials, Credentials::UserPassword(u, p) if u == "app" && p == "p@ss"));
        let (_, credentials) = split_servers("nats://tok3n@host").unwrap();
        assert!(matches!(credentials, Credentials::Token(t) if t == "tok3n"));
        assert!(split_servers(" , ").is_err());
    }

    #[test]
    fn consumer_names_are_valid_distinct_and_grouped_by_subscription() {
        let a = durable_name("conformance.crash.0192", "ordering.order paid");
        let b = durable_name("conformance.crash.0192", "ordering.order-paid");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{name}");
            assert!(name.len() <= 100);
            assert!(name.starts_with(&durable_prefix("conformance.crash.0192")));
        }
        assert!(!durable_name("a_b", "c").starts_with(&durable_prefix("a")));
        assert!(!durable_name("a", "x").starts_with(&durable_prefix("a-")));
    }

    #[test]
    fn options_are_checked() {
        let ok = NatsOptions::new("nats://h:4222");
        assert!(ok.validate().is_ok());
        for bad in [
            ok.clone().prefix("a..b"),
            ok.clone().prefix("a.>"),
            ok.clone().prefix("$JS"),
            ok.clone().stream("A.B"),
            ok.clone().dead_letter_stream("SAGAFLOW"),
            ok.clone().max_deliver(0),
            ok.clone().prefetch(0),
            ok.clone().ack_wait(Duration::ZERO),
            ok.clone().replicas(7),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
