//! The built-in secret detectors: one or more byte regexes each, written so that no match is
//! longer than [`super::MAX_SECRET_LEN`] (which is what lets the streaming masker catch a
//! secret split across chunks) and so that the fingerprinted part is the secret itself.

use std::sync::LazyLock;

use cassette_api::Detector;
use regex::bytes::Regex;

/// How a matched secret is normalised before it is fingerprinted, so that the same secret
/// gets the same fingerprint whatever encoding it crossed the wire in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Canonical {
    /// As matched.
    Raw,
    /// The contents of a JSON string: escapes decoded.
    JsonString,
    /// A form or query value: `%XX` and `+` decoded.
    FormValue,
    /// A PEM block: `\n` escapes decoded, CRLF as LF, surrounding whitespace trimmed.
    Pem,
}

/// One built-in pattern.
pub(crate) struct BuiltIn {
    /// The switch in `spec.masking.disabledDetectors`.
    pub detector: Detector,
    /// The name shown in masks.
    pub name: &'static str,
    /// A `regex::bytes` pattern.
    pub pattern: &'static str,
    /// The capture group holding the secret; the whole match when `None`.
    pub group: Option<usize>,
    pub canonical: Canonical,
    /// A match whose group 1 this rejects is not a secret (`nextPageToken`).
    pub reject_key: Option<fn(&[u8]) -> bool>,
    /// Every match contains one of these (compared ASCII case-insensitively) starting at
    /// most `LITERAL_LEAD` bytes into it: the regex runs only near their occurrences (see
    /// `MaskStream::find`). The test `every_match_holds_one_of_its_literals` checks it on
    /// the samples.
    pub literals: &'static [&'static str],
}

/// The words a secret field's name ends in, as its patterns spell them.
const SECRET_WORDS: &[&str] = &["password", "passwd", "secret", "token", "api_key", "apikey"];

/// The names built-in detectors use in masks; custom patterns may not reuse them.
pub const BUILT_IN_NAMES: &[&str] = &[
    "google-api-key",
    "google-oauth-token",
    "service-account-key",
    "pem-private-key",
    "jwt",
    "github-token",
    "gitlab-token",
    "aws-key",
    "slack-token",
    "secret-field",
    "credential-header",
    super::SECRET_PARAMETER,
    super::SECRET_PAYLOAD,
    JSON_FIELD,
];

/// The name masks carry for values masked by `spec.masking.jsonFields`.
pub const JSON_FIELD: &str = "json-field";

/// Key names ending in a secret word that are not secrets: pagination and sync cursors.
fn is_cursor_key(key: &[u8]) -> bool {
    let key = key.to_ascii_lowercase();
    let key: Vec<u8> = key
        .into_iter()
        .filter(|b| *b != b'_' && *b != b'-')
        .collect();
    [
        &b"pagetoken"[..],
        b"synctoken",
        b"resumetoken",
        b"continuationtoken",
    ]
    .iter()
    .any(|cursor| key.ends_with(cursor))
}

/// The built-ins with their regexes, compiled once per process.
pub(crate) fn compiled() -> &'static [(BuiltIn, Regex)] {
    static COMPILED: LazyLock<Vec<(BuiltIn, Regex)>> = LazyLock::new(|| {
        built_ins()
            .into_iter()
            .map(|b| {
                // The patterns are constants, compiled by this crate's tests.
                let regex = Regex::new(b.pattern).expect("built-in patterns compile");
                (b, regex)
            })
            .collect()
    });
    &COMPILED
}

