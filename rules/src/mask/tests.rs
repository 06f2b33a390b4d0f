use super::*;
use base64::Engine;
use cassette_api::{JsonFieldPath, MaskPattern};
use proptest::prelude::*;

const KEY: &[u8] = b"session fingerprint key";

// Fake secrets shaped like real ones.
const API_KEY: &str = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW";
const ACCESS_TOKEN: &str = "ya29.a0AfB_byC1d2E3f4G5h6I7j8K9l0MnOpQrStUvWxYz-_0123456789";
const REFRESH_TOKEN: &str = "1//0gAbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcD";
const GITHUB: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
const GITHUB_PAT: &str = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz";
const GITLAB: &str = "glpat-xYz0123456789abcdEFGH";
const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const SLACK: &str = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
const JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZ2VudCIsImF1ZCI6InRlc3QifQ.c2lnbmF0dXJlLWJ5dGVzLWZvci10ZXN0";
const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n-----END PRIVATE KEY-----";

/// Built once: compiling the detectors is the slow part of a test in a debug build.
fn masker() -> &'static Masker {
    static MASKER: std::sync::LazyLock<Masker> =
        std::sync::LazyLock::new(|| Masker::new(None, KEY).unwrap());
    &MASKER
}

fn fp(secret: &str) -> String {
    fingerprint(KEY, secret.as_bytes())
}

fn masked(m: &Masker, kind: BodyKind, body: &str) -> (String, Summary) {
    let (out, summary) = m.mask(kind, body.as_bytes());
    (String::from_utf8(out).unwrap(), summary)
}

#[test]
fn fingerprint_is_truncated_hmac_sha256_in_hex() {
    // HMAC-SHA-256("key", "The quick brown fox jumps over the lazy dog") begins
    // f7bc83f430538424b13298e6aa6fb143 (RFC 4231-style test vector, widely published).
    assert_eq!(
        fingerprint(b"key", b"The quick brown fox jumps over the lazy dog"),
        "f7bc83f430538424b13298e6"
    );
    assert_eq!(fp("a").len(), 2 * FINGERPRINT_BYTES);
    assert_ne!(fingerprint(b"other key", b"a"), fp("a"));
}

#[test]
fn built_in_detectors() {
    let cases: &[(&str, &str, &str)] = &[
        // (body, detector, the secret that is fingerprinted)
        (&format!("key={API_KEY}&x=1"), "google-api-key", API_KEY),
        (
            &format!("{{\"access_token\":\"{ACCESS_TOKEN}\",\"expires_in\":3599}}"),
            "google-oauth-token",
            ACCESS_TOKEN,
        ),
        (
            &format!("refresh: {REFRESH_TOKEN}\n"),
            "google-oauth-token",
            REFRESH_TOKEN,
        ),
        (&format!("token {GITHUB} ok"), "github-token", GITHUB),
        (&format!("pat={GITHUB_PAT}"), "github-token", GITHUB_PAT),
        (&format!("CI_TOKEN {GITLAB}"), "gitlab-token", GITLAB),
        (&format!("id {AWS_ID} "), "aws-key", AWS_ID),
        (
            &format!("aws_secret_access_key = {AWS_SECRET}\n"),
            "aws-key",
            AWS_SECRET,
        ),
        (
            &format!("{{\"SecretAccessKey\": \"{AWS_SECRET}\"}}"),
            "aws-key",
            AWS_SECRET,
        ),
        (&format!("slack {SLACK}"), "slack-token", SLACK),
        (&format!("id_token: {JWT}\n"), "jwt", JWT),
        (&format!("key:\n{PEM}\n"), "pem-private-key", PEM),
        ("{\"db_password\": \"hunter2\"}", "secret-field", "hunter2"),
        ("{\"clientSecret\" : \"a\\\"b\"}", "secret-field", "a\"b"),
        (
            "user=me&password=p%40ss+word&next=1",
            "secret-field",
            "p@ss word",
        ),
        ("DB_PASSWORD=hunter2\n", "secret-field", "hunter2"),
        (
            "> Authorization: Bearer opaque-token-123\n",
            "credential-header",
            "opaque-token-123",
        ),
        (
            "x-goog-api-key: some-api-key-value\n",
            "credential-header",
            "some-api-key-value",
        ),
    ];
    let m = masker();
    for (body, detector, secret) in cases {
        let (out, summary) = masked(m, BodyKind::Other, body);
        let want = mask_text(detector, &fp(secret));
        assert!(out.contains(&want), "{body:?} -> {out:?}, want {want}");
        assert!(
            !out.contains(secret),
            "{body:?} -> {out:?} still holds the secret"
        );
        assert_eq!(
            summary.counts.get(*detector),
            Some(&1),
            "{body:?}: {summary:?}"
        );
    }
}

