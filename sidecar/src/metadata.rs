//! The metadata shim on 15080: what the agent reaches when it asks 169.254.169.254.
//!
//! It answers like the GKE metadata server for what clients ask (project, zone, service-account
//! email and scopes, universe domain) and hands out the placeholder instead of an access
//! token. Identity tokens are refused unless the sidecar was started with them allowed. It
//! never forwards a token request to the real server on the agent's behalf.

use crate::broker::Identity;
use crate::credentials::Placeholder;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use std::sync::Arc;

/// How long the placeholder claims to be valid; clients refresh before then, and the
/// placeholder stays the same for the life of the sidecar.
const PLACEHOLDER_EXPIRES_IN: u64 = 3599;

/// The shim's state.
pub struct Shim {
    pub identity: Identity,
    pub placeholder: Placeholder,
    pub allow_identity_tokens: bool,
    /// Where identity tokens come from when allowed (the real metadata host).
    pub metadata_host: String,
}

/// What the shim did with a request, for the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    Value,
    Placeholder,
    IdentityToken,
    Refused(&'static str),
    NotFound,
}

impl Shim {
    /// Answer one request.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> (Response<Full<Bytes>>, Served) {
        if !flavor_ok(&req) {
            return (
                text(
                    StatusCode::FORBIDDEN,
                    "Missing required header \"Metadata-Flavor\": \"Google\"\n",
                ),
                Served::Refused("missing Metadata-Flavor header"),
            );
        }
        if req.headers().contains_key("x-forwarded-for") {
            return (
                text(
                    StatusCode::FORBIDDEN,
                    "Request denied: X-Forwarded-For present\n",
                ),
                Served::Refused("X-Forwarded-For present"),
            );
        }
        if req.uri().path() == "/" {
            // google-auth pings the root to decide it runs on Google Cloud.
            return (text(StatusCode::OK, "computeMetadata/\n"), Served::Value);
        }
        let Some(path) = req.uri().path().strip_prefix("/computeMetadata/v1") else {
            return (text(StatusCode::NOT_FOUND, "Not Found\n"), Served::NotFound);
        };
        let path = path.trim_start_matches('/');
        let query = req.uri().query().unwrap_or("");
        let recursive = query
            .split('&')
            .any(|kv| kv.eq_ignore_ascii_case("recursive=true"));
        let id = &self.identity;

        // Service-account paths: default or the email itself.
        if let Some(rest) = path.strip_prefix("instance/service-accounts") {
            let rest = rest.trim_start_matches('/');
            if rest.is_empty() {
                if recursive {
                    let account = self.account_json();
                    let body = serde_json::json!({"default": account, id.email.clone(): account});
                    return (json(&body), Served::Value);
                }
                return (
                    text(StatusCode::OK, &format!("default/\n{}/\n", id.email)),
                    Served::Value,
                );
            }
            let (account, leaf) = rest.split_once('/').unwrap_or((rest, ""));
            if account != "default" && account != id.email {
                return (text(StatusCode::NOT_FOUND, "Not Found\n"), Served::NotFound);
            }
            return match leaf {
                "" if recursive => (json(&self.account_json()), Served::Value),
                "" => (
                    text(StatusCode::OK, "aliases\nemail\nidentity\nscopes\ntoken\n"),
                    Served::Value,
                ),
                "email" => (text(StatusCode::OK, &id.email), Served::Value),
                "aliases" => (text(StatusCode::OK, "default"), Served::Value),
                "scopes" => (text(StatusCode::OK, &id.scopes.join("\n")), Served::Value),
                "token" => {
                    let body = serde_json::json!({
                        "access_token": self.placeholder.as_str(),
                        "expires_in": PLACEHOLDER_EXPIRES_IN,
                        "token_type": "Bearer",
                    });
                    (json(&body), Served::Placeholder)
                }
                "identity" => self.identity_token(query).await,
                _ => (text(StatusCode::NOT_FOUND, "Not Found\n"), Served::NotFound),
            };
        }

