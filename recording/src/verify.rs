//! Verification of a recording as a pure function over its objects: every chain link, every
//! seal signature, segment numbering, the manifest's coverage and signature, the public key.
//! It reports every fault it finds with where it is; it never stops at the first one and
//! never panics on hostile input. Fetching the objects is `read`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::chain::{self, GENESIS};
use crate::key;
use crate::read::{RecordingObjects, SegmentObject, decode_segment};
use crate::segment::{MANIFEST, Manifest, UnshippedSegment, parse_index};

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The segments that were read, in order.
    pub segments: Vec<SegmentSummary>,
    /// Records read, over all segments.
    pub records: u64,
    /// The public key the recording announces (`session_start`), base64.
    pub public_key: Option<String>,
    /// `chain` of the last record read.
    pub head: Option<String>,
    pub completeness: Completeness,
    /// The name of the manifest signed with the session key, when there is one
    /// (`manifest.json`, or the name the recorder fell back to when that was taken).
    pub manifest: Option<String>,
    /// Everything wrong, in the order found. Empty means the recording verifies.
    pub faults: Vec<Fault>,
    /// Objects the manifest does not list that are byte for byte a segment it does list
    /// (object, listed segment): an upload whose answer was lost, shipped again under a new
    /// name. Nothing in them is not in the recording.
    pub copies: Vec<(String, String)>,
}

impl Report {
    /// True when nothing is wrong. An open recording (no manifest yet) can be ok.
    pub fn is_ok(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Whether the recording is closed by a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    /// A manifest signed with the session key covers exactly the segments present.
    Complete,
    /// No manifest (signed with the session key): the session is still running, or its
    /// recorder died before writing one. Every segment present is sealed and verifies, but
    /// nothing is claimed about segments that may come later.
    Open,
    /// The signed manifest covers the segments present and says these were sealed but not
    /// shipped before the recorder's deadline: a gap on the record, not tampering.
    Unshipped(Vec<UnshippedSegment>),
}

/// One segment as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub name: String,
    pub index: Option<u64>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub sealed: bool,
    /// Sealed on restart after a crash.
    pub recovered: bool,
    /// `chain` of its last record.
    pub chain: Option<String>,
}

/// One thing wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The object it is in (`manifest.json` for the manifest).
    pub object: Option<String>,
    /// The record's seq, when the fault is in one record.
    pub seq: Option<u64>,
    /// Line number within the segment, from 1.
    pub line: Option<usize>,
    pub problem: Problem,
}

