//! Test fixture: a real recording written by `cassette_recording::Recorder` to a temporary
//! `file://` sink — a Google Storage list with a token swap, a Secret Manager read whose
//! answer was masked, the agent sending that secret to a paste site, a push blocked by
//! policy, a binary upload truncated at `maxBodyBytes`, and a connection refused after
//! expiry. Shared by the unit tests and (through `#[path]`) the CLI tests.

#![allow(dead_code)]

use std::path::PathBuf;

use cassette_recording::record::{
    Blocked, Capture, Classification, ConnOpen, Decision, Direction, Event, ExchangeEnd, Git,
    RefUpdate, Request, Response, Timings, Tls, Token, TokenSwap,
};
use cassette_recording::{Recorder, RecorderConfig, RecordingPath};

/// The fingerprint key of the fixture session.
pub const FINGERPRINT_KEY: &[u8] = b"fingerprint-key-for-tests";
/// The secret that crossed the session (masked in the recording).
pub const SECRET: &str = "s3cret-db-password";

/// A written recording.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// `file://…/sink`.
    pub sink: String,
    /// `file://…/sink/agents/fix-ci/`: the session.
    pub session_uri: String,
    /// The recording's directory on disk.
    pub recording_dir: PathBuf,
    pub public_key: String,
}

fn mask(detector: &str, secret: &str) -> String {
    use cassette_rules::mask::{fingerprint, mask_text};
    mask_text(detector, &fingerprint(FINGERPRINT_KEY, secret.as_bytes()))
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn end(exchange: u64, up: u64, down: u64, decision: Decision) -> ExchangeEnd {
    ExchangeEnd {
        exchange,
        timings: Timings {
            connect_us: None,
            tls_us: None,
            request_sent_us: Some(100),
            ttfb_us: Some(4_000),
            total_us: 5_000,
            sidecar_us: Some(120),
        },
        bytes_up: up,
        bytes_down: down,
        decision,
        rule: None,
        classification: None,
        masked: 0,
        masked_by: Default::default(),
        error: None,
        trailers: None,
        request_trailers: None,
    }
}

fn google(permission: &str, service: &str) -> Option<Classification> {
    Some(Classification {
        service: Some(service.into()),
        permission: Some(permission.into()),
        git_service: None,
    })
}

/// The service-account key file the agent leaked (a made-up key).
pub const SERVICE_ACCOUNT_KEY: &str = r#"{
  "type": "service_account",
  "project_id": "proj",
  "private_key_id": "0123456789abcdef0123456789abcdef01234567",
  "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNb\n-----END PRIVATE KEY-----\n",
  "client_email": "deployer@proj.iam.gserviceaccount.com"
}"#;

/// What the agent posted: the key file, and the database password beside it.
pub fn service_account_upload() -> Vec<u8> {
    let key: serde_json::Value = serde_json::from_str(SERVICE_ACCOUNT_KEY).expect("key json");
    serde_json::to_vec(&serde_json::json!({"title": "creds", "key": key, "db_password": SECRET}))
        .expect("json")
}

/// The binary the agent uploaded in exchange 5: 1100 bytes, of which 1024 are stored.
pub fn upload_blob() -> Vec<u8> {
    (0..=255u8)
        .cycle()
        .take(1100)
        .map(|b| b.wrapping_mul(37) | 0x80)
        .collect()
}

/// One exchange of the agent with the metadata server, as the sidecar's shim records it.
async fn metadata(rec: &Recorder, exchange: u64, path: &str, masked: u64) {
    rec.record(Event::Request(Request {
        exchange,
        conn: 0,
        method: "GET".into(),
        scheme: "http".into(),
        authority: "metadata.google.internal".into(),
        path: path.into(),
        version: "HTTP/1.1".into(),
        headers: h(&[("metadata-flavor", "Google")]),
    }))
    .await
    .expect("recorded");
    rec.record(Event::Response(Response {
        exchange,
        status: 200,
        version: "HTTP/1.1".into(),
        headers: h(&[("metadata-flavor", "Google")]),
        trailers: None,
    }))
    .await
    .expect("recorded");
    let mut e = end(exchange, 0, 40, Decision::Allow);
    e.masked = masked;
    rec.record(Event::ExchangeEnd(e)).await.expect("recorded");
}

/// Writes the fixture recording and closes it (sealed segments and a signed manifest).
pub async fn write() -> Fixture {
    write_with(false).await
}

/// The fixture with what an auditor's filters are for besides: the agent's metadata-server
/// chatter (exchanges 6 and 8, the token answer masked), a storage DELETE refused by policy
/// with a 403 (7), and a gap, between exchange 5 and the refused connection.
pub async fn write_auditor() -> Fixture {
    write_with(true).await
}

