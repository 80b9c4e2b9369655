//! `nsm ctl watch connections`: connection events from every NSMgr until Ctrl-C.
//!
//! Each NSMgr's MonitorConnections stream is followed; its INITIAL_STATE_TRANSFER is printed as one
//! `INITIAL` event per connection, then every UPDATE and DELETE as it comes. A stream that fails is
//! reported on stderr and re-opened after a second. The NSMgrs are discovered once, at start.

use std::time::Duration;

use futures::StreamExt;
use nsm_api::ConnectionEventType;
use nsm_api::connection::MonitorScopeSelector;
use nsm_api::connection::monitor_connection_client::MonitorConnectionClient;
use nsm_api::url::NsmUrl;
use serde::Serialize;
use tokio::sync::mpsc;

use super::get::{ConnectionRow, connection_rows};
use super::mesh::{Mesh, Seen};
use super::output::Format;

/// One connection event as printed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WatchEvent {
    /// INITIAL, UPDATE or DELETE.
    #[serde(rename = "type")]
    pub kind: String,
    /// The NSMgr that reported it.
    pub nsmgr: String,
    /// The connection.
    pub connection: ConnectionRow,
}

/// The event kind as printed.
pub fn kind_name(t: i32) -> &'static str {
    match ConnectionEventType::try_from(t) {
        Ok(ConnectionEventType::InitialStateTransfer) => "INITIAL",
        Ok(ConnectionEventType::Update) => "UPDATE",
        Ok(ConnectionEventType::Delete) => "DELETE",
        Err(_) => "UNKNOWN",
    }
}

/// One line (table), a JSON line, or a YAML document.
pub fn render(ev: &WatchEvent, format: Format) -> String {
    match format {
        Format::Table => {
            let c = &ev.connection;
            format!(
                "{:<7} {} service={} endpoint={} state={} mechanism={} path={} nsmgr={}\n",
                ev.kind,
                c.id,
                c.service,
                if c.endpoint.is_empty() {
                    "-"
                } else {
                    &c.endpoint
                },
                c.state,
                if c.mechanism.is_empty() {
                    "-"
                } else {
                    &c.mechanism
                },
                c.path.join("->"),
                ev.nsmgr
            )
        }
        Format::Json => serde_json::to_string(ev).map_or_else(
            |e| format!("{{\"error\":{:?}}}\n", e.to_string()),
            |s| s + "\n",
        ),
        Format::Yaml => format!(
            "---\n{}",
            yaml_serde::to_string(ev).unwrap_or_else(|e| format!("error: {e:?}\n"))
        ),
    }
}

async fn follow(mesh: Mesh, url: NsmUrl, tx: mpsc::Sender<WatchEvent>) {
    loop {
        let r: Result<(), String> = async {
            let ch = mesh.channel(&url).await?;
            let mut stream = MonitorConnectionClient::new(ch)
                .monitor_connections(MonitorScopeSelector::default())
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            while let Some(ev) = stream.next().await {
                let ev = ev.map_err(|e| e.message().to_string())?;
                let kind = kind_name(ev.r#type);
                let seen: Vec<Seen> = ev
                    .connections
                    .into_values()
                    .map(|conn| Seen {
                        nsmgr: url.clone(),
                        conn,
                    })
                    .collect();
                for row in connection_rows(&seen) {
                    let out = WatchEvent {
                        kind: kind.to_string(),
                        nsmgr: url.to_string(),
                        connection: row,
                    };
                    if tx.send(out).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Err("stream ended".into())
        }
        .await;
        if tx.is_closed() {
            return;
        }
        if let Err(e) = r {
            eprintln!("nsm ctl: NSMgr {url}: {e}; retrying in 1s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs `watch connections` until SIGINT/SIGTERM.
pub async fn run(mesh: &Mesh, format: Format) -> Result<(), String> {
    let nsmgrs = mesh.nsmgr_urls(None).await?;
    if nsmgrs.is_empty() {
        return Err(
            "no NSMgr to watch: none given with --nsmgr and none found in the registry".into(),
        );
    }
    let (tx, mut rx) = mpsc::channel(256);
    let tasks: Vec<_> = nsmgrs
        .into_iter()
        .map(|u| tokio::spawn(follow(mesh.clone(), u, tx.clone())))
        .collect();
    drop(tx);
    let print = async {
        use std::io::Write;
        while let Some(ev) = rx.recv().await {
            let mut out = std::io::stdout().lock();
            if out.write_all(render(&ev, format).as_bytes()).is_err() || out.flush().is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = print => {}
        r = crate::cmd::common::wait_for_signal() => {
            r.map_err(|e| format!("cannot wait for signals: {e}"))?;
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> WatchEvent {
        WatchEvent {
            kind: "UPDATE".into(),
            nsmgr: "tcp://10.0.0.1:5001".into(),
            connection: ConnectionRow {
                id: "nsc-0".into(),
                service: "icmp-responder".into(),
                endpoint: "nse".into(),
                path: vec!["nsc".into(), "nsmgr".into(), "nse".into()],
                state: "UP".into(),
                mechanism: "KERNEL".into(),
                nsmgrs: vec!["tcp://10.0.0.1:5001".into()],
            },
        }
    }

    #[test]
    fn lines_and_json_lines() {
        assert_eq!(
            render(&ev(), Format::Table),
            "UPDATE  nsc-0 service=icmp-responder endpoint=nse state=UP mechanism=KERNEL path=nsc->nsmgr->nse nsmgr=tcp://10.0.0.1:5001\n"
        );
        let j = render(&ev(), Format::Json);
        assert_eq!(j.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["type"], "UPDATE");
        assert_eq!(v["connection"]["id"], "nsc-0");
        assert!(render(&ev(), Format::Yaml).starts_with("---\ntype: UPDATE\n"));
        assert_eq!(kind_name(0), "INITIAL");
        assert_eq!(kind_name(2), "DELETE");
    }
}
