//! HAR 1.2 (<http://www.softwareishard.com/blog/har-12-spec/>) from timelines, for the
//! network panels of Chromium and Firefox. cassette's own facts go into fields prefixed
//! `_`, which HAR reserves for extensions: `_exchange`, `_pod`, `_decision`, `_rule`,
//! `_service`, `_permission`, `_masked`, `_blocked`, `_tokens`, `_git`, `_error`. Pure.
//!
//! Sizes the recording does not know (header bytes on the wire) are -1, as the spec says;
//! bodies are as recorded, so they hold masks instead of secrets, and a truncated body says
//! so in `comment` and `_truncated`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::render::decision;
use crate::timeline::{BodyData, Exchange, Timeline};

/// A HAR document for the timelines of one or more recordings (`(pod label, timeline)`),
/// entries in order of their start.
pub fn document(recordings: &[(String, Timeline)], comment: &str) -> Value {
    let mut entries: Vec<(String, u64, Value)> = Vec::new();
    for (pod, t) in recordings {
        for x in t.exchanges_in_order() {
            if x.request.is_none() {
                continue; // nothing to show as a request (its records were cut off)
            }
            entries.push((x.first_time.clone(), x.first_seq, entry(x, pod)));
        }
    }
    entries.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    json!({
        "log": {
            "version": "1.2",
            "creator": {"name": "kubectl-cassette", "version": env!("CARGO_PKG_VERSION")},
            "entries": entries.into_iter().map(|e| e.2).collect::<Vec<_>>(),
            "comment": comment,
        }
    })
}

