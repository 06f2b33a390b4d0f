//! The head stage: what the request says of itself (authority, target, upgrade), classified
//! once against the host the connection was verified for, and recorded — masked, target
//! included, and durable first when the session is `strict` — before anything else happens
//! to it. A request that cannot be recorded is refused, and so is one whose Host,
//! `:authority` or absolute-form authority names another host than the verified one.

use super::{Exchange, classify, ledger::Ledger};
use crate::conn::ConnCtx;
use crate::http::{Body, version_str};
use crate::record::masked_headers;
use crate::refusal::{Cause, Refusal};
use cassette_recording::record::{Event, Request as RequestRecord};
use cassette_rules::authority::VerifiedHost;
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
    let (verified, checked) = verified_host(conn, &authority);
    let classified = classify::request(&verified, req.method(), &target, req.headers());
    let (shown_target, target_masks) = conn.proxy.session.current().masker.mask_target(&target);
    let ledger = Ledger::new(id, started, classified.record.clone());
    ledger.add_masks(&conn.proxy, target_masks.counts);
    Exchange {
        id,
        started,
        authority,
        target,
        shown_target,
        verified,
        authority_checked: checked,
        content_type: crate::http::header_str(req.headers(), &header::CONTENT_TYPE)
            .map(str::to_string),
        upgrade,
        classified,
        ledger,
    }
}

/// The host every decision of the exchange uses, and whether the request's own authorities
/// must name it. Over TLS it is the name the upstream's certificate was verified for (SNI,
/// or the CONNECT authority the sidecar resolved); on plain HTTP the original destination's
/// address, unless an upstream override is configured for the name the request gives.
fn verified_host(conn: &ConnCtx, authority: &str) -> (VerifiedHost, bool) {
    let port = conn.route.dst.port();
    if let Some(host) = &conn.route.host
        && let Some(verified) = VerifiedHost::new(host, port)
    {
        return (verified, true);
    }
    let route = conn.route_for(authority);
    if route.endpoint.is_some()
        && let Some(host) = route.host.as_deref()
        && let Some(verified) = VerifiedHost::new(host, port)
    {
        return (verified, false);
    }
    let ip =
        VerifiedHost::new(&conn.route.dst.ip().to_string(), port).expect("an IP address is a host");
    (ip, false)
}

/// Refuse a request whose Host headers, `:authority` or absolute-form authority name another
/// host (or port) than the one the connection was verified for.
pub fn authority_matches(
    conn: &ConnCtx,
    ex: &Exchange,
    req: &Request<Body>,
) -> Result<(), Refusal> {
    if !ex.authority_checked {
        return Ok(());
    }
    let default_port = if conn.scheme == "https" { 443 } else { 80 };
    let hosts = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let authority = req.uri().authority().map(|a| a.as_str());
    ex.verified
        .check_all(hosts.chain(authority), default_port)
        .map_err(|mismatch| {
            Refusal::new(
                Cause::Authority,
                StatusCode::MISDIRECTED_REQUEST,
                mismatch.to_string(),
            )
        })
}

/// Record the head, masked.
pub async fn record(conn: &ConnCtx, ex: &Exchange, req: &Request<Body>) -> Result<(), Refusal> {
    let proxy = &conn.proxy;
    let (headers, masks) = masked_headers(req.headers(), proxy.session.current().masker);
    ex.ledger.add_masks(proxy, masks);
    let head = RequestRecord {
        exchange: ex.id,
        conn: conn.conn,
        method: req.method().to_string(),
        scheme: conn.scheme.to_string(),
        authority: ex.authority.clone(),
        path: ex.shown_target.clone(),
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
