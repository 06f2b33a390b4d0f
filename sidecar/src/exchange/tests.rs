//! The exchange's stages, each driven through [`exchange`] against a real HTTP upstream on
//! loopback (reached through an upstream override), with the records kept in memory: every
//! test asserts what the agent got, what the upstream saw, and what was recorded.

use super::exchange;
use crate::conn::ConnCtx;
use crate::credentials::TokenSource;
use crate::http::{Body, full};
use crate::proxy::{Proxy, Route};
use crate::record::memory::MemorySink;
use crate::review::Reviews;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REAL_TOKEN: &str = "ya29.real-token-from-the-broker";
/// A GitHub token as an upstream might return it.
const SECRET: &str = "ghp_0123456789abcdefghijABCDEFGHIJ012345";

/// What the upstream received: method, path, Authorization, body.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A plain HTTP/1.1 upstream on loopback that records what it receives and answers with
/// `answer(path)`.
async fn upstream(answer: fn(&str) -> (u16, String)) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let log = log.clone();
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let authorization = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string());
                    let headers = req.headers().clone();
                    let body = req.into_body().collect().await?.to_bytes();
                    let (status, text) = answer(&path);
                    let trailers = path == "/trailers";
                    let bomb = path == "/bomb";
                    log.lock().unwrap().push(Seen {
                        method,
                        path,
                        authorization,
                        headers,
                        body,
                    });
                    let body = if trailers {
                        let mut t = http::HeaderMap::new();
                        t.insert("x-debug-token", SECRET.parse().unwrap());
                        Frames::of(text, t)
                    } else if bomb {
                        full(gzip_bomb())
                    } else {
                        full(text)
                    };
                    let mut response = Response::new(body);
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    response
                        .headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    if bomb {
                        response
                            .headers_mut()
                            .insert("content-encoding", "gzip".parse().unwrap());
                    }
                    if trailers {
                        // HTTP/1.1 sends only the trailers a response declares.
                        response
                            .headers_mut()
                            .insert("trailer", "x-debug-token".parse().unwrap());
                    }
                    Ok::<_, hyper::Error>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, seen)
}