/// The kinds of fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// An object whose name is not `seg-NNNNNN.jsonl.zst`.
    SegmentName,
    /// Segments are not listed in increasing order.
    OutOfOrder { after: u64 },
    /// Two objects claim the same segment number.
    DuplicateSegment { index: u64 },
    /// Segment numbers are missing.
    MissingSegments { first: u64, last: u64 },
    /// The seal says this is another segment: content was moved between objects.
    Mislabelled { sealed_as: u64 },
    /// The object could not be decompressed.
    Corrupt { error: String },
    /// The segment ends in the middle of a line.
    TornLine,
    /// The segment ends without a seal where one is required.
    NotSealed,
    /// Records follow the seal within one segment.
    RecordsAfterSeal,
    /// A line is not a record.
    Malformed { error: String },
    /// The record's chain does not follow from the one before: it was altered, or records
    /// before it were removed or inserted.
    ChainBroken { expected: String, found: String },
    /// The record's seq is not the next one.
    SeqOutOfOrder { expected: u64, found: u64 },
    /// The seal's head is not the chain of the record before it.
    SealHeadMismatch,
    /// The seal's signature does not verify with the session key.
    BadSealSignature,
    /// The seal claims a first seq other than the segment's.
    SealRangeMismatch { first_seq: u64 },
    /// No public key to check signatures with (no `session_start`, none given).
    NoPublicKey,
    /// The recording's key is not the expected one.
    PublicKeyMismatch { expected: String, found: String },
    /// A later `session_start` announces a different key.
    KeyChanged { found: String },
    /// `manifest.json` cannot be read.
    ManifestUnreadable { error: String },
    /// The manifest's signature does not verify with the session key.
    BadManifestSignature,
    /// The manifest lists a segment that is not there.
    ManifestSegmentMissing { name: String },
    /// A segment's bytes differ from the digest the manifest holds for it.
    DigestMismatch { expected: String, found: String },
    /// A segment is present that the manifest does not list: the recorder did not write it.
    NotInManifest,
    /// An object in the recording's place that is neither a segment nor a manifest: the
    /// recorder did not write it.
    ForeignObject,
    /// A second manifest that verifies: a recorder writes one.
    ExtraManifest,
    /// The manifest's totals (records, last chain) disagree with the segments.
    ManifestMismatch { what: String },
    /// The recording (its `session_start` or manifest) names another namespace, session or
    /// pod than the place it sits at.
    WrongPlace { names: String, sits_at: String },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.object {
            write!(f, "{o}")?;
        } else {
            write!(f, "recording")?;
        }
        if let Some(l) = self.line {
            write!(f, " line {l}")?;
        }
        if let Some(s) = self.seq {
            write!(f, " (seq {s})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::SegmentName => {
                write!(f, "not a segment name (seg-NNNNNN-<random>.jsonl.zst)")
            }
            Problem::OutOfOrder { after } => write!(f, "listed after segment {after}"),
            Problem::DuplicateSegment { index } => {
                write!(f, "segment {index} appears more than once")
            }
            Problem::MissingSegments { first, last } if first == last => {
                write!(f, "segment {first} is missing before this one")
            }
            Problem::MissingSegments { first, last } => {
                write!(f, "segments {first}..={last} are missing before this one")
            }
            Problem::Mislabelled { sealed_as } => write!(
                f,
                "holds the records of segment {sealed_as} (objects were renamed or reordered)"
            ),
            Problem::Corrupt { error } => write!(f, "cannot be decompressed: {error}"),
            Problem::TornLine => write!(f, "ends in the middle of a record (truncated)"),
            Problem::NotSealed => write!(
                f,
                "ends without a seal: the recorder ships only sealed segments, so it was cut short or written by someone else"
            ),
            Problem::RecordsAfterSeal => write!(f, "records follow the seal"),
            Problem::Malformed { error } => write!(f, "not a record: {error}"),
            Problem::ChainBroken { expected, found } => write!(
                f,
                "chain broken: expected {expected}, found {found} (this record was altered, or records before it were removed or inserted)"
            ),
            Problem::SeqOutOfOrder { expected, found } => {
                write!(f, "seq {found} where {expected} was expected")
            }
            Problem::SealHeadMismatch => {
                write!(
                    f,
                    "the seal's head is not the chain of the record before it"
                )
            }
            Problem::BadSealSignature => {
                write!(
                    f,
                    "the seal's signature does not verify with the session key"
                )
            }
            Problem::SealRangeMismatch { first_seq } => {
                write!(f, "the seal says the segment starts at seq {first_seq}")
            }
            Problem::NoPublicKey => write!(
                f,
                "no public key: the recording has no session_start and none was given"
            ),
            Problem::PublicKeyMismatch { expected, found } => {
                write!(f, "signed with key {found}, expected {expected}")
            }
            Problem::KeyChanged { found } => {
                write!(f, "session_start announces a different key {found}")
            }
            Problem::ManifestUnreadable { error } => write!(f, "unreadable: {error}"),
            Problem::BadManifestSignature => {
                write!(f, "the signature does not verify with the session key")
            }
            Problem::ManifestSegmentMissing { name } => {
                write!(f, "lists {name}, which is not in the recording")
            }
            Problem::DigestMismatch { expected, found } => write!(
                f,
                "sha256 {found} differs from the manifest's {expected} (the object was altered)"
            ),
            Problem::NotInManifest => write!(
                f,
                "not listed in the signed manifest: the recorder did not write it (someone else can write to this recording's place in the sink)"
            ),
            Problem::ForeignObject => write!(
                f,
                "neither a segment nor a manifest: the recorder did not write it (someone else can write to this recording's place in the sink)"
            ),
            Problem::ExtraManifest => write!(f, "a second manifest signed with the session key"),
            Problem::ManifestMismatch { what } => write!(f, "disagrees with the segments: {what}"),
            Problem::WrongPlace { names, sits_at } => write!(
                f,
                "names {names}, but sits at {sits_at}: it is another recording, copied or moved here"
            ),
        }
    }
}

