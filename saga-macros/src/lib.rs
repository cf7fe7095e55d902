//! Procedural macros for sagaflow.
//!
//! The macros (`#[derive(Message)]`, `#[saga]`, `#[handler]`) arrive in a later
//! milestone; until then sagas are declared with the builder API of `saga-core`
//! (see `saga_core::saga::SagaDefinition`), which is also what the macros generate.
