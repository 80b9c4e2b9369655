//! `serialize`: Register and Unregister for one name run one at a time (Go `registry/common/serialize`).
//!
//! - Register/Unregister: wait for the name's turn, then run the rest of the chain while holding it.
//!   Different names run concurrently. Find is not serialised.
//! - State: one async lock per name that is in use; a name's lock is dropped when nobody holds or waits
//!   for it.
//! - Ctx: puts its [`NameSerializer`] into the context, so elements further down (`expire`, `refresh`) can
//!   take the same per-name turn for the Register/Unregister they fire in the background (Go's
//!   `serializectx`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::{Ctx, Result};
use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

/// Per-name turns. Cheap to clone; clones share the turns.
#[derive(Clone, Default)]
pub struct NameSerializer {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for NameSerializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameSerializer")
            .field("names_in_use", &self.locks.lock().len())
            .finish()
    }
}

/// Holding this is `name`'s turn; dropping it lets the next caller in.
pub struct NameTurn {
    guard: Option<OwnedMutexGuard<()>>,
    name: String,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Drop for NameTurn {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.locks.lock();
        // Only the map holds it: nobody is waiting, so forget the name.
        if locks
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.name);
        }
    }
}

impl NameSerializer {
    /// Waits for `name`'s turn.
    pub async fn turn(&self, name: &str) -> NameTurn {
        let lock = self
            .locks
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        NameTurn {
            guard: Some(guard),
            name: name.to_string(),
            locks: self.locks.clone(),
        }
    }

    /// Number of names currently held or waited for.
    pub fn names_in_use(&self) -> usize {
        self.locks.lock().len()
    }
}

/// Takes the per-name turn from the serializer found in `ctx`, if any.
pub async fn turn_from_ctx(ctx: &Ctx, name: &str) -> Option<NameTurn> {
    match ctx.get::<NameSerializer>() {
        Some(s) => Some(s.turn(name).await),
        None => None,
    }
}

/// Serialises Register/Unregister per item name.
#[derive(Debug, Default)]
pub struct SerializeServer {
    names: NameSerializer,
}

impl SerializeServer {
    /// A serializer with no names in use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The turns this element hands out (for tests and diagnostics).
    pub fn names(&self) -> &NameSerializer {
        &self.names
    }
}

#[async_trait]
impl<T: RegistryItem> RegistryServer<T> for SerializeServer {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        let _turn = self.names.turn(item.name()).await;
        ctx.insert(self.names.clone());
        next.register(ctx, item).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        next.find(ctx, query).await
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        let _turn = self.names.turn(item.name()).await;
        ctx.insert(self.names.clone());
        next.unregister(ctx, item).await
    }

    fn name(&self) -> &'static str {
        "serialize"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Probe, nse};
    use nsm_api::registry::NetworkServiceEndpoint;
    use nsm_core::Clock;
    use nsm_core::registry::RegistryChain;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_name_at_a_time_and_no_leftover_locks() {
        let serialize = Arc::new(SerializeServer::new());
        let probe = Probe::slow(Duration::from_millis(100));
        let chain: RegistryChain<NetworkServiceEndpoint> =
            RegistryChain::new("t", vec![serialize.clone(), probe.clone()]);
        let mut tasks = Vec::new();
        for i in 0..6 {
            let chain = chain.clone();
            let name = if i % 2 == 0 { "a" } else { "b" };
            tasks.push(tokio::spawn(async move {
                let mut ctx = Ctx::new(Clock::system());
                chain.run_register(&mut ctx, nse(name)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(probe.max_concurrent_per_name(), 1);
        assert_eq!(
            probe.max_concurrent(),
            2,
            "different names run concurrently"
        );
        assert_eq!(serialize.names().names_in_use(), 0);
    }
}
