//! `trimpath`: keeps the hops behind an endpoint out of the path its caller sees.
//!
//! **Server, Request**: after the rest of the chain returns, cuts the path after this hop's segment —
//! unless a [`TrimPathClient`] further down (a passthrough: NSMgr, forwarder, proxy) left a "keep the
//! path" mark in the connection's metadata, in which case the full path goes back to the caller. The mark
//! is consumed, so it only ever applies to the Request that set it.
//!
//! **Client, Request**: after a successful Request, leaves that mark. Needs the `metadata` element before
//! it (refused with `Internal` otherwise, before anything downstream runs).
//!
//! **Close**: passes through. **State**: the mark (metadata, client side, as in Go). No background
//! events.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const ELEMENT: &str = "trimpath";

/// "Do not trim": the path came back through a client that wants it whole.
#[derive(Debug, Clone, Copy)]
struct KeepPath;

/// `trimpath` for server chains (endpoints).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrimPathServer;

impl TrimPathServer {
    /// A new element.
    pub fn new() -> Self {
        Self
    }
}

/// `trimpath` for client chains: tells the server chain around it to return the full path.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrimPathClient;

impl TrimPathClient {
    /// A new element.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl NetworkServiceServer for TrimPathServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let mut conn = next.request(ctx, request).await?;
        // Without metadata nothing downstream can have asked to keep the path.
        let keep = ctx
            .metadata()
            .and_then(|m| m.remove::<KeepPath>(Side::Client))
            .is_some();
        if !keep && let Some(path) = conn.path.as_mut() {
            let end = (path.index as usize).saturating_add(1);
            path.path_segments.truncate(end);
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[async_trait]
impl NetworkServiceServer for TrimPathClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let Some(md) = ctx.metadata().cloned() else {
            return Err(NsmError::internal(
                ELEMENT,
                "no connection metadata (add the metadata element before trimpath)",
            ));
        };
        let conn = next.request(ctx, request).await?;
        md.insert(Side::Client, KeepPath);
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nsm_api::{Path, PathSegment};
    use nsm_core::chain::Element;
    use nsm_core::metadata::ConnMetadata;
    use nsm_core::{Chain, Clock};

    use super::*;

    /// Plays the hops downstream: appends two segments to the returned path.
    struct Downstream;

    #[async_trait]
    impl NetworkServiceServer for Downstream {
        async fn request(
            &self,
            _: &mut Ctx,
            request: NetworkServiceRequest,
            _: Next,
        ) -> Result<Connection> {
            let mut conn = request.connection.unwrap_or_default();
            let path = conn.path.get_or_insert_with(Default::default);
            path.path_segments.push(PathSegment::new("fwd", "f"));
            path.path_segments.push(PathSegment::new("nse", "e"));
            Ok(conn)
        }
        async fn close(&self, _: &mut Ctx, _: Connection, _: Next) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "downstream"
        }
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
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ctx_with_metadata() -> Ctx {
        let mut ctx = Ctx::new(Clock::system());
        ctx.set_metadata(Some(Arc::new(ConnMetadata::default())));
        ctx
    }

    #[tokio::test]
    async fn endpoint_returns_the_path_up_to_itself() {
        let c = Chain::new(
            "t",
            vec![Arc::new(TrimPathServer::new()), Arc::new(Downstream)],
        );
        let conn = c
            .run_request(&mut ctx_with_metadata(), request())
            .await
            .unwrap();
        assert_eq!(conn.path.unwrap().names(), ["nsc", "nsmgr"]);
    }

    #[tokio::test]
    async fn passthrough_with_trimpath_client_returns_the_full_path_once() {
        let client: Element = Arc::new(Chain::new(
            "client",
            vec![Arc::new(TrimPathClient::new()), Arc::new(Downstream)],
        ));
        let c = Chain::new("t", vec![Arc::new(TrimPathServer::new()), client]);
        let mut ctx = ctx_with_metadata();
        let conn = c.run_request(&mut ctx, request()).await.unwrap();
        assert_eq!(conn.path.unwrap().names(), ["nsc", "nsmgr", "fwd", "nse"]);
        let md = ctx.metadata().unwrap();
        assert!(md.get::<KeepPath>(Side::Client).is_none(), "mark consumed");
    }

    #[tokio::test]
    async fn client_without_metadata_fails_before_downstream() {
        let c = Chain::new(
            "t",
            vec![Arc::new(TrimPathClient::new()), Arc::new(Downstream)],
        );
        let err = c
            .run_request(&mut Ctx::new(Clock::system()), request())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NsmError::Internal {
                    element: "trimpath",
                    ..
                }
            ),
            "{err}"
        );
    }
}
