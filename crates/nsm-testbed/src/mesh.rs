//! [`Testbed`]: namespaces, processes and their teardown.

use crate::devca::DevCa;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::ip::{ip, ip_ok};
use crate::now;
use crate::proc::Proc;
use crate::state::{ProcRecord, ProcRef, State, state_base};

/// Stop order: clients first (their Close still finds every hop alive), the registry last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// `nsm nsc`.
    Client,
    /// `nsm nse`.
    Endpoint,
    /// `nsm forwarder`.
    Forwarder,
    /// `nsm nsmgr`.
    Nsmgr,
    /// `nsm registry`.
    Registry,
}

/// How to build a [`Testbed`].
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// Unique run id; every namespace is `<id>-<tag>`.
    pub id: String,
    /// Parent of the run directory (state file, logs, sockets).
    pub base: PathBuf,
    /// The `nsm` executable.
    pub nsm_bin: PathBuf,
    /// `NSM_LOG_LEVEL` of every component (readiness is read from INFO lines, so INFO or finer).
    pub log_level: String,
    /// Extra environment for every component (e.g. identity settings).
    pub env: Vec<(String, String)>,
    /// Underlay on fd00:100::/64 instead of 169.254.100.0/24.
    pub underlay_v6: bool,
    /// How long a component may take to become ready.
    pub ready_timeout: Duration,
    /// Secure the mesh with a development identity in this trust domain (default `nsm.local`):
    /// `nsm identity init` makes a CA in `<run dir>/identity` and every component gets its own SVID
    /// (`spiffe://<trust domain>/<component name>`) through `NSM_IDENTITY_DIR`. `None` runs the
    /// components with `NSM_INSECURE=true` (plaintext, test tokens), unless `env` names an identity.
    pub dev_identity: Option<String>,
}

impl TestbedOptions {
    /// Defaults: state under [`state_base`], INFO logs, IPv4 underlay, 30 s readiness.
    pub fn new(id: impl Into<String>, nsm_bin: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            base: state_base(),
            nsm_bin: nsm_bin.into(),
            log_level: "INFO".into(),
            env: Vec::new(),
            underlay_v6: false,
            ready_timeout: Duration::from_secs(30),
            dev_identity: Some("nsm.local".into()),
        }
    }
}

/// A node: its namespace, underlay address and the names of its NSMgr and forwarder.
#[derive(Debug, Clone)]
pub struct Node {
    /// 1-based.
    pub index: usize,
    /// Its namespace.
    pub ns: String,
    /// Underlay address (the forwarder's tunnel IP, the NSMgr's public address).
    pub ip: IpAddr,
    /// NSMgr name (`nsmgr-<i>`).
    pub nsmgr: String,
    /// Forwarder name (`forwarder-<i>`).
    pub forwarder: String,
    /// The NSMgr's unix socket (what pods on this node connect to).
    pub socket: PathBuf,
}

impl Node {
    /// `unix://<socket>`.
    pub fn nsmgr_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `tcp://<ip>:5001` (bracketed for IPv6).
    pub fn public_url(&self) -> String {
        format!("tcp://{}", sock_addr(self.ip, 5001))
    }
}

fn sock_addr(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// What `nsm nsc` printed for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Connection id.
    pub id: String,
    /// Network service.
    pub service: String,
    /// Path segment names, client first.
    pub path: Vec<String>,
    /// Mechanism type at the client.
    pub mechanism: String,
    /// Client interface name.
    pub interface: String,
    /// Client addresses (`addr/prefix`).
    pub src: Vec<String>,
    /// Endpoint addresses.
    pub dst: Vec<String>,
}

impl Connected {
    /// Parses `connected <id> <svc> path=a -> b mechanism=M interface=I src=… dst=…`.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("connected ")?;
        let (id, rest) = rest.split_once(' ')?;
        let (service, rest) = rest.split_once(' ')?;
        let rest = rest.strip_prefix("path=")?;
        let (path, rest) = rest.split_once(" mechanism=")?;
        let (mechanism, rest) = rest.split_once(" interface=")?;
        let (interface, rest) = rest.split_once(" src=")?;
        let (src, dst) = rest.split_once(" dst=")?;
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        Some(Self {
            id: id.to_string(),
            service: service.to_string(),
            path: path.split(" -> ").map(String::from).collect(),
            mechanism: mechanism.to_string(),
            interface: interface.to_string(),
            src: list(src),
            dst: list(dst),
        })
    }

    /// The first client address without its prefix length.
    pub fn src_ip(&self) -> Option<IpAddr> {
        first_ip(&self.src)
    }

    /// The first endpoint address without its prefix length.
    pub fn dst_ip(&self) -> Option<IpAddr> {
        first_ip(&self.dst)
    }
}

