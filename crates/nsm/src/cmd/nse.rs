//! `nsm nse`: the icmp-responder endpoint (Go `cmd-nse-icmp-responder`).
//!
//! Serves an endpoint that hands each client a point-to-point address pair from `NSM_CIDR_PREFIX`,
//! registers its network services (unless `NSM_REGISTER_SERVICE=false`) and itself with the NSMgr at
//! `NSM_CONNECT_TO`, keeps the registration refreshed, and unregisters on SIGTERM. Serving on a unix
//! socket and talking to the NSMgr over one, it passes its socket as an fd with the registration
//! (registry `sendfd`), so an NSMgr that cannot see the socket's path (another container's
//! filesystem) still reaches it.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use nsm_api::connectioncontext::DnsConfig;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_api::url::NsmUrl;
use nsm_chains::endpoint::{Endpoint, EndpointOptions};
use nsm_chains::icmp_responder::IcmpResponder;
use nsm_chains::registry_client::{ns_registry_client_with, nse_registry_client_with};
use nsm_core::{Clock, Ctx};
use tokio_util::sync::CancellationToken;

use super::common::{
    bad, parse_duration, parse_labels, parse_signed_duration, parse_url, parse_urls, policies,
    run_async, serve_all, server_authorize, stop_all, tokens, transport, wait_for_signal,
};
use super::config::{ConfigError, init_logging};

/// `nsm nse` options; every flag also reads the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct NseArgs {
    /// Endpoint name.
    #[arg(long, env = "NSM_NAME", default_value = "icmp-server")]
    pub name: String,
    /// The NSMgr to register with.
    #[arg(
        long,
        env = "NSM_CONNECT_TO",
        default_value = "unix:///var/lib/networkservicemesh/nsm.io.sock"
    )]
    pub connect_to: String,
    /// Where to serve (default: a unix socket in the temporary directory).
    #[arg(long, env = "NSM_LISTEN_ON")]
    pub listen_on: Option<String>,
    /// Network services provided, comma-separated.
    #[arg(long, env = "NSM_SERVICE_NAMES", default_value = "icmp-responder")]
    pub service_names: String,
    /// Payload of the registered services (ETHERNET or IP).
    #[arg(long, env = "NSM_PAYLOAD", default_value = "ETHERNET")]
    pub payload: String,
    /// Labels under every service, `k:v,k2:v2`.
    #[arg(long, env = "NSM_LABELS", default_value = "")]
    pub labels: String,
    /// Address pools, comma-separated CIDRs.
    #[arg(long, env = "NSM_CIDR_PREFIX", default_value = "169.254.0.0/16")]
    pub cidr_prefix: String,
    /// DNS configs handed to clients, as a JSON array of {"dns_server_ips": [...], "search_domains": [...]}.
    #[arg(long, env = "NSM_DNS_CONFIGS", default_value = "[]")]
    pub dns_configs: String,
    /// Also register the network services.
    #[arg(long, env = "NSM_REGISTER_SERVICE", default_value = "true")]
    pub register_service: String,
    /// Exit after this long without connections (0 = never).
    #[arg(long, env = "NSM_IDLE_TIMEOUT", default_value = "0")]
    pub idle_timeout: String,
    /// Longest token lifetime (Go duration).
    #[arg(
        long,
        env = "NSM_MAX_TOKEN_LIFETIME",
        default_value = "10m",
        allow_hyphen_values = true
    )]
    pub max_token_lifetime: String,
    /// Log level (TRACE, DEBUG, INFO, WARN, ERROR).
    #[arg(long, env = "NSM_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Rego policy files or directories for authorize, comma-separated (default: the built-in
    /// policies; reloaded when they change).
    #[arg(long, env = "NSM_POLICY")]
    pub policy: Option<String>,
}

/// Validated `nsm nse` configuration.
#[derive(Debug, Clone)]
pub struct NseConfig {
    connect_to: NsmUrl,
    listen: Vec<NsmUrl>,
    services: Vec<String>,
    labels: BTreeMap<String, String>,
    cidrs: Vec<IpNet>,
    dns: Vec<DnsConfig>,
    register_service: bool,
    idle_timeout: Duration,
    max_token_lifetime: Duration,
    log_level: tracing::Level,
    policy: Option<String>,
}

#[derive(serde::Deserialize)]
struct DnsConfigJson {
    #[serde(default)]
    dns_server_ips: Vec<String>,
    #[serde(default)]
    search_domains: Vec<String>,
}

