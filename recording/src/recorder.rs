//! The writer facade the sidecar holds: `Recorder::start` recovers the spool, announces the
//! session key, and runs two tasks — a syncer (group-commit fsync, rolling segments by age)
//! and a shipper (compress, upload write-once, retry). `record` appends; `shutdown` seals,
//! ships everything and writes the signed manifest.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ring::hmac;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::body::BodyEncoder;
use crate::record::{Direction, Event, ExchangeId, Gap, SessionEnd, SessionStart};
use crate::segment::{MANIFEST, Manifest, RecordingPath, UnshippedSegment};
use crate::ship::{self, Backoff, Compressed};
use crate::sink::{GcsOptions, ObjectMeta, Sink, SinkError};
use crate::spool::{self, Appended, Sealed, Spool, SpoolError, SpoolLimits};

/// When a record counts as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `record` returns once the record is written to the segment file (it survives the
    /// process dying); an fsync shared by every record of the batch follows within
    /// `batch_interval`, and [`Ack::durable`] waits for it.
    #[default]
    Batched,
    /// `record` returns only after the record is fsynced (concurrent records share one fsync).
    Strict,
}

/// What happens when a record cannot be kept because the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// `record` fails; the caller refuses the traffic.
    #[default]
    Closed,
    /// The record is dropped, a `gap` record says how many and when, traffic goes on.
    Open,
}

/// Everything the recorder needs. [`RecorderConfig::new`] fills in the defaults of DESIGN.md.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// `file:///dir` or `gs://bucket/prefix`.
    pub sink: String,
    /// Local directory for the spool (an emptyDir in the pod).
    pub spool_dir: PathBuf,
    /// `<namespace>/<session>/<pod>-<pod-uid>` below the sink.
    pub path: RecordingPath,
    /// Who the agent acts for and who started the session, for `session_start`.
    pub agent: Option<String>,
    pub requested_by: Option<String>,
    pub durability: Durability,
    pub on_failure: OnFailure,
    /// A segment is sealed once it holds this many bytes …
    pub segment_max_bytes: u64,
    /// … or once its first record is this old.
    pub segment_max_age: Duration,
    /// The most the spool may hold on disk while the sink is unreachable.
    pub spool_limit_bytes: u64,
    /// Body bytes stored per message; the rest is counted and digested only.
    pub max_body_bytes: u64,
    /// The key of the HMAC-SHA-256 `digest` of every body: give the session's fingerprint key
    /// (the bytes of `spec.masking.fingerprintKey`'s Secret, or the key the sidecar made when
    /// the session names none), so that an auditor who holds it can check a candidate for a
    /// body that was not stored (`kubectl cassette search --body-file`). Left empty, the
    /// recorder makes a random key that never leaves it (its digests can then be checked by
    /// nobody); bodies are never digested with an empty key. `session_start` names the key
    /// used (`digest_key_id`).
    pub digest_key: Vec<u8>,
    /// How to reach GCS (endpoint override for emulators, credentials).
    pub gcs: GcsOptions,
    /// Object retention to request for every object written.
    pub retention: Option<Duration>,
    /// The AgentSession's `metadata.uid`, carried by every object written as
    /// `cassette-session-uid`: what ties a recording to one AgentSession and not to a later
    /// one of the same name (the operator's retention deletes only objects that carry it).
    pub session_uid: Option<String>,
    /// Longest time between fsyncs in batched mode.
    pub batch_interval: Duration,
    /// Retry pacing for uploads.
    pub backoff: Backoff,
    /// How long [`Recorder::shutdown`] takes at most ([`Recorder::shutdown_by`] takes a
    /// deadline instead).
    pub shutdown_timeout: Duration,
}

