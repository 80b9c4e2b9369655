//! `authorize`: checks the path and the peer against pluggable policies.
//!
//! **Server, Request and Close**: evaluates every [`Policy`] on the *left side* of the path
//! (`segments[0..=index]`, i.e. the hops that led here, after `updatetoken` recorded the caller's token)
//! together with the calling peer ([`PeerInfo`]). As in Go, evaluation happens only for calls that came
//! from a peer (the context has a [`PeerInfo`]); calls re-run by `begin`'s event handle
//! ([`FromEvent`]: refresh, timeout, heal) were authorized when they first arrived and are not checked
//! again. A refusal stops the call before anything downstream runs.
//!
//! **Client, Request**: after the rest of the chain returns, evaluates the policies on the *full*
//! returned path with the peer found in the context then (the gRPC client edge records the server it
//! called there). A refusal closes the just-established connection downstream and fails the Request.
//! **Client, Close**: checks with the last peer seen, then closes.
//!
//! A refusal is `PermissionDenied` naming the policy; a policy that cannot be evaluated is `Internal`.
//! [`AuthorizeServer::any`] / [`AuthorizeClient::any`] have no policies and allow everything (the sdk
//! chains' default). **State**: the client remembers the last server peer. No background events.

use std::sync::Arc;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest, Path};
use nsm_core::values::{FromEvent, PeerInfo};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;

const ELEMENT: &str = "authorize";

/// What a policy sees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyInput {
    /// The path to judge (server: the left side up to this hop; client: the whole returned path).
    pub path: Path,
    /// The peer at the other end of the call, if known.
    pub peer: Option<PeerInfo>,
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The call may go on.
    Allow,
    /// The call is refused, and why.
    Deny(String),
}

/// An authorization policy (Rego policies, custom checks, tests).
#[async_trait]
pub trait Policy: Send + Sync + 'static {
    /// The policy's name, shown in refusals (`tokens_expired`, …).
    fn name(&self) -> &str;

    /// Judges one call. `Err` means the policy could not be evaluated (a bug or bad policy source).
    async fn check(&self, input: &PolicyInput) -> std::result::Result<Verdict, String>;
}

/// A shared policy.
pub type SharedPolicy = Arc<dyn Policy>;

/// A synchronous policy made from a closure.
pub struct FnPolicy<F> {
    name: String,
    f: F,
}

impl<F> FnPolicy<F>
where
    F: Fn(&PolicyInput) -> Verdict + Send + Sync + 'static,
{
    /// A policy named `name` that answers with `f`.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

#[async_trait]
impl<F> Policy for FnPolicy<F>
where
    F: Fn(&PolicyInput) -> Verdict + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&self, input: &PolicyInput) -> std::result::Result<Verdict, String> {
        Ok((self.f)(input))
    }
}

/// Runs every policy in order; the first refusal or failure wins.
async fn check_all(policies: &[SharedPolicy], input: PolicyInput) -> Result<()> {
    for policy in policies {
        match policy.check(&input).await {
            Ok(Verdict::Allow) => {}
            Ok(Verdict::Deny(why)) => {
                return Err(NsmError::PermissionDenied {
                    element: ELEMENT,
                    reason: format!("policy {} refused: {why}", policy.name()),
                });
            }
            Err(e) => {
                return Err(NsmError::internal(
                    ELEMENT,
                    format!("policy {} could not be evaluated: {e}", policy.name()),
                ));
            }
        }
    }
    Ok(())
}

/// The hops up to and including the current one.
fn left_side(conn: &Connection) -> Path {
    let path = conn.path_or_default();
    let end = (path.index as usize).saturating_add(1).min(path.len());
    Path {
        index: path.index,
        path_segments: path.path_segments[..end].to_vec(),
    }
}

/// `authorize` for server chains.
#[derive(Clone, Default)]
pub struct AuthorizeServer {
    policies: Vec<SharedPolicy>,
}

impl AuthorizeServer {
    /// An element evaluating `policies` in order.
    pub fn new(policies: Vec<SharedPolicy>) -> Self {
        Self { policies }
    }

    /// An element that allows everything.
    pub fn any() -> Self {
        Self::default()
    }

    async fn check(&self, ctx: &Ctx, conn: &Connection) -> Result<()> {
        if self.policies.is_empty() || ctx.get::<FromEvent>().is_some() {
            return Ok(());
        }
        let Some(peer) = ctx.get::<PeerInfo>() else {
            return Ok(());
        };
        let input = PolicyInput {
            path: left_side(conn),
            peer: Some(peer.clone()),
        };
        check_all(&self.policies, input).await
    }
}

impl std::fmt::Debug for AuthorizeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.policies.iter().map(|p| p.name()).collect();
        f.debug_struct("AuthorizeServer")
            .field("policies", &names)
            .finish()
    }
}

#[async_trait]
impl NetworkServiceServer for AuthorizeServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if let Some(conn) = request.connection.as_ref() {
            self.check(ctx, conn).await?;
        } else {
            self.check(ctx, &Connection::default()).await?;
        }
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.check(ctx, &conn).await?;
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

/// `authorize` for client chains.
#[derive(Default)]
pub struct AuthorizeClient {
    policies: Vec<SharedPolicy>,
    server_peer: Mutex<Option<PeerInfo>>,
}

impl AuthorizeClient {
    /// An element evaluating `policies` in order.
    pub fn new(policies: Vec<SharedPolicy>) -> Self {
        Self {
            policies,
            server_peer: Mutex::new(None),
        }
    }

    /// An element that allows everything.
    pub fn any() -> Self {
        Self::default()
    }

