//! A minimal etcd v3 client over our own generated gRPC stubs: prefix Range, Put (with a lease),
//! Delete, Lease Grant/Revoke/TimeToLive and a prefix Watch.
//!
//! Every error becomes an [`NsmError`] naming the etcd address(es) tried; an etcd that cannot be
//! reached, or does not answer within the call timeout, is `Unavailable`.

use std::time::Duration;

use futures::{Stream, StreamExt};
use nsm_core::NsmError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::pb::mvccpb::KeyValue;

const NAME: &str = "etcd";

/// How long one unary etcd call may take before it counts as unavailable.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The end of the key range holding every key that starts with `prefix` (etcd's `GetPrefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from `prefix` on.
    vec![0]
}

/// A connection to an etcd cluster (one or more client URLs).
#[derive(Clone)]
pub struct EtcdClient {
    channel: Channel,
    addrs: String,
    call_timeout: Duration,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// A current snapshot of a key range.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The store revision the snapshot was taken at.
    pub revision: i64,
    /// The keys and values.
    pub kvs: Vec<KeyValue>,
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// True for deletions (Unregister, lease expiry).
    pub deleted: bool,
    /// The key-value after the change (for deletions: only the key and revision).
    pub kv: KeyValue,
    /// The key-value before the change, when etcd still had it.
    pub prev_kv: Option<KeyValue>,
}

