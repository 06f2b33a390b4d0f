//! Keeps secrets out of recordings: bodies are masked as they stream through, headers one by
//! one, and every mask carries a keyed fingerprint so that an auditor holding a candidate
//! secret can prove whether it crossed the session without the recording ever holding it.
//!
//! A mask reads `«masked:<detector>:<fingerprint>»`. The fingerprint is the first 12 bytes of
//! HMAC-SHA-256(key, secret), in lowercase hex (24 characters), over the secret in its
//! canonical form (JSON and form escapes decoded, PEM newlines normalised), so the same
//! secret has the same fingerprint in any body. Decompression is the caller's: this module
//! sees plain bytes.
//!
//! Streaming: a secret of up to [`MAX_SECRET_LEN`] bytes is caught wherever the chunk
//! boundaries fall; the masker holds back at most about three times that much. Custom
//! patterns that can match more than that are still applied, but a longer match split
//! across chunks may be masked as several pieces.

mod bytes;
mod detectors;
mod json;
mod secret_file;
mod target;

use std::collections::BTreeMap;

use base64::Engine;
use cassette_api::{Detector, Masking};
use regex::bytes::{Regex, RegexBuilder};
use ring::hmac;

pub use bytes::{BYTE_FIELDS_LIMIT, ByteField, SECRET_PAYLOAD, byte_fields, decode_base64};
pub use detectors::{BUILT_IN_NAMES, JSON_FIELD};
pub use secret_file::{Candidate, secret_candidates};
pub use target::{FORM_LIMIT, SECRET_PARAMETER, SECRET_PARAMETERS};

use crate::validate::{FieldError, ValidationErrors};
use detectors::Canonical;
use json::{FieldPath, JsonScanner};

/// The longest secret caught across chunk boundaries, in bytes.
pub const MAX_SECRET_LEN: usize = 8192;

/// Bytes of context kept on each side of the window for `\b`, `^` and `$` in patterns.
const CONTEXT: usize = 4;

/// The window a match must fit in to be final.
const WINDOW: usize = MAX_SECRET_LEN + CONTEXT;
/// How far into a built-in detector's match one of its prefilter literals starts, at most
/// (a secret field's name: a quote and up to 64 bytes before the secret word).
pub(crate) const LITERAL_LEAD: u64 = 72;

/// Bytes of the fingerprint kept (of HMAC-SHA-256's 32).
pub const FINGERPRINT_BYTES: usize = 12;

/// Size limit of one compiled custom pattern.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// The keyed fingerprint of a secret: hex of the first 12 bytes of HMAC-SHA-256(key, secret).
/// The CLI's `search --secret-file` calls this on each [`secret_candidates`] value.
pub fn fingerprint(key: &[u8], secret: &[u8]) -> String {
    fingerprint_with(&hmac::Key::new(hmac::HMAC_SHA256, key), secret)
}

fn fingerprint_with(key: &hmac::Key, secret: &[u8]) -> String {
    let tag = hmac::sign(key, secret);
    tag.as_ref()[..FINGERPRINT_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The text that replaces a secret.
pub fn mask_text(detector: &str, fingerprint: &str) -> String {
    format!("«masked:{detector}:{fingerprint}»")
}

/// One masked secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The detector (built-in name, custom pattern name, or `json-field`).
    pub detector: String,
    /// The keyed fingerprint.
    pub fingerprint: String,
    /// Where the secret started in the unmasked stream, in bytes.
    pub offset: u64,
    /// Its length in the unmasked stream, in bytes.
    pub len: u64,
}

/// What masking a body found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Masks per detector.
    pub counts: BTreeMap<String, u64>,
    /// Every mask, in stream order.
    pub hits: Vec<Hit>,
}

impl Summary {
    /// All masks.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    fn record(&mut self, hit: Hit) {
        *self.counts.entry(hit.detector.clone()).or_default() += 1;
        self.hits.push(hit);
    }
}

/// What a body is, for masking: JSON bodies also get `jsonFields` masking, form bodies are
/// percent-decoded before they are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`, `application/*+json`, JSON lines.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Anything else.
    Other,
}