#[test]
fn service_account_key_in_json_matches_the_key_file() {
    let key_file = format!(
        "{{\"type\": \"service_account\", \"private_key_id\": \"abc\", \"private_key\": {}, \"client_email\": \"sa@p.iam.gserviceaccount.com\"}}",
        serde_json::to_string(&format!("{PEM}\n")).unwrap()
    );
    // The object the agent downloads is the key file itself, next to an API key.
    let body = format!("{key_file}\n{{\"apiKey\": \"{API_KEY}\"}}");
    let (out, summary) = masked(masker(), BodyKind::Json, &body);
    assert!(!out.contains("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"), "{out}");
    assert!(!out.contains(API_KEY));
    assert!(out.contains("\"client_email\": \"sa@p.iam.gserviceaccount.com\""));
    // What `search --secret-file` computes from the key file finds the mask.
    let candidates = secret_candidates(key_file.as_bytes());
    let want = fingerprint(KEY, &candidates[0].value);
    assert!(
        summary
            .hits
            .iter()
            .any(|h| h.detector == "service-account-key" && h.fingerprint == want),
        "{summary:?}"
    );
    let api = secret_candidates(API_KEY.as_bytes());
    let want = fingerprint(KEY, &api[0].value);
    assert!(summary.hits.iter().any(|h| h.fingerprint == want));
    // The masked JSON is still JSON.
    let first_line = out.lines().next().unwrap();
    serde_json::from_str::<serde_json::Value>(first_line).unwrap();
}

#[test]
fn cursors_and_ordinary_fields_are_left_alone() {
    let body = r#"{"nextPageToken": "CgRhYmNk", "token_type": "Bearer", "name": "x", "tokens": 5}"#;
    let (out, summary) = masked(masker(), BodyKind::Json, body);
    assert_eq!(out, body);
    assert_eq!(summary.total(), 0);
}

#[test]
fn disabled_detectors_and_custom_patterns() {
    let masking = Masking {
        disabled_detectors: vec![Detector::GithubToken],
        patterns: vec![
            MaskPattern {
                name: "internal-token".into(),
                regex: "itk_[a-z0-9]{16}".into(),
            },
            MaskPattern {
                name: "employee-id".into(),
                regex: r"employee=(\d{6})".into(),
            },
        ],
        ..Masking::default()
    };
    let m = Masker::new(Some(&masking), KEY).unwrap();
    let body = format!("{GITHUB} itk_0123456789abcdef employee=123456");
    let (out, summary) = masked(&m, BodyKind::Other, &body);
    assert!(out.starts_with(GITHUB), "{out}");
    assert!(out.contains(&mask_text("internal-token", &fp("itk_0123456789abcdef"))));
    // With a capture group, only the group is masked.
    assert!(out.ends_with(&format!(
        "employee={}",
        mask_text("employee-id", &fp("123456"))
    )));
    assert_eq!(summary.total(), 2);
}

