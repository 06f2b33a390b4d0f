//! HTTP exchanges: the agent's request in, the upstream's response out, every part recorded.
//!
//! Read in order: serve the agent's connection (`serve`), then for each request `exchange`:
//! record the head → refuse if the upstream failed → swap the placeholder credential →
//! send upstream (recording the request body as it streams) → record the response head →
//! stream the response body back (recording it) → `exchange_end` when it is done.

use crate::credentials;
use crate::intercept::{H2, HTTP11};
use crate::proxy::{Proxy, Route, forbidden_destination};
use crate::tap::{ExchangeEndState, Tap};
use bytes::Bytes;
use cassette_recording::record::{
    Blocked, ConnClose, Decision, Direction, Event, Request as RequestRecord,
    Response as ResponseRecord, Token, TokenSwap,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// How long connecting upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A refusal the agent reads: the status and a one-line reason in words.
pub fn refusal(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full(format!("cassette: {message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// State shared by the exchanges of one agent connection.
pub struct ConnCtx {
    pub proxy: Arc<Proxy>,
    pub conn: u64,
    pub peer: SocketAddr,
    pub route: Route,
    /// `https` when the agent spoke TLS to us.
    pub scheme: &'static str,
    /// Why the upstream could not be used, when it could not.
    pub upstream_error: Option<String>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl ConnCtx {
    pub fn new(
        proxy: Arc<Proxy>,
        conn: u64,
        peer: SocketAddr,
        route: Route,
        scheme: &'static str,
        upstream_error: Option<String>,
    ) -> Self {
        Self {
            proxy,
            conn,
            peer,
            route,
            scheme,
            upstream_error,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }

    /// Whether the placeholder may be swapped on this connection: the upstream name was
    /// verified by TLS (or configured as an override) and is a Google host. The Host header is
    /// not trusted for this: the agent writes it.
    fn may_swap(&self, verified: bool) -> bool {
        let Some(host) = &self.route.host else {
            return false;
        };
        credentials::is_google_host(host) && (verified || self.route.endpoint.is_some())
    }
}

/// Anything a connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

enum State {
    /// Not connected yet (plain HTTP connects on the first request), or closed (HTTP/1.1
    /// keep-alive ended): connect on demand.
    Idle,
    Ready(Sender),
    /// Connecting failed; every request is refused with the reason in `ConnCtx`.
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
    tls: bool,
}

impl Upstream {
    /// Connect now (TLS interception needs the upstream's ALPN choice before answering).
    pub async fn connect(
        proxy: Arc<Proxy>,
        route: Route,
        offer: Vec<Vec<u8>>,
    ) -> Result<Self, String> {
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
    async fn send(
        &self,
        proxy: Arc<Proxy>,
        route: Route,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, String> {
        let mut state = self.state.lock().await;
        let reusable = match &mut *state {
            State::Ready(Sender::H1(s)) => s.ready().await.is_ok(),
            State::Ready(Sender::H2(s)) => s.ready().await.is_ok(),
            State::Idle => false,
            State::Failed => return Err("the upstream could not be reached".into()),
        };
        if !reusable {
            let (sender, _, _) = dial(proxy, route, self.offer.clone(), self.tls).await?;
            *state = State::Ready(sender);
        }
        let future = match &mut *state {
            State::Ready(Sender::H1(s)) => {
                let f = s.send_request(req);
                drop(state);
                return f.await.map_err(|e| format!("the upstream failed: {e}"));
            }
            State::Ready(Sender::H2(s)) => s.send_request(req),
            _ => unreachable!("connected above"),
        };
        // HTTP/2 multiplexes: release the lock before waiting for the response.
        drop(state);
        future
            .await
            .map_err(|e| format!("the upstream failed: {e}"))
    }

    fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some(H2)
    }
}

/// A connected upstream: its client, the ALPN it chose, and whether its certificate verified.
type Dialed = (Sender, Option<Vec<u8>>, bool);

/// Open a connection to the route's upstream and start an HTTP client on it.
fn dial(
    proxy: Arc<Proxy>,
    route: Route,
    offer: Vec<Vec<u8>>,
    tls: bool,
) -> Pin<Box<dyn Future<Output = Result<Dialed, String>> + Send>> {
    Box::pin(dial_inner(proxy, route, offer, tls))
}

async fn dial_inner(
    proxy: Arc<Proxy>,
    route: Route,
    offer: Vec<Vec<u8>>,
    tls: bool,
) -> Result<Dialed, String> {
    let (host, port) = match &route.endpoint {
        Some(e) => (e.host.clone(), e.port),
        None => {
            if let Some(why) = forbidden_destination(route.dst.ip()) {
                return Err(why.to_string());
            }
            (route.dst.ip().to_string(), route.dst.port())
        }
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out"))?
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        // Plain upstream (an emulator override, or plain HTTP): h2c only for clients that
        // offered nothing else (gRPC).
        let h2 = !offer.is_empty() && offer.iter().all(|p| p.as_slice() == H2);
        let sender = handshake(Box::new(tcp), h2).await?;
        return Ok((sender, Some(if h2 { H2 } else { HTTP11 }.to_vec()), false));
    }
    let ip = route.dst.ip();
    let name =
        crate::tls::upstream_name(route.host.as_deref(), ip).map_err(|e| format!("{e:#}"))?;
    let config = crate::tls::client_config(proxy.upstream_roots.clone(), offer.clone());
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            format!(
                "TLS with {} failed: {e}",
                route.host.as_deref().unwrap_or(&host)
            )
        })?;
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let h2 = alpn.as_deref() == Some(H2);
    let sender = handshake(Box::new(stream), h2).await?;
    Ok((sender, alpn, true))
}

async fn handshake(io: Box<dyn Io>, h2: bool) -> Result<Sender, String> {
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake with the upstream failed: {e}"))?;
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
            .map_err(|e| format!("HTTP/1.1 handshake with the upstream failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// Serve the agent's side of an intercepted TLS connection.
pub async fn serve_tls<IO: Io>(io: IO, is_h2: bool, ctx: Arc<ConnCtx>, upstream: Upstream) {
    serve(io, is_h2, ctx, upstream).await
}

/// Serve a plain-HTTP connection (HTTP/1.1, or HTTP/2 with prior knowledge).
pub async fn serve_plain<IO: Io>(
    mut io: crate::rewind::Rewind<IO>,
    ctx: Arc<ConnCtx>,
    upstream: Upstream,
) {
    use tokio::io::AsyncReadExt;
    // The HTTP/2 prior-knowledge preface starts with "PRI".
    let mut peek = [0u8; 3];
    if io.read_exact(&mut peek).await.is_err() {
        return;
    }
    let is_h2 = &peek == b"PRI";
    let io = crate::rewind::Rewind::new(Bytes::copy_from_slice(&peek), io);
    serve(io, is_h2, ctx, upstream).await
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
        Box::pin(async move { Ok(exchange(ctx, upstream, req).await) })
    }
}

async fn serve_inner(io: Box<dyn Io>, is_h2: bool, ctx: Arc<ConnCtx>, upstream: Upstream) {
    let service = ExchangeService {
        ctx: ctx.clone(),
        upstream: Arc::new(upstream),
    };
    let io = TokioIo::new(io);
    let result = if is_h2 {
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
    };
    let error = result.err().map(|e| e.to_string());
    if let Some(e) = &error {
        debug!(conn = ctx.conn, peer = %ctx.peer, error = %e, "agent connection ended with an error");
    }
    ctx.proxy.recorder.emit(Event::ConnClose(ConnClose {
        conn: ctx.conn,
        bytes_up: ctx.bytes_up.load(Ordering::Relaxed),
        bytes_down: ctx.bytes_down.load(Ordering::Relaxed),
        error,
    }));
}

/// Plain HTTP sent to the explicit proxy in absolute form (`GET http://host/path`).
pub async fn absolute_form(
    req: Request<Incoming>,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "this is a proxy: send CONNECT host:port or an absolute http:// URL",
        );
    };
    if req.uri().scheme_str() != Some("http") {
        return refusal(
            StatusCode::BAD_REQUEST,
            "only http:// URLs are proxied without CONNECT",
        );
    }
    let host = authority.host().trim_matches(['[', ']']).to_string();
    let port = authority.port_u16().unwrap_or(80);
    let endpoint = proxy.overrides.get(&host).cloned();
    let dst = match crate::capture::destination(&host, port, endpoint.is_some()).await {
        Ok(dst) => dst,
        Err(e) => {
            return refusal(
                StatusCode::BAD_GATEWAY,
                &format!("cannot resolve {host}: {e}"),
            );
        }
    };
    let conn = proxy.next_conn_id();
    if endpoint.is_none()
        && let Some(why) = forbidden_destination(dst.ip())
    {
        crate::capture::refuse_connection(&proxy, conn, &format!("{host}:{port}"), why);
        return refusal(StatusCode::FORBIDDEN, why);
    }
    proxy
        .recorder
        .emit(Event::ConnOpen(cassette_recording::record::ConnOpen {
            conn,
            client: peer.to_string(),
            dst: format!("{host}:{port}"),
            capture: cassette_recording::record::Capture::Connect,
        }));
    let route = Route {
        host: Some(host),
        dst,
        endpoint,
    };
    let ctx = Arc::new(ConnCtx::new(proxy, conn, peer, route, "http", None));
    exchange(ctx, Arc::new(Upstream::lazy()), req).await
}

/// Headers that belong to one hop, not to the exchange.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == "upgrade" || name == "connection") {
            continue;
        }
        if name == "te" {
            // gRPC needs `te: trailers` end to end.
            let trailers = headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
            if trailers {
                continue;
            }
        }
        headers.remove(name);
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// One request and its response.
async fn exchange(
    ctx: Arc<ConnCtx>,
    upstream: Arc<Upstream>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let proxy = ctx.proxy.clone();
    let exchange = proxy.recorder.next_exchange_id();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| ctx.route.display_host());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let upgrade = req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));

    // Record the head (masked) before anything else happens to the request.
    let masker = proxy.session.masker;
    let (headers, header_masks) = crate::record::masked_headers(req.headers(), masker);
    let head = RequestRecord {
        exchange,
        conn: ctx.conn,
        method: req.method().to_string(),
        scheme: ctx.scheme.to_string(),
        authority: authority.clone(),
        path: path.clone(),
        version: version_str(req.version()).to_string(),
        headers,
    };
    let classification = crate::record::classify(&authority, req.method(), &path, req.headers());
    let mut end = ExchangeEndState::new(exchange, started, classification.clone());
    end.masked.add(&proxy, header_masks);

    if let Err(e) = proxy.recorder.request(Event::Request(head)).await {
        // onFailure: closed — traffic that cannot be recorded does not pass.
        let message = format!("the request could not be recorded ({e}); it was not sent");
        end.fail(&proxy, Decision::Deny, &message);
        return refusal(StatusCode::SERVICE_UNAVAILABLE, &message);
    }

    if let Some(reason) = &ctx.upstream_error {
        let message = format!(
            "{} could not be reached safely: {reason}; the request was refused and recorded",
            ctx.route.display_host()
        );
        return refuse(
            &proxy,
            &mut end,
            "upstream",
            None,
            StatusCode::BAD_GATEWAY,
            &message,
        );
    }

    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // The request body is recorded (masked) as it streams, whatever happens next.
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body_kind = cassette_rules::mask::BodyKind::from_content_type(content_type);
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let req_tap = Tap::new(
        body.map_err(BoxError::from).boxed(),
        proxy.recorder.body(
            exchange,
            Direction::Request,
            Some((masker, body_kind)),
            encoded.as_deref(),
        ),
        proxy.clone(),
        end.bytes_up.clone(),
        end.masked.clone(),
        None,
    );

    // git smart HTTP: a push's ref updates are read (and recorded) before it may go
    // upstream, so policy can decide per ref; a fetch's wants are read as it streams.
    let (target_path, target_query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path.as_str(), None),
    };
    let git = cassette_rules::git::smart_http(parts.method.as_str(), target_path, target_query)
        .filter(|g| g.phase == cassette_rules::git::Phase::Rpc);
    let mut body: Body = req_tap.boxed();
    let mut push = None;
    match git.as_ref().map(|g| g.service) {
        Some(cassette_rules::git::GitService::ReceivePack) if encoded.is_none() => {
            match crate::git::read_push(body).await {
                Ok((rest, request)) => {
                    proxy
                        .recorder
                        .emit(crate::git::push_record(exchange, &request));
                    body = rest;
                    push = Some(request);
                }
                Err(e) => {
                    let message = format!("{e}; the push was refused and recorded");
                    return refuse(
                        &proxy,
                        &mut end,
                        "git",
                        None,
                        StatusCode::BAD_REQUEST,
                        &message,
                    );
                }
            }
        }
        Some(cassette_rules::git::GitService::UploadPack) => {
            // The fetch inspector reads the body the tap passes on; rebuild the tap with it.
            if let Some(inspector) = crate::git::FetchInspector::new(exchange, encoded.as_deref()) {
                body = crate::tap::Inspect::new(body, Box::new(inspector), proxy.clone()).boxed();
            }
        }
        _ => {}
    }

    // Policy, before anything goes upstream.
    let policy_host = ctx.route.host.clone().unwrap_or_else(|| authority.clone());
    let updates = push.as_ref().map(|p| p.updates.as_slice()).unwrap_or(&[]);
    let mut policy_request =
        cassette_rules::policy::Request::new(&policy_host, parts.method.as_str(), target_path)
            .pushing(updates);
    if let Some(c) = &classification {
        policy_request.service = c.service.as_deref();
        policy_request.permission = c.permission.as_deref();
    }
    let decision = proxy
        .session
        .evaluator
        .evaluate(&policy_request, jiff::Timestamp::now());
    end.rule = decision.would_block().then(|| decision.cause.label());
    let refused = match decision.outcome() {
        cassette_rules::policy::Outcome::Forward => {
            if decision.would_block() {
                // Audit mode: recorded as what would have been refused, and let through.
                proxy.recorder.emit(Event::Blocked(Blocked {
                    exchange: Some(exchange),
                    reason: "audit".into(),
                    rule: Some(decision.cause.label()),
                    message: format!("audit mode, not enforced: {}", decision.reason),
                }));
            }
            None
        }
        cassette_rules::policy::Outcome::Refuse => Some(decision.reason.clone()),
        cassette_rules::policy::Outcome::Hold => {
            let line = format!("{} {authority}{path}", parts.method);
            let permission = classification.as_ref().and_then(|c| c.permission.clone());
            hold_for_review(&proxy, exchange, &decision, line, permission).await
        }
    };
    if let Some(message) = refused {
        // Let the agent finish sending, so it reads the refusal instead of a reset.
        {
            drain(body).await;
            if let (Some(request), Some(_)) = (&push, &git) {
                let report = cassette_rules::git::refuse_push(
                    request.report_framing(),
                    &decision.git_rejections(),
                    &format!("cassette: {message}"),
                );
                return refuse_with(
                    &proxy,
                    &mut end,
                    ("policy", Some(decision.cause.label()), &message),
                    StatusCode::from_u16(report.status).unwrap_or(StatusCode::FORBIDDEN),
                    report.content_type,
                    report.body,
                );
            }
            return refuse(
                &proxy,
                &mut end,
                "policy",
                Some(decision.cause.label()),
                StatusCode::FORBIDDEN,
                &message,
            );
        }
    }

    // Credentials: swap the placeholder for a real token toward verified Google hosts.
    if let Some(swap) = credentials::needed(&parts.headers, &proxy.placeholder)
        && ctx.may_swap(upstream.verified)
    {
        let token = match &proxy.broker {
            Some(broker) => broker.token().await.map_err(|e| format!("{e:#}")),
            None => Err("no token broker is configured".to_string()),
        };
        match token.and_then(|t| {
            credentials::apply(&mut parts.headers, swap, &t).map_err(|e| e.to_string())
        }) {
            Ok(()) => {
                proxy.metrics.token_swaps.inc();
                proxy.recorder.emit(Event::Token(Token {
                    exchange,
                    host: ctx.route.display_host(),
                    swap: match swap {
                        credentials::Swap::Bearer => TokenSwap::Bearer,
                        credentials::Swap::GitBasic => TokenSwap::GitBasic,
                    },
                    account: proxy.recorder.account(),
                }));
            }
            Err(e) => {
                let message = format!("no credential could be obtained for {authority}: {e}");
                return refuse(
                    &proxy,
                    &mut end,
                    "credentials",
                    None,
                    StatusCode::BAD_GATEWAY,
                    &message,
                );
            }
        }
    }

    // The upstream request: same method, headers and body; the URI in the form the
    // upstream protocol wants.
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let upstream_h2 = upstream.is_h2();
    let scheme = if upstream.tls { "https" } else { "http" };
    let uri = if upstream_h2 {
        Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
    } else {
        path.parse::<Uri>().map_err(http::Error::from)
    };
    parts.uri = match uri {
        Ok(uri) => uri,
        Err(e) => {
            // Recorded like any exchange that could not be forwarded: it ends, with why.
            let message = format!("bad request target for {authority}: {e}");
            end.fail(&proxy, Decision::Allow, &message);
            return refusal(StatusCode::BAD_REQUEST, &message);
        }
    };
    parts.version = if upstream_h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if !upstream_h2 && !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
    } else if upstream_h2 {
        parts.headers.remove(header::HOST);
    }
    let upstream_req = Request::from_parts(parts, body);

    let sent = Instant::now();
    end.set_sidecar_before(sent - started);
    let route = ctx.route_for(&authority);
    let response = match upstream.send(proxy.clone(), route, upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            let message = format!("{authority} failed: {e}");
            end.fail(&proxy, Decision::Allow, &message);
            return refusal(StatusCode::BAD_GATEWAY, &message);
        }
    };
    let head_at = Instant::now();
    end.set_ttfb(head_at - sent);
    proxy
        .metrics
        .upstream_latency
        .observe((head_at - sent).as_secs_f64());

    let mut response = response;
    let switching = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let (headers, header_masks) = crate::record::masked_headers(&parts.headers, masker);
    end.masked.add(&proxy, header_masks);
    proxy.recorder.emit(Event::Response(ResponseRecord {
        exchange,
        status: parts.status.as_u16(),
        version: version_str(parts.version).to_string(),
        headers,
        trailers: None,
    }));

    if let (Some(upstream_up), Some(client_up)) = (upstream_upgrade, client_upgrade) {
        // A tunnel (websocket): both sides upgrade and bytes are copied; the exchange is
        // recorded with its byte counts.
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (client, server) = match tokio::join!(client_up, upstream_up) {
                (Ok(c), Ok(s)) => (c, s),
                _ => {
                    end.fail(&proxy, Decision::Allow, "the upgrade did not complete");
                    return;
                }
            };
            let (up, down) = tunnel(TokioIo::new(client), TokioIo::new(server)).await;
            ctx.add_bytes(up, down);
            end.tunnel(&proxy, up, down);
        });
        return Response::from_parts(parts, full(""));
    }

    let returned = Instant::now();
    end.add_sidecar(returned - head_at);
    let counter = Arc::new(AtomicU64::new(0));
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body_kind = cassette_rules::mask::BodyKind::from_content_type(content_type);
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let masked = end.masked.clone();
    let resp_tap = Tap::new(
        body.map_err(BoxError::from).boxed(),
        proxy.recorder.body(
            exchange,
            Direction::Response,
            Some((masker, body_kind)),
            encoding.as_deref(),
        ),
        proxy.clone(),
        counter,
        masked,
        Some((end, ctx.clone())),
    );
    Response::from_parts(parts, resp_tap.boxed())
}

