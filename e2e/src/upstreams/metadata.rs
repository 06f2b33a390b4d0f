//! A fake GKE metadata server: the paths google-cloud-auth, google-auth (Python), gcloud and
//! gsutil ask for, answered for one project, node and service account, with the real access
//! token. Like the real one it insists on `Metadata-Flavor: Google` and refuses requests that
//! carry `X-Forwarded-For`.

use super::server::{Body, full, text};
use super::{
    CLUSTER_NAME, NUMERIC_PROJECT_ID, PROJECT_ID, SCOPES, SERVICE_ACCOUNT_EMAIL, TOKEN_EXPIRES_IN,
    ZONE,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &str = "/computeMetadata/v1/";

/// The metadata server's state: only the token varies between tests.
pub(crate) struct Metadata {
    token: String,
}

/// What a path resolves to.
#[derive(Debug, PartialEq)]
enum Answer {
    Text(String),
    Json(Value),
    NotFound,
    BadRequest(&'static str),
}

impl Metadata {
    pub fn new(token: String) -> Self {
        Self { token }
    }

    /// Answer a request as the GKE metadata server would.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Body> {
        let path = request.uri().path();
        if path == "/" {
            // google-auth's "am I on GCE?" ping looks only at the status and this header.
            return with_flavor(text(StatusCode::OK, "computeMetadata/\n"));
        }
        let flavor_ok = request
            .headers()
            .get("metadata-flavor")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
        if !flavor_ok {
            return with_flavor(text(
                StatusCode::FORBIDDEN,
                "Missing required header: Metadata-Flavor\n",
            ));
        }
        if request.headers().contains_key("x-forwarded-for") {
            return with_flavor(text(
                StatusCode::FORBIDDEN,
                "Request denied: the metadata server refuses requests with X-Forwarded-For\n",
            ));
        }
        let Some(key) = path.strip_prefix(PREFIX) else {
            if path == "/computeMetadata/" || path == "/computeMetadata" {
                return with_flavor(text(StatusCode::OK, "v1/\n"));
            }
            return with_flavor(text(StatusCode::NOT_FOUND, "Not Found\n"));
        };
        let query = request.uri().query().unwrap_or("");
        let answer = answer(key, query, &self.token, now());
        let alt_json = query_param(query, "alt") == Some("json".into());
        let response = match answer {
            Answer::Text(value) if alt_json => json_response(Value::String(value)),
            Answer::Text(value) => {
                let mut response = text(StatusCode::OK, value);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/text"),
                );
                response
            }
            Answer::Json(value) => json_response(value),
            Answer::NotFound => text(StatusCode::NOT_FOUND, "Not Found\n"),
            Answer::BadRequest(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
        };
        with_flavor(response)
    }
}

fn json_response(value: Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn with_flavor(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    headers.insert(
        "server",
        http::HeaderValue::from_static("Metadata Server for VM"),
    );
    response
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The value at `key` (the path after `/computeMetadata/v1/`).
fn answer(key: &str, query: &str, token: &str, now: u64) -> Answer {
    let recursive = query_param(query, "recursive").is_some_and(|v| v == "true");
    let lines = |items: &[&str]| Answer::Text(items.iter().map(|i| format!("{i}\n")).collect());
    match key.trim_end_matches('/') {
        "" => lines(&["instance/", "oslogin/", "project/", "universe/"]),
        "project" => lines(&["attributes/", "numeric-project-id", "project-id"]),
        "project/project-id" => Answer::Text(PROJECT_ID.into()),
        "project/numeric-project-id" => Answer::Text(NUMERIC_PROJECT_ID.into()),
        "project/attributes" => Answer::Text(String::new()),
        "universe" => lines(&["universe-domain"]),
        "universe/universe-domain" => Answer::Text("googleapis.com".into()),
        "instance" => lines(&[
            "attributes/",
            "hostname",
            "id",
            "name",
            "service-accounts/",
            "zone",
        ]),
        "instance/zone" => Answer::Text(format!("projects/{NUMERIC_PROJECT_ID}/zones/{ZONE}")),
        "instance/id" => Answer::Text("4520031799277581759".into()),
        "instance/name" => Answer::Text(format!("gke-{CLUSTER_NAME}-default-pool-node")),
        "instance/hostname" => Answer::Text(format!(
            "gke-{CLUSTER_NAME}-default-pool-node.{ZONE}.c.{PROJECT_ID}.internal"
        )),
        "instance/attributes" => lines(&["cluster-location", "cluster-name", "cluster-uid"]),
        "instance/attributes/cluster-name" => Answer::Text(CLUSTER_NAME.into()),
        "instance/attributes/cluster-location" => Answer::Text(region().into()),
        "instance/attributes/cluster-uid" => {
            Answer::Text("7c3f9a4e2b1d4c5e8f6a0b9c8d7e6f5a".into())
        }
        "instance/service-accounts" if recursive => Answer::Json(json!({
            "default": account_info(),
            SERVICE_ACCOUNT_EMAIL: account_info(),
        })),
        "instance/service-accounts" => lines(&["default/", &format!("{SERVICE_ACCOUNT_EMAIL}/")]),
        other => match other.strip_prefix("instance/service-accounts/") {
            Some(rest) => service_account(rest, query, recursive, token, now),
            None => Answer::NotFound,
        },
    }
}

/// `instance/service-accounts/<default|email>[/<item>]`.
fn service_account(rest: &str, query: &str, recursive: bool, token: &str, now: u64) -> Answer {
    let (account, item) = rest.split_once('/').unwrap_or((rest, ""));
    if account != "default" && account != SERVICE_ACCOUNT_EMAIL {
        return Answer::NotFound;
    }
    match item {
        "" if recursive => Answer::Json(account_info()),
        "" => Answer::Text("aliases\nemail\nidentity\nscopes\ntoken\n".into()),
        "aliases" => Answer::Text("default\n".into()),
        "email" => Answer::Text(SERVICE_ACCOUNT_EMAIL.into()),
        "scopes" => Answer::Text(SCOPES.iter().map(|s| format!("{s}\n")).collect()),
        "token" => Answer::Json(json!({
            "access_token": token,
            "expires_in": TOKEN_EXPIRES_IN,
            "token_type": "Bearer",
        })),
        "identity" => match query_param(query, "audience") {
            Some(audience) if !audience.is_empty() => Answer::Text(identity_token(&audience, now)),
            _ => Answer::BadRequest("non-empty audience parameter required"),
        },
        _ => Answer::NotFound,
    }
}

fn account_info() -> Value {
    json!({
        "aliases": ["default"],
        "email": SERVICE_ACCOUNT_EMAIL,
        "scopes": SCOPES,
    })
}

fn region() -> &'static str {
    ZONE.rsplit_once('-')
        .map(|(region, _)| region)
        .unwrap_or(ZONE)
}

/// A JWT shaped like Google's identity tokens. Its signature is not valid: nothing in the tests
/// verifies it, and a test can recognise it by its `kid`.
fn identity_token(audience: &str, now: u64) -> String {
    let header = json!({"alg": "RS256", "kid": "cassette-e2e-fake", "typ": "JWT"});
    let claims = json!({
        "aud": audience,
        "azp": "103456789012345678901",
        "email": SERVICE_ACCOUNT_EMAIL,
        "email_verified": true,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "103456789012345678901",
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"cassette-e2e-fake-signature"),
    )
}

/// A query parameter's value, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, flavor: bool) -> Response<Body> {
        let mut builder = Request::builder().uri(path);
        if flavor {
            builder = builder.header("Metadata-Flavor", "Google");
        }
        Metadata::new("ya29.real".into()).respond(&builder.body(()).unwrap())
    }

    #[test]
    fn token_is_the_real_one() {
        let answer = answer(
            "instance/service-accounts/default/token",
            "",
            "ya29.real",
            0,
        );
        assert_eq!(
            answer,
            Answer::Json(
                json!({"access_token": "ya29.real", "expires_in": 3599, "token_type": "Bearer"})
            )
        );
        let by_email = answer_for(&format!(
            "instance/service-accounts/{SERVICE_ACCOUNT_EMAIL}/token"
        ));
        assert!(matches!(by_email, Answer::Json(_)));
    }

    fn answer_for(key: &str) -> Answer {
        answer(key, "", "t", 0)
    }

    #[test]
    fn gcloud_and_gsutil_paths_answer() {
        assert_eq!(
            answer_for("project/numeric-project-id"),
            Answer::Text(NUMERIC_PROJECT_ID.into())
        );
        assert_eq!(
            answer_for("instance/service-accounts/default/email"),
            Answer::Text(SERVICE_ACCOUNT_EMAIL.into())
        );
        for listing in ["instance/service-accounts", "instance/service-accounts/"] {
            let Answer::Text(text) = answer_for(listing) else {
                panic!("{listing} is a listing");
            };
            assert!(text.contains("default/"));
        }
        assert_eq!(
            answer(
                "instance/service-accounts/default/",
                "recursive=true",
                "t",
                0
            ),
            Answer::Json(account_info())
        );
        assert_eq!(
            answer_for("universe/universe-domain"),
            Answer::Text("googleapis.com".into())
        );
        assert_eq!(
            answer_for("instance/attributes/cluster-name"),
            Answer::Text(CLUSTER_NAME.into())
        );
        assert_eq!(
            answer_for("instance/service-accounts/other@x/token"),
            Answer::NotFound
        );
    }

    #[test]
    fn identity_needs_an_audience_and_names_it() {
        assert!(matches!(
            answer_for("instance/service-accounts/default/identity"),
            Answer::BadRequest(_)
        ));
        let Answer::Text(jwt) = answer(
            "instance/service-accounts/default/identity",
            "audience=https%3A%2F%2Fexample.com&format=full",
            "t",
            100,
        ) else {
            panic!("identity is a token");
        };
        let claims = jwt.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://example.com");
        assert_eq!(claims["exp"], 3700);
    }

    #[test]
    fn the_flavor_header_is_required() {
        assert_eq!(
            get("/computeMetadata/v1/project/project-id", false).status(),
            StatusCode::FORBIDDEN
        );
        let ok = get("/computeMetadata/v1/project/project-id", true);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["metadata-flavor"], "Google");
        // The ping needs no header but gets one back.
        let ping = get("/", false);
        assert_eq!(ping.status(), StatusCode::OK);
        assert_eq!(ping.headers()["metadata-flavor"], "Google");
    }

    #[test]
    fn forwarded_requests_are_refused() {
        let request = Request::builder()
            .uri("/computeMetadata/v1/instance/service-accounts/default/token")
            .header("Metadata-Flavor", "Google")
            .header("X-Forwarded-For", "10.0.0.1")
            .body(())
            .unwrap();
        let response = Metadata::new("t".into()).respond(&request);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
