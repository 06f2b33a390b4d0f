//! An [`EventSink`] that keeps records in memory, for unit tests of the data path's stages:
//! they assert exactly what an exchange recorded.

use super::{EventSink, NotRecorded, Recording};
use crate::metrics::Metrics;
use cassette_recording::record::Event;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Records kept in order; `fail` makes every append fail, as a full spool does when the
/// session fails closed.
#[derive(Default)]
pub struct MemorySink {
    events: Mutex<Vec<Event>>,
    pub fail: AtomicBool,
    /// Fail every append once this many records are kept (0: never), as a spool that
    /// fills in the middle of an exchange.
    pub fail_after: std::sync::atomic::AtomicUsize,
    exchanges: AtomicU64,
    conns: AtomicU64,
}

impl MemorySink {
    /// A recording into a fresh sink (batched durability, 1 MiB bodies).
    pub fn recording() -> (Arc<MemorySink>, Recording) {
        let sink = Arc::new(MemorySink::default());
        let recording = Recording::new(
            sink.clone(),
            false,
            1024 * 1024,
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"test digest key"),
            Some("agent@project.iam.gserviceaccount.com".into()),
            Arc::new(Metrics::new()),
        );
        (sink, recording)
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// The records as JSON values with their `kind`, for matching by field.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.events()
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    /// The records of one kind.
    pub fn kind(&self, kind: &str) -> Vec<serde_json::Value> {
        self.json()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// The recorded text of one exchange's body in one direction, joined.
    pub fn body(&self, exchange: u64, direction: &str) -> String {
        self.kind("body")
            .iter()
            .filter(|b| b["exchange"] == exchange && b["direction"] == direction)
            .map(|b| b["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn check(&self) -> Result<(), NotRecorded> {
        let limit = self.fail_after.load(Ordering::Relaxed);
        if limit > 0 && self.events.lock().unwrap().len() >= limit {
            return Err(NotRecorded("the test spool is full".into()));
        }
        if self.fail.load(Ordering::Relaxed) {
            return Err(NotRecorded("the test spool is full".into()));
        }
        Ok(())
    }
}

impl EventSink for MemorySink {
    fn append(&self, event: Event) -> Result<(), NotRecorded> {
        self.check()?;
        self.events.lock().unwrap().push(event);
        Ok(())
    }

    fn append_durable(
        &self,
        event: Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), NotRecorded>> + Send + '_>> {
        Box::pin(async move { self.append(event) })
    }

    fn next_exchange_id(&self) -> u64 {
        self.exchanges.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn accepting(&self) -> bool {
        self.check().is_ok()
    }

    fn next_conn_id(&self) -> u64 {
        self.conns.fetch_add(1, Ordering::Relaxed) + 1
    }
}