/// The members of a line that verification looks at; everything else is only hashed.
#[derive(Deserialize)]
struct Probe<'a> {
    seq: u64,
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    segment: Option<u64>,
    #[serde(default)]
    first_seq: Option<u64>,
    #[serde(default)]
    head: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    recovered: bool,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    pod_uid: Option<String>,
}

struct Walk<'k> {
    expected_key: Option<&'k [u8]>,
    /// How the expected key(s) are shown in a mismatch.
    expected_shown: String,
    place: Option<&'k Place>,
    key: Option<Vec<u8>>,
    key_b64: Option<String>,
    prev: String,
    next_seq: u64,
    records: u64,
    faults: Vec<Fault>,
    missing_key_reported: bool,
}

impl Walk<'_> {
    fn fault(&mut self, object: &str, seq: Option<u64>, line: Option<usize>, problem: Problem) {
        self.faults.push(Fault {
            object: Some(object.to_string()),
            seq,
            line,
            problem,
        });
    }

    fn signing_key(&mut self, object: &str, seq: u64, line: usize) -> Option<Vec<u8>> {
        if let Some(k) = self.expected_key {
            return Some(k.to_vec());
        }
        if self.key.is_none() && !self.missing_key_reported {
            self.missing_key_reported = true;
            self.fault(object, Some(seq), Some(line), Problem::NoPublicKey);
        }
        self.key.clone()
    }
}

/// What the auditor expects of a recording, beyond holding up on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Public keys (raw 32 bytes) the auditor trusts, e.g. from the AgentSession status or
    /// pinned by hand: the recording must be signed by one of them. Empty, the key its own
    /// `session_start` announces is used, which shows consistency and nothing about who
    /// wrote it (anyone can make a key and sign a recording with it).
    pub keys: Vec<Vec<u8>>,
    /// Where the recording sits: its `session_start` records and manifest must name this
    /// namespace, session, pod and pod UID (a recording copied under another session's or
    /// pod's place is not that session's recording).
    pub place: Option<Place>,
}

/// A recording's place below its sink: `<namespace>/<session>/<pod>-<pod-uid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub namespace: String,
    pub session: String,
    /// `<pod>-<pod-uid>`.
    pub pod_dir: String,
}

impl Place {
    /// The place of a recording from its URL or key prefix: its last three path components.
    pub fn of(location: &str) -> Option<Place> {
        let mut parts = location
            .trim_end_matches('/')
            .rsplit('/')
            .filter(|p| !p.is_empty());
        let pod_dir = parts.next()?.to_string();
        let session = parts.next()?.to_string();
        let namespace = parts.next()?.to_string();
        if namespace.ends_with(':') {
            return None;
        }
        Some(Place {
            namespace,
            session,
            pod_dir,
        })
    }

    /// What is wrong when a recording that names `who` sits here.
    fn mismatch(&self, who: &Identity<'_>) -> Option<Problem> {
        let mut names = Vec::new();
        if who.namespace != self.namespace {
            names.push(format!("namespace {}", who.namespace));
        }
        if who.session != self.session {
            names.push(format!("session {}", who.session));
        }
        if format!("{}-{}", who.pod, who.pod_uid) != self.pod_dir {
            names.push(format!("pod {} (uid {})", who.pod, who.pod_uid));
        }
        (!names.is_empty()).then(|| Problem::WrongPlace {
            names: names.join(", "),
            sits_at: format!("{}/{}/{}", self.namespace, self.session, self.pod_dir),
        })
    }
}

/// Whose recording a record or manifest says it is.
struct Identity<'a> {
    namespace: &'a str,
    session: &'a str,
    pod: &'a str,
    pod_uid: &'a str,
}

/// Verifies a recording. `expected_key` is the raw 32-byte public key the auditor trusts (from
/// the AgentSession status); without it the key announced in `session_start` is used.
pub fn verify(objects: &RecordingObjects, expected_key: Option<&[u8]>) -> Report {
    verify_expecting(
        objects,
        &Expected {
            keys: expected_key.map(<[u8]>::to_vec).into_iter().collect(),
            place: None,
        },
    )
}