/// Hold a request for review: publish it (the status reporter lists it in
/// `status.pendingReviews`), wait for an approval or the timeout, and record the outcome.
/// `None` when approved; otherwise why it is refused.
async fn hold_for_review(
    proxy: &Proxy,
    exchange: u64,
    decision: &cassette_rules::policy::Decision,
    request: String,
    permission: Option<String>,
) -> Option<String> {
    use crate::review::Verdict;
    use cassette_recording::record::{Review, ReviewState};
    let record = |id: &str, state: ReviewState, by: Option<String>| {
        proxy.recorder.emit(Event::Review(Review {
            exchange,
            id: id.to_string(),
            state,
            by,
        }));
    };
    let Some(reviews) = &proxy.reviews else {
        record(&exchange.to_string(), ReviewState::Denied, None);
        return Some(format!(
            "{} (held for review, but this sidecar cannot reach its AgentSession to receive approvals, so it is denied)",
            decision.reason
        ));
    };
    let id = reviews.id(exchange);
    record(&id, ReviewState::Pending, None);
    /// Releases the hold however the wait ends (the agent may hang up first).
    struct Release<'a>(&'a crate::review::Reviews, &'a str);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.release(self.1);
        }
    }
    let answer = reviews.hold(cassette_api::PendingReview {
        id: id.clone(),
        pod: reviews.pod().to_string(),
        request,
        permission,
        rule: Some(decision.cause.label()),
        requested_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        )),
    });
    let _release = Release(reviews, &id);
    let timeout = proxy.session.review_timeout;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Verdict::Approved { by })) => {
            record(&id, ReviewState::Approved, by);
            None
        }
        Ok(Ok(Verdict::Denied { by })) => {
            let who = by
                .as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default();
            record(&id, ReviewState::Denied, by.clone());
            Some(format!("{} (review {id} denied{who})", decision.reason))
        }
        _ => {
            record(&id, ReviewState::TimedOut, None);
            Some(format!(
                "{} (review {id}: no decision within {}s, so it is denied)",
                decision.reason,
                timeout.as_secs()
            ))
        }
    }
}