        let value = match path {
            "" => Some("instance/\nproject/\nuniverse/\n".to_string()),
            "project/project-id" => Some(id.project_id.clone()),
            "project/numeric-project-id" => Some(id.numeric_project_id.clone()),
            "project" | "project/" if recursive => {
                let body = serde_json::json!({
                    "projectId": id.project_id,
                    "numericProjectId": id.numeric_project_id.parse::<u64>().ok(),
                });
                return (json(&body), Served::Value);
            }
            "project/" | "project" => Some("numeric-project-id\nproject-id\n".to_string()),
            "instance/zone" => Some(id.zone.clone()),
            "instance/attributes/cluster-name" => id.cluster_name.clone(),
            "universe/universe-domain" => Some("googleapis.com".to_string()),
            _ => None,
        };
        match value {
            Some(v) => (text(StatusCode::OK, &v), Served::Value),
            None => (text(StatusCode::NOT_FOUND, "Not Found\n"), Served::NotFound),
        }
    }

    fn account_json(&self) -> serde_json::Value {
        serde_json::json!({
            "aliases": ["default"],
            "email": self.identity.email,
            "scopes": self.identity.scopes,
        })
    }

    async fn identity_token(&self, query: &str) -> (Response<Full<Bytes>>, Served) {
        if !self.allow_identity_tokens {
            // 404, as the real server answers what it does not serve: clients that fetch an
            // identity token opportunistically (gcloud does on every refresh) carry on, while
            // a 403 would make them report the metadata server as concealed.
            return (
                text(
                    StatusCode::NOT_FOUND,
                    "cassette: identity tokens are not handed to agents in this session\n",
                ),
                Served::Refused("identity tokens not allowed"),
            );
        }
        let path = format!("instance/service-accounts/default/identity?{query}");
        match crate::broker::get_value(&self.metadata_host, &path).await {
            Ok(token) => (text(StatusCode::OK, &token), Served::IdentityToken),
            Err(e) => (
                text(
                    StatusCode::BAD_GATEWAY,
                    &format!("cassette: could not get an identity token: {e:#}\n"),
                ),
                Served::Refused("identity token unavailable"),
            ),
        }
    }
}

fn flavor_ok<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.get("metadata-flavor")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"google"))
        || h.get("x-google-metadata-request")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    headers.insert(
        header::SERVER,
        http::HeaderValue::from_static("GKE Metadata Server"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "application/text", Bytes::from(body.to_string()))
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    response(
        StatusCode::OK,
        "application/json",
        Bytes::from(value.to_string()),
    )
}

/// One request the metadata shim answered.
pub struct MetadataExchange<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub request_headers: Vec<cassette_recording::record::Header>,
    pub status: u16,
    pub response_headers: Vec<cassette_recording::record::Header>,
    pub body: &'a [u8],
    pub served: &'a Served,
    /// How long the shim took to answer (a token may come from the real metadata server).
    pub elapsed: std::time::Duration,
}

