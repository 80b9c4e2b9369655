use super::*;
use crate::memory::MemoryServer;
use crate::testutil::{Probe, nse};
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_core::registry::{RegistryChain, RegistryElement};

type Nse = NetworkServiceEndpoint;

fn ctx() -> Ctx {
    Ctx::new(Clock::system())
}

fn of_service(name: &str, service: &str) -> Nse {
    Nse {
        network_service_names: vec![service.into()],
        ..nse(name)
    }
}

fn by_service(service: &str) -> Nse {
    Nse {
        network_service_names: vec![service.into()],
        ..Default::default()
    }
}

struct Setup {
    cache: Arc<QueryCacheClient<Nse>>,
    probe: Arc<Probe>,
    memory: Arc<MemoryServer<Nse>>,
    /// querycache → probe → memory.
    chain: RegistryChain<Nse>,
    /// The store alone: changes the cache does not see pass through it.
    direct: RegistryChain<Nse>,
}

fn setup(cache: QueryCacheClient<Nse>) -> Setup {
    let cache = Arc::new(cache);
    let probe = Probe::new();
    let memory = Arc::new(MemoryServer::<Nse>::new());
    let chain = RegistryChain::new(
        "t",
        vec![
            cache.clone() as RegistryElement<Nse>,
            probe.clone(),
            memory.clone(),
        ],
    );
    let direct = RegistryChain::new("direct", vec![memory.clone() as RegistryElement<Nse>]);
    Setup {
        cache,
        probe,
        memory,
        chain,
        direct,
    }
}

fn plain_finds(probe: &Probe) -> usize {
    probe
        .calls()
        .iter()
        .filter(|c| c.starts_with("find") && !c.ends_with("watch"))
        .count()
}

/// Registers endpoint `name` of `service` through `chain`.
async fn register(chain: &RegistryChain<Nse>, name: &str, service: &str) {
    chain
        .run_register(&mut ctx(), of_service(name, service))
        .await
        .unwrap();
}

async fn names(chain: &RegistryChain<Nse>, template: Nse) -> Vec<String> {
    let found = chain.find_all(&mut ctx(), template).await.unwrap();
    found.into_iter().map(|f| f.item.name).collect()
}

/// Lets the watch task run until `cond` holds (changes travel through a task).
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn a_repeated_find_is_answered_without_the_registry() {
    let s = setup(QueryCacheClient::new());
    register(&s.direct, "a", "svc").await;
    assert_eq!(names(&s.chain, by_service("svc")).await, ["a"]);
    assert_eq!(plain_finds(&s.probe), 1);
    assert_eq!(s.memory.watchers(), 1, "one watch per cached query");
    for _ in 0..5 {
        assert_eq!(names(&s.chain, by_service("svc")).await, ["a"]);
    }
    assert_eq!(plain_finds(&s.probe), 1, "hits never reach the registry");
    // A different query is a different entry.
    assert_eq!(
        names(&s.chain, by_service("other")).await,
        Vec::<String>::new()
    );
    assert_eq!(plain_finds(&s.probe), 2);
    assert_eq!(s.cache.len(), 2);
}

#[tokio::test]
async fn registrations_and_removals_behind_the_cache_are_seen() {
    let s = setup(QueryCacheClient::new());
    register(&s.direct, "a", "svc").await;
    assert_eq!(names(&s.chain, by_service("svc")).await, ["a"]);

    register(&s.direct, "b", "svc").await;
    until(|| s.cache.entries.lookup_len(&by_service("svc")) == 2).await;
    assert_eq!(names(&s.chain, by_service("svc")).await, ["a", "b"]);

    let moved = Nse {
        url: "tcp://moved:5001".into(),
        ..of_service("a", "svc")
    };
    s.direct.run_register(&mut ctx(), moved).await.unwrap();
    s.direct.run_unregister(&mut ctx(), nse("b")).await.unwrap();
    until(|| s.cache.entries.lookup_len(&by_service("svc")) == 1).await;
    let found = s
        .chain
        .find_all(&mut ctx(), by_service("svc"))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].item.url, "tcp://moved:5001", "updated in place");
    assert_eq!(plain_finds(&s.probe), 1);
}

#[tokio::test]
async fn an_empty_answer_is_asked_again_and_fills_when_an_item_registers() {
    let s = setup(QueryCacheClient::new());
    assert!(names(&s.chain, by_service("svc")).await.is_empty());
    assert!(names(&s.chain, by_service("svc")).await.is_empty());
    assert_eq!(
        plain_finds(&s.probe),
        2,
        "empty answers are not served from memory"
    );
    assert_eq!(s.memory.watchers(), 1, "but the entry and its watch stay");

    register(&s.direct, "a", "svc").await;
    until(|| s.cache.entries.lookup_len(&by_service("svc")) == 1).await;
    assert_eq!(names(&s.chain, by_service("svc")).await, ["a"]);
    assert_eq!(plain_finds(&s.probe), 2);
}

