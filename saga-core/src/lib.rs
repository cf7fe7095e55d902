//! The durable saga engine of sagaflow.
//!
//! A saga chains steps across services into one business transaction; when a step fails,
//! the compensations of the completed steps run in reverse order. This crate holds:
//!
//! - [`message`]: typed messages with stable wire names, envelopes, codecs, derived ids;
//! - [`bus`]: the transport trait, the in-memory bus, typed and dynamic event handlers;
//! - [`store`]: the atomic commit, the sled store with group commit, the memory store;
//! - [`saga`]: how a saga is defined (steps, compensations, retries, timeouts);
//! - [`engine`]: the runtime that drives sagas and participants through units of work;
//! - [`clock`]: real and virtual time for durable timers;
//! - [`testing`]: a harness to drive sagas and inspect their state in tests.
//!
//! Most users depend on the `sagaflow` facade crate, which re-exports this one.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod activity;
pub mod admin;
pub mod bus;
pub mod clock;
pub mod crash_points;
pub mod engine;
mod error;
pub mod message;
mod panics;
pub mod saga;
pub mod store;
#[cfg(feature = "sled")]
pub mod testing;
mod trace;

#[doc(hidden)]
pub mod __private {
    //! Used by the code `saga-macros` generates; not a public API.
    pub use crate::private::*;
}
mod private;

pub use error::{Error, HandlerError};
