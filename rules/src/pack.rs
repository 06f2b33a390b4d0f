//! git pack files, read as they stream: every object of a pushed or fetched pack is
//! recorded by what it is (type, id, size; for commits, trees and tags what they name:
//! parents, paths, authors, messages), blobs and messages are scanned by the masker, and the
//! masks are kept per object and per path, so that an auditor can answer "which commit and
//! file carried this secret" while the recording holds no pack bytes.
//!
//! Inflating is flate2's (miniz_oxide, the workspace's inflater); object ids are SHA-1 (or
//! SHA-256 for `object-format=sha256` repositories) with ring. The pack framing and the delta
//! instructions (gitformat-pack(5)) and the commit, tree and tag formats are read here.
//!
//! Bounded memory: an object is held whole only up to [`PackLimits::max_object_bytes`]
//! (larger blobs are scanned as they inflate and cannot be delta bases); delta bases are
//! kept up to [`PackLimits::max_cache_bytes`], oldest first out. A delta whose base is not
//! at hand (a thin pack's base lives in the remote repository; an evicted or too-large base)
//! is recorded as unresolved with why, and the bytes it inserts are still scanned.

use std::collections::{BTreeMap, HashMap, VecDeque};

use flate2::{Decompress, FlushDecompress, Status};
use ring::digest;

use crate::mask::{BodyKind, Hit, MaskStream, Masker};

/// How object ids are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObjectFormat {
    /// SHA-1, 20-byte ids (git's default).
    #[default]
    Sha1,
    /// SHA-256, 32-byte ids.
    Sha256,
}

impl ObjectFormat {
    /// From a push's or fetch's capabilities (`object-format=sha256`).
    pub fn from_capabilities<'a>(capabilities: impl IntoIterator<Item = &'a str>) -> Self {
        if capabilities
            .into_iter()
            .any(|c| c == "object-format=sha256")
        {
            ObjectFormat::Sha256
        } else {
            ObjectFormat::Sha1
        }
    }

    fn len(self) -> usize {
        match self {
            ObjectFormat::Sha1 => 20,
            ObjectFormat::Sha256 => 32,
        }
    }

    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            ObjectFormat::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            ObjectFormat::Sha256 => &digest::SHA256,
        }
    }
}

/// What the reader may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Objects in one pack.
    pub max_objects: u32,
    /// The largest object held whole: parsed (trees, commits, tags), kept as a delta base,
    /// and a delta result. Larger blobs are scanned as they stream.
    pub max_object_bytes: u64,
    /// Bytes of objects kept as delta bases.
    pub max_cache_bytes: u64,
    /// The longest chain of deltas resolved.
    pub max_delta_depth: u32,
    /// Tree entries kept to name the paths of blobs.
    pub max_tree_entries: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_objects: 10_000_000,
            max_object_bytes: 16 << 20,
            max_cache_bytes: 64 << 20,
            max_delta_depth: 64,
            max_tree_entries: 1_000_000,
        }
    }
}

/// The four object types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A commit.
    Commit,
    /// A tree.
    Tree,
    /// A blob: a file's contents.
    Blob,
    /// An annotated tag.
    Tag,
}

impl ObjectKind {
    /// `commit`, `tree`, `blob`, `tag`.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Commit => "commit",
            ObjectKind::Tree => "tree",
            ObjectKind::Blob => "blob",
            ObjectKind::Tag => "tag",
        }
    }

    fn from_code(code: u8) -> Option<ObjectKind> {
        match code {
            1 => Some(ObjectKind::Commit),
            2 => Some(ObjectKind::Tree),
            3 => Some(ObjectKind::Blob),
            4 => Some(ObjectKind::Tag),
            _ => None,
        }
    }
}

/// How an object was stored in the pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// Whole (zlib-compressed).
    Whole,
    /// As a delta against a base.
    Delta {
        /// The base: its id, or `offset N` for an offset delta.
        base: String,
        /// Whether the delta was applied.
        resolved: bool,
        /// Why not, when it was not.
        why: Option<String>,
    },
}

/// A commit's or tag's person line: `Name <email> 1700000000 +0000`.
pub type Signature = String;

/// What a commit names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitInfo {
    /// The root tree.
    pub tree: String,
    /// The parents.
    pub parents: Vec<String>,
    /// The author line.
    pub author: Option<Signature>,
    /// The committer line.
    pub committer: Option<Signature>,
    /// The message, masked.
    pub message: String,
    /// Whether it carries a signature (gpgsig).
    pub signed: bool,
}

/// What an annotated tag names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagInfo {
    /// The tagged object.
    pub object: String,
    /// Its type.
    pub kind: String,
    /// The tag's name.
    pub name: String,
    /// The tagger line.
    pub tagger: Option<Signature>,
    /// The message, masked.
    pub message: String,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The mode in octal: `100644`, `100755`, `40000` (a tree), `120000` (a link),
    /// `160000` (a submodule commit).
    pub mode: String,
    /// The name (lossy UTF-8).
    pub name: String,
    /// The object it names.
    pub id: String,
}

