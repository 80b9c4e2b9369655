//! Command line of the benchmarks (shared by `nsm-bench` and `nsm bench`).

use std::ffi::OsString;

use clap::{Args, Subcommand, ValueEnum};

use crate::Result;
use crate::control_plane::{self, ControlPlaneOpts};
use crate::memory::{self, MemoryOpts, Scope};
use crate::setup::{Mode, Transport};

/// Which client configurations to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Heal {
    /// Without heal (the pure chain figure).
    Off,
    /// With heal (as NSCs run: one MonitorConnections stream per connection).
    On,
    /// Both, heal off first.
    Both,
}

impl Heal {
    fn values(self) -> &'static [bool] {
        match self {
            Heal::Off => &[false],
            Heal::On => &[true],
            Heal::Both => &[false, true],
        }
    }
}

/// Channel state of the `control-plane` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Channels {
    /// Strictly sequential: every cycle is the only connection, so each hop redials its next hop.
    Cold,
    /// One other connection held open: every hop reuses its channel to the next hop.
    Warm,
    /// Both, cold first.
    Both,
}

impl Channels {
    fn values(self) -> &'static [bool] {
        match self {
            Channels::Cold => &[false],
            Channels::Warm => &[true],
            Channels::Both => &[false, true],
        }
    }
}

/// Transports of the `control-plane` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transports {
    /// Every hop on TCP 127.0.0.1 (Go's harness).
    Tcp,
    /// Local hops on unix sockets, NSMgr to NSMgr on TCP (as deployed).
    Unix,
    /// Both, TCP first.
    Both,
}

impl Transports {
    fn values(self) -> &'static [Transport] {
        match self {
            Transports::Tcp => &[Transport::Tcp],
            Transports::Unix => &[Transport::Unix],
            Transports::Both => &[Transport::Tcp, Transport::Unix],
        }
    }
}

/// A benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Request+Close latency NSC → NSMgr → forwarder → NSE (local) or across two nodes (remote).
    ControlPlane(ControlPlaneArgs),
    /// Memory per established connection in the NSMgr.
    Memory(MemoryArgs),
    /// Internal: serve an isolated NSMgr for `memory --scope nsmgr` (stdio protocol).
    #[command(hide = true)]
    NsmgrChild(NsmgrChildArgs),
}

/// `nsmgr-child` options.
#[derive(Debug, Args)]
pub struct NsmgrChildArgs {
    /// Secure the NSMgr with an SVID from the development CA saved in this directory.
    #[arg(long)]
    pub ca_dir: Option<std::path::PathBuf>,
}

/// `control-plane` options.
#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Local (4 path segments) or remote (6).
    #[arg(long, value_enum, default_value_t = Mode::Local)]
    pub mode: Mode,
    /// Measured Request+Close cycles.
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Unmeasured cycles first.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Client configurations.
    #[arg(long, value_enum, default_value_t = Heal::Both)]
    pub heal: Heal,
    /// Channel state (see [`Channels`]).
    #[arg(long, value_enum, default_value_t = Channels::Both)]
    pub channels: Channels,
    /// How the hops are served (see [`Transports`]).
    #[arg(long, value_enum, default_value_t = Transports::Tcp)]
    pub transport: Transports,
}

/// `memory` options.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Connections held at once.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Requests (and Closes) in flight while establishing (and closing).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Unmeasured Request+Close cycles before the baseline.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Client configurations.
    #[arg(long, value_enum, default_value_t = Heal::On)]
    pub heal: Heal,
    /// Give up establishing (or closing) the connections after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub phase_limit_secs: u64,
    /// Where to read memory (repeatable; default: the whole process, then the NSMgr alone).
    #[arg(long, value_enum)]
    pub scope: Vec<Scope>,
    /// Secure every hop as a production mesh (SPIFFE mTLS with SVIDs from a development CA, ES256
    /// tokens, the default policies) instead of plaintext with test tokens.
    #[arg(long)]
    pub secure: bool,
    /// Call `malloc_trim(0)` in the measured process before every reading: RSS then counts the
    /// memory the connections hold, not the free memory malloc keeps.
    #[arg(long)]
    pub malloc_trim: bool,
    /// Profiling aid (scope nsmgr): abort the NSMgr child with the connections still held, right
    /// after the established reading, so a heap profiler's "leaked" report is what they keep.
    #[arg(long, hide = true)]
    pub abort_held: bool,
}

/// Runs a benchmark and prints its report. `child_command` starts this program's `nsmgr-child`
/// command (e.g. `[current_exe, "nsmgr-child"]`, or `[current_exe, "bench", "nsmgr-child"]` under
/// `nsm`).
pub async fn run(cmd: BenchCommand, child_command: Vec<OsString>) -> Result<()> {
    match cmd {
        BenchCommand::ControlPlane(a) => {
            for &transport in a.transport.values() {
                for &warm_channels in a.channels.values() {
                    for &heal in a.heal.values() {
                        let report = control_plane::run(ControlPlaneOpts {
                            mode: a.mode,
                            transport,
                            iterations: a.iterations,
                            warmup: a.warmup,
                            concurrency: a.concurrency,
                            heal,
                            warm_channels,
                        })
                        .await?;
                        println!("{report}");
                    }
                }
            }
        }
        BenchCommand::Memory(a) => {
            let scopes = if a.scope.is_empty() {
                vec![Scope::Process, Scope::Nsmgr]
            } else {
                a.scope
            };
            for &heal in a.heal.values() {
                for &scope in &scopes {
                    let opts = MemoryOpts {
                        connections: a.connections,
                        concurrency: a.concurrency,
                        heal,
                        secure: a.secure,
                        malloc_trim: a.malloc_trim,
                        abort_held: a.abort_held,
                        warmup: a.warmup,
                        phase_limit: std::time::Duration::from_secs(a.phase_limit_secs),
                        child_command: child_command.clone(),
                    };
                    let report = memory::run(scope, &opts).await?;
                    println!("{report}");
                }
            }
        }
        BenchCommand::NsmgrChild(a) => crate::child::nsmgr_child(a.ca_dir.as_deref()).await?,
    }
    Ok(())
}
