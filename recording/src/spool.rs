//! The spool: a local directory where records are appended to the current segment file, sealed
//! segments wait to be compressed and shipped, and what a crash left is recovered on start.
//! It is synchronous and single-writer (the recorder holds it behind a mutex); fsync
//! scheduling and shipping live in `recorder` and `ship`.
//!
//! Layout: `key.pk8` (the session key), `seg-NNNNNN-<random>.jsonl` (open, or sealed and
//! waiting), `seg-NNNNNN-<random>.jsonl.zst` (compressed, waiting to ship under that name),
//! `shipped.jsonl` (one line per segment the sink acknowledged), `reserve` (room held for the
//! lines a full disk must still take), `manifest.json` (a copy, once the recording is closed). A segment's name is chosen when its file is opened, so a restarted
//! recorder ships it under the name an earlier attempt may already have used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::chain::{self, GENESIS};
use crate::key::SessionKey;
use crate::record::{Event, Gap, Seal};
use crate::segment::{ManifestSegment, SegmentName, parse_index};

pub(crate) const KEY_FILE: &str = "key.pk8";
pub(crate) const LEDGER_FILE: &str = "shipped.jsonl";
pub(crate) const CLOSED_FILE: &str = "manifest.json";
/// What a shutdown could not ship before its deadline, for the caller to hand on.
pub const UNSHIPPED_FILE: &str = "unshipped.json";
/// Room held on the spool's disk for the lines that say what happened when it filled up.
const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: usize = 64 << 10;
/// How far past its limit the spool takes a `gap`: what was lost is worth a little more room.
const GAP_SLACK_BYTES: u64 = RESERVE_BYTES as u64;

/// The highest exchange and connection ids recorded so far: a restarted recorder hands out
/// ids above them, so an id names one exchange (one connection) of the whole recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct IdMarks {
    #[serde(default)]
    pub exchange: u64,
    #[serde(default)]
    pub conn: u64,
}

impl IdMarks {
    fn note(&mut self, exchange: Option<u64>, conn: Option<u64>) {
        self.exchange = self.exchange.max(exchange.unwrap_or(0));
        self.conn = self.conn.max(conn.unwrap_or(0));
    }

    fn max(self, other: IdMarks) -> IdMarks {
        IdMarks {
            exchange: self.exchange.max(other.exchange),
            conn: self.conn.max(other.conn),
        }
    }
}

/// A sealed segment waiting to be shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub index: u64,
    /// Its name (the object's, with `.zst`; the spool file's, without).
    pub name: SegmentName,
    pub first_seq: u64,
    pub last_seq: u64,
    /// `chain` of the seal record.
    pub chain: String,
    /// The ids recorded up to the end of this segment, for the ledger.
    pub marks: IdMarks,
}

/// Where the last record left the chain.
#[derive(Debug, Clone)]
struct Tip {
    next_seq: u64,
    head: String,
}

/// What opening a spool found.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// An earlier run left state behind (segments, a ledger or a key).
    pub restarted: bool,
    /// Segments that were open when the earlier run died, now sealed as recovered.
    pub recovered_segments: Vec<u64>,
    /// Bytes of torn records cut off.
    pub torn_bytes: u64,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Written; the seq and chain of the record.
    Written { seq: u64, chain: String },
    /// Not written: the spool is full and `onFailure` is open (a gap will say so).
    Dropped,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the recording spool is full ({used} of {limit} bytes) because segments cannot be shipped; onFailure is closed, so this was not recorded"
    )]
    Full { used: u64, limit: u64 },
    #[error("cannot write the recording spool at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the recording in {0} was already closed with a manifest; use a fresh spool directory")]
    AlreadyClosed(PathBuf),
    #[error("the recording has ended; nothing more can be recorded")]
    Ended,
}

/// How the spool behaves.
#[derive(Debug, Clone)]
pub(crate) struct SpoolLimits {
    pub segment_max_bytes: u64,
    pub spool_limit_bytes: u64,
    /// Drop (and later record a gap) instead of refusing when full.
    pub open_on_failure: bool,
}

struct Outage {
    since: String,
    records: u64,
    bytes: u64,
    reason: String,
}

