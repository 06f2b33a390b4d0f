//! `search --secret-file`: which exchanges carried a given secret, proven by fingerprint
//! where it was masked, and by its bytes where it is stored as it is (a detector missed it).
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
    /// A file of a pushed or fetched pack, by the path a tree of the pack gives it.
    GitFile {
        path: String,
        blob: String,
        commit: Option<String>,
    },
    /// A git object's contents (a commit's message, a blob no tree of the pack names).
    GitObject {
        kind: String,
        id: String,
    },
    /// A field of another record (a WebSocket message, a stream's bytes, a DNS name, …).
    Record {
        kind: String,
        field: String,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Url => write!(f, "url"),
            Place::Header(name) => write!(f, "header {name}"),
            Place::Trailer(name) => write!(f, "trailer {name}"),
            Place::Body => write!(f, "body"),
            Place::GitFile { path, blob, commit } => {
                write!(f, "file {path} (blob {}", short(blob))?;
                if let Some(commit) = commit {
                    write!(f, ", commit {}", short(commit))?;
                }
                write!(f, ")")
            }
            Place::GitObject { kind, id } => write!(f, "git {kind} {}", short(id)),
            Place::Record { kind, field } => write!(f, "{kind} record, {field}"),
        }
    }
}

/// A git object id as git shortens it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// An exchange that carried one of the candidate secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The exchange's label (`N`, or `RUN.N` where ids were reused after a restart), `-` for
    /// a record of no exchange (a DNS query, a connection into the pod).
    pub exchange: String,
    pub time: String,
    pub host: String,
    pub method: String,
    pub path: String,
    /// `request` (agent → upstream), `response` (upstream → agent), or `recorded` for a
    /// record that has no direction.
    pub direction: &'static str,
    pub place: Place,
    pub detector: String,
    /// Which candidate of the file matched.
    pub candidate: String,
    pub fingerprint: String,
}

/// Every place in the recording where a mask carries one of `wanted` (candidate source,
/// fingerprint): each exchange's target, headers, trailers both ways and bodies (from
/// `timeline`), and every other record of `records` — a pushed or fetched file by its path and
/// commit, a git object's contents, WebSocket messages, stream bytes, DNS names, batch parts —
/// field by field. A record is reported once per candidate, at its most telling place.
pub fn search(
    timeline: &Timeline,
    records: &[cassette_recording::record::Record],
    wanted: &[(String, String)],
) -> Vec<Found> {
    let mut out = in_exchanges(timeline, wanted);
    out.extend(in_records(timeline, records, wanted));
    out
}

fn in_exchanges(timeline: &Timeline, wanted: &[(String, String)]) -> Vec<Found> {
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
        for (name, value) in x
            .end
            .iter()
            .flat_map(|e| e.request_trailers.iter().flatten())
        {
            look("request", Place::Trailer(name.clone()), value);
        }
    }
    out
}

