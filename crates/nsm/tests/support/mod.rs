//! Helpers for the `nsm` process tests: start `nsm registry`, read the URLs it listens on, stop it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_core::{Clock, Ctx};
use nsm_registry::connect::GrpcRegistryItem;
use nsm_registry::{ClientUrlServer, ConnectServer};

pub const DIAL: Duration = Duration::from_secs(5);

pub fn ctx() -> Ctx {
    Ctx::new(Clock::system())
}

/// A running `nsm registry`; killed with SIGKILL on drop.
pub struct RegistryProcess {
    pub child: Option<Child>,
    /// The first URL it listens on.
    pub url: NsmUrl,
    /// Every URL it listens on, in `--listen` order.
    pub urls: Vec<NsmUrl>,
}

impl RegistryProcess {
    /// Starts `nsm registry` with `args` and `env`; waits for its first `listening on` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nsm"));
        cmd.arg("registry")
            .args(args)
            .env_remove("REGISTRY_MEMORY_LISTEN_ON")
            .env_remove("NSM_REGISTRY_STORE")
            .env_remove("NSM_LOG_LEVEL")
            .env("REGISTRY_MEMORY_LOG_LEVEL", "WARN")
            .env("NSM_INSECURE", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn nsm registry");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut urls = Vec::new();
        loop {
            let line = lines
                .next()
                .expect("nsm registry ended before `ready`")
                .unwrap();
            if line == "ready" {
                break;
            }
            let url = line
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            urls.push(NsmUrl::parse(url).unwrap());
        }
        let url = urls.first().cloned().expect("no URL");
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self {
            child: Some(child),
            url,
            urls,
        }
    }

    /// Starts a memory registry on a free loopback port.
    pub fn memory(extra: &[&str]) -> Self {
        let mut args = vec!["--listen", "tcp://127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start(&args, &[])
    }

    /// Starts an etcd registry on a free loopback port (or `listen`).
    pub fn etcd(endpoint: &str, prefix: &str, listen: Option<&str>) -> Self {
        let store = format!("etcd://{endpoint}");
        Self::start(
            &[
                "--listen",
                listen.unwrap_or("tcp://127.0.0.1:0"),
                "--store",
                &store,
                "--etcd-prefix",
                prefix,
            ],
            &[],
        )
    }

    /// SIGKILL, no clean-up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..100 {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!("nsm registry did not stop within 5 s of SIGTERM");
    }

    pub fn client<T: GrpcRegistryItem>(&self) -> RegistryChain<T> {
        client(self.url.clone())
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client chain to the registry at `url` (clienturl → connect).
pub fn client<T: GrpcRegistryItem>(url: NsmUrl) -> RegistryChain<T> {
    RegistryChain::new(
        "registry-client",
        vec![
            Arc::new(ClientUrlServer::<T>::new(url)) as RegistryElement<T>,
            Arc::new(ConnectServer::<T>::new(DIAL)),
        ],
    )
}
