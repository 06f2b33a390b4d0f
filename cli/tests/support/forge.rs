//! What an attacker inside the agent container can write when it reaches the sink: a
//! recording that is consistent with itself — every chain link right, every seal and the
//! manifest signed — but with a key of its own making, since the sidecar's key never leaves the
//! sidecar. SHA-256 and Ed25519 are public: nothing but the key tells this apart from a real
//! recording. Also used to write recordings as recorders before a fix wrote them (exchange ids
//! starting again at 1 after a restart).

#![allow(dead_code)]

use std::path::Path;

use cassette_recording::chain::{self, GENESIS, sha256_hex};
use cassette_recording::key::SessionKey;
use cassette_recording::record::{Event, Seal, SessionEnd, SessionStart};
use cassette_recording::segment::{Manifest, ManifestSegment, RecordingPath};

/// A recording being forged: records are chained as they are added; `seal` closes a segment.
pub struct Forger {
    pub key: SessionKey,
    pub path: RecordingPath,
    seq: u64,
    head: String,
    segment: u64,
    first_seq: Option<u64>,
    lines: Vec<u8>,
    /// Segments written so far: (name, compressed bytes, first seq, last seq, seal chain).
    pub segments: Vec<(String, Vec<u8>, u64, u64, String)>,
    second: u64,
}

impl Forger {
    /// A forger with a key of its own.
    pub fn new(path: RecordingPath) -> Self {
        Forger {
            key: SessionKey::generate().expect("key"),
            path,
            seq: 0,
            head: GENESIS.to_string(),
            segment: 1,
            first_seq: None,
            lines: Vec::new(),
            segments: Vec::new(),
            second: 0,
        }
    }

    /// The next record, one second after the previous one.
    pub fn add(&mut self, event: Event) {
        self.second += 1;
        let time = format!(
            "2026-05-01T12:{:02}:{:02}.000000000Z",
            self.second / 60,
            self.second % 60
        );
        self.add_at(&time, event);
    }

    /// The next record at a given time.
    pub fn add_at(&mut self, time: &str, event: Event) {
        let canonical = chain::canonical(self.seq, time, &event);
        let link = chain::link(&self.head, &canonical);
        self.lines.extend(chain::line(&canonical, &link));
        self.first_seq.get_or_insert(self.seq);
        self.seq += 1;
        self.head = link;
    }

    /// `session_start` for this forger's path and key (`restarted` after a crash).
    pub fn start(&mut self, restarted: bool) {
        let p = self.path.clone();
        self.add(Event::SessionStart(SessionStart {
            namespace: p.namespace,
            session: p.session,
            pod: p.pod,
            pod_uid: p.pod_uid,
            public_key: self.key.public_key_base64(),
            recorder: "cassette-recording/0.1.0".into(),
            durability: "batched".into(),
            on_failure: "closed".into(),
            max_body_bytes: 1 << 20,
            agent: None,
            requested_by: None,
            restarted,
            digest_key_id: None,
        }));
    }

    /// Seals the open segment (a signed `seal` record) and compresses it.
    pub fn seal(&mut self) {
        let first_seq = self.first_seq.take().expect("records to seal");
        let head = self.head.clone();
        let seal = Event::Seal(Seal {
            segment: self.segment,
            first_seq,
            signature: self.key.sign_seal(&head),
            head,
            recovered: false,
        });
        self.add(seal);
        self.first_seq = None;
        let bytes = zstd::stream::encode_all(&self.lines[..], 3).expect("zstd");
        self.lines.clear();
        self.segments.push((
            format!("seg-{:06}.jsonl.zst", self.segment),
            bytes,
            first_seq,
            self.seq - 1,
            self.head.clone(),
        ));
        self.segment += 1;
    }

    /// Ends the recording: `session_end`, a seal, and the signed manifest.
    pub fn finish(&mut self) -> Vec<u8> {
        self.add(Event::SessionEnd(SessionEnd {
            reason: "shutdown".into(),
        }));
        self.seal();
        let manifest = Manifest {
            version: 1,
            namespace: self.path.namespace.clone(),
            session: self.path.session.clone(),
            pod: self.path.pod.clone(),
            pod_uid: self.path.pod_uid.clone(),
            public_key: self.key.public_key_base64(),
            ended: "2026-05-01T13:00:00.000000000Z".into(),
            records: self.seq,
            head: self.head.clone(),
            segments: self
                .segments
                .iter()
                .map(|(name, bytes, first, last, chain)| ManifestSegment {
                    name: name.clone(),
                    first_seq: *first,
                    last_seq: *last,
                    chain: chain.clone(),
                    bytes: bytes.len() as u64,
                    sha256: sha256_hex(bytes),
                })
                .collect(),
            unshipped: Vec::new(),
        };
        manifest.signed_bytes(&self.key)
    }

    /// Writes the segments (and a manifest, when given) into `sink_root/<prefix>/`.
    pub fn write(&self, sink_root: &Path, manifest: Option<&[u8]>) -> std::path::PathBuf {
        let dir = sink_root.join(self.path.prefix());
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, bytes, ..) in &self.segments {
            std::fs::write(dir.join(name), bytes).expect("write segment");
        }
        if let Some(m) = manifest {
            std::fs::write(dir.join("manifest.json"), m).expect("write manifest");
        }
        dir
    }
}