#[test]
fn json_field_paths() {
    let masking = Masking {
        json_fields: vec![
            JsonFieldPath {
                path: "credentials.pin".into(),
            },
            JsonFieldPath {
                path: "items.*.serial".into(),
            },
        ],
        ..Masking::default()
    };
    let m = Masker::new(Some(&masking), KEY).unwrap();
    let body = r#"{"credentials": {"pin": 1234, "user": "u"}, "items": [{"serial": "s\u0041"}]}"#;
    let (out, summary) = masked(&m, BodyKind::Json, body);
    assert_eq!(
        out,
        format!(
            r#"{{"credentials": {{"pin": {}, "user": "u"}}, "items": [{{"serial": "{}"}}]}}"#,
            mask_text(JSON_FIELD, &fp("1234")),
            mask_text(JSON_FIELD, &fp("sA")),
        )
    );
    assert_eq!(summary.counts.get(JSON_FIELD), Some(&2));
    // Not applied to bodies that are not JSON.
    let (out, _) = masked(&m, BodyKind::Other, body);
    assert_eq!(out, body);
}

#[test]
fn headers() {
    let m = masker();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "Authorization",
            "Bearer ya29.not-a-real-token-but-long-enough",
            "Bearer ",
            "ya29.not-a-real-token-but-long-enough",
        ),
        (
            "authorization",
            "Basic eC1hY2Nlc3MtdG9rZW46Z2hzX3NlY3JldA==",
            "Basic ",
            "ghs_secret",
        ),
        ("Proxy-Authorization", "Negotiate abc", "Negotiate ", "abc"),
        ("X-Goog-Api-Key", API_KEY, "", API_KEY),
    ];
    for (name, value, prefix, secret) in cases {
        let (out, summary) = m.mask_header(name, value.as_bytes()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            format!("{prefix}{}", mask_text("credential-header", &fp(secret))),
            "{name}"
        );
        assert_eq!(summary.total(), 1);
    }
    let (out, summary) = m.mask_header("Cookie", b"sid=abc; theme=dark").unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "sid={}; theme={}",
            mask_text("credential-header", &fp("abc")),
            mask_text("credential-header", &fp("dark"))
        )
    );
    assert_eq!(summary.total(), 2);
    let (out, _) = m
        .mask_header("Set-Cookie", b"sid=abc; Path=/; HttpOnly")
        .unwrap();
    assert!(
        String::from_utf8(out)
            .unwrap()
            .ends_with("; Path=/; HttpOnly")
    );
    // Other headers are scanned by the detectors, and left alone when clean.
    let (out, _) = m.mask_header("X-Token", GITHUB.as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        mask_text("github-token", &fp(GITHUB))
    );
    assert_eq!(m.mask_header("Accept", b"application/json"), None);

    let off = Masking {
        disabled_detectors: vec![Detector::CredentialHeaders],
        ..Masking::default()
    };
    let m = Masker::new(Some(&off), KEY).unwrap();
    assert_eq!(m.mask_header("Cookie", b"sid=abc"), None);
}

/// A token written among other text in a credential header is found by the token alone, and
/// a token where the scheme would be is not kept in clear as one.
#[test]
fn tokens_inside_credential_headers() {
    let m = masker();
    for (name, value) in [
        ("x-goog-api-key", format!(" {API_KEY} ")),
        ("x-goog-api-key", format!("{API_KEY},{GITLAB}")),
        ("authorization", format!("Bearer x {ACCESS_TOKEN} y")),
        ("authorization", format!("{GITHUB} trailing")),
        ("cookie", format!("sid=v1 {GITHUB}")),
        ("cookie", format!(" {API_KEY} ")),
        ("cookie", format!("{GITLAB} x=1")),
        ("set-cookie", format!("sid=1; Path=/{GITHUB}")),
    ] {
        let (out, summary) = m.mask_header(name, value.as_bytes()).unwrap();
        let out = String::from_utf8(out).unwrap();
        for secret in [API_KEY, ACCESS_TOKEN, GITHUB, GITLAB] {
            assert!(!out.contains(secret), "{name}: {out}");
            if value.contains(secret) {
                assert!(out.contains(&fp(secret)), "{name}: {value} -> {out}");
                assert!(summary.hits.iter().any(|h| h.fingerprint == fp(secret)));
            }
        }
    }
}

