//! A Rego module evaluated as an `authorize` policy.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use nsm_core::Clock;
use nsm_networkservice::authorize::{Policy, PolicyInput, SharedPolicy, Verdict};
use parking_lot::Mutex;
use regorus::{Engine, Value};

use crate::builtins::JwtCache;
use crate::input::input_value;
use crate::native::{DefaultRule, NativePolicy};

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The Rego source does not compile.
    #[error("policy {name}: {reason}")]
    Invalid {
        /// The policy.
        name: String,
        /// The compiler's message.
        reason: String,
    },
}

/// What every policy of a process shares: the clock `time.now_ns` reads and the token caches.
#[derive(Debug, Clone)]
pub struct PolicyRuntime {
    /// The clock behind `time.now_ns` and cache expiry.
    pub clock: Clock,
    /// Decoded and verified tokens.
    pub cache: Arc<JwtCache>,
}

impl Default for PolicyRuntime {
    fn default() -> Self {
        Self {
            clock: Clock::system(),
            cache: Arc::new(JwtCache::new()),
        }
    }
}

impl PolicyRuntime {
    /// A runtime on `clock` with fresh caches.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            cache: Arc::new(JwtCache::new()),
        }
    }

    /// The process-wide runtime (system clock) used by the convenience constructors.
    pub fn shared() -> Self {
        static SHARED: OnceLock<PolicyRuntime> = OnceLock::new();
        SHARED.get_or_init(Self::default).clone()
    }
}

/// One compiled Rego module and the query whose value decides.
pub struct RegoPolicy {
    name: String,
    query: String,
    allow_when: bool,
    prototype: Engine,
    pool: Mutex<Vec<Engine>>,
}

impl std::fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoPolicy")
            .field("name", &self.name)
            .field("query", &self.query)
            .field("allow_when", &self.allow_when)
            .finish_non_exhaustive()
    }
}

/// The package a module declares (`package a.b` → `a.b`).
fn package_of(source: &str) -> Option<&str> {
    source.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("package")?;
        rest.starts_with(char::is_whitespace).then(|| rest.trim())
    })
}

impl RegoPolicy {
    /// Compiles `source` (Rego v0, as Go NSM's OPA reads it). The verdict is the value of
    /// `data.<package>.<rule>`: the call is allowed when it equals `allow_when`.
    pub fn from_source(
        name: impl Into<String>,
        source: &str,
        rule: &str,
        allow_when: bool,
        runtime: &PolicyRuntime,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        let invalid = |reason: String| PolicyError::Invalid {
            name: name.clone(),
            reason,
        };
        let package = package_of(source).ok_or_else(|| invalid("missing package".into()))?;
        let query = format!("data.{package}.{rule}");
        let mut engine = Engine::new();
        engine.set_rego_v0(true);
        runtime
            .cache
            .register(&mut engine, runtime.clock)
            .map_err(|e| invalid(e.to_string()))?;
        engine
            .add_policy(format!("{name}.rego"), source.to_string())
            .map_err(|e| invalid(e.to_string()))?;
        let policy = Self {
            name: name.clone(),
            query,
            allow_when,
            prototype: engine,
            pool: Mutex::new(Vec::new()),
        };
        // Compile now: a broken policy must fail at start-up, not on the first call.
        policy.evaluate(Value::new_object()).map_err(invalid)?;
        Ok(policy)
    }

    /// Loads a policy file; the rule is the file's base name (`tokens_chained.rego` →
    /// `data.nsm.tokens_chained`), allowed when true — except `tokens_expired`, allowed when false.
    pub fn from_file(path: &Path, runtime: &PolicyRuntime) -> Result<Self, PolicyError> {
        let source = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let rule = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let allow_when = rule != "tokens_expired";
        Self::from_source(
            path.display().to_string(),
            &source,
            &rule,
            allow_when,
            runtime,
        )
    }

