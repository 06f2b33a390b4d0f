//! Names and the manifest: how segments are called in a spool and a sink, where a pod's
//! recording lives, and the signed `manifest.json` that closes a recording. Pure.

use serde::{Deserialize, Serialize};

use crate::key::{self, SessionKey};

/// File name of the manifest in a recording.
pub const MANIFEST: &str = "manifest.json";

/// Hex digits of the random part of a name.
const TOKEN_LEN: usize = 16;

/// A fresh random part for a name: 16 lowercase hex digits (64 bits from the system's
/// random source), so that nobody can create a recording's next object before the recorder
/// does.
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; TOKEN_LEN / 2];
    // The system random source failing is not something to record around: a name must not
    // be guessable, and a fixed fallback would be.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    crate::chain::hex(&b)
}

/// A segment's name: its number, and the random part that makes the name impossible to
/// guess ahead (`None` only in recordings written before names had one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub index: u64,
    pub token: Option<String>,
}

impl SegmentName {
    /// Segment `index` with a fresh random part.
    pub fn fresh(index: u64) -> Self {
        SegmentName {
            index,
            token: Some(random_token()),
        }
    }

    /// The same segment under a fresh random part (its name was taken).
    pub fn renamed(&self) -> Self {
        Self::fresh(self.index)
    }

    fn stem(&self) -> String {
        match &self.token {
            Some(t) => format!("seg-{:06}-{t}", self.index),
            None => format!("seg-{:06}", self.index),
        }
    }

    /// `seg-000042-9f86d081884c7d65.jsonl.zst`: the object, sealed and compressed.
    pub fn object(&self) -> String {
        format!("{}.jsonl.zst", self.stem())
    }

    /// `seg-000042-9f86d081884c7d65.jsonl`: the spool file while it is written.
    pub fn spool(&self) -> String {
        format!("{}.jsonl", self.stem())
    }

    /// Takes apart a name made by [`SegmentName::object`] or [`SegmentName::spool`] (or the
    /// older `seg-NNNNNN.jsonl[.zst]`).
    pub fn parse(name: &str) -> Option<SegmentName> {
        let rest = name.strip_prefix("seg-")?;
        let stem = rest
            .strip_suffix(".jsonl.zst")
            .or_else(|| rest.strip_suffix(".jsonl"))?;
        let (digits, token) = match stem.split_once('-') {
            Some((d, t)) => (d, Some(t)),
            None => (stem, None),
        };
        if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if let Some(t) = token
            && (t.len() != TOKEN_LEN || !t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return None;
        }
        Some(SegmentName {
            index: digits.parse().ok()?,
            token: token.map(str::to_string),
        })
    }
}

/// `seg-000042.jsonl.zst`: the name segment 42 had before names carried a random part.
pub fn segment_name(index: u64) -> String {
    SegmentName { index, token: None }.object()
}

/// The segment number in a segment's name (either form, object or spool file).
pub fn parse_index(name: &str) -> Option<u64> {
    SegmentName::parse(name).map(|n| n.index)
}

/// Whether `name` is a manifest's: `manifest.json`, or `manifest-<random>.json`, the name a
/// recorder writes its manifest under when someone else took `manifest.json`.
pub fn is_manifest_name(name: &str) -> bool {
    name == MANIFEST
        || name
            .strip_prefix("manifest-")
            .and_then(|r| r.strip_suffix(".json"))
            .is_some_and(|t| {
                t.len() == TOKEN_LEN && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
}

/// `manifest-<random>.json`: where a manifest goes when `manifest.json` was taken.
pub fn fallback_manifest_name() -> String {
    format!("manifest-{}.json", random_token())
}

/// Where one pod's recording lives below a sink: `<namespace>/<session>/<pod>-<pod-uid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingPath {
    pub namespace: String,
    pub session: String,
    pub pod: String,
    pub pod_uid: String,
}

impl RecordingPath {
    /// The prefix below the sink, without a trailing slash.
    pub fn prefix(&self) -> String {
        format!(
            "{}/{}/{}-{}",
            self.namespace, self.session, self.pod, self.pod_uid
        )
    }
}

/// One segment as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSegment {
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// `chain` of the segment's last record (its seal).
    pub chain: String,
    /// Size of the object (compressed) in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the object's bytes.
    pub sha256: String,
}

/// The manifest's content. On disk it is this, compact, with `"signature"` appended as the
/// last member; the signature is over the bytes without it (see FORMAT.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub namespace: String,
    pub session: String,
    pub pod: String,
    pub pod_uid: String,
    pub public_key: String,
    /// When the session ended (RFC 3339).
    pub ended: String,
    /// Number of records in the recording.
    pub records: u64,
    /// `chain` of the last record of the recording.
    pub head: String,
    pub segments: Vec<ManifestSegment>,
    /// Segments the recorder sealed but could not ship before its deadline (the pod was
    /// going away): signed here so that the loss is on the record, not silent. Absent when
    /// empty, as in every manifest written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unshipped: Vec<UnshippedSegment>,
}

