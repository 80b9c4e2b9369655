//! `refresh` (endpoint client): keeps a registration alive before the registry expires it (Go
//! `registry/common/refresh`).
//!
//! - Register: remembers how long the caller asked the registration to live (its `expiration_time`
//!   minus now; none if it asked for none), stops any refresh of the name, runs the rest of the chain,
//!   and if the answer carries an `expiration_time`, starts refreshing: at 2/3 of the remaining time it
//!   re-registers the endpoint with `expiration_time = now + the original duration` (or none), then
//!   re-arms from the new answer.
//! - Unregister: stops the name's refresh, then continues down the chain.
//! - Background: one task per endpoint name; it takes the name's turn from `serialize` when that element
//!   precedes this one. A failed refresh is retried at 2/3 of what is left of the current registration
//!   (at least every 200 ms) until it expires — Go stops refreshing after one failure and relies on heal.
//!   Every task stops when the token given to `with_cancellation` is cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::{Ctx, Result};
use parking_lot::Mutex;
use prost_types::Timestamp;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::serialize::turn_from_ctx;

const NAME: &str = "refresh";
const MIN_RETRY: Duration = Duration::from_millis(200);

type Nse = NetworkServiceEndpoint;

#[derive(Default)]
struct Refreshes {
    by_name: Mutex<HashMap<String, (u64, CancellationToken)>>,
    ids: AtomicU64,
    shutdown: CancellationToken,
}

impl Refreshes {
    fn stop(&self, name: &str) {
        if let Some((_, t)) = self.by_name.lock().remove(name) {
            t.cancel();
        }
    }

    fn finished(&self, name: &str, id: u64) {
        let mut map = self.by_name.lock();
        if map.get(name).is_some_and(|(i, _)| *i == id) {
            map.remove(name);
        }
    }
}

/// Re-registers endpoints before their registration expires.
pub struct RefreshClient {
    refreshes: Arc<Refreshes>,
}

impl Default for RefreshClient {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RefreshClient {
    fn drop(&mut self) {
        self.refreshes.shutdown.cancel();
    }
}

impl RefreshClient {
    /// No refreshes running.
    pub fn new() -> Self {
        Self {
            refreshes: Arc::default(),
        }
    }

    /// Stops every refresh when `token` is cancelled (Go's chain context). Background tasks hold the
    /// rest of the chain, and so this element, alive; cancelling is how an owner ends them for good.
    pub fn with_cancellation(mut self, token: &CancellationToken) -> Self {
        self.refreshes = Arc::new(Refreshes {
            shutdown: token.child_token(),
            ..Refreshes::default()
        });
        self
    }

    /// Number of endpoints being refreshed.
    pub fn active(&self) -> usize {
        self.refreshes.by_name.lock().len()
    }

    fn start(
        &self,
        ctx: &Ctx,
        nse: Nse,
        expires: Timestamp,
        lifetime: Option<Duration>,
        next: RegistryNext<Nse>,
    ) {
        let id = self.refreshes.ids.fetch_add(1, Ordering::Relaxed);
        let stop = self.refreshes.shutdown.child_token();
        let name = nse.name.clone();
        if let Some((_, old)) = self
            .refreshes
            .by_name
            .lock()
            .insert(name.clone(), (id, stop.clone()))
        {
            old.cancel();
        }
        let refreshes = self.refreshes.clone();
        // The first deadline is fixed now, not when the task first runs.
        let clock = *ctx.clock();
        let first = clock.instant() + clock.until_timestamp(&expires) * 2 / 3;
        let job = Refresh {
            ctx: ctx.clone(),
            nse,
            lifetime,
            next,
            stop,
        };
        tokio::spawn(async move {
            job.run(first, expires).await;
            refreshes.finished(&name, id);
        });
    }
}

struct Refresh {
    ctx: Ctx,
    nse: Nse,
    lifetime: Option<Duration>,
    next: RegistryNext<Nse>,
    stop: CancellationToken,
}

impl Refresh {
    async fn run(mut self, mut at: Instant, mut expires: Timestamp) {
        let clock = *self.ctx.clock();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = clock.sleep_until(at) => {}
            }
            let _turn = turn_from_ctx(&self.ctx, &self.nse.name).await;
            if self.stop.is_cancelled() {
                return;
            }
            let mut ctx = match self.lifetime {
                Some(d) => self.ctx.clone().with_timeout(d),
                None => self.ctx.postpone(),
            };
            self.nse.expiration_time = self
                .lifetime
                .map(|d| nsm_core::clock::to_timestamp(clock.now() + d));
            match self.next.clone().register(&mut ctx, self.nse.clone()).await {
                Ok(reg) => match reg.expiration_time {
                    Some(t) => {
                        expires = t;
                        at = clock.instant() + clock.until_timestamp(&expires) * 2 / 3;
                    }
                    None => {
                        tracing::warn!(
                            "refresh: {} came back without expiration time; stopping",
                            self.nse.name
                        );
                        return;
                    }
                },
                Err(e) => {
                    let left = clock.until_timestamp(&expires);
                    if left.is_zero() {
                        tracing::error!(
                            "refresh: {} expired after failed refreshes: {e}",
                            self.nse.name
                        );
                        return;
                    }
                    tracing::warn!("refresh: failed to refresh {}: {e}", self.nse.name);
                    at = clock.instant() + (left * 2 / 3).max(MIN_RETRY);
                }
            }
        }
    }
}

#[async_trait]
impl RegistryServer<Nse> for RefreshClient {
    async fn register(&self, ctx: &mut Ctx, nse: Nse, next: RegistryNext<Nse>) -> Result<Nse> {
        let lifetime = nse
            .expiration_time
            .as_ref()
            .map(|t| ctx.clock().until_timestamp(t))
            .filter(|d| !d.is_zero());
        self.refreshes.stop(&nse.name);
        let reg = next.clone().register(ctx, nse.clone()).await?;
        if let Some(expires) = reg.expiration_time {
            let mut refreshed = nse;
            // The registry may have named a nameless endpoint; refresh what it registered.
            refreshed.name.clone_from(&reg.name);
            refreshed.expiration_time = Some(expires);
            self.start(ctx, refreshed, expires, lifetime, next);
        }
        Ok(reg)
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<Nse>,
        next: RegistryNext<Nse>,
    ) -> Result<FindStream<Nse>> {
        next.find(ctx, query).await
    }

    async fn unregister(&self, ctx: &mut Ctx, nse: Nse, next: RegistryNext<Nse>) -> Result<()> {
        self.refreshes.stop(&nse.name);
        next.unregister(ctx, nse).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
