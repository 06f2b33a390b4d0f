//! Turns a streamed body into `body` records: UTF-8 text as is, other bytes base64, storage
//! cut at `maxBodyBytes` while the full length and a keyed digest keep counting. Pure: the
//! recorder's `BodyWriter` feeds it and records what it returns.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::hmac;

use crate::chain::hex;
use crate::record::{Body, Direction, ExchangeId};

/// Splits one body into records. Feed chunks with [`BodyEncoder::push`], end with
/// [`BodyEncoder::finish`].
pub struct BodyEncoder {
    exchange: ExchangeId,
    direction: Direction,
    max_bytes: u64,
    /// Bytes stored so far (offset of the next stored piece).
    stored: u64,
    /// Bytes seen so far, stored or not.
    length: u64,
    /// The start of a UTF-8 sequence that a chunk boundary cut; at most 3 bytes.
    carry: Vec<u8>,
    digest: hmac::Context,
}

impl BodyEncoder {
    /// An encoder that stores at most `max_bytes` and digests with `digest_key`.
    pub fn new(
        exchange: ExchangeId,
        direction: Direction,
        max_bytes: u64,
        digest_key: &hmac::Key,
    ) -> Self {
        Self {
            exchange,
            direction,
            max_bytes,
            stored: 0,
            length: 0,
            carry: Vec::new(),
            digest: hmac::Context::with_key(digest_key),
        }
    }

    /// Full length seen so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Takes the next chunk; returns the records to write for it (zero, one, or two when a
    /// cut UTF-8 sequence has to be flushed at the storage limit).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Body> {
        self.digest.update(chunk);
        self.length += chunk.len() as u64;
        let room = self.max_bytes - (self.stored + self.carry.len() as u64).min(self.max_bytes);
        if room == 0 {
            return Vec::new();
        }
        let kept = &chunk[..chunk.len().min(room as usize)];
        let at_limit = self.stored + self.carry.len() as u64 + kept.len() as u64 >= self.max_bytes;
        let mut pending = std::mem::take(&mut self.carry);
        pending.extend_from_slice(kept);
        let mut out = Vec::new();
        match std::str::from_utf8(&pending) {
            Ok(_) => out.extend(self.piece(pending)),
            Err(e) if e.error_len().is_none() && !at_limit => {
                // The chunk ends inside a UTF-8 sequence: keep its start for the next chunk.
                let valid = e.valid_up_to();
                self.carry = pending.split_off(valid);
                out.extend(self.piece(pending));
            }
            Err(e) if e.error_len().is_none() => {
                // At the limit no more bytes will come to complete it: text, then the rest raw.
                let valid = e.valid_up_to();
                let rest = pending.split_off(valid);
                out.extend(self.piece(pending));
                out.extend(self.piece(rest));
            }
            Err(_) => out.extend(self.piece(pending)),
        }
        out
    }

    /// Ends the body: flushes a dangling partial sequence and returns the final records.
    pub fn finish(mut self) -> Vec<Body> {
        let mut out = Vec::new();
        let carry = std::mem::take(&mut self.carry);
        out.extend(self.piece(carry));
        let tag = self.digest.sign();
        out.push(Body {
            exchange: self.exchange,
            direction: self.direction,
            offset: self.stored,
            text: None,
            base64: None,
            last: true,
            length: Some(self.length),
            digest: Some(format!("hmac-sha256:{}", hex(tag.as_ref()))),
            truncated: Some(self.length > self.stored),
            decoding: None,
        });
        out
    }

    fn piece(&mut self, bytes: Vec<u8>) -> Option<Body> {
        if bytes.is_empty() {
            return None;
        }
        let offset = self.stored;
        self.stored += bytes.len() as u64;
        let (text, base64) = match String::from_utf8(bytes) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(B64.encode(e.into_bytes()))),
        };
        Some(Body {
            exchange: self.exchange,
            direction: self.direction,
            offset,
            text,
            base64,
            last: false,
            length: None,
            digest: None,
            truncated: None,
            decoding: None,
        })
    }
}

