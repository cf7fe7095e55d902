//! How a saga is defined: a state type, the messages that start it, and ordered steps.
//!
//! A definition is data the engine interprets, built with [`SagaDefinition`] and [`Step`]
//! (the `#[saga]` macro generates the same calls). Steps follow the classic saga shape:
//! zero or more **compensatable** steps, at most one **pivot** (the point of no return), then
//! **retriable** steps that are retried until they succeed and are never compensated.
//! [`SagaDefinition::validate`] rejects any other order before the runtime starts.

mod definition;
pub mod diagram;
mod retry;
mod step;

pub use definition::{DefinitionError, EventOutcome, Saga, SagaDefinition, instance_id};
pub use retry::RetryPolicy;
pub use step::{Step, StepContext, StepError, StepKind};

pub(crate) use definition::{Decoded, Route};
pub(crate) use step::Action;
