//! Token generation for path segments (Go `token.GeneratorFunc`).
//!
//! `updatetoken` asks a [`TokenGenerator`] for this hop's token, and the gRPC client edge asks it for the
//! per-RPC token it sends. The real generator (ES256 JWTs signed with the SVID key) lives with the
//! identity code; [`TestTokenGenerator`] is the sandbox's, like Go's `GenerateTestToken`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::error::Result;
use crate::values::PeerInfo;

/// A token and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token text (a JWT in production).
    pub token: String,
    /// When it expires.
    pub expires: SystemTime,
}

/// Generates the token this hop presents to `peer`.
pub trait TokenGenerator: Send + Sync + 'static {
    /// A token for `peer` (the audience), valid from now.
    fn generate(&self, clock: &Clock, peer: Option<&PeerInfo>) -> Result<Token>;

    /// A token for `peer` signed as `own`: the identity (SVID) this hop presented on the connection
    /// the token travels with or answers on, so that the peer verifies it with the certificate it
    /// saw in that connection's handshake even after our identity rotated. Generators without
    /// identities ignore `own`.
    fn generate_as(
        &self,
        clock: &Clock,
        peer: Option<&PeerInfo>,
        own: Option<&LocalIdentity>,
    ) -> Result<Token> {
        let _ = own;
        self.generate(clock, peer)
    }
}

/// The identity this hop authenticated with on one connection (the SVID its TLS handshake presented),
/// opaque here; the identity code knows the concrete type. The gRPC server edge puts it into the
/// context of every call arriving on a TLS connection, and `dial` records it per outgoing channel.
#[derive(Clone)]
pub struct LocalIdentity(pub Arc<dyn std::any::Any + Send + Sync>);

impl LocalIdentity {
    /// The identity as `T`, if it is one.
    pub fn downcast<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0.clone().downcast::<T>().ok()
    }
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalIdentity")
    }
}

/// A shared token generator.
pub type SharedTokenGenerator = Arc<dyn TokenGenerator>;

/// Issues the literal token `"TestToken"` valid for a fixed lifetime (default one hour).
#[derive(Debug, Clone, Copy)]
pub struct TestTokenGenerator {
    /// How long each token lives.
    pub lifetime: Duration,
}

impl Default for TestTokenGenerator {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(3600),
        }
    }
}

impl TokenGenerator for TestTokenGenerator {
    fn generate(&self, clock: &Clock, _peer: Option<&PeerInfo>) -> Result<Token> {
        Ok(Token {
            token: "TestToken".to_string(),
            expires: clock.now() + self.lifetime,
        })
    }
}
