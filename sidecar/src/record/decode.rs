//! Content-Encoding, undone for the recording only: a gzip, deflate, zstd or br body —
//! every layer of a stacked one (`br, gzip`) — is decoded chunk by chunk so the masker sees
//! the secrets in it and the recording holds readable text. The bytes on the wire are never
//! touched.
//!
//! Bounded whatever the input: each layer decodes into a buffer of fixed size, the whole
//! stops once `limit` bytes (the session's maxBodyBytes) have come out, and the decoders'
//! windows are capped (zstd at 8 MiB, as RFC 8878 asks of HTTP; brotli at its standard
//! 16 MiB; deflate's is 32 KiB). A few kilobytes that would expand to gigabytes cost at most
//! `limit` bytes of output and a few buffers.

use flate2::{Decompress, FlushDecompress, Status};
use std::io;

/// The most layers a body may stack; more is not an encoding any server sends.
const MAX_LAYERS: usize = 4;
/// Each layer's output buffer.
const STEP: usize = 16 * 1024;
/// zstd's window, as a power of two: 8 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The most a gzip header (extra field, name, comment) may take.
const MAX_GZIP_HEADER: usize = 64 * 1024;

/// A body that does not decode as its Content-Encoding says.
#[derive(Debug, thiserror::Error)]
#[error("the {encoding} body does not decode: {source}")]
pub struct DecodeError {
    encoding: String,
    source: io::Error,
}

/// A Content-Encoding the recorder cannot undo; the body is recorded as its bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Undecodable {
    #[error("the content encoding {0:?} is not one the recorder decodes (gzip, deflate, zstd, br)")]
    Unknown(String),
    #[error("{0} content encodings are stacked; at most {MAX_LAYERS} are decoded")]
    TooDeep(usize),
}

/// A streaming decoder for one body.
pub struct Decoder {
    /// In decoding order: the last encoding applied first.
    layers: Vec<Layer>,
    /// The encodings, as the header listed them, for messages.
    name: String,
    /// The most bytes decoded.
    limit: u64,
    produced: u64,
    /// Set once `limit` is reached: nothing more is decoded.
    stopped: bool,
}

impl Decoder {
    /// A decoder for a `Content-Encoding` value; `Ok(None)` for identity (or no header).
    pub fn for_encoding(
        content_encoding: Option<&str>,
        limit: u64,
    ) -> Result<Option<Self>, Undecodable> {
        let Some(header) = content_encoding else {
            return Ok(None);
        };
        let names: Vec<String> = header
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty() && n != "identity")
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        if names.len() > MAX_LAYERS {
            return Err(Undecodable::TooDeep(names.len()));
        }
        let mut layers = Vec::with_capacity(names.len());
        for name in names.iter().rev() {
            layers.push(Layer::new(name).ok_or_else(|| Undecodable::Unknown(name.clone()))?);
        }
        Ok(Some(Self {
            layers,
            name: names.join(", "),
            limit,
            produced: 0,
            stopped: false,
        }))
    }

    /// Decode the next chunk; returns what it decoded to (nothing more once the limit is
    /// reached).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        self.run(chunk)
    }

    /// End of body: whatever the decoders still held.
    pub fn finish(mut self) -> Result<Vec<u8>, DecodeError> {
        let tail = self.run(&[])?;
        if !self.stopped
            && let Some(layer) = self.layers.iter().find(|l| !l.done())
        {
            return Err(self.error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the {} stream ends early", layer.name()),
            )));
        }
        Ok(tail)
    }

    /// The decoded length at which decoding stopped, when it stopped at the limit.
    pub fn stopped_at(&self) -> Option<u64> {
        self.stopped.then_some(self.produced)
    }

    /// The encodings being undone, as listed.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn run(&mut self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        if self.stopped {
            return Ok(out);
        }
        let room = self.limit - self.produced;
        let mut sink = |bytes: &[u8]| {
            let left = room as usize - out.len().min(room as usize);
            out.extend_from_slice(&bytes[..bytes.len().min(left)]);
            out.len() < room as usize
        };
        let go_on = pump(&mut self.layers, input, &mut sink).map_err(|e| self.error(e))?;
        self.produced += out.len() as u64;
        if !go_on || self.produced >= self.limit {
            self.stopped = true;
        }
        Ok(out)
    }

    fn error(&self, source: io::Error) -> DecodeError {
        DecodeError {
            encoding: self.name.clone(),
            source,
        }
    }
}

