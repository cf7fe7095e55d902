//! Messages larger than the server carries: the payload rides in JetStream's object store.
//!
//! A NATS server refuses a message over its `max_payload` (1 MiB by default), which is less
//! than the engine accepts. A payload that does not fit (with room for the headers) is put in
//! the object store bucket `<stream>_PAYLOADS` under the message's id, and the message carries
//! the object's name in the `sagaflow-payload-object` header and an empty body (the "claim
//! check" pattern); the consumer fetches it before the delivery is handed on. Publishing again
//! (a retried publish) writes the same object again. Objects expire with the bucket's age limit
//! ([`NatsOptions::large_payload_max_age`](super::NatsOptions::large_payload_max_age), 7 days
//! by default), since every subscription bound to the name must be able to fetch it and the
//! transport cannot tell when the last one has; a message whose object expired is dead-lettered
//! with that reason.

use async_nats::HeaderMap;
use async_nats::jetstream::object_store::{self, ObjectStore};
use tokio::io::AsyncReadExt as _;
use tokio::sync::OnceCell;

use super::{Inner, header, put};
use crate::bus::BusError;

/// The header naming a message's payload object.
pub(super) const H_PAYLOAD_OBJECT: &str = "sagaflow-payload-object";

/// Room left for a message's headers within the server's `max_payload`.
const HEADER_ROOM: usize = 16 * 1024;

/// The bucket, opened on first use.
#[derive(Default)]
pub(super) struct Payloads(OnceCell<ObjectStore>);

fn failed(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Transport(format!("NATS large payload: cannot {what}: {e}; check the connection to NATS"))
}

impl Inner {
    async fn payloads(&self) -> Result<&ObjectStore, BusError> {
        self.payloads
            .0
            .get_or_try_init(|| async {
                let bucket = format!("{}_PAYLOADS", self.options.stream);
                if let Ok(store) = self.js.get_object_store(&bucket).await {
                    return Ok(store);
                }
                let config = object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("sagaflow: payloads too large for one NATS message".into()),
                    max_age: self.options.large_payload_max_age,
                    num_replicas: self.options.replicas,
                    ..Default::default()
                };
                match self.js.create_object_store(config).await {
                    Ok(store) => Ok(store),
                    // Another process may have created it meanwhile.
                    Err(e) => self
                        .js
                        .get_object_store(&bucket)
                        .await
                        .map_err(|_| failed(&format!("create the bucket {bucket}"), e)),
                }
            })
            .await
    }

    /// The body to send for `payload`: the payload itself when it fits in one message, else
    /// nothing, with the payload stored as the object `name` and named in `headers`.
    pub(super) async fn check_in(
        &self,
        headers: &mut HeaderMap,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, BusError> {
        if payload.len() + HEADER_ROOM <= self.client.server_info().max_payload {
            return Ok(payload);
        }
        let store = self.payloads().await?;
        store.put(name, &mut payload.as_slice()).await.map_err(|e| failed(&format!("store object {name}"), e))?;
        put(headers, H_PAYLOAD_OBJECT, name).map_err(BusError::Transport)?;
        Ok(Vec::new())
    }

    /// A message's payload: its body, or the object its headers name.
    pub(super) async fn check_out(&self, headers: Option<&HeaderMap>, body: &[u8]) -> Result<Vec<u8>, CheckOut> {
        let Some(name) = header(headers, H_PAYLOAD_OBJECT) else { return Ok(body.to_vec()) };
        let store = self.payloads().await.map_err(|e| CheckOut::Unavailable(e.to_string()))?;
        let mut object = store.get(name).await.map_err(|e| match e.kind() {
            object_store::GetErrorKind::NotFound => CheckOut::Missing(format!(
                "its payload, the object {name} in {}_PAYLOADS, is gone (expired after large_payload_max_age?)",
                self.options.stream
            )),
            _ => CheckOut::Unavailable(format!("reading the payload object {name}: {e}")),
        })?;
        let mut payload = Vec::new();
        object
            .read_to_end(&mut payload)
            .await
            .map_err(|e| CheckOut::Unavailable(format!("reading the payload object {name}: {e}")))?;
        Ok(payload)
    }
}

/// Why a message's payload could not be fetched.
pub(super) enum CheckOut {
    /// The object is gone for good: the message is dead-lettered.
    Missing(String),
    /// The object store did not answer: the message comes back later.
    Unavailable(String),
}
