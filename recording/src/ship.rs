//! Shipping: compress a sealed segment (zstd, with a frame checksum), upload it write-once with
//! its metadata, note it in the ledger, then drop it from the spool. Retries back off
//! exponentially with jitter and never give up: an outage only grows the spool.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::chain::sha256_hex;
use crate::segment::{ManifestSegment, RecordingPath};
use crate::sink::{ObjectMeta, Put, Sink, SinkError};
use crate::spool::{self, Sealed, SpoolError, append_ledger};

/// zstd level: fast, and JSON compresses well at any level.
const ZSTD_LEVEL: i32 = 3;

/// Exponential backoff between attempts, with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// How long to wait before attempt `attempt` (1 = the first retry): a random duration
    /// in [d/2, d] where d = initial · 2^(attempt-1), capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1).min(20))
                .unwrap_or(u32::MAX),
        );
        let d = exp.min(self.max);
        let mut b = [0u8; 4];
        let r = SystemRandom::new().fill(&mut b).map_or(0.5, |_| {
            f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
        });
        d.mul_f64(0.5 + r / 2.0)
    }
}

/// A compressed segment ready to upload.
#[derive(Debug, Clone)]
pub(crate) struct Compressed {
    pub sealed: Sealed,
    pub path: PathBuf,
    pub bytes: bytes::Bytes,
    /// Size of the `.jsonl` it replaced (0 when it was compressed by an earlier run, or when
    /// the spool had no room for the compressed copy and the `.jsonl` stays).
    pub replaced: u64,
    /// Size of the spool file at `path`, freed once the segment is shipped.
    pub on_disk: u64,
}

/// Compresses `seg-N-R.jsonl` into `seg-N-R.jsonl.zst` (via a temporary file, fsynced,
/// renamed) and removes the `.jsonl`. If an earlier run compressed it already, reads that.
/// When the spool has no room for the compressed copy (its disk is full: the moment shipping
/// matters most), the segment ships from memory and its `.jsonl` stays until it is shipped.
pub(crate) fn compress(dir: &Path, sealed: &Sealed) -> Result<Compressed, SpoolError> {
    let zst = dir.join(sealed.name.object());
    let jsonl = dir.join(sealed.name.spool());
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SpoolError::Io { path: p, source }
    };
    if !jsonl.exists() {
        let bytes = fs::read(&zst).map_err(io(&zst))?;
        return Ok(Compressed {
            sealed: sealed.clone(),
            path: zst,
            on_disk: bytes.len() as u64,
            bytes: bytes.into(),
            replaced: 0,
        });
    }
    let text = fs::read(&jsonl).map_err(io(&jsonl))?;
    let mut encoder =
        zstd::stream::write::Encoder::new(Vec::with_capacity(text.len() / 4), ZSTD_LEVEL)
            .map_err(io(&zst))?;
    encoder.include_checksum(true).map_err(io(&zst))?;
    encoder.write_all(&text).map_err(io(&zst))?;
    let bytes = encoder.finish().map_err(io(&zst))?;
    let tmp = dir.join(format!("{}.tmp", sealed.name.object()));
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        tracing::warn!(error = %e, segment = %sealed.name.object(), "no room in the spool for the compressed segment; shipping it from memory");
        return Ok(Compressed {
            sealed: sealed.clone(),
            path: jsonl,
            bytes: bytes.into(),
            replaced: 0,
            on_disk: text.len() as u64,
        });
    }
    fs::rename(&tmp, &zst).map_err(io(&zst))?;
    fs::remove_file(&jsonl).map_err(io(&jsonl))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(Compressed {
        sealed: sealed.clone(),
        path: zst,
        on_disk: bytes.len() as u64,
        bytes: bytes.into(),
        replaced: text.len() as u64,
    })
}

