//! ES256 path tokens, as Go's `spiffejwt.TokenGeneratorFunc` issues them.
//!
//! Header `{"alg":"ES256","typ":"JWT"}`; claims exactly `sub` (own SPIFFE ID), `aud` (a JSON array
//! holding the peer's SPIFFE ID; absent without a TLS peer) and `exp` (whole seconds) =
//! min(now + max lifetime, own SVID NotAfter). The expiry returned alongside is additionally capped by
//! the peer certificate's NotAfter while the `exp` claim is not (as in Go). No `iat`, `iss`, `jti`.
//!
//! Go signs a new token on every call. Through [`TokenGenerator`] this generator hands out the token
//! it already signed when the claims would be byte-identical (same SVID, same audience, same `exp`
//! second; see the `recent` module), unless built [`without_reuse`](JwtTokenGenerator::without_reuse);
//! [`sign`](JwtTokenGenerator::sign) and [`sign_as`](JwtTokenGenerator::sign_as) always sign.

mod recent;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nsm_core::token::{LocalIdentity, Token, TokenGenerator};
use nsm_core::values::PeerInfo;
use nsm_core::{Clock, NsmError};

use crate::{IdentityError, SharedSource, Svid};
use recent::RecentTokens;

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
    /// Tokens of the current `exp` second and peer NotAfters.
    recent: parking_lot::Mutex<RecentTokens>,
    /// Whether [`TokenGenerator`] calls may hand out a remembered token.
    reuse: bool,
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
            recent: parking_lot::Mutex::new(RecentTokens::new()),
            reuse: true,
        }
    }

    /// A generator that signs a new token on every call, as Go's does (benchmarks, comparisons).
    pub fn without_reuse(mut self) -> Self {
        self.reuse = false;
        self
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
        let own_expiry = self.own_expiry(svid, now);
        let token = sign_claims(svid, audience(peer), exp_claim(own_expiry))?;
        Ok(Token {
            token,
            expires: self.capped_by_peer(own_expiry, peer),
        })
    }

    /// `now` + the maximum lifetime, capped by the SVID's NotAfter: what the `exp` claim says.
    fn own_expiry(&self, svid: &Svid, now: SystemTime) -> SystemTime {
        self.max_lifetime.add_to(now).min(svid.not_after())
    }

    /// `expiry` further capped by the peer certificate's NotAfter (the returned expiry only).
    fn capped_by_peer(&self, expiry: SystemTime, peer: Option<&PeerInfo>) -> SystemTime {
        match peer
            .and_then(|p| p.certificate_pem.as_deref())
            .and_then(|pem| self.recent.lock().peer_not_after(pem))
        {
            Some(not_after) => expiry.min(not_after),
            None => expiry,
        }
    }

    /// [`sign_as`](Self::sign_as), handing out the token signed earlier when its claims would be
    /// the same (`current` is the generator's SVID now: a rotation forgets remembered tokens).
    fn issue(
        &self,
        svid: &Svid,
        current: &Arc<Svid>,
        now: SystemTime,
        peer: Option<&PeerInfo>,
    ) -> Result<Token, IdentityError> {
        if !self.reuse {
            return self.sign_as(svid, now, peer);
        }
        let own_expiry = self.own_expiry(svid, now);
        let (aud, exp) = (audience(peer), exp_claim(own_expiry));
        let remembered = self.recent.lock().find(current, svid, aud, exp);
        let token = match remembered {
            Some(token) => token,
            None => {
                let token = sign_claims(svid, aud, exp)?;
                self.recent.lock().store(current, svid, aud, exp, &token);
                token
            }
        };
        Ok(Token {
            token,
            expires: self.capped_by_peer(own_expiry, peer),
        })
    }
}

/// The audience of a token for `peer`: its SPIFFE ID, if known.
fn audience(peer: Option<&PeerInfo>) -> Option<&str> {
    peer.and_then(|p| p.spiffe_id.as_deref())
}

