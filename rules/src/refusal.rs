//! Refusals in the client's own protocol, so that the tool the agent runs prints why it was
//! refused instead of a bare 403: gRPC gets `grpc-status: 7` (PERMISSION_DENIED) with the
//! reason in `grpc-message`, Google REST calls Google's JSON error, the registry API the OCI
//! error shape, git a report it prints as `remote: …` / `fatal: remote error: …`, anything
//! else plain text.
//!
//! Pure: from what the request is and what is refused to the status, headers, body and
//! trailers of the response; the sidecar sends it.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::json;

use crate::classify::Classification;
use crate::git::{self, GitService, Phase, RefRejection, ReportFraming, SmartHttpRequest};

/// What protocol a refused request speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (`application/grpc…`), over HTTP/2.
    Grpc,
    /// A Google REST API (JSON errors).
    GoogleRest,
    /// The OCI distribution API of a registry (Artifact Registry's `v2`).
    Oci,
    /// git smart HTTP.
    Git {
        /// Fetch or push.
        service: GitService,
        /// The advertisement or the RPC.
        phase: Phase,
        /// For a push whose commands were read: how to frame the report, and each ref's
        /// rejection. `None` refuses the whole request with an `ERR` line.
        push: Option<(ReportFraming, Vec<RefRejection>)>,
    },
    /// Anything else.
    Http,
}

impl Protocol {
    /// The protocol of a request from its Content-Type, its Google classification and its
    /// git recognition ([`git::smart_http`]).
    pub fn of(
        content_type: Option<&str>,
        classification: Option<&Classification>,
        git: Option<&SmartHttpRequest>,
    ) -> Protocol {
        if content_type.is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/grpc")
        }) {
            return Protocol::Grpc;
        }
        if let Some(g) = git {
            return Protocol::Git {
                service: g.service,
                phase: g.phase,
                push: None,
            };
        }
        match classification {
            Some(c) if c.method.as_deref().is_some_and(|m| m.starts_with("oci.")) => Protocol::Oci,
            Some(c) if c.service == "artifactregistry" && c.method.is_none() => Protocol::Oci,
            Some(_) => Protocol::GoogleRest,
            None => Protocol::Http,
        }
    }
}

/// A response the sidecar sends instead of forwarding a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// Response headers (Content-Type first).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Trailers, sent after the body (HTTP/2).
    pub trailers: Vec<(&'static str, String)>,
}

/// gRPC status codes (google.rpc.Code).
fn grpc_code(status: u16) -> (u32, &'static str) {
    match status {
        400 | 421 => (3, "INVALID_ARGUMENT"),
        401 => (16, "UNAUTHENTICATED"),
        403 => (7, "PERMISSION_DENIED"),
        404 => (5, "NOT_FOUND"),
        408 | 504 => (4, "DEADLINE_EXCEEDED"),
        409 => (10, "ABORTED"),
        412 => (9, "FAILED_PRECONDITION"),
        413 | 429 => (8, "RESOURCE_EXHAUSTED"),
        501 => (12, "UNIMPLEMENTED"),
        502 | 503 => (14, "UNAVAILABLE"),
        _ => (13, "INTERNAL"),
    }
}

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// The `domain` of refusals in Google's ErrorInfo.
pub const ERROR_DOMAIN: &str = "cassette.dev";

/// The refusal of a request speaking `protocol`, with HTTP `status` (403 for policy, 421
/// for a misdirected request, 503 when it could not be recorded…) and `message`, one
/// sentence that says what was refused and why.
///
/// - gRPC: a Trailers-Only response (RFC: gRPC over HTTP/2): HTTP 200, `content-type:
///   application/grpc`, `grpc-status` and `grpc-message` in the headers, no body.
/// - Google REST: `{"error": {"code", "message", "status", "errors", "details"}}` as Google's
///   APIs answer, with a `google.rpc.ErrorInfo` of domain `cassette.dev`, reason
///   `REFUSED_BY_AGENT_SESSION`.
/// - OCI: `{"errors": [{"code": "DENIED", "message"}]}`.
/// - git: a refused push's report (`ng <ref> <reason>`) when its commands were read; else an
///   `ERR <message>` pkt-line with status 200, which git prints as `fatal: remote error:`.
/// - other: `text/plain`.
pub fn refuse(protocol: &Protocol, status: u16, message: &str) -> Refusal {
    let one_line = message.replace(['\r', '\n'], " ");
    match protocol {
        Protocol::Grpc => {
            let (code, _) = grpc_code(status);
            Refusal {
                status: 200,
                headers: vec![
                    ("content-type", "application/grpc".to_owned()),
                    ("grpc-status", code.to_string()),
                    (
                        "grpc-message",
                        utf8_percent_encode(&one_line, GRPC_MESSAGE).to_string(),
                    ),
                ],
                body: Vec::new(),
                trailers: Vec::new(),
            }
        }
        Protocol::GoogleRest => {
            let (_, name) = grpc_code(status);
            let reason = match status {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "notFound",
                421 | 400 => "badRequest",
                503 | 502 => "backendError",
                _ => "refused",
            };
            let body = json!({
                "error": {
                    "code": status,
                    "message": one_line,
                    "status": name,
                    "errors": [{"message": one_line, "domain": "global", "reason": reason}],
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "REFUSED_BY_AGENT_SESSION",
                        "domain": ERROR_DOMAIN,
                    }],
                }
            });
            json_refusal(status, body)
        }
        Protocol::Oci => {
            let code = match status {
                401 => "UNAUTHORIZED",
                403 => "DENIED",
                429 => "TOOMANYREQUESTS",
                _ => "UNSUPPORTED",
            };
            json_refusal(
                status,
                json!({"errors": [{"code": code, "message": one_line, "detail": {"domain": ERROR_DOMAIN}}]}),
            )
        }
        Protocol::Git {
            service,
            phase,
            push,
        } => {
            if let Some((framing, rejections)) = push {
                let report = git::refuse_push(*framing, rejections, message);
                return Refusal {
                    status: report.status,
                    headers: vec![
                        ("content-type", report.content_type.to_owned()),
                        ("cache-control", "no-cache".to_owned()),
                    ],
                    body: report.body,
                    trailers: Vec::new(),
                };
            }
            let content_type = match phase {
                Phase::Advertisement => format!("application/x-{}-advertisement", service.name()),
                Phase::Rpc => format!("application/x-{}-result", service.name()),
            };
            Refusal {
                status: 200,
                headers: vec![
                    ("content-type", content_type),
                    ("cache-control", "no-cache".to_owned()),
                ],
                body: git::pkt_line(format!("ERR {one_line}\n").as_bytes()),
                trailers: Vec::new(),
            }
        }
        Protocol::Http => Refusal {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".to_owned())],
            body: format!("{one_line}\n").into_bytes(),
            trailers: Vec::new(),
        },
    }
}

