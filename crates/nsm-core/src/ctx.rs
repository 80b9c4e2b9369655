//! The per-call context handed down a chain: typed values, a deadline, the clock and the connection's
//! metadata (Go carries all of these in `context.Context`).
//!
//! Values set by an element are seen by the elements after it. An element that must not leak values to
//! its siblings (e.g. `roundrobin` trying several candidates) clones the context first.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::NsmError;
use crate::metadata::ConnMetadata;

/// Per-call context. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ctx {
    values: http::Extensions,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    clock: Clock,
    metadata: Option<Arc<ConnMetadata>>,
}

impl Ctx {
    /// An empty context without deadline.
    pub fn new(clock: Clock) -> Self {
        Self {
            values: http::Extensions::new(),
            deadline: None,
            timeout: None,
            clock,
            metadata: None,
        }
    }

    /// Sets a deadline `timeout` from now; background events re-created from this context get the
    /// same duration again (Go's `postpone`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(self.clock.instant() + timeout);
        self.timeout = Some(timeout);
        self
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None` = no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(self.clock.instant()))
    }

    /// The timeout this context was created with.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// True if the deadline has passed.
    pub fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// A copy for a background event: same values, a fresh deadline of the original duration.
    pub fn postpone(&self) -> Self {
        let mut c = self.clone();
        c.deadline = c.timeout.map(|t| c.clock.instant() + t);
        c
    }

    /// A copy without deadline, for long-lived background work (watch streams) that must not end
    /// when the call that started it does.
    pub fn without_deadline(&self) -> Self {
        let mut c = self.clone();
        c.deadline = None;
        c.timeout = None;
        c
    }

    /// Runs `fut` until the deadline; on expiry returns `DeadlineExceeded` naming `element`.
    pub async fn within<T>(
        &self,
        element: &'static str,
        fut: impl Future<Output = Result<T, NsmError>>,
    ) -> Result<T, NsmError> {
        match self.deadline {
            None => fut.await,
            Some(d) => match tokio::time::timeout_at(d, fut).await {
                Ok(r) => r,
                Err(_) => Err(NsmError::deadline(element, "the call's deadline passed")),
            },
        }
    }

    /// A typed value set by an earlier element.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get::<T>()
    }

    /// Sets a typed value for the elements after this one.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.values.insert(value)
    }

    /// Removes a typed value.
    pub fn remove<T: Clone + Send + Sync + 'static>(&mut self) -> Option<T> {
        self.values.remove::<T>()
    }

    /// The connection's metadata (set by the `metadata` element).
    pub fn metadata(&self) -> Option<&Arc<ConnMetadata>> {
        self.metadata.as_ref()
    }

    /// Attaches the connection's metadata.
    pub fn set_metadata(&mut self, m: Option<Arc<ConnMetadata>>) {
        self.metadata = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_and_postpone() {
        let ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(ctx.remaining(), Some(Duration::from_secs(1)));
        let later = ctx.postpone();
        assert_eq!(later.remaining(), Some(Duration::from_secs(5)));
        let r = ctx
            .within("test", async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(())
            })
            .await;
        assert!(matches!(
            r,
            Err(NsmError::DeadlineExceeded {
                element: "test",
                ..
            })
        ));
    }

    #[test]
    fn values_are_typed() {
        #[derive(Clone, Debug, PartialEq)]
        struct ClientUrl(String);
        let mut ctx = Ctx::new(Clock::system());
        assert!(ctx.get::<ClientUrl>().is_none());
        ctx.insert(ClientUrl("tcp://a:1".into()));
        assert_eq!(ctx.get::<ClientUrl>(), Some(&ClientUrl("tcp://a:1".into())));
    }
}
