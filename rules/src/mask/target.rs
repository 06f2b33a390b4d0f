//! Masking of what is percent-encoded: request targets (path and query) and
//! `application/x-www-form-urlencoded` bodies. The text is decoded before the detectors see
//! it, so an escaped character cannot hide a secret from them, and each secret is masked in
//! the original spelling: the bytes around it stay exactly as the client sent them.
//!
//! Query and form parameters named in the secret-parameter list (`key`, `access_token`,
//! `X-Goog-Signature`, … and `spec.masking.secretParameters`) are masked whatever they hold.
//! Form bodies are masked whole, up to [`FORM_LIMIT`] bytes; what is longer streams through
//! the ordinary masker undecoded.

use percent_encoding::percent_decode;

use super::{Hit, Masker, Summary, mask_text};

/// The name masks carry for values of secret parameters.
pub const SECRET_PARAMETER: &str = "secret-parameter";

/// Parameter names whose values are masked whatever they hold, compared ASCII
/// case-insensitively: API keys, OAuth and bearer tokens, signed-URL signatures and
/// credentials (Google's V4 and V2 signing, AWS SigV4, Azure SAS), passwords.
pub const SECRET_PARAMETERS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "client_secret",
    "assertion",
    "subject_token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "sig",
    "signature",
    "x-goog-signature",
    "x-goog-credential",
    "x-goog-security-token",
    "googleaccessid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// The longest form body masked after decoding; a longer one is masked as it streams,
/// undecoded.
pub const FORM_LIMIT: usize = 1 << 20;

