use super::*;
use crate::conformance;
use crate::expire::ExpireServer;
use crate::serialize::SerializeServer;
use crate::setpayload::SetPayloadServer;
use crate::setregistrationtime::SetRegistrationTimeServer;
use nsm_core::Clock;
use nsm_core::registry::RegistryChain;
use std::time::Duration;

fn ctx() -> Ctx {
    Ctx::new(Clock::system())
}

fn nse(name: &str) -> NetworkServiceEndpoint {
    NetworkServiceEndpoint {
        name: name.into(),
        url: "tcp://10.0.0.1:5001".into(),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn conformance_suite_on_memory() {
    conformance::nse_suite(|| async {
        RegistryChain::new(
            "memory-nse",
            vec![
                Arc::new(SerializeServer::new()),
                Arc::new(SetRegistrationTimeServer::new()),
                Arc::new(ExpireServer::new(Duration::from_secs(60))),
                Arc::new(MemoryServer::<NetworkServiceEndpoint>::new()),
            ],
        )
    })
    .await;
    conformance::ns_suite(|| async {
        RegistryChain::new(
            "memory-ns",
            vec![
                Arc::new(SerializeServer::new()),
                Arc::new(SetPayloadServer::new()),
                Arc::new(MemoryServer::<NetworkService>::new()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn network_service_removal_is_not_announced() {
    let memory = Arc::new(MemoryServer::<NetworkService>::new());
    let chain = RegistryChain::new("t", vec![memory.clone() as _]);
    let ns = |n: &str| NetworkService {
        name: n.into(),
        ..Default::default()
    };
    chain.run_register(&mut ctx(), ns("a")).await.unwrap();
    let q = Query {
        template: NetworkService::default(),
        watch: true,
    };
    let mut watch = chain.run_find(&mut ctx(), q).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().item.name, "a");
    chain.run_unregister(&mut ctx(), ns("a")).await.unwrap();
    assert!(memory.is_empty());
    chain.run_register(&mut ctx(), ns("b")).await.unwrap();
    let f = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (f.item.name.as_str(), f.deleted),
        ("b", false),
        "Go's NS store sends no deletion"
    );
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_ended_with_an_error() {
    let memory = Arc::new(MemoryServer::<NetworkServiceEndpoint>::new().with_watch_buffer(4));
    let chain = RegistryChain::new("t", vec![memory.clone() as _]);
    let q = Query {
        template: NetworkServiceEndpoint::default(),
        watch: true,
    };
    let mut slow = chain.run_find(&mut ctx(), q.clone()).await.unwrap();
    let mut keeping_up = chain.run_find(&mut ctx(), q).await.unwrap();
    for i in 0..10 {
        chain
            .run_register(&mut ctx(), nse(&format!("nse-{i}")))
            .await
            .unwrap();
        let f = keeping_up.next().await.unwrap().unwrap();
        assert_eq!(f.item.name, format!("nse-{i}"));
    }
    assert_eq!(memory.watchers(), 1, "the slow watcher was cut off");
    for i in 0..4 {
        let f = slow.next().await.unwrap().unwrap();
        assert_eq!(
            f.item.name,
            format!("nse-{i}"),
            "buffered events still arrive in order"
        );
    }
    let err = slow.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.to_string().contains("watcher fell behind"), "{err}");
    assert!(slow.next().await.is_none());
    drop(keeping_up);
    assert_eq!(memory.watchers(), 0, "dropping a watch unsubscribes it");
    assert_eq!(memory.len(), 10);
}

#[tokio::test]
async fn non_watching_find_ends_and_register_replaces() {
    let memory = Arc::new(MemoryServer::<NetworkServiceEndpoint>::new());
    let chain = RegistryChain::new("t", vec![memory.clone() as _]);
    chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    let mut moved = nse("a");
    moved.url = "unix:///run/a.sock".into();
    chain.run_register(&mut ctx(), moved).await.unwrap();
    let found = chain
        .find_all(&mut ctx(), NetworkServiceEndpoint::default())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].item.url, "unix:///run/a.sock");
    assert_eq!(memory.watchers(), 0);
}

#[tokio::test]
async fn service_name_index_follows_re_registration_and_removal() {
    use nsm_core::registry::RegistryChain;
    let store = Arc::new(MemoryServer::<NetworkServiceEndpoint>::new());
    let chain = RegistryChain::new("t", vec![store.clone() as _]);
    let mut ctx = Ctx::new(Clock::system());
    let with = |svcs: &[&str]| NetworkServiceEndpoint {
        name: "nse-1".into(),
        network_service_names: svcs.iter().map(|s| (*s).to_string()).collect(),
        ..Default::default()
    };
    let by = |svc: &str| NetworkServiceEndpoint {
        network_service_names: vec![svc.into()],
        ..Default::default()
    };
    chain
        .run_register(&mut ctx, with(&["a", "b"]))
        .await
        .unwrap();
    assert_eq!(chain.find_all(&mut ctx, by("b")).await.unwrap().len(), 1);
    chain
        .run_register(&mut ctx, with(&["a", "c"]))
        .await
        .unwrap();
    assert!(chain.find_all(&mut ctx, by("b")).await.unwrap().is_empty());
    assert_eq!(chain.find_all(&mut ctx, by("a")).await.unwrap().len(), 1);
    assert_eq!(chain.find_all(&mut ctx, by("c")).await.unwrap().len(), 1);
    chain.run_unregister(&mut ctx, with(&[])).await.unwrap();
    assert!(chain.find_all(&mut ctx, by("a")).await.unwrap().is_empty());
    assert!(store.store.lock().items.indexes_empty(), "index emptied");
}
