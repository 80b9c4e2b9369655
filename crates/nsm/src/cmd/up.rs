//! `nsm up`: a whole local mesh in network namespaces in one command, and `nsm down`, which removes
//! what a crashed `nsm up` left behind.
//!
//! `nsm up` (as root) builds, with nsm-testbed: an underlay namespace with a bridge, `--nodes` node
//! namespaces each running `nsm nsmgr` and a kernel `nsm forwarder`, a registry, `--endpoints`
//! icmp-responders in endpoint pods (from the last node backwards) and `--clients` `nsm nsc` in client pods
//! (from node 1 on). It prints each part as it comes up, then every connection hop by hop with the
//! interfaces the forwarders made, then live ping round-trip times until Ctrl-C, which tears everything
//! down. `--once` checks ping both ways instead, tears down and exits 0, or 1 with the reason.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use nsm_testbed::{Connected, LinkInfo, Testbed, TestbedOptions, links, now, root_snapshot};

/// `nsm up` options.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Nodes (each: a namespace with an NSMgr and a kernel forwarder), 1–16.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Client pods (`nsm nsc`), placed on node 1, 2, … in turn; 1–32.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Endpoint pods (icmp-responder `nsm nse`), placed on the last node, the one before, …; 1–16.
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    /// Mechanism the clients request. Only `kernel` exists so far (a veth into the pod for payload
    /// ETHERNET, a TUN for payload IP).
    #[arg(long, default_value = "kernel")]
    pub mechanism: String,
    /// Payload of the service (NSM_PAYLOAD of the endpoints): `ETHERNET` goes over VXLAN between nodes,
    /// `IP` over a userspace WireGuard link.
    #[arg(long, default_value = "ETHERNET")]
    pub payload: String,
    /// Network service the endpoints provide and the clients request.
    #[arg(long, default_value = "icmp-responder")]
    pub service: String,
    /// Verify end-to-end connectivity (ping both ways), tear down and exit: 0 if it works, 1 with the reason.
    #[arg(long)]
    pub once: bool,
    /// Echo requests per direction and client with --once.
    #[arg(long, default_value_t = 3)]
    pub count: u16,
    /// VXLAN port of every forwarder (NSM_VXLAN_PORT; default 4789).
    #[arg(long)]
    pub vxlan_port: Option<u16>,
    /// Component log level (logs are in the run directory).
    #[arg(long, default_value = "INFO")]
    pub log_level: String,
    /// Where runs keep state, logs and sockets (default /run/nsm-up).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// `nsm down` options.
#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    /// Only this run (its id, e.g. `nsmup1234`); default: every run whose `nsm up` is gone.
    #[arg(long)]
    pub id: Option<String>,
    /// Where runs keep state (default /run/nsm-up).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn step(what: &str, detail: &str, took: Duration) {
    println!("  \u{2713} {what:<14} {detail}  ({})", ms(took));
}

/// Runs `nsm up`.
pub fn run(args: &UpArgs) -> ExitCode {
    if let Err(e) = check_args(args) {
        eprintln!("nsm up: {e}");
        return ExitCode::from(2);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "nsm up: needs root (it creates network namespaces and runs the forwarders' kernel data plane); \
             try: sudo {} up",
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "nsm".into())
        );
        return ExitCode::FAILURE;
    }
    if !nsm_testbed::ip_ok(&["-V"]) {
        eprintln!("nsm up: `ip` (iproute2) is missing: apt-get install -y iproute2");
        return ExitCode::FAILURE;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nsm up: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let cancel = cancel.clone();
        rt.spawn(async move {
            if super::common::wait_for_signal().await.is_ok() {
                cancel.store(true, Ordering::SeqCst);
            }
        });
    }
    let code = up(args, &cancel);
    drop(rt);
    code
}

fn check_args(a: &UpArgs) -> Result<(), String> {
    if a.mechanism != "kernel" {
        return Err(format!(
            "--mechanism {:?}: only `kernel` is supported for now (a veth or TUN into the pod); \
             memif and vfio are not implemented",
            a.mechanism
        ));
    }
    for (flag, v, max) in [
        ("--nodes", a.nodes, 16),
        ("--clients", a.clients, 32),
        ("--endpoints", a.endpoints, 16),
    ] {
        if v == 0 || v > max {
            return Err(format!("{flag} {v}: must be 1..={max}"));
        }
    }
    if a.service.is_empty() || a.service.contains(['/', '?', '@', ' ']) {
        return Err(format!(
            "--service {:?}: not a network service name",
            a.service
        ));
    }
    if !matches!(a.payload.as_str(), "ETHERNET" | "IP") {
        return Err(format!(
            "--payload {:?}: must be ETHERNET (VXLAN between nodes) or IP (WireGuard)",
            a.payload
        ));
    }
    if a.count == 0 {
        return Err("--count must be at least 1".into());
    }
    Ok(())
}