impl EtcdClient {
    /// Dials `endpoints` (`host:port`, several for a cluster) lazily: nothing is checked until the
    /// first call.
    pub fn new(endpoints: &[String]) -> Result<Self, NsmError> {
        let addrs = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(NsmError::invalid(NAME, "no etcd endpoint given"));
        }
        let mut eps = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let uri = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let ep = Endpoint::from_shared(uri)
                .map_err(|err| NsmError::invalid(NAME, format!("etcd endpoint {e:?}: {err}")))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            eps.push(ep);
        }
        let channel = if eps.len() == 1 {
            eps.remove(0).connect_lazy()
        } else {
            Channel::balance_list(eps.into_iter())
        };
        Ok(Self {
            channel,
            addrs,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Sets how long one unary call may take.
    pub fn with_call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = t;
        self
    }

    /// The address list this client dials (for messages).
    pub fn addrs(&self) -> &str {
        &self.addrs
    }

    fn status_error(&self, what: &str, s: &tonic::Status) -> NsmError {
        let mut msg = format!("etcd at {} ({what}): {}", self.addrs, s.message());
        let mut cause = std::error::Error::source(s);
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        match s.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => NsmError::invalid(NAME, msg),
            tonic::Code::NotFound => NsmError::not_found(NAME, msg),
            tonic::Code::Internal | tonic::Code::FailedPrecondition => {
                NsmError::internal(NAME, msg)
            }
            // Transport failures (connection refused, reset) arrive as Unknown.
            _ => NsmError::unavailable(NAME, msg),
        }
    }

    async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, NsmError> {
        match tokio::time::timeout(self.call_timeout, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.status_error(what, &s)),
            Err(_) => Err(NsmError::unavailable(
                NAME,
                format!(
                    "etcd at {} ({what}): no answer within {:?}",
                    self.addrs, self.call_timeout
                ),
            )),
        }
    }

    /// Every key starting with `prefix`, and the revision they were read at (linearizable).
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<Snapshot, NsmError> {
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        let mut kv = KvClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX);
        let r = self.call("range", kv.range(req)).await?;
        Ok(Snapshot {
            revision: r.header.map_or(0, |h| h.revision),
            kvs: r.kvs,
        })
    }

    /// The store revision now: one linearizable read of a single key (`key`, which need not
    /// exist), so its cost does not grow with the number of keys — to tell whether a local mirror
    /// has caught up.
    pub async fn current_revision(&self, key: &[u8]) -> Result<i64, NsmError> {
        let req = RangeRequest {
            key: key.to_vec(),
            count_only: true,
            ..Default::default()
        };
        let r = self
            .call("range", KvClient::new(self.channel.clone()).range(req))
            .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// How many keys start with `prefix`, and the store revision now — one linearizable count-only
    /// read (etcd walks the prefix's keys in its index, but reads no values).
    pub async fn prefix_count(&self, prefix: &[u8]) -> Result<(i64, i64), NsmError> {
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            count_only: true,
            ..Default::default()
        };
        let r = self
            .call("range", KvClient::new(self.channel.clone()).range(req))
            .await?;
        Ok((r.count, r.header.map_or(0, |h| h.revision)))
    }

    /// Puts `value` under `key`, attached to `lease` (0: none); returns the store revision it made.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>, lease: i64) -> Result<i64, NsmError> {
        let req = PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        };
        let r = self
            .call("put", KvClient::new(self.channel.clone()).put(req))
            .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// Deletes `key`; returns the revision of the deletion, or None if there was no such key.
    pub async fn delete(&self, key: Vec<u8>) -> Result<Option<i64>, NsmError> {
        let req = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        let r = self
            .call(
                "delete",
                KvClient::new(self.channel.clone()).delete_range(req),
            )
            .await?;
        Ok((r.deleted > 0).then(|| r.header.map_or(0, |h| h.revision)))
    }

    /// Grants a lease of `ttl` seconds (etcd may raise it to its minimum); returns its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, NsmError> {
        let req = LeaseGrantRequest { ttl, id: 0 };
        let r = self
            .call(
                "lease grant",
                LeaseClient::new(self.channel.clone()).lease_grant(req),
            )
            .await?;
        if !r.error.is_empty() {
            return Err(NsmError::internal(
                NAME,
                format!("etcd at {} (lease grant): {}", self.addrs, r.error),
            ));
        }
        Ok(r.id)
    }

    /// Revokes a lease (deleting its keys). An unknown lease is not an error.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), NsmError> {
        let req = LeaseRevokeRequest { id };
        match self
            .call(
                "lease revoke",
                LeaseClient::new(self.channel.clone()).lease_revoke(req),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(NsmError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The remaining TTL of a lease in seconds (-1 when it expired or never existed).
    pub async fn lease_ttl(&self, id: i64) -> Result<i64, NsmError> {
        let req = LeaseTimeToLiveRequest { id, keys: false };
        let r = self
            .call(
                "lease time-to-live",
                LeaseClient::new(self.channel.clone()).lease_time_to_live(req),
            )
            .await?;
        Ok(r.ttl)
    }

    /// Watches every key starting with `prefix` from `start_revision` (inclusive), with previous
    /// values. The stream yields batches of changes (one etcd revision or more each) together with the
    /// revision they bring the store to — progress notifications are empty batches — and ends with an
    /// error when the watch breaks or is cancelled by etcd (compaction). The handle asks etcd for a
    /// progress notification.
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
    ) -> Result<
        (
            impl Stream<Item = Result<(i64, Vec<WatchEvent>), NsmError>> + Send + use<>,
            WatchHandle,
        ),
        NsmError,
    > {
        let (tx, rx) = mpsc::channel(16);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision,
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            })),
        };
        tx.send(create)
            .await
            .map_err(|_| NsmError::internal(NAME, "watch request channel closed"))?;
        let mut client =
            WatchClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX);
        let responses = self
            .call("watch", client.watch(ReceiverStream::new(rx)))
            .await?;
        let this = self.clone();
        let handle = WatchHandle { tx: tx.clone() };
        // `tx` is kept in the stream state: dropping it would end the request half and the watch.
        let stream = futures::stream::unfold(
            (responses, tx, this, false),
            |(mut responses, tx, this, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let item: Result<WatchResponse, tonic::Status> = match responses.next().await {
                        Some(r) => r,
                        None => {
                            let e = NsmError::unavailable(
                                NAME,
                                format!("etcd at {} (watch): stream ended", this.addrs),
                            );
                            return Some((Err(e), (responses, tx, this, true)));
                        }
                    };
                    let resp = match item {
                        Ok(r) => r,
                        Err(s) => {
                            let e = this.status_error("watch", &s);
                            return Some((Err(e), (responses, tx, this, true)));
                        }
                    };
                    if resp.canceled {
                        let e = NsmError::unavailable(
                            NAME,
                            format!(
                                "etcd at {} (watch): cancelled: {} (compact revision {})",
                                this.addrs, resp.cancel_reason, resp.compact_revision
                            ),
                        );
                        return Some((Err(e), (responses, tx, this, true)));
                    }
                    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                    if resp.created && resp.events.is_empty() {
                        continue;
                    }
                    let events = resp
                        .events
                        .into_iter()
                        .filter_map(|ev| {
                            Some(WatchEvent {
                                deleted: ev.r#type
                                    == crate::pb::mvccpb::event::EventType::Delete as i32,
                                kv: ev.kv?,
                                prev_kv: ev.prev_kv,
                            })
                        })
                        .collect::<Vec<_>>();
                    return Some((Ok((revision, events)), (responses, tx, this, false)));
                }
            },
        );
        Ok((stream, handle))
    }
}

/// Sends requests on an open watch stream.
#[derive(Debug, Clone)]
pub struct WatchHandle {
    tx: mpsc::Sender<WatchRequest>,
}

impl WatchHandle {
    /// Asks etcd to report the watch's progress (an empty batch at the current revision, sent once
    /// every earlier event has been delivered). Does nothing if a request is already queued.
    pub fn request_progress(&self) {
        let _ = self.tx.try_send(WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(
                crate::pb::etcdserverpb::WatchProgressRequest {},
            )),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/nsm/nse/"), b"/nsm/nse0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
