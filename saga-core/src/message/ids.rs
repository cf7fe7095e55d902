use uuid::Uuid;

/// A fresh, time-ordered message id (UUID v7) for a message that has no cause in the engine
/// (a message published from outside a unit of work).
pub fn new_message_id() -> Uuid {
    Uuid::now_v7()
}

/// The id of message `name` submitted from outside under the caller's idempotency `key`
/// (UUID v5): the same name and key give the same id, so consumers take a retried
/// submission for a redelivery. See `SagaRuntime::publish_idempotent`.
///
/// ```
/// use saga_core::message::idempotent_message_id;
/// assert_eq!(idempotent_message_id("order.place", "7"), idempotent_message_id("order.place", "7"));
/// assert_ne!(idempotent_message_id("order.place", "7"), idempotent_message_id("order.cancel", "7"));
/// assert_ne!(idempotent_message_id("a/b", "c"), idempotent_message_id("a", "b/c"));
/// ```
pub fn idempotent_message_id(name: &str, key: &str) -> Uuid {
    // The name's length keeps "a/b" + "c" apart from "a" + "b/c".
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("sagaflow/submission/{}/{name}/{key}", name.len()).as_bytes())
}

/// The id of the `position`-th message that `consumer` (a saga instance or a participant)
/// sends because of message `cause` (UUID v5).
///
/// Deterministic on purpose: when a unit of work is re-run after a crash it produces the same
/// outgoing ids, so downstream consumers deduplicate what the first run may already have sent.
/// The consumer is part of it because one message may cause work in several consumers, whose
/// messages must not share ids (a participant would take the second for a duplicate).
///
/// ```
/// use saga_core::message::{derive_id, new_message_id};
/// let (saga, other, cause) = (new_message_id(), new_message_id(), new_message_id());
/// assert_eq!(derive_id(saga, cause, 0), derive_id(saga, cause, 0));
/// assert_ne!(derive_id(saga, cause, 0), derive_id(saga, cause, 1));
/// assert_ne!(derive_id(saga, cause, 0), derive_id(other, cause, 0));
/// ```
pub fn derive_id(consumer: Uuid, cause: Uuid, position: u32) -> Uuid {
    let mut name = [0u8; 20];
    name[..16].copy_from_slice(cause.as_bytes());
    name[16..].copy_from_slice(&position.to_be_bytes());
    Uuid::new_v5(&consumer, &name)
}