impl RecorderConfig {
    /// A config with DESIGN.md's defaults: batched, closed, 1 MiB bodies, 8 MiB or 60 s
    /// segments, a 256 MiB spool.
    pub fn new(
        sink: impl Into<String>,
        spool_dir: impl Into<PathBuf>,
        path: RecordingPath,
    ) -> Self {
        Self {
            sink: sink.into(),
            spool_dir: spool_dir.into(),
            path,
            agent: None,
            requested_by: None,
            durability: Durability::Batched,
            on_failure: OnFailure::Closed,
            segment_max_bytes: 8 << 20,
            segment_max_age: Duration::from_secs(60),
            spool_limit_bytes: 256 << 20,
            max_body_bytes: 1 << 20,
            digest_key: Vec::new(),
            gcs: GcsOptions::default(),
            retention: None,
            session_uid: None,
            batch_interval: Duration::from_millis(10),
            backoff: Backoff::default(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the recorder could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot record session_start: {0}")]
    Record(#[from] RecordError),
}

/// Why a record was not kept. The sidecar refuses the traffic it could not record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("seal records are written by the spool itself")]
    Reserved,
}

/// Why shutdown did not close the recording.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(
        "{} segment(s) could not be shipped before the deadline (last error: {last_error}): {}; {}, and {} lists them",
        unshipped.len(),
        unshipped.join(", "),
        match manifest {
            Some(m) => format!("the signed manifest {m} lists them as unshipped"),
            None => "the manifest could not be written either".to_string(),
        },
        report.display()
    )]
    Unshipped {
        /// The names they would have had in the sink.
        unshipped: Vec<String>,
        /// URL of the manifest that lists them, when it could be written.
        manifest: Option<String>,
        /// `unshipped.json` in the spool, which lists them too.
        report: PathBuf,
        last_error: String,
    },
    #[error("the manifest could not be written: {0}")]
    Manifest(SinkError),
}

/// Counters for `/metrics` and the AgentSession status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Records written through `record` (seals and `session_end` are not counted).
    pub records: u64,
    /// Bytes of records written.
    pub bytes: u64,
    /// Bytes waiting in the spool.
    pub spool_bytes: u64,
    pub segments_shipped: u64,
    pub last_shipped_segment: Option<String>,
    /// RFC 3339.
    pub last_shipped_at: Option<String>,
    /// Failed upload attempts.
    pub ship_failures: u64,
    pub last_ship_error: Option<String>,
    /// Records not kept because the spool was full.
    pub dropped_records: u64,
}

/// The acknowledgement of a record.
#[derive(Debug, Clone)]
pub struct Ack {
    seq: Option<u64>,
    chain: Option<String>,
    synced: watch::Receiver<u64>,
}

impl Ack {
    /// The record's seq; `None` when it was dropped (spool full, `onFailure: open`).
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// The record's chain value.
    pub fn chain(&self) -> Option<&str> {
        self.chain.as_deref()
    }

    /// Whether the record was written (false: dropped, and a gap will say so).
    pub fn is_recorded(&self) -> bool {
        self.seq.is_some()
    }

    /// Waits until the record is fsynced (immediate in strict mode and for dropped records).
    pub async fn durable(&mut self) {
        if let Some(seq) = self.seq {
            let _ = self.synced.wait_for(|n| *n > seq).await;
        }
    }
}

