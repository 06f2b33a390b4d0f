//! The response stage: the head is recorded (masked), the body recorded as it streams back
//! and the exchange ended when it ends; an upgrade both sides agreed to becomes a tunnel.

use super::Exchange;
use super::tap::{Side, Tap};
use crate::conn::ConnCtx;
use crate::http::{Body, boxed, full, header_str, strip_hop_by_hop, version_str};
use crate::record::masked_headers;
use crate::upstream::tunnel;
use crate::websocket::MessageRecorder;
use cassette_recording::record::{Decision, Direction, Event, Flow, Response as ResponseRecord};
use cassette_rules::mask::{BodyKind, byte_fields};
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Instant;

/// Record the response and pass it back to the agent, recording its body as it goes.
pub fn relay(
    conn: &Arc<ConnCtx>,
    ex: &Exchange,
    mut response: Response<Incoming>,
    head_at: Instant,
    client_upgrade: Option<OnUpgrade>,
) -> Response<Body> {
    let proxy = &conn.proxy;
    let masker = proxy.session.current().masker;
    let switching = ex.upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let (headers, masks) = masked_headers(&parts.headers, masker);
    ex.ledger.add_masks(proxy, masks);
    let recorded = proxy.recording.try_emit(Event::Response(ResponseRecord {
        exchange: ex.id,
        status: parts.status.as_u16(),
        version: version_str(parts.version).to_string(),
        headers,
        trailers: None,
    }));
    if let Err(e) = recorded {
        // onFailure: closed — what the agent would see cannot be recorded: it does not see it.
        let message = format!(
            "the response from {} could not be recorded ({e}); it was not passed on, as the \
             session's onFailure: closed asks — the sidecar's log and the AgentSession's status \
             say why its recording fails",
            ex.verified.name()
        );
        proxy.recording.cut(cassette_recording::record::Gap {
            lost: format!("exchange {}: the response", ex.id),
            reason: format!("{message}; onFailure is closed: the agent got 503 instead"),
            records: None,
            bytes: None,
            from: None,
            to: None,
        });
        let failure = super::answer::Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        };
        return super::answer::answer(proxy, ex, failure.into());
    }

    if let (Some(upstream_up), Some(client_up)) = (upstream_upgrade, client_upgrade) {
        // WebSocket (the only upgrade let through): both sides upgrade, and every message
        // each way is recorded, masked, as it passes.
        let (proxy, conn, ledger) = (proxy.clone(), conn.clone(), ex.ledger.clone());
        // It lasts while the session in force would not refuse its upgrade request.
        let (verified, path) = (ex.verified.clone(), ex.path().to_string());
        let (google, shown) = (ex.classified.google.clone(), ex.shown_target.clone());
        let still_allowed = move |session: &crate::session::Session| {
            let request = cassette_rules::policy::Request::for_verified(&verified, "GET", &path)
                .classified(google.as_ref())
                .shown_as(&shown);
            let decision = session.evaluator.evaluate(&request, jiff::Timestamp::now());
            // A refusal ends it; a rule asking for review does not (it may have been approved).
            (decision.outcome() == cassette_rules::policy::Outcome::Refuse).then(|| {
                format!(
                    "the WebSocket was ended: its upgrade request is refused now: {}",
                    decision.reason
                )
            })
        };
        let max = proxy.recording.max_body_bytes();
        let mut up = MessageRecorder::new(proxy.recording.clone(), masker, ex.id, Flow::Up, max);
        let mut down =
            MessageRecorder::new(proxy.recording.clone(), masker, ex.id, Flow::Down, max);
        tokio::spawn(async move {
            let (client, server) = match tokio::join!(client_up, upstream_up) {
                (Ok(c), Ok(s)) => (c, s),
                _ => {
                    ledger.fail(&proxy, Decision::Allow, "the upgrade did not complete");
                    return;
                }
            };
            let carried = tunnel(
                TokioIo::new(client),
                TokioIo::new(server),
                &mut up,
                &mut down,
                proxy.session.until(still_allowed),
            )
            .await;
            ledger.add_masks(&proxy, std::mem::take(&mut up.masked));
            ledger.add_masks(&proxy, std::mem::take(&mut down.masked));
            conn.add_bytes(carried.up, carried.down);
            let error = carried
                .stopped
                .map(|e| {
                    format!("the upgraded connection was closed: it does not speak WebSocket as negotiated ({e})")
                })
                .or(carried.ended);
            ledger.tunnel(&proxy, carried.up, carried.down, error);
        });
        return Response::from_parts(parts, full(""));
    }

    ex.ledger.add_sidecar(Instant::now() - head_at);
    let kind = BodyKind::from_content_type(header_str(&parts.headers, &header::CONTENT_TYPE));
    let encoding = header_str(&parts.headers, &header::CONTENT_ENCODING);
    let fetch = super::git::carries_pack(ex, Direction::Response);
    let recorder = if fetch {
        proxy.recording.pack_body(ex.id, Direction::Response)
    } else {
        let recorder =
            proxy
                .recording
                .body(ex.id, Direction::Response, Some((masker, kind)), encoding);
        match &ex.classified.google {
            Some(g) => recorder.with_byte_fields(byte_fields(g, true)),
            None => recorder,
        }
    };
    let mut body = boxed(body);
    if fetch {
        body = super::git::inspect_fetch(conn, ex, encoding, body);
    }
    let tap = Tap::new(
        body,
        recorder,
        proxy.clone(),
        ex.ledger.clone(),
        Side::Response(conn.clone()),
    );
    Response::from_parts(parts, tap.boxed())
}
