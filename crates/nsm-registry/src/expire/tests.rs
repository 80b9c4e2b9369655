use super::*;
use crate::memory::MemoryServer;
use crate::serialize::SerializeServer;
use crate::testutil::{Probe, nse};
use nsm_core::Clock;
use nsm_core::clock::to_timestamp;
use nsm_core::registry::RegistryChain;

const PERIOD: Duration = Duration::from_secs(60);

struct Fixture {
    chain: RegistryChain<Nse>,
    expire: Arc<ExpireServer>,
    probe: Arc<Probe>,
    memory: Arc<MemoryServer<Nse>>,
}

fn fixture() -> Fixture {
    let expire = Arc::new(ExpireServer::new(PERIOD));
    let probe = Probe::new();
    let memory = Arc::new(MemoryServer::<Nse>::new());
    let chain = RegistryChain::new(
        "t",
        vec![
            Arc::new(SerializeServer::new()),
            expire.clone(),
            probe.clone(),
            memory.clone(),
        ],
    );
    Fixture {
        chain,
        expire,
        probe,
        memory,
    }
}

fn clock() -> Clock {
    thread_local!(static CLOCK: Clock = Clock::starting_at(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
    CLOCK.with(|c| *c)
}

fn ctx() -> Ctx {
    Ctx::new(clock())
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    // Let woken timer tasks run to completion.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn default_period_applies_and_the_endpoint_is_removed_after_it() {
    let f = fixture();
    let clock = clock();
    let reg = f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    assert_eq!(
        reg.expiration_time,
        Some(to_timestamp(clock.now() + PERIOD))
    );
    advance(PERIOD - Duration::from_secs(1)).await;
    assert_eq!(f.memory.len(), 1);
    advance(Duration::from_secs(2)).await;
    assert_eq!(f.memory.len(), 0, "expired");
    assert_eq!(f.expire.scheduled(), 0);
    assert_eq!(f.probe.calls(), ["register a", "unregister a"]);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_requested_expiration_wins() {
    let f = fixture();
    let clock = clock();
    let mut item = nse("a");
    let wanted = to_timestamp(clock.now() + Duration::from_secs(5));
    item.expiration_time = Some(wanted);
    let reg = f.chain.run_register(&mut ctx(), item).await.unwrap();
    assert_eq!(reg.expiration_time, Some(wanted));
    let mut longer = nse("b");
    longer.expiration_time = Some(to_timestamp(clock.now() + PERIOD * 10));
    let reg = f.chain.run_register(&mut ctx(), longer).await.unwrap();
    assert_eq!(
        reg.expiration_time,
        Some(to_timestamp(clock.now() + PERIOD))
    );
    advance(Duration::from_secs(6)).await;
    assert!(f.memory.get("a").is_none() && f.memory.get("b").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_refresh_moves_the_expiry() {
    let f = fixture();
    f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    advance(Duration::from_secs(40)).await;
    f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    advance(Duration::from_secs(40)).await;
    assert_eq!(f.memory.len(), 1, "the first expiry was replaced");
    advance(Duration::from_secs(21)).await;
    assert_eq!(f.memory.len(), 0);
    assert_eq!(
        f.probe
            .calls()
            .iter()
            .filter(|c| c.starts_with("unregister"))
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn unregister_cancels_the_expiry_and_unknown_names_stop_here() {
    let f = fixture();
    f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    f.chain.run_unregister(&mut ctx(), nse("a")).await.unwrap();
    f.chain
        .run_unregister(&mut ctx(), nse("ghost"))
        .await
        .unwrap();
    advance(PERIOD * 2).await;
    assert_eq!(f.probe.calls(), ["register a", "unregister a"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_old_expiry() {
    let f = fixture();
    f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    advance(Duration::from_secs(30)).await;
    f.probe.fail_next(1);
    assert!(f.chain.run_register(&mut ctx(), nse("a")).await.is_err());
    advance(Duration::from_secs(31)).await;
    assert_eq!(f.memory.len(), 0, "expired at the original time");
}

#[tokio::test(start_paused = true)]
async fn a_failed_unregister_keeps_the_expiry() {
    let f = fixture();
    f.chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    f.probe.fail_next(1);
    assert!(f.chain.run_unregister(&mut ctx(), nse("a")).await.is_err());
    assert_eq!(f.expire.scheduled(), 1);
    advance(PERIOD + Duration::from_secs(1)).await;
    assert_eq!(f.memory.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_expiry_scheduled_later_still_fires_first() {
    let f = fixture();
    let clock = clock();
    f.chain.run_register(&mut ctx(), nse("late")).await.unwrap();
    let mut early = nse("early");
    early.expiration_time = Some(to_timestamp(clock.now() + Duration::from_secs(5)));
    f.chain.run_register(&mut ctx(), early).await.unwrap();
    advance(Duration::from_secs(6)).await;
    assert!(
        f.memory.get("early").is_none(),
        "the timer woke for the earlier expiry"
    );
    assert!(f.memory.get("late").is_some());
    assert_eq!(f.expire.scheduled(), 1);
    advance(PERIOD).await;
    assert_eq!(f.memory.len(), 0);
    assert_eq!(f.expire.scheduled(), 0);
}
