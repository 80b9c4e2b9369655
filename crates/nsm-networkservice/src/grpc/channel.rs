//! Dialing a next hop.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use nsm_api::url::NsmUrl;
use nsm_core::NsmError;
use tonic::transport::{Channel, Endpoint};

const ELEMENT: &str = "dial";

/// Dials `url` (`tcp://host:port` or `unix:///path`), failing with `Unavailable` naming the URL if no
/// connection is up within `dial_timeout`. Later calls on the channel reconnect by themselves.
pub async fn client_channel(url: &NsmUrl, dial_timeout: Duration) -> Result<Channel, NsmError> {
    let failed =
        |why: String| NsmError::unavailable(ELEMENT, format!("failed to dial {url}: {why}"));
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
                let path = path.clone();
                Endpoint::from_static("http://localhost")
                    .connect_timeout(dial_timeout)
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
                    .map_err(|e| failed(error_chain(&e)))
            }
            NsmUrl::Inode { .. } | NsmUrl::File(_) => Err(NsmError::invalid(
                ELEMENT,
                format!(
                    "{url}: cannot dial inode:// or file:// URLs (fd passing is not supported yet)"
                ),
            )),
        }
    };
    match tokio::time::timeout(dial_timeout, dial).await {
        Ok(r) => r,
        Err(_) => Err(failed(format!("no connection within {dial_timeout:?}"))),
    }
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