/// Verifies a recording against what the auditor expects: signed by one of `expected.keys`,
/// and naming `expected.place`.
pub fn verify_expecting(objects: &RecordingObjects, expected: &Expected) -> Report {
    // With several trusted keys (one per pod of a session), the one the recording announces
    // is checked, if it is among them; otherwise the first, and every signature fails.
    let chosen = match expected.keys.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many => {
            let announced = announced_key(objects);
            Some(
                many.iter()
                    .find(|k| Some(*k) == announced.as_ref())
                    .unwrap_or(&many[0])
                    .clone(),
            )
        }
    };
    let expected_shown = expected
        .keys
        .iter()
        .map(|k| base64_of(k))
        .collect::<Vec<_>>()
        .join(" or ");
    let mut walk = Walk {
        expected_key: chosen.as_deref(),
        expected_shown,
        place: expected.place.as_ref(),
        key: None,
        key_b64: None,
        prev: GENESIS.to_string(),
        next_seq: 0,
        records: 0,
        faults: Vec::new(),
        missing_key_reported: false,
    };
    for name in &objects.foreign {
        walk.fault(name, None, None, Problem::ForeignObject);
    }
    // A manifest that verifies decides which segments are the recording's; without one,
    // every segment present is taken for the recorder's and must hold up on its own.
    let mut copies = Vec::new();
    let manifest = choose_manifest(&mut walk, objects, &mut copies);
    let walked: Vec<&SegmentObject> = match &manifest {
        Some((_, m)) => {
            let listed: BTreeSet<&str> = m
                .segments
                .iter()
                .map(|s| s.name.as_str())
                .chain(m.unshipped.iter().map(|s| s.name.as_str()))
                .collect();
            objects
                .segments
                .iter()
                .filter(|o| {
                    let ours = listed.contains(o.name.as_str());
                    if !ours {
                        // A copy of a listed segment under that segment's number only: what
                        // a rename after a lost answer leaves, nothing else.
                        let digest = crate::chain::sha256_hex(&o.bytes);
                        let index = parse_index(&o.name);
                        match m.segments.iter().find(|s| {
                            s.sha256 == digest && index.is_some() && parse_index(&s.name) == index
                        }) {
                            Some(same) => copies.push((o.name.clone(), same.name.clone())),
                            None => walk.fault(&o.name, None, None, Problem::NotInManifest),
                        }
                    }
                    ours
                })
                .collect()
        }
        None => objects.segments.iter().collect(),
    };

    let mut summaries = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next_index = 1u64;
    let mut highest = 0u64;
    let mut i = 0;
    while i < walked.len() {
        // Objects that claim one segment number: the one whose records follow on from the
        // chain is the recording's, the others are named as duplicates.
        let index = parse_index(&walked[i].name);
        let mut end = i + 1;
        while end < walked.len() && index.is_some() && parse_index(&walked[end].name) == index {
            end += 1;
        }
        let group = &walked[i..end];
        let pick = if group.len() > 1 {
            group
                .iter()
                .position(|o| chains_from(o, &walk.prev))
                .unwrap_or(0)
        } else {
            0
        };
        for (k, o) in group.iter().enumerate() {
            if k != pick {
                walk.fault(
                    &o.name,
                    None,
                    None,
                    Problem::DuplicateSegment {
                        index: index.unwrap_or_default(),
                    },
                );
            }
        }
        let object = group[pick];
        let name = object.name.as_str();
        match index {
            None => walk.fault(name, None, None, Problem::SegmentName),
            Some(ix) => {
                if !seen.insert(ix) {
                    walk.fault(name, None, None, Problem::DuplicateSegment { index: ix });
                } else if ix < highest {
                    walk.fault(name, None, None, Problem::OutOfOrder { after: highest });
                } else if ix > next_index {
                    walk.fault(
                        name,
                        None,
                        None,
                        Problem::MissingSegments {
                            first: next_index,
                            last: ix - 1,
                        },
                    );
                }
                highest = highest.max(ix);
                next_index = next_index.max(ix + 1);
            }
        }
        summaries.push(walk_segment(&mut walk, name, index, &object.bytes));
        i = end;
    }

    let completeness = match &manifest {
        None => Completeness::Open,
        Some((name, m)) => {
            let absent = check_manifest(&mut walk, objects, &summaries, name, m);
            if absent.is_empty() {
                Completeness::Complete
            } else {
                Completeness::Unshipped(absent)
            }
        }
    };
    let head = (walk.records > 0).then(|| walk.prev.clone());
    Report {
        segments: summaries,
        records: walk.records,
        public_key: walk.key_b64,
        head,
        completeness,
        manifest: manifest.map(|(name, _)| name),
        faults: walk.faults,
        copies,
    }
}

