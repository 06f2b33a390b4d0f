//! The canonical encoding of a record and the SHA-256 hash chain over it (FORMAT.md says the
//! same in prose). Pure functions over bytes: no clock, no files. Verification works on the
//! bytes as written, never on a re-encoding, so a reader needs no serializer to check a chain.

use ring::digest::{Context, SHA256};
use serde::Serialize;

use crate::record::Event;

/// The `chain` value that comes "before" the first record of a recording.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"chain":"` + 64 hex digits + `"}`: how every line ends (before its `\n`).
const CHAIN_MEMBER_PREFIX: &[u8] = b",\"chain\":\"";
pub(crate) const CHAIN_SUFFIX_LEN: usize = CHAIN_MEMBER_PREFIX.len() + 64 + 2;

/// Why bytes could not be taken apart as a record line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("the line does not end with a \"chain\" member of 64 lowercase hex digits")]
    NoChain,
}

/// The canonical bytes of a record without its `chain`: compact JSON with the members in the
/// order `seq`, `time`, `kind`, then the fields of the kind in their declared order.
pub fn canonical(seq: u64, time: &str, event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    canonical_into(&mut out, seq, time, event);
    out
}

/// As [`canonical`], appending to `out`.
pub fn canonical_into(out: &mut Vec<u8>, seq: u64, time: &str, event: &Event) {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"time\":");
    // A time is RFC 3339 and needs no escaping, but let the serializer decide anyway.
    write_json(out, time);
    let start = out.len();
    write_json(out, event);
    // The event serializes as `{"kind":…}`; replace its `{` with the `,` that joins it on.
    out[start] = b',';
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing our own types into a Vec cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_writer(out, value).expect("record types serialize to JSON");
}

/// `chain` of a record: hex SHA-256 over the previous `chain` (as its 64 hex characters) and
/// the record's canonical bytes.
pub fn link(prev: &str, canonical: &[u8]) -> String {
    link_parts(prev, &[canonical])
}

/// As [`link`], for canonical bytes that are in pieces (as when they are cut from a line).
pub fn link_parts(prev: &str, canonical: &[&[u8]]) -> String {
    let mut ctx = Context::new(&SHA256);
    ctx.update(prev.as_bytes());
    for part in canonical {
        ctx.update(part);
    }
    hex(ctx.finish().as_ref())
}

/// The line as written to a segment: the canonical bytes with `"chain"` as the last member,
/// and a newline.
pub fn line(canonical: &[u8], chain: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(canonical.len() + CHAIN_SUFFIX_LEN + 1);
    append_line(&mut out, canonical, chain);
    out
}

/// As [`line`], appending to `out`.
pub fn append_line(out: &mut Vec<u8>, canonical: &[u8], chain: &str) {
    debug_assert_eq!(canonical.last(), Some(&b'}'));
    out.extend_from_slice(&canonical[..canonical.len() - 1]);
    out.extend_from_slice(CHAIN_MEMBER_PREFIX);
    out.extend_from_slice(chain.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// A line taken apart: the canonical bytes are `body` followed by `}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLine<'a> {
    /// The canonical bytes without their closing `}`.
    pub body: &'a [u8],
    /// The `chain` member's value.
    pub chain: &'a str,
}

impl SplitLine<'_> {
    /// The `chain` this line should carry, given the previous one.
    pub fn expected_chain(&self, prev: &str) -> String {
        link_parts(prev, &[self.body, b"}"])
    }

    /// The canonical bytes (allocates).
    pub fn canonical(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + 1);
        v.extend_from_slice(self.body);
        v.push(b'}');
        v
    }
}

