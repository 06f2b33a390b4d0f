//! Google batch requests (`POST /batch/storage/v1`, `/batch/<api>/<version>`, the global
//! `/batch`): a `multipart/mixed` body whose parts are HTTP requests. Each part is parsed
//! into a sub-request so that it is classified, decided by policy and recorded on its own:
//! a batched `DELETE` is a `storage.objects.delete` like any other.
//!
//! Bounded: a body of at most [`MAX_BATCH_BYTES`] and [`MAX_PARTS`] parts is parsed whole
//! (Google itself takes at most 100 calls a Storage batch and 1000 elsewhere); a larger or
//! unreadable body is an error, which the sidecar refuses rather than forward unread.

use crate::authority::VerifiedHost;
use crate::classify::{Classification, HttpRequest, classify};

/// The largest batch body parsed.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// The most parts parsed.
pub const MAX_PARTS: usize = 1000;

/// One request inside a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRequest {
    /// The part's `Content-ID`, if it has one.
    pub content_id: Option<String>,
    /// The HTTP method, upper-case.
    pub method: String,
    /// The request target as written (origin-form, or absolute-form with a host).
    pub target: String,
    /// The target's host, when it is absolute-form.
    pub host: Option<String>,
    /// The origin-form target: path and query.
    pub path_and_query: String,
    /// The sub-request's Content-Type header.
    pub content_type: Option<String>,
    /// The length of the sub-request's body.
    pub body_len: usize,
}

/// Why a batch body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The Content-Type is not multipart/mixed with a boundary.
    #[error("a batch request must be multipart/mixed with a boundary, not {0:?}")]
    NotMultipart(String),
    /// Over [`MAX_BATCH_BYTES`].
    #[error(
        "the batch body is over {MAX_BATCH_BYTES} bytes; cassette reads batches up to that size"
    )]
    TooLarge,
    /// Over [`MAX_PARTS`].
    #[error("the batch has over {MAX_PARTS} parts; cassette reads batches up to that many")]
    TooManyParts,
    /// A part is not an HTTP request.
    #[error("part {part} of the batch is not an HTTP request: {why}")]
    BadPart {
        /// The part's index, from 0.
        part: usize,
        /// What is wrong.
        why: String,
    },
    /// The closing boundary never came.
    #[error("the batch body ends before its closing boundary")]
    Unterminated,
}

/// Whether a request is a Google batch: `POST` to `/batch` or `/batch/…` (the path
/// normalised as [`crate::path::normalize_path`] reads it).
pub fn is_batch(method: &str, path: &str) -> bool {
    let normal = crate::path::normalize_path(path);
    method.eq_ignore_ascii_case("POST")
        && [&normal.path, &normal.decoded]
            .iter()
            .any(|p| p.as_str() == "/batch" || p.as_str() == "/batch/" || p.starts_with("/batch/"))
}

/// The boundary of a `multipart/mixed` Content-Type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

/// Splits `text` into lines that end in LF (CRLF or LF), with their start offsets.
fn find_line(body: &[u8], from: usize) -> Option<(usize, usize)> {
    let rel = body[from..].iter().position(|b| *b == b'\n')?;
    let end = from + rel;
    let content_end = if end > from && body[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    Some((content_end, end + 1))
}

/// Parses a batch body into its sub-requests.
pub fn parse_batch(content_type: &str, body: &[u8]) -> Result<Vec<SubRequest>, BatchError> {
    let boundary = self::boundary(content_type)
        .ok_or_else(|| BatchError::NotMultipart(content_type.to_owned()))?;
    if body.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge);
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // Part bodies run from after a delimiter line to the CRLF before the next one.
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut part_start: Option<usize> = None;
    let mut at = 0;
    let mut closed = false;
    while at < body.len() {
        let (content_end, next) = find_line(body, at).unwrap_or((body.len(), body.len()));
        let line = &body[at..content_end];
        if let Some(rest) = line.strip_prefix(delimiter) {
            let rest = rest.trim_ascii_end();
            if rest.is_empty() || rest == b"--" {
                if let Some(start) = part_start {
                    // The line break before the delimiter belongs to it.
                    let mut end = at;
                    if end > start && body[end - 1] == b'\n' {
                        end -= 1;
                    }
                    if end > start && body[end - 1] == b'\r' {
                        end -= 1;
                    }
                    parts.push(&body[start..end.max(start)]);
                    if parts.len() > MAX_PARTS {
                        return Err(BatchError::TooManyParts);
                    }
                }
                if rest == b"--" {
                    closed = true;
                    break;
                }
                part_start = Some(next);
            }
        }
        at = next;
    }
    if !closed {
        return Err(BatchError::Unterminated);
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| parse_part(part).map_err(|why| BatchError::BadPart { part: i, why }))
        .collect()
}

