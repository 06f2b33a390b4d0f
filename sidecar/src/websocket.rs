//! WebSocket (RFC 6455) after an upgrade: the frames of each direction are read as they pass,
//! and every message — its frames joined, control frames too — is recorded masked, with its
//! opcode, its length and when it ended.
//!
//! The sidecar removes `Sec-WebSocket-Extensions` from the upgrade request, so no extension
//! (permessage-deflate) compresses payloads it must read; a frame with a reserved bit set, a
//! reserved opcode or broken framing means the connection does not speak WebSocket as
//! negotiated, and it is closed rather than carried unread. Payloads are stored up to
//! `maxBodyBytes` per message; beyond that the message is marked truncated (its length still
//! counts). Nothing here buffers more than one message's stored part.

use crate::http::BoxError;
use crate::record::Recording;
use base64::Engine;
use cassette_recording::record::{Event, Flow, Message};
use cassette_rules::mask::{BodyKind, Masker};
use std::collections::BTreeMap;

/// Why a direction's bytes are not WebSocket as negotiated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a frame sets reserved bits ({0:#x}) that no negotiated extension explains")]
    Reserved(u8),
    #[error("opcode {0:#x} is reserved")]
    Opcode(u8),
    #[error("a control frame is fragmented or longer than 125 bytes")]
    Control,
    #[error("a continuation frame arrived with no message to continue")]
    Continuation,
    #[error("a new message started before the last one ended")]
    Interleaved,
    #[error("a frame's 64-bit length has its top bit set")]
    Length,
}

/// One message as it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub opcode: u8,
    /// Its length on the wire, all frames.
    pub length: u64,
    /// What was kept of its payload (at most `max` bytes), unmasked from the wire's masking.
    pub payload: Vec<u8>,
    pub truncated: bool,
}

/// Where the reader is within a frame.
enum State {
    /// Gathering the frame header (2 to 14 bytes).
    Header(Vec<u8>),
    /// Reading `left` payload bytes of a frame, unmasking with `key` from `offset`.
    Payload {
        left: u64,
        key: Option<[u8; 4]>,
        offset: usize,
        control: bool,
        fin: bool,
    },
}

/// Reads one direction's frames into messages.
pub struct FrameReader {
    state: State,
    max: usize,
    /// The data message being assembled (text or binary), if any.
    data: Option<Read>,
    /// The control frame being read.
    control: Option<Read>,
    /// Set once the stream is found broken: nothing more is read.
    broken: bool,
}

impl FrameReader {
    /// A reader storing at most `max` bytes of each message.
    pub fn new(max: usize) -> Self {
        Self {
            state: State::Header(Vec::with_capacity(14)),
            max,
            data: None,
            control: None,
            broken: false,
        }
    }

    /// Read the next bytes; returns the messages they completed, in order.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Vec<Read>, FrameError> {
        let mut done = Vec::new();
        if self.broken {
            return Ok(done);
        }
        while !chunk.is_empty() {
            match &mut self.state {
                State::Header(head) => {
                    let need = header_len(head);
                    let take = need.saturating_sub(head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if head.len() == header_len(head) {
                        let head = std::mem::take(head);
                        if let Err(e) = self.start_frame(&head, &mut done) {
                            self.broken = true;
                            return Err(e);
                        }
                    }
                }
                State::Payload {
                    left,
                    key,
                    offset,
                    control,
                    fin,
                } => {
                    let take = (*left).min(chunk.len() as u64) as usize;
                    let (bytes, rest) = chunk.split_at(take);
                    chunk = rest;
                    let message = if *control {
                        self.control.as_mut()
                    } else {
                        self.data.as_mut()
                    }
                    .expect("a frame's message exists while its payload is read");
                    let room = self.max.saturating_sub(message.payload.len());
                    let kept = &bytes[..bytes.len().min(room)];
                    let start = message.payload.len();
                    message.payload.extend_from_slice(kept);
                    if let Some(k) = key {
                        for (i, b) in message.payload[start..].iter_mut().enumerate() {
                            *b ^= k[(*offset + i) % 4];
                        }
                    }
                    if kept.len() < bytes.len() {
                        message.truncated = true;
                    }
                    *offset += take;
                    *left -= take as u64;
                    if *left == 0 {
                        let (control, fin) = (*control, *fin);
                        self.state = State::Header(Vec::with_capacity(14));
                        self.end_frame(control, fin, &mut done);
                    }
                }
            }
        }
        Ok(done)
    }

