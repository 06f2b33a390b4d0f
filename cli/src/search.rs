//! `search --secret-file`: which exchanges carried a given secret, proven by fingerprint.
//! The recording never holds a secret, only `«masked:<detector>:<fingerprint>»`; the auditor
//! fingerprints the candidate secrets of a file with the session's fingerprint key and looks
//! for those fingerprints. `search --body-file`: which recorded bodies were a given file,
//! proven by the keyed digest every body keeps (also the ones too long to store). Pure: the
//! key and the file's bytes come from the caller.
//!
//! The fingerprint and the candidates of a file are `cassette-rules`' own (the masker's
//! contract: first 12 bytes of HMAC-SHA-256, lowercase hex, over the canonical secret), so a
//! search finds exactly what the sidecar masked.

pub use cassette_rules::mask::{fingerprint, secret_candidates as candidates};

use crate::timeline::{Exchange, Timeline};

/// One mask in recorded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask<'a> {
    pub detector: &'a str,
    pub fingerprint: &'a str,
}

/// The masks `«masked:<detector>:<fingerprint>»` in a text.
pub fn masks_in(text: &str) -> Vec<Mask<'_>> {
    const OPEN: &str = "«masked:";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        rest = &rest[at + OPEN.len()..];
        let Some(close) = rest.find('»') else { break };
        let inner = &rest[..close];
        if let Some((detector, fingerprint)) = inner.rsplit_once(':')
            && !detector.is_empty()
            && !fingerprint.is_empty()
            && fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
        {
            out.push(Mask {
                detector,
                fingerprint,
            });
        }
        rest = &rest[close..];
    }
    out
}

/// Where in an exchange a mask was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The request target (path or query).
    Url,
    /// A header, by name.
    Header(String),
    /// A trailer, by name.
    Trailer(String),
    Body,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Url => write!(f, "url"),
            Place::Header(name) => write!(f, "header {name}"),
            Place::Trailer(name) => write!(f, "trailer {name}"),
            Place::Body => write!(f, "body"),
        }
    }
}

/// An exchange that carried one of the candidate secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The exchange's label (`N`, or `RUN.N` where ids were reused after a restart).
    pub exchange: String,
    pub time: String,
    pub host: String,
    pub method: String,
    pub path: String,
    /// `request` (agent → upstream) or `response` (upstream → agent).
    pub direction: &'static str,
    pub place: Place,
    pub detector: String,
    /// Which candidate of the file matched.
    pub candidate: String,
    pub fingerprint: String,
}

/// Every place in the timeline where a mask carries one of `wanted` (candidate source,
/// fingerprint).
pub fn search(timeline: &Timeline, wanted: &[(String, String)]) -> Vec<Found> {
    let mut out = Vec::new();
    for x in timeline.exchanges_in_order() {
        let mut look = |direction: &'static str, place: Place, text: &str| {
            for mask in masks_in(text) {
                for (candidate, fp) in wanted {
                    if mask.fingerprint.eq_ignore_ascii_case(fp) {
                        out.push(found(x, direction, place.clone(), &mask, candidate));
                    }
                }
            }
        };
        if let Some(r) = &x.request {
            look("request", Place::Url, &r.path);
            for (name, value) in &r.headers {
                look("request", Place::Header(name.clone()), value);
            }
        }
        look(
            "request",
            Place::Body,
            &String::from_utf8_lossy(&x.request_body.bytes),
        );
        if let Some(r) = &x.response {
            for (name, value) in &r.headers {
                look("response", Place::Header(name.clone()), value);
            }
            for (name, value) in r.trailers.iter().flatten() {
                look("response", Place::Trailer(name.clone()), value);
            }
        }
        look(
            "response",
            Place::Body,
            &String::from_utf8_lossy(&x.response_body.bytes),
        );
        for (name, value) in x.end.iter().flat_map(|e| e.trailers.iter().flatten()) {
            look("response", Place::Trailer(name.clone()), value);
        }
    }
    out
}

/// A recorded body a candidate file matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyMatch {
    pub exchange: String,
    pub time: String,
    pub host: String,
    pub method: String,
    pub path: String,
    /// `request` (sent by the agent) or `response` (seen by it).
    pub direction: &'static str,
    /// Full length and bytes stored.
    pub length: u64,
    pub stored: u64,
    /// How the candidate was turned into what was recorded: `as it is`, or `after masking`.
    pub how: String,
}

/// The bodies of the timeline whose digest is one of `wanted` (how, digest), only in the runs
/// `runs` keep (the recorder runs whose digest key is the caller's).
pub fn body_matches(
    timeline: &Timeline,
    wanted: &[(String, String)],
    runs: impl Fn(u32) -> bool,
) -> Vec<BodyMatch> {
    let mut out = Vec::new();
    for x in timeline.exchanges_in_order().filter(|x| runs(x.run)) {
        for (direction, body) in [("request", &x.request_body), ("response", &x.response_body)] {
            let Some(digest) = &body.digest else { continue };
            if let Some((how, _)) = wanted.iter().find(|(_, d)| d == digest) {
                let (method, path) = x
                    .request
                    .as_ref()
                    .map(|r| (r.method.clone(), r.path.clone()))
                    .unwrap_or_default();
                out.push(BodyMatch {
                    exchange: x.label.clone(),
                    time: x.first_time.clone(),
                    host: x.host().to_string(),
                    method,
                    path,
                    direction,
                    length: body.full_length(),
                    stored: body.bytes.len() as u64,
                    how: how.clone(),
                });
            }
        }
    }
    out
}

fn found(x: &Exchange, direction: &'static str, place: Place, mask: &Mask, c: &str) -> Found {
    let (method, path) = x
        .request
        .as_ref()
        .map(|r| (r.method.clone(), r.path.clone()))
        .unwrap_or_default();
    Found {
        exchange: x.label.clone(),
        time: x.first_time.clone(),
        host: x.host().to_string(),
        method,
        path,
        direction,
        place,
        detector: mask.detector.to_string(),
        candidate: c.to_string(),
        fingerprint: mask.fingerprint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_truncated_hmac_sha256() {
        // HMAC-SHA-256 test case 2 of RFC 4231: key "Jefe".
        let fp = fingerprint(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(fp, "5bdcc146bf60754e6a042426");
    }

    #[test]
    fn finds_masks_in_text() {
        let text = "a «masked:github-token:0a1b2c» b «masked:x» «masked:jwt:ffee»";
        let masks = masks_in(text);
        assert_eq!(masks.len(), 2);
        assert_eq!(masks[0].detector, "github-token");
        assert_eq!(masks[0].fingerprint, "0a1b2c");
        assert_eq!(masks[1].detector, "jwt");
    }

    #[test]
    fn service_account_key_gives_its_private_key_first() {
        let file = br#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","client_email":"a@b"}"#;
        let c = candidates(file);
        assert_eq!(c[0].source, "private_key");
        assert_eq!(
            c[0].value,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
        );
    }

    #[test]
    fn token_files_and_env_files() {
        let c = candidates(b"ghp_0123456789abcdefghijklmnopqrstuvwxyz\n");
        assert_eq!(c[0].value, b"ghp_0123456789abcdefghijklmnopqrstuvwxyz");
        let c = candidates(b"export DB_PASSWORD=s3cret-db-password\n");
        let values: Vec<&[u8]> = c.iter().map(|c| c.value.as_slice()).collect();
        assert!(values.contains(&b"s3cret-db-password".as_slice()), "{c:?}");
    }
}