/// A body of frames sent one at a time, of unknown length (so HTTP/1.1 sends it chunked,
/// which trailers need).
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl Frames {
    fn of(data: String, trailers: http::HeaderMap) -> Body {
        let frames = [
            http_body::Frame::data(Bytes::from(data)),
            http_body::Frame::trailers(trailers),
        ];
        Frames(frames.into_iter().collect()).boxed()
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// 16 MiB of zeros, gzip'd: about 16 KiB on the wire.
fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..16 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap()
}

fn echo(_: &str) -> (u16, String) {
    (200, r#"{"ok": true}"#.into())
}

/// Tokens as the broker hands them out.
struct FixedToken;

impl TokenSource for FixedToken {
    fn token(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send + '_>> {
        Box::pin(async { Ok(REAL_TOKEN.to_string()) })
    }
}

/// One agent connection to `host`, served by `upstream` through an override.
struct Pod {
    sink: Arc<MemorySink>,
    proxy: Arc<Proxy>,
    ctx: Arc<ConnCtx>,
    reviews: Arc<Reviews>,
}

impl Pod {
    fn new(host: &str, upstream: SocketAddr, spec: Value) -> Self {
        let (sink, proxy, reviews) = Proxy::for_test(
            &spec,
            &[format!("{host}=http://{upstream}").as_str()],
            Some(Arc::new(FixedToken)),
        );
        let route = Route {
            host: Some(host.to_string()),
            dst: upstream,
            endpoint: proxy.overrides.get(host).cloned(),
        };
        let peer = "10.0.0.5:40000".parse().unwrap();
        let ctx = Arc::new(ConnCtx::new(proxy.clone(), 7, peer, route, "https", None));
        Self {
            sink,
            proxy,
            ctx,
            reviews,
        }
    }

    /// Send one request; returns the agent's status and body, once the exchange has ended.
    async fn send(&self, req: Request<Body>) -> (StatusCode, String) {
        let (status, _, body) = self.send_full(req).await;
        (status, body)
    }

    /// Send one request; returns the agent's status, headers and body.
    async fn send_full(&self, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
        let response = exchange(self.ctx.clone(), Arc::new(Upstream::lazy()), req).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn end(&self) -> Value {
        let ends = self.sink.kind("exchange_end");
        assert_eq!(ends.len(), 1, "one exchange_end: {ends:?}");
        ends[0].clone()
    }
}

fn request(method: &str, uri: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap()
}

fn no_policy() -> Value {
    json!({"recording": {"sink": "file:///tmp/unused"}})
}

#[tokio::test]
async fn a_forwarded_exchange_is_recorded_head_to_end() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    let (status, body) = pod
        .send(request("POST", "/v1/items", r#"{"name": "x"}"#))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"ok": true}"#));
    let sent = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (sent.path.as_str(), &sent.body[..]),
        ("/v1/items", &br#"{"name": "x"}"#[..])
    );
    let kinds: Vec<String> = pod
        .sink
        .json()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "request",
            "body",
            "body",
            "response",
            "body",
            "body",
            "exchange_end"
        ],
        "in the order they happened"
    );
    let head = &pod.sink.kind("request")[0];
    assert_eq!(
        (
            &head["method"],
            &head["authority"],
            &head["path"],
            &head["conn"]
        ),
        (
            &json!("POST"),
            &json!("api.test"),
            &json!("/v1/items"),
            &json!(7)
        )
    );
    assert_eq!(pod.sink.body(1, "request"), r#"{"name": "x"}"#);
    let end = pod.end();
    assert_eq!(end["decision"], "allow");
    assert_eq!(end["bytes_up"], 13);
    assert!(end.get("error").is_none(), "{end}");
    assert_eq!(
        pod.proxy
            .recording
            .counts
            .exchanges
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_secret_in_the_response_reaches_the_agent_and_is_masked_in_the_recording() {
    fn leak(_: &str) -> (u16, String) {
        (200, format!(r#"{{"token": "{SECRET}"}}"#))
    }
    let (addr, _) = upstream(leak).await;
    let pod = Pod::new("api.test", addr, no_policy());
    let (_, body) = pod.send(request("GET", "/v1/config", "")).await;
    assert!(
        body.contains(SECRET),
        "the agent sees what the upstream sent"
    );
    let recorded = pod.sink.body(1, "response");
    assert!(!recorded.contains(SECRET), "{recorded}");
    assert!(recorded.contains("«masked:"), "{recorded}");
    assert_eq!(pod.end()["masked"], 1);
    assert_eq!(
        pod.proxy
            .recording
            .counts
            .masked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_policy_denial_never_reaches_the_upstream_and_is_recorded_as_blocked() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"rules": [
            {"name": "no-deletes", "action": "deny", "match": {"method": "DELETE"}}
        ]}
    });
    let pod = Pod::new("api.test", addr, spec);
    let (status, body) = pod
        .send(request("DELETE", "/v1/items/1", r#"{"why": "cleanup"}"#))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.starts_with("cassette: "), "{body}");
    assert!(body.contains("no-deletes"), "{body}");
    assert!(seen.lock().unwrap().is_empty(), "nothing went upstream");
    let blocked = &pod.sink.kind("blocked")[0];
    assert_eq!(blocked["reason"], "policy");
    assert_eq!(
        blocked["rule"],
        r#"rule "no-deletes" (spec.policy.rules[0])"#
    );
    assert_eq!(
        pod.sink.body(1, "request"),
        r#"{"why": "cleanup"}"#,
        "the body was read and recorded"
    );
    assert_eq!(pod.sink.kind("response")[0]["status"], 403);
    assert!(pod.sink.body(1, "response").contains("no-deletes"));
    let end = pod.end();
    assert_eq!(end["decision"], "deny");
    assert_eq!(end["rule"], blocked["rule"]);
    assert_eq!(
        pod.proxy
            .recording
            .counts
            .blocked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn an_expired_session_refuses_with_expiry_as_the_reason() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "expiresAt": "2020-01-01T00:00:00Z"
    });
    let pod = Pod::new("api.test", addr, spec);
    let (status, body) = pod.send(request("GET", "/", "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("expired"), "{body}");
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(pod.sink.kind("blocked")[0]["reason"], "expiry");
}

#[tokio::test]
async fn audit_mode_records_what_it_would_refuse_and_lets_it_through() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"mode": "audit", "rules": [{"action": "deny", "match": {"method": "DELETE"}}]}
    });
    let pod = Pod::new("api.test", addr, spec);
    let (status, _) = pod.send(request("DELETE", "/v1/items/1", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 1);
    let blocked = &pod.sink.kind("blocked")[0];
    assert_eq!(blocked["reason"], "audit");
    assert!(
        blocked["message"]
            .as_str()
            .unwrap()
            .starts_with("audit mode, not enforced")
    );
    assert_eq!(pod.end()["decision"], "allow");
    assert_eq!(
        pod.proxy
            .recording
            .counts
            .blocked
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "audit notes are not counted as blocked"
    );
}

fn review_spec() -> Value {
    json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"reviewTimeout": "1s", "rules": [
            {"name": "ask-first", "action": "review", "match": {"method": "DELETE"}}
        ]}
    })
}

#[tokio::test]
async fn a_held_request_goes_upstream_once_approved() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, review_spec());
    let reviews = pod.reviews.clone();
    let approver = tokio::spawn(async move {
        loop {
            if let Some(held) = reviews.pending().first() {
                assert_eq!(held.request, "DELETE api.test/v1/items/1");
                assert_eq!(
                    held.rule.as_deref(),
                    Some(r#"rule "ask-first" (spec.policy.rules[0])"#)
                );
                reviews.decide(&[cassette_api::Approval {
                    id: held.id.clone(),
                    decision: cassette_api::ReviewDecision::Approve,
                    by: Some("bob@example.com".into()),
                    at: None,
                    reason: None,
                    digest: held.digest.clone(),
                }]);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (status, _) = pod.send(request("DELETE", "/v1/items/1", "")).await;
    approver.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap()[0].method, "DELETE");
    let states: Vec<Value> = pod
        .sink
        .kind("review")
        .iter()
        .map(|r| json!([r["state"], r["by"]]))
        .collect();
    assert_eq!(
        states,
        [
            json!(["pending", null]),
            json!(["approved", "bob@example.com"])
        ]
    );
    assert!(pod.sink.kind("blocked").is_empty());
    assert!(pod.reviews.is_empty(), "released");
}

/// Issue 14.4: an approval is bound to the held request's body too. The approver is shown
/// the body's size (the body itself is recorded before the hold is published); an approval
/// naming the digest of the same method and target without that body releases nothing, and
/// the one naming the published digest releases the request, body intact.
#[tokio::test]
async fn an_approval_is_bound_to_the_held_requests_body() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"reviewTimeout": "2s", "rules": [
            {"name": "ask-first", "action": "review", "match": {"method": "POST"}}
        ]}
    });
    let pod = Pod::new("api.test", addr, spec);
    let reviews = pod.reviews.clone();
    let approver = tokio::spawn(async move {
        loop {
            if let Some(held) = reviews.pending().first() {
                assert_eq!(held.request, "POST api.test/v1/items (16 byte body)");
                let approve = |digest: Option<String>| cassette_api::Approval {
                    id: held.id.clone(),
                    decision: cassette_api::ReviewDecision::Approve,
                    by: Some("bob@example.com".into()),
                    at: None,
                    reason: None,
                    digest,
                };
                // What the method and target alone would digest to.
                let without_body = crate::review::Reviews::digest("POST api.test/v1/items");
                reviews.decide(&[approve(Some(without_body))]);
                reviews.decide(&[approve(Some(crate::review::Reviews::digest(&held.request)))]);
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(
                    !reviews.is_empty(),
                    "an approval of another body released it"
                );
                reviews.decide(&[approve(held.digest.clone())]);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (status, _) = pod
        .send(request("POST", "/v1/items", r#"{"name": "prod"}"#))
        .await;
    approver.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let got = seen.lock().unwrap();
    assert_eq!(
        &got[0].body[..],
        br#"{"name": "prod"}"#,
        "the body went on whole"
    );
    let records = pod.sink.json();
    let at = |f: &dyn Fn(&Value) -> bool| records.iter().position(f);
    let body_at = at(&|r| r["kind"] == "body" && r["text"] == r#"{"name": "prod"}"#);
    let review_at = at(&|r| r["kind"] == "review");
    assert!(
        body_at.is_some() && body_at < review_at,
        "the body was recorded before the hold was published: {records:?}"
    );
}

#[tokio::test]
async fn a_held_request_that_nobody_decides_is_refused_at_the_timeout() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, review_spec());
    let (status, body) = pod.send(request("DELETE", "/v1/items/1", "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("no decision within 1s"), "{body}");
    assert!(seen.lock().unwrap().is_empty());
    let states: Vec<Value> = pod
        .sink
        .kind("review")
        .iter()
        .map(|r| r["state"].clone())
        .collect();
    assert_eq!(states, [json!("pending"), json!("timed_out")]);
    let blocked = &pod.sink.kind("blocked")[0];
    assert_eq!(blocked["reason"], "review");
    assert_eq!(
        blocked["rule"],
        r#"rule "ask-first" (spec.policy.rules[0])"#
    );
    assert!(pod.reviews.is_empty(), "released");
}

#[tokio::test]
async fn the_placeholder_is_swapped_toward_google_and_the_token_never_recorded() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("storage.googleapis.com", addr, no_policy());
    let placeholder = pod.proxy.placeholder.as_str().to_string();
    let mut req = request("GET", "/storage/v1/b/acme/o/x", "");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {placeholder}").parse().unwrap(),
    );
    let (status, _) = pod.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen.lock().unwrap()[0].authorization.as_deref(),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    let token = &pod.sink.kind("token")[0];
    assert_eq!(
        (&token["host"], &token["swap"]),
        (&json!("storage.googleapis.com"), &json!("bearer"))
    );
    let everything = serde_json::to_string(&pod.sink.json()).unwrap();
    assert!(!everything.contains(REAL_TOKEN), "{everything}");
    let end = pod.end();
    assert_eq!(end["classification"]["permission"], "storage.objects.get");
}

#[tokio::test]
async fn the_placeholder_goes_as_it_is_to_hosts_that_are_not_google() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    let placeholder = pod.proxy.placeholder.as_str().to_string();
    let mut req = request("GET", "/", "");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {placeholder}").parse().unwrap(),
    );
    pod.send(req).await;
    assert_eq!(
        seen.lock().unwrap()[0].authorization.as_deref(),
        Some(format!("Bearer {placeholder}").as_str())
    );
    assert!(pod.sink.kind("token").is_empty());
}

#[tokio::test]
async fn an_upstream_that_could_not_be_reached_safely_refuses_every_request() {
    let (addr, _) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    let failed = Arc::new(ConnCtx::new(
        pod.proxy.clone(),
        8,
        pod.ctx.peer,
        pod.ctx.route.clone(),
        "https",
        Some(Arc::new(crate::upstream::UpstreamError::Unreachable)),
    ));
    let response = exchange(
        failed,
        Arc::new(Upstream::failed()),
        request("GET", "/", ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let blocked = &pod.sink.kind("blocked")[0];
    assert_eq!(blocked["reason"], "upstream");
    assert!(
        blocked["message"]
            .as_str()
            .unwrap()
            .contains("api.test could not be reached safely"),
        "{blocked}"
    );
    assert_eq!(pod.end()["decision"], "deny");
}

#[tokio::test]
async fn an_upstream_that_fails_ends_the_exchange_with_why() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let pod = Pod::new("api.test", addr, no_policy());
    let (status, body) = pod.send(request("GET", "/", "")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("api.test failed: connecting to 127.0.0.1"),
        "{body}"
    );
    assert!(pod.sink.kind("blocked").is_empty(), "allowed, not blocked");
    let end = pod.end();
    assert_eq!(end["decision"], "allow");
    assert!(end["error"].as_str().unwrap().contains("failed"), "{end}");
}

#[tokio::test]
async fn a_request_that_cannot_be_recorded_is_not_sent() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    pod.sink
        .fail
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = pod.send(request("POST", "/v1/items", "{}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("could not be recorded"), "{body}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_push_that_is_not_git_is_refused_in_gits_protocol_with_the_git_reason() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("git.test", addr, no_policy());
    let req = Request::builder()
        .method("POST")
        .uri("/repo.git/git-receive-pack")
        .header("content-type", "application/x-git-receive-pack-request")
        .body(full("this is not a pkt-line"))
        .unwrap();
    let (status, headers, body) = pod.send_full(req).await;
    // In git's own protocol: an ERR line, which git prints as "fatal: remote error: …".
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "application/x-git-receive-pack-result"
    );
    assert!(
        body.contains("ERR cassette: ") && body.contains("not valid git"),
        "{body}"
    );
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(pod.sink.kind("blocked")[0]["reason"], "git");
}

#[tokio::test]
async fn a_request_naming_another_host_than_the_verified_one_is_refused_421() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"rules": [
            {"name": "keep-buckets", "action": "deny", "match": {"permission": "storage.buckets.delete"}}
        ]}
    });
    let pod = Pod::new("storage.googleapis.com", addr, spec);
    let placeholder = pod.proxy.placeholder.as_str().to_string();
    // The connection is storage's; the request names another host, hoping to be classified
    // as that host's (no permission, so no rule) while carrying storage's real token.
    let mut req = request("DELETE", "https://docs.example/storage/v1/b/prod", "");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {placeholder}").parse().unwrap(),
    );
    let (status, body) = pod.send(req).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert!(body.contains("docs.example"), "{body}");
    assert!(seen.lock().unwrap().is_empty(), "nothing went upstream");
    assert!(pod.sink.kind("token").is_empty(), "no token was swapped");
    assert_eq!(pod.sink.kind("blocked")[0]["reason"], "authority");

    // A Host header naming another host is refused the same way.
    let mut req = request("DELETE", "/storage/v1/b/prod", "");
    req.headers_mut()
        .insert("host", "docs.example".parse().unwrap());
    let (status, _) = pod.send(req).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn decisions_classify_the_verified_host_and_deny_holds_for_it() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"rules": [
            {"name": "keep-buckets", "action": "deny", "match": {"permission": "storage.buckets.delete"}}
        ]}
    });
    let pod = Pod::new("storage.googleapis.com", addr, spec);
    let (status, body) = pod.send(request("DELETE", "/storage/v1/b/prod", "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(
        pod.end()["classification"]["permission"],
        "storage.buckets.delete"
    );
}

