//! # sagaflow
//!
//! Durable saga orchestration for Rust microservices. A saga chains steps across services
//! into one business transaction; when a step fails, the compensations of the completed steps
//! run in reverse order. Progress is committed atomically to an embedded store (sled) before
//! any message is acked, so a crash or restart loses nothing and repeats no effect.
//!
//! This crate re-exports [`saga_core`]; start with the [`prelude`], the order example
//! (`cargo run --example order_saga`) and `docs/architecture.md`.
//!
//! ```
//! use sagaflow::prelude::*;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await?;
//! runtime.shutdown().await?;
//! # Ok::<_, sagaflow::Error>(()) }).unwrap();
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use saga_core::*;
pub use saga_macros::{Message, compensation, handler, on, reply, saga, start, step};

/// The names most programs need.
pub mod prelude {
    pub use saga_core::bus::{Bus, EventBus, InMemoryBus, LocalBus};
    pub use saga_core::engine::{Handler, HandlerContext, HandlerOutput, SagaInstance, SagaRuntime};
    pub use saga_core::message::Message;
    pub use saga_core::saga::{EventOutcome, RetryPolicy, Saga, SagaDefinition, Step, StepContext, StepError};
    pub use saga_core::store::{Durability, MemoryStore, SagaStatus, StatusKind};
    #[cfg(feature = "sled")]
    pub use saga_core::store::{SledOptions, SledStore};
    pub use saga_core::{Error, HandlerError};
    pub use saga_macros::{Message, compensation, handler, on, reply, saga, start, step};
}