/// One client and what it got.
struct Client {
    name: String,
    pod: String,
    node: usize,
    conn: Option<Connected>,
    setup: Duration,
}

struct Endpoint {
    name: String,
    pod: String,
    node: usize,
}

fn up(args: &UpArgs, cancel: &Arc<AtomicBool>) -> ExitCode {
    let bin = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("nsm up: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = args
        .state_dir
        .clone()
        .unwrap_or_else(nsm_testbed::state_base);
    let leftovers = leftover_runs(&base);
    if !leftovers.is_empty() {
        println!(
            "note: runs of an earlier `nsm up` that ended without cleaning up: {} (`nsm down` removes them)",
            leftovers.join(", ")
        );
    }
    let root_before = root_snapshot().ok();
    let id = format!("nsmup{}", std::process::id());
    let mut opts = TestbedOptions::new(&id, bin);
    opts.base = base;
    opts.log_level = args.log_level.clone();
    let mut tb = match Testbed::new(opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nsm up: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C interrupts any wait of the testbed too.
    let tb_cancel = tb.cancel_flag();
    let watcher = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            while !cancel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                if tb_cancel.load(Ordering::SeqCst) {
                    return;
                }
            }
            tb_cancel.store(true, Ordering::SeqCst);
        })
    };
    println!(
        "nsm up: run {id}: {} node(s), {} endpoint(s), {} client(s), mechanism {}, service {} (payload {})",
        args.nodes, args.endpoints, args.clients, args.mechanism, args.service, args.payload
    );
    println!("  state, logs and sockets in {}", tb.dir.display());
    let result = build_and_run(args, &mut tb, cancel);
    let failed = match &result {
        Ok(()) => false,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            println!("interrupted");
            false
        }
        Err(e) => {
            eprintln!("nsm up: {e}");
            true
        }
    };
    println!("tearing down {id} …");
    let t = now();
    let report = tb.teardown();
    println!(
        "  stopped {} process(es){}, removed {} namespace(s)  ({})",
        report.stopped,
        if report.killed.is_empty() {
            String::new()
        } else {
            format!(", killed {}", report.killed.join(", "))
        },
        report.namespaces,
        ms(t.elapsed())
    );
    for e in &report.errors {
        eprintln!("nsm up: teardown: {e} (`nsm down` retries)");
    }
    // Stop the watcher thread.
    tb.cancel_flag().store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let mut root_changed = false;
    if let (Some(before), Ok(after)) = (root_before, root_snapshot())
        && before != after
    {
        root_changed = true;
        eprintln!(
            "nsm up: the root network namespace changed during the run (links, addresses or routes) — \
             not by nsm up, which never touches it, but worth a look"
        );
    }
    if failed || !report.errors.is_empty() || (args.once && root_changed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn leftover_runs(base: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("state.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let pid = v["owner"]["pid"].as_u64()?;
            let start = v["owner"]["start_time"].as_u64()?;
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(19)?.parse::<u64>().ok()
                })
                == Some(start);
            (!alive).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

fn build_and_run(args: &UpArgs, tb: &mut Testbed, cancel: &AtomicBool) -> std::io::Result<()> {
    let t = now();
    tb.add_underlay()?;
    step(
        "underlay",
        &format!(
            "namespace {}: bridge br0, registry address 169.254.100.254/24",
            tb.ns_name("u")
        ),
        t.elapsed(),
    );
    for _ in 0..args.nodes {
        let t = now();
        let i = tb.add_node()?;
        let n = tb.node(i)?;
        step(
            &format!("node {i}"),
            &format!("namespace {}: {}/24 on ul (veth to br0)", n.ns, n.ip),
            t.elapsed(),
        );
    }
    let t = now();
    tb.start_registry()?;
    step("registry", &tb.registry_url(), t.elapsed());
    for i in 1..=args.nodes {
        let t = now();
        tb.start_nsmgr(i)?;
        let n = tb.node(i)?;
        step(
            &n.nsmgr,
            &format!("node {i}: {} and {}", n.nsmgr_url(), n.public_url()),
            t.elapsed(),
        );
    }
    let port = args.vxlan_port.map(|p| p.to_string());
    let mut fwd_env: Vec<(&str, &str)> = Vec::new();
    if let Some(p) = &port {
        fwd_env.push(("NSM_VXLAN_PORT", p));
    }
    for i in 1..=args.nodes {
        let t = now();
        tb.start_forwarder(i, &fwd_env)?;
        let n = tb.node(i)?;
        step(
            &n.forwarder,
            &format!(
                "node {i}: kernel data plane, tunnel IP {}, VXLAN port {}, registered",
                n.ip,
                port.as_deref().unwrap_or("4789")
            ),
            t.elapsed(),
        );
    }
    let mut endpoints = Vec::new();
    for j in 1..=args.endpoints {
        let node = args.nodes - (j - 1) % args.nodes;
        let name = if args.endpoints == 1 {
            "icmp-server".to_string()
        } else {
            format!("icmp-server-{j}")
        };
        let cidr = format!("169.254.{}.0/24", 199 + j);
        let t = now();
        let pod = tb.add_pod(&format!("e{j}"))?;
        tb.start_nse(
            &name,
            &pod,
            node,
            &[
                ("NSM_CIDR_PREFIX", &cidr),
                ("NSM_SERVICE_NAMES", &args.service),
                ("NSM_PAYLOAD", &args.payload),
            ],
        )?;
        step(
            &name,
            &format!(
                "endpoint pod {pod} on node {node}: service {}, addresses from {cidr}, registered",
                args.service
            ),
            t.elapsed(),
        );
        endpoints.push(Endpoint { name, pod, node });
    }
    let url = format!("kernel://{}/nsm-1", args.service);
    let mut clients = Vec::new();
    for k in 1..=args.clients {
        let node = 1 + (k - 1) % args.nodes;
        let name = format!("nsc-{k}");
        let pod = tb.add_pod(&format!("c{k}"))?;
        let t = now();
        tb.spawn_nsc(&name, &pod, node, &url, &[], false)?;
        let conn = tb.wait_connected(&name, Duration::from_secs(60))?;
        let setup = t.elapsed();
        step(
            &name,
            &format!("client pod {pod} on node {node}: {url} connected"),
            setup,
        );
        clients.push(Client {
            name,
            pod,
            node,
            conn: Some(conn),
            setup,
        });
    }
    println!();
    for c in &clients {
        print_connection(tb, c, &endpoints);
    }
    let ctl = tb.ctl_command()?;
    if args.once {
        verify(tb, &clients, &endpoints, args.count)?;
        // The hint below must work: run it once and show what it prints.
        ctl_once(&ctl)
    } else {
        print_ctl_hint(&ctl);
        live_pings(tb, &clients, &endpoints, cancel)
    }
}

fn find_ep<'a>(endpoints: &'a [Endpoint], hop: &str) -> Option<&'a Endpoint> {
    endpoints.iter().find(|e| e.name == hop)
}

