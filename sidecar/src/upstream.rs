//! The upstream side of one agent connection: dialled at the original destination (or an
//! override), TLS verified against the name the agent asked for, HTTP/1.1 or HTTP/2 as the
//! upstream chose; plain byte tunnels for what is not HTTP.

use crate::http::{Body, BoxError, H2, HTTP11, Io};
use crate::proxy::{Proxy, Route, forbidden_destination};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

/// How long connecting upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("connecting to {host}:{port} timed out")]
    ConnectTimeout { host: String, port: u16 },
    #[error("connecting to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("{0:#}")]
    Name(anyhow::Error),
    #[error("TLS with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("{protocol} handshake with the upstream failed: {source}")]
    Handshake {
        protocol: &'static str,
        source: hyper::Error,
    },
    #[error("the upstream could not be reached")]
    Unreachable,
    #[error("the upstream failed: {0}")]
    Failed(hyper::Error),
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

enum State {
    /// Not connected yet (plain HTTP connects on the first request), or closed (HTTP/1.1
    /// keep-alive ended): connect on demand.
    Idle,
    Ready(Sender),
    /// Connecting failed; every request is refused with the reason in the connection.
    Failed,
}

/// The upstream side of one agent connection.
pub struct Upstream {
    state: tokio::sync::Mutex<State>,
    /// The ALPN protocol the upstream chose.
    pub alpn: Option<Vec<u8>>,
    /// Whether the upstream certificate verified for the name the agent asked for.
    pub verified: bool,
    /// What the upstream presented, in words.
    pub subject: Option<String>,
    offer: Vec<Vec<u8>>,
    /// Whether the upstream speaks TLS.
    pub tls: bool,
}

impl Upstream {
    /// Connect now (TLS interception needs the upstream's ALPN choice before answering).
    pub async fn connect(
        proxy: Arc<Proxy>,
        route: Route,
        offer: Vec<Vec<u8>>,
    ) -> Result<Self, UpstreamError> {
        let tls = route.endpoint.as_ref().is_none_or(|e| e.tls);
        let (sender, alpn, verified) = dial(proxy, route.clone(), offer.clone(), tls).await?;
        Ok(Self {
            state: tokio::sync::Mutex::new(State::Ready(sender)),
            alpn,
            verified,
            subject: route.host.clone().filter(|_| verified && tls),
            offer,
            tls,
        })
    }

    /// Connect on the first request (plain HTTP).
    pub fn lazy() -> Self {
        Self {
            state: tokio::sync::Mutex::new(State::Idle),
            alpn: None,
            verified: false,
            subject: None,
            offer: vec![HTTP11.to_vec()],
            tls: false,
        }
    }

    /// An upstream that could not be reached.
    pub fn failed() -> Self {
        Self {
            state: tokio::sync::Mutex::new(State::Failed),
            alpn: None,
            verified: false,
            subject: None,
            offer: vec![],
            tls: false,
        }
    }

    /// Send one request, reconnecting an HTTP/1.1 upstream that closed its keep-alive.
    pub async fn send(
        &self,
        proxy: Arc<Proxy>,
        route: Route,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut state = self.state.lock().await;
        let reusable = match &mut *state {
            State::Ready(Sender::H1(s)) => s.ready().await.is_ok(),
            State::Ready(Sender::H2(s)) => s.ready().await.is_ok(),
            State::Idle => false,
            State::Failed => return Err(UpstreamError::Unreachable),
        };
        if !reusable {
            let (sender, _, _) = dial(proxy, route, self.offer.clone(), self.tls).await?;
            *state = State::Ready(sender);
        }
        let future = match &mut *state {
            State::Ready(Sender::H1(s)) => {
                let f = s.send_request(req);
                drop(state);
                return f.await.map_err(UpstreamError::Failed);
            }
            State::Ready(Sender::H2(s)) => s.send_request(req),
            _ => unreachable!("connected above"),
        };
        // HTTP/2 multiplexes: release the lock before waiting for the response.
        drop(state);
        future.await.map_err(UpstreamError::Failed)
    }

    /// Whether requests go upstream as HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some(H2)
    }
}

/// A connected upstream: its client, the ALPN it chose, and whether its certificate verified.
type Dialed = (Sender, Option<Vec<u8>>, bool);

/// Open a connection to the route's upstream and start an HTTP client on it. Boxed: the
/// compiler cannot prove `Send` through the TLS connector for generic callers.
fn dial(
    proxy: Arc<Proxy>,
    route: Route,
    offer: Vec<Vec<u8>>,
    tls: bool,
) -> Pin<Box<dyn Future<Output = Result<Dialed, UpstreamError>> + Send>> {
    Box::pin(dial_inner(proxy, route, offer, tls))
}

