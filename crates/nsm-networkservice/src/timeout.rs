//! `timeout`: closes connections whose caller stopped refreshing them.
//!
//! **Request**: after the rest of the chain succeeds, arms a timer for the `expires` of the *previous*
//! path segment — the caller's token expiry, recorded by `updatetoken`. A connection without it is
//! refused with `InvalidArgument` (and closed downstream again). Every Request (a refresh) re-arms the
//! timer; a failed Request leaves the running timer alone. When the timer fires, the connection is
//! closed through `begin`'s event handle, i.e. through the rest of the chain after `begin`.
//!
//! **Close**: disarms the timer after the rest of the chain has closed — unless that Close failed
//! because it ran out of time or was cancelled: the connection may then still exist downstream, and the
//! timer stays armed to close it later (sdk #1030).
//!
//! **State**: the connection's armed deadline, in its metadata (server side), and the element's queue
//! of deadlines (`queue`: one task serves all the connections, running only while one is armed).
//! Needs `begin` and `metadata` before it; without them Request fails with `Internal` before anything
//! downstream runs.

mod queue;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::clock::from_timestamp;
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use tonic::Code;

use crate::begin::EventFactory;
use queue::{Armed, Queue};

const ELEMENT: &str = "timeout";

/// `timeout` for server chains.
#[derive(Clone, Default)]
pub struct TimeoutServer {
    queue: Queue,
}

impl std::fmt::Debug for TimeoutServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutServer")
            .field("armed", &self.queue.len())
            .finish()
    }
}

impl TimeoutServer {
    /// A new element.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of connections whose deadline is armed.
    pub fn armed(&self) -> usize {
        self.queue.len()
    }
}