#[test]
fn body_kinds() {
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "application/x-ndjson",
    ] {
        assert_eq!(
            BodyKind::from_content_type(Some(ct)),
            BodyKind::Json,
            "{ct}"
        );
    }
    for ct in [None, Some("text/plain"), Some("application/octet-stream")] {
        assert_eq!(BodyKind::from_content_type(ct), BodyKind::Other, "{ct:?}");
    }
}

#[test]
fn hit_offsets_point_into_the_unmasked_stream() {
    let body = format!("0123456789 {GITHUB} and {API_KEY}");
    let (_, summary) = masker().mask(BodyKind::Other, body.as_bytes());
    let offsets: Vec<(u64, u64)> = summary.hits.iter().map(|h| (h.offset, h.len)).collect();
    assert_eq!(
        offsets,
        vec![
            (11, GITHUB.len() as u64),
            ((11 + GITHUB.len() + 5) as u64, API_KEY.len() as u64)
        ]
    );
}

#[test]
fn large_bodies_stream_with_bounded_holdback() {
    let m = masker();
    let mut stream = m.stream(BodyKind::Other);
    let mut out = Vec::new();
    let chunk = vec![b'x'; 4096];
    for _ in 0..64 {
        stream.feed(&chunk, &mut out);
        assert!(
            64 * 4096 >= out.len() && stream.buf.len() <= 3 * WINDOW + chunk.len(),
            "held {} bytes",
            stream.buf.len()
        );
    }
    assert!(out.len() >= 64 * 4096 - 3 * WINDOW);
    stream.finish(&mut out);
    assert_eq!(out.len(), 64 * 4096);
}

/// Secrets placed around the point where the first streaming round cuts, with chunk
/// boundaries inside them: the cases a carry-over window exists for.
#[test]
fn secrets_across_the_streaming_cut() {
    let m = masker();
    for (detector, text, canonical) in secrets() {
        for shift in (0..200).step_by(13) {
            let offset = 2 * WINDOW - WINDOW / 2 - text.len() / 2 + shift;
            let body = format!("{} {text} {}", "a".repeat(offset), "b".repeat(WINDOW));
            for chunk_len in [1000, 4096, 7919] {
                let mut stream = m.stream(BodyKind::Other);
                let mut out = Vec::new();
                for chunk in body.as_bytes().chunks(chunk_len) {
                    stream.feed(chunk, &mut out);
                }
                let summary = stream.finish(&mut out);
                let out = String::from_utf8(out).unwrap();
                assert!(
                    out.contains(&mask_text(detector, &fp(&canonical))),
                    "{detector} at {offset}, chunks of {chunk_len}"
                );
                assert_eq!(summary.total(), 1, "{detector} at {offset}");
            }
        }
    }
}

fn secrets() -> Vec<(&'static str, String, String)> {
    // (detector, text placed in the body, canonical secret)
    vec![
        ("google-api-key", API_KEY.into(), API_KEY.into()),
        (
            "google-oauth-token",
            ACCESS_TOKEN.into(),
            ACCESS_TOKEN.into(),
        ),
        ("github-token", GITHUB.into(), GITHUB.into()),
        ("aws-key", AWS_ID.into(), AWS_ID.into()),
        ("jwt", JWT.into(), JWT.into()),
        ("pem-private-key", PEM.into(), PEM.into()),
        (
            "service-account-key",
            format!(
                "\"private_key\": {}",
                serde_json::to_string(&format!("{PEM}\n")).unwrap()
            ),
            PEM.into(),
        ),
        (
            "secret-field",
            "\"password\": \"correct horse\"".into(),
            "correct horse".into(),
        ),
    ]
}

