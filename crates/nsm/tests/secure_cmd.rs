//! The `nsm` processes secured by default: development identities from `nsm identity init|issue`,
//! every process with its own SVID (`NSM_IDENTITY_DIR`), mTLS on every connection (tcp and unix), ES256
//! tokens and the default policies. A component without an identity refuses to start (exit 2); the
//! `opa` example (an NSC with a negative `NSM_MAX_TOKEN_LIFETIME`) is refused with `tokens_expired`;
//! `--policy` loads custom Rego files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;

use procs::Proc;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Variables of ours that must not leak in from the developer's shell.
const CLEARED: [&str; 12] = [
    "NSM_NAME",
    "NSM_LISTEN_ON",
    "NSM_CONNECT_TO",
    "NSM_REGISTRY_URL",
    "NSM_NETWORK_SERVICES",
    "NSM_IDENTITY_DIR",
    "NSM_INSECURE",
    "NSM_POLICY",
    "NSM_MAX_TOKEN_LIFETIME",
    "SPIFFE_ENDPOINT_SOCKET",
    "REGISTRY_MEMORY_LISTEN_ON",
    "NSM_SERVICE_NAMES",
];

fn nsm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nsm"));
    for v in CLEARED {
        c.env_remove(v);
    }
    c.env("NSM_LOG_LEVEL", "WARN")
        .env("REGISTRY_MEMORY_LOG_LEVEL", "WARN")
        .env("NSM_DATAPLANE", "noop");
    c
}

struct Mesh {
    dir: PathBuf,
    procs: Vec<Proc>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        procs::stop_all(&self.dir, &mut self.procs);
    }
}

fn identity(dir: &Path, name: &str) -> String {
    let out = nsm()
        .args(["identity", "issue", "--dir"])
        .arg(dir.join("ca"))
        .args(["--spiffe-id", &format!("spiffe://example.org/{name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string()
}

impl Mesh {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "nsm-secure-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = nsm()
            .args(["identity", "init", "--trust-domain", "example.org", "--dir"])
            .arg(dir.join("ca"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Self {
            dir,
            procs: Vec::new(),
        }
    }

    fn sock(&self, name: &str) -> String {
        format!("unix://{}/{name}.sock", self.dir.display())
    }

    fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, String)]) {
        let mut cmd = nsm();
        cmd.args(args)
            .env("NSM_IDENTITY_DIR", identity(&self.dir, name));
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.procs.push(procs::spawn(&self.dir, name, cmd));
    }

    fn wait_line(&self, name: &str, f: impl Fn(&str) -> bool) -> String {
        let p = self.procs.iter().find(|p| p.name == name).unwrap();
        p.wait_line(&self.dir, WAIT, f)
    }

    /// registry (tcp) → nsmgr (unix) → forwarder (noop), nse; all secured.
    fn start() -> Self {
        let mut m = Self::new();
        m.spawn(
            "registry",
            &["registry", "--listen", "tcp://127.0.0.1:0"],
            &[],
        );
        let l = m.wait_line("registry", |l| l.starts_with("listening on "));
        let registry = l["listening on ".len()..].to_string();
        m.wait_line("registry", |l| l == "ready");
        let nsmgr = m.sock("nsmgr");
        m.spawn(
            "nsmgr",
            &["nsmgr"],
            &[
                ("NSM_NAME", "nsmgr".into()),
                ("NSM_LISTEN_ON", nsmgr.clone()),
                ("NSM_REGISTRY_URL", registry),
            ],
        );
        m.wait_line("nsmgr", |l| l.starts_with("listening on "));
        let fwd = m.sock("forwarder");
        m.spawn(
            "forwarder",
            &["forwarder"],
            &[
                ("NSM_NAME", "forwarder".into()),
                ("NSM_CONNECT_TO", nsmgr.clone()),
                ("NSM_LISTEN_ON", fwd),
            ],
        );
        let nse = m.sock("nse");
        m.spawn(
            "nse",
            &["nse"],
            &[
                ("NSM_NAME", "icmp-server".into()),
                ("NSM_CONNECT_TO", nsmgr.clone()),
                ("NSM_LISTEN_ON", nse),
                ("NSM_SERVICE_NAMES", "icmp-responder".into()),
            ],
        );
        m.wait_line("forwarder", |l| l.starts_with("listening on "));
        m.wait_line("nse", |l| l.starts_with("listening on "));
        m
    }

    /// `nsm nsc --once` with its own identity and `env`.
    fn nsc_once(&self, name: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = nsm();
        cmd.args(["nsc", "--once"])
            .env("NSM_IDENTITY_DIR", identity(&self.dir, name))
            .env("NSM_NAME", name)
            .env("NSM_CONNECT_TO", self.sock("nsmgr"))
            .env("NSM_NETWORK_SERVICES", "kernel://icmp-responder/nsm-1")
            .env("NSM_REQUEST_TIMEOUT", "5s");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

/// Retries `nsc --once` until the forwarder and endpoint registrations are through.
fn connect_eventually(m: &Mesh, name: &str) -> Output {
    let mut tries = 50;
    loop {
        let out = m.nsc_once(name, &[]);
        tries -= 1;
        if out.status.success() || tries == 0 {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn secured_mesh_connects_and_refuses_expired_tokens() {
    let m = Mesh::start();
    let out = connect_eventually(&m, "nsc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("path=nsc -> nsmgr -> forwarder -> icmp-server"),
        "{stdout}"
    );

    // Go's opa example: already-expired tokens are refused by the NSMgr, naming the policy.
    let out = m.nsc_once("nsc-expired", &[("NSM_MAX_TOKEN_LIFETIME", "-1m")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("PermissionDenied") || stderr.contains("permission denied"),
        "{stderr}"
    );
    assert!(stderr.contains("tokens_expired"), "{stderr}");

    // A client without identity refuses to start, saying what to set.
    let out = nsm()
        .args(["nsc", "--once"])
        .env("NSM_CONNECT_TO", m.sock("nsmgr"))
        .env("NSM_NETWORK_SERVICES", "kernel://icmp-responder/nsm-1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("NSM_IDENTITY_DIR"), "{stderr}");
    assert!(stderr.contains("SPIFFE_ENDPOINT_SOCKET"), "{stderr}");
    assert!(stderr.contains("NSM_INSECURE"), "{stderr}");

    // A plaintext client cannot talk to the TLS NSMgr.
    let mut cmd = nsm();
    let out = cmd
        .args(["nsc", "--once"])
        .env("NSM_INSECURE", "true")
        .env("NSM_NAME", "plain")
        .env("NSM_CONNECT_TO", m.sock("nsmgr"))
        .env("NSM_NETWORK_SERVICES", "kernel://icmp-responder/nsm-1")
        .env("NSM_REQUEST_TIMEOUT", "2s")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");

    // A custom client policy that refuses everything (Go-style Rego file, --policy / NSM_POLICY).
    let policy = m.dir.join("deny_all.rego");
    std::fs::write(&policy, "package nsm\n\ndefault deny_all = false\n").unwrap();
    let out = m.nsc_once("nsc-policy", &[("NSM_POLICY", policy.to_str().unwrap())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("deny_all"), "{stderr}");
}

#[test]
fn components_without_identity_refuse_to_start() {
    for args in [
        vec!["registry", "--listen", "tcp://127.0.0.1:0"],
        vec!["nsmgr", "--listen-on", "tcp://127.0.0.1:0"],
        vec!["forwarder"],
        vec!["nse"],
    ] {
        let out = nsm().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no workload identity"),
            "{args:?}: {stderr}"
        );
    }
}
