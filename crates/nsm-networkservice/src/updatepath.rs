//! `updatepath`: gives this hop its own segment in `Connection.path` and its own connection id.
//!
//! **Request**: applies the path rules below, sets `Connection.id` to this hop's segment id and runs the
//! rest of the chain. On the way back it restores `path.index` and `id` to the caller's view, so the
//! caller sees the same connection it sent (plus whatever the downstream hops added).
//!
//! 1. Empty path: create segment 0 for this hop (with a new uuid as id if `Connection.id` is empty).
//! 2. The current segment already carries this hop's name: reuse its id (a re-request, or a client and a
//!    server of the same process).
//! 3. Otherwise the current segment is the caller's and its id must equal `Connection.id`. Advance the
//!    index; the next segment is reused if it has this hop's name (a refresh), renamed with a new uuid if
//!    another hop had it (the path changed, e.g. after heal), or appended with a new uuid.
//!
//! A path whose index points past its end, or whose current id disagrees with `Connection.id`, is refused
//! with `InvalidArgument` before anything downstream runs.
//!
//! **Close**: the same rules, then the rest of the chain. **State**: none.

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest, Path, PathSegment};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const ELEMENT: &str = "updatepath";

/// `updatepath` for server chains.
#[derive(Debug, Clone)]
pub struct UpdatePathServer {
    name: String,
}

