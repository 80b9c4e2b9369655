//! The chain machinery every nsm-rs component is built from — the Rust counterpart of the Go sdk's
//! `core/next`, `core/chain`, `utils/metadata`, `tools/clock` and error handling.
//!
//! What lives here:
//! - [`chain`]: the [`NetworkServiceServer`] element trait (servers and
//!   clients alike), the owned [`Next`] cursor and [`Chain`], which nests;
//! - [`registry`]: the same for the two registries (Register, streaming Find, Unregister);
//! - [`ctx`]: the per-call context: typed values, deadline, clock;
//! - [`metadata`]: per-connection state, one store for the server side and one for the client side;
//! - [`clock`]: the injected clock every timer goes through (tokio time, so tests can pause it);
//! - [`error`]: [`NsmError`] and its single mapping to `tonic::Status`.

#![forbid(unsafe_code)]

pub mod chain;
pub mod clock;
pub mod ctx;
pub mod error;
pub mod metadata;
pub mod registry;

/// Re-exported so element crates and chains implement the traits with the same macro.
pub use async_trait::async_trait;
pub mod token;
pub mod values;

pub use chain::{Chain, NetworkServiceServer, Next};
pub use clock::Clock;
pub use ctx::{Ctx, SharedValues};
pub use error::{NsmError, Result};