/// Refuse a request: record why (a `blocked` record, and its exchange_end) and tell the
/// agent in words.
fn refuse(
    proxy: &Proxy,
    end: &mut ExchangeEndState,
    reason: &str,
    rule: Option<String>,
    status: StatusCode,
    message: &str,
) -> Response<Body> {
    let body = format!("cassette: {message}\n");
    refuse_with(
        proxy,
        end,
        (reason, rule, message),
        status,
        "text/plain; charset=utf-8",
        body.into_bytes(),
    )
}

/// Refuse with a response of our own making (a git report, a plain message), recording the
/// refusal and the response the agent gets.
fn refuse_with(
    proxy: &Proxy,
    end: &mut ExchangeEndState,
    (reason, rule, message): (&str, Option<String>, &str),
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Body> {
    let exchange = end.exchange();
    proxy.recorder.emit(Event::Blocked(Blocked {
        exchange: Some(exchange),
        reason: reason.into(),
        rule,
        message: message.to_string(),
    }));
    let mut response = Response::new(());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    proxy.recorder.emit(Event::Response(ResponseRecord {
        exchange,
        status: status.as_u16(),
        version: "HTTP/1.1".into(),
        headers: crate::record::headers(response.headers()),
        trailers: None,
    }));
    let mut recorded = proxy
        .recorder
        .body(exchange, Direction::Response, None, None);
    recorded.push(&Bytes::copy_from_slice(&body));
    recorded.finish();
    end.fail(proxy, Decision::Deny, message);
    response.map(|()| full(body))
}

/// Read a body to its end (so it is recorded and the sender is not cut off mid-upload).
async fn drain(mut body: Body) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

/// Copy both ways until both sides are done, counting what went each way even when a side
/// ends abruptly (a TLS peer that closes without close_notify is the common case).
pub async fn tunnel<A: Io, B: Io>(client: A, server: B) -> (u64, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut from: R, mut to: W) -> u64 {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0;
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    total += n as u64;
                }
            }
        }
        let _ = to.shutdown().await;
        total
    }
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    tokio::join!(
        pump(client_read, server_write),
        pump(server_read, client_write)
    )
}

impl ConnCtx {
    /// The route for a request: plain HTTP learns its host from the request, so an
    /// override can apply to it.
    fn route_for(&self, authority: &str) -> Route {
        let mut route = self.route.clone();
        if route.host.is_none() && route.endpoint.is_none() {
            let host = authority
                .rsplit_once(':')
                .filter(|(_, port)| port.parse::<u16>().is_ok())
                .map(|(h, _)| h)
                .unwrap_or(authority);
            route.endpoint = self.proxy.overrides.get(host).cloned();
            route.host = Some(host.to_string());
        }
        route
    }

    /// Count body bytes on this connection.
    pub fn add_bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }
}
