//! The HTTP vocabulary every part of the data path shares: the body type, the ALPN names, the
//! headers that belong to one hop, and plain answers in words.
//!
//! Nothing here knows about exchanges, policy or the recording.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the sidecar passes on, whichever side it came from.
pub type Body = BoxBody<Bytes, BoxError>;

/// ALPN protocol names the sidecar speaks on both sides.
pub const H2: &[u8] = b"h2";
pub const HTTP11: &[u8] = b"http/1.1";

/// Anything a connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Any body, boxed into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An answer the agent reads before any exchange exists (a bad CONNECT, a destination that
/// cannot be resolved): the status and a one-line reason in words.
pub fn text_answer(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full(format!("cassette: {message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// How a version is written in the recording.
pub fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
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

/// Remove the hop-by-hop headers (and those `Connection` names); `keep_upgrade` keeps what an
/// upgrade needs on the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
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

/// A header's value as text, when it is text.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_but_grpc_trailers_and_upgrades_survive() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive, x-hop".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-hop", "1".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("proxy-authorization", "Basic eA==".parse().unwrap());
        headers.insert("x-end-to-end", "kept".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-end-to-end"]);

        let mut upgrade = HeaderMap::new();
        upgrade.insert("connection", "Upgrade".parse().unwrap());
        upgrade.insert("upgrade", "websocket".parse().unwrap());
        upgrade.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut upgrade, true);
        assert!(upgrade.contains_key("upgrade") && upgrade.contains_key("connection"));
        assert!(!upgrade.contains_key("te"));
    }

    #[test]
    fn versions_are_written_as_http_says_them() {
        assert_eq!(version_str(Version::HTTP_11), "HTTP/1.1");
        assert_eq!(version_str(Version::HTTP_2), "HTTP/2");
    }
}