impl BodyKind {
    /// From a Content-Type header.
    pub fn from_content_type(content_type: Option<&str>) -> BodyKind {
        let Some(ct) = content_type else {
            return BodyKind::Other;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence.ends_with("/json")
            || essence.ends_with("+json")
            || essence.ends_with("/x-ndjson")
            || essence.ends_with("/jsonl")
        {
            BodyKind::Json
        } else if essence == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else {
            BodyKind::Other
        }
    }
}

/// One compiled regex detector.
#[derive(Debug)]
struct RegexDetector {
    name: String,
    regex: Regex,
    group: Option<usize>,
    canonical: Canonical,
    reject_key: Option<fn(&[u8]) -> bool>,
    /// Whether every match holds one of the masker's prefilter literals for it; custom
    /// patterns have none and are always searched.
    prefiltered: bool,
}

/// One pass over a body for the literals every built-in match contains, so that each
/// detector's regex runs only where its literal occurs: most bodies hold none, and one
/// multi-literal scan is far cheaper than a regex pass per detector.
struct Prefilter {
    literals: aho_corasick::AhoCorasick,
    /// Per literal pattern: the detectors (indices) it stands for.
    detectors: Vec<Vec<usize>>,
    /// The longest literal, in bytes.
    longest: usize,
}

impl Prefilter {
    fn new(literals: &[(&'static str, usize)]) -> Option<Prefilter> {
        // One pattern per distinct literal (ASCII case folded), standing for every detector
        // that lists it.
        let mut grouped: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (literal, detector) in literals {
            grouped
                .entry(literal.to_ascii_lowercase())
                .or_default()
                .push(*detector);
        }
        if grouped.is_empty() {
            return None;
        }
        let automaton = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(grouped.keys())
            // A few dozen short constant literals: building cannot fail.
            .expect("the prefilter's literals build");
        Some(Prefilter {
            literals: automaton,
            longest: grouped.keys().map(String::len).max().unwrap_or(0),
            detectors: grouped.into_values().collect(),
        })
    }

    /// Appends to `at` (per detector, ascending) the start of each literal occurrence in
    /// `haystack`, which begins at absolute offset `from`; occurrences already noted (a
    /// rescan of the last few bytes) are skipped. Every start position is tried: after a
    /// match at `s` the search goes on from `s + 1`, so occurrences overlapping it are found
    /// too; two literals of different detectors never start alike unless equal (one is never
    /// the other's prefix: the test `prefilter_literals_never_hide_each_other`), so the
    /// longest one reported at a position hides no other detector's.
    fn scan(&self, haystack: &[u8], from: u64, at: &mut [Vec<u64>]) {
        let mut input = aho_corasick::Input::new(haystack);
        while let Some(m) = self.literals.find(input.clone()) {
            let start = from + m.start() as u64;
            for &d in &self.detectors[m.pattern().as_usize()] {
                if at[d].last().is_none_or(|last| *last < start) {
                    at[d].push(start);
                }
            }
            input.set_start(m.start() + 1);
        }
    }
}

/// The detector names of brokered credentials' values: this and the entry's name.
pub const CREDENTIAL_DETECTOR_PREFIX: &str = "credential-";

/// The masking configuration of a session, compiled: built-ins not disabled, custom
/// patterns, JSON field paths, and the fingerprint key.
pub struct Masker {
    detectors: Vec<RegexDetector>,
    prefilter: Option<Prefilter>,
    json_fields: Vec<FieldPath>,
    credential_headers: bool,
    /// Query and form parameter names whose values are masked whole, lowercase.
    secret_parameters: Vec<String>,
    key: hmac::Key,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field(
                "detectors",
                &self.detectors.iter().map(|d| &d.name).collect::<Vec<_>>(),
            )
            .field("json_fields", &self.json_fields)
            .field("credential_headers", &self.credential_headers)
            .finish_non_exhaustive()
    }
}

/// Compiles a custom pattern as the masker uses it.
pub(crate) fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("does not compile: {e}"))
}

/// Parses a `jsonFields[].path`.
pub(crate) fn parse_field_path(path: &str) -> Result<(), String> {
    FieldPath::parse(path).map(|_| ())
}