fn describe_link(l: &LinkInfo, ns: &str) -> String {
    let addrs = nsm_testbed::addresses(ns, &l.name)
        .unwrap_or_default()
        .join(", ");
    let mut s = format!("{} {} mtu {}", l.kind, l.name, l.mtu);
    if let Some(vni) = l.vni {
        s.push_str(&format!(" vni {vni}"));
    }
    if let Some(p) = l.port {
        s.push_str(&format!(" port {p}"));
    }
    if !addrs.is_empty() {
        s.push_str(&format!(" {addrs}"));
    }
    s
}

/// The node-side veth whose peer is `pod_link` (veth peers name each other's interface index).
fn node_peer(node_ns: &str, pod_link: &LinkInfo) -> Option<LinkInfo> {
    let peer = pod_link.peer_ifindex?;
    links(node_ns)
        .ok()?
        .into_iter()
        .find(|l| l.ifindex == peer && l.peer_ifindex == Some(pod_link.ifindex))
}

fn print_connection(tb: &Testbed, c: &Client, endpoints: &[Endpoint]) {
    let Some(conn) = &c.conn else { return };
    println!(
        "connection {} — service {}, mechanism {}, {} hops, set up in {}:",
        conn.id,
        conn.service,
        conn.mechanism,
        conn.path.len(),
        ms(c.setup)
    );
    let client_link = links(&c.pod)
        .ok()
        .and_then(|l| l.into_iter().find(|l| l.name == conn.interface));
    let ep = conn.path.last().and_then(|h| find_ep(endpoints, h));
    let ep_link = ep.and_then(|e| {
        let dst = conn.dst.first()?;
        links(&e.pod).ok()?.into_iter().find(|l| {
            nsm_testbed::addresses(&e.pod, &l.name)
                .unwrap_or_default()
                .contains(dst)
        })
    });
    for (i, hop) in conn.path.iter().enumerate() {
        let detail = if i == 0 {
            let l = client_link
                .as_ref()
                .map(|l| describe_link(l, &c.pod))
                .unwrap_or_else(|| format!("{} (not found!)", conn.interface));
            format!("client pod {} on node {}: {l}", c.pod, c.node)
        } else if let Some(e) = (i + 1 == conn.path.len()).then_some(ep).flatten() {
            let l = ep_link
                .as_ref()
                .map(|l| describe_link(l, &e.pod))
                .unwrap_or_else(|| "interface not found!".into());
            format!("endpoint pod {}: {l}", e.pod)
        } else if let Some(idx) = hop.strip_prefix("forwarder-") {
            let node = idx.parse::<usize>().ok().and_then(|i| tb.node(i).ok());
            match node {
                Some(n) => {
                    let mut parts = Vec::new();
                    // The node end of the pod veth on this node, if the pod is here.
                    let here = [
                        (c.node == n.index).then_some(&client_link),
                        ep.filter(|e| e.node == n.index).map(|_| &ep_link),
                    ];
                    for pl in here.into_iter().flatten().flatten() {
                        if let Some(l) = node_peer(&n.ns, pl) {
                            parts.push(describe_link(&l, &n.ns));
                        }
                    }
                    for l in links(&n.ns).unwrap_or_default() {
                        if l.kind == "vxlan" {
                            parts.push(describe_link(&l, &n.ns));
                        }
                    }
                    // A pod TUN has no node end: the forwarder's WireGuard link is the cross-connect.
                    let tun_here = here
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|l| l.kind == "tun");
                    if tun_here {
                        parts.push(format!(
                            "userspace WireGuard link (pod TUN <-> encrypted UDP from {})",
                            n.ip
                        ));
                    }
                    format!("node {}: {}", n.index, parts.join(" <-> "))
                }
                None => String::new(),
            }
        } else if let Some(idx) = hop.strip_prefix("nsmgr-") {
            format!("node {idx}: control plane only")
        } else {
            String::new()
        };
        println!("  {:>2}. {hop:<14} {detail}", i + 1);
    }
    println!(
        "      addresses: client {} <-> endpoint {}",
        conn.src.join(", "),
        conn.dst.join(", ")
    );
    println!();
}

