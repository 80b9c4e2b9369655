//! The token caches: a signature is checked once per (token, certificate) until the token expires by
//! the injected clock; forged tokens and other certificates are still refused; the maps stay bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use nsm_api::{Path, PathSegment};
use nsm_core::Clock;
use nsm_core::token::TokenGenerator;
use nsm_identity::{DevCa, JwtTokenGenerator, MemorySource, SharedSource, peer_info};
use nsm_networkservice::authorize::{PolicyInput, Verdict};
use nsm_policy::{JwtCache, PolicyRuntime, default_server_policies_with};

const HOUR: Duration = Duration::from_secs(3600);

struct Signer {
    tokens: JwtTokenGenerator,
    pem: String,
}

fn signer(ca: &DevCa, name: &str, lifetime: Duration) -> Signer {
    let m = ca.material(name, HOUR).unwrap();
    let pem = m.svid.leaf_pem().to_string();
    let src: SharedSource = Arc::new(MemorySource::new(m));
    Signer {
        tokens: JwtTokenGenerator::new(&src, lifetime),
        pem,
    }
}

fn flip(token: &str, at: usize) -> String {
    let mut b = token.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_verified_token_is_checked_again_only_after_it_expires() {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(1_764_300_000));
    let nsc = signer(&ca, "nsc", Duration::from_secs(60));
    let token = nsc.tokens.generate(&clock, None).unwrap().token;
    let cache = JwtCache::new();
    for _ in 0..3 {
        assert!(cache.verify_es256(&token, &nsc.pem, clock.now()));
    }
    assert_eq!(cache.signature_checks(), 1, "verified once, then cached");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(cache.verify_es256(&token, &nsc.pem, clock.now()));
    assert_eq!(cache.signature_checks(), 1);
    // Past `exp` the cached success no longer counts: the signature is checked again (it is still
    // a valid signature; `tokens_expired` is what refuses the token).
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(cache.verify_es256(&token, &nsc.pem, clock.now()));
    assert_eq!(cache.signature_checks(), 2);
    assert_eq!(cache.sizes().verified, 1, "the expired entry was replaced");
}

#[tokio::test(start_paused = true)]
async fn forged_tokens_and_other_certificates_are_refused_after_a_success() {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::system();
    let nsc = signer(&ca, "nsc", Duration::from_secs(600));
    let other = signer(&ca, "other", Duration::from_secs(600));
    let token = nsc.tokens.generate(&clock, None).unwrap().token;
    let cache = JwtCache::new();
    assert!(cache.verify_es256(&token, &nsc.pem, clock.now()));
    // One byte changed in the payload, in the signature; the signature of another token.
    let payload_at = token.find('.').unwrap() + 5;
    let sig_at = token.rfind('.').unwrap() + 5;
    let theirs = other.tokens.generate(&clock, None).unwrap().token;
    let spliced = format!(
        "{}.{}",
        token.rsplit_once('.').unwrap().0,
        theirs.rsplit_once('.').unwrap().1
    );
    for forged in [flip(&token, payload_at), flip(&token, sig_at), spliced] {
        assert!(!cache.verify_es256(&forged, &nsc.pem, clock.now()));
        assert!(!cache.verify_es256(&forged, &nsc.pem, clock.now()));
    }
    // The genuine token with a certificate that did not sign it.
    assert!(!cache.verify_es256(&token, &other.pem, clock.now()));
    assert!(!cache.verify_es256(&token, "", clock.now()));
    assert!(cache.verify_es256(&token, &nsc.pem, clock.now()));
    assert_eq!(cache.sizes().verified, 1, "failures are not remembered");
}