impl Masker {
    /// Compiles `spec.masking` with the session's fingerprint key. Errors name the field.
    pub fn new(masking: Option<&Masking>, key: &[u8]) -> Result<Masker, ValidationErrors> {
        let default = Masking::default();
        let masking = masking.unwrap_or(&default);
        let mut errors = Vec::new();
        crate::validate::masking(masking, &mut errors);
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        let disabled = |d: Detector| masking.disabled_detectors.contains(&d);
        let mut detectors = Vec::new();
        let mut literals = Vec::new();
        for (b, regex) in detectors::compiled() {
            if disabled(b.detector) {
                continue;
            }
            literals.extend(b.literals.iter().map(|l| (*l, detectors.len())));
            detectors.push(RegexDetector {
                name: b.name.to_owned(),
                regex: regex.clone(),
                group: b.group,
                canonical: b.canonical,
                reject_key: b.reject_key,
                prefiltered: !b.literals.is_empty(),
            });
        }
        for p in &masking.patterns {
            // Validated above; a failure here would be a bug, reported as a field error.
            let regex = compile_pattern(&p.regex).map_err(|message| {
                ValidationErrors(vec![FieldError::new("spec.masking.patterns", message)])
            })?;
            let group = (regex.captures_len() > 1).then_some(1);
            detectors.push(RegexDetector {
                name: p.name.clone(),
                regex,
                group,
                canonical: Canonical::Raw,
                reject_key: None,
                prefiltered: false,
            });
        }
        let json_fields = masking
            .json_fields
            .iter()
            .filter_map(|f| FieldPath::parse(&f.path).ok())
            .collect();
        let mut secret_parameters: Vec<String> = if disabled(Detector::SecretParameters) {
            Vec::new()
        } else {
            SECRET_PARAMETERS.iter().map(|p| (*p).to_owned()).collect()
        };
        secret_parameters.extend(
            masking
                .secret_parameters
                .iter()
                .map(|p| p.to_ascii_lowercase()),
        );
        Ok(Masker {
            detectors,
            prefilter: Prefilter::new(&literals),
            json_fields,
            credential_headers: !disabled(Detector::CredentialHeaders),
            secret_parameters,
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// This masker, also masking each of `secrets` wherever it appears, by value: the real
    /// values of brokered credentials, which no pattern describes. Each is masked as
    /// `«masked:credential-<name>:<fingerprint>»`; an empty value masks nothing.
    pub fn with_secrets(mut self, secrets: &[(String, String)]) -> Masker {
        for (name, value) in secrets {
            if value.is_empty() {
                continue;
            }
            let Ok(regex) = compile_pattern(&regex::escape(value)) else {
                continue;
            };
            self.detectors.push(RegexDetector {
                name: format!("{CREDENTIAL_DETECTOR_PREFIX}{name}"),
                regex,
                group: None,
                canonical: Canonical::Raw,
                reject_key: None,
                prefiltered: false,
            });
        }
        self
    }

    /// The fingerprint of `secret` under this masker's key.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        fingerprint_with(&self.key, secret)
    }

    /// Starts masking a body.
    pub fn stream(&self, kind: BodyKind) -> MaskStream<'_> {
        let json = (kind == BodyKind::Json && !self.json_fields.is_empty())
            .then(|| JsonScanner::new(self.json_fields.clone(), MAX_SECRET_LEN));
        MaskStream {
            masker: self,
            buf: Vec::new(),
            base: 0,
            emitted: 0,
            next_from: vec![0; self.detectors.len()],
            literal_at: vec![Vec::new(); self.detectors.len()],
            literals_scanned: 0,
            selected_end: 0,
            json,
            form: (kind == BodyKind::Form).then(Vec::new),
            pending: Vec::new(),
            summary: Summary::default(),
        }
    }

    /// Masks a whole body at once.
    pub fn mask(&self, kind: BodyKind, body: &[u8]) -> (Vec<u8>, Summary) {
        let mut out = Vec::with_capacity(body.len());
        let mut stream = self.stream(kind);
        stream.feed(body, &mut out);
        let summary = stream.finish(&mut out);
        (out, summary)
    }

    /// Masks one header value. `None` when nothing in it is secret.
    pub fn mask_header(&self, name: &str, value: &[u8]) -> Option<(Vec<u8>, Summary)> {
        let lower = name.to_ascii_lowercase();
        if self.credential_headers {
            let masked = match lower.as_str() {
                "authorization" | "proxy-authorization" => Some(self.mask_authorization(value)),
                "cookie" => Some(self.mask_cookies(value, false)),
                "set-cookie" => Some(self.mask_cookies(value, true)),
                "x-goog-api-key" => {
                    let mut summary = Summary::default();
                    let text = String::from_utf8_lossy(value);
                    let key = text.trim();
                    let offset = text.find(key).unwrap_or(0);
                    let text = self.credential_text(key.as_bytes(), offset, &mut summary);
                    Some((text.into_bytes(), summary))
                }
                _ => None,
            };
            if masked.is_some() {
                return masked;
            }
        }
        let (out, summary) = self.mask(BodyKind::Other, value);
        (summary.total() > 0).then_some((out, summary))
    }

    fn hit_text(
        &self,
        detector: &str,
        secret: &[u8],
        offset: usize,
        summary: &mut Summary,
    ) -> String {
        let fp = self.fingerprint(secret);
        let text = mask_text(detector, &fp);
        summary.record(Hit {
            detector: detector.to_owned(),
            fingerprint: fp,
            offset: offset as u64,
            len: secret.len() as u64,
        });
        text
    }

    /// A credential header's secret, masked whole (an auditor may hold it whole, whatever its
    /// shape), then each secret a detector finds inside it, so that search finds a token
    /// written among other text by the token alone.
    fn credential_text(&self, secret: &[u8], offset: usize, summary: &mut Summary) -> String {
        let mut text = self.hit_text("credential-header", secret, offset, summary);
        let whole = self.fingerprint(secret);
        let (_, inside) = self.mask(BodyKind::Other, secret);
        for hit in inside.hits.into_iter().filter(|h| h.fingerprint != whole) {
            text.push_str(&mask_text(&hit.detector, &hit.fingerprint));
            summary.record(Hit {
                offset: offset as u64 + hit.offset,
                ..hit
            });
        }
        text
    }

    /// What a credential header keeps in clear (a cookie's name, a Set-Cookie attribute, a
    /// value that is no `name=value`), with what the detectors find in it masked.
    fn scanned(&self, text: &str, offset: usize, summary: &mut Summary) -> String {
        let (out, found) = self.mask(BodyKind::Other, text.as_bytes());
        for hit in found.hits {
            summary.record(Hit {
                offset: offset as u64 + hit.offset,
                ..hit
            });
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether a detector finds a secret in `text`.
    fn detects(&self, text: &[u8]) -> bool {
        self.mask(BodyKind::Other, text).1.total() > 0
    }

    /// `Bearer <token>` keeps its scheme; a Basic credential is fingerprinted by its password
    /// (what an auditor holds), other schemes by the whole credential.
    fn mask_authorization(&self, value: &[u8]) -> (Vec<u8>, Summary) {
        let mut summary = Summary::default();
        let text = String::from_utf8_lossy(value);
        let trimmed = text.trim();
        // A first word a detector recognises is the credential, not a scheme kept in clear.
        let (scheme, credential) = match trimmed.split_once(' ') {
            Some((scheme, rest)) if !self.detects(scheme.as_bytes()) => (Some(scheme), rest.trim()),
            _ => (None, trimmed),
        };
        let credential_offset = text.find(credential).unwrap_or(0);
        let secret: Vec<u8> = match scheme {
            Some(s) if s.eq_ignore_ascii_case("basic") => {
                match base64::engine::general_purpose::STANDARD.decode(credential) {
                    Ok(decoded) => match decoded.iter().position(|&b| b == b':') {
                        Some(colon) => decoded[colon + 1..].to_vec(),
                        None => decoded,
                    },
                    Err(_) => credential.as_bytes().to_vec(),
                }
            }
            _ => credential.as_bytes().to_vec(),
        };
        let mask = self.credential_text(&secret, credential_offset, &mut summary);
        let out = match scheme {
            Some(scheme) => format!("{scheme} {mask}"),
            None => mask,
        };
        (out.into_bytes(), summary)
    }

    /// `a=1; b=2` → `a=«…»; b=«…»`; for Set-Cookie only the first pair is the cookie.
    fn mask_cookies(&self, value: &[u8], set_cookie: bool) -> (Vec<u8>, Summary) {
        let mut summary = Summary::default();
        let text = String::from_utf8_lossy(value);
        let mut out = Vec::new();
        let mut offset = 0;
        for (i, pair) in text.split(';').enumerate() {
            let masked = if set_cookie && i > 0 {
                self.scanned(pair, offset, &mut summary)
            } else {
                match pair.split_once('=') {
                    Some((name, v)) if !v.trim().is_empty() => {
                        let value_offset = offset + name.len() + 1;
                        let name = self.scanned(name, offset, &mut summary);
                        let mask =
                            self.credential_text(v.trim().as_bytes(), value_offset, &mut summary);
                        format!("{name}={mask}")
                    }
                    _ => self.scanned(pair, offset, &mut summary),
                }
            };
            out.push(masked);
            offset += pair.len() + 1;
        }
        (out.join(";").into_bytes(), summary)
    }
}

/// A candidate match, by absolute offsets.
#[derive(Debug, Clone, Copy)]
struct Found {
    /// Where the whole match starts (its bytes are kept until it is decided).
    start: u64,
    /// The secret inside it (what overlaps are judged on).
    secret_start: u64,
    secret_end: u64,
    /// Index into the masker's detectors; `usize::MAX` for a JSON field.
    detector: usize,
    canonical: Canonical,
}

/// Masks one body, fed in chunks in order.
pub struct MaskStream<'m> {
    masker: &'m Masker,
    /// Unmasked bytes from absolute offset `base`.
    buf: Vec<u8>,
    base: u64,
    /// Output has been produced for everything before this offset.
    emitted: u64,
    /// Per detector: where its next search starts.
    next_from: Vec<u64>,
    /// Per detector: where its prefilter literals start in the buffer (absolute, ascending).
    literal_at: Vec<Vec<u64>>,
    /// The prefilter has scanned everything before this offset.
    literals_scanned: u64,
    /// The end of the last masked match; later matches overlapping it are dropped.
    selected_end: u64,
    json: Option<JsonScanner>,
    /// A form body held whole until it ends (or passes [`FORM_LIMIT`]), to be decoded.
    form: Option<Vec<u8>>,
    /// Matches found whose secret starts after the last cut.
    pending: Vec<Found>,
    summary: Summary,
}

impl MaskStream<'_> {
    /// Masks the next chunk, appending what can be decided to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if let Some(form) = &mut self.form {
            if form.len() + chunk.len() <= FORM_LIMIT {
                form.extend_from_slice(chunk);
                return;
            }
            // Too long to hold: what was held, and the rest, stream through undecoded.
            let held = std::mem::take(form);
            self.form = None;
            self.feed(&held, out);
        }
        let offset = self.end();
        self.buf.extend_from_slice(chunk);
        if let Some(json) = &mut self.json {
            json.feed(chunk, offset);
        }
        if self.end() - self.emitted >= 2 * WINDOW as u64 {
            self.process(false, out);
        }
    }

    /// Ends the body, appending the rest of the output; returns what was masked.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Summary {
        if let Some(form) = self.form.take() {
            let (masked, summary) = self.masker.mask_form(&form);
            out.extend_from_slice(&masked);
            return summary;
        }
        let end = self.end();
        if let Some(json) = &mut self.json {
            json.finish(end);
        }
        self.process(true, out);
        self.summary
    }

    /// Masks found so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Decides every secret that starts before the cut and writes output up to it.
    ///
    /// Overlaps are settled on the secrets themselves: the earliest secret wins, then the
    /// longest, then the detector listed first (so a token inside `"access_token": "…"` is
    /// named by its own detector rather than by `secret-field`).
    fn process(&mut self, last: bool, out: &mut Vec<u8>) {
        let end = self.end();
        let mut cut = if last {
            end
        } else {
            end.saturating_sub(WINDOW as u64)
        };
        if let Some(open) = self.json.as_ref().and_then(JsonScanner::open_start) {
            cut = cut.min(open);
        }
        let mut found = std::mem::take(&mut self.pending);
        found.extend(self.find(cut));
        if let Some(json) = &mut self.json {
            while let Some(span) = json.take_span_before(cut) {
                found.push(Found {
                    start: span.start,
                    secret_start: span.start,
                    secret_end: span.end,
                    detector: usize::MAX,
                    canonical: if span.string {
                        Canonical::JsonString
                    } else {
                        Canonical::Raw
                    },
                });
            }
        }
        found.sort_by_key(|f| (f.secret_start, std::cmp::Reverse(f.secret_end), f.detector));
        // A match found before the cut whose secret starts after it waits: a match found
        // later could hold an earlier secret.
        let (ready, waiting): (Vec<Found>, Vec<Found>) = found
            .into_iter()
            .partition(|f| last || f.secret_start < cut);
        self.pending = waiting;
        let emit_to = cut.min(end);
        for f in ready {
            if f.secret_start < self.selected_end {
                continue;
            }
            self.selected_end = f.secret_end;
            self.write_through(f.secret_start, out);
            let secret = &self.buf[self.rel(f.secret_start)..self.rel(f.secret_end)];
            let canonical = canonicalize(f.canonical, secret);
            let name = match f.detector {
                usize::MAX => JSON_FIELD,
                i => self.masker.detectors[i].name.as_str(),
            };
            let fp = self.masker.fingerprint(&canonical);
            out.extend_from_slice(mask_text(name, &fp).as_bytes());
            self.summary.record(Hit {
                detector: name.to_owned(),
                fingerprint: fp,
                offset: f.secret_start,
                len: f.secret_end - f.secret_start,
            });
            self.emitted = f.secret_end;
        }
        // Bytes before the cut are decided (waiting secrets all start at or after it).
        self.write_through(emit_to, out);
        // Keep a little context before the earliest byte any search or secret needs again.
        let keep_from = self
            .next_from
            .iter()
            .copied()
            .chain(self.pending.iter().map(|f| f.start))
            .chain([self.emitted, cut])
            .min()
            .unwrap_or(self.emitted)
            .saturating_sub(CONTEXT as u64)
            .max(self.base);
        let drop = (keep_from - self.base) as usize;
        if drop > 0 {
            self.buf.drain(..drop);
            self.base = keep_from;
            // A match starts at or after every search position, so at or after the base,
            // and holds its literal after its start.
            for at in &mut self.literal_at {
                let gone = at.partition_point(|&l| l < keep_from);
                at.drain(..gone);
            }
        }
    }

    /// Copies unmasked bytes from `emitted` up to `to`.
    fn write_through(&mut self, to: u64, out: &mut Vec<u8>) {
        if to > self.emitted {
            out.extend_from_slice(&self.buf[self.rel(self.emitted)..self.rel(to)]);
            self.emitted = to;
        }
    }

    fn rel(&self, at: u64) -> usize {
        (at - self.base) as usize
    }

    /// Runs every detector from where it left off and returns the matches starting before
    /// `cut`, which are final: a match is at most MAX_SECRET_LEN long and the buffer holds
    /// at least a window past the cut.
    ///
    /// A built-in detector searches only near its literals: every match holds one starting
    /// at most [`LITERAL_LEAD`] bytes into it, so matches start only in the `LITERAL_LEAD`
    /// bytes up to an occurrence, and end at most `MAX_SECRET_LEN` bytes after it. Most
    /// bodies hold few occurrences, so most bytes are read once, by the literal scan.
    fn find(&mut self, cut: u64) -> Vec<Found> {
        let mut found = Vec::new();
        let end = self.end();
        if let Some(p) = &self.masker.prefilter {
            // The bytes not scanned yet, and the few before them where a literal cut off
            // last time may start.
            let from = self
                .literals_scanned
                .saturating_sub(p.longest as u64)
                .max(self.base);
            let rel = (from - self.base) as usize;
            p.scan(&self.buf[rel..], from, &mut self.literal_at);
            self.literals_scanned = end;
        }
        let reach = MAX_SECRET_LEN as u64;
        for (i, d) in self.masker.detectors.iter().enumerate() {
            let mut pos = self.next_from[i].max(self.base);
            if !(d.prefiltered && self.masker.prefilter.is_some()) {
                pos = search(d, i, &self.buf, self.base, pos, cut, end, &mut found);
                self.next_from[i] = pos.max(cut);
                continue;
            }
            let at = &self.literal_at[i];
            let mut k = at.partition_point(|&l| l < pos);
            while k < at.len() {
                let from = pos.max(at[k].saturating_sub(LITERAL_LEAD));
                if from >= cut {
                    break;
                }
                // Occurrences whose windows meet are searched as one stretch.
                let mut last = at[k];
                k += 1;
                while k < at.len() && at[k].saturating_sub(LITERAL_LEAD) <= last + reach {
                    last = at[k];
                    k += 1;
                }
                // A match starting by `last` ends by `last + reach`: the search stops there,
                // and finds the same matches as one over the whole buffer.
                let until = (last + 1).min(cut);
                let limit = end.min(last + reach);
                pos = search(d, i, &self.buf, self.base, from, until, limit, &mut found);
                k = k.max(at.partition_point(|&l| l < pos));
            }
            self.next_from[i] = pos.max(cut);
        }
        found
    }
}

