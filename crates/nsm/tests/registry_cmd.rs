//! `nsm registry` as a process, memory store: the conformance suite over gRPC, configuration errors
//! (exit 2), `--print-chain`, SIGTERM (exit 0), health, and bad input → InvalidArgument.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_registry::conformance;
use support::{RegistryProcess, ctx};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_nsm_registry_memory() {
    let kept = parking_lot::Mutex::new(Vec::new());
    conformance::nse_suite(|| {
        let p = RegistryProcess::memory(&[]);
        let c = p.client();
        kept.lock().push(p);
        async move { c }
    })
    .await;
    conformance::ns_suite(|| {
        let p = RegistryProcess::memory(&[]);
        let c = p.client();
        kept.lock().push(p);
        async move { c }
    })
    .await;
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: [Case; 5] = [
        (
            &[],
            &[("REGISTRY_MEMORY_EXPIRE_PERIOD", "5 minutes")],
            "REGISTRY_MEMORY_EXPIRE_PERIOD",
        ),
        (&["--store", "redis://x:1"], &[], "NSM_REGISTRY_STORE"),
        (
            &[],
            &[("REGISTRY_MEMORY_LISTEN_ON", "http://x")],
            "REGISTRY_MEMORY_LISTEN_ON",
        ),
        (&[], &[("NSM_LOG_LEVEL", "loud")], "NSM_LOG_LEVEL"),
        (
            &["--proxy-registry-url", "tcp://nohost"],
            &[],
            "REGISTRY_MEMORY_PROXY_REGISTRY_URL",
        ),
    ];
    for (args, env, name) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nsm"));
        cmd.arg("registry").args(args).env_remove("NSM_LOG_LEVEL");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(name), "{args:?} {env:?}: {err}");
    }
}

#[test]
fn print_chain_lists_the_elements() {
    let out = Command::new(env!("CARGO_BIN_EXE_nsm"))
        .args(["registry", "--print-chain", "--store", "etcd://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("setregistrationtime -> etcd -> proxy"), "{s}");
    assert!(!s.contains("expire"), "no in-process expiry on etcd: {s}");
    let out = Command::new(env!("CARGO_BIN_EXE_nsm"))
        .args(["registry", "--print-chain"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("expire -> memory"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_health_is_serving_on_every_url() {
    let dir = std::env::temp_dir().join(format!("nsm-reg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("registry.sock");
    let listen = format!("tcp://127.0.0.1:0,unix://{}", sock.display());
    let mut p = RegistryProcess::start(&["--listen", &listen], &[]);
    // Both URLs serve: TCP (health below) and unix.
    assert_eq!(p.urls.len(), 2);
    let c = support::client::<NetworkService>(nsm_api::url::NsmUrl::Unix(sock.clone()));
    let ns = NetworkService {
        name: "svc".into(),
        ..Default::default()
    };
    c.run_register(&mut ctx(), ns).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        p.urls[0].authority().unwrap()
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let st = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "registry.NetworkServiceEndpointRegistry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(p.terminate(), Some(0));
    assert!(!sock.exists(), "socket file removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_or_repaired() {
    let p = RegistryProcess::memory(&[]);
    let nse_client = p.client::<NetworkServiceEndpoint>();
    let ns_client = p.client::<NetworkService>();
    // No name: one is generated.
    let reg = nse_client
        .run_register(
            &mut ctx(),
            NetworkServiceEndpoint {
                url: "tcp://10.0.0.1:5001".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(reg.name.starts_with("nse-"), "{}", reg.name);
    let invalid = |r: Result<_, nsm_core::NsmError>, what: &str| {
        let e = r.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e}");
    };
    let bad_url = conformance::endpoint("nse-1", "icmp", "a", "not a url");
    invalid(
        nse_client
            .run_register(&mut ctx(), bad_url)
            .await
            .map(|_| ()),
        "bad url",
    );
    invalid(
        ns_client
            .run_register(&mut ctx(), NetworkService::default())
            .await
            .map(|_| ()),
        "empty service name",
    );
    let labels: BTreeMap<String, String> = (0..1000)
        .map(|i| (format!("k{i}"), "v".repeat(10)))
        .collect();
    let mut big = conformance::endpoint("nse-2", "icmp", "a", "tcp://10.0.0.1:5001");
    big.network_service_labels = [("icmp".to_string(), NetworkServiceLabels { labels })].into();
    invalid(
        nse_client.run_register(&mut ctx(), big).await.map(|_| ()),
        "label map too big",
    );
    let template = NetworkServiceEndpoint {
        name: "{{ .Values.nse }}".into(),
        ..Default::default()
    };
    invalid(
        nse_client.find_all(&mut ctx(), template).await.map(|_| ()),
        "Find template with an unexpanded template expression",
    );
}
