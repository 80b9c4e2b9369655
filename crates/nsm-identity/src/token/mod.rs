//! ES256 path tokens, as Go's `spiffejwt.TokenGeneratorFunc` issues them.
//!
//! Header `{"alg":"ES256","typ":"JWT"}`; claims exactly `sub` (own SPIFFE ID), `aud` (a JSON array
//! holding the peer's SPIFFE ID; absent without a TLS peer) and `exp` (whole seconds) =
//! min(now + max lifetime, own SVID NotAfter). The expiry returned alongside is additionally capped by
//! the peer certificate's NotAfter while the `exp` claim is not (as in Go). No `iat`, `iss`, `jti`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nsm_core::token::{LocalIdentity, Token, TokenGenerator};
use nsm_core::values::PeerInfo;
use nsm_core::{Clock, NsmError};

use crate::{IdentityError, SharedSource, Svid, spiffe_id_of};

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
    /// The last SVIDs this generator's source handed out: `generate_as` signs with a connection's
    /// SVID only if it is one of them (never with a key from elsewhere).
    seen: parking_lot::Mutex<Vec<Arc<Svid>>>,
}

/// How many past SVIDs `generate_as` still signs with (connections established before rotations).
const SEEN_SVIDS: usize = 8;

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
        let current = source.subscribe();
        let first = current.borrow().svid.clone();
        Self {
            current,
            max_lifetime: max_lifetime.into(),
            seen: parking_lot::Mutex::new(vec![first]),
        }
    }

    /// The current SVID, remembered among the seen ones.
    fn observe(&self) -> Arc<Svid> {
        let current = self.current.borrow().svid.clone();
        let mut seen = self.seen.lock();
        if !seen.last().is_some_and(|s| Arc::ptr_eq(s, &current)) {
            seen.push(current.clone());
            if seen.len() > SEEN_SVIDS {
                seen.remove(0);
            }
        }
        current
    }

    /// Signs a token for `peer` at wall time `now` with the current SVID.
    pub fn sign(&self, now: SystemTime, peer: Option<&PeerInfo>) -> Result<Token, IdentityError> {
        let svid = self.current.borrow().svid.clone();
        self.sign_as(&svid, now, peer)
    }

    /// Signs a token for `peer` at wall time `now` with `svid` (the identity a connection was
    /// established with, which may have rotated since).
    pub fn sign_as(
        &self,
        svid: &Svid,
        now: SystemTime,
        peer: Option<&PeerInfo>,
    ) -> Result<Token, IdentityError> {
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

    fn generate_as(
        &self,
        clock: &Clock,
        peer: Option<&PeerInfo>,
        own: Option<&LocalIdentity>,
    ) -> nsm_core::Result<Token> {
        let current = self.observe();
        let svid = own
            .and_then(LocalIdentity::downcast::<Svid>)
            .filter(|s| self.seen.lock().iter().any(|x| Arc::ptr_eq(x, s)))
            .unwrap_or(current);
        self.sign_as(&svid, clock.now(), peer)
            .map_err(|e| NsmError::internal(ELEMENT, e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{DevCa, MemorySource};

    fn part(token: &str, i: usize) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap()
    }

    #[test]
    fn token_format_matches_go_spiffejwt() {
        let ca = DevCa::new("example.org").unwrap();
        let nsc: SharedSource = Arc::new(MemorySource::new(
            ca.material("nsc", Duration::from_secs(3600)).unwrap(),
        ));
        let server = ca.material("nsmgr", Duration::from_secs(120)).unwrap();
        let peer = crate::peer_info(Some(server.svid.chain()));
        let now = Clock::system().now();
        let g = JwtTokenGenerator::new(&nsc, Duration::from_secs(600));
        let t = g.sign(now, Some(&peer)).unwrap();
        assert_eq!(part(&t.token, 0), br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload: serde_json::Value = serde_json::from_slice(&part(&t.token, 1)).unwrap();
        let keys: Vec<_> = payload.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 3, "exactly sub, aud, exp: {payload}");
        assert_eq!(payload["sub"], "spiffe://example.org/nsc");
        assert_eq!(
            payload["aud"],
            serde_json::json!(["spiffe://example.org/nsmgr"])
        );
        let exp = (now + Duration::from_secs(600))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(payload["exp"], serde_json::json!(exp), "whole seconds");
        // The raw payload keeps Go's field order.
        let raw = String::from_utf8(part(&t.token, 1)).unwrap();
        assert!(
            raw.starts_with(r#"{"sub":"spiffe://example.org/nsc","aud":["#),
            "{raw}"
        );
        // The returned expiry is capped by the peer's NotAfter (2 minutes), the claim is not.
        assert_eq!(t.expires, server.svid.not_after());
        // The signature verifies with the signer's certificate and not with another.
        let key = jsonwebtoken::DecodingKey::from_ec_pem(nsc.current().svid.leaf_pem().as_bytes())
            .unwrap();
        let (msg, sig) = t.token.rsplit_once('.').unwrap();
        assert!(
            jsonwebtoken::crypto::verify(sig, msg.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .unwrap()
        );
        let other =
            jsonwebtoken::DecodingKey::from_ec_pem(server.svid.leaf_pem().as_bytes()).unwrap();
        assert!(
            !jsonwebtoken::crypto::verify(
                sig,
                msg.as_bytes(),
                &other,
                jsonwebtoken::Algorithm::ES256
            )
            .unwrap()
        );
    }

    #[test]
    fn exp_is_capped_by_own_svid_and_may_be_in_the_past() {
        let ca = DevCa::new("example.org").unwrap();
        let src: SharedSource = Arc::new(MemorySource::new(
            ca.material("nse", Duration::from_secs(30)).unwrap(),
        ));
        let now = Clock::system().now();
        let t = JwtTokenGenerator::new(&src, Duration::from_secs(600))
            .sign(now, None)
            .unwrap();
        let not_after = src.current().svid.not_after();
        assert_eq!(t.expires, not_after);
        let payload: serde_json::Value = serde_json::from_slice(&part(&t.token, 1)).unwrap();
        assert!(payload.get("aud").is_none(), "no peer, no audience");
        let negative = SignedDuration {
            negative: true,
            magnitude: Duration::from_secs(60),
        };
        let t = JwtTokenGenerator::new(&src, negative)
            .sign(now, None)
            .unwrap();
        assert!(t.expires < now);
    }

    #[test]
    fn go_durations() {
        let p = |s| crate::parse_go_duration(s).unwrap();
        assert_eq!(p("10m"), SignedDuration::positive(Duration::from_secs(600)));
        assert_eq!(p("1h30m").magnitude, Duration::from_secs(5400));
        assert_eq!(p("250ms").magnitude, Duration::from_millis(250));
        assert!(p("-1m").negative);
        assert_eq!(p("0"), SignedDuration::positive(Duration::ZERO));
        assert!(crate::parse_go_duration("10").is_err());
        assert!(crate::parse_go_duration("abc").is_err());
    }
}