/// Percent-decodes `raw` (and `+` as a space when `plus`), and says where each decoded byte
/// came from: `map[i]` is the offset in `raw` of decoded byte `i`, and `map[len]` is
/// `raw.len()`. Invalid escapes are kept as written, as servers keep them.
pub(crate) fn decode_with_map(raw: &[u8], plus: bool) -> (Vec<u8>, Vec<usize>) {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut map = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    while i < raw.len() {
        map.push(i);
        let escape = raw
            .get(i..i + 3)
            .filter(|e| e[0] == b'%' && e[1].is_ascii_hexdigit() && e[2].is_ascii_hexdigit());
        match (escape, raw[i]) {
            (Some(escape), _) => {
                decoded.extend(percent_decode(escape));
                i += 3;
            }
            (None, b'+') if plus => {
                decoded.push(b' ');
                i += 1;
            }
            (None, b) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    map.push(raw.len());
    (decoded, map)
}

impl Masker {
    /// Masks a request target (`/path?query`, or an absolute-form URL) for the recording,
    /// `status.pendingReviews` and logs: the path and each query value are decoded and
    /// scanned by the detectors, secret parameters are masked whole, and the target keeps
    /// its spelling around every mask. Hit offsets are byte offsets into `target`.
    pub fn mask_target(&self, target: &str) -> (String, Summary) {
        let mut summary = Summary::default();
        let mut out = Vec::with_capacity(target.len());
        let raw = target.as_bytes();
        // An absolute-form target: the scheme and host stay; a password in userinfo does not.
        let mut at = 0;
        if let Some(scheme_end) = target.find("://")
            && target[..scheme_end]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            let authority_start = scheme_end + 3;
            let authority_end = target[authority_start..]
                .find(['/', '?', '#'])
                .map_or(target.len(), |i| authority_start + i);
            let authority = &target[authority_start..authority_end];
            out.extend_from_slice(&raw[..authority_start]);
            match authority.rfind('@') {
                Some(user_end) => {
                    let userinfo = &authority[..user_end];
                    match userinfo.split_once(':') {
                        Some((user, password)) if !password.is_empty() => {
                            out.extend_from_slice(user.as_bytes());
                            out.push(b':');
                            let start = authority_start + user.len() + 1;
                            self.mask_whole(
                                &raw[start..start + password.len()],
                                false,
                                start,
                                &mut out,
                                &mut summary,
                            );
                            out.extend_from_slice(&raw[authority_start + user_end..authority_end]);
                        }
                        _ => out.extend_from_slice(authority.as_bytes()),
                    }
                }
                None => out.extend_from_slice(authority.as_bytes()),
            }
            at = authority_end;
        }
        let rest = &target[at..];
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        self.mask_decoded(path.as_bytes(), false, at, &mut out, &mut summary);
        if let Some(query) = query {
            out.push(b'?');
            let base = at + path.len() + 1;
            self.mask_pairs(query.as_bytes(), base, &mut out, &mut summary);
        }
        (String::from_utf8_lossy(&out).into_owned(), summary)
    }

    /// Masks a whole `application/x-www-form-urlencoded` body: each `name=value` pair is
    /// decoded and scanned, secret parameters are masked whole, and the body keeps its
    /// spelling around every mask.
    pub fn mask_form(&self, body: &[u8]) -> (Vec<u8>, Summary) {
        let mut summary = Summary::default();
        let mut out = Vec::with_capacity(body.len());
        self.mask_pairs(body, 0, &mut out, &mut summary);
        (out, summary)
    }

    /// Whether `name` (decoded) is a secret parameter.
    pub fn is_secret_parameter(&self, name: &[u8]) -> bool {
        self.secret_parameters
            .iter()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(name))
    }

    /// `a=1&b=2`, starting at offset `base` of what is being masked.
    fn mask_pairs(&self, raw: &[u8], base: usize, out: &mut Vec<u8>, summary: &mut Summary) {
        let mut start = 0;
        for (i, pair) in raw.split(|b| *b == b'&').enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            let eq = pair.iter().position(|b| *b == b'=');
            let secret_name = eq.is_some_and(|eq| {
                let (name, _) = decode_with_map(&pair[..eq], true);
                self.is_secret_parameter(name.trim_ascii())
            });
            match eq {
                Some(eq) if secret_name && eq + 1 < pair.len() => {
                    out.extend_from_slice(&pair[..=eq]);
                    self.mask_whole(&pair[eq + 1..], true, base + start + eq + 1, out, summary);
                }
                // The whole pair is scanned, so that `password=…` detectors see the name.
                _ => self.mask_decoded(pair, true, base + start, out, summary),
            }
            start += pair.len() + 1;
        }
    }

    /// Masks all of `raw` as one secret parameter value, fingerprinted decoded.
    fn mask_whole(
        &self,
        raw: &[u8],
        plus: bool,
        offset: usize,
        out: &mut Vec<u8>,
        summary: &mut Summary,
    ) {
        let (decoded, _) = decode_with_map(raw, plus);
        let fingerprint = self.fingerprint(&decoded);
        out.extend_from_slice(mask_text(SECRET_PARAMETER, &fingerprint).as_bytes());
        summary.record(Hit {
            detector: SECRET_PARAMETER.to_owned(),
            fingerprint,
            offset: offset as u64,
            len: raw.len() as u64,
        });
    }

    /// Decodes `raw`, runs the detectors over the decoded bytes, and writes `raw` with each
    /// secret's original spelling replaced by its mask.
    fn mask_decoded(
        &self,
        raw: &[u8],
        plus: bool,
        offset: usize,
        out: &mut Vec<u8>,
        summary: &mut Summary,
    ) {
        let (decoded, map) = decode_with_map(raw, plus);
        let (_, found) = self.mask(super::BodyKind::Other, &decoded);
        let mut written = 0;
        for hit in found.hits {
            let start = map[hit.offset as usize];
            let end = map[(hit.offset + hit.len) as usize];
            out.extend_from_slice(&raw[written..start]);
            out.extend_from_slice(mask_text(&hit.detector, &hit.fingerprint).as_bytes());
            written = end;
            summary.record(Hit {
                offset: (offset + start) as u64,
                len: (end - start) as u64,
                ..hit
            });
        }
        out.extend_from_slice(&raw[written..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::fingerprint;
    use cassette_api::{Detector, Masking};

    const KEY: &[u8] = b"target key";
    const API_KEY: &str = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW";
    const ACCESS_TOKEN: &str = "ya29.a0AfB_byC1d2E3f4G5h6I7j8K9l0MnOpQrStUvWxYz-_0123456789";

    fn masker() -> Masker {
        Masker::new(None, KEY).unwrap()
    }

    fn mask(detector: &str, secret: &str) -> String {
        mask_text(detector, &fingerprint(KEY, secret.as_bytes()))
    }

    #[test]
    fn decoding_maps_back_to_the_original_spelling() {
        let (decoded, map) = decode_with_map(b"a%2Fb+c%zz%4", true);
        assert_eq!(decoded, b"a/b c%zz%4");
        assert_eq!(map, vec![0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let (decoded, _) = decode_with_map(b"a+b", false);
        assert_eq!(decoded, b"a+b");
    }

    /// The attacker's and the client library's spellings of secrets in a request target.
    #[test]
    fn secrets_in_request_targets() {
        let m = masker();
        let escaped_token = ACCESS_TOKEN.replace('_', "%5F").replace('.', "%2E");
        let escaped_key = format!(
            "{}%{:02X}{}",
            &API_KEY[..10],
            API_KEY.as_bytes()[10],
            &API_KEY[11..]
        );
        let cases: Vec<(String, String)> = vec![
            // A key in the query, as the Maps and Generative Language clients send it.
            (
                format!("/v1/models?key={API_KEY}&alt=json"),
                format!("/v1/models?key={}&alt=json", mask(SECRET_PARAMETER, API_KEY)),
            ),
            // access_token as a parameter name, with its characters escaped.
            (
                format!("/storage/v1/b?access_token={escaped_token}"),
                format!("/storage/v1/b?access_token={}", mask(SECRET_PARAMETER, ACCESS_TOKEN)),
            ),
            // A token under a name no list holds: the detector finds it decoded.
            (
                format!("/x?q={escaped_token}&page=2"),
                format!("/x?q={}&page=2", mask("google-oauth-token", ACCESS_TOKEN)),
            ),
            // An API key in the path, one character escaped.
            (
                format!("/v1/keys/{escaped_key}/lookup"),
                format!("/v1/keys/{}/lookup", mask("google-api-key", API_KEY)),
            ),
            // A V4 signed URL: the signature and the credential are masked, the rest stays.
            (
                "/bkt/obj?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20261125%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=20261125T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=0a1b2c3d4e5f".to_owned(),
                format!(
                    "/bkt/obj?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={}&X-Goog-Date=20261125T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature={}",
                    mask(SECRET_PARAMETER, "sa@p.iam.gserviceaccount.com/20261125/auto/storage/goog4_request"),
                    mask(SECRET_PARAMETER, "0a1b2c3d4e5f"),
                ),
            ),
            // The name escaped, in another case.
            (
                "/x?%53ig=abc&Password=p%40ss".to_owned(),
                format!("/x?%53ig={}&Password={}", mask(SECRET_PARAMETER, "abc"), mask(SECRET_PARAMETER, "p@ss")),
            ),
            // Userinfo in an absolute-form target.
            (
                "http://user:hunter2@example.com/a?b=1".to_owned(),
                format!("http://user:{}@example.com/a?b=1", mask(SECRET_PARAMETER, "hunter2")),
            ),
            // Nothing secret: unchanged, byte for byte.
            (
                "/storage/v1/b/bkt/o/a%2Fb?alt=media&key=".to_owned(),
                "/storage/v1/b/bkt/o/a%2Fb?alt=media&key=".to_owned(),
            ),
        ];
        for (target, want) in cases {
            let (got, summary) = m.mask_target(&target);
            assert_eq!(got, want, "{target}");
            assert_eq!(
                summary.total() as usize,
                want.matches("«masked:").count(),
                "{target}"
            );
            for hit in &summary.hits {
                // Offsets point at the original spelling in the target.
                assert!(
                    hit.offset + hit.len <= target.len() as u64,
                    "{target}: {hit:?}"
                );
            }
        }
    }

    #[test]
    fn secret_parameters_are_configurable() {
        let masking = Masking {
            secret_parameters: vec!["X-Internal-Ticket".into()],
            ..Masking::default()
        };
        let m = Masker::new(Some(&masking), KEY).unwrap();
        let (got, _) = m.mask_target("/a?x-internal-ticket=t1&sig=s");
        assert_eq!(
            got,
            format!(
                "/a?x-internal-ticket={}&sig={}",
                mask(SECRET_PARAMETER, "t1"),
                mask(SECRET_PARAMETER, "s")
            )
        );
        let off = Masking {
            disabled_detectors: vec![Detector::SecretParameters],
            ..Masking::default()
        };
        let m = Masker::new(Some(&off), KEY).unwrap();
        let (got, summary) = m.mask_target("/a?sig=s");
        assert_eq!(got, "/a?sig=s");
        assert_eq!(summary.total(), 0);
        // The detectors still run on the values.
        let (got, _) = m.mask_target(&format!("/a?key={API_KEY}"));
        assert_eq!(got, format!("/a?key={}", mask("google-api-key", API_KEY)));
    }

    #[test]
    fn form_bodies_keep_their_spelling() {
        let m = masker();
        let (out, summary) = m.mask_form(b"grant_type=refresh_token&refresh_token=1%2F%2F0gAbCdEfGhIjKlMnOpQrStUvWxYz&client_id=c.apps");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "grant_type=refresh_token&refresh_token={}&client_id=c.apps",
                mask(SECRET_PARAMETER, "1//0gAbCdEfGhIjKlMnOpQrStUvWxYz")
            )
        );
        assert_eq!(summary.hits[0].offset, 39);
    }
}