#[tokio::test]
async fn a_secret_in_the_target_goes_upstream_but_is_recorded_masked() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    let key = "AIzaSyD3f4k3K3yF0rC4ss3tt3T3st1ng0123456";
    pod.send(request("GET", &format!("/v1/maps?key={key}&q=x"), ""))
        .await;
    assert!(seen.lock().unwrap().len() == 1);
    let recorded = pod.sink.kind("request")[0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!recorded.contains(key), "{recorded}");
    assert!(recorded.starts_with("/v1/maps?key=«masked:"), "{recorded}");
    assert!(recorded.ends_with("&q=x"), "{recorded}");
    assert_eq!(pod.end()["masked"], 1);
}

#[tokio::test]
async fn trailers_both_ways_are_recorded_masked() {
    let (addr, _) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    let mut t = http::HeaderMap::new();
    t.insert("x-upload-token", SECRET.parse().unwrap());
    let req = Request::builder()
        .method("POST")
        .uri("/trailers")
        .header("te", "trailers")
        .body(Frames::of("data".into(), t))
        .unwrap();
    pod.send(req).await;
    let end = pod.end();
    let everything = end.to_string();
    assert!(!everything.contains(SECRET), "{end}");
    assert_eq!(end["trailers"][0][0], "x-debug-token");
    assert!(
        end["trailers"][0][1].as_str().unwrap().contains("«masked:"),
        "{end}"
    );
    assert_eq!(end["request_trailers"][0][0], "x-upload-token");
    assert!(
        end["request_trailers"][0][1]
            .as_str()
            .unwrap()
            .contains("«masked:"),
        "{end}"
    );
    assert_eq!(end["masked"], 2);
}

