//! `connect`: calling the next hop.
//!
//! [`ConnectClient`] is the tail of client chains. **Request**/**Close** call
//! `networkservice.NetworkService/Request|Close` on the [`ClientConn`](crate::dial::ClientConn) that
//! `dial` stored, with a per-RPC token generated for this call and `grpc-timeout` set to the time the
//! context has left; a status from the next hop keeps its code. The token's audience is the server's
//! identity from the channel's TLS handshake; after the call that identity (or, in plaintext, just the
//! URL) is put into the context as [`PeerInfo`](nsm_core::values::PeerInfo) for `authorize` (client).
//! Without a `ClientConn` it fails with an
//! internal error (dial must run first).
//!
//! [`ConnectServer`] joins a server chain to a client chain. **Request**: runs the client chain, then the
//! rest of the server chain with the connection the client returned; if the rest fails, the client side
//! is closed again (best effort). **Close**: closes the client side, then the rest of the server chain,
//! and reports the first failure. The client chain runs on a copy of the context, so values it sets
//! (the next hop's URL…) do not leak into the server chain.
//!
//! Neither keeps state nor fires events.

mod client;
mod server;

pub use client::ConnectClient;
pub use server::ConnectServer;