/// The masks of `wanted` in records other than an exchange's heads, bodies and end.
fn in_records(
    timeline: &Timeline,
    records: &[cassette_recording::record::Record],
    wanted: &[(String, String)],
) -> Vec<Found> {
    use cassette_recording::record::Event;
    let mut out = Vec::new();
    let mut run = 0u32;
    for record in records {
        let mut places: Vec<(Place, String, String)> = Vec::new();
        match &record.event {
            Event::SessionStart(_) => {
                run += 1;
                continue;
            }
            Event::Body(_) | Event::Request(_) | Event::Response(_) | Event::ExchangeEnd(_) => {
                continue;
            }
            Event::GitPack(pack) => places.extend(pack.path_masks.iter().map(|m| {
                let place = Place::GitFile {
                    path: m.path.clone(),
                    blob: m.blob.clone(),
                    commit: m.commit.clone(),
                };
                (place, m.detector.clone(), m.fingerprint.clone())
            })),
            Event::GitObject(object) => places.extend(object.masks.iter().map(|m| {
                let place = Place::GitObject {
                    kind: object.kind.clone().unwrap_or_else(|| "object".into()),
                    id: object
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("at {}", object.offset)),
                };
                (place, m.detector.clone(), m.fingerprint.clone())
            })),
            _ => {}
        }
        let Ok(value) = serde_json::to_value(&record.event) else {
            continue;
        };
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        walk(&value, String::new(), &mut |field, text| {
            for mask in masks_in(text) {
                let place = Place::Record {
                    kind: kind.clone(),
                    field: field.to_string(),
                };
                places.push((place, mask.detector.into(), mask.fingerprint.into()));
            }
        });
        let exchange = value["exchange"]
            .as_u64()
            .and_then(|id| timeline.exchanges.get(&(run, id)));
        let direction = match value["direction"].as_str() {
            Some("request" | "up") => "request",
            Some("response" | "down") => "response",
            _ => "recorded",
        };
        let mut reported: Vec<&str> = Vec::new();
        for (place, detector, fp) in places {
            for (candidate, wanted_fp) in wanted {
                if !fp.eq_ignore_ascii_case(wanted_fp) || reported.contains(&candidate.as_str()) {
                    continue;
                }
                reported.push(candidate);
                out.push(Found {
                    exchange: exchange.map_or_else(
                        || {
                            value["exchange"]
                                .as_u64()
                                .map_or("-".into(), |e| e.to_string())
                        },
                        |x| x.label.clone(),
                    ),
                    time: record.time.clone(),
                    host: exchange.map(|x| x.host().to_string()).unwrap_or_default(),
                    method: exchange
                        .and_then(|x| x.request.as_ref())
                        .map(|r| r.method.clone())
                        .unwrap_or_default(),
                    path: exchange
                        .and_then(|x| x.request.as_ref())
                        .map(|r| r.path.clone())
                        .unwrap_or_default(),
                    direction,
                    place: place.clone(),
                    detector: detector.clone(),
                    candidate: candidate.clone(),
                    fingerprint: fp.clone(),
                });
            }
        }
    }
    out
}

/// A candidate found stored as it is — not masked: what a detector missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InClear {
    /// The record it is in (`body` records are searched as whole bodies, the first).
    pub seq: u64,
    pub time: String,
    /// The record's kind, or `body` for a whole body.
    pub kind: String,
    /// The exchange's label when the record belongs to one.
    pub exchange: Option<String>,
    /// Where in the record: a field path such as `headers[3][1]` or `payload`, or `request
    /// body` / `response body`.
    pub field: String,
    /// Which candidate of the file matched.
    pub candidate: String,
}

/// Candidates shorter than this are not looked for in clear (they would match by chance).
pub const MIN_CLEAR_LEN: usize = 8;

/// What a search for text stored in clear could not look into, so that a "no" says its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsearched {
    /// Bodies longer than what was stored: past the stored start, only the digest is kept.
    pub truncated_bodies: usize,
    /// Bodies whose stored pieces did not fit together.
    pub damaged_bodies: usize,
    /// Bodies in an encoding the recorder did not decode, or that broke partway: what
    /// follows is stored as sent, compressed, where no candidate can be seen.
    pub undecoded_bodies: usize,
    /// git packs that could not be read to their end: the objects after the break were
    /// neither scanned nor stored.
    pub unread_packs: usize,
}