#[tokio::test]
async fn a_denied_grpc_call_is_answered_in_grpc_and_a_rest_call_in_googles_json() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"rules": [
            {"name": "no-publish", "action": "deny", "match": {"permission": "pubsub.topics.publish"}},
            {"name": "keep-buckets", "action": "deny", "match": {"permission": "storage.buckets.delete"}}
        ]}
    });
    let pod = Pod::new("pubsub.googleapis.com", addr, spec.clone());
    let req = Request::builder()
        .method("POST")
        .uri("/google.pubsub.v1.Publisher/Publish")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let (status, headers, _) = pod.send_full(req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "gRPC says its status in grpc-status"
    );
    assert_eq!(
        headers["grpc-status"], "7",
        "PERMISSION_DENIED: {headers:?}"
    );
    assert!(
        headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("no-publish"),
        "{headers:?}"
    );
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(pod.sink.kind("response")[0]["status"], 200);

    let pod = Pod::new("storage.googleapis.com", addr, spec);
    let (status, headers, body) = pod
        .send_full(request("DELETE", "/storage/v1/b/prod", ""))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], 403);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keep-buckets")
    );
}

#[tokio::test]
async fn a_compressed_body_is_decoded_for_the_recording_only_up_to_max_body_bytes() {
    let (addr, _) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    let response = exchange(
        pod.ctx.clone(),
        Arc::new(Upstream::lazy()),
        request("GET", "/bomb", ""),
    )
    .await;
    let wire = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        wire.len(),
        gzip_bomb().len(),
        "the agent gets the bytes as sent"
    );
    let last = pod
        .sink
        .kind("body")
        .into_iter()
        .find(|b| b["direction"] == "response" && b["final"] == true)
        .unwrap();
    assert_eq!(last["length"], 1024 * 1024, "{last}");
    assert_eq!(last["truncated"], true);
    assert!(
        last["decoding"]
            .as_str()
            .unwrap()
            .contains("truncated after decoding 1048576 bytes"),
        "{last}"
    );
}

/// A `git push` of the rules crate's fixture pack (three commits, the second committing a
/// fake GitHub token to config/deploy.env) to `ref_name`, as git sends it.
fn push_body(ref_name: &str) -> Vec<u8> {
    let head = include_str!("../../../rules/testdata/push.head").trim();
    let line = format!(
        "{} {head} {ref_name}\0report-status side-band-64k agent=git/2.39\n",
        "0".repeat(40)
    );
    let mut body = format!("{:04x}{line}0000", line.len() + 4).into_bytes();
    body.extend_from_slice(include_bytes!("../../../rules/testdata/push.pack"));
    body
}

const PUSHED_TOKEN: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

fn push_request(body: Vec<u8>, encoding: Option<&str>) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri("/repo.git/git-receive-pack")
        .header("content-type", "application/x-git-receive-pack-request");
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.body(full(body)).unwrap()
}

fn protect_main() -> Value {
    json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"rules": [
            {"name": "protect-main", "action": "deny", "match": {"gitRef": "refs/heads/main"}}
        ]}
    })
}

#[tokio::test]
async fn a_compressed_push_to_a_protected_ref_is_read_and_refused() {
    use std::io::Write;
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("git.test", addr, protect_main());
    for encoding in ["gzip", "x-gzip", "identity"] {
        let body = if encoding == "identity" {
            push_body("refs/heads/main")
        } else {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&push_body("refs/heads/main")).unwrap();
            gz.finish().unwrap()
        };
        let (status, _, answer) = pod.send_full(push_request(body, Some(encoding))).await;
        assert_eq!(status, StatusCode::OK, "git reads the report: {answer}");
        assert!(
            answer.contains("ng refs/heads/main"),
            "{encoding}: {answer}"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "no push went upstream");
    let pushes = pod.sink.kind("git");
    assert_eq!(pushes.len(), 3, "each push's ref updates are recorded");
}

#[tokio::test]
async fn an_undecodable_push_is_refused_when_refs_are_protected() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("git.test", addr, protect_main());
    let (status, _, answer) = pod
        .send_full(push_request(b"whatever".to_vec(), Some("compress")))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.contains("could not be read"), "{answer}");
    assert!(seen.lock().unwrap().is_empty());
    // And a path servers read two ways.
    let mut req = push_request(push_body("refs/heads/feature"), None);
    *req.uri_mut() = "/repo.git%2f..%2fother.git/git-receive-pack"
        .parse()
        .unwrap();
    let (_, _, answer) = pod.send_full(req).await;
    assert!(answer.contains("two ways"), "{answer}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_pushed_pack_is_recorded_object_by_object_with_the_secret_masked_and_no_pack_bytes() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("git.test", addr, protect_main());
    let (status, _, _) = pod
        .send_full(push_request(push_body("refs/heads/feature"), None))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 1, "the push went upstream");
    let everything = serde_json::to_string(&pod.sink.json()).unwrap();
    assert!(
        !everything.contains(PUSHED_TOKEN),
        "the token is nowhere in the recording"
    );
    let objects = pod.sink.kind("git_object");
    assert!(
        objects.len() >= 9,
        "three commits, their trees and blobs: {}",
        objects.len()
    );
    let commit = objects
        .iter()
        .find(|o| {
            o["type"] == "commit"
                && o["commit"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("add the deploy token «masked:"))
        })
        .expect("the commit message is recorded, masked");
    assert_eq!(
        commit["commit"]["author"]
            .as_str()
            .unwrap()
            .split('>')
            .next()
            .unwrap(),
        "Agent <agent@example.com"
    );
    let pack = &pod.sink.kind("git_pack")[0];
    assert_eq!(pack["checksum_ok"], true);
    let paths: Vec<&str> = pack["path_masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"config/deploy.env"), "{pack}");
    // The body itself is not stored: only its length and digest.
    let body = pod.sink.body(1, "request");
    assert!(body.is_empty(), "no pack byte is stored: {body:?}");
    let last = pod
        .sink
        .kind("body")
        .into_iter()
        .find(|b| b["direction"] == "request" && b["final"] == true)
        .unwrap();
    assert_eq!(last["length"], push_body("refs/heads/feature").len());
    assert!(last["decoding"].as_str().unwrap().contains("git pack"));
}