/// Reads header lines from `at` up to the blank line; returns them and where what follows
/// starts.
fn headers(text: &[u8], mut at: usize) -> Result<(Vec<(String, String)>, usize), String> {
    let mut out = Vec::new();
    loop {
        let Some((end, next)) = find_line(text, at) else {
            // Headers that run to the end, with no blank line: accept what is there.
            if at < text.len() {
                let line = String::from_utf8_lossy(&text[at..]).into_owned();
                if let Some((n, v)) = line.split_once(':') {
                    out.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            return Ok((out, text.len()));
        };
        if end == at {
            return Ok((out, next));
        }
        let line = String::from_utf8_lossy(&text[at..end]);
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} has no colon"))?;
        out.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        at = next;
    }
}

fn parse_part(part: &[u8]) -> Result<SubRequest, String> {
    let (part_headers, at) = headers(part, 0)?;
    let get = |h: &[(String, String)], name: &str| {
        h.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    if let Some(ct) = get(&part_headers, "content-type")
        && !ct.to_ascii_lowercase().starts_with("application/http")
    {
        return Err(format!("its Content-Type is {ct:?}, not application/http"));
    }
    // Leading blank lines before the request line are tolerated, as Google's parser does.
    let mut at = at;
    while let Some((end, next)) = find_line(part, at) {
        if end != at {
            break;
        }
        at = next;
    }
    let (line_end, next) = find_line(part, at).unwrap_or((part.len(), part.len()));
    let line = String::from_utf8_lossy(&part[at..line_end]).into_owned();
    let mut words = line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Err(format!(
            "request line {line:?} is not METHOD TARGET [HTTP/x]"
        ));
    };
    if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("method {method:?} is not a method"));
    }
    let (request_headers, body_at) = headers(part, next)?;
    let (host, path_and_query) = match crate::authority::target_authority(target) {
        Some(authority) => {
            let after = target.find("://").map_or(0, |i| i + 3) + authority.len();
            let rest = &target[after..];
            let rest = if rest.is_empty() { "/" } else { rest };
            (Some(authority.to_owned()), rest.to_owned())
        }
        None if target.starts_with('/') => (None, target.to_owned()),
        None => return Err(format!("target {target:?} is neither a path nor a URL")),
    };
    Ok(SubRequest {
        content_id: get(&part_headers, "content-id"),
        method: method.to_ascii_uppercase(),
        target: target.to_owned(),
        host: host.or_else(|| get(&request_headers, "host")),
        path_and_query,
        content_type: get(&request_headers, "content-type"),
        body_len: part.len() - body_at.min(part.len()),
    })
}

