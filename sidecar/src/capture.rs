//! The captured-outbound listener on 15001.
//!
//! A connection redirected by the capture rules carries its original destination
//! (`SO_ORIGINAL_DST`); one that was not redirected is an explicit proxy client, which must
//! speak HTTP `CONNECT` (or absolute-form plain HTTP). `CONNECT` ends in `intercept`;
//! absolute-form requests are exchanges of their own.

use crate::conn::{ConnCtx, refuse_connection};
use crate::exchange::exchange;
use crate::http::{Body, boxed, full, text_answer};
use crate::intercept;
use crate::original_dst::original_dst;
use crate::proxy::{Proxy, Route, forbidden_destination};
use crate::rewind::{Rewind, request_head};
use crate::serve::HEAD_AHEAD;
use crate::shutdown::Shutdown;
use crate::upstream::Upstream;
use bytes::BytesMut;
use cassette_recording::record::{Capture, ConnOpen, Event};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Accept connections until shutdown; each runs on its own task, tracked by `shutdown`.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.requested() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let guard = shutdown.track();
        let fut: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(handle(stream, peer, proxy));
        tokio::spawn(async move {
            fut.await;
            drop(guard);
        });
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>) {
    proxy.metrics().connections.inc();
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let dst = match original_dst(&stream, local.is_ipv6()) {
        Ok(Some(dst)) if dst != local => Some(dst),
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, %peer, "reading the original destination failed");
            return;
        }
    };
    match dst {
        Some(dst) => {
            let conn = proxy.recording.next_conn_id();
            proxy.recording.emit(Event::ConnOpen(ConnOpen {
                conn,
                client: peer.to_string(),
                dst: dst.to_string(),
                capture: Capture::Redirect,
            }));
            if let Some(why) = forbidden_destination(dst.ip()) {
                refuse_connection(&proxy, conn, &dst.to_string(), why);
                return;
            }
            let route = Route {
                host: None,
                dst,
                endpoint: None,
            };
            // Boxed here, as `explicit` is: the task waiting on a slow client is only as
            // large as the stage it waits in, not the largest stage there is.
            Box::pin(intercept::connection(stream, peer, conn, route, proxy)).await;
        }
        None => Box::pin(explicit(stream, peer, proxy)).await,
    }
}

/// An explicit proxy client (`HTTPS_PROXY=http://127.0.0.1:15001`): serve HTTP/1.1 and turn
/// each `CONNECT` into an intercepted connection.
async fn explicit(mut stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>) {
    let timeout = proxy.client_timeout;
    // The first request head is read here, holding only what arrives (a slow client costs
    // the bytes it sent, not hyper's buffers); hyper serves the connection from it.
    let head = tokio::select! {
        head = request_head(&mut stream, BytesMut::new(), HEAD_AHEAD, timeout) => match head {
            Ok(head) => head,
            Err(e) => {
                debug!(error = %e, %peer, "explicit proxy client ended before its first request");
                return;
            }
        },
        why = proxy.session.ended() => {
            debug!(%peer, why, "explicit proxy connection ended");
            return;
        }
    };
    let service = ProxyService {
        peer,
        proxy: proxy.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(Rewind::new(head, stream)), service)
        .with_upgrades();
    // At expiry the proxy connection ends; its CONNECT tunnels end on their own.
    tokio::select! {
        served = conn => if let Err(e) = served {
            debug!(error = %e, %peer, "explicit proxy connection ended with an error");
        },
        why = proxy.session.ended() => debug!(%peer, why, "explicit proxy connection ended"),
    }
}

/// Requests of an explicit proxy client.
#[derive(Clone)]
struct ProxyService {
    peer: SocketAddr,
    proxy: Arc<Proxy>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (peer, proxy) = (self.peer, self.proxy.clone());
        Box::pin(async move { Ok(proxy_request(req, peer, proxy).await) })
    }
}

