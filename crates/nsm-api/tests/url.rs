//! Every URL form NSM users write (socket URLs in `NSM_CONNECT_TO`/`NSM_LISTEN_ON`/`NSM_REGISTRY_URL`,
//! request URLs in `NSM_NETWORK_SERVICES`) parses to the right fields, prints back in canonical form and
//! re-parses to the same value; every malformed one is refused with the right error, whose message names
//! the offending part.

// clippy.toml allows unwrap/expect in tests, but clippy does not count helper functions of an
// integration-test crate as tests; panicking is how these helpers fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use nsm_api::mechanisms::{MechanismType, cls};
use nsm_api::url::{NetworkServiceUrl, NsmUrl, UrlError};

fn tcp(host: &str, port: u16) -> NsmUrl {
    NsmUrl::Tcp {
        host: host.to_string(),
        port,
    }
}

#[test]
fn socket_urls_parse_print_and_reparse() {
    // (input, parsed, printed)
    let cases: Vec<(&str, NsmUrl, &str)> = vec![
        (
            "unix:///var/lib/networkservicemesh/nsm.io.sock",
            NsmUrl::Unix(PathBuf::from("/var/lib/networkservicemesh/nsm.io.sock")),
            "unix:///var/lib/networkservicemesh/nsm.io.sock",
        ),
        (
            "tcp://127.0.0.1:5001",
            tcp("127.0.0.1", 5001),
            "tcp://127.0.0.1:5001",
        ),
        ("tcp://:5001", tcp("", 5001), "tcp://:5001"),
        (
            "tcp://[fd00::1]:5001",
            tcp("fd00::1", 5001),
            "tcp://[fd00::1]:5001",
        ),
        (
            "registry:5002",
            tcp("registry", 5002),
            "tcp://registry:5002",
        ),
        (
            "tcp://127.0.0.1:0",
            tcp("127.0.0.1", 0),
            "tcp://127.0.0.1:0",
        ),
        (
            "inode://4/4026532338",
            NsmUrl::Inode {
                dev: 4,
                ino: 4026532338,
            },
            "inode://4/4026532338",
        ),
        (
            "file:///proc/thread-self/ns/net",
            NsmUrl::File(PathBuf::from("/proc/thread-self/ns/net")),
            "file:///proc/thread-self/ns/net",
        ),
    ];
    for (input, want, printed) in cases {
        let got = NsmUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(got, want, "{input}: parsed fields");
        assert_eq!(got.to_string(), printed, "{input}: printed form");
        assert_eq!(
            NsmUrl::parse(&got.to_string()),
            Ok(got.clone()),
            "{input}: parse(print(x)) == x"
        );
        assert_eq!(input.parse::<NsmUrl>(), Ok(got), "{input}: FromStr");
    }
}

