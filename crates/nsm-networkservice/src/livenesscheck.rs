//! `livenesscheck` (client, NSC side, optional): heals a connection whose data path died while its
//! control plane still looks healthy.
//!
//! **Request**: runs the rest of the chain; on success, if begin's [`EventFactory`] is in the context
//! and the connection has endpoint addresses (`ip_context.dst_ip_addrs`), starts one check task for
//! the connection (replacing the previous one). Every `interval` the task asks its [`LivenessProbe`]
//! whether the peer answers (`nsm nsc` sends an ICMP echo to each endpoint address from the client's
//! namespace). After `threshold` consecutive failed checks it re-requests through begin with
//! `reselect` — the old path is closed and every hop selects again — exactly as `heal` does when a
//! monitor stream breaks. The re-request runs this element again, which starts a fresh task; if it fails,
//! the task keeps checking and tries again after another `threshold` failures. The re-request is
//! skipped if a newer Request (a heal from elsewhere, a refresh) replaced the task meanwhile.
//!
//! **Close**: a Close from outside stops the task at once; a Close that an event sends along the old
//! path (a reselect) leaves it alone. **State**: per connection id, in the element: the stop tokens.
//! Timers go through the context's clock (tests pause time).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::values::FromEvent;
use nsm_core::{Clock, Ctx, NetworkServiceServer, Next, Result};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::begin::{EventFactory, RequestOptions};

const ELEMENT: &str = "livenesscheck";

/// A probe's answer, to be awaited.
pub type ProbeFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// Answers "is the data path to this address alive?".
pub trait LivenessProbe: Send + Sync + 'static {
    /// Resolves to true if `dst` answers within `timeout`.
    fn alive(&self, dst: IpAddr, timeout: Duration) -> ProbeFuture<'_>;
}

/// Per-connection check state.
#[derive(Debug, Clone)]
struct CheckState {
    /// Cancelled by a real Close.
    closed: CancellationToken,
    /// Cancelled when a newer Request replaces the task (child of `closed`).
    task: CancellationToken,
}

/// The `livenesscheck` client element.
pub struct LivenessCheckClient {
    probe: Arc<dyn LivenessProbe>,
    interval: Duration,
    threshold: u32,
    timeout: Duration,
    states: Arc<Mutex<HashMap<String, CheckState>>>,
    tasks: Arc<AtomicUsize>,
    heals: Arc<AtomicUsize>,
}

impl std::fmt::Debug for LivenessCheckClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivenessCheckClient")
            .field("interval", &self.interval)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl LivenessCheckClient {
    /// Checks every `interval`; heals after `threshold` (at least 1) failed checks in a row. Each probe
    /// may take up to `interval` (see [`LivenessCheckClient::with_timeout`]).
    pub fn new(probe: Arc<dyn LivenessProbe>, interval: Duration, threshold: u32) -> Self {
        Self {
            probe,
            interval,
            threshold: threshold.max(1),
            timeout: interval,
            states: Arc::default(),
            tasks: Arc::default(),
            heals: Arc::default(),
        }
    }

    /// How long one probe may wait for an answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Number of running check tasks (for leak checks).
    pub fn active_tasks(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }

    /// Number of connections with check state (for leak checks).
    pub fn tracked(&self) -> usize {
        self.states.lock().len()
    }

    /// Number of heals this element started.
    pub fn heals(&self) -> usize {
        self.heals.load(Ordering::Acquire)
    }

    fn start(&self, id: &str, dsts: Vec<IpAddr>, event: EventFactory, clock: Clock) {
        let task = {
            let mut states = self.states.lock();
            let st = states
                .entry(id.to_string())
                .and_modify(|s| {
                    s.task.cancel();
                    if s.closed.is_cancelled() {
                        s.closed = CancellationToken::new();
                    }
                })
                .or_insert_with(|| {
                    let closed = CancellationToken::new();
                    CheckState {
                        task: closed.child_token(),
                        closed,
                    }
                });
            st.task = st.closed.child_token();
            st.task.clone()
        };
        let check = Check {
            probe: self.probe.clone(),
            interval: self.interval,
            threshold: self.threshold,
            timeout: self.timeout,
            dsts,
            event,
            clock,
            task,
            heals: self.heals.clone(),
        };
        let tasks = self.tasks.clone();
        tasks.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            check.run().await;
            tasks.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// One connection's check loop.
struct Check {
    probe: Arc<dyn LivenessProbe>,
    interval: Duration,
    threshold: u32,
    timeout: Duration,
    dsts: Vec<IpAddr>,
    event: EventFactory,
    clock: Clock,
    task: CancellationToken,
    heals: Arc<AtomicUsize>,
}

impl Check {
    async fn alive(&self) -> bool {
        for dst in &self.dsts {
            if !self.probe.alive(*dst, self.timeout).await {
                return false;
            }
        }
        true
    }

    async fn run(self) {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = self.task.cancelled() => return,
                () = self.clock.sleep(self.interval) => {}
            }
            let ok = tokio::select! {
                () = self.task.cancelled() => return,
                ok = self.alive() => ok,
            };
            if ok {
                failures = 0;
                continue;
            }
            failures += 1;
            if failures < self.threshold {
                continue;
            }
            failures = 0;
            tracing::warn!(
                id = %self.event.connection_id(),
                dst = ?self.dsts,
                "livenesscheck: data path is dead; healing"
            );
            self.heals.fetch_add(1, Ordering::AcqRel);
            let opts = RequestOptions {
                reselect: true,
                cancel: Some(self.task.clone()),
            };
            match self.event.request(opts).await {
                // Healed (the new Request started a new check), or nothing left to heal.
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(id = %self.event.connection_id(), error = %e, "livenesscheck: heal failed; checking again");
                }
            }
        }
    }
}