impl Unsearched {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether a body's `decoding` note says it was not decoded, or not to its end: an encoding
/// the recorder does not decode, or one that broke. (A cut at maxBodyBytes is the truncation,
/// counted apart.)
fn undecoded(decoding: Option<&str>) -> bool {
    decoding.is_some_and(|d| !d.contains("truncated after decoding"))
}

/// Every place in `records` and the bodies of `timeline` where one of `wanted` (candidate
/// source, value) is stored as it is. Body records are searched as the bodies they make up
/// (a secret may straddle two pieces); every other record is searched field by field, and a
/// string field that is standard base64 (a binary message, a stream's bytes) also decoded.
pub fn in_clear(
    timeline: &Timeline,
    records: &[cassette_recording::record::Record],
    wanted: &[(String, Vec<u8>)],
) -> (Vec<InClear>, Unsearched) {
    use cassette_recording::record::Event;
    let mut out = Vec::new();
    let mut unsearched = Unsearched::default();
    // A value this short would be found in clear by chance; fingerprints still cover it.
    let wanted: Vec<&(String, Vec<u8>)> = wanted
        .iter()
        .filter(|(_, v)| v.len() >= MIN_CLEAR_LEN)
        .collect();
    for x in timeline.exchanges_in_order() {
        for (direction, body) in [("request", &x.request_body), ("response", &x.response_body)] {
            if body.truncated {
                unsearched.truncated_bodies += 1;
            }
            if body.damaged {
                unsearched.damaged_bodies += 1;
            }
            if undecoded(body.decoding.as_deref()) {
                unsearched.undecoded_bodies += 1;
            }
            for (candidate, value) in &wanted {
                if contains(&body.bytes, value) {
                    out.push(InClear {
                        seq: x.first_seq,
                        time: x.first_time.clone(),
                        kind: "body".into(),
                        exchange: Some(x.label.clone()),
                        field: format!("{direction} body"),
                        candidate: candidate.clone(),
                    });
                }
            }
        }
    }
    for record in records {
        if let Event::GitPack(pack) = &record.event
            && pack.error.is_some()
        {
            unsearched.unread_packs += 1;
        }
        if matches!(record.event, Event::Body(_)) {
            continue;
        }
        let Ok(value) = serde_json::to_value(&record.event) else {
            continue;
        };
        let exchange = value
            .get("exchange")
            .and_then(serde_json::Value::as_u64)
            .map(|e| e.to_string());
        let kind = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        walk(&value, String::new(), &mut |field, text| {
            let decoded = base64_bytes(text);
            for (candidate, value) in &wanted {
                let hit = contains(text.as_bytes(), value)
                    || decoded.as_deref().is_some_and(|d| contains(d, value));
                if hit {
                    out.push(InClear {
                        seq: record.seq,
                        time: record.time.clone(),
                        kind: kind.clone(),
                        exchange: exchange.clone(),
                        field: field.to_string(),
                        candidate: candidate.clone(),
                    });
                }
            }
        });
    }
    out.sort_by_key(|c| c.seq);
    (out, unsearched)
}

fn walk(value: &serde_json::Value, path: String, visit: &mut impl FnMut(&str, &str)) {
    match value {
        serde_json::Value::String(text) => visit(&path, text),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{path}[{i}]"), visit);
            }
        }
        serde_json::Value::Object(fields) => {
            for (name, item) in fields {
                // The chain and signatures are hashes: nothing to find in them.
                if matches!(name.as_str(), "kind" | "chain" | "signature" | "head") {
                    continue;
                }
                let path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                walk(item, path, visit);
            }
        }
        _ => {}
    }
}

