//! A pass-through reverse proxy to an emulator: the request goes on unchanged (method, path,
//! `Host`/`:authority`, headers, streamed body and trailers) over a fresh connection, HTTP/1.1
//! for the GCS emulator and h2c for the Pub/Sub emulator's gRPC.

use super::server::{Body, BoxError, request_host};
use anyhow::{Context, Result, bail};
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, TE};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Where a proxy sends its requests.
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    addr: String,
    http2: bool,
}

impl Backend {
    /// `http://host:port`, spoken over HTTP/1.1 or (prior-knowledge) HTTP/2.
    pub fn parse(url: &str, http2: bool) -> Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("{url:?} is not an http:// URL (the emulators speak plain HTTP)");
        };
        let addr = rest.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
            bail!("{url:?} must be http://host:port with no path");
        }
        Ok(Self {
            addr: addr.to_string(),
            http2,
        })
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// Send the request to the backend and stream its answer back.
pub(crate) async fn forward(
    request: Request<Incoming>,
    backend: &Backend,
) -> Result<Response<Body>> {
    let authority = request_host(&request).unwrap_or_else(|| backend.addr.clone());
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let stream = TcpStream::connect(&backend.addr)
        .await
        .with_context(|| format!("connecting to the emulator at {}", backend.addr))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);

    let response = if backend.http2 {
        parts.uri = Uri::try_from(format!("http://{authority}{path}"))
            .with_context(|| format!("building a URI from {authority:?} and {path:?}"))?;
        parts.version = Version::HTTP_2;
        parts.headers.remove(HOST);
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .context("HTTP/2 handshake with the emulator")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("cassette-e2e upstreams: h2c connection to the emulator: {e}");
            }
        });
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .context("sending the request to the emulator")?
    } else {
        parts.uri = Uri::try_from(path.as_str())?;
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(HOST) {
            parts
                .headers
                .insert(HOST, HeaderValue::try_from(authority)?);
        }
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .context("HTTP/1.1 handshake with the emulator")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("cassette-e2e upstreams: connection to the emulator: {e}");
            }
        });
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .context("sending the request to the emulator")?
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
    Ok(Response::from_parts(parts, body))
}

/// Remove the headers that describe one connection rather than the message (RFC 9110 §7.6.1);
/// `te: trailers` stays, gRPC needs it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_plain_http_host_port() {
        assert_eq!(
            Backend::parse("http://10.231.3.1:4443", false)
                .unwrap()
                .addr(),
            "10.231.3.1:4443"
        );
        assert_eq!(
            Backend::parse("http://10.231.3.1:4443/", true)
                .unwrap()
                .addr(),
            "10.231.3.1:4443"
        );
        assert!(Backend::parse("https://10.231.3.1:4443", false).is_err());
        assert!(Backend::parse("http://10.231.3.1", false).is_err());
        assert!(Backend::parse("http://h:1/storage", false).is_err());
    }

    #[test]
    fn hop_by_hop_headers_go_and_grpc_te_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-hop").is_none());
        assert!(headers.get(CONNECTION).is_none());
        assert!(headers.get("keep-alive").is_none());
        assert_eq!(headers[TE], "trailers");
        assert_eq!(headers["authorization"], "Bearer t");
    }
}
