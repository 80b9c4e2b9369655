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
fn parse_component<A: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    about: &'static str,
) -> A {
    parse_component_from(std::env::args_os(), name, about).unwrap_or_else(|e| e.exit())
}

/// [`parse_component`] of `args`.
fn parse_component_from<A: clap::Args + clap::FromArgMatches>(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
    name: &'static str,
    about: &'static str,
) -> Result<A, clap::Error> {
    let sub = A::augment_args(clap::Command::new(name)).about(about);
    let matches = clap::Command::new("nsm")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommand(sub)
        .try_get_matches_from(args)?;
    let found = matches
        .subcommand_matches(name)
        .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
    A::from_arg_matches(found)
}

/// The command: a component's through its own parser (see [`parse_component`]), anything else
/// through [`Cli`].
fn parse() -> Option<Command> {
    use clap::Parser;
    let first = std::env::args_os().nth(1);
    Some(match first.as_ref().and_then(|a| a.to_str()) {
        Some("registry") => Command::Registry(parse_component("registry", REGISTRY_ABOUT)),
        Some("nsmgr") => Command::Nsmgr(parse_component("nsmgr", NSMGR_ABOUT)),
        Some("forwarder") => Command::Forwarder(parse_component("forwarder", FORWARDER_ABOUT)),
        Some("nse") => Command::Nse(parse_component("nse", NSE_ABOUT)),
        Some("nsc") => Command::Nsc(parse_component("nsc", NSC_ABOUT)),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// A component's own parser and [`Cli`] agree on values, help and errors.
    #[test]
    fn component_parsers_parse_as_the_full_cli_does() {
        let cases: [&[&str]; 5] = [
            &[
                "nsm",
                "nsmgr",
                "--name",
                "mgr-7",
                "--listen-on",
                "unix:///tmp/x.sock",
            ],
            &["nsm", "nsmgr", "--help"],
            &["nsm", "nsmgr", "--no-such-flag"],
            &["nsm", "registry", "--help"],
            &["nsm", "nsc", "--help"],
        ];
        for args in cases {
            let full = Cli::try_parse_from(args).map(|c| format!("{:?}", c.command));
            let own = match args[1] {
                "nsmgr" => parse_component_from(args, "nsmgr", NSMGR_ABOUT)
                    .map(|a| format!("{:?}", Some(Command::Nsmgr(a)))),
                "registry" => parse_component_from(args, "registry", REGISTRY_ABOUT)
                    .map(|a| format!("{:?}", Some(Command::Registry(a)))),
                _ => parse_component_from(args, "nsc", NSC_ABOUT)
                    .map(|a| format!("{:?}", Some(Command::Nsc(a)))),
            };
            match (full, own) {
                (Ok(f), Ok(o)) => assert_eq!(f, o, "{args:?}"),
                (Err(f), Err(o)) => {
                    assert_eq!(f.kind(), o.kind(), "{args:?}");
                    assert_eq!(f.render().to_string(), o.render().to_string(), "{args:?}");
                }
                (f, o) => panic!("{args:?}: full {f:?}, own {o:?}"),
            }
        }
    }
}
