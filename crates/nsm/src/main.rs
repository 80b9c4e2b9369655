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
    #[command(about = REGISTRY_ABOUT)]
    Registry(cmd::registry::RegistryArgs),
    #[command(about = NSMGR_ABOUT)]
    Nsmgr(cmd::nsmgr::NsmgrArgs),
    #[command(about = FORWARDER_ABOUT)]
    Forwarder(cmd::forwarder::ForwarderArgs),
    #[command(about = NSE_ABOUT)]
    Nse(cmd::nse::NseArgs),
    #[command(about = NSC_ABOUT)]
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

const REGISTRY_ABOUT: &str =
    "Run the registry (network services and endpoints) on the memory store or on etcd";
const NSMGR_ABOUT: &str = "Run a node's Network Service Manager";
const FORWARDER_ABOUT: &str = "Run a forwarder that registers with its NSMgr";
const NSE_ABOUT: &str = "Run the icmp-responder endpoint";
const NSC_ABOUT: &str = "Run a client that requests network services and holds the connections";

/// The long-running components parse their command line with a parser that knows only their own
/// subcommand. `Cli::parse()` builds every subcommand's arguments first, whichever one is run: about
/// 250 KiB of code that each component would otherwise run once and keep mapped (BENCHMARKS.md,
/// issue 8). Help, errors and values are the same as through `Cli`.
mod component {
    use clap::Parser;

    use super::{FORWARDER_ABOUT, NSC_ABOUT, NSE_ABOUT, NSMGR_ABOUT, REGISTRY_ABOUT, cmd};

    #[derive(Debug, Parser)]
    #[command(name = "nsm", version)]
    pub enum Registry {
        #[command(about = REGISTRY_ABOUT)]
        Registry(cmd::registry::RegistryArgs),
    }

    #[derive(Debug, Parser)]
    #[command(name = "nsm", version)]
    pub enum Nsmgr {
        #[command(about = NSMGR_ABOUT)]
        Nsmgr(cmd::nsmgr::NsmgrArgs),
    }

    #[derive(Debug, Parser)]
    #[command(name = "nsm", version)]
    pub enum Forwarder {
        #[command(about = FORWARDER_ABOUT)]
        Forwarder(cmd::forwarder::ForwarderArgs),
    }

    #[derive(Debug, Parser)]
    #[command(name = "nsm", version)]
    pub enum Nse {
        #[command(about = NSE_ABOUT)]
        Nse(cmd::nse::NseArgs),
    }

    #[derive(Debug, Parser)]
    #[command(name = "nsm", version)]
    pub enum Nsc {
        #[command(about = NSC_ABOUT)]
        Nsc(cmd::nsc::NscArgs),
    }
}

/// The command: a component's through its own parser (see [`component`]), anything else through
/// [`Cli`].
fn parse() -> Option<Command> {
    use clap::Parser;
    use component::{Forwarder, Nsc, Nse, Nsmgr, Registry};
    let first = std::env::args_os().nth(1);
    Some(match first.as_ref().and_then(|a| a.to_str()) {
        Some("registry") => match Registry::parse() {
            Registry::Registry(a) => Command::Registry(a),
        },
        Some("nsmgr") => match Nsmgr::parse() {
            Nsmgr::Nsmgr(a) => Command::Nsmgr(a),
        },
        Some("forwarder") => match Forwarder::parse() {
            Forwarder::Forwarder(a) => Command::Forwarder(a),
        },
        Some("nse") => match Nse::parse() {
            Nse::Nse(a) => Command::Nse(a),
        },
        Some("nsc") => match Nsc::parse() {
            Nsc::Nsc(a) => Command::Nsc(a),
        },
        _ => return Cli::parse().command,
    })
}

fn main() -> ExitCode {
    match parse() {
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