impl SubRequest {
    /// Classifies the sub-request. The batch endpoint dispatches to its own API, so the
    /// host is the verified host of the batch; a sub-request whose absolute URL or Host
    /// names another Google host is classified as that host, so that it cannot pass as
    /// something milder.
    pub fn classify(&self, batch_host: &VerifiedHost) -> Option<Classification> {
        let host = self.host.as_deref().unwrap_or(batch_host.name());
        classify(&HttpRequest::from_target(
            host,
            &self.method,
            &self.path_and_query,
            self.content_type.as_deref(),
        ))
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch as the Storage client libraries send it (three deletes, CRLF, quoted
    /// boundary).
    fn storage_batch() -> Vec<u8> {
        let mut body = String::new();
        for (i, object) in ["a.txt", "logs%2Fb.txt", "c"].iter().enumerate() {
            body.push_str(&format!(
                "--===============7330845974216740156==\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{i}+1>\r\n\r\nDELETE /storage/v1/b/bkt/o/{object}?generation=7 HTTP/1.1\r\nContent-Type: application/json\r\naccept: application/json\r\ncontent-length: 0\r\n\r\n\r\n"
            ));
        }
        body.push_str("--===============7330845974216740156==--\r\n");
        body.into_bytes()
    }

    const CT: &str = "multipart/mixed; boundary=\"===============7330845974216740156==\"";

    #[test]
    fn storage_batches_are_read_part_by_part() {
        let subs = parse_batch(CT, &storage_batch()).unwrap();
        assert_eq!(subs.len(), 3);
        assert_eq!(subs[1].method, "DELETE");
        assert_eq!(
            subs[1].path_and_query,
            "/storage/v1/b/bkt/o/logs%2Fb.txt?generation=7"
        );
        assert_eq!(subs[1].content_id.as_deref(), Some("<1+1>"));
        let host = VerifiedHost::new("storage.googleapis.com", 443).unwrap();
        for sub in &subs {
            let c = sub.classify(&host).unwrap();
            assert_eq!(
                c.permission.as_deref(),
                Some("storage.objects.delete"),
                "{sub:?}"
            );
        }
        assert_eq!(
            subs[1].classify(&host).unwrap().resource.as_deref(),
            Some("projects/_/buckets/bkt/objects/logs/b.txt")
        );
    }

    #[test]
    fn lf_bodies_absolute_urls_and_bodies() {
        let body = "preamble\n--b\nContent-Type: application/http\n\nPOST https://pubsub.googleapis.com/v1/projects/p/topics/t:publish\nContent-Type: application/json\n\n{\"messages\": []}\n--b\nContent-Type: application/http\n\nGET /storage/v1/b/x\n--b--\nepilogue";
        let subs = parse_batch("multipart/mixed; boundary=b", body.as_bytes()).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].host.as_deref(), Some("pubsub.googleapis.com"));
        assert_eq!(subs[0].body_len, "{\"messages\": []}".len());
        let host = VerifiedHost::new("www.googleapis.com", 443).unwrap();
        assert_eq!(
            subs[0].classify(&host).unwrap().permission.as_deref(),
            Some("pubsub.topics.publish")
        );
        assert_eq!(
            subs[1].classify(&host).unwrap().permission.as_deref(),
            Some("storage.buckets.get")
        );
    }

    #[test]
    fn bad_batches_are_errors() {
        assert!(matches!(
            parse_batch("application/json", b""),
            Err(BatchError::NotMultipart(_))
        ));
        assert_eq!(
            parse_batch("multipart/mixed; boundary=b", b"--b\r\n\r\nDELETE /x\r\n"),
            Err(BatchError::Unterminated)
        );
        assert!(matches!(
            parse_batch(
                "multipart/mixed; boundary=b",
                b"--b\r\n\r\nnot a request line\r\n--b--"
            ),
            Err(BatchError::BadPart { part: 0, .. })
        ));
        assert!(matches!(
            parse_batch(
                "multipart/mixed; boundary=b",
                b"--b\r\nContent-Type: text/plain\r\n\r\nDELETE /x\r\n--b--"
            ),
            Err(BatchError::BadPart { part: 0, .. })
        ));
        let many = "--b\r\n\r\nGET /x\r\n".repeat(MAX_PARTS + 1) + "--b--";
        assert_eq!(
            parse_batch("multipart/mixed; boundary=b", many.as_bytes()),
            Err(BatchError::TooManyParts)
        );
    }

    #[test]
    fn batch_endpoints() {
        assert!(is_batch("POST", "/batch/storage/v1"));
        assert!(is_batch("post", "/batch"));
        assert!(is_batch("POST", "//batch/storage/v1"));
        assert!(is_batch("POST", "/x/../batch/storage/v1"));
        assert!(is_batch("POST", "/%62atch/storage/v1"));
        assert!(!is_batch("GET", "/batch/storage/v1"));
        assert!(!is_batch("POST", "/storage/v1/b/batch"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let _ = parse_batch("multipart/mixed; boundary=b", &body);
            let mut framed = b"--b\r\n".to_vec();
            framed.extend_from_slice(&body);
            framed.extend_from_slice(b"\r\n--b--");
            let _ = parse_batch("multipart/mixed; boundary=b", &framed);
        }
    }
}
