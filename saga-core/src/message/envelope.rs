use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::new_message_id;

/// Well-known header names.
pub mod headers {
    /// MIME type of the payload (`application/json` for the default codec).
    pub const CONTENT_TYPE: &str = "content-type";
    /// A key that stays the same across retries of one saga step, for participants that
    /// call systems which deduplicate on their own key.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// W3C trace context of the unit of work that produced the message.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state that goes with [`TRACEPARENT`] (vendor-specific trace data).
    pub const TRACESTATE: &str = "tracestate";
    /// The headers of the W3C trace context. Transports carry them under these very names
    /// (not in their namespace for user headers), so that any W3C-instrumented producer or
    /// consumer on the same broker shares the trace.
    pub const TRACE_CONTEXT: [&str; 2] = [TRACEPARENT, TRACESTATE];
}

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// This time plus a duration, saturating.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// This time minus a duration, saturating at the epoch.
    ///
    /// ```
    /// use saga_core::message::Timestamp;
    /// assert_eq!(Timestamp(5_000).minus(std::time::Duration::from_secs(2)), Timestamp(3_000));
    /// assert_eq!(Timestamp(5).minus(std::time::Duration::from_secs(2)), Timestamp(0));
    /// ```
    pub fn minus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// What travels on the bus: a payload and everything needed to route, dedupe and trace it.
///
/// ```
/// use saga_core::message::{Envelope, headers};
/// let env = Envelope::new("ordering.order-submitted", br#"{"order_id":1}"#.to_vec());
/// assert_eq!(env.name, "ordering.order-submitted");
/// assert_eq!(env.attempt, 1);
/// assert_eq!(env.header(headers::CONTENT_TYPE), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Identity of this message; consumers deduplicate on it. UUID v7 when fresh, v5 when
    /// derived from the message that caused it.
    pub message_id: Uuid,
    /// Stable wire name of the payload's type.
    pub name: String,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// When the message was first created (not when this copy was delivered).
    pub created_at: Timestamp,
    /// The saga instance this message belongs to, if any.
    pub correlation_id: Option<Uuid>,
    /// The message whose handling produced this one.
    pub causation_id: Option<Uuid>,
    /// Where a participant's reply should go (the saga's name for saga commands).
    pub reply_to: Option<String>,
    /// Content type, trace context, idempotency key and user headers.
    pub headers: BTreeMap<String, String>,
    /// Delivery attempt, starting at 1; transports increase it on redelivery.
    pub attempt: u32,
}

impl Envelope {
    /// A new envelope with a fresh id and no correlation.
    pub fn new(name: impl Into<String>, payload: Vec<u8>) -> Self {
        Envelope {
            message_id: new_message_id(),
            name: name.into(),
            payload,
            created_at: Timestamp::now(),
            correlation_id: None,
            causation_id: None,
            reply_to: None,
            headers: BTreeMap::new(),
            attempt: 1,
        }
    }

    /// A header's value.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }

    /// Sets a header, returning the envelope.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
}

/// Why a delivered envelope could not be turned into the expected message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The envelope carries another message than the one expected.
    #[error("expected message {expected:?}, got {actual:?}")]
    WrongName {
        /// The expected wire name.
        expected: &'static str,
        /// The envelope's name.
        actual: String,
    },
    /// The content-type header names another encoding than the codec's.
    #[error("content type {actual:?} is not {expected:?}: the producer uses another codec")]
    WrongContentType {
        /// The codec's content type.
        expected: &'static str,
        /// The envelope's content type.
        actual: String,
    },
    /// The payload does not decode as the message type.
    #[error(transparent)]
    Codec(#[from] super::CodecError),
}

use super::CodecExt as _;

impl Envelope {
    /// Encodes `message` into a new envelope (fresh id, content-type header set).
    pub fn encode<M: super::Message>(codec: &dyn super::Codec, message: &M) -> Result<Self, super::CodecError> {
        Ok(Envelope::new(M::NAME, codec.encode(message)?).with_header(headers::CONTENT_TYPE, codec.content_type()))
    }

    /// Checks the content type against the codec (a missing header is taken as the codec's).
    pub fn check_content_type(&self, codec: &dyn super::Codec) -> Result<(), DecodeError> {
        match self.header(headers::CONTENT_TYPE) {
            Some(ct) if !ct.eq_ignore_ascii_case(codec.content_type()) => {
                Err(DecodeError::WrongContentType { expected: codec.content_type(), actual: ct.to_owned() })
            }
            _ => Ok(()),
        }
    }

    /// Decodes the payload as `M`, checking the name and content type first.
    ///
    /// ```
    /// use saga_core::message::{Envelope, JsonCodec, Message};
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct Ping { n: u32 }
    /// impl Message for Ping { const NAME: &'static str = "ping"; }
    /// let env = Envelope::encode(&JsonCodec, &Ping { n: 7 }).unwrap();
    /// assert_eq!(env.decode::<Ping>(&JsonCodec).unwrap(), Ping { n: 7 });
    /// ```
    pub fn decode<M: super::Message>(&self, codec: &dyn super::Codec) -> Result<M, DecodeError> {
        if self.name != M::NAME {
            return Err(DecodeError::WrongName { expected: M::NAME, actual: self.name.clone() });
        }
        self.check_content_type(codec)?;
        Ok(codec.decode(&self.payload)?)
    }
}
