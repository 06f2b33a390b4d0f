//! The forward stage: the request goes upstream with the same method, headers and body, its
//! URI in the form the upstream protocol wants, hop-by-hop headers left behind.

use super::{Exchange, Failure};
use crate::conn::ConnCtx;
use crate::http::{Body, strip_hop_by_hop};
use crate::upstream::Upstream;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use std::time::Instant;

/// Send the request; returns the response head and when it arrived.
pub async fn send(
    conn: &ConnCtx,
    upstream: &Upstream,
    ex: &Exchange,
    mut parts: Parts,
    body: Body,
) -> Result<(Response<Incoming>, Instant), Failure> {
    let authority = &ex.authority;
    strip_hop_by_hop(&mut parts.headers, ex.upgrade);
    let upstream_h2 = upstream.is_h2();
    let scheme = if upstream.tls { "https" } else { "http" };
    let uri = if upstream_h2 {
        Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query(ex.target.as_str())
            .build()
    } else {
        ex.target.parse::<Uri>().map_err(http::Error::from)
    };
    parts.uri = uri.map_err(|e| Failure {
        status: StatusCode::BAD_REQUEST,
        message: format!("bad request target for {authority}: {e}"),
    })?;
    parts.version = if upstream_h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if !upstream_h2 && !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(header::HOST, v);
        }
    } else if upstream_h2 {
        parts.headers.remove(header::HOST);
    }

    let sent = Instant::now();
    ex.ledger.set_sidecar_before(sent - ex.started);
    let route = conn.route_for(authority);
    let response = upstream
        .send(conn.proxy.clone(), route, Request::from_parts(parts, body))
        .await
        .map_err(|e| Failure {
            status: StatusCode::BAD_GATEWAY,
            message: format!("{authority} failed: {e}"),
        })?;
    let head_at = Instant::now();
    ex.ledger.set_ttfb(head_at - sent);
    conn.proxy
        .metrics()
        .upstream_latency
        .observe((head_at - sent).as_secs_f64());
    Ok((response, head_at))
}
