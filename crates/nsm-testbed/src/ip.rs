//! `ip` (iproute2) helpers: run it, read links and addresses of a namespace as JSON, snapshot the root
//! namespace.

use std::io;
use std::process::Command;

/// Runs `ip <args…>`; its stdout, or an error carrying its stderr.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip <args…>`, true if it succeeded (for probes and best-effort cleanup).
pub fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One link of a namespace, from `ip -d -j link show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// `veth`, `vxlan`, `bridge`, … (empty for loopback).
    pub kind: String,
    /// The interface alias (our executor writes `nsm:<owner>:<id>:<role>`).
    pub alias: String,
    /// VXLAN: the VNI.
    pub vni: Option<u32>,
    /// VXLAN: the UDP destination port.
    pub port: Option<u16>,
    /// MAC address.
    pub mac: String,
    /// Administratively up.
    pub up: bool,
    /// Interface index in its namespace.
    pub ifindex: u32,
    /// veth: the peer's interface index (in the peer's namespace).
    pub peer_ifindex: Option<u32>,
}

/// Links of namespace `ns` other than `lo`.
pub fn links(ns: &str) -> io::Result<Vec<LinkInfo>> {
    let text = ip(&["-n", ns, "-d", "-j", "link", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or_default().to_string();
        if name == "lo" {
            continue;
        }
        let info = &l["linkinfo"];
        let data = &info["info_data"];
        out.push(LinkInfo {
            name,
            mtu: l["mtu"].as_u64().unwrap_or_default() as u32,
            kind: info["info_kind"].as_str().unwrap_or_default().to_string(),
            alias: l["ifalias"].as_str().unwrap_or_default().to_string(),
            vni: data["id"].as_u64().map(|v| v as u32),
            port: data["port"].as_u64().map(|v| v as u16),
            mac: l["address"].as_str().unwrap_or_default().to_string(),
            up: l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP"))),
            ifindex: l["ifindex"].as_u64().unwrap_or_default() as u32,
            peer_ifindex: l["link_index"].as_u64().map(|v| v as u32),
        });
    }
    Ok(out)
}

/// Global addresses (`addr/prefix`) of `dev` in `ns` (link-local IPv6 left out).
pub fn addresses(ns: &str, dev: &str) -> io::Result<Vec<String>> {
    let text = ip(&["-n", ns, "-j", "addr", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"].as_str() == Some("link") && a["family"].as_str() == Some("inet6") {
                continue;
            }
            if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                out.push(format!("{local}/{len}"));
            }
        }
    }
    Ok(out)
}

/// Links, addresses and routes of the caller's namespace, with lifetimes masked (they count down for
/// dynamic addresses). Compare two snapshots to check nothing was added to the root namespace.
pub fn root_snapshot() -> io::Result<String> {
    let parts = [
        ip(&["-o", "link", "show"])?,
        ip(&["-o", "addr", "show"])?,
        ip(&["-o", "-4", "route", "show", "table", "all"])?,
        ip(&["-o", "-6", "route", "show", "table", "all"])?,
    ];
    Ok(parts
        .join("\n")
        .lines()
        .map(|l| {
            l.split_whitespace()
                .scan(false, |skip, w| {
                    let out = if *skip { Some("") } else { Some(w) };
                    *skip = matches!(w, "valid_lft" | "preferred_lft" | "expires");
                    out
                })
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}