#[async_trait]
impl NetworkServiceServer for TimeoutServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let (Some(md), Some(events)) =
            (ctx.metadata().cloned(), ctx.get::<EventFactory>().cloned())
        else {
            return Err(NsmError::internal(
                ELEMENT,
                "needs the begin and metadata elements before it",
            ));
        };
        let cleanup_ctx = ctx.postpone();
        let conn = next.clone().request(ctx, request).await?;
        let expires = conn
            .previous_segment()
            .and_then(|s| s.expires.as_ref())
            .and_then(from_timestamp);
        let Some(expires) = expires else {
            let mut cleanup_ctx = cleanup_ctx;
            if let Err(e) = next.close(&mut cleanup_ctx, conn.clone()).await {
                tracing::warn!(element = ELEMENT, id = %conn.id, error = %e, "closing an untimed connection failed");
            }
            return Err(NsmError::invalid(
                ELEMENT,
                format!(
                    "the previous path segment of connection {:?} has no (valid) expiry time",
                    conn.id
                ),
            ));
        };
        let at = ctx.clock().instant_of(expires);
        let armed = self.queue.arm(*ctx.clock(), at, events);
        if let Some(old) = md.insert(Side::Server, armed) {
            old.disarm();
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let md = ctx.metadata().cloned();
        let result = next.close(ctx, conn).await;
        let interrupted = result
            .as_ref()
            .err()
            .is_some_and(|e| matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled));
        if !interrupted && let Some(armed) = md.and_then(|m| m.remove::<Armed>(Side::Server)) {
            armed.disarm();
        }
        result
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use nsm_api::{Path, PathSegment};
    use nsm_core::chain::Element;
    use nsm_core::token::TestTokenGenerator;
    use nsm_core::values::IncomingToken;
    use nsm_core::{Chain, Clock};
    use parking_lot::Mutex;

    use super::*;
    use crate::begin::{BeginClient, BeginServer};
    use crate::metadata::{MetadataClient, MetadataServer};
    use crate::refresh::RefreshClient;
    use crate::updatepath::{UpdatePathClient, UpdatePathServer};
    use crate::updatetoken::UpdateTokenServer;

    const TOKEN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

    /// Stands for the gRPC hop: the server chain runs with a fresh context carrying the caller's
    /// per-RPC token, valid for `TOKEN_TIMEOUT`.
    struct Remote(Chain);

    impl Remote {
        fn server_ctx(ctx: &Ctx) -> Ctx {
            let mut server_ctx = Ctx::new(*ctx.clock());
            server_ctx.insert(IncomingToken {
                token: "token".into(),
                expires: ctx.clock().now() + TOKEN_TIMEOUT,
            });
            server_ctx
        }
    }

    #[async_trait]
    impl NetworkServiceServer for Remote {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            _: Next,
        ) -> Result<Connection> {
            self.0
                .run_request(&mut Self::server_ctx(ctx), request)
                .await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, _: Next) -> Result<()> {
            self.0.run_close(&mut Self::server_ctx(ctx), conn).await
        }
        fn name(&self) -> &'static str {
            "remote"
        }
    }

    /// The endpoint: which connections are open, which were closed, and any Close of a connection
    /// that was not open.
    #[derive(Default)]
    struct Conns {
        open: Mutex<HashMap<String, bool>>,
        bad_closes: Mutex<Vec<String>>,
    }

    impl Conns {
        fn counts(&self) -> (usize, usize) {
            let open = self.open.lock();
            let n = open.values().filter(|o| **o).count();
            (n, open.len() - n)
        }
    }

    #[async_trait]
    impl NetworkServiceServer for Conns {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            let id = request
                .connection
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default();
            self.open.lock().insert(id, true);
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            match self.open.lock().get_mut(&conn.id) {
                Some(open) if *open => *open = false,
                _ => self.bad_closes.lock().push(conn.id.clone()),
            }
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "conns"
        }
    }

    /// Fails the n-th Request / Close (counting from 0) when the predicate says so.
    struct Inject {
        requests: AtomicUsize,
        closes: AtomicUsize,
        fail_request: fn(usize) -> bool,
        fail_close: fn(usize) -> bool,
        error: NsmError,
    }

    impl Inject {
        fn new(fail_request: fn(usize) -> bool, fail_close: fn(usize) -> bool) -> Self {
            Self {
                requests: AtomicUsize::new(0),
                closes: AtomicUsize::new(0),
                fail_request,
                fail_close,
                error: NsmError::unavailable("inject", "injected error"),
            }
        }
    }

    #[async_trait]
    impl NetworkServiceServer for Inject {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            if (self.fail_request)(self.requests.fetch_add(1, Ordering::SeqCst)) {
                return Err(self.error.clone());
            }
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            if (self.fail_close)(self.closes.fetch_add(1, Ordering::SeqCst)) {
                return Err(self.error.clone());
            }
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "inject"
        }
    }

    struct Setup {
        client: Chain,
        conns: Arc<Conns>,
        server_begin: Arc<BeginServer>,
        server_metadata: Arc<MetadataServer>,
    }

    /// Go's `testClient`: a client chain (with `client_extra`) calling an endpoint chain with timeout
    /// (then `server_extra`, then the connection recorder) over a pretend gRPC hop.
    fn setup(client_extra: Vec<Element>, server_extra: Vec<Element>) -> Setup {
        let conns = Arc::new(Conns::default());
        let server_begin = Arc::new(BeginServer::new());
        let server_metadata = Arc::new(MetadataServer::new());
        let mut server: Vec<Element> = vec![
            Arc::new(UpdatePathServer::new("server")),
            server_begin.clone(),
            Arc::new(UpdateTokenServer::new(Arc::new(
                TestTokenGenerator::default(),
            ))),
            server_metadata.clone(),
            Arc::new(TimeoutServer::new()),
        ];
        server.extend(server_extra);
        server.push(conns.clone());
        let mut client: Vec<Element> = vec![
            Arc::new(UpdatePathClient::new("client")),
            Arc::new(BeginClient::new()),
            Arc::new(MetadataClient::new()),
        ];
        client.extend(client_extra);
        client.push(Arc::new(Remote(Chain::new("server", server))));
        Setup {
            client: Chain::new("client", client),
            conns,
            server_begin,
            server_metadata,
        }
    }

    fn ctx() -> Ctx {
        Ctx::new(Clock::system()).with_timeout(Duration::from_secs(5))
    }

    /// Lets spawned work run (paused clock: this also moves time by a few milliseconds).
    async fn settle() {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn request_is_closed_when_the_callers_token_expires() {
        let s = setup(vec![], vec![]);
        s.client
            .run_request(&mut ctx(), NetworkServiceRequest::default())
            .await
            .unwrap();
        assert_eq!(s.conns.counts(), (1, 0));
        tokio::time::advance(TOKEN_TIMEOUT / 2).await;
        settle().await;
        assert_eq!(s.conns.counts(), (1, 0));
        tokio::time::advance(TOKEN_TIMEOUT / 2).await;
        settle().await;
        assert_eq!(s.conns.counts(), (0, 1));
        assert!(s.server_begin.is_empty() && s.server_metadata.is_empty());
        assert!(s.conns.bad_closes.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn one_task_serves_every_armed_connection_and_ends_with_the_last() {
        let s = setup(vec![], vec![]);
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        for _ in 0..50 {
            s.client
                .run_request(&mut ctx(), NetworkServiceRequest::default())
                .await
                .unwrap();
        }
        settle().await;
        assert_eq!(s.conns.counts(), (50, 0));
        assert_eq!(
            tasks(),
            before + 1,
            "one timer task, not one per connection"
        );
        tokio::time::advance(TOKEN_TIMEOUT).await;
        settle().await;
        assert_eq!(s.conns.counts(), (0, 50), "every connection expired");
        assert!(s.server_begin.is_empty() && s.server_metadata.is_empty());
        assert_eq!(tasks(), before, "nothing armed: the timer task is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_armed_later_fires_first() {
        let s = setup(vec![], vec![]);
        let endpoint = Chain::new(
            "server",
            vec![
                Arc::new(UpdatePathServer::new("server")),
                s.server_begin.clone(),
                Arc::new(UpdateTokenServer::new(Arc::new(
                    TestTokenGenerator::default(),
                ))),
                s.server_metadata.clone(),
                Arc::new(TimeoutServer::new()),
                s.conns.clone(),
            ],
        );
        let call = |id: &'static str, lifetime: Duration| {
            let endpoint = endpoint.clone();
            async move {
                let mut ctx = ctx();
                ctx.insert(IncomingToken {
                    token: "token".into(),
                    expires: ctx.clock().now() + lifetime,
                });
                // A caller one hop before us, with its own segment (id = connection id).
                let req = NetworkServiceRequest {
                    connection: Some(Connection {
                        id: id.into(),
                        path: Some(Path {
                            index: 0,
                            path_segments: vec![PathSegment::new(format!("client-{id}"), id)],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                endpoint.run_request(&mut ctx, req).await.unwrap()
            }
        };
        call("late", Duration::from_secs(600)).await;
        call("early", Duration::from_secs(60)).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        settle().await;
        // The timer was waiting for the 600 s deadline when the 60 s one was armed.
        assert_eq!(s.conns.counts(), (1, 1), "the early one expired on time");
        tokio::time::advance(Duration::from_secs(540)).await;
        settle().await;
        assert_eq!(s.conns.counts(), (0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn close_before_timeout_disarms_it() {
        let s = setup(vec![], vec![]);
        let conn = s
            .client
            .run_request(&mut ctx(), NetworkServiceRequest::default())
            .await
            .unwrap();
        s.client.run_close(&mut ctx(), conn).await.unwrap();
        assert_eq!(s.conns.counts(), (0, 1));
        tokio::time::advance(TOKEN_TIMEOUT).await;
        settle().await;
        assert_eq!(s.conns.counts(), (0, 1));
        assert!(s.conns.bad_closes.lock().is_empty(), "no double Close");
    }

    #[tokio::test(start_paused = true)]
    async fn close_after_timeout_is_harmless() {
        let s = setup(vec![], vec![]);
        let conn = s
            .client
            .run_request(&mut ctx(), NetworkServiceRequest::default())
            .await
            .unwrap();
        tokio::time::advance(TOKEN_TIMEOUT).await;
        settle().await;
        assert_eq!(s.conns.counts(), (0, 1));
        s.client.run_close(&mut ctx(), conn).await.unwrap();
        assert_eq!(s.conns.counts(), (0, 1));
        assert!(s.conns.bad_closes.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_refreshes_do_not_keep_the_connection_alive() {
        // Every Request after the first fails at the endpoint, so the client's refreshes fail and the
        // endpoint's timer (armed by the first Request) closes the connection.
        let inject = Arc::new(Inject::new(|n| n >= 1, |_| false));
        let s = setup(vec![Arc::new(RefreshClient::new())], vec![inject.clone()]);
        let conn = s
            .client
            .run_request(&mut ctx(), NetworkServiceRequest::default())
            .await
            .unwrap();
        assert_eq!(s.conns.counts(), (1, 0));
        for _ in 0..15 {
            tokio::time::advance(TOKEN_TIMEOUT / 15).await;
            settle().await;
        }
        assert_eq!(s.conns.counts(), (0, 1));
        // Refreshed every 3 minutes (a fifth of 15), each refresh refused by the endpoint.
        assert!(
            inject.requests.load(Ordering::SeqCst) >= 5,
            "refreshes reached the endpoint"
        );
        s.client.run_close(&mut ctx(), conn).await.unwrap();
        assert_eq!(s.conns.counts(), (0, 1));
        assert!(s.conns.bad_closes.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn close_that_ran_out_of_time_is_retried_by_the_timer() {
        let mut inject = Inject::new(|_| false, |n| n == 0);
        inject.error = NsmError::deadline("inject", "injected");
        let s = setup(vec![], vec![Arc::new(inject)]);
        let conn = s
            .client
            .run_request(&mut ctx(), NetworkServiceRequest::default())
            .await
            .unwrap();
        let err = s.client.run_close(&mut ctx(), conn).await.unwrap_err();
        assert!(err.is_deadline(), "{err}");
        assert_eq!(s.conns.counts(), (1, 0));
        tokio::time::advance(TOKEN_TIMEOUT).await;
        settle().await;
        assert_eq!(s.conns.counts(), (0, 1));
    }

    fn bad_request(index: u32, id: &str) -> NetworkServiceRequest {
        NetworkServiceRequest {
            connection: Some(Connection {
                id: id.into(),
                path: Some(Path {
                    index,
                    path_segments: vec![PathSegment::new("client", "client-id")],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_paths_are_refused_by_updatepath_and_leave_nothing_behind() {
        let s = setup(vec![], vec![]);
        // Talk to the endpoint chain directly, as a remote caller with a broken path would.
        let remote = Remote(Chain::new(
            "server",
            vec![
                Arc::new(UpdatePathServer::new("server")),
                s.server_begin.clone(),
                s.server_metadata.clone(),
                Arc::new(TimeoutServer::new()),
                s.conns.clone(),
            ],
        ));
        for req in [
            bad_request(5, "client-id"),
            bad_request(0, "not-the-segment-id"),
        ] {
            let err = remote.0.run_request(&mut ctx(), req).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    NsmError::InvalidArgument {
                        element: "updatepath",
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(s.server_begin.is_empty());
        assert!(s.server_metadata.is_empty());
        assert_eq!(s.conns.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn missing_caller_expiry_is_refused_and_undone() {
        // No updatetoken and no incoming token: the previous segment has no expiry.
        let s = setup(vec![], vec![]);
        let endpoint = Chain::new(
            "server",
            vec![
                Arc::new(UpdatePathServer::new("server")),
                s.server_begin.clone(),
                s.server_metadata.clone(),
                Arc::new(TimeoutServer::new()),
                s.conns.clone(),
            ],
        );
        let mut req = bad_request(0, "client-id");
        req.connection.as_mut().unwrap().id = "client-id".into();
        let err = endpoint.run_request(&mut ctx(), req).await.unwrap_err();
        assert!(
            matches!(
                err,
                NsmError::InvalidArgument {
                    element: "timeout",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(s.conns.counts(), (0, 1), "closed again downstream");
        assert!(s.server_begin.is_empty() && s.server_metadata.is_empty());
    }
}
