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
}
