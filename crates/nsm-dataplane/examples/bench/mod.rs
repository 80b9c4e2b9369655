//! What the benchmarks in this folder share: running a command, throw-away network namespaces
//! (`nsmb<pid>-<tag>`, deleted on drop), one iperf3 TCP stream between two of them and a median.

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

use nsm_dataplane::netns::Netns;

/// Runs `args`, panics (with its stderr) unless it succeeds; returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace `nsmb<pid>-<tag>` with lo up, deleted on drop.
pub struct Ns(pub String);

impl Ns {
    pub fn new(tag: &str) -> Self {
        let n = format!("nsmb{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &n]);
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        Ns(n)
    }

    /// `ip -n <ns> <a…>`.
    pub fn ip(&self, a: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(a);
        sh(&v);
    }

    /// Runs `a` inside the namespace; returns its stdout.
    pub fn exec(&self, a: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(a);
        sh(&v)
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    pub fn netns(&self) -> Netns {
        Netns::open(self.path().as_ref()).unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The receiver's Gbit/s in the output of `iperf3 -c … -f g`.
pub fn receiver_gbits(iperf3_output: &str) -> f64 {
    let line = iperf3_output
        .lines()
        .find(|l| l.contains("receiver"))
        .expect("iperf3 receiver line");
    let idx = line.find(" Gbits/sec").unwrap();
    line[..idx].rsplit(' ').next().unwrap().parse().unwrap()
}

/// One iperf3 TCP stream from `client` to `server_ip` in `server`, in Gbit/s (receiver side).
pub fn iperf(client: &Ns, server: &Ns, server_ip: &str, secs: u64) -> f64 {
    let mut srv = Command::new("ip")
        .args([
            "netns", "exec", &server.0, "iperf3", "-s", "-1", "-B", server_ip,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = client.exec(&[
        "iperf3",
        "-c",
        server_ip,
        "-t",
        &secs.to_string(),
        "-f",
        "g",
    ]);
    let _ = srv.wait();
    receiver_gbits(&out)
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