fn endpoint_pod<'a>(conn: &Connected, endpoints: &'a [Endpoint]) -> Option<&'a Endpoint> {
    conn.path.last().and_then(|h| find_ep(endpoints, h))
}

fn rtts(r: &[Duration]) -> String {
    r.iter()
        .map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one shell word if it needs it (the hint is meant to be pasted into a shell).
fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

fn print_ctl_hint(ctl: &[String]) {
    let cmd: Vec<String> = ctl.iter().map(|w| shell_word(w)).collect();
    println!("look inside from another terminal (as root):");
    println!("  {} get connections", cmd.join(" "));
    println!("  … describe connection <id> | get endpoints | watch connections | check");
    println!();
}

/// `--once`: runs the `nsm ctl` hint (`get connections`) and prints its table.
fn ctl_once(ctl: &[String]) -> std::io::Result<()> {
    let Some((prog, rest)) = ctl.split_first() else {
        return Ok(());
    };
    let out = std::process::Command::new(prog)
        .args(rest)
        .args(["get", "connections"])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "nsm ctl get connections failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    println!("nsm ctl get connections:");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn verify(
    tb: &Testbed,
    clients: &[Client],
    endpoints: &[Endpoint],
    count: u16,
) -> std::io::Result<()> {
    let mut failures = Vec::new();
    for c in clients {
        let Some(conn) = &c.conn else { continue };
        let (Some(src), Some(dst)) = (conn.src_ip(), conn.dst_ip()) else {
            failures.push(format!("{}: the connection has no addresses", c.name));
            continue;
        };
        let Some(ep) = endpoint_pod(conn, endpoints) else {
            failures.push(format!(
                "{}: unknown endpoint {:?}",
                c.name,
                conn.path.last()
            ));
            continue;
        };
        for (from, from_pod, to) in [(&c.name, &c.pod, dst), (&ep.name, &ep.pod, src)] {
            let r = tb.ping(from_pod, to, count, Duration::from_secs(1))?;
            println!(
                "ping {from} → {to}: {}/{count} replies, rtt ms: {}",
                r.len(),
                rtts(&r)
            );
            if r.is_empty() {
                failures.push(format!("no echo reply {from} → {to}"));
            }
        }
    }
    if failures.is_empty() {
        println!("end-to-end connectivity verified");
        Ok(())
    } else {
        Err(std::io::Error::other(failures.join("; ")))
    }
}

fn live_pings(
    tb: &Testbed,
    clients: &[Client],
    endpoints: &[Endpoint],
    cancel: &AtomicBool,
) -> std::io::Result<()> {
    println!("pinging every second; Ctrl-C tears everything down");
    let mut seq = 0u64;
    let start: Instant = now();
    while !cancel.load(Ordering::SeqCst) {
        for c in clients {
            let Some(dst) = c.conn.as_ref().and_then(Connected::dst_ip) else {
                continue;
            };
            let who = c
                .conn
                .as_ref()
                .and_then(|conn| endpoint_pod(conn, endpoints))
                .map_or("endpoint", |e| e.name.as_str());
            let line = match tb.ping(&c.pod, dst, 1, Duration::from_secs(1)) {
                Ok(r) if !r.is_empty() => format!("time={} ms", rtts(&r)),
                Ok(_) => "no reply within 1 s".into(),
                Err(e) => format!("error: {e}"),
            };
            println!("{} → {who} {dst}: seq={seq} {line}", c.name);
        }
        seq += 1;
        // Sleep to the next whole second since start, waking early on Ctrl-C.
        let next = Duration::from_secs(seq);
        while start.elapsed() < next && !cancel.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "interrupted",
    ))
}

