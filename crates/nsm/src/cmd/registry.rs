//! `nsm registry`: the registry server (Go `cmd-registry-memory`), on the memory store or on etcd.
//!
//! Serves `registry.NetworkServiceRegistry`, `registry.NetworkServiceEndpointRegistry` and gRPC health
//! on every URL of `--listen` / `REGISTRY_MEMORY_LISTEN_ON` (comma-separated, `tcp://host:port` or
//! `unix:///path`). Prints `listening on <url>` (with the bound port) to stdout for each, then
//! `ready` once every URL serves. Bad
//! configuration exits with code 2 naming the flag and variable; SIGTERM/SIGINT stop it cleanly (0).

use std::any::Any;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::Args;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_identity::TransportSecurity;
use nsm_registry::ValidateQueryServer;
use nsm_registry::grpc::{NetworkServiceEndpointRegistryGrpc, NetworkServiceRegistryGrpc};
use nsm_registry::validatequery::QueryCheck;
use nsm_registry_etcd::{EtcdClient, EtcdRegistry};
use tonic::service::Routes;

use super::common::{bad, wait_for_signal};
use super::config::{ConfigError, init_logging, parse_go_duration, parse_log_level};

/// How long `connect` waits to dial another registry (the proxy registry).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// `nsm registry` options; every flag also reads the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// URLs to serve on, comma-separated (tcp://host:port, unix:///path).
    #[arg(long, env = "REGISTRY_MEMORY_LISTEN_ON", default_value = "tcp://:5002")]
    pub listen: String,
    /// Store: `memory`, or `etcd://host:port[,host:port…]`.
    #[arg(long, env = "NSM_REGISTRY_STORE", default_value = "memory")]
    pub store: String,
    /// Key prefix in etcd (several meshes can share one etcd with different prefixes).
    #[arg(long, env = "NSM_REGISTRY_ETCD_PREFIX", default_value = "/nsm")]
    pub etcd_prefix: String,
    /// How long an endpoint lives without a refresh (Go duration: 1m, 30s, 100ms).
    #[arg(long, env = "REGISTRY_MEMORY_EXPIRE_PERIOD", default_value = "1m")]
    pub expire_period: String,
    /// Registry to forward interdomain names (`name@domain`) to.
    #[arg(long, env = "REGISTRY_MEMORY_PROXY_REGISTRY_URL")]
    pub proxy_registry_url: Option<String>,
    /// Log level (TRACE, DEBUG, INFO, WARN, ERROR); falls back to NSM_LOG_LEVEL, then INFO.
    #[arg(long, env = "REGISTRY_MEMORY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Print the chain element names and exit.
    #[arg(long)]
    pub print_chain: bool,
}

/// Where registrations are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// In this process.
    Memory,
    /// In etcd at these `host:port` endpoints.
    Etcd(Vec<String>),
}

/// Validated `nsm registry` configuration.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Where to serve.
    pub listen: Vec<NsmUrl>,
    /// The store.
    pub store: Store,
    /// etcd key prefix.
    pub etcd_prefix: String,
    /// Endpoint expiry period.
    pub expire_period: Duration,
    /// Proxy registry for interdomain names.
    pub proxy_url: Option<NsmUrl>,
    /// Log level.
    pub log_level: tracing::Level,
    /// Print the chain and exit.
    pub print_chain: bool,
}

/// Parses `memory` or `etcd://host:port[,host:port…]`.
pub fn parse_store(s: &str) -> Result<Store, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("memory") {
        return Ok(Store::Memory);
    }
    let Some(rest) = s.strip_prefix("etcd://") else {
        return Err("use `memory` or `etcd://host:port[,host:port…]`".into());
    };
    let mut endpoints = Vec::new();
    for ep in rest.split(',').map(str::trim) {
        let ep = ep.strip_prefix("etcd://").unwrap_or(ep);
        let (host, port) = ep
            .rsplit_once(':')
            .ok_or_else(|| format!("etcd endpoint {ep:?} has no port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("etcd endpoint {ep:?} is not host:port"));
        }
        endpoints.push(ep.to_string());
    }
    Ok(Store::Etcd(endpoints))
}

