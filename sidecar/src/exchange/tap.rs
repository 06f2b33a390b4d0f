//! Bodies recorded as they stream: each data frame is handed to the recording before it is
//! passed on, so nothing is buffered whole and nothing passes unrecorded. The response side
//! also ends the exchange (`exchange_end`) when its body ends.

use super::Exchange;
use super::ledger::Ledger;
use crate::conn::ConnCtx;
use crate::http::{Body, BoxError, header_str};
use crate::metrics::DirectionLabels;
use crate::proxy::Proxy;
use crate::record::{BodyRecorder, masked_headers};
use bytes::Bytes;
use cassette_recording::record::Direction;
use cassette_rules::mask::{BodyKind, byte_fields};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// The request body, recorded (masked) as it streams, whatever happens next. `encoding` is
/// its Content-Encoding, undone for the recording only.
pub fn request(
    conn: &ConnCtx,
    ex: &Exchange,
    headers: &HeaderMap,
    encoding: Option<&str>,
    body: Body,
) -> Body {
    let proxy = &conn.proxy;
    let kind = BodyKind::from_content_type(header_str(headers, &http::header::CONTENT_TYPE));
    let recorder = if super::git::carries_pack(ex, Direction::Request) {
        proxy.recording.pack_body(ex.id, Direction::Request)
    } else {
        let recorder = proxy.recording.body(
            ex.id,
            Direction::Request,
            Some((proxy.session.current().masker, kind)),
            encoding,
        );
        match &ex.classified.google {
            Some(g) => recorder.with_byte_fields(byte_fields(g, false)),
            None => recorder,
        }
    };
    let mut tap = Tap::new(
        body,
        recorder,
        proxy.clone(),
        ex.ledger.clone(),
        Side::Request,
    );
    tap.placeholders = PlaceholderWatch::new(conn, ex);
    tap.boxed()
}

/// The brokered placeholders looked for in a request body, which the sidecar never swaps: one
/// found there goes as it is and is recorded (the credentials stage does headers and target).
/// The bytes are looked at as sent: a compressed body's placeholder is not seen.
pub struct PlaceholderWatch {
    scan: cassette_rules::credential::PlaceholderScan,
    names: Vec<String>,
    exchange: u64,
    host: String,
}

impl PlaceholderWatch {
    fn new(conn: &ConnCtx, ex: &Exchange) -> Option<Self> {
        let entries = conn.proxy.brokered.entries();
        let placeholders: Vec<&str> = entries.iter().map(|e| e.placeholder.as_str()).collect();
        Some(Self {
            scan: cassette_rules::credential::PlaceholderScan::new(&placeholders)?,
            names: entries.iter().map(|e| e.name.clone()).collect(),
            exchange: ex.id,
            host: conn.route.display_host(),
        })
    }

    fn feed(&mut self, proxy: &Proxy, chunk: &[u8]) {
        for i in self.scan.feed(chunk) {
            let credential = self.names[i].clone();
            proxy
                .metrics()
                .placeholder_leaks
                .get_or_create(&crate::metrics::CredentialLabels {
                    credential: credential.clone(),
                })
                .inc();
            tracing::warn!(%credential, host = %self.host, "a brokered credential's placeholder went in a request body");
            proxy
                .recording
                .emit(cassette_recording::record::Event::Placeholder(
                    cassette_recording::record::Placeholder {
                        exchange: self.exchange,
                        credential,
                        host: self.host.clone(),
                        note: format!(
                            "placeholder sent to {}: it was in the request body",
                            self.host
                        ),
                    },
                ));
        }
    }
}

/// Which body a tap records.
pub enum Side {
    /// The request's: counts bytes up.
    Request,
    /// The response's: ends the exchange, and counts the connection's bytes.
    Response(Arc<ConnCtx>),
}

/// A body that records what passes through it.
pub struct Tap {
    inner: Body,
    recorder: BodyRecorder,
    proxy: Arc<Proxy>,
    ledger: Ledger,
    side: Side,
    bytes: u64,
    done: bool,
    /// Request bodies only, when the pod has brokered credentials.
    placeholders: Option<PlaceholderWatch>,
}

