//! Headers as the recording keeps them: in order, as text, masked where they carry secrets.

use cassette_recording::record::Header;
use cassette_rules::mask::Masker;
use http::HeaderMap;
use std::collections::BTreeMap;

/// Headers as recorded, in order, without masking (for what the sidecar itself produced).
pub fn headers(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Headers as recorded, with credentials and secrets masked; also the masks per detector.
pub fn masked_headers(map: &HeaderMap, masker: &Masker) -> (Vec<Header>, BTreeMap<String, u64>) {
    let mut counts = BTreeMap::new();
    let headers = map
        .iter()
        .map(|(name, value)| {
            let value = match masker.mask_header(name.as_str(), value.as_bytes()) {
                Some((masked, summary)) => {
                    for (detector, n) in summary.counts {
                        *counts.entry(detector).or_insert(0) += n;
                    }
                    String::from_utf8_lossy(&masked).into_owned()
                }
                None => String::from_utf8_lossy(value.as_bytes()).into_owned(),
            };
            (name.as_str().to_string(), value)
        })
        .collect();
    (headers, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_headers_are_masked_and_counted() {
        let masker = Masker::new(None, b"k").unwrap();
        let mut map = HeaderMap::new();
        map.insert("authorization", "Bearer ya29.a0AfH6SMBxyz".parse().unwrap());
        map.insert("accept", "*/*".parse().unwrap());
        let (recorded, counts) = masked_headers(&map, &masker);
        assert_eq!(recorded[1], ("accept".to_string(), "*/*".to_string()));
        assert!(recorded[0].1.contains("«masked:"), "{recorded:?}");
        assert!(!recorded[0].1.contains("ya29"), "{recorded:?}");
        assert_eq!(counts.values().sum::<u64>(), 1);
    }

    const KEY: &[u8] = b"session fingerprint key";

    // Fake secrets shaped like real ones: a Google API key, an access token, GitHub, GitLab.
    const SECRETS: [&str; 4] = [
        "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
        "ya29.a0AfB_byC1d2E3f4G5h6I7j8K9l0MnOpQrStUvWxYz-_0123456789",
        "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
        "glpat-xYz0123456789abcdEFGH",
    ];

    /// Built once: compiling the detectors is the slow part of a case in a debug build.
    fn masker() -> &'static Masker {
        static MASKER: std::sync::LazyLock<Masker> =
            std::sync::LazyLock::new(|| Masker::new(None, KEY).unwrap());
        &MASKER
    }

    /// What `kubectl cassette search --secret-file` computes for a file holding `secret`.
    fn searched(secret: &str) -> Vec<String> {
        cassette_rules::mask::secret_candidates(secret.as_bytes())
            .into_iter()
            .map(|c| cassette_rules::mask::fingerprint(KEY, &c.value))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
        ))]

        /// A secret in any trailer field, among other text and other fields, is recorded
        /// masked (in no field in clear), and search finds the fingerprint it was masked with.
        #[test]
        fn secrets_in_trailers_are_masked_and_found_by_search(
            fields in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        "[a-z][a-z0-9-]{0,15}",
                        proptest::sample::select(vec![
                            "x-goog-api-key".to_string(),
                            "authorization".to_string(),
                            "proxy-authorization".to_string(),
                            "grpc-message".to_string(),
                            "cookie".to_string(),
                        ]),
                    ],
                    0usize..4,
                    "[a-zA-Z0-9 ,;=]{0,30}",
                    "[a-zA-Z0-9 ,;=]{0,30}",
                ),
                1..4,
            ),
        ) {
            let mut map = HeaderMap::new();
            for (name, which, before, after) in &fields {
                // Spaces apart: text run into a token would be part of it.
                let value = format!("{before} {} {after}", SECRETS[*which]);
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            let (recorded, counts) = masked_headers(&map, masker());
            for (name, which, _, _) in &fields {
                let secret = SECRETS[*which];
                for (_, value) in &recorded {
                    proptest::prop_assert!(!value.contains(secret), "{:?}", recorded);
                }
                let found = searched(secret);
                proptest::prop_assert!(
                    recorded.iter().any(|(n, v)| n == name
                        && found.iter().any(|fp| v.contains(&format!(":{fp}»")))),
                    "{} carried {} but search finds no mask of it in {:?}", name, secret, recorded
                );
            }
            proptest::prop_assert!(counts.values().sum::<u64>() >= 1);
        }
    }
}
