//! `heal` (client, both registries): re-registers what was registered through it when the registry
//! restarts or the connection to it breaks (Go `registry/common/heal`).
//!
//! - Register: remembers the item (the latest one sent for its name), makes sure one watching Find
//!   with an empty query is open to the registry (opening it first; failure fails the Register), then
//!   runs the rest of the chain. A failed first Register forgets the item again.
//! - Find: a non-watching Find passes through. A watching Find is re-created transparently when its
//!   stream breaks or ends (retrying with backoff), so the caller sees one endless stream; the
//!   re-created stream starts with the current matches again, as in Go.
//! - Unregister: forgets the item and continues down the chain; an item never registered through this
//!   element succeeds without going further (as in Go).
//! - Background: when the monitoring Find breaks, every remembered item is re-registered through the
//!   rest of the chain on its own task, retrying every 200 ms at first with backoff capped at a few
//!   seconds, until it succeeds or the item is unregistered; the monitor is reopened on the way. An
//!   endpoint's past `expiration_time` is dropped before re-registering (the registry then applies its
//!   own default). The monitor runs without the caller's deadline and keeps only the caller's
//!   [`ClientUrl`] from its context. Everything stops when the `with_cancellation` token is cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_core::clock::from_timestamp;
use nsm_core::registry::{FindStream, Found, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::values::ClientUrl;
use nsm_core::{Clock, Ctx, Result};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::serialize::turn_from_ctx;

const NAME: &str = "heal";

/// What heal may adjust before re-registering an item.
pub trait HealItem: RegistryItem {
    /// Prepares a remembered item for re-registration now.
    fn for_reregistration(self, _clock: &Clock) -> Self {
        self
    }
}

impl HealItem for NetworkService {}

impl HealItem for NetworkServiceEndpoint {
    fn for_reregistration(mut self, clock: &Clock) -> Self {
        let expired = self
            .expiration_time
            .as_ref()
            .and_then(from_timestamp)
            .is_some_and(|t| t <= clock.now());
        if expired {
            self.expiration_time = None;
        }
        self
    }
}

/// Retry pacing: starts at `initial`, doubles, never exceeds `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(3),
        }
    }
}

impl Backoff {
    fn after(&self, d: Duration) -> Duration {
        (d * 2).min(self.max)
    }
}

struct Remembered<T: RegistryItem> {
    item: T,
    ctx: Ctx,
    next: RegistryNext<T>,
    forget: CancellationToken,
}

struct HealState<T: RegistryItem> {
    items: Mutex<HashMap<String, Remembered<T>>>,
    monitoring: tokio::sync::Mutex<bool>,
    backoff: Backoff,
    shutdown: CancellationToken,
}

/// Re-registers remembered items when the registry connection breaks.
pub struct HealClient<T: HealItem> {
    state: Arc<HealState<T>>,
}

impl<T: HealItem> Drop for HealClient<T> {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

impl<T: HealItem> Default for HealClient<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: HealItem> HealClient<T> {
    /// Nothing remembered, no monitor open yet.
    pub fn new() -> Self {
        Self {
            state: HealState::new(Backoff::default(), CancellationToken::new()),
        }
    }

    /// Uses `backoff` for re-registration and re-Find retries.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.state = HealState::new(backoff, self.state.shutdown.clone());
        self
    }

    /// Stops the monitor and every retry when `token` is cancelled (Go's chain context). The monitor
    /// task holds the rest of the chain, and so this element, alive; cancelling is how an owner ends it.
    pub fn with_cancellation(mut self, token: &CancellationToken) -> Self {
        self.state = HealState::new(self.state.backoff, token.child_token());
        self
    }

    /// Number of remembered items.
    pub fn remembered(&self) -> usize {
        self.state.items.lock().len()
    }
}

/// A context for long-lived background calls: the caller's clock and client URL, no deadline.
fn background_ctx(ctx: &Ctx) -> Ctx {
    let mut bg = Ctx::new(*ctx.clock());
    if let Some(url) = ctx.get::<ClientUrl>() {
        bg.insert(url.clone());
    }
    bg
}

