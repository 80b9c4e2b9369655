use super::*;
use crate::expire::ExpireServer;
use crate::memory::MemoryServer;
use crate::serialize::SerializeServer;
use crate::testutil::{Probe, nse};
use nsm_core::Clock;
use nsm_core::clock::{from_timestamp, to_timestamp};
use nsm_core::registry::RegistryChain;

fn clock() -> Clock {
    thread_local!(static CLOCK: Clock = Clock::starting_at(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
    CLOCK.with(|c| *c)
}

fn ctx() -> Ctx {
    Ctx::new(clock())
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_two_thirds_with_the_original_duration() {
    let clock = clock();
    let refresh = Arc::new(RefreshClient::new());
    let probe = Probe::new();
    let chain = RegistryChain::new(
        "t",
        vec![
            Arc::new(SerializeServer::new()),
            refresh.clone(),
            probe.clone(),
        ],
    );
    let mut item = nse("a");
    item.expiration_time = Some(to_timestamp(clock.now() + Duration::from_secs(30)));
    chain.run_register(&mut ctx(), item).await.unwrap();
    advance(Duration::from_secs(19)).await;
    assert_eq!(probe.registered().len(), 1);
    advance(Duration::from_secs(1)).await;
    let regs = probe.registered();
    assert_eq!(regs.len(), 2, "refreshed at 20 s");
    let sent = from_timestamp(regs[1].1.as_ref().unwrap()).unwrap();
    assert_eq!(
        sent,
        clock.now() + Duration::from_secs(30),
        "now + the original 30 s"
    );
    advance(Duration::from_secs(20)).await;
    assert_eq!(probe.registered().len(), 3, "and again 20 s later");

    chain.run_unregister(&mut ctx(), nse("a")).await.unwrap();
    assert_eq!(refresh.active(), 0);
    advance(Duration::from_secs(120)).await;
    assert_eq!(probe.registered().len(), 3, "no refresh after Unregister");
}

#[tokio::test(start_paused = true)]
async fn without_requested_expiration_the_registry_default_is_kept_alive() {
    let memory = Arc::new(MemoryServer::<Nse>::new());
    let probe = Probe::new();
    let stop = CancellationToken::new();
    let refresh = Arc::new(RefreshClient::new().with_cancellation(&stop));
    let chain = RegistryChain::new(
        "t",
        vec![
            refresh.clone(),
            probe.clone(),
            Arc::new(ExpireServer::new(Duration::from_secs(60))),
            memory.clone(),
        ],
    );
    chain.run_register(&mut ctx(), nse("a")).await.unwrap();
    for _ in 0..30 {
        advance(Duration::from_secs(10)).await;
    }
    assert_eq!(memory.len(), 1, "still registered after 5 minutes");
    assert!(
        probe.registered().iter().all(|(_, exp)| exp.is_none()),
        "nothing requested"
    );
    assert!(
        probe.registered().len() >= 7,
        "{}",
        probe.registered().len()
    );
    stop.cancel();
    advance(Duration::from_secs(1)).await;
    assert_eq!(refresh.active(), 0);
    advance(Duration::from_secs(61)).await;
    assert_eq!(memory.len(), 0, "refresh stopped when the client went away");
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_is_retried_before_expiry() {
    let clock = clock();
    let probe = Probe::new();
    let chain = RegistryChain::new("t", vec![Arc::new(RefreshClient::new()), probe.clone()]);
    let mut item = nse("a");
    item.expiration_time = Some(to_timestamp(clock.now() + Duration::from_secs(30)));
    chain.run_register(&mut ctx(), item).await.unwrap();
    probe.fail_next(1);
    advance(Duration::from_secs(20)).await;
    assert_eq!(probe.calls().len(), 2, "first refresh failed");
    advance(Duration::from_secs(7)).await;
    assert_eq!(
        probe.calls().len(),
        3,
        "retried at 2/3 of the remaining 10 s"
    );
    assert_eq!(probe.registered().len(), 2);
}
