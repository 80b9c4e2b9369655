//! Every URL form NSM uses, parsed into types and printed back.
//!
//! Socket URLs ([`NsmUrl`]): `unix:///path`, `tcp://host:port`, bare `host:port` (Go deployments write
//! `NSM_REGISTRY_URL=registry:5002`), `inode://dev/ino` (a file descriptor passed out of band) and
//! `file:///path` (a netns or socket file before fd passing).
//!
//! Client request URLs ([`NetworkServiceUrl`], the `NSM_NETWORK_SERVICES` form):
//! `kernel://service[@domain][/ifname][?label=value&…]` — mechanism from the scheme, the network service,
//! an optional interdomain suffix, the interface name in the client's namespace and the request labels.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::connection::Mechanism;
use crate::mechanisms::{MechanismType, common, kernel};

/// Why a URL was refused. Every variant carries the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The input is empty.
    #[error("empty URL")]
    Empty,
    /// The scheme is not one NSM uses.
    #[error("{url:?}: unknown scheme {scheme:?} (expected {expected})")]
    UnknownScheme {
        /// The whole input.
        url: String,
        /// The scheme found.
        scheme: String,
        /// The schemes accepted here.
        expected: &'static str,
    },
    /// The port is missing, not a number or out of range.
    #[error("{url:?}: bad port {port:?} (expected a number 0-65535)")]
    BadPort {
        /// The whole input.
        url: String,
        /// The port text found.
        port: String,
    },
    /// The host part is malformed.
    #[error("{url:?}: bad host {host:?}")]
    BadHost {
        /// The whole input.
        url: String,
        /// The host text found.
        host: String,
    },
    /// A unix or file URL without an absolute path.
    #[error("{url:?}: expected an absolute path after the scheme (e.g. unix:///var/lib/nsm.sock)")]
    BadPath {
        /// The whole input.
        url: String,
    },
    /// An `inode://` URL whose device or inode is not a decimal number.
    #[error("{url:?}: expected inode://<device>/<inode> with decimal numbers")]
    BadInode {
        /// The whole input.
        url: String,
    },
    /// A request URL without a network service name.
    #[error("{url:?}: missing network service name (expected <mechanism>://<service>[/<ifname>])")]
    MissingService {
        /// The whole input.
        url: String,
    },
    /// A network service or domain name with characters NSM names cannot have.
    #[error("{url:?}: bad name {name:?} (letters, digits, '-', '_' and '.' only)")]
    BadName {
        /// The whole input.
        url: String,
        /// The offending name.
        name: String,
    },
    /// A request URL naming a mechanism a client cannot ask for.
    #[error(
        "{url:?}: {mechanism} is a REMOTE mechanism; a client asks for a LOCAL one (kernel, memif, vfio, noop)"
    )]
    NotClientMechanism {
        /// The whole input.
        url: String,
        /// The mechanism found.
        mechanism: MechanismType,
    },
    /// The interface name is empty, too long or malformed.
    #[error("{url:?}: bad interface name {name:?}: {reason}")]
    BadInterfaceName {
        /// The whole input.
        url: String,
        /// The name found.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A label is not `key=value` with a non-empty key.
    #[error("{url:?}: bad label {label:?} (expected key=value)")]
    BadLabel {
        /// The whole input.
        url: String,
        /// The label text found.
        label: String,
    },
}

/// A socket or file URL as NSM components use it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsmUrl {
    /// `unix:///path/to.sock`
    Unix(PathBuf),
    /// `tcp://host:port` or bare `host:port`; an empty host means "all interfaces" when listening.
    Tcp {
        /// Host name or address, IPv6 without brackets.
        host: String,
        /// TCP port; 0 asks the kernel for a free one when listening.
        port: u16,
    },
    /// `inode://dev/ino`: a file descriptor sent alongside the gRPC stream.
    Inode {
        /// `st_dev` of the file.
        dev: u64,
        /// `st_ino` of the file.
        ino: u64,
    },
    /// `file:///path`
    File(PathBuf),
}

const SOCKET_SCHEMES: &str = "unix://, tcp://, inode://, file:// or host:port";

