//! Typed values that elements pass to later elements through [`Ctx`](crate::Ctx) — the equivalents of
//! Go's `clienturlctx`, `token.FromContext`, `peer.FromContext` and `discover.Candidates`.

use std::sync::Arc;
use std::time::SystemTime;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;

/// The URL of the next hop (set by `clienturl`, `discover`, `roundrobin`, `discoverforwarder`; used by
/// `dial`, `filtermechanisms` and registry `connect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientUrl(pub NsmUrl);

/// The per-RPC token the caller sent (`nsm-client-token`, `nsm-client-token-expires`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingToken {
    /// The JWT.
    pub token: String,
    /// Its expiry as the caller stated it.
    pub expires: SystemTime,
}

/// What is known of the peer at the other end of the gRPC call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's SPIFFE ID, when it authenticated with an X.509-SVID.
    pub spiffe_id: Option<String>,
    /// The peer's leaf certificate (PEM), for policies that verify token signatures. Shared: every
    /// call over one TLS connection — and every connection's context that `begin` keeps for its
    /// events — points at the same text instead of holding a copy of it.
    pub certificate_pem: Option<Arc<str>>,
    /// The remote address, if known.
    pub remote_addr: Option<String>,
}

/// Marks a call re-run by `begin`'s event handle (refresh, timeout, heal) rather than received from a
/// peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromEvent;

/// The network service and the endpoints that may serve a request (set by `discover`, used by
/// `roundrobin`).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// The network service.
    pub network_service: NetworkService,
    /// Endpoints in preference order.
    pub endpoints: Vec<NetworkServiceEndpoint>,
}

/// This hop's own name (set by `updatepath` users that need it later, e.g. monitor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopName(pub String);