#[tokio::test]
async fn a_batched_delete_is_classified_part_by_part_and_refused() {
    let (addr, seen) = upstream(echo).await;
    let spec = json!({
        "recording": {"sink": "file:///tmp/unused"},
        "policy": {"rules": [
            {"name": "keep-objects", "action": "deny", "match": {"permission": "storage.objects.delete"}}
        ]}
    });
    let pod = Pod::new("storage.googleapis.com", addr, spec);
    let body = "--b\r\nContent-Type: application/http\r\nContent-ID: <a>\r\n\r\nGET /storage/v1/b/logs/o/x HTTP/1.1\r\n\r\n\
                --b\r\nContent-Type: application/http\r\nContent-ID: <b>\r\n\r\nDELETE /storage/v1/b/logs/o/y HTTP/1.1\r\n\r\n--b--\r\n";
    let req = Request::builder()
        .method("POST")
        .uri("/batch/storage/v1")
        .header("content-type", "multipart/mixed; boundary=b")
        .body(full(body))
        .unwrap();
    let (status, _, answer) = pod.send_full(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer.contains("part 2 of 2"), "{answer}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the batch never went upstream"
    );
    let batch = &pod.sink.kind("batch")[0];
    let parts: Vec<(&str, &str, &str)> = batch["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["method"].as_str().unwrap(),
                p["permission"].as_str().unwrap(),
                p["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("GET", "storage.objects.get", "allow"),
            ("DELETE", "storage.objects.delete", "deny")
        ]
    );
    // A batch that cannot be read is not forwarded unread.
    let req = Request::builder()
        .method("POST")
        .uri("/batch/storage/v1")
        .header("content-type", "text/plain")
        .body(full("not a batch"))
        .unwrap();
    let (status, _) = pod.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_ref_moved_through_a_code_hosts_api_is_held_to_gitref_rules() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.git.test", addr, protect_main());
    // A file committed to main through the contents API, and a pull-request merge (its base
    // branch, unknown here, may be main).
    let contents = request(
        "PUT",
        "/repos/acme/app/contents/config/ci.yml",
        r#"{"message": "ci", "content": "eA==", "branch": "main"}"#,
    );
    let (status, _) = pod.send(contents).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let merge = request("PUT", "/repos/acme/app/pulls/7/merge", "{}");
    let (status, _) = pod.send(merge).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(seen.lock().unwrap().is_empty());
    // A file committed to another branch goes through.
    let feature = request(
        "PUT",
        "/repos/acme/app/contents/config/ci.yml",
        r#"{"message": "ci", "content": "eA==", "branch": "fix-lint"}"#,
    );
    let (status, _) = pod.send(feature).await;
    assert_eq!(status, StatusCode::OK);
    let git: Vec<String> = pod
        .sink
        .kind("git")
        .iter()
        .map(|g| {
            format!(
                "{} {}",
                g["service"].as_str().unwrap(),
                g["updates"][0]["ref"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        git[0], "rest:github.repos.createOrUpdateFileContents refs/heads/main",
        "{git:?}"
    );
    assert!(
        git[1].starts_with("rest:github.pulls.merge (not named"),
        "{git:?}"
    );
    assert_eq!(
        git[2],
        "rest:github.repos.createOrUpdateFileContents refs/heads/fix-lint"
    );
}

#[tokio::test]
async fn base64_payloads_of_google_apis_are_decoded_and_masked_inside() {
    use base64::Engine;
    fn access(path: &str) -> (u16, String) {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        if path.ends_with(":access") {
            (
                200,
                format!(
                    r#"{{"name": "v/1", "payload": {{"data": "{}"}}}}"#,
                    b64("db-password-hunter2")
                ),
            )
        } else {
            (
                200,
                format!(r#"{{"plaintext": "{}"}}"#, b64(&format!("token={SECRET}"))),
            )
        }
    }
    let (addr, _) = upstream(access).await;
    let pod = Pod::new("secretmanager.googleapis.com", addr, no_policy());
    let (_, body) = pod
        .send(request(
            "GET",
            "/v1/projects/p/secrets/db/versions/latest:access",
            "",
        ))
        .await;
    assert!(
        body.contains(&base64::engine::general_purpose::STANDARD.encode("db-password-hunter2")),
        "the agent gets the secret"
    );
    let recorded = pod.sink.body(1, "response");
    assert!(!recorded.contains("ZGItcGFzc3dvcmQ"), "{recorded}");
    let field: Value = serde_json::from_str(&recorded).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(field["payload"]["data"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(payload)
            .unwrap()
            .starts_with("«masked:secret-payload:"),
        "a secret payload is masked whole, the field still base64"
    );

    let pod = Pod::new("cloudkms.googleapis.com", addr, no_policy());
    pod.send(request(
        "POST",
        "/v1/projects/p/locations/global/keyRings/r/cryptoKeys/k:decrypt",
        r#"{"ciphertext": "AAAA"}"#,
    ))
    .await;
    let recorded = pod.sink.body(1, "response");
    let encoded_secret =
        base64::engine::general_purpose::STANDARD.encode(format!("token={SECRET}"));
    assert!(!recorded.contains(&encoded_secret), "{recorded}");
    let field: Value = serde_json::from_str(&recorded).unwrap();
    let inside = base64::engine::general_purpose::STANDARD
        .decode(field["plaintext"].as_str().unwrap())
        .unwrap();
    let inside = String::from_utf8(inside).unwrap();
    assert!(
        inside.starts_with("token=«masked:"),
        "masked inside, still base64: {inside}"
    );
}

#[tokio::test]
async fn the_agent_cannot_read_or_write_the_recordings_bucket() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("storage.googleapis.com", addr, no_policy());
    let placeholder = pod.proxy.placeholder.as_str().to_string();
    for (method, target) in [
        ("GET", "/storage/v1/b/acme-agent-recordings/o"),
        (
            "POST",
            "/upload/storage/v1/b/acme-agent-recordings/o?uploadType=media&name=sessions%2Fagents%2Ffix-ci%2Fseg-000002.jsonl.zst",
        ),
        (
            "GET",
            "/acme-agent-recordings/sessions/agents/fix-ci/manifest.json",
        ),
        (
            "POST",
            "/storage/v1/b/acme-ci/o/x/rewriteTo/b/acme-agent-recordings/o/y",
        ),
    ] {
        let mut req = request(method, target, "");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {placeholder}").parse().unwrap(),
        );
        let (status, body) = pod.send(req).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{target}: {body}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the bucket"
    );
    assert!(pod.sink.kind("token").is_empty(), "no token was swapped");
    assert_eq!(pod.sink.kind("blocked").len(), 4);
    assert!(
        pod.sink
            .kind("blocked")
            .iter()
            .all(|b| b["reason"] == "sink")
    );
    // Another bucket is the agent's to use.
    let (status, _) = pod
        .send(request("GET", "/storage/v1/b/acme-ci/o/x", ""))
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// A protobuf length-delimited field (lengths under 128).
fn proto(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// A gRPC call to Cloud Storage whose first message is `message`, sent in `frames` pieces,
/// with the placeholder as its token and no routing header.
fn storage_grpc(pod: &Pod, method: &str, message: &[u8], frames: usize) -> Request<Body> {
    let mut wire = vec![0u8];
    wire.extend_from_slice(&(message.len() as u32).to_be_bytes());
    wire.extend_from_slice(message);
    let size = wire.len().div_ceil(frames);
    let chunks = wire
        .chunks(size)
        .map(|c| http_body::Frame::data(Bytes::copy_from_slice(c)))
        .collect();
    Request::builder()
        .method("POST")
        .uri(format!("/google.storage.v2.Storage/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "authorization",
            format!("Bearer {}", pod.proxy.placeholder.as_str()),
        )
        .body(Frames(chunks).boxed())
        .unwrap()
}

/// Issue 14.2, gRPC: Cloud Storage's gRPC API names the bucket inside its messages; the
/// routing header is the agent's to leave out. A read and a streamed write of the recordings
/// bucket are refused before any token is swapped; a call naming another bucket goes on with
/// its bytes as sent.
#[tokio::test]
async fn a_grpc_call_naming_the_recordings_bucket_in_its_message_is_refused() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("storage.googleapis.com", addr, no_policy());
    let sink = b"projects/_/buckets/acme-agent-recordings";
    // ReadObjectRequest { bucket: 1, object: 2 }.
    let read = [
        proto(1, sink),
        proto(2, b"sessions/agents/fix-ci/manifest.json"),
    ]
    .concat();
    // WriteObjectRequest { write_object_spec: 2 { resource: 1 { name: 1, bucket: 3 } } }.
    let object = [
        proto(1, b"sessions/agents/fix-ci/seg-000002.jsonl.zst"),
        proto(3, sink),
    ];
    let write = proto(2, &proto(1, &object.concat()));
    for (method, message, frames) in [("ReadObject", &read, 1), ("WriteObject", &write, 3)] {
        let (status, headers, _) = pod
            .send_full(storage_grpc(&pod, method, message, frames))
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "gRPC says its status in grpc-status"
        );
        assert_eq!(headers["grpc-status"], "7", "{method}: {headers:?}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the bucket"
    );
    assert!(pod.sink.kind("token").is_empty(), "no token was swapped");
    let blocked = pod.sink.kind("blocked");
    assert_eq!(blocked.len(), 2);
    assert!(blocked.iter().all(|b| b["reason"] == "sink"), "{blocked:?}");

    let other = [proto(1, b"projects/_/buckets/acme-ci"), proto(2, b"x")].concat();
    let (_, headers, _) = pod
        .send_full(storage_grpc(&pod, "ReadObject", &other, 2))
        .await;
    assert!(headers.get("grpc-status").is_none(), "{headers:?}");
    let got = seen.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[5..], &other[..], "the call went on as sent");
}

/// Issue 14.2, batches: a batch whose second part reads a recording is refused whole, before
/// any token is swapped, and says which part named the bucket.
#[tokio::test]
async fn a_batch_part_naming_the_recordings_bucket_refuses_the_batch() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("storage.googleapis.com", addr, no_policy());
    let body = "--b\r\nContent-Type: application/http\r\n\r\nGET /storage/v1/b/acme-ci/o/x HTTP/1.1\r\n\r\n\
                --b\r\nContent-Type: application/http\r\n\r\nGET /storage/v1/b/acme-agent-recordings/o/sessions%2Fx%2Fmanifest.json?alt=media HTTP/1.1\r\n\r\n--b--\r\n";
    let req = Request::builder()
        .method("POST")
        .uri("/batch/storage/v1")
        .header("content-type", "multipart/mixed; boundary=b")
        .header(
            "authorization",
            format!("Bearer {}", pod.proxy.placeholder.as_str()),
        )
        .body(full(body))
        .unwrap();
    let (status, _, answer) = pod.send_full(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer.contains("part 2 of the batch"), "{answer}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the batch never went upstream"
    );
    assert!(pod.sink.kind("token").is_empty(), "no token was swapped");
    assert_eq!(pod.sink.kind("blocked")[0]["reason"], "sink");
}

/// Issue 15.1: the target a held request is published with (status.pendingReviews, which the
/// agent's identity can read) has its secrets masked; the request goes upstream as sent.
#[tokio::test]
async fn a_held_request_is_published_with_its_target_masked() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, review_spec());
    let reviews = pod.reviews.clone();
    let approver = tokio::spawn(async move {
        loop {
            if let Some(held) = reviews.pending().first() {
                let published = held.request.clone();
                reviews.decide(&[cassette_api::Approval {
                    id: held.id.clone(),
                    decision: cassette_api::ReviewDecision::Approve,
                    by: Some("bob@example.com".into()),
                    at: None,
                    reason: None,
                    digest: held.digest.clone(),
                }]);
                return published;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    const API_KEY: &str = "AIzaSyD3f4k3K3yF0rC4ss3tt3T3st1ng0123456";
    let target = format!("/v1/items/1?key={API_KEY}&sig=0a1b2c3d4e5f");
    let (status, _) = pod.send(request("DELETE", &target, "")).await;
    let published = approver.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        !published.contains(API_KEY) && !published.contains("0a1b2c3d4e5f"),
        "{published}"
    );
    assert!(published.contains("«masked:"), "{published}");
    assert!(seen.lock().unwrap()[0].path.starts_with("/v1/items/1"));
}

#[tokio::test]
async fn onfailure_closed_cuts_an_upload_before_bytes_it_cannot_record() {
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::new("api.test", addr, no_policy());
    // The request head is kept; then the spool is full.
    let chunks = (0..4)
        .map(|i| http_body::Frame::data(Bytes::from(format!("chunk-{i}-").repeat(1000))))
        .collect();
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .body(Frames(chunks).boxed())
        .unwrap();
    pod.sink
        .fail_after
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let response = exchange(pod.ctx.clone(), Arc::new(Upstream::lazy()), req).await;
    assert_ne!(
        response.status(),
        StatusCode::OK,
        "the upload was not completed"
    );
    let got = seen.lock().unwrap().clone();
    assert!(
        got.iter()
            .all(|s| !String::from_utf8_lossy(&s.body).contains("chunk-0-")),
        "no byte that could not be recorded reached the upstream"
    );
    // Once the spool takes records again, the gap says exactly what passed.
    pod.sink
        .fail_after
        .store(0, std::sync::atomic::Ordering::Relaxed);
    pod.proxy
        .recording
        .emit(cassette_recording::record::Event::SessionEnd(
            Default::default(),
        ));
    let gap = pod
        .sink
        .kind("gap")
        .into_iter()
        .find(|g| g["lost"].as_str().unwrap().contains("request body"))
        .expect("the cut is recorded");
    assert!(
        gap["reason"]
            .as_str()
            .unwrap()
            .contains("bytes 0..0 passed"),
        "{gap}"
    );
}

#[tokio::test]
async fn onfailure_closed_cuts_a_download_before_bytes_it_cannot_record() {
    fn big(_: &str) -> (u16, String) {
        (200, "x".repeat(4 << 20))
    }
    let (addr, _) = upstream(big).await;
    let pod = Pod::new("api.test", addr, no_policy());
    pod.sink
        .fail_after
        .store(4, std::sync::atomic::Ordering::Relaxed);
    let response = exchange(
        pod.ctx.clone(),
        Arc::new(Upstream::lazy()),
        request("GET", "/", ""),
    )
    .await;
    let read = response.into_body().collect().await;
    assert!(read.is_err(), "the agent's download was cut, not completed");
}

/// A code host's token that no built-in detector knows by its shape: only its registration
/// as a brokered credential masks it.
const CODE_HOST_TOKEN: &str = "cht-7f3a9b2c1d4e5f60718293a4b5c6d7e8";
const CODE_HOST_PLACEHOLDER: &str = "cassette-placeholder-code-00112233445566778899aabbccddeeff";

/// An upstream that echoes the real token back, as some APIs do with what they were sent.
fn echo_token(_: &str) -> (u16, String) {
    (200, format!("{{\"you-sent\": \"{CODE_HOST_TOKEN}\"}}"))
}

/// The Secret file of the `code` credential, written the way the kubelet writes it.
fn secret_file(dir: &std::path::Path, value: &str) {
    let tmp = dir.join("..tmp");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, dir.join("value")).unwrap();
}

fn code_table(dir: &std::path::Path, presentation: &str, header: Option<&str>) -> String {
    let mut entry = json!({
        "name": "code",
        "hosts": ["api.code.test", "*.code.test"],
        "presentation": presentation,
        "file": dir.join("value").to_str().unwrap(),
        "placeholder": CODE_HOST_PLACEHOLDER,
    });
    if let Some(h) = header {
        entry["header"] = json!(h);
    }
    json!([entry]).to_string()
}

impl Pod {
    /// One agent connection to `host` with the brokered credentials of `table`; reached
    /// through an override when `upstream` is given, else as plain HTTP to `host` itself.
    fn brokered(host: &str, upstream: SocketAddr, table: &str, override_it: bool) -> Self {
        let brokered =
            crate::credentials::brokered::Brokered::parse(Some(table), Duration::ZERO).unwrap();
        let overrides = [format!("{host}=http://{upstream}")];
        let overrides: Vec<&str> = if override_it {
            overrides.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        };
        let (sink, proxy, reviews) =
            Proxy::for_test_brokered(&no_policy(), &overrides, None, brokered);
        let route = Route {
            host: Some(host.to_string()),
            dst: upstream,
            endpoint: proxy.overrides.get(host).cloned(),
        };
        let peer = "10.0.0.5:40000".parse().unwrap();
        let scheme = if override_it { "https" } else { "http" };
        let ctx = Arc::new(ConnCtx::new(proxy.clone(), 7, peer, route, scheme, None));
        Self {
            sink,
            proxy,
            ctx,
            reviews,
        }
    }

    fn counter(&self, leaks: bool) -> u64 {
        let labels = crate::metrics::CredentialLabels {
            credential: "code".into(),
        };
        let m = self.proxy.metrics();
        let family = if leaks {
            &m.placeholder_leaks
        } else {
            &m.credential_swaps
        };
        family.get_or_create(&labels).get()
    }
}

fn with_header(mut req: Request<Body>, name: &str, value: &str) -> Request<Body> {
    req.headers_mut().append(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    req
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn a_brokered_credential_is_swapped_toward_its_hosts_in_its_presentation() {
    let cases = [
        (
            "Bearer",
            None,
            "authorization",
            format!("Bearer {CODE_HOST_PLACEHOLDER}"),
            format!("Bearer {CODE_HOST_TOKEN}"),
            "bearer",
        ),
        (
            "Token",
            None,
            "authorization",
            format!("token {CODE_HOST_PLACEHOLDER}"),
            format!("token {CODE_HOST_TOKEN}"),
            "token",
        ),
        (
            "Basic",
            None,
            "authorization",
            basic("x-access-token", CODE_HOST_PLACEHOLDER),
            basic("x-access-token", CODE_HOST_TOKEN),
            "git-basic",
        ),
        (
            "Header",
            Some("PRIVATE-TOKEN"),
            "private-token",
            CODE_HOST_PLACEHOLDER.to_string(),
            CODE_HOST_TOKEN.to_string(),
            "header",
        ),
    ];
    for (presentation, header, name, sent, wanted, swap) in cases {
        let dir = tempfile::tempdir().unwrap();
        secret_file(dir.path(), &format!("{CODE_HOST_TOKEN}\n"));
        let (addr, seen) = upstream(echo_token).await;
        for host in ["api.code.test", "git.code.test"] {
            let table = code_table(dir.path(), presentation, header);
            let pod = Pod::brokered(host, addr, &table, true);
            let (status, body) = pod
                .send(with_header(request("GET", "/user", ""), name, &sent))
                .await;
            assert_eq!(status, StatusCode::OK, "{presentation}");
            // The agent gets the response as the upstream sent it.
            assert!(body.contains(CODE_HOST_TOKEN), "{presentation}: {body}");
            let got = seen.lock().unwrap().last().unwrap().headers.clone();
            assert_eq!(got.get_all(name).iter().count(), 1, "{presentation}");
            assert_eq!(got[name], wanted.as_str(), "{presentation} to {host}");
            let token = &pod.sink.kind("token")[0];
            assert_eq!(
                (&token["credential"], &token["host"], &token["swap"]),
                (&json!("code"), &json!(host), &json!(swap)),
                "{presentation}"
            );
            assert_eq!(token["header"], json!(header.map(str::to_ascii_lowercase)));
            assert!(pod.sink.kind("placeholder").is_empty(), "{presentation}");
            assert_eq!((pod.counter(false), pod.counter(true)), (1, 0));
            // The real value is in no record, the echo included: it is masked by value.
            let everything = serde_json::to_string(&pod.sink.json()).unwrap();
            assert!(
                !everything.contains(CODE_HOST_TOKEN),
                "{presentation}: {everything}"
            );
            assert!(
                everything.contains("«masked:credential-code:"),
                "{everything}"
            );
            // The token record names the value by its mask, the same one the masker gave it
            // where it appeared (the echo), so search finds the exchange that used it.
            let value = token["value"].as_str().unwrap_or_default();
            assert!(
                value.starts_with("«masked:credential-code:")
                    && everything.matches(value).count() >= 2,
                "{presentation}: {token}\n{everything}"
            );
        }
    }
}

#[tokio::test]
async fn a_placeholder_sent_elsewhere_goes_as_it_is_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), CODE_HOST_TOKEN);
    let (addr, seen) = upstream(echo).await;
    let bearer = format!("Bearer {CODE_HOST_PLACEHOLDER}");
    let cases = [
        // Not one of the entry's hosts (nor under its one-label wildcard).
        (
            "collector.evil.test",
            "authorization",
            bearer.clone(),
            "placeholder sent to collector.evil.test: not one of credential code's hosts",
        ),
        (
            "a.b.code.test",
            "authorization",
            bearer.clone(),
            "placeholder sent to a.b.code.test: not one of credential code's hosts",
        ),
        // The entry's host, but not in its presentation.
        (
            "api.code.test",
            "authorization",
            format!("token {CODE_HOST_PLACEHOLDER}"),
            "placeholder sent to api.code.test: it was not presented as Authorization: Bearer",
        ),
        (
            "api.code.test",
            "x-exfil",
            CODE_HOST_PLACEHOLDER.to_string(),
            "placeholder sent to api.code.test: it was in the x-exfil header",
        ),
    ];
    for (host, name, value, note) in cases {
        let pod = Pod::brokered(host, addr, &code_table(dir.path(), "Bearer", None), true);
        let (status, _) = pod
            .send(with_header(request("GET", "/", ""), name, &value))
            .await;
        assert_eq!(status, StatusCode::OK);
        let got = seen.lock().unwrap().last().unwrap().headers.clone();
        assert_eq!(got[name], value.as_str(), "it went as it was");
        assert!(pod.sink.kind("token").is_empty(), "{host}");
        let recorded = pod.sink.kind("placeholder");
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0]["credential"], "code");
        assert_eq!(recorded[0]["host"], host);
        let text = recorded[0]["note"].as_str().unwrap();
        assert!(text.starts_with(note), "{text}");
        assert_eq!((pod.counter(false), pod.counter(true)), (0, 1));
        let everything = serde_json::to_string(&pod.sink.json()).unwrap();
        assert!(!everything.contains(CODE_HOST_TOKEN));
    }
    // In a request body, however it is split.
    let pod = Pod::brokered(
        "collector.evil.test",
        addr,
        &code_table(dir.path(), "Bearer", None),
        true,
    );
    let chunks = [
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(format!(
            "token={}",
            &CODE_HOST_PLACEHOLDER[..20]
        )))),
        Ok(http_body::Frame::data(Bytes::from(format!(
            "{}&again={CODE_HOST_PLACEHOLDER}",
            &CODE_HOST_PLACEHOLDER[20..]
        )))),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(chunks))
        .map_err(|e| match e {})
        .boxed();
    let req = Request::builder()
        .method("POST")
        .uri("/collect")
        .body(body)
        .unwrap();
    pod.send(req).await;
    let got = seen.lock().unwrap().last().unwrap().body.clone();
    assert_eq!(
        got,
        format!("token={CODE_HOST_PLACEHOLDER}&again={CODE_HOST_PLACEHOLDER}").as_bytes(),
        "it went as it was"
    );
    let recorded = pod.sink.kind("placeholder");
    assert_eq!(recorded.len(), 1, "one record a body: {recorded:?}");
    assert_eq!(
        recorded[0]["note"],
        "placeholder sent to collector.evil.test: it was in the request body"
    );
    assert_eq!(pod.counter(true), 1);

    // In the request target.
    let pod = Pod::brokered(
        "api.code.test",
        addr,
        &code_table(dir.path(), "Bearer", None),
        true,
    );
    let uri = format!("/search?q={CODE_HOST_PLACEHOLDER}");
    pod.send(request("GET", &uri, "")).await;
    let recorded = pod.sink.kind("placeholder");
    assert_eq!(
        recorded[0]["note"],
        "placeholder sent to api.code.test: it was in the request target"
    );
}

