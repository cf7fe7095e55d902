//! Messages and what carries them.
//!
//! A [`Message`] is a typed payload with a stable wire [`Message::NAME`]: the name, not the
//! Rust type path, is what travels, so types can be renamed and moved without breaking the
//! wire. On the bus a message rides in an [`Envelope`], whose identity ([`Envelope::message_id`])
//! is what every consumer deduplicates on.

mod codec;
mod envelope;
mod ids;

pub use codec::{Codec, CodecError, CodecExt, CodecFailure, JsonCodec};
pub use envelope::{DecodeError, Envelope, Timestamp, headers};
pub use ids::{derive_id, idempotent_message_id, new_message_id};

use serde::{Serialize, de::DeserializeOwned};

/// A typed payload with a stable wire name: an integration event, a command or a reply.
///
/// The name is part of the wire contract; the default codec is JSON ([`JsonCodec`]).
/// [`Message::correlation_key`] is how a saga finds the instance a message belongs to
/// (the order id of an order event, say); messages that never start or join a saga by
/// content (replies, which carry the instance id in the envelope) can leave it `None`.
///
/// ```
/// use saga_core::message::Message;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct OrderSubmitted { order_id: u64, total_cents: u64 }
///
/// impl Message for OrderSubmitted {
///     const NAME: &'static str = "ordering.order-submitted";
///     fn correlation_key(&self) -> Option<String> { Some(self.order_id.to_string()) }
/// }
///
/// assert_eq!(OrderSubmitted::NAME, "ordering.order-submitted");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a message",
    label = "sagas and handlers send and receive messages",
    note = "add #[derive(Message)] and #[message(name = \"...\")] to `{Self}`"
)]
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable wire name of this message.
    const NAME: &'static str;

    /// The business key that correlates this message with a saga instance, if it has one.
    fn correlation_key(&self) -> Option<String> {
        None
    }
}
