//! `expire` (endpoints): registrations live for a bounded time (Go `registry/common/expire`).
//!
//! - Register: pauses the name's pending expiry; sets `expiration_time = min(now + period, requested)`;
//!   runs the rest of the chain; on success schedules an Unregister of the registered endpoint at its
//!   `expiration_time` (replacing the old schedule), on failure resumes the paused one.
//! - Unregister: forwards only if an expiry was scheduled for the name (otherwise the endpoint already
//!   expired or was never registered here, and the call succeeds without going further); the schedule
//!   is dropped on success and resumed if the rest of the chain fails.
//! - Background: one timer task per element (started by the first Register, on its clock) sleeps
//!   until the earliest scheduled expiry; each due Unregister runs through the rest of the chain on
//!   its own task, taking the name's turn from `serialize` when that element precedes this one, with
//!   a fresh context of the register call's timeout. A refresh only moves the name's entry in the
//!   queue (no task per Register). Timers use the context's clock, so paused-time tests drive them.
//! - State: one schedule per endpoint name and a queue of them ordered by expiry time; the timer task
//!   stops when the `with_cancellation` token is cancelled or the element is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_core::clock::{from_timestamp, to_timestamp};
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::{Clock, Ctx, Result};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::serialize::turn_from_ctx;

const NAME: &str = "expire";

type Nse = NetworkServiceEndpoint;

/// Where a schedule's timer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In the queue, waiting for its time.
    Queued,
    /// Its time came: a task is about to unregister the endpoint.
    Firing,
    /// Paused by a Register or Unregister in progress.
    Paused,
}

/// One scheduled Unregister.
struct Schedule {
    /// Changes whenever the schedule is (re)queued; a firing acts only if its id is still current.
    id: u64,
    at: Instant,
    phase: Phase,
    nse: Nse,
    ctx: Ctx,
    next: RegistryNext<Nse>,
}

#[derive(Default)]
struct State {
    by_name: HashMap<String, Schedule>,
    /// Queued schedules by (time, id) → name; the timer task sleeps until the first.
    queue: BTreeMap<(Instant, u64), String>,
    /// Whether the timer task runs (started with the first schedule).
    timer_started: bool,
}

#[derive(Default)]
struct Schedules {
    state: Mutex<State>,
    ids: AtomicU64,
    /// Wakes the timer task when the earliest expiry moved earlier.
    wake: Notify,
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

    /// Stops the timer when `token` is cancelled (Go's chain context). The timer task holds the
    /// pending Unregisters, and so the rest of the chain, alive; cancelling ends it at once.
    pub fn with_cancellation(mut self, token: &CancellationToken) -> Self {
        self.schedules = Arc::new(Schedules {
            shutdown: token.child_token(),
            ..Schedules::default()
        });
        self
    }

    /// Number of endpoints with a scheduled expiry.
    pub fn scheduled(&self) -> usize {
        self.schedules.state.lock().by_name.len()
    }
}

impl Schedules {
    /// Puts `s` (not in the queue) into the queue under a fresh id (any older firing for the name
    /// stands down), waking the timer if it became the earliest.
    fn enqueue(&self, queue: &mut BTreeMap<(Instant, u64), String>, name: &str, s: &mut Schedule) {
        s.id = self.ids.fetch_add(1, Ordering::Relaxed);
        s.phase = Phase::Queued;
        let key = (s.at, s.id);
        let earliest = queue.first_key_value().is_none_or(|(k, _)| key < *k);
        queue.insert(key, name.to_string());
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Takes `s` out of the queue (if it is there) and marks it paused.
    fn dequeue(queue: &mut BTreeMap<(Instant, u64), String>, s: &mut Schedule) {
        if s.phase == Phase::Queued {
            queue.remove(&(s.at, s.id));
        }
        s.phase = Phase::Paused;
    }

    /// The timer: sleeps until the earliest queued expiry and hands every due one to its own task.
    async fn run_timer(self: Arc<Self>, clock: Clock) {
        loop {
            let (due, next_at) = {
                let mut st = self.state.lock();
                let now = clock.instant();
                let mut due = Vec::new();
                while let Some(entry) = st.queue.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let ((_, id), name) = entry.remove_entry();
                    if let Some(s) = st.by_name.get_mut(&name)
                        && s.id == id
                    {
                        s.phase = Phase::Firing;
                        due.push((name, id));
                    }
                }
                (due, st.queue.first_key_value().map(|((at, _), _)| *at))
            };
            for (name, id) in due {
                let this = Arc::clone(&self);
                tokio::spawn(async move { this.fire(&name, id).await });
            }
            let sleep = async {
                match next_at {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = sleep => {}
            }
        }
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

    /// The register context of the name's schedule, if `id` is still its firing.
    fn current_ctx(&self, name: &str, id: u64) -> Option<Ctx> {
        let st = self.state.lock();
        st.by_name
            .get(name)
            .filter(|s| s.id == id && s.phase == Phase::Firing)
            .map(|s| s.ctx.clone())
    }

    fn take_if_current(&self, name: &str, id: u64) -> Option<Schedule> {
        let mut st = self.state.lock();
        if st
            .by_name
            .get(name)
            .is_some_and(|s| s.id == id && s.phase == Phase::Firing)
        {
            return st.by_name.remove(name);
        }
        None
    }

    /// Pauses the name's timer; true if the name had a schedule.
    fn pause(&self, name: &str) -> bool {
        let mut st = self.state.lock();
        let State { by_name, queue, .. } = &mut *st;
        match by_name.get_mut(name) {
            Some(s) => {
                Self::dequeue(queue, s);
                true
            }
            None => false,
        }
    }

    /// Resumes a paused timer with its old expiry time.
    fn resume(&self, name: &str) {
        let mut st = self.state.lock();
        let State { by_name, queue, .. } = &mut *st;
        if let Some(s) = by_name.get_mut(name)
            && s.phase == Phase::Paused
        {
            self.enqueue(queue, name, s);
        }
    }

    fn remove(&self, name: &str) {
        let mut st = self.state.lock();
        if let Some(mut s) = st.by_name.remove(name) {
            Self::dequeue(&mut st.queue, &mut s);
        }
    }

    fn schedule(self: &Arc<Self>, at: Instant, nse: Nse, ctx: Ctx, next: RegistryNext<Nse>) {
        let name = nse.name.clone();
        let clock = *ctx.clock();
        let mut s = Schedule {
            id: 0,
            at,
            phase: Phase::Paused,
            nse,
            ctx,
            next,
        };
        let mut st = self.state.lock();
        if let Some(mut old) = st.by_name.remove(&name) {
            Self::dequeue(&mut st.queue, &mut old);
        }
        self.enqueue(&mut st.queue, &name, &mut s);
        st.by_name.insert(name, s);
        if !st.timer_started {
            st.timer_started = true;
            tokio::spawn(Arc::clone(self).run_timer(clock));
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