/// A handle on the recording of one pod. Cheap to clone; all clones record into one chain.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("sink", &self.inner.config.sink)
            .field("spool_dir", &self.inner.config.spool_dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RecorderConfig,
    spool: Mutex<Spool>,
    key: Arc<crate::key::SessionKey>,
    digest_key: hmac::Key,
    digest_key_id: String,
    sink: Sink,
    /// Records durable so far (all seq below it are fsynced).
    synced: watch::Sender<u64>,
    sync_wake: Notify,
    ship_wake: Notify,
    /// Segments sealed and not yet shipped, oldest first.
    queue: Mutex<VecDeque<Sealed>>,
    /// Number of segments waiting to ship, for shutdown to wait on.
    pending: watch::Sender<usize>,
    stats: Mutex<RecorderStats>,
    closing: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    next_exchange: AtomicU64,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves consistent data (every update is a single
    // assignment after the I/O); keep recording rather than poisoning the sidecar.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The current time as the recording writes it: RFC 3339, UTC, nine fractional digits.
pub fn now() -> String {
    format!("{:.9}", jiff::Timestamp::now())
}

impl Recorder {
    /// Opens the spool (recovering what a crash left), opens the sink, starts the syncer and
    /// shipper, and records `session_start`. Needs a Tokio runtime.
    pub async fn start(config: RecorderConfig) -> Result<Recorder, StartError> {
        let sink = Sink::open(&config.sink, &config.gcs).await?;
        let limits = SpoolLimits {
            segment_max_bytes: config.segment_max_bytes,
            spool_limit_bytes: config.spool_limit_bytes,
            open_on_failure: config.on_failure == OnFailure::Open,
        };
        let dir = config.spool_dir.clone();
        let t = now();
        let (spool, recovery) = tokio::task::spawn_blocking(move || Spool::open(&dir, limits, &t))
            .await
            .map_err(|e| SpoolError::Io {
                path: config.spool_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let key = spool.key().clone();
        let synced_from = spool.next_seq();
        // Ids go on after the highest an earlier run recorded, shipped or in the spool.
        let marks = spool.id_marks();
        let digest_key = if config.digest_key.is_empty() {
            let mut k = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k).map_err(
                |_| SpoolError::Io {
                    path: config.spool_dir.clone(),
                    source: std::io::Error::other("the system random source failed"),
                },
            )?;
            k.to_vec()
        } else {
            config.digest_key.clone()
        };
        let inner = Arc::new(Inner {
            digest_key: hmac::Key::new(hmac::HMAC_SHA256, &digest_key),
            digest_key_id: crate::body::digest_key_id(&digest_key),
            config,
            key,
            spool: Mutex::new(spool),
            sink,
            synced: watch::Sender::new(synced_from),
            sync_wake: Notify::new(),
            ship_wake: Notify::new(),
            queue: Mutex::new(VecDeque::new()),
            pending: watch::Sender::new(0),
            stats: Mutex::new(RecorderStats::default()),
            closing: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            next_exchange: AtomicU64::new(marks.exchange + 1),
            next_conn: AtomicU64::new(marks.conn + 1),
        });
        let recorder = Recorder { inner };
        let recovered = lock(&recorder.inner.spool).take_sealed();
        recorder.note_sealed(recovered);
        if !recovery.recovered_segments.is_empty() {
            tracing::warn!(
                segments = ?recovery.recovered_segments,
                torn_bytes = recovery.torn_bytes,
                "recovered a recording spool left by a crash"
            );
        }
        {
            let syncer = tokio::spawn(sync_loop(recorder.inner.clone()));
            let shipper = tokio::spawn(ship_loop(recorder.inner.clone()));
            lock(&recorder.inner.tasks).extend([syncer, shipper]);
        }
        let c = &recorder.inner.config;
        let start = Event::SessionStart(SessionStart {
            namespace: c.path.namespace.clone(),
            session: c.path.session.clone(),
            pod: c.path.pod.clone(),
            pod_uid: c.path.pod_uid.clone(),
            public_key: recorder.public_key(),
            recorder: concat!("cassette-recording/", env!("CARGO_PKG_VERSION")).to_string(),
            durability: match c.durability {
                Durability::Batched => "batched",
                Durability::Strict => "strict",
            }
            .to_string(),
            on_failure: match c.on_failure {
                OnFailure::Closed => "closed",
                OnFailure::Open => "open",
            }
            .to_string(),
            max_body_bytes: c.max_body_bytes,
            agent: c.agent.clone(),
            requested_by: c.requested_by.clone(),
            restarted: recovery.restarted,
            digest_key_id: Some(recorder.inner.digest_key_id.clone()),
        });
        recorder.record(start).await?;
        if !recovery.recovered_segments.is_empty() {
            let gap = Event::Gap(Gap {
                lost: "records the previous recorder had not acknowledged".into(),
                reason: format!(
                    "the recorder restarted after a crash; segment(s) {:?} were sealed as recovered and {} torn byte(s) were cut",
                    recovery.recovered_segments, recovery.torn_bytes
                ),
                records: None,
                bytes: Some(recovery.torn_bytes),
                from: None,
                to: None,
            });
            recorder.record(gap).await?;
        }
        recorder.inner.ship_wake.notify_one();
        Ok(recorder)
    }

    /// Records an event. See [`Durability`] for when this returns and [`OnFailure`] for what
    /// happens when the spool is full.
    pub async fn record(&self, event: Event) -> Result<Ack, RecordError> {
        let mut ack = self.append(event)?;
        if self.inner.config.durability == Durability::Strict {
            self.inner.sync_wake.notify_one();
            ack.durable().await;
        }
        Ok(ack)
    }

    /// Appends an event without waiting for any fsync, whatever the durability: for callers
    /// on a hot path that cannot await (a body streaming through), and that decide
    /// themselves whether to wait with [`Ack::durable`]. Order is the order of calls.
    pub fn append(&self, event: Event) -> Result<Ack, RecordError> {
        if matches!(event, Event::Seal(_)) {
            return Err(RecordError::Reserved);
        }
        let t = now();
        let appended = {
            let mut spool = lock(&self.inner.spool);
            let before = spool.spool_bytes();
            let result = spool.append(&event, &t);
            let after = spool.spool_bytes();
            let sealed = spool.take_sealed();
            drop(spool);
            self.note_sealed(sealed);
            let mut stats = lock(&self.inner.stats);
            match &result {
                Ok(Appended::Written { .. }) => {
                    stats.records += 1;
                    stats.bytes += after.saturating_sub(before);
                }
                Ok(Appended::Dropped) | Err(SpoolError::Full { .. }) => stats.dropped_records += 1,
                Err(_) => {}
            }
            stats.spool_bytes = after;
            result?
        };
        let synced = self.inner.synced.subscribe();
        let (seq, chain) = match appended {
            Appended::Written { seq, chain } => (Some(seq), Some(chain)),
            Appended::Dropped => (None, None),
        };
        if self.inner.config.durability == Durability::Strict {
            self.inner.sync_wake.notify_one();
        }
        Ok(Ack { seq, chain, synced })
    }

    /// A writer for one body of one exchange.
    pub fn body(&self, exchange: ExchangeId, direction: Direction) -> BodyWriter {
        BodyWriter {
            recorder: self.clone(),
            encoder: self.body_encoder(exchange, direction),
        }
    }

    /// The pure encoder of one body, for callers that append its records themselves (the
    /// sidecar's streaming bodies): `maxBodyBytes` and the digest key are this recorder's.
    pub fn body_encoder(&self, exchange: ExchangeId, direction: Direction) -> BodyEncoder {
        BodyEncoder::new(
            exchange,
            direction,
            self.inner.config.max_body_bytes,
            &self.inner.digest_key,
        )
    }

    /// `digest_key_id` of the key bodies are digested with (see [`RecorderConfig::digest_key`]).
    pub fn digest_key_id(&self) -> &str {
        &self.inner.digest_key_id
    }

    /// A fresh exchange id: unique in the whole recording, across restarts of the recorder
    /// (a restarted recorder goes on after the highest id recorded before). Take every
    /// exchange id from here; the review id of an exchange can then be derived from it.
    pub fn next_exchange_id(&self) -> ExchangeId {
        self.inner.next_exchange.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh connection id: unique in the whole recording, across restarts, as
    /// [`Recorder::next_exchange_id`].
    pub fn next_conn_id(&self) -> crate::record::ConnId {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The session's Ed25519 public key, base64 (for the AgentSession status).
    pub fn public_key(&self) -> String {
        self.inner.key.public_key_base64()
    }

    /// Where this recording goes, as a URL (`recordingURI`).
    pub fn recording_uri(&self) -> String {
        self.inner
            .sink
            .url_of(&format!("{}/", self.inner.config.path.prefix()))
    }

    /// Whether a record appended now would be kept (`onFailure: open` always keeps going:
    /// what it drops, a gap reports). Traffic that must be recorded checks it before it
    /// passes.
    pub fn accepting(&self) -> bool {
        lock(&self.inner.spool).accepting()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RecorderStats {
        let mut s = lock(&self.inner.stats).clone();
        s.spool_bytes = lock(&self.inner.spool).spool_bytes();
        s
    }

    /// Seals the open segment now (it ships as soon as it can).
    pub fn seal_now(&self) -> Result<(), SpoolError> {
        let mut spool = lock(&self.inner.spool);
        spool.seal(&now())?;
        let sealed = spool.take_sealed();
        drop(spool);
        self.note_sealed(sealed);
        Ok(())
    }

    fn note_sealed(&self, sealed: Vec<Sealed>) {
        if sealed.is_empty() {
            return;
        }
        let mut q = lock(&self.inner.queue);
        q.extend(sealed);
        self.inner.pending.send_replace(q.len());
        drop(q);
        self.inner.ship_wake.notify_one();
    }

    /// Ends the recording within `RecorderConfig::shutdown_timeout`: see
    /// [`Recorder::shutdown_by`].
    pub async fn shutdown(&self) -> Result<ShutdownReport, ShutdownError> {
        self.shutdown_by(tokio::time::Instant::now() + self.inner.config.shutdown_timeout)
            .await
    }

    /// Ends the recording by `deadline` (for a pod being deleted: when SIGTERM came plus its
    /// grace period, less what the caller needs after): `session_end`, seal, ship every
    /// segment, write the signed `manifest.json`. Later `record` calls fail.
    ///
    /// Shipping may use the time up to a reserve kept for the manifest (a fifth of what is
    /// left, at most 5 s). What is not shipped by then is not dropped in silence: the signed
    /// manifest lists it as `unshipped`, and `unshipped.json` in the spool lists it too (for
    /// the caller to hand on, e.g. as the container's termination message, when even the
    /// manifest could not be written); both cases are [`ShutdownError::Unshipped`].
    pub async fn shutdown_by(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<ShutdownReport, ShutdownError> {
        let inner = &self.inner;
        {
            let mut spool = lock(&inner.spool);
            spool.finish(
                &Event::SessionEnd(SessionEnd {
                    reason: "shutdown".into(),
                }),
                &now(),
            )?;
            let sealed = spool.take_sealed();
            drop(spool);
            self.note_sealed(sealed);
        }
        inner.closing.send_replace(true);
        inner.sync_wake.notify_one();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ship_until = deadline - (left / 5).min(Duration::from_secs(5));
        let mut pending = inner.pending.subscribe();
        let _ = tokio::time::timeout_at(ship_until, pending.wait_for(|n| *n == 0)).await;
        // Nothing ships after this: the manifest must say exactly what is in the sink.
        let tasks: Vec<JoinHandle<()>> = lock(&inner.tasks).drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let (records, head, dir) = {
            let spool = lock(&inner.spool);
            (
                spool.next_seq(),
                spool.head().to_string(),
                spool.dir().to_path_buf(),
            )
        };
        let segments = spool::read_ledger(&dir)?;
        // Nothing more is recorded into the spool: its reserve is room for the report below.
        spool::release_reserve(&dir);
        let unshipped: Vec<UnshippedSegment> = lock(&inner.queue)
            .iter()
            .filter(|s| !segments.iter().any(|m| m.name == s.name.object()))
            .map(|s| UnshippedSegment {
                name: s.name.object(),
                first_seq: s.first_seq,
                last_seq: s.last_seq,
                chain: s.chain.clone(),
            })
            .collect();
        let c = &inner.config;
        let manifest = Manifest {
            version: 1,
            namespace: c.path.namespace.clone(),
            session: c.path.session.clone(),
            pod: c.path.pod.clone(),
            pod_uid: c.path.pod_uid.clone(),
            public_key: self.public_key(),
            ended: now(),
            records,
            head,
            segments,
            unshipped,
        };
        let bytes = manifest.signed_bytes(&inner.key);
        let written = self.write_manifest(&bytes, &manifest.head, deadline).await;
        if !manifest.unshipped.is_empty() {
            let last_error = lock(&inner.stats)
                .last_ship_error
                .clone()
                .unwrap_or_default();
            let report = dir.join(spool::UNSHIPPED_FILE);
            let doc = serde_json::json!({
                "recording": self.recording_uri(),
                "manifest": written.as_ref().ok().map(|key| inner.sink.url_of(key)),
                "unshipped": manifest.unshipped,
                "last_error": last_error,
            });
            std::fs::write(&report, doc.to_string() + "\n").map_err(|source| SpoolError::Io {
                path: report.clone(),
                source,
            })?;
            if written.is_ok() {
                self.mark_closed(&dir, &bytes)?;
            }
            return Err(ShutdownError::Unshipped {
                unshipped: manifest.unshipped.iter().map(|s| s.name.clone()).collect(),
                manifest: written.ok().map(|key| inner.sink.url_of(&key)),
                report,
                last_error,
            });
        }
        let key = written.map_err(ShutdownError::Manifest)?;
        self.mark_closed(&dir, &bytes)?;
        Ok(ShutdownReport {
            records,
            segments: manifest.segments.len(),
            manifest: inner.sink.url_of(&key),
        })
    }

    /// Writes the signed manifest once, retrying until `deadline`; returns its key.
    async fn write_manifest(
        &self,
        bytes: &[u8],
        head: &str,
        deadline: tokio::time::Instant,
    ) -> Result<String, SinkError> {
        let c = &self.inner.config;
        let mut key = format!("{}/{MANIFEST}", c.path.prefix());
        let meta = ObjectMeta {
            pairs: ship::identity_meta(&c.path, c.session_uid.as_deref())
                .into_iter()
                .chain([("cassette-chain-head".into(), head.to_string())])
                .collect(),
            retain_for: c.retention,
            content_type: "application/json",
        };
        let mut attempt = 0;
        loop {
            let put = self.inner.sink.put_once(&key, bytes.to_vec().into(), &meta);
            let result = match tokio::time::timeout_at(deadline, put).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::Unavailable {
                    op: "write",
                    key: self.inner.sink.url_of(&key),
                    detail: "the shutdown deadline passed".into(),
                }),
            };
            match result {
                Ok(_) => return Ok(key),
                Err(e) if e.is_conflict() && key.ends_with(&format!("/{MANIFEST}")) => {
                    // Someone else wrote `manifest.json`: the recorder's own goes under a
                    // name nobody can guess, where verify finds it (and names the other).
                    let instead = crate::segment::fallback_manifest_name();
                    tracing::warn!(taken = %key, %instead, "manifest.json was taken in the sink by an object the recorder did not write");
                    key = format!("{}/{instead}", c.path.prefix());
                }
                Err(e) if e.is_conflict() || tokio::time::Instant::now() >= deadline => {
                    return Err(e);
                }
                Err(e) => {
                    attempt += 1;
                    lock(&self.inner.stats).last_ship_error = Some(e.to_string());
                    let wake = tokio::time::Instant::now() + c.backoff.delay(attempt);
                    tokio::time::sleep_until(wake.min(deadline)).await;
                }
            }
        }
    }

    /// Keeps a copy of the manifest in the spool: the spool is closed, nothing more is
    /// recorded into it.
    fn mark_closed(&self, dir: &std::path::Path, bytes: &[u8]) -> Result<(), SpoolError> {
        let local = dir.join(spool::CLOSED_FILE);
        std::fs::write(&local, bytes).map_err(|source| SpoolError::Io {
            path: local,
            source,
        })
    }
}

/// What a clean shutdown wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    pub records: u64,
    pub segments: usize,
    /// URL of `manifest.json`.
    pub manifest: String,
}

/// Writes one body as `body` records: pieces as they come, then a final record.
pub struct BodyWriter {
    recorder: Recorder,
    encoder: BodyEncoder,
}

/// What a finished body amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySummary {
    pub length: u64,
    pub truncated: bool,
    pub digest: String,
}

impl BodyWriter {
    /// Records the next chunk (nothing is stored past `maxBodyBytes`, but it is counted).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), RecordError> {
        for piece in self.encoder.push(chunk) {
            self.recorder.record(Event::Body(piece)).await?;
        }
        Ok(())
    }

    /// Records the end of the body: length, keyed digest, truncation.
    pub async fn finish(self) -> Result<BodySummary, RecordError> {
        let mut summary = None;
        for piece in self.encoder.finish() {
            if piece.last {
                summary = Some(BodySummary {
                    length: piece.length.unwrap_or_default(),
                    truncated: piece.truncated.unwrap_or_default(),
                    digest: piece.digest.clone().unwrap_or_default(),
                });
            }
            self.recorder.record(Event::Body(piece)).await?;
        }
        Ok(summary.expect("finish ends with a final record"))
    }
}

async fn sync_loop(inner: Arc<Inner>) {
    let tick = match inner.config.durability {
        Durability::Batched => inner.config.batch_interval,
        Durability::Strict => Duration::from_secs(1).min(inner.config.segment_max_age),
    };
    loop {
        tokio::select! {
            _ = inner.sync_wake.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        let (file, target, sealed) = {
            let mut spool = lock(&inner.spool);
            if spool
                .open_segment_age()
                .is_some_and(|age| age >= inner.config.segment_max_age)
                && let Err(e) = spool.seal(&now())
            {
                tracing::error!(error = %e, "cannot seal the segment by age");
            }
            (spool.current_file(), spool.next_seq(), spool.take_sealed())
        };
        if !sealed.is_empty() {
            Recorder {
                inner: inner.clone(),
            }
            .note_sealed(sealed);
        }
        if target <= *inner.synced.borrow() {
            continue;
        }
        if let Some(f) = file {
            match tokio::task::spawn_blocking(move || f.sync_data()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "fsync of the recording spool failed");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "fsync task failed");
                    continue;
                }
            }
        }
        inner.synced.send_replace(target);
    }
}