async fn write_with(auditor: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink_dir = dir.path().join("sink");
    let sink = format!("file://{}", sink_dir.display());
    let path = RecordingPath {
        namespace: "agents".into(),
        session: "fix-ci".into(),
        pod: "agent-0".into(),
        pod_uid: "5f1c".into(),
    };
    let mut config = RecorderConfig::new(sink.clone(), dir.path().join("spool"), path);
    config.max_body_bytes = 1024;
    config.segment_max_bytes = 2048;
    // As the sidecar does: bodies are digested with the session's fingerprint key.
    config.digest_key = FINGERPRINT_KEY.to_vec();
    config.agent = Some("coding-agent".into());
    config.requested_by = Some("alice@example.com".into());
    let rec = Recorder::start(config).await.expect("recorder starts");
    let public_key = rec.public_key();
    let r = |e: Event| {
        let rec = rec.clone();
        async move {
            rec.record(e).await.expect("recorded");
        }
    };
    let masked_token = format!("Bearer {}", mask("google-oauth-token", "ya29.placeholder"));
    let masked_secret = mask("secret-field", SECRET);

    // 1: list objects, with the placeholder token swapped for a real one.
    r(Event::ConnOpen(ConnOpen {
        conn: 1,
        client: "10.0.0.5:40000".into(),
        dst: "142.250.1.1:443".into(),
        capture: Capture::Redirect,
    }))
    .await;
    r(Event::Tls(Tls {
        conn: 1,
        sni: Some("storage.googleapis.com".into()),
        alpn: Some("h2".into()),
        version: Some("TLSv1_3".into()),
        upstream_subject: Some("CN=*.googleapis.com".into()),
        verified: true,
        passthrough: false,
    }))
    .await;
    r(Event::Request(Request {
        exchange: 1,
        conn: 1,
        method: "GET".into(),
        scheme: "https".into(),
        authority: "storage.googleapis.com".into(),
        path: "/storage/v1/b/logs/o?prefix=ci%2F&maxResults=2".into(),
        version: "HTTP/2".into(),
        headers: h(&[
            ("authorization", &masked_token),
            ("accept", "application/json"),
        ]),
    }))
    .await;
    r(Event::Token(Token {
        exchange: 1,
        host: "storage.googleapis.com".into(),
        swap: TokenSwap::Bearer,
        account: Some("agent@proj.iam.gserviceaccount.com".into()),
        credential: None,
        header: None,
        value: None,
    }))
    .await;
    r(Event::Response(Response {
        exchange: 1,
        status: 200,
        version: "HTTP/2".into(),
        headers: h(&[("content-type", "application/json; charset=UTF-8")]),
        trailers: None,
    }))
    .await;
    let listing = br#"{"items":[{"name":"ci/build.log"}]}"#;
    let mut body = rec.body(1, Direction::Response);
    body.write(listing).await.expect("body");
    body.finish().await.expect("body");
    let mut e = end(1, 0, listing.len() as u64, Decision::Allow);
    e.timings.connect_us = Some(2_000);
    e.timings.tls_us = Some(3_000);
    e.timings.total_us = 12_300;
    e.classification = google("storage.objects.list", "storage.googleapis.com");
    e.masked = 1;
    r(Event::ExchangeEnd(e)).await;

    // 2: the agent reads a secret; the answer is masked.
    r(Event::Request(Request {
        exchange: 2,
        conn: 4,
        method: "GET".into(),
        scheme: "https".into(),
        authority: "secretmanager.googleapis.com".into(),
        path: "/v1/projects/p/secrets/db/versions/latest:access".into(),
        version: "HTTP/2".into(),
        headers: h(&[("authorization", &masked_token)]),
    }))
    .await;
    r(Event::Response(Response {
        exchange: 2,
        status: 200,
        version: "HTTP/2".into(),
        headers: h(&[("content-type", "application/json")]),
        trailers: None,
    }))
    .await;
    let answer = format!(r#"{{"payload":{{"data":"{masked_secret}"}}}}"#);
    let mut body = rec.body(2, Direction::Response);
    body.write(answer.as_bytes()).await.expect("body");
    body.finish().await.expect("body");
    let mut e = end(2, 0, answer.len() as u64, Decision::Allow);
    e.classification = google(
        "secretmanager.versions.access",
        "secretmanager.googleapis.com",
    );
    e.masked = 2;
    r(Event::ExchangeEnd(e)).await;

    // 3: … and uploads a service-account key with it to a paste site, masked by the real
    // masker of cassette-rules.
    r(Event::Request(Request {
        exchange: 3,
        conn: 2,
        method: "POST".into(),
        scheme: "https".into(),
        authority: "paste.example.com".into(),
        path: "/api/new".into(),
        version: "HTTP/1.1".into(),
        headers: h(&[("content-type", "application/json")]),
    }))
    .await;
    let upload = service_account_upload();
    let masker = cassette_rules::mask::Masker::new(None, FINGERPRINT_KEY).expect("masker");
    let (masked, summary) = masker.mask(cassette_rules::mask::BodyKind::Json, &upload);
    let mut body = rec.body(3, Direction::Request);
    body.write(&masked).await.expect("body");
    body.finish().await.expect("body");
    r(Event::Response(Response {
        exchange: 3,
        status: 201,
        version: "HTTP/1.1".into(),
        headers: h(&[("location", "https://paste.example.com/p/1")]),
        trailers: None,
    }))
    .await;
    let mut e = end(3, upload.len() as u64, 0, Decision::Allow);
    e.masked = summary.total();
    r(Event::ExchangeEnd(e)).await;

    // 4: a push to main, refused by policy.
    r(Event::Request(Request {
        exchange: 4,
        conn: 3,
        method: "POST".into(),
        scheme: "https".into(),
        authority: "source.developers.google.com".into(),
        path: "/p/proj/r/repo/git-receive-pack".into(),
        version: "HTTP/1.1".into(),
        headers: h(&[("content-type", "application/x-git-receive-pack-request")]),
    }))
    .await;
    r(Event::Git(Git {
        exchange: 4,
        service: "receive-pack".into(),
        updates: vec![RefUpdate {
            old: "1111111111111111111111111111111111111111".into(),
            new: "2222222222222222222222222222222222222222".into(),
            name: "refs/heads/main".into(),
        }],
        wants: vec![],
    }))
    .await;
    r(Event::Blocked(Blocked {
        exchange: Some(4),
        reason: "policy".into(),
        rule: Some("no-push-main".into()),
        message: "push to refs/heads/main refused by rule no-push-main".into(),
    }))
    .await;
    let mut e = end(4, 0, 0, Decision::Deny);
    e.rule = Some("no-push-main".into());
    // As the sidecar ends a refused exchange: with the refusal as its error.
    e.error = Some("push to refs/heads/main refused by rule no-push-main".into());
    e.classification = Some(Classification {
        service: None,
        permission: None,
        git_service: Some("receive-pack".into()),
    });
    r(Event::ExchangeEnd(e)).await;

    // 5: a binary upload, longer than maxBodyBytes.
    r(Event::Request(Request {
        exchange: 5,
        conn: 1,
        method: "PUT".into(),
        scheme: "https".into(),
        authority: "storage.googleapis.com".into(),
        path: "/upload/storage/v1/b/logs/o?uploadType=media&name=blob".into(),
        version: "HTTP/2".into(),
        headers: h(&[("content-type", "application/octet-stream")]),
    }))
    .await;
    let blob = upload_blob();
    let mut body = rec.body(5, Direction::Request);
    body.write(&blob).await.expect("body");
    body.finish().await.expect("body");
    r(Event::Response(Response {
        exchange: 5,
        status: 200,
        version: "HTTP/2".into(),
        headers: h(&[]),
        trailers: None,
    }))
    .await;
    let mut e = end(5, blob.len() as u64, 0, Decision::Allow);
    e.classification = google("storage.objects.create", "storage.googleapis.com");
    r(Event::ExchangeEnd(e)).await;

    if auditor {
        metadata(
            &rec,
            6,
            "/computeMetadata/v1/instance/service-accounts/default/token",
            1,
        )
        .await;
        // 7: a storage DELETE, refused by policy with a 403.
        r(Event::Request(Request {
            exchange: 7,
            conn: 1,
            method: "DELETE".into(),
            scheme: "https".into(),
            authority: "storage.googleapis.com".into(),
            path: "/storage/v1/b/logs/o/ci%2Fbuild.log".into(),
            version: "HTTP/2".into(),
            headers: h(&[("authorization", &masked_token)]),
        }))
        .await;
        r(Event::Blocked(Blocked {
            exchange: Some(7),
            reason: "policy".into(),
            rule: Some("no-delete".into()),
            message: "storage.objects.delete refused by rule no-delete".into(),
        }))
        .await;
        r(Event::Response(Response {
            exchange: 7,
            status: 403,
            version: "HTTP/2".into(),
            headers: h(&[("content-type", "application/json")]),
            trailers: None,
        }))
        .await;
        let mut e = end(7, 0, 0, Decision::Deny);
        e.rule = Some("no-delete".into());
        e.error = Some("storage.objects.delete refused by rule no-delete".into());
        e.classification = google("storage.objects.delete", "storage.googleapis.com");
        r(Event::ExchangeEnd(e)).await;
        metadata(&rec, 8, "/computeMetadata/v1/project/project-id", 0).await;
        r(Event::Gap(cassette_recording::record::Gap {
            lost: "records of 3 exchanges".into(),
            reason: "the spool's disk was full".into(),
            records: Some(12),
            bytes: None,
            from: None,
            to: None,
        }))
        .await;
    }

    // A connection refused after expiry: no exchange.
    r(Event::Blocked(Blocked {
        exchange: None,
        reason: "expired".into(),
        rule: None,
        message: "AgentSession \"fix-ci\" expired; the connection was refused and recorded".into(),
    }))
    .await;

    rec.shutdown().await.expect("shutdown");
    let recording_dir = sink_dir.join("agents/fix-ci/agent-0-5f1c");
    Fixture {
        session_uri: format!("{sink}/agents/fix-ci/"),
        sink,
        recording_dir,
        public_key,
        dir,
    }
}
