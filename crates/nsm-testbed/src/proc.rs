//! One `nsm` process started in a namespace.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::mesh::Tier;
use crate::now;

/// A started process; its output goes to `log`.
#[derive(Debug)]
pub(crate) struct Proc {
    pub name: String,
    pub ns: String,
    pub log: PathBuf,
    pub tier: Tier,
    pub started: Instant,
    child: Child,
    /// Started under a wrapper (`unshare --fork` ignores SIGTERM): signals go to the process group.
    wrapped: bool,
    status: Option<ExitStatus>,
}

/// Variables of ours (and of Go NSM) that must not leak from the caller into a component.
fn inherited_config(key: &str) -> bool {
    key.starts_with("NSM_")
        || key.starts_with("REGISTRY_")
        || matches!(
            key,
            "NODE_NAME" | "POD_NAME" | "CLUSTER_NAME" | "SPIFFE_ENDPOINT_SOCKET" | "RUST_LOG"
        )
}

impl Proc {
    /// `ip netns exec <ns> [<wrapper…>] <bin> <args…>` with `env`, in its own process group.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        name: &str,
        ns: &str,
        wrapper: &[String],
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
        tier: Tier,
    ) -> io::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(wrapper)
            .arg(bin)
            .args(args);
        for (k, _) in std::env::vars() {
            if inherited_config(&k) {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .process_group(0);
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_string(),
            ns: ns.to_string(),
            log,
            tier,
            started: now(),
            child,
            wrapped: !wrapper.is_empty(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn signal(&mut self, sig: Signal) {
        if self.exited().is_none() {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = if self.wrapped {
                killpg(pid, sig)
            } else {
                kill(pid, sig)
            };
        }
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill_now(&mut self) -> Option<ExitStatus> {
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(5))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
