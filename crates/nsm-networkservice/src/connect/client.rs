//! The client tail: NetworkService calls on the next hop's channel.

use async_trait::async_trait;
use nsm_api::networkservice::network_service_client::NetworkServiceClient;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::Side;
use nsm_core::token::{LocalIdentity, SharedTokenGenerator};
use nsm_core::values::PeerInfo;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use tonic::{Code, Status};

use crate::dial::ClientConn;
use crate::grpc::attach_token;

const ELEMENT: &str = "connect";

/// Calls the next hop (tail of a client chain).
pub struct ConnectClient {
    tokens: SharedTokenGenerator,
}

impl std::fmt::Debug for ConnectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectClient")
    }
}

impl ConnectClient {
    /// Signs every call with a token from `token_generator`.
    pub fn new(token_generator: SharedTokenGenerator) -> Self {
        Self {
            tokens: token_generator,
        }
    }

    /// The stored channel and an outgoing request carrying the token and the remaining time.
    fn prepare<T>(&self, ctx: &Ctx, msg: T) -> Result<(ClientConn, tonic::Request<T>)> {
        let cc = ctx
            .metadata()
            .and_then(|m| m.get::<ClientConn>(Side::Client))
            .ok_or_else(|| {
                NsmError::internal(
                    ELEMENT,
                    "no client connection to the next hop (dial must run first)",
                )
            })?;
        let mut req = tonic::Request::new(msg);
        if let Some(left) = ctx.remaining() {
            if left.is_zero() {
                return Err(NsmError::deadline(ELEMENT, format!("calling {}", cc.url)));
            }
            req.set_timeout(left);
        }
        // The audience is the server the channel's TLS handshake authenticated (none in plaintext);
        // the token is signed with the SVID the channel presented to it.
        let own = cc.svid.clone().map(|s| LocalIdentity(s));
        let token = self
            .tokens
            .generate_as(ctx.clock(), cc.peer.get().as_ref(), own.as_ref())?;
        attach_token(&mut req, &token)?;
        Ok((cc, req))
    }
}

/// Records the server just called as the context's peer, for `authorize` (client) after us: its TLS
/// identity, or only its URL in plaintext.
fn record_server(ctx: &mut Ctx, cc: &ClientConn) {
    let peer = cc.peer.get().unwrap_or_else(|| PeerInfo {
        remote_addr: Some(cc.url.to_string()),
        ..Default::default()
    });
    ctx.insert(peer);
}

/// Maps the next hop's status; tonic reports its own enforcement of our deadline as Cancelled.
fn remote_error(ctx: &Ctx, cc: &ClientConn, status: Status) -> NsmError {
    if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) && ctx.expired() {
        return NsmError::deadline(ELEMENT, format!("calling {}", cc.url));
    }
    NsmError::remote(ELEMENT, cc.url.to_string(), status)
}

#[async_trait]
impl NetworkServiceServer for ConnectClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        _next: Next,
    ) -> Result<Connection> {
        let (cc, req) = self.prepare(ctx, request)?;
        let mut client = NetworkServiceClient::new(cc.channel.clone());
        let call = async {
            client
                .request(req)
                .await
                .map_err(|s| remote_error(ctx, &cc, s))
        };
        let conn = ctx.within(ELEMENT, call).await?.into_inner();
        record_server(ctx, &cc);
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, _next: Next) -> Result<()> {
        let (cc, req) = self.prepare(ctx, conn)?;
        let mut client = NetworkServiceClient::new(cc.channel.clone());
        let call = async {
            client
                .close(req)
                .await
                .map_err(|s| remote_error(ctx, &cc, s))
        };
        ctx.within(ELEMENT, call).await?;
        record_server(ctx, &cc);
        Ok(())
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
