//! Participants: the services' handlers for commands and integration events.
//!
//! A participant gets the same guarantees as a saga: its inbox deduplicates deliveries, and
//! the records it writes through [`HandlerContext`], the inbox entry and the replies and events
//! it emits are one atomic commit. A redelivered command is therefore either fully applied once
//! or not at all, and the participant's effect on its own records is exactly-once.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use super::Core;
use super::driver::{Driver, Failure, Input, Routed, Unit};
use crate::HandlerError;
use crate::message::{Codec, CodecExt, Envelope, Message, derive_id, headers};
use crate::saga::RetryPolicy;
use crate::store::{Commit, EntityWrite, Store, StoreError};

/// A participant: handles one command or integration event type.
///
/// Reply to the saga with [`HandlerContext::reply`] (a success or a failure message: a business
/// refusal is a reply, not an error), publish events with [`HandlerContext::publish`], and keep
/// the service's own records with [`HandlerContext::load`] and [`HandlerContext::save`].
///
/// ```
/// use saga_core::{HandlerError, engine::{Handler, HandlerContext}, message::Message};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Charge { order: u64, cents: u64 }
/// impl Message for Charge { const NAME: &'static str = "payment.charge"; }
/// #[derive(Serialize, Deserialize)]
/// struct Charged { order: u64 }
/// impl Message for Charged { const NAME: &'static str = "payment.charged"; }
///
/// struct Payments;
/// #[async_trait::async_trait]
/// impl Handler for Payments {
///     type Input = Charge;
///     fn name(&self) -> &str { "payment" }
///     async fn handle(&self, cmd: Charge, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
///         let total: u64 = ctx.load("total").await?.unwrap_or(0);
///         ctx.save("total", &(total + cmd.cents)).await?;
///         ctx.reply(&Charged { order: cmd.order })
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The message handled.
    type Input: Message;

    /// The participant's name: its bus subscription and inbox.
    fn name(&self) -> &str;

    /// The namespace of the records it keeps (default: its name). Handlers of one service
    /// that share records (reserve and release stock) share a scope.
    fn scope(&self) -> &str {
        self.name()
    }

    /// How transient errors are retried before the message is dead-lettered.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Handles one message.
    async fn handle(&self, input: Self::Input, ctx: &mut HandlerContext) -> Result<(), HandlerError>;
}

/// What a handler function may return; the `#[handler]` macro turns it into replies.
///
/// - `()` or `Result<(), HandlerError>`: replies are sent explicitly through the context;
/// - `Result<M, HandlerError>`: `M` is the success reply;
/// - `Result<A, B>` with two messages: `A` is the success reply, `B` the failure reply;
/// - `Result<Result<A, B>, HandlerError>`: the same, with transient errors besides.
pub trait HandlerOutput: Send {
    /// Sends the replies this output stands for.
    fn into_replies(self, ctx: &mut HandlerContext) -> Result<(), HandlerError>;
}

impl HandlerOutput for () {
    fn into_replies(self, _: &mut HandlerContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl HandlerOutput for Result<(), HandlerError> {
    fn into_replies(self, _: &mut HandlerContext) -> Result<(), HandlerError> {
        self
    }
}

impl<M: Message> HandlerOutput for Result<M, HandlerError> {
    fn into_replies(self, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        ctx.reply(&self?)
    }
}

impl<A: Message, B: Message> HandlerOutput for Result<Result<A, B>, HandlerError> {
    fn into_replies(self, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        self?.into_replies(ctx)
    }
}

impl<A: Message, B: Message> HandlerOutput for Result<A, B> {
    fn into_replies(self, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        match self {
            Ok(success) => ctx.reply(&success),
            Err(failure) => ctx.reply(&failure),
        }
    }
}

/// What a participant's handler can do besides reading its input.
pub struct HandlerContext {
    consumer: Uuid,
    store: Arc<dyn Store>,
    codec: Arc<dyn Codec>,
    scope: String,
    input_id: Uuid,
    correlation_id: Option<Uuid>,
    idempotency_key: Option<String>,
    attempt: u32,
    now: crate::message::Timestamp,
    outgoing: Vec<Envelope>,
    versions: BTreeMap<String, u64>,
    writes: BTreeMap<String, Vec<u8>>,
    max_payload: usize,
    /// A store error the handler met: its outcome is then the store's failure, not the
    /// message's (it does not spend the message's retry budget).
    store_failure: Option<StoreError>,
}

impl std::fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerContext")
            .field("scope", &self.scope)
            .field("input_id", &self.input_id)
            .finish_non_exhaustive()
    }
}