/// Whether a segment's first record chains on from `prev`.
fn chains_from(object: &SegmentObject, prev: &str) -> bool {
    let Ok(text) = decode_segment(&object.name, &object.bytes) else {
        return false;
    };
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    chain::split_line(first).is_ok_and(|split| split.expected_chain(prev) == split.chain)
}

/// The key `session_start` announces first, before anything is walked: what a manifest is
/// checked with when the auditor gave no key.
fn announced_key(objects: &RecordingObjects) -> Option<Vec<u8>> {
    for object in &objects.segments {
        let Ok(text) = decode_segment(&object.name, &object.bytes) else {
            continue;
        };
        for line in text.split(|b| *b == b'\n') {
            if let Ok(probe) = serde_json::from_slice::<Probe<'_>>(line)
                && probe.kind == "session_start"
            {
                return probe.public_key.as_deref().and_then(key::decode_public_key);
            }
        }
    }
    None
}

/// The manifest signed with the session key, among `manifest.json` and any manifest under a
/// fallback name; every other one is a fault.
/// The manifest signed with the session key. A second one with the very same bytes is the
/// same manifest written again (its first answer was lost) and goes to `copies`.
fn choose_manifest(
    walk: &mut Walk<'_>,
    objects: &RecordingObjects,
    copies: &mut Vec<(String, String)>,
) -> Option<(String, Manifest)> {
    let candidates = objects
        .manifest
        .iter()
        .map(|b| (MANIFEST, b.as_slice()))
        .chain(
            objects
                .other_manifests
                .iter()
                .map(|o| (o.name.as_str(), o.bytes.as_slice())),
        );
    let key = walk
        .expected_key
        .map(<[u8]>::to_vec)
        .or_else(|| announced_key(objects));
    let mut chosen: Option<(String, Manifest)> = None;
    let mut chosen_bytes: &[u8] = &[];
    for (name, bytes) in candidates {
        let (manifest, canonical, signature) = match Manifest::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                walk.fault(
                    name,
                    None,
                    None,
                    Problem::ManifestUnreadable {
                        error: e.to_string(),
                    },
                );
                continue;
            }
        };
        let Some(k) = &key else {
            if !walk.missing_key_reported {
                walk.missing_key_reported = true;
                walk.fault(name, None, None, Problem::NoPublicKey);
            }
            continue;
        };
        if !Manifest::signature_valid(k, &canonical, &signature) {
            walk.fault(name, None, None, Problem::BadManifestSignature);
        } else if let Some((first, _)) = &chosen {
            if bytes == chosen_bytes {
                copies.push((name.to_string(), first.clone()));
            } else {
                walk.fault(name, None, None, Problem::ExtraManifest);
            }
        } else {
            chosen = Some((name.to_string(), manifest));
            chosen_bytes = bytes;
        }
    }
    chosen
}

