//! Renders DNS configs as a CoreDNS Corefile, the way Go's `dnscontext.Manager` does.
//!
//! One server block per search-domain set (joined with spaces; none → `.`), sorted by name. A block
//! forwards to the sorted, de-duplicated server IPs of every config with that domain set — with
//! `forward` when a single config names it, with `fanout` when several do (they may disagree, so
//! CoreDNS asks all of them). Blocks without servers only `log`; the `.` block also `reload`s.

use std::collections::BTreeMap;

use nsm_api::connectioncontext::DnsConfig;

/// The Corefile for `configs` (all connections' configs, plus the default one if any).
pub fn render_corefile<'a>(configs: impl IntoIterator<Item = &'a DnsConfig>) -> String {
    // domain → (servers, number of configs naming the domain)
    let mut blocks: BTreeMap<String, (Vec<String>, usize)> = BTreeMap::new();
    for c in configs {
        let domain = if c.search_domains.is_empty() {
            ".".to_string()
        } else {
            c.search_domains.join(" ")
        };
        let entry = blocks.entry(domain).or_default();
        entry.1 += 1;
        for ip in c.dns_server_ips.iter().filter(|ip| !ip.trim().is_empty()) {
            if !entry.0.contains(ip) {
                entry.0.push(ip.clone());
            }
        }
    }
    let mut out = String::new();
    for (domain, (mut ips, count)) in blocks {
        ips.sort();
        out.push_str(&format!("{domain} {{\n"));
        if !ips.is_empty() {
            let plugin = if count > 1 { "fanout" } else { "forward" };
            out.push_str(&format!("\t{plugin} . {}\n\tcache\n", ips.join(" ")));
        }
        out.push_str("\tlog\n");
        if domain == "." {
            out.push_str("\treload\n");
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ips: &[&str], domains: &[&str]) -> DnsConfig {
        DnsConfig {
            dns_server_ips: ips.iter().map(|s| s.to_string()).collect(),
            search_domains: domains.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn matches_the_go_dns_use_case() {
        // sdk Test_DNSUsecase: the client's default config has no server; the NSE sends two configs
        // for the same domain.
        let configs = [
            cfg(&[""], &[]),
            cfg(&["8.8.8.8"], &["my.domain1"]),
            cfg(&["8.8.4.4"], &["my.domain1"]),
        ];
        assert_eq!(
            render_corefile(&configs),
            ". {\n\tlog\n\treload\n}\nmy.domain1 {\n\tfanout . 8.8.4.4 8.8.8.8\n\tcache\n\tlog\n}\n"
        );
    }

    #[test]
    fn single_config_forwards() {
        let configs = [cfg(&["1.1.1.1", "1.1.1.1"], &[])];
        assert_eq!(
            render_corefile(&configs),
            ". {\n\tforward . 1.1.1.1\n\tcache\n\tlog\n\treload\n}\n"
        );
    }
}
