//! Identity sources.

use std::sync::Arc;

use tokio::sync::watch;

use crate::X509Material;

pub mod dev;
pub mod file;
pub mod memory;
#[cfg(feature = "workload-api")]
pub mod workload;

/// Where the current SVID and trust bundle come from.
///
/// A source always has material (constructors fail rather than start empty); every rotation is sent
/// on the watch channel, so TLS configs and token generators built on it follow without restarts.
pub trait X509Source: Send + Sync + 'static {
    /// A receiver of the current material and its changes.
    fn subscribe(&self) -> watch::Receiver<Arc<X509Material>>;

    /// The current material.
    fn current(&self) -> Arc<X509Material> {
        self.subscribe().borrow().clone()
    }
}

/// A shared source.
pub type SharedSource = Arc<dyn X509Source>;
