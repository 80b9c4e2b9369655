//! A throwaway etcd for tests and benchmarks: [`EtcdProcess::start`] runs Debian's `etcd` on free
//! loopback ports (never 2379/2380) with a temporary data dir, waits until it answers, and kills it
//! and removes the dir when dropped.
//!
//! Without an `etcd` binary on `PATH` it returns `None` after printing why — unless `CI=true`, where a
//! missing etcd is a failure (`.ci/run` installs `etcd-server`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::client::EtcdClient;

static STARTED: AtomicU32 = AtomicU32::new(0);

/// A running etcd; killed (and its data dir removed) on drop.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
}

fn free_port() -> std::io::Result<u16> {
    loop {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port != 2379 && port != 2380 {
            return Ok(port);
        }
    }
}

fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl EtcdProcess {
    /// Starts an etcd and waits (up to 20 s) until it serves; `None` (with a message) if etcd is not
    /// installed outside CI.
    ///
    /// # Panics
    /// If etcd is missing under `CI=true`, or does not start.
    #[allow(clippy::panic)]
    pub async fn start() -> Option<Self> {
        if !etcd_installed() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "etcd is not installed (apt-get install etcd-server); required under CI=true"
                );
            }
            eprintln!("skipping: etcd is not installed (apt-get install etcd-server)");
            return None;
        }
        for attempt in 0..3 {
            match Self::try_start().await {
                Ok(p) => return Some(p),
                Err(e) => eprintln!("etcd start attempt {attempt} failed: {e}"),
            }
        }
        panic!("etcd did not start after 3 attempts");
    }

    async fn try_start() -> Result<Self, String> {
        let client_port = free_port().map_err(|e| e.to_string())?;
        let mut peer_port = free_port().map_err(|e| e.to_string())?;
        while peer_port == client_port {
            peer_port = free_port().map_err(|e| e.to_string())?;
        }
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let data_dir =
            std::env::temp_dir().join(format!("nsm-etcd-{}-{n}-{client_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--log-level", "error"])
            .args(["--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning etcd: {e}"))?;
        let mut p = Self {
            child: Some(child),
            client_port,
            peer_port,
            data_dir,
        };
        let client = EtcdClient::new(&[p.endpoint()])
            .map_err(|e| e.to_string())?
            .with_call_timeout(Duration::from_millis(500));
        for _ in 0..100 {
            if let Some(child) = p.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("etcd exited: {status}"));
            }
            if client.range_prefix(b"/").await.is_ok() {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p.stop();
        Err("etcd did not answer within 20 s".into())
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The peer port (for messages).
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// A client for this etcd.
    ///
    /// # Panics
    /// Never for the endpoints this type makes.
    #[allow(clippy::expect_used)]
    pub fn client(&self) -> EtcdClient {
        EtcdClient::new(&[self.endpoint()]).expect("a valid endpoint")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
