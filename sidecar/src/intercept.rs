//! One captured connection, from its first byte to the HTTP it carries.
//!
//! The first bytes decide: a TLS ClientHello is intercepted with a leaf from the session CA
//! (after the upstream has been reached and verified, so the agent is offered exactly the
//! protocol the upstream chose), or tunnelled untouched for passthrough hosts; plain HTTP is
//! served as is; anything else is refused and recorded, since it could not be recorded.

use crate::conn::{ConnCtx, refuse_connection};
use crate::http::{H2, HTTP11};
use crate::proxy::{Proxy, Route};
use crate::refusal::{Cause, Refusal};
use crate::rewind::{Rewind, read_arrived};
use crate::serve;
use crate::upstream::{Upstream, tunnel};
use bytes::{Bytes, BytesMut};
use cassette_recording::record::{ConnClose, Event, Flow, Tls};
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
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
    // Each stage boxed: a connection waiting for its first bytes holds only what that wait
    // needs, not room for the largest stage after it.
    if first.first() == Some(&0x16) {
        Box::pin(tls(io, first, peer, conn, route, proxy)).await;
    } else if looks_like_http(&first) {
        let ctx = Arc::new(ConnCtx::new(proxy.clone(), conn, peer, route, "http", None));
        Box::pin(serve::plain(io, first, ctx, Upstream::lazy())).await;
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
/// `timeout`, holding only what arrived (a client that sends half a ClientHello and waits
/// costs that half).
async fn read_first<IO: AsyncRead + Unpin>(
    io: &mut IO,
    timeout: Duration,
) -> Result<Bytes, Unreadable> {
    let mut buf = BytesMut::new();
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
        // Never past the first record: what follows it is the handshake's to read.
        let max = if buf.len() >= 5 {
            want - buf.len()
        } else {
            MAX_HELLO
        };
        match tokio::time::timeout(remaining, read_arrived(io, &mut buf, max)).await {
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
    // CONNECT named the host already (and the sidecar resolved it); a redirected connection
    // only has the SNI, and goes where the agent chose.
    let named_by_agent = route.host.is_none();
    if named_by_agent {
        route.host = hello.sni.clone();
    }
    if route.endpoint.is_none()
        && let Some(host) = &route.host
    {
        route.endpoint = proxy.overrides.get(host).cloned();
    }
    let host = route.display_host();

    if proxy.is_passthrough(&host) {
        passthrough(io, first, conn, route, named_by_agent, hello, proxy).await;
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

/// Tunnel a passthrough host without interception: only to one of the host's own addresses,
/// only if the policy lets the host through, and with its bytes recorded both ways (TLS
/// records: the recorder cannot read them, an auditor can still see what passed and when).
async fn passthrough<IO>(
    io: IO,
    first: Bytes,
    conn: u64,
    route: Route,
    named_by_agent: bool,
    hello: Hello,
    proxy: Arc<Proxy>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = route.display_host();
    if let Err(refusal) = passthrough_allowed(&proxy, &host) {
        refusal.record(&proxy.recording, None);
        proxy.metrics().connections_refused.inc();
        return;
    }
    let target = match &route.endpoint {
        Some(e) => format!("{}:{}", e.host, e.port),
        None => {
            if named_by_agent && let Err(why) = own_address(&host, route.dst).await {
                refuse_connection(&proxy, conn, &route.dst.to_string(), &why.to_string());
                return;
            }
            route.dst.to_string()
        }
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
    let mut up = proxy.recording.stream(conn, None, Flow::Up, None);
    let mut down = proxy.recording.stream(conn, None, Flow::Down, None);
    up.push(&first);
    if let Err(e) = upstream.write_all(&first).await {
        refuse_connection(
            &proxy,
            conn,
            &target,
            &format!("writing to the upstream: {e}"),
        );
        return;
    }
    // A tunnel lasts while the session in force would still open it: it ends at expiry, and
    // when a change to the policy refuses its host.
    let until = proxy.session.until(|session| {
        tunnel_refused(session, &host).map(|why| format!("the tunnel was ended: {why}"))
    });
    let carried = tunnel(io, upstream, &mut up, &mut down, until).await;
    let (sent, received) = (carried.up + first.len() as u64, carried.down);
    debug!(conn, sent, received, "passthrough closed");
    proxy.recording.emit(Event::ConnClose(ConnClose {
        conn,
        bytes_up: sent,
        bytes_down: received,
        error: carried.ended,
    }));
}

/// Why `session` would no longer open a tunnel to `host`, if it would not.
fn tunnel_refused(session: &crate::session::Session, host: &str) -> Option<String> {
    use cassette_rules::policy::{self, Outcome};
    let request = policy::Request::new(host, "CONNECT", "/");
    let decision = session.evaluator.evaluate(&request, jiff::Timestamp::now());
    (decision.outcome() != Outcome::Forward)
        .then(|| format!("passthrough to {host} is refused now: {}", decision.reason))
}

/// Whether the session's policy lets `host` through as a tunnel: a rule (or the default) that
/// would refuse a request to it refuses the tunnel, and so does expiry. A tunnel cannot wait
/// for a review: a rule that asks for one refuses it.
fn passthrough_allowed(proxy: &Proxy, host: &str) -> Result<(), Refusal> {
    use cassette_rules::policy::{self, Outcome};
    let request = policy::Request::new(host, "CONNECT", "/");
    let decision = proxy
        .session
        .current()
        .evaluator
        .evaluate(&request, jiff::Timestamp::now());
    let rule = decision.would_block().then(|| decision.cause.label());
    let cause = match decision.cause {
        policy::Cause::Expired { .. } => Cause::Expiry,
        _ => Cause::Policy,
    };
    match decision.outcome() {
        Outcome::Forward => {
            if decision.would_block() {
                Refusal::new(
                    Cause::Audit,
                    StatusCode::OK,
                    format!(
                        "audit mode, not enforced: passthrough to {host}: {}",
                        decision.reason
                    ),
                )
                .by_rule(rule)
                .record(&proxy.recording, None);
            }
            Ok(())
        }
        Outcome::Refuse => Err(Refusal::new(
            cause,
            StatusCode::FORBIDDEN,
            format!("passthrough to {host} refused: {}", decision.reason),
        )
        .by_rule(rule)),
        Outcome::Hold => Err(Refusal::new(
            Cause::Policy,
            StatusCode::FORBIDDEN,
            format!(
                "passthrough to {host} refused: {} (a tunnel cannot be held for review)",
                decision.reason
            ),
        )
        .by_rule(rule)),
    }
}

/// Whether `dst`, where the agent's connection was headed, is one of `host`'s own addresses as
/// the sidecar resolves them. Without this, the agent could name a passthrough host in its
/// ClientHello and open an uninspected tunnel to any address.
async fn own_address(host: &str, dst: SocketAddr) -> Result<(), NotItsAddress> {
    let resolved: Vec<std::net::IpAddr> = match tokio::net::lookup_host((host, dst.port())).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(error) => {
            return Err(NotItsAddress::Unresolved {
                host: host.to_string(),
                error,
            });
        }
    };
    let canonical = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    };
    if resolved
        .iter()
        .any(|ip| canonical(*ip) == canonical(dst.ip()))
    {
        return Ok(());
    }
    let listed: Vec<String> = resolved.iter().map(|ip| ip.to_string()).collect();
    Err(NotItsAddress::Elsewhere {
        dst: dst.ip(),
        host: host.to_string(),
        resolved: if listed.is_empty() {
            "nothing".to_string()
        } else {
            listed.join(", ")
        },
    })
}

/// Why a passthrough connection's destination is not its host's.
#[derive(Debug, thiserror::Error)]
enum NotItsAddress {
    #[error("{host} cannot be resolved to check the destination: {error}")]
    Unresolved { host: String, error: std::io::Error },
    #[error(
        "{dst} is not an address of {host} (which resolves to {resolved}): a passthrough host is tunnelled only to its own addresses"
    )]
    Elsewhere {
        dst: std::net::IpAddr,
        host: String,
        resolved: String,
    },
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