impl UpdatePathServer {
    /// An element that owns the path segment named `name` (the hop's name).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// `updatepath` for client chains (same rules as the server).
#[derive(Debug, Clone)]
pub struct UpdatePathClient {
    name: String,
}

impl UpdatePathClient {
    /// An element that owns the path segment named `name` (the hop's name).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Applies the path rules to `conn` for the hop `name`; returns the index to restore on the way back.
fn update_path(conn: &mut Connection, name: &str) -> Result<u32> {
    let path = conn.path.get_or_insert_with(Path::default);
    if path.path_segments.is_empty() {
        path.index = 0;
        if conn.id.is_empty() {
            conn.id = new_id();
        }
        path.path_segments
            .push(PathSegment::new(name, conn.id.clone()));
        return Ok(0);
    }
    let len = path.path_segments.len();
    let index = path.index as usize;
    let Some(current) = path.path_segments.get(index) else {
        return Err(NsmError::invalid(
            ELEMENT,
            format!("path index {index} is out of range (path has {len} segments)"),
        ));
    };
    if current.name == name {
        conn.id = current.id.clone();
        return Ok(path.index);
    }
    if current.id != conn.id {
        return Err(NsmError::invalid(
            ELEMENT,
            format!(
                "path segment id mismatch: segment {index} ({:?}) has id {:?} but the connection id is {:?}",
                current.name, current.id, conn.id
            ),
        ));
    }
    let caller_index = path.index;
    let next = index + 1;
    match path.path_segments.get_mut(next) {
        Some(seg) if seg.name == name => conn.id = seg.id.clone(),
        Some(seg) => {
            // Another hop used to follow the caller: this is a different connection from here on.
            *seg = PathSegment::new(name, new_id());
            conn.id = seg.id.clone();
        }
        None => {
            conn.id = new_id();
            path.path_segments
                .push(PathSegment::new(name, conn.id.clone()));
        }
    }
    path.index = caller_index + 1;
    Ok(caller_index)
}

/// Puts `index` and the matching id back into the connection returned by the rest of the chain.
fn restore(mut conn: Connection, index: u32) -> Result<Connection> {
    let id = conn
        .path
        .as_mut()
        .and_then(|p| {
            p.index = index;
            p.current().map(|s| s.id.clone())
        })
        .ok_or_else(|| {
            NsmError::internal(
                ELEMENT,
                format!("the returned connection has no path segment {index}"),
            )
        })?;
    conn.id = id;
    Ok(conn)
}

async fn request(
    name: &str,
    ctx: &mut Ctx,
    mut request: NetworkServiceRequest,
    next: Next,
) -> Result<Connection> {
    let conn = request.connection.get_or_insert_with(Connection::default);
    let index = update_path(conn, name)?;
    let returned = next.request(ctx, request).await?;
    restore(returned, index)
}

async fn close(name: &str, ctx: &mut Ctx, mut conn: Connection, next: Next) -> Result<()> {
    update_path(&mut conn, name)?;
    next.close(ctx, conn).await
}

#[async_trait]
impl NetworkServiceServer for UpdatePathServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        req: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        request(&self.name, ctx, req, next).await
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        close(&self.name, ctx, conn, next).await
    }
    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[async_trait]
impl NetworkServiceServer for UpdatePathClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        req: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        request(&self.name, ctx, req, next).await
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        close(&self.name, ctx, conn, next).await
    }
    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nsm_core::{Chain, Clock};
    use parking_lot::Mutex;

    use super::*;

    /// Records the connection it sees and returns it unchanged.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Connection>>);

    #[async_trait]
    impl NetworkServiceServer for Seen {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            self.0
                .lock()
                .push(request.connection.clone().unwrap_or_default());
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            self.0.lock().push(conn.clone());
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "seen"
        }
    }

    fn chain(name: &str) -> (Chain, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let c = Chain::new(
            "test",
            vec![Arc::new(UpdatePathServer::new(name)), seen.clone()],
        );
        (c, seen)
    }

    fn conn(id: &str, index: u32, segs: &[(&str, &str)]) -> Connection {
        Connection {
            id: id.into(),
            path: Some(Path {
                index,
                path_segments: segs.iter().map(|(n, i)| PathSegment::new(*n, *i)).collect(),
            }),
            ..Default::default()
        }
    }

    fn req(c: Connection) -> NetworkServiceRequest {
        NetworkServiceRequest {
            connection: Some(c),
            ..Default::default()
        }
    }

    fn ctx() -> Ctx {
        Ctx::new(Clock::system())
    }

    #[tokio::test]
    async fn empty_path_gets_segment_zero_with_a_fresh_id() {
        let (c, seen) = chain("nsc");
        let out = c
            .run_request(&mut ctx(), NetworkServiceRequest::default())
            .await
            .unwrap();
        let path = out.path.as_ref().unwrap();
        assert_eq!(path.names(), ["nsc"]);
        assert_eq!(path.index, 0);
        assert!(!out.id.is_empty());
        assert_eq!(out.id, path.path_segments[0].id);
        assert_eq!(seen.0.lock()[0].id, out.id);
    }

    #[tokio::test]
    async fn empty_path_keeps_a_given_id() {
        let (c, _) = chain("nsc");
        let out = c
            .run_request(&mut ctx(), req(conn("nsc-0", 0, &[])))
            .await
            .unwrap();
        assert_eq!(out.id, "nsc-0");
        assert_eq!(out.current_segment().unwrap().id, "nsc-0");
    }

    #[tokio::test]
    async fn next_hop_appends_its_segment_and_caller_view_is_restored() {
        let (c, seen) = chain("nsmgr");
        let out = c
            .run_request(&mut ctx(), req(conn("a", 0, &[("nsc", "a")])))
            .await
            .unwrap();
        let inside = seen.0.lock()[0].clone();
        let inside_path = inside.path.unwrap();
        assert_eq!(inside_path.index, 1, "downstream sees this hop as current");
        assert_eq!(inside_path.names(), ["nsc", "nsmgr"]);
        assert_eq!(inside.id, inside_path.path_segments[1].id);
        assert_ne!(inside.id, "a");
        // The caller gets its own index and id back, and the new segment stays in the path.
        assert_eq!(out.id, "a");
        assert_eq!(out.path.as_ref().unwrap().index, 0);
        assert_eq!(out.path.as_ref().unwrap().names(), ["nsc", "nsmgr"]);
    }

    #[tokio::test]
    async fn refresh_reuses_the_existing_next_segment() {
        let (c, seen) = chain("nsmgr");
        let path = [("nsc", "a"), ("nsmgr", "b"), ("fwd", "c")];
        c.run_request(&mut ctx(), req(conn("a", 0, &path)))
            .await
            .unwrap();
        let inside = seen.0.lock()[0].clone();
        assert_eq!(inside.id, "b");
        assert_eq!(inside.path.unwrap().names(), ["nsc", "nsmgr", "fwd"]);
    }

    #[tokio::test]
    async fn a_different_next_hop_is_renamed_with_a_new_id() {
        let (c, seen) = chain("nsmgr-2");
        c.run_request(
            &mut ctx(),
            req(conn("a", 0, &[("nsc", "a"), ("nsmgr-1", "b")])),
        )
        .await
        .unwrap();
        let inside = seen.0.lock()[0].clone();
        assert_ne!(inside.id, "b");
        let p = inside.path.unwrap();
        assert_eq!(p.names(), ["nsc", "nsmgr-2"]);
        assert_eq!(p.path_segments[1].id, inside.id);
    }

    #[tokio::test]
    async fn own_current_segment_is_reused_without_advancing() {
        let (c, seen) = chain("nsc");
        let out = c
            .run_request(
                &mut ctx(),
                req(conn("stale", 0, &[("nsc", "a"), ("nsmgr", "b")])),
            )
            .await
            .unwrap();
        assert_eq!(seen.0.lock()[0].id, "a");
        assert_eq!(seen.0.lock()[0].path.as_ref().unwrap().index, 0);
        assert_eq!(out.id, "a");
    }

    #[tokio::test]
    async fn index_out_of_range_is_refused_before_downstream_runs() {
        let (c, seen) = chain("nsmgr");
        let err = c
            .run_request(&mut ctx(), req(conn("a", 3, &[("nsc", "a")])))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NsmError::InvalidArgument {
                    element: "updatepath",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(seen.0.lock().is_empty());
    }

    #[tokio::test]
    async fn id_mismatch_is_refused_on_request_and_close() {
        let (c, seen) = chain("nsmgr");
        let bad = conn("someone-else", 0, &[("nsc", "a")]);
        let err = c
            .run_request(&mut ctx(), req(bad.clone()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("updatepath"), "{err}");
        assert!(
            err.to_string().contains("path segment id mismatch"),
            "{err}"
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = c.run_close(&mut ctx(), bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(seen.0.lock().is_empty());
    }

    #[tokio::test]
    async fn close_sees_this_hops_id() {
        let (c, seen) = chain("nsmgr");
        c.run_close(&mut ctx(), conn("a", 0, &[("nsc", "a"), ("nsmgr", "b")]))
            .await
            .unwrap();
        assert_eq!(seen.0.lock()[0].id, "b");
    }

    #[tokio::test]
    async fn a_path_truncated_downstream_is_an_internal_error_not_a_panic() {
        struct Truncate;
        #[async_trait]
        impl NetworkServiceServer for Truncate {
            async fn request(
                &self,
                _: &mut Ctx,
                _: NetworkServiceRequest,
                _: Next,
            ) -> Result<Connection> {
                Ok(Connection::default())
            }
            async fn close(&self, _: &mut Ctx, _: Connection, _: Next) -> Result<()> {
                Ok(())
            }
            fn name(&self) -> &'static str {
                "truncate"
            }
        }
        let c = Chain::new(
            "t",
            vec![Arc::new(UpdatePathClient::new("nsc")), Arc::new(Truncate)],
        );
        let err = c
            .run_request(&mut ctx(), NetworkServiceRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }
}
