//! `nsm ctl`: see what the mesh does — registry contents, connections hop by hop, a doctor.
//!
//! ```text
//! nsm ctl [--registry URL] [--nsmgr URL,…] [-o table|json|yaml] [--timeout 5s] <verb>
//!   get services | endpoints | forwarders | connections
//!   describe connection ID
//!   watch connections
//!   check
//! ```
//!
//! - `--registry` / `NSM_REGISTRY_URL` (default `tcp://localhost:5002`, where `nsm registry` listens by
//!   default).
//! - `--nsmgr` / `NSM_CTL_NSMGRS`: the NSMgrs to ask about connections. Without it they are discovered
//!   from the registry: forwarders and endpoints registered through an NSMgr carry the NSMgr's public
//!   URL there (its `localbypass` rewrites their URL), so the distinct endpoint URLs are the NSMgrs.
//! - Transport: mTLS when `NSM_IDENTITY_DIR` or `SPIFFE_ENDPOINT_SOCKET` is set, plaintext otherwise.
//!
//! Exit codes: 0 success, 1 a request failed (or a `check` failed), 2 bad flags.

pub mod check;
pub mod describe;
pub mod get;
pub mod mesh;
pub mod output;
pub mod watch;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use nsm_core::Clock;
use serde::Serialize;

use super::common::{parse_duration, parse_url, parse_urls, run_async};
use super::config::ConfigError;
use mesh::Mesh;
use output::{Format, Table, structured};

/// `nsm ctl` options.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "\
NSMgrs: without --nsmgr, the NSMgrs are the distinct URLs endpoints are registered under: an NSMgr's \
localbypass registers its forwarders and endpoints with the NSMgr's public URL (its first tcp:// \
listen URL).

Transport: mTLS when NSM_IDENTITY_DIR or SPIFFE_ENDPOINT_SOCKET is set, plaintext otherwise.

Exit codes: 0 success; 1 a request failed, an NSMgr did not answer or a check failed; 2 bad flags.")]
pub struct CtlArgs {
    /// The registry (`nsm registry` listens on tcp://:5002 by default).
    #[arg(
        long,
        env = "NSM_REGISTRY_URL",
        default_value = "tcp://localhost:5002",
        global = true
    )]
    pub registry: String,
    /// NSMgrs to ask about connections, comma-separated tcp:// or unix:// URLs (default: discovered
    /// from the registry, see below).
    #[arg(long, env = "NSM_CTL_NSMGRS", global = true)]
    pub nsmgr: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Format,
    /// Time for each dial and each call (Go duration).
    #[arg(long, env = "NSM_CTL_TIMEOUT", default_value = "5s", global = true)]
    pub timeout: String,
    /// Service forwarders register under.
    #[arg(
        long,
        env = "NSM_FORWARDER_NETWORK_SERVICE_NAME",
        default_value = "forwarder",
        global = true
    )]
    pub forwarder_service: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `nsm ctl` verbs.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// List services, endpoints, forwarders or connections.
    #[command(subcommand)]
    Get(GetWhat),
    /// Show one connection hop by hop.
    #[command(subcommand)]
    Describe(DescribeWhat),
    /// Stream connection events until Ctrl-C.
    #[command(subcommand)]
    Watch(WatchWhat),
    /// Check the mesh: registry, forwarders per node, NSMgrs, registrations, identities.
    Check,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum GetWhat {
    /// Network services in the registry: name, payload, number of matches.
    #[command(alias = "svc", alias = "ns")]
    Services,
    /// Endpoints in the registry (forwarders included): name, services, labels, URL, expiry.
    #[command(alias = "nse", alias = "nses")]
    Endpoints,
    /// Forwarders (endpoints of the forwarder service) with their node.
    #[command(alias = "fwd")]
    Forwarders,
    /// Connections the NSMgrs hold: id, service, endpoint, path, state, mechanism.
    #[command(alias = "conn", alias = "connection")]
    Connections,
}

/// What `describe` shows.
#[derive(Debug, Clone, Subcommand)]
pub enum DescribeWhat {
    /// A connection, by its id or the id of any of its path segments.
    #[command(alias = "conn", alias = "connections")]
    Connection {
        /// Connection id (e.g. the client's `nsc-0`).
        id: String,
    },
}

/// What `watch` follows.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum WatchWhat {
    /// Connection events (INITIAL, UPDATE, DELETE) from every NSMgr.
    #[command(alias = "conn", alias = "connection")]
    Connections,
}

fn config(
    args: &CtlArgs,
) -> Result<
    (
        nsm_api::url::NsmUrl,
        Option<Vec<nsm_api::url::NsmUrl>>,
        std::time::Duration,
    ),
    ConfigError,
> {
    let registry = parse_url("--registry / NSM_REGISTRY_URL", &args.registry)?;
    let nsmgrs = match args.nsmgr.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(parse_urls("--nsmgr / NSM_CTL_NSMGRS", s)?),
        None => None,
    };
    let timeout = parse_duration("--timeout / NSM_CTL_TIMEOUT", &args.timeout)?;
    Ok((registry, nsmgrs, timeout))
}

/// Runs `nsm ctl`.
pub fn run(args: &CtlArgs) -> ExitCode {
    let (registry, nsmgrs, timeout) = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsm ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let args = args.clone();
    run_async("nsm ctl", async move {
        let security = match mesh::security_from_env().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("nsm ctl: {e}");
                return ExitCode::from(2);
            }
        };
        let mesh = Mesh {
            registry,
            nsmgrs,
            timeout,
            security,
            clock: Clock::system(),
        };
        match dispatch(&mesh, &args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("nsm ctl: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn print<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), String> {
    let text = match structured(format, value) {
        Some(r) => r?,
        None => table(),
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the output: {e}"))
}

fn render_table(t: &Table) -> String {
    t.render()
}

async fn dispatch(mesh: &Mesh, args: &CtlArgs) -> Result<ExitCode, String> {
    let format = args.output;
    match &args.command {
        CtlCommand::Get(GetWhat::Services) => {
            let rows = get::service_rows(&mesh.services().await?);
            print(format, &rows, || render_table(&get::service_table(&rows)))?;
        }
        CtlCommand::Get(GetWhat::Endpoints) => {
            let rows = get::endpoint_rows(&mesh.endpoints().await?, mesh.clock.now());
            print(format, &rows, || render_table(&get::endpoint_table(&rows)))?;
        }
        CtlCommand::Get(GetWhat::Forwarders) => {
            let eps: Vec<_> = mesh
                .endpoints()
                .await?
                .into_iter()
                .filter(|e| get::is_forwarder(e, &args.forwarder_service))
                .collect();
            let rows = get::endpoint_rows(&eps, mesh.clock.now());
            print(format, &rows, || render_table(&get::forwarder_table(&rows)))?;
        }
        CtlCommand::Get(GetWhat::Connections) => {
            let (rows, errors) = get::connections(mesh).await?;
            print(format, &rows, || {
                render_table(&get::connection_table(&rows))
            })?;
            if !errors.is_empty() {
                for e in errors {
                    eprintln!("nsm ctl: {e}");
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        CtlCommand::Describe(DescribeWhat::Connection { id }) => {
            let view = describe::describe(mesh, id).await?;
            print(format, &view, || describe::render(&view))?;
        }
        CtlCommand::Watch(WatchWhat::Connections) => watch::run(mesh, format).await?,
        CtlCommand::Check => {
            let report = check::run(mesh, &args.forwarder_service).await;
            print(format, &report, || check::render(&report))?;
            if !report.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