fn walk_segment(
    walk: &mut Walk<'_>,
    name: &str,
    index: Option<u64>,
    bytes: &[u8],
) -> SegmentSummary {
    let mut summary = SegmentSummary {
        name: name.to_string(),
        index,
        records: 0,
        first_seq: None,
        last_seq: None,
        sealed: false,
        recovered: false,
        chain: None,
    };
    let text = match decode_segment(name, bytes) {
        Ok(t) => t,
        Err(e) => {
            walk.fault(
                name,
                None,
                None,
                Problem::Corrupt {
                    error: e.to_string(),
                },
            );
            return summary;
        }
    };
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    // split leaves an empty piece after the final newline; anything else there is torn.
    let tail = lines.pop().unwrap_or_default();
    if !tail.is_empty() {
        walk.fault(name, None, Some(lines.len() + 1), Problem::TornLine);
    }
    for (n, line) in lines.iter().enumerate() {
        let line_no = n + 1;
        if summary.sealed {
            walk.fault(name, None, Some(line_no), Problem::RecordsAfterSeal);
            summary.sealed = false;
        }
        let split = match chain::split_line(line) {
            Ok(s) => s,
            Err(e) => {
                walk.fault(
                    name,
                    None,
                    Some(line_no),
                    Problem::Malformed {
                        error: e.to_string(),
                    },
                );
                continue;
            }
        };
        let probe: Probe<'_> = match serde_json::from_slice(line) {
            Ok(p) => p,
            Err(e) => {
                walk.fault(
                    name,
                    None,
                    Some(line_no),
                    Problem::Malformed {
                        error: e.to_string(),
                    },
                );
                continue;
            }
        };
        let seq = probe.seq;
        let expected = split.expected_chain(&walk.prev);
        if expected != split.chain {
            walk.fault(
                name,
                Some(seq),
                Some(line_no),
                Problem::ChainBroken {
                    expected,
                    found: split.chain.to_string(),
                },
            );
        }
        if seq != walk.next_seq {
            walk.fault(
                name,
                Some(seq),
                Some(line_no),
                Problem::SeqOutOfOrder {
                    expected: walk.next_seq,
                    found: seq,
                },
            );
        }
        summary.first_seq.get_or_insert(seq);
        summary.last_seq = Some(seq);
        summary.records += 1;
        walk.records += 1;

        match probe.kind.as_ref() {
            "session_start" => {
                if let Some(place) = walk.place {
                    let names = Identity {
                        namespace: probe.namespace.as_deref().unwrap_or_default(),
                        session: probe.session.as_deref().unwrap_or_default(),
                        pod: probe.pod.as_deref().unwrap_or_default(),
                        pod_uid: probe.pod_uid.as_deref().unwrap_or_default(),
                    };
                    if let Some(problem) = place.mismatch(&names) {
                        walk.fault(name, Some(seq), Some(line_no), problem);
                    }
                }
                on_session_start(walk, name, seq, line_no, probe.public_key)
            }
            "seal" => {
                summary.sealed = true;
                summary.recovered = probe.recovered;
                check_seal(walk, name, index, seq, line_no, &probe, summary.first_seq);
            }
            _ => {}
        }
        walk.prev = split.chain.to_string();
        walk.next_seq = seq + 1;
        summary.chain = Some(walk.prev.clone());
    }
    if !summary.sealed {
        walk.fault(name, summary.last_seq, None, Problem::NotSealed);
    }
    summary
}

fn on_session_start(
    walk: &mut Walk<'_>,
    name: &str,
    seq: u64,
    line: usize,
    public_key: Option<String>,
) {
    let Some(b64) = public_key else {
        walk.fault(
            name,
            Some(seq),
            Some(line),
            Problem::Malformed {
                error: "session_start without public_key".into(),
            },
        );
        return;
    };
    let Some(raw) = key::decode_public_key(&b64) else {
        walk.fault(
            name,
            Some(seq),
            Some(line),
            Problem::Malformed {
                error: "public_key is not 32 bytes of base64".into(),
            },
        );
        return;
    };
    match &walk.key {
        None => {
            if let Some(expected) = walk.expected_key
                && expected != raw.as_slice()
            {
                let expected = walk.expected_shown.clone();
                walk.fault(
                    name,
                    Some(seq),
                    Some(line),
                    Problem::PublicKeyMismatch {
                        expected,
                        found: b64.clone(),
                    },
                );
            }
            walk.key = Some(raw);
            walk.key_b64 = Some(b64);
        }
        Some(k) if *k != raw => {
            walk.fault(
                name,
                Some(seq),
                Some(line),
                Problem::KeyChanged { found: b64 },
            );
        }
        Some(_) => {}
    }
}