impl HandlerContext {
    /// The id of the message being handled.
    pub fn message_id(&self) -> Uuid {
        self.input_id
    }

    /// The saga instance that sent it, if any.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.correlation_id
    }

    /// The delivery attempt (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A key that stays the same across the saga's retries of this step, for deduplication
    /// in systems beyond the store (falls back to the message id).
    pub fn idempotency_key(&self) -> String {
        self.idempotency_key.clone().unwrap_or_else(|| self.input_id.to_string())
    }

    /// The envelope of a reply or event, the `position`-th caused by the input.
    pub(crate) fn envelope<M: Message>(&self, message: &M, position: u32) -> Result<Envelope, HandlerError> {
        Ok(Envelope {
            message_id: derive_id(self.consumer, self.input_id, position),
            name: M::NAME.to_owned(),
            payload: self.codec.encode(message).map_err(HandlerError::permanent)?,
            created_at: self.now,
            correlation_id: self.correlation_id,
            causation_id: Some(self.input_id),
            reply_to: None,
            headers: [(headers::CONTENT_TYPE.to_owned(), self.codec.content_type().to_owned())].into_iter().collect(),
            attempt: 1,
        })
    }

    fn emit<M: Message>(&mut self, message: &M) -> Result<(), HandlerError> {
        let position = u32::try_from(self.outgoing.len()).unwrap_or(u32::MAX);
        let envelope = self.envelope(message, position)?;
        if envelope.payload.len() > self.max_payload {
            return Err(HandlerError::permanent(format!(
                "{} is {} bytes, more than the {} bytes a message may have (the runtime's max_message_bytes, or what \
                 the bus carries): send a reference to the data instead of the data",
                M::NAME,
                envelope.payload.len(),
                self.max_payload
            )));
        }
        self.outgoing.push(envelope);
        Ok(())
    }

    fn store_error(&mut self, e: StoreError) -> HandlerError {
        let error = HandlerError::transient(&e);
        self.store_failure.get_or_insert(e);
        error
    }

    /// Replies to the saga that sent the message (correlated with its instance).
    pub fn reply<M: Message>(&mut self, message: &M) -> Result<(), HandlerError> {
        self.emit(message)
    }

    /// Publishes an integration event, sent when the handler's commit is durable.
    pub fn publish<M: Message>(&mut self, event: &M) -> Result<(), HandlerError> {
        self.emit(event)
    }

    /// Reads one of the participant's records.
    pub async fn load<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, HandlerError> {
        if let Some(bytes) = self.writes.get(key) {
            return self.codec.decode(bytes).map(Some).map_err(HandlerError::permanent);
        }
        let record = match self.store.entity(&self.scope, key).await {
            Ok(record) => record,
            Err(e) => return Err(self.store_error(e)),
        };
        // The first read's version is what a write must find unchanged.
        self.versions.entry(key.to_owned()).or_insert(record.as_ref().map_or(0, |r| r.version));
        match record {
            Some(r) => self.codec.decode(&r.value).map(Some).map_err(HandlerError::permanent),
            None => Ok(None),
        }
    }

    /// Writes one of the participant's records, committed with the handler's outcome. If the
    /// record changed since it was read, the whole handler runs again on fresh data.
    pub async fn save<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), HandlerError> {
        if !self.versions.contains_key(key) {
            let version = match self.store.entity(&self.scope, key).await {
                Ok(record) => record.map_or(0, |r| r.version),
                Err(e) => return Err(self.store_error(e)),
            };
            self.versions.insert(key.to_owned(), version);
        }
        let bytes = self.codec.encode(value).map_err(HandlerError::permanent)?;
        self.writes.insert(key.to_owned(), bytes);
        Ok(())
    }
}

