//! `nsm`: the single nsm-rs executable. Each NSM component is a subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Network Service Mesh (NSM v1.1.1 compatible), rebuilt in Rust.
#[derive(Debug, Parser)]
#[command(name = "nsm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the NSM API version this build speaks and its gRPC methods.
    Api,
    /// Run the registry (network services and endpoints) on the memory store or on etcd.
    Registry(cmd::registry::RegistryArgs),
    /// Run a node's Network Service Manager.
    Nsmgr(cmd::nsmgr::NsmgrArgs),
    /// Run a forwarder that registers with its NSMgr.
    Forwarder(cmd::forwarder::ForwarderArgs),
    /// Run the icmp-responder endpoint.
    Nse(cmd::nse::NseArgs),
    /// Run a client that requests network services and holds the connections.
    Nsc(cmd::nsc::NscArgs),
    /// Development identities without SPIRE: a CA (`init`) and SVIDs for NSM_IDENTITY_DIR (`issue`).
    #[command(subcommand)]
    Identity(cmd::identity::IdentityCommand),
    /// Inspect a running mesh: registry, connections hop by hop, `check`.
    Ctl(cmd::ctl::CtlArgs),
    /// Start a whole local mesh in network namespaces (as root), show it and ping through it.
    Up(cmd::up::UpArgs),
    /// Remove what a crashed `nsm up` left behind (and only that).
    Down(cmd::up::DownArgs),
    /// Benchmarks (figures for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Api) => {
            println!("NSM wire contract: v1.1.1");
            for (path, streaming) in nsm_api::services::METHODS {
                let kind = if streaming {
                    "server-streaming"
                } else {
                    "unary"
                };
                println!("  {path}  ({kind})");
            }
            ExitCode::SUCCESS
        }
        Some(Command::Registry(args)) => cmd::registry::run(&args),
        Some(Command::Nsmgr(args)) => cmd::nsmgr::run(&args),
        Some(Command::Forwarder(args)) => cmd::forwarder::run(&args),
        Some(Command::Nse(args)) => cmd::nse::run(&args),
        Some(Command::Nsc(args)) => cmd::nsc::run(&args),
        Some(Command::Ctl(args)) => cmd::ctl::run(&args),
        Some(Command::Identity(c)) => cmd::identity::run(&c),
        Some(Command::Up(args)) => cmd::up::run(&args),
        Some(Command::Down(args)) => cmd::up::down(&args),
        Some(Command::Bench(b)) => cmd::bench::run(&b),
        None => {
            use clap::CommandFactory;
            // Printing help can only fail if stdout is closed; nothing useful to do then.
            let _ = Cli::command().print_help();
            ExitCode::SUCCESS
        }
    }
}