fn first_ip(v: &[String]) -> Option<IpAddr> {
    v.first()?.split('/').next()?.parse().ok()
}

/// What [`Testbed::teardown`] did.
#[derive(Debug, Default, Clone)]
pub struct Teardown {
    /// Processes that exited on SIGTERM.
    pub stopped: usize,
    /// Processes that needed SIGKILL.
    pub killed: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Problems.
    pub errors: Vec<String>,
}

/// [`Testbed::wrapper`] for a process with its own PID namespace and `/proc` (as in a container): it
/// cannot open another process's `/proc/<pid>/…`, so its network namespace must be passed as an fd.
/// `--kill-child` ends it with its `unshare` parent.
pub const OWN_PID_NAMESPACE: [&str; 5] =
    ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// A local mesh in network namespaces. See the crate docs.
pub struct Testbed {
    /// Run id.
    pub id: String,
    /// Run directory: state file, logs, sockets.
    pub dir: PathBuf,
    /// Nodes added so far.
    pub nodes: Vec<Node>,
    /// Command prefix for the processes started from now on, run inside `ip netns exec` — e.g.
    /// [`OWN_PID_NAMESPACE`] for pods in their own PID namespace. Stopping such a process signals
    /// its process group.
    pub wrapper: Vec<String>,
    opts: TestbedOptions,
    /// The development CA when [`TestbedOptions::dev_identity`] is set.
    ca: Option<DevCa>,
    state: State,
    procs: Vec<Proc>,
    underlay: Option<String>,
    cancel: Arc<AtomicBool>,
    done: bool,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// The environment variables that give a component its identity (or none): a component with any of
/// them set gets no development SVID.
const IDENTITY_VARS: [&str; 3] = ["NSM_IDENTITY_DIR", "SPIFFE_ENDPOINT_SOCKET", "NSM_INSECURE"];

impl Testbed {
    /// Creates the run directory and its state file (nothing in the kernel yet).
    pub fn new(opts: TestbedOptions) -> io::Result<Self> {
        let dir = opts.base.join(&opts.id);
        if dir.exists() {
            return Err(err(format!(
                "{} already exists (a run with this id); run `nsm down` first",
                dir.display()
            )));
        }
        std::fs::create_dir_all(&dir)?;
        let owner =
            ProcRef::of(std::process::id()).ok_or_else(|| err("cannot read /proc/self/stat"))?;
        let state = State {
            id: opts.id.clone(),
            owner,
            ..Default::default()
        };
        state.save(&dir)?;
        let ca = match &opts.dev_identity {
            Some(td) => Some(DevCa::init(&opts.nsm_bin, &dir.join("identity"), td)?),
            None => None,
        };
        Ok(Self {
            ca,
            id: opts.id.clone(),
            dir,
            nodes: Vec::new(),
            wrapper: Vec::new(),
            opts,
            state,
            procs: Vec::new(),
            underlay: None,
            cancel: Arc::new(AtomicBool::new(false)),
            done: false,
        })
    }

    /// A testbed with `nodes` nodes, each running an NSMgr and a kernel forwarder, and a registry.
    /// `forwarder_env` is added to every forwarder's environment.
    pub fn mesh(
        opts: TestbedOptions,
        nodes: usize,
        forwarder_env: &[(&str, &str)],
    ) -> io::Result<Self> {
        let mut tb = Self::new(opts)?;
        tb.add_underlay()?;
        for _ in 0..nodes {
            tb.add_node()?;
        }
        tb.start_registry()?;
        for i in 1..=nodes {
            tb.start_nsmgr(i)?;
        }
        for i in 1..=nodes {
            tb.start_forwarder(i, forwarder_env)?;
        }
        Ok(tb)
    }

    /// Set to stop waiting (Ctrl-C): every wait then fails with "interrupted".
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    fn check_cancel(&self) -> io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        Ok(())
    }

    /// `<id>-<tag>`.
    pub fn ns_name(&self, tag: &str) -> String {
        format!("{}-{tag}", self.id)
    }

