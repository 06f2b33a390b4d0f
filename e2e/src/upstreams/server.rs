//! `cassette-e2e upstreams`: the server side of [`super::Upstreams`], run inside the net
//! namespace. It binds the fake metadata server, the HTTPS host and the emulator proxies,
//! routes each request, and appends one [`LogEntry`] per request to the log.
//!
//! It holds no test logic: what a test expects is asserted on the log and on the clients'
//! output.

use super::{GCS_PROXY_PORT, HTTPS_PORT, LogEntry, METADATA_PORT, PUBSUB_PROXY_PORT};
use super::{echo, git, metadata, proxy, pulls};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The error type of response bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// What `cassette-e2e upstreams` serves, from its command line.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The net side's address: HTTPS and the proxies listen here.
    pub listen_ip: Ipv4Addr,
    /// The metadata server's address, port 80.
    pub metadata_ip: Ipv4Addr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `GIT_PROJECT_ROOT` for `git http-backend`.
    pub git_root: PathBuf,
    /// `http://host:port` of the GCS emulator; enables the GCS proxy and storage.googleapis.com.
    pub gcs_backend: Option<String>,
    /// `http://host:port` of the Pub/Sub emulator (h2c); enables the Pub/Sub proxy and
    /// pubsub.googleapis.com.
    pub pubsub_backend: Option<String>,
    /// The real access token: handed out by the metadata server, required by the Google hosts.
    pub token: String,
    /// The code host's token, which git.test and api.git.test then require.
    pub code_host_token: Option<String>,
    /// The request log, appended to.
    pub log: PathBuf,
    /// Created once every listener is bound.
    pub ready_file: Option<PathBuf>,
}

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    Metadata,
    Https,
    Gcs,
    Pubsub,
}

impl Listener {
    fn name(self) -> &'static str {
        match self {
            Listener::Metadata => "metadata",
            Listener::Https => "https",
            Listener::Gcs => "gcs",
            Listener::Pubsub => "pubsub",
        }
    }
}

/// What is known about the connection a request came on.
pub(crate) struct ConnInfo {
    pub listener: Listener,
    pub peer: SocketAddr,
    pub sni: Option<String>,
    pub alpn: Option<String>,
}

struct State {
    token: String,
    code_host_token: Option<String>,
    git_root: PathBuf,
    metadata: metadata::Metadata,
    gcs: Option<proxy::Backend>,
    pubsub: Option<proxy::Backend>,
    pulls: pulls::Pulls,
    log: RequestLog,
}

/// Bind every listener, report readiness, and serve until SIGTERM or Ctrl-C.
pub async fn serve(config: ServeConfig) -> Result<()> {
    let gcs = config
        .gcs_backend
        .as_deref()
        .map(|url| proxy::Backend::parse(url, false))
        .transpose()
        .context("--gcs-backend")?;
    let pubsub = config
        .pubsub_backend
        .as_deref()
        .map(|url| proxy::Backend::parse(url, true))
        .transpose()
        .context("--pubsub-backend")?;
    let acceptor = tls_acceptor(&config).context("loading the TLS certificate")?;

    let metadata_listener = bind(config.metadata_ip, METADATA_PORT).await?;
    let https_listener = bind(config.listen_ip, HTTPS_PORT).await?;
    let gcs_listener = match gcs {
        Some(_) => Some(bind(config.listen_ip, GCS_PROXY_PORT).await?),
        None => None,
    };
    let pubsub_listener = match pubsub {
        Some(_) => Some(bind(config.listen_ip, PUBSUB_PROXY_PORT).await?),
        None => None,
    };

    let state = Arc::new(State {
        metadata: metadata::Metadata::new(config.token.clone()),
        token: config.token.clone(),
        code_host_token: config.code_host_token.clone(),
        git_root: config.git_root.clone(),
        pulls: pulls::Pulls::default(),
        gcs,
        pubsub,
        log: RequestLog::open(&config.log)?,
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(accept_plain(
        metadata_listener,
        Listener::Metadata,
        state.clone(),
    ));
    tasks.spawn(accept_tls(https_listener, acceptor, state.clone()));
    if let Some(listener) = gcs_listener {
        tasks.spawn(accept_plain(listener, Listener::Gcs, state.clone()));
    }
    if let Some(listener) = pubsub_listener {
        tasks.spawn(accept_plain(listener, Listener::Pubsub, state.clone()));
    }

    if let Some(ready) = &config.ready_file {
        fs::write(ready, b"ready\n").with_context(|| format!("writing {}", ready.display()))?;
    }
    eprintln!(
        "cassette-e2e upstreams: metadata on {}:{METADATA_PORT}, https on {}:{HTTPS_PORT}{}{}",
        config.metadata_ip,
        config.listen_ip,
        state
            .gcs
            .as_ref()
            .map(|b| format!(", gcs proxy on :{GCS_PROXY_PORT} -> {}", b.addr()))
            .unwrap_or_default(),
        state
            .pubsub
            .as_ref()
            .map(|b| format!(", pubsub proxy on :{PUBSUB_PROXY_PORT} -> {}", b.addr()))
            .unwrap_or_default(),
    );

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        r = tokio::signal::ctrl_c() => Ok(r?),
        Some(result) = tasks.join_next() => {
            result.context("a listener task panicked")??;
            bail!("a listener stopped")
        }
    }
}

async fn bind(ip: Ipv4Addr, port: u16) -> Result<TcpListener> {
    TcpListener::bind((ip, port))
        .await
        .with_context(|| format!("listening on {ip}:{port} (is the address on this namespace?)"))
}

fn tls_acceptor(config: &ServeConfig) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&config.tls_cert)
        .with_context(|| format!("reading {}", config.tls_cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", config.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&config.tls_key)
        .with_context(|| format!("reading {}", config.tls_key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

async fn accept_plain(listener: TcpListener, kind: Listener, state: Arc<State>) -> Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("cassette-e2e upstreams: accept on {}: {e}", kind.name());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let info = ConnInfo {
            listener: kind,
            peer,
            sni: None,
            alpn: None,
        };
        tokio::spawn(serve_connection(stream, info, state.clone()));
    }
}

async fn accept_tls(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) -> Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("cassette-e2e upstreams: accept on https: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("cassette-e2e upstreams: TLS handshake with {peer}: {e}");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            let info = ConnInfo {
                listener: Listener::Https,
                peer,
                sni: session.server_name().map(str::to_string),
                alpn: session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            };
            serve_connection(tls, info, state).await;
        });
    }
}

