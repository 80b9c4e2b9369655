//! Security cost benchmark (not a test): `cargo run --release -p nsm-policy --example security_bench`.
//!
//! Prints p50/p90 of: authorize per hop (the four default server policies on a 4-segment path, warm
//! caches; native as `authorize` runs them, and through regorus), the same with cold caches, ES256 signing, signature verification, a TLS handshake over
//! loopback, and an in-process Request+Close nsc → endpoint over mTLS with tokens and all default
//! policies on both sides.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest, Path, PathSegment};
use nsm_chains::client::{ClientOptions, new_client_parts_with_security};
use nsm_chains::endpoint::{Endpoint, EndpointOptions};
use nsm_core::token::{SharedTokenGenerator, TestTokenGenerator, TokenGenerator};
use nsm_core::{Clock, Ctx};
use nsm_identity::{
    DevCa, JwtTokenGenerator, MemorySource, SharedSource, TlsIdentity, TransportSecurity, peer_info,
};
use nsm_networkservice::authorize::{AuthorizeClient, AuthorizeServer, PolicyInput, Verdict};
use nsm_networkservice::grpc::serve_tls;
use nsm_policy::{
    DefaultRule, JwtCache, PolicyRuntime, default_client_policies, default_rego_policy,
    default_server_policies, default_server_policies_with,
};

const HOUR: Duration = Duration::from_secs(3600);

#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:<62} p50 {:>9.1} µs   p90 {:>9.1} µs   (n={})",
        p(0.5).as_secs_f64() * 1e6,
        p(0.9).as_secs_f64() * 1e6,
        samples.len()
    );
}

/// Four hops' identities: token signers and the peer view of each.
struct Hops {
    sources: Vec<SharedSource>,
    peers: Vec<nsm_core::values::PeerInfo>,
}

const NAMES: [&str; 4] = ["nsc", "nsmgr1", "fwd", "nsmgr2"];

fn hops(ca: &DevCa) -> Hops {
    let mats: Vec<_> = NAMES
        .iter()
        .map(|n| ca.material(n, HOUR).unwrap())
        .collect();
    Hops {
        peers: mats
            .iter()
            .map(|m| peer_info(Some(m.svid.chain())))
            .collect(),
        sources: mats
            .into_iter()
            .map(|m| Arc::new(MemorySource::new(m)) as SharedSource)
            .collect(),
    }
}

/// The path as the 4th hop sees it, with newly signed tokens on every call.
fn four_hop_input_of(hops: &Hops) -> PolicyInput {
    let clock = Clock::system();
    let mut segs = Vec::new();
    for (i, src) in hops.sources.iter().enumerate() {
        let aud = if i + 1 < NAMES.len() {
            &hops.peers[i + 1]
        } else {
            &hops.peers[i - 1]
        };
        let t = JwtTokenGenerator::new(src, Duration::from_secs(600))
            .without_reuse()
            .generate(&clock, Some(aud))
            .unwrap();
        let mut s = PathSegment::new(NAMES[i], format!("id-{i}"));
        s.token = t.token;
        s.expires = Some(clock.now_timestamp());
        segs.push(s);
    }
    PolicyInput {
        path: Path {
            index: 3,
            path_segments: segs,
        },
        peer: Some(hops.peers[2].clone()),
    }
}

/// The default server set compiled from the Rego sources (what the native set replaced).
fn rego_server_policies(rt: &PolicyRuntime) -> Vec<nsm_networkservice::authorize::SharedPolicy> {
    [
        DefaultRule::TokensValid,
        DefaultRule::PrevTokenSigned,
        DefaultRule::TokensExpired,
        DefaultRule::TokensChained,
    ]
    .into_iter()
    .map(|r| Arc::new(default_rego_policy(r, rt).unwrap()) as _)
    .collect()
}