async fn ship_loop(inner: Arc<Inner>) {
    let dir = inner.config.spool_dir.clone();
    let mut closing = inner.closing.subscribe();
    let mut retention_noted = false;
    loop {
        let next = lock(&inner.queue).front().cloned();
        let Some(sealed) = next else {
            inner.ship_wake.notified().await;
            continue;
        };
        let mut compressed = match compress(&dir, &sealed).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, segment = sealed.index, "cannot compress a sealed segment");
                lock(&inner.stats).last_ship_error = Some(e.to_string());
                tokio::time::sleep(inner.config.backoff.max).await;
                continue;
            }
        };
        lock(&inner.spool).adjust_spool_bytes(
            compressed.replaced,
            if compressed.replaced > 0 {
                compressed.bytes.len() as u64
            } else {
                0
            },
        );
        let mut attempt = 0;
        loop {
            match ship::upload(
                &inner.sink,
                &dir,
                &inner.config.path,
                &compressed,
                inner.config.retention,
                inner.config.session_uid.as_deref(),
            )
            .await
            {
                Ok(entry) => {
                    if !retention_noted
                        && inner.config.retention.is_some()
                        && let Some(why) = inner.sink.retention_refused()
                    {
                        retention_noted = true;
                        retention_refused(&inner, &entry.name, why);
                    }
                    lock(&inner.spool).adjust_spool_bytes(compressed.on_disk, 0);
                    {
                        let mut stats = lock(&inner.stats);
                        stats.segments_shipped += 1;
                        stats.last_shipped_segment = Some(entry.name);
                        stats.last_shipped_at = Some(now());
                    }
                    let mut q = lock(&inner.queue);
                    q.pop_front();
                    inner.pending.send_replace(q.len());
                    break;
                }
                Err(ship::ShipError::Sink(e)) if e.is_conflict() => {
                    // Someone else wrote an object under this segment's name: nothing will
                    // make the write-once upload succeed. Ship it under a fresh name and say
                    // so in the recording; the object in the way is not the recorder's, and
                    // verify names it.
                    match ship::rename(&dir, &mut compressed) {
                        Ok(taken) => {
                            if let Some(front) = lock(&inner.queue).front_mut() {
                                front.name = compressed.sealed.name.clone();
                            }
                            taken_name(&inner, &taken, &compressed.sealed.name.object(), &e);
                        }
                        Err(rename) => {
                            tracing::error!(error = %rename, "cannot rename a segment whose name was taken");
                            lock(&inner.stats).last_ship_error = Some(rename.to_string());
                            tokio::time::sleep(inner.config.backoff.max).await;
                        }
                    }
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "shipping a segment failed; retrying");
                    {
                        let mut stats = lock(&inner.stats);
                        stats.ship_failures += 1;
                        stats.last_ship_error = Some(e.to_string());
                    }
                    let mut delay = inner.config.backoff.delay(attempt);
                    if *closing.borrow() {
                        // Shutting down against a deadline: keep trying, often.
                        delay = delay.min(Duration::from_secs(1));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = closing.changed() => {}
                    }
                }
            }
        }
    }
}