/// Whose recording an object is, as every object of it (segments and manifest) says in its
/// metadata: what the operator's retention checks before it deletes anything.
pub(crate) fn identity_meta(
    path: &RecordingPath,
    session_uid: Option<&str>,
) -> Vec<(String, String)> {
    let mut pairs = vec![
        ("cassette-namespace".into(), path.namespace.clone()),
        ("cassette-session".into(), path.session.clone()),
        ("cassette-pod".into(), path.pod.clone()),
        ("cassette-pod-uid".into(), path.pod_uid.clone()),
    ];
    if let Some(uid) = session_uid {
        pairs.push(("cassette-session-uid".into(), uid.to_string()));
    }
    pairs
}

/// The metadata every segment object carries.
pub(crate) fn segment_meta(
    path: &RecordingPath,
    sealed: &Sealed,
    retain_for: Option<Duration>,
    session_uid: Option<&str>,
) -> ObjectMeta {
    let mut pairs = identity_meta(path, session_uid);
    pairs.extend([
        ("cassette-segment".into(), sealed.index.to_string()),
        ("cassette-first-seq".into(), sealed.first_seq.to_string()),
        ("cassette-last-seq".into(), sealed.last_seq.to_string()),
        ("cassette-chain-head".into(), sealed.chain.clone()),
    ]);
    ObjectMeta {
        pairs,
        retain_for,
        content_type: "application/zstd",
    }
}

/// Uploads one compressed segment (one attempt) and, once the sink has it, records it in the
/// ledger and removes it from the spool. Returns the ledger entry.
pub(crate) async fn upload(
    sink: &Sink,
    dir: &Path,
    path: &RecordingPath,
    segment: &Compressed,
    retain_for: Option<Duration>,
    session_uid: Option<&str>,
) -> Result<ManifestSegment, ShipError> {
    let name = segment.sealed.name.object();
    let key = format!("{}/{name}", path.prefix());
    let meta = segment_meta(path, &segment.sealed, retain_for, session_uid);
    let put = sink.put_once(&key, segment.bytes.clone(), &meta).await?;
    if put == Put::AlreadyThere {
        tracing::info!(segment = %name, "segment was already in the sink (an earlier attempt succeeded)");
    }
    let entry = ManifestSegment {
        name,
        first_seq: segment.sealed.first_seq,
        last_seq: segment.sealed.last_seq,
        chain: segment.sealed.chain.clone(),
        bytes: segment.bytes.len() as u64,
        sha256: sha256_hex(&segment.bytes),
    };
    // Without this line the segment cannot leave the spool, so it must get through a full
    // disk: it may take the reserve, which the removal below gives back room for.
    spool::with_reserve(dir, || append_ledger(dir, &entry, segment.sealed.marks))?;
    fs::remove_file(&segment.path).map_err(|source| SpoolError::Io {
        path: segment.path.clone(),
        source,
    })?;
    spool::hold_reserve(dir);
    Ok(entry)
}

/// Gives a compressed segment a fresh name, because its name was taken in the sink by an
/// object the recorder did not write. The spool file is renamed first (and the directory
/// fsynced), so a restart ships it under the new name too. Returns the old object name.
pub(crate) fn rename(dir: &Path, segment: &mut Compressed) -> Result<String, SpoolError> {
    let old = segment.sealed.name.object();
    let name = segment.sealed.name.renamed();
    // A segment shipped from memory is still its `.jsonl` in the spool.
    let uncompressed = segment.path.extension().is_some_and(|e| e == "jsonl");
    let to = dir.join(if uncompressed {
        name.spool()
    } else {
        name.object()
    });
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SpoolError::Io { path: p, source }
    };
    fs::rename(&segment.path, &to).map_err(io(&to))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    segment.path = to;
    segment.sealed.name = name;
    Ok(old)
}

/// Why shipping one segment failed.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 1..30 {
            let d = b.delay(attempt);
            let full = (Duration::from_millis(100) * 2u32.pow((attempt - 1).min(20)))
                .min(Duration::from_secs(1));
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
