//! `refresh`: re-requests a connection before the endpoints time it out.
//!
//! **Request**: after the rest of the chain succeeds, schedules a re-request through `begin`'s event
//! handle. The delay is a share of the time left until the `expires` of the *current* path segment of
//! the returned connection (this hop's token, as the next hop recorded it): a third if the path has at
//! most one segment, otherwise `0.2 + 0.2 × index / len` — so hops nearer the client refresh a little
//! earlier than the ones behind them. An expiry already passed means "refresh right away". A connection
//! without that expiry cannot be kept alive: it is closed again and the Request fails with
//! `InvalidArgument`. A failed Request (first or later) schedules nothing and leaves a running schedule
//! alone.
//!
//! The re-request runs through this element again, and its success replaces the schedule with a fresh
//! one. If it fails, it is tried again after the same delay, until the connection is closed.
//!
//! **Close**: cancels the schedule, then closes. **State**: the schedule, in the connection's metadata
//! (client side). Needs `begin` and `metadata` before it (`Internal` otherwise, before anything
//! downstream runs).

use std::time::Duration;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::begin::{EventFactory, RequestOptions};

const ELEMENT: &str = "refresh";

/// The scheduled refresh of one connection.
#[derive(Debug, Clone)]
struct Scheduled {
    task: AbortHandle,
    /// Also handed to the event, so a re-request queued behind a Close is skipped.
    cancel: CancellationToken,
}

impl Scheduled {
    fn cancel(self) {
        self.cancel.cancel();
        // The event handle runs the re-request on its own task: aborting the timer task while it
        // waits for that re-request (which is how a successful re-request replaces it) is safe.
        self.task.abort();
    }
}

/// `refresh` for client chains.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefreshClient;

impl RefreshClient {
    /// A new element.
    pub fn new() -> Self {
        Self
    }
}

/// How long to wait before refreshing `conn`; `None` if it has no expiry.
fn refresh_after(clock: &Clock, conn: &Connection) -> Option<Duration> {
    let expires = conn.current_segment()?.expires.as_ref()?;
    nsm_core::clock::from_timestamp(expires)?;
    let remaining = clock.until_timestamp(expires);
    if remaining.is_zero() {
        return Some(Duration::from_nanos(1));
    }
    let path = conn.path_or_default();
    let scale = if path.len() <= 1 {
        1.0 / 3.0
    } else {
        0.2 + 0.2 * f64::from(path.index) / path.len() as f64
    };
    Some(remaining.mul_f64(scale))
}

fn schedule(clock: Clock, every: Duration, events: EventFactory) -> Scheduled {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    // The first deadline is taken now, not when the task first runs, so time that passes before the
    // task is polled (a paused test clock being advanced) still counts.
    let mut due = clock.instant() + every;
    let task = tokio::spawn(async move {
        loop {
            clock.sleep_until(due).await;
            due = clock.instant() + every;
            let opts = RequestOptions {
                cancel: Some(token.clone()),
                ..Default::default()
            };
            match events.request(opts).await {
                // On success the re-request has scheduled the next refresh (and aborted this task).
                Ok(_) => return,
                Err(e) => tracing::warn!(
                    element = ELEMENT,
                    id = %events.connection_id(),
                    error = %e,
                    "refresh failed; trying again in {every:?}"
                ),
            }
        }
    });
    Scheduled {
        task: task.abort_handle(),
        cancel,
    }
}

#[async_trait]
impl NetworkServiceServer for RefreshClient {
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
        let Some(every) = refresh_after(ctx.clock(), &conn) else {
            if let Some(old) = md.remove::<Scheduled>(Side::Client) {
                old.cancel();
            }
            let mut cleanup_ctx = cleanup_ctx;
            if let Err(e) = next.close(&mut cleanup_ctx, conn.clone()).await {
                tracing::warn!(element = ELEMENT, id = %conn.id, error = %e, "closing an unrefreshable connection failed");
            }
            return Err(NsmError::invalid(
                ELEMENT,
                format!(
                    "connection {:?}: the current path segment has no (valid) expiry time",
                    conn.id
                ),
            ));
        };
        tracing::debug!(element = ELEMENT, id = %conn.id, "next refresh in {every:?}");
        let scheduled = schedule(*ctx.clock(), every, events);
        if let Some(old) = md.insert(Side::Client, scheduled) {
            old.cancel();
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        if let Some(old) = ctx
            .metadata()
            .and_then(|m| m.remove::<Scheduled>(Side::Client))
        {
            old.cancel();
        }
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nsm_core::Chain;
    use nsm_core::chain::Element;
    use nsm_core::clock::from_timestamp;
    use nsm_core::token::TestTokenGenerator;
    use parking_lot::Mutex;

    use super::*;
    use crate::begin::BeginClient;
    use crate::metadata::MetadataClient;
    use crate::updatepath::UpdatePathClient;
    use crate::updatetoken::UpdateTokenServer;

    const EXPIRE: Duration = Duration::from_secs(15 * 60);
    /// One segment in the path: refresh after a third of the token's lifetime.
    const EVERY: Duration = Duration::from_secs(5 * 60);

    /// Records every Request that reaches it.
    #[derive(Default)]
    struct Count(Mutex<Vec<NetworkServiceRequest>>);

    impl Count {
        fn n(&self) -> usize {
            self.0.lock().len()
        }
    }

    #[async_trait]
    impl NetworkServiceServer for Count {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            self.0.lock().push(request.clone());
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "count"
        }
    }

    /// Fails every Request from the `from`-th on (counting from 0).
    struct FailFrom {
        from: usize,
        seen: AtomicUsize,
    }

