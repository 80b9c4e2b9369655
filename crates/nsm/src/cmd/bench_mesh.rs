//! `nsm bench mesh`: live figures for issue 8 (BENCHMARKS.md "Live processes").
//!
//! Starts a real mesh of `nsm` processes — registry, NSMgr, forwarder and an endpoint — on loopback
//! TCP and unix sockets in a temporary directory, then drives the NSMgr's unix socket from this
//! process with N concurrent in-process clients (heal and refresh off) doing Request+Close cycles for
//! a fixed duration or number of cycles, optionally while holding M established connections.
//!
//! Security is on by default, as users run it: a development CA (`nsm identity init`) issues every
//! process and the bench's clients their own SVID, every hop is SPIFFE mTLS with ES256 tokens and the
//! default policies (`--insecure` measures plaintext with test tokens instead). The data plane is
//! `noop` by default (the control plane alone); `--dataplane kernel` (root) runs the kernel forwarder
//! and gives every connection a real veth pair: the registry, NSMgr and forwarder run in a node
//! namespace, the endpoint in its own, and the clients' interfaces land in a third — all created by
//! the bench, deleted on exit, with the root namespace checked unchanged.
//!
//! Reports cycles/s, cycle latency p50/p90/p99, failed requests, CPU per cycle per component
//! (utime+stime from `/proc/<pid>/stat`), RSS per component (VmRSS) idle and with the held
//! connections, and the NSMgr's RSS per held connection. The processes, namespaces and the directory
//! are removed on drop, even on error.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use clap::Args;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_chains::client::{ClientOptions, new_client};
use nsm_core::token::SharedTokenGenerator;
use nsm_core::{Chain, Clock, Ctx};
use nsm_identity::{PemFileSource, TlsIdentity, TransportSecurity};
use nsm_networkservice::authorize::SharedPolicy;
use nsm_networkservice::mechanisms::kernel::KernelClient;
use nsm_networkservice::mechanisms::recvfd::RecvFdClient;
use nsm_networkservice::mechanisms::sendfd::SendFdClient;
use serde_json::{Value, json};
use tokio::time::Instant;

/// `nsm bench mesh` options.
#[derive(Debug, Clone, Args)]
pub struct BenchMeshArgs {
    /// Concurrent clients; a comma-separated list runs each in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub concurrency: Vec<usize>,
    /// How long each run lasts (`10s`, `500ms`, `1m`); ignored with `--cycles`.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Request+Close cycles per run (instead of `--duration`).
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Connections established (and held through every run) before measuring.
    #[arg(long, default_value_t = 0)]
    pub hold: usize,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Plaintext gRPC and unsigned test tokens, no policies (default: dev-CA mTLS, ES256 tokens and
    /// the default policies on every hop).
    #[arg(long)]
    pub insecure: bool,
    /// `noop` (control plane only) or `kernel` (veth pairs in namespaces the bench creates; root).
    #[arg(long, value_enum, default_value = "noop")]
    pub dataplane: Dataplane,
    /// Run the NSMgr from this executable instead of this one (another build or code layout, or a
    /// copy whose pages no other process shares; see crates/nsm/layout).
    #[arg(long)]
    pub nsmgr_exe: Option<PathBuf>,
}

/// The forwarder's data plane in `nsm bench mesh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataplane {
    /// No interfaces: the control plane alone.
    Noop,
    /// The kernel forwarder: a veth pair per connection.
    Kernel,
}

impl Dataplane {
    fn as_str(self) -> &'static str {
        match self {
            Dataplane::Noop => "noop",
            Dataplane::Kernel => "kernel",
        }
    }
}

const SERVICE: &str = "icmp-responder";
const WAIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Our connections are not refreshed: their tokens outlive any run.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The components, in start order.
const COMPONENTS: [&str; 4] = ["registry", "nsmgr", "forwarder", "nse"];

