//! `nsm-bench`: the control-plane benchmarks of issue 3 (see the `nsm_bench` crate).

use clap::Parser;
use nsm_bench::alloc::CountingAlloc;
use nsm_bench::cli::{BenchCommand, run};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Control-plane benchmarks: Request+Close latency and NSMgr memory per connection.
#[derive(Debug, Parser)]
#[command(name = "nsm-bench", version)]
struct Cli {
    /// Tokio worker threads (default: one per CPU); `--worker-threads 0` runs everything on one
    /// current-thread runtime.
    #[arg(long, global = true)]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: BenchCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match cli.worker_threads {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(bench(cli)),
        Err(e) => {
            eprintln!("nsm-bench: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(cli: Cli) -> std::process::ExitCode {
    // NSM_BENCH_CHILD_WRAPPER (e.g. "heaptrack -o /tmp/nsmgr") runs the NSMgr child under a profiler.
    let mut child: Vec<std::ffi::OsString> = std::env::var("NSM_BENCH_CHILD_WRAPPER")
        .map(|w| w.split_whitespace().map(Into::into).collect())
        .unwrap_or_default();
    match std::env::current_exe() {
        Ok(exe) => child.extend([exe.into_os_string(), "nsmgr-child".into()]),
        Err(_) => child.extend(["nsm-bench".into(), "nsmgr-child".into()]),
    }
    match run(cli.command, child).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsm-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