/// The endpoint addresses of `conn`, without prefix lengths.
fn peer_addresses(conn: &Connection) -> Vec<IpAddr> {
    conn.context
        .as_ref()
        .and_then(|c| c.ip_context.as_ref())
        .map(|ip| {
            ip.dst_ip_addrs
                .iter()
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl NetworkServiceServer for LivenessCheckClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = next.request(ctx, request).await?;
        if let Some(event) = ctx.get::<EventFactory>().cloned() {
            let dsts = peer_addresses(&conn);
            if !dsts.is_empty() {
                self.start(&conn.id, dsts, event, *ctx.clock());
            }
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        if ctx.get::<FromEvent>().is_none()
            && let Some(st) = self.states.lock().remove(&conn.id)
        {
            st.closed.cancel();
        }
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use nsm_api::connectioncontext::{ConnectionContext, IpContext};
    use nsm_core::Chain;

    use super::*;
    use crate::begin::BeginClient;

    /// A probe whose answer the test flips; counts probes.
    #[derive(Default)]
    struct Switch {
        dead: AtomicBool,
        probes: AtomicUsize,
    }

    impl LivenessProbe for Switch {
        fn alive(&self, _: IpAddr, _: Duration) -> ProbeFuture<'_> {
            self.probes.fetch_add(1, Ordering::AcqRel);
            let alive = !self.dead.load(Ordering::Acquire);
            Box::pin(async move { alive })
        }
    }

    /// The endpoint: answers with addresses, counts Requests and Closes; after a reselect (no
    /// endpoint name in the request) it "selects" a new endpoint that answers again.
    #[derive(Default)]
    struct Tail {
        requests: AtomicUsize,
        reselects: AtomicUsize,
        closes: AtomicUsize,
        fail: AtomicBool,
        probe: Option<Arc<Switch>>,
    }

    #[async_trait]
    impl NetworkServiceServer for Tail {
        async fn request(
            &self,
            _: &mut Ctx,
            request: NetworkServiceRequest,
            _: Next,
        ) -> Result<Connection> {
            if self.fail.load(Ordering::Acquire) {
                return Err(nsm_core::NsmError::unavailable("tail", "down"));
            }
            self.requests.fetch_add(1, Ordering::AcqRel);
            let mut conn = request.connection.unwrap_or_default();
            if conn.network_service_endpoint_name.is_empty() {
                if self.requests.load(Ordering::Acquire) > 1 {
                    self.reselects.fetch_add(1, Ordering::AcqRel);
                    if let Some(p) = &self.probe {
                        p.dead.store(false, Ordering::Release);
                    }
                }
                conn.network_service_endpoint_name = "nse".into();
            }
            conn.context = Some(Box::new(ConnectionContext {
                ip_context: Some(IpContext {
                    dst_ip_addrs: vec!["169.254.0.1/32".into()],
                    src_ip_addrs: vec!["169.254.0.2/32".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }));
            Ok(conn)
        }
        async fn close(&self, _: &mut Ctx, _: Connection, _: Next) -> Result<()> {
            self.closes.fetch_add(1, Ordering::AcqRel);
            Ok(())
        }
        fn name(&self) -> &'static str {
            "tail"
        }
    }

    fn setup(threshold: u32) -> (Chain, Arc<LivenessCheckClient>, Arc<Switch>, Arc<Tail>) {
        let probe = Arc::new(Switch::default());
        let live = Arc::new(LivenessCheckClient::new(
            probe.clone(),
            Duration::from_millis(100),
            threshold,
        ));
        let tail = Arc::new(Tail {
            probe: Some(probe.clone()),
            ..Default::default()
        });
        let chain = Chain::new(
            "nsc",
            vec![Arc::new(BeginClient::new()), live.clone(), tail.clone()],
        );
        (chain, live, probe, tail)
    }

    fn request(id: &str) -> NetworkServiceRequest {
        NetworkServiceRequest {
            connection: Some(Connection {
                id: id.into(),
                network_service: "svc".into(),
                ..Default::default()
            }),
            mechanism_preferences: vec![],
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_path_is_checked_and_left_alone() {
        let (chain, live, probe, tail) = setup(3);
        let mut ctx = Ctx::new(Clock::system());
        let conn = chain.run_request(&mut ctx, request("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1050)).await;
        settle().await;
        assert_eq!(probe.probes.load(Ordering::Acquire), 10);
        assert_eq!(tail.requests.load(Ordering::Acquire), 1);
        assert_eq!(live.active_tasks(), 1);
        chain.run_close(&mut ctx, conn).await.unwrap();
        settle().await;
        assert_eq!(live.active_tasks(), 0);
        assert_eq!(live.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn heals_after_threshold_failures_and_checks_the_new_path() {
        let (chain, live, probe, tail) = setup(3);
        let mut ctx = Ctx::new(Clock::system());
        let conn = chain.run_request(&mut ctx, request("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        probe.dead.store(true, Ordering::Release);
        // Checks at 200 and 300 ms fail: not yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
        settle().await;
        assert_eq!(tail.reselects.load(Ordering::Acquire), 0);
        // The third failure (400 ms) heals: old path closed, re-requested without an endpoint name.
        tokio::time::sleep(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(tail.reselects.load(Ordering::Acquire), 1);
        assert_eq!(tail.closes.load(Ordering::Acquire), 1);
        assert_eq!(live.heals(), 1);
        assert_eq!(live.active_tasks(), 1, "one task: the new path's");
        // The new path answers: nothing more happens.
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(tail.reselects.load(Ordering::Acquire), 1);
        chain.run_close(&mut ctx, conn).await.unwrap();
        settle().await;
        assert_eq!(live.active_tasks(), 0);
        assert_eq!(live.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_heal_is_tried_again_and_close_stops_everything() {
        let (chain, live, probe, tail) = setup(2);
        let mut ctx = Ctx::new(Clock::system());
        let conn = chain.run_request(&mut ctx, request("a")).await.unwrap();
        probe.dead.store(true, Ordering::Release);
        tail.fail.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(250)).await;
        settle().await;
        assert_eq!(live.heals(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        settle().await;
        assert_eq!(live.heals(), 2, "tried again after another threshold");
        assert_eq!(live.active_tasks(), 1);
        chain.run_close(&mut ctx, conn).await.unwrap();
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(live.heals(), 2, "nothing after Close");
        assert_eq!(live.active_tasks(), 0);
        assert_eq!(live.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_addresses_or_begin_nothing_is_started() {
        let probe = Arc::new(Switch::default());
        let live = Arc::new(LivenessCheckClient::new(
            probe.clone(),
            Duration::from_millis(100),
            1,
        ));
        let tail = Arc::new(Tail::default());
        // No begin: no event handle.
        let chain = Chain::new("nsc", vec![live.clone(), tail]);
        chain
            .run_request(&mut Ctx::new(Clock::system()), request("a"))
            .await
            .unwrap();
        settle().await;
        assert_eq!(live.active_tasks(), 0);
        assert!(peer_addresses(&Connection::default()).is_empty());
    }
}
