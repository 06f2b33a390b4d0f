//! Whether a request names the session's recordings bucket. The recorder ships with the
//! pod's Google identity, which is also what the agent's requests get through the token swap;
//! so every request that names the sink's bucket — to read a recording, or to write an object
//! the recorder will later find taken — is refused before any token is swapped.
//!
//! Cloud Storage names a bucket in many places: the JSON API's path (`/storage/v1/b/NAME`,
//! uploads, downloads, `rewriteTo/b/NAME`, `copyTo/b/NAME`), the XML API's path-style
//! (`/NAME/object`) and virtual-hosted (`NAME.storage.googleapis.com`) forms, copy-source
//! headers (`x-goog-copy-source`, `x-amz-copy-source`), and the routing header gRPC clients
//! send (`x-goog-request-params: bucket=projects/_/buckets/NAME`). Batch parts are checked
//! one by one with [`names_bucket`]. Pure: the sidecar passes what the request says.

use crate::authority::VerifiedHost;
use crate::path::normalize_path;

use crate::classify::is_storage_host;

/// Where a request named `bucket`, in words, or `None` when it does not.
pub fn names_bucket(
    host: &VerifiedHost,
    path: &str,
    headers: &[(&str, &str)],
    bucket: &str,
) -> Option<String> {
    let bucket = bucket.to_ascii_lowercase();
    let name = host.name();
    for suffix in [".storage.googleapis.com", ".storage.cloud.google.com"] {
        if name.strip_suffix(suffix).is_some_and(|b| b == bucket) {
            return Some(format!("its host {name}"));
        }
    }
    // A virtual-hosted request's path names an object, not a bucket.
    if is_storage_host(name) && path_names(path, &bucket) {
        return Some(format!("its path {path}"));
    }
    for (header, value) in headers {
        let header = header.to_ascii_lowercase();
        let named = match header.as_str() {
            "x-goog-copy-source" | "x-amz-copy-source" => {
                let decoded = percent_decode(value);
                decoded
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .is_some_and(|b| b.eq_ignore_ascii_case(&bucket))
            }
            "x-goog-request-params" => percent_decode(value).split('&').any(|param| {
                let value = param.split_once('=').map_or(param, |(_, v)| v);
                value.eq_ignore_ascii_case(&bucket)
                    || value
                        .rsplit_once("buckets/")
                        .is_some_and(|(_, b)| b.split('/').next() == Some(bucket.as_str()))
            }),
            _ => false,
        };
        if named {
            return Some(format!("its {header} header"));
        }
    }
    None
}

/// Whether a Cloud Storage path names `bucket`, read as servers read it (both readings of
/// [`normalize_path`]).
fn path_names(path: &str, bucket: &str) -> bool {
    let normal = normalize_path(path);
    [normal.matching(), normal.decoded].iter().any(|p| {
        let segments: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        let json = matches!(
            segments.first(),
            Some(&"storage" | &"upload" | &"download" | &"batch")
        );
        if json {
            // /storage/v1/b/NAME/…, and a rewrite's or copy's destination /…/b/NAME/….
            segments
                .windows(2)
                .any(|w| w[0] == "b" && w[1].eq_ignore_ascii_case(bucket))
        } else {
            // The XML API, path-style: /NAME/object.
            segments
                .first()
                .is_some_and(|b| b.eq_ignore_ascii_case(bucket))
        }
    })
}

/// The most of a gRPC message read to see which buckets it names: Cloud Storage takes up to
/// 2 MiB of data in a write's first message, and clients cap messages at 4 MiB.
pub const MAX_GRPC_MESSAGE: usize = 4 << 20;

/// Whether a request is a gRPC call to Cloud Storage, whose messages name buckets.
pub fn is_storage_grpc(host: &VerifiedHost, path: &str, content_type: Option<&str>) -> bool {
    is_storage_host(host.name())
        && content_type.is_some_and(|t| t.starts_with("application/grpc"))
        && path.starts_with("/google.storage.")
}

/// How many bytes of a gRPC request body hold its first message, once `prefix` (at least its
/// first 5 bytes) is known: the length-prefixed framing of the gRPC wire format.
pub fn grpc_first_message_len(prefix: &[u8]) -> Option<usize> {
    let header = prefix.get(..5)?;
    Some(5 + u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize)
}