impl Tap {
    pub fn new(
        inner: Body,
        recorder: BodyRecorder,
        proxy: Arc<Proxy>,
        ledger: Ledger,
        side: Side,
    ) -> Self {
        Self {
            inner,
            recorder,
            proxy,
            ledger,
            side,
            bytes: 0,
            done: false,
            placeholders: None,
        }
    }

    fn finish(&mut self, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        let masked = self.recorder.finish();
        self.ledger.add_masks(&self.proxy, masked);
        let direction = self.direction();
        self.proxy
            .metrics()
            .bytes
            .get_or_create(&DirectionLabels { direction })
            .inc_by(self.bytes);
        if let Side::Response(ctx) = &self.side {
            ctx.add_bytes(self.ledger.bytes_up(), self.bytes);
            self.ledger.end(&self.proxy, self.bytes, error);
        }
    }
}

impl Tap {
    /// Cut the exchange here: say what passed (the gap is written as soon as the recording
    /// takes records again) and end the exchange with why.
    fn cut(&mut self, why: &str) -> String {
        let direction = self.direction();
        let passed = self.bytes;
        let recorded = self.recorder.recorded();
        self.proxy.recording.cut(cassette_recording::record::Gap {
            lost: format!(
                "exchange {}: the {direction} body past byte {passed}",
                self.ledger.exchange()
            ),
            reason: format!(
                "its next bytes could not be recorded ({why}); onFailure is closed, so the exchange was cut there: bytes 0..{passed} passed (0..{recorded} are recorded; the rest was held by the masker when the recording stopped taking records), none after"
            ),
            records: None,
            bytes: None,
            from: None,
            to: None,
        });
        let message = format!(
            "the {direction} body could not be recorded past byte {passed}; the exchange was \
             cut, as the session's onFailure: closed asks — the sidecar's log and the \
             AgentSession's status say why its recording fails"
        );
        self.finish(Some(message.clone()));
        message
    }

    fn direction(&self) -> &'static str {
        match self.side {
            Side::Request => "request",
            Side::Response(_) => "response",
        }
    }
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    // onFailure: closed — bytes that cannot be recorded do not pass: the body
                    // fails, which closes the HTTP/1.1 connection or resets the HTTP/2
                    // stream, before they are forwarded.
                    let refused = if this.proxy.recording.accepting() {
                        this.recorder.push(data).err().map(|e| e.to_string())
                    } else {
                        Some("the recording takes no more records".to_string())
                    };
                    if let Some(why) = refused {
                        return Poll::Ready(Some(Err(this.cut(&why).into())));
                    }
                    this.bytes += data.len() as u64;
                    if let Some(watch) = this.placeholders.as_mut() {
                        watch.feed(&this.proxy, data);
                    }
                    if let Side::Request = this.side {
                        this.ledger.add_bytes_up(data.len() as u64);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    // Trailers carry what headers carry (tokens, signatures): masked alike.
                    let (recorded, masks) =
                        masked_headers(trailers, this.proxy.session.current().masker);
                    this.ledger.add_masks(&this.proxy, masks);
                    match this.side {
                        Side::Request => this.ledger.set_request_trailers(recorded),
                        Side::Response(_) => this.ledger.set_trailers(recorded),
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(Some(format!("the body failed: {e}")));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish(None);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish(None);
        } else {
            self.finish(Some("the body was abandoned before its end".into()));
        }
    }
}

/// Something that reads a body as it passes (git request parsing), and may record what it
/// understood when the body ends.
pub trait Inspector: Send + Sync {
    fn data(&mut self, chunk: &[u8]);
    fn end(&mut self, proxy: &Proxy);
}

/// A body read by an [`Inspector`] as it passes.
pub struct Inspect {
    inner: Body,
    inspector: Option<Box<dyn Inspector>>,
    proxy: Arc<Proxy>,
}

impl Inspect {
    pub fn new(inner: Body, inspector: Box<dyn Inspector>, proxy: Arc<Proxy>) -> Self {
        Self {
            inner,
            inspector: Some(inspector),
            proxy,
        }
    }

    fn end(&mut self) {
        if let Some(mut inspector) = self.inspector.take() {
            inspector.end(&self.proxy);
        }
    }
}

impl HttpBody for Inspect {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(inspector)) = (f.data_ref(), &mut this.inspector) {
                    inspector.data(data);
                }
            }
            Some(Err(_)) | None => this.end(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Inspect {
    fn drop(&mut self) {
        self.end();
    }
}
