//! The in-process local Request+Close (nsc → NSMgr → forwarder → endpoint, 4 segments, real gRPC on
//! loopback) in three flavours: plaintext with test tokens, mTLS + ES256 tokens without policies, and
//! full security (mTLS, tokens, default Rego policies on every hop: 3 servers + the client). Each
//! with cold channels (every Request+Close of a fresh connection dials every hop again: `dial` drops a
//! channel with its last connection) and warm channels (another connection of the same client is held
//! open, so the channels — and their TLS sessions — stay up).
//!
//! `cargo run --release -p nsm-sandbox --example secure_bench [iterations]`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use nsm_api::mechanisms::MechanismType;
use nsm_api::registry::NetworkService;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_sandbox::{ClientConfig, EndpointSpec, Sandbox, SandboxBuilder};

#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn request(id: &str) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: id.into(),
            network_service: "my-service".into(),
            ..Default::default()
        }),
        mechanism_preferences: vec![MechanismType::Kernel.mechanism()],
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn run(name: &str, builder: SandboxBuilder, warm: bool, n: usize) {
    let sb: Sandbox = builder.build().await.unwrap();
    sb.register_ns(NetworkService {
        name: "my-service".into(),
        payload: "IP".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    sb.nodes[0]
        .new_endpoint(EndpointSpec::new("final-endpoint", "my-service"), vec![])
        .await
        .unwrap();
    let config = ClientConfig {
        retry: false,
        refresh: false,
        heal: false,
    };
    let nsc = sb.nodes[0].new_client_with("nsc", vec![], config);
    let ctx = || sb.ctx(Duration::from_secs(10));
    let keeper = if warm {
        Some(nsc.request(&mut ctx(), request("keeper")).await.unwrap())
    } else {
        None
    };
    let mut times = Vec::with_capacity(n);
    for i in 0..(n + n / 10) {
        let t = now();
        let conn = nsc
            .request(&mut ctx(), request(&format!("c-{i}")))
            .await
            .unwrap();
        nsc.close(&mut ctx(), conn).await.unwrap();
        if i >= n / 10 {
            times.push(t.elapsed());
        }
    }
    if let Some(k) = keeper {
        nsc.close(&mut ctx(), k).await.unwrap();
    }
    let p50 = pct(&mut times, 0.5);
    let p90 = pct(&mut times, 0.9);
    println!(
        "| {name}, {} channels | {} µs | {} µs |",
        if warm { "warm" } else { "cold" },
        p50.as_micros(),
        p90.as_micros()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    println!(
        "local Request+Close, {n} iterations each (after {} warm-up)",
        n / 10
    );
    println!("| what | p50 | p90 |\n|---|---|---|");
    for warm in [true, false] {
        run(
            "plaintext, test tokens, no policies",
            Sandbox::builder(),
            warm,
            n,
        )
        .await;
        run(
            "mTLS + ES256 tokens, no policies",
            Sandbox::builder().secure().policies(false),
            warm,
            n,
        )
        .await;
        run(
            "full security: mTLS + tokens + default policies on every hop",
            Sandbox::builder().secure(),
            warm,
            n,
        )
        .await;
    }
}
