//! `/echo`: answers with what arrived — method, path, HTTP version, TLS name and ALPN, every
//! header, and the body's length and SHA-256 — so a test can see what an interceptor in between
//! changed.

use super::server::{Body, ConnInfo, full};
use anyhow::{Context, Result};
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use std::collections::BTreeMap;

pub(crate) async fn respond(request: Request<Incoming>, info: &ConnInfo) -> Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the request body")?
        .to_bytes();
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    let sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let answer = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/"),
        "version": format!("{:?}", parts.version),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "sni": info.sni,
        "alpn": info.alpn,
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": sha256,
    });
    Ok(Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(full(format!("{answer}\n")))?)
}