#[tokio::test]
async fn changes_through_the_chain_are_written_through() {
    let s = setup(QueryCacheClient::new());
    register(&s.chain, "a", "svc").await;
    assert_eq!(names(&s.chain, by_service("svc")).await, ["a"]);
    // On this current-thread runtime the watch task has not run yet: the write-through alone
    // makes the change visible.
    register(&s.chain, "b", "svc").await;
    assert_eq!(names(&s.chain, by_service("svc")).await, ["a", "b"]);
    s.chain.run_unregister(&mut ctx(), nse("a")).await.unwrap();
    assert_eq!(names(&s.chain, by_service("svc")).await, ["b"]);
    // An item re-registered under another service leaves the old service's answer.
    register(&s.chain, "b", "elsewhere").await;
    assert!(names(&s.chain, by_service("svc")).await.is_empty());
}

#[tokio::test]
async fn watching_finds_pass_through() {
    let s = setup(QueryCacheClient::new());
    let q = Query {
        template: by_service("svc"),
        watch: true,
    };
    let _stream = s.chain.run_find(&mut ctx(), q).await.unwrap();
    assert_eq!(s.probe.calls(), ["find  watch"]);
    assert!(s.cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_unused_entry_expires_and_closes_its_watch() {
    let s = setup(QueryCacheClient::new().with_expiry(Duration::from_secs(10)));
    register(&s.direct, "a", "svc").await;
    names(&s.chain, by_service("svc")).await;
    tokio::time::advance(Duration::from_secs(8)).await;
    names(&s.chain, by_service("svc")).await;
    assert_eq!(plain_finds(&s.probe), 1);
    // Used 8 s in: lives until 18 s.
    tokio::time::advance(Duration::from_secs(9)).await;
    tokio::task::yield_now().await;
    assert_eq!(s.cache.len(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    until(|| s.cache.is_empty() && s.memory.watchers() == 0).await;
    names(&s.chain, by_service("svc")).await;
    assert_eq!(plain_finds(&s.probe), 2, "an expired entry is asked again");
}

#[tokio::test(start_paused = true)]
async fn network_services_are_revalidated_even_when_used() {
    let memory = Arc::new(MemoryServer::<NetworkService>::new());
    let cache =
        Arc::new(QueryCacheClient::<NetworkService>::new().with_expiry(Duration::from_secs(10)));
    let chain = RegistryChain::new(
        "t",
        vec![
            cache.clone() as RegistryElement<NetworkService>,
            memory.clone(),
        ],
    );
    let direct = RegistryChain::new("d", vec![memory.clone() as RegistryElement<NetworkService>]);
    let ns = NetworkService {
        name: "svc".into(),
        ..Default::default()
    };
    direct.run_register(&mut ctx(), ns.clone()).await.unwrap();
    let find = || async { chain.find_all(&mut ctx(), ns.clone()).await.unwrap().len() };
    assert_eq!(find().await, 1);
    // Removal of a service is not announced to watchers: the cache answers until it revalidates.
    direct.run_unregister(&mut ctx(), ns.clone()).await.unwrap();
    for _ in 0..9 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(find().await, 1);
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        find().await,
        0,
        "revalidated {:?} after filling, used or not",
        Duration::from_secs(10)
    );
}

#[tokio::test]
async fn a_failed_watch_drops_the_entry() {
    // A watcher that falls behind is ended by the store with an error.
    let memory = Arc::new(MemoryServer::<Nse>::new().with_watch_buffer(1));
    let cache = Arc::new(QueryCacheClient::<Nse>::new());
    let chain = RegistryChain::new(
        "t",
        vec![cache.clone() as RegistryElement<Nse>, memory.clone()],
    );
    let direct = RegistryChain::new("d", vec![memory.clone() as RegistryElement<Nse>]);
    register(&direct, "a", "svc").await;
    names(&chain, by_service("svc")).await;
    assert_eq!(cache.len(), 1);
    for i in 0..5 {
        register(&direct, &format!("x{i}"), "svc").await;
    }
    until(|| cache.is_empty()).await;
}

#[tokio::test]
async fn the_least_recently_used_entry_makes_room() {
    let s = setup(QueryCacheClient::new().with_max_entries(2));
    for svc in ["s1", "s2", "s3"] {
        register(&s.direct, svc, svc).await;
    }
    names(&s.chain, by_service("s1")).await;
    names(&s.chain, by_service("s2")).await;
    names(&s.chain, by_service("s3")).await;
    assert_eq!(s.cache.len(), 2);
    until(|| s.memory.watchers() == 2).await;
}

#[tokio::test]
async fn dropping_the_element_closes_every_watch() {
    let s = setup(QueryCacheClient::new());
    register(&s.direct, "a", "svc").await;
    names(&s.chain, by_service("svc")).await;
    names(&s.chain, nse("a")).await;
    assert_eq!(s.memory.watchers(), 2);
    let memory = s.memory.clone();
    drop(s);
    until(|| memory.watchers() == 0).await;
}

impl<T: MemoryItem> Entries<T> {
    /// How many items the entry for `template` holds (0 if none).
    fn lookup_len(&self, template: &T) -> usize {
        let map = self.by_query.lock();
        map.get(&template.encode_to_vec())
            .map_or(0, |e| e.state.lock().items.len())
    }
}
