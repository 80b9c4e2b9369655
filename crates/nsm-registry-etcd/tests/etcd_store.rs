//! The etcd store against a real etcd (started per test on free loopback ports): the shared
//! conformance suite (in process and over gRPC), expiry through leases, two stores on one etcd, and
//! etcd being unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_core::registry::{Query, RegistryChain};
use nsm_core::{Clock, Ctx};
use nsm_registry::conformance;
use nsm_registry_etcd::testing::EtcdProcess;
use nsm_registry_etcd::{EtcdClient, EtcdRegistry};

const DIAL: Duration = Duration::from_secs(5);

fn ctx() -> Ctx {
    Ctx::new(Clock::system())
}

fn registry(client: EtcdClient, prefix: &str) -> Arc<EtcdRegistry> {
    Arc::new(EtcdRegistry::new(
        client,
        prefix,
        Duration::from_secs(60),
        None,
        DIAL,
        Clock::system(),
    ))
}

/// Keeps the registry (and its mirror task) alive as long as the chain is used.
struct Keep<T>(#[allow(dead_code)] Arc<EtcdRegistry>, T);

#[tokio::test]
async fn conformance_suite_on_etcd() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let n = std::sync::atomic::AtomicU32::new(0);
    let kept = parking_lot::Mutex::new(Vec::new());
    conformance::nse_suite(|| {
        // A fresh prefix per case = a fresh store.
        let r = registry(
            etcd.client(),
            &format!("/t{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        );
        kept.lock().push(Keep(r.clone(), ()));
        async move { r.nse.clone() }
    })
    .await;
    conformance::ns_suite(|| {
        let r = registry(
            etcd.client(),
            &format!("/t{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        );
        kept.lock().push(Keep(r.clone(), ()));
        async move { r.ns.clone() }
    })
    .await;
}

#[tokio::test]
async fn two_replicas_see_each_other_and_refresh_elsewhere_keeps_the_endpoint() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let a = registry(etcd.client(), "/two");
    let b = registry(etcd.client(), "/two");
    let q = Query {
        template: NetworkServiceEndpoint::default(),
        watch: true,
    };
    let mut watch_b = b.nse.run_find(&mut ctx(), q).await.unwrap();
    let mut nse = conformance::endpoint("nse-x", "icmp", "a", "tcp://10.0.0.1:5001");
    nse.expiration_time = Some(Clock::system().now_timestamp());
    nse.expiration_time.as_mut().unwrap().seconds += 3;
    let reg = a.nse.run_register(&mut ctx(), nse).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watch_b.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((seen.item.name.as_str(), seen.deleted), ("nse-x", false));
    let found = b
        .nse
        .find_all(&mut ctx(), NetworkServiceEndpoint::default())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    // Refresh through B for a few seconds past the first lease: A must not expire it.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut again = reg.clone();
        again.expiration_time = Some(Clock::system().now_timestamp());
        again.expiration_time.as_mut().unwrap().seconds += 3;
        b.nse.run_register(&mut ctx(), again).await.unwrap();
    }
    let still = a
        .nse
        .find_all(&mut ctx(), NetworkServiceEndpoint::default())
        .await
        .unwrap();
    assert_eq!(still.len(), 1, "refreshed through B, alive on A");
    // Every event B's watcher saw so far is a (re-)registration, never a deletion.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), watch_b.next()).await
    {
        assert!(!ev.unwrap().deleted);
    }
    // Stop refreshing: the lease runs out and both replicas see it go.
    let gone = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let ev = watch_b.next().await.unwrap().unwrap();
            if ev.deleted {
                return ev;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(gone.item.name, "nse-x");
    assert_eq!(gone.item.url, "tcp://10.0.0.1:5001", "last known value");
}

#[tokio::test]
async fn unreachable_etcd_is_unavailable_naming_the_address_and_reads_use_the_last_known_state() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let r = registry(etcd.client(), "/down");
    let ns = NetworkService {
        name: "svc".into(),
        ..Default::default()
    };
    r.ns.run_register(&mut ctx(), ns).await.unwrap();
    // Wait until the mirror has it.
    for _ in 0..50 {
        if r.ns_store.mirrored() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr = etcd.endpoint();
    drop(etcd);
    let nse = conformance::endpoint("nse-1", "svc", "a", "tcp://10.0.0.1:5001");
    let err = r.nse.run_register(&mut ctx(), nse).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    let found =
        r.ns.find_all(&mut ctx(), NetworkService::default())
            .await
            .unwrap();
    assert_eq!(found.len(), 1, "reads are served from the last known state");

    // A store that never reached etcd has nothing to answer with.
    let nowhere = EtcdClient::new(std::slice::from_ref(&addr)).unwrap();
    let chain: RegistryChain<NetworkService> = registry(nowhere, "/x").ns.clone();
    let err = chain
        .find_all(&mut ctx(), NetworkService::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.to_string().contains(&addr), "{err}");
}
