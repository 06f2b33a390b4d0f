//! Where sealed segments and manifests end up: a local directory (`file:///dir`) or a GCS
//! bucket (`gs://bucket/prefix`). Every write is write-once: an object is created or the
//! write is refused, never replaced or composed, so a locked retention policy on the bucket
//! never gets in the way. Retrying belongs to the shipper, not here.
//!
//! Deleting ([`Sink::list_stored`], [`Sink::delete`]) is for the operator's retention sweep
//! alone; the sidecar never deletes. A hold or retention still in force keeps an object, and
//! that is an answer ([`Deleted::Kept`]), not an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod file;
mod gcs;

pub use file::{FileSink, HOLD_FILE};
pub use gcs::{GcsSink, install_ring_provider};

/// How to reach GCS. The defaults talk to Google with application-default credentials
/// (Workload Identity on GKE); an endpoint override points the client at an emulator.
#[derive(Debug, Clone, Default)]
pub struct GcsOptions {
    /// e.g. `http://127.0.0.1:4443` for fake-gcs-server. `None` is Google's endpoint.
    pub endpoint: Option<String>,
    /// Send no credentials (emulators). Otherwise application-default credentials are used.
    pub anonymous: bool,
}

/// What to attach to a written object.
#[derive(Debug, Clone, Default)]
pub struct ObjectMeta {
    /// Custom metadata (`x-goog-meta-*` on GCS).
    pub pairs: Vec<(String, String)>,
    /// Object retention: the object cannot be deleted or replaced before this time. Needs a
    /// bucket with object retention enabled on GCS; a file sink makes the file read-only.
    pub retain_for: Option<Duration>,
    /// `Content-Type`.
    pub content_type: &'static str,
}

/// The outcome of a write-once put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The object was created.
    Created,
    /// The object was already there with the same bytes (an earlier attempt succeeded
    /// without our knowing).
    AlreadyThere,
}

/// Why a sink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink URL {url:?} is not understood: {why}")]
    BadUrl { url: String, why: String },
    #[error(
        "{key} already exists in the sink, with other content or where the recorder may not read it; it was not overwritten"
    )]
    Conflict { key: String },
    #[error("the sink refused {op} {key}: {detail}")]
    Refused {
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("the sink is unreachable ({op} {key}): {detail}")]
    Unavailable {
        op: &'static str,
        key: String,
        detail: String,
    },
}

impl SinkError {
    /// HTTP-ish: a conflict means someone else wrote the object; nothing will fix it by retrying.
    pub fn is_conflict(&self) -> bool {
        matches!(self, SinkError::Conflict { .. })
    }
}

/// Objects and sub-prefixes directly below a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Object keys (full keys below the sink root).
    pub objects: Vec<String>,
    /// Sub-prefixes ("directories"), full keys ending in `/`.
    pub prefixes: Vec<String>,
}

/// One stored object with what the retention sweep needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Full key below the sink root.
    pub key: String,
    /// When it was written (GCS `timeCreated`; a file's modification time).
    pub created: SystemTime,
    /// The GCS generation listed. A delete names it, so an object replaced since it was
    /// listed is left alone.
    pub generation: Option<i64>,
    /// Everything that may keep it, in force or not: see [`StoredObject::kept_by`].
    pub protections: Vec<Protection>,
    /// Its custom metadata (`cassette-session`, `cassette-pod-uid`, …) where the sink keeps
    /// any: GCS does, the file sink does not.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl StoredObject {
    /// The first protection still in force at `now`, if any: the object must not be deleted.
    pub fn kept_by(&self, now: SystemTime) -> Option<&Protection> {
        self.protections.iter().find(|p| p.in_force(now))
    }
}

/// Something that keeps an object from being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// GCS `temporaryHold`.
    TemporaryHold,
    /// GCS `eventBasedHold`.
    EventBasedHold,
    /// File sink: a `.hold` file in the object's directory holds every object there.
    HoldFile,
    /// Object retention: GCS `retention.retainUntilTime`, or the end a file sink recorded
    /// beside a read-only file.
    RetainedUntil(SystemTime),
    /// The bucket's retention policy: GCS `retentionExpirationTime`.
    BucketPolicyUntil(SystemTime),
    /// File sink: a read-only file with no recorded end of retention.
    ReadOnly,
}

impl Protection {
    /// Whether it still keeps the object at `now`. Holds last until someone lifts them.
    pub fn in_force(&self, now: SystemTime) -> bool {
        match self {
            Protection::RetainedUntil(until) | Protection::BucketPolicyUntil(until) => *until > now,
            Protection::TemporaryHold
            | Protection::EventBasedHold
            | Protection::HoldFile
            | Protection::ReadOnly => true,
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |t: &SystemTime| {
            jiff::Timestamp::try_from(*t)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| format!("{t:?}"))
        };
        match self {
            Protection::TemporaryHold => write!(f, "a temporary hold is set"),
            Protection::EventBasedHold => write!(f, "an event-based hold is set"),
            Protection::HoldFile => write!(f, "a .hold file is in its directory"),
            Protection::RetainedUntil(t) => write!(f, "object retention until {}", time(t)),
            Protection::BucketPolicyUntil(t) => {
                write!(f, "the bucket's retention policy until {}", time(t))
            }
            Protection::ReadOnly => write!(
                f,
                "the file is read-only with no recorded end of retention (make it writable to release it)"
            ),
        }
    }
}