async fn serve_connection<I>(io: I, info: ConnInfo, state: Arc<State>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let peer = info.peer;
    let listener = info.listener.name();
    let service = service_fn(move |request| {
        let state = state.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handle(&state, &info, request).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        eprintln!("cassette-e2e upstreams: {listener} connection from {peer}: {e}");
    }
}

/// Answer one request and log it.
async fn handle(state: &State, info: &ConnInfo, request: Request<Incoming>) -> Response<Body> {
    let mut entry = LogEntry {
        unix_ms: 0,
        listener: info.listener.name().to_string(),
        sni: info.sni.clone(),
        alpn: info.alpn.clone(),
        version: format!("{:?}", request.version()),
        method: request.method().to_string(),
        host: request_host(&request),
        path: request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        authorization: header_text(&request, AUTHORIZATION),
        user_agent: header_text(&request, USER_AGENT),
        status: 0,
    };
    let response = match route(state, info, request).await {
        Ok(response) => response,
        Err(e) => {
            eprintln!(
                "cassette-e2e upstreams: {} {} {}: {e:#}",
                entry.listener, entry.method, entry.path
            );
            text(
                StatusCode::BAD_GATEWAY,
                format!("cassette-e2e upstream error: {e:#}\n"),
            )
        }
    };
    entry.status = response.status().as_u16();
    entry.unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    state.log.append(&entry);
    response
}

async fn route(
    state: &State,
    info: &ConnInfo,
    request: Request<Incoming>,
) -> Result<Response<Body>> {
    match info.listener {
        Listener::Metadata => Ok(state.metadata.respond(&request)),
        Listener::Gcs => google_api(state, state.gcs.as_ref(), "--gcs-backend", request).await,
        Listener::Pubsub => {
            google_api(state, state.pubsub.as_ref(), "--pubsub-backend", request).await
        }
        Listener::Https => {
            let host = request_host(&request)
                .map(|h| strip_port(&h).to_ascii_lowercase())
                .unwrap_or_default();
            if request.uri().path() == "/echo" || host == "echo.test" {
                return echo::respond(request, info).await;
            }
            match host.as_str() {
                "storage.googleapis.com" => {
                    google_api(state, state.gcs.as_ref(), "--gcs-backend", request).await
                }
                "pubsub.googleapis.com" => {
                    google_api(state, state.pubsub.as_ref(), "--pubsub-backend", request).await
                }
                "api.git.test" => {
                    if let Some(token) = &state.code_host_token
                        && !api_credential_ok(&request, token)
                    {
                        return Ok(bad_credentials());
                    }
                    state.pulls.respond(request, &state.git_root).await
                }
                "source.developers.google.com" => {
                    if !git_credential_ok(&request, &state.token) {
                        return Ok(git_unauthorized(&host));
                    }
                    git::serve(request, &state.git_root, info).await
                }
                _ => {
                    if let Some(token) = &state.code_host_token
                        && host == "git.test"
                        && !git_credential_ok(&request, token)
                    {
                        return Ok(git_unauthorized(&host));
                    }
                    git::serve(request, &state.git_root, info).await
                }
            }
        }
    }
}

/// A Google API host: the request must carry the real token as a bearer, as Google would
/// insist; then it goes to the emulator.
async fn google_api(
    state: &State,
    backend: Option<&proxy::Backend>,
    flag: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>> {
    let Some(backend) = backend else {
        return Ok(text(
            StatusCode::BAD_GATEWAY,
            format!("cassette-e2e upstreams was started without {flag}\n"),
        ));
    };
    let expected = format!("Bearer {}", state.token);
    let authorized = request
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        // Read the upload before answering, so an HTTP/2 client is not reset mid-upload (a
        // race the tests must not depend on); the answer is the same either way.
        let (parts, body) = request.into_parts();
        let _ = body.collect().await;
        return Ok(unauthenticated(&Request::from_parts(parts, ())));
    }
    proxy::forward(request, backend).await
}

/// Google's answer to a missing or wrong credential: HTTP 401 with a JSON error, or for gRPC
/// a trailers-only response with status 16 (UNAUTHENTICATED).
fn unauthenticated<B>(request: &Request<B>) -> Response<Body> {
    const MESSAGE: &str = "Request had invalid authentication credentials. Expected OAuth 2 \
                           access token, login cookie or other valid authentication credential.";
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", "16")
            .header("grpc-message", MESSAGE)
            .body(empty())
            .expect("static response parts are valid");
    }
    let body = serde_json::json!({
        "error": {"code": 401, "message": MESSAGE, "status": "UNAUTHENTICATED"}
    });
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(CONTENT_TYPE, "application/json; charset=UTF-8")
        .header(
            WWW_AUTHENTICATE,
            "Bearer realm=\"https://accounts.google.com/\"",
        )
        .body(full(body.to_string()))
        .expect("static response parts are valid")
}

