//! How an exchange that stopped early is answered and recorded — the one place a
//! [`Refusal`] becomes the agent's answer and its `blocked`, `response`, `body` and
//! `exchange_end` records.

use super::Exchange;
use crate::http::{Body, full, text_answer};
use crate::proxy::Proxy;
use crate::record::headers;
use crate::refusal::Refusal;
use cassette_recording::record::{Decision, Direction, Event, Response as ResponseRecord};
use http::{HeaderValue, Response, StatusCode, header};

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
    match stop {
        Stop::Refused(refusal) => refuse(proxy, ex, refusal),
        Stop::Failed(failure) => {
            // Recorded like any exchange that could not be forwarded: it ends, with why.
            ex.ledger.fail(proxy, Decision::Allow, &failure.message);
            text_answer(failure.status, &failure.message)
        }
    }
}

/// Refuse: the `blocked` record, the response the agent gets (recorded with its body), and
/// the exchange's end.
fn refuse(proxy: &Proxy, ex: &Exchange, refusal: Refusal) -> Response<Body> {
    refusal.record(&proxy.recording, Some(ex.id));
    let (content_type, body) = refusal.body();
    let mut response = Response::new(());
    *response.status_mut() = refusal.status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    proxy.recording.emit(Event::Response(ResponseRecord {
        exchange: ex.id,
        status: refusal.status.as_u16(),
        version: "HTTP/1.1".into(),
        headers: headers(response.headers()),
        trailers: None,
    }));
    proxy
        .recording
        .whole_body(ex.id, Direction::Response, &body);
    ex.ledger.fail(proxy, Decision::Deny, &refusal.message);
    response.map(|()| full(body))
}