    async fn check(&self, conn: &Connection, peer: Option<PeerInfo>) -> Result<()> {
        if self.policies.is_empty() {
            return Ok(());
        }
        let input = PolicyInput {
            path: conn.path.clone().unwrap_or_default(),
            peer,
        };
        check_all(&self.policies, input).await
    }
}

impl std::fmt::Debug for AuthorizeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.policies.iter().map(|p| p.name()).collect();
        f.debug_struct("AuthorizeClient")
            .field("policies", &names)
            .finish()
    }
}

#[async_trait]
impl NetworkServiceServer for AuthorizeClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let cleanup_ctx = ctx.postpone();
        let conn = next.clone().request(ctx, request).await?;
        let peer = ctx.get::<PeerInfo>().cloned();
        if peer.is_some() {
            *self.server_peer.lock() = peer.clone();
        }
        if let Err(denied) = self.check(&conn, peer).await {
            let mut cleanup_ctx = cleanup_ctx;
            if let Err(e) = next.close(&mut cleanup_ctx, conn).await {
                tracing::warn!(element = ELEMENT, error = %e, "closing a refused connection failed");
            }
            return Err(denied);
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let peer = self.server_peer.lock().clone();
        self.check(&conn, peer).await?;
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use nsm_api::PathSegment;
    use nsm_core::{Chain, Clock};

    use super::*;

    /// Counts calls that reach it.
    #[derive(Default)]
    struct Reached(Mutex<(u32, u32)>);

    #[async_trait]
    impl NetworkServiceServer for Reached {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            self.0.lock().0 += 1;
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            self.0.lock().1 += 1;
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "reached"
        }
    }

    fn deny_nsc() -> SharedPolicy {
        Arc::new(FnPolicy::new(
            "no_nsc_peer",
            |input: &PolicyInput| match input.peer.as_ref().and_then(|p| p.spiffe_id.as_deref()) {
                Some("spiffe://example.org/nsc") => Verdict::Deny("nsc may not call".into()),
                _ => Verdict::Allow,
            },
        ))
    }

    fn request() -> NetworkServiceRequest {
        NetworkServiceRequest {
            connection: Some(Connection {
                id: "b".into(),
                path: Some(Path {
                    index: 1,
                    path_segments: vec![
                        PathSegment::new("nsc", "a"),
                        PathSegment::new("nsmgr", "b"),
                        PathSegment::new("fwd", "c"),
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ctx_from(peer: &str) -> Ctx {
        let mut ctx = Ctx::new(Clock::system());
        ctx.insert(PeerInfo {
            spiffe_id: Some(peer.into()),
            ..Default::default()
        });
        ctx
    }

    #[tokio::test]
    async fn server_denial_names_the_policy_and_stops_the_call() {
        let reached = Arc::new(Reached::default());
        let c = Chain::new(
            "t",
            vec![
                Arc::new(AuthorizeServer::new(vec![deny_nsc()])),
                reached.clone(),
            ],
        );
        let mut ctx = ctx_from("spiffe://example.org/nsc");
        let err = c.run_request(&mut ctx, request()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.to_string().contains("no_nsc_peer"), "{err}");
        let err = c
            .run_close(&mut ctx, request().connection.unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(*reached.0.lock(), (0, 0));
        // Another peer passes.
        c.run_request(&mut ctx_from("spiffe://example.org/other"), request())
            .await
            .unwrap();
        assert_eq!(*reached.0.lock(), (1, 0));
    }

    #[tokio::test]
    async fn server_sees_only_the_left_side_and_skips_events() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let policy: SharedPolicy = Arc::new(FnPolicy::new("record", move |i: &PolicyInput| {
            log.lock().push(i.path.names().join(","));
            Verdict::Allow
        }));
        let c = Chain::new("t", vec![Arc::new(AuthorizeServer::new(vec![policy]))]);
        c.run_request(&mut ctx_from("x"), request()).await.unwrap();
        assert_eq!(*seen.lock(), ["nsc,nsmgr"]);
        let mut event = ctx_from("x");
        event.insert(FromEvent);
        c.run_request(&mut event, request()).await.unwrap();
        c.run_request(&mut Ctx::new(Clock::system()), request())
            .await
            .unwrap();
        assert_eq!(
            seen.lock().len(),
            1,
            "events and peerless calls are not checked"
        );
    }

    #[tokio::test]
    async fn any_allows_everything() {
        let c = Chain::new("t", vec![Arc::new(AuthorizeServer::any())]);
        c.run_request(&mut ctx_from("spiffe://example.org/nsc"), request())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn client_denial_closes_the_new_connection() {
        /// Plays the gRPC edge: records the server it "called".
        struct Edge;
        #[async_trait]
        impl NetworkServiceServer for Edge {
            async fn request(
                &self,
                ctx: &mut Ctx,
                request: NetworkServiceRequest,
                next: Next,
            ) -> Result<Connection> {
                ctx.insert(PeerInfo {
                    spiffe_id: Some("spiffe://example.org/nsc".into()),
                    ..Default::default()
                });
                next.request(ctx, request).await
            }
            async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
                next.close(ctx, conn).await
            }
            fn name(&self) -> &'static str {
                "edge"
            }
        }
        let reached = Arc::new(Reached::default());
        let c = Chain::new(
            "t",
            vec![
                Arc::new(AuthorizeClient::new(vec![deny_nsc()])),
                Arc::new(Edge),
                reached.clone(),
            ],
        );
        let err = c
            .run_request(&mut Ctx::new(Clock::system()), request())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(*reached.0.lock(), (1, 1), "established, then closed");
    }
}