impl<T: HealItem> HealState<T> {
    fn new(backoff: Backoff, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            items: Mutex::default(),
            monitoring: tokio::sync::Mutex::new(false),
            backoff,
            shutdown,
        })
    }

    /// Opens the monitoring Find unless one is open.
    async fn ensure_monitor(self: &Arc<Self>, ctx: &Ctx, next: RegistryNext<T>) -> Result<()> {
        let mut open = self.monitoring.lock().await;
        if *open {
            return Ok(());
        }
        let query = Query {
            template: T::default(),
            watch: true,
        };
        let mut stream = next.find(&mut background_ctx(ctx), query).await?;
        *open = true;
        let state = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = state.shutdown.cancelled() => return,
                    r = stream.next() => match r {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!("heal: {} registry watch broke: {e}", T::KIND);
                            break;
                        }
                        None => {
                            tracing::warn!("heal: {} registry watch ended", T::KIND);
                            break;
                        }
                    },
                }
            }
            *state.monitoring.lock().await = false;
            state.restore();
        });
        Ok(())
    }

    /// Re-registers every remembered item, each on its own task.
    fn restore(self: &Arc<Self>) {
        let names: Vec<String> = self.items.lock().keys().cloned().collect();
        for name in names {
            let state = Arc::clone(self);
            tokio::spawn(async move { state.reregister(&name).await });
        }
    }

    async fn reregister(self: &Arc<Self>, name: &str) {
        let Some((item, ctx, next, forget)) = self.items.lock().get(name).map(|r| {
            (
                r.item.clone(),
                r.ctx.clone(),
                r.next.clone(),
                r.forget.clone(),
            )
        }) else {
            return;
        };
        let clock = *ctx.clock();
        let mut delay = self.backoff.initial;
        while !forget.is_cancelled() {
            let attempt = async {
                self.ensure_monitor(&ctx, next.clone()).await?;
                let _turn = turn_from_ctx(&ctx, name).await;
                let mut call_ctx = ctx.postpone();
                let item = item.clone().for_reregistration(&clock);
                next.clone().register(&mut call_ctx, item).await
            };
            match attempt.await {
                Ok(_) => return,
                Err(e) => tracing::debug!("heal: re-registering {name} failed: {e}"),
            }
            tokio::select! {
                () = forget.cancelled() => return,
                () = clock.sleep(delay) => {}
            }
            delay = self.backoff.after(delay);
        }
    }

    fn forget(&self, name: &str) -> bool {
        match self.items.lock().remove(name) {
            Some(r) => {
                r.forget.cancel();
                true
            }
            None => false,
        }
    }
}

/// A watching Find that re-creates its stream whenever it breaks or ends.
fn endless_watch<T: HealItem>(
    state: Arc<HealState<T>>,
    first: FindStream<T>,
    ctx: Ctx,
    query: Query<T>,
    next: RegistryNext<T>,
) -> FindStream<T> {
    stream::unfold(Some(first), move |current| {
        let (state, ctx, query, next) = (state.clone(), ctx.clone(), query.clone(), next.clone());
        async move {
            let mut current = current;
            loop {
                if let Some(s) = current.as_mut()
                    && let Some(Ok(found)) = s.next().await
                {
                    return Some((Ok::<Found<T>, _>(found), current));
                }
                current = Some(reopen(&state, &ctx, &query, &next).await?);
            }
        }
    })
    .boxed()
}

async fn reopen<T: HealItem>(
    state: &HealState<T>,
    ctx: &Ctx,
    query: &Query<T>,
    next: &RegistryNext<T>,
) -> Option<FindStream<T>> {
    let clock = *ctx.clock();
    let mut delay = state.backoff.initial;
    loop {
        if state.shutdown.is_cancelled() {
            return None;
        }
        match next.clone().find(&mut ctx.clone(), query.clone()).await {
            Ok(s) => return Some(s),
            Err(e) => tracing::debug!("heal: re-opening a watching Find failed: {e}"),
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return None,
            () = clock.sleep(delay) => {}
        }
        delay = state.backoff.after(delay);
    }
}

#[async_trait]
impl<T: HealItem> RegistryServer<T> for HealClient<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        let name = item.name().to_string();
        let forget = self.state.shutdown.child_token();
        let remembered = Remembered {
            item: item.clone(),
            ctx: ctx.clone(),
            next: next.clone(),
            forget,
        };
        let known = match self.state.items.lock().insert(name.clone(), remembered) {
            Some(old) => {
                old.forget.cancel();
                true
            }
            None => false,
        };
        let result = async {
            self.state.ensure_monitor(ctx, next.clone()).await?;
            next.register(ctx, item).await
        }
        .await;
        if result.is_err() && !known {
            self.state.forget(&name);
        }
        result
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        if !query.watch {
            return next.find(ctx, query).await;
        }
        let first = next.clone().find(ctx, query.clone()).await?;
        Ok(endless_watch(
            self.state.clone(),
            first,
            background_ctx(ctx),
            query,
            next,
        ))
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        if !self.state.forget(item.name()) {
            return Ok(());
        }
        next.unregister(ctx, item).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