impl TreeEntry {
    fn is_tree(&self) -> bool {
        self.mode == "40000" || self.mode == "040000"
    }
}

/// One object of a pack, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackObject {
    /// Where it starts in the pack.
    pub offset: u64,
    /// Its type; `None` for a delta that could not be resolved.
    pub kind: Option<ObjectKind>,
    /// Its id in hex; `None` for an unresolved delta.
    pub id: Option<String>,
    /// Its size in bytes (for an unresolved delta: the delta's own size).
    pub size: u64,
    /// Whole or delta.
    pub storage: Storage,
    /// For a commit.
    pub commit: Option<CommitInfo>,
    /// For a tree: its entries.
    pub tree: Option<Vec<TreeEntry>>,
    /// For a tag.
    pub tag: Option<TagInfo>,
    /// Masks in its contents (a blob's bytes, a commit's or tag's message, an unresolved
    /// delta's inserted bytes); offsets are into the object's contents.
    pub masks: Vec<Hit>,
    /// Why the object's contents were not parsed or fully scanned, if they were not.
    pub note: Option<String>,
}

/// A mask found in a file, by the path it has in a tree of the pack.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathMask {
    /// The commit whose tree names the path, when a commit of the pack reaches it.
    pub commit: Option<String>,
    /// The path from the commit's root tree (or `<tree id>/name` for a tree no commit of
    /// the pack reaches).
    pub path: String,
    /// The blob.
    pub blob: String,
    /// The detector.
    pub detector: String,
    /// The keyed fingerprint.
    pub fingerprint: String,
}

/// What a whole pack held, once it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackSummary {
    /// The object count the pack's header announced.
    pub announced: u32,
    /// Objects read.
    pub objects: u32,
    /// Objects per type.
    pub kinds: BTreeMap<&'static str, u32>,
    /// Deltas that could not be resolved.
    pub unresolved: u32,
    /// Every mask in a blob, by each path a tree of the pack gives the blob.
    pub path_masks: Vec<PathMask>,
    /// Whether the pack's trailing checksum matched its bytes.
    pub checksum_ok: bool,
}

/// Why a pack could not be read (what was read before stands).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// Not `PACK`, or an unknown version.
    #[error("not a git pack: {0}")]
    NotAPack(String),
    /// An object header, delta or zlib stream is broken.
    #[error("object {index} at offset {offset} of the pack is broken: {why}")]
    Corrupt {
        /// The object's index.
        index: u32,
        /// Its offset.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// Over a limit.
    #[error("the pack is over a limit: {0}")]
    Limit(String),
    /// It ended early.
    #[error("the pack ended after {read} of its {announced} objects")]
    Truncated {
        /// Objects read.
        read: u32,
        /// Objects announced.
        announced: u32,
    },
}

#[derive(Debug, Clone)]
enum RawKind {
    Whole(ObjectKind),
    OfsDelta(u64),
    RefDelta(String),
}

/// The object being inflated.
struct Current<'m> {
    offset: u64,
    raw: RawKind,
    size: u64,
    produced: u64,
    /// The whole inflated contents, while they fit.
    content: Option<Vec<u8>>,
    /// For a whole object: its id as it streams.
    hasher: Option<digest::Context>,
    /// For a whole blob too large to hold: scanned as it streams.
    stream: Option<MaskStream<'m>>,
}

enum State<'m> {
    Header,
    Entry,
    Inflating(Box<Current<'m>>),
    Trailer,
    Done,
    Failed,
}

/// A kept object (a possible delta base).
struct Kept {
    offset: u64,
    kind: ObjectKind,
    content: Vec<u8>,
    depth: u32,
    id: String,
}

/// A delta whose base had not come yet when it was read.
struct Pending {
    index: usize,
    base: String,
    delta: Vec<u8>,
}