/// A string that is standard base64 of at least a few bytes, decoded.
fn base64_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    if text.len() < 8 || !text.len().is_multiple_of(4) {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack.windows(needle.len()).any(|w| w == needle)
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
    fn a_secret_no_detector_caught_is_found_in_clear_wherever_it_is_stored() {
        use cassette_recording::record::Record;
        let secret = "internal-3f9c1d7e-token";
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("ws frame {secret} end"))
        };
        let lines = [
            r#"{"seq":0,"time":"2026-05-01T12:00:00.000000000Z","kind":"request","exchange":1,"conn":1,"method":"GET","scheme":"https","authority":"example.com","path":"/?q=SECRET","version":"HTTP/1.1","headers":[["x-ticket","SECRET"]],"chain":"00"}"#.replace("SECRET", secret),
            r#"{"seq":1,"time":"2026-05-01T12:00:00.100000000Z","kind":"body","exchange":1,"direction":"request","offset":0,"text":"first half internal-3f9c","chain":"00"}"#.to_string(),
            r#"{"seq":2,"time":"2026-05-01T12:00:00.100000001Z","kind":"body","exchange":1,"direction":"request","offset":24,"text":"1d7e-token second half","chain":"00"}"#.to_string(),
            r#"{"seq":3,"time":"2026-05-01T12:00:00.100000002Z","kind":"body","exchange":1,"direction":"request","offset":46,"final":true,"length":5000,"digest":"hmac-sha256:00","truncated":true,"chain":"00"}"#.to_string(),
        ];
        let mut records: Vec<Record> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // A record kind the timeline does not show, with base64 payload.
        let mut message: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        message["seq"] = 4.into();
        message["path"] = serde_json::Value::String(format!("/{b64}"));
        records.push(serde_json::from_value(message).unwrap());
        let timeline = Timeline::build(&records);
        let wanted = vec![("file".to_string(), secret.as_bytes().to_vec())];
        let (found, unsearched) = in_clear(&timeline, &records, &wanted);
        let places: Vec<(u64, &str, &str)> = found
            .iter()
            .map(|f| (f.seq, f.kind.as_str(), f.field.as_str()))
            .collect();
        assert!(places.contains(&(0, "request", "path")), "{places:?}");
        assert!(
            places.contains(&(0, "request", "headers[0][1]")),
            "{places:?}"
        );
        assert!(places.contains(&(0, "body", "request body")), "{places:?}");
        assert!(
            places.iter().any(|p| p.0 == 4),
            "base64 decoded: {places:?}"
        );
        assert_eq!(unsearched.truncated_bodies, 1);
        // And nothing when it is not there.
        let other = vec![("file".to_string(), b"not-in-the-recording".to_vec())];
        assert!(in_clear(&timeline, &records, &other).0.is_empty());
    }

    /// Issue 15.5/15.6: a secret masked outside an exchange's heads and bodies — in a pushed
    /// file, a git object, a WebSocket message, a request trailer — is found by its
    /// fingerprint, and the git file is named by path and commit.
    #[test]
    fn masks_in_git_objects_messages_and_request_trailers_are_found() {
        use cassette_recording::record::Record;
        const FP: &str = "0a1b2c3d4e5f60718293a4b5";
        let mask = format!("«masked:github-token:{FP}»");
        let lines = [
            r#"{"seq":0,"time":"2026-05-01T12:00:00.000000000Z","kind":"request","exchange":1,"conn":1,"method":"POST","scheme":"https","authority":"git.example","path":"/acme/app.git/git-receive-pack","version":"HTTP/1.1","headers":[],"chain":"00"}"#.to_string(),
            format!(r#"{{"seq":1,"time":"2026-05-01T12:00:00.100000000Z","kind":"git_object","exchange":1,"direction":"request","offset":12,"type":"blob","id":"b10bb10bb10bb10bb10bb10bb10bb10bb10bb10b","size":40,"masks":[{{"detector":"github-token","fingerprint":"{FP}","offset":6,"len":40}}],"chain":"00"}}"#),
            format!(r#"{{"seq":2,"time":"2026-05-01T12:00:00.200000000Z","kind":"git_pack","exchange":1,"direction":"request","announced":3,"objects":3,"kinds":{{"blob":1}},"checksum_ok":true,"path_masks":[{{"commit":"c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff","path":"config/prod.env","blob":"b10bb10bb10bb10bb10bb10bb10bb10bb10bb10b","detector":"github-token","fingerprint":"{FP}"}}],"chain":"00"}}"#),
            format!(r#"{{"seq":3,"time":"2026-05-01T12:00:00.300000000Z","kind":"exchange_end","exchange":1,"timings":{{"total_us":5}},"bytes_up":1,"bytes_down":1,"decision":"allow","request_trailers":[["x-token","{mask}"]],"chain":"00"}}"#),
            r#"{"seq":4,"time":"2026-05-01T12:00:01.000000000Z","kind":"request","exchange":2,"conn":2,"method":"GET","scheme":"https","authority":"ws.example","path":"/live","version":"HTTP/1.1","headers":[],"chain":"00"}"#.to_string(),
            format!(r#"{{"seq":5,"time":"2026-05-01T12:00:01.100000000Z","kind":"message","exchange":2,"direction":"up","opcode":"text","length":60,"text":"token {mask}","masked":1,"chain":"00"}}"#),
        ];
        let records: Vec<Record> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        let timeline = Timeline::build(&records);
        let wanted = vec![("GITHUB_TOKEN".to_string(), FP.to_string())];
        let found = search(&timeline, &records, &wanted);
        let places: Vec<(String, &str, String)> = found
            .iter()
            .map(|f| (f.exchange.clone(), f.direction, f.place.to_string()))
            .collect();
        for expected in [
            (
                "1",
                "request",
                "file config/prod.env (blob b10bb10bb10b, commit c0ffeec0ffee)",
            ),
            ("1", "request", "git blob b10bb10bb10b"),
            ("1", "request", "trailer x-token"),
            ("2", "request", "message record, text"),
        ] {
            let expected = (expected.0.to_string(), expected.1, expected.2.to_string());
            assert!(places.contains(&expected), "{expected:?} in {places:?}");
        }
        assert_eq!(found.len(), 4, "each record once: {places:?}");
        assert!(found.iter().all(|f| f.candidate == "GITHUB_TOKEN"));
        let pushed = found.iter().find(|f| f.path.ends_with("git-receive-pack"));
        assert_eq!(pushed.map(|f| f.host.as_str()), Some("git.example"));
        // Another fingerprint is found nowhere.
        let other = vec![("x".to_string(), "ffffffffffffffffffffffff".to_string())];
        assert!(search(&timeline, &records, &other).is_empty());
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