/// Every kind of secret a built-in detector matches, in the forms it is written in.
fn samples() -> Vec<String> {
    let mut out: Vec<String> = [
        API_KEY,
        ACCESS_TOKEN,
        REFRESH_TOKEN,
        GITHUB,
        GITHUB_PAT,
        GITLAB,
        AWS_ID,
        SLACK,
        JWT,
        PEM,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END RSA PRIVATE KEY-----",
        "ASIAIOSFODNN7EXAMPLE",
        "glrt-xYz0123456789abcdEFGH",
        "xoxp-123456789012-abcdefgh",
        "Authorization: Bearer abcdefgh12345678",
        "proxy-authorization:basic dXNlcjpwYXNzd29yZA==",
        "X-Goog-Api-Key: abcdefgh12345678",
        "\"password\": \"correct horse\"",
        "\"clientSecret\":\"s3cr3t\"",
        "\"API_KEY\" : \"k\"",
        "?db_password=hunter2&x=1",
        " GITHUB_TOKEN=ghtoken123",
        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa_password\": \"p\"",
        "&bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbsecret=v",
    ]
    .map(String::from)
    .to_vec();
    for name in [
        "aws_secret_access_key",
        "AWS_SECRET_KEY",
        "awssecretaccesskey",
        "SecretAccessKey",
    ] {
        out.push(format!("{name} = \"{AWS_SECRET}\""));
        out.push(format!("\"{name}\": \"{AWS_SECRET}\""));
    }
    out.push(format!(
        "\"private_key\": {}",
        serde_json::to_string(&format!("{PEM}\n")).unwrap()
    ));
    out
}

#[test]
fn every_match_holds_one_of_its_literals() {
    let mut matched = vec![0; detectors::compiled().len()];
    for sample in samples() {
        for (i, (b, regex)) in detectors::compiled().iter().enumerate() {
            for m in regex.find_iter(sample.as_bytes()) {
                matched[i] += 1;
                let text = String::from_utf8_lossy(m.as_bytes()).to_ascii_lowercase();
                let lead = b
                    .literals
                    .iter()
                    .filter_map(|l| text.find(&l.to_ascii_lowercase()))
                    .min();
                assert!(
                    lead.is_some_and(|at| at as u64 <= LITERAL_LEAD),
                    "{}: {text:?} holds none of {:?} in its first {LITERAL_LEAD} bytes",
                    b.name,
                    b.literals
                );
            }
        }
    }
    for (i, (b, _)) in detectors::compiled().iter().enumerate() {
        assert!(matched[i] > 0, "no sample for {} {:?}", b.name, b.pattern);
    }
}

#[test]
fn prefilter_literals_never_hide_each_other() {
    let all: Vec<(usize, String)> = detectors::compiled()
        .iter()
        .enumerate()
        .flat_map(|(i, (b, _))| b.literals.iter().map(move |l| (i, l.to_ascii_lowercase())))
        .collect();
    for (i, a) in &all {
        for (j, b) in &all {
            assert!(
                i == j || a == b || !b.starts_with(a.as_str()),
                "{a:?} (detector {i}) is a prefix of {b:?} (detector {j}): at a position \
                 where both start, the prefilter reports only the longer (the same literal \
                 in two detectors is one pattern standing for both)"
            );
        }
    }
}

/// The masker without its literal prefilter: every regex searches every byte.
fn unfiltered() -> Masker {
    let mut m = Masker::new(None, KEY).unwrap();
    m.prefilter = None;
    m
}

/// Filler that cannot form a secret: lower-case letters and punctuation no detector uses.
fn filler(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range('a', 'z'),
            Just(' '),
            Just('\n'),
            Just(','),
            Just('{'),
            Just('}')
        ],
        0..len,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn cut(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points {
        chunks.push(body[last..p].to_vec());
        last = p;
    }
    chunks.push(body[last..].to_vec());
    chunks
}