fn check_seal(
    walk: &mut Walk<'_>,
    name: &str,
    index: Option<u64>,
    seq: u64,
    line: usize,
    probe: &Probe<'_>,
    first_seq: Option<u64>,
) {
    let (Some(segment), Some(head), Some(signature)) = (
        probe.segment,
        probe.head.as_deref(),
        probe.signature.as_deref(),
    ) else {
        walk.fault(
            name,
            Some(seq),
            Some(line),
            Problem::Malformed {
                error: "seal without segment, head or signature".into(),
            },
        );
        return;
    };
    if index.is_some_and(|ix| ix != segment) {
        walk.fault(
            name,
            Some(seq),
            Some(line),
            Problem::Mislabelled { sealed_as: segment },
        );
    }
    if let Some(claimed) = probe.first_seq
        && Some(claimed) != first_seq
    {
        walk.fault(
            name,
            Some(seq),
            Some(line),
            Problem::SealRangeMismatch { first_seq: claimed },
        );
    }
    if head != walk.prev {
        walk.fault(name, Some(seq), Some(line), Problem::SealHeadMismatch);
    }
    if let Some(k) = walk.signing_key(name, seq, line)
        && !key::verify_seal(&k, head, signature)
    {
        walk.fault(name, Some(seq), Some(line), Problem::BadSealSignature);
    }
}

/// Checks the chosen manifest against what was read; returns the segments it lists as
/// unshipped that are indeed not there.
fn check_manifest(
    walk: &mut Walk<'_>,
    objects: &RecordingObjects,
    summaries: &[SegmentSummary],
    name: &str,
    manifest: &Manifest,
) -> Vec<UnshippedSegment> {
    if let Some(place) = walk.place {
        let names = Identity {
            namespace: &manifest.namespace,
            session: &manifest.session,
            pod: &manifest.pod,
            pod_uid: &manifest.pod_uid,
        };
        if let Some(problem) = place.mismatch(&names) {
            walk.fault(name, None, None, problem);
        }
    }
    if walk
        .key_b64
        .as_deref()
        .is_some_and(|k| k != manifest.public_key)
    {
        walk.fault(
            name,
            None,
            None,
            Problem::ManifestMismatch {
                what: format!("public_key {}", manifest.public_key),
            },
        );
    }
    let present: BTreeMap<&str, &[u8]> = objects
        .segments
        .iter()
        .map(|o| (o.name.as_str(), o.bytes.as_slice()))
        .collect();
    for entry in &manifest.segments {
        match present.get(entry.name.as_str()) {
            None => walk.fault(
                name,
                None,
                None,
                Problem::ManifestSegmentMissing {
                    name: entry.name.clone(),
                },
            ),
            Some(bytes) => {
                let found = chain::sha256_hex(bytes);
                if found != entry.sha256 {
                    walk.fault(
                        &entry.name,
                        None,
                        None,
                        Problem::DigestMismatch {
                            expected: entry.sha256.clone(),
                            found,
                        },
                    );
                }
            }
        }
    }
    // Unshipped segments: the recorder stopped shipping at its deadline, so they are the
    // recording's last ones. One may be there after all (its upload landed as the recorder
    // stopped): then it must be the segment the manifest signed.
    let mut absent = Vec::new();
    for entry in &manifest.unshipped {
        match summaries.iter().find(|s| s.name == entry.name) {
            Some(s) if s.chain.as_deref() != Some(entry.chain.as_str()) => walk.fault(
                &entry.name,
                None,
                None,
                Problem::ManifestMismatch {
                    what: format!(
                        "the manifest lists it as unshipped with chain {}, its last record has {}",
                        entry.chain,
                        s.chain.as_deref().unwrap_or("none")
                    ),
                },
            ),
            Some(_) => {}
            None => absent.push(entry.clone()),
        }
    }
    let unread: u64 = absent
        .iter()
        .map(|s| s.last_seq.saturating_sub(s.first_seq) + 1)
        .sum();
    if manifest.records != walk.records + unread {
        walk.fault(
            name,
            None,
            None,
            Problem::ManifestMismatch {
                what: format!(
                    "{} records listed, {} read{}",
                    manifest.records,
                    walk.records,
                    if unread > 0 {
                        format!(" and {unread} unshipped")
                    } else {
                        String::new()
                    }
                ),
            },
        );
    }
    let last = absent
        .iter()
        .max_by_key(|s| s.last_seq)
        .filter(|s| walk.records == 0 || s.last_seq >= walk.next_seq)
        .map_or(walk.prev.as_str(), |s| s.chain.as_str());
    if manifest.head != last {
        walk.fault(
            name,
            None,
            None,
            Problem::ManifestMismatch {
                what: format!("last chain {} listed, {} read", manifest.head, last),
            },
        );
    }
    absent
}

fn base64_of(raw: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(raw)
}