/// `2026-05-01T12:00:00.250Z`: ISO 8601 with milliseconds, which every HAR reader parses.
fn started(time: &str) -> String {
    match crate::timeline::parse_time(time) {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => time.to_string(),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One HAR entry for one exchange.
pub fn entry(x: &Exchange, pod: &str) -> Value {
    let req = x.request.as_ref();
    let url = req.map_or(String::new(), |r| {
        format!("{}://{}{}", r.scheme, r.authority, r.path)
    });
    let req_headers = req.map(|r| r.headers.as_slice()).unwrap_or_default();
    let mut request = json!({
        "method": req.map_or("", |r| r.method.as_str()),
        "url": url,
        "httpVersion": req.map_or("", |r| r.version.as_str()),
        "cookies": cookies(req_headers, "cookie"),
        "headers": headers(req_headers),
        "queryString": query_string(req.map_or("", |r| r.path.as_str())),
        "headersSize": -1,
        "bodySize": body_size(&x.request_body, x.end.as_ref().map(|e| e.bytes_up)),
    });
    if !x.request_body.is_empty() {
        let mut post = json!({
            "mimeType": header(req_headers, "content-type").unwrap_or(""),
            "params": [],
        });
        let (text, encoding) = content_text(&x.request_body);
        post["text"] = json!(text);
        if let Some(e) = encoding {
            post["_encoding"] = json!(e);
        }
        if let Some(c) = truncation(&x.request_body) {
            post["comment"] = json!(c);
        }
        request["postData"] = post;
    }

    let resp = x.response.as_ref();
    let resp_headers = resp.map(|r| r.headers.as_slice()).unwrap_or_default();
    let status = resp.map_or(0, |r| r.status);
    let mut content = json!({
        "size": x.response_body.full_length(),
        "mimeType": header(resp_headers, "content-type").unwrap_or("x-unknown"),
    });
    if !x.response_body.is_empty() {
        let (text, encoding) = content_text(&x.response_body);
        content["text"] = json!(text);
        if let Some(e) = encoding {
            content["encoding"] = json!(e);
        }
    }
    if let Some(c) = truncation(&x.response_body) {
        content["comment"] = json!(c);
        content["_truncated"] = json!(true);
        content["_storedSize"] = json!(x.response_body.bytes.len());
    }
    if let Some(d) = &x.response_body.digest {
        content["_digest"] = json!(d);
    }
    let response = json!({
        "status": status,
        "statusText": status_text(status),
        "httpVersion": resp.map_or(req.map_or("", |r| r.version.as_str()), |r| r.version.as_str()),
        "cookies": cookies(resp_headers, "set-cookie"),
        "headers": headers(resp_headers),
        "content": content,
        "redirectURL": header(resp_headers, "location").unwrap_or(""),
        "headersSize": -1,
        "bodySize": if resp.is_some() {
            body_size(&x.response_body, x.end.as_ref().map(|e| e.bytes_down))
        } else {
            json!(-1)
        },
    });

    let (timings, time) = timings(x);
    let mut e = json!({
        "startedDateTime": started(x.request_time.as_deref().unwrap_or(&x.first_time)),
        "time": time,
        "request": request,
        "response": response,
        "cache": {},
        "timings": timings,
        "_exchange": x.id,
        "_run": x.run,
        "_pod": pod,
        "_decision": decision(x),
        "_masked": crate::render::masked(x),
    });
    if let Some(r) = req {
        e["connection"] = json!(r.conn.to_string());
    }
    if let Some(end) = &x.end {
        if let Some(rule) = &end.rule {
            e["_rule"] = json!(rule);
        }
        if let Some(c) = &end.classification {
            if let Some(s) = &c.service {
                e["_service"] = json!(s);
            }
            if let Some(p) = &c.permission {
                e["_permission"] = json!(p);
            }
            if let Some(g) = &c.git_service {
                e["_gitService"] = json!(g);
            }
        }
        if let Some(err) = &end.error {
            e["_error"] = json!(err);
        }
    }
    if !x.blocked.is_empty() {
        e["_blocked"] = serde_json::to_value(&x.blocked).unwrap_or_default();
    }
    if !x.tokens.is_empty() {
        e["_tokens"] = serde_json::to_value(&x.tokens).unwrap_or_default();
    }
    if !x.git.is_empty() {
        e["_git"] = serde_json::to_value(&x.git).unwrap_or_default();
    }
    if !x.reviews.is_empty() {
        e["_reviews"] = serde_json::to_value(&x.reviews).unwrap_or_default();
    }
    e
}

/// HAR timings from the recorded ones, and the entry's `time` (their sum, as the spec
/// defines it). `connect` includes `ssl`, as the spec says.
fn timings(x: &Exchange) -> (Value, f64) {
    let Some(end) = &x.end else {
        return (json!({"send": 0, "wait": 0, "receive": 0}), 0.0);
    };
    let t = &end.timings;
    let connect = match (t.connect_us, t.tls_us) {
        (None, None) => None,
        (c, s) => Some(c.unwrap_or(0) + s.unwrap_or(0)),
    };
    let send = t.request_sent_us.unwrap_or(0);
    let wait = t.ttfb_us.unwrap_or(0);
    let before = connect.unwrap_or(0) + send + wait;
    let receive = t.total_us.saturating_sub(before);
    let mut v = json!({
        "blocked": -1,
        "dns": -1,
        "connect": connect.map_or(-1.0, ms),
        "send": ms(send),
        "wait": ms(wait),
        "receive": ms(receive),
        "ssl": t.tls_us.map_or(-1.0, ms),
    });
    if let Some(s) = t.sidecar_us {
        v["_sidecar"] = json!(ms(s));
    }
    (v, ms(before + receive))
}

fn body_size(b: &BodyData, counted: Option<u64>) -> Value {
    json!(counted.unwrap_or(b.full_length()))
}

/// The body as HAR text: UTF-8 as is, anything else base64 (with the encoding named).
fn content_text(b: &BodyData) -> (String, Option<&'static str>) {
    match std::str::from_utf8(&b.bytes) {
        Ok(text) if !b.binary => (text.to_string(), None),
        _ => (B64.encode(&b.bytes), Some("base64")),
    }
}

fn truncation(b: &BodyData) -> Option<String> {
    b.truncated.then(|| {
        format!(
            "truncated at {} of {} bytes by cassette (maxBodyBytes); digest {}",
            b.bytes.len(),
            b.full_length(),
            b.digest.as_deref().unwrap_or("-")
        )
    })
}

fn headers(h: &[(String, String)]) -> Vec<Value> {
    h.iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `Cookie: a=1; b=2` → two cookies; each `Set-Cookie` → one (attributes left out).
fn cookies(h: &[(String, String)], name: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (n, v) in h {
        if !n.eq_ignore_ascii_case(name) {
            continue;
        }
        let pairs: Vec<&str> = if name == "cookie" {
            v.split(';').collect()
        } else {
            v.split(';').take(1).collect()
        };
        for pair in pairs {
            if let Some((k, val)) = pair.trim().split_once('=') {
                out.push(json!({"name": k.trim(), "value": val.trim()}));
            }
        }
    }
    out
}

fn query_string(path: &str) -> Vec<Value> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            json!({"name": percent_decode(k), "value": percent_decode(v)})
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = query_string("/o?prefix=a%2Fb&x=1+2&flag");
        assert_eq!(
            q,
            vec![
                json!({"name": "prefix", "value": "a/b"}),
                json!({"name": "x", "value": "1 2"}),
                json!({"name": "flag", "value": ""}),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn cookies_from_both_sides() {
        let h = vec![
            ("Cookie".to_string(), "a=1; b=2".to_string()),
            (
                "set-cookie".to_string(),
                "s=3; Path=/; HttpOnly".to_string(),
            ),
        ];
        assert_eq!(cookies(&h, "cookie").len(), 2);
        assert_eq!(
            cookies(&h, "set-cookie"),
            vec![json!({"name": "s", "value": "3"})]
        );
    }

    #[tokio::test]
    async fn har_of_a_real_recording() {
        let (_f, t) = crate::timeline::fixture_timeline().await;
        let doc = document(&[("agent-0-5f1c".to_string(), t)], "fixture");
        let log = &doc["log"];
        assert_eq!(log["version"], "1.2");
        assert_eq!(log["creator"]["name"], "kubectl-cassette");
        let entries = log["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 5);

        let list = &entries[0];
        assert_eq!(list["_exchange"], 1);
        assert_eq!(list["_pod"], "agent-0-5f1c");
        assert_eq!(list["request"]["method"], "GET");
        assert_eq!(
            list["request"]["url"],
            "https://storage.googleapis.com/storage/v1/b/logs/o?prefix=ci%2F&maxResults=2"
        );
        assert_eq!(
            list["request"]["queryString"],
            json!([{"name": "prefix", "value": "ci/"}, {"name": "maxResults", "value": "2"}])
        );
        assert!(list.get("postData").is_none() && list["request"].get("postData").is_none());
        assert_eq!(list["response"]["status"], 200);
        assert_eq!(list["response"]["statusText"], "OK");
        assert_eq!(
            list["response"]["content"]["mimeType"],
            "application/json; charset=UTF-8"
        );
        assert_eq!(
            list["response"]["content"]["text"],
            r#"{"items":[{"name":"ci/build.log"}]}"#
        );
        assert_eq!(list["response"]["content"]["size"], 35);
        assert_eq!(list["response"]["bodySize"], 35);
        assert_eq!(list["response"]["headersSize"], -1);
        // connect includes ssl; receive is what remains of the total; time is the sum.
        assert_eq!(list["timings"]["connect"], 5.0);
        assert_eq!(list["timings"]["ssl"], 3.0);
        assert_eq!(list["timings"]["send"], 0.1);
        assert_eq!(list["timings"]["wait"], 4.0);
        assert!((list["timings"]["receive"].as_f64().unwrap() - 3.2).abs() < 1e-9);
        assert!((list["time"].as_f64().unwrap() - 12.3).abs() < 1e-9);
        assert_eq!(list["_permission"], "storage.objects.list");
        assert_eq!(list["_decision"], "allow");
        assert_eq!(list["_masked"], 1);
        assert_eq!(
            list["_tokens"][0]["account"],
            "agent@proj.iam.gserviceaccount.com"
        );
        assert!(list["startedDateTime"].as_str().unwrap().ends_with('Z'));
        assert_eq!(list["startedDateTime"].as_str().unwrap().len(), 24);

        let paste = &entries[2];
        assert_eq!(paste["request"]["postData"]["mimeType"], "application/json");
        let posted = paste["request"]["postData"]["text"].as_str().unwrap();
        assert!(posted.contains("«masked:"), "{posted}");
        assert!(!posted.contains("BEGIN PRIVATE KEY"), "{posted}");
        assert_eq!(
            paste["response"]["redirectURL"],
            "https://paste.example.com/p/1"
        );
        assert_eq!(paste["response"]["statusText"], "Created");

        let push = &entries[3];
        assert_eq!(push["_decision"], "deny (no-push-main)");
        assert_eq!(push["_rule"], "no-push-main");
        assert_eq!(push["_blocked"][0]["reason"], "policy");
        assert_eq!(push["_git"][0]["updates"][0]["ref"], "refs/heads/main");
        assert_eq!(push["response"]["status"], 0, "no response was recorded");
        assert_eq!(push["response"]["bodySize"], -1);

        let upload = &entries[4];
        let post = &upload["request"]["postData"];
        assert_eq!(post["_encoding"], "base64");
        let stored = B64.decode(post["text"].as_str().unwrap()).unwrap();
        let blob: Vec<u8> = (0..=255u8)
            .cycle()
            .take(1100)
            .map(|b| b.wrapping_mul(37) | 0x80)
            .collect();
        assert_eq!(stored, blob[..1024]);
        assert!(
            post["comment"]
                .as_str()
                .unwrap()
                .starts_with("truncated at 1024 of 1100 bytes")
        );
        assert_eq!(upload["request"]["bodySize"], 1100);
    }
}