proptest! {
    // Each case masks tens of kilobytes twice with every detector, which is slow in a debug
    // build; PROPTEST_CASES raises the count for a deeper run.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(32)
    ))]

    /// A secret at any offset, under any chunking, is masked with the right fingerprint, and
    /// the output is the same as masking the body in one piece.
    #[test]
    fn secrets_are_masked_under_any_chunking(
        which in 0usize..8,
        before in filler(24_000),
        after in filler(3_000),
        cuts in proptest::collection::vec(0usize..100_000, 0..40),
    ) {
        let (detector, text, canonical) = secrets().swap_remove(which);
        let body = format!("{before} {text} {after}");
        let m = masker();
        let (whole, whole_summary) = m.mask(BodyKind::Other, body.as_bytes());
        let mut stream = m.stream(BodyKind::Other);
        let mut parts = Vec::new();
        for chunk in cut(body.as_bytes(), &cuts) {
            stream.feed(&chunk, &mut parts);
        }
        let summary = stream.finish(&mut parts);
        prop_assert_eq!(&parts, &whole);
        prop_assert_eq!(&summary, &whole_summary);
        let out = String::from_utf8(parts).unwrap();
        let want = mask_text(detector, &fp(&canonical));
        prop_assert!(out.contains(&want), "missing {}", want);
        prop_assert!(!out.contains(canonical.as_str()));
        prop_assert_eq!(summary.total(), 1);
        prop_assert_eq!(summary.hits[0].offset as usize, before.len() + 1 + text.find(&canonical[..10]).unwrap_or(0));
    }

    /// Several secrets in one body, tiny chunks.
    #[test]
    fn many_secrets_small_chunks(
        picks in proptest::collection::vec(0usize..8, 1..6),
        gaps in proptest::collection::vec(filler(200), 6),
        chunk_len in 1usize..64,
    ) {
        let all = secrets();
        let mut body = String::new();
        for (i, p) in picks.iter().enumerate() {
            body.push_str(&gaps[i]);
            body.push(' ');
            body.push_str(&all[*p].1);
            body.push(' ');
        }
        let m = masker();
        let (whole, whole_summary) = m.mask(BodyKind::Other, body.as_bytes());
        let mut stream = m.stream(BodyKind::Other);
        let mut parts = Vec::new();
        for chunk in body.as_bytes().chunks(chunk_len) {
            stream.feed(chunk, &mut parts);
        }
        let summary = stream.finish(&mut parts);
        prop_assert_eq!(&parts, &whole);
        prop_assert_eq!(summary.total(), picks.len() as u64);
        prop_assert_eq!(summary, whole_summary);
    }

    /// JSON field masking under any chunking equals masking in one piece.
    #[test]
    fn json_fields_under_any_chunking(
        value in "[a-z0-9 ]{1,300}",
        pad in filler(20_000),
        cuts in proptest::collection::vec(0usize..40_000, 0..30),
    ) {
        let masking = Masking {
            json_fields: vec![JsonFieldPath { path: "a.*.b".into() }],
            ..Masking::default()
        };
        let m = Masker::new(Some(&masking), KEY).unwrap();
        let body = format!(r#"{{"pad": "{pad}", "a": [{{"b": "{value}"}}, {{"b": 7}}]}}"#);
        let (whole, _) = m.mask(BodyKind::Json, body.as_bytes());
        let mut stream = m.stream(BodyKind::Json);
        let mut parts = Vec::new();
        for chunk in cut(body.as_bytes(), &cuts) {
            stream.feed(&chunk, &mut parts);
        }
        let summary = stream.finish(&mut parts);
        prop_assert_eq!(&parts, &whole);
        prop_assert_eq!(summary.total(), 2);
        let out = String::from_utf8(parts).unwrap();
        let want = mask_text(JSON_FIELD, &fp(&value));
        prop_assert!(out.contains(&want));
    }

    /// The prefilter changes nothing but speed: any body of secrets and near misses, under
    /// any chunking, masks the same with and without it.
    #[test]
    fn the_prefilter_changes_nothing_but_speed(
        picks in proptest::collection::vec(0usize..30, 1..8),
        gaps in proptest::collection::vec("[a-zA-Z0-9_ \n\"=:.-]{0,300}", 8),
        // Stretches with no literal, longer than a secret can be, between some of them.
        pads in proptest::collection::vec(prop_oneof![Just(0usize), 0usize..20_000], 8),
        chunk_len in 1usize..20_000,
    ) {
        let all = samples();
        let mut body = String::new();
        for (i, p) in picks.iter().enumerate() {
            body.push_str(&".".repeat(pads[i]));
            body.push_str(&gaps[i]);
            body.push_str(&all[*p % all.len()]);
        }
        let plain = unfiltered();
        let (want, want_summary) = plain.mask(BodyKind::Other, body.as_bytes());
        let mut stream = masker().stream(BodyKind::Other);
        let mut got = Vec::new();
        for chunk in body.as_bytes().chunks(chunk_len) {
            stream.feed(chunk, &mut got);
        }
        let summary = stream.finish(&mut got);
        prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
        prop_assert_eq!(summary, want_summary);
    }

    /// Arbitrary bytes never panic and come out the same length when nothing is found.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..5000), chunk_len in 1usize..500) {
        let m = masker();
        let mut stream = m.stream(BodyKind::Json);
        let mut out = Vec::new();
        for chunk in bytes.chunks(chunk_len) {
            stream.feed(chunk, &mut out);
        }
        let summary = stream.finish(&mut out);
        if summary.total() == 0 {
            prop_assert_eq!(out, bytes);
        }
    }
}