/// The outcome of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// The object is gone now.
    Deleted,
    /// It was not there (deleted by someone else, or by bucket lifecycle).
    AlreadyGone,
    /// The sink kept it, and says why: a hold, retention, a newer generation, or no permission.
    Kept(String),
}

/// A parsed sink URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkUrl {
    /// `file:///abs/dir`
    File(PathBuf),
    /// `gs://bucket/optional/prefix`
    Gcs { bucket: String, prefix: String },
}

impl SinkUrl {
    /// Parses `file:///dir` or `gs://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<SinkUrl, SinkError> {
        let bad = |why: &str| SinkError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file sink needs an absolute path: file:///dir"));
            }
            return Ok(SinkUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("a gs:// sink needs a bucket: gs://bucket/prefix"));
            }
            return Ok(SinkUrl::Gcs {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err(bad("expected file:///dir or gs://bucket/prefix"))
    }
}

/// A sink to write to and read from.
#[derive(Debug, Clone)]
pub enum Sink {
    File(FileSink),
    Gcs(Box<GcsSink>),
}

impl Sink {
    /// Opens the sink a URL names. Nothing is written.
    pub async fn open(url: &str, gcs: &GcsOptions) -> Result<Sink, SinkError> {
        Ok(match SinkUrl::parse(url)? {
            SinkUrl::File(dir) => Sink::File(FileSink::new(dir)),
            SinkUrl::Gcs { bucket, prefix } => {
                Sink::Gcs(Box::new(GcsSink::connect(&bucket, &prefix, gcs).await?))
            }
        })
    }

    /// Writes `key` once. If it exists with the same bytes that is success
    /// ([`Put::AlreadyThere`]); with other bytes it is [`SinkError::Conflict`].
    pub async fn put_once(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        meta: &ObjectMeta,
    ) -> Result<Put, SinkError> {
        match self {
            Sink::File(s) => s.put_once(key, bytes, meta).await,
            Sink::Gcs(s) => s.put_once(key, bytes, meta).await,
        }
    }

    /// Why the sink refused object retention, once it has (GCS only; objects are then
    /// written without it).
    pub fn retention_refused(&self) -> Option<&str> {
        match self {
            Sink::File(_) => None,
            Sink::Gcs(s) => s.retention_refused(),
        }
    }

    /// Reads `key`; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        match self {
            Sink::File(s) => s.get(key).await,
            Sink::Gcs(s) => s.get(key).await,
        }
    }

    /// Lists what is directly below `prefix` (which ends in `/`, or is empty for the root).
    pub async fn list(&self, prefix: &str) -> Result<Listing, SinkError> {
        match self {
            Sink::File(s) => s.list(prefix).await,
            Sink::Gcs(s) => s.list(prefix).await,
        }
    }

    /// Every object below `prefix` (which ends in `/`), at any depth, with its creation time
    /// and what protects it. For the operator's retention sweep.
    pub async fn list_stored(&self, prefix: &str) -> Result<Vec<StoredObject>, SinkError> {
        match self {
            Sink::File(s) => s.list_stored(prefix).await,
            Sink::Gcs(s) => s.list_stored(prefix).await,
        }
    }

    /// Deletes one listed object, unless something keeps it ([`Deleted::Kept`]). For the
    /// operator's retention sweep only. Holds and retention are enforced where they live: by
    /// GCS itself, and by the file sink looking at its markers again just before unlinking.
    pub async fn delete(&self, object: &StoredObject) -> Result<Deleted, SinkError> {
        match self {
            Sink::File(s) => s.delete(object).await,
            Sink::Gcs(s) => s.delete(object).await,
        }
    }

    /// A URL for a key, for messages and `recordingURI`.
    pub fn url_of(&self, key: &str) -> String {
        match self {
            Sink::File(s) => format!("file://{}", s.root().join(key).display()),
            Sink::Gcs(s) => s.url_of(key),
        }
    }
}

/// Keys are `/`-separated relative paths; refuse anything that could climb out of the sink.
pub(crate) fn check_key(key: &str) -> Result<(), SinkError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part == ".." || part == "." || part.is_empty() && !key.ends_with('/'));
    if bad {
        return Err(SinkError::Refused {
            op: "use",
            key: key.to_string(),
            detail: "not a relative object key".into(),
        });
    }
    Ok(())
}

pub(crate) fn path_in(root: &Path, key: &str) -> PathBuf {
    root.join(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sink_urls() {
        assert_eq!(
            SinkUrl::parse("file:///var/rec").unwrap(),
            SinkUrl::File("/var/rec".into())
        );
        assert_eq!(
            SinkUrl::parse("gs://b/some/prefix/").unwrap(),
            SinkUrl::Gcs {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            SinkUrl::parse("gs://b").unwrap(),
            SinkUrl::Gcs {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert!(SinkUrl::parse("file://relative").is_err());
        assert!(SinkUrl::parse("s3://b").is_err());
        assert!(SinkUrl::parse("gs:///x").is_err());
    }

    #[test]
    fn keys_cannot_escape() {
        assert!(check_key("ns/s/p-u/seg-000001.jsonl.zst").is_ok());
        assert!(check_key("../x").is_err());
        assert!(check_key("/x").is_err());
        assert!(check_key("a//b").is_err());
    }
}
