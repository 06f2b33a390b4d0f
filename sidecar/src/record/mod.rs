//! The one way into the pod's recording from the data path: [`Recording`] turns what the
//! sidecar sees into records of `cassette-recording`, hands out exchange and connection ids,
//! and keeps the counts the AgentSession status reports.
//!
//! Request heads go through [`Recording::request`], which waits for the record to be on disk
//! when the session's durability is `strict`, and fails when the recording has failed closed
//! (the caller then refuses the request). Everything else is handed over without waiting.
//! Where the records go is an [`EventSink`]: the recording crate's writer in the sidecar
//! ([`writer`]), an in-memory list in unit tests ([`memory`]).

mod body;
pub mod decode;
mod headers;
#[cfg(test)]
pub mod memory;
mod stream;
pub mod writer;

pub use body::BodyRecorder;
pub use decode::{DecodeError, Decoder};
pub use headers::{headers, masked_headers};
pub use stream::StreamRecorder;

use crate::http::BoxError;
use crate::metrics::Metrics;
use cassette_recording::record::{Blocked, Direction, Event, Flow, Gap};
use cassette_rules::mask::{BodyKind, Masker};
use ring::hmac;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A record that could not be kept: the traffic it describes must not pass when the session
/// fails closed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NotRecorded(pub BoxError);

impl From<cassette_recording::RecordError> for NotRecorded {
    fn from(e: cassette_recording::RecordError) -> Self {
        Self(Box::new(e))
    }
}

/// Where records go.
pub trait EventSink: Send + Sync + 'static {
    /// Append a record without waiting for an fsync.
    fn append(&self, event: Event) -> Result<(), NotRecorded>;
    /// Append a record and wait until it is durable.
    fn append_durable(
        &self,
        event: Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), NotRecorded>> + Send + '_>>;
    /// A fresh exchange id, unique within the recording.
    fn next_exchange_id(&self) -> u64;
    /// A fresh connection id, unique within the recording.
    fn next_conn_id(&self) -> u64;
    /// Whether a record appended now would be kept.
    fn accepting(&self) -> bool;
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
pub struct Recording {
    sink: Arc<dyn EventSink>,
    strict: bool,
    max_body_bytes: u64,
    digest_key: Arc<hmac::Key>,
    account: Option<String>,
    metrics: Arc<Metrics>,
    pub counts: Arc<Counts>,
    /// Gaps of cut exchanges not yet written (the recording refused records when they came).
    pending_gaps: Arc<std::sync::Mutex<Vec<Gap>>>,
    /// Whether `pending_gaps` may hold one: the hot path reads this, not the lock.
    gaps_pending: Arc<std::sync::atomic::AtomicBool>,
}

