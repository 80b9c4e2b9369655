//! Pieces every long-running subcommand shares: URL lists, serving on several URLs, signals, the
//! token generator, and the run-a-future-on-a-runtime wrapper.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::token::{SharedTokenGenerator, TestTokenGenerator};
use nsm_networkservice::grpc::Serving;
use tonic::service::Routes;

use super::config::ConfigError;

/// `invalid <what> "<value>": <why>`.
pub fn bad(what: &str, value: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid {what} {value:?}: {why}"))
}

/// Parses a comma-separated list of URLs; `what` names the flag and variable for errors.
pub fn parse_urls(what: &str, s: &str) -> Result<Vec<NsmUrl>, ConfigError> {
    let mut out = Vec::new();
    for u in s.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        out.push(NsmUrl::parse(u).map_err(|e| bad(what, u, e))?);
    }
    if out.is_empty() {
        return Err(bad(what, s, "no URL given"));
    }
    Ok(out)
}

/// Parses one URL; `what` names the flag and variable for errors.
pub fn parse_url(what: &str, s: &str) -> Result<NsmUrl, ConfigError> {
    NsmUrl::parse(s.trim()).map_err(|e| bad(what, s, e))
}

/// Parses `k1:v1,k2:v2` (Go envconfig maps; `=` is accepted too).
pub fn parse_labels(
    what: &str,
    s: &str,
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    let mut out = std::collections::BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once(':')
            .or_else(|| pair.split_once('='))
            .ok_or_else(|| bad(what, pair, "expected key:value"))?;
        if k.trim().is_empty() {
            return Err(bad(what, pair, "empty key"));
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Parses a Go duration that may be negative (token lifetimes: a negative one issues tokens that are
/// already expired, which the `opa` example uses to show a refusal).
pub fn parse_signed_duration(what: &str, s: &str) -> Result<(bool, Duration), ConfigError> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    super::config::parse_go_duration(body)
        .map(|d| (neg, d))
        .map_err(|e| bad(what, s, e))
}

/// Parses a Go duration; `what` names the flag and variable for errors.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, ConfigError> {
    super::config::parse_go_duration(s).map_err(|e| bad(what, s, e))
}

/// The token generator for this process. Until an identity source is configured, processes run with
/// unsigned test tokens and say so; `max_lifetime` still bounds every token.
pub fn token_generator(max_lifetime: Duration) -> SharedTokenGenerator {
    Arc::new(TestTokenGenerator {
        lifetime: max_lifetime,
    })
}

/// Serves `routes` (plus health for `services`) on every URL; prints `listening on <url>` for each.
pub async fn serve_all(
    urls: &[NsmUrl],
    routes: Routes,
    services: &[&str],
) -> Result<Vec<Serving>, nsm_core::NsmError> {
    let health = nsm_api::health::health_service(services).await;
    let routes = routes.add_service(health);
    let mut servers = Vec::new();
    for url in urls {
        let router = tonic::transport::Server::builder().add_routes(routes.clone());
        let s = nsm_networkservice::grpc::serve(url, router).await?;
        println!("listening on {}", s.url());
        servers.push(s);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(servers)
}

/// Stops every server.
pub async fn stop_all(servers: Vec<Serving>) {
    for s in servers {
        if let Err(e) = s.stop().await {
            tracing::warn!("{e}");
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Runs `main` on a multi-threaded runtime; `who` prefixes error messages.
pub fn run_async<F>(who: &str, main: F) -> ExitCode
where
    F: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(main),
        Err(e) => {
            eprintln!("{who}: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The log level from a flag value, then `NSM_LOG_LEVEL`, then INFO.
pub fn log_level(flag: Option<&str>) -> Result<tracing::Level, ConfigError> {
    match flag {
        Some(l) => {
            super::config::parse_log_level(l).map_err(|e| bad("--log-level / NSM_LOG_LEVEL", l, e))
        }
        None => Ok(tracing::Level::INFO),
    }
}

/// Issues tokens that expired `by` ago — what a negative `NSM_MAX_TOKEN_LIFETIME` means.
#[derive(Debug, Clone, Copy)]
pub struct ExpiredTokenGenerator {
    /// How long ago each token expired.
    pub by: Duration,
}

impl nsm_core::token::TokenGenerator for ExpiredTokenGenerator {
    fn generate(
        &self,
        clock: &nsm_core::Clock,
        _peer: Option<&nsm_core::values::PeerInfo>,
    ) -> nsm_core::Result<nsm_core::token::Token> {
        Ok(nsm_core::token::Token {
            token: "TestToken".into(),
            expires: clock.now() - self.by,
        })
    }
}
