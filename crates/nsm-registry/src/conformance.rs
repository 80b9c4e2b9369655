//! The behaviour every registry store chain must show, as a reusable test suite.
//!
//! [`nse_suite`] and [`ns_suite`] take a factory that builds a fresh chain (store plus whatever sits in
//! front of it: `expire`, a gRPC client…) and run Register / Find / Unregister / watch / expiry cases
//! against it, each case on a new chain. The same suite runs on the in-memory store, on the store served
//! over gRPC, and later on an etcd-backed store. A failing case panics naming the case and what was
//! expected.
//!
//! The expiry case registers an endpoint asking for one second and waits (up to [`WAIT`]) for it to
//! disappear, so the chain must contain `expire`. It works with paused tokio time and with real time.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use nsm_api::registry::{Match, NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_core::clock::to_timestamp;
use nsm_core::registry::{FindStream, Found, Query, RegistryChain, RegistryItem};
use nsm_core::{Clock, Ctx, Result};

/// How long a case waits for an expected watch event.
pub const WAIT: Duration = Duration::from_secs(5);

fn must<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("conformance: {what}: {e}"),
    }
}

fn ctx() -> Ctx {
    Ctx::new(Clock::system())
}

async fn find_names<T: RegistryItem>(chain: &RegistryChain<T>, template: T) -> Vec<String> {
    let found = must(chain.find_all(&mut ctx(), template).await, "find");
    let mut names: Vec<String> = found.iter().map(|f| f.item.name().to_string()).collect();
    names.sort();
    names
}

async fn next_event<T: RegistryItem>(s: &mut FindStream<T>, what: &str) -> Found<T> {
    match tokio::time::timeout(WAIT, s.next()).await {
        Ok(Some(Ok(f))) => f,
        Ok(Some(Err(e))) => panic!("conformance: {what}: watch failed: {e}"),
        Ok(None) => panic!("conformance: {what}: watch ended"),
        Err(_) => panic!("conformance: {what}: nothing within {WAIT:?}"),
    }
}

/// An endpoint offering `service` with label `app=<app>` at `url`.
pub fn endpoint(name: &str, service: &str, app: &str, url: &str) -> NetworkServiceEndpoint {
    NetworkServiceEndpoint {
        name: name.into(),
        network_service_names: vec![service.into()],
        network_service_labels: [(
            service.to_string(),
            NetworkServiceLabels {
                labels: [("app".to_string(), app.to_string())].into(),
            },
        )]
        .into(),
        url: url.into(),
        ..Default::default()
    }
}

/// Runs every endpoint-registry case against fresh chains from `factory`.
pub async fn nse_suite<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RegistryChain<NetworkServiceEndpoint>>,
{
    nse_register_and_find(&factory().await).await;
    nse_register_replaces(&factory().await).await;
    nse_unregister(&factory().await).await;
    nse_watch(&factory().await).await;
    nse_expiry(&factory().await).await;
}

async fn register_two(chain: &RegistryChain<NetworkServiceEndpoint>) {
    let a = endpoint("nse-1", "icmp", "a", "tcp://10.0.0.1:5001");
    let b = endpoint("nse-2", "web", "b", "tcp://10.0.0.2:5001");
    must(chain.run_register(&mut ctx(), a).await, "register nse-1");
    must(chain.run_register(&mut ctx(), b).await, "register nse-2");
}

/// Find matches names and URLs by substring, labels and service names by subset.
pub async fn nse_register_and_find(chain: &RegistryChain<NetworkServiceEndpoint>) {
    register_two(chain).await;
    let q = |f: fn(&mut NetworkServiceEndpoint)| {
        let mut t = NetworkServiceEndpoint::default();
        f(&mut t);
        t
    };
    let cases: [(&str, NetworkServiceEndpoint, &[&str]); 7] = [
        ("empty query", q(|_| {}), &["nse-1", "nse-2"]),
        (
            "name substring",
            q(|t| t.name = "nse".into()),
            &["nse-1", "nse-2"],
        ),
        ("exact name", q(|t| t.name = "nse-1".into()), &["nse-1"]),
        (
            "url substring",
            q(|t| t.url = "10.0.0.2".into()),
            &["nse-2"],
        ),
        (
            "service names",
            q(|t| t.network_service_names = vec!["web".into()]),
            &["nse-2"],
        ),
        (
            "labels",
            q(|t| t.network_service_labels = endpoint("", "icmp", "a", "").network_service_labels),
            &["nse-1"],
        ),
        ("no match", q(|t| t.name = "nope".into()), &[]),
    ];
    for (what, template, want) in cases {
        assert_eq!(
            find_names(chain, template).await,
            want,
            "conformance: find by {what}"
        );
    }
}