/// Records that the bucket refused object retention, so objects from `from` on carry none.
fn retention_refused(inner: &Arc<Inner>, from: &str, why: &str) {
    let gap = Event::Gap(Gap {
        lost: format!(
            "object retention: {from} and the objects after it were written without retention, so the bucket's own policy alone keeps them"
        ),
        reason: format!("the bucket refused object retention: {why}"),
        records: None,
        bytes: None,
        from: None,
        to: None,
    });
    if let Err(e) = (Recorder {
        inner: inner.clone(),
    })
    .append(gap)
    {
        tracing::warn!(error = %e, "the refused retention could not be recorded in the recording");
    }
}

/// Records that a segment's name was taken in the sink by someone else, and under which name
/// it went instead. After `session_end` nothing can be recorded any more: then the log says it.
fn taken_name(inner: &Arc<Inner>, taken: &str, instead: &str, error: &SinkError) {
    tracing::warn!(%taken, %instead, %error, "a segment's name was taken in the sink by an object the recorder did not write");
    let gap = Event::Gap(Gap {
        lost: format!(
            "nothing: the segment meant to be {taken} was shipped as {instead}, because {taken} was already taken by an object the recorder could not confirm as its own (another writer's, or, with create-only rights, its own earlier upload whose answer was lost: verify then finds it byte for byte the same as {instead})"
        ),
        reason: format!(
            "the sink refused the write-once upload ({error}); whoever wrote {taken} can write to this recording's place in the sink"
        ),
        records: None,
        bytes: None,
        from: None,
        to: None,
    });
    let recorder = Recorder {
        inner: inner.clone(),
    };
    if let Err(e) = recorder.append(gap) {
        tracing::warn!(error = %e, %taken, "the taken name could not be recorded in the recording");
    }
}

async fn compress(dir: &std::path::Path, sealed: &Sealed) -> Result<Compressed, SpoolError> {
    let dir = dir.to_path_buf();
    let s = sealed.clone();
    tokio::task::spawn_blocking(move || ship::compress(&dir, &s))
        .await
        .map_err(|e| SpoolError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}
