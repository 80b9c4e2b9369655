//! `nsm ctl` against a running mesh of real `nsm` processes (registry, NSMgr, forwarder, NSE, client)
//! on loopback TCP and unix sockets in a temporary directory, with `NSM_DATAPLANE=noop` (no root).
//!
//! Table output is compared with `tests/golden/*.txt` after [`mask`]ing what changes between runs
//! (ports, the temporary directory, UUIDs, times and durations, column padding). Set
//! `NSM_UPDATE_GOLDEN=1` to rewrite the golden files from a run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;

use procs::{Proc, signal};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Masking

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

/// Length of a duration token (`59s`, `9m57s`, `1h0m5s`, `2d3h`, `+5.144ms`, `-0.5ms`) at the start
/// of `s`, if there is one that ends at a word boundary.
fn duration_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let mut groups = 0;
    loop {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            break;
        }
        if i < b.len() && b[i] == b'.' {
            let f = i + 1;
            let mut j = f;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j == f {
                return None;
            }
            i = j;
        }
        let unit = ["ms", "µs", "ns", "d", "h", "m", "s"]
            .into_iter()
            .find(|u| s[i..].starts_with(u))?;
        i += unit.len();
        groups += 1;
    }
    let end_ok = s[i..].chars().next().is_none_or(|c| !is_word(c));
    (groups > 0 && end_ok).then_some(i)
}

/// Length of a UUID (8-4-4-4-12 hex) at the start of `s`.
fn uuid_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() < 36 {
        return None;
    }
    for (i, &c) in b[..36].iter().enumerate() {
        let ok = if [8, 13, 18, 23].contains(&i) {
            c == b'-'
        } else {
            c.is_ascii_hexdigit()
        };
        if !ok {
            return None;
        }
    }
    Some(36)
}

/// Length of an RFC 3339 UTC time (`2026-11-28T06:35:15Z`) at the start of `s`.
fn rfc3339_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let pat = b"dddd-dd-ddTdd:dd:ddZ";
    (b.len() >= pat.len()
        && pat.iter().zip(b).all(|(p, c)| {
            if *p == b'd' {
                c.is_ascii_digit()
            } else {
                p == c
            }
        }))
    .then_some(pat.len())
}

