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
use nsm_chains::registry_client::nse_registry_client_with;
use nsm_core::{Clock, Ctx};
use nsm_dataplane::netns::Netns;
use nsm_dataplane::{Executor, KernelDataplane, PlanConfig};
use nsm_identity::TransportSecurity;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::common::{
    bad, parse_duration, parse_labels, parse_signed_duration, parse_url, parse_urls, policies,
    run_async, serve_all, server_authorize, stop_all, tokens, transport, wait_for_signal,
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
    #[arg(
        long,
        env = "NSM_CONNECT_TO",
        default_value = "unix:///var/lib/networkservicemesh/nsm.io.sock"
    )]
    pub connect_to: String,
    /// Where to serve (default: a unix socket in the temporary directory); also the registered URL.
    #[arg(long, env = "NSM_LISTEN_ON")]
    pub listen_on: Option<String>,
    /// Longest token lifetime (Go duration).
    #[arg(
        long,
        env = "NSM_MAX_TOKEN_LIFETIME",
        default_value = "10m",
        allow_hyphen_values = true
    )]
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
    /// Data plane: `kernel` (veth + VXLAN through netlink; needs CAP_NET_ADMIN) or `noop` (negotiate
    /// connections without wiring anything).
    #[arg(long, env = "NSM_DATAPLANE", default_value = "kernel")]
    pub dataplane: String,
    /// Log level (TRACE, DEBUG, INFO, WARN, ERROR).
    #[arg(long, env = "NSM_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Print the chain element names and exit.
    #[arg(long)]
    pub print_chain: bool,
    /// Rego policy files or directories for authorize, comma-separated (default: the built-in
    /// policies; reloaded when they change).
    #[arg(long, env = "NSM_POLICY")]
    pub policy: Option<String>,
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
    /// Use the kernel data plane (otherwise no-op).
    pub kernel: bool,
    log_level: tracing::Level,
}

