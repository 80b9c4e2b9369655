//! `nsm nsmgr`: the Network Service Manager of one node (Go `cmd-nsmgr`).
//!
//! Serves NetworkService, MonitorConnection, both registries and health on every `NSM_LISTEN_ON` URL;
//! the first `tcp://` URL is the public URL other nodes reach it at (an empty host is replaced by the
//! node's first non-loopback IPv4 address). Network services and remote endpoints go to
//! `NSM_REGISTRY_URL`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nsm_api::url::NsmUrl;
use nsm_chains::nsmgr::{Nsmgr, NsmgrOptions};
use nsm_core::Clock;
use nsm_networkservice::clientinfo::ClientInfoLabels;

use nsm_identity::TransportSecurity;

use super::common::{
    parse_duration, parse_signed_duration, parse_url, parse_urls, policies, run_async, serve_all,
    server_authorize, stop_all, tokens, transport, wait_for_signal,
};
use super::config::{ConfigError, init_logging};

/// `nsm nsmgr` options; every flag also reads the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct NsmgrArgs {
    /// Name (path segment name).
    #[arg(long, env = "NSM_NAME", default_value = "nmgr")]
    pub name: String,
    /// URLs to serve on, comma-separated; the first tcp:// one is the public URL.
    #[arg(
        long,
        env = "NSM_LISTEN_ON",
        default_value = "unix:///var/lib/networkservicemesh/nsm.io.sock"
    )]
    pub listen_on: String,
    /// The registry.
    #[arg(long, env = "NSM_REGISTRY_URL", default_value = "tcp://localhost:5001")]
    pub registry_url: String,
    /// Longest token lifetime (Go duration).
    #[arg(
        long,
        env = "NSM_MAX_TOKEN_LIFETIME",
        default_value = "10m",
        allow_hyphen_values = true
    )]
    pub max_token_lifetime: String,
    /// Time to dial forwarders and the registry (Go duration).
    #[arg(long, env = "NSM_DIAL_TIMEOUT", default_value = "100ms")]
    pub dial_timeout: String,
    /// Service forwarders register under.
    #[arg(
        long,
        env = "NSM_FORWARDER_NETWORK_SERVICE_NAME",
        default_value = "forwarder"
    )]
    pub forwarder_network_service_name: String,
    /// Node name (the `nodeName` label).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Pod name (the `podName` label).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Cluster name (the `clusterName` label).
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Log level (TRACE, DEBUG, INFO, WARN, ERROR).
    #[arg(long, env = "NSM_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Rego policy files or directories for authorize, comma-separated (default: the built-in
    /// policies; reloaded when they change).
    #[arg(long, env = "NSM_POLICY")]
    pub policy: Option<String>,
    /// Print the chain element names and exit.
    #[arg(long)]
    pub print_chain: bool,
}

/// Validated `nsm nsmgr` configuration.
#[derive(Debug, Clone)]
pub struct NsmgrConfig {
    /// Where to serve.
    pub listen: Vec<NsmUrl>,
    /// The URL other nodes use.
    pub public_url: NsmUrl,
    /// Options of the chains.
    pub registry_url: NsmUrl,
    /// Token lifetime.
    pub max_token_lifetime: Duration,
    /// Dial timeout.
    pub dial_timeout: Duration,
    /// Log level.
    pub log_level: tracing::Level,
}

impl NsmgrConfig {
    /// Validates `args`.
    pub fn from_args(args: &NsmgrArgs) -> Result<Self, ConfigError> {
        let listen = parse_urls("--listen-on / NSM_LISTEN_ON", &args.listen_on)?;
        let public_url = listen
            .iter()
            .find(|u| matches!(u, NsmUrl::Tcp { .. }))
            .map(public_address)
            .unwrap_or_else(|| listen[0].clone());
        let registry_url = parse_url("--registry-url / NSM_REGISTRY_URL", &args.registry_url)?;
        let (negative, lifetime) = parse_signed_duration(
            "--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME",
            &args.max_token_lifetime,
        )?;
        if negative {
            return Err(ConfigError(
                "invalid --max-token-lifetime / NSM_MAX_TOKEN_LIFETIME: an NSMgr needs a positive lifetime".into(),
            ));
        }
        Ok(Self {
            listen,
            public_url,
            registry_url,
            max_token_lifetime: lifetime,
            dial_timeout: parse_duration("--dial-timeout / NSM_DIAL_TIMEOUT", &args.dial_timeout)?,
            log_level: super::common::log_level(args.log_level.as_deref())?,
        })
    }
}

/// Replaces an empty host (`tcp://:5001`) with this node's first non-loopback IPv4 address.
fn public_address(url: &NsmUrl) -> NsmUrl {
    match url {
        NsmUrl::Tcp { host, port } if host.is_empty() || host == "0.0.0.0" => NsmUrl::Tcp {
            host: first_non_loopback_ipv4().unwrap_or_else(|| "127.0.0.1".into()),
            port: *port,
        },
        other => other.clone(),
    }
}

fn first_non_loopback_ipv4() -> Option<String> {
    // The kernel picks the source address it would use for a route; no packet is sent by connect().
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// Runs `nsm nsmgr`.
pub fn run(args: &NsmgrArgs) -> ExitCode {
    let cfg = match NsmgrConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsm nsmgr: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_level);
    let args = args.clone();
    run_async("nsm nsmgr", async move {
        let security = if args.print_chain {
            TransportSecurity::Insecure
        } else {
            match transport("nsm nsmgr").await {
                Ok(s) => s,
                Err(code) => return code,
            }
        };
        let policies = match policies("nsm nsmgr", args.policy.as_deref(), &security, false) {
            Ok(p) => p,
            Err(code) => return code,
        };
        let mut o = NsmgrOptions::new(
            args.name.clone(),
            cfg.public_url.clone(),
            tokens(&security, false, cfg.max_token_lifetime),
        );
        o.security = security.clone();
        o.authorize = server_authorize(policies);
        o.registry_url = Some(cfg.registry_url.clone());
        o.labels = ClientInfoLabels {
            node_name: args.node_name.clone(),
            pod_name: args.pod_name.clone(),
            cluster_name: args.cluster_name.clone(),
        };
        o.forwarder_service_name = args.forwarder_network_service_name.clone();
        o.dial_timeout = cfg.dial_timeout;
        o.clock = Clock::system();
        let nsmgr = Nsmgr::new(o);
        if args.print_chain {
            println!("{}", nsmgr.chain().element_names().join(" -> "));
            println!(
                "nse registry: {}",
                nsmgr.nse_registry.element_names().join(" -> ")
            );
            println!(
                "ns registry: {}",
                nsmgr.ns_registry.element_names().join(" -> ")
            );
            return ExitCode::SUCCESS;
        }
        let servers =
            match serve_all(&cfg.listen, nsmgr.routes(), &Nsmgr::SERVICES, &security).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("nsm nsmgr: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tracing::info!(name = %args.name, public_url = %cfg.public_url, registry = %cfg.registry_url, "nsmgr: ready");
        if let Err(e) = wait_for_signal().await {
            eprintln!("nsm nsmgr: cannot wait for signals: {e}");
            return ExitCode::FAILURE;
        }
        tracing::info!("nsmgr: shutting down");
        stop_all(servers).await;
        drop(nsmgr);
        ExitCode::SUCCESS
    })
}
