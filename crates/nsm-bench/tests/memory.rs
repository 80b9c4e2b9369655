//! `nsm-bench memory --secure` runs: every hop secured (dev-CA mTLS, ES256 tokens, default policies),
//! in this process and with the NSMgr in its own child process (which loads the CA the parent saved).
//! Both check what the report shows a user: secured, every connection held by the NSMgr and
//! forgotten on Close, readings and per-connection figures present and plausible.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nsm_bench::alloc::CountingAlloc;
use nsm_bench::memory::{MemoryOpts, MemoryReport, Scope, run};

// As in the nsm-bench binary, so the heap figures are there to check.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The runs read this process's heap and RSS (all of it in scope `process`; the parent's growth in
/// scope `nsmgr`), so they take turns: a run beside them would move the figures.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONNECTIONS: usize = 5;
const PHASE_LIMIT: Duration = Duration::from_secs(60);

fn opts() -> MemoryOpts {
    MemoryOpts {
        connections: CONNECTIONS,
        concurrency: 2,
        heal: false,
        secure: true,
        malloc_trim: false,
        abort_held: false,
        warmup: 1,
        phase_limit: PHASE_LIMIT,
        child_command: vec![env!("CARGO_BIN_EXE_nsm-bench").into(), "nsmgr-child".into()],
    }
}

/// A secured run in `scope`, with the checks both scopes share.
async fn secured_run(scope: Scope) -> MemoryReport {
    let report = {
        let _turn = ONE_AT_A_TIME.lock().await;
        run(scope, &opts()).await.unwrap()
    };
    let text = report.to_string();
    eprintln!("{text}");
    // `secure`, `scope`, `connections` and `heal` of the report are the options echoed back, so
    // only their text is checked; the held counts below show the run did what they ask.
    assert!(
        text.contains("secured (mTLS, ES256 tokens, default policies)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("scope: {scope}")),
        "names its scope: {text}"
    );

    // Held while established, none before or after: every connection was established and closed.
    assert_eq!(report.before.held, Some(0), "{text}");
    assert_eq!(
        report.established.held,
        Some(CONNECTIONS),
        "the NSMgr holds every connection asked for: {text}"
    );
    assert_eq!(
        report.closed.held,
        Some(0),
        "and forgets them on Close: {text}"
    );
    assert!(
        text.contains(&format!(
            "NSMgr connections held: before 0, established {CONNECTIONS}, closed 0"
        )),
        "{text}"
    );

    for (phase, t) in [
        ("establish", report.establish_time),
        ("close", report.close_time),
    ] {
        assert!(
            t > Duration::ZERO && t < PHASE_LIMIT,
            "{phase} time {t:?}: {text}"
        );
    }
    for (name, r) in [
        ("before", report.before),
        ("established", report.established),
        ("closed", report.closed),
    ] {
        assert!(r.rss.is_some_and(|b| b > 0), "{name} RSS: {text}");
        assert!(r.heap.is_some(), "{name} heap (counting allocator): {text}");
    }

    // Every hop keeps state per connection: the heap grows with them, by a finite, bounded amount.
    let heap = report.heap_per_connection().unwrap();
    assert!(
        heap.is_finite() && heap > 0.0 && heap < 16.0 * 1024.0 * 1024.0,
        "heap per connection {heap} B: {text}"
    );
    // RSS moves by pages and malloc may reuse free ones, so its growth is only finite, not positive.
    for (name, v) in [
        ("RSS per connection", report.rss_per_connection()),
        (
            "heap left per connection",
            report.heap_left_per_connection(),
        ),
        ("RSS left per connection", report.rss_left_per_connection()),
    ] {
        assert!(v.is_some_and(f64::is_finite), "{name} {v:?}: {text}");
    }
    assert!(!text.contains("n/a"), "every figure is known: {text}");
    // glibc's view (in the process read): what is in use grows with the connections too.
    let malloc = report.malloc_per_connection();
    assert_eq!(
        malloc.is_some(),
        cfg!(all(target_os = "linux", target_env = "gnu")),
        "{text}"
    );
    if let Some((in_use, free)) = malloc {
        assert!(
            in_use.is_finite() && in_use > 0.0 && free.is_finite(),
            "glibc malloc per connection: in use {in_use} B, free {free} B: {text}"
        );
        assert!(text.contains("glibc malloc per connection"), "{text}");
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_connections_are_held_and_closed_in_the_isolated_nsmgr() {
    let report = secured_run(Scope::Nsmgr).await;
    let parent = report.parent_heap_growth.unwrap();
    assert!(
        parent > 0,
        "the client, forwarder and NSE here hold state too: {report}"
    );
    assert!(
        report
            .to_string()
            .contains("parent (client + forwarder + NSE)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_connections_are_held_and_closed_in_process() {
    let report = secured_run(Scope::Process).await;
    assert_eq!(
        report.parent_heap_growth, None,
        "one process: no parent/child split"
    );
    // The process holds every hop's state, so its growth is the upper bound the report divides
    // by four hops.
    assert!(report.to_string().contains("/4 hops"), "{report}");
}