#[tokio::test]
async fn no_brokered_credential_goes_over_a_connection_whose_tls_was_not_verified() {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), CODE_HOST_TOKEN);
    let (addr, seen) = upstream(echo).await;
    // Plain HTTP to the entry's host: no override, no TLS.
    let pod = Pod::brokered(
        "api.code.test",
        addr,
        &code_table(dir.path(), "Bearer", None),
        false,
    );
    pod.send(with_header(
        request("GET", "/", ""),
        "authorization",
        &format!("Bearer {CODE_HOST_PLACEHOLDER}"),
    ))
    .await;
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.authorization.as_deref() != Some(&format!("Bearer {CODE_HOST_TOKEN}"))),
        "the real value never went"
    );
    assert!(pod.sink.kind("token").is_empty());
    let recorded = pod.sink.kind("placeholder");
    assert_eq!(
        recorded[0]["note"],
        "placeholder sent to api.code.test: the connection is plain HTTP, not TLS verified for the host"
    );
    assert_eq!((pod.counter(false), pod.counter(true)), (0, 1));
}

#[tokio::test]
async fn a_rotated_secret_is_swapped_in_without_a_restart_and_neither_value_recorded() {
    const ROTATED: &str = "cht-0aa1bb2cc3dd4ee5ff60718293a4b5c6";
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), CODE_HOST_TOKEN);
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::brokered(
        "api.code.test",
        addr,
        &code_table(dir.path(), "Bearer", None),
        true,
    );
    let send = || {
        pod.send(with_header(
            request("GET", "/", ""),
            "authorization",
            &format!("Bearer {CODE_HOST_PLACEHOLDER}"),
        ))
    };
    send().await;
    secret_file(dir.path(), ROTATED);
    send().await;
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter()
            .map(|s| s.authorization.clone().unwrap())
            .collect::<Vec<_>>(),
        [
            format!("Bearer {CODE_HOST_TOKEN}"),
            format!("Bearer {ROTATED}")
        ]
    );
    assert_eq!(pod.counter(false), 2);
    let everything = serde_json::to_string(&pod.sink.json()).unwrap();
    assert!(!everything.contains(CODE_HOST_TOKEN) && !everything.contains(ROTATED));
}

#[tokio::test]
async fn a_brokered_credential_that_cannot_be_read_refuses_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = upstream(echo).await;
    let pod = Pod::brokered(
        "api.code.test",
        addr,
        &code_table(dir.path(), "Bearer", None),
        true,
    );
    let (status, body) = pod
        .send(with_header(
            request("GET", "/", ""),
            "authorization",
            &format!("Bearer {CODE_HOST_PLACEHOLDER}"),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("credential code for api.code.test could not be read"),
        "{body}"
    );
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(pod.sink.kind("blocked")[0]["reason"], "credentials");
}
