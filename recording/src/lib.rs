//! cassette's recording: what an agent pod saw and sent, as tamper-evident, write-once
//! segments. FORMAT.md (beside this crate's Cargo.toml) is the byte-level contract.
//!
//! - [`record`]: the record model — plain serde types the sidecar constructs.
//! - [`chain`], [`key`], [`segment`]: canonical encoding, the SHA-256 chain, Ed25519 seals, the
//!   signed manifest (pure).
//! - [`body`]: bodies as text or base64, truncated past `maxBodyBytes` with length and digest.
//! - [`spool`], [`ship`], [`sink`]: the local crash-safe spool, shipping, `file://` and `gs://`.
//! - [`recorder`]: the facade the sidecar holds.
//! - [`read`], [`verify`]: what the CLI uses to list, read and verify recordings.
//!
//! ```no_run
//! use cassette_recording::{Recorder, RecorderConfig, Durability, RecordingPath};
//! use cassette_recording::record::{Event, Direction, Request};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let path = RecordingPath {
//!     namespace: "agents".into(),
//!     session: "fix-ci".into(),
//!     pod: "agent-0".into(),
//!     pod_uid: "5f1c".into(),
//! };
//! let mut config = RecorderConfig::new("file:///var/lib/cassette/out", "/var/lib/cassette/spool", path);
//! config.durability = Durability::Strict;
//! config.digest_key = b"the session's fingerprint key".to_vec(); // see RecorderConfig::digest_key
//! let recorder = Recorder::start(config).await?;
//! println!("public key: {}", recorder.public_key());
//!
//! let exchange = recorder.next_exchange_id();
//! recorder.record(Event::Request(Request {
//!     exchange,
//!     conn: recorder.next_conn_id(),
//!     method: "GET".into(),
//!     scheme: "https".into(),
//!     authority: "storage.googleapis.com".into(),
//!     path: "/storage/v1/b/bkt/o".into(),
//!     version: "HTTP/1.1".into(),
//!     headers: vec![("accept".into(), "application/json".into())],
//! })).await?; // an error here means: refuse the request, it cannot be recorded
//! let mut body = recorder.body(exchange, Direction::Response);
//! body.write(b"{\"items\":[]}").await?;
//! body.finish().await?;
//!
//! recorder.shutdown().await?; // seal, ship, manifest.json
//! # Ok(()) }
//! ```

pub mod body;
pub mod chain;
pub mod key;
pub mod read;
pub mod record;
pub mod recorder;
pub mod segment;
pub mod ship;
pub mod sink;
pub mod spool;
pub mod verify;

pub use read::{RecordingObjects, RecordingRef, SegmentObject, list_recordings, load};
pub use record::{Event, Record};
pub use recorder::{
    Ack, BodySummary, BodyWriter, Durability, OnFailure, RecordError, Recorder, RecorderConfig,
    RecorderStats, ShutdownError, ShutdownReport, StartError,
};
pub use segment::{Manifest, RecordingPath, UnshippedSegment};
pub use sink::{GcsOptions, Sink, SinkError, SinkUrl};
pub use verify::{Completeness, Expected, Fault, Place, Problem, Report, verify, verify_expecting};