pub(crate) struct ParticipantDriver<H: Handler> {
    handler: H,
    consumer: Uuid,
}

impl<H: Handler> ParticipantDriver<H> {
    pub(crate) fn new(handler: H) -> Self {
        let consumer = participant_id(handler.name());
        ParticipantDriver { handler, consumer }
    }
}

/// The inbox id of the participant named `name`.
pub(crate) fn participant_id(name: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("sagaflow/participant/{name}").as_bytes())
}

#[async_trait::async_trait]
impl<H: Handler> Driver for ParticipantDriver<H> {
    fn name(&self) -> &str {
        self.handler.name()
    }

    fn subscription(&self) -> String {
        self.handler.name().to_owned()
    }

    fn names(&self) -> Vec<&'static str> {
        vec![H::Input::NAME]
    }

    fn route(&self, codec: &dyn Codec, envelope: &Envelope) -> Result<Routed, String> {
        if envelope.name != H::Input::NAME {
            return Err(format!(
                "unknown message name {:?}: participant {} handles {}",
                envelope.name,
                self.handler.name(),
                H::Input::NAME
            ));
        }
        envelope.check_content_type(codec).map_err(|e| e.to_string())?;
        Ok(Routed {
            lane_key: envelope.correlation_id.unwrap_or(envelope.message_id),
            input: Input::Message { envelope: envelope.clone(), decoded: None, key: String::new(), queue_entry: None },
        })
    }

    async fn process(&self, core: &Core, _lane_key: Uuid, input: &Input) -> Result<Unit, Failure> {
        let Input::Message { envelope, queue_entry, .. } = input else {
            return Err(Failure::DeadLetter("participants have no timers".into()));
        };
        if super::already_processed(core, self.consumer, envelope, queue_entry.as_ref()).await? {
            return Ok(Unit::Skipped(format!("{} {} already processed", envelope.name, envelope.message_id)));
        }
        let message: H::Input = envelope
            .decode(&*core.codec)
            .map_err(|e| Failure::DeadLetter(format!("undecodable {}: {e}", envelope.name)))?;
        let mut ctx = HandlerContext {
            consumer: self.consumer,
            store: core.store.clone(),
            codec: core.codec.clone(),
            scope: self.handler.scope().to_owned(),
            input_id: envelope.message_id,
            correlation_id: envelope.correlation_id,
            idempotency_key: envelope.header(headers::IDEMPOTENCY_KEY).map(str::to_owned),
            attempt: envelope.attempt,
            now: core.clock.now(),
            outgoing: Vec::new(),
            versions: BTreeMap::new(),
            writes: BTreeMap::new(),
            max_payload: core.max_outgoing,
            store_failure: None,
        };
        let outcome = self.handler.handle(message, &mut ctx).await;
        if let (Err(HandlerError::Transient(_)), Some(e)) = (&outcome, ctx.store_failure.take()) {
            return Err(Failure::Store(e, None));
        }
        match outcome {
            Ok(()) => {}
            Err(HandlerError::Transient(reason)) => return Err(Failure::Retry(reason)),
            Err(HandlerError::Permanent(reason)) => return Err(Failure::DeadLetter(reason)),
        }
        let scope = ctx.scope;
        let entities = ctx
            .writes
            .into_iter()
            .map(|(key, value)| EntityWrite {
                expected_version: ctx.versions.get(&key).copied().unwrap_or(0),
                scope: scope.clone(),
                key,
                value,
            })
            .collect();
        let commit = Commit {
            inbox: Some((self.consumer, envelope.message_id)),
            consumes: super::only_copy(core, queue_entry.as_ref()),
            entities,
            outbox: ctx.outgoing,
            ..Commit::default()
        };
        crate::crash_points::crash_point!("participant.before_commit");
        match core.commit(commit).await {
            Ok(committed) => Ok(Unit::Committed { committed, follow_up: None, timers_added: false }),
            Err(StoreError::Duplicate { message_id, .. }) => {
                Ok(Unit::Skipped(format!("{message_id} already processed")))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.handler.retry_policy()
    }
}
