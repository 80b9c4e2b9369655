//! A source whose material is set by its owner (tests, and the base of the other sources).

use std::sync::Arc;

use tokio::sync::watch;

use super::X509Source;
use crate::X509Material;

/// Holds the current material; [`MemorySource::set`] rotates it.
#[derive(Debug)]
pub struct MemorySource {
    tx: watch::Sender<Arc<X509Material>>,
}

impl MemorySource {
    /// A source starting with `material`.
    pub fn new(material: X509Material) -> Self {
        Self {
            tx: watch::Sender::new(Arc::new(material)),
        }
    }

    /// Replaces the material; subscribers see the change.
    pub fn set(&self, material: X509Material) {
        self.tx.send_replace(Arc::new(material));
    }
}

impl X509Source for MemorySource {
    fn subscribe(&self) -> watch::Receiver<Arc<X509Material>> {
        self.tx.subscribe()
    }
}
