//! `nsm identity`: a development identity without SPIRE.
//!
//! - `nsm identity init --dir D --trust-domain example.org` creates a development CA for the trust
//!   domain in `D` (`ca.pem`, `ca.key` mode 0600), or keeps the one already there.
//! - `nsm identity issue --dir D --spiffe-id spiffe://example.org/nsmgr [--out O] [--ttl 24h]` issues
//!   an X.509-SVID (ECDSA P-256) from that CA into `O` (default `D/svids/<path>`): `svid.pem`,
//!   `svid.key` (0600) and `bundle.pem`, what `NSM_IDENTITY_DIR=O` reads (reloaded when re-issued).
//!
//! The last line printed is the directory written, so scripts can do
//! `NSM_IDENTITY_DIR=$(nsm identity issue … | tail -1)`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use nsm_identity::DevCa;

/// `nsm identity` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum IdentityCommand {
    /// Create a development CA for a trust domain (kept if it exists).
    Init(InitArgs),
    /// Issue an X.509-SVID from the development CA into a directory for NSM_IDENTITY_DIR.
    Issue(IssueArgs),
}

/// `nsm identity init` options.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Directory of the CA.
    #[arg(long)]
    pub dir: PathBuf,
    /// Trust domain (lowercase letters, digits, '-', '.', '_').
    #[arg(long, default_value = "example.org")]
    pub trust_domain: String,
}

/// `nsm identity issue` options.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// Directory of the CA (made by `nsm identity init`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The SPIFFE ID, `spiffe://<trust domain>/<path>`, in the CA's trust domain.
    #[arg(long)]
    pub spiffe_id: String,
    /// Where to write svid.pem, svid.key and bundle.pem (default: `<dir>/svids/<path>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Lifetime of the SVID (Go duration).
    #[arg(long, default_value = "24h")]
    pub ttl: String,
}

/// Runs `nsm identity …`.
pub fn run(cmd: &IdentityCommand) -> ExitCode {
    let result = match cmd {
        IdentityCommand::Init(a) => init(a),
        IdentityCommand::Issue(a) => issue(a),
    };
    match result {
        Ok(dir) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nsm identity: {e}");
            ExitCode::from(2)
        }
    }
}

fn init(a: &InitArgs) -> Result<PathBuf, String> {
    let ca = DevCa::load_or_create(&a.dir, &a.trust_domain).map_err(|e| e.to_string())?;
    eprintln!(
        "development CA for trust domain {} in {}",
        ca.trust_domain(),
        a.dir.display()
    );
    Ok(a.dir.clone())
}

/// The path of a SPIFFE ID in `trust_domain`.
fn spiffe_path<'a>(id: &'a str, trust_domain: &str) -> Result<&'a str, String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("--spiffe-id {id:?}: expected spiffe://<trust domain>/<path>"))?;
    let (td, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("--spiffe-id {id:?}: no path after the trust domain"))?;
    if td != trust_domain {
        return Err(format!(
            "--spiffe-id {id:?}: the CA is for trust domain {trust_domain}, not {td}"
        ));
    }
    let ok = !path.is_empty()
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        });
    if !ok {
        return Err(format!(
            "--spiffe-id {id:?}: the path must be segments of letters, digits, '-', '.', '_'"
        ));
    }
    Ok(path)
}

fn issue(a: &IssueArgs) -> Result<PathBuf, String> {
    let ttl: Duration = super::config::parse_go_duration(&a.ttl)
        .map_err(|e| format!("invalid --ttl {:?}: {e}", a.ttl))?;
    if ttl < Duration::from_secs(60) {
        return Err(format!("invalid --ttl {:?}: at least 1m", a.ttl));
    }
    let ca = DevCa::load(&a.dir).map_err(|e| {
        format!(
            "{e} (create the CA first: nsm identity init --dir {})",
            a.dir.display()
        )
    })?;
    let path = spiffe_path(&a.spiffe_id, ca.trust_domain())?;
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.dir, path));
    ca.write_svid_files(&out, path, ttl)
        .map_err(|e| e.to_string())?;
    eprintln!("{} (valid {}) in {}", a.spiffe_id, a.ttl, out.display());
    Ok(out)
}

fn default_out(dir: &Path, path: &str) -> PathBuf {
    dir.join("svids").join(path.replace('/', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_paths() {
        assert_eq!(
            spiffe_path("spiffe://example.org/ns/a/pod/b", "example.org"),
            Ok("ns/a/pod/b")
        );
        assert!(spiffe_path("spiffe://other.org/x", "example.org").is_err());
        assert!(spiffe_path("spiffe://example.org/", "example.org").is_err());
        assert!(spiffe_path("spiffe://example.org/../x", "example.org").is_err());
        assert!(spiffe_path("http://example.org/x", "example.org").is_err());
    }
}