/// A second Register under the same name replaces the first (URL included).
pub async fn nse_register_replaces(chain: &RegistryChain<NetworkServiceEndpoint>) {
    register_two(chain).await;
    let moved = endpoint("nse-1", "icmp", "a", "tcp://10.0.0.9:6001");
    must(
        chain.run_register(&mut ctx(), moved).await,
        "re-register nse-1",
    );
    let t = NetworkServiceEndpoint {
        name: "nse-1".into(),
        ..Default::default()
    };
    let found = must(chain.find_all(&mut ctx(), t).await, "find nse-1");
    assert_eq!(found.len(), 1, "conformance: one nse-1 after re-register");
    assert_eq!(
        found[0].item.url, "tcp://10.0.0.9:6001",
        "conformance: new URL wins"
    );
}

/// Unregister removes; unregistering an unknown name succeeds.
pub async fn nse_unregister(chain: &RegistryChain<NetworkServiceEndpoint>) {
    register_two(chain).await;
    let a = endpoint("nse-1", "icmp", "a", "tcp://10.0.0.1:5001");
    must(
        chain.run_unregister(&mut ctx(), a).await,
        "unregister nse-1",
    );
    let all = NetworkServiceEndpoint::default();
    assert_eq!(
        find_names(chain, all).await,
        ["nse-2"],
        "conformance: nse-1 is gone"
    );
    let ghost = endpoint("ghost", "icmp", "a", "tcp://10.0.0.3:5001");
    must(
        chain.run_unregister(&mut ctx(), ghost).await,
        "unregister of an unknown name",
    );
}

/// A watch sees current matches, then registrations, then removals as `deleted=true`.
pub async fn nse_watch(chain: &RegistryChain<NetworkServiceEndpoint>) {
    let a = endpoint("nse-1", "icmp", "a", "tcp://10.0.0.1:5001");
    must(
        chain.run_register(&mut ctx(), a.clone()).await,
        "register nse-1",
    );
    let query = Query {
        template: NetworkServiceEndpoint {
            name: "nse".into(),
            ..Default::default()
        },
        watch: true,
    };
    let mut watch = must(chain.run_find(&mut ctx(), query).await, "watching find");
    let first = next_event(&mut watch, "current match").await;
    assert_eq!((first.item.name.as_str(), first.deleted), ("nse-1", false));
    let b = endpoint("nse-2", "web", "b", "tcp://10.0.0.2:5001");
    must(chain.run_register(&mut ctx(), b).await, "register nse-2");
    let added = next_event(&mut watch, "registration").await;
    assert_eq!((added.item.name.as_str(), added.deleted), ("nse-2", false));
    let other = endpoint("other", "web", "b", "tcp://10.0.0.3:5001");
    must(
        chain.run_register(&mut ctx(), other).await,
        "register other",
    );
    must(
        chain.run_unregister(&mut ctx(), a).await,
        "unregister nse-1",
    );
    let gone = next_event(&mut watch, "removal").await;
    assert_eq!(
        (gone.item.name.as_str(), gone.deleted),
        ("nse-1", true),
        "conformance: non-matching registrations are not sent; removal is deleted=true"
    );
}