/// What `session_start` says about the key bodies are digested with (`digest_key_id`): the
/// first 12 bytes of HMAC-SHA-256(key, `cassette-digest-key-id-v1`), lowercase hex.
pub fn digest_key_id(key: &[u8]) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        b"cassette-digest-key-id-v1",
    );
    hex(&tag.as_ref()[..12])
}

/// The digest a final `body` record carries for `bytes` under `key`, for checking a candidate
/// body against a recording.
pub fn body_digest(key: &[u8], bytes: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), bytes);
    format!("hmac-sha256:{}", hex(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"digest key")
    }

    fn encode(chunks: &[&[u8]], max: u64) -> Vec<Body> {
        let mut enc = BodyEncoder::new(1, Direction::Response, max, &key());
        let mut out = Vec::new();
        for c in chunks {
            out.extend(enc.push(c));
        }
        out.extend(enc.finish());
        out
    }

    fn stored(records: &[Body]) -> Vec<u8> {
        let mut v = Vec::new();
        for r in records {
            assert_eq!(r.offset, v.len() as u64, "offsets are contiguous");
            if let Some(t) = &r.text {
                v.extend_from_slice(t.as_bytes());
            }
            if let Some(b) = &r.base64 {
                v.extend(B64.decode(b).unwrap());
            }
        }
        v
    }

    #[test]
    fn utf8_split_across_chunks_stays_text() {
        let s = "héllo wörld €";
        let bytes = s.as_bytes();
        // Cut inside 'é' (2 bytes) and inside '€' (3 bytes).
        let recs = encode(&[&bytes[..2], &bytes[2..15], &bytes[15..]], 1 << 20);
        assert!(
            recs.iter().all(|r| r.base64.is_none()),
            "no base64: {recs:?}"
        );
        assert_eq!(stored(&recs), bytes);
        let fin = recs.last().unwrap();
        assert!(fin.last);
        assert_eq!(fin.length, Some(bytes.len() as u64));
        assert_eq!(fin.truncated, Some(false));
        assert_eq!(
            fin.digest.as_deref(),
            Some(body_digest(b"digest key", bytes).as_str())
        );
    }

    #[test]
    fn binary_goes_base64() {
        let recs = encode(&[&[0xff, 0x00, 0x80]], 100);
        assert_eq!(recs[0].base64.as_deref(), Some("/wCA"));
    }

    #[test]
    fn truncates_storage_but_counts_and_digests_everything() {
        let body = vec![b'a'; 1000];
        let recs = encode(&[&body[..300], &body[300..]], 256);
        assert_eq!(stored(&recs).len(), 256);
        let fin = recs.last().unwrap();
        assert_eq!(fin.length, Some(1000));
        assert_eq!(fin.offset, 256);
        assert_eq!(fin.truncated, Some(true));
        assert_eq!(
            fin.digest.as_deref(),
            Some(body_digest(b"digest key", &body).as_str())
        );
    }

    #[test]
    fn empty_body_has_only_the_final_record() {
        let recs = encode(&[], 10);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].length, Some(0));
        assert_eq!(recs[0].truncated, Some(false));
    }

    proptest! {
        #[test]
        fn stored_bytes_are_the_body_prefix(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            text in "\\PC{0,80}",
            cuts in proptest::collection::vec(0usize..500, 0..6),
            max in 0u64..600,
        ) {
            let mut all = text.into_bytes();
            all.extend(body);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(all.len())).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts { chunks.push(&all[at..c]); at = c; }
            chunks.push(&all[at..]);
            let recs = encode(&chunks, max);
            let kept = stored(&recs);
            let n = all.len().min(max as usize);
            prop_assert_eq!(&kept[..], &all[..n]);
            let fin = recs.last().unwrap();
            prop_assert_eq!(fin.length, Some(all.len() as u64));
            prop_assert_eq!(fin.truncated, Some(all.len() > n));
        }
    }
}