    #[async_trait]
    impl NetworkServiceServer for FailFrom {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            if self.seen.fetch_add(1, Ordering::SeqCst) >= self.from {
                return Err(NsmError::unavailable("inject", "injected error"));
            }
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "inject"
        }
    }

    struct Setup {
        chain: Chain,
        count: Arc<Count>,
        begin: Arc<BeginClient>,
        metadata: Arc<MetadataClient>,
    }

    /// Go's `testClient`: updatepath, begin, metadata, refresh, then updatetoken issuing 15-minute
    /// tokens into the client's own segment, the request counter and `extra`.
    fn setup(extra: Vec<Element>) -> Setup {
        let count = Arc::new(Count::default());
        let begin = Arc::new(BeginClient::new());
        let metadata = Arc::new(MetadataClient::new());
        let mut elements: Vec<Element> = vec![
            Arc::new(UpdatePathClient::new("refresh")),
            begin.clone(),
            metadata.clone(),
            Arc::new(RefreshClient::new()),
            Arc::new(UpdateTokenServer::new(Arc::new(TestTokenGenerator {
                lifetime: EXPIRE,
            }))),
            count.clone(),
        ];
        elements.extend(extra);
        Setup {
            chain: Chain::new("client", elements),
            count,
            begin,
            metadata,
        }
    }

    fn ctx() -> Ctx {
        Ctx::new(Clock::system()).with_timeout(Duration::from_secs(5))
    }

    fn request(id: &str) -> NetworkServiceRequest {
        NetworkServiceRequest {
            connection: Some(Connection {
                id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn expiries(conn: &Connection) -> Vec<std::time::SystemTime> {
        conn.path_or_default()
            .path_segments
            .iter()
            .map(|s| from_timestamp(s.expires.as_ref().unwrap()).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn valid_refresh_renews_every_token() {
        let s = setup(vec![]);
        let conn = s
            .chain
            .run_request(&mut ctx(), request("id"))
            .await
            .unwrap();
        assert_eq!(s.count.n(), 1);
        advance(EXPIRE).await;
        assert_eq!(s.count.n(), 2);
        let refreshed = s.count.0.lock()[1].connection.clone().unwrap();
        assert_eq!(refreshed.id, conn.id);
        let (before, after) = (expiries(&conn), expiries(&refreshed));
        assert_eq!(before.len(), after.len());
        assert!(
            before.iter().zip(&after).all(|(b, a)| b < a),
            "{before:?} vs {after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_stops_refreshing() {
        let s = setup(vec![]);
        let conn = s
            .chain
            .run_request(&mut ctx(), request("id"))
            .await
            .unwrap();
        advance(EXPIRE).await;
        assert_eq!(s.count.n(), 2);
        s.chain.run_close(&mut ctx(), conn).await.unwrap();
        advance(2 * EXPIRE).await;
        assert_eq!(s.count.n(), 2);
        assert!(s.begin.is_empty() && s.metadata.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn another_request_restarts_the_schedule() {
        let s = setup(vec![]);
        let conn = s
            .chain
            .run_request(&mut ctx(), request("id"))
            .await
            .unwrap();
        advance(Duration::from_secs(3 * 60)).await;
        s.chain
            .run_request(
                &mut ctx(),
                NetworkServiceRequest {
                    connection: Some(conn),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(s.count.n(), 2);
        // The first schedule (due at 5 min) was replaced; the new one is due at 3 + 5 min.
        advance(Duration::from_secs(4 * 60)).await;
        assert_eq!(s.count.n(), 2);
        advance(Duration::from_secs(60)).await;
        assert_eq!(s.count.n(), 3);
        // One refresh per interval from then on, never a doubled schedule.
        advance(EVERY).await;
        assert_eq!(s.count.n(), 4);
        advance(EVERY).await;
        assert_eq!(s.count.n(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_first_request_schedules_nothing() {
        let s = setup(vec![Arc::new(FailFrom {
            from: 0,
            seen: AtomicUsize::new(0),
        })]);
        assert!(
            s.chain
                .run_request(&mut ctx(), request("id"))
                .await
                .is_err()
        );
        advance(EXPIRE).await;
        assert_eq!(s.count.n(), 1);
        assert!(s.begin.is_empty() && s.metadata.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_is_retried_at_the_same_interval() {
        let s = setup(vec![Arc::new(FailFrom {
            from: 1,
            seen: AtomicUsize::new(0),
        })]);
        s.chain
            .run_request(&mut ctx(), request("id"))
            .await
            .unwrap();
        advance(EXPIRE).await;
        assert_eq!(s.count.n(), 2);
        advance(EXPIRE).await;
        assert_eq!(s.count.n(), 3);
        advance(EVERY).await;
        assert_eq!(s.count.n(), 4);
    }

    #[test]
    fn delay_scales_with_the_position_in_the_path() {
        use nsm_api::{Path, PathSegment};
        let clock = Clock::system();
        let expires = nsm_core::clock::to_timestamp(clock.now() + Duration::from_secs(100));
        let mut conn = Connection {
            path: Some(Path {
                index: 0,
                path_segments: vec![PathSegment {
                    expires: Some(expires),
                    ..PathSegment::new("nsc", "a")
                }],
            }),
            ..Default::default()
        };
        let third = refresh_after(&clock, &conn).unwrap();
        assert!(third <= Duration::from_secs(34) && third >= Duration::from_secs(33));
        let path = conn.path.as_mut().unwrap();
        path.path_segments.push(PathSegment::new("nsmgr", "b"));
        let fifth = refresh_after(&clock, &conn).unwrap();
        assert!(fifth <= Duration::from_secs(20) && fifth >= Duration::from_secs(19));
        conn.path.as_mut().unwrap().path_segments[0].expires = None;
        assert!(refresh_after(&clock, &conn).is_none());
    }
}