impl NsmUrl {
    /// Parses any socket URL form. Never panics.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        if s.is_empty() {
            return Err(UrlError::Empty);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return parse_host_port(s, s);
        };
        match scheme {
            "unix" => absolute_path(s, rest).map(NsmUrl::Unix),
            "file" => absolute_path(s, rest).map(NsmUrl::File),
            "tcp" => parse_host_port(s, rest.trim_end_matches('/')),
            "inode" => {
                let bad = || UrlError::BadInode { url: s.to_string() };
                let (dev, ino) = rest.split_once('/').ok_or_else(bad)?;
                Ok(NsmUrl::Inode {
                    dev: parse_decimal(dev).ok_or_else(bad)?,
                    ino: parse_decimal(ino).ok_or_else(bad)?,
                })
            }
            _ => Err(UrlError::UnknownScheme {
                url: s.to_string(),
                scheme: scheme.to_string(),
                expected: SOCKET_SCHEMES,
            }),
        }
    }

    /// The target string tonic/hyper dial: `host:port` for TCP, the URL itself for unix sockets.
    pub fn grpc_target(&self) -> String {
        match self {
            NsmUrl::Tcp { .. } => self.authority().unwrap_or_default(),
            other => other.to_string(),
        }
    }

    /// `host:port` of a TCP URL (IPv6 hosts in brackets).
    pub fn authority(&self) -> Option<String> {
        match self {
            NsmUrl::Tcp { host, port } if host.contains(':') => Some(format!("[{host}]:{port}")),
            NsmUrl::Tcp { host, port } => Some(format!("{host}:{port}")),
            _ => None,
        }
    }

    /// True for URLs that reach something on this node only (unix sockets, passed fds, files);
    /// `filtermechanisms` keeps LOCAL mechanisms for these and REMOTE ones otherwise.
    pub fn is_node_local(&self) -> bool {
        !matches!(self, NsmUrl::Tcp { .. })
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn absolute_path(url: &str, rest: &str) -> Result<PathBuf, UrlError> {
    if rest.len() < 2 || !rest.starts_with('/') {
        return Err(UrlError::BadPath {
            url: url.to_string(),
        });
    }
    Ok(PathBuf::from(rest))
}

fn parse_host_port(url: &str, authority: &str) -> Result<NsmUrl, UrlError> {
    let bad_port = |port: &str| UrlError::BadPort {
        url: url.to_string(),
        port: port.to_string(),
    };
    let bad_host = |host: &str| UrlError::BadHost {
        url: url.to_string(),
        host: host.to_string(),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad_host(authority))?;
        host.parse::<Ipv6Addr>().map_err(|_| bad_host(host))?;
        let port = after.strip_prefix(':').ok_or_else(|| bad_port(after))?;
        (host, port)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad_port(""))?;
        let valid = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(bad_host(host));
        }
        (host, port)
    };
    let port_num = parse_decimal(port)
        .filter(|p| *p <= u64::from(u16::MAX))
        .ok_or_else(|| bad_port(port))?;
    Ok(NsmUrl::Tcp {
        host: host.to_string(),
        // Checked against u16::MAX just above.
        port: u16::try_from(port_num).map_err(|_| bad_port(port))?,
    })
}

impl fmt::Display for NsmUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NsmUrl::Unix(p) => write!(f, "unix://{}", p.display()),
            NsmUrl::File(p) => write!(f, "file://{}", p.display()),
            NsmUrl::Inode { dev, ino } => write!(f, "inode://{dev}/{ino}"),
            NsmUrl::Tcp { .. } => write!(f, "tcp://{}", self.authority().unwrap_or_default()),
        }
    }
}

impl FromStr for NsmUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Characters escaped in label keys and values when printing a request URL.
const LABEL_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'&')
    .add(b'=')
    .add(b'%')
    .add(b'#')
    .add(b'+')
    .add(b'?');

/// A client's request for a network service: `kernel://service[@domain][/ifname][?k=v&…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkServiceUrl {
    /// The LOCAL mechanism asked for (from the scheme).
    pub mechanism: MechanismType,
    /// The network service name, without the domain.
    pub service: String,
    /// The interdomain suffix (`service@domain`), if any.
    pub domain: Option<String>,
    /// The interface name in the client's namespace, if given.
    pub interface: Option<String>,
    /// Request labels (from the query, `+` and `%XX` decoded); repeated keys are joined with "," as Go does.
    pub labels: BTreeMap<String, String>,
}

