//! What `exchange_end` will say, gathered while the exchange runs: timings, bytes, the
//! decision, the masks counted in heads and bodies. Shared by the stages and the body taps;
//! written once, by whichever part of the exchange ends it.

use crate::metrics::{DetectorLabels, ExchangeLabels};
use crate::proxy::Proxy;
use cassette_recording::record::{Classification, Decision, Event, ExchangeEnd, Header, Timings};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The exchange's ledger. Cheap to clone; all clones are one ledger.
#[derive(Clone)]
pub struct Ledger(Arc<Inner>);

struct Inner {
    exchange: u64,
    started: Instant,
    classification: Option<Classification>,
    /// Request body bytes, counted by the request's tap.
    bytes_up: AtomicU64,
    entries: Mutex<Entries>,
}

struct Entries {
    sidecar: Duration,
    ttfb: Option<Duration>,
    decision: Decision,
    rule: Option<String>,
    masked: BTreeMap<String, u64>,
    trailers: Option<Vec<Header>>,
    request_trailers: Option<Vec<Header>>,
    done: bool,
}

impl Ledger {
    pub fn new(exchange: u64, started: Instant, classification: Option<Classification>) -> Self {
        Self(Arc::new(Inner {
            exchange,
            started,
            classification,
            bytes_up: AtomicU64::new(0),
            entries: Mutex::new(Entries {
                sidecar: Duration::ZERO,
                ttfb: None,
                decision: Decision::Allow,
                rule: None,
                masked: BTreeMap::new(),
                trailers: None,
                request_trailers: None,
                done: false,
            }),
        }))
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.0.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exchange this ledger belongs to.
    pub fn exchange(&self) -> u64 {
        self.0.exchange
    }

    /// Count request body bytes.
    pub fn add_bytes_up(&self, n: u64) {
        self.0.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    /// Request body bytes so far.
    pub fn bytes_up(&self) -> u64 {
        self.0.bytes_up.load(Ordering::Relaxed)
    }

    /// The rule that decided, when the policy would not let the request straight through.
    pub fn set_rule(&self, rule: Option<String>) {
        self.entries().rule = rule;
    }

    /// Time spent before the request went upstream.
    pub fn set_sidecar_before(&self, d: Duration) {
        self.entries().sidecar = d;
    }

    /// Time spent after the response head arrived.
    pub fn add_sidecar(&self, d: Duration) {
        self.entries().sidecar += d;
    }

    pub fn set_ttfb(&self, d: Duration) {
        self.entries().ttfb = Some(d);
    }

    /// The response's trailers, as recorded (masked).
    pub fn set_trailers(&self, trailers: Vec<Header>) {
        self.entries().trailers = Some(trailers);
    }

    /// The request's trailers, as recorded (masked).
    pub fn set_request_trailers(&self, trailers: Vec<Header>) {
        self.entries().request_trailers = Some(trailers);
    }

    /// Count masks (and export them as metrics).
    pub fn add_masks(&self, proxy: &Proxy, counts: BTreeMap<String, u64>) {
        let mut entries = self.entries();
        for (detector, n) in counts {
            proxy
                .metrics()
                .masked
                .get_or_create(&DetectorLabels {
                    detector: detector.clone(),
                })
                .inc_by(n);
            *entries.masked.entry(detector).or_insert(0) += n;
        }
    }

    /// The exchange ended without a normal response.
    pub fn fail(&self, proxy: &Proxy, decision: Decision, error: &str) {
        {
            let mut entries = self.entries();
            entries.decision = decision;
            entries.sidecar = self.0.started.elapsed();
        }
        self.end(proxy, 0, Some(error.to_string()));
    }

    /// An upgraded connection (websocket) ended after carrying `up`/`down` bytes; `error`
    /// when it was cut.
    pub fn tunnel(&self, proxy: &Proxy, up: u64, down: u64, error: Option<String>) {
        self.add_bytes_up(up);
        self.end(proxy, down, error);
    }

    /// Write `exchange_end` (once; later calls do nothing).
    pub fn end(&self, proxy: &Proxy, bytes_down: u64, error: Option<String>) {
        let (decision, sidecar, ttfb, rule, masked_by, trailers, request_trailers) = {
            let mut e = self.entries();
            if e.done {
                return;
            }
            e.done = true;
            (
                e.decision,
                e.sidecar,
                e.ttfb,
                e.rule.take(),
                std::mem::take(&mut e.masked),
                e.trailers.take(),
                e.request_trailers.take(),
            )
        };
        let total = self.0.started.elapsed();
        let classification = &self.0.classification;
        let service = classification
            .as_ref()
            .and_then(|c| {
                c.service
                    .clone()
                    .or_else(|| c.git_service.as_ref().map(|_| "git".into()))
            })
            .unwrap_or_else(|| "other".into());
        let metrics = proxy.metrics();
        metrics
            .exchanges
            .get_or_create(&ExchangeLabels {
                service,
                decision: format!("{decision:?}").to_ascii_lowercase(),
            })
            .inc();
        metrics.added_latency.observe(sidecar.as_secs_f64());
        let masked = masked_by.values().sum();
        proxy.recording.exchange_done(masked);
        proxy.recording.emit(Event::ExchangeEnd(ExchangeEnd {
            exchange: self.0.exchange,
            timings: Timings {
                connect_us: None,
                tls_us: None,
                request_sent_us: None,
                ttfb_us: ttfb.map(|d| d.as_micros() as u64),
                total_us: total.as_micros() as u64,
                sidecar_us: Some(sidecar.as_micros() as u64),
            },
            bytes_up: self.bytes_up(),
            bytes_down,
            decision,
            rule,
            classification: classification.clone(),
            masked,
            masked_by,
            error,
            trailers,
            request_trailers,
        }));
    }
}
