//! Benchmarks of the nsm-rs control plane in one process (issue 3): Request+Close latency through
//! NSC → NSMgr → forwarder → NSE over real gRPC on 127.0.0.1, and the memory an NSMgr holds per
//! established connection.
//!
//! The `nsm-bench` binary and (later) `nsm bench` both parse [`cli::BenchCommand`] and call
//! [`cli::run`]. Install [`alloc::CountingAlloc`] as the global allocator for heap figures; without it
//! the memory benchmark reports RSS only.

pub mod alloc;
pub mod child;
pub mod cli;
pub mod control_plane;
pub mod memory;
pub mod setup;
pub mod stats;

/// A benchmark failure (setup, RPC, child process).
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    /// An error with a message.
    pub fn boxed(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(Self(msg.into()))
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// Result of the benchmarks.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