impl NetworkServiceUrl {
    /// Parses a request URL. Never panics.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        if s.is_empty() {
            return Err(UrlError::Empty);
        }
        let url = || s.to_string();
        let (scheme, rest) = s.split_once("://").ok_or_else(|| UrlError::UnknownScheme {
            url: url(),
            scheme: String::new(),
            expected: "kernel://, memif://, vfio:// or noop://",
        })?;
        let mechanism: MechanismType = scheme.parse().map_err(|_| UrlError::UnknownScheme {
            url: url(),
            scheme: scheme.to_string(),
            expected: "kernel://, memif://, vfio:// or noop://",
        })?;
        if mechanism.cls() != crate::mechanisms::cls::LOCAL {
            return Err(UrlError::NotClientMechanism {
                url: url(),
                mechanism,
            });
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, p),
            None => (before_query, ""),
        };
        let (service, domain) = match authority.split_once('@') {
            Some((svc, dom)) => (svc, Some(dom)),
            None => (authority, None),
        };
        if service.is_empty() {
            return Err(UrlError::MissingService { url: url() });
        }
        check_name(s, service)?;
        if let Some(d) = domain {
            check_name(s, d)?;
        }
        Ok(Self {
            mechanism,
            service: service.to_string(),
            domain: domain.map(str::to_string),
            interface: parse_interface(s, path)?,
            labels: parse_labels(s, query.unwrap_or(""))?,
        })
    }

    /// The network service as it goes into `Connection.network_service`: `service` or `service@domain`.
    pub fn network_service(&self) -> String {
        match &self.domain {
            Some(d) => format!("{}@{}", self.service, d),
            None => self.service.clone(),
        }
    }

    /// The mechanism preference a client sends: class LOCAL, the type, and `name` if an interface was given.
    pub fn mechanism(&self) -> Mechanism {
        let mut m = self.mechanism.mechanism();
        if let Some(name) = &self.interface {
            m.set_param(common::INTERFACE_NAME, name.clone());
        }
        m
    }
}

fn check_name(url: &str, name: &str) -> Result<(), UrlError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(UrlError::BadName {
            url: url.to_string(),
            name: name.to_string(),
        })
    }
}

fn parse_interface(url: &str, path: &str) -> Result<Option<String>, UrlError> {
    if path.is_empty() {
        return Ok(None);
    }
    let bad = |reason| UrlError::BadInterfaceName {
        url: url.to_string(),
        name: path.to_string(),
        reason,
    };
    if path.contains('/') {
        return Err(bad("must be a single path segment"));
    }
    if path.len() > kernel::LINUX_IF_MAX_LENGTH {
        return Err(bad("longer than 15 bytes (the Linux limit)"));
    }
    if path == "."
        || path == ".."
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b':' || b < 0x20)
    {
        return Err(bad("not a valid Linux interface name"));
    }
    Ok(Some(path.to_string()))
}

fn parse_labels(url: &str, query: &str) -> Result<BTreeMap<String, String>, UrlError> {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let bad = || UrlError::BadLabel {
            url: url.to_string(),
            label: pair.to_string(),
        };
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        let k = decode_query_component(k).ok_or_else(bad)?;
        let v = decode_query_component(v).ok_or_else(bad)?;
        if k.is_empty() {
            return Err(bad());
        }
        labels
            .entry(k)
            .and_modify(|old| {
                old.push(',');
                old.push_str(&v);
            })
            .or_insert(v);
    }
    Ok(labels)
}

/// Decodes one key or value of a query the way Go's `url.Query()` does: `+` is a space, then `%XX` escapes.
/// (`+` must be replaced first: `%2B` is a literal plus.)
fn decode_query_component(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

impl fmt::Display for NetworkServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}",
            self.mechanism.as_str().to_lowercase(),
            self.network_service()
        )?;
        if let Some(i) = &self.interface {
            write!(f, "/{i}")?;
        }
        for (n, (k, v)) in self.labels.iter().enumerate() {
            let sep = if n == 0 { '?' } else { '&' };
            write!(
                f,
                "{sep}{}={}",
                utf8_percent_encode(k, LABEL_ESCAPES),
                utf8_percent_encode(v, LABEL_ESCAPES)
            )?;
        }
        Ok(())
    }
}

impl FromStr for NetworkServiceUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
