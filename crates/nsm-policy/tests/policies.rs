//! The default policies on crafted paths, Go-style policy files, `--policy` reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use nsm_api::{Path, PathSegment};
use nsm_core::Clock;
use nsm_core::token::TokenGenerator;
use nsm_core::values::PeerInfo;
use nsm_identity::{DevCa, JwtTokenGenerator, MemorySource, SharedSource, peer_info};
use nsm_networkservice::authorize::{Policy, PolicyInput, Verdict};
use nsm_policy::{PolicyDir, PolicyRuntime, RegoPolicy, default_server_policies_with};

const HOUR: Duration = Duration::from_secs(3600);

struct Hop {
    src: SharedSource,
    peer: PeerInfo,
}

fn hop(ca: &DevCa, name: &str) -> Hop {
    let m = ca.material(name, HOUR).unwrap();
    let peer = peer_info(Some(m.svid.chain()));
    Hop {
        src: Arc::new(MemorySource::new(m)),
        peer,
    }
}

/// A 4-segment path as the 4th hop (index 3) sees it after updatetoken: every token i is signed by
/// hop i for hop i+1, the last one for the caller.
fn four_hop_input(ca: &DevCa) -> PolicyInput {
    let hops: Vec<Hop> = ["nsc", "nsmgr1", "fwd", "nsmgr2"]
        .iter()
        .map(|n| hop(ca, n))
        .collect();
    let clock = Clock::system();
    let mut segs = Vec::new();
    for (i, h) in hops.iter().enumerate() {
        let aud = if i + 1 < hops.len() {
            &hops[i + 1].peer
        } else {
            &hops[i - 1].peer
        };
        let t = JwtTokenGenerator::new(&h.src, Duration::from_secs(600))
            .generate(&clock, Some(aud))
            .unwrap();
        let mut s = PathSegment::new(format!("hop{i}"), format!("id-{i}"));
        s.token = t.token;
        segs.push(s);
    }
    PolicyInput {
        path: Path {
            index: 3,
            path_segments: segs,
        },
        peer: Some(hops[2].peer.clone()),
    }
}

#[tokio::test]
async fn default_server_policies_on_a_four_segment_path() {
    let ca = DevCa::new("example.org").unwrap();
    let input = four_hop_input(&ca);
    let rt = PolicyRuntime::new(Clock::system());
    for p in default_server_policies_with(&rt) {
        assert_eq!(
            p.check(&input).await.unwrap(),
            Verdict::Allow,
            "{}",
            p.name()
        );
    }
    // Wrong peer certificate: prev_token_signed refuses.
    let mut wrong = input.clone();
    wrong.peer = Some(hop(&ca, "fwd").peer);
    let verdicts: Vec<_> = {
        let mut v = Vec::new();
        for p in default_server_policies_with(&rt) {
            v.push((p.name().to_string(), p.check(&wrong).await.unwrap()));
        }
        v
    };
    assert!(
        matches!(verdicts[1], (ref n, Verdict::Deny(_)) if n == "prev_token_signed"),
        "{verdicts:?}"
    );
    // Reordered segments break the chain.
    let mut swapped = input.clone();
    swapped.path.path_segments.swap(0, 1);
    let chained = default_server_policies_with(&rt).pop().unwrap();
    assert_eq!(chained.name(), "tokens_chained");
    assert!(matches!(
        chained.check(&swapped).await.unwrap(),
        Verdict::Deny(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn tokens_expired_follows_the_injected_clock() {
    let ca = DevCa::new("example.org").unwrap();
    let clock = Clock::system();
    let rt = PolicyRuntime::new(clock);
    let input = four_hop_input(&ca);
    let expired = default_server_policies_with(&rt)
        .into_iter()
        .find(|p| p.name() == "tokens_expired")
        .unwrap();
    assert_eq!(expired.check(&input).await.unwrap(), Verdict::Allow);
    tokio::time::advance(Duration::from_secs(601)).await;
    assert!(matches!(
        expired.check(&input).await.unwrap(),
        Verdict::Deny(_)
    ));
}

/// A user policy in the style of Go NSM v1.1.1 files (Rego v0, `package nsm`, helper rules).
const GO_STYLE: &str = r#"
package nsm

default only_nsc_first = false

first := input.path_segments[0]

only_nsc_first {
    first.name == "hop0"
    [_, claims, _] := io.jwt.decode(first.token)
    startswith(claims.sub, "spiffe://example.org/")
}
"#;

#[tokio::test]
async fn go_style_policy_files_load_and_reload() {
    let ca = DevCa::new("example.org").unwrap();
    let input = four_hop_input(&ca);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("only_nsc_first.rego"), GO_STYLE).unwrap();
    let policies = PolicyDir::load(
        vec![dir.path().to_path_buf()],
        PolicyRuntime::new(Clock::system()),
        Some(Duration::from_millis(20)),
    )
    .unwrap();
    assert_eq!(policies.check(&input).await.unwrap(), Verdict::Allow);
    // Change the file: the next evaluation after a poll sees the new rule.
    std::fs::write(
        dir.path().join("only_nsc_first.rego"),
        GO_STYLE.replace("\"hop0\"", "\"somebody-else\""),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Verdict::Deny(why) = policies.check(&input).await.unwrap() {
            assert!(why.contains("only_nsc_first"), "{why}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A broken file is refused at load time with the file's name.
    std::fs::write(dir.path().join("broken.rego"), "package nsm\nbroken {").unwrap();
    let err = RegoPolicy::from_file(&dir.path().join("broken.rego"), &PolicyRuntime::default())
        .unwrap_err();
    assert!(err.to_string().contains("broken.rego"), "{err}");
}