/// Runs `nsm down`.
pub fn down(args: &DownArgs) -> ExitCode {
    let base = args
        .state_dir
        .clone()
        .unwrap_or_else(nsm_testbed::state_base);
    let r = match nsm_testbed::down(&base, args.id.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nsm down: {}: {e}", base.display());
            return ExitCode::FAILURE;
        }
    };
    for k in &r.killed {
        println!("killed {k}");
    }
    for ns in &r.namespaces {
        println!("deleted namespace {ns}");
    }
    for id in &r.removed_runs {
        println!("removed run {id}");
    }
    for l in &r.live_runs {
        println!(
            "left alone: run {l} is still running (Ctrl-C it, or kill it and run nsm down again)"
        );
    }
    if r.removed_runs.is_empty() && r.live_runs.is_empty() && r.errors.is_empty() {
        println!("nothing to clean up in {}", base.display());
    }
    for e in &r.errors {
        eprintln!("nsm down: {e}");
    }
    if r.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> UpArgs {
        UpArgs {
            nodes: 2,
            clients: 1,
            endpoints: 1,
            mechanism: "kernel".into(),
            payload: "ETHERNET".into(),
            service: "icmp-responder".into(),
            once: true,
            count: 3,
            vxlan_port: None,
            log_level: "INFO".into(),
            state_dir: None,
        }
    }

    #[test]
    fn only_kernel_and_sane_counts() {
        assert!(check_args(&args()).is_ok());
        let e = check_args(&UpArgs {
            mechanism: "memif".into(),
            ..args()
        })
        .unwrap_err();
        assert!(e.contains("only `kernel`"), "{e}");
        assert!(check_args(&UpArgs { nodes: 0, ..args() }).is_err());
        assert!(
            check_args(&UpArgs {
                payload: "IP".into(),
                ..args()
            })
            .is_ok()
        );
        let e = check_args(&UpArgs {
            payload: "ip".into(),
            ..args()
        })
        .unwrap_err();
        assert!(e.starts_with("--payload \"ip\""), "{e}");
        assert!(
            check_args(&UpArgs {
                service: "a/b".into(),
                ..args()
            })
            .is_err()
        );
    }
}
