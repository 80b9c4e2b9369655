//! `nsm nsc`: a client that requests the network services in `NSM_NETWORK_SERVICES` from its NSMgr
//! (Go `cmd-nsc`), keeps the connections refreshed and healed, and closes them on SIGTERM.
//!
//! For each URL (`kernel://service[@domain]/ifname?label=value`) it prints one line
//! `connected <id> <service> path=<hop> -> <hop>… mechanism=<TYPE> interface=<name> src=<addrs> dst=<addrs>`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nsm_api::url::{NetworkServiceUrl, NsmUrl};
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_chains::client::{ClientOptions, new_client};
use nsm_core::{Chain, Clock, Ctx};
use nsm_identity::TransportSecurity;
use nsm_networkservice::livenesscheck::{LivenessCheckClient, LivenessProbe, ProbeFuture};
use nsm_networkservice::mechanisms::kernel::KernelClient;
use nsm_networkservice::mechanisms::recvfd::RecvFdClient;
use nsm_networkservice::mechanisms::sendfd::SendFdClient;
use nsm_networkservice::retry::RetryClient;

use super::common::{
    bad, parse_duration, parse_signed_duration, parse_url, run_async, wait_for_signal,
};
use super::config::{ConfigError, init_logging};

/// `nsm nsc` options; every flag also reads the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct NscArgs {
    /// Client name; connection ids are `<name>-<i>`.
    #[arg(long, env = "NSM_NAME", default_value = "nsc")]
    pub name: String,
    /// The NSMgr.
    #[arg(
        long,
        env = "NSM_CONNECT_TO",
        default_value = "unix:///var/lib/networkservicemesh/nsm.io.sock"
    )]
    pub connect_to: String,
    /// Network services to request, comma-separated (`kernel://icmp-responder/nsm-1`).
    #[arg(long, env = "NSM_NETWORK_SERVICES", default_value = "")]
    pub network_services: String,
    /// Time per request attempt (retried until it succeeds), also for Close.
    #[arg(long, env = "NSM_REQUEST_TIMEOUT", default_value = "15s")]
    pub request_timeout: String,
    /// Time to dial the NSMgr.
    #[arg(long, env = "NSM_DIAL_TIMEOUT", default_value = "5s")]
    pub dial_timeout: String,
    /// Longest token lifetime (Go duration; a negative one issues already-expired tokens).
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
    /// Request, print, close and exit instead of holding the connections until SIGTERM.
    #[arg(long)]
    pub once: bool,
    /// Rego policy files or directories for authorize, comma-separated (default: the built-in
    /// policies; reloaded when they change).
    #[arg(long, env = "NSM_POLICY")]
    pub policy: Option<String>,
    /// Data-path liveness check: ICMP echo to the endpoint's addresses this often (Go duration; 0 = off).
    #[arg(long, env = "NSM_LIVENESS_CHECK_INTERVAL", default_value = "0")]
    pub liveness_check_interval: String,
    /// Failed liveness checks in a row before the connection is healed.
    #[arg(long, env = "NSM_LIVENESS_CHECK_THRESHOLD", default_value = "3")]
    pub liveness_check_threshold: String,
}

struct NscConfig {
    connect_to: NsmUrl,
    services: Vec<NetworkServiceUrl>,
    request_timeout: Duration,
    dial_timeout: Duration,
    token_lifetime: (bool, Duration),
    log_level: tracing::Level,
    /// Liveness check interval and threshold, if on.
    liveness: Option<(Duration, u32)>,
}

impl NscConfig {
    fn from_args(args: &NscArgs) -> Result<Self, ConfigError> {
        let what = "--network-services / NSM_NETWORK_SERVICES";
        let mut services = Vec::new();
        for u in args
            .network_services
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            services.push(NetworkServiceUrl::parse(u).map_err(|e| bad(what, u, e))?);
        }
        if services.is_empty() {
            return Err(bad(
                what,
                &args.network_services,
                "no network service to request",
            ));
        }
        Ok(Self {
            connect_to: parse_url("--connect-to / NSM_CONNECT_TO", &args.connect_to)?,
            services,
            request_timeout: parse_duration(
                "--request-timeout / NSM_REQUEST_TIMEOUT",
                &args.request_timeout,
            )?,
            dial_timeout: parse_duration("--dial-timeout / NSM_DIAL_TIMEOUT", &args.dial_timeout)?,
            token_lifetime: parse_signed_duration(
                "--max-token-lifetime / NSM_MAX_TOKEN_LIFETIME",
                &args.max_token_lifetime,
            )?,
            log_level: super::common::log_level(args.log_level.as_deref())?,
            liveness: liveness(args)?,
        })
    }
}

fn liveness(args: &NscArgs) -> Result<Option<(Duration, u32)>, ConfigError> {
    let interval = parse_duration(
        "--liveness-check-interval / NSM_LIVENESS_CHECK_INTERVAL",
        &args.liveness_check_interval,
    )?;
    let what = "--liveness-check-threshold / NSM_LIVENESS_CHECK_THRESHOLD";
    let threshold: u32 = args
        .liveness_check_threshold
        .trim()
        .parse()
        .map_err(|e| bad(what, &args.liveness_check_threshold, e))?;
    if threshold == 0 {
        return Err(bad(what, "0", "must be at least 1"));
    }
    Ok((!interval.is_zero()).then_some((interval, threshold)))
}