impl RegistryConfig {
    /// Validates `args`; `nsm_log_level` is the value of `NSM_LOG_LEVEL`, if set.
    pub fn from_args(
        args: &RegistryArgs,
        nsm_log_level: Option<String>,
    ) -> Result<Self, ConfigError> {
        let listen_what = "--listen / REGISTRY_MEMORY_LISTEN_ON";
        let mut listen = Vec::new();
        for u in args
            .listen
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let url = NsmUrl::parse(u).map_err(|e| bad(listen_what, u, e))?;
            if !matches!(url, NsmUrl::Tcp { .. } | NsmUrl::Unix(_)) {
                return Err(bad(listen_what, u, "use tcp://host:port or unix:///path"));
            }
            listen.push(url);
        }
        if listen.is_empty() {
            return Err(bad(listen_what, &args.listen, "no URL to listen on"));
        }
        let store = parse_store(&args.store)
            .map_err(|e| bad("--store / NSM_REGISTRY_STORE", &args.store, e))?;
        if !args.etcd_prefix.starts_with('/') {
            return Err(bad(
                "--etcd-prefix / NSM_REGISTRY_ETCD_PREFIX",
                &args.etcd_prefix,
                "must start with '/'",
            ));
        }
        let period_what = "--expire-period / REGISTRY_MEMORY_EXPIRE_PERIOD";
        let expire_period = parse_go_duration(&args.expire_period)
            .map_err(|e| bad(period_what, &args.expire_period, e))?;
        if expire_period < Duration::from_millis(1) {
            return Err(bad(period_what, &args.expire_period, "must be positive"));
        }
        let proxy_url = match args.proxy_registry_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(NsmUrl::parse(u).map_err(|e| {
                bad(
                    "--proxy-registry-url / REGISTRY_MEMORY_PROXY_REGISTRY_URL",
                    u,
                    e,
                )
            })?),
        };
        let log_level = match (&args.log_level, nsm_log_level) {
            (Some(l), _) => parse_log_level(l)
                .map_err(|e| bad("--log-level / REGISTRY_MEMORY_LOG_LEVEL", l, e))?,
            (None, Some(l)) => parse_log_level(&l).map_err(|e| bad("NSM_LOG_LEVEL", &l, e))?,
            (None, None) => tracing::Level::INFO,
        };
        Ok(Self {
            listen,
            store,
            etcd_prefix: args.etcd_prefix.trim_end_matches('/').to_string(),
            expire_period,
            proxy_url,
            log_level,
            print_chain: args.print_chain,
        })
    }
}

/// A built registry: its routes and whatever must stay alive while serving.
pub struct Built {
    /// Both registries (health not included).
    pub routes: Routes,
    /// NSE chain element names.
    pub nse_chain: Vec<&'static str>,
    /// NS chain element names.
    pub ns_chain: Vec<&'static str>,
    /// Keeps the chains (and their background tasks) alive.
    pub keep: Box<dyn Any + Send + Sync>,
}

/// `validatequery` in front of a store chain (both stores refuse the same malformed Find templates).
fn with_query_check<T: QueryCheck>(
    inner: RegistryChain<T>,
) -> (RegistryChain<T>, Vec<&'static str>) {
    let mut names = vec!["validatequery"];
    names.extend(inner.element_names());
    let chain = RegistryChain::new(
        "registry",
        vec![
            Arc::new(ValidateQueryServer::<T>::new()) as RegistryElement<T>,
            Arc::new(inner),
        ],
    );
    (chain, names)
}

fn built(
    nse: RegistryChain<NetworkServiceEndpoint>,
    ns: RegistryChain<NetworkService>,
    clock: Clock,
    keep: Box<dyn Any + Send + Sync>,
) -> Built {
    let (nse, nse_chain) = with_query_check(nse);
    let (ns, ns_chain) = with_query_check(ns);
    let routes = Routes::new(NetworkServiceRegistryGrpc::new(ns, clock).into_service())
        .add_service(NetworkServiceEndpointRegistryGrpc::new(nse, clock).into_service());
    Built {
        routes,
        nse_chain,
        ns_chain,
        keep,
    }
}

/// Builds the registry chains for `cfg` (needs a tokio runtime), dialing in plaintext.
pub fn build(cfg: &RegistryConfig, clock: Clock) -> Result<Built, ConfigError> {
    build_with(cfg, clock, &TransportSecurity::Insecure)
}

/// Builds the registry chains for `cfg`; the memory store dials the proxy registry with `security`
/// (the etcd store's proxy `connect` still dials in plaintext).
pub fn build_with(
    cfg: &RegistryConfig,
    clock: Clock,
    security: &TransportSecurity,
) -> Result<Built, ConfigError> {
    match &cfg.store {
        Store::Memory => {
            let r = nsm_chains::registry_memory::Registry::new_with(
                cfg.expire_period,
                cfg.proxy_url.clone(),
                DIAL_TIMEOUT,
                clock,
                security,
            );
            Ok(built(r.nse.clone(), r.ns.clone(), clock, Box::new(r)))
        }
        Store::Etcd(endpoints) => {
            let client = EtcdClient::new(endpoints)
                .map_err(|e| ConfigError(format!("--store / NSM_REGISTRY_STORE: {e}")))?;
            let r = EtcdRegistry::new(
                client,
                &cfg.etcd_prefix,
                cfg.expire_period,
                cfg.proxy_url.clone(),
                DIAL_TIMEOUT,
                clock,
            );
            Ok(built(r.nse.clone(), r.ns.clone(), clock, Box::new(r)))
        }
    }
}