/// An endpoint asking for one second expires: watchers see `deleted=true` and Find no longer has it.
pub async fn nse_expiry(chain: &RegistryChain<NetworkServiceEndpoint>) {
    let query = Query {
        template: NetworkServiceEndpoint {
            name: "short".into(),
            ..Default::default()
        },
        watch: true,
    };
    let mut watch = must(chain.run_find(&mut ctx(), query).await, "watching find");
    let clock = Clock::system();
    let mut nse = endpoint("short-lived", "icmp", "a", "tcp://10.0.0.1:5001");
    let requested = to_timestamp(clock.now() + Duration::from_secs(1));
    nse.expiration_time = Some(requested);
    let reg = must(
        chain.run_register(&mut ctx(), nse).await,
        "register short-lived",
    );
    let got = reg.expiration_time.unwrap_or_default();
    assert!(
        reg.expiration_time.is_some() && got.seconds <= requested.seconds,
        "conformance: expiration_time is at most the requested one ({got:?} vs {requested:?})"
    );
    let added = next_event(&mut watch, "registration").await;
    assert!(!added.deleted);
    let gone = next_event(&mut watch, "expiry").await;
    assert_eq!(
        (gone.item.name.as_str(), gone.deleted),
        ("short-lived", true)
    );
    let all = NetworkServiceEndpoint::default();
    assert!(
        find_names(chain, all).await.is_empty(),
        "conformance: expired endpoint is gone"
    );
}

/// Runs every network-service-registry case against fresh chains from `factory`.
pub async fn ns_suite<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RegistryChain<NetworkService>>,
{
    ns_register_and_find(&factory().await).await;
    ns_unregister(&factory().await).await;
    ns_watch(&factory().await).await;
}

fn service(name: &str, payload: &str, matches: Vec<Match>) -> NetworkService {
    NetworkService {
        name: name.into(),
        payload: payload.into(),
        matches,
    }
}

fn a_match() -> Match {
    Match {
        source_selector: [("app".to_string(), "client".to_string())].into(),
        ..Default::default()
    }
}

async fn register_services(chain: &RegistryChain<NetworkService>) {
    let icmp = service("icmp-responder", "IP", vec![]);
    let l2 = service("l2-service", "ETHERNET", vec![a_match()]);
    must(
        chain.run_register(&mut ctx(), icmp).await,
        "register icmp-responder",
    );
    must(
        chain.run_register(&mut ctx(), l2).await,
        "register l2-service",
    );
}

/// Find matches names by substring, payload by equality and matches deeply.
pub async fn ns_register_and_find(chain: &RegistryChain<NetworkService>) {
    register_services(chain).await;
    let cases: [(&str, NetworkService, &[&str]); 6] = [
        (
            "empty query",
            service("", "", vec![]),
            &["icmp-responder", "l2-service"],
        ),
        (
            "name substring",
            service("icmp", "", vec![]),
            &["icmp-responder"],
        ),
        ("payload", service("", "ETHERNET", vec![]), &["l2-service"]),
        ("matches", service("", "", vec![a_match()]), &["l2-service"]),
        (
            "other matches",
            service("", "", vec![Match::default()]),
            &[],
        ),
        ("no match", service("nope", "", vec![]), &[]),
    ];
    for (what, template, want) in cases {
        assert_eq!(
            find_names(chain, template).await,
            want,
            "conformance: find by {what}"
        );
    }
}

/// Unregister removes; unregistering an unknown name succeeds.
pub async fn ns_unregister(chain: &RegistryChain<NetworkService>) {
    register_services(chain).await;
    let icmp = service("icmp-responder", "IP", vec![]);
    must(
        chain.run_unregister(&mut ctx(), icmp).await,
        "unregister icmp-responder",
    );
    assert_eq!(
        find_names(chain, service("", "", vec![])).await,
        ["l2-service"]
    );
    let ghost = service("ghost", "IP", vec![]);
    must(
        chain.run_unregister(&mut ctx(), ghost).await,
        "unregister of an unknown name",
    );
}

/// A watch sees current matches, then new registrations.
pub async fn ns_watch(chain: &RegistryChain<NetworkService>) {
    register_services(chain).await;
    let query = Query {
        template: service("icmp", "", vec![]),
        watch: true,
    };
    let mut watch = must(chain.run_find(&mut ctx(), query).await, "watching find");
    let first = next_event(&mut watch, "current match").await;
    assert_eq!(first.item.name, "icmp-responder");
    must(
        chain
            .run_register(&mut ctx(), service("other", "IP", vec![]))
            .await,
        "register other",
    );
    let v6 = service("icmp-v6", "IP", vec![]);
    must(chain.run_register(&mut ctx(), v6).await, "register icmp-v6");
    let added = next_event(&mut watch, "registration").await;
    assert_eq!(
        (added.item.name.as_str(), added.deleted),
        ("icmp-v6", false),
        "conformance: non-matching registrations are not sent"
    );
}