/// Push `input` through the first layer and what it yields through the rest, into `sink`;
/// `false` once the sink wants no more. Each layer yields at most [`STEP`] bytes at a time,
/// so no layer's output is ever held whole.
fn pump(
    layers: &mut [Layer],
    input: &[u8],
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<bool> {
    let Some((first, rest)) = layers.split_first_mut() else {
        return Ok(sink(input));
    };
    let mut buf = vec![0u8; STEP];
    let mut pos = 0;
    loop {
        let (consumed, produced) = first.step(&input[pos..], &mut buf)?;
        pos += consumed;
        if produced > 0 && !pump(rest, &buf[..produced], sink)? {
            return Ok(false);
        }
        // Done when the input is used up and the layer had no more to give.
        if (pos == input.len() && produced < buf.len()) || (consumed == 0 && produced == 0) {
            return Ok(true);
        }
    }
}

/// One encoding being undone.
enum Layer {
    Gzip(Gzip),
    /// "deflate" is zlib-wrapped by the standard and raw from some servers: the first two
    /// bytes tell which.
    Deflate {
        head: Vec<u8>,
        inflate: Option<Inflate>,
    },
    Zstd {
        decoder: zstd::stream::raw::Decoder<'static>,
        /// Whether the last frame ended (a new one may follow).
        ended: bool,
    },
    Brotli {
        state: Box<
            brotli_decompressor::BrotliState<
                brotli_decompressor::StandardAlloc,
                brotli_decompressor::StandardAlloc,
                brotli_decompressor::StandardAlloc,
            >,
        >,
        ended: bool,
    },
}

impl Layer {
    fn new(name: &str) -> Option<Layer> {
        Some(match name {
            "gzip" | "x-gzip" => Layer::Gzip(Gzip::Header(Vec::new())),
            "deflate" => Layer::Deflate {
                head: Vec::new(),
                inflate: None,
            },
            "zstd" => {
                let mut decoder = zstd::stream::raw::Decoder::new().ok()?;
                decoder
                    .set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
                        ZSTD_WINDOW_LOG_MAX,
                    ))
                    .ok()?;
                Layer::Zstd {
                    decoder,
                    ended: true,
                }
            }
            "br" => {
                use brotli_decompressor::{BrotliState, StandardAlloc};
                Layer::Brotli {
                    state: Box::new(BrotliState::new_strict(
                        StandardAlloc::default(),
                        StandardAlloc::default(),
                        StandardAlloc::default(),
                    )),
                    ended: false,
                }
            }
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Layer::Gzip(_) => "gzip",
            Layer::Deflate { .. } => "deflate",
            Layer::Zstd { .. } => "zstd",
            Layer::Brotli { .. } => "br",
        }
    }

    /// Whether the stream ended where a stream may end.
    fn done(&self) -> bool {
        match self {
            Layer::Gzip(g) => {
                matches!(g, Gzip::Header(h) if h.is_empty()) || matches!(g, Gzip::Done)
            }
            Layer::Deflate { head, inflate } => match inflate {
                Some(i) => i.ended,
                None => head.is_empty(),
            },
            Layer::Zstd { ended, .. } => *ended,
            Layer::Brotli { ended, .. } => *ended,
        }
    }

    /// Decode from `input` into `out`: returns the bytes consumed and produced.
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<(usize, usize)> {
        match self {
            Layer::Gzip(g) => g.step(input, out),
            Layer::Deflate { head, inflate } => {
                if let Some(i) = inflate {
                    return i.step(input, out);
                }
                let take = (2 - head.len()).min(input.len());
                head.extend_from_slice(&input[..take]);
                if head.len() < 2 {
                    return Ok((take, 0));
                }
                let zlib =
                    head[0] & 0x0f == 8 && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
                let mut i = Inflate::new(zlib);
                let seen = std::mem::take(head);
                let (used, produced) = i.step(&seen, out)?;
                if used < seen.len() {
                    // Two bytes did not fit: cannot happen with a non-empty buffer.
                    return Err(io::Error::other("deflate stalled"));
                }
                *inflate = Some(i);
                Ok((take, produced))
            }
            Layer::Zstd { decoder, ended } => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut src = InBuffer::around(input);
                let mut dst = OutBuffer::around(out);
                let hint = decoder.run(&mut src, &mut dst)?;
                // 0: a frame ended and is flushed. Asked again with nothing new, the decoder
                // waits for another frame: that says nothing about the last one.
                if src.pos() > 0 || dst.pos() > 0 {
                    *ended = hint == 0;
                }
                Ok((src.pos(), dst.pos()))
            }
            Layer::Brotli { state, ended } => {
                use brotli_decompressor::{BrotliDecompressStream, BrotliResult};
                if *ended {
                    return if input.is_empty() {
                        Ok((0, 0))
                    } else {
                        Err(io::Error::other("bytes after the end of the brotli stream"))
                    };
                }
                let (mut avail_in, mut in_off) = (input.len(), 0);
                let (mut avail_out, mut out_off, mut total) = (out.len(), 0, 0);
                let result = BrotliDecompressStream(
                    &mut avail_in,
                    &mut in_off,
                    input,
                    &mut avail_out,
                    &mut out_off,
                    out,
                    &mut total,
                    state,
                );
                match result {
                    BrotliResult::ResultFailure => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid brotli stream",
                    )),
                    BrotliResult::ResultSuccess => {
                        *ended = true;
                        Ok((in_off, out_off))
                    }
                    _ => Ok((in_off, out_off)),
                }
            }
        }
    }
}

