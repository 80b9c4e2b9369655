//! Rego authorization for nsm-rs.
//!
//! [`RegoPolicy`] implements [`Policy`](nsm_networkservice::authorize::Policy) by evaluating a Rego
//! module with [regorus](https://crates.io/crates/regorus) over the input document Go NSM builds: the Go
//! JSON of the `Path` (`omitempty`: `index` absent when 0, empty fields dropped, `expires` as
//! `{"seconds","nanos"}`) plus `auth_info.certificate`, the PEM of the peer's leaf certificate (`""`
//! when unknown). Modules use Rego v0 syntax and `package nsm`, so policy files written for Go NSM load
//! unchanged; the query is `data.<package>.<name>`.
//!
//! Builtins regorus lacks are extensions: `io.jwt.decode` and `io.jwt.verify_es256` (backed by
//! `jsonwebtoken` on aws-lc-rs) and `time.now_ns` (the injected [`Clock`](nsm_core::Clock), so tests
//! with paused time see consistent expiries). Like OPA's, they make an expression undefined on bad
//! input rather than failing the evaluation. Decoded tokens and successful signature checks are cached
//! ([`JwtCache`]) until the token expires, so a long path costs one signature check per token, not
//! one per segment per hop.
//!
//! The five default policies are our own Rego sources with the v1.1.1 names and semantics:
//! `tokens_valid`, `prev_token_signed` (server), `next_token_signed` (client), `tokens_chained` and
//! `tokens_expired` (allowed when *false*). [`default_server_policies`] / [`default_client_policies`]
//! give the sets `authorize.NewServer()` / `NewClient()` use, evaluated natively ([`NativePolicy`]:
//! the same rules in Rust, tested verdict for verdict against the Rego sources, ~30× cheaper per hop);
//! [`default_rego_policy`] compiles a Rego source itself. [`PolicyDir`] loads `--policy` files or
//! directories (always evaluated by regorus) and reloads them when they change.

mod builtins;
mod dir;
mod input;
mod native;
mod policy;

pub use builtins::{CacheSizes, JwtCache};
pub use dir::PolicyDir;
pub use input::input_value;
pub use native::{DefaultRule, NativePolicy};
pub use policy::{
    DEFAULT_POLICIES, PolicyError, PolicyRuntime, RegoPolicy, default_client_policies,
    default_client_policies_with, default_rego_policy, default_server_policies,
    default_server_policies_with,
};