#[tokio::test(start_paused = true)]
async fn the_caches_stay_bounded() {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::system();
    let nsc = signer(&ca, "nsc", Duration::from_secs(600));
    let cache = JwtCache::with_capacity(8, 2);
    let mut tokens = Vec::new();
    for _ in 0..30 {
        // One token per second of `exp`, so every token is a different string.
        tokens.push(nsc.tokens.generate(&clock, None).unwrap().token);
        tokio::time::advance(Duration::from_millis(1001)).await;
    }
    for t in &tokens {
        assert!(cache.verify_es256(t, &nsc.pem, clock.now()));
        let s = cache.sizes();
        assert!(s.verified <= 8 && s.decoded <= 8, "{s:?}");
    }
    for i in 0..5 {
        let pem = signer(&ca, &format!("k{i}"), HOUR).pem;
        assert!(!cache.verify_es256(&tokens[0], &pem, clock.now()));
        assert!(cache.sizes().keys <= 2);
    }
    // Still correct after evictions.
    assert!(cache.verify_es256(&tokens[0], &nsc.pem, clock.now()));
    assert!(!cache.verify_es256(&flip(&tokens[0], 40), &nsc.pem, clock.now()));
}

#[tokio::test]
async fn the_default_policies_check_each_new_token_once_per_process() {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::system();
    let (nsc, nsmgr) = (
        signer(&ca, "nsc", Duration::from_secs(600)),
        signer(&ca, "nsmgr", Duration::from_secs(600)),
    );
    let nsmgr_peer = peer_info(Some(ca.material("nsmgr", HOUR).unwrap().svid.chain()));
    let nsc_cert = Some(nsm_core::values::PeerInfo {
        certificate_pem: Some(nsc.pem.as_str().into()),
        ..Default::default()
    });
    let rt = PolicyRuntime::new(clock);
    let policies = default_server_policies_with(&rt);
    let input = |t0: String| {
        let mut s0 = PathSegment::new("nsc", "a");
        s0.token = t0;
        let mut s1 = PathSegment::new("nsmgr", "b");
        s1.token = nsmgr.tokens.generate(&clock, None).unwrap().token;
        PolicyInput {
            path: Path {
                index: 1,
                path_segments: vec![s0, s1],
            },
            peer: nsc_cert.clone(),
        }
    };
    let t0 = nsc
        .tokens
        .generate(&clock, Some(&nsmgr_peer))
        .unwrap()
        .token;
    for _ in 0..3 {
        let i = input(t0.clone());
        for p in &policies {
            assert_eq!(p.check(&i).await.unwrap(), Verdict::Allow, "{}", p.name());
        }
    }
    assert_eq!(rt.cache.signature_checks(), 1);
    let forged = input(flip(&t0, t0.rfind('.').unwrap() + 3));
    let mut refused = Vec::new();
    for p in &policies {
        if let Verdict::Deny(_) = p.check(&forged).await.unwrap() {
            refused.push(p.name().to_string());
        }
    }
    assert_eq!(refused, ["prev_token_signed"]);
}

#[tokio::test]
async fn signature_checks_agree_with_jsonwebtoken() {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::system();
    let nsc = signer(&ca, "nsc", Duration::from_secs(600));
    let other = signer(&ca, "other", Duration::from_secs(600));
    let token = nsc.tokens.sign(clock.now(), None).unwrap().token;
    let sig_at = token.rfind('.').unwrap() + 1;
    let (msg, _) = token.rsplit_once('.').unwrap();
    let candidates = [
        token.clone(),
        format!("{token}="),
        format!("{token}=="),
        flip(&token, sig_at),
        flip(&token, token.len() - 1),
        format!("{msg}."),
        format!("{msg}.AAAA"),
        format!("{msg}.{}", "A".repeat(86)),
        token.replace('.', ""),
    ];
    assert!(JwtCache::new().verify_es256(&token, &nsc.pem, clock.now()));
    for pem in [&nsc.pem, &other.pem, &"not a pem".to_string()] {
        let key = jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).ok();
        for t in &candidates {
            let want = match (&key, t.rsplit_once('.')) {
                (Some(k), Some((m, s))) => {
                    jsonwebtoken::crypto::verify(s, m.as_bytes(), k, jsonwebtoken::Algorithm::ES256)
                        .unwrap_or(false)
                }
                _ => false,
            };
            let got = JwtCache::new().verify_es256(t, pem, clock.now());
            assert_eq!(got, want, "{t}");
        }
    }
}
