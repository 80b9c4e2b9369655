//! Pieces every long-running subcommand shares: URL lists, serving on several URLs, signals, the
//! token generator, and the run-a-future-on-a-runtime wrapper.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use nsm_api::url::NsmUrl;
use nsm_core::chain::Element;
use nsm_core::token::{SharedTokenGenerator, TestTokenGenerator};
use nsm_identity::{INSECURE_ENV, JwtTokenGenerator, SignedDuration, TransportSecurity};
use nsm_networkservice::authorize::{AuthorizeClient, AuthorizeServer, SharedPolicy};
use nsm_networkservice::grpc::Serving;
use nsm_policy::{PolicyDir, PolicyRuntime};
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

/// This process's transport security from the environment (`SPIFFE_ENDPOINT_SOCKET`,
/// `NSM_IDENTITY_DIR`, or `NSM_INSECURE=true`). Without an identity it prints why (prefixed with
/// `who`) and the caller exits with the returned code 2. Plaintext is logged as a warning.
pub async fn transport(who: &str) -> Result<TransportSecurity, ExitCode> {
    nsm_identity::install_crypto_provider();
    match nsm_identity::transport_from_env().await {
        Ok(TransportSecurity::Insecure) => {
            tracing::warn!(
                "{INSECURE_ENV}=true: plaintext gRPC, unsigned test tokens and no default policies; \
                 for tests only, never in production"
            );
            Ok(TransportSecurity::Insecure)
        }
        Ok(t) => {
            if let Some(tls) = t.tls() {
                tracing::info!(spiffe_id = %tls.spiffe_id(), "identity: SPIFFE mTLS");
            }
            Ok(t)
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// The token generator for `security`: ES256 JWTs signed with the SVID (a negative lifetime issues
/// tokens that are already expired, as in Go); unsigned test tokens in plaintext.
pub fn tokens(
    security: &TransportSecurity,
    negative: bool,
    lifetime: Duration,
) -> SharedTokenGenerator {
    match security.tls() {
        Some(tls) => Arc::new(JwtTokenGenerator::new(
            tls.source(),
            SignedDuration {
                negative,
                magnitude: lifetime,
            },
        )),
        None if negative => Arc::new(ExpiredTokenGenerator { by: lifetime }),
        None => token_generator(lifetime),
    }
}

/// The policies `authorize` evaluates: the `--policy` / `NSM_POLICY` files or directories (reloaded
/// when they change) if given, else the default Rego policies with an identity (server or client
/// set), else none (plaintext: test tokens are not JWTs).
pub fn policies(
    who: &str,
    policy: Option<&str>,
    security: &TransportSecurity,
    client: bool,
) -> Result<Option<Vec<SharedPolicy>>, ExitCode> {
    if let Some(p) = policy.map(str::trim).filter(|p| !p.is_empty()) {
        let paths = p.split(',').map(|s| PathBuf::from(s.trim())).collect();
        return match PolicyDir::load(paths, PolicyRuntime::shared(), Some(Duration::from_secs(2))) {
            Ok(d) => {
                tracing::info!(policies = ?d.names(), "authorize: custom policies");
                Ok(Some(vec![Arc::new(d) as SharedPolicy]))
            }
            Err(e) => {
                eprintln!("{who}: invalid --policy / NSM_POLICY {p:?}: {e}");
                Err(ExitCode::from(2))
            }
        };
    }
    if security.tls().is_none() {
        return Ok(None);
    }
    Ok(Some(if client {
        nsm_policy::default_client_policies()
    } else {
        nsm_policy::default_server_policies()
    }))
}

/// The server `authorize` element for `policies` (allow-all for `None`).
pub fn server_authorize(policies: Option<Vec<SharedPolicy>>) -> Element {
    match policies {
        Some(p) => Arc::new(AuthorizeServer::new(p)),
        None => Arc::new(AuthorizeServer::any()),
    }
}

/// The client `authorize` element for `policies` (allow-all for `None`).
pub fn client_authorize(policies: Option<Vec<SharedPolicy>>) -> Element {
    match policies {
        Some(p) => Arc::new(AuthorizeClient::new(p)),
        None => Arc::new(AuthorizeClient::any()),
    }
}

/// Serves `routes` (plus health for `services`) on every URL with `security`; prints
/// `listening on <url>` for each.
pub async fn serve_all(
    urls: &[NsmUrl],
    routes: Routes,
    services: &[&str],
    security: &TransportSecurity,
) -> Result<Vec<Serving>, nsm_core::NsmError> {
    let health = nsm_api::health::health_service(services).await;
    let routes = routes.add_service(health);
    let mut servers = Vec::new();
    for url in urls {
        let router = tonic::transport::Server::builder().add_routes(routes.clone());
        let s = nsm_networkservice::grpc::serve_with(url, router, security).await?;
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

/// The environment variable that sets how many threads run a component's tasks (see [`run_async`]).
pub const RUNTIME_THREADS_ENV: &str = "NSM_RUNTIME_THREADS";

/// How many runtime threads `NSM_RUNTIME_THREADS` asks for: `None` for the default (one per CPU).
fn runtime_threads() -> Result<Option<usize>, ConfigError> {
    match std::env::var(RUNTIME_THREADS_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(ConfigError(format!("{RUNTIME_THREADS_ENV}: {e}"))),
        Ok(v) => parse_runtime_threads(&v),
    }
}

/// Parses an `NSM_RUNTIME_THREADS` value: empty for the default, else a thread count of 1 or more.
fn parse_runtime_threads(v: &str) -> Result<Option<usize>, ConfigError> {
    match v.trim() {
        "" => Ok(None),
        t => match t.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(bad(
                RUNTIME_THREADS_ENV,
                v,
                "expected a whole number of threads, 1 or more",
            )),
        },
    }
}

/// Runs `main` on a tokio runtime; `who` prefixes error messages. `NSM_RUNTIME_THREADS=1` runs every
/// task on the main thread (no cross-thread wake-ups: the lowest latency per call); `N` > 1 uses `N`
/// worker threads; unset, one per CPU. Blocking work goes to tokio's blocking pool either way.
pub fn run_async<F>(who: &str, main: F) -> ExitCode
where
    F: std::future::Future<Output = ExitCode>,
{
    let threads = match runtime_threads() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{who}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = threads.filter(|&n| n > 1) {
        builder.worker_threads(n);
    }
    let built = builder.enable_all().build();
    match built {
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

#[cfg(test)]
mod tests {
    use super::parse_runtime_threads;

    #[test]
    fn runtime_threads_take_a_count_or_nothing() {
        assert_eq!(parse_runtime_threads(""), Ok(None));
        assert_eq!(parse_runtime_threads(" 1 "), Ok(Some(1)));
        assert_eq!(parse_runtime_threads("4"), Ok(Some(4)));
        for bad in ["0", "-1", "two", "1.5"] {
            let err = parse_runtime_threads(bad).unwrap_err().0;
            assert!(
                err.contains("NSM_RUNTIME_THREADS") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }
}