async fn proxy_request(
    req: Request<Incoming>,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
) -> Response<Body> {
    if req.method() != Method::CONNECT {
        // Absolute-form plain HTTP through the proxy: forwarded like a redirected request.
        return absolute_form(req, peer, proxy).await;
    }
    let Some(authority) = req.uri().authority().cloned() else {
        return text_answer(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let host = authority.host().trim_matches(['[', ']']).to_string();
    let port = authority.port_u16().unwrap_or(443);
    let conn = proxy.recording.next_conn_id();
    proxy.recording.emit(Event::ConnOpen(ConnOpen {
        conn,
        client: peer.to_string(),
        dst: format!("{host}:{port}"),
        capture: Capture::Connect,
    }));
    let endpoint = proxy.overrides.get(&host).cloned();
    let dst = match destination(&host, port, endpoint.is_some()).await {
        Ok(dst) => dst,
        Err(e) => {
            let why = format!("cannot resolve {host}: {e}");
            refuse_connection(&proxy, conn, &format!("{host}:{port}"), &why);
            return text_answer(StatusCode::BAD_GATEWAY, &why);
        }
    };
    if endpoint.is_none()
        && let Some(why) = forbidden_destination(dst.ip())
    {
        refuse_connection(&proxy, conn, &format!("{host}:{port}"), why);
        return text_answer(StatusCode::FORBIDDEN, why);
    }
    let route = Route {
        host: Some(host),
        dst,
        endpoint,
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => return debug!(error = %e, "CONNECT upgrade failed"),
        };
        // The tunnel takes the socket back from hyper, and a copy of what the client sent
        // after its CONNECT: hyper's buffers for the CONNECT request are freed with it.
        let io = match upgraded.downcast::<TokioIo<Rewind<TcpStream>>>() {
            Ok(parts) => parts.io.into_inner().unread(&parts.read_buf),
            Err(_) => return warn!("a CONNECT upgrade carried an unexpected transport"),
        };
        let fut: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(intercept::connection(io, peer, conn, route, proxy));
        fut.await
    });
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::OK;
    response
}

/// Plain HTTP sent to the explicit proxy in absolute form (`GET http://host/path`): one
/// exchange on a connection of its own.
async fn absolute_form(
    req: Request<Incoming>,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return text_answer(
            StatusCode::BAD_REQUEST,
            "this is a proxy: send CONNECT host:port or an absolute http:// URL",
        );
    };
    if req.uri().scheme_str() != Some("http") {
        return text_answer(
            StatusCode::BAD_REQUEST,
            "only http:// URLs are proxied without CONNECT",
        );
    }
    let host = authority.host().trim_matches(['[', ']']).to_string();
    let port = authority.port_u16().unwrap_or(80);
    let endpoint = proxy.overrides.get(&host).cloned();
    let dst = match destination(&host, port, endpoint.is_some()).await {
        Ok(dst) => dst,
        Err(e) => {
            return text_answer(
                StatusCode::BAD_GATEWAY,
                &format!("cannot resolve {host}: {e}"),
            );
        }
    };
    let conn = proxy.recording.next_conn_id();
    if endpoint.is_none()
        && let Some(why) = forbidden_destination(dst.ip())
    {
        refuse_connection(&proxy, conn, &format!("{host}:{port}"), why);
        return text_answer(StatusCode::FORBIDDEN, why);
    }
    proxy.recording.emit(Event::ConnOpen(ConnOpen {
        conn,
        client: peer.to_string(),
        dst: format!("{host}:{port}"),
        capture: Capture::Connect,
    }));
    let route = Route {
        host: Some(host),
        dst,
        endpoint,
    };
    let ctx = Arc::new(ConnCtx::new(proxy, conn, peer, route, "http", None));
    exchange(ctx, Arc::new(Upstream::lazy()), req.map(boxed)).await
}

/// Where a proxied request for `host:port` goes, as an address: resolved once here, and that
/// address (not the name again) is what is checked and dialled. A host with an upstream
/// override is not looked up at all: the override says where to go.
pub async fn destination(host: &str, port: u16, overridden: bool) -> std::io::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if overridden {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An explicit proxy client asks for what the sidecar never forwards: refused with the
    /// reason, and recorded as a refused destination before any request is read.
    #[tokio::test]
    async fn a_connect_to_the_metadata_server_is_refused_and_recorded() {
        let (sink, proxy, _) = Proxy::for_test(
            &serde_json::json!({"recording": {"sink": "file:///tmp/unused"}}),
            &[],
            None,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        tokio::spawn(serve(listener, proxy.clone(), shutdown.clone()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 1024];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(
            answer.contains("only reachable through the metadata shim"),
            "{answer}"
        );
        let opened = &sink.kind("conn_open")[0];
        assert_eq!(opened["dst"], "169.254.169.254:80");
        let blocked = &sink.kind("blocked")[0];
        assert_eq!(blocked["reason"], "destination");
        assert!(blocked.get("exchange").is_none(), "{blocked}");
        assert_eq!(
            blocked["message"],
            "connection 1 to 169.254.169.254:80 refused: the metadata server is only reachable through the metadata shim"
        );
        assert_eq!(proxy.metrics().connections_refused.get(), 1);
        shutdown.trigger();
    }
}
