//! `io.jwt.decode`, `io.jwt.verify_es256` and `time.now_ns` as regorus extensions, with caches.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use nsm_core::Clock;
use parking_lot::Mutex;
use regorus::Value;

/// Entries kept per cache by default before it is pruned (a mesh has far fewer live tokens).
const MAX_ENTRIES: usize = 8192;
/// Certificates whose decoding keys are kept by default.
const MAX_KEYS: usize = 1024;
/// How long a verified token without `exp` stays verified.
const NO_EXP_TTL: Duration = Duration::from_secs(60);

/// A decoded token: `[header, payload, signature hex]` as `io.jwt.decode` returns it, the payload
/// alone (for the native default policies) and its expiry.
#[derive(Clone)]
pub(crate) struct Decoded {
    value: Value,
    pub(crate) payload: Value,
    exp: Option<SystemTime>,
}

/// For one token: the certificates (PEM) it verified against and until when.
type Verified = Vec<(Arc<str>, SystemTime)>;

/// Caches shared by the policies of a process: decoded tokens, verified (token, certificate) pairs
/// kept until the token expires (by the clock the caller passes), and parsed verifying keys by
/// certificate. Only *successful* signature checks are remembered, keyed by the exact token text and
/// certificate, so a token with any byte changed, or presented with another certificate, is checked
/// again (and refused). Every map is bounded: when full, expired verifications are dropped first,
/// then the map is cleared.
pub struct JwtCache {
    decoded: Mutex<HashMap<Arc<str>, Option<Decoded>>>,
    verified: Mutex<HashMap<Arc<str>, Verified>>,
    keys: Mutex<HashMap<Arc<str>, Option<Arc<ParsedPublicKey>>>>,
    max_entries: usize,
    max_keys: usize,
    signature_checks: AtomicU64,
}

impl Default for JwtCache {
    fn default() -> Self {
        Self::with_capacity(MAX_ENTRIES, MAX_KEYS)
    }
}

impl std::fmt::Debug for JwtCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtCache")
            .field("decoded", &self.decoded.lock().len())
            .field("verified", &self.verified.lock().len())
            .field("keys", &self.keys.lock().len())
            .finish()
    }
}

/// How many entries each map of a [`JwtCache`] holds (see [`JwtCache::sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// Decoded (or undecodable) tokens.
    pub decoded: usize,
    /// Tokens with at least one successful signature check remembered.
    pub verified: usize,
    /// Parsed verifying keys (or unparsable certificates).
    pub keys: usize,
}

fn b64_json(part: &str) -> Option<serde_json::Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn decode_uncached(token: &str) -> Option<Decoded> {
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header = b64_json(h)?;
    let payload = b64_json(p)?;
    if !header.is_object() || !payload.is_object() {
        return None;
    }
    let sig = URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()?;
    let exp = payload
        .get("exp")
        .and_then(serde_json::Value::as_f64)
        .filter(|e| *e >= 0.0)
        .and_then(|e| Duration::try_from_secs_f64(e).ok())
        .map(|d| UNIX_EPOCH + d);
    let payload = Value::from(payload);
    Some(Decoded {
        value: Value::from(vec![
            Value::from(header),
            payload.clone(),
            Value::from(hex::encode(sig)),
        ]),
        payload,
        exp,
    })
}