/// Replaces what changes between runs: the temporary directory (`<TMP>`), loopback ports
/// (`127.0.0.1:<PORT>`), UUIDs (`<UUID>`, padded to a UUID's width), RFC 3339 times (`<TIME>`) and durations (`<DUR>`); trims
/// trailing spaces. Column padding still follows the run; [`normalize`] evens it out.
fn mask(text: &str, tmp: &str) -> String {
    let text = if tmp.is_empty() {
        text.to_string()
    } else {
        text.replace(tmp, "<TMP>")
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    while i < text.len() {
        let rest = &text[i..];
        let boundary = prev.is_none_or(|c| !is_word(c));
        // An endpoint's socket as its NSMgr holds it (passed by fd): /proc/<pid>/fd/<n>.
        if let Some(p) = rest.strip_prefix("/proc/") {
            let pid = p.bytes().take_while(u8::is_ascii_digit).count();
            if pid > 0
                && let Some(fd) = p[pid..].strip_prefix("/fd/")
            {
                let n = fd.bytes().take_while(u8::is_ascii_digit).count();
                if n > 0 {
                    out.push_str("/proc/<PID>/fd/<N>");
                    i += "/proc/".len() + pid + "/fd/".len() + n;
                    prev = Some('>');
                    continue;
                }
            }
        }
        if let Some(p) = rest.strip_prefix("127.0.0.1:") {
            let digits = p.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                out.push_str("127.0.0.1:<PORT>");
                i += "127.0.0.1:".len() + digits;
                prev = Some('>');
                continue;
            }
        }
        if boundary {
            // UUIDs have a fixed width: keep the columns after them aligned.
            let found = uuid_len(rest)
                .map(|n| (n, "<UUID>                              "))
                .or_else(|| rfc3339_len(rest).map(|n| (n, "<TIME>")))
                .or_else(|| duration_len(rest).map(|n| (n, "<DUR>")));
            if let Some((n, with)) = found {
                out.push_str(with);
                i += n;
                prev = Some('>');
                continue;
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
        prev = Some(c);
    }
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// Collapses runs of 2+ spaces to two, so tables compare equal whatever the column widths.
fn normalize(text: &str) -> String {
    text.lines()
        .map(|l| {
            let mut line = String::new();
            let mut spaces = 0;
            for c in l.trim_end().chars() {
                if c == ' ' {
                    spaces += 1;
                    continue;
                }
                if spaces > 0 {
                    line.push_str(if spaces == 1 { " " } else { "  " });
                    spaces = 0;
                }
                line.push(c);
            }
            line + "\n"
        })
        .collect()
}

#[test]
fn mask_replaces_volatile_fields() {
    let text = "\
NAME          URL                     EXPIRES
forwarder-1   tcp://127.0.0.1:15001   in 56s
icmp-server   unix:///tmp/x-1/nse.sock   expired 1m3s ago
  1   nsmgr-1   9c4369d5-f8af-4bd7-8dca-ab59e200a206   in 9m57s   +5.144ms   -0.5ms
\"token_expires\": \"2026-11-28T06:35:15Z\"   1h0m5s 2d3h
keep: nsc-0 node-1 169.254.0.1/32 os error 111 5 endpoints 10.0.0.1:5001 ms s m 1x abc12s
";
    assert_eq!(
        mask(text, "/tmp/x-1"),
        "\
NAME          URL                     EXPIRES
forwarder-1   tcp://127.0.0.1:<PORT>   in <DUR>
icmp-server   unix://<TMP>/nse.sock   expired <DUR> ago
  1   nsmgr-1   <UUID>                                 in <DUR>   <DUR>   <DUR>
\"token_expires\": \"<TIME>\"   <DUR> <DUR>
keep: nsc-0 node-1 169.254.0.1/32 os error 111 5 endpoints 10.0.0.1:5001 ms s m 1x abc12s
"
    );
}

#[test]
fn masked_tables_compare_equal_whatever_the_widths() {
    let a = "ID   EXPIRES   STEP\nx    in 59s    +1.000ms\n";
    let b = "ID   EXPIRES    STEP\nx    in 10m0s   +12.345ms\n";
    assert_ne!(mask(a, ""), mask(b, ""));
    assert_eq!(normalize(&mask(a, "")), normalize(&mask(b, "")));
    assert_eq!(normalize("  a   b  c \n"), "  a  b  c\n");
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The mesh; on drop every process gets SIGTERM (SIGKILL after 5 s) and the directory is removed.
struct Mesh {
    dir: PathBuf,
    procs: Vec<Proc>,
    registry: String,
    nsmgr: String,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        procs::stop_all(&self.dir, &mut self.procs);
    }
}

fn nsm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nsm"));
    for v in nsm_testbed::COMPONENT_ENV {
        c.env_remove(v);
    }
    c
}

impl Mesh {
    fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, String)]) -> usize {
        let mut cmd = nsm();
        cmd.args(args)
            .env("NSM_INSECURE", "true")
            .env("NSM_DATAPLANE", "noop")
            .env("NSM_LOG_LEVEL", "WARN")
            .env("REGISTRY_MEMORY_LOG_LEVEL", "WARN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.procs.push(procs::spawn(&self.dir, name, cmd));
        self.procs.len() - 1
    }

    fn proc(&self, name: &str) -> &Proc {
        self.procs.iter().find(|p| p.name == name).unwrap()
    }

    fn sock(&self, name: &str) -> String {
        format!("unix://{}/{name}.sock", self.dir.display())
    }

    fn tmp(&self) -> String {
        self.dir.display().to_string()
    }

    /// registry → nsmgr (tcp + unix) → forwarder, nse → nsc holding `nsc-0`.
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "nsm-ctl-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Mesh {
            dir,
            procs: Vec::new(),
            registry: String::new(),
            nsmgr: String::new(),
        };
        m.spawn(
            "registry",
            &["registry", "--listen", "tcp://127.0.0.1:0"],
            &[],
        );
        let line = m
            .proc("registry")
            .wait_line(&m.dir, WAIT, |l| l.starts_with("listening on "));
        m.registry = line["listening on ".len()..].to_string();
        m.proc("registry").wait_line(&m.dir, WAIT, |l| l == "ready");

        // The NSMgr's public URL is its first tcp:// URL, so it needs a real port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        m.nsmgr = format!("tcp://127.0.0.1:{port}");
        let nsmgr_sock = m.sock("nsmgr");
        m.spawn(
            "nsmgr",
            &["nsmgr"],
            &[
                ("NSM_NAME", "nsmgr-1".into()),
                ("NSM_LISTEN_ON", format!("{},{nsmgr_sock}", m.nsmgr)),
                ("NSM_REGISTRY_URL", m.registry.clone()),
                ("NODE_NAME", "node-1".into()),
            ],
        );
        let sock = nsmgr_sock.clone();
        m.proc("nsmgr")
            .wait_line(&m.dir, WAIT, |l| l == format!("listening on {sock}"));

        let fwd_sock = m.sock("forwarder");
        m.spawn(
            "forwarder",
            &["forwarder"],
            &[
                ("NSM_NAME", "forwarder-1".into()),
                ("NSM_CONNECT_TO", nsmgr_sock.clone()),
                ("NSM_LISTEN_ON", fwd_sock),
            ],
        );
        let nse_sock = m.sock("nse");
        m.spawn(
            "nse",
            &["nse"],
            &[
                ("NSM_NAME", "icmp-server".into()),
                ("NSM_CONNECT_TO", nsmgr_sock.clone()),
                ("NSM_LISTEN_ON", nse_sock),
                ("NSM_SERVICE_NAMES", "icmp-responder".into()),
            ],
        );
        // Both registered (through the NSMgr) before the client asks.
        eventually("forwarder-1 and icmp-server in the registry", || {
            let out = m.ctl(&["get", "endpoints", "-o", "json"]);
            let names: Vec<String> = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|e| e["name"].as_str().map(String::from))
                .collect();
            (names == ["forwarder-1", "icmp-server"]).then_some(())
        });
        m.spawn(
            "nsc",
            &["nsc"],
            &[
                ("NSM_NAME", "nsc".into()),
                ("NSM_CONNECT_TO", nsmgr_sock),
                (
                    "NSM_NETWORK_SERVICES",
                    "kernel://icmp-responder/nsm-1".into(),
                ),
            ],
        );
        m.proc("nsc")
            .wait_line(&m.dir, WAIT, |l| l.starts_with("connected nsc-0 "));
        m
    }

    /// `nsm ctl --registry <ours> <args>`.
    fn ctl(&self, args: &[&str]) -> Output {
        nsm()
            .arg("ctl")
            .args(["--registry", &self.registry, "--timeout", "5s"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `nsm ctl`, checks the exit code, returns stdout.
    fn ctl_ok(&self, args: &[&str], code: i32) -> String {
        let out = self.ctl(args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "nsm ctl {args:?}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ctl_ok(&a, 0)).unwrap()
    }
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("NSM_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (NSM_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        normalize(actual),
        normalize(&want),
        "masked output differs from {} (NSM_UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

/// Polls `f` until it returns `Some`, for about [`WAIT`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    // About WAIT: 300 polls 100 ms apart (plus the time each poll takes).
    for _ in 0..300 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn ctl_against_a_running_mesh() {
    let m = Mesh::start();
    let tmp = m.tmp();

    // Tables, against golden files.
    for (name, args) in [
        ("get_services", &["get", "services"][..]),
        ("get_endpoints", &["get", "endpoints"]),
        ("get_forwarders", &["get", "forwarders"]),
        ("get_connections", &["get", "connections"]),
        ("describe_connection", &["describe", "connection", "nsc-0"]),
        ("check", &["check"]),
    ] {
        golden(name, &mask(&m.ctl_ok(args, 0), &tmp));
    }

    // JSON / YAML for scripts.
    let svc = m.json(&["get", "services"]);
    assert_eq!(svc[0]["name"], "icmp-responder");
    assert_eq!(svc[0]["payload"], "ETHERNET");
    assert_eq!(svc[0]["matches"], 0);
    let eps = m.json(&["get", "endpoints"]);
    let eps = eps.as_array().unwrap();
    assert_eq!(eps.len(), 2);
    for e in eps {
        assert_eq!(e["url"], m.nsmgr.as_str(), "registered through the NSMgr");
        assert_eq!(e["node"], "node-1");
        assert!(e["expires_in_seconds"].as_i64().unwrap() > 0);
        assert!(e["expiration_time"].is_string());
    }
    assert_eq!(eps[1]["services"][0], "icmp-responder");
    let fwd = m.json(&["get", "forwarders"]);
    assert_eq!(fwd.as_array().unwrap().len(), 1);
    assert_eq!(fwd[0]["labels"]["forwarder"]["p2p"], "true");
    let conns = m.json(&["get", "connections"]);
    assert_eq!(conns.as_array().unwrap().len(), 1);
    let c = &conns[0];
    assert_eq!(c["id"], "nsc-0");
    assert_eq!(c["service"], "icmp-responder");
    assert_eq!(c["endpoint"], "icmp-server");
    assert_eq!(
        c["path"],
        serde_json::json!(["nsc", "nsmgr-1", "forwarder-1", "icmp-server"])
    );
    assert_eq!(c["state"], "UP");
    assert!(c["mechanism"].is_string());
    assert_eq!(c["nsmgrs"], serde_json::json!([m.nsmgr]));
    let d = m.json(&["describe", "connection", "nsc-0"]);
    assert_eq!(d["state"], "UP");
    let segs = d["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 4);
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s["index"], i);
        assert!(s["token_expires_in_seconds"].as_i64().unwrap() > 0, "{s}");
        if i > 0 {
            assert_eq!(s["state"], "UP", "{s}");
            assert!(s["step_ms"].is_number(), "{s}");
            assert!(s["error"].is_null(), "{s}");
        }
    }
    // Any segment id finds the same connection.
    let nse_id = segs[3]["id"].as_str().unwrap();
    assert_eq!(m.json(&["describe", "connection", nse_id])["id"], "nsc-0");
    let chk = m.json(&["check"]);
    assert_eq!(chk["ok"], true);
    assert!(
        chk["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["group"].is_string() && c["message"].is_string())
    );
    let yaml = m.ctl_ok(&["get", "services", "-o", "yaml"], 0);
    assert!(yaml.contains("name: icmp-responder"), "{yaml}");

    // Explicit NSMgrs (env) work like discovery.
    let out = nsm()
        .args(["ctl", "--registry", &m.registry, "get", "connections"])
        .env("NSM_CTL_NSMGRS", m.sock("nsmgr"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nsc-0"));

    // Unknown connection: exit 1, says where it looked.
    let out = m.ctl(&["describe", "connection", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found on 1 NSMgr(s)"));

    // watch: the initial state, then a second client's connection coming and going.
    let mut w = nsm()
        .args([
            "ctl",
            "--registry",
            &m.registry,
            "watch",
            "connections",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = w.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = || -> Value {
        let l = rx.recv_timeout(WAIT).expect("a watch event");
        serde_json::from_str(&l).unwrap()
    };
    let first = next();
    assert_eq!(first["type"], "INITIAL");
    assert_eq!(first["connection"]["id"], "nsc-0");
    let once = nsm()
        .args(["nsc", "--once"])
        .env("NSM_NAME", "once")
        .env("NSM_CONNECT_TO", m.sock("nsmgr"))
        .env("NSM_NETWORK_SERVICES", "kernel://icmp-responder/nsm-2")
        .env("NSM_LOG_LEVEL", "WARN")
        .env("NSM_INSECURE", "true")
        .output()
        .unwrap();
    assert!(once.status.success(), "{once:?}");
    let mut kinds = Vec::new();
    while !kinds.contains(&"DELETE".to_string()) {
        let ev = next();
        if ev["connection"]["id"] == "once-0" {
            kinds.push(ev["type"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("UPDATE"));
    signal(w.id(), "INT");
    let st = w.wait().unwrap();
    assert!(st.success(), "watch exits 0 on Ctrl-C: {st:?}");

    // A dead endpoint while the client cannot heal (stopped): the connection is DOWN hop by hop and
    // check reports the endpoint's registration as orphaned.
    signal(m.proc("nsc").child.id(), "STOP");
    signal(m.proc("nse").child.id(), "KILL");
    let down = eventually("describe to show DOWN", || {
        let out = m.ctl(&["describe", "connection", "nsc-0"]);
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && s.contains("State:       DOWN")).then_some(s)
    });
    golden("describe_connection_down", &mask(&down, &tmp));
    let out = m.ctl(&["check"]);
    assert_eq!(out.status.code(), Some(1), "check fails");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("✗ orphaned registrations: icmp-server (registered through NSMgr"),
        "{s}"
    );
    assert!(s.contains("Status check results are ✗"), "{s}");
    signal(m.proc("nsc").child.id(), "CONT");
}

#[test]
fn bad_flags_exit_2_and_an_unreachable_registry_exits_1() {
    let out = nsm()
        .args(["ctl", "--registry", "http://x", "get", "services"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NSM_REGISTRY_URL"));
    let out = nsm()
        .args(["ctl", "--timeout", "soon", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NSM_CTL_TIMEOUT"));

    // Nothing listens on port 1.
    let out = nsm()
        .args([
            "ctl",
            "--registry",
            "tcp://127.0.0.1:1",
            "--timeout",
            "1s",
            "get",
            "endpoints",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("registry tcp://127.0.0.1:1"));
    let out = nsm()
        .args([
            "ctl",
            "--registry",
            "tcp://127.0.0.1:1",
            "--timeout",
            "1s",
            "check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("✗ registry tcp://127.0.0.1:1 is not serving"),
        "{s}"
    );
    assert!(
        s.contains("- skipped: no identity source configured"),
        "{s}"
    );
}
