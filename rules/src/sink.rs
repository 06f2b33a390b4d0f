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

/// The hosts that serve Cloud Storage by path.
const STORAGE_HOSTS: [&str; 3] = [
    "storage.googleapis.com",
    "storage.cloud.google.com",
    "www.googleapis.com",
];

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
    if STORAGE_HOSTS.contains(&name) && path_names(path, &bucket) {
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