/// Searches detector `d` (index `i`) for matches starting in `[from, until)`, in the buffer
/// (`buf`, which starts at absolute offset `base`) up to `limit`, and pushes them to `found`.
/// Returns where its next search starts: after the last match, or `from`.
#[allow(clippy::too_many_arguments)]
fn search(
    d: &RegexDetector,
    i: usize,
    buf: &[u8],
    base: u64,
    mut from: u64,
    until: u64,
    limit: u64,
    found: &mut Vec<Found>,
) -> u64 {
    let haystack = &buf[..(limit - base) as usize];
    loop {
        let rel = (from - base) as usize;
        if rel > haystack.len() {
            return from;
        }
        let hit = match d.group {
            None => d
                .regex
                .find_at(haystack, rel)
                .map(|m| (m.range(), m.range(), None)),
            Some(g) => d.regex.captures_at(haystack, rel).map(|c| {
                let whole = c.get(0).map(|m| m.range()).unwrap_or(rel..rel);
                let secret = c.get(g).map(|m| m.range()).unwrap_or(whole.clone());
                let key = c.get(1).map(|m| m.range());
                (whole, secret, key)
            }),
        };
        let Some((whole, secret, key)) = hit else {
            return from;
        };
        let start = base + whole.start as u64;
        if start >= until {
            return from;
        }
        let end = base + whole.end as u64;
        if whole.is_empty() {
            // An empty match masks nothing; look again one byte further on.
            from = end + 1;
            continue;
        }
        from = end;
        if secret.is_empty() {
            continue;
        }
        if let (Some(reject), Some(key)) = (d.reject_key, key)
            && reject(&haystack[key])
        {
            continue;
        }
        found.push(Found {
            start,
            secret_start: base + secret.start as u64,
            secret_end: base + secret.end as u64,
            detector: i,
            canonical: d.canonical,
        });
    }
}

