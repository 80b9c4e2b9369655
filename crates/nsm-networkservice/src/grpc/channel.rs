//! Dialing a next hop.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use nsm_api::url::NsmUrl;
use nsm_core::NsmError;
use nsm_identity::{Svid, TlsIdentity, TransportSecurity, peer_info};
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use super::fdconn::FdUnixStream;
use super::tls::ServerPeer;

const ELEMENT: &str = "dial";

/// Dials `url` with the given transport security. With TLS the returned [`ServerPeer`] holds the
/// server's verified identity (updated on every reconnect); in plaintext it stays empty.
pub async fn client_channel_with(
    url: &NsmUrl,
    dial_timeout: Duration,
    security: &TransportSecurity,
) -> Result<(Channel, ServerPeer), NsmError> {
    match security {
        TransportSecurity::Insecure => plain_channel(url, dial_timeout).await,
        TransportSecurity::Tls(tls) => client_channel_tls(url, dial_timeout, tls.connector()).await,
    }
}

/// Dials `url` with mTLS presenting `svid` (rather than the source's current SVID) on every
/// (re)connect: a channel pinned to one identity, so that the tokens sent on it can be signed with the
/// same key the server authenticated.
pub async fn client_channel_as(
    url: &NsmUrl,
    dial_timeout: Duration,
    tls: &TlsIdentity,
    svid: &Svid,
) -> Result<(Channel, ServerPeer), NsmError> {
    let connector = tokio_rustls::TlsConnector::from(tls.client_config_as(svid));
    client_channel_tls(url, dial_timeout, connector).await
}

/// A raw connection to `url` (tcp or unix), ready for TLS.
enum Raw {
    Tcp(tokio::net::TcpStream),
    Unix(FdUnixStream),
}

async fn tls_dial(
    url: &NsmUrl,
    connector: &tokio_rustls::TlsConnector,
    peer: &ServerPeer,
) -> std::io::Result<TokioIo<Box<dyn IoStream>>> {
    let raw = match url {
        NsmUrl::Tcp { .. } => {
            let s = tokio::net::TcpStream::connect(url.authority().unwrap_or_default()).await?;
            let _ = s.set_nodelay(true);
            Raw::Tcp(s)
        }
        NsmUrl::Unix(path) => {
            // Below TLS, as grpcfd wraps the raw conn before the handshake.
            let s = tokio::net::UnixStream::connect(path).await?;
            Raw::Unix(FdUnixStream::attach(s, peer.fds_for_new_connection()))
        }
        _ => return Err(std::io::Error::other(format!("cannot dial {url}"))),
    };
    // SVIDs carry no DNS names and the verifier ignores the name; send a fixed SNI.
    let name = ServerName::try_from("nsm").map_err(std::io::Error::other)?;
    let stream: Box<dyn IoStream> = match raw {
        Raw::Tcp(s) => {
            let t = connector.connect(name, s).await?;
            let mut info = peer_info(t.get_ref().1.peer_certificates());
            info.remote_addr = t.get_ref().0.peer_addr().ok().map(|a| a.to_string());
            peer.set(info);
            Box::new(t)
        }
        Raw::Unix(s) => {
            let t = connector.connect(name, s).await?;
            let mut info = peer_info(t.get_ref().1.peer_certificates());
            info.remote_addr = Some(url.to_string());
            peer.set(info);
            Box::new(t)
        }
    };
    Ok(TokioIo::new(stream))
}

/// A TLS stream over tcp or unix.
trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> IoStream for T {}

async fn client_channel_tls(
    url: &NsmUrl,
    dial_timeout: Duration,
    connector: tokio_rustls::TlsConnector,
) -> Result<(Channel, ServerPeer), NsmError> {
    if !matches!(url, NsmUrl::Tcp { .. } | NsmUrl::Unix(_)) {
        return Err(not_dialable(url));
    }
    let failed =
        |why: String| NsmError::unavailable(ELEMENT, format!("failed to dial {url}: {why}"));
    let peer = ServerPeer::default();
    let (u, p) = (url.clone(), peer.clone());
    let endpoint = Endpoint::from_static("https://nsm").connect_timeout(dial_timeout);
    let dial = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let (u, p, connector) = (u.clone(), p.clone(), connector.clone());
        async move { tls_dial(&u, &connector, &p).await }
    }));
    match tokio::time::timeout(dial_timeout, dial).await {
        Ok(Ok(channel)) => Ok((channel, peer)),
        Ok(Err(e)) => Err(failed(error_chain(&e))),
        Err(_) => Err(failed(format!("no connection within {dial_timeout:?}"))),
    }
}

/// Dials `url` (`tcp://host:port` or `unix:///path`) in plaintext, failing with `Unavailable` naming the
/// URL if no connection is up within `dial_timeout`. Later calls on the channel reconnect by themselves.
pub async fn client_channel(url: &NsmUrl, dial_timeout: Duration) -> Result<Channel, NsmError> {
    Ok(plain_channel(url, dial_timeout).await?.0)
}

/// [`client_channel`], with the [`ServerPeer`] that holds the fd side channel of unix connections.
async fn plain_channel(
    url: &NsmUrl,
    dial_timeout: Duration,
) -> Result<(Channel, ServerPeer), NsmError> {
    let failed =
        |why: String| NsmError::unavailable(ELEMENT, format!("failed to dial {url}: {why}"));
    let peer = ServerPeer::default();
    let dial = async {
        match url {
            NsmUrl::Tcp { .. } => {
                let authority = url.authority().unwrap_or_default();
                Endpoint::from_shared(format!("http://{authority}"))
                    .map_err(|e| NsmError::invalid(ELEMENT, format!("{url}: {e}")))?
                    .connect_timeout(dial_timeout)
                    .connect()
                    .await
                    .map_err(|e| failed(error_chain(&e)))
            }
            NsmUrl::Unix(path) => {
                let (path, p) = (path.clone(), peer.clone());
                Endpoint::from_static("http://localhost")
                    .connect_timeout(dial_timeout)
                    .connect_with_connector(tower::service_fn(move |_| {
                        let (path, p) = (path.clone(), p.clone());
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            let s = FdUnixStream::attach(s, p.fds_for_new_connection());
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    }))
                    .await
                    .map_err(|e| failed(error_chain(&e)))
            }
            NsmUrl::Inode { .. } | NsmUrl::File(_) => Err(not_dialable(url)),
        }
    };
    match tokio::time::timeout(dial_timeout, dial).await {
        Ok(r) => r.map(|c| (c, peer)),
        Err(_) => Err(failed(format!("no connection within {dial_timeout:?}"))),
    }
}

/// `inode://` and `file://` URLs name passed fds or files, not something to dial: `recvfd` turns
/// received ones into `unix:///proc/<pid>/fd/<n>` first.
fn not_dialable(url: &NsmUrl) -> NsmError {
    NsmError::invalid(
        ELEMENT,
        format!("{url}: cannot dial an inode:// or file:// URL (dial unix:// or tcp://)"),
    )
}

/// An error and its causes on one line (tonic's transport error alone just says "transport error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