/// The liveness probe of `nsm nsc`: one ICMP echo from this process's namespace (the client pod).
struct IcmpProbe;

impl LivenessProbe for IcmpProbe {
    fn alive(&self, dst: std::net::IpAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || nsm_dataplane::icmp::ping_here(dst, 1, timeout))
                .await
                .is_ok_and(|r| r.is_ok_and(|rtts| !rtts.is_empty()))
        })
    }
}

/// One line describing an established connection.
pub fn describe(conn: &Connection) -> String {
    let path = conn.path_or_default().names().join(" -> ");
    let mech = conn.mechanism.as_ref();
    let ip = conn.context.as_ref().and_then(|c| c.ip_context.as_ref());
    format!(
        "connected {} {} path={} mechanism={} interface={} src={} dst={}",
        conn.id,
        conn.network_service,
        path,
        mech.map_or("-", |m| m.r#type.as_str()),
        mech.and_then(|m| m.interface_name()).unwrap_or("-"),
        ip.map_or(String::new(), |i| i.src_ip_addrs.join(",")),
        ip.map_or(String::new(), |i| i.dst_ip_addrs.join(",")),
    )
}

/// Runs `nsm nsc`.
pub fn run(args: &NscArgs) -> ExitCode {
    let cfg = match NscConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsm nsc: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_level);
    let args = args.clone();
    run_async("nsm nsc", async move { serve(args, cfg).await })
}

fn client_for(
    args: &NscArgs,
    cfg: &NscConfig,
    url: &NetworkServiceUrl,
    security: &TransportSecurity,
    authorize: nsm_core::chain::Element,
) -> Chain {
    let (negative, lifetime) = cfg.token_lifetime;
    let tokens = super::common::tokens(security, negative, lifetime);
    let kernel = KernelClient::new(url.interface.clone())
        .with_netns_url(netns_url(&cfg.connect_to, std::process::id()));
    // recvfd claims the copy of the namespace the NSMgr's sendfd passes back on Close.
    let mut additional: Vec<nsm_core::chain::Element> = vec![
        Arc::new(kernel),
        Arc::new(RecvFdClient::new()),
        Arc::new(SendFdClient::new()),
    ];
    if let Some((interval, threshold)) = cfg.liveness {
        additional.insert(
            0,
            Arc::new(LivenessCheckClient::new(
                Arc::new(IcmpProbe),
                interval,
                threshold,
            )),
        );
    }
    let client = new_client(ClientOptions {
        url: Some(cfg.connect_to.clone()),
        refresh: true,
        heal: true,
        additional,
        dial_timeout: cfg.dial_timeout,
        security: security.clone(),
        authorize,
        ..ClientOptions::new(args.name.clone(), tokens)
    });
    Chain::new(
        "nsc",
        vec![Arc::new(
            RetryClient::new(Arc::new(client)).with_try_timeout(cfg.request_timeout),
        )],
    )
}

/// How we name our network namespace to the NSMgr. On a unix socket: `/proc/thread-self/ns/net`, which
/// sendfd passes as an fd (`inode://` on the wire, as Go NSCs do), so the NSMgr and forwarder need not
/// share our PID namespace — and a peer that got the path instead could only open its own namespace
/// (the data plane refuses it) rather than whatever our pid means in its PID namespace. Over TCP
/// there is no fd passing: `/proc/<pid>/ns/net`, for peers that share our PID namespace.
pub(crate) fn netns_url(next_hop: &NsmUrl, pid: u32) -> String {
    match next_hop {
        NsmUrl::Unix(_) => nsm_networkservice::mechanisms::kernel::NETNS_URL.to_string(),
        _ => format!("file:///proc/{pid}/ns/net"),
    }
}

async fn serve(args: NscArgs, cfg: NscConfig) -> ExitCode {
    let clock = Clock::system();
    let security = match super::common::transport("nsm nsc").await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let policies = match super::common::policies("nsm nsc", args.policy.as_deref(), &security, true)
    {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut held: Vec<(Chain, Connection)> = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for (i, url) in cfg.services.iter().enumerate() {
        let chain = client_for(
            &args,
            &cfg,
            url,
            &security,
            super::common::client_authorize(policies.clone()),
        );
        let request = NetworkServiceRequest {
            connection: Some(Connection {
                id: format!("{}-{i}", args.name),
                network_service: url.network_service(),
                labels: url.labels.clone(),
                ..Default::default()
            }),
            mechanism_preferences: vec![url.mechanism()],
        };
        // retry keeps trying until this overall deadline; each attempt has NSM_REQUEST_TIMEOUT.
        let mut ctx = Ctx::new(clock).with_timeout(cfg.request_timeout);
        match chain.run_request(&mut ctx, request).await {
            Ok(conn) => {
                println!("{}", describe(&conn));
                held.push((chain, conn));
            }
            Err(e) => {
                eprintln!("nsm nsc: request for {url} failed: {e}");
                code = ExitCode::FAILURE;
                break;
            }
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if code == ExitCode::SUCCESS
        && !args.once
        && let Err(e) = wait_for_signal().await
    {
        eprintln!("nsm nsc: cannot wait for signals: {e}");
    }
    for (chain, conn) in held {
        let mut ctx = Ctx::new(clock).with_timeout(cfg.request_timeout);
        if let Err(e) = chain.run_close(&mut ctx, conn.clone()).await {
            eprintln!("nsm nsc: close of {} failed: {e}", conn.id);
        }
    }
    code
}