fn json_refusal(status: u16, body: serde_json::Value) -> Refusal {
    Refusal {
        status,
        headers: vec![("content-type", "application/json; charset=UTF-8".to_owned())],
        body: body.to_string().into_bytes(),
        trailers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{HttpRequest, classify};

    const WHY: &str = "AgentSession \"fix-ci\" denies DELETE storage.googleapis.com/storage/v1/b/logs (storage.buckets.delete) by rule \"no-deletes\" (spec.policy.rules[0]); the request was blocked and recorded";

    fn header<'a>(r: &'a Refusal, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn grpc_calls_get_permission_denied_with_the_reason() {
        let p = Protocol::of(Some("application/grpc+proto"), None, None);
        assert_eq!(p, Protocol::Grpc);
        let r = refuse(
            &p,
            403,
            "AgentSession \"fix-ci\" denies Publish: 100% sure\nsecond line",
        );
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "content-type"), Some("application/grpc"));
        assert_eq!(header(&r, "grpc-status"), Some("7"));
        assert_eq!(
            header(&r, "grpc-message"),
            Some("AgentSession \"fix-ci\" denies Publish: 100%25 sure second line")
        );
        assert!(r.body.is_empty());
        assert_eq!(header(&refuse(&p, 503, "x"), "grpc-status"), Some("14"));
        assert_eq!(
            header(&refuse(&p, 421, "é"), "grpc-message"),
            Some("%C3%A9")
        );
    }

    #[test]
    fn google_rest_calls_get_googles_error_shape() {
        let c = classify(&HttpRequest::from_target(
            "storage.googleapis.com",
            "DELETE",
            "/storage/v1/b/logs",
            None,
        ));
        let p = Protocol::of(Some("application/json"), c.as_ref(), None);
        assert_eq!(p, Protocol::GoogleRest);
        let r = refuse(&p, 403, WHY);
        assert_eq!(r.status, 403);
        assert_eq!(
            header(&r, "content-type"),
            Some("application/json; charset=UTF-8")
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["code"], 403);
        assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(body["error"]["message"], WHY);
        assert_eq!(body["error"]["errors"][0]["reason"], "forbidden");
        assert_eq!(body["error"]["details"][0]["domain"], "cassette.dev");
    }

    #[test]
    fn registries_get_the_oci_error_shape() {
        let c = classify(&HttpRequest::from_target(
            "us-docker.pkg.dev",
            "PUT",
            "/v2/p/r/app/manifests/v1",
            None,
        ));
        let p = Protocol::of(None, c.as_ref(), None);
        assert_eq!(p, Protocol::Oci);
        let body: serde_json::Value = serde_json::from_slice(&refuse(&p, 403, "no").body).unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
    }

    #[test]
    fn git_gets_a_report_it_prints() {
        let g = git::smart_http("GET", "/r.git/info/refs", Some("service=git-upload-pack"));
        let p = Protocol::of(None, None, g.as_ref());
        let r = refuse(&p, 403, "AgentSession \"s\" expired");
        assert_eq!(r.status, 200);
        assert_eq!(
            header(&r, "content-type"),
            Some("application/x-git-upload-pack-advertisement")
        );
        assert_eq!(r.body, b"0021ERR AgentSession \"s\" expired\n".to_vec());
        let push = Protocol::Git {
            service: GitService::ReceivePack,
            phase: Phase::Rpc,
            push: Some((
                ReportFraming {
                    status: true,
                    band: None,
                },
                vec![RefRejection {
                    name: "refs/heads/main".into(),
                    reason: "protected".into(),
                }],
            )),
        };
        let r = refuse(&push, 403, "x");
        assert_eq!(
            r.body,
            b"000eunpack ok\n0021ng refs/heads/main protected\n0000".to_vec()
        );
        assert_eq!(header(&r, "content-type"), Some(git::RECEIVE_PACK_RESULT));
    }

    #[test]
    fn other_requests_get_text() {
        let r = refuse(&Protocol::of(None, None, None), 421, "misdirected");
        assert_eq!((r.status, r.body.as_slice()), (421, &b"misdirected\n"[..]));
    }
}
