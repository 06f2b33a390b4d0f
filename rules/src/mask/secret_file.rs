//! What an auditor's secret file may contain, as the candidate secrets whose fingerprints
//! `kubectl cassette search --secret-file` looks for: a service-account key file gives its
//! private key, a token file the trimmed token, any file the secrets the built-in detectors
//! find in it. Candidates are in the canonical form the masker fingerprints.

use super::detectors::{self, Canonical};
use super::{canonicalize, pem};

/// A candidate secret from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Where it came from: `private_key`, `whole file`, or a detector name.
    pub source: String,
    /// The secret, in canonical form.
    pub value: Vec<u8>,
}

/// The candidate secrets in a file, without duplicates, most specific first.
pub fn secret_candidates(file: &[u8]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut add = |source: &str, value: Vec<u8>| {
        if !value.is_empty() && !out.iter().any(|c| c.value == value) {
            out.push(Candidate {
                source: source.to_owned(),
                value,
            });
        }
    };
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(file) {
        for (name, value) in &fields {
            let Some(text) = value.as_str() else {
                continue;
            };
            if name == "private_key" {
                add("private_key", pem(text.as_bytes()));
            } else if is_secret_name(name) {
                add(name, text.as_bytes().to_vec());
            }
        }
    }
    for (b, regex) in detectors::compiled() {
        for caps in regex.captures_iter(file) {
            let Some(m) = caps.get(b.group.unwrap_or(0)) else {
                continue;
            };
            if let (Some(reject), Some(key)) = (b.reject_key, caps.get(1))
                && reject(key.as_bytes())
            {
                continue;
            }
            add(b.name, canonicalize(b.canonical, m.as_bytes()));
        }
    }
    let trimmed = String::from_utf8_lossy(file).trim().as_bytes().to_vec();
    let whole = if trimmed.starts_with(b"-----BEGIN") {
        canonicalize(Canonical::Pem, &trimmed)
    } else {
        trimmed
    };
    add("whole file", whole);
    out
}

fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "api_key", "apikey"]
        .iter()
        .any(|word| lower.ends_with(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_key_file() {
        let file = br#"{
  "type": "service_account",
  "project_id": "p",
  "private_key_id": "0123456789abcdef0123456789abcdef01234567",
  "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n",
  "client_email": "sa@p.iam.gserviceaccount.com"
}"#;
        let candidates = secret_candidates(file);
        assert_eq!(candidates[0].source, "private_key");
        assert_eq!(
            candidates[0].value,
            b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----".to_vec()
        );
    }

    #[test]
    fn token_files_are_trimmed() {
        let candidates = secret_candidates(b"  ghp_0123456789abcdefghijklmnopqrstuvwxyz\n");
        assert_eq!(
            candidates[0].value,
            b"ghp_0123456789abcdefghijklmnopqrstuvwxyz".to_vec()
        );
        // Found by the GitHub detector and as the whole file: listed once.
        assert_eq!(candidates.len(), 1);
    }

    #[test]
    fn secrets_inside_other_text() {
        let file = b"export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP\nexport DB_PASSWORD=s3cr%21t\n";
        let values: Vec<Vec<u8>> = secret_candidates(file)
            .into_iter()
            .map(|c| c.value)
            .collect();
        assert!(values.contains(&b"AKIAABCDEFGHIJKLMNOP".to_vec()));
        assert!(values.contains(&b"s3cr!t".to_vec()));
    }

    #[test]
    fn pem_files_are_normalised() {
        let file = b"-----BEGIN RSA PRIVATE KEY-----\r\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\r\n-----END RSA PRIVATE KEY-----\r\n";
        let candidates = secret_candidates(file);
        assert_eq!(
            candidates[0].value,
            b"-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----".to_vec()
        );
    }
}