impl Recording {
    pub fn new(
        sink: Arc<dyn EventSink>,
        strict: bool,
        max_body_bytes: u64,
        digest_key: hmac::Key,
        account: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sink,
            strict,
            max_body_bytes,
            digest_key: Arc::new(digest_key),
            account,
            metrics,
            counts: Arc::new(Counts::default()),
            pending_gaps: Arc::default(),
            gaps_pending: Arc::default(),
        }
    }

    /// The Google service account whose tokens the sidecar uses, when known.
    pub fn account(&self) -> Option<String> {
        self.account.clone()
    }

    /// The most body (or message) bytes stored per message.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    /// The metrics the data path exports.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A new exchange id, unique within the recording.
    pub fn next_exchange_id(&self) -> u64 {
        self.sink.next_exchange_id()
    }

    /// A new connection id, unique within the recording.
    pub fn next_conn_id(&self) -> u64 {
        self.sink.next_conn_id()
    }

    /// Record without waiting for an fsync. A failure is logged: the traffic it describes
    /// is refused at its next request head, which goes through [`Recording::request`].
    pub fn emit(&self, event: Event) {
        if let Err(e) = self.try_emit(event) {
            tracing::error!(error = %e, "a record could not be written");
        }
    }

    /// Record without waiting for an fsync, saying whether it was kept. When the session
    /// fails closed, traffic whose record fails here must not pass.
    pub fn try_emit(&self, event: Event) -> Result<(), NotRecorded> {
        self.flush_gaps();
        self.sink.append(event)
    }

    /// Whether bytes may pass: a record appended now would be kept. Under `onFailure:
    /// closed`, bytes are not forwarded while it says no.
    pub fn accepting(&self) -> bool {
        self.sink.accepting()
    }

    /// Say what passed of an exchange that was cut because its bytes could not be recorded.
    /// Written at once when the recording takes it, else as soon as it takes records again.
    pub fn cut(&self, gap: Gap) {
        if self.sink.append(Event::Gap(gap.clone())).is_err() {
            self.pending_gaps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(gap);
            self.gaps_pending.store(true, Ordering::Release);
        }
    }

    /// Write the gaps of cut exchanges that the recording could not take when they came.
    pub fn flush_gaps(&self) {
        if !self.gaps_pending.load(Ordering::Acquire) {
            return;
        }
        let mut pending = self.pending_gaps.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(gap) = pending.first().cloned() {
            if self.sink.append(Event::Gap(gap)).is_err() {
                return;
            }
            pending.remove(0);
        }
        self.gaps_pending.store(false, Ordering::Release);
    }

    /// Record a refusal (or, with `counted: false`, what audit mode would have refused).
    pub fn blocked(&self, blocked: Blocked, counted: bool) {
        if counted {
            self.counts.blocked.fetch_add(1, Ordering::Relaxed);
        }
        self.emit(Event::Blocked(blocked));
    }

    /// Record a request head before it goes upstream: durable first under `strict`.
    pub async fn request(&self, event: Event) -> Result<(), NotRecorded> {
        if self.strict {
            self.sink.append_durable(event).await
        } else {
            self.sink.append(event)
        }
    }

    /// An exchange ended (refusals are counted where their `blocked` record is made).
    pub fn exchange_done(&self, masked: u64) {
        self.counts.exchanges.fetch_add(1, Ordering::Relaxed);
        self.counts.masked.fetch_add(masked, Ordering::Relaxed);
    }

    /// A recorder for one body, masking what it records with `mask` (the session's masker
    /// and the kind of body), undoing `content_encoding` for the recording only.
    pub fn body(
        &self,
        exchange: u64,
        direction: Direction,
        mask: Option<(&'static Masker, BodyKind)>,
        content_encoding: Option<&str>,
    ) -> BodyRecorder {
        BodyRecorder::new(
            self.clone(),
            exchange,
            direction,
            self.max_body_bytes,
            &self.digest_key,
            mask,
            content_encoding,
        )
    }

    /// A recorder for one direction of a stream on connection `conn` (of `exchange`, when an
    /// upgrade started it), masked with `mask` when the bytes are readable.
    pub fn stream(
        &self,
        conn: u64,
        exchange: Option<u64>,
        direction: Flow,
        mask: Option<(&'static Masker, BodyKind)>,
    ) -> StreamRecorder {
        StreamRecorder::new(
            self.clone(),
            conn,
            exchange,
            direction,
            self.max_body_bytes,
            &self.digest_key,
            mask,
        )
    }

    /// A recorder for a body that is a git pack: its objects are recorded by the git stage,
    /// so no byte of it is stored; its length and digest (of the bytes as sent) are kept.
    pub fn pack_body(&self, exchange: u64, direction: Direction) -> BodyRecorder {
        let mut body = BodyRecorder::new(
            self.clone(),
            exchange,
            direction,
            0,
            &self.digest_key,
            None,
            None,
        );
        body.note(
            "a git pack: recorded by its objects (git_object, git_pack), not stored; length and digest are of the bytes as sent",
        );
        body
    }

    /// Record a whole body the sidecar itself produced (a refusal's answer), unmasked.
    pub fn whole_body(&self, exchange: u64, direction: Direction, bytes: &[u8]) {
        let mut body = self.body(exchange, direction, None, None);
        if !bytes.is_empty() {
            // The sidecar's own answer: a failure to record it is logged, not refused.
            let _ = body.push(bytes);
        }
        body.finish();
    }
}