impl NseConfig {
    /// Validates `args`.
    pub fn from_args(args: &NseArgs) -> Result<Self, ConfigError> {
        let connect_to = parse_url("--connect-to / NSM_CONNECT_TO", &args.connect_to)?;
        let listen = match &args.listen_on {
            Some(l) => parse_urls("--listen-on / NSM_LISTEN_ON", l)?,
            None => vec![NsmUrl::Unix(std::env::temp_dir().join(format!(
                "nsm-nse-{}-{}.sock",
                args.name,
                std::process::id()
            )))],
        };
        let services: Vec<String> = args
            .service_names
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if services.is_empty() {
            return Err(bad(
                "--service-names / NSM_SERVICE_NAMES",
                &args.service_names,
                "no service given",
            ));
        }
        let mut cidrs = Vec::new();
        for c in args
            .cidr_prefix
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            cidrs.push(
                c.parse::<IpNet>()
                    .map_err(|e| bad("--cidr-prefix / NSM_CIDR_PREFIX", c, e))?,
            );
        }
        if cidrs.is_empty() {
            return Err(bad(
                "--cidr-prefix / NSM_CIDR_PREFIX",
                &args.cidr_prefix,
                "no prefix given",
            ));
        }
        let dns: Vec<DnsConfigJson> = serde_json::from_str(&args.dns_configs)
            .map_err(|e| bad("--dns-configs / NSM_DNS_CONFIGS", &args.dns_configs, e))?;
        let register_service = match args.register_service.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "t" | "yes" => true,
            "false" | "0" | "f" | "no" => false,
            _ => {
                return Err(bad(
                    "--register-service / NSM_REGISTER_SERVICE",
                    &args.register_service,
                    "expected true or false",
                ));
            }
        };
        let (negative, lifetime) = parse_signed_duration(
            "--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME",
            &args.max_token_lifetime,
        )?;
        if negative {
            return Err(bad(
                "--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME",
                &args.max_token_lifetime,
                "must be positive for an endpoint",
            ));
        }
        Ok(Self {
            connect_to,
            listen,
            services,
            labels: parse_labels("--labels / NSM_LABELS", &args.labels)?,
            cidrs,
            dns: dns
                .into_iter()
                .map(|d| DnsConfig {
                    dns_server_ips: d.dns_server_ips,
                    search_domains: d.search_domains,
                })
                .collect(),
            register_service,
            idle_timeout: parse_duration("--idle-timeout / NSM_IDLE_TIMEOUT", &args.idle_timeout)?,
            max_token_lifetime: lifetime,
            log_level: super::common::log_level(args.log_level.as_deref())?,
            policy: args.policy.clone(),
        })
    }
}

/// Runs `nsm nse`.
pub fn run(args: &NseArgs) -> ExitCode {
    let cfg = match NseConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsm nse: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_level);
    let name = args.name.clone();
    let payload = args.payload.clone();
    run_async("nsm nse", serve(name, payload, cfg))
}

async fn serve(name: String, payload: String, cfg: NseConfig) -> ExitCode {
    let clock = Clock::system();
    let security = match transport("nsm nse").await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let authorize = match policies("nsm nse", cfg.policy.as_deref(), &security, false) {
        Ok(p) => server_authorize(p),
        Err(code) => return code,
    };
    let tokens = tokens(&security, false, cfg.max_token_lifetime);
    let mut options = EndpointOptions::new(name.clone(), tokens, clock);
    options.security = security.clone();
    options.authorize = authorize;
    // The icmp-responder chain's sendfd passes this namespace as an fd to a forwarder that dials us
    // on a unix socket (`inode://` on the wire); see `nsc::netns_url`. If we also listen on TCP, the
    // path must mean something to a forwarder in our PID namespace.
    let tcp = cfg.listen.iter().find(|u| !matches!(u, NsmUrl::Unix(_)));
    let netns = match tcp {
        Some(u) => super::nsc::netns_url(u, std::process::id()),
        None => nsm_networkservice::mechanisms::kernel::NETNS_URL.to_string(),
    };
    let nse =
        IcmpResponder::with_netns_url(options, cfg.cidrs.clone(), cfg.dns.clone(), Some(netns));
    let servers = match serve_all(
        &cfg.listen,
        nse.endpoint.routes(),
        &Endpoint::SERVICES,
        &security,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nsm nse: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let dial = Duration::from_secs(5);
    let ctx = || Ctx::new(clock).with_timeout(Duration::from_secs(15));
    if cfg.register_service {
        let ns_client = ns_registry_client_with(cfg.connect_to.clone(), dial, &stop, &security);
        for svc in &cfg.services {
            let ns = NetworkService {
                name: svc.clone(),
                payload: payload.clone(),
                ..Default::default()
            };
            if let Err(e) = ns_client.run_register(&mut ctx(), ns).await {
                eprintln!(
                    "nsm nse: cannot register network service {svc:?} at {}: {e}",
                    cfg.connect_to
                );
                stop_all(servers).await;
                return ExitCode::FAILURE;
            }
        }
    }
    let registration = NetworkServiceEndpoint {
        name: name.clone(),
        network_service_names: cfg.services.clone(),
        network_service_labels: cfg
            .services
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    NetworkServiceLabels {
                        labels: cfg.labels.clone(),
                    },
                )
            })
            .collect(),
        url: servers[0].url().to_string(),
        ..Default::default()
    };
    let nse_client = nse_registry_client_with(cfg.connect_to.clone(), dial, &stop, &security);
    if let Err(e) = nse_client
        .run_register(&mut ctx(), registration.clone())
        .await
    {
        eprintln!("nsm nse: cannot register with {}: {e}", cfg.connect_to);
        stop_all(servers).await;
        return ExitCode::FAILURE;
    }
    tracing::info!(name = %name, url = %servers[0].url(), "nse: registered");
    let idle = idle_watch(&nse.endpoint, cfg.idle_timeout, clock);
    tokio::select! {
        r = wait_for_signal() => if let Err(e) = r {
            eprintln!("nsm nse: cannot wait for signals: {e}");
        },
        () = idle => tracing::info!("nse: idle for {:?}, exiting", cfg.idle_timeout),
    }
    if let Err(e) = nse_client.run_unregister(&mut ctx(), registration).await {
        tracing::warn!("nse: unregister failed: {e}");
    }
    stop.cancel();
    stop_all(servers).await;
    ExitCode::SUCCESS
}

/// Resolves once the endpoint has had no connection for `timeout` (never if zero).
async fn idle_watch(endpoint: &Endpoint, timeout: Duration, clock: Clock) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let mut idle_since = clock.instant();
    loop {
        clock.sleep(Duration::from_millis(200).min(timeout)).await;
        if !endpoint.begin.is_empty() {
            idle_since = clock.instant();
        } else if clock.instant().duration_since(idle_since) >= timeout {
            return;
        }
    }
}