/// Form bodies are masked after percent-decoding, in their original spelling: a secret
/// whose characters are escaped is still found, and nothing of it is left.
#[test]
fn percent_encoded_secrets_in_form_bodies() {
    let kind = BodyKind::from_content_type(Some("application/x-www-form-urlencoded"));
    let escaped_pem = PEM
        .replace(' ', "%20")
        .replace('\n', "%0A")
        .replace('+', "%2B")
        .replace('/', "%2F");
    let escaped_aws = AWS_SECRET.replace('/', "%2F");
    let escaped_oauth = ACCESS_TOKEN.replace('_', "%5F").replace('-', "%2D");
    let body = format!(
        "grant_type=x&private_key={escaped_pem}&aws_secret_access_key={escaped_aws}&t={escaped_oauth}&next=1"
    );
    let mut stream = masker().stream(kind);
    let mut out = Vec::new();
    for chunk in body.as_bytes().chunks(7) {
        stream.feed(chunk, &mut out);
    }
    let summary = stream.finish(&mut out);
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("MIIEvQIBADANBgkqhkiG9w0"), "{out}");
    assert!(!out.contains("K7MDENG"), "{out}");
    assert!(!out.contains("OpQrStUvWxYz"), "{out}");
    for (detector, secret) in [
        ("pem-private-key", PEM),
        ("aws-key", AWS_SECRET),
        ("google-oauth-token", ACCESS_TOKEN),
    ] {
        assert!(
            out.contains(&mask_text(detector, &fp(secret))),
            "{detector}: {out}"
        );
    }
    assert!(
        out.starts_with("grant_type=x&private_key=«masked:pem-private-key:"),
        "{out}"
    );
    assert!(out.ends_with("&next=1"), "{out}");
    assert_eq!(summary.total(), 3, "{summary:?}");
}

/// Escapes each byte of `secret` whose bit in `which` is set, as an agent (or a client
/// library) may.
fn escape_some(secret: &str, which: u64) -> String {
    secret
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            if which >> (i % 64) & 1 == 1 {
                format!("%{b:02X}")
            } else {
                char::from(b).to_string()
            }
        })
        .collect()
}

