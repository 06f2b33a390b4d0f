//! One body recorded as it streams: Content-Encoding undone for the recording, secrets
//! masked, then cut into `body` records by the recording crate's encoder.

use super::Recording;
use super::decode::Decoder;
use cassette_recording::body::BodyEncoder;
use cassette_recording::record::{Direction, Event};
use cassette_rules::mask::{BodyKind, MaskStream, Masker};
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
    recording: Recording,
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
            recording,
        }
    }

    /// What the final record says about how the body was recorded.
    pub fn note(&mut self, note: &str) {
        self.decoding = Some(note.to_string());
    }

    /// The next chunk as it went over the wire.
    pub fn push(&mut self, chunk: &[u8]) {
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
    }

    /// Mask and store decoded bytes.
    fn record(&mut self, plain: &[u8]) {
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
        for body in pieces {
            self.recording.emit(Event::Body(body));
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
        let Some(mut encoder) = self.encoder.take() else {
            return BTreeMap::new();
        };
        let mut counts = BTreeMap::new();
        if let Some(mask) = self.mask.take() {
            let mut out = Vec::new();
            let summary = mask.finish(&mut out);
            for body in encoder.push(&out) {
                self.recording.emit(Event::Body(body));
            }
            counts = summary.counts;
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
