//! ES256 path tokens, as Go's `spiffejwt.TokenGeneratorFunc` issues them.
//!
//! Header `{"alg":"ES256","typ":"JWT"}`; claims exactly `sub` (own SPIFFE ID), `aud` (a JSON array
//! holding the peer's SPIFFE ID; absent without a TLS peer) and `exp` (whole seconds) =
//! min(now + max lifetime, own SVID NotAfter). The expiry returned alongside is additionally capped by
//! the peer certificate's NotAfter while the `exp` claim is not (as in Go). No `iat`, `iss`, `jti`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nsm_core::token::{Token, TokenGenerator};
use nsm_core::values::PeerInfo;
use nsm_core::{Clock, NsmError};

use crate::{IdentityError, SharedSource, spiffe_id_of};

const ELEMENT: &str = "token";

/// `base64url({"alg":"ES256","typ":"JWT"})`, byte for byte what golang-jwt v4 produces.
const HEADER_B64: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9";

/// A duration that may be negative (Go's `time.Duration`; `NSM_MAX_TOKEN_LIFETIME=-1m` issues tokens
/// that are already expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedDuration {
    /// True for a negative duration.
    pub negative: bool,
    /// The magnitude.
    pub magnitude: Duration,
}

impl SignedDuration {
    /// A non-negative duration.
    pub const fn positive(d: Duration) -> Self {
        Self {
            negative: false,
            magnitude: d,
        }
    }

    /// `t` moved by this duration (saturating at the epoch).
    pub fn add_to(self, t: SystemTime) -> SystemTime {
        if self.negative {
            t.checked_sub(self.magnitude).unwrap_or(UNIX_EPOCH)
        } else {
            t + self.magnitude
        }
    }
}

impl From<Duration> for SignedDuration {
    fn from(d: Duration) -> Self {
        Self::positive(d)
    }
}

/// Signs ES256 path tokens with the source's current SVID key.
pub struct JwtTokenGenerator {
    current: tokio::sync::watch::Receiver<std::sync::Arc<crate::X509Material>>,
    max_lifetime: SignedDuration,
}

impl std::fmt::Debug for JwtTokenGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokenGenerator")
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

impl JwtTokenGenerator {
    /// Tokens living at most `max_lifetime` (Go default: 10 minutes).
    pub fn new(source: &SharedSource, max_lifetime: impl Into<SignedDuration>) -> Self {
        Self {
            current: source.subscribe(),
            max_lifetime: max_lifetime.into(),
        }
    }

    /// Signs a token for `peer` at wall time `now`.
    pub fn sign(&self, now: SystemTime, peer: Option<&PeerInfo>) -> Result<Token, IdentityError> {
        let material = self.current.borrow().clone();
        let svid = &material.svid;
        let mut expires = self.max_lifetime.add_to(now).min(svid.not_after());
        let exp = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut payload = String::with_capacity(160);
        payload.push_str("{\"sub\":");
        payload.push_str(&json_string(svid.spiffe_id()));
        if let Some(aud) = peer.and_then(|p| p.spiffe_id.as_deref()) {
            payload.push_str(",\"aud\":[");
            payload.push_str(&json_string(aud));
            payload.push(']');
        }
        payload.push_str(",\"exp\":");
        payload.push_str(&exp.to_string());
        payload.push('}');
        if let Some(pem) = peer.and_then(|p| p.certificate_pem.as_deref())
            && let Some(not_after) = crate::parse_certs_pem(pem.as_bytes())
                .ok()
                .and_then(|c| c.into_iter().next())
                .and_then(|der| spiffe_id_of(&der).ok())
                .map(|(_, t)| t)
        {
            expires = expires.min(not_after);
        }
        let mut token = String::with_capacity(HEADER_B64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload.as_bytes(), &mut token);
        let signature = jsonwebtoken::crypto::sign(
            token.as_bytes(),
            svid.jwt_key(),
            jsonwebtoken::Algorithm::ES256,
        )
        .map_err(|e| IdentityError::Tls(format!("cannot sign a token: {e}")))?;
        token.push('.');
        token.push_str(&signature);
        Ok(Token { token, expires })
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl TokenGenerator for JwtTokenGenerator {
    fn generate(&self, clock: &Clock, peer: Option<&PeerInfo>) -> nsm_core::Result<Token> {
        self.sign(clock.now(), peer)
            .map_err(|e| NsmError::internal(ELEMENT, e.to_string()))
    }
}
