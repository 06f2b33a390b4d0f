//! How an exchange that stopped early is answered and recorded — the one place a
//! [`Refusal`] becomes the agent's answer and its `blocked`, `response`, `body` and
//! `exchange_end` records.

use super::Exchange;
use crate::http::{Body, full};
use crate::proxy::Proxy;
use crate::record::headers;
use crate::refusal::Refusal;
use cassette_recording::record::{Decision, Direction, Event, Response as ResponseRecord};
use cassette_rules::refusal::Protocol;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;

/// An exchange the policy allowed that could not complete (a bad target, a failed upstream).
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

/// Why an exchange stopped before its response.
#[derive(Debug)]
pub enum Stop {
    Refused(Refusal),
    Failed(Failure),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refused(r)
    }
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Failed(f)
    }
}

/// The agent's answer, with the records that say what happened.
pub fn answer(proxy: &Proxy, ex: &Exchange, stop: Stop) -> Response<Body> {
    let protocol = Protocol::of(
        ex.content_type.as_deref(),
        ex.classified.google.as_ref(),
        ex.classified.git.as_ref(),
    );
    match stop {
        Stop::Refused(refusal) => refuse(proxy, ex, refusal, &protocol),
        Stop::Failed(failure) => {
            // Recorded like any exchange that could not be forwarded: it ends, with why.
            ex.ledger.fail(proxy, Decision::Allow, &failure.message);
            let shaped = cassette_rules::refusal::refuse(
                &protocol,
                failure.status.as_u16(),
                &format!("cassette: {}", failure.message),
            );
            response(&shaped)
        }
    }
}

/// Refuse: the `blocked` record, the response the agent gets in its own protocol (recorded
/// with its body), and the exchange's end.
fn refuse(proxy: &Proxy, ex: &Exchange, refusal: Refusal, protocol: &Protocol) -> Response<Body> {
    refusal.record(&proxy.recording, Some(ex.id));
    let shaped = refusal.answer(protocol);
    let answer = response(&shaped);
    proxy.recording.emit(Event::Response(ResponseRecord {
        exchange: ex.id,
        status: shaped.status,
        version: "HTTP/1.1".into(),
        headers: headers(answer.headers()),
        trailers: None,
    }));
    proxy
        .recording
        .whole_body(ex.id, Direction::Response, &shaped.body);
    ex.ledger.fail(proxy, Decision::Deny, &refusal.message);
    answer
}

/// The response for a shaped refusal: its status, headers, body and trailers.
fn response(shaped: &cassette_rules::refusal::Refusal) -> Response<Body> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(shaped.status).unwrap_or(StatusCode::FORBIDDEN);
    let h = response.headers_mut();
    for (name, value) in &shaped.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            h.append(*name, value);
        }
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let mut trailers = http::HeaderMap::new();
    for (name, value) in &shaped.trailers {
        if let Ok(value) = HeaderValue::from_str(value) {
            trailers.append(*name, value);
        }
    }
    let body = full(shaped.body.clone());
    let body = if trailers.is_empty() {
        body
    } else {
        body.with_trailers(async move { Some(Ok(trailers)) })
            .boxed()
    };
    response.map(|()| body)
}