/// What `kubectl cassette search --secret-file` computes for a file holding `secret`.
fn searched(secret: &str) -> Vec<String> {
    secret_candidates(secret.as_bytes())
        .into_iter()
        .map(|c| fingerprint(KEY, &c.value))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
    ))]

    /// A secret in a request path or query, escaped anywhere, under any parameter name, is
    /// gone from the masked target, and search finds the fingerprint it was masked with.
    #[test]
    fn secrets_in_targets_are_masked_and_found_by_search(
        which in 0usize..4,
        escapes in any::<u64>(),
        name in "[a-z]{1,8}",
        secret_name in proptest::sample::select(vec!["key", "access_token", "X-Goog-Signature", "sig", "PASSWORD"]),
        where_ in 0usize..3,
    ) {
        let secret = [API_KEY, ACCESS_TOKEN, GITHUB, GITLAB][which];
        let spelt = escape_some(secret, escapes);
        let target = match where_ {
            0 => format!("/v1/{name}/{spelt}/x?alt=json"),
            1 => format!("/v1/x?{name}={spelt}&alt=json"),
            _ => format!("/v1/x?alt=json&{secret_name}={spelt}"),
        };
        let (masked, summary) = masker().mask_target(&target);
        prop_assert!(!masked.contains(secret), "{}", masked);
        prop_assert!(!masked.contains(&spelt), "{}", masked);
        let found = searched(secret);
        prop_assert!(
            summary.hits.iter().any(|h| found.contains(&h.fingerprint)),
            "{} -> {} {:?}", target, masked, summary
        );
        prop_assert!(masked.starts_with("/v1/"));
        prop_assert!(masked.ends_with("x?alt=json") || masked.contains("alt=json"));
    }

    /// A secret in a byte field of a Google JSON body (base64, either alphabet) is masked
    /// inside the field, the field still decodes, and search finds the fingerprint.
    #[test]
    fn secrets_in_byte_fields_are_masked_and_found_by_search(
        which in 0usize..4,
        before in "[a-z ]{0,40}",
        after in "[a-z ]{0,40}",
        url_safe in any::<bool>(),
    ) {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let secret = [API_KEY, ACCESS_TOKEN, GITHUB, GITLAB][which];
        let data = format!("{before} {secret} {after}");
        let encoded = if url_safe { URL_SAFE_NO_PAD.encode(&data) } else { STANDARD.encode(&data) };
        let body = format!("{{\"messages\":[{{\"data\":\"{encoded}\"}}]}}");
        let fields = [ByteField { path: "messages.*.data", whole: false }];
        let (out, summary) = masker().mask_byte_fields(&fields, body.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let text = v["messages"][0]["data"].as_str().unwrap();
        let decoded = decode_base64(text.as_bytes()).unwrap();
        // Written back in the alphabet the client used, where the text shows it.
        if url_safe && encoded.contains(['-', '_']) {
            prop_assert!(!text.contains(['+', '/']), "{}", text);
        }
        let decoded = String::from_utf8(decoded).unwrap();
        prop_assert!(!decoded.contains(secret));
        prop_assert!(decoded.starts_with(&format!("{before} «masked:")), "{}", decoded);
        let found = searched(secret);
        prop_assert!(summary.hits.iter().any(|h| found.contains(&h.fingerprint)));
    }
}

#[test]
fn a_brokered_secret_is_masked_by_value_wherever_it_appears() {
    // No detector knows this shape: only its registration masks it.
    let secret = "internal-9f8e7d6c5b4a";
    let m = Masker::new(None, KEY).unwrap().with_secrets(&[
        ("gitea".into(), secret.into()),
        ("empty".into(), String::new()),
    ]);
    let body = format!("{{\"echo\": \"{secret}\", \"n\": 1}} and again {secret}.");
    let (out, summary) = masked(&m, BodyKind::Json, &body);
    assert!(!out.contains(secret), "{out}");
    let mask = mask_text("credential-gitea", &fp(secret));
    assert_eq!(out.matches(&mask).count(), 2, "{out}");
    assert_eq!(summary.total(), 2);
    // Across chunk boundaries, as bodies stream.
    let mut stream = m.stream(BodyKind::Other);
    let mut out = Vec::new();
    let text = format!("prefix {secret} suffix");
    for chunk in text.as_bytes().chunks(5) {
        stream.feed(chunk, &mut out);
    }
    stream.finish(&mut out);
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains(secret) && out.contains(&mask), "{out}");
    // Without the registration it is recorded as it is.
    let (plain, _) = masked(masker(), BodyKind::Other, &text);
    assert!(plain.contains(secret));
}
