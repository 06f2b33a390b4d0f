//! The git stage: a push's ref updates are read before the push goes upstream (so they are
//! recorded, and policy can refuse a ref), and a fetch's wants are read as the request
//! streams. The parsing itself is `cassette_rules::git`.

use super::Exchange;
use super::tap::{Inspect, Inspector};
use crate::conn::ConnCtx;
use crate::http::{Body, BoxError};
use crate::proxy::Proxy;
use crate::record::Decoder;
use crate::refusal::{Cause, Refusal};
use bytes::Bytes;
use cassette_recording::record::{
    Direction, Event, Git, GitCommit, GitDelta, GitMask, GitObject, GitPack, GitPathMask, GitTag,
    GitTreeEntry, RefUpdate,
};
use cassette_rules::git::{
    GitService, Packet, Phase, PktLineDecoder, Progress, ReceivePackParser, ReceivePackRequest,
    UploadPackParser,
};
use cassette_rules::pack::{
    FetchResponse, ObjectFormat, PackLimits, PackObject, PackReader, PackSummary, Storage,
};
use cassette_rules::path::normalize_path;
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
    #[error("{0}")]
    Decode(crate::record::DecodeError),
}

/// Read what git asks of the request body: a push's commands before anything goes upstream
/// (returned, and recorded), its pack's objects as it streams, a fetch's wants as the body
/// streams (recorded at its end). `encoding` is the request's Content-Encoding, undone for
/// reading. Under a session with gitRef rules, a push that cannot be read — an encoding the
/// recorder does not decode, a path servers read two ways — is refused: its refs could not be
/// checked.
pub async fn inspect(
    conn: &ConnCtx,
    ex: &Exchange,
    encoding: Option<&str>,
    body: Body,
) -> Result<(Body, Option<ReceivePackRequest>), Refusal> {
    let proxy = &conn.proxy;
    let guards_refs = proxy.session.current().evaluator.guards_refs();
    let unreadable = |why: String| {
        Refusal::new(
            Cause::Git,
            StatusCode::BAD_REQUEST,
            format!(
                "{why}; the push was refused and recorded, because the session protects refs (gitRef rules) and its refs could not be read"
            ),
        )
    };
    let rpc = ex.classified.git.as_ref().filter(|g| g.phase == Phase::Rpc);
    match rpc.map(|g| g.service) {
        Some(GitService::ReceivePack) => {
            if guards_refs && normalize_path(ex.path()).is_ambiguous() {
                return Err(unreadable(format!(
                    "the push's path {:?} is spelt so that servers read it two ways",
                    ex.shown_target
                )));
            }
            let decoder = match Decoder::for_encoding(encoding, MAX_COMMANDS as u64) {
                Ok(decoder) => decoder,
                Err(e) if guards_refs => return Err(unreadable(e.to_string())),
                // Nothing depends on its refs: it goes on, recorded as sent.
                Err(_) => return Ok((body, None)),
            };
            match read_push(body, decoder).await {
                Ok((rest, request)) => {
                    proxy.recording.emit(push_record(ex.id, &request));
                    let pack = PackInspector::push(proxy, ex, encoding, &request);
                    let body = Inspect::new(rest, Box::new(pack), proxy.clone()).boxed();
                    Ok((body, Some(request)))
                }
                Err(e) => Err(Refusal::new(
                    Cause::Git,
                    StatusCode::BAD_REQUEST,
                    format!("{e}; the push was refused and recorded"),
                )),
            }
        }
        Some(GitService::UploadPack) => match FetchInspector::new(ex.id, encoding) {
            Some(inspector) => {
                let body = Inspect::new(body, Box::new(inspector), proxy.clone());
                Ok((http_body_util::BodyExt::boxed(body), None))
            }
            None => Ok((body, None)),
        },
        _ => Ok((body, None)),
    }
}

/// Whether an exchange's body in `direction` is a git pack (a push's request, a fetch's
/// response): such bodies are recorded by their objects, not their bytes.
pub fn carries_pack(ex: &Exchange, direction: Direction) -> bool {
    ex.classified.git.as_ref().is_some_and(|g| {
        g.phase == Phase::Rpc
            && match direction {
                Direction::Request => g.service == GitService::ReceivePack,
                Direction::Response => g.service == GitService::UploadPack,
            }
    })
}

/// The response body of a fetch, read for its pack's objects as it streams back.
pub fn inspect_fetch(conn: &ConnCtx, ex: &Exchange, encoding: Option<&str>, body: Body) -> Body {
    let pack = PackInspector::fetch(&conn.proxy, ex, encoding);
    Inspect::new(body, Box::new(pack), conn.proxy.clone()).boxed()
}

