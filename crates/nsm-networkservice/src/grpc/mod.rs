//! `grpc`: the gRPC edges of a NetworkService chain.
//!
//! - [`NetworkServiceGrpc`] serves a [`Chain`](nsm_core::Chain) as `networkservice.NetworkService`. Per call it
//!   builds a [`Ctx`](nsm_core::Ctx): the deadline from `grpc-timeout`, the caller's per-RPC token
//!   ([`IncomingToken`](nsm_core::values::IncomingToken), from `nsm-client-token` /
//!   `nsm-client-token-expires`; missing or malformed → no token, `authorize` decides) and
//!   [`PeerInfo`](nsm_core::values::PeerInfo). The chain runs on its own task so an impatient caller
//!   cannot cut it half-way; errors map to `tonic::Status` through `NsmError`.
//! - [`serve`], [`serve_tcp`], [`serve_unix`] run a tonic router on a listener and return a [`Serving`]
//!   handle that knows the bound URL and can stop the server, cutting every open connection (what a
//!   peer sees when a process dies).
//! - [`serve_tls`] / [`serve_with`] do the same with SPIFFE mTLS (tcp and unix): the client's SPIFFE ID and
//!   leaf certificate reach the chain as [`PeerInfo`](nsm_core::values::PeerInfo).
//! - [`client_channel`] dials a next hop (`tcp://` or `unix://`); [`client_channel_with`] dials with mTLS
//!   and returns the [`ServerPeer`] the handshake authenticated (the audience of per-RPC tokens).
//! - [`attach_token`] writes the per-RPC token metadata on an outgoing call, as Go's
//!   `token.NewPerRPCCredentials` does.
//!
//! No per-connection state; no background events.

mod channel;
pub mod fdconn;
mod metadata;
mod serve;
mod server;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod tls;

pub use channel::{client_channel, client_channel_as, client_channel_with};
pub use metadata::{
    TOKEN_EXPIRES_KEY, TOKEN_KEY, attach_token, format_rfc3339_nanos, grpc_timeout, incoming_token,
    parse_rfc3339,
};
pub use serve::{
    Serving, serve, serve_tcp, serve_tcp_tls, serve_tls, serve_unix, serve_unix_tls, serve_with,
};
pub use server::{NetworkServiceGrpc, incoming_ctx};
pub use tls::{ServerPeer, TlsConnInfo, TlsPeer};
