//! The response stage: the head is recorded (masked), the body recorded as it streams back
//! and the exchange ended when it ends; an upgrade both sides agreed to becomes a tunnel.

use super::Exchange;
use super::tap::{Side, Tap};
use crate::conn::ConnCtx;
use crate::http::{Body, boxed, full, header_str, strip_hop_by_hop, version_str};
use crate::record::masked_headers;
use crate::upstream::tunnel;
use cassette_recording::record::{Decision, Direction, Event, Flow, Response as ResponseRecord};
use cassette_rules::mask::BodyKind;
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
    let masker = proxy.session.masker;
    let switching = ex.upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let (headers, masks) = masked_headers(&parts.headers, masker);
    ex.ledger.add_masks(proxy, masks);
    proxy.recording.emit(Event::Response(ResponseRecord {
        exchange: ex.id,
        status: parts.status.as_u16(),
        version: version_str(parts.version).to_string(),
        headers,
        trailers: None,
    }));

    if let (Some(upstream_up), Some(client_up)) = (upstream_upgrade, client_upgrade) {
        // A tunnel: both sides upgrade and the bytes are copied, recorded (masked) as streams
        // of the exchange.
        let (proxy, conn, ledger) = (proxy.clone(), conn.clone(), ex.ledger.clone());
        let mut up = proxy.recording.stream(
            conn.conn,
            Some(ex.id),
            Flow::Up,
            Some((masker, BodyKind::Other)),
        );
        let mut down = proxy.recording.stream(
            conn.conn,
            Some(ex.id),
            Flow::Down,
            Some((masker, BodyKind::Other)),
        );
        tokio::spawn(async move {
            let (client, server) = match tokio::join!(client_up, upstream_up) {
                (Ok(c), Ok(s)) => (c, s),
                _ => {
                    ledger.fail(&proxy, Decision::Allow, "the upgrade did not complete");
                    return;
                }
            };
            let (sent, received) = tunnel(
                TokioIo::new(client),
                TokioIo::new(server),
                &mut up,
                &mut down,
            )
            .await;
            ledger.add_masks(&proxy, up.finish());
            ledger.add_masks(&proxy, down.finish());
            conn.add_bytes(sent, received);
            ledger.tunnel(&proxy, sent, received);
        });
        return Response::from_parts(parts, full(""));
    }

    ex.ledger.add_sidecar(Instant::now() - head_at);
    let kind = BodyKind::from_content_type(header_str(&parts.headers, &header::CONTENT_TYPE));
    let encoding = header_str(&parts.headers, &header::CONTENT_ENCODING);
    let recorder = proxy
        .recording
        .body(ex.id, Direction::Response, Some((masker, kind)), encoding);
    let tap = Tap::new(
        boxed(body),
        recorder,
        proxy.clone(),
        ex.ledger.clone(),
        Side::Response(conn.clone()),
    );
    Response::from_parts(parts, tap.boxed())
}
