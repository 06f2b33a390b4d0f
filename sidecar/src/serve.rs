//! The agent's side of an intercepted connection as an HTTP server (HTTP/1.1, or HTTP/2 by
//! ALPN or prior knowledge): each request it carries is one [`exchange`], and the
//! connection's end is recorded with the bytes it carried.

use crate::conn::ConnCtx;
use crate::exchange::exchange;
use crate::http::{Body, Io, boxed};
use crate::rewind::{Rewind, request_head};
use crate::upstream::Upstream;
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Serve the agent's side of an intercepted TLS connection.
pub async fn tls<IO: Io>(io: IO, is_h2: bool, ctx: Arc<ConnCtx>, upstream: Upstream) {
    serve(io, is_h2, ctx, upstream).await
}

/// The most of a first request head read ahead of hyper; hyper reads any more itself.
pub const HEAD_AHEAD: usize = 64 * 1024;

/// Serve a plain-HTTP connection (HTTP/1.1, or HTTP/2 with prior knowledge) whose first
/// bytes, `first`, were read already.
pub async fn plain<IO: Io>(mut io: IO, first: Bytes, ctx: Arc<ConnCtx>, upstream: Upstream) {
    // The first head is read here, holding only what arrives: hyper's buffers are allocated
    // once there is a request to serve, not for every client that connects and dawdles.
    let head = tokio::select! {
        head = request_head(&mut io, BytesMut::from(first), HEAD_AHEAD, ctx.proxy.client_timeout) => match head {
            Ok(head) => head,
            Err(e) => {
                ctx.close(Some(e.to_string()));
                return;
            }
        },
        why = ctx.proxy.session.ended() => {
            ctx.close(Some(format!("{why}: the connection was ended")));
            return;
        }
    };
    // The HTTP/2 prior-knowledge preface starts with "PRI".
    let is_h2 = head.starts_with(b"PRI");
    serve(Rewind::new(head, io), is_h2, ctx, upstream).await
}

/// Boxed (with its `Send` bound stated here, where the types are concrete) because the
/// compiler cannot prove `Send` for hyper's connection futures through generic callers.
fn serve<IO: Io>(
    io: IO,
    is_h2: bool,
    ctx: Arc<ConnCtx>,
    upstream: Upstream,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(serve_inner(Box::new(io), is_h2, ctx, upstream))
}

/// The per-request service of one agent connection.
#[derive(Clone)]
struct ExchangeService {
    ctx: Arc<ConnCtx>,
    upstream: Arc<Upstream>,
}

impl hyper::service::Service<Request<Incoming>> for ExchangeService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (ctx, upstream) = (self.ctx.clone(), self.upstream.clone());
        Box::pin(async move { Ok(exchange(ctx, upstream, req.map(boxed)).await) })
    }
}

async fn serve_inner(io: Box<dyn Io>, is_h2: bool, ctx: Arc<ConnCtx>, upstream: Upstream) {
    let service = ExchangeService {
        ctx: ctx.clone(),
        upstream: Arc::new(upstream),
    };
    let io = TokioIo::new(io);
    let served = async {
        if is_h2 {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        } else {
            hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .max_buf_size(1024 * 1024)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ctx.proxy.client_timeout)
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
    };
    // At expiry the connection ends, whatever it is doing (a long download, an idle
    // keep-alive): requests after it would be refused anyway, bytes in flight are not.
    let error = tokio::select! {
        result = served => result.err().map(|e| e.to_string()),
        why = ctx.proxy.session.ended() => Some(format!("{why}: the connection was ended")),
    };
    ctx.close(error);
}
