use crate::message::{Codec, CodecError, CodecExt};
use crate::store::{InstanceRecord, SagaStatus};
use std::sync::Arc;
use uuid::Uuid;

/// A snapshot of one saga instance, for inspection and tests.
///
/// ```no_run
/// # async fn demo(runtime: saga_core::engine::SagaRuntime) -> Result<(), saga_core::Error> {
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Order;
/// if let Some(instance) = runtime.instance(uuid::Uuid::nil()).await? {
///     println!("{} is {:?} at step {:?}", instance.id(), instance.status(), instance.current_step());
///     let _state: Order = instance.state()?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SagaInstance {
    pub(crate) record: InstanceRecord,
    pub(crate) step_name: Option<String>,
    pub(crate) codec: Arc<dyn Codec>,
}

impl std::fmt::Debug for SagaInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaInstance")
            .field("id", &self.record.id)
            .field("saga", &self.record.saga)
            .field("status", &self.record.status)
            .field("version", &self.record.version)
            .field("step", &self.step_name)
            .finish()
    }
}

impl SagaInstance {
    /// The instance id.
    pub fn id(&self) -> Uuid {
        self.record.id
    }

    /// The saga's name.
    pub fn saga(&self) -> &str {
        &self.record.saga
    }

    /// The correlation key that started it.
    pub fn key(&self) -> &str {
        &self.record.key
    }

    /// Where it stands.
    pub fn status(&self) -> &SagaStatus {
        &self.record.status
    }

    /// The number of commits it has gone through.
    pub fn version(&self) -> u64 {
        self.record.version
    }

    /// The name of the step it runs or compensates, if it is not finished.
    pub fn current_step(&self) -> Option<&str> {
        self.step_name.as_deref()
    }

    /// Why it started compensating, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.record.failure.as_deref()
    }

    /// Its state, decoded.
    pub fn state<S: serde::de::DeserializeOwned>(&self) -> Result<S, CodecError> {
        self.codec.decode(&self.record.state)
    }

    /// The stored record.
    pub fn record(&self) -> &InstanceRecord {
        &self.record
    }
}