/// Raw deflate or zlib, one stream.
struct Inflate {
    inner: Decompress,
    ended: bool,
}

impl Inflate {
    fn new(zlib: bool) -> Self {
        Self {
            inner: Decompress::new(zlib),
            ended: false,
        }
    }

    fn step(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<(usize, usize)> {
        if self.ended {
            return Ok((0, 0));
        }
        let (in0, out0) = (self.inner.total_in(), self.inner.total_out());
        let status = self
            .inner
            .decompress(input, out, FlushDecompress::None)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if status == Status::StreamEnd {
            self.ended = true;
        }
        Ok((
            (self.inner.total_in() - in0) as usize,
            (self.inner.total_out() - out0) as usize,
        ))
    }
}

/// gzip (RFC 1952): a header, a raw deflate stream, an 8-byte trailer; members may follow
/// one another.
enum Gzip {
    Header(Vec<u8>),
    Body(Inflate),
    Trailer(usize),
    Done,
}

impl Gzip {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<(usize, usize)> {
        match self {
            Gzip::Header(head) => {
                if input.is_empty() {
                    return Ok((0, 0));
                }
                // Take what is needed a byte at a time: the header's length is only known
                // as it is read.
                let mut used = 0;
                while used < input.len() {
                    head.push(input[used]);
                    used += 1;
                    match gzip_header_len(head)? {
                        Some(_) => {
                            *self = Gzip::Body(Inflate::new(false));
                            return Ok((used, 0));
                        }
                        None if head.len() > MAX_GZIP_HEADER => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the gzip header is longer than 64 KiB",
                            ));
                        }
                        None => {}
                    }
                }
                Ok((used, 0))
            }
            Gzip::Body(inflate) => {
                let (used, produced) = inflate.step(input, out)?;
                if inflate.ended {
                    *self = Gzip::Trailer(8);
                }
                Ok((used, produced))
            }
            Gzip::Trailer(left) => {
                let take = (*left).min(input.len());
                *left -= take;
                if *left == 0 {
                    *self = Gzip::Done;
                }
                Ok((take, 0))
            }
            Gzip::Done => {
                if input.is_empty() {
                    return Ok((0, 0));
                }
                // Another member.
                *self = Gzip::Header(Vec::new());
                self.step(input, out)
            }
        }
    }
}