impl ForwarderConfig {
    /// Validates `args`.
    pub fn from_args(args: &ForwarderArgs) -> Result<Self, ConfigError> {
        let listen = match &args.listen_on {
            Some(l) => parse_urls("--listen-on / NSM_LISTEN_ON", l)?,
            None => vec![NsmUrl::Unix(std::env::temp_dir().join(format!(
                "nsm-forwarder-{}-{}.sock",
                args.name,
                std::process::id()
            )))],
        };
        let (negative, lifetime) = parse_signed_duration(
            "--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME",
            &args.max_token_lifetime,
        )?;
        if negative {
            return Err(bad(
                "--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME",
                &args.max_token_lifetime,
                "must be positive for a forwarder",
            ));
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
        let kernel = match args.dataplane.as_str() {
            "kernel" => true,
            "noop" => false,
            other => {
                return Err(bad(
                    "--dataplane / NSM_DATAPLANE",
                    other,
                    "supported: kernel, noop",
                ));
            }
        };
        Ok(Self {
            connect_to: parse_url("--connect-to / NSM_CONNECT_TO", &args.connect_to)?,
            listen,
            labels: parse_labels("--labels / NSM_LABELS", &args.labels)?,
            token_lifetime: lifetime,
            dial_timeout: parse_duration("--dial-timeout / NSM_DIAL_TIMEOUT", &args.dial_timeout)?,
            tunnel_ip,
            vxlan_port: if port == 0 {
                nsm_api::mechanisms::vxlan::DEFAULT_PORT
            } else {
                port
            },
            kernel,
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
    run_async("nsm forwarder", async move {
        let security = if args.print_chain {
            TransportSecurity::Insecure
        } else {
            match transport("nsm forwarder").await {
                Ok(s) => s,
                Err(code) => return code,
            }
        };
        if !cfg.kernel {
            return serve(args, cfg, &NoopDataplane, security).await;
        }
        match kernel_dataplane(&args.name, &cfg).await {
            Ok(dp) => serve(args, cfg, &dp, security).await,
            Err(e) => {
                eprintln!("nsm forwarder: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The kernel data plane in this process's network namespace, after removing whatever an earlier run
/// of this forwarder left behind.
async fn kernel_dataplane(name: &str, cfg: &ForwarderConfig) -> Result<KernelDataplane, String> {
    let tunnel_ip = match cfg.tunnel_ip {
        Some(ip) => ip,
        None => default_source_ip().ok_or_else(|| {
            "NSM_TUNNEL_IP / --tunnel-ip is not set and there is no default route to take an address from".to_string()
        })?,
    };
    let node = Netns::current().map_err(|e| format!("cannot open this network namespace: {e}"))?;
    let executor =
        Arc::new(Executor::new(node, name).map_err(|e| format!("cannot open netlink: {e}"))?);
    // Keep what an earlier run built (refreshes and heals claim it without touching live traffic);
    // remove what nobody claimed within one refresh interval.
    match executor.adopt().await {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(
                "forwarder: adopt {} connections of an earlier run: {ids:?}",
                ids.len()
            );
            let (executor, grace) = (executor.clone(), cfg.token_lifetime / 3);
            tokio::spawn(async move {
                Clock::system().sleep(grace).await;
                match executor.sweep_unclaimed().await {
                    Ok(removed) if !removed.is_empty() => tracing::info!(
                        "forwarder: removed {} unclaimed links of an earlier run: {removed:?}",
                        removed.len()
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("forwarder: removing unclaimed links failed: {e}"),
                }
            });
        }
        Ok(_) => {}
        Err(e) => return Err(format!("cannot read links of an earlier run: {e}")),
    }
    let mut plan = PlanConfig::new(name);
    plan.vxlan_port = cfg.vxlan_port;
    plan.underlay_mtu = underlay_mtu(tunnel_ip).unwrap_or(1500);
    tracing::info!(%tunnel_ip, underlay_mtu = plan.underlay_mtu, vxlan_port = cfg.vxlan_port, "forwarder: kernel data plane");
    KernelDataplane::new(executor, plan, tunnel_ip)
        .map_err(|e| format!("cannot set up the data plane: {e}"))
}

/// The source address the kernel would use for the default route (no packet is sent).
fn default_source_ip() -> Option<IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// MTU of the interface holding `ip`, from `ip -o addr` and sysfs.
fn underlay_mtu(ip: IpAddr) -> Option<u32> {
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ifname = text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let _index = f.next()?;
        let name = f.next()?;
        let _family = f.next()?;
        let addr = f.next()?;
        (addr.split('/').next()? == ip.to_string()).then(|| name.to_string())
    })?;
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn serve(
    args: ForwarderArgs,
    cfg: ForwarderConfig,
    dataplane: &dyn Dataplane,
    security: TransportSecurity,
) -> ExitCode {
    let clock = Clock::system();
    let authorize = match policies("nsm forwarder", args.policy.as_deref(), &security, false) {
        Ok(p) => server_authorize(p),
        Err(code) => return code,
    };
    let fwd = Forwarder::new(
        ForwarderOptions {
            dial_timeout: cfg.dial_timeout,
            security: security.clone(),
            authorize,
            ..ForwarderOptions::new(
                args.name.clone(),
                cfg.connect_to.clone(),
                tokens(&security, false, cfg.token_lifetime),
                clock,
            )
        },
        dataplane,
    );
    if args.print_chain {
        println!("{}", fwd.chain().element_names().join(" -> "));
        return ExitCode::SUCCESS;
    }
    let servers = match serve_all(&cfg.listen, fwd.routes(), &Endpoint::SERVICES, &security).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nsm forwarder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let reg = registration(
        &args.name,
        &args.nsname,
        cfg.labels.clone(),
        servers[0].url(),
    );
    let client = nse_registry_client_with(
        cfg.connect_to.clone(),
        Duration::from_secs(5),
        &stop,
        &security,
    );
    let ctx = || Ctx::new(clock).with_timeout(Duration::from_secs(15));
    if let Err(e) = client.run_register(&mut ctx(), reg.clone()).await {
        eprintln!(
            "nsm forwarder: cannot register with {}: {e}",
            cfg.connect_to
        );
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