#[test]
fn socket_url_dial_targets_and_locality() {
    let v6 = NsmUrl::parse("tcp://[fd00::1]:5001").unwrap();
    assert_eq!(v6.grpc_target(), "[fd00::1]:5001");
    assert!(!v6.is_node_local());
    let bare = NsmUrl::parse("registry:5002").unwrap();
    assert_eq!(bare.authority().as_deref(), Some("registry:5002"));
    let unix = NsmUrl::parse("unix:///var/lib/networkservicemesh/nsm.io.sock").unwrap();
    assert_eq!(
        unix.grpc_target(),
        "unix:///var/lib/networkservicemesh/nsm.io.sock"
    );
    assert_eq!(unix.authority(), None);
    assert!(unix.is_node_local());
    assert!(
        NsmUrl::parse("inode://4/4026532338")
            .unwrap()
            .is_node_local()
    );
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn request_urls_parse_print_and_reparse() {
    struct Case {
        input: &'static str,
        mechanism: MechanismType,
        service: &'static str,
        domain: Option<&'static str>,
        interface: Option<&'static str>,
        labels: &'static [(&'static str, &'static str)],
        network_service: &'static str,
        printed: &'static str,
    }
    let cases = [
        Case {
            input: "kernel://icmp-responder/nsm-1",
            mechanism: MechanismType::Kernel,
            service: "icmp-responder",
            domain: None,
            interface: Some("nsm-1"),
            labels: &[],
            network_service: "icmp-responder",
            printed: "kernel://icmp-responder/nsm-1",
        },
        Case {
            input: "kernel://svc@domain.example/nsm-1?app=foo&x=y",
            mechanism: MechanismType::Kernel,
            service: "svc",
            domain: Some("domain.example"),
            interface: Some("nsm-1"),
            labels: &[("app", "foo"), ("x", "y")],
            network_service: "svc@domain.example",
            printed: "kernel://svc@domain.example/nsm-1?app=foo&x=y",
        },
        Case {
            input: "memif://my-vpp-service?A=1&B=2",
            mechanism: MechanismType::Memif,
            service: "my-vpp-service",
            domain: None,
            interface: None,
            labels: &[("A", "1"), ("B", "2")],
            network_service: "my-vpp-service",
            printed: "memif://my-vpp-service?A=1&B=2",
        },
        Case {
            // Percent escapes in labels are decoded, as Go's url.Query() does.
            input: "vfio://second-service?sriovToken=intel%2F10G",
            mechanism: MechanismType::Vfio,
            service: "second-service",
            domain: None,
            interface: None,
            labels: &[("sriovToken", "intel/10G")],
            network_service: "second-service",
            printed: "vfio://second-service?sriovToken=intel/10G",
        },
        Case {
            input: "kernel://svc",
            mechanism: MechanismType::Kernel,
            service: "svc",
            domain: None,
            interface: None,
            labels: &[],
            network_service: "svc",
            printed: "kernel://svc",
        },
        Case {
            // Repeated keys are joined with "," (Go: strings.Join(values, ",")); '+' is a space in a query.
            input: "kernel://svc/nsm-1?app=a&app=b&note=x+y",
            mechanism: MechanismType::Kernel,
            service: "svc",
            domain: None,
            interface: Some("nsm-1"),
            labels: &[("app", "a,b"), ("note", "x y")],
            network_service: "svc",
            printed: "kernel://svc/nsm-1?app=a,b&note=x%20y",
        },
        Case {
            // A 15-byte interface name is the Linux maximum and is accepted.
            input: "NOOP://svc/abcdefghijklmno",
            mechanism: MechanismType::Noop,
            service: "svc",
            domain: None,
            interface: Some("abcdefghijklmno"),
            labels: &[],
            network_service: "svc",
            printed: "noop://svc/abcdefghijklmno",
        },
    ];
    for c in cases {
        let input = c.input;
        let got = NetworkServiceUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(got.mechanism, c.mechanism, "{input}: mechanism");
        assert_eq!(got.service, c.service, "{input}: service");
        assert_eq!(got.domain.as_deref(), c.domain, "{input}: domain");
        assert_eq!(got.interface.as_deref(), c.interface, "{input}: interface");
        assert_eq!(got.labels, labels(c.labels), "{input}: labels");
        assert_eq!(
            got.network_service(),
            c.network_service,
            "{input}: network service"
        );
        assert_eq!(got.to_string(), c.printed, "{input}: printed form");
        assert_eq!(
            NetworkServiceUrl::parse(&got.to_string()),
            Ok(got.clone()),
            "{input}: parse(print(x)) == x"
        );
        assert_eq!(
            input.parse::<NetworkServiceUrl>(),
            Ok(got),
            "{input}: FromStr"
        );
    }
}

#[test]
fn request_url_gives_the_mechanism_preference_a_client_sends() {
    let url = NetworkServiceUrl::parse("kernel://icmp-responder/nsm-1").unwrap();
    let m = url.mechanism();
    assert_eq!(m.cls, cls::LOCAL);
    assert_eq!(m.r#type, "KERNEL");
    assert_eq!(m.parameters, labels(&[("name", "nsm-1")]));

    let url = NetworkServiceUrl::parse("memif://my-vpp-service?A=1").unwrap();
    let m = url.mechanism();
    assert_eq!((m.cls.as_str(), m.r#type.as_str()), (cls::LOCAL, "MEMIF"));
    assert!(m.parameters.is_empty(), "no interface, no name parameter");
}

/// A bad input, a check that the error is the right variant, and the parts its message must name.
type Refusal = (&'static str, fn(&UrlError) -> bool, &'static [&'static str]);

/// Asserts that `err` is the expected variant (by `matches`) and that its message names every `part`.
fn assert_refused(input: &str, err: &UrlError, ok: bool, parts: &[&str]) {
    assert!(ok, "{input}: wrong error variant: {err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{input:?}")),
        "{input}: message {msg:?} does not name the input"
    );
    for part in parts {
        assert!(
            msg.contains(part),
            "{input}: message {msg:?} does not name {part:?}"
        );
    }
}

#[test]
fn bad_socket_urls_are_refused_naming_the_offending_part() {
    let cases: &[Refusal] = &[
        (
            "http://x:1",
            |e| matches!(e, UrlError::UnknownScheme { scheme, .. } if scheme == "http"),
            &["\"http\"", "unix://"],
        ),
        (
            "ftp://files.example/x",
            |e| matches!(e, UrlError::UnknownScheme { scheme, .. } if scheme == "ftp"),
            &["\"ftp\""],
        ),
        (
            "foo://svc",
            |e| matches!(e, UrlError::UnknownScheme { scheme, .. } if scheme == "foo"),
            &["\"foo\""],
        ),
        (
            "tcp://host:99999",
            |e| matches!(e, UrlError::BadPort { port, .. } if port == "99999"),
            &["port \"99999\""],
        ),
        (
            "tcp://host:abc",
            |e| matches!(e, UrlError::BadPort { port, .. } if port == "abc"),
            &["port \"abc\""],
        ),
        (
            "registry:",
            |e| matches!(e, UrlError::BadPort { port, .. } if port.is_empty()),
            &["port \"\""],
        ),
        (
            "tcp://host",
            |e| matches!(e, UrlError::BadPort { port, .. } if port.is_empty()),
            &["port \"\""],
        ),
        (
            "tcp://[fd00::zz]:5001",
            |e| matches!(e, UrlError::BadHost { host, .. } if host == "fd00::zz"),
            &["host \"fd00::zz\""],
        ),
        (
            "tcp://ho st:1",
            |e| matches!(e, UrlError::BadHost { host, .. } if host == "ho st"),
            &["host \"ho st\""],
        ),
        (
            "inode://a/b",
            |e| matches!(e, UrlError::BadInode { .. }),
            &["inode://<device>/<inode>"],
        ),
        (
            "inode://4",
            |e| matches!(e, UrlError::BadInode { .. }),
            &["inode://<device>/<inode>"],
        ),
        (
            "unix://relative.sock",
            |e| matches!(e, UrlError::BadPath { .. }),
            &["absolute path"],
        ),
    ];
    for (input, is_right, parts) in cases {
        let err = NsmUrl::parse(input).expect_err(input);
        assert_refused(input, &err, is_right(&err), parts);
    }
    assert_eq!(NsmUrl::parse(""), Err(UrlError::Empty));
}

#[test]
fn bad_request_urls_are_refused_naming_the_offending_part() {
    let cases: &[Refusal] = &[
        (
            "http://x:1",
            |e| matches!(e, UrlError::UnknownScheme { scheme, .. } if scheme == "http"),
            &["\"http\"", "kernel://"],
        ),
        (
            "ftp://files.example/x",
            |e| matches!(e, UrlError::UnknownScheme { scheme, .. } if scheme == "ftp"),
            &["\"ftp\""],
        ),
        (
            "foo://svc",
            |e| matches!(e, UrlError::UnknownScheme { scheme, .. } if scheme == "foo"),
            &["\"foo\""],
        ),
        (
            "icmp-responder",
            |e| matches!(e, UrlError::UnknownScheme { scheme, .. } if scheme.is_empty()),
            &["kernel://"],
        ),
        (
            "kernel:///nsm-1",
            |e| matches!(e, UrlError::MissingService { .. }),
            &["missing network service"],
        ),
        (
            "kernel://?a=b",
            |e| matches!(e, UrlError::MissingService { .. }),
            &["missing network service"],
        ),
        (
            "kernel://svc/abcdefghijklmnop",
            |e| matches!(e, UrlError::BadInterfaceName { name, .. } if name == "abcdefghijklmnop"),
            &["\"abcdefghijklmnop\"", "15 bytes"],
        ),
        (
            "kernel://svc/nsm/1",
            |e| matches!(e, UrlError::BadInterfaceName { name, .. } if name == "nsm/1"),
            &["\"nsm/1\""],
        ),
        (
            "kernel://svc/nsm:1",
            |e| matches!(e, UrlError::BadInterfaceName { name, .. } if name == "nsm:1"),
            &["\"nsm:1\""],
        ),
        (
            "kernel://svc/if?novalue",
            |e| matches!(e, UrlError::BadLabel { label, .. } if label == "novalue"),
            &["label \"novalue\""],
        ),
        (
            "kernel://svc?=v",
            |e| matches!(e, UrlError::BadLabel { label, .. } if label == "=v"),
            &["label \"=v\""],
        ),
        (
            "kernel://svc?a=%C3",
            |e| matches!(e, UrlError::BadLabel { label, .. } if label == "a=%C3"),
            &["label \"a=%C3\""],
        ),
        (
            "kernel://my_svc!/nsm-1",
            |e| matches!(e, UrlError::BadName { name, .. } if name == "my_svc!"),
            &["name \"my_svc!\""],
        ),
        (
            "kernel://svc@/nsm-1",
            |e| matches!(e, UrlError::BadName { name, .. } if name.is_empty()),
            &["name \"\""],
        ),
        (
            "vxlan://svc",
            |e| {
                matches!(e, UrlError::NotClientMechanism { mechanism, .. }
                    if *mechanism == MechanismType::Vxlan)
            },
            &["VXLAN", "REMOTE"],
        ),
        (
            "wireguard://svc/nsm-1",
            |e| {
                matches!(e, UrlError::NotClientMechanism { mechanism, .. }
                    if *mechanism == MechanismType::Wireguard)
            },
            &["WIREGUARD", "REMOTE"],
        ),
    ];
    for (input, is_right, parts) in cases {
        let err = NetworkServiceUrl::parse(input).expect_err(input);
        assert_refused(input, &err, is_right(&err), parts);
    }
    assert_eq!(NetworkServiceUrl::parse(""), Err(UrlError::Empty));
}