/// Built-ins in priority order: when two secrets start at the same byte and are as long,
/// the earlier detector names the mask.
fn built_ins() -> Vec<BuiltIn> {
    use Canonical::*;
    let b =
        |detector, name, pattern, group, canonical, literals: &'static [&'static str]| BuiltIn {
            detector,
            name,
            pattern,
            group,
            canonical,
            reject_key: None,
            literals,
        };
    vec![
        // The private_key of a service-account key file, as JSON carries it (\n escaped).
        b(
            Detector::ServiceAccountKey,
            "service-account-key",
            r#"(?-u)"private_key"\s{0,16}:\s{0,16}"(-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----[^"]{16,7000}?-----END[A-Z ]{0,40}PRIVATE KEY-----(?:\\n|\\r){0,4})""#,
            Some(1),
            JsonString,
            &["\"private_key\""],
        ),
        b(
            Detector::PemPrivateKey,
            "pem-private-key",
            r"(?-u)-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\r\n\t :,.()\\-]{16,7000}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----",
            None,
            Pem,
            &["-----BEGIN"],
        ),
        b(
            Detector::GoogleApiKey,
            "google-api-key",
            r"(?-u)AIza[0-9A-Za-z_\-]{35}",
            None,
            Raw,
            &["AIza"],
        ),
        // Access tokens (ya29.…, sometimes with dotted parts) and refresh tokens (1//0…).
        b(
            Detector::GoogleOauthToken,
            "google-oauth-token",
            r"(?-u)ya29\.[0-9A-Za-z_\-]{20,2000}(?:\.[0-9A-Za-z_\-]{1,1000}){0,3}",
            None,
            Raw,
            &["ya29."],
        ),
        b(
            Detector::GoogleOauthToken,
            "google-oauth-token",
            r"(?-u)1//0[0-9A-Za-z_\-]{20,500}",
            None,
            Raw,
            &["1//0"],
        ),
        b(
            Detector::Jwt,
            "jwt",
            r"(?-u)eyJ[A-Za-z0-9_\-]{8,1024}\.eyJ[A-Za-z0-9_\-]{8,4096}\.[A-Za-z0-9_\-]{0,1024}",
            None,
            Raw,
            &["eyJ"],
        ),
        b(
            Detector::GithubToken,
            "github-token",
            r"(?-u)(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,251}",
            None,
            Raw,
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        ),
        b(
            Detector::GithubToken,
            "github-token",
            r"(?-u)github_pat_[A-Za-z0-9_]{22,251}",
            None,
            Raw,
            &["github_pat_"],
        ),
        b(
            Detector::GitlabToken,
            "gitlab-token",
            r"(?-u)gl(?:pat|dt|rt|ptt|ft|soat|oas|cbt|imt)-[A-Za-z0-9_\-]{20,128}",
            None,
            Raw,
            &[
                "glpat-", "gldt-", "glrt-", "glptt-", "glft-", "glsoat-", "gloas-", "glcbt-",
                "glimt-",
            ],
        ),
        b(
            Detector::AwsKey,
            "aws-key",
            r"(?-u)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
            None,
            Raw,
            &["AKIA", "ASIA", "ABIA", "ACCA"],
        ),
        // A secret access key has no prefix; it is recognised by the name next to it.
        b(
            Detector::AwsKey,
            "aws-key",
            r#"(?i-u)(?:aws_?secret_?access_?key|aws_?secret_?key|secretaccesskey)["']?\s{0,16}[:=]\s{0,16}["']?([A-Za-z0-9/+=]{40})"#,
            Some(1),
            Raw,
            &["aws", "accesskey"],
        ),
        b(
            Detector::SlackToken,
            "slack-token",
            r"(?-u)xox[abposr]-[A-Za-z0-9\-]{10,250}",
            None,
            Raw,
            &["xox"],
        ),
        // Credentials written out as header lines in a body (logs, curl -v, HAR files).
        b(
            Detector::CredentialHeaders,
            "credential-header",
            r"(?i-u)(?:proxy-)?authorization\s{0,16}:\s{0,16}(?:bearer|basic|token|negotiate)\s{1,16}([A-Za-z0-9._~+/=\-]{8,4096})",
            Some(1),
            Raw,
            &["authorization"],
        ),
        b(
            Detector::CredentialHeaders,
            "credential-header",
            r"(?i-u)x-goog-api-key\s{0,16}:\s{0,16}([A-Za-z0-9_\-]{8,256})",
            Some(1),
            Raw,
            &["x-goog-api-key"],
        ),
        // "…password": "value" in JSON; group 1 is the key, group 2 the value.
        BuiltIn {
            detector: Detector::SecretFields,
            name: "secret-field",
            pattern: r#"(?i-u)"([A-Za-z0-9_\-]{0,64}(?:password|passwd|secret|token|api_?key|apikey))"\s{0,16}:\s{0,16}"((?:[^"\\]|\\.){1,3000})""#,
            group: Some(2),
            canonical: JsonString,
            reject_key: Some(is_cursor_key),
            literals: SECRET_WORDS,
        },
        // password=value in forms, queries and env files.
        BuiltIn {
            detector: Detector::SecretFields,
            name: "secret-field",
            pattern: r#"(?i-u)(?:^|[?&;\s])([A-Za-z0-9_.\-]{0,64}(?:password|passwd|secret|token|api_?key|apikey))=([^&\s"']{1,4096})"#,
            group: Some(2),
            canonical: FormValue,
            reject_key: Some(is_cursor_key),
            literals: SECRET_WORDS,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_compiles_and_is_bounded() {
        assert_eq!(compiled().len(), built_ins().len());
        for b in built_ins() {
            let hir = regex_syntax::ParserBuilder::new()
                .utf8(false)
                .build()
                .parse(b.pattern)
                .unwrap();
            let max = hir.properties().maximum_len();
            assert!(
                max.is_some_and(|m| m <= super::super::MAX_SECRET_LEN),
                "{}: a match can be {max:?} bytes, more than the streaming window",
                b.name
            );
            assert!(BUILT_IN_NAMES.contains(&b.name), "{}", b.name);
        }
    }

    #[test]
    fn cursor_keys_are_not_secrets() {
        assert!(is_cursor_key(b"nextPageToken"));
        assert!(is_cursor_key(b"page_token"));
        assert!(!is_cursor_key(b"access_token"));
        assert!(!is_cursor_key(b"password"));
    }
}