async fn authorize_all(
    policies: &[nsm_networkservice::authorize::SharedPolicy],
    input: &PolicyInput,
) {
    for p in policies {
        assert_eq!(
            p.check(input).await.unwrap(),
            Verdict::Allow,
            "{}",
            p.name()
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    nsm_identity::install_crypto_provider();
    let ca = DevCa::new("example.org").unwrap();
    let hops = hops(&ca);
    let input = four_hop_input_of(&hops);

    // authorize per hop, warm caches (a refresh or a long path seen before): the default set as
    // `authorize` runs it (native), then the same rules through regorus.
    let rt = PolicyRuntime::new(Clock::system());
    let policies = default_server_policies_with(&rt);
    let rego = rego_server_policies(&rt);
    for (label, set) in [
        (
            "authorize/hop, 4 default policies, 4 segments, warm",
            &policies,
        ),
        ("authorize/hop, same rules in regorus, warm", &rego),
    ] {
        authorize_all(set, &input).await;
        let mut s = Vec::new();
        for _ in 0..5000 {
            let t = now();
            authorize_all(set, &input).await;
            s.push(t.elapsed());
        }
        report(label, s);
    }

    // Per policy, warm.
    for p in policies.iter().chain(&rego) {
        let mut s = Vec::new();
        for _ in 0..3000 {
            let t = now();
            p.check(&input).await.unwrap();
            s.push(t.elapsed());
        }
        report(&format!("  policy {}", p.name()), s);
    }

    // Cold: fresh caches every time (first sight of every token).
    for (label, native) in [
        (
            "authorize/hop, cold caches (1 signature check + decodes)",
            true,
        ),
        ("authorize/hop, cold caches, regorus", false),
    ] {
        let mut s = Vec::new();
        for _ in 0..300 {
            let rt = PolicyRuntime::new(Clock::system());
            let set = if native {
                default_server_policies_with(&rt)
            } else {
                rego_server_policies(&rt)
            };
            let t = now();
            authorize_all(&set, &input).await;
            s.push(t.elapsed());
        }
        report(label, s);
    }

    // New tokens on every call from known peers (the steady state of a busy hop: each Request
    // brings one new token to verify, decodes of new tokens, keys already parsed).
    for (label, native) in [
        ("authorize/hop, new tokens, known peer keys", true),
        ("authorize/hop, new tokens, known peer keys, regorus", false),
    ] {
        let rt = PolicyRuntime::new(Clock::system());
        let set = if native {
            default_server_policies_with(&rt)
        } else {
            rego_server_policies(&rt)
        };
        authorize_all(&set, &input).await;
        let inputs: Vec<_> = (0..300).map(|_| four_hop_input_of(&hops)).collect();
        let mut s = Vec::new();
        for i in &inputs {
            let t = now();
            authorize_all(&set, i).await;
            s.push(t.elapsed());
        }
        report(label, s);
    }

    // Signing and verification.
    let m = ca.material("nsc", HOUR).unwrap();
    let pem = m.svid.leaf_pem().to_string();
    let src: SharedSource = Arc::new(MemorySource::new(m));
    let g = JwtTokenGenerator::new(&src, Duration::from_secs(600));
    let peer = input.peer.clone().unwrap();
    let clock = Clock::system();
    let mut s = Vec::new();
    let mut token = String::new();
    for _ in 0..3000 {
        let t = now();
        token = g.sign(clock.now(), Some(&peer)).unwrap().token;
        s.push(t.elapsed());
    }
    report("ES256 token signing (JwtTokenGenerator::sign)", s);
    let mut s = Vec::new();
    for _ in 0..3000 {
        let t = now();
        g.generate(&clock, Some(&peer)).unwrap();
        s.push(t.elapsed());
    }
    report("token for the same peer within its exp second (reused)", s);
    let mut s = Vec::new();
    for _ in 0..3000 {
        let cache = JwtCache::new();
        let t = now();
        assert!(cache.verify_es256(&token, &pem, clock.now()));
        s.push(t.elapsed());
    }
    report("ES256 verification, uncached (incl. PEM key parse)", s);
    let cache = JwtCache::new();
    assert!(cache.verify_es256(&token, &pem, clock.now()));
    let tokens: Vec<_> = (0..3000)
        .map(|_| g.sign(clock.now(), Some(&peer)).unwrap().token)
        .collect();
    let mut s = Vec::new();
    for t in &tokens {
        let start = now();
        assert!(cache.verify_es256(t, &pem, clock.now()));
        s.push(start.elapsed());
    }
    report("ES256 verification of a new token, key already parsed", s);

    // TLS handshake over loopback (full mTLS handshake, both sides verifying).
    let server = TlsIdentity::new(Arc::new(MemorySource::new(
        ca.material("nse", HOUR).unwrap(),
    )))
    .unwrap();
    let client = TlsIdentity::new(Arc::new(MemorySource::new(
        ca.material("nsc", HOUR).unwrap(),
    )))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let a = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut t) = a.accept(s).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = t.write_all(b"x").await;
                }
            });
        }
    });
    let connector = client.connector();
    let mut s = Vec::new();
    for _ in 0..300 {
        let t = now();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = connector
            .connect(rustls_pki_types::ServerName::try_from("nsm").unwrap(), tcp)
            .await
            .unwrap();
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        s.push(t.elapsed());
    }
    report("mTLS handshake over loopback (TLS 1.3, P-256)", s);

    // In-process Request+Close nsc → endpoint: plaintext baseline, mTLS + tokens, and + policies.
    for (label, secure, policies, reuse) in [
        (
            "Request+Close nsc→endpoint, plaintext, test tokens, Any",
            false,
            false,
            true,
        ),
        (
            "Request+Close nsc→endpoint, mTLS + ES256 tokens, Any",
            true,
            false,
            true,
        ),
        (
            "Request+Close nsc→endpoint, mTLS + tokens + default policies",
            true,
            true,
            true,
        ),
        (
            "  same, every token signed afresh (no reuse, as Go)",
            true,
            true,
            false,
        ),
    ] {
        let nse_tls = TlsIdentity::new(Arc::new(MemorySource::new(
            ca.material("nse", HOUR).unwrap(),
        )))
        .unwrap();
        let nsc_tls = TlsIdentity::new(Arc::new(MemorySource::new(
            ca.material("nsc", HOUR).unwrap(),
        )))
        .unwrap();
        let (nse_tokens, nsc_tokens): (SharedTokenGenerator, SharedTokenGenerator) = if secure {
            let jwt = |tls: &TlsIdentity| {
                let g = JwtTokenGenerator::new(tls.source(), Duration::from_secs(600));
                Arc::new(if reuse { g } else { g.without_reuse() }) as SharedTokenGenerator
            };
            (jwt(&nse_tls), jwt(&nsc_tls))
        } else {
            (
                Arc::new(TestTokenGenerator::default()),
                Arc::new(TestTokenGenerator::default()),
            )
        };
        let mut opts = EndpointOptions::new("nse", nse_tokens, Clock::system());
        if policies {
            opts.authorize = Arc::new(AuthorizeServer::new(default_server_policies()));
        }
        let ep = Endpoint::new(opts);
        let bind = NsmUrl::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        };
        let router = tonic::transport::Server::builder().add_routes(ep.routes());
        let serving = if secure {
            serve_tls(&bind, router, nse_tls).await.unwrap()
        } else {
            nsm_networkservice::grpc::serve(&bind, router)
                .await
                .unwrap()
        };
        let security = if secure {
            TransportSecurity::Tls(nsc_tls)
        } else {
            TransportSecurity::Insecure
        };
        let authorize: nsm_core::chain::Element = if policies {
            Arc::new(AuthorizeClient::new(default_client_policies()))
        } else {
            Arc::new(AuthorizeClient::any())
        };
        let chain = new_client_parts_with_security(
            ClientOptions {
                url: Some(serving.url().clone()),
                authorize,
                dial_timeout: Duration::from_secs(2),
                ..ClientOptions::new("nsc", nsc_tokens)
            },
            security,
        )
        .chain;
        let mut s = Vec::new();
        for i in 0..1000 {
            let req = NetworkServiceRequest {
                connection: Some(Connection {
                    id: format!("c-{i}"),
                    network_service: "ns".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let t = now();
            let conn = chain
                .run_request(&mut Ctx::new(Clock::system()), req)
                .await
                .unwrap();
            chain
                .run_close(&mut Ctx::new(Clock::system()), conn)
                .await
                .unwrap();
            s.push(t.elapsed());
        }
        report(label, s);
        serving.stop().await.unwrap();
    }
}
