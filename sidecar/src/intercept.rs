//! One captured connection, from its first byte to the HTTP it carries.
//!
//! The first bytes decide: a TLS ClientHello is intercepted with a leaf from the session CA
//! (after the upstream has been reached and verified, so the agent is offered exactly the
//! protocol the upstream chose), or tunnelled untouched for passthrough hosts; plain HTTP is
//! served as is; anything else is refused and recorded, since it could not be recorded.

use crate::conn::{ConnCtx, refuse_connection};
use crate::http::{H2, HTTP11};
use crate::proxy::{Proxy, Route};
use crate::rewind::Rewind;
use crate::serve;
use crate::upstream::{Upstream, tunnel};
use bytes::{Bytes, BytesMut};
use cassette_recording::record::{ConnClose, Event, Tls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::LazyConfigAcceptor;
use tracing::debug;

/// The largest TLS record that may carry a ClientHello.
const MAX_HELLO: usize = 16 * 1024 + 5;

/// Why a connection's first bytes could not be read as anything the recorder carries.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("TLS record too large for a ClientHello")]
    HelloTooLarge,
    #[error("the client sent nothing it could be understood by in {0}s")]
    Silent(u64),
    #[error("reading the client: {0}")]
    Read(std::io::Error),
    #[error("the client closed the connection before sending a request")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Hello(std::io::Error),
    #[error("the ClientHello spans more than one record")]
    HelloSpansRecords,
    #[error("not a valid ClientHello: {0}")]
    InvalidHello(rustls::Error),
}

/// Handle one connection to its end.
pub async fn connection<IO>(
    mut io: IO,
    peer: SocketAddr,
    conn: u64,
    route: Route,
    proxy: Arc<Proxy>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = match read_first(&mut io, proxy.client_timeout).await {
        Ok(first) => first,
        Err(why) => {
            refuse_connection(&proxy, conn, &route.dst.to_string(), &why.to_string());
            return;
        }
    };
    if first.first() == Some(&0x16) {
        tls(io, first, peer, conn, route, proxy).await;
    } else if looks_like_http(&first) {
        let ctx = Arc::new(ConnCtx::new(proxy.clone(), conn, peer, route, "http", None));
        serve::plain(Rewind::new(first, io), ctx, Upstream::lazy()).await;
    } else {
        refuse_connection(
            &proxy,
            conn,
            &route.display_host(),
            "not TLS and not HTTP: the recorder only carries traffic it can record",
        );
    }
}