    /// Creates namespace `<id>-<tag>` (recorded first) with `lo` up; returns its name.
    pub fn add_namespace(&mut self, tag: &str) -> io::Result<String> {
        let ns = self.ns_name(tag);
        self.state.namespaces.push(ns.clone());
        self.state.save(&self.dir)?;
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A pod namespace (`c1`, `e1`, …).
    pub fn add_pod(&mut self, tag: &str) -> io::Result<String> {
        self.add_namespace(tag)
    }

    /// The underlay namespace `<id>-u`: bridge `br0` with the registry's address.
    pub fn add_underlay(&mut self) -> io::Result<()> {
        let ns = self.add_namespace("u")?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        let addr = if self.opts.underlay_v6 {
            "fd00:100::fe/64"
        } else {
            "169.254.100.254/24"
        };
        ip(&["-n", &ns, "addr", "add", addr, "dev", "br0", "nodad"])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        self.underlay = Some(ns);
        Ok(())
    }

    fn underlay_ip(&self, i: usize) -> IpAddr {
        if self.opts.underlay_v6 {
            IpAddr::V6(std::net::Ipv6Addr::new(
                0xfd00, 0x100, 0, 0, 0, 0, 0, i as u16,
            ))
        } else {
            IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 100, i as u8))
        }
    }

    /// The registry's URL (on the underlay bridge).
    pub fn registry_url(&self) -> String {
        format!("tcp://{}", sock_addr(self.underlay_ip(0xfe), 5002))
    }

    /// The `nsm ctl` invocation that reaches this mesh: run in the underlay namespace (where the
    /// registry's address and every node's NSMgr are reachable), with an SVID of its own
    /// (`spiffe://<trust domain>/nsm-ctl`, issued here) or `NSM_INSECURE=true` when the mesh runs
    /// without identities. Returns the program and its arguments (`ip netns exec … nsm ctl --registry …`).
    pub fn ctl_command(&self) -> io::Result<Vec<String>> {
        let mut cmd = vec![
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            self.ns_name("u"),
            "env".into(),
        ];
        let given: Vec<String> = (self.opts.env.iter())
            .filter(|(k, _)| IDENTITY_VARS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        match &self.ca {
            Some(ca) if given.is_empty() => {
                let dir = ca.issue("nsm-ctl")?;
                cmd.push(format!("NSM_IDENTITY_DIR={}", dir.display()));
            }
            _ if given.is_empty() => cmd.push("NSM_INSECURE=true".into()),
            _ => cmd.extend(given),
        }
        cmd.push(self.opts.nsm_bin.display().to_string());
        cmd.push("ctl".into());
        cmd.push("--registry".into());
        cmd.push(self.registry_url());
        Ok(cmd)
    }

    /// Adds node `<id>-n<i>` joined to the underlay bridge; returns its index.
    pub fn add_node(&mut self) -> io::Result<usize> {
        let u = self
            .underlay
            .clone()
            .ok_or_else(|| err("add_underlay first"))?;
        let i = self.nodes.len() + 1;
        if i > 250 {
            return Err(err("at most 250 nodes"));
        }
        let ns = self.add_namespace(&format!("n{i}"))?;
        let port = format!("p{i}");
        ip(&[
            "-n", &u, "link", "add", &port, "type", "veth", "peer", "name", "ul", "netns", &ns,
        ])?;
        ip(&["-n", &u, "link", "set", &port, "master", "br0", "up"])?;
        let addr = self.underlay_ip(i);
        let plen = if addr.is_ipv6() { 64 } else { 24 };
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/{plen}"),
            "dev",
            "ul",
            "nodad",
        ])?;
        ip(&["-n", &ns, "link", "set", "ul", "up"])?;
        self.nodes.push(Node {
            index: i,
            ns,
            ip: addr,
            nsmgr: format!("nsmgr-{i}"),
            forwarder: format!("forwarder-{i}"),
            socket: self.dir.join(format!("nsmgr-{i}.sock")),
        });
        Ok(i)
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> io::Result<Node> {
        self.nodes
            .get(i.wrapping_sub(1))
            .cloned()
            .ok_or_else(|| err(format!("no node {i}")))
    }

    fn base_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("NSM_LOG_LEVEL".to_string(), self.opts.log_level.clone())];
        let has_identity = self
            .opts
            .env
            .iter()
            .any(|(k, _)| IDENTITY_VARS.contains(&k.as_str()));
        if self.opts.dev_identity.is_none() && !has_identity {
            env.push(("NSM_INSECURE".to_string(), "true".to_string()));
        }
        env.extend(self.opts.env.iter().cloned());
        env
    }

    /// Starts `nsm <args…>` in `ns` as `name`, recording it; `env` is added to the base environment.
    pub fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
        tier: Tier,
    ) -> io::Result<()> {
        if self
            .procs
            .iter_mut()
            .any(|p| p.name == name && p.exited().is_none())
        {
            return Err(err(format!("{name} is already running")));
        }
        let mut all = self.base_env();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let has_identity = all.iter().any(|(k, _)| IDENTITY_VARS.contains(&k.as_str()));
        if let (Some(ca), false) = (&self.ca, has_identity) {
            let dir = ca.issue(name)?;
            all.push(("NSM_IDENTITY_DIR".into(), dir.display().to_string()));
        }
        let log = self.dir.join(format!("{name}.log"));
        let p = Proc::spawn(
            name,
            ns,
            &self.wrapper,
            &self.opts.nsm_bin,
            args,
            &all,
            log,
            tier,
        )?;
        if let Some(r) = ProcRef::of(p.pid()) {
            self.state.processes.push(ProcRecord {
                name: name.to_string(),
                namespace: ns.to_string(),
                process: r,
            });
            self.state.save(&self.dir)?;
        }
        self.procs.retain(|q| q.name != name);
        self.procs.push(p);
        Ok(())
    }

    fn proc_mut(&mut self, name: &str) -> io::Result<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| err(format!("no process {name}")))
    }

    /// When `name` was started.
    pub fn started(&mut self, name: &str) -> io::Result<Instant> {
        Ok(self.proc_mut(name)?.started)
    }

    /// Its pid.
    pub fn pid(&mut self, name: &str) -> io::Result<u32> {
        Ok(self.proc_mut(name)?.pid())
    }

    /// Its log so far.
    pub fn log(&mut self, name: &str) -> String {
        self.proc_mut(name)
            .map(|p| p.log_text())
            .unwrap_or_default()
    }

    /// Its exit status, if it ended.
    pub fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        self.proc_mut(name).ok().and_then(Proc::exited)
    }

    /// Waits up to `timeout` for `name` to exit.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> io::Result<ExitStatus> {
        let start = now();
        loop {
            self.check_cancel()?;
            if let Some(s) = self.proc_mut(name)?.exited() {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                return Err(err(format!("{name} did not exit within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a line of `name`'s log contains `needle`; returns that line. Fails early if the process
    /// ends first (with the end of its log).
    pub fn wait_log(&mut self, name: &str, needle: &str, timeout: Duration) -> io::Result<String> {
        let start = now();
        loop {
            self.check_cancel()?;
            let p = self.proc_mut(name)?;
            let text = p.log_text();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(status) = p.exited() {
                // One more look: the line may have been written just before the exit.
                let text = p.log_text();
                if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_string());
                }
                return Err(err(format!(
                    "{name} exited ({status}) before printing {needle:?}:\n{}",
                    tail(&text, 15)
                )));
            }
            if start.elapsed() > timeout {
                return Err(err(format!(
                    "{name} did not print {needle:?} within {timeout:?}:\n{}",
                    tail(&text, 15)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the exit status if it exited on its own.
    pub fn stop(&mut self, name: &str, grace: Duration) -> io::Result<Option<ExitStatus>> {
        let p = self.proc_mut(name)?;
        p.signal(Signal::SIGTERM);
        if let Some(s) = p.wait_exit(grace) {
            return Ok(Some(s));
        }
        p.kill_now();
        Ok(None)
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self, name: &str) -> io::Result<()> {
        self.proc_mut(name)?.kill_now();
        Ok(())
    }

    /// Starts the registry in the underlay namespace and waits for `ready`.
    pub fn start_registry(&mut self) -> io::Result<()> {
        let u = self
            .underlay
            .clone()
            .ok_or_else(|| err("add_underlay first"))?;
        let url = self.registry_url();
        let level = self.opts.log_level.clone();
        self.spawn(
            "registry",
            &u,
            &["registry"],
            &[
                ("REGISTRY_MEMORY_LISTEN_ON", &url),
                ("REGISTRY_MEMORY_LOG_LEVEL", &level),
            ],
            Tier::Registry,
        )?;
        self.wait_log("registry", "ready", self.opts.ready_timeout)
            .map(drop)
    }

    /// Starts node `i`'s NSMgr (unix socket in the run directory + tcp on the node address).
    pub fn start_nsmgr(&mut self, i: usize) -> io::Result<()> {
        let n = self.node(i)?;
        let _ = std::fs::remove_file(&n.socket);
        let listen = format!("{},{}", n.nsmgr_url(), n.public_url());
        let reg = self.registry_url();
        let node_name = format!("node-{i}");
        self.spawn(
            &n.nsmgr,
            &n.ns,
            &["nsmgr"],
            &[
                ("NSM_NAME", &n.nsmgr),
                ("NSM_LISTEN_ON", &listen),
                ("NSM_REGISTRY_URL", &reg),
                ("NODE_NAME", &node_name),
            ],
            Tier::Nsmgr,
        )?;
        self.wait_log(&n.nsmgr, "nsmgr: ready", self.opts.ready_timeout)
            .map(drop)
    }

    /// Starts node `i`'s kernel forwarder (tunnel IP = node address) and waits until it registered.
    pub fn start_forwarder(&mut self, i: usize, env: &[(&str, &str)]) -> io::Result<()> {
        let n = self.node(i)?;
        let sock = format!(
            "unix://{}",
            self.dir.join(format!("{}.sock", n.forwarder)).display()
        );
        let _ = std::fs::remove_file(self.dir.join(format!("{}.sock", n.forwarder)));
        let tunnel = n.ip.to_string();
        let nsmgr = n.nsmgr_url();
        let mut all: Vec<(&str, &str)> = vec![
            ("NSM_NAME", &n.forwarder),
            ("NSM_CONNECT_TO", &nsmgr),
            ("NSM_LISTEN_ON", &sock),
            ("NSM_TUNNEL_IP", &tunnel),
        ];
        all.extend_from_slice(env);
        self.spawn(&n.forwarder, &n.ns, &["forwarder"], &all, Tier::Forwarder)?;
        self.wait_log(
            &n.forwarder,
            "forwarder: registered",
            self.opts.ready_timeout,
        )
        .map(drop)
    }

    /// Starts an icmp-responder `name` in `pod`, registered with node `node`'s NSMgr; waits until it
    /// registered.
    pub fn start_nse(
        &mut self,
        name: &str,
        pod: &str,
        node: usize,
        env: &[(&str, &str)],
    ) -> io::Result<()> {
        let n = self.node(node)?;
        let sock_path = self.dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock_path);
        let sock = format!("unix://{}", sock_path.display());
        let nsmgr = n.nsmgr_url();
        let mut all: Vec<(&str, &str)> = vec![
            ("NSM_NAME", name),
            ("NSM_CONNECT_TO", &nsmgr),
            ("NSM_LISTEN_ON", &sock),
        ];
        all.extend_from_slice(env);
        self.spawn(name, pod, &["nse"], &all, Tier::Endpoint)?;
        self.wait_log(name, "nse: registered", self.opts.ready_timeout)
            .map(drop)
    }

    /// Starts `nsm nsc` (`--once` if `once`) as `name` in `pod`, talking to node `node`'s NSMgr. Does not
    /// wait; see [`Testbed::wait_connected`].
    pub fn spawn_nsc(
        &mut self,
        name: &str,
        pod: &str,
        node: usize,
        services: &str,
        env: &[(&str, &str)],
        once: bool,
    ) -> io::Result<()> {
        let n = self.node(node)?;
        let nsmgr = n.nsmgr_url();
        let mut all: Vec<(&str, &str)> = vec![
            ("NSM_NAME", name),
            ("NSM_CONNECT_TO", &nsmgr),
            ("NSM_NETWORK_SERVICES", services),
        ];
        all.extend_from_slice(env);
        let args: &[&str] = if once { &["nsc", "--once"] } else { &["nsc"] };
        self.spawn(name, pod, args, &all, Tier::Client)
    }

    /// Waits for the client's `connected` line.
    pub fn wait_connected(&mut self, name: &str, timeout: Duration) -> io::Result<Connected> {
        let line = self.wait_log(name, "connected ", timeout)?;
        let start = line
            .find("connected ")
            .ok_or_else(|| err("no connected line"))?;
        Connected::parse(&line[start..]).ok_or_else(|| err(format!("cannot parse {line:?}")))
    }

    /// Every process's log, for a failure report.
    pub fn dump_logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            out.push_str(&format!(
                "----- {} (ns {}) {} -----\n{}\n",
                p.name,
                p.ns,
                p.log.display(),
                tail(&p.log_text(), lines)
            ));
        }
        out
    }

    /// Stops every process (clients first, tier by tier; SIGTERM, then SIGKILL after a grace period),
    /// deletes every namespace and the run directory. Idempotent.
    pub fn teardown(&mut self) -> Teardown {
        let mut report = Teardown::default();
        if self.done {
            return report;
        }
        self.done = true;
        for tier in [
            Tier::Client,
            Tier::Endpoint,
            Tier::Forwarder,
            Tier::Nsmgr,
            Tier::Registry,
        ] {
            let grace = if tier == Tier::Client {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(3)
            };
            for p in self.procs.iter_mut().filter(|p| p.tier == tier) {
                p.signal(Signal::SIGTERM);
            }
            for p in self.procs.iter_mut().filter(|p| p.tier == tier) {
                if p.exited().is_some() {
                    report.stopped += 1;
                    continue;
                }
                if p.wait_exit(grace).is_some() {
                    report.stopped += 1;
                } else {
                    p.kill_now();
                    report.killed.push(p.name.clone());
                }
            }
        }
        for ns in self.state.namespaces.iter().rev() {
            if Path::new("/run/netns").join(ns).exists() {
                if ip_ok(&["netns", "del", ns]) {
                    report.namespaces += 1;
                } else {
                    report.errors.push(format!("cannot delete namespace {ns}"));
                }
            }
        }
        if report.errors.is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                report
                    .errors
                    .push(format!("cannot remove {}: {e}", self.dir.display()));
            }
        } else {
            // Keep the state file so `nsm down` can retry.
            let _ = self.state.save(&self.dir);
        }
        report
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.done {
            eprintln!("testbed {}: logs\n{}", self.id, self.dump_logs(40));
        }
        let r = self.teardown();
        for e in r.errors {
            eprintln!("testbed {}: {e}", self.id);
        }
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Pings `dst` from inside namespace `ns` with our ICMP echo.
pub fn ping(ns: &str, dst: IpAddr, count: u16, timeout: Duration) -> io::Result<Vec<Duration>> {
    let netns = nsm_dataplane::netns::Netns::open(&Path::new("/run/netns").join(ns))?;
    nsm_dataplane::icmp::ping(Some(&netns), dst, count, timeout)
}

impl Testbed {
    /// Pings `dst` from `ns`.
    pub fn ping(
        &self,
        ns: &str,
        dst: IpAddr,
        count: u16,
        timeout: Duration,
    ) -> io::Result<Vec<Duration>> {
        ping(ns, dst, count, timeout)
    }

    /// Pings `dst` from `ns` every few milliseconds until a reply arrives; returns when it did.
    pub fn first_ping(&self, ns: &str, dst: IpAddr, timeout: Duration) -> io::Result<Instant> {
        let start = now();
        let netns = nsm_dataplane::netns::Netns::open(&Path::new("/run/netns").join(ns))?;
        loop {
            self.check_cancel()?;
            if let Ok(r) =
                nsm_dataplane::icmp::ping(Some(&netns), dst, 1, Duration::from_millis(50))
                && !r.is_empty()
            {
                return Ok(now());
            }
            if start.elapsed() > timeout {
                return Err(err(format!("no echo reply from {dst} within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_nsc_line() {
        let c = Connected::parse(
            "connected nsc-0 icmp-responder path=nsc -> nsmgr-1 -> forwarder-1 -> icmp-server mechanism=KERNEL interface=nsm-1 src=169.254.200.1/32 dst=169.254.200.0/32,fd00::1/128",
        )
        .unwrap();
        assert_eq!(c.id, "nsc-0");
        assert_eq!(c.service, "icmp-responder");
        assert_eq!(c.path.len(), 4);
        assert_eq!(c.interface, "nsm-1");
        assert_eq!(c.src, vec!["169.254.200.1/32"]);
        assert_eq!(c.dst.len(), 2);
        assert_eq!(c.dst_ip(), Some("169.254.200.0".parse().unwrap()));
        assert!(Connected::parse("connected x").is_none());
    }
}