/// The length of a complete gzip header in `head`, or `None` when more bytes are needed.
fn gzip_header_len(head: &[u8]) -> io::Result<Option<usize>> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if head.len() >= 2 && (head[0], head[1]) != (0x1f, 0x8b) {
        return Err(bad("not a gzip stream (bad magic)"));
    }
    if head.len() >= 3 && head[2] != 8 {
        return Err(bad("a gzip stream not compressed with deflate"));
    }
    if head.len() < 10 {
        return Ok(None);
    }
    let flags = head[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        if head.len() < at + 2 {
            return Ok(None);
        }
        at += 2 + usize::from(u16::from_le_bytes([head[at], head[at + 1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match head
                .get(at..)
                .and_then(|rest| rest.iter().position(|b| *b == 0))
            {
                Some(nul) => at += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((head.len() >= at).then_some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMIT: u64 = 1 << 20;

    fn decode_in_chunks(encoding: &str, encoded: &[u8], chunk: usize) -> Vec<u8> {
        let mut decoder = Decoder::for_encoding(Some(encoding), LIMIT)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        for piece in encoded.chunks(chunk) {
            out.extend(decoder.feed(piece).unwrap());
        }
        out.extend(decoder.finish().unwrap());
        out
    }

    const TEXT: &[u8] =
        b"{\"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIE...\"} and more text \
        repeated to have something to compress, repeated to have something to compress";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        // The workspace has no brotli encoder; a metablock of one uncompressed block is a
        // valid stream: WBITS=16 (one 0 bit), MLEN-1 in 16 bits, ISUNCOMPRESSED, padding,
        // the bytes, then an empty last metablock.
        assert!(data.len() <= 65536 && !data.is_empty());
        let mut bits: u64 = 0;
        let mut n = 0;
        let mut out = Vec::new();
        let put = |value: u64, width: u32, bits: &mut u64, n: &mut u32, out: &mut Vec<u8>| {
            *bits |= value << *n;
            *n += width;
            while *n >= 8 {
                out.push(*bits as u8);
                *bits >>= 8;
                *n -= 8;
            }
        };
        put(0, 1, &mut bits, &mut n, &mut out); // WBITS = 16
        put(0, 1, &mut bits, &mut n, &mut out); // ISLAST = 0
        put(0, 2, &mut bits, &mut n, &mut out); // MNIBBLES = 4
        put((data.len() - 1) as u64, 16, &mut bits, &mut n, &mut out);
        put(1, 1, &mut bits, &mut n, &mut out); // ISUNCOMPRESSED
        if n > 0 {
            put(0, 8 - n, &mut bits, &mut n, &mut out);
        }
        out.extend_from_slice(data);
        out.push(0b11); // ISLAST, ISLASTEMPTY
        out
    }

    #[test]
    fn gzip_deflate_zstd_and_br_decode_under_any_chunking() {
        let gz = gzip(TEXT);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(TEXT).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(TEXT).unwrap();
        let raw = raw.finish().unwrap();
        let zst = zstd::stream::encode_all(TEXT, 3).unwrap();
        let br = brotli(TEXT);
        for chunk in [1, 3, 17, 4096] {
            assert_eq!(decode_in_chunks("gzip", &gz, chunk), TEXT);
            assert_eq!(decode_in_chunks("deflate", &zlib, chunk), TEXT);
            assert_eq!(decode_in_chunks("zstd", &zst, chunk), TEXT);
            assert_eq!(decode_in_chunks("deflate", &raw, chunk), TEXT);
            assert_eq!(decode_in_chunks("br", &br, chunk), TEXT);
        }
        // A fixed vector: "hello" compressed with brotli at quality 11.
        let hello: &[u8] = &[0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        assert_eq!(decode_in_chunks("br", hello, 2), b"hello");
    }

    #[test]
    fn stacked_encodings_are_all_undone_in_order() {
        // "Content-Encoding: gzip, br" means gzip first, then br.
        let inner = gzip(TEXT);
        let both = brotli(&inner);
        for chunk in [1, 5, 4096] {
            assert_eq!(decode_in_chunks("gzip, br", &both, chunk), TEXT);
        }
        let twice = gzip(&gzip(TEXT));
        assert_eq!(decode_in_chunks("gzip, gzip", &twice, 7), TEXT);
        assert_eq!(decode_in_chunks("identity, gzip", &gzip(TEXT), 7), TEXT);
        // Two gzip members are one body.
        let mut members = gzip(b"first ");
        members.extend(gzip(b"second"));
        assert_eq!(decode_in_chunks("gzip", &members, 3), b"first second");
    }

    #[test]
    fn identity_is_left_alone_and_unknown_encodings_say_so() {
        assert!(Decoder::for_encoding(None, LIMIT).unwrap().is_none());
        assert!(
            Decoder::for_encoding(Some("identity"), LIMIT)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            Decoder::for_encoding(Some("gzip, compress"), LIMIT).err(),
            Some(Undecodable::Unknown("compress".into()))
        );
        assert_eq!(
            Decoder::for_encoding(Some("gzip,gzip,gzip,gzip,gzip"), LIMIT).err(),
            Some(Undecodable::TooDeep(5))
        );
    }

    /// Bombs: a few kilobytes that expand to gigabytes decode to `limit` bytes at most, in
    /// bounded steps, and say where they stopped.
    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros (64 times the limit), gzip'd (about 64 KiB) and zstd'd (a few
        // hundred bytes); the ratio, not the size, is what a bomb is.
        let whole = 64u64 << 20;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let gz = gz.finish().unwrap();
        let mut zst = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        for _ in 0..64 {
            zst.write_all(&zeros).unwrap();
        }
        let zst = zst.finish().unwrap();
        assert!(zst.len() < 64 * 1024, "{}", zst.len());
        for (encoding, bytes) in [("gzip", &gz), ("zstd", &zst), ("gzip, gzip", &gzip(&gz))] {
            let mut decoder = Decoder::for_encoding(Some(encoding), LIMIT)
                .unwrap()
                .unwrap();
            let mut total = 0u64;
            for piece in bytes.chunks(64 * 1024) {
                let out = decoder.feed(piece).unwrap();
                assert!(out.len() as u64 <= LIMIT);
                total += out.len() as u64;
            }
            total += decoder.finish_len();
            assert_eq!(total, LIMIT, "{encoding}");
            assert!(whole > LIMIT);
        }
    }

    impl Decoder {
        fn finish_len(self) -> u64 {
            let stopped = self.stopped_at();
            assert_eq!(stopped, Some(LIMIT));
            self.finish().unwrap().len() as u64
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Decoder::for_encoding(Some("gzip"), LIMIT).unwrap().unwrap();
        assert!(d.feed(b"not gzip at all").is_err());
        let mut d = Decoder::for_encoding(Some("br"), LIMIT).unwrap().unwrap();
        assert!(d.feed(&[0xff; 64]).is_err() || d.finish().is_err());
        let truncated = gzip(TEXT);
        let mut d = Decoder::for_encoding(Some("gzip"), LIMIT).unwrap().unwrap();
        d.feed(&truncated[..truncated.len() / 2]).unwrap();
        assert!(d.finish().is_err(), "a cut stream says so");
    }

    proptest::proptest! {
        /// A secret anywhere in a compressed body, under any chunking of the compressed
        /// bytes, is masked in what is recorded, with the fingerprint an auditor computes.
        #[test]
        fn a_secret_inside_a_compressed_body_is_masked_with_its_fingerprint(
            before in "[ -~]{0,300}",
            after in "[ -~]{0,300}",
            token in "[A-Za-z0-9]{36}",
            chunk in 1usize..64,
            encoding in proptest::sample::select(vec!["gzip", "deflate", "zstd", "gzip, gzip", "zstd, gzip"]),
        ) {
            use cassette_rules::mask::{BodyKind, Masker};
            let secret = format!("ghp_{token}");
            let body = format!("{before} {secret} {after}");
            let mut encoded = body.clone().into_bytes();
            for layer in encoding.split(", ") {
                encoded = match layer {
                    "gzip" => gzip(&encoded),
                    "deflate" => {
                        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                        e.write_all(&encoded).unwrap();
                        e.finish().unwrap()
                    }
                    _ => zstd::stream::encode_all(&encoded[..], 1).unwrap(),
                };
            }
            let masker = Masker::new(None, b"auditor-key").unwrap();
            let mut decoder = Decoder::for_encoding(Some(encoding), LIMIT).unwrap().unwrap();
            let mut stream = masker.stream(BodyKind::Other);
            let mut recorded = Vec::new();
            for piece in encoded.chunks(chunk) {
                let plain = decoder.feed(piece).unwrap();
                stream.feed(&plain, &mut recorded);
            }
            stream.feed(&decoder.finish().unwrap(), &mut recorded);
            let summary = stream.finish(&mut recorded);
            let recorded = String::from_utf8_lossy(&recorded);
            proptest::prop_assert!(!recorded.contains(&secret), "{}", recorded);
            let fingerprint = masker.fingerprint(secret.as_bytes());
            proptest::prop_assert!(
                summary.hits.iter().any(|h| h.fingerprint == fingerprint),
                "{:?}", summary
            );
            proptest::prop_assert!(recorded.contains(&fingerprint));
        }
    }
}