/// Cloud Source Repositories takes the token as the basic-auth password (any user name), as
/// gcloud's credential helper sends it, or as a bearer.
fn git_credential_ok<B>(request: &Request<B>, token: &str) -> bool {
    use base64::Engine;
    let Some(value) = header_text(request, AUTHORIZATION) else {
        return false;
    };
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return bearer == token;
    }
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, p)| p == token))
        .unwrap_or(false)
}

/// A code host's REST API takes its token as `Bearer` or `token` (GitHub takes both).
fn api_credential_ok<B>(request: &Request<B>, token: &str) -> bool {
    header_text(request, AUTHORIZATION).is_some_and(|value| {
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("token "))
            == Some(token)
    })
}

/// GitHub's answer to a missing or wrong token.
fn bad_credentials() -> Response<Body> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(r#"{"message":"Bad credentials","status":"401"}"#))
        .expect("static response parts are valid")
}

fn git_unauthorized(host: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(WWW_AUTHENTICATE, format!("Basic realm=\"{host}\""))
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(
            "cassette-e2e: this git host needs the real token as the password\n",
        ))
        .expect("static response parts are valid")
}

/// The `Host` header, or the HTTP/2 `:authority`.
pub(crate) fn request_host<B>(request: &Request<B>) -> Option<String> {
    header_text(request, HOST).or_else(|| request.uri().authority().map(|a| a.to_string()))
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn header_text<B>(request: &Request<B>, name: http::header::HeaderName) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The request log: one JSON line a request, each written with a single `write`.
struct RequestLog(Mutex<fs::File>);

impl RequestLog {
    fn open(path: &std::path::Path) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the request log {}", path.display()))?;
        Ok(Self(Mutex::new(file)))
    }

    fn append(&self, entry: &LogEntry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(e) => {
                eprintln!("cassette-e2e upstreams: encoding a log entry: {e}");
                return;
            }
        };
        line.push(b'\n');
        let Ok(mut file) = self.0.lock() else {
            eprintln!("cassette-e2e upstreams: the request log's lock is poisoned");
            return;
        };
        if let Err(e) = file.write_all(&line) {
            eprintln!("cassette-e2e upstreams: writing the request log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: &str) -> Request<()> {
        Request::builder()
            .uri("/p/x/r/repo/info/refs")
            .header(AUTHORIZATION, auth)
            .body(())
            .unwrap()
    }

    #[test]
    fn git_credentials_need_the_real_token() {
        // "git:ya29.real" and "git:ya29.fake"
        assert!(git_credential_ok(
            &request("Basic Z2l0OnlhMjkucmVhbA=="),
            "ya29.real"
        ));
        assert!(!git_credential_ok(
            &request("Basic Z2l0OnlhMjkuZmFrZQ=="),
            "ya29.real"
        ));
        assert!(git_credential_ok(&request("Bearer ya29.real"), "ya29.real"));
        assert!(!git_credential_ok(
            &request("Bearer ya29.fake"),
            "ya29.real"
        ));
        assert!(!git_credential_ok(&request("Basic !!"), "ya29.real"));
    }

    #[test]
    fn the_code_hosts_api_takes_its_token_as_bearer_or_token() {
        assert!(api_credential_ok(&request("Bearer ghp_real"), "ghp_real"));
        assert!(api_credential_ok(&request("token ghp_real"), "ghp_real"));
        assert!(!api_credential_ok(&request("Bearer ghp_fake"), "ghp_real"));
        assert!(!api_credential_ok(
            &request("Basic Z2l0OmdocF9yZWFs"),
            "ghp_real"
        ));
    }

    #[test]
    fn grpc_callers_get_a_grpc_status() {
        let grpc = Request::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .body(())
            .unwrap();
        let response = unauthenticated(&grpc);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "16");
        let rest = unauthenticated(&Request::new(()));
        assert_eq!(rest.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("git.test:443"), "git.test");
        assert_eq!(strip_port("git.test"), "git.test");
    }
}