/// The spool's state; one writer.
pub(crate) struct Spool {
    dir: PathBuf,
    key: Arc<SessionKey>,
    limits: SpoolLimits,
    /// The open segment, when it has a file.
    file: Option<Arc<File>>,
    segment: u64,
    /// The open segment's name, once its file exists.
    segment_name: Option<SegmentName>,
    segment_bytes: u64,
    segment_first_seq: Option<u64>,
    segment_opened: Instant,
    tip: Tip,
    marks: IdMarks,
    spool_bytes: u64,
    sealed: Vec<Sealed>,
    outage: Option<Outage>,
    ended: bool,
    buf: Vec<u8>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Holds [`RESERVE_BYTES`] of the spool's disk in a file of its own, unless it is held already.
///
/// When the disk fills (a spool on a small emptyDir, a node out of space), the lines that
/// let the recording go on must still be written: the ledger line that lets a shipped
/// segment leave the spool (without it nothing ever frees room), seals, gaps and
/// `session_end`. They take the reserve's room; shipping puts it back.
pub(crate) fn hold_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let tmp = dir.join(format!("{RESERVE_FILE}.tmp"));
    let held = fs::write(&tmp, vec![0u8; RESERVE_BYTES])
        .and_then(|_| File::open(&tmp)?.sync_all())
        .and_then(|_| fs::rename(&tmp, &path));
    if let Err(e) = held {
        let _ = fs::remove_file(&tmp);
        tracing::debug!(error = %e, dir = %dir.display(), "no room yet for the spool's reserve");
    }
}

/// Gives the reserve's room back to the disk; says whether there was one.
pub(crate) fn release_reserve(dir: &Path) -> bool {
    fs::remove_file(dir.join(RESERVE_FILE)).is_ok()
}

/// Whether a spool write failed because its disk is full.
fn out_of_room(e: &SpoolError) -> bool {
    const ENOSPC: i32 = 28;
    matches!(e, SpoolError::Io { source, .. }
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(ENOSPC))
}

