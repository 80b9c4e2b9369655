//! Workload identity for nsm-rs.

//!
//! - [`X509Source`]: where the current X.509-SVID (certificate chain, private key, SPIFFE ID) and the
//!   trust bundle come from, with change notifications through a `tokio::sync::watch` channel. Sources:
//!   [`MemorySource`] (set by hand; tests), [`PemFileSource`] (cert, key and bundle files, reloaded when
//!   they change), [`DevCa`] (a built-in development CA issuing short-lived SVIDs, rotated
//!   automatically; used by `nsm up` and the tests) and, with the `workload-api` feature,
//!   [`WorkloadApiSource`] (the SPIFFE Workload API at `SPIFFE_ENDPOINT_SOCKET`, rotation followed live).
//! - [`TlsIdentity`]: rustls client and server configs (aws-lc-rs) doing X.509-SVID mutual TLS: the peer
//!   chain is verified against the current trust bundle and **any** SPIFFE ID is accepted (authorization
//!   is done by path tokens and policies); the current SVID is presented on every handshake, so rotation
//!   needs no restart. [`peer_info`] turns the peer's certificates into a
//!   [`PeerInfo`](nsm_core::values::PeerInfo).
//! - [`JwtTokenGenerator`]: the ES256 path tokens Go's `spiffejwt` issues.
//! - [`TransportSecurity`] and [`transport_from_env`]: TLS or (only when asked for with
//!   `NSM_INSECURE=true`) plaintext.
//! - `testing` (feature `testing`): a fake SPIFFE Workload API agent for tests.

mod env;
mod error;
mod material;
mod pem;
mod source;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod token;

pub use env::{
    IDENTITY_DIR_ENV, INSECURE_ENV, MAX_TOKEN_LIFETIME_ENV, SPIFFE_ENDPOINT_ENV, TransportSecurity,
    max_token_lifetime_from_env, parse_go_duration, transport_from_env,
};
pub use error::IdentityError;
pub use material::{Svid, TrustBundle, X509Material, spiffe_id_of};
pub use pem::{der_to_pem, parse_certs_pem};
pub use source::dev::{DevCa, DevSource};
pub use source::file::PemFileSource;
pub use source::memory::MemorySource;
#[cfg(feature = "workload-api")]
pub use source::workload::WorkloadApiSource;
pub use source::{SharedSource, X509Source};
pub use tls::{TlsIdentity, crypto_provider, install_crypto_provider, peer_info};
pub use token::{JwtTokenGenerator, SignedDuration};
