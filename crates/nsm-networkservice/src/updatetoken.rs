//! `updatetoken`: records the caller's token and issues this hop's own.
//!
//! **Request** and **Close**: the per-RPC token the caller sent ([`IncomingToken`], put into the context
//! by the gRPC edge) is written into the *previous* path segment — overwriting whatever the caller wrote
//! there, since only the per-RPC token is authenticated. Then a token for this hop, with the calling peer
//! ([`PeerInfo`]) as audience, is generated into the *current* segment; the next hop will overwrite it in
//! turn with the token this hop sends it. The previous segment's `expires` is what `timeout` later waits
//! for. A call without an incoming token (in-process, or an event re-run) leaves the previous segment as
//! it is.
//!
//! Must run after `updatepath`: a path whose index does not point at a segment is refused with
//! `InvalidArgument`. **State**: none. No background events.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::clock::to_timestamp;
use nsm_core::token::{LocalIdentity, SharedTokenGenerator};
use nsm_core::values::{IncomingToken, PeerInfo};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const ELEMENT: &str = "updatetoken";

/// `updatetoken` for server chains.
#[derive(Clone)]
pub struct UpdateTokenServer {
    generator: SharedTokenGenerator,
}

impl std::fmt::Debug for UpdateTokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpdateTokenServer")
    }
}

impl UpdateTokenServer {
    /// An element issuing this hop's tokens with `generator`.
    pub fn new(generator: SharedTokenGenerator) -> Self {
        Self { generator }
    }

    fn update(&self, ctx: &Ctx, conn: &mut Connection) -> Result<()> {
        let path = conn.path.get_or_insert_with(Default::default);
        if let Some(incoming) = ctx.get::<IncomingToken>() {
            if let Some(prev) = path.previous_mut() {
                prev.token = incoming.token.clone();
                prev.expires = Some(to_timestamp(incoming.expires));
            }
        } else if path.previous().is_some() {
            tracing::debug!(
                element = ELEMENT,
                id = %conn.id,
                "no incoming token in the context; previous segment left as it is"
            );
        }
        let (index, len) = (path.index, path.len());
        let Some(current) = path.current_mut() else {
            return Err(NsmError::invalid(
                ELEMENT,
                format!("path index {index} is out of range (path has {len} segments)"),
            ));
        };
        // Signed as the identity the caller's connection authenticated us with (see LocalIdentity).
        let token = self.generator.generate_as(
            ctx.clock(),
            ctx.get::<PeerInfo>(),
            ctx.get::<LocalIdentity>(),
        )?;
        current.token = token.token;
        current.expires = Some(to_timestamp(token.expires));
        Ok(())
    }
}

#[async_trait]
impl NetworkServiceServer for UpdateTokenServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        self.update(ctx, request.connection.get_or_insert_with(Default::default))?;
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, mut conn: Connection, next: Next) -> Result<()> {
        self.update(ctx, &mut conn)?;
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use nsm_api::{Path, PathSegment};
    use nsm_core::clock::from_timestamp;
    use nsm_core::token::{TestTokenGenerator, Token, TokenGenerator};
    use nsm_core::{Chain, Clock};

    use super::*;

    /// Issues a token naming its audience, so tests can see which peer it was for.
    struct AudienceToken;

    impl TokenGenerator for AudienceToken {
        fn generate(&self, clock: &Clock, peer: Option<&PeerInfo>) -> Result<Token> {
            let aud = peer.and_then(|p| p.spiffe_id.clone()).unwrap_or_default();
            Ok(Token {
                token: format!("for:{aud}"),
                expires: clock.now() + Duration::from_secs(60),
            })
        }
    }

    fn two_hop_request() -> NetworkServiceRequest {
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

    #[tokio::test(start_paused = true)]
    async fn incoming_token_goes_to_previous_and_own_token_to_current() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut ctx = Ctx::new(Clock::starting_at(start));
        ctx.insert(IncomingToken {
            token: "from-nsc".into(),
            expires: start + Duration::from_secs(600),
        });
        ctx.insert(PeerInfo {
            spiffe_id: Some("spiffe://example.org/nsc".into()),
            ..Default::default()
        });
        let chain = Chain::new(
            "t",
            vec![Arc::new(UpdateTokenServer::new(Arc::new(AudienceToken)))],
        );
        let conn = chain
            .run_request(&mut ctx, two_hop_request())
            .await
            .unwrap();
        let segs = &conn.path.as_ref().unwrap().path_segments;
        assert_eq!(segs[0].token, "from-nsc");
        assert_eq!(
            from_timestamp(segs[0].expires.as_ref().unwrap()),
            Some(start + Duration::from_secs(600))
        );
        assert_eq!(segs[1].token, "for:spiffe://example.org/nsc");
        assert_eq!(
            from_timestamp(segs[1].expires.as_ref().unwrap()),
            Some(start + Duration::from_secs(60))
        );
    }

    #[tokio::test]
    async fn without_incoming_token_previous_segment_is_untouched() {
        let mut ctx = Ctx::new(Clock::system());
        let chain = Chain::new(
            "t",
            vec![Arc::new(UpdateTokenServer::new(Arc::new(
                TestTokenGenerator::default(),
            )))],
        );
        let mut req = two_hop_request();
        req.connection
            .as_mut()
            .unwrap()
            .path
            .as_mut()
            .unwrap()
            .path_segments[0]
            .token = "kept".into();
        let conn = chain.run_request(&mut ctx, req).await.unwrap();
        let segs = &conn.path.as_ref().unwrap().path_segments;
        assert_eq!(segs[0].token, "kept");
        assert_eq!(segs[1].token, "TestToken");
    }

    #[tokio::test]
    async fn index_out_of_range_is_invalid_argument() {
        let mut ctx = Ctx::new(Clock::system());
        let chain = Chain::new(
            "t",
            vec![Arc::new(UpdateTokenServer::new(Arc::new(
                TestTokenGenerator::default(),
            )))],
        );
        let err = chain
            .run_close(&mut ctx, Connection::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NsmError::InvalidArgument {
                    element: "updatetoken",
                    ..
                }
            ),
            "{err}"
        );
    }
}
