use uuid::Uuid;

/// A fresh, time-ordered message id (UUID v7) for a message that has no cause in the engine
/// (a message published from outside a unit of work).
pub fn new_message_id() -> Uuid {
    Uuid::now_v7()
}

/// The id of the `position`-th message caused by `cause` (UUID v5 in the namespace of the cause).
///
/// Deterministic on purpose: when a unit of work is re-run after a crash it produces the same
/// outgoing ids, so downstream consumers deduplicate what the first run may already have sent.
///
/// ```
/// use saga_core::message::{derive_id, new_message_id};
/// let cause = new_message_id();
/// assert_eq!(derive_id(cause, 0), derive_id(cause, 0));
/// assert_ne!(derive_id(cause, 0), derive_id(cause, 1));
/// ```
pub fn derive_id(cause: Uuid, position: u32) -> Uuid {
    Uuid::new_v5(&cause, &position.to_be_bytes())
}
