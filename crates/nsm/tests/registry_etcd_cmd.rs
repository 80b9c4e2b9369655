//! `nsm registry --store etcd://…` as processes on one etcd (started per test on free loopback
//! ports): the conformance suite, two replicas seeing each other, kill -9 of a replica under a stream
//! of registrations and refreshes, a restart with a healing watcher, and etcd being unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_api::url::NsmUrl;
use nsm_core::registry::{Query, RegistryChain, RegistryElement};
use nsm_registry::conformance;
use nsm_registry::{ClientUrlServer, ConnectServer, HealClient};
use nsm_registry_etcd::testing::EtcdProcess;
use parking_lot::Mutex;
use support::{DIAL, RegistryProcess, ctx};

type Nse = NetworkServiceEndpoint;

fn all() -> Nse {
    Nse::default()
}

fn watch_all() -> Query<Nse> {
    Query {
        template: all(),
        watch: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_nsm_registry_on_etcd() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let n = AtomicU32::new(0);
    let kept = Mutex::new(Vec::new());
    let fresh = || {
        let prefix = format!("/conf{}", n.fetch_add(1, Ordering::Relaxed));
        RegistryProcess::etcd(&etcd.endpoint(), &prefix, None)
    };
    conformance::nse_suite(|| {
        let p = fresh();
        let c = p.client();
        kept.lock().push(p);
        async move { c }
    })
    .await;
    conformance::ns_suite(|| {
        let p = fresh();
        let c = p.client();
        kept.lock().push(p);
        async move { c }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_kill9_under_a_stream_of_registrations_loses_nothing() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let a = Arc::new(Mutex::new(RegistryProcess::etcd(
        &etcd.endpoint(),
        "/k",
        None,
    )));
    let b = RegistryProcess::etcd(&etcd.endpoint(), "/k", None);
    let a_client = a.lock().client::<Nse>();
    let b_client = b.client::<Nse>();

    // Found and watched through the other replica.
    let mut watch = b_client.run_find(&mut ctx(), watch_all()).await.unwrap();
    let first = conformance::endpoint("nse-first", "icmp", "a", "tcp://10.0.0.1:5001");
    a_client.run_register(&mut ctx(), first).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.item.name, "nse-first");
    let found = b_client
        .find_all(
            &mut ctx(),
            Nse {
                name: "nse-first".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(found.unwrap().len(), 1);

    // Everything B's watcher sees: name → latest URL.
    let seen: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = watch.next().await {
                let ev = ev.expect("B's watch must not break");
                assert!(!ev.deleted, "nothing is deleted: {}", ev.item.name);
                seen.lock()
                    .insert(ev.item.name.clone(), ev.item.url.clone());
            }
        })
    };

    const N: usize = 200;
    let done = Arc::new(AtomicU32::new(0));
    let killer = {
        let (a, done) = (a.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            while done.load(Ordering::SeqCst) < 70 {
                std::thread::sleep(Duration::from_millis(2));
            }
            a.lock().kill9();
        })
    };
    let started = tokio::time::Instant::now();
    let mut on_b = false;
    let mut expected = BTreeMap::new();
    for i in 0..N {
        // Every fifth step also refreshes an earlier endpoint with a new URL.
        let mut batch = vec![(
            format!("nse-{i}"),
            format!("tcp://10.0.{}.{}:5001", i / 250, i % 250),
        )];
        if i % 5 == 4 {
            let j = i / 2;
            batch.push((
                format!("nse-{j}"),
                format!("tcp://10.1.{}.{}:6001", j / 250, j % 250),
            ));
        }
        for (name, url) in batch {
            let nse = conformance::endpoint(&name, "icmp", "a", &url);
            loop {
                let client = if on_b { &b_client } else { &a_client };
                match client.run_register(&mut ctx(), nse.clone()).await {
                    Ok(_) => break,
                    Err(e) if !on_b => {
                        eprintln!("replica A failed at {i} ({e}); continuing on B");
                        on_b = true;
                    }
                    Err(e) => panic!("B failed: {e}"),
                }
            }
            expected.insert(name, url);
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    killer.await.unwrap();
    assert!(on_b, "A was killed under the stream");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{N} registrations took {:?}",
        started.elapsed()
    );
    // Nothing lost: B finds every endpoint with its latest URL.
    let found: BTreeMap<String, String> = b_client
        .find_all(&mut ctx(), all())
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.item.name, f.item.url))
        .filter(|(n, _)| n != "nse-first")
        .collect();
    assert_eq!(found, expected);
    // B's watcher saw every change (latest URL of each).
    for _ in 0..100 {
        if seen.lock().len() >= N && expected.iter().all(|(n, u)| seen.lock().get(n) == Some(u)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen_now = seen.lock().clone();
    assert_eq!(seen_now, expected, "B's watcher saw every change");
    collector.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_registrations_and_a_healing_watcher_gets_the_current_state() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("nsm-reg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen = format!("unix://{}", dir.join("registry.sock").display());
    let mut p1 = RegistryProcess::etcd(&etcd.endpoint(), "/restart", Some(&listen));
    let url: NsmUrl = p1.url.clone();
    let plain = support::client::<Nse>(url.clone());
    for i in 1..=3 {
        let nse = conformance::endpoint(&format!("nse-{i}"), "icmp", "a", "tcp://10.0.0.1:5001");
        plain.run_register(&mut ctx(), nse).await.unwrap();
    }
    let healing: RegistryChain<Nse> = RegistryChain::new(
        "healing-client",
        vec![
            Arc::new(HealClient::<Nse>::new()) as RegistryElement<Nse>,
            Arc::new(ClientUrlServer::<Nse>::new(url.clone())),
            Arc::new(ConnectServer::<Nse>::new(DIAL)),
        ],
    );
    let mut watch = healing.run_find(&mut ctx(), watch_all()).await.unwrap();
    let mut names = BTreeSet::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        names.insert(ev.item.name);
    }
    assert_eq!(names.len(), 3);

    p1.kill9();
    let p2 = RegistryProcess::etcd(&etcd.endpoint(), "/restart", Some(&listen));
    let survived = p2
        .client::<Nse>()
        .find_all(&mut ctx(), all())
        .await
        .unwrap();
    assert_eq!(survived.len(), 3, "registrations survive a restart");
    let fourth = conformance::endpoint("nse-4", "icmp", "a", "tcp://10.0.0.4:5001");
    p2.client::<Nse>()
        .run_register(&mut ctx(), fourth)
        .await
        .unwrap();
    // The healing watcher reconnects: it gets the current state again, then keeps watching.
    let mut after = BTreeSet::new();
    let got_all = tokio::time::timeout(Duration::from_secs(10), async {
        while after.len() < 4 {
            let ev = watch.next().await.unwrap().unwrap();
            assert!(!ev.deleted);
            after.insert(ev.item.name);
        }
    })
    .await;
    assert!(
        got_all.is_ok(),
        "after the restart the watcher saw {after:?}"
    );
    drop(p2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn etcd_unreachable_is_unavailable_naming_the_address() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap().to_string();
    drop(unused);
    let p = RegistryProcess::etcd(&addr, "/nowhere", None);
    let nse = conformance::endpoint("nse-1", "icmp", "a", "tcp://10.0.0.1:5001");
    let err = p
        .client::<Nse>()
        .run_register(&mut ctx(), nse)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
}