/// Read until we have the first TLS record (for TLS) or at least one byte (otherwise), within
/// `timeout`.
async fn read_first<IO: AsyncRead + Unpin>(
    io: &mut IO,
    timeout: Duration,
) -> Result<Bytes, Unreadable> {
    let mut buf = BytesMut::with_capacity(2048);
    let deadline = Instant::now() + timeout;
    loop {
        let want = if buf.first() == Some(&0x16) && buf.len() >= 5 {
            5 + u16::from_be_bytes([buf[3], buf[4]]) as usize
        } else if buf.first() == Some(&0x16) {
            5
        } else {
            1
        };
        if buf.len() >= want {
            return Ok(buf.freeze());
        }
        if want > MAX_HELLO {
            return Err(Unreadable::HelloTooLarge);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, io.read_buf(&mut buf)).await {
            Err(_) => return Err(Unreadable::Silent(timeout.as_secs())),
            Ok(Err(e)) => return Err(Unreadable::Read(e)),
            Ok(Ok(0)) => return Err(Unreadable::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

fn looks_like_http(first: &[u8]) -> bool {
    let token: Vec<u8> = first
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .copied()
        .collect();
    !token.is_empty() && (first.len() == token.len() || first.get(token.len()) == Some(&b' '))
}

/// What a ClientHello asked for.
struct Hello {
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
}

fn parse_hello(record: &[u8]) -> Result<Hello, Unreadable> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = record;
    acceptor.read_tls(&mut reader).map_err(Unreadable::Hello)?;
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Ok(Hello {
                sni: hello.server_name().map(str::to_string),
                alpn: hello
                    .alpn()
                    .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            })
        }
        Ok(None) => Err(Unreadable::HelloSpansRecords),
        Err((e, _)) => Err(Unreadable::InvalidHello(e)),
    }
}

async fn tls<IO>(
    io: IO,
    first: Bytes,
    peer: SocketAddr,
    conn: u64,
    mut route: Route,
    proxy: Arc<Proxy>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hello = match parse_hello(&first) {
        Ok(h) => h,
        Err(why) => {
            refuse_connection(&proxy, conn, &route.display_host(), &why.to_string());
            return;
        }
    };
    // CONNECT named the host already; a redirected connection only has the SNI.
    if route.host.is_none() {
        route.host = hello.sni.clone();
    }
    if route.endpoint.is_none()
        && let Some(host) = &route.host
    {
        route.endpoint = proxy.overrides.get(host).cloned();
    }
    let host = route.display_host();

    if proxy.is_passthrough(&host) {
        passthrough(io, first, conn, route, hello, proxy).await;
        return;
    }

    // Reach and verify the upstream first: the agent is then offered what it chose.
    let offer: Vec<Vec<u8>> = hello
        .alpn
        .iter()
        .filter(|p| p.as_slice() == H2 || p.as_slice() == HTTP11)
        .cloned()
        .collect();
    let upstream = Upstream::connect(proxy.clone(), route.clone(), offer.clone()).await;
    let chosen: Option<Vec<u8>> = match &upstream {
        Ok(up) => up.alpn.clone(),
        // The upstream failed: still finish the handshake so the agent reads why.
        Err(_) => offer
            .iter()
            .find(|p| p.as_slice() == HTTP11)
            .or_else(|| offer.first())
            .cloned(),
    };

    let leaf = match proxy.ca.leaf(&host) {
        Ok(leaf) => leaf,
        Err(e) => {
            refuse_connection(&proxy, conn, &host, &format!("{e:#}"));
            return;
        }
    };
    if leaf.cached {
        proxy.metrics().cert_cache_hits.inc();
    } else {
        proxy.metrics().cert_cache_misses.inc();
    }
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Rewind::new(first, io));
    let client = match acceptor.await {
        Ok(start) => {
            let config = crate::tls::server_config(leaf.key, chosen.as_deref());
            let handshake = tokio::time::timeout(proxy.client_timeout, start.into_stream(config));
            match handshake.await.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the client did not finish its TLS handshake in {}s",
                        proxy.client_timeout.as_secs()
                    ),
                ))
            }) {
                Ok(stream) => stream,
                Err(e) => {
                    refuse_connection(
                        &proxy,
                        conn,
                        &host,
                        &format!("TLS handshake with the agent failed: {e}"),
                    );
                    return;
                }
            }
        }
        Err(e) => {
            refuse_connection(
                &proxy,
                conn,
                &host,
                &format!("TLS handshake with the agent failed: {e}"),
            );
            return;
        }
    };
    let (_, session) = client.get_ref();
    let version = session.protocol_version().map(|v| format!("{v:?}"));
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let is_h2 = session.alpn_protocol() == Some(H2);

    let (verified, subject) = match &upstream {
        Ok(up) => (up.verified, up.subject.clone()),
        Err(_) => (false, None),
    };
    proxy.recording.emit(Event::Tls(Tls {
        conn,
        sni: hello.sni.clone(),
        alpn,
        version,
        upstream_subject: subject,
        verified,
        passthrough: false,
    }));

    let (upstream, upstream_error) = match upstream {
        Ok(up) => (up, None),
        Err(e) => (Upstream::failed(), Some(Arc::new(e))),
    };
    let ctx = Arc::new(ConnCtx::new(
        proxy.clone(),
        conn,
        peer,
        route,
        "https",
        upstream_error,
    ));
    serve::tls(client, is_h2, ctx, upstream).await;
}

/// Tunnel a passthrough host untouched; only connection metadata is recorded.
async fn passthrough<IO>(
    io: IO,
    first: Bytes,
    conn: u64,
    route: Route,
    hello: Hello,
    proxy: Arc<Proxy>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = match &route.endpoint {
        Some(e) => format!("{}:{}", e.host, e.port),
        None => route.dst.to_string(),
    };
    proxy.recording.emit(Event::Tls(Tls {
        conn,
        sni: hello.sni,
        alpn: None,
        version: None,
        upstream_subject: None,
        verified: false,
        passthrough: true,
    }));
    let mut upstream = match tokio::net::TcpStream::connect(&target).await {
        Ok(s) => s,
        Err(e) => {
            refuse_connection(&proxy, conn, &target, &format!("cannot connect: {e}"));
            return;
        }
    };
    if let Err(e) = upstream.write_all(&first).await {
        refuse_connection(
            &proxy,
            conn,
            &target,
            &format!("writing to the upstream: {e}"),
        );
        return;
    }
    let (up, down) = tunnel(io, upstream).await;
    let up = up + first.len() as u64;
    debug!(conn, up, down, "passthrough closed");
    proxy.recording.emit(Event::ConnClose(ConnClose {
        conn,
        bytes_up: up,
        bytes_down: down,
        error: None,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_protocols() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        assert!(looks_like_http(b"G"));
        assert!(!looks_like_http(b"SSH-2.0-OpenSSH_9.2\r\n"));
        assert!(!looks_like_http(b"\x00\x01"));
        assert!(!looks_like_http(b"get / HTTP/1.1"));
    }
}