/// A segment the manifest lists as sealed but not shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnshippedSegment {
    /// The name it would have had in the sink.
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// `chain` of its seal.
    pub chain: String,
}

/// Why manifest bytes could not be taken apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json does not end with a \"signature\" member")]
    NoSignature,
    #[error("manifest.json is not a valid manifest: {0}")]
    Malformed(String),
}

const SIGNATURE_MEMBER: &[u8] = b",\"signature\":\"";

impl Manifest {
    /// The bytes that are signed: compact JSON in declaration order.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes to JSON")
    }

    /// `manifest.json` as written: canonical bytes with the signature as the last member.
    pub fn signed_bytes(&self, key: &SessionKey) -> Vec<u8> {
        let canonical = self.canonical();
        let signature = key.sign_manifest(&canonical);
        let mut out = canonical[..canonical.len() - 1].to_vec();
        out.extend_from_slice(SIGNATURE_MEMBER);
        out.extend_from_slice(signature.as_bytes());
        out.extend_from_slice(b"\"}\n");
        out
    }

    /// Takes `manifest.json` apart: the manifest, its canonical bytes and its signature.
    pub fn parse(bytes: &[u8]) -> Result<(Manifest, Vec<u8>, String), ManifestError> {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let body = bytes
            .strip_suffix(b"\"}")
            .ok_or(ManifestError::NoSignature)?;
        let at = find_last(body, SIGNATURE_MEMBER).ok_or(ManifestError::NoSignature)?;
        let signature = std::str::from_utf8(&body[at + SIGNATURE_MEMBER.len()..])
            .map_err(|_| ManifestError::NoSignature)?
            .to_string();
        let mut canonical = body[..at].to_vec();
        canonical.push(b'}');
        let manifest: Manifest = serde_json::from_slice(&canonical)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        Ok((manifest, canonical, signature))
    }

    /// Whether `signature` is this key's signature over `canonical`.
    pub fn signature_valid(public_key: &[u8], canonical: &[u8], signature: &str) -> bool {
        key::verify_manifest(public_key, canonical, signature)
    }
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_index_and_parse_back() {
        assert_eq!(segment_name(1), "seg-000001.jsonl.zst");
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_index("seg-000010.jsonl.zst"), Some(10));
        assert_eq!(parse_index("seg-1234567.jsonl"), Some(1234567));
        assert_eq!(parse_index("seg-12.jsonl"), None);
        assert_eq!(parse_index("manifest.json"), None);

        let a = SegmentName::fresh(9);
        let b = SegmentName::fresh(10);
        assert!(a.object() < b.object(), "a listing shows segments in order");
        assert_eq!(SegmentName::parse(&a.object()), Some(a.clone()));
        assert_eq!(SegmentName::parse(&a.spool()), Some(a.clone()));
        assert_ne!(a.renamed(), a, "a fresh random part each time");
        assert_ne!(SegmentName::fresh(9), a);
        let token = a.token.clone().unwrap();
        assert_eq!(token.len(), 16);
        // Only the recorder's shape of random part is a segment name.
        for bad in [
            "seg-000001-.jsonl.zst",
            "seg-000001-XYZ.jsonl.zst",
            "seg-000001-0123456789abcdef0.jsonl.zst",
            "seg-000001-0123456789ABCDEF.jsonl.zst",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
        assert!(is_manifest_name(MANIFEST));
        assert!(is_manifest_name(&fallback_manifest_name()));
        assert!(!is_manifest_name("manifest-x.json"));
        assert!(!is_manifest_name("manifest.json.bak"));
    }

    #[test]
    fn manifest_signature_round_trip() {
        let key = SessionKey::generate().unwrap();
        let m = Manifest {
            version: 1,
            namespace: "ns".into(),
            session: "s".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            public_key: key.public_key_base64(),
            ended: "t".into(),
            records: 0,
            head: "h".into(),
            segments: vec![],
            unshipped: vec![],
        };
        let bytes = m.signed_bytes(&key);
        let (parsed, canonical, sig) = Manifest::parse(&bytes).unwrap();
        assert_eq!(parsed, m);
        assert!(Manifest::signature_valid(
            key.public_key(),
            &canonical,
            &sig
        ));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["signature"], sig.as_str());
        let mut tampered = bytes.clone();
        tampered[20] ^= 1;
        let ok = match Manifest::parse(&tampered) {
            Ok((_, c, s)) => Manifest::signature_valid(key.public_key(), &c, &s),
            Err(_) => false,
        };
        assert!(!ok);
    }
}