/// The form of a secret that is fingerprinted.
pub(crate) fn canonicalize(canonical: Canonical, secret: &[u8]) -> Vec<u8> {
    match canonical {
        Canonical::Raw => secret.to_vec(),
        Canonical::JsonString => {
            let decoded = json_unescape(secret);
            if decoded.starts_with(b"-----BEGIN") {
                pem(&decoded)
            } else {
                decoded
            }
        }
        Canonical::FormValue => {
            let plus = String::from_utf8_lossy(secret).replace('+', " ");
            crate::glob::decode_path(&plus).into_bytes()
        }
        Canonical::Pem => pem(&json_unescape_newlines(secret)),
    }
}

/// JSON string contents with escapes decoded; invalid escapes are kept as written.
fn json_unescape(raw: &[u8]) -> Vec<u8> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    match serde_json::from_slice::<String>(&quoted) {
        Ok(s) => s.into_bytes(),
        Err(_) => json_unescape_newlines(raw),
    }
}

/// Decodes only `\n`, `\r` and `\/`, which is what PEM text picks up inside JSON.
fn json_unescape_newlines(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (raw[i], raw.get(i + 1)) {
            (b'\\', Some(b'n')) => {
                out.push(b'\n');
                i += 2;
            }
            (b'\\', Some(b'r')) => {
                out.push(b'\r');
                i += 2;
            }
            (b'\\', Some(b'/')) => {
                out.push(b'/');
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A PEM block with CRLF as LF and surrounding whitespace trimmed.
pub(crate) fn pem(text: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(text).replace("\r\n", "\n");
    s.trim().as_bytes().to_vec()
}

#[cfg(test)]
mod tests;