/// Runs `nsm bench mesh`.
pub fn run(args: &BenchMeshArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nsm bench mesh: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(args.clone())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("nsm bench mesh: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// The mesh; on drop every process gets SIGTERM (SIGKILL after 5 s), then the namespaces and the
/// directory are removed.
struct Mesh {
    dir: PathBuf,
    procs: Vec<Proc>,
    /// `Some` with the development CA directory when secured.
    ca: Option<nsm_testbed::DevCa>,
    dataplane: Dataplane,
    /// Namespaces created for `--dataplane kernel` (node, endpoint, clients), deleted on drop.
    namespaces: Vec<String>,
}

/// Where the kernel mode puts things.
const NS_NODE: usize = 0;
const NS_NSE: usize = 1;
const NS_NSC: usize = 2;

impl Drop for Mesh {
    fn drop(&mut self) {
        for p in &self.procs {
            signal(p.child.id(), nix::sys::signal::Signal::SIGCONT);
            signal(p.child.id(), nix::sys::signal::Signal::SIGTERM);
        }
        for p in &mut self.procs {
            for _ in 0..250 {
                if p.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for ns in &self.namespaces {
            if let Err(e) = nsm_testbed::ip(&["netns", "delete", ns]) {
                eprintln!("nsm bench mesh: deleting namespace {ns}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

impl Mesh {
    fn new(secure: bool, dataplane: Dataplane) -> Result<Self, String> {
        use std::hash::{BuildHasher, Hasher};
        // Randomly keyed per process: a unique suffix without a clock.
        let nanos = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u32;
        let dir =
            std::env::temp_dir().join(format!("nsm-bench-mesh-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut mesh = Self {
            dir,
            procs: Vec::new(),
            ca: None,
            dataplane,
            namespaces: Vec::new(),
        };
        if secure {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let ca = nsm_testbed::DevCa::init(&exe, &mesh.dir.join("identity"), TRUST_DOMAIN)
                .map_err(|e| e.to_string())?;
            mesh.ca = Some(ca);
        }
        if dataplane == Dataplane::Kernel {
            for tag in ["node", "nse", "nsc"] {
                // Recorded before creation: a half-made namespace is deleted too.
                let ns = format!("nsmbench{}-{nanos:08x}-{tag}", std::process::id());
                mesh.namespaces.push(ns.clone());
                nsm_testbed::ip(&["netns", "add", &ns]).map_err(|e| format!("{ns}: {e}"))?;
                nsm_testbed::ip(&["-n", &ns, "link", "set", "lo", "up"])
                    .map_err(|e| format!("{ns}: {e}"))?;
            }
        }
        Ok(mesh)
    }

    /// The namespace `which` (kernel mode), else `None` (the caller's).
    fn ns(&self, which: usize) -> Option<&str> {
        self.namespaces.get(which).map(String::as_str)
    }

    /// The identity environment of `name`: its own SVID from the development CA, or plaintext.
    fn identity_env(&self, name: &str) -> Result<(&'static str, String), String> {
        match &self.ca {
            Some(ca) => {
                let dir = ca.issue(name).map_err(|e| e.to_string())?;
                Ok(("NSM_IDENTITY_DIR", dir.display().to_string()))
            }
            None => Ok(("NSM_INSECURE", "true".into())),
        }
    }

    fn sock(&self, name: &str) -> String {
        format!("unix://{}/{name}.sock", self.dir.display())
    }

    fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts `exe args` as `name`, in namespace `ns` (via `ip netns exec`, which keeps the pid) if
    /// given, with its own identity.
    fn spawn(
        &mut self,
        exe: &Path,
        name: &'static str,
        ns: Option<String>,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let (id_key, id_value) = self.identity_env(name)?;
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        for v in nsm_testbed::COMPONENT_ENV {
            cmd.env_remove(v);
        }
        cmd.env_remove("NSM_INSECURE");
        cmd.args(args)
            .env(id_key, id_value)
            .env("NSM_DATAPLANE", self.dataplane.as_str())
            .env("NSM_LOG_LEVEL", "WARN")
            .env("REGISTRY_MEMORY_LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("{name}: {e}"))?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        self.procs.push(Proc {
            name,
            child,
            lines: rx,
        });
        Ok(())
    }

    /// Waits for a stdout line of `name` satisfying `pred`.
    fn wait_line(&self, name: &str, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let p = self
            .procs
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("{name}: not started"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return Ok(l),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "{name}: did not become ready; log:\n{}",
                        self.log(name)
                    ));
                }
            }
        }
    }

    fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// registry → NSMgr (tcp + unix) → forwarder and endpoint; returns the NSMgr's unix socket. The
    /// NSMgr runs `nsmgr_exe` if given, everything else this executable.
    fn start(&mut self, nsmgr_exe: Option<&Path>) -> Result<PathBuf, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let node = self.ns(NS_NODE).map(String::from);
        self.spawn(
            &exe,
            "registry",
            node.clone(),
            &["registry", "--listen", "tcp://127.0.0.1:0"],
            &[],
        )?;
        let line = self.wait_line("registry", |l| l.starts_with("listening on "))?;
        let registry = line["listening on ".len()..].to_string();
        self.wait_line("registry", |l| l == "ready")?;

        // The NSMgr's public URL is its first tcp:// URL, so it needs a real port (in kernel mode the
        // node namespace's loopback is its own: any port is free there).
        let port = match node {
            Some(_) => 5001,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port(),
        };
        let nsmgr_sock = self.sock("nsmgr");
        self.spawn(
            nsmgr_exe.unwrap_or(&exe),
            "nsmgr",
            node.clone(),
            &["nsmgr"],
            &[
                ("NSM_NAME", "nsmgr-1".into()),
                (
                    "NSM_LISTEN_ON",
                    format!("tcp://127.0.0.1:{port},{nsmgr_sock}"),
                ),
                ("NSM_REGISTRY_URL", registry),
                ("NODE_NAME", "node-1".into()),
            ],
        )?;
        let want = format!("listening on {nsmgr_sock}");
        self.wait_line("nsmgr", |l| l == want)?;
        let fwd_sock = self.sock("forwarder");
        self.spawn(
            &exe,
            "forwarder",
            node,
            &["forwarder"],
            &[
                ("NSM_NAME", "forwarder-1".into()),
                ("NSM_CONNECT_TO", nsmgr_sock.clone()),
                ("NSM_LISTEN_ON", fwd_sock),
                // Local connections only: no tunnel ever uses it.
                ("NSM_TUNNEL_IP", "127.0.0.1".into()),
            ],
        )?;
        let nse_sock = self.sock("nse");
        let nse_ns = self.ns(NS_NSE).map(String::from);
        self.spawn(
            &exe,
            "nse",
            nse_ns,
            &["nse"],
            &[
                ("NSM_NAME", "icmp-server".into()),
                ("NSM_CONNECT_TO", nsmgr_sock),
                ("NSM_LISTEN_ON", nse_sock),
                ("NSM_SERVICE_NAMES", SERVICE.into()),
            ],
        )?;
        Ok(self.dir.join("nsmgr.sock"))
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state (3rd field) … utime (14th), stime (15th).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `RssAnon:`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// (name, pid) of every component and of this process (`bench` = the clients).
fn pids(mesh: &Mesh) -> Vec<(&'static str, u32)> {
    let mut v: Vec<(&'static str, u32)> = COMPONENTS
        .iter()
        .filter_map(|n| mesh.pid(n).map(|p| (*n, p)))
        .collect();
    v.push(("bench (clients)", std::process::id()));
    v
}

fn sample_cpu(pids: &[(&'static str, u32)]) -> Vec<u64> {
    pids.iter()
        .map(|(_, p)| cpu_ticks(*p).unwrap_or(0))
        .collect()
}

fn sample_rss(pids: &[(&'static str, u32)]) -> Vec<u64> {
    pids.iter().map(|(_, p)| rss_kib(*p).unwrap_or(0)).collect()
}

/// Hooks for looking into the idle components (crates/nsm/layout/README.md): with
/// `NSM_BENCH_SMAPS=<dir>`, copies each one's `/proc/<pid>/smaps` to `<dir>/<component>.smaps`; with
/// `NSM_BENCH_PAUSE_IDLE=<seconds>`, prints the pids and waits that long before the cycles start.
async fn inspect_idle(pids: &[(&'static str, u32)]) -> Result<(), String> {
    if let Some(dir) = std::env::var_os("NSM_BENCH_SMAPS") {
        let dir = std::path::PathBuf::from(dir);
        for (name, pid) in pids {
            let file = name.split(' ').next().unwrap_or(name);
            let to = dir.join(format!("{file}.smaps"));
            std::fs::read(format!("/proc/{pid}/smaps"))
                .and_then(|s| std::fs::write(&to, s))
                .map_err(|e| format!("NSM_BENCH_SMAPS: {name} to {}: {e}", to.display()))?;
        }
    }
    if let Ok(v) = std::env::var("NSM_BENCH_PAUSE_IDLE") {
        let secs: u64 = v
            .trim()
            .parse()
            .map_err(|_| format!("NSM_BENCH_PAUSE_IDLE: expected whole seconds, got {v:?}"))?;
        eprintln!("idle components (pausing {secs} s): {pids:?}");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    Ok(())
}

/// RssAnon: the part of VmRSS that is the process's own memory (the rest is mostly the `nsm`
/// executable's pages, shared by every component).
fn sample_anon(pids: &[(&'static str, u32)]) -> Vec<u64> {
    pids.iter()
        .map(|(_, p)| status_kib(*p, "RssAnon:").unwrap_or(0))
        .collect()
}

/// PSS (`/proc/<pid>/smaps_rollup`): the process's own pages plus its share of the pages it maps
/// together with others — here mostly the `nsm` executable, mapped by every component of a node.
fn sample_pss(pids: &[(&'static str, u32)]) -> Vec<u64> {
    pids.iter()
        .map(|(_, p)| {
            std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Pss:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What every in-process client shares: its identity, token generator, policies and the namespace
/// its interfaces go to.
#[derive(Clone)]
struct ClientSetup {
    security: TransportSecurity,
    tokens: SharedTokenGenerator,
    policies: Option<Vec<SharedPolicy>>,
    netns_url: String,
    /// Kernel mode: pass the clients' namespace to the NSMgr as an fd (`sendfd`, as `nsm nsc` does).
    /// Without it the NSMgr's `sendfd` passes the file it was named back with the answer, as
    /// `inode://`, and the Close that carries that value waits in its `recvfd` for an fd that never
    /// comes (the call's whole deadline).
    pass_netns: bool,
}

impl ClientSetup {
    /// Secured with the SVID `bench-client` from the mesh's CA, or plaintext; the interfaces go to
    /// the clients' namespace in kernel mode, else nowhere real (the noop forwarder never opens it).
    fn new(mesh: &Mesh) -> Result<Self, String> {
        let security = match &mesh.ca {
            Some(ca) => {
                nsm_identity::install_crypto_provider();
                let dir = ca.issue("bench-client").map_err(|e| e.to_string())?;
                let source = PemFileSource::from_dir(&dir, Duration::from_secs(2))
                    .map_err(|e| format!("bench client identity: {e}"))?;
                TransportSecurity::Tls(
                    TlsIdentity::new(source).map_err(|e| format!("bench client identity: {e}"))?,
                )
            }
            None => TransportSecurity::Insecure,
        };
        let tokens = crate::cmd::common::tokens(&security, false, TOKEN_LIFETIME);
        let policies = crate::cmd::common::policies("nsm bench mesh", None, &security, true)
            .map_err(|_| "client policies".to_string())?;
        let nsc = mesh.ns(NS_NSC);
        let netns_url = match &nsc {
            Some(ns) => format!("file:///var/run/netns/{ns}"),
            None => format!("file:///proc/{}/ns/net", std::process::id()),
        };
        Ok(Self {
            security,
            tokens,
            policies,
            netns_url,
            pass_netns: nsc.is_some(),
        })
    }
}

/// A client chain named `name`. Its KERNEL interface name derives from each connection's id
/// (`icmp-respo-<first 4 characters>`), so ids that differ in their first 4 characters never collide
/// in the clients' namespace.
fn client(sock: &Path, name: &str, setup: &ClientSetup) -> Chain {
    let mut additional: Vec<nsm_core::chain::Element> = vec![Arc::new(
        KernelClient::new(None).with_netns_url(setup.netns_url.clone()),
    )];
    if setup.pass_netns {
        // recvfd claims the copy of the namespace the NSMgr's sendfd passes back on Close.
        additional.push(Arc::new(RecvFdClient::new()));
        additional.push(Arc::new(SendFdClient::new()));
    }
    new_client(ClientOptions {
        url: Some(NsmUrl::Unix(sock.to_path_buf())),
        additional,
        dial_timeout: Duration::from_secs(5),
        security: setup.security.clone(),
        authorize: crate::cmd::common::client_authorize(setup.policies.clone()),
        ..ClientOptions::new(name.to_string(), setup.tokens.clone())
    })
}

/// The trust domain of the bench's development CA.
const TRUST_DOMAIN: &str = "nsm.local";

fn request(id: String) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id,
            network_service: SERVICE.into(),
            ..Default::default()
        }),
        mechanism_preferences: Vec::new(),
    }
}

async fn request_once(chain: &Chain, id: String) -> Result<Connection, String> {
    let mut ctx = Ctx::new(Clock::system()).with_timeout(REQUEST_TIMEOUT);
    chain
        .run_request(&mut ctx, request(id))
        .await
        .map_err(|e| e.to_string())
}

async fn close_once(chain: &Chain, conn: Connection) -> Result<(), String> {
    let mut ctx = Ctx::new(Clock::system()).with_timeout(REQUEST_TIMEOUT);
    chain
        .run_close(&mut ctx, conn)
        .await
        .map_err(|e| e.to_string())
}

/// Until the forwarder and the endpoint are registered, Requests fail: retry one for [`WAIT`].
async fn wait_ready(sock: &Path, setup: &ClientSetup) -> Result<(), String> {
    let chain = client(sock, "bench-ready", setup);
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let mut ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_secs(2));
        match chain
            .run_request(&mut ctx, request(format!("bench-ready-{n}")))
            .await
        {
            Ok(conn) => return close_once(&chain, conn).await,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no connection within {WAIT:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What a run measured.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    failed: u64,
    errors: Vec<String>,
    elapsed: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// `concurrency` workers doing Request+Close until `cycles` are done or `duration` has passed.
async fn run_cycles(
    sock: &Path,
    setup: &ClientSetup,
    tag: usize,
    concurrency: usize,
    duration: Duration,
    cycles: Option<u64>,
) -> Run {
    let out = Arc::new(Mutex::new(Run::default()));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let chain = client(sock, &format!("bench-{tag}-{w}"), setup);
        let (out, next, stop) = (out.clone(), next.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut failed, mut errors) = (0u64, Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed)
                    || cycles.is_some_and(|c| i >= c)
                    || (cycles.is_none() && Instant::now() >= deadline)
                {
                    break;
                }
                let t = Instant::now();
                let result = match request_once(&chain, format!("{w:04x}-r{tag}-{i}")).await {
                    Ok(conn) => close_once(&chain, conn)
                        .await
                        .map_err(|e| format!("close: {e}")),
                    Err(e) => Err(format!("request: {e}")),
                };
                match result {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        failed += 1;
                        if errors.len() < 3 {
                            errors.push(e);
                        }
                    }
                }
            }
            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
            o.latencies.extend(lat);
            o.failed += failed;
            for e in errors {
                if o.errors.len() < 5 && !o.errors.contains(&e) {
                    o.errors.push(e);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut o = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
    o.elapsed = start.elapsed();
    o.latencies.sort();
    o
}

/// Establishes `m` connections (32 at a time); returns them with their chains.
async fn hold(
    sock: &Path,
    setup: &ClientSetup,
    m: usize,
) -> Result<Vec<(Arc<Chain>, Connection)>, String> {
    let chains: Vec<Arc<Chain>> = (0..32.min(m.max(1)))
        .map(|i| Arc::new(client(sock, &format!("bench-hold-{i}"), setup)))
        .collect();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for chain in chains {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= m as u64 {
                    return Ok::<_, String>(held);
                }
                let conn = request_once(&chain, format!("h{i:03x}-hold"))
                    .await
                    .map_err(|e| format!("held connection {i}: {e}"))?;
                held.push((chain.clone(), conn));
            }
        }));
    }
    let mut all = Vec::with_capacity(m);
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

async fn release(held: Vec<(Arc<Chain>, Connection)>) -> usize {
    let held = Arc::new(Mutex::new(held));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let held = held.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            loop {
                let item = held.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((chain, conn)) = item else {
                    return failed;
                };
                if close_once(&chain, conn).await.is_err() {
                    failed += 1;
                }
            }
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(0);
    }
    failed
}

// ---------------------------------------------------------------------------------------------
// The bench

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn bench(args: BenchMeshArgs) -> Result<bool, String> {
    let duration = crate::cmd::common::parse_duration("--duration", &args.duration)
        .map_err(|e| e.to_string())?;
    if args.concurrency.contains(&0) {
        return Err("--concurrency: 0 clients".into());
    }
    if args.dataplane == Dataplane::Kernel {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "--dataplane kernel: needs root (network namespaces and veth pairs)".into(),
            );
        }
        if args.hold > 0xfff {
            return Err(format!(
                "--hold {}: with --dataplane kernel at most 4095 (one veth pair per connection)",
                args.hold
            ));
        }
        if let Some(&c) = args.concurrency.iter().find(|&&c| c > 0xffff) {
            return Err(format!("--concurrency {c}: at most 65535 clients"));
        }
    }
    let root_before = match args.dataplane {
        Dataplane::Kernel => Some(nsm_testbed::root_snapshot().map_err(|e| e.to_string())?),
        Dataplane::Noop => None,
    };
    let mut mesh = Mesh::new(!args.insecure, args.dataplane)?;
    let sock = mesh.start(args.nsmgr_exe.as_deref())?;
    let with_logs = |mesh: &Mesh, e: String| {
        let logs: Vec<String> = COMPONENTS
            .iter()
            .map(|n| format!("--- {n} log ---\n{}", mesh.log(n)))
            .collect();
        format!("{e}\n{}", logs.join("\n"))
    };
    let setup = ClientSetup::new(&mesh)?;
    if let Err(e) = wait_ready(&sock, &setup).await {
        return Err(with_logs(&mesh, e));
    }
    let pids = pids(&mesh);
    let tck = clock_ticks_per_sec();
    // Let start-up work (registration, first dials) settle before the idle figures.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = sample_rss(&pids);
    let anon_idle = sample_anon(&pids);
    let pss_idle = sample_pss(&pids);
    inspect_idle(&pids).await?;
    let text = !args.json;
    let security = if args.insecure {
        "NSM_INSECURE=true: plaintext, test tokens, no policies"
    } else {
        "dev-CA SPIFFE mTLS, ES256 tokens, default policies on every hop"
    };
    let placement = match mesh.ns(NS_NODE) {
        Some(node) => format!(
            "in namespace {node} (endpoint in {}, client interfaces in {})",
            mesh.ns(NS_NSE).unwrap_or_default(),
            mesh.ns(NS_NSC).unwrap_or_default()
        ),
        None => "on loopback".to_string(),
    };
    let describe = format!(
        "registry, nsmgr, forwarder (NSM_DATAPLANE={}), nse {placement}, unix sockets in {}; {security}",
        args.dataplane.as_str(),
        mesh.dir.display(),
    );
    if text {
        println!(
            "mesh: {describe}; {} per run; clients in this process",
            args.cycles
                .map_or(format!("{duration:?}"), |c| format!("{c} cycles")),
        );
        let idle: Vec<String> = pids
            .iter()
            .zip(rss_idle.iter().zip(&anon_idle).zip(&pss_idle))
            .map(|((n, _), ((r, a), p))| {
                format!("{n} {} (anon {}, PSS {})", mib(*r), mib(*a), mib(*p))
            })
            .collect();
        println!("RSS idle: {}", idle.join(", "));
    }

    let mut held = Vec::new();
    let mut hold_json = Value::Null;
    let rss_held = if args.hold > 0 {
        let t = Instant::now();
        held = match hold(&sock, &setup, args.hold).await {
            Ok(h) => h,
            Err(e) => return Err(with_logs(&mesh, e)),
        };
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = sample_rss(&pids);
        let anon = sample_anon(&pids);
        let per = |i: usize| (rss[i] as f64 - rss_idle[i] as f64) * 1024.0 / args.hold as f64;
        let nsmgr = pids.iter().position(|(n, _)| *n == "nsmgr").unwrap_or(0);
        if text {
            let parts: Vec<String> = pids
                .iter()
                .enumerate()
                .map(|(i, (n, _))| {
                    format!(
                        "{n} {} (anon {}, {:+.0} B/conn)",
                        mib(rss[i]),
                        mib(anon[i]),
                        per(i)
                    )
                })
                .collect();
            println!(
                "held {} connections (established in {:.2} s); RSS: {}",
                args.hold,
                took.as_secs_f64(),
                parts.join(", ")
            );
            println!(
                "NSMgr RSS per held connection: {:.2} KiB",
                per(nsmgr) / 1024.0
            );
        }
        hold_json = json!({
            "connections": args.hold,
            "establish_s": took.as_secs_f64(),
            "rss_kib": pids.iter().zip(&rss).map(|((n, _), r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
            "rss_anon_kib": pids.iter().zip(&anon).map(|((n, _), r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
            "nsmgr_bytes_per_connection": per(nsmgr),
        });
        Some(rss)
    } else {
        None
    };

    let mut runs = Vec::new();
    let mut ok = true;
    for (tag, &c) in args.concurrency.iter().enumerate() {
        let cpu0 = sample_cpu(&pids);
        let r = run_cycles(&sock, &setup, tag, c, duration, args.cycles).await;
        let cpu1 = sample_cpu(&pids);
        let rss = sample_rss(&pids);
        let n = r.latencies.len() as f64;
        let rate = n / r.elapsed.as_secs_f64().max(1e-9);
        let cpu: Vec<f64> = cpu0
            .iter()
            .zip(&cpu1)
            .map(|(a, b)| (b.saturating_sub(*a)) as f64 * 1e3 / tck / n.max(1.0))
            .collect();
        let (p50, p90, p99) = (
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.9),
            percentile(&r.latencies, 0.99),
        );
        ok &= r.failed == 0;
        if text {
            println!(
                "concurrency {c:>3}: {} cycles in {:.2} s = {rate:.0}/s; cycle p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms; failed {}",
                r.latencies.len(),
                r.elapsed.as_secs_f64(),
                ms(p50),
                ms(p90),
                ms(p99),
                ms(r.latencies.last().copied().unwrap_or_default()),
                r.failed,
            );
            for e in &r.errors {
                println!("    error: {e}");
            }
            let parts: Vec<String> = pids
                .iter()
                .zip(&cpu)
                .map(|((name, _), c)| format!("{name} {c:.3}"))
                .collect();
            println!("    CPU ms/cycle: {}", parts.join(", "));
            let parts: Vec<String> = pids
                .iter()
                .zip(&rss)
                .map(|((name, _), r)| format!("{name} {}", mib(*r)))
                .collect();
            println!("    RSS after: {}", parts.join(", "));
        }
        runs.push(json!({
            "concurrency": c,
            "cycles": r.latencies.len(),
            "seconds": r.elapsed.as_secs_f64(),
            "cycles_per_s": rate,
            "latency_ms": {"p50": ms(p50), "p90": ms(p90), "p99": ms(p99),
                "max": ms(r.latencies.last().copied().unwrap_or_default())},
            "failed": r.failed,
            "errors": r.errors,
            "cpu_ms_per_cycle": pids.iter().zip(&cpu).map(|((n, _), c)| (n.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
            "rss_kib_after": pids.iter().zip(&rss).map(|((n, _), r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    let failed_closes = release(held).await;
    if text && args.hold > 0 {
        println!("closed the held connections ({failed_closes} failed)");
    }
    if args.json {
        let doc = json!({
            "mesh": describe,
            "rss_kib_idle": pids.iter().zip(&rss_idle).map(|((n, _), r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
            "pss_kib_idle": pids.iter().zip(&pss_idle).map(|((n, _), r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
            "rss_anon_kib_idle": pids.iter().zip(&anon_idle).map(|((n, _), r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
            "hold": hold_json,
            "rss_kib_held": rss_held,
            "runs": runs,
            "held_close_failures": failed_closes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    }
    drop(mesh);
    if let Some(before) = root_before {
        let after = nsm_testbed::root_snapshot().map_err(|e| e.to_string())?;
        if before != after {
            return Err(
                "the root network namespace changed during the run (links, addresses or routes)"
                    .into(),
            );
        }
    }
    Ok(ok)
}
