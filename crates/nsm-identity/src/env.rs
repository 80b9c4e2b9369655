//! Choosing the transport security from the environment.
//!
//! | variable | meaning |
//! |---|---|
//! | `NSM_INSECURE=true` | plaintext gRPC, test tokens (tests and local experiments only) |
//! | `SPIFFE_ENDPOINT_SOCKET` | the SPIFFE Workload API (SPIRE agent), e.g. `unix:///run/spire/sockets/agent.sock` |
//! | `NSM_IDENTITY_DIR` | a directory with `svid.pem`, `svid.key` (PKCS#8) and `bundle.pem`, reloaded on change |
//! | `NSM_MAX_TOKEN_LIFETIME` | the longest path token lifetime, a Go duration (`10m` default; may be negative) |
//!
//! Without any of the first three a component refuses to start.

use std::sync::Arc;
use std::time::Duration;

use nsm_core::token::{SharedTokenGenerator, TestTokenGenerator};

use crate::{IdentityError, JwtTokenGenerator, PemFileSource, SignedDuration, TlsIdentity};

/// Plaintext only when this is `true`.
pub const INSECURE_ENV: &str = "NSM_INSECURE";
/// The longest token lifetime.
pub const MAX_TOKEN_LIFETIME_ENV: &str = "NSM_MAX_TOKEN_LIFETIME";
/// A directory holding PEM identity files.
pub const IDENTITY_DIR_ENV: &str = "NSM_IDENTITY_DIR";
/// The SPIFFE Workload API address.
pub const SPIFFE_ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// How a component talks to its peers.
#[derive(Clone, Debug, Default)]
pub enum TransportSecurity {
    /// Plaintext, no identity (only with `NSM_INSECURE=true`).
    #[default]
    Insecure,
    /// SPIFFE mTLS.
    Tls(Arc<TlsIdentity>),
}

impl TransportSecurity {
    /// The TLS identity, if any.
    pub fn tls(&self) -> Option<&Arc<TlsIdentity>> {
        match self {
            Self::Insecure => None,
            Self::Tls(t) => Some(t),
        }
    }

    /// The identity this transport presents now (`None` in plaintext), for `generate_as`.
    pub fn local_identity(&self) -> Option<nsm_core::token::LocalIdentity> {
        self.tls()
            .map(|t| nsm_core::token::LocalIdentity(t.current().svid.clone()))
    }

    /// The matching token generator: ES256 JWTs with an identity, test tokens without.
    pub fn token_generator(&self, max_lifetime: SignedDuration) -> SharedTokenGenerator {
        match self {
            Self::Insecure => Arc::new(TestTokenGenerator::default()),
            Self::Tls(t) => Arc::new(JwtTokenGenerator::new(t.source(), max_lifetime)),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads the identity settings (table above). Errors say what to set.
pub async fn transport_from_env() -> Result<TransportSecurity, IdentityError> {
    if let Some(v) = env(INSECURE_ENV) {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => return Ok(TransportSecurity::Insecure),
            "false" | "0" | "no" => {}
            other => {
                return Err(IdentityError::Config(format!(
                    "{INSECURE_ENV}={other:?}: expected true or false"
                )));
            }
        }
    }
    if let Some(dir) = env(IDENTITY_DIR_ENV) {
        let source = PemFileSource::from_dir(dir.as_ref(), Duration::from_secs(2))?;
        return Ok(TransportSecurity::Tls(TlsIdentity::new(source)?));
    }
    if let Some(endpoint) = env(SPIFFE_ENDPOINT_ENV) {
        #[cfg(feature = "workload-api")]
        {
            let source = crate::WorkloadApiSource::connect(Some(&endpoint)).await?;
            return Ok(TransportSecurity::Tls(TlsIdentity::new(source)?));
        }
        #[cfg(not(feature = "workload-api"))]
        return Err(IdentityError::NoIdentity(format!(
            "{SPIFFE_ENDPOINT_ENV}={endpoint} is set but this build has no Workload API support"
        )));
    }
    Err(IdentityError::NoIdentity(format!(
        "no workload identity: set {SPIFFE_ENDPOINT_ENV} (SPIFFE Workload API, e.g. a SPIRE agent) or \
         {IDENTITY_DIR_ENV} (svid.pem, svid.key, bundle.pem), or run `nsm up` for a development identity; \
         plaintext is available only with {INSECURE_ENV}=true (tests)"
    )))
}

/// `NSM_MAX_TOKEN_LIFETIME` (Go duration syntax, default 10m).
pub fn max_token_lifetime_from_env() -> Result<SignedDuration, IdentityError> {
    match env(MAX_TOKEN_LIFETIME_ENV) {
        None => Ok(SignedDuration::positive(Duration::from_secs(600))),
        Some(v) => parse_go_duration(&v)
            .map_err(|e| IdentityError::Config(format!("{MAX_TOKEN_LIFETIME_ENV}={v:?}: {e}"))),
    }
}

/// Parses a Go duration (`300ms`, `-1.5h`, `2h45m`, `0`).
pub fn parse_go_duration(s: &str) -> Result<SignedDuration, String> {
    let s = s.trim();
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(SignedDuration::positive(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let value: f64 = rest[..n]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[n..];
        let u = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic() || *b == 0xc2 || *b == 0xb5)
            .count();
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
        };
        rest = &rest[u..];
        total += value * unit;
    }
    Ok(SignedDuration {
        negative,
        magnitude: Duration::try_from_secs_f64(total).map_err(|e| e.to_string())?,
    })
}
