//! The per-call context handed down a chain: typed values, a deadline, the clock and the connection's
//! metadata (Go carries all of these in `context.Context`).
//!
//! Values set by an element are seen by the elements after it. An element that must not leak values to
//! its siblings (e.g. `roundrobin` trying several candidates) clones the context first.
//!
//! Values that belong to the transport connection a call came on rather than to the call (the peer's
//! identity, our own, the fd side channel) are [`SharedValues`]: built once per connection by the
//! gRPC edge and pointed to by every call's context ([`Ctx::with_shared`]), so a context `begin` keeps
//! for each held connection does not copy them. A call's own values shadow shared ones.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::NsmError;
use crate::metadata::ConnMetadata;

/// Typed values shared by every call over one transport connection (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct SharedValues(http::Extensions);

impl SharedValues {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a typed value.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.0.insert(value)
    }

    /// A typed value.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get::<T>()
    }
}

/// Per-call context. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ctx {
    values: http::Extensions,
    /// Looked up after `values`; never copied (see [`SharedValues`]).
    shared: Option<Arc<SharedValues>>,
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
            shared: None,
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

    /// Points this context at the values of the transport connection its call came on.
    pub fn with_shared(mut self, shared: Arc<SharedValues>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// A typed value set by an earlier element (or shared by the call's transport connection).
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.values
            .get::<T>()
            .or_else(|| self.shared.as_ref()?.get::<T>())
    }

    /// Sets a typed value for the elements after this one.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.values.insert(value)
    }

    /// Removes a typed value (a shared one only from this context's view of them).
    pub fn remove<T: Clone + Send + Sync + 'static>(&mut self) -> Option<T> {
        let own = self.values.remove::<T>();
        if self.values.is_empty() {
            // Keep no empty map: a context kept per connection then holds no allocation of its own.
            self.values = http::Extensions::new();
        }
        match &mut self.shared {
            Some(shared) if shared.get::<T>().is_some() => {
                // Rare (nothing removes transport values today): copy, then remove from the copy.
                let shared = Arc::make_mut(shared).0.remove::<T>();
                own.or(shared)
            }
            _ => own,
        }
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
    fn shared_values_are_seen_shadowed_and_removed_per_context() {
        #[derive(Clone, Debug, PartialEq)]
        struct Peer(&'static str);
        let mut shared = SharedValues::new();
        shared.insert(Peer("transport"));
        let shared = Arc::new(shared);
        let mut a = Ctx::new(Clock::system()).with_shared(shared.clone());
        let b = a.clone();
        assert_eq!(a.get::<Peer>(), Some(&Peer("transport")));
        a.insert(Peer("call"));
        assert_eq!(
            a.get::<Peer>(),
            Some(&Peer("call")),
            "a call's value shadows"
        );
        assert_eq!(a.remove::<Peer>(), Some(Peer("call")));
        assert_eq!(a.get::<Peer>(), None, "removed from this context's view");
        assert_eq!(
            b.get::<Peer>(),
            Some(&Peer("transport")),
            "other contexts keep it"
        );
        assert_eq!(shared.get::<Peer>(), Some(&Peer("transport")));
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