/// Runs `write`, and once more in the reserve's room when the first try found the disk full.
/// `write` must leave nothing behind when it fails.
pub(crate) fn with_reserve<T>(
    dir: &Path,
    mut write: impl FnMut() -> Result<T, SpoolError>,
) -> Result<T, SpoolError> {
    match write() {
        Err(e) if out_of_room(&e) && release_reserve(dir) => {
            tracing::warn!(dir = %dir.display(), "the spool's disk is full: writing into its reserve");
            write()
        }
        other => other,
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering what an earlier run left: torn last
    /// lines are cut at the last complete record and unsealed segments are sealed as
    /// recovered. Every time-dependent value (`now`) comes from the caller.
    pub fn open(
        dir: &Path,
        limits: SpoolLimits,
        now: &str,
    ) -> Result<(Spool, Recovery), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if dir.join(CLOSED_FILE).exists() {
            return Err(SpoolError::AlreadyClosed(dir.to_path_buf()));
        }
        let mut recovery = Recovery::default();
        let key = Arc::new(load_or_create_key(dir, &mut recovery)?);
        let (ledger, mut marks) = read_ledger_marks(dir)?;
        recovery.restarted |= !ledger.is_empty();

        let mut tip = Tip {
            next_seq: 0,
            head: GENESIS.to_string(),
        };
        let mut last_index = 0;
        if let Some(last) = ledger.iter().max_by_key(|s| s.last_seq) {
            tip = Tip {
                next_seq: last.last_seq + 1,
                head: last.chain.clone(),
            };
            last_index = parse_index(&last.name).unwrap_or(0);
        }

        // Local segments, by number. A .jsonl that also has its .zst was compressed and only
        // its removal was missed.
        let mut local: Vec<(SegmentName, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if let Some(n) = SegmentName::parse(&name) {
                local.push((n, path));
            }
        }
        local.sort();
        let mut sealed = Vec::new();
        let mut spool_bytes = 0;
        let mut i = 0;
        while i < local.len() {
            let (seg, path) = local[i].clone();
            let ix = seg.index;
            i += 1;
            recovery.restarted = true;
            let is_zst = path.extension().is_some_and(|e| e == "zst");
            if !is_zst && local.get(i).is_some_and(|(n, _)| *n == seg) {
                // seg-N.jsonl followed by seg-N.jsonl.zst: the compressed one is complete.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if ix <= last_index && ledger.iter().any(|s| parse_index(&s.name) == Some(ix)) {
                // Shipped already; only its removal was missed.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let text = if is_zst {
                crate::read::decode_segment(
                    &path.to_string_lossy(),
                    &fs::read(&path).map_err(io_err(&path))?,
                )
                .map_err(io_err(&path))?
            } else {
                let (text, torn) = cut_torn_tail(&path)?;
                recovery.torn_bytes += torn;
                text
            };
            marks = marks.max(id_marks(&text));
            let Some(summary) = summarize(&text) else {
                // No complete record: nothing to keep.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            };
            tip = Tip {
                next_seq: summary.last_seq + 1,
                head: summary.last_chain.clone(),
            };
            last_index = last_index.max(ix);
            let seal = if summary.sealed {
                Sealed {
                    index: ix,
                    name: seg.clone(),
                    first_seq: summary.first_seq,
                    last_seq: summary.last_seq,
                    chain: summary.last_chain,
                    marks,
                }
            } else {
                // Cut short by a crash: seal it now, marked as recovered.
                let event = Event::Seal(Seal {
                    segment: ix,
                    first_seq: summary.first_seq,
                    head: tip.head.clone(),
                    signature: key.sign_seal(&tip.head),
                    recovered: true,
                });
                let canonical = chain::canonical(tip.next_seq, now, &event);
                let link = chain::link(&tip.head, &canonical);
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.write_all(&chain::line(&canonical, &link))
                    .and_then(|_| f.sync_all())
                    .map_err(io_err(&path))?;
                recovery.recovered_segments.push(ix);
                let s = Sealed {
                    index: ix,
                    name: seg.clone(),
                    first_seq: summary.first_seq,
                    last_seq: tip.next_seq,
                    chain: link.clone(),
                    marks,
                };
                tip = Tip {
                    next_seq: tip.next_seq + 1,
                    head: link,
                };
                s
            };
            spool_bytes += fs::metadata(&path).map_err(io_err(&path))?.len();
            sealed.push(seal);
        }
        hold_reserve(dir);
        sync_dir(dir)?;

        let spool = Spool {
            dir: dir.to_path_buf(),
            key,
            limits,
            file: None,
            segment: last_index + 1,
            segment_name: None,
            segment_bytes: 0,
            segment_first_seq: None,
            segment_opened: Instant::now(),
            tip,
            marks,
            spool_bytes,
            sealed,
            outage: None,
            ended: false,
            buf: Vec::with_capacity(4096),
        };
        Ok((spool, recovery))
    }

    pub fn key(&self) -> &Arc<SessionKey> {
        &self.key
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The highest exchange and connection ids recorded so far, by this run or earlier ones.
    pub fn id_marks(&self) -> IdMarks {
        self.marks
    }

    /// seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.tip.next_seq
    }

    /// `chain` of the last record written.
    pub fn head(&self) -> &str {
        &self.tip.head
    }

    /// Bytes the spool holds on disk (open, sealed and compressed segments).
    pub fn spool_bytes(&self) -> u64 {
        self.spool_bytes
    }

    /// Whether a record appended now would be kept: not ended, and not in an outage (full,
    /// or failing to write) that refuses records.
    pub fn accepting(&self) -> bool {
        !self.ended
            && (self.limits.open_on_failure
                || (self.outage.is_none() && self.spool_bytes < self.limits.spool_limit_bytes))
    }

    /// The open segment's file, for the syncer.
    pub fn current_file(&self) -> Option<Arc<File>> {
        self.file.clone()
    }

    /// Sealed segments not yet handed to the shipper; empties the list.
    pub fn take_sealed(&mut self) -> Vec<Sealed> {
        std::mem::take(&mut self.sealed)
    }

    /// The open segment's age, when it has records.
    pub fn open_segment_age(&self) -> Option<std::time::Duration> {
        self.segment_first_seq
            .map(|_| self.segment_opened.elapsed())
    }

    /// Accounts for a segment file that changed size on disk (compressed) or left (shipped).
    pub fn adjust_spool_bytes(&mut self, removed: u64, added: u64) {
        self.spool_bytes = self.spool_bytes.saturating_sub(removed) + added;
    }

    /// Appends a record. When the spool is full it either refuses (`onFailure: closed`) or
    /// drops the record and remembers the outage for a `gap` record.
    pub fn append(&mut self, event: &Event, now: &str) -> Result<Appended, SpoolError> {
        if self.ended {
            return Err(SpoolError::Ended);
        }
        self.encode(event, now);
        let len = self.buf.len() as u64;
        let is_gap = matches!(event, Event::Gap(_));
        let slack = if is_gap { GAP_SLACK_BYTES } else { 0 };
        if self.spool_bytes + len > self.limits.spool_limit_bytes + slack {
            let reason = format!(
                "the spool was full ({} of {} bytes) because segments could not be shipped",
                self.spool_bytes, self.limits.spool_limit_bytes
            );
            return self.refuse(len, now, reason);
        }
        if self.outage.is_some() {
            if let Err(e) = self.write_gap(now) {
                // Still failing: this record joins the outage the gap will report.
                return match self.refuse(len, now, String::new()) {
                    Ok(dropped) => Ok(dropped),
                    Err(SpoolError::Full { .. }) => Err(e),
                    Err(other) => Err(other),
                };
            }
            // The gap moved the chain on: encode the record again on top of it.
            self.encode(event, now);
        }
        let written = if is_gap {
            self.write_buf_reserved(now)
        } else {
            self.write_buf(now)
        };
        match written {
            Ok(written) => {
                self.marks.note(event.exchange(), event.conn());
                if self.segment_bytes >= self.limits.segment_max_bytes {
                    self.seal(now)?;
                }
                Ok(written)
            }
            Err(e) => {
                let reason = format!("the spool could not be written: {e}");
                let len = self.buf.len() as u64;
                // Its disk is full (or failing): seal what the segment holds, so that shipping
                // it frees its space. The seal is small and may still fit (the failed line
                // was cut back); if it does not, the segment is sealed when it is old enough.
                if self.segment_first_seq.is_some() {
                    let _ = self.seal(now);
                }
                match self.refuse(len, now, reason) {
                    Ok(dropped) => Ok(dropped),
                    Err(SpoolError::Full { .. }) => Err(e),
                    Err(other) => Err(other),
                }
            }
        }
    }

    fn refuse(&mut self, len: u64, now: &str, reason: String) -> Result<Appended, SpoolError> {
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: now.to_string(),
            records: 0,
            bytes: 0,
            reason,
        });
        outage.records += 1;
        outage.bytes += len;
        if self.limits.open_on_failure {
            Ok(Appended::Dropped)
        } else {
            Err(SpoolError::Full {
                used: self.spool_bytes,
                limit: self.limits.spool_limit_bytes,
            })
        }
    }

    /// Writes the `gap` that closes an outage. It is allowed past the limit: it is small, and
    /// a recording that does not say what it lost is worse than a spool a little over.
    fn write_gap(&mut self, now: &str) -> Result<(), SpoolError> {
        let Some(outage) = self.outage.take() else {
            return Ok(());
        };
        let what = if self.limits.open_on_failure {
            "records dropped (onFailure is open: the traffic went on, unrecorded)"
        } else {
            "records refused (onFailure is closed: the traffic they describe was refused or cut)"
        };
        let gap = Event::Gap(Gap {
            lost: what.to_string(),
            reason: outage.reason.clone(),
            records: Some(outage.records),
            bytes: Some(outage.bytes),
            from: Some(outage.since.clone()),
            to: Some(now.to_string()),
        });
        self.encode(&gap, now);
        if let Err(e) = self.write_buf_reserved(now) {
            self.outage = Some(outage);
            return Err(e);
        }
        Ok(())
    }

    fn encode(&mut self, event: &Event, now: &str) {
        self.buf.clear();
        let mut canonical = std::mem::take(&mut self.buf);
        chain::canonical_into(&mut canonical, self.tip.next_seq, now, event);
        let link = chain::link(&self.tip.head, &canonical);
        let mut line = Vec::with_capacity(canonical.len() + 80);
        chain::append_line(&mut line, &canonical, &link);
        self.buf = line;
    }

    /// Writes the encoded line in `buf` with one write; on failure the segment is cut back so
    /// no torn line stays in the middle of it.
    fn write_buf(&mut self, now: &str) -> Result<Appended, SpoolError> {
        let _ = now;
        let file = self.open_segment()?;
        let path = self.segment_path();
        if let Err(e) = (&*file).write_all(&self.buf) {
            let _ = file.set_len(self.segment_bytes);
            return Err(io_err(&path)(e));
        }
        let split = chain::split_line(&self.buf[..self.buf.len() - 1])
            .expect("an encoded line carries its chain");
        let seq = self.tip.next_seq;
        let chain = split.chain.to_string();
        self.segment_bytes += self.buf.len() as u64;
        self.spool_bytes += self.buf.len() as u64;
        self.segment_first_seq.get_or_insert(seq);
        self.tip = Tip {
            next_seq: seq + 1,
            head: chain.clone(),
        };
        Ok(Appended::Written { seq, chain })
    }

    /// [`Spool::write_buf`] for the lines that must get through a full disk.
    fn write_buf_reserved(&mut self, now: &str) -> Result<Appended, SpoolError> {
        let dir = self.dir.clone();
        with_reserve(&dir, || self.write_buf(now))
    }

    fn open_segment(&mut self) -> Result<Arc<File>, SpoolError> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let name = SegmentName::fresh(self.segment);
        let path = self.dir.join(name.spool());
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        self.file = Some(file.clone());
        self.segment_name = Some(name);
        self.segment_bytes = 0;
        self.segment_first_seq = None;
        self.segment_opened = Instant::now();
        Ok(file)
    }

    /// The open segment's file (a name is chosen when it is opened).
    fn segment_path(&self) -> PathBuf {
        match &self.segment_name {
            Some(n) => self.dir.join(n.spool()),
            None => self.dir.join(format!("seg-{:06}.jsonl", self.segment)),
        }
    }

    /// Seals the open segment (if it has records): a `seal` record signing the chain head,
    /// then fsync. The segment joins the sealed list; the next record opens a new one.
    pub fn seal(&mut self, now: &str) -> Result<(), SpoolError> {
        let Some(first_seq) = self.segment_first_seq else {
            return Ok(());
        };
        let head = self.tip.head.clone();
        let event = Event::Seal(Seal {
            segment: self.segment,
            first_seq,
            signature: self.key.sign_seal(&head),
            head,
            recovered: false,
        });
        self.encode(&event, now);
        let Appended::Written { seq, chain } = self.write_buf_reserved(now)? else {
            unreachable!("write_buf writes or fails")
        };
        let path = self.segment_path();
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(io_err(&path))?;
        }
        let name = self
            .segment_name
            .take()
            .expect("a segment with records has a file and a name");
        self.sealed.push(Sealed {
            index: self.segment,
            name,
            first_seq,
            last_seq: seq,
            chain,
            marks: self.marks,
        });
        self.segment += 1;
        self.segment_first_seq = None;
        self.segment_bytes = 0;
        Ok(())
    }

    /// Ends the recording: writes a pending gap, `session_end` (via `end_event`) and seals.
    pub fn finish(&mut self, end_event: &Event, now: &str) -> Result<(), SpoolError> {
        if self.ended {
            return Ok(());
        }
        self.write_gap(now)?;
        self.encode(end_event, now);
        self.write_buf_reserved(now)?;
        self.seal(now)?;
        self.ended = true;
        Ok(())
    }
}