/// Why a gRPC message could not be read for the buckets it names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrpcUnreadable {
    #[error("the gRPC message is cut short")]
    Short,
    #[error("the gRPC message is over {MAX_GRPC_MESSAGE} bytes")]
    TooLarge,
    #[error("the gRPC message is compressed with {0:?}, which the recorder cannot read")]
    Encoding(String),
    #[error("the gRPC message does not decompress: {0}")]
    Corrupt(String),
}

/// Whether the first message of a Cloud Storage gRPC call names `bucket`. `body` starts with
/// the message's 5-byte prefix; `encoding` is the call's `grpc-encoding`.
///
/// Cloud Storage v2 names buckets as `projects/{project}/buckets/{bucket}` at many depths (a
/// read's `bucket`, a write's `write_object_spec.resource.bucket`, a rewrite's source and
/// destination, a compose's destination). A protobuf string is its bytes as they are, so the
/// resource name is looked for in the message itself: every field, however deep, also those
/// of methods this list has not heard of. The agent's routing header does not matter here.
pub fn grpc_names_bucket(
    body: &[u8],
    encoding: Option<&str>,
    bucket: &str,
) -> Result<bool, GrpcUnreadable> {
    let end = grpc_first_message_len(body).ok_or(GrpcUnreadable::Short)?;
    if end - 5 > MAX_GRPC_MESSAGE {
        return Err(GrpcUnreadable::TooLarge);
    }
    let message = body.get(5..end).ok_or(GrpcUnreadable::Short)?;
    let decompressed;
    let message = if body[0] & 1 == 1 {
        match encoding.map(str::trim) {
            Some("gzip") => {
                decompressed = gunzip(message)?;
                &decompressed[..]
            }
            other => return Err(GrpcUnreadable::Encoding(other.unwrap_or("").to_string())),
        }
    } else {
        message
    };
    let needle = format!("buckets/{}", bucket.to_ascii_lowercase());
    let named = message
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w.eq_ignore_ascii_case(needle.as_bytes()))
        .any(|(at, _)| {
            // `buckets/NAME` and not `buckets/NAME-other`: a bucket name's characters.
            message
                .get(at + needle.len())
                .is_none_or(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        });
    Ok(named)
}

