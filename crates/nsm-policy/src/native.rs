//! The five default policies evaluated in Rust, with exactly the semantics of their Rego sources.
//!
//! The Rego sources in `policies/` stay the definition: `tests/native.rs` evaluates both on the same
//! inputs (valid paths, forged, missing, undecodable and expired tokens, odd claim types, empty
//! paths) and requires the same verdicts. Evaluating natively skips what dominates a regorus
//! evaluation of these short rules — converting the input to a Rego value and interpreting — while
//! using the same [`JwtCache`] for `io.jwt.decode` / `io.jwt.verify_es256` and the same clock for
//! `time.now_ns`. Users' own policy files (`--policy`) are still evaluated by regorus.
//!
//! Corner cases the Rego rules have, kept here on purpose: the Go JSON input omits empty fields, so
//! a path without segments fails `tokens_valid` and `tokens_chained` (`count` of an undefined value is
//! undefined), a segment without a token is undecodable, and `tokens_expired` compares the `exp`
//! claim with `time.now_ns() / 1000000000` under Rego's ordering of values of different kinds.

use async_trait::async_trait;
use nsm_networkservice::authorize::{Policy, PolicyInput, Verdict};
use regorus::Value;

use crate::builtins::JwtCache;
use crate::policy::PolicyRuntime;

/// One of the five default policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefaultRule {
    /// Every segment's token decodes as a JWT.
    TokensValid,
    /// The token before this hop was signed by the calling peer (server side).
    PrevTokenSigned,
    /// The token after this hop was signed by the called peer (client side).
    NextTokenSigned,
    /// Each token's audience names the next token's subject.
    TokensChained,
    /// Some token is past its `exp` (the call is allowed when this is *false*).
    TokensExpired,
}

impl DefaultRule {
    /// Every default rule.
    pub const ALL: [DefaultRule; 5] = [
        DefaultRule::TokensValid,
        DefaultRule::PrevTokenSigned,
        DefaultRule::NextTokenSigned,
        DefaultRule::TokensChained,
        DefaultRule::TokensExpired,
    ];

    /// The rule's (and policy file's) name.
    pub fn name(self) -> &'static str {
        match self {
            DefaultRule::TokensValid => "tokens_valid",
            DefaultRule::PrevTokenSigned => "prev_token_signed",
            DefaultRule::NextTokenSigned => "next_token_signed",
            DefaultRule::TokensChained => "tokens_chained",
            DefaultRule::TokensExpired => "tokens_expired",
        }
    }

    /// The rule named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The value the rule must have for the call to be allowed.
    pub fn allowed_when(self) -> bool {
        self != DefaultRule::TokensExpired
    }

    /// The value of `data.nsm.<rule>` for `input`.
    pub fn value(self, input: &PolicyInput, runtime: &PolicyRuntime) -> bool {
        let cache = &*runtime.cache;
        let segs = &input.path.path_segments;
        let index = i64::from(input.path.index);
        let cert = input
            .peer
            .as_ref()
            .and_then(|p| p.certificate_pem.as_deref())
            .unwrap_or("");
        let signed = |i: i64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| segs.get(i))
                .filter(|s| !s.token.is_empty())
                .is_some_and(|s| cache.verify_es256(&s.token, cert, runtime.clock.now()))
        };
        match self {
            DefaultRule::TokensValid => {
                !segs.is_empty() && segs.iter().all(|s| payload(cache, &s.token).is_some())
            }
            DefaultRule::PrevTokenSigned => index > 0 && signed(index - 1),
            DefaultRule::NextTokenSigned => index + 1 < segs.len() as i64 && signed(index + 1),
            DefaultRule::TokensChained => match segs.len() {
                0 => false,
                1 => true,
                _ => segs
                    .windows(2)
                    .all(|w| links(cache, &w[0].token, &w[1].token)),
            },
            DefaultRule::TokensExpired => {
                let now = now_seconds(runtime);
                segs.iter().any(|s| {
                    payload(cache, &s.token).is_some_and(|claims| {
                        let exp = &claims["exp"];
                        *exp != Value::Undefined && *exp < now
                    })
                })
            }
        }
    }
}

/// The decoded payload of a segment's token; `None` for a missing (empty) or undecodable token.
fn payload(cache: &JwtCache, token: &str) -> Option<Value> {
    if token.is_empty() {
        return None;
    }
    cache.decode(token).map(|d| d.payload)
}

/// `links(from, to)`: some element of `from`'s `aud` equals `to`'s `sub`.
fn links(cache: &JwtCache, from: &str, to: &str) -> bool {
    let (Some(a), Some(b)) = (payload(cache, from), payload(cache, to)) else {
        return false;
    };
    let sub = &b["sub"];
    if *sub == Value::Undefined {
        return false;
    }
    match &a["aud"] {
        Value::Array(items) => items.iter().any(|v| v == sub),
        Value::Object(o) => o.values().any(|v| v == sub),
        Value::Set(s) => s.iter().any(|v| v == sub),
        _ => false,
    }
}

/// `time.now_ns() / 1000000000` computed as regorus computes it (exact when whole, else a float).
fn now_seconds(runtime: &PolicyRuntime) -> Value {
    let ns = runtime
        .clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let (Ok(ns), Ok(billion)) = (
        Value::from(ns).as_number().cloned(),
        Value::from(1_000_000_000u64).as_number().cloned(),
    ) else {
        return Value::Undefined;
    };
    ns.divide(&billion).map_or(Value::Undefined, Value::from)
}

/// A default policy evaluated natively (see the module documentation).
#[derive(Debug, Clone)]
pub struct NativePolicy {
    rule: DefaultRule,
    runtime: PolicyRuntime,
}

impl NativePolicy {
    /// `rule` on `runtime`'s clock and caches.
    pub fn new(rule: DefaultRule, runtime: &PolicyRuntime) -> Self {
        Self {
            rule,
            runtime: runtime.clone(),
        }
    }

    /// The rule evaluated.
    pub fn rule(&self) -> DefaultRule {
        self.rule
    }

    /// Whether the call is allowed.
    pub fn allows(&self, input: &PolicyInput) -> bool {
        self.rule.value(input, &self.runtime) == self.rule.allowed_when()
    }
}

#[async_trait]
impl Policy for NativePolicy {
    fn name(&self) -> &str {
        self.rule.name()
    }

    async fn check(&self, input: &PolicyInput) -> Result<Verdict, String> {
        Ok(if self.allows(input) {
            Verdict::Allow
        } else {
            Verdict::Deny("no sufficient privileges".into())
        })
    }
}