/// Read a `git-receive-pack` body up to the end of its command list (decoded with `decoder`
/// when it has a Content-Encoding). Returns the bytes read (to be sent upstream first, as
/// they came), the rest of the body, and the commands.
async fn read_push(
    mut body: Body,
    mut decoder: Option<Decoder>,
) -> Result<(Body, ReceivePackRequest), PushError> {
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
                let plain = match &mut decoder {
                    Some(d) => std::borrow::Cow::Owned(d.feed(&data).map_err(PushError::Decode)?),
                    None => std::borrow::Cow::Borrowed(&data[..]),
                };
                let progress = parser.feed(&plain).map_err(PushError::Invalid)?;
                prefix.push_back(data);
                if progress == Progress::Complete {
                    break;
                }
                if read > MAX_COMMANDS || decoder.as_ref().is_some_and(|d| d.stopped_at().is_some())
                {
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

/// The most of a fetch's negotiation that is read.
const MAX_NEGOTIATION: u64 = 16 * 1024 * 1024;

/// Reads a fetch's wants as the request streams, and records them at its end.
struct FetchInspector {
    exchange: u64,
    decoder: Option<Decoder>,
    parser: Option<UploadPackParser>,
}

impl FetchInspector {
    /// git gzips large negotiations: the body is decoded for reading. `None` when its
    /// encoding is not one the recorder decodes (the wants are then left out, not guessed).
    fn new(exchange: u64, content_encoding: Option<&str>) -> Option<Self> {
        let decoder = Decoder::for_encoding(content_encoding, MAX_NEGOTIATION).ok()?;
        Some(Self {
            exchange,
            decoder,
            parser: Some(UploadPackParser::new()),
        })
    }
}

impl Inspector for FetchInspector {
    fn data(&mut self, chunk: &[u8]) {
        let plain = match &mut self.decoder {
            Some(d) => match d.feed(chunk) {
                Ok(plain) => plain,
                Err(_) => {
                    self.parser = None;
                    return;
                }
            },
            None => chunk.to_vec(),
        };
        if let Some(parser) = &mut self.parser
            && parser.feed(&plain).is_err()
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

/// The most of a pack that is decoded (its Content-Encoding) and read; what follows is still
/// passed on, digested, and the `git_pack` record says where reading stopped.
const MAX_PACK: u64 = 1 << 30;

/// Where the pack starts in a body.
enum Framing {
    /// A push: pkt-lines (commands, push options, a certificate) until `PACK`.
    Push(PktLineDecoder),
    /// A fetch's response: acknowledgements and side-band channel 1.
    Fetch(FetchResponse),
    /// Inside the pack.
    Pack,
}

/// Reads a pushed or fetched pack as it streams and records each object (`git_object`) and,
/// at its end, what the pack held (`git_pack`): which commit and file carried each secret.
/// The pack's bytes themselves are not stored.
struct PackInspector {
    exchange: u64,
    direction: Direction,
    recording: crate::record::Recording,
    decoder: Option<Decoder>,
    framing: Framing,
    reader: Option<PackReader<'static>>,
    /// Why reading stopped, when it did.
    error: Option<String>,
    /// Whether any pack bytes came (a delete-only push sends none).
    started: bool,
}

impl PackInspector {
    fn push(
        proxy: &Proxy,
        ex: &Exchange,
        encoding: Option<&str>,
        request: &ReceivePackRequest,
    ) -> Self {
        let format =
            ObjectFormat::from_capabilities(request.capabilities.iter().map(String::as_str));
        Self::new(
            proxy,
            ex,
            Direction::Request,
            encoding,
            Framing::Push(PktLineDecoder::default()),
            format,
        )
    }

    fn fetch(proxy: &Proxy, ex: &Exchange, encoding: Option<&str>) -> Self {
        // The fetch's object format is in the advertisement, which this exchange did not
        // carry; SHA-1 is what every server but a SHA-256 repository speaks.
        Self::new(
            proxy,
            ex,
            Direction::Response,
            encoding,
            Framing::Fetch(FetchResponse::new()),
            ObjectFormat::Sha1,
        )
    }

    fn new(
        proxy: &Proxy,
        ex: &Exchange,
        direction: Direction,
        encoding: Option<&str>,
        framing: Framing,
        format: ObjectFormat,
    ) -> Self {
        let (decoder, error) = match Decoder::for_encoding(encoding, MAX_PACK) {
            Ok(d) => (d, None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            exchange: ex.id,
            direction,
            recording: proxy.recording.clone(),
            decoder,
            framing,
            reader: error.is_none().then(|| {
                PackReader::new(
                    proxy.session.current().masker,
                    format,
                    PackLimits::default(),
                )
            }),
            error,
            started: false,
        }
    }

    fn emit(&self, objects: Vec<PackObject>) {
        for o in objects {
            self.recording.emit(Event::GitObject(git_object(
                self.exchange,
                self.direction,
                o,
            )));
        }
    }

    fn stop(&mut self, why: String) {
        self.error.get_or_insert(why);
        self.reader = None;
    }

    /// The pack bytes among `plain` (past the framing).
    fn pack_bytes(&mut self, plain: &[u8]) -> Result<Vec<u8>, String> {
        match &mut self.framing {
            Framing::Pack => Ok(plain.to_vec()),
            Framing::Fetch(f) => f
                .feed(plain)
                .map_err(|e| format!("the fetch response is not valid git: {e}")),
            Framing::Push(pkt) => {
                pkt.push(plain);
                loop {
                    if pkt.remaining().starts_with(b"PACK") {
                        let pack = pkt.remaining().to_vec();
                        self.framing = Framing::Pack;
                        return Ok(pack);
                    }
                    match pkt.next_packet() {
                        Ok(None) => return Ok(Vec::new()),
                        Ok(Some(
                            Packet::Data(_) | Packet::Flush | Packet::Delim | Packet::ResponseEnd,
                        )) => {}
                        Err(e) => {
                            return Err(format!("the push is not valid git before its pack: {e}"));
                        }
                    }
                }
            }
        }
    }
}

impl Inspector for PackInspector {
    fn data(&mut self, chunk: &[u8]) {
        if self.reader.is_none() {
            return;
        }
        let plain = match &mut self.decoder {
            Some(d) => match d.feed(chunk) {
                Ok(plain) => plain,
                Err(e) => return self.stop(e.to_string()),
            },
            None => chunk.to_vec(),
        };
        let pack = match self.pack_bytes(&plain) {
            Ok(pack) => pack,
            Err(why) => return self.stop(why),
        };
        if pack.is_empty() {
            return;
        }
        self.started = true;
        let Some(reader) = &mut self.reader else {
            return;
        };
        match reader.feed(&pack) {
            Ok(objects) => self.emit(objects),
            Err(e) => self.stop(e.to_string()),
        }
        if self
            .decoder
            .as_ref()
            .is_some_and(|d| d.stopped_at().is_some())
        {
            self.stop(format!("the pack was read up to {MAX_PACK} bytes"));
        }
    }

    fn end(&mut self, _: &Proxy) {
        let (summary, objects) = match self.reader.take() {
            Some(reader) if self.started => match reader.finish() {
                Ok((objects, summary)) => (summary, objects),
                Err(e) => {
                    self.error.get_or_insert(e.to_string());
                    (PackSummary::default(), Vec::new())
                }
            },
            // A push with no pack (it only deletes refs), or a fetch that sent none.
            Some(_) if self.error.is_none() => return,
            _ => (PackSummary::default(), Vec::new()),
        };
        self.emit(objects);
        self.recording.emit(Event::GitPack(GitPack {
            exchange: self.exchange,
            direction: self.direction,
            announced: summary.announced,
            objects: summary.objects,
            kinds: summary
                .kinds
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
            unresolved: summary.unresolved,
            checksum_ok: summary.checksum_ok,
            path_masks: summary
                .path_masks
                .into_iter()
                .map(|m| GitPathMask {
                    commit: m.commit,
                    path: m.path,
                    blob: m.blob,
                    detector: m.detector,
                    fingerprint: m.fingerprint,
                })
                .collect(),
            error: self.error.take(),
        }));
    }
}

/// An object of the pack as recorded.
fn git_object(exchange: u64, direction: Direction, o: PackObject) -> GitObject {
    GitObject {
        exchange,
        direction,
        offset: o.offset,
        kind: o.kind.map(|k| k.name().to_string()),
        id: o.id,
        size: o.size,
        delta: match o.storage {
            Storage::Whole => None,
            Storage::Delta {
                base,
                resolved,
                why,
            } => Some(GitDelta {
                base,
                resolved,
                why,
            }),
        },
        commit: o.commit.map(|c| GitCommit {
            tree: c.tree,
            parents: c.parents,
            author: c.author,
            committer: c.committer,
            message: c.message,
            signed: c.signed,
        }),
        tree: o
            .tree
            .unwrap_or_default()
            .into_iter()
            .map(|e| GitTreeEntry {
                mode: e.mode,
                name: e.name,
                id: e.id,
            })
            .collect(),
        tag: o.tag.map(|t| GitTag {
            object: t.object,
            kind: t.kind,
            name: t.name,
            tagger: t.tagger,
            message: t.message,
        }),
        masks: o
            .masks
            .into_iter()
            .map(|h| GitMask {
                detector: h.detector,
                fingerprint: h.fingerprint,
                offset: h.offset,
                len: h.len,
            })
            .collect(),
        note: o.note,
    }
}
