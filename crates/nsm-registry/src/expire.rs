//! `expire` (endpoints): registrations live for a bounded time (Go `registry/common/expire`).
//!
//! - Register: pauses the name's pending expiry; sets `expiration_time = min(now + period, requested)`;
//!   runs the rest of the chain; on success schedules an Unregister of the registered endpoint at its
//!   `expiration_time` (replacing the old schedule), on failure resumes the paused one.
//! - Unregister: forwards only if an expiry was scheduled for the name (otherwise the endpoint already
//!   expired or was never registered here, and the call succeeds without going further); the schedule
//!   is dropped on success and resumed if the rest of the chain fails.
//! - Background: the scheduled Unregister runs through the rest of the chain on its own task, taking the
//!   name's turn from `serialize` when that element precedes this one, with a fresh context of the
//!   register call's timeout. Timers use the context's clock, so paused-time tests drive them.
//! - State: one schedule per endpoint name; all timers stop when the `with_cancellation` token is
//!   cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_core::clock::{from_timestamp, to_timestamp};
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::{Ctx, Result};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::serialize::turn_from_ctx;

const NAME: &str = "expire";

type Nse = NetworkServiceEndpoint;

/// One scheduled Unregister.
struct Schedule {
    /// Changes whenever a timer task is (re)started; a task acts only if its id is still current.
    id: u64,
    at: Instant,
    /// `None` while paused.
    timer: Option<CancellationToken>,
    nse: Nse,
    ctx: Ctx,
    next: RegistryNext<Nse>,
}

#[derive(Default)]
struct Schedules {
    by_name: Mutex<HashMap<String, Schedule>>,
    ids: AtomicU64,
    shutdown: CancellationToken,
}

/// Unregisters endpoints when their registration expires.
pub struct ExpireServer {
    period: Duration,
    schedules: Arc<Schedules>,
}

impl Drop for ExpireServer {
    fn drop(&mut self) {
        self.schedules.shutdown.cancel();
    }
}

impl ExpireServer {
    /// Registrations expire after at most `period` (Go's NSMgr and registry-memory use one minute).
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            schedules: Arc::default(),
        }
    }

    /// Stops every timer when `token` is cancelled (Go's chain context). Timer tasks hold the rest of
    /// the chain, and so this element, alive until they fire; cancelling ends them at once.
    pub fn with_cancellation(mut self, token: &CancellationToken) -> Self {
        self.schedules = Arc::new(Schedules {
            shutdown: token.child_token(),
            ..Schedules::default()
        });
        self
    }

    /// Number of endpoints with a scheduled expiry.
    pub fn scheduled(&self) -> usize {
        self.schedules.by_name.lock().len()
    }
}

impl Schedules {
    /// Starts the timer task of `s` (a fresh id makes any older task for the name stand down).
    fn start_timer(self: &Arc<Self>, name: &str, s: &mut Schedule) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let stop = self.shutdown.child_token();
        s.id = id;
        s.timer = Some(stop.clone());
        let schedules = Arc::clone(self);
        let (name, at, clock) = (name.to_string(), s.at, *s.ctx.clock());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = clock.sleep_until(at) => schedules.fire(&name, id).await,
            }
        });
    }

    async fn fire(&self, name: &str, id: u64) {
        let Some(ctx) = self.current_ctx(name, id) else {
            return;
        };
        let _turn = turn_from_ctx(&ctx, name).await;
        let Some(s) = self.take_if_current(name, id) else {
            return;
        };
        let mut ctx = s.ctx.postpone();
        if let Err(e) = s.next.unregister(&mut ctx, s.nse).await {
            tracing::error!("expire: failed to unregister expired endpoint {name}: {e}");
        }
    }

    /// The register context of the name's schedule, if `id` is still its running timer.
    fn current_ctx(&self, name: &str, id: u64) -> Option<Ctx> {
        let map = self.by_name.lock();
        map.get(name)
            .filter(|s| s.id == id && s.timer.is_some())
            .map(|s| s.ctx.clone())
    }

    fn take_if_current(&self, name: &str, id: u64) -> Option<Schedule> {
        let mut map = self.by_name.lock();
        if map
            .get(name)
            .is_some_and(|s| s.id == id && s.timer.is_some())
        {
            return map.remove(name);
        }
        None
    }

    /// Pauses the name's timer; true if the name had a schedule.
    fn pause(&self, name: &str) -> bool {
        match self.by_name.lock().get_mut(name) {
            Some(s) => {
                if let Some(t) = s.timer.take() {
                    t.cancel();
                }
                true
            }
            None => false,
        }
    }

    /// Resumes a paused timer with its old expiry time.
    fn resume(self: &Arc<Self>, name: &str) {
        let mut map = self.by_name.lock();
        if let Some(s) = map.get_mut(name).filter(|s| s.timer.is_none()) {
            self.start_timer(name, s);
        }
    }

    fn remove(&self, name: &str) {
        if let Some(t) = self.by_name.lock().remove(name).and_then(|s| s.timer) {
            t.cancel();
        }
    }

    fn schedule(self: &Arc<Self>, at: Instant, nse: Nse, ctx: Ctx, next: RegistryNext<Nse>) {
        let name = nse.name.clone();
        let mut s = Schedule {
            id: 0,
            at,
            timer: None,
            nse,
            ctx,
            next,
        };
        self.start_timer(&name, &mut s);
        if let Some(t) = self
            .by_name
            .lock()
            .insert(name, s)
            .and_then(|old| old.timer)
        {
            t.cancel();
        }
    }
}

#[async_trait]
impl RegistryServer<Nse> for ExpireServer {
    async fn register(&self, ctx: &mut Ctx, mut nse: Nse, next: RegistryNext<Nse>) -> Result<Nse> {
        let clock = *ctx.clock();
        let name = nse.name.clone();
        self.schedules.pause(&name);
        let mut expires = clock.now() + self.period;
        if let Some(requested) = nse.expiration_time.as_ref().and_then(from_timestamp) {
            expires = expires.min(requested);
        }
        nse.expiration_time = Some(to_timestamp(expires));
        let reg = match next.clone().register(ctx, nse).await {
            Ok(reg) => reg,
            Err(e) => {
                self.schedules.resume(&name);
                return Err(e);
            }
        };
        if reg.name != name {
            self.schedules.remove(&name);
        }
        let at = reg
            .expiration_time
            .as_ref()
            .and_then(from_timestamp)
            .map_or_else(|| clock.instant_of(expires), |t| clock.instant_of(t));
        self.schedules.schedule(at, reg.clone(), ctx.clone(), next);
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
        let name = nse.name.clone();
        if !self.schedules.pause(&name) {
            tracing::warn!("expire: endpoint {name} is already unregistered");
            return Ok(());
        }
        match next.unregister(ctx, nse).await {
            Ok(()) => {
                self.schedules.remove(&name);
                Ok(())
            }
            Err(e) => {
                self.schedules.resume(&name);
                Err(e)
            }
        }
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
