//! The body stage: the few requests whose decision depends on their body are read whole
//! before the policy decides — a Google batch (each part is a request of its own), and a
//! code host's REST call that moves a ref only its body names (a contents update on a
//! branch) — and a Cloud Storage gRPC call's first message, which names its buckets, before
//! the rest of the call streams on. Bounded: what cannot be read within the bound, or cannot
//! be parsed, is refused rather than forwarded unread. Every other body streams as it comes.

use super::Exchange;
use crate::conn::ConnCtx;
use crate::http::{Body, BoxError, boxed, full};
use crate::refusal::{Cause, Refusal};
use bytes::{Bytes, BytesMut};
use cassette_recording::record::{Event, Git, RefUpdate};
use cassette_rules::batch::{self, MAX_BATCH_BYTES, SubRequest};
use cassette_rules::code_host::{self, RestRef, RestRefChange};
use cassette_rules::sink;
use http::StatusCode;
use http::request::Parts;
use http_body_util::BodyExt;

/// What the body told about the request.
#[derive(Default)]
pub struct Read {
    /// A batch's parts.
    pub batch: Option<Vec<SubRequest>>,
    /// A Cloud Storage gRPC call's first message, with its 5-byte prefix, as far as it came.
    pub grpc_first: Option<Bytes>,
    /// The refs a code-host REST call moves.
    pub rest: Option<RestRefChange>,
}

impl Read {
    /// The refs the policy checks against gitRef rules.
    pub fn refs(&self) -> &[RestRef] {
        self.rest.as_ref().map(|r| r.refs.as_slice()).unwrap_or(&[])
    }
}

/// Read the body where the decision needs it; returns the body to send on (the same bytes)
/// and what it told.
pub async fn read(
    conn: &ConnCtx,
    ex: &Exchange,
    parts: &Parts,
    body: Body,
) -> Result<(Body, Read), Refusal> {
    let method = parts.method.as_str();
    let path = ex.path();
    let query = ex.target.split_once('?').map(|(_, q)| q);
    let is_batch = ex.classified.google.is_some() && batch::is_batch(method, path);
    if conn.proxy.sink_bucket.is_some()
        && sink::is_storage_grpc(&ex.verified, path, ex.content_type.as_deref())
    {
        let (body, first) = first_grpc_message(body)
            .await
            .map_err(super::bucket::unreadable_storage_call)?;
        let read = Read {
            grpc_first: Some(first),
            ..Read::default()
        };
        return Ok((body, read));
    }
    if !is_batch && !code_host::needs_body(method, path) {
        let rest = code_host::ref_changes(method, path, query, None);
        if let Some(change) = &rest {
            conn.proxy.recording.emit(rest_record(ex.id, change));
        }
        let read = Read {
            rest,
            ..Read::default()
        };
        return Ok((body, read));
    }
    let limit = if is_batch {
        MAX_BATCH_BYTES
    } else {
        code_host::MAX_BODY
    };
    let refuse = |why: String| {
        Refusal::new(
            Cause::Policy,
            StatusCode::BAD_REQUEST,
            format!(
                "{why}; the request was refused and recorded, because its policy decision depends on its body"
            ),
        )
    };
    let mut body = body;
    let bytes = whole(&mut body, limit)
        .await
        .map_err(|e| refuse(e.to_string()))?;
    let replay = full(bytes.clone());
    if is_batch {
        let content_type = ex.content_type.as_deref().unwrap_or_default();
        let subs = batch::parse_batch(content_type, &bytes).map_err(|e| refuse(e.to_string()))?;
        return Ok((
            replay,
            Read {
                batch: Some(subs),
                ..Read::default()
            },
        ));
    }
    let rest = code_host::ref_changes(method, path, query, Some(&bytes));
    if let Some(change) = &rest {
        conn.proxy.recording.emit(rest_record(ex.id, change));
    }
    let read = Read {
        rest,
        ..Read::default()
    };
    Ok((replay, read))
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the body is over {0} bytes, the most read to decide it")]
    TooLarge(usize),
    #[error("reading the body: {0}")]
    Read(BoxError),
}

/// A body's bytes, up to `limit`; on an error, what is left of `body` is still the caller's
/// to drain.
pub async fn whole(body: &mut Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Read)?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge(limit));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

/// The first gRPC message of a body, with its prefix, as far as the body goes, and the body
/// to send on: the same bytes, then the rest of the call as it streams.
async fn first_grpc_message(mut body: Body) -> Result<(Body, Bytes), ReadError> {
    let mut first = BytesMut::new();
    let mut held = None;
    loop {
        if let Some(end) = sink::grpc_first_message_len(&first) {
            if end - 5 > sink::MAX_GRPC_MESSAGE {
                return Err(ReadError::TooLarge(sink::MAX_GRPC_MESSAGE));
            }
            if first.len() >= end {
                break;
            }
        }
        let Some(frame) = body.frame().await else {
            break;
        };
        match frame.map_err(ReadError::Read)?.into_data() {
            Ok(data) => first.extend_from_slice(&data),
            // Trailers end the body: the message is as far as it came.
            Err(trailers) => {
                held = Some(trailers);
                break;
            }
        }
    }
    let first = first.freeze();
    let mut replay = vec![http_body::Frame::data(first.clone())];
    replay.extend(held);
    Ok((boxed(Replayed { replay, rest: body }), first))
}

/// Frames already read, then the rest of the body.
struct Replayed {
    replay: Vec<http_body::Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if !self.replay.is_empty() {
            let frame = self.replay.remove(0);
            return std::task::Poll::Ready(Some(Ok(frame)));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.replay.is_empty() && self.rest.is_end_stream()
    }
}

/// The record of a code-host REST call that moves refs: a `git` record of service
/// `rest:<api>`, each ref's kind where a push would give the new id.
fn rest_record(exchange: u64, change: &RestRefChange) -> Event {
    Event::Git(Git {
        exchange,
        service: format!("rest:{}", change.api),
        updates: change
            .refs
            .iter()
            .map(|r| RefUpdate {
                old: String::new(),
                new: format!("{:?}", r.kind).to_ascii_lowercase(),
                name: r.name.clone().unwrap_or_else(|| {
                    format!("(not named: {})", r.why.as_deref().unwrap_or("unknown"))
                }),
            })
            .collect(),
        wants: Vec::new(),
    })
}
