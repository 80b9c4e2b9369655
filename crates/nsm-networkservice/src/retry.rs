//! `retry`: keeps trying a wrapped client chain until it succeeds or the caller's deadline passes.
//!
//! **Request** and **Close**: run the wrapped element (usually a whole client chain, as cmd-nsc does)
//! with a context whose deadline is `try_timeout` from now (or the caller's deadline, if sooner). A try
//! that fails or times out is followed, after `interval`, by another, until one succeeds or the caller's
//! deadline passes; without a caller deadline it tries forever. Giving up returns `DeadlineExceeded`
//! naming the number of attempts and the last error — and, when the deadline cut the last try short,
//! the error of the last try that ran to its end, which says why the request keeps failing. Each try
//! gets its own copy of the request.
//!
//! **State**: none. No background events (the wrapped chain's `begin` keeps the connection once a try
//! succeeds; event contexts then get the try's timeout, as in Go).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::chain::Element;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const ELEMENT: &str = "retry";

/// `retry` around a client chain or element.
#[derive(Clone)]
pub struct RetryClient {
    inner: Element,
    try_timeout: Duration,
    interval: Duration,
}

impl std::fmt::Debug for RetryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryClient")
            .field("inner", &self.inner.name())
            .field("try_timeout", &self.try_timeout)
            .field("interval", &self.interval)
            .finish()
    }
}

impl RetryClient {
    /// Wraps `inner` (e.g. `Arc::new(chain)`) with the sdk defaults: 15 s per try, 200 ms between tries.
    pub fn new(inner: Element) -> Self {
        Self {
            inner,
            try_timeout: Duration::from_secs(15),
            interval: Duration::from_millis(200),
        }
    }

    /// Sets how long one try may take.
    pub fn with_try_timeout(mut self, try_timeout: Duration) -> Self {
        self.try_timeout = try_timeout;
        self
    }

    /// Sets the pause between a failed try and the next one.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The context of one try: the caller's, with a deadline of at most `try_timeout`.
    fn try_ctx(&self, ctx: &Ctx) -> Ctx {
        let timeout = ctx
            .remaining()
            .map_or(self.try_timeout, |r| r.min(self.try_timeout));
        ctx.clone().with_timeout(timeout)
    }

    /// Runs `attempt` until it succeeds or `ctx`'s deadline passes.
    async fn run<T, F, Fut>(&self, ctx: &Ctx, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(Ctx) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempts = 0u32;
        // The last error of a try that ran to its end: when the deadline cuts the final try short,
        // this is what the user needs to see (e.g. "interface name taken"), not "deadline exceeded".
        let mut last_finished: Option<NsmError> = None;
        loop {
            let try_ctx = self.try_ctx(ctx);
            let deadline = try_ctx.deadline();
            attempts += 1;
            let outcome = match deadline {
                Some(d) => tokio::time::timeout_at(d, attempt(try_ctx))
                    .await
                    .unwrap_or_else(|_| Err(NsmError::deadline(ELEMENT, "the try timed out"))),
                None => attempt(try_ctx).await,
            };
            let err = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            tracing::warn!(element = ELEMENT, attempt = attempts, error = %err, "{what} failed");
            let out_of_time = ctx.remaining().is_some_and(|r| r <= self.interval);
            if out_of_time {
                let earlier = match &last_finished {
                    Some(e) if err.is_deadline() => {
                        format!("; the last try that ran to its end failed with: {e}")
                    }
                    _ => String::new(),
                };
                return Err(NsmError::deadline(
                    ELEMENT,
                    format!("{what} gave up after {attempts} attempts; last error: {err}{earlier}"),
                ));
            }
            if !err.is_deadline() {
                last_finished = Some(err);
            }
            ctx.clock().sleep(self.interval).await;
        }
    }
}

#[async_trait]
impl NetworkServiceServer for RetryClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let inner = &self.inner;
        self.run(ctx, "request", |mut try_ctx| {
            let (request, next) = (request.clone(), next.clone());
            async move { inner.request(&mut try_ctx, request, next).await }
        })
        .await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let inner = &self.inner;
        self.run(ctx, "close", |mut try_ctx| {
            let (conn, next) = (conn.clone(), next.clone());
            async move { inner.close(&mut try_ctx, conn, next).await }
        })
        .await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nsm_core::{Chain, Clock};

    use super::*;

    /// Fails the first `fails` calls, optionally hanging instead of failing.
    /// After its failures, hangs instead of succeeding if `then_hang`.
    struct Flaky {
        fails: usize,
        hang: bool,
        then_hang: bool,
        calls: AtomicUsize,
    }

    impl Flaky {
        fn new(fails: usize, hang: bool) -> Arc<Self> {
            Arc::new(Self {
                fails,
                hang,
                then_hang: false,
                calls: AtomicUsize::new(0),
            })
        }

        async fn attempt(&self) -> Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.fails {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                return Err(NsmError::unavailable("flaky", "not yet"));
            }
            if self.then_hang {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    }

    #[async_trait]
    impl NetworkServiceServer for Flaky {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            self.attempt().await?;
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            self.attempt().await?;
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "flaky"
        }
    }

    fn retry(inner: Arc<Flaky>) -> Chain {
        let client = Chain::new("client", vec![inner]);
        Chain::new(
            "t",
            vec![Arc::new(
                RetryClient::new(Arc::new(client))
                    .with_try_timeout(Duration::from_secs(1))
                    .with_interval(Duration::from_millis(100)),
            )],
        )
    }

    #[tokio::test(start_paused = true)]
    async fn request_succeeds_after_failures_and_hangs() {
        let flaky = Flaky::new(3, false);
        let mut ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_secs(10));
        retry(flaky.clone())
            .run_request(&mut ctx, NetworkServiceRequest::default())
            .await
            .unwrap();
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);

        let hangs = Flaky::new(2, true);
        let started = tokio::time::Instant::now();
        retry(hangs.clone())
            .run_close(&mut ctx, Connection::default())
            .await
            .unwrap();
        assert_eq!(hangs.calls.load(Ordering::SeqCst), 3);
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "each hung try waited its timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_callers_deadline_naming_attempts() {
        let flaky = Flaky::new(usize::MAX, false);
        let mut ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_millis(450));
        let err = retry(flaky.clone())
            .run_request(&mut ctx, NetworkServiceRequest::default())
            .await
            .unwrap_err();
        assert!(err.is_deadline(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("after 5 attempts"), "{msg}");
        assert!(msg.contains("flaky: unavailable: not yet"), "{msg}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_last_try_cut_short_by_the_deadline_still_shows_why_the_tries_failed() {
        // Three quick failures, then a try that hangs until the caller's deadline cuts it short.
        let flaky = Arc::new(Flaky {
            fails: 3,
            hang: false,
            then_hang: true,
            calls: AtomicUsize::new(0),
        });
        let mut ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_millis(450));
        let err = retry(flaky.clone())
            .run_request(&mut ctx, NetworkServiceRequest::default())
            .await
            .unwrap_err();
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
        let msg = err.to_string();
        assert!(msg.contains("after 4 attempts"), "{msg}");
        assert!(
            msg.contains("last try that ran to its end failed with: flaky: unavailable: not yet"),
            "{msg}"
        );
    }
}
