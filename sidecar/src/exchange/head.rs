//! The head stage: what the request says of itself (authority, target, upgrade), classified
//! once, and recorded — masked, and durable first when the session is `strict` — before
//! anything else happens to it. A request that cannot be recorded is refused.

use super::{Exchange, classify, ledger::Ledger};
use crate::conn::ConnCtx;
use crate::http::{Body, version_str};
use crate::record::masked_headers;
use crate::refusal::{Cause, Refusal};
use cassette_recording::record::{Event, Request as RequestRecord};
use http::{Request, StatusCode, Version, header};
use std::time::Instant;

/// Start an exchange: its id, its facts, its classification.
pub fn begin(conn: &ConnCtx, req: &Request<Body>) -> Exchange {
    let started = Instant::now();
    let id = conn.proxy.recording.next_exchange_id();
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
        .unwrap_or_else(|| conn.route.display_host());
    let target = req
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
    let classified = classify::request(&authority, req.method(), &target, req.headers());
    let ledger = Ledger::new(id, started, classified.record.clone());
    Exchange {
        id,
        started,
        authority,
        target,
        upgrade,
        classified,
        ledger,
    }
}

/// Record the head, masked.
pub async fn record(conn: &ConnCtx, ex: &Exchange, req: &Request<Body>) -> Result<(), Refusal> {
    let proxy = &conn.proxy;
    let (headers, masks) = masked_headers(req.headers(), proxy.session.masker);
    ex.ledger.add_masks(proxy, masks);
    let head = RequestRecord {
        exchange: ex.id,
        conn: conn.conn,
        method: req.method().to_string(),
        scheme: conn.scheme.to_string(),
        authority: ex.authority.clone(),
        path: ex.target.clone(),
        version: version_str(req.version()).to_string(),
        headers,
    };
    proxy
        .recording
        .request(Event::Request(head))
        .await
        .map_err(|e| {
            // onFailure: closed — traffic that cannot be recorded does not pass.
            Refusal::new(
                Cause::Recording,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the request could not be recorded ({e}); it was not sent"),
            )
        })
}

/// Refuse every request of a connection whose upstream could not be reached safely.
pub fn upstream_usable(conn: &ConnCtx) -> Result<(), Refusal> {
    match &conn.upstream_error {
        None => Ok(()),
        Some(reason) => Err(Refusal::new(
            Cause::Upstream,
            StatusCode::BAD_GATEWAY,
            format!(
                "{} could not be reached safely: {reason}; the request was refused and recorded",
                conn.route.display_host()
            ),
        )),
    }
}