/// Reads the session key from the spool, or makes one and stores it (so a restarted recorder
/// signs with the key the recording already announced).
fn load_or_create_key(dir: &Path, recovery: &mut Recovery) -> Result<SessionKey, SpoolError> {
    let path = dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(doc) => {
            recovery.restarted = true;
            SessionKey::from_pkcs8(&doc).map_err(|e| SpoolError::Io {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = SessionKey::generate().map_err(|e| SpoolError::Io {
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
            let tmp = dir.join(format!("{KEY_FILE}.tmp"));
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
            f.write_all(key.pkcs8())
                .and_then(|_| f.sync_all())
                .map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            sync_dir(dir)?;
            Ok(key)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// One line of the ledger: a shipped segment as the manifest will list it, and the ids
/// recorded up to its end (the spool no longer holds its records to find them in).
#[derive(serde::Serialize, serde::Deserialize)]
struct LedgerEntry {
    #[serde(flatten)]
    segment: ManifestSegment,
    #[serde(default)]
    ids: IdMarks,
}

/// The segments the sink has acknowledged, from the ledger (a torn last line is ignored: its
/// segment is still in the spool and will be shipped again, which the sink accepts).
pub(crate) fn read_ledger(dir: &Path) -> Result<Vec<ManifestSegment>, SpoolError> {
    Ok(read_ledger_marks(dir)?.0)
}

/// The ledger's segments and the highest ids they recorded.
fn read_ledger_marks(dir: &Path) -> Result<(Vec<ManifestSegment>, IdMarks), SpoolError> {
    let path = dir.join(LEDGER_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut out: Vec<ManifestSegment> = Vec::new();
    let mut marks = IdMarks::default();
    for line in text.split(|b| *b == b'\n') {
        if let Ok(entry) = serde_json::from_slice::<LedgerEntry>(line) {
            marks = marks.max(entry.ids);
            if !out.iter().any(|e| e.name == entry.segment.name) {
                out.push(entry.segment);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, marks))
}

/// Appends a shipped segment to the ledger, durably.
pub(crate) fn append_ledger(
    dir: &Path,
    entry: &ManifestSegment,
    ids: IdMarks,
) -> Result<(), SpoolError> {
    let path = dir.join(LEDGER_FILE);
    let entry = LedgerEntry {
        segment: entry.clone(),
        ids,
    };
    let mut line = serde_json::to_vec(&entry).expect("ledger entries serialize");
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // A torn line from an earlier crash must not swallow this one.
    let len = f.metadata().map_err(io_err(&path))?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        let mut r = File::open(&path).map_err(io_err(&path))?;
        io::Seek::seek(&mut r, io::SeekFrom::Start(len - 1)).map_err(io_err(&path))?;
        r.read_exact(&mut last).map_err(io_err(&path))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    f.write_all(&line)
        .and_then(|_| f.sync_all())
        .map_err(io_err(&path))
}

/// Cuts a segment file after its last complete line; returns the kept text and bytes cut.
fn cut_torn_tail(path: &Path) -> Result<(Vec<u8>, u64), SpoolError> {
    let mut text = fs::read(path).map_err(io_err(path))?;
    let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = (text.len() - keep) as u64;
    if torn > 0 {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(keep as u64)
            .and_then(|_| f.sync_all())
            .map_err(io_err(path))?;
        text.truncate(keep);
    }
    Ok((text, torn))
}

pub(crate) struct Summary {
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_chain: String,
    pub sealed: bool,
}

#[derive(serde::Deserialize)]
struct SeqKind<'a> {
    seq: u64,
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct Ids {
    #[serde(default)]
    exchange: Option<u64>,
    #[serde(default)]
    conn: Option<u64>,
}

/// The highest exchange and connection ids in a segment's complete lines.
fn id_marks(text: &[u8]) -> IdMarks {
    let mut marks = IdMarks::default();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(ids) = serde_json::from_slice::<Ids>(line) {
            marks.note(ids.exchange, ids.conn);
        }
    }
    marks
}

/// First and last seq, last chain and whether it ends sealed, of a segment's complete lines.
pub(crate) fn summarize(text: &[u8]) -> Option<Summary> {
    let mut lines = text.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let first: SeqKind<'_> = serde_json::from_slice(lines.next()?).ok()?;
    let last_line = text.split(|b| *b == b'\n').rfind(|l| !l.is_empty())?;
    let last: SeqKind<'_> = serde_json::from_slice(last_line).ok()?;
    let split = chain::split_line(last_line).ok()?;
    Some(Summary {
        first_seq: first.seq,
        last_seq: last.seq,
        last_chain: split.chain.to_string(),
        sealed: last.kind == "seal",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{RecordingObjects, SegmentObject};
    use crate::record::SessionEnd;
    use crate::verify::verify;

    const NOW: &str = "2026-05-01T12:00:00.000000000Z";

    fn limits() -> SpoolLimits {
        SpoolLimits {
            segment_max_bytes: 600,
            spool_limit_bytes: 1 << 20,
            open_on_failure: false,
        }
    }

    fn gap(n: u64) -> Event {
        Event::Gap(Gap {
            lost: format!("test {n}"),
            reason: "test".into(),
            records: None,
            bytes: None,
            from: None,
            to: None,
        })
    }

    fn objects(dir: &Path) -> RecordingObjects {
        let mut segments: Vec<SegmentObject> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| parse_index(&e.file_name().to_string_lossy()).is_some())
            .map(|e| SegmentObject {
                name: e.file_name().to_string_lossy().into_owned(),
                bytes: fs::read(e.path()).unwrap(),
            })
            .collect();
        segments.sort_by(|a, b| a.name.cmp(&b.name));
        RecordingObjects {
            segments,
            ..RecordingObjects::default()
        }
    }

    #[test]
    fn rolls_by_size_and_recovers_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, rec) = Spool::open(dir.path(), limits(), NOW).unwrap();
        assert!(!rec.restarted);
        for n in 0..10 {
            spool.append(&gap(n), NOW).unwrap();
        }
        let sealed = spool.take_sealed();
        assert!(!sealed.is_empty(), "600-byte segments roll");
        let open = spool.segment_path();
        let last_seq = spool.next_seq() - 1;
        drop(spool);
        // A crash in the middle of a write.
        OpenOptions::new()
            .append(true)
            .open(&open)
            .unwrap()
            .write_all(b"{\"seq\":99,\"ti")
            .unwrap();
        let (mut spool, rec) = Spool::open(dir.path(), limits(), NOW).unwrap();
        assert!(rec.restarted);
        assert_eq!(rec.torn_bytes, 13);
        assert_eq!(rec.recovered_segments.len(), 1);
        // The recovered seal took seq last_seq + 1; the chain continues after it.
        assert_eq!(spool.next_seq(), last_seq + 2);
        spool.append(&gap(100), NOW).unwrap();
        spool
            .finish(&Event::SessionEnd(SessionEnd::default()), NOW)
            .unwrap();
        let report = verify(&objects(dir.path()), Some(spool.key().public_key()));
        assert!(report.is_ok(), "{:#?}", report.faults);
        assert!(report.segments.iter().any(|s| s.recovered));
        assert!(report.segments.iter().all(|s| s.sealed));
    }

    #[test]
    fn full_spool_refuses_when_closed_and_records_a_gap_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits();
        l.spool_limit_bytes = 400;
        l.segment_max_bytes = 1 << 20;
        let (mut spool, _) = Spool::open(dir.path(), l, NOW).unwrap();
        spool.append(&request(0, 1), NOW).unwrap();
        let mut refused = 0;
        for n in 1..10 {
            match spool.append(&request(n, 1), NOW) {
                Err(SpoolError::Full { .. }) => refused += 1,
                other => assert!(matches!(other, Ok(Appended::Written { .. })), "{other:?}"),
            }
        }
        assert!(refused > 0);
        // Shipping frees the spool; the next record is preceded by the gap.
        spool.adjust_spool_bytes(10_000, 0);
        let Appended::Written { seq, .. } = spool.append(&request(50, 1), NOW).unwrap() else {
            panic!("written")
        };
        let text = fs::read_to_string(spool.segment_path()).unwrap();
        let gap_line = text.lines().nth((seq - 1) as usize).unwrap();
        assert!(gap_line.contains("\"kind\":\"gap\""), "{gap_line}");
        assert!(
            gap_line.contains(&format!("\"records\":{refused}")),
            "{gap_line}"
        );
    }

    #[test]
    fn a_full_spool_still_takes_what_says_what_was_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits();
        l.spool_limit_bytes = 400;
        l.segment_max_bytes = 1 << 20;
        let (mut spool, _) = Spool::open(dir.path(), l, NOW).unwrap();
        while spool.append(&request(1, 1), NOW).is_ok() {}
        // The caller's own gap (an exchange it cut) goes in over the limit, after the
        // spool's gap for the refused record.
        let Appended::Written { seq, .. } = spool.append(&gap(7), NOW).unwrap() else {
            panic!("written")
        };
        let text = fs::read_to_string(spool.segment_path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[seq as usize].contains("test 7"), "{text}");
        assert!(
            lines[seq as usize - 1].contains("records refused"),
            "{text}"
        );
        // Past the slack it is refused too: the limit still bounds the disk.
        let mut taken = 0;
        while spool.append(&gap(8), NOW).is_ok() {
            taken += 1;
        }
        assert!(taken > 0 && spool.spool_bytes() <= 400 + GAP_SLACK_BYTES);
    }

    #[test]
    fn the_reserve_is_held_and_gives_its_room_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(dir.path(), limits(), NOW).unwrap();
        let reserve = dir.path().join(RESERVE_FILE);
        assert_eq!(fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES as u64);
        let full = || {
            Err::<(), _>(SpoolError::Io {
                path: dir.path().into(),
                source: io::Error::from_raw_os_error(28),
            })
        };
        let mut tries = 0;
        let result = with_reserve(dir.path(), || {
            tries += 1;
            if tries == 1 { full() } else { Ok(()) }
        });
        assert!(
            result.is_ok() && tries == 2,
            "the second try runs in the reserve's room"
        );
        assert!(!reserve.exists());
        assert!(
            with_reserve(dir.path(), full).is_err(),
            "no reserve left: the error stands"
        );
        hold_reserve(dir.path());
        assert!(reserve.exists(), "shipping puts it back");
        let other = with_reserve(dir.path(), || {
            Err::<(), _>(SpoolError::Io {
                path: dir.path().into(),
                source: io::Error::from_raw_os_error(5),
            })
        });
        assert!(
            other.is_err() && reserve.exists(),
            "only a full disk takes it"
        );
    }

    fn request(exchange: u64, conn: u64) -> Event {
        Event::Request(crate::record::Request {
            exchange,
            conn,
            method: "GET".into(),
            scheme: "https".into(),
            authority: "example.com".into(),
            path: "/".into(),
            version: "HTTP/1.1".into(),
            headers: vec![],
        })
    }

    #[test]
    fn ids_recorded_before_a_restart_are_found_shipped_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), limits(), NOW).unwrap();
        spool.append(&request(7, 3), NOW).unwrap();
        spool.seal(NOW).unwrap();
        // Segment 1 is shipped: only the ledger remembers it.
        let shipped = spool.take_sealed().pop().unwrap();
        let entry = ManifestSegment {
            name: shipped.name.object(),
            first_seq: shipped.first_seq,
            last_seq: shipped.last_seq,
            chain: shipped.chain.clone(),
            bytes: 0,
            sha256: String::new(),
        };
        append_ledger(dir.path(), &entry, shipped.marks).unwrap();
        fs::remove_file(dir.path().join(shipped.name.spool())).unwrap();
        // Segment 2 is still open when the recorder dies.
        spool.append(&request(4, 9), NOW).unwrap();
        drop(spool);
        let (spool, _) = Spool::open(dir.path(), limits(), NOW).unwrap();
        assert_eq!(
            spool.id_marks(),
            IdMarks {
                exchange: 7,
                conn: 9
            }
        );
    }

    #[test]
    fn full_spool_drops_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits();
        l.spool_limit_bytes = 300;
        l.open_on_failure = true;
        let (mut spool, _) = Spool::open(dir.path(), l, NOW).unwrap();
        let results: Vec<_> = (0..5)
            .map(|n| spool.append(&request(n, 1), NOW).unwrap())
            .collect();
        assert!(results.contains(&Appended::Dropped));
    }
}
