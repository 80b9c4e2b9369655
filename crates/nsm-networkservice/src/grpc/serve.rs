//! Serving a tonic router on a TCP or unix listener, with a stop that cuts every open connection.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use futures::StreamExt;
use nsm_api::url::NsmUrl;
use nsm_core::NsmError;
use nsm_identity::{TlsIdentity, TransportSecurity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, Router};

use super::fdconn::FdUnixStream;
use super::tls::tls_incoming;

const ELEMENT: &str = "grpc";

/// A running server. Dropping it stops the server as [`Serving::stop`] does, without waiting.
#[derive(Debug)]
pub struct Serving {
    url: NsmUrl,
    kill: CancellationToken,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    socket_file: Option<PathBuf>,
}

impl Serving {
    /// The URL clients dial (`tcp://` with the bound port, or `unix://`).
    pub fn url(&self) -> &NsmUrl {
        &self.url
    }

    /// Stops accepting, cuts every open connection (streams included, as if the process had died) and
    /// waits for the server to finish. A unix socket file is removed.
    pub async fn stop(mut self) -> Result<(), NsmError> {
        self.kill.cancel();
        let result = match self.task.take() {
            Some(task) => match task.await {
                Ok(r) => r.map_err(|e| NsmError::internal(ELEMENT, format!("server failed: {e}"))),
                Err(e) => Err(NsmError::internal(
                    ELEMENT,
                    format!("server task failed: {e}"),
                )),
            },
            None => Ok(()),
        };
        self.remove_socket_file();
        result
    }

    fn remove_socket_file(&mut self) {
        if let Some(p) = self.socket_file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.kill.cancel();
        self.remove_socket_file();
    }
}

/// Binds `url` (`tcp://host:port`, port 0 for any; or `unix:///path`) and serves `router` on it in
/// plaintext (tests; production uses [`serve_tls`] or [`serve_with`]).
pub async fn serve(url: &NsmUrl, router: Router) -> Result<Serving, NsmError> {
    serve_with(url, router, &TransportSecurity::Insecure).await
}

/// Like [`serve`], with SPIFFE mTLS on every connection: handlers find the client's identity in the
/// connection's [`TlsConnInfo`](super::TlsConnInfo) request extension ([`TlsConnInfo::peer`](super::TlsConnInfo::peer)).
pub async fn serve_tls(
    url: &NsmUrl,
    router: Router,
    tls: Arc<TlsIdentity>,
) -> Result<Serving, NsmError> {
    serve_with(url, router, &TransportSecurity::Tls(tls)).await
}

/// Serves `router` on `url` with the given transport security.
pub async fn serve_with(
    url: &NsmUrl,
    router: Router,
    security: &TransportSecurity,
) -> Result<Serving, NsmError> {
    let bind_failed =
        |e: io::Error| NsmError::unavailable(ELEMENT, format!("cannot listen on {url}: {e}"));
    match url {
        NsmUrl::Tcp { .. } => {
            // An empty host means every interface, as in Go's `:5001`.
            let addr = match url {
                NsmUrl::Tcp { host, port } if host.is_empty() => format!("0.0.0.0:{port}"),
                _ => url.authority().unwrap_or_default(),
            };
            let listener = TcpListener::bind(addr).await.map_err(bind_failed)?;
            match security {
                TransportSecurity::Insecure => serve_tcp(listener, router),
                TransportSecurity::Tls(tls) => serve_tcp_tls(listener, router, tls.clone()),
            }
            .map_err(bind_failed)
        }
        NsmUrl::Unix(path) => {
            remove_stale_socket(path);
            let listener = UnixListener::bind(path).map_err(bind_failed)?;
            Ok(match security {
                TransportSecurity::Insecure => serve_unix(listener, path, router),
                TransportSecurity::Tls(tls) => serve_unix_tls(listener, path, router, tls.clone()),
            })
        }
        _ => Err(NsmError::invalid(
            ELEMENT,
            format!("cannot listen on {url}: use tcp:// or unix://"),
        )),
    }
}

/// Serves `router` on a bound TCP listener.
pub fn serve_tcp(listener: TcpListener, router: Router) -> io::Result<Serving> {
    let addr = listener.local_addr()?;
    let kill = CancellationToken::new();
    let k = kill.clone();
    let incoming = TcpListenerStream::new(listener).map(move |r| {
        r.map(|s| {
            // Control-plane messages are small; do not let Nagle delay them.
            let _ = s.set_nodelay(true);
            Killable::new(s, &k)
        })
    });
    let task =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, kill.clone().cancelled_owned()));
    Ok(Serving {
        url: NsmUrl::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        kill,
        task: Some(task),
        socket_file: None,
    })
}

/// Serves `router` with mTLS on a bound TCP listener.
pub fn serve_tcp_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<TlsIdentity>,
) -> io::Result<Serving> {
    let addr = listener.local_addr()?;
    let kill = CancellationToken::new();
    let listener = Arc::new(listener);
    let k = kill.clone();
    let accept = move || {
        let (listener, k) = (listener.clone(), k.clone());
        async move {
            let (s, remote) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Killable::new(s, &k), Some(remote.to_string()), None))
        }
    };
    let incoming = tls_incoming(accept, tls, kill.clone());
    let task =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, kill.clone().cancelled_owned()));
    Ok(Serving {
        url: NsmUrl::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        kill,
        task: Some(task),
        socket_file: None,
    })
}

/// Serves `router` with mTLS on a bound unix listener whose socket file is `path` (removed on stop).
pub fn serve_unix_tls(
    listener: UnixListener,
    path: &Path,
    router: Router,
    tls: Arc<TlsIdentity>,
) -> Serving {
    let kill = CancellationToken::new();
    let listener = Arc::new(listener);
    let k = kill.clone();
    let shown = format!("unix://{}", path.display());
    let accept = move || {
        let (listener, k, shown) = (listener.clone(), k.clone(), shown.clone());
        async move {
            let (s, _) = listener.accept().await?;
            // The fd layer sits below TLS, as grpcfd wraps the raw conn before the handshake.
            let s = FdUnixStream::new(s);
            let fds = s.transceiver();
            Ok((Killable::new(s, &k), Some(shown), Some(fds)))
        }
    };
    let incoming = tls_incoming(accept, tls, kill.clone());
    let task =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, kill.clone().cancelled_owned()));
    Serving {
        url: NsmUrl::Unix(path.to_path_buf()),
        kill,
        task: Some(task),
        socket_file: Some(path.to_path_buf()),
    }
}

/// Serves `router` on a bound unix listener whose socket file is `path` (removed on stop).
pub fn serve_unix(listener: UnixListener, path: &Path, router: Router) -> Serving {
    let kill = CancellationToken::new();
    let k = kill.clone();
    let incoming = UnixListenerStream::new(listener)
        .map(move |r| r.map(|s| Killable::new(FdUnixStream::new(s), &k)));
    let task =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, kill.clone().cancelled_owned()));
    Serving {
        url: NsmUrl::Unix(path.to_path_buf()),
        kill,
        task: Some(task),
        socket_file: Some(path.to_path_buf()),
    }
}

/// Removes a socket file left behind by a previous run (never a regular file).
fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// An accepted connection that fails every read and write once the server is stopped, so hyper drops
/// it (tonic's graceful shutdown would otherwise wait for long-lived monitor streams forever).
struct Killable<T> {
    io: T,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Killable<T> {
    fn new(io: T, kill: &CancellationToken) -> Self {
        Self {
            io,
            killed: Box::pin(kill.clone().cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "server stopped",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: Connected> Connected for Killable<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Killable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Killable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
