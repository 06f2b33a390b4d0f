//! One body recorded as it streams: Content-Encoding undone for the recording, secrets
//! masked, then cut into `body` records by the recording crate's encoder.

use super::decode::Decoder;
use super::{NotRecorded, Recording};
use cassette_recording::body::BodyEncoder;
use cassette_recording::record::{Direction, Event};
use cassette_rules::mask::{BYTE_FIELDS_LIMIT, BodyKind, ByteField, MaskStream, Masker};
use ring::hmac;
use std::collections::BTreeMap;

/// Records one body as it streams, masked.
pub struct BodyRecorder {
    /// Content-Encoding undone for the recording (the wire keeps it).
    decoder: Option<Decoder>,
    /// What the final record says about decoding, when there is something to say.
    decoding: Option<String>,
    encoder: Option<BodyEncoder>,
    mask: Option<MaskStream<'static>>,
    /// The masker, for byte fields.
    masker: Option<&'static Masker>,
    /// Base64 byte fields the API defines for this body (Secret Manager payloads, KMS
    /// plaintexts, Pub/Sub data): the body is held (up to BYTE_FIELDS_LIMIT) so that they
    /// can be decoded and masked inside, then recorded.
    fields: &'static [ByteField],
    held: Option<Vec<u8>>,
    recording: Recording,
    /// Why the last piece could not be recorded, when it could not.
    failed: Option<NotRecorded>,
}

impl BodyRecorder {
    pub(super) fn new(
        recording: Recording,
        exchange: u64,
        direction: Direction,
        max_body_bytes: u64,
        digest_key: &hmac::Key,
        mask: Option<(&'static Masker, BodyKind)>,
        content_encoding: Option<&str>,
    ) -> Self {
        let (decoder, decoding) = match Decoder::for_encoding(content_encoding, max_body_bytes) {
            Ok(decoder) => (decoder, None),
            Err(e) => (None, Some(format!("recorded as sent, not decoded: {e}"))),
        };
        Self {
            decoder,
            decoding,
            encoder: Some(BodyEncoder::new(
                exchange,
                direction,
                max_body_bytes,
                digest_key,
            )),
            mask: mask.map(|(masker, kind)| masker.stream(kind)),
            masker: mask.map(|(masker, _)| masker),
            fields: &[],
            held: None,
            recording,
            failed: None,
        }
    }

    /// Mask the API's base64 byte `fields` inside (the body is held whole to read them).
    pub fn with_byte_fields(mut self, fields: &'static [ByteField]) -> Self {
        if !fields.is_empty() && self.masker.is_some() {
            self.fields = fields;
            self.held = Some(Vec::new());
        }
        self
    }

    /// Bytes of the (decoded) body recorded so far.
    pub fn recorded(&self) -> u64 {
        self.encoder.as_ref().map_or(0, |e| e.length())
    }

    /// What the final record says about how the body was recorded.
    pub fn note(&mut self, note: &str) {
        self.decoding = Some(note.to_string());
    }

    /// The next chunk as it went over the wire. An error means its record could not be
    /// kept: under `onFailure: closed` the chunk must not pass.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), NotRecorded> {
        let decoded;
        let chunk: &[u8] = match &mut self.decoder {
            Some(decoder) => match decoder.feed(chunk) {
                Ok(bytes) => {
                    decoded = bytes;
                    &decoded
                }
                Err(e) => {
                    // Record the rest as the bytes they are, and say so.
                    tracing::warn!(error = %e, "recording the body undecoded from here on");
                    self.decoding = Some(format!("{e}; what follows is recorded as it was sent"));
                    self.decoder = None;
                    chunk
                }
            },
            None => chunk,
        };
        self.record(chunk);
        self.failed.take().map_or(Ok(()), Err)
    }

    /// Mask and store decoded bytes (held first while byte fields are read).
    fn record(&mut self, plain: &[u8]) {
        if let Some(held) = &mut self.held {
            if held.len() + plain.len() <= BYTE_FIELDS_LIMIT {
                held.extend_from_slice(plain);
                return;
            }
            // Too large to read whole: masked as it streams, like any body.
            let held = self.held.take().unwrap_or_default();
            self.store(&held);
        }
        self.store(plain);
    }

    /// Mask and store.
    fn store(&mut self, plain: &[u8]) {
        let Some(encoder) = &mut self.encoder else {
            return;
        };
        let pieces = match &mut self.mask {
            Some(mask) => {
                let mut out = Vec::with_capacity(plain.len());
                mask.feed(plain, &mut out);
                encoder.push(&out)
            }
            None => encoder.push(plain),
        };
        self.emit(pieces);
    }

    /// Write pieces; the first failure is kept for `push` to report.
    fn emit(&mut self, pieces: Vec<cassette_recording::record::Body>) {
        for body in pieces {
            if let Err(e) = self.recording.try_emit(Event::Body(body))
                && self.failed.is_none()
            {
                self.failed = Some(e);
            }
        }
    }

    /// End the body; returns the masks per detector.
    pub fn finish(&mut self) -> BTreeMap<String, u64> {
        if self.encoder.is_none() {
            return BTreeMap::new();
        }
        if let Some(decoder) = self.decoder.take() {
            let stopped = decoder.stopped_at();
            let name = decoder.name().to_string();
            match decoder.finish() {
                Ok(tail) => self.record(&tail),
                Err(e) => {
                    tracing::warn!(error = %e, "the body's encoding ended badly");
                    self.decoding = Some(e.to_string());
                }
            }
            if let Some(n) = stopped {
                self.decoding = Some(format!(
                    "{name}: truncated after decoding {n} bytes (maxBodyBytes); the rest was passed on as sent, not decoded"
                ));
            }
        }
        let mut counts = BTreeMap::new();
        if let Some(held) = self.held.take() {
            let masker = self
                .masker
                .expect("byte fields are read only with a masker");
            match masker.mask_byte_fields(self.fields, &held) {
                Some((masked, summary)) => {
                    for (detector, n) in summary.counts {
                        *counts.entry(detector).or_insert(0) += n;
                    }
                    self.store(&masked);
                }
                None => self.store(&held),
            }
        }
        let Some(mut encoder) = self.encoder.take() else {
            return counts;
        };
        if let Some(mask) = self.mask.take() {
            let mut out = Vec::new();
            let summary = mask.finish(&mut out);
            for body in encoder.push(&out) {
                self.recording.emit(Event::Body(body));
            }
            for (detector, n) in summary.counts {
                *counts.entry(detector).or_insert(0) += n;
            }
        }
        let decoding = self.decoding.take();
        for mut body in encoder.finish() {
            if body.last && decoding.is_some() {
                if decoding
                    .as_deref()
                    .is_some_and(|d| d.contains("truncated after decoding"))
                {
                    body.truncated = Some(true);
                }
                body.decoding = decoding.clone();
            }
            self.recording.emit(Event::Body(body));
        }
        counts
    }
}

impl Drop for BodyRecorder {
    fn drop(&mut self) {
        self.finish();
    }
}
