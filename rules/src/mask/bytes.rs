//! The byte fields of Google JSON APIs, which hold the most sensitive data and match no
//! detector as they are sent: base64. Secret Manager's `payload.data`, Cloud KMS's
//! `plaintext` and `ciphertext`, Pub/Sub's message `data`, a created service-account key's
//! `privateKeyData`. Given the request's classification, the fields the API defines as
//! `bytes` are decoded, masked inside (or whole, where the API says the value is a secret),
//! and encoded again in the same alphabet, so the field stays valid base64 — of the masked
//! bytes — and the JSON around it is untouched, byte for byte.
//!
//! Bounded, not streaming: a body of at most [`BYTE_FIELDS_LIMIT`] is masked whole (Secret
//! Manager and KMS payloads are at most 64 KiB, a Pub/Sub publish at most 10 MB); a longer
//! body, or one that is not JSON, is left to the streaming masker.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::json::{FieldPath, JsonScanner};
use super::{BodyKind, Hit, Masker, Summary, json_unescape, mask_text};
use crate::classify::Classification;

/// Either padding, either way: what proto3's JSON mapping accepts.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);
const LENIENT_URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decodes base64 in either alphabet, padded or not.
pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    LENIENT
        .decode(text)
        .or_else(|_| LENIENT_URL.decode(text))
        .ok()
}

/// The largest body whose byte fields are decoded.
pub const BYTE_FIELDS_LIMIT: usize = 16 << 20;

/// The name masks carry when a whole byte field is a secret (a Secret Manager payload).
pub const SECRET_PAYLOAD: &str = "secret-payload";

/// A field an API defines as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteField {
    /// The dotted path from the body's root (`*` for any array element).
    pub path: &'static str,
    /// The whole value is a secret (masked as `secret-payload`); otherwise it is scanned by
    /// the detectors and masked inside.
    pub whole: bool,
}

const fn scan(path: &'static str) -> ByteField {
    ByteField { path, whole: false }
}

const fn whole(path: &'static str) -> ByteField {
    ByteField { path, whole: true }
}

/// (service, end of the API method id, request fields, response fields), from the APIs'
/// discovery documents (`format: byte` fields of the request and response messages).
#[rustfmt::skip]
const BYTE_FIELDS: &[(&str, &str, &[ByteField], &[ByteField])] = &[
    ("secretmanager", ".versions.access", &[], &[whole("payload.data")]),
    ("secretmanager", ".secrets.addVersion", &[whole("payload.data")], &[]),
    ("cloudkms", ".cryptoKeys.encrypt", &[scan("plaintext"), scan("additionalAuthenticatedData")], &[scan("ciphertext")]),
    ("cloudkms", ".cryptoKeys.decrypt", &[scan("ciphertext"), scan("additionalAuthenticatedData")], &[scan("plaintext")]),
    ("cloudkms", ".cryptoKeyVersions.asymmetricDecrypt", &[scan("ciphertext")], &[scan("plaintext")]),
    ("cloudkms", ".cryptoKeyVersions.rawEncrypt", &[scan("plaintext"), scan("additionalAuthenticatedData")], &[scan("ciphertext")]),
    ("cloudkms", ".cryptoKeyVersions.rawDecrypt", &[scan("ciphertext"), scan("additionalAuthenticatedData")], &[scan("plaintext")]),
    ("cloudkms", ".cryptoKeyVersions.macSign", &[scan("data")], &[]),
    ("cloudkms", ".locations.generateRandomBytes", &[], &[whole("data")]),
    ("pubsub", ".topics.publish", &[scan("messages.*.data")], &[]),
    ("pubsub", ".subscriptions.pull", &[], &[scan("receivedMessages.*.message.data")]),
    ("iam", ".serviceAccounts.keys.create", &[], &[scan("privateKeyData")]),
    ("iamcredentials", ".serviceAccounts.signBlob", &[scan("payload")], &[]),
];

/// The byte fields of a request (`response` false) or response body of a classified
/// exchange; empty when its API method has none.
pub fn byte_fields(classification: &Classification, response: bool) -> &'static [ByteField] {
    let Some(method) = classification.method.as_deref() else {
        return &[];
    };
    BYTE_FIELDS
        .iter()
        .find(|(service, suffix, _, _)| {
            *service == classification.service && method.ends_with(suffix)
        })
        .map_or(
            &[],
            |(_, _, request, reply)| if response { reply } else { request },
        )
}

/// The alphabet and padding a field was written in, to write it back the same way. Where the
/// text does not show them (no `-`, `_`, `+` or `/`; a length that is a multiple of 4
/// without `=`), the value is written back as Google's APIs write bytes: the standard
/// alphabet, padded.
fn engine_of(text: &[u8]) -> &'static base64::engine::GeneralPurpose {
    let url = text.iter().any(|b| *b == b'-' || *b == b'_');
    let padded = text.ends_with(b"=") || text.len().is_multiple_of(4);
    match (url, padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    }
}

