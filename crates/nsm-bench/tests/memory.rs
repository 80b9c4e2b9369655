//! `nsm-bench memory --secure` runs: every hop secured (dev-CA mTLS, ES256 tokens, default policies),
//! in this process and with the NSMgr in its own child process (which loads the CA the parent saved).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nsm_bench::memory::{MemoryOpts, Scope, run};

fn opts() -> MemoryOpts {
    MemoryOpts {
        connections: 5,
        concurrency: 2,
        heal: false,
        secure: true,
        malloc_trim: false,
        abort_held: false,
        warmup: 1,
        phase_limit: Duration::from_secs(60),
        child_command: vec![env!("CARGO_BIN_EXE_nsm-bench").into(), "nsmgr-child".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_connections_are_held_and_closed_in_the_isolated_nsmgr() {
    let report = run(Scope::Nsmgr, &opts()).await.unwrap();
    assert!(report.secure);
    assert_eq!(report.before.held, Some(0));
    assert_eq!(
        report.established.held,
        Some(5),
        "the NSMgr child holds them"
    );
    assert_eq!(report.closed.held, Some(0), "and forgets them on Close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_connections_are_held_and_closed_in_process() {
    let report = run(Scope::Process, &opts()).await.unwrap();
    assert!(report.secure);
    assert!(report.to_string().contains("secured"), "{report}");
}
