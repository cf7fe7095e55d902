//! Decoding what a transport hands the engine must never panic, whatever the bytes: an
//! envelope as JSON, and a payload decoded as each of the order saga's messages (including
//! the correlation key the engine routes by). Errors are fine; they are dead-lettered.
#![no_main]

#[path = "../../examples/order_saga/domain.rs"]
#[allow(dead_code)]
mod domain;

use domain::*;
use libfuzzer_sys::fuzz_target;
use sagaflow::message::{Envelope, JsonCodec, Message};

fn decode_as<M: Message>(envelope: &Envelope) {
    let mut renamed = envelope.clone();
    renamed.name = M::NAME.to_owned();
    if let Ok(message) = renamed.decode::<M>(&JsonCodec) {
        let _ = message.correlation_key();
    }
}

fn decode_all(envelope: &Envelope) {
    decode_as::<OrderSubmitted>(envelope);
    decode_as::<StockAdded>(envelope);
    decode_as::<StockReserved>(envelope);
    decode_as::<StockRejected>(envelope);
    decode_as::<PaymentFailed>(envelope);
    decode_as::<ShippingDelayed>(envelope);
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a whole envelope (the in-memory bus's and the dead-letter store's form).
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(data) {
        let _ = envelope.check_content_type(&JsonCodec);
        decode_all(&envelope);
    }
    // The bytes as the payload of a message the broker delivered.
    decode_all(&Envelope::new("fuzz", data.to_vec()));
});