async fn dial_inner(
    proxy: Arc<Proxy>,
    route: Route,
    offer: Vec<Vec<u8>>,
    tls: bool,
) -> Result<Dialed, UpstreamError> {
    let (host, port) = match &route.endpoint {
        Some(e) => (e.host.clone(), e.port),
        None => {
            if let Some(why) = forbidden_destination(route.dst.ip()) {
                return Err(UpstreamError::Forbidden(why));
            }
            (route.dst.ip().to_string(), route.dst.port())
        }
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
    {
        Err(_) => return Err(UpstreamError::ConnectTimeout { host, port }),
        Ok(Err(source)) => return Err(UpstreamError::Connect { host, port, source }),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    if !tls {
        // Plain upstream (an emulator override, or plain HTTP): h2c only for clients that
        // offered nothing else (gRPC).
        let h2 = !offer.is_empty() && offer.iter().all(|p| p.as_slice() == H2);
        let sender = handshake(Box::new(tcp), h2).await?;
        return Ok((sender, Some(if h2 { H2 } else { HTTP11 }.to_vec()), false));
    }
    let ip = route.dst.ip();
    let name = crate::tls::upstream_name(route.host.as_deref(), ip).map_err(UpstreamError::Name)?;
    let config = crate::tls::client_config(proxy.upstream_roots.clone(), offer.clone());
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| UpstreamError::Tls {
            host: route.host.clone().unwrap_or(host),
            source,
        })?;
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let h2 = alpn.as_deref() == Some(H2);
    let sender = handshake(Box::new(stream), h2).await?;
    Ok((sender, alpn, true))
}

async fn handshake(io: Box<dyn Io>, h2: bool) -> Result<Sender, UpstreamError> {
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                protocol: "HTTP/2",
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                protocol: "HTTP/1.1",
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// Something that sees the bytes of one direction of a tunnel as they pass (and records
/// them), and hears when that direction ends. An error stops the tunnel before the bytes
/// that caused it are passed on: what cannot be read is not carried.
pub trait Observe: Send {
    fn bytes(&mut self, chunk: &[u8]) -> Result<(), BoxError>;
    fn end(&mut self);
}

/// How a tunnel ended: bytes carried each way, and why it was cut, if it was.
pub struct Tunnelled {
    pub up: u64,
    pub down: u64,
    /// An observer refused a chunk (it could not be recorded, or was not the protocol).
    pub stopped: Option<BoxError>,
    /// The sidecar ended it (the session expired): why, in words.
    pub ended: Option<String>,
}

/// Copy both ways until both sides are done, showing every chunk to its direction's observer
/// before it is written on, and counting what went each way even when a side ends abruptly
/// (a TLS peer that closes without close_notify is the common case). When an observer
/// refuses a chunk, or `until` resolves (with why), both sides are closed at once.
pub async fn tunnel<A: Io, B: Io>(
    client: A,
    server: B,
    up: &mut dyn Observe,
    down: &mut dyn Observe,
    until: impl Future<Output = String>,
) -> Tunnelled {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        mut from: R,
        mut to: W,
        observer: &mut dyn Observe,
        carried: &Counter,
    ) -> (u64, Option<BoxError>) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0;
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Err(e) = observer.bytes(&buf[..n]) {
                        observer.end();
                        return (total, Some(e));
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    total += n as u64;
                    carried.add(n as u64);
                }
            }
        }
        observer.end();
        let _ = to.shutdown().await;
        (total, None)
    }
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let (up_count, down_count) = (Counter::default(), Counter::default());
    let a = pump(client_read, server_write, up, &up_count);
    let b = pump(server_read, client_write, down, &down_count);
    tokio::pin!(a, b, until);
    let (mut ra, mut rb): (Option<u64>, Option<u64>) = (None, None);
    let done = |up, down, stopped, ended| Tunnelled {
        up,
        down,
        stopped,
        ended,
    };
    loop {
        tokio::select! {
            (n, e) = &mut a, if ra.is_none() => {
                if e.is_some() {
                    return done(n, rb.unwrap_or(0), e, None);
                }
                ra = Some(n);
            }
            (n, e) = &mut b, if rb.is_none() => {
                if e.is_some() {
                    return done(ra.unwrap_or(0), n, e, None);
                }
                rb = Some(n);
            }
            why = &mut until => {
                // Dropping the pumps closes both sides; what they carried so far is counted.
                return done(up_count.get(), down_count.get(), None, Some(why));
            }
        }
        if let (Some(up), Some(down)) = (ra, rb) {
            return done(up, down, None, None);
        }
    }
}

/// Bytes a pump has carried, readable after it is dropped.
#[derive(Default)]
struct Counter(std::sync::atomic::AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