impl JwtCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache holding at most `max_entries` decoded and verified tokens and `max_keys`
    /// verifying keys.
    pub fn with_capacity(max_entries: usize, max_keys: usize) -> Self {
        Self {
            decoded: Mutex::default(),
            verified: Mutex::default(),
            keys: Mutex::default(),
            max_entries: max_entries.max(1),
            max_keys: max_keys.max(1),
            signature_checks: AtomicU64::new(0),
        }
    }

    /// How many entries each map holds now.
    pub fn sizes(&self) -> CacheSizes {
        CacheSizes {
            decoded: self.decoded.lock().len(),
            verified: self.verified.lock().len(),
            keys: self.keys.lock().len(),
        }
    }

    /// How many ES256 signature checks were actually computed (not answered from the cache).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// `io.jwt.decode(token)`, or `None` where OPA's would be undefined (not three base64url parts,
    /// header or payload not a JSON object).
    pub(crate) fn decode(&self, token: &str) -> Option<Decoded> {
        if let Some(d) = self.decoded.lock().get(token) {
            return d.clone();
        }
        let d = decode_uncached(token);
        let mut m = self.decoded.lock();
        if m.len() >= self.max_entries {
            m.clear();
        }
        m.insert(Arc::from(token), d.clone());
        d
    }

    /// The P-256 verifying key of the certificate (or public key) `pem`, parsed once: the PEM, the
    /// SubjectPublicKeyInfo and the curve point are decoded and validated when first seen.
    fn key(&self, pem: &str) -> Option<Arc<ParsedPublicKey>> {
        if let Some(k) = self.keys.lock().get(pem) {
            return k.clone();
        }
        let k = DecodingKey::from_ec_pem(pem.as_bytes())
            .ok()
            .and_then(|k| {
                let point = k.try_get_as_bytes().ok()?;
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).ok()
            })
            .map(Arc::new);
        let mut m = self.keys.lock();
        if m.len() >= self.max_keys {
            m.clear();
        }
        m.insert(Arc::from(pem), k.clone());
        k
    }

    /// Whether `token` carries a valid ES256 signature by the key of `cert_pem` (a PEM certificate or
    /// public key). Successes are remembered until the token expires.
    pub fn verify_es256(&self, token: &str, cert_pem: &str, now: SystemTime) -> bool {
        if let Some(entries) = self.verified.lock().get(token)
            && entries
                .iter()
                .any(|(c, until)| &**c == cert_pem && now < *until)
        {
            return true;
        }
        let Some((message, signature)) = token.rsplit_once('.') else {
            return false;
        };
        let Some(key) = self.key(cert_pem) else {
            return false;
        };
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        // As `jsonwebtoken::crypto::verify` does for ES256: unpadded base64url, then r‖s.
        let ok = URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|sig| key.verify_sig(message.as_bytes(), &sig).is_ok());
        if ok {
            let until = self
                .decode(token)
                .and_then(|d| d.exp)
                .unwrap_or(now + NO_EXP_TTL);
            let mut m = self.verified.lock();
            if m.len() >= self.max_entries {
                m.retain(|_, v| {
                    v.retain(|(_, u)| now < *u);
                    !v.is_empty()
                });
                if m.len() >= self.max_entries {
                    m.clear();
                }
            }
            let entries = m.entry(Arc::from(token)).or_default();
            entries.retain(|(_, u)| now < *u);
            entries.push((Arc::from(cert_pem), until));
        }
        ok
    }

    /// Registers the extensions on `engine`.
    pub(crate) fn register(
        self: &Arc<Self>,
        engine: &mut regorus::Engine,
        clock: Clock,
    ) -> anyhow::Result<()> {
        let c = self.clone();
        engine.add_extension(
            "io.jwt.decode".into(),
            1,
            Box::new(move |args: Vec<Value>| {
                let Some(Value::String(t)) = args.first() else {
                    return Ok(Value::Undefined);
                };
                Ok(c.decode(t).map_or(Value::Undefined, |d| d.value))
            }),
        )?;
        let c = self.clone();
        engine.add_extension(
            "io.jwt.verify_es256".into(),
            2,
            Box::new(move |args: Vec<Value>| {
                let (Some(Value::String(t)), Some(Value::String(cert))) =
                    (args.first(), args.get(1))
                else {
                    return Ok(Value::Undefined);
                };
                Ok(Value::from(c.verify_es256(t, cert, clock.now())))
            }),
        )?;
        engine.add_extension(
            "time.now_ns".into(),
            0,
            Box::new(move |_: Vec<Value>| {
                let ns = clock
                    .now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                Ok(Value::from(ns))
            }),
        )?;
        Ok(())
    }
}
