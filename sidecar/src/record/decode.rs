//! Content-Encoding, undone for the recording only: a gzip, deflate, zstd or br body is
//! decoded chunk by chunk so the masker sees the secrets in it and the recording holds
//! readable text. The bytes on the wire are never touched.

use std::io::Write;

/// A body that does not decode as its Content-Encoding says.
#[derive(Debug, thiserror::Error)]
#[error("the {encoding} body does not decode: {source}")]
pub struct DecodeError {
    encoding: String,
    source: std::io::Error,
}

/// A streaming decoder for one body.
pub struct Decoder {
    inner: Inner,
    /// The encoding, for error messages.
    name: String,
}

enum Inner {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    /// "deflate" is zlib-wrapped by the standard and raw from some servers: the first two
    /// bytes tell which.
    DeflateUndecided(Vec<u8>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    /// A decoder for a `Content-Encoding` value; `None` for identity, unknown encodings and
    /// stacked ones (left as they are, and recorded as bytes).
    pub fn for_encoding(content_encoding: Option<&str>) -> Option<Self> {
        let name = content_encoding?.trim().to_ascii_lowercase();
        let inner = match name.as_str() {
            "gzip" | "x-gzip" => Inner::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            "deflate" => Inner::DeflateUndecided(Vec::new()),
            "zstd" => Inner::Zstd(zstd::stream::write::Decoder::new(Vec::new()).ok()?),
            "br" => Inner::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
                Vec::new(),
                4096,
            ))),
            _ => return None,
        };
        Some(Self { inner, name })
    }

    /// Decode the next chunk; returns what it decoded to.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let result = match &mut self.inner {
            Inner::Gzip(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
            Inner::DeflateUndecided(head) => {
                head.extend_from_slice(chunk);
                if head.len() < 2 {
                    return Ok(Vec::new());
                }
                let seen = std::mem::take(head);
                let zlib =
                    seen[0] & 0x0f == 8 && (u16::from(seen[0]) << 8 | u16::from(seen[1])) % 31 == 0;
                self.inner = if zlib {
                    Inner::Deflate(flate2::write::ZlibDecoder::new(Vec::new()))
                } else {
                    Inner::RawDeflate(flate2::write::DeflateDecoder::new(Vec::new()))
                };
                return self.feed(&seen);
            }
            Inner::Deflate(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
            Inner::RawDeflate(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
            Inner::Zstd(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
            Inner::Brotli(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
        };
        result.map_err(|source| DecodeError {
            encoding: self.name.clone(),
            source,
        })
    }

    /// End of body: whatever the decoder still held.
    pub fn finish(self) -> Result<Vec<u8>, DecodeError> {
        let name = self.name;
        let result = match self.inner {
            Inner::Gzip(d) => d.finish(),
            Inner::DeflateUndecided(head) if head.is_empty() => Ok(Vec::new()),
            Inner::DeflateUndecided(_) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a deflate body of one byte",
            )),
            Inner::Deflate(d) => d.finish(),
            Inner::RawDeflate(d) => d.finish(),
            Inner::Zstd(mut d) => d.flush().map(|()| d.into_inner()),
            Inner::Brotli(d) => d.into_inner().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated brotli stream")
            }),
        };
        result.map_err(|source| DecodeError {
            encoding: name,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(encoding: &str, encoded: &[u8], chunk: usize) -> Vec<u8> {
        let mut decoder = Decoder::for_encoding(Some(encoding)).unwrap();
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

    #[test]
    fn gzip_deflate_and_zstd_decode_under_any_chunking() {
        use flate2::Compression;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(TEXT).unwrap();
        let gz = gz.finish().unwrap();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(TEXT).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(TEXT).unwrap();
        let raw = raw.finish().unwrap();
        let zst = zstd::stream::encode_all(TEXT, 3).unwrap();
        for chunk in [1, 3, 17, 4096] {
            assert_eq!(decode_in_chunks("gzip", &gz, chunk), TEXT);
            assert_eq!(decode_in_chunks("deflate", &zlib, chunk), TEXT);
            assert_eq!(decode_in_chunks("zstd", &zst, chunk), TEXT);
            assert_eq!(decode_in_chunks("deflate", &raw, chunk), TEXT);
        }
    }

    #[test]
    fn brotli_decodes() {
        // "hello" compressed with brotli (quality 11): a fixed vector.
        let br: &[u8] = &[0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        assert_eq!(decode_in_chunks("br", br, 2), b"hello");
    }

    #[test]
    fn identity_and_unknown_encodings_are_left_alone() {
        assert!(Decoder::for_encoding(None).is_none());
        assert!(Decoder::for_encoding(Some("identity")).is_none());
        assert!(Decoder::for_encoding(Some("gzip, br")).is_none());
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
            encoding in proptest::sample::select(vec!["gzip", "deflate", "zstd"]),
        ) {
            use cassette_rules::mask::{BodyKind, Masker};
            let secret = format!("ghp_{token}");
            let body = format!("{before} {secret} {after}");
            let encoded = match encoding {
                "gzip" => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(body.as_bytes()).unwrap();
                    e.finish().unwrap()
                }
                "deflate" => {
                    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(body.as_bytes()).unwrap();
                    e.finish().unwrap()
                }
                _ => zstd::stream::encode_all(body.as_bytes(), 1).unwrap(),
            };
            let masker = Masker::new(None, b"auditor-key").unwrap();
            let mut decoder = Decoder::for_encoding(Some(encoding)).unwrap();
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

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Decoder::for_encoding(Some("gzip")).unwrap();
        assert!(d.feed(b"not gzip at all").is_err());
    }
}