/// The `exp` claim for an expiry: whole seconds since the epoch.
fn exp_claim(expiry: SystemTime) -> u64 {
    expiry.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The JWT with claims `sub` (the SVID's SPIFFE ID), `aud` and `exp`, signed with the SVID's key.
fn sign_claims(svid: &Svid, aud: Option<&str>, exp: u64) -> Result<String, IdentityError> {
    let mut payload = String::with_capacity(160);
    payload.push_str("{\"sub\":");
    payload.push_str(&json_string(svid.spiffe_id()));
    if let Some(aud) = aud {
        payload.push_str(",\"aud\":[");
        payload.push_str(&json_string(aud));
        payload.push(']');
    }
    payload.push_str(",\"exp\":");
    payload.push_str(&exp.to_string());
    payload.push('}');
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
    Ok(token)
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl TokenGenerator for JwtTokenGenerator {
    fn generate(&self, clock: &Clock, peer: Option<&PeerInfo>) -> nsm_core::Result<Token> {
        let current = self.observe();
        self.issue(&current, &current, clock.now(), peer)
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
            .unwrap_or_else(|| current.clone());
        self.issue(&svid, &current, clock.now(), peer)
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

    #[tokio::test(start_paused = true)]
    async fn identical_claims_reuse_the_token_until_the_exp_second_or_svid_changes() {
        let ca = DevCa::new("example.org").unwrap();
        let mem = Arc::new(MemorySource::new(
            ca.material("nsc", Duration::from_secs(3600)).unwrap(),
        ));
        let src: SharedSource = mem.clone();
        let peer = |name: &str| {
            crate::peer_info(Some(
                ca.material(name, Duration::from_secs(60))
                    .unwrap()
                    .svid
                    .chain(),
            ))
        };
        let (nsmgr, fwd) = (peer("nsmgr"), peer("fwd"));
        // Start just after a whole second so 300 ms stay within one `exp` second.
        let clock = Clock::starting_at(UNIX_EPOCH + Duration::new(1_764_300_000, 1_000));
        let g = JwtTokenGenerator::new(&src, Duration::from_secs(600));
        let first = g.generate(&clock, Some(&nsmgr)).unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
        let again = g.generate(&clock, Some(&nsmgr)).unwrap();
        assert_eq!(again.token, first.token, "same claims: the token is reused");
        // The expiry is still computed per call, to the nanosecond.
        assert_eq!(again.expires, first.expires + Duration::from_millis(300));
        let other_peer = g.generate(&clock, Some(&fwd)).unwrap();
        assert_ne!(other_peer.token, first.token);
        assert_ne!(g.generate(&clock, None).unwrap().token, first.token);
        assert!(g.recent.lock().len() <= 3);
        // The next `exp` second signs anew, and drops the older tokens.
        tokio::time::advance(Duration::from_millis(800)).await;
        let next = g.generate(&clock, Some(&nsmgr)).unwrap();
        assert_ne!(next.token, first.token);
        assert_eq!(g.recent.lock().len(), 1);
        // A rotation forgets every remembered token.
        mem.set(ca.material("nsc", Duration::from_secs(3600)).unwrap());
        let rotated = g.generate(&clock, Some(&nsmgr)).unwrap();
        assert_ne!(rotated.token, next.token);
        assert_eq!(
            part(&rotated.token, 1),
            part(&next.token, 1),
            "same claims, new key"
        );
        // Every handed-out token verifies with its signer's certificate.
        let key = jsonwebtoken::DecodingKey::from_ec_pem(src.current().svid.leaf_pem().as_bytes())
            .unwrap();
        let (msg, sig) = rotated.token.rsplit_once('.').unwrap();
        assert!(
            jsonwebtoken::crypto::verify(sig, msg.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .unwrap()
        );
        // Without reuse, every call signs.
        let fresh = JwtTokenGenerator::new(&src, Duration::from_secs(600)).without_reuse();
        let a = fresh.generate(&clock, Some(&nsmgr)).unwrap();
        let b = fresh.generate(&clock, Some(&nsmgr)).unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(part(&a.token, 1), part(&b.token, 1));
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
