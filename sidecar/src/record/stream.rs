//! The bytes of a connection carried without HTTP — a passthrough tunnel, or an upgrade a
//! rule allowed — recorded as they pass, one direction each, cut like a body (at most
//! `maxBodyBytes` stored, the full length and a keyed digest kept).

use super::Recording;
use cassette_recording::body::BodyEncoder;
use cassette_recording::record::{Body, Direction, Event, Flow, Stream};
use cassette_rules::mask::{BodyKind, MaskStream, Masker};
use ring::hmac;
use std::collections::BTreeMap;

/// Records one direction of a stream.
pub struct StreamRecorder {
    conn: u64,
    exchange: Option<u64>,
    direction: Flow,
    encoder: Option<BodyEncoder>,
    mask: Option<MaskStream<'static>>,
    recording: Recording,
    /// Masks counted when the direction ended, until someone takes them.
    masked: BTreeMap<String, u64>,
}

impl StreamRecorder {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        recording: Recording,
        conn: u64,
        exchange: Option<u64>,
        direction: Flow,
        max_bytes: u64,
        digest_key: &hmac::Key,
        mask: Option<(&'static Masker, BodyKind)>,
    ) -> Self {
        // The encoder's exchange and direction are not used: its pieces become streams.
        let encoder = BodyEncoder::new(0, Direction::Request, max_bytes, digest_key);
        Self {
            conn,
            exchange,
            direction,
            encoder: Some(encoder),
            mask: mask.map(|(masker, kind)| masker.stream(kind)),
            recording,
            masked: BTreeMap::new(),
        }
    }

    /// Bytes as they passed.
    pub fn push(&mut self, chunk: &[u8]) {
        let Some(encoder) = &mut self.encoder else {
            return;
        };
        let pieces = match &mut self.mask {
            Some(mask) => {
                let mut out = Vec::with_capacity(chunk.len());
                mask.feed(chunk, &mut out);
                encoder.push(&out)
            }
            None => encoder.push(chunk),
        };
        self.emit(pieces);
    }

    /// The end of this direction (once; later calls only hand back the masks). Returns the
    /// masks per detector, once.
    pub fn finish(&mut self) -> BTreeMap<String, u64> {
        if let Some(mut encoder) = self.encoder.take() {
            if let Some(mask) = self.mask.take() {
                let mut out = Vec::new();
                let summary = mask.finish(&mut out);
                let pieces = encoder.push(&out);
                self.emit(pieces);
                self.masked = summary.counts;
            }
            let pieces = encoder.finish();
            self.emit(pieces);
        }
        std::mem::take(&mut self.masked)
    }

    fn emit(&self, pieces: Vec<Body>) {
        for b in pieces {
            self.recording.emit(Event::Stream(Stream {
                conn: self.conn,
                exchange: self.exchange,
                direction: self.direction,
                offset: b.offset,
                text: b.text,
                base64: b.base64,
                last: b.last,
                length: b.length,
                digest: b.digest,
                truncated: b.truncated,
            }));
        }
    }
}

impl Drop for StreamRecorder {
    fn drop(&mut self) {
        self.finish();
    }
}

impl crate::upstream::Observe for StreamRecorder {
    fn bytes(&mut self, chunk: &[u8]) -> Result<(), crate::http::BoxError> {
        // onFailure: closed — bytes the recording cannot take do not pass.
        if !self.recording.accepting() {
            return Err("the recording takes no more records".into());
        }
        self.push(chunk);
        Ok(())
    }

    fn end(&mut self) {
        let masked = self.finish();
        self.masked = masked;
    }
}