/// Takes a line (without its `\n`) apart into canonical bytes and chain.
pub fn split_line(line: &[u8]) -> Result<SplitLine<'_>, LineError> {
    if line.len() < CHAIN_SUFFIX_LEN + 2 {
        return Err(LineError::NoChain);
    }
    let cut = line.len() - CHAIN_SUFFIX_LEN;
    let suffix = &line[cut..];
    let hex_part = &suffix[CHAIN_MEMBER_PREFIX.len()..CHAIN_MEMBER_PREFIX.len() + 64];
    if !suffix.starts_with(CHAIN_MEMBER_PREFIX)
        || !suffix.ends_with(b"\"}")
        || !hex_part
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    {
        return Err(LineError::NoChain);
    }
    let chain = std::str::from_utf8(hex_part).map_err(|_| LineError::NoChain)?;
    Ok(SplitLine {
        body: &line[..cut],
        chain,
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Hex SHA-256 of bytes (segment and manifest digests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Event, SessionEnd};

    fn end() -> Event {
        Event::SessionEnd(SessionEnd {
            reason: "shutdown".into(),
        })
    }

    #[test]
    fn canonical_orders_envelope_then_kind() {
        let c = canonical(7, "2026-05-01T12:00:00.000000000Z", &end());
        assert_eq!(
            String::from_utf8(c).unwrap(),
            r#"{"seq":7,"time":"2026-05-01T12:00:00.000000000Z","kind":"session_end","reason":"shutdown"}"#
        );
    }

    #[test]
    fn line_splits_back_into_canonical_and_chain() {
        let c = canonical(0, "2026-05-01T12:00:00.000000000Z", &end());
        let chain = link(GENESIS, &c);
        let l = line(&c, &chain);
        assert_eq!(*l.last().unwrap(), b'\n');
        let split = split_line(&l[..l.len() - 1]).unwrap();
        assert_eq!(split.canonical(), c);
        assert_eq!(split.chain, chain);
        assert_eq!(split.expected_chain(GENESIS), chain);
        // The line is valid JSON with chain as a member.
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["chain"], chain.as_str());
    }

    #[test]
    fn split_refuses_lines_without_a_well_formed_chain() {
        let c = canonical(0, "t", &end());
        let l = line(&c, &link(GENESIS, &c));
        let body = &l[..l.len() - 1];
        assert!(split_line(&body[..body.len() - 1]).is_err());
        let mut upper = body.to_vec();
        let n = upper.len();
        upper[n - 3] = b'G';
        assert_eq!(split_line(&upper), Err(LineError::NoChain));
        assert!(split_line(b"{}").is_err());
    }

    #[test]
    fn chain_depends_on_previous_link() {
        let c = canonical(1, "t", &end());
        assert_ne!(link(GENESIS, &c), link(&link(GENESIS, &c), &c));
    }
}

/// FORMAT.md's worked example must be what this code computes, byte for byte.
#[cfg(test)]
mod format_md {
    use super::*;
    use crate::record::Record;

    const FORMAT_MD: &str = include_str!("../FORMAT.md");
    /// RFC 8032 §7.1 test 1 secret key (the seed).
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn example_lines() -> Vec<&'static str> {
        let start = FORMAT_MD
            .find("```jsonl\n")
            .expect("FORMAT.md has a jsonl example")
            + 9;
        let len = FORMAT_MD[start..].find("```").unwrap();
        FORMAT_MD[start..start + len].lines().collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn worked_example_chains_encodes_and_signs_as_documented() {
        let lines = example_lines();
        assert_eq!(lines.len(), 5);
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_unchecked(&unhex(RFC8032_SEED)).unwrap();
        let mut prev = GENESIS.to_string();
        for line in &lines {
            let split = split_line(line.as_bytes()).unwrap();
            assert_eq!(split.expected_chain(&prev), split.chain, "chain of {line}");
            // The encoder produces exactly these canonical bytes from the parsed record.
            let record: Record = serde_json::from_str(line).unwrap();
            let again = canonical(record.seq, &record.time, &record.event);
            assert_eq!(
                String::from_utf8(again).unwrap(),
                String::from_utf8(split.canonical()).unwrap()
            );
            if let crate::record::Event::Seal(seal) = &record.event {
                assert_eq!(seal.head, prev);
                let mut msg = crate::key::SEAL_CONTEXT.to_vec();
                msg.extend_from_slice(seal.head.as_bytes());
                let expected = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    pair.sign(&msg).as_ref(),
                );
                assert_eq!(seal.signature, expected, "seal signature");
                use ring::signature::KeyPair;
                assert!(crate::key::verify_seal(
                    pair.public_key().as_ref(),
                    &seal.head,
                    &seal.signature
                ));
            }
            if let crate::record::Event::SessionStart(s) = &record.event {
                use ring::signature::KeyPair;
                assert_eq!(
                    crate::key::decode_public_key(&s.public_key).unwrap(),
                    pair.public_key().as_ref()
                );
                assert_eq!(
                    s.digest_key_id.as_deref(),
                    Some(crate::body::digest_key_id(b"example-digest-key").as_str())
                );
            }
            if let crate::record::Event::Body(b) = &record.event
                && b.last
            {
                assert_eq!(
                    b.digest.as_deref(),
                    Some(crate::body::body_digest(b"example-digest-key", b"hello").as_str())
                );
            }
            prev = split.chain.to_string();
        }
        // The hand check quoted in FORMAT.md.
        assert!(FORMAT_MD.contains(&format!(
            "# {}  -",
            split_line(lines[0].as_bytes()).unwrap().chain
        )));
    }
}
