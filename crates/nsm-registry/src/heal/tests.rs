use super::*;
use crate::memory::MemoryServer;
use crate::testutil::nse;
use nsm_core::NsmError;
use nsm_core::registry::RegistryChain;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

type Nse = NetworkServiceEndpoint;

/// Stands for the connection to a registry that can restart: while down, every call fails; a restart
/// breaks every open watch.
#[derive(Default)]
struct Registry {
    down: AtomicBool,
    finds: AtomicUsize,
    watches: Mutex<CancellationToken>,
}

impl Registry {
    fn restart(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        let old = std::mem::take(&mut *self.watches.lock());
        old.cancel();
    }
    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(NsmError::unavailable("registry", "down"));
        }
        Ok(())
    }
}

#[async_trait]
impl RegistryServer<Nse> for Registry {
    async fn register(&self, ctx: &mut Ctx, item: Nse, next: RegistryNext<Nse>) -> Result<Nse> {
        self.check()?;
        next.register(ctx, item).await
    }
    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<Nse>,
        next: RegistryNext<Nse>,
    ) -> Result<FindStream<Nse>> {
        self.check()?;
        self.finds.fetch_add(1, Ordering::SeqCst);
        let broken = self.watches.lock().clone().cancelled_owned();
        let s = next.find(ctx, query).await?;
        let gone = stream::once(async { Err(NsmError::unavailable("registry", "restarted")) });
        Ok(s.take_until(broken).chain(gone).boxed())
    }
    async fn unregister(&self, ctx: &mut Ctx, item: Nse, next: RegistryNext<Nse>) -> Result<()> {
        self.check()?;
        next.unregister(ctx, item).await
    }
    fn name(&self) -> &'static str {
        "registry"
    }
}

struct Fixture {
    chain: RegistryChain<Nse>,
    heal: Arc<HealClient<Nse>>,
    registry: Arc<Registry>,
    memory: Arc<MemoryServer<Nse>>,
    stop: CancellationToken,
}

fn fixture() -> Fixture {
    let stop = CancellationToken::new();
    let heal = Arc::new(HealClient::<Nse>::new().with_cancellation(&stop));
    let registry = Arc::new(Registry::default());
    let memory = Arc::new(MemoryServer::<Nse>::new());
    let chain = RegistryChain::new("t", vec![heal.clone(), registry.clone(), memory.clone()]);
    Fixture {
        chain,
        heal,
        registry,
        memory,
        stop,
    }
}

fn ctx() -> Ctx {
    Ctx::new(Clock::system())
}

async fn advance(d: Duration) {
    for _ in 0..(d.as_millis() / 50) {
        tokio::time::advance(Duration::from_millis(50)).await;
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
    }
}

/// Forgets everything in the store, as a restarted registry would.
async fn wipe(memory: &Arc<MemoryServer<Nse>>) {
    let store_only = RegistryChain::new("store", vec![memory.clone() as _]);
    for n in ["a", "b"] {
        store_only.run_unregister(&mut ctx(), nse(n)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn re_registers_everything_after_the_registry_comes_back() {
    let f = fixture();
    f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    f.chain.run_register(&mut ctx(), nse("b")).await.unwrap();
    assert_eq!(
        f.registry.finds.load(Ordering::SeqCst),
        1,
        "one monitor for both"
    );
    assert_eq!(f.memory.watchers(), 1);

    wipe(&f.memory).await;
    f.registry.restart(true);
    advance(Duration::from_secs(10)).await;
    assert!(f.memory.is_empty(), "still down");

    f.registry.restart(false);
    advance(Duration::from_secs(4)).await;
    assert!(
        f.memory.get("a").is_some() && f.memory.get("b").is_some(),
        "both healed"
    );
    assert_eq!(f.memory.watchers(), 1, "the monitor is open again, once");

    // Unregister forgets: after the next restart only b comes back.
    f.chain.run_unregister(&mut ctx(), nse("a")).await.unwrap();
    assert_eq!(f.heal.remembered(), 1);
    wipe(&f.memory).await;
    f.registry.restart(false);
    advance(Duration::from_secs(1)).await;
    assert!(f.memory.get("a").is_none() && f.memory.get("b").is_some());

    f.stop.cancel();
    advance(Duration::from_millis(100)).await;
    assert_eq!(f.memory.watchers(), 0, "cancelling closes the monitor");
}

#[tokio::test(start_paused = true)]
async fn unknown_names_are_not_forwarded_and_failed_first_registers_are_forgotten() {
    let f = fixture();
    f.chain
        .run_unregister(&mut ctx(), nse("ghost"))
        .await
        .unwrap();
    f.registry.restart(true);
    assert!(f.chain.run_register(&mut ctx(), nse("a")).await.is_err());
    assert_eq!(f.heal.remembered(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_watching_find_survives_a_registry_restart() {
    let f = fixture();
    f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    let q = Query {
        template: Nse::default(),
        watch: true,
    };
    let mut watch = f.chain.run_find(&mut ctx(), q).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().item.name, "a");
    f.registry.restart(true);
    advance(Duration::from_secs(2)).await;
    f.registry.restart(false);
    let again = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    let found = again.unwrap().unwrap().unwrap();
    assert_eq!(
        found.item.name, "a",
        "the re-created stream starts with the current matches"
    );
}