impl Masker {
    /// Masks the byte `fields` of a JSON `body` ([`byte_fields`]): each base64 value is
    /// decoded, masked (whole, or inside by the detectors), and re-encoded in its own
    /// alphabet when anything was masked. Hit offsets and lengths are those of the base64
    /// text in `body`. `None` when the body is over [`BYTE_FIELDS_LIMIT`]; values that are
    /// not base64 are left for the ordinary masker.
    pub fn mask_byte_fields(
        &self,
        fields: &[ByteField],
        body: &[u8],
    ) -> Option<(Vec<u8>, Summary)> {
        if body.len() > BYTE_FIELDS_LIMIT {
            return None;
        }
        let mut summary = Summary::default();
        if fields.is_empty() {
            return Some((body.to_vec(), summary));
        }
        let paths: Vec<FieldPath> = fields
            .iter()
            .filter_map(|f| FieldPath::parse(f.path).ok())
            .collect();
        // One scanner per field, so that each span is known to be whole or scanned.
        let mut spans = Vec::new();
        for (field, path) in fields.iter().zip(paths) {
            let mut scanner = JsonScanner::new(vec![path], body.len() + 1);
            scanner.feed(body, 0);
            scanner.finish(body.len() as u64);
            while let Some(span) = scanner.take_span_before(u64::MAX) {
                if span.string {
                    spans.push((span.start as usize, span.end as usize, field.whole));
                }
            }
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(body.len());
        let mut written = 0;
        for (start, end, whole) in spans {
            if start < written {
                continue;
            }
            let text = json_unescape(&body[start..end]);
            let Some(decoded) = decode_base64(&text) else {
                continue;
            };
            let engine = engine_of(&text);
            let masked = if whole {
                let fingerprint = self.fingerprint(&decoded);
                summary.record(Hit {
                    detector: SECRET_PAYLOAD.to_owned(),
                    fingerprint: fingerprint.clone(),
                    offset: start as u64,
                    len: (end - start) as u64,
                });
                mask_text(SECRET_PAYLOAD, &fingerprint).into_bytes()
            } else {
                let first = decoded.iter().find(|b| !b.is_ascii_whitespace());
                let kind = if matches!(first, Some(b'{' | b'[')) {
                    BodyKind::Json
                } else {
                    BodyKind::Other
                };
                let (masked, inner) = self.mask(kind, &decoded);
                if inner.total() == 0 {
                    continue;
                }
                for hit in inner.hits {
                    summary.record(Hit {
                        offset: start as u64,
                        len: (end - start) as u64,
                        ..hit
                    });
                }
                masked
            };
            out.extend_from_slice(&body[written..start]);
            out.extend_from_slice(engine.encode(masked).as_bytes());
            written = end;
        }
        out.extend_from_slice(&body[written..]);
        Some((out, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{HttpRequest, classify};
    use crate::mask::fingerprint;

    const KEY: &[u8] = b"bytes key";
    const GITHUB: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

    fn classified(host: &str, target: &str) -> Classification {
        classify(&HttpRequest::from_target(host, "POST", target, None)).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    /// A secret read from Secret Manager: what main recorded decodes to the secret.
    #[test]
    fn secret_manager_payloads_are_masked_whole() {
        let m = Masker::new(None, KEY).unwrap();
        let c = classified(
            "secretmanager.googleapis.com",
            "/v1/projects/p/secrets/db/versions/latest:access",
        );
        let body = format!(
            "{{\n  \"name\": \"projects/1/secrets/db/versions/3\",\n  \"payload\": {{\n    \"data\": \"{}\",\n    \"dataCrc32c\": \"123\"\n  }}\n}}\n",
            b64(b"hunter2-db-password")
        );
        // The ordinary masker sees base64 and nothing to mask.
        let (plain, _) = m.mask(BodyKind::Json, body.as_bytes());
        assert!(String::from_utf8_lossy(&plain).contains(&b64(b"hunter2-db-password")));
        let fields = byte_fields(&c, true);
        assert_eq!(fields, &[whole("payload.data")]);
        let (out, summary) = m.mask_byte_fields(fields, body.as_bytes()).unwrap();
        let out = String::from_utf8(out).unwrap();
        let mask = mask_text(SECRET_PAYLOAD, &fingerprint(KEY, b"hunter2-db-password"));
        assert_eq!(
            out,
            body.replace(&b64(b"hunter2-db-password"), &b64(mask.as_bytes()))
        );
        assert_eq!(summary.total(), 1);
        // The field is still valid base64, of the mask.
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let data = STANDARD
            .decode(v["payload"]["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, mask.as_bytes());
        // The request that stores a secret: masked whole too.
        let add = classified(
            "secretmanager.googleapis.com",
            "/v1/projects/p/secrets/db:addVersion",
        );
        assert_eq!(byte_fields(&add, false), &[whole("payload.data")]);
    }

    /// Pub/Sub messages and a created service-account key: scanned inside, masked inside.
    #[test]
    fn pubsub_data_and_key_files_are_masked_inside() {
        let m = Masker::new(None, KEY).unwrap();
        let c = classified("pubsub.googleapis.com", "/v1/projects/p/topics/t:publish");
        let message = format!("deploy with token {GITHUB} now");
        let body = format!(
            "{{\"messages\":[{{\"data\":\"{}\",\"attributes\":{{\"k\":\"v\"}}}},{{\"data\":\"{}\"}}]}}",
            b64(message.as_bytes()),
            b64(b"nothing secret")
        );
        let (out, summary) = m
            .mask_byte_fields(byte_fields(&c, false), body.as_bytes())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let first = STANDARD
            .decode(v["messages"][0]["data"].as_str().unwrap())
            .unwrap();
        let first = String::from_utf8(first).unwrap();
        assert_eq!(
            first,
            format!(
                "deploy with token {} now",
                mask_text("github-token", &fingerprint(KEY, GITHUB.as_bytes()))
            )
        );
        assert_eq!(v["messages"][1]["data"], b64(b"nothing secret"));
        assert_eq!(summary.counts.get("github-token"), Some(&1));

        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----\n";
        let key_file = serde_json::json!({"type": "service_account", "private_key": pem, "client_email": "sa@p.iam.gserviceaccount.com"}).to_string();
        let c = classified(
            "iam.googleapis.com",
            "/v1/projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys",
        );
        let body = format!(
            "{{\"name\":\"k\",\"privateKeyData\":\"{}\"}}",
            b64(key_file.as_bytes())
        );
        let (out, summary) = m
            .mask_byte_fields(byte_fields(&c, true), body.as_bytes())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let inner = String::from_utf8(
            STANDARD
                .decode(v["privateKeyData"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(!inner.contains("MIIEvQIBADANBgkqhkiG9w0"), "{inner}");
        assert!(inner.contains("sa@p.iam.gserviceaccount.com"), "{inner}");
        assert_eq!(
            summary.counts.get("service-account-key"),
            Some(&1),
            "{summary:?}"
        );
    }

    /// Cloud KMS, classified from the generated table: encrypt's plaintext, decrypt's
    /// plaintext response.
    #[test]
    fn kms_plaintext_is_scanned() {
        let m = Masker::new(None, KEY).unwrap();
        let encrypt = classified(
            "cloudkms.googleapis.com",
            "/v1/projects/p/locations/global/keyRings/r/cryptoKeys/k:encrypt",
        );
        assert_eq!(byte_fields(&encrypt, false)[0], scan("plaintext"));
        let decrypt = classified(
            "cloudkms.googleapis.com",
            "/v1/projects/p/locations/global/keyRings/r/cryptoKeys/k:decrypt",
        );
        let body = format!(
            "{{\"plaintext\": \"{}\", \"usedPrimary\": true}}",
            b64(format!("TOKEN={GITHUB}").as_bytes())
        );
        let (_, summary) = m
            .mask_byte_fields(byte_fields(&decrypt, true), body.as_bytes())
            .unwrap();
        assert_eq!(summary.counts.get("github-token"), Some(&1));
    }

    #[test]
    fn alphabets_escapes_and_bounds() {
        let m = Masker::new(None, KEY).unwrap();
        let fields = [scan("data")];
        let secret = format!("x{GITHUB}??>>");
        let url = URL_SAFE_NO_PAD.encode(secret.as_bytes());
        assert!(url.contains('-') || url.contains('_'));
        let body = format!("{{\"data\": \"{url}\"}}");
        let (out, _) = m.mask_byte_fields(&fields, body.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let text = v["data"].as_str().unwrap();
        assert!(!text.ends_with('='));
        let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap();
        assert!(decoded.contains("«masked:github-token:"), "{decoded}");
        // `\/` in the JSON string is a `/` of base64.
        let escaped = format!(
            "{{\"data\": \"{}\"}}",
            b64(format!("??? {GITHUB}").as_bytes()).replace('/', "\\/")
        );
        let (out, summary) = m.mask_byte_fields(&fields, escaped.as_bytes()).unwrap();
        assert_eq!(summary.total(), 1, "{}", String::from_utf8_lossy(&out));
        // Not base64, not JSON, or nothing to do: unchanged.
        for body in [
            "{\"data\": \"not base64!\"}",
            "not json",
            "{\"other\": \"Z2hw\"}",
        ] {
            let (out, s) = m.mask_byte_fields(&fields, body.as_bytes()).unwrap();
            assert_eq!((out.as_slice(), s.total()), (body.as_bytes(), 0));
        }
        assert!(
            m.mask_byte_fields(&fields, &vec![b' '; BYTE_FIELDS_LIMIT + 1])
                .is_none()
        );
    }
}