/// Runs `nsm registry`.
pub fn run(args: &RegistryArgs) -> ExitCode {
    let cfg = match RegistryConfig::from_args(args, std::env::var("NSM_LOG_LEVEL").ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsm registry: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nsm registry: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(cfg))
}

async fn serve(cfg: RegistryConfig) -> ExitCode {
    let security = if cfg.print_chain {
        TransportSecurity::Insecure
    } else {
        match super::common::transport("nsm registry").await {
            Ok(s) => s,
            Err(code) => return code,
        }
    };
    let built = match build_with(&cfg, Clock::system(), &security) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("nsm registry: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.print_chain {
        println!("nse: {}", built.nse_chain.join(" -> "));
        println!("ns: {}", built.ns_chain.join(" -> "));
        return ExitCode::SUCCESS;
    }
    let health = nsm_api::health::health_service(&[
        nsm_api::services::NETWORK_SERVICE_REGISTRY,
        nsm_api::services::NETWORK_SERVICE_ENDPOINT_REGISTRY,
    ])
    .await;
    let routes = built.routes.add_service(health);
    let mut servers = Vec::new();
    for url in &cfg.listen {
        let router = tonic::transport::Server::builder().add_routes(routes.clone());
        match nsm_networkservice::grpc::serve_with(url, router, &security).await {
            Ok(s) => {
                tracing::info!("registry: serving on {} (store {:?})", s.url(), cfg.store);
                println!("listening on {}", s.url());
                servers.push(s);
            }
            Err(e) => {
                eprintln!("nsm registry: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Err(e) = wait_for_signal().await {
        eprintln!("nsm registry: cannot wait for signals: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!("registry: shutting down");
    for s in servers {
        if let Err(e) = s.stop().await {
            tracing::warn!("registry: {e}");
        }
    }
    drop(built.keep);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RegistryArgs {
        RegistryArgs {
            listen: "tcp://127.0.0.1:0".into(),
            store: "memory".into(),
            etcd_prefix: "/nsm".into(),
            expire_period: "1m".into(),
            proxy_registry_url: None,
            log_level: None,
            print_chain: false,
        }
    }

    #[test]
    fn defaults_and_errors_name_the_setting() {
        let c = RegistryConfig::from_args(&args(), None).unwrap();
        assert_eq!(c.expire_period, Duration::from_secs(60));
        assert_eq!(c.log_level, tracing::Level::INFO);
        let c = RegistryConfig::from_args(&args(), Some("debug".into())).unwrap();
        assert_eq!(c.log_level, tracing::Level::DEBUG);
        let mut a = args();
        a.store = "etcd://a:1,b:2".into();
        let c = RegistryConfig::from_args(&a, None).unwrap();
        assert_eq!(c.store, Store::Etcd(vec!["a:1".into(), "b:2".into()]));
        type Case = (fn(&mut RegistryArgs), &'static str);
        let cases: [Case; 6] = [
            (
                |a| a.listen = "http://x".into(),
                "REGISTRY_MEMORY_LISTEN_ON",
            ),
            (|a| a.store = "redis://x".into(), "NSM_REGISTRY_STORE"),
            (|a| a.store = "etcd://host".into(), "NSM_REGISTRY_STORE"),
            (
                |a| a.expire_period = "5 minutes".into(),
                "REGISTRY_MEMORY_EXPIRE_PERIOD",
            ),
            (
                |a| a.log_level = Some("loud".into()),
                "REGISTRY_MEMORY_LOG_LEVEL",
            ),
            (
                |a| a.proxy_registry_url = Some("tcp://x".into()),
                "PROXY_REGISTRY_URL",
            ),
        ];
        for (f, name) in cases {
            let mut a = args();
            f(&mut a);
            let e = RegistryConfig::from_args(&a, None).unwrap_err();
            assert!(e.0.contains(name), "{e}");
        }
        let e = RegistryConfig::from_args(&args(), Some("x".into())).unwrap_err();
        assert!(e.0.contains("NSM_LOG_LEVEL"), "{e}");
    }
}