    /// A frame header is complete: check it and begin its payload.
    fn start_frame(&mut self, head: &[u8], done: &mut Vec<Read>) -> Result<(), FrameError> {
        let fin = head[0] & 0x80 != 0;
        let reserved = head[0] & 0x70;
        let opcode = head[0] & 0x0f;
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        let masked = head[1] & 0x80 != 0;
        let (len, at) = match head[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
            127 => {
                let n = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
                if n >> 63 != 0 {
                    return Err(FrameError::Length);
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        let key = masked.then(|| head[at..at + 4].try_into().expect("4 bytes"));
        let control = match opcode {
            0x8..=0xa => {
                if !fin || len > 125 {
                    return Err(FrameError::Control);
                }
                self.control = Some(Read {
                    opcode,
                    length: len,
                    payload: Vec::new(),
                    truncated: false,
                });
                true
            }
            0x0 => {
                let message = self.data.as_mut().ok_or(FrameError::Continuation)?;
                message.length += len;
                false
            }
            0x1 | 0x2 => {
                if self.data.is_some() {
                    return Err(FrameError::Interleaved);
                }
                self.data = Some(Read {
                    opcode,
                    length: len,
                    payload: Vec::new(),
                    truncated: false,
                });
                false
            }
            other => return Err(FrameError::Opcode(other)),
        };
        self.state = State::Payload {
            left: len,
            key,
            offset: 0,
            control,
            fin,
        };
        if len == 0 {
            self.state = State::Header(Vec::with_capacity(14));
            self.end_frame(control, fin, done);
        }
        Ok(())
    }

    fn end_frame(&mut self, control: bool, fin: bool, done: &mut Vec<Read>) {
        if control {
            done.extend(self.control.take());
        } else if fin {
            done.extend(self.data.take());
        }
    }
}

/// How long a frame header is, given what of it has arrived (at least 2 bytes are needed to
/// tell).
fn header_len(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    match head[1] & 0x7f {
        126 => 4 + mask,
        127 => 10 + mask,
        _ => 2 + mask,
    }
}

/// The name of an opcode, as recorded.
pub fn opcode_name(opcode: u8) -> &'static str {
    match opcode {
        0x1 => "text",
        0x2 => "binary",
        0x8 => "close",
        0x9 => "ping",
        0xa => "pong",
        _ => "reserved",
    }
}

/// Records one direction of a WebSocket connection.
pub struct MessageRecorder {
    reader: FrameReader,
    recording: Recording,
    masker: &'static Masker,
    exchange: u64,
    direction: Flow,
    /// Masks per detector over all messages.
    pub masked: BTreeMap<String, u64>,
}

impl MessageRecorder {
    pub fn new(
        recording: Recording,
        masker: &'static Masker,
        exchange: u64,
        direction: Flow,
        max_bytes: u64,
    ) -> Self {
        Self {
            reader: FrameReader::new(usize::try_from(max_bytes).unwrap_or(usize::MAX)),
            recording,
            masker,
            exchange,
            direction,
            masked: BTreeMap::new(),
        }
    }

    fn record(&mut self, message: Read) {
        let kind = if message
            .payload
            .first()
            .is_some_and(|b| *b == b'{' || *b == b'[')
        {
            BodyKind::Json
        } else {
            BodyKind::Other
        };
        let (payload, summary) = self.masker.mask(kind, &message.payload);
        let masked = summary.counts.values().sum();
        for (detector, n) in summary.counts {
            *self.masked.entry(detector).or_insert(0) += n;
        }
        let (text, base64) = match String::from_utf8(payload) {
            Ok(text) => (Some(text), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
            ),
        };
        self.recording.emit(Event::Message(Message {
            exchange: self.exchange,
            direction: self.direction,
            opcode: opcode_name(message.opcode).into(),
            length: message.length,
            text,
            base64,
            truncated: message.truncated,
            masked,
        }));
    }
}

impl crate::upstream::Observe for MessageRecorder {
    fn bytes(&mut self, chunk: &[u8]) -> Result<(), BoxError> {
        for message in self.reader.feed(chunk)? {
            self.record(message);
        }
        Ok(())
    }

    fn end(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client (masked) or a server (not) writes it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n < 65536 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match key {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn read_all(bytes: &[u8], chunk: usize, max: usize) -> Result<Vec<Read>, FrameError> {
        let mut reader = FrameReader::new(max);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            out.extend(reader.feed(piece)?);
        }
        Ok(out)
    }

    #[test]
    fn fragmented_masked_messages_with_a_ping_between_read_under_any_chunking() {
        let key = Some([1, 2, 3, 4]);
        let big = vec![b'x'; 70_000];
        let mut wire = frame(false, 0x1, b"hello ", key);
        wire.extend(frame(true, 0x9, b"are you there", key));
        wire.extend(frame(true, 0x0, b"world", key));
        wire.extend(frame(true, 0x2, &big, None));
        wire.extend(frame(true, 0x8, &[0x03, 0xe8], key));
        for chunk in [1, 2, 7, 4096, wire.len()] {
            let read = read_all(&wire, chunk, 1 << 20).unwrap();
            let got: Vec<(u8, u64, usize)> = read
                .iter()
                .map(|m| (m.opcode, m.length, m.payload.len()))
                .collect();
            assert_eq!(
                got,
                [
                    (0x9, 13, 13),
                    (0x1, 11, 11),
                    (0x2, 70_000, 70_000),
                    (0x8, 2, 2)
                ],
                "chunk {chunk}"
            );
            assert_eq!(read[0].payload, b"are you there");
            assert_eq!(read[1].payload, b"hello world");
        }
    }

    #[test]
    fn a_message_longer_than_what_is_stored_is_truncated_but_counted() {
        let wire = frame(true, 0x1, &[b'a'; 300], Some([9, 9, 9, 9]));
        let read = read_all(&wire, 64, 100).unwrap();
        assert_eq!(read[0].length, 300);
        assert_eq!(read[0].payload, vec![b'a'; 100]);
        assert!(read[0].truncated);
    }

    #[test]
    fn what_is_not_websocket_as_negotiated_is_an_error() {
        // Bytes that are not frames at all: "GET " reads as a frame with reserved bits.
        assert!(read_all(b"GET / HTTP/1.1\r\n\r\n", 4, 100).is_err());
        // A compressed frame (RSV1) when no extension was negotiated.
        let mut deflated = frame(true, 0x1, b"x", None);
        deflated[0] |= 0x40;
        assert_eq!(read_all(&deflated, 8, 100), Err(FrameError::Reserved(0x40)));
        assert_eq!(
            read_all(&frame(true, 0x3, b"", None), 8, 100),
            Err(FrameError::Opcode(3))
        );
        assert_eq!(
            read_all(&frame(true, 0x0, b"x", None), 8, 100),
            Err(FrameError::Continuation)
        );
        let mut interleaved = frame(false, 0x1, b"a", None);
        interleaved.extend(frame(true, 0x2, b"b", None));
        assert_eq!(read_all(&interleaved, 8, 100), Err(FrameError::Interleaved));
        assert_eq!(
            read_all(&frame(false, 0x9, b"", None), 8, 100),
            Err(FrameError::Control)
        );
    }
}
