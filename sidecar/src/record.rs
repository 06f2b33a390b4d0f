//! The sidecar's side of the recording: turns what the data path sees into records of
//! `cassette-recording`, and counts what the AgentSession status reports.
//!
//! Request heads go through [`Recorder::request`], which waits for the record to be on disk
//! when the session's durability is `strict`, and fails when the recording has failed closed
//! (the caller then refuses the request). Everything else is handed over without waiting.

use crate::decode::Decoder;
use crate::metadata::Served;
use bytes::Bytes;
use cassette_recording::body::BodyEncoder;
use cassette_recording::record::{Classification, Direction, Event, Header};
use cassette_rules::mask::{BodyKind, MaskStream, Masker};
use http::HeaderMap;
use ring::hmac;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where records go: the recording crate's writer.
pub trait EventSink: Send + Sync + 'static {
    /// Append a record without waiting for an fsync. An error means it was not recorded
    /// (the spool is full and the session fails closed).
    fn emit(&self, event: Event) -> Result<(), String>;
    /// Hand a record over and wait until it is durable; an error means it was not recorded
    /// and the traffic it describes must not pass.
    fn durable(
        &self,
        event: Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Counts for the AgentSession status.
#[derive(Default)]
pub struct Counts {
    pub exchanges: AtomicU64,
    pub blocked: AtomicU64,
    pub masked: AtomicU64,
}

/// A cheap handle on the recording.
#[derive(Clone)]
pub struct Recorder {
    sink: Arc<dyn EventSink>,
    strict: bool,
    max_body_bytes: u64,
    digest_key: Arc<hmac::Key>,
    account: Option<String>,
    next_exchange: Arc<AtomicU64>,
    pub counts: Arc<Counts>,
}

impl Recorder {
    pub fn new(
        sink: Arc<dyn EventSink>,
        strict: bool,
        max_body_bytes: u64,
        digest_key: hmac::Key,
        account: Option<String>,
    ) -> Self {
        Self {
            sink,
            strict,
            max_body_bytes,
            digest_key: Arc::new(digest_key),
            account,
            next_exchange: Arc::new(AtomicU64::new(1)),
            counts: Arc::new(Counts::default()),
        }
    }

    /// The Google service account whose tokens the sidecar uses, when known.
    pub fn account(&self) -> Option<String> {
        self.account.clone()
    }

    /// A new exchange id, unique within the recording.
    pub fn next_exchange_id(&self) -> u64 {
        self.next_exchange.fetch_add(1, Ordering::Relaxed)
    }

    /// Record without waiting for an fsync. A failure is logged: the traffic it describes
    /// is refused at its next request head, which goes through [`Recorder::request`].
    pub fn emit(&self, event: Event) {
        // Audit-mode records say what *would* have been refused: not counted as blocked.
        if let Event::Blocked(b) = &event
            && b.reason != "audit"
        {
            self.counts.blocked.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = self.sink.emit(event) {
            tracing::error!(error = %e, "a record could not be written");
        }
    }

    /// Record a request head before it goes upstream: durable first under `strict`.
    pub async fn request(&self, event: Event) -> Result<(), String> {
        if self.strict {
            self.sink.durable(event).await
        } else {
            self.sink.emit(event)
        }
    }

    /// An exchange ended.
    /// An exchange ended (refusals are counted where their `blocked` record is emitted).
    pub fn exchange_done(&self, masked: u64) {
        self.counts.exchanges.fetch_add(1, Ordering::Relaxed);
        self.counts.masked.fetch_add(masked, Ordering::Relaxed);
    }

    /// A recorder for one body, masking what it records with `mask` (the session's masker
    /// and the kind of body).
    pub fn body(
        &self,
        exchange: u64,
        direction: Direction,
        mask: Option<(&'static Masker, BodyKind)>,
        content_encoding: Option<&str>,
    ) -> BodyRecorder {
        BodyRecorder {
            decoder: Decoder::for_encoding(content_encoding),
            encoder: Some(BodyEncoder::new(
                exchange,
                direction,
                self.max_body_bytes,
                &self.digest_key,
            )),
            mask: mask.map(|(masker, kind)| masker.stream(kind)),
            recorder: self.clone(),
        }
    }
}

/// Records one body as it streams, masked.
pub struct BodyRecorder {
    /// Content-Encoding undone for the recording (the wire keeps it).
    decoder: Option<Decoder>,
    encoder: Option<BodyEncoder>,
    mask: Option<MaskStream<'static>>,
    recorder: Recorder,
}

impl BodyRecorder {
    pub fn push(&mut self, chunk: &Bytes) {
        let decoded;
        let chunk: &[u8] = match &mut self.decoder {
            Some(decoder) => match decoder.feed(chunk) {
                Ok(bytes) => {
                    decoded = bytes;
                    &decoded
                }
                Err(e) => {
                    // Record the rest as the bytes they are.
                    tracing::warn!(error = %e, "recording the body undecoded from here on");
                    self.decoder = None;
                    chunk
                }
            },
            None => chunk,
        };
        let Some(encoder) = &mut self.encoder else {
            return;
        };
        let pieces = match &mut self.mask {
            Some(mask) => {
                let mut out = Vec::with_capacity(chunk.len());
                mask.feed(chunk, &mut out);
                encoder.push(&out)
            }
            None => encoder.push(chunk),
        };
        for body in pieces {
            self.recorder.emit(Event::Body(body));
        }
    }

    /// End the body; returns the masks per detector.
    pub fn finish(&mut self) -> BTreeMap<String, u64> {
        let Some(mut encoder) = self.encoder.take() else {
            return BTreeMap::new();
        };
        if let Some(decoder) = self.decoder.take() {
            match decoder.finish() {
                Ok(tail) => {
                    let pieces = match &mut self.mask {
                        Some(mask) => {
                            let mut out = Vec::new();
                            mask.feed(&tail, &mut out);
                            encoder.push(&out)
                        }
                        None => encoder.push(&tail),
                    };
                    for body in pieces {
                        self.recorder.emit(Event::Body(body));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the body's encoding ended badly"),
            }
        }
        let mut counts = BTreeMap::new();
        if let Some(mask) = self.mask.take() {
            let mut out = Vec::new();
            let summary = mask.finish(&mut out);
            for body in encoder.push(&out) {
                self.recorder.emit(Event::Body(body));
            }
            counts = summary.counts;
        }
        for body in encoder.finish() {
            self.recorder.emit(Event::Body(body));
        }
        counts
    }
}

impl Drop for BodyRecorder {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Headers as recorded, in order, without masking (for what the sidecar itself produced).
pub fn headers(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Headers as recorded, with credentials and secrets masked; also the masks per detector.
pub fn masked_headers(map: &HeaderMap, masker: &Masker) -> (Vec<Header>, BTreeMap<String, u64>) {
    let mut counts = BTreeMap::new();
    let headers = map
        .iter()
        .map(|(name, value)| {
            let value = match masker.mask_header(name.as_str(), value.as_bytes()) {
                Some((masked, summary)) => {
                    for (detector, n) in summary.counts {
                        *counts.entry(detector).or_insert(0) += n;
                    }
                    String::from_utf8_lossy(&masked).into_owned()
                }
                None => String::from_utf8_lossy(value.as_bytes()).into_owned(),
            };
            (name.as_str().to_string(), value)
        })
        .collect();
    (headers, counts)
}

/// What an exchange is, as far as its request line tells: the Google service and
/// permission, and the git service.
pub fn classify(
    authority: &str,
    method: &http::Method,
    target: &str,
    headers: &HeaderMap,
) -> Option<Classification> {
    use cassette_rules::classify::{HttpRequest, classify};
    use cassette_rules::git::{GitService, smart_http};
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request = HttpRequest::from_target(authority, method.as_str(), target, content_type);
    let google = classify(&request);
    let git = smart_http(method.as_str(), request.path, request.query);
    if google.is_none() && git.is_none() {
        return None;
    }
    Some(Classification {
        service: google.as_ref().map(|g| g.service.clone()),
        permission: google.and_then(|g| g.permission),
        git_service: git.map(|g| {
            match g.service {
                GitService::UploadPack => "upload-pack",
                GitService::ReceivePack => "receive-pack",
            }
            .to_string()
        }),
    })
}

/// One request the metadata shim answered.
pub struct MetadataExchange<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub request_headers: Vec<Header>,
    pub status: u16,
    pub response_headers: Vec<Header>,
    pub body: &'a [u8],
    pub served: &'a Served,
    /// How long the shim took to answer (a token may come from the real metadata server).
    pub elapsed: std::time::Duration,
}

/// Record one request the metadata shim answered: the agent asking for identity facts or a
/// token is part of what it did, and what it was told (a placeholder) is part of what it saw.
pub fn metadata_request(recorder: &Recorder, exchange: MetadataExchange<'_>) {
    use cassette_recording::record::{Blocked, Decision, ExchangeEnd, Request, Response, Timings};
    let id = recorder.next_exchange_id();
    recorder.emit(Event::Request(Request {
        exchange: id,
        conn: 0,
        method: exchange.method.to_string(),
        scheme: "http".into(),
        authority: "metadata.google.internal".into(),
        path: exchange.path.to_string(),
        version: "HTTP/1.1".into(),
        headers: exchange.request_headers,
    }));
    recorder.body(id, Direction::Request, None, None).finish();
    recorder.emit(Event::Response(Response {
        exchange: id,
        status: exchange.status,
        version: "HTTP/1.1".into(),
        headers: exchange.response_headers,
        trailers: None,
    }));
    let mut body = recorder.body(id, Direction::Response, None, None);
    body.push(&Bytes::copy_from_slice(exchange.body));
    body.finish();
    let decision = match exchange.served {
        Served::Refused(why) => {
            recorder.emit(Event::Blocked(Blocked {
                exchange: Some(id),
                reason: "metadata".into(),
                rule: None,
                message: format!("metadata request {} refused: {why}", exchange.path),
            }));
            Decision::Deny
        }
        _ => Decision::Allow,
    };
    recorder.exchange_done(0);
    let elapsed_us = exchange.elapsed.as_micros() as u64;
    recorder.emit(Event::ExchangeEnd(ExchangeEnd {
        exchange: id,
        // The shim is the sidecar: all of the time is its own.
        timings: Timings {
            total_us: elapsed_us,
            sidecar_us: Some(elapsed_us),
            ..Timings::default()
        },
        bytes_up: 0,
        bytes_down: exchange.body.len() as u64,
        decision,
        rule: None,
        classification: Some(Classification {
            service: Some("metadata".into()),
            permission: None,
            git_service: None,
        }),
        masked: 0,
        masked_by: Default::default(),
        error: None,
        trailers: None,
    }));
}