/// A gzip message, inflated up to [`MAX_GRPC_MESSAGE`].
fn gunzip(compressed: &[u8]) -> Result<Vec<u8>, GrpcUnreadable> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(MAX_GRPC_MESSAGE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| GrpcUnreadable::Corrupt(e.to_string()))?;
    if out.len() > MAX_GRPC_MESSAGE {
        return Err(GrpcUnreadable::TooLarge);
    }
    Ok(out)
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINK: &str = "acme-agent-recordings";

    fn named(host: &str, path: &str, headers: &[(&str, &str)]) -> bool {
        names_bucket(&VerifiedHost::new(host, 443).unwrap(), path, headers, SINK).is_some()
    }

    #[test]
    fn every_spelling_of_the_sink_bucket_is_caught() {
        let s = "storage.googleapis.com";
        for path in [
            "/storage/v1/b/acme-agent-recordings/o",
            "/storage/v1/b/acme-agent-recordings/o/sessions%2Fagents%2Ffix-ci%2Fseg-000002.jsonl.zst",
            "/upload/storage/v1/b/acme-agent-recordings/o?uploadType=media&name=x",
            "/download/storage/v1/b/acme-agent-recordings/o/x?alt=media",
            "/storage/v1/b/other/o/x/rewriteTo/b/acme-agent-recordings/o/y",
            "/storage/v1/b/acme-agent-recordings/o/x/copyTo/b/other/o/y",
            "/acme-agent-recordings/sessions/agents/fix-ci/manifest.json",
            "//storage/v1/b/ACME-AGENT-RECORDINGS/o",
            "/storage/v1/b/%61cme-agent-recordings/o",
            "/x/../acme-agent-recordings/y",
        ] {
            assert!(named(s, path, &[]), "{path}");
        }
        assert!(named(
            "acme-agent-recordings.storage.googleapis.com",
            "/seg",
            &[]
        ));
        // Another spelling of the service: regional, mTLS and Private Service Connect
        // endpoints serve the same buckets (and get the same token swap).
        for host in [
            "storage.us-central1.rep.googleapis.com",
            "storage.mtls.googleapis.com",
            "storage-myendpoint.p.googleapis.com",
            "www.googleapis.com",
        ] {
            assert!(
                named(host, "/storage/v1/b/acme-agent-recordings/o", &[]),
                "{host}"
            );
        }
        assert!(named(
            s,
            "/other/y",
            &[("x-goog-copy-source", "/acme-agent-recordings/x")]
        ));
        assert!(named(
            s,
            "/other/y",
            &[("x-amz-copy-source", "acme-agent-recordings%2Fx")]
        ));
        assert!(named(
            s,
            "/google.storage.v2.Storage/ReadObject",
            &[(
                "x-goog-request-params",
                "bucket=projects%2F_%2Fbuckets%2Facme-agent-recordings"
            )]
        ));
    }

    /// A protobuf length-delimited field.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn grpc(message: &[u8], compressed: bool) -> Vec<u8> {
        let mut out = vec![u8::from(compressed)];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn a_grpc_message_names_the_sink_at_any_depth_whatever_the_routing_header_says() {
        let sink = b"projects/_/buckets/acme-agent-recordings";
        // ReadObjectRequest { bucket: 1, object: 2 }.
        let read = [field(1, sink), field(2, b"sessions/x/manifest.json")].concat();
        assert_eq!(grpc_names_bucket(&grpc(&read, false), None, SINK), Ok(true));
        // WriteObjectRequest { write_object_spec: 2 { resource: 1 { name: 1, bucket: 3 } } }.
        let object = [field(1, b"sessions/x/seg-000002.jsonl.zst"), field(3, sink)].concat();
        let write = field(2, &field(1, &object));
        assert_eq!(
            grpc_names_bucket(&grpc(&write, false), None, SINK),
            Ok(true)
        );
        // Compressed, as clients may send it.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &write).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            grpc_names_bucket(&grpc(&gz, true), Some("gzip"), SINK),
            Ok(true)
        );
        assert_eq!(
            grpc_names_bucket(&grpc(&gz, true), Some("snappy"), SINK),
            Err(GrpcUnreadable::Encoding("snappy".into()))
        );
        assert_eq!(
            grpc_names_bucket(&grpc(&read, false)[..20], None, SINK),
            Err(GrpcUnreadable::Short)
        );
    }

    #[test]
    fn a_grpc_message_naming_other_buckets_is_not_the_sink() {
        for bucket in [
            &b"projects/_/buckets/acme-agent-recordings-old"[..],
            b"projects/_/buckets/acme-ci",
        ] {
            let read = [field(1, bucket), field(2, b"acme-agent-recordings")].concat();
            assert_eq!(
                grpc_names_bucket(&grpc(&read, false), None, SINK),
                Ok(false)
            );
        }
        let host = VerifiedHost::new("storage.googleapis.com", 443).unwrap();
        assert!(is_storage_grpc(
            &host,
            "/google.storage.v2.Storage/WriteObject",
            Some("application/grpc+proto")
        ));
        assert!(!is_storage_grpc(
            &VerifiedHost::new("pubsub.googleapis.com", 443).unwrap(),
            "/google.pubsub.v1.Publisher/Publish",
            Some("application/grpc")
        ));
    }

    #[test]
    fn other_buckets_and_other_services_are_not_the_sink() {
        let s = "storage.googleapis.com";
        assert!(!named(
            s,
            "/storage/v1/b/acme-ci/o/acme-agent-recordings",
            &[]
        ));
        assert!(!named(s, "/acme-ci/acme-agent-recordings", &[]));
        assert!(!named(
            s,
            "/storage/v1/b?project=acme-agent-recordings",
            &[]
        ));
        assert!(!named(
            "pubsub.googleapis.com",
            "/acme-agent-recordings",
            &[]
        ));
        assert!(!named(
            "acme-ci.storage.googleapis.com",
            "/acme-agent-recordings/x",
            &[]
        ));
    }
}
