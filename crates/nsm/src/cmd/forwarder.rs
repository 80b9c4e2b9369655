//! `nsm forwarder`: the forwarder of one node (Go `cmd-forwarder-*`).
//!
//! Serves NetworkService + MonitorConnection on `NSM_LISTEN_ON`, registers itself with the NSMgr at
//! `NSM_CONNECT_TO` as an endpoint of service `NSM_NSNAME` (default `forwarder`) with `NSM_LABELS`
//! (default `p2p:true`), keeps the registration refreshed and unregisters on SIGTERM. The data plane
//! is chosen with `--dataplane` (`noop` negotiates connections without wiring interfaces).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nsm_api::url::NsmUrl;
use nsm_chains::endpoint::Endpoint;
use nsm_chains::forwarder::{Dataplane, Forwarder, ForwarderOptions, NoopDataplane, registration};
use nsm_chains::registry_client::nse_registry_client;
use nsm_core::{Clock, Ctx};
use tokio_util::sync::CancellationToken;

use super::common::{
    bad, parse_duration, parse_labels, parse_signed_duration, parse_url, parse_urls, run_async, serve_all,
    stop_all, token_generator, wait_for_signal,
};
use super::config::{ConfigError, init_logging};

/// `nsm forwarder` options; every flag also reads the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct ForwarderArgs {
    /// Forwarder name.
    #[arg(long, env = "NSM_NAME", default_value = "forwarder")]
    pub name: String,
    /// Labels under the forwarder service, `k:v,k2:v2`.
    #[arg(long, env = "NSM_LABELS", default_value = "p2p:true")]
    pub labels: String,
    /// Service name to register under.
    #[arg(long, env = "NSM_NSNAME", default_value = "forwarder")]
    pub nsname: String,
    /// The NSMgr.
    #[arg(long, env = "NSM_CONNECT_TO", default_value = "unix:///var/lib/networkservicemesh/nsm.io.sock")]
    pub connect_to: String,
    /// Where to serve (default: a unix socket in the temporary directory); also the registered URL.
    #[arg(long, env = "NSM_LISTEN_ON")]
    pub listen_on: Option<String>,
    /// Longest token lifetime (Go duration).
    #[arg(long, env = "NSM_MAX_TOKEN_LIFETIME", default_value = "10m", allow_hyphen_values = true)]
    pub max_token_lifetime: String,
    /// Time to dial next hops.
    #[arg(long, env = "NSM_DIAL_TIMEOUT", default_value = "50ms")]
    pub dial_timeout: String,
    /// Tunnel source address.
    #[arg(long, env = "NSM_TUNNEL_IP")]
    pub tunnel_ip: Option<String>,
    /// VXLAN UDP port (0 = 4789).
    #[arg(long, env = "NSM_VXLAN_PORT", default_value = "0")]
    pub vxlan_port: String,
    /// Data plane: `noop`.
    #[arg(long, env = "NSM_DATAPLANE", default_value = "noop")]
    pub dataplane: String,
    /// Log level (TRACE, DEBUG, INFO, WARN, ERROR).
    #[arg(long, env = "NSM_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Print the chain element names and exit.
    #[arg(long)]
    pub print_chain: bool,
}

/// Validated `nsm forwarder` configuration.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    connect_to: NsmUrl,
    listen: Vec<NsmUrl>,
    labels: BTreeMap<String, String>,
    token_lifetime: Duration,
    dial_timeout: Duration,
    /// Tunnel source address, if given.
    pub tunnel_ip: Option<IpAddr>,
    /// VXLAN port.
    pub vxlan_port: u16,
    log_level: tracing::Level,
}

impl ForwarderConfig {
    /// Validates `args`.
    pub fn from_args(args: &ForwarderArgs) -> Result<Self, ConfigError> {
        let listen = match &args.listen_on {
            Some(l) => parse_urls("--listen-on / NSM_LISTEN_ON", l)?,
            None => vec![NsmUrl::Unix(
                std::env::temp_dir().join(format!("nsm-forwarder-{}-{}.sock", args.name, std::process::id())),
            )],
        };
        let (negative, lifetime) =
            parse_signed_duration("--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME", &args.max_token_lifetime)?;
        if negative {
            return Err(bad("--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME", &args.max_token_lifetime, "must be positive for a forwarder"));
        }
        let tunnel_ip = match args.tunnel_ip.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(ip) => Some(
                ip.split('/')
                    .next()
                    .unwrap_or(ip)
                    .parse::<IpAddr>()
                    .map_err(|e| bad("--tunnel-ip / NSM_TUNNEL_IP", ip, e))?,
            ),
        };
        let port: u16 = args
            .vxlan_port
            .trim()
            .parse()
            .map_err(|e| bad("--vxlan-port / NSM_VXLAN_PORT", &args.vxlan_port, e))?;
        if args.dataplane != "noop" {
            return Err(bad("--dataplane / NSM_DATAPLANE", &args.dataplane, "supported: noop"));
        }
        Ok(Self {
            connect_to: parse_url("--connect-to / NSM_CONNECT_TO", &args.connect_to)?,
            listen,
            labels: parse_labels("--labels / NSM_LABELS", &args.labels)?,
            token_lifetime: lifetime,
            dial_timeout: parse_duration("--dial-timeout / NSM_DIAL_TIMEOUT", &args.dial_timeout)?,
            tunnel_ip,
            vxlan_port: if port == 0 { nsm_api::mechanisms::vxlan::DEFAULT_PORT } else { port },
            log_level: super::common::log_level(args.log_level.as_deref())?,
        })
    }
}

/// Runs `nsm forwarder`.
pub fn run(args: &ForwarderArgs) -> ExitCode {
    let cfg = match ForwarderConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsm forwarder: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_level);
    let args = args.clone();
    run_async("nsm forwarder", async move { serve(args, cfg, &NoopDataplane).await })
}

async fn serve(args: ForwarderArgs, cfg: ForwarderConfig, dataplane: &dyn Dataplane) -> ExitCode {
    let clock = Clock::system();
    let fwd = Forwarder::new(
        ForwarderOptions {
            name: args.name.clone(),
            connect_to: cfg.connect_to.clone(),
            token_generator: token_generator(cfg.token_lifetime),
            dial_timeout: cfg.dial_timeout,
            clock,
        },
        dataplane,
    );
    if args.print_chain {
        println!("{}", fwd.chain().element_names().join(" -> "));
        return ExitCode::SUCCESS;
    }
    let servers = match serve_all(&cfg.listen, fwd.routes(), &Endpoint::SERVICES).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nsm forwarder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let reg = registration(&args.name, &args.nsname, cfg.labels.clone(), servers[0].url());
    let client = nse_registry_client(cfg.connect_to.clone(), Duration::from_secs(5), &stop);
    let ctx = || Ctx::new(clock).with_timeout(Duration::from_secs(15));
    if let Err(e) = client.run_register(&mut ctx(), reg.clone()).await {
        eprintln!("nsm forwarder: cannot register with {}: {e}", cfg.connect_to);
        stop_all(servers).await;
        return ExitCode::FAILURE;
    }
    tracing::info!(name = %args.name, url = %servers[0].url(), "forwarder: registered");
    if let Err(e) = wait_for_signal().await {
        eprintln!("nsm forwarder: cannot wait for signals: {e}");
    }
    if let Err(e) = client.run_unregister(&mut ctx(), reg).await {
        tracing::warn!("forwarder: unregister failed: {e}");
    }
    stop.cancel();
    stop_all(servers).await;
    ExitCode::SUCCESS
}
