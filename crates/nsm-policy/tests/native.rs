//! The native default policies give the same verdict as their Rego sources on the same inputs:
//! valid paths at every index, forged and foreign signatures, missing and undecodable tokens, odd
//! claim types, expired tokens, empty paths, out-of-range indexes and peers without certificates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nsm_api::{Path, PathSegment};
use nsm_core::Clock;
use nsm_core::token::TokenGenerator;
use nsm_core::values::PeerInfo;
use nsm_identity::{DevCa, JwtTokenGenerator, MemorySource, SharedSource, peer_info};
use nsm_networkservice::authorize::PolicyInput;
use nsm_policy::{DefaultRule, NativePolicy, PolicyRuntime, RegoPolicy, default_rego_policy};

const HOUR: Duration = Duration::from_secs(3600);

/// An unsigned token with these header and payload JSON texts and a junk signature.
fn unsigned(header: &str, payload: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode([1u8, 2, 3])
    )
}

fn claims(payload: &str) -> String {
    unsigned(r#"{"alg":"ES256","typ":"JWT"}"#, payload)
}

fn flip_last_char(token: &str) -> String {
    let mut t = token.to_string();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

/// Tokens of every kind the rules distinguish, and the peers they are judged with.
struct Corpus {
    tokens: Vec<String>,
    peers: Vec<Option<PeerInfo>>,
}

fn corpus(ca: &DevCa, clock: &Clock, now_secs: u64) -> Corpus {
    let names = ["nsc", "nsmgr", "fwd", "nse"];
    let mats: Vec<_> = names
        .iter()
        .map(|n| ca.material(n, HOUR).unwrap())
        .collect();
    let peers: Vec<PeerInfo> = mats
        .iter()
        .map(|m| peer_info(Some(m.svid.chain())))
        .collect();
    let mut tokens = Vec::new();
    for (i, m) in mats.into_iter().enumerate() {
        let src: SharedSource = Arc::new(MemorySource::new(m));
        let g = JwtTokenGenerator::new(&src, Duration::from_secs(600));
        // Chained tokens (aud = next hop), one for the previous hop, one without audience.
        let next = &peers[(i + 1) % peers.len()];
        let prev = &peers[(i + peers.len() - 1) % peers.len()];
        for aud in [Some(next), Some(prev), None] {
            let t = g.generate(clock, aud).unwrap().token;
            tokens.push(flip_last_char(&t));
            tokens.push(t);
        }
        let expired = JwtTokenGenerator::new(
            &src,
            nsm_identity::SignedDuration {
                negative: true,
                magnitude: Duration::from_secs(60),
            },
        );
        tokens.push(expired.generate(clock, Some(next)).unwrap().token);
    }
    let sub = |n: &str| format!("\"spiffe://example.org/{n}\"");
    let (nsc, nsmgr) = (sub("nsc"), sub("nsmgr"));
    let now = now_secs;
    for payload in [
        format!(r#"{{"sub":{nsc},"aud":{nsmgr},"exp":{}}}"#, now + 60),
        format!(
            r#"{{"sub":{nsc},"aud":{{"x":{nsmgr}}},"exp":{}}}"#,
            now + 60
        ),
        format!(r#"{{"sub":{nsc},"aud":[1,{nsmgr}],"exp":{}}}"#, now + 60),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":{now}}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":{}}}"#, now - 1),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":{now}.25}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":{now}.75}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":"{}"}}"#, now + 60),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":null}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":true}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":[1]}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":-5}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}],"exp":1e30}}"#),
        format!(r#"{{"sub":{nsmgr},"aud":[{nsc}]}}"#),
        r#"{"sub":1,"aud":[1.0],"exp":1}"#.to_string(),
        r#"{"sub":1.0,"aud":[1]}"#.to_string(),
        r#"{"sub":null,"aud":[null]}"#.to_string(),
        r#"{"aud":[]}"#.to_string(),
        r#"{}"#.to_string(),
    ] {
        tokens.push(claims(&payload));
    }
    tokens.push(unsigned("[]", r#"{"sub":"x"}"#));
    tokens.push(unsigned(r#"{"alg":"ES256"}"#, "[1,2]"));
    tokens.push(unsigned(r#"{"alg":"ES256"}"#, "not json"));
    tokens.push(format!("{}.", claims(r#"{"sub":"x"}"#)));
    tokens.push("only.two".to_string());
    tokens.push("garbage".to_string());
    tokens.push(String::new());
    tokens.push(format!("{}!", claims(r#"{"sub":"x"}"#)));
    let mut judged: Vec<Option<PeerInfo>> = peers.into_iter().map(Some).collect();
    judged.push(None);
    judged.push(Some(PeerInfo {
        certificate_pem: Some("-----BEGIN CERTIFICATE-----\nnot a cert\n".into()),
        ..Default::default()
    }));
    Corpus {
        tokens,
        peers: judged,
    }
}

/// A deterministic pseudo-random sequence (64-bit LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn inputs(c: &Corpus, n: usize) -> Vec<PolicyInput> {
    let mut rng = Lcg(42);
    let mut out = Vec::new();
    // Well-formed chains of the real tokens (hop i signed for hop i+1), at every index, so that
    // allowing verdicts are well represented; then random paths.
    let chain: Vec<usize> = (0..4).map(|hop| hop * 7 + 1).collect();
    for len in 0..=4 {
        for index in 0..=len {
            for peer in &c.peers {
                let segs = chain[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let mut s = PathSegment::new(format!("hop{i}"), format!("id-{i}"));
                        s.token = c.tokens[*t].clone();
                        s
                    })
                    .collect();
                out.push(PolicyInput {
                    path: Path {
                        index: index as u32,
                        path_segments: segs,
                    },
                    peer: peer.clone(),
                });
            }
        }
    }
    for _ in 0..n {
        let len = rng.below(5);
        let segs = (0..len)
            .map(|i| {
                let mut s = PathSegment::new(format!("hop{i}"), "");
                s.token = c.tokens[rng.below(c.tokens.len())].clone();
                s
            })
            .collect();
        out.push(PolicyInput {
            path: Path {
                index: rng.below(len + 2) as u32,
                path_segments: segs,
            },
            peer: c.peers[rng.below(c.peers.len())].clone(),
        });
    }
    out
}

async fn compare_at(now_secs: u64, nanos: u32) {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::starting_at(UNIX_EPOCH + Duration::new(now_secs, nanos));
    let c = corpus(&ca, &clock, now_secs);
    let native_rt = PolicyRuntime::new(clock);
    let rego_rt = PolicyRuntime::new(clock);
    let rules: Vec<(DefaultRule, NativePolicy, RegoPolicy)> = DefaultRule::ALL
        .into_iter()
        .map(|r| {
            (
                r,
                NativePolicy::new(r, &native_rt),
                default_rego_policy(r, &rego_rt).unwrap(),
            )
        })
        .collect();
    let mut verdicts = std::collections::HashMap::<(DefaultRule, bool), usize>::new();
    for input in inputs(&c, 1500) {
        let value = nsm_policy::input_value(&input);
        for (rule, native, rego) in &rules {
            let want = rego.evaluate(value.clone()).unwrap();
            let got = native.allows(&input);
            assert_eq!(
                got,
                want,
                "{rule:?} differs (native {got}, rego {want}) on index {} segments {:?} peer cert {:?}",
                input.path.index,
                input
                    .path
                    .path_segments
                    .iter()
                    .map(|s| s.token.as_str())
                    .collect::<Vec<_>>(),
                input
                    .peer
                    .as_ref()
                    .and_then(|p| p.certificate_pem.as_deref())
                    .map(|p| &p[..p.len().min(40)])
            );
            *verdicts.entry((*rule, got)).or_default() += 1;
        }
    }
    for rule in DefaultRule::ALL {
        for allowed in [true, false] {
            assert!(
                verdicts.get(&(rule, allowed)).copied().unwrap_or(0) > 5,
                "{rule:?} was {} too rarely: {verdicts:?}",
                if allowed { "allowed" } else { "refused" }
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn native_defaults_match_rego_on_a_whole_second() {
    compare_at(1_764_300_000, 0).await;
}

#[tokio::test(start_paused = true)]
async fn native_defaults_match_rego_between_seconds() {
    compare_at(1_764_300_000, 500_000_000).await;
}

#[tokio::test(start_paused = true)]
async fn native_tokens_expired_follows_the_injected_clock_like_rego() {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_secs(1_764_300_000));
    let c = corpus(&ca, &clock, 1_764_300_000);
    let rt = PolicyRuntime::new(clock);
    let native = NativePolicy::new(DefaultRule::TokensExpired, &rt);
    let rego = default_rego_policy(DefaultRule::TokensExpired, &rt).unwrap();
    let mut seg = PathSegment::new("nsc", "a");
    seg.token = c.tokens[1].clone();
    let input = PolicyInput {
        path: Path {
            index: 0,
            path_segments: vec![seg],
        },
        peer: None,
    };
    for (advance, allowed) in [(0, true), (600, true), (1, false)] {
        tokio::time::advance(Duration::from_secs(advance)).await;
        assert_eq!(native.allows(&input), allowed, "after +{advance}s");
        assert_eq!(
            rego.evaluate(nsm_policy::input_value(&input)).unwrap(),
            allowed
        );
    }
}