/// Reads a pack fed in chunks of any size.
pub struct PackReader<'m> {
    masker: &'m Masker,
    format: ObjectFormat,
    limits: PackLimits,
    state: State<'m>,
    /// Bytes not yet consumed.
    buf: Vec<u8>,
    /// Offset in the pack of `buf[0]`.
    at: u64,
    checksum: digest::Context,
    announced: u32,
    index: u32,
    /// Kept objects by offset and by id, with the eviction order.
    by_offset: HashMap<u64, usize>,
    by_id: HashMap<String, usize>,
    kept: Vec<Option<Kept>>,
    kept_order: VecDeque<usize>,
    kept_bytes: u64,
    pending: Vec<Pending>,
    /// Objects read and not yet handed out; `taken` is the index (in pack order) of the
    /// first of them, so that pending deltas keep their indices while the rest is let go.
    objects: VecDeque<PackObject>,
    taken: usize,
    /// Why the pack broke, once it has.
    failure: Option<PackError>,
    /// The inflater, reset for each object, and its output buffer, reused.
    inflate: Decompress,
    scratch: Vec<u8>,
    /// Blob masks and tree entries, for the paths at the end.
    blob_masks: HashMap<String, Vec<Hit>>,
    trees: HashMap<String, Vec<TreeEntry>>,
    tree_entries: usize,
    commits: Vec<(String, String)>,
    summary: PackSummary,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'m> PackReader<'m> {
    /// A reader that masks with `masker`.
    pub fn new(masker: &'m Masker, format: ObjectFormat, limits: PackLimits) -> Self {
        PackReader {
            masker,
            format,
            limits,
            state: State::Header,
            buf: Vec::new(),
            at: 0,
            checksum: digest::Context::new(format.algorithm()),
            announced: 0,
            index: 0,
            by_offset: HashMap::new(),
            by_id: HashMap::new(),
            kept: Vec::new(),
            kept_order: VecDeque::new(),
            kept_bytes: 0,
            pending: Vec::new(),
            objects: VecDeque::new(),
            taken: 0,
            failure: None,
            inflate: Decompress::new(true),
            scratch: vec![0; 64 * 1024],
            blob_masks: HashMap::new(),
            trees: HashMap::new(),
            tree_entries: 0,
            commits: Vec::new(),
            summary: PackSummary::default(),
        }
    }

    /// Feeds the next bytes of the pack; returns the objects completed so far that were not
    /// returned before. An error ends the reading (what was returned stands).
    ///
    /// When the pack breaks in this chunk, the objects completed before the break are still
    /// returned (what is read stands, however the pack was cut) and the error comes from the
    /// next `feed` and from [`PackReader::finish`]; when none were, it comes at once.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<PackObject>, PackError> {
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(chunk);
        match self.run() {
            Ok(()) => Ok(self.take_ready()),
            Err(e) => {
                self.state = State::Failed;
                self.buf.clear();
                self.failure = Some(e.clone());
                // Deltas still waiting will get no base now.
                self.resolve_pending(true);
                let objects = self.take_all();
                if objects.is_empty() {
                    Err(e)
                } else {
                    Ok(objects)
                }
            }
        }
    }

    /// Ends the pack: the deltas still waiting for a base are resolved if their base came
    /// later, the remaining objects returned, and the paths of masked blobs named.
    /// An error when the pack broke (the same one `feed` gave) or ended early.
    pub fn finish(mut self) -> Result<(Vec<PackObject>, PackSummary), PackError> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        self.resolve_pending(true);
        let mut objects = self.take_all();
        if !matches!(self.state, State::Done) {
            let err = PackError::Truncated {
                read: self.index,
                announced: self.announced,
            };
            objects.clear();
            return Err(err);
        }
        self.summary.path_masks = self.path_masks();
        self.summary.announced = self.announced;
        Ok((objects, self.summary))
    }

    fn take_ready(&mut self) -> Vec<PackObject> {
        // Objects before the first pending delta are final.
        let ready_to = self
            .pending
            .iter()
            .map(|p| p.index)
            .min()
            .unwrap_or(self.taken + self.objects.len());
        let out = self.objects.drain(..ready_to - self.taken).collect();
        self.taken = ready_to;
        out
    }

    fn take_all(&mut self) -> Vec<PackObject> {
        self.taken += self.objects.len();
        self.objects.drain(..).collect()
    }

    /// The object at `index` (in pack order), which has not been handed out.
    fn object_mut(&mut self, index: usize) -> &mut PackObject {
        &mut self.objects[index - self.taken]
    }

    /// Drops `n` bytes from the front of the buffer; all but the trailer are checksummed.
    fn consume(&mut self, n: usize, checksummed: bool) {
        if checksummed {
            self.checksum.update(&self.buf[..n]);
        }
        self.buf.drain(..n);
        self.at += n as u64;
    }

    fn corrupt(&self, offset: u64, why: impl Into<String>) -> PackError {
        PackError::Corrupt {
            index: self.index,
            offset,
            why: why.into(),
        }
    }

    fn run(&mut self) -> Result<(), PackError> {
        loop {
            // Each arm puts the next state back; an error leaves Failed.
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Header => {
                    if self.buf.len() < 12 {
                        self.state = State::Header;
                        return Ok(());
                    }
                    if &self.buf[..4] != b"PACK" {
                        return Err(PackError::NotAPack(format!(
                            "it starts with {:?}, not PACK",
                            String::from_utf8_lossy(&self.buf[..4])
                        )));
                    }
                    let word = |i: usize| {
                        u32::from_be_bytes([
                            self.buf[i],
                            self.buf[i + 1],
                            self.buf[i + 2],
                            self.buf[i + 3],
                        ])
                    };
                    let version = word(4);
                    if version != 2 && version != 3 {
                        return Err(PackError::NotAPack(format!("version {version}")));
                    }
                    self.announced = word(8);
                    if self.announced > self.limits.max_objects {
                        return Err(PackError::Limit(format!(
                            "{} objects announced, at most {} are read",
                            self.announced, self.limits.max_objects
                        )));
                    }
                    self.consume(12, true);
                    self.state = if self.announced == 0 {
                        State::Trailer
                    } else {
                        State::Entry
                    };
                }
                State::Entry => {
                    let Some((raw, size, header_len)) = self.entry_header()? else {
                        self.state = State::Entry;
                        return Ok(());
                    };
                    let offset = self.at;
                    let hold = size <= self.limits.max_object_bytes;
                    let (hasher, stream) = match &raw {
                        RawKind::Whole(kind) => {
                            let mut h = digest::Context::new(self.format.algorithm());
                            h.update(format!("{} {size}\0", kind.name()).as_bytes());
                            let stream = (!hold && *kind == ObjectKind::Blob)
                                .then(|| self.masker.stream(BodyKind::Other));
                            (Some(h), stream)
                        }
                        _ => (None, None),
                    };
                    self.consume(header_len, true);
                    self.inflate.reset(true);
                    self.state = State::Inflating(Box::new(Current {
                        offset,
                        raw,
                        size,
                        produced: 0,
                        content: hold.then(|| Vec::with_capacity(size.min(1 << 20) as usize)),
                        hasher,
                        stream,
                    }));
                }
                State::Inflating(mut current) => {
                    if self.buf.is_empty() {
                        self.state = State::Inflating(current);
                        return Ok(());
                    }
                    let before_in = self.inflate.total_in();
                    let before_out = self.inflate.total_out();
                    let status = self
                        .inflate
                        .decompress(&self.buf, &mut self.scratch, FlushDecompress::None)
                        .map_err(|e| self.corrupt(current.offset, format!("zlib: {e}")))?;
                    let used = (self.inflate.total_in() - before_in) as usize;
                    let made = (self.inflate.total_out() - before_out) as usize;
                    let data = &self.scratch[..made];
                    current.produced += made as u64;
                    if current.produced > current.size {
                        return Err(self.corrupt(
                            current.offset,
                            format!("it inflates past its size of {} bytes", current.size),
                        ));
                    }
                    if let Some(h) = &mut current.hasher {
                        h.update(data);
                    }
                    if let Some(c) = &mut current.content {
                        c.extend_from_slice(data);
                    }
                    if let Some(s) = &mut current.stream {
                        let mut sink = Vec::new();
                        s.feed(data, &mut sink);
                    }
                    self.consume(used, true);
                    match status {
                        Status::StreamEnd => {
                            if current.produced != current.size {
                                return Err(self.corrupt(
                                    current.offset,
                                    format!(
                                        "it inflates to {} bytes, not its size of {}",
                                        current.produced, current.size
                                    ),
                                ));
                            }
                            self.complete(*current);
                            self.index += 1;
                            self.state = if self.index == self.announced {
                                State::Trailer
                            } else {
                                State::Entry
                            };
                        }
                        _ if used == 0 && made == 0 => {
                            if self.buf.len() > 64 * 1024 {
                                return Err(self.corrupt(current.offset, "zlib makes no progress"));
                            }
                            self.state = State::Inflating(current);
                            return Ok(());
                        }
                        _ => self.state = State::Inflating(current),
                    }
                }
                State::Trailer => {
                    let len = self.format.len();
                    if self.buf.len() < len {
                        self.state = State::Trailer;
                        return Ok(());
                    }
                    let sum = std::mem::replace(
                        &mut self.checksum,
                        digest::Context::new(self.format.algorithm()),
                    )
                    .finish();
                    self.summary.checksum_ok = sum.as_ref() == &self.buf[..len];
                    self.consume(len, false);
                    self.buf.clear();
                    self.state = State::Done;
                }
                State::Done => {
                    // Bytes after the trailer are not the pack's.
                    self.buf.clear();
                    self.state = State::Done;
                    return Ok(());
                }
                State::Failed => return Ok(()),
            }
        }
    }

    /// Parses an entry header at the front of `buf`: `None` until it is whole.
    fn entry_header(&self) -> Result<Option<(RawKind, u64, usize)>, PackError> {
        let b = &self.buf;
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let code = (first >> 4) & 7;
        let mut size = u64::from(first & 0x0f);
        let mut i = 1;
        let mut shift = 4;
        let mut byte = first;
        while byte & 0x80 != 0 {
            let Some(&next) = b.get(i) else {
                return Ok(None);
            };
            if shift > 60 {
                return Err(self.corrupt(self.at, "its size does not fit 64 bits"));
            }
            size |= u64::from(next & 0x7f) << shift;
            shift += 7;
            byte = next;
            i += 1;
        }
        let raw = match code {
            1..=4 => RawKind::Whole(ObjectKind::from_code(code).unwrap_or(ObjectKind::Blob)),
            6 => {
                let Some(&first_offset_byte) = b.get(i) else {
                    return Ok(None);
                };
                let mut c = first_offset_byte;
                let mut distance = u64::from(c & 0x7f);
                i += 1;
                while c & 0x80 != 0 {
                    let Some(&next) = b.get(i) else {
                        return Ok(None);
                    };
                    if distance > (u64::MAX >> 8) {
                        return Err(self.corrupt(self.at, "its base offset does not fit 64 bits"));
                    }
                    distance = ((distance + 1) << 7) | u64::from(next & 0x7f);
                    c = next;
                    i += 1;
                }
                if distance == 0 || distance > self.at {
                    return Err(self.corrupt(
                        self.at,
                        format!("its base is {distance} bytes back, outside the pack"),
                    ));
                }
                RawKind::OfsDelta(self.at - distance)
            }
            7 => {
                let len = self.format.len();
                let Some(id) = b.get(i..i + len) else {
                    return Ok(None);
                };
                i += len;
                RawKind::RefDelta(hex(id))
            }
            other => {
                return Err(self.corrupt(self.at, format!("object type {other} is not a git type")));
            }
        };
        Ok(Some((raw, size, i)))
    }

    /// An object finished inflating.
    fn complete(&mut self, current: Current<'m>) {
        let Current {
            offset,
            raw,
            size,
            content,
            hasher,
            stream,
            ..
        } = current;
        match raw {
            RawKind::Whole(kind) => {
                let id = hex(hasher
                    .map(|h| h.finish())
                    .as_ref()
                    .map_or(&[][..], |d| d.as_ref()));
                let mut object = PackObject {
                    offset,
                    kind: Some(kind),
                    id: Some(id.clone()),
                    size,
                    storage: Storage::Whole,
                    commit: None,
                    tree: None,
                    tag: None,
                    masks: Vec::new(),
                    note: None,
                };
                match content {
                    Some(content) => {
                        self.describe(&mut object, kind, &id, &content);
                        self.keep(offset, &id, kind, content, 0);
                    }
                    None => {
                        *self.summary.kinds.entry(kind.name()).or_default() += 1;
                        if let Some(stream) = stream {
                            let mut sink = Vec::new();
                            object.masks = stream.finish(&mut sink).hits;
                            self.note_blob_masks(&id, &object.masks);
                        }
                        object.note = Some(format!(
                            "held as it streamed, not whole: over {} bytes; it cannot be a delta base here",
                            self.limits.max_object_bytes
                        ));
                    }
                }
                self.push_object(object);
            }
            RawKind::OfsDelta(base_offset) => {
                let base = format!("offset {base_offset}");
                let index = self.taken + self.objects.len();
                self.push_object(unresolved(offset, size, base.clone(), "not applied yet"));
                match (content, self.by_offset.get(&base_offset).copied()) {
                    (Some(delta), Some(k)) => self.apply(index, k, &delta),
                    (Some(delta), None) => {
                        let why = if base_offset < offset {
                            "its base was not kept (too large, or evicted by the cache bound)"
                        } else {
                            "its base is not before it"
                        };
                        self.set_unresolved(index, &delta, why);
                    }
                    (None, _) => {
                        self.set_unresolved(index, &[], "the delta is larger than the object bound")
                    }
                }
            }
            RawKind::RefDelta(base_id) => {
                let index = self.taken + self.objects.len();
                self.push_object(unresolved(offset, size, base_id.clone(), "not applied yet"));
                match (content, self.by_id.get(&base_id).copied()) {
                    (Some(delta), Some(k)) => self.apply(index, k, &delta),
                    (Some(delta), None) => {
                        // Its base may come later in the pack.
                        let pending_bytes: usize = self.pending.iter().map(|p| p.delta.len()).sum();
                        if (pending_bytes + delta.len()) as u64 <= self.limits.max_cache_bytes {
                            self.pending.push(Pending {
                                index,
                                base: base_id,
                                delta,
                            });
                        } else {
                            self.set_unresolved(index, &delta, "too many deltas wait for bases");
                        }
                    }
                    (None, _) => {
                        self.set_unresolved(index, &[], "the delta is larger than the object bound")
                    }
                }
            }
        }
        self.resolve_pending(false);
    }

    fn push_object(&mut self, object: PackObject) {
        self.summary.objects += 1;
        self.objects.push_back(object);
    }

    /// Records what an object's contents name and mask.
    fn describe(&mut self, object: &mut PackObject, kind: ObjectKind, id: &str, content: &[u8]) {
        *self.summary.kinds.entry(kind.name()).or_default() += 1;
        match kind {
            ObjectKind::Blob => {
                let (_, summary) = self.masker.mask(BodyKind::Other, content);
                object.masks = summary.hits;
                self.note_blob_masks(id, &object.masks);
            }
            ObjectKind::Tree => match parse_tree(content, self.format.len()) {
                Ok(entries) => {
                    if self.tree_entries + entries.len() <= self.limits.max_tree_entries {
                        self.tree_entries += entries.len();
                        self.trees.insert(id.to_owned(), entries.clone());
                    } else {
                        object.note = Some("too many tree entries to name paths".to_owned());
                    }
                    object.tree = Some(entries);
                }
                Err(why) => object.note = Some(why),
            },
            ObjectKind::Commit => {
                let (mut info, message) = parse_commit(content);
                let (masked, summary) = self.masker.mask(BodyKind::Other, message);
                info.message = String::from_utf8_lossy(&masked).into_owned();
                object.masks = summary.hits;
                if self.commits.len() < self.limits.max_tree_entries {
                    self.commits.push((id.to_owned(), info.tree.clone()));
                }
                object.commit = Some(info);
            }
            ObjectKind::Tag => {
                let (mut info, message) = parse_tag(content);
                let (masked, summary) = self.masker.mask(BodyKind::Other, message);
                info.message = String::from_utf8_lossy(&masked).into_owned();
                object.masks = summary.hits;
                object.tag = Some(info);
            }
        }
    }

    fn note_blob_masks(&mut self, id: &str, masks: &[Hit]) {
        if !masks.is_empty() {
            self.blob_masks
                .entry(id.to_owned())
                .or_default()
                .extend(masks.iter().cloned());
        }
    }

    fn keep(&mut self, offset: u64, id: &str, kind: ObjectKind, content: Vec<u8>, depth: u32) {
        let len = content.len() as u64;
        if len > self.limits.max_cache_bytes {
            return;
        }
        while self.kept_bytes + len > self.limits.max_cache_bytes {
            let Some(old) = self.kept_order.pop_front() else {
                break;
            };
            if let Some(k) = self.kept[old].take() {
                self.kept_bytes -= k.content.len() as u64;
                if self.by_id.get(&k.id) == Some(&old) {
                    self.by_id.remove(&k.id);
                }
                if self.by_offset.get(&k.offset) == Some(&old) {
                    self.by_offset.remove(&k.offset);
                }
            }
        }
        let slot = self.kept.len();
        self.kept.push(Some(Kept {
            offset,
            kind,
            content,
            depth,
            id: id.to_owned(),
        }));
        self.kept_bytes += len;
        self.kept_order.push_back(slot);
        self.by_offset.insert(offset, slot);
        self.by_id.insert(id.to_owned(), slot);
    }

    /// Applies a delta to kept base `k`, completing object `index`.
    fn apply(&mut self, index: usize, k: usize, delta: &[u8]) {
        let Some(base) = self.kept[k].as_ref() else {
            self.set_unresolved(index, delta, "its base was evicted by the cache bound");
            return;
        };
        if base.depth + 1 > self.limits.max_delta_depth {
            self.set_unresolved(index, delta, "the delta chain is longer than the bound");
            return;
        }
        let (kind, depth) = (base.kind, base.depth + 1);
        let result = match apply_delta(&base.content, delta, self.limits.max_object_bytes) {
            Ok(r) => r,
            Err(why) => {
                self.set_unresolved(index, delta, &why);
                return;
            }
        };
        let mut h = digest::Context::new(self.format.algorithm());
        h.update(format!("{} {}\0", kind.name(), result.len()).as_bytes());
        h.update(&result);
        let id = hex(h.finish().as_ref());
        let mut object = self.object_mut(index).clone();
        object.kind = Some(kind);
        object.id = Some(id.clone());
        object.size = result.len() as u64;
        if let Storage::Delta { resolved, why, .. } = &mut object.storage {
            *resolved = true;
            *why = None;
        }
        self.describe(&mut object, kind, &id, &result);
        let offset = object.offset;
        *self.object_mut(index) = object;
        self.keep(offset, &id, kind, result, depth);
    }

    fn set_unresolved(&mut self, index: usize, delta: &[u8], why: &str) {
        self.summary.unresolved += 1;
        let inserted = delta_inserts(delta);
        let (_, summary) = self.masker.mask(BodyKind::Other, &inserted);
        let object = self.object_mut(index);
        if let Storage::Delta { why: w, .. } = &mut object.storage {
            *w = Some(why.to_owned());
        }
        object.masks = summary.hits;
        object.note = Some("unresolved: only the bytes the delta inserts were scanned".to_owned());
    }

    /// Resolves waiting ref deltas whose base is now kept; at the end, the rest are
    /// unresolved.
    fn resolve_pending(&mut self, last: bool) {
        while let Some(i) = self
            .pending
            .iter()
            .position(|p| self.by_id.contains_key(&p.base))
        {
            let p = self.pending.remove(i);
            let k = self.by_id[&p.base];
            self.apply(p.index, k, &p.delta);
        }
        if last {
            for p in std::mem::take(&mut self.pending) {
                self.set_unresolved(
                    p.index,
                    &p.delta,
                    "its base is not in this pack (a thin pack's base is in the remote repository)",
                );
            }
        }
    }

    /// Every blob mask by each path the pack's trees give its blob.
    fn path_masks(&self) -> Vec<PathMask> {
        let mut out = Vec::new();
        if self.blob_masks.is_empty() {
            return out;
        }
        let add = |commit: Option<&str>, path: String, blob: &str, out: &mut Vec<PathMask>| {
            if let Some(masks) = self.blob_masks.get(blob) {
                for m in masks {
                    out.push(PathMask {
                        commit: commit.map(str::to_owned),
                        path: path.clone(),
                        blob: blob.to_owned(),
                        detector: m.detector.clone(),
                        fingerprint: m.fingerprint.clone(),
                    });
                }
            }
        };
        let mut reached: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (commit, tree) in &self.commits {
            let mut stack: Vec<(&str, String, u32)> = vec![(tree.as_str(), String::new(), 0)];
            let mut seen_trees = std::collections::HashSet::new();
            while let Some((tree, prefix, depth)) = stack.pop() {
                if depth > 256 || !seen_trees.insert(tree) {
                    continue;
                }
                reached.insert(tree);
                let Some(entries) = self.trees.get(tree) else {
                    continue;
                };
                for e in entries {
                    let path = if prefix.is_empty() {
                        e.name.clone()
                    } else {
                        format!("{prefix}/{}", e.name)
                    };
                    if e.is_tree() {
                        stack.push((e.id.as_str(), path, depth + 1));
                    } else if self.blob_masks.contains_key(&e.id) {
                        add(Some(commit), path, &e.id, &mut out);
                    }
                }
            }
        }
        // Trees no commit of the pack reaches.
        for (tree, entries) in &self.trees {
            if reached.contains(tree.as_str()) {
                continue;
            }
            for e in entries {
                if !e.is_tree() && self.blob_masks.contains_key(&e.id) {
                    add(None, format!("{tree}/{}", e.name), &e.id, &mut out);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

fn unresolved(offset: u64, size: u64, base: String, why: &str) -> PackObject {
    PackObject {
        offset,
        kind: None,
        id: None,
        size,
        storage: Storage::Delta {
            base,
            resolved: false,
            why: Some(why.to_owned()),
        },
        commit: None,
        tree: None,
        tag: None,
        masks: Vec::new(),
        note: None,
    }
}

/// A delta's size varint.
fn delta_size(delta: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut size = 0u64;
    let mut shift = 0;
    loop {
        let b = *delta.get(*at).ok_or("the delta ends inside its header")?;
        *at += 1;
        if shift > 63 {
            return Err("a delta size does not fit 64 bits".to_owned());
        }
        size |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(size);
        }
    }
}

/// Applies a git delta (gitformat-pack(5), "Deltified representation") to `base`.
pub fn apply_delta(base: &[u8], delta: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let mut at = 0;
    let base_size = delta_size(delta, &mut at)?;
    let result_size = delta_size(delta, &mut at)?;
    if base_size != base.len() as u64 {
        return Err(format!(
            "the delta is for a base of {base_size} bytes, the base has {}",
            base.len()
        ));
    }
    if result_size > max {
        return Err(format!(
            "its result of {result_size} bytes is over the object bound"
        ));
    }
    let mut out = Vec::with_capacity(result_size as usize);
    while at < delta.len() {
        let op = delta[at];
        at += 1;
        if op & 0x80 != 0 {
            let mut offset = 0u64;
            let mut size = 0u64;
            for i in 0..4 {
                if op & (1 << i) != 0 {
                    offset |= u64::from(*delta.get(at).ok_or("a copy ends early")?) << (8 * i);
                    at += 1;
                }
            }
            for i in 0..3 {
                if op & (0x10 << i) != 0 {
                    size |= u64::from(*delta.get(at).ok_or("a copy ends early")?) << (8 * i);
                    at += 1;
                }
            }
            if size == 0 {
                size = 0x10000;
            }
            let end = offset.checked_add(size).ok_or("a copy overflows")?;
            if end > base.len() as u64 {
                return Err("a copy reads past the base".to_owned());
            }
            out.extend_from_slice(&base[offset as usize..end as usize]);
        } else if op != 0 {
            let n = usize::from(op);
            let data = delta.get(at..at + n).ok_or("an insert ends early")?;
            out.extend_from_slice(data);
            at += n;
        } else {
            return Err("delta instruction 0 is reserved".to_owned());
        }
        if out.len() as u64 > result_size {
            return Err("the delta writes past its result size".to_owned());
        }
    }
    if out.len() as u64 != result_size {
        return Err(format!(
            "the delta made {} bytes, not {result_size}",
            out.len()
        ));
    }
    Ok(out)
}

/// The bytes a delta inserts (what it adds that its base does not have), joined with
/// newlines, for scanning when the base is not at hand.
fn delta_inserts(delta: &[u8]) -> Vec<u8> {
    let mut at = 0;
    let mut out = Vec::new();
    if delta_size(delta, &mut at).is_err() || delta_size(delta, &mut at).is_err() {
        return out;
    }
    while at < delta.len() {
        let op = delta[at];
        at += 1;
        if op & 0x80 != 0 {
            at += (op & 0x7f).count_ones() as usize;
            out.push(b'\n');
        } else if op != 0 {
            let n = usize::from(op);
            let Some(data) = delta.get(at..at + n) else {
                out.extend_from_slice(&delta[at.min(delta.len())..]);
                break;
            };
            out.extend_from_slice(data);
            at += n;
        } else {
            break;
        }
    }
    out
}

fn parse_tree(content: &[u8], id_len: usize) -> Result<Vec<TreeEntry>, String> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < content.len() {
        let space = content[at..]
            .iter()
            .position(|b| *b == b' ')
            .ok_or("a tree entry has no mode")?;
        let mode = String::from_utf8_lossy(&content[at..at + space]).into_owned();
        at += space + 1;
        let nul = content[at..]
            .iter()
            .position(|b| *b == 0)
            .ok_or("a tree entry has no name end")?;
        let name = String::from_utf8_lossy(&content[at..at + nul]).into_owned();
        at += nul + 1;
        let id = content
            .get(at..at + id_len)
            .ok_or("a tree entry's id is cut")?;
        at += id_len;
        entries.push(TreeEntry {
            mode,
            name,
            id: hex(id),
        });
    }
    Ok(entries)
}

/// Header lines and the message of a commit or tag; continuation lines (` …`) join the
/// header before them.
fn headers_and_message(content: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut at = 0;
    while at < content.len() {
        let end = content[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(content.len(), |i| at + i);
        let line = &content[at..end];
        at = (end + 1).min(content.len());
        if line.is_empty() {
            return (headers, &content[at..]);
        }
        let text = String::from_utf8_lossy(line);
        if let Some(rest) = text.strip_prefix(' ') {
            if let Some(last) = headers.last_mut() {
                last.1.push('\n');
                last.1.push_str(rest);
            }
            continue;
        }
        let (name, value) = text.split_once(' ').unwrap_or((&text, ""));
        headers.push((name.to_owned(), value.to_owned()));
    }
    (headers, &[])
}

fn parse_commit(content: &[u8]) -> (CommitInfo, &[u8]) {
    let (headers, message) = headers_and_message(content);
    let mut info = CommitInfo::default();
    for (name, value) in headers {
        match name.as_str() {
            "tree" => info.tree = value,
            "parent" => info.parents.push(value),
            "author" => info.author = Some(value),
            "committer" => info.committer = Some(value),
            "gpgsig" | "gpgsig-sha256" => info.signed = true,
            _ => {}
        }
    }
    (info, message)
}

fn parse_tag(content: &[u8]) -> (TagInfo, &[u8]) {
    let (headers, message) = headers_and_message(content);
    let mut info = TagInfo::default();
    for (name, value) in headers {
        match name.as_str() {
            "object" => info.object = value,
            "type" => info.kind = value,
            "tag" => info.name = value,
            "tagger" => info.tagger = Some(value),
            _ => {}
        }
    }
    (info, message)
}

/// Splits a fetch response (git-upload-pack's result) into its pack bytes: pkt-lines of
/// acknowledgements, then side-band channel 1 (progress on 2 and errors on 3 are
/// dropped), or the raw pack when the client asked for no side-band.
#[derive(Debug, Default)]
pub struct FetchResponse {
    decoder: crate::git::PktLineDecoder,
    raw: bool,
    /// Side-band channel 3: the server's error, if it sent one.
    pub error: Option<String>,
}

impl FetchResponse {
    /// A reader at the start of a response body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds response bytes; returns the pack bytes among them.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, crate::git::GitError> {
        if self.raw {
            return Ok(chunk.to_vec());
        }
        self.decoder.push(chunk);
        let mut pack = Vec::new();
        loop {
            if self.decoder.remaining().starts_with(b"PACK") {
                // No side-band: the pack follows the acknowledgements unframed.
                self.raw = true;
                pack.extend_from_slice(self.decoder.remaining());
                self.decoder = crate::git::PktLineDecoder::default();
                return Ok(pack);
            }
            match self.decoder.next_packet()? {
                None => return Ok(pack),
                Some(crate::git::Packet::Data(data)) => match data.first() {
                    Some(1) => pack.extend_from_slice(&data[1..]),
                    Some(2) => {}
                    Some(3) => {
                        self.error = Some(String::from_utf8_lossy(&data[1..]).trim_end().to_owned())
                    }
                    _ => {} // NAK, ACK, shallow, section headers of protocol v2.
                },
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
