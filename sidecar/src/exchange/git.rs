//! The git stage: a push's ref updates are read before the push goes upstream (so they are
//! recorded, and policy can refuse a ref), and a fetch's wants are read as the request
//! streams. The parsing itself is `cassette_rules::git`.

use super::Exchange;
use super::tap::{Inspect, Inspector};
use crate::conn::ConnCtx;
use crate::http::{Body, BoxError};
use crate::proxy::Proxy;
use crate::refusal::{Cause, Refusal};
use bytes::Bytes;
use cassette_recording::record::{Event, Git, RefUpdate};
use cassette_rules::git::{
    GitService, Phase, Progress, ReceivePackParser, ReceivePackRequest, UploadPackParser,
};
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The most a push's command list may take before its pack starts.
const MAX_COMMANDS: usize = 1024 * 1024;

/// Why a push's command list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the push request is not valid git: {0}")]
    Invalid(cassette_rules::git::GitError),
    #[error("the push's command list is longer than {MAX_COMMANDS} bytes")]
    TooLong,
    #[error("reading the push request: {0}")]
    Read(BoxError),
}

/// Read what git asks of the request body: a push's commands before anything goes upstream
/// (returned, and recorded), a fetch's wants as the body streams (recorded at its end).
/// `encoding` is the request's Content-Encoding.
pub async fn inspect(
    conn: &ConnCtx,
    ex: &Exchange,
    encoding: Option<&str>,
    body: Body,
) -> Result<(Body, Option<ReceivePackRequest>), Refusal> {
    let rpc = ex.classified.git.as_ref().filter(|g| g.phase == Phase::Rpc);
    match rpc.map(|g| g.service) {
        Some(GitService::ReceivePack) if encoding.is_none() => match read_push(body).await {
            Ok((rest, request)) => {
                conn.proxy.recording.emit(push_record(ex.id, &request));
                Ok((rest, Some(request)))
            }
            Err(e) => Err(Refusal::new(
                Cause::Git,
                StatusCode::BAD_REQUEST,
                format!("{e}; the push was refused and recorded"),
            )),
        },
        Some(GitService::UploadPack) => match FetchInspector::new(ex.id, encoding) {
            Some(inspector) => {
                let body = Inspect::new(body, Box::new(inspector), conn.proxy.clone());
                Ok((http_body_util::BodyExt::boxed(body), None))
            }
            None => Ok((body, None)),
        },
        _ => Ok((body, None)),
    }
}

/// Read a `git-receive-pack` body up to the end of its command list. Returns the bytes read
/// (to be sent upstream first), the rest of the body, and the commands.
async fn read_push(mut body: Body) -> Result<(Body, ReceivePackRequest), PushError> {
    let mut parser = ReceivePackParser::new();
    let mut prefix = VecDeque::new();
    let mut read = 0usize;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                read += data.len();
                let progress = parser.feed(&data).map_err(PushError::Invalid)?;
                prefix.push_back(data);
                if progress == Progress::Complete {
                    break;
                }
                if read > MAX_COMMANDS {
                    return Err(PushError::TooLong);
                }
            }
            Some(Err(e)) => return Err(PushError::Read(e)),
            None => break,
        }
    }
    let request = parser.finish().map_err(PushError::Invalid)?;
    Ok((
        Prefixed {
            prefix,
            inner: body,
        }
        .boxed(),
        request,
    ))
}

/// The record of a push's ref updates.
fn push_record(exchange: u64, request: &ReceivePackRequest) -> Event {
    Event::Git(Git {
        exchange,
        service: "receive-pack".into(),
        updates: request
            .updates
            .iter()
            .map(|u| RefUpdate {
                old: u.old.clone(),
                new: u.new.clone(),
                name: u.name.clone(),
            })
            .collect(),
        wants: Vec::new(),
    })
}

/// Bytes already read, then the rest of the body.
struct Prefixed {
    prefix: VecDeque<Bytes>,
    inner: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + buffered);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

/// Reads a fetch's wants as the request streams, and records them at its end.
struct FetchInspector {
    exchange: u64,
    parser: Option<UploadPackParser>,
}

impl FetchInspector {
    /// `None` when the body is compressed: git gzips large negotiations, and the wants are
    /// then left out rather than guessed.
    fn new(exchange: u64, content_encoding: Option<&str>) -> Option<Self> {
        if content_encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
            return None;
        }
        Some(Self {
            exchange,
            parser: Some(UploadPackParser::new()),
        })
    }
}

impl Inspector for FetchInspector {
    fn data(&mut self, chunk: &[u8]) {
        if let Some(parser) = &mut self.parser
            && parser.feed(chunk).is_err()
        {
            // Not pkt-lines after all: stop reading rather than record nonsense.
            self.parser = None;
        }
    }

    fn end(&mut self, proxy: &Proxy) {
        if let Some(parser) = self.parser.take() {
            let request = parser.finish();
            let mut wants = request.wants;
            wants.extend(request.want_refs);
            proxy.recording.emit(Event::Git(Git {
                exchange: self.exchange,
                service: "upload-pack".into(),
                updates: Vec::new(),
                wants,
            }));
        }
    }
}
