//! Bodies recorded as they stream: each data frame is handed to the recording before it is
//! passed on, so nothing is buffered whole and nothing passes unrecorded. The response side
//! also closes the exchange (`exchange_end`) when its body ends.

use crate::forward::{BoxError, ConnCtx};
use crate::metrics::{DirectionLabels, ExchangeLabels};
use crate::proxy::Proxy;
use crate::record::BodyRecorder;
use bytes::Bytes;
use cassette_recording::record::{Classification, Decision, Event, ExchangeEnd, Timings};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

/// Masks counted per detector, shared by the parts of one exchange.
#[derive(Clone, Default)]
pub struct Masks(Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>);

impl Masks {
    /// Count masks (and export them as metrics).
    pub fn add(&self, proxy: &Proxy, counts: std::collections::BTreeMap<String, u64>) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (detector, n) in counts {
            proxy
                .metrics
                .masked
                .get_or_create(&crate::metrics::DetectorLabels {
                    detector: detector.clone(),
                })
                .inc_by(n);
            *all.entry(detector).or_insert(0) += n;
        }
    }

    fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What `exchange_end` will say, gathered while the exchange runs.
pub struct ExchangeEndState {
    exchange: u64,
    started: Instant,
    classification: Option<Classification>,
    sidecar: Duration,
    ttfb: Option<Duration>,
    /// Request body bytes, counted by the request's tap.
    pub bytes_up: Arc<AtomicU64>,
    pub decision: Decision,
    pub rule: Option<String>,
    /// Secrets masked in this exchange (headers and both bodies), per detector.
    pub masked: Masks,
    trailers: Option<Vec<cassette_recording::record::Header>>,
    done: bool,
}

impl ExchangeEndState {
    /// The exchange this state belongs to.
    pub fn exchange(&self) -> u64 {
        self.exchange
    }

    pub fn new(exchange: u64, started: Instant, classification: Option<Classification>) -> Self {
        Self {
            exchange,
            started,
            classification,
            sidecar: Duration::ZERO,
            ttfb: None,
            bytes_up: Arc::new(AtomicU64::new(0)),
            decision: Decision::Allow,
            rule: None,
            masked: Masks::default(),
            trailers: None,
            done: false,
        }
    }

    /// Time spent before the request went upstream.
    pub fn set_sidecar_before(&mut self, d: Duration) {
        self.sidecar = d;
    }

    /// Time spent after the response head arrived.
    pub fn add_sidecar(&mut self, d: Duration) {
        self.sidecar += d;
    }

    pub fn set_ttfb(&mut self, d: Duration) {
        self.ttfb = Some(d);
    }

    /// The exchange ended without a normal response.
    pub fn fail(&mut self, proxy: &Proxy, decision: Decision, error: &str) {
        self.decision = decision;
        self.sidecar = self.started.elapsed();
        self.emit(proxy, 0, Some(error.to_string()));
    }

    /// An upgraded connection (websocket) ended after carrying `up`/`down` bytes.
    pub fn tunnel(&mut self, proxy: &Proxy, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.emit(proxy, down, None);
    }

    fn emit(&mut self, proxy: &Proxy, bytes_down: u64, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        let total = self.started.elapsed();
        let decision = self.decision;
        let service = self
            .classification
            .as_ref()
            .and_then(|c| {
                c.service
                    .clone()
                    .or_else(|| c.git_service.as_ref().map(|_| "git".into()))
            })
            .unwrap_or_else(|| "other".into());
        proxy
            .metrics
            .exchanges
            .get_or_create(&ExchangeLabels {
                service,
                decision: format!("{decision:?}").to_ascii_lowercase(),
            })
            .inc();
        proxy
            .metrics
            .added_latency
            .observe(self.sidecar.as_secs_f64());
        let masked_by = self.masked.snapshot();
        let masked = masked_by.values().sum();
        proxy.recorder.exchange_done(masked);
        proxy.recorder.emit(Event::ExchangeEnd(ExchangeEnd {
            exchange: self.exchange,
            timings: Timings {
                connect_us: None,
                tls_us: None,
                request_sent_us: None,
                ttfb_us: self.ttfb.map(|d| d.as_micros() as u64),
                total_us: total.as_micros() as u64,
                sidecar_us: Some(self.sidecar.as_micros() as u64),
            },
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down,
            decision,
            rule: self.rule.clone(),
            classification: self.classification.clone(),
            masked,
            masked_by,
            error,
            trailers: self.trailers.take(),
        }));
    }
}

/// Something that reads a body as it passes (git request parsing), and may record what it
/// understood when the body ends.
pub trait Inspector: Send + Sync {
    fn data(&mut self, chunk: &[u8]);
    fn end(&mut self, proxy: &Proxy);
}

/// A body that records what passes through it.
pub struct Tap {
    inner: crate::forward::Body,
    recorder: BodyRecorder,
    proxy: Arc<Proxy>,
    counter: Arc<AtomicU64>,
    masked: Masks,
    /// The response side ends the exchange.
    end: Option<(ExchangeEndState, Arc<ConnCtx>)>,
    bytes: u64,
    done: bool,
}

impl Tap {
    pub fn new(
        inner: crate::forward::Body,
        recorder: BodyRecorder,
        proxy: Arc<Proxy>,
        counter: Arc<AtomicU64>,
        masked: Masks,
        end: Option<(ExchangeEndState, Arc<ConnCtx>)>,
    ) -> Self {
        Self {
            inner,
            recorder,
            proxy,
            counter,
            masked,
            end,
            bytes: 0,
            done: false,
        }
    }

    fn finish(&mut self, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        let masked = self.recorder.finish();
        self.masked.add(&self.proxy, masked);
        let direction = if self.end.is_some() {
            "response"
        } else {
            "request"
        };
        self.proxy
            .metrics
            .bytes
            .get_or_create(&DirectionLabels { direction })
            .inc_by(self.bytes);
        if let Some((mut end, ctx)) = self.end.take() {
            let up = end.bytes_up.load(Ordering::Relaxed);
            ctx.add_bytes(up, self.bytes);
            end.emit(&self.proxy, self.bytes, error);
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
                    this.recorder.push(data);
                    this.bytes += data.len() as u64;
                    this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some((end, _)) = &mut this.end
                {
                    end.trailers = Some(crate::record::headers(trailers));
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

/// A body read by an [`Inspector`] as it passes.
pub struct Inspect {
    inner: crate::forward::Body,
    inspector: Option<Box<dyn Inspector>>,
    proxy: Arc<Proxy>,
}

impl Inspect {
    pub fn new(
        inner: crate::forward::Body,
        inspector: Box<dyn Inspector>,
        proxy: Arc<Proxy>,
    ) -> Self {
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
