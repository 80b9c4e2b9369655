//! NetworkService chains: the element trait, the [`Next`] cursor and [`Chain`].
//!
//! An element does its work on Request, calls `next.request(..)` to run the rest of the chain, then
//! post-processes the answer or undoes its work on error; Close mirrors it. Server and client elements
//! share one trait: where Go needs server/client adapters, a client chain here is simply a [`Chain`]
//! that a server element (`connect`) calls, and vice versa.
//!
//! [`Next`] is owned (`'static`, cheap to clone), so `begin` can keep "the rest of the chain after me"
//! and re-run it from a background task for refresh, timeout and heal. When a chain's own elements run
//! out, it continues with the chain it is nested in, so chains nest transparently as in Go.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use nsm_api::{Connection, NetworkServiceRequest};

use crate::ctx::Ctx;
use crate::error::Result;

/// One element of a NetworkService chain (server or client side).
#[async_trait]
pub trait NetworkServiceServer: Send + Sync + 'static {
    /// Handles a Request; call `next.request` to continue down the chain.
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection>;

    /// Handles a Close; call `next.close` to continue down the chain.
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()>;

    /// The element's name (Go package name), used in logs and `--print-chain`.
    fn name(&self) -> &'static str;
}

/// A shared, dynamically typed element.
pub type Element = Arc<dyn NetworkServiceServer>;

/// The rest of a chain after the current element.
#[derive(Clone)]
pub struct Next {
    elements: Arc<[Element]>,
    pos: usize,
    parent: Option<Arc<Next>>,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &self.remaining_names())
            .finish()
    }
}

impl Next {
    /// The end of every chain: Request returns the request's connection, Close succeeds.
    pub fn tail() -> Self {
        Self {
            elements: Arc::from(Vec::new()),
            pos: 0,
            parent: None,
        }
    }

    /// Names of the elements still to run (this chain, then the chains it is nested in).
    pub fn remaining_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.elements[self.pos.min(self.elements.len())..]
            .iter()
            .map(|e| e.name())
            .collect();
        if let Some(p) = &self.parent {
            names.extend(p.remaining_names());
        }
        names
    }

    /// The element at the cursor and the cursor after it.
    fn step(&self) -> Option<(&Element, Next)> {
        let e = self.elements.get(self.pos)?;
        Some((
            e,
            Next {
                elements: self.elements.clone(),
                pos: self.pos + 1,
                parent: self.parent.clone(),
            },
        ))
    }

    /// Runs the rest of the chain for a Request.
    ///
    /// Returns the next element's own boxed future instead of wrapping it in another state machine:
    /// every element awaits this, and a wrapper would be inlined into each element's future together
    /// with a second copy of the request (doubling what every element call allocates and copies).
    pub fn request<'a>(
        &'a self,
        ctx: &'a mut Ctx,
        request: NetworkServiceRequest,
    ) -> BoxFuture<'a, Result<Connection>> {
        match self.step() {
            Some((e, rest)) => e.request(ctx, request, rest),
            None => match &self.parent {
                Some(p) => p.request(ctx, request),
                None => Box::pin(std::future::ready(Ok(request
                    .connection
                    .unwrap_or_default()))),
            },
        }
    }

    /// Runs the rest of the chain for a Close (see [`Next::request`] for why it is not `async`).
    pub fn close<'a>(&'a self, ctx: &'a mut Ctx, conn: Connection) -> BoxFuture<'a, Result<()>> {
        match self.step() {
            Some((e, rest)) => e.close(ctx, conn, rest),
            None => match &self.parent {
                Some(p) => p.close(ctx, conn),
                None => Box::pin(std::future::ready(Ok(()))),
            },
        }
    }
}

/// A list of elements that runs in order; itself an element, so chains nest.
#[derive(Clone)]
pub struct Chain {
    name: &'static str,
    elements: Arc<[Element]>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{:?}", self.name, self.element_names())
    }
}

impl Chain {
    /// A chain named `name` (for `--print-chain` and logs) of `elements` in call order.
    pub fn new(name: &'static str, elements: Vec<Element>) -> Self {
        Self {
            name,
            elements: Arc::from(elements),
        }
    }

    /// Names of the elements in call order.
    pub fn element_names(&self) -> Vec<&'static str> {
        self.elements.iter().map(|e| e.name()).collect()
    }

    /// Runs the chain as the whole call (nothing after it).
    pub async fn run_request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
    ) -> Result<Connection> {
        self.request(ctx, request, Next::tail()).await
    }

    /// Runs Close through the chain as the whole call.
    pub async fn run_close(&self, ctx: &mut Ctx, conn: Connection) -> Result<()> {
        self.close(ctx, conn, Next::tail()).await
    }

    fn start(&self, next: Next) -> Next {
        Next {
            elements: self.elements.clone(),
            pos: 0,
            parent: Some(Arc::new(next)),
        }
    }
}

#[async_trait]
impl NetworkServiceServer for Chain {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let start = self.start(next);
        start.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let start = self.start(next);
        start.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use parking_lot::Mutex;

    struct Record(&'static str, Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl NetworkServiceServer for Record {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            self.1.lock().push(format!("req>{}", self.0));
            let c = next.request(ctx, request).await;
            self.1.lock().push(format!("req<{}", self.0));
            c
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            self.1.lock().push(format!("close>{}", self.0));
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            self.0
        }
    }

    #[tokio::test]
    async fn nested_chains_run_in_order_and_continue_with_the_parent() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let inner = Chain::new(
            "inner",
            vec![
                Arc::new(Record("b", log.clone())),
                Arc::new(Record("c", log.clone())),
            ],
        );
        let outer = Chain::new(
            "outer",
            vec![
                Arc::new(Record("a", log.clone())),
                Arc::new(inner),
                Arc::new(Record("d", log.clone())),
            ],
        );
        let mut ctx = Ctx::new(Clock::system());
        let req = NetworkServiceRequest {
            connection: Some(Connection {
                id: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let conn = outer.run_request(&mut ctx, req).await.unwrap();
        assert_eq!(conn.id, "x", "the tail returns the request's connection");
        assert_eq!(
            *log.lock(),
            [
                "req>a", "req>b", "req>c", "req>d", "req<d", "req<c", "req<b", "req<a"
            ]
        );
        log.lock().clear();
        outer.run_close(&mut ctx, conn).await.unwrap();
        assert_eq!(*log.lock(), ["close>a", "close>b", "close>c", "close>d"]);
        assert_eq!(outer.element_names(), ["a", "inner", "d"]);
    }
}