    /// The query evaluated (`data.nsm.tokens_valid`).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// Evaluates the query on `input`: `Ok(true)` when the call is allowed.
    pub fn evaluate(&self, input: Value) -> Result<bool, String> {
        let mut engine = self
            .pool
            .lock()
            .pop()
            .unwrap_or_else(|| self.prototype.clone());
        engine.set_input(input);
        let result = engine.eval_rule(self.query.clone());
        self.pool.lock().push(engine);
        match result.map_err(|e| e.to_string())? {
            Value::Bool(b) => Ok(b == self.allow_when),
            Value::Undefined => Err(format!("{} is undefined", self.query)),
            other => Err(format!("{} is not a boolean: {other}", self.query)),
        }
    }
}

#[async_trait]
impl Policy for RegoPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, input: &PolicyInput) -> Result<Verdict, String> {
        if self.evaluate(input_value(input))? {
            Ok(Verdict::Allow)
        } else {
            Ok(Verdict::Deny("no sufficient privileges".into()))
        }
    }
}

/// The default policies: (name, source, allowed when).
pub const DEFAULT_POLICIES: [(&str, &str, bool); 5] = [
    (
        "tokens_valid",
        include_str!("../policies/tokens_valid.rego"),
        true,
    ),
    (
        "prev_token_signed",
        include_str!("../policies/prev_token_signed.rego"),
        true,
    ),
    (
        "next_token_signed",
        include_str!("../policies/next_token_signed.rego"),
        true,
    ),
    (
        "tokens_chained",
        include_str!("../policies/tokens_chained.rego"),
        true,
    ),
    (
        "tokens_expired",
        include_str!("../policies/tokens_expired.rego"),
        false,
    ),
];

/// The default policy `rule` compiled from its Rego source (what [`NativePolicy`] is checked
/// against; the default sets use the native evaluation).
pub fn default_rego_policy(
    rule: DefaultRule,
    runtime: &PolicyRuntime,
) -> Result<RegoPolicy, PolicyError> {
    let source = DEFAULT_POLICIES
        .iter()
        .find(|(name, _, _)| *name == rule.name())
        .map_or("", |(_, source, _)| source);
    RegoPolicy::from_source(
        rule.name(),
        source,
        rule.name(),
        rule.allowed_when(),
        runtime,
    )
}

fn defaults(rules: &[DefaultRule], runtime: &PolicyRuntime) -> Vec<SharedPolicy> {
    rules
        .iter()
        .map(|rule| Arc::new(NativePolicy::new(*rule, runtime)) as SharedPolicy)
        .collect()
}

/// `authorize.NewServer()`'s defaults: tokens_valid, prev_token_signed, tokens_expired, tokens_chained
/// (evaluated natively, see [`NativePolicy`]).
pub fn default_server_policies() -> Vec<SharedPolicy> {
    default_server_policies_with(&PolicyRuntime::shared())
}

/// [`default_server_policies`] on a given runtime (clock, caches).
pub fn default_server_policies_with(runtime: &PolicyRuntime) -> Vec<SharedPolicy> {
    defaults(
        &[
            DefaultRule::TokensValid,
            DefaultRule::PrevTokenSigned,
            DefaultRule::TokensExpired,
            DefaultRule::TokensChained,
        ],
        runtime,
    )
}

/// `authorize.NewClient()`'s defaults: tokens_valid, next_token_signed, tokens_expired, tokens_chained
/// (evaluated natively, see [`NativePolicy`]).
pub fn default_client_policies() -> Vec<SharedPolicy> {
    default_client_policies_with(&PolicyRuntime::shared())
}

/// [`default_client_policies`] on a given runtime (clock, caches).
pub fn default_client_policies_with(runtime: &PolicyRuntime) -> Vec<SharedPolicy> {
    defaults(
        &[
            DefaultRule::TokensValid,
            DefaultRule::NextTokenSigned,
            DefaultRule::TokensExpired,
            DefaultRule::TokensChained,
        ],
        runtime,
    )
}