/// Record one request the shim answered: the agent asking for identity facts or a token is
/// part of what it did, and what it was told (a placeholder) is part of what it saw.
pub fn record(recording: &crate::record::Recording, exchange: MetadataExchange<'_>) {
    use crate::refusal::{Cause, Refusal};
    use cassette_recording::record::{
        Classification, Decision, Direction, Event, ExchangeEnd, Request, Response, Timings,
    };
    let id = recording.next_exchange_id();
    recording.emit(Event::Request(Request {
        exchange: id,
        conn: 0,
        method: exchange.method.to_string(),
        scheme: "http".into(),
        authority: "metadata.google.internal".into(),
        path: exchange.path.to_string(),
        version: "HTTP/1.1".into(),
        headers: exchange.request_headers,
    }));
    recording.whole_body(id, Direction::Request, &[]);
    recording.emit(Event::Response(Response {
        exchange: id,
        status: exchange.status,
        version: "HTTP/1.1".into(),
        headers: exchange.response_headers,
        trailers: None,
    }));
    recording.whole_body(id, Direction::Response, exchange.body);
    let decision = match exchange.served {
        Served::Refused(why) => {
            Refusal::new(
                Cause::Metadata,
                StatusCode::from_u16(exchange.status).unwrap_or(StatusCode::FORBIDDEN),
                format!("metadata request {} refused: {why}", exchange.path),
            )
            .record(recording, Some(id));
            Decision::Deny
        }
        _ => Decision::Allow,
    };
    recording.exchange_done(0);
    let elapsed_us = exchange.elapsed.as_micros() as u64;
    recording.emit(Event::ExchangeEnd(ExchangeEnd {
        exchange: id,
        // The shim is the sidecar: all of the time is its own.
        timings: Timings {
            total_us: elapsed_us,
            sidecar_us: Some(elapsed_us),
            ..Timings::default()
        },
        bytes_up: 0,
        bytes_down: exchange.body.len() as u64,
        decision,
        rule: None,
        classification: Some(Classification {
            service: Some("metadata".into()),
            permission: None,
            git_service: None,
        }),
        masked: 0,
        masked_by: Default::default(),
        error: None,
        trailers: None,
        request_trailers: None,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn shim() -> Arc<Shim> {
        Arc::new(Shim {
            identity: Identity {
                project_id: "acme-agents".into(),
                numeric_project_id: "123456789".into(),
                zone: "projects/123456789/zones/europe-west1-b".into(),
                email: "coding-agent@acme-agents.iam.gserviceaccount.com".into(),
                scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
                cluster_name: Some("agents".into()),
            },
            placeholder: Placeholder::generate(),
            allow_identity_tokens: false,
            metadata_host: "127.0.0.1:9".into(),
        })
    }

    async fn get(shim: &Arc<Shim>, path: &str, flavor: bool) -> (StatusCode, String, Served) {
        let mut req = Request::get(path);
        if flavor {
            req = req.header("Metadata-Flavor", "Google");
        }
        let (resp, served) = shim.clone().handle(req.body(()).unwrap()).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), served)
    }

    #[tokio::test]
    async fn the_flavor_header_is_required() {
        let (status, body, _) = get(&shim(), "/computeMetadata/v1/project/project-id", false).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("Metadata-Flavor"));
    }

    #[tokio::test]
    async fn it_answers_what_gcloud_asks() {
        let s = shim();
        let cases = [
            (
                "/computeMetadata/v1/project/numeric-project-id",
                "123456789",
            ),
            ("/computeMetadata/v1/project/project-id", "acme-agents"),
            (
                "/computeMetadata/v1/instance/service-accounts/default/email",
                "coding-agent@acme-agents.iam.gserviceaccount.com",
            ),
            (
                "/computeMetadata/v1/universe/universe-domain",
                "googleapis.com",
            ),
            (
                "/computeMetadata/v1/instance/zone",
                "projects/123456789/zones/europe-west1-b",
            ),
        ];
        for (path, want) in cases {
            let (status, body, _) = get(&s, path, true).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, want), "{path}");
        }
        let (_, body, _) = get(&s, "/computeMetadata/v1/instance/service-accounts/", true).await;
        assert!(body.contains("default/") && body.contains("coding-agent@"));
        let (_, body, _) = get(
            &s,
            "/computeMetadata/v1/instance/service-accounts/coding-agent@acme-agents.iam.gserviceaccount.com/?recursive=true",
            true,
        )
        .await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["email"],
            "coding-agent@acme-agents.iam.gserviceaccount.com"
        );
    }

    #[tokio::test]
    async fn tokens_are_placeholders_and_identity_tokens_are_refused() {
        let s = shim();
        let (status, body, served) = get(
            &s,
            "/computeMetadata/v1/instance/service-accounts/default/token",
            true,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served, Served::Placeholder);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["access_token"], s.placeholder.as_str());
        assert_eq!(v["token_type"], "Bearer");
        assert!(v["expires_in"].as_u64().unwrap() > 60);

        let (status, _, served) = get(
            &s,
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
            true,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(matches!(served, Served::Refused(_)));

        let (status, _, _) = get(
            &s,
            "/computeMetadata/v1/instance/service-accounts/other@x.iam.gserviceaccount.com/token",
            true,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
