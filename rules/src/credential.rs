//! Brokered credentials (`spec.credentials`): which hosts an entry is for, and where its
//! placeholder sits in a request in the entry's presentation, so the sidecar can put the real
//! value there. Pure: the sidecar reads the Secret and decides on TLS; this reads names and
//! header values only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cassette_api::Presentation;

use crate::glob::{PatternError, normalize_host};

/// A host a credential is for: exactly this name, or any one label under a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialHost {
    /// Exactly this host.
    Exact(String),
    /// One label and then this suffix, which starts with a dot: `*.example.com` matches
    /// `a.example.com`, neither `example.com` nor `a.b.example.com` (as a TLS wildcard does).
    OneLabel(String),
}

impl CredentialHost {
    /// Parses `api.github.com` or `*.gitlab.example.com`. Refused: wildcards other than one
    /// leading `*.` label over a domain of two labels or more, and Google hosts.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let (wildcard, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if name.contains('*') || (!wildcard && pattern.contains('*')) {
            return Err(PatternError(format!(
                "{pattern:?} is wider than one label: a wildcard is one leading *. before a domain, such as *.gitlab.example.com; list other hosts one by one"
            )));
        }
        if !is_dns_name(name) {
            return Err(PatternError(format!(
                "{pattern:?} is not a host: use a lowercase DNS name such as api.github.com, or *. before one such as *.gitlab.example.com"
            )));
        }
        if wildcard && !name.contains('.') {
            return Err(PatternError(format!(
                "{pattern:?} covers a whole top-level domain: a wildcard needs a domain of at least two labels, such as *.example.com"
            )));
        }
        if is_google_host(name) {
            return Err(PatternError(format!(
                "{pattern:?} is a Google host: the sidecar presents Workload Identity tokens there, so it cannot broker another credential; remove the host"
            )));
        }
        Ok(if wildcard {
            CredentialHost::OneLabel(format!(".{name}"))
        } else {
            CredentialHost::Exact(name.to_owned())
        })
    }

    /// Whether `host` (any case, maybe with a port or a trailing dot) is this one.
    pub fn matches(&self, host: &str) -> bool {
        let host = normalize_host(host);
        match self {
            CredentialHost::Exact(name) => host == *name,
            CredentialHost::OneLabel(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// Whether `host` is Google's (its APIs, its sites, its metadata server): those get tokens
/// from Workload Identity and are never a brokered credential's host.
pub fn is_google_host(host: &str) -> bool {
    let host = normalize_host(host);
    let under = |domain: &str| {
        host == domain
            || host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.ends_with('.'))
    };
    under("googleapis.com") || under("google.com") || under("google.internal")
}

/// Where a credential travels in a request: the presentation of an entry, with its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer <value>`.
    Bearer,
    /// `Authorization: token <value>`.
    Token,
    /// `Authorization: Basic base64(<user>:<value>)`.
    Basic,
    /// `<header>: <value>`; the name is lowercase.
    Header(String),
}

impl Carrier {
    /// The carrier of `presentation`; `None` for Header without a header name.
    pub fn new(presentation: Presentation, header: Option<&str>) -> Option<Self> {
        Some(match presentation {
            Presentation::Bearer => Carrier::Bearer,
            Presentation::Token => Carrier::Token,
            Presentation::Basic => Carrier::Basic,
            Presentation::Header => Carrier::Header(header?.to_ascii_lowercase()),
        })
    }

    /// The header that carries it, lowercase.
    pub fn header_name(&self) -> &str {
        match self {
            Carrier::Bearer | Carrier::Token | Carrier::Basic => "authorization",
            Carrier::Header(name) => name,
        }
    }

    /// How it is named in the notes of records: `Authorization: Bearer`, …, `<header> header`.
    pub fn describe(&self) -> String {
        match self {
            Carrier::Bearer => "Authorization: Bearer".into(),
            Carrier::Token => "Authorization: token".into(),
            Carrier::Basic => "Authorization: Basic password".into(),
            Carrier::Header(name) => format!("{name} header"),
        }
    }

    /// The value of [`Self::header_name`] with `secret` where `placeholder` was, when `value`
    /// holds the placeholder in this presentation and nowhere else; `None` otherwise.
    pub fn swap(&self, value: &str, placeholder: &str, secret: &str) -> Option<String> {
        let scheme = |want: &str| {
            let (scheme, rest) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case(want).then(|| rest.trim())
        };
        match self {
            Carrier::Bearer => {
                (scheme("bearer")? == placeholder).then(|| format!("Bearer {secret}"))
            }
            Carrier::Token => (scheme("token")? == placeholder).then(|| format!("token {secret}")),
            Carrier::Basic => {
                let (user, password) = basic_credentials(scheme("basic")?)?;
                (password == placeholder && !user.contains(placeholder))
                    .then(|| format!("Basic {}", BASE64.encode(format!("{user}:{secret}"))))
            }
            Carrier::Header(_) => (value.trim() == placeholder).then(|| secret.to_owned()),
        }
    }
}

/// Whether `value` carries `placeholder` in any form the agent could send it: as it is, or
/// inside Basic credentials.
pub fn mentions(value: &str, placeholder: &str) -> bool {
    if value.contains(placeholder) {
        return true;
    }
    value
        .trim()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| BASE64.decode(b64.trim()).ok())
        .is_some_and(|decoded| {
            decoded
                .windows(placeholder.len())
                .any(|w| w == placeholder.as_bytes())
        })
}

/// Finds placeholders in bytes fed a chunk at a time (a request body), across the chunks'
/// boundaries; each placeholder is reported once, where it is first seen.
pub struct PlaceholderScan {
    finder: aho_corasick::AhoCorasick,
    /// The longest placeholder, less one byte: what of the last chunk a match may start in.
    keep: usize,
    carry: Vec<u8>,
    found: Vec<bool>,
}

impl PlaceholderScan {
    /// A scan for `placeholders`; `None` when there are none.
    pub fn new(placeholders: &[&str]) -> Option<Self> {
        let longest = placeholders.iter().map(|p| p.len()).max()?;
        if longest == 0 {
            return None;
        }
        let finder = aho_corasick::AhoCorasick::new(placeholders).ok()?;
        Some(Self {
            finder,
            keep: longest - 1,
            carry: Vec::new(),
            found: vec![false; placeholders.len()],
        })
    }

    /// The indices (into the placeholders given) first seen with this chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<usize> {
        let mut new = Vec::new();
        let mut look = |bytes: &[u8], found: &mut Vec<bool>| {
            for m in self.finder.find_overlapping_iter(bytes) {
                let i = m.pattern().as_usize();
                if !found[i] {
                    found[i] = true;
                    new.push(i);
                }
            }
        };
        // A placeholder that straddles the boundary: the carried tail and the chunk's head.
        let mut joint = std::mem::take(&mut self.carry);
        let tail_start = joint.len();
        joint.extend_from_slice(&chunk[..chunk.len().min(self.keep)]);
        if tail_start > 0 {
            look(&joint, &mut self.found);
        }
        look(chunk, &mut self.found);
        self.carry = if chunk.len() >= self.keep {
            chunk[chunk.len() - self.keep..].to_vec()
        } else {
            joint.truncate(tail_start);
            joint.extend_from_slice(chunk);
            let excess = joint.len().saturating_sub(self.keep);
            joint.drain(..excess);
            joint
        };
        new
    }
}

/// The user and password of Basic credentials (`base64(user:password)`).
fn basic_credentials(b64: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(BASE64.decode(b64).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The placeholder of entry `name` for one pod: `cassette-placeholder-<name>-<hex>`.
pub fn placeholder(name: &str, random: &[u8]) -> String {
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PLACEHOLDER_PREFIX}{name}-{hex}")
}

/// What every brokered placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "cassette-placeholder-";

/// Bytes of randomness in a placeholder (hex-encoded, twice as many characters).
pub const PLACEHOLDER_RANDOM_BYTES: usize = 16;

/// Whether `text` is a placeholder [`placeholder`] makes for entry `name`: an injector can
/// keep an earlier pass's placeholder only when it is one, never a value the pod chose.
pub fn is_placeholder_for(name: &str, text: &str) -> bool {
    text.strip_prefix(PLACEHOLDER_PREFIX)
        .and_then(|rest| rest.strip_prefix(name))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            hex.len() == 2 * PLACEHOLDER_RANDOM_BYTES
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "cassette-placeholder-github-00112233445566778899aabbccddeeff";

    #[test]
    fn exact_hosts_match_themselves_only() {
        let h = CredentialHost::parse("api.github.com").unwrap();
        for host in [
            "api.github.com",
            "API.GitHub.com",
            "api.github.com.",
            "api.github.com:443",
        ] {
            assert!(h.matches(host), "{host}");
        }
        for host in [
            "github.com",
            "x.api.github.com",
            "api.github.com.evil.example",
            "evilapi.github.com",
        ] {
            assert!(!h.matches(host), "{host}");
        }
    }

    #[test]
    fn a_wildcard_matches_one_label_only() {
        let h = CredentialHost::parse("*.gitlab.example.com").unwrap();
        assert!(h.matches("code.gitlab.example.com"));
        assert!(h.matches("CODE.gitlab.example.com:443"));
        for host in [
            "gitlab.example.com",
            "a.b.gitlab.example.com",
            ".gitlab.example.com",
            "xgitlab.example.com",
            "code.gitlab.example.com.evil.example",
        ] {
            assert!(!h.matches(host), "{host}");
        }
    }

    #[test]
    fn wide_wildcards_and_google_hosts_are_refused() {
        for (pattern, says) in [
            ("*", "wider than one label"),
            ("*.*.example.com", "wider than one label"),
            ("*x.com", "wider than one label"),
            ("a.*.example.com", "wider than one label"),
            ("*.com", "top-level domain"),
            ("", "not a host"),
            ("GitHub.com", "not a host"),
            ("github.com/", "not a host"),
            ("*.googleapis.com", "Google host"),
            ("googleapis.com", "Google host"),
            ("storage.googleapis.com", "Google host"),
            ("*.google.com", "Google host"),
            ("source.developers.google.com", "Google host"),
            ("metadata.google.internal", "Google host"),
        ] {
            let e = CredentialHost::parse(pattern).unwrap_err();
            assert!(e.0.contains(says), "{pattern:?}: {}", e.0);
        }
        for ok in [
            "github.com",
            "*.example.com",
            "googleapis.com.example.org",
            "notgoogle.com",
        ] {
            assert!(CredentialHost::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn each_presentation_swaps_only_its_own_form() {
        let basic =
            |user: &str, pw: &str| format!("Basic {}", BASE64.encode(format!("{user}:{pw}")));
        let cases: Vec<(Carrier, String, Option<String>)> = vec![
            (
                Carrier::Bearer,
                format!("Bearer {P}"),
                Some("Bearer ghp_real".into()),
            ),
            (
                Carrier::Bearer,
                format!("bearer  {P} "),
                Some("Bearer ghp_real".into()),
            ),
            (Carrier::Bearer, format!("token {P}"), None),
            (Carrier::Bearer, format!("Bearer {P}x"), None),
            (
                Carrier::Token,
                format!("token {P}"),
                Some("token ghp_real".into()),
            ),
            (Carrier::Token, format!("Bearer {P}"), None),
            (
                Carrier::Basic,
                basic("x-access-token", P),
                Some(basic("x-access-token", "ghp_real")),
            ),
            (Carrier::Basic, basic(P, "x-oauth-basic"), None),
            (Carrier::Basic, format!("Bearer {P}"), None),
            (Carrier::Basic, "Basic !!notbase64".into(), None),
            (
                Carrier::Header("private-token".into()),
                P.into(),
                Some("ghp_real".into()),
            ),
            (
                Carrier::Header("private-token".into()),
                format!("Bearer {P}"),
                None,
            ),
        ];
        for (carrier, value, want) in cases {
            assert_eq!(
                carrier.swap(&value, P, "ghp_real"),
                want,
                "{carrier:?} {value:?}"
            );
        }
    }

    #[test]
    fn presentations_name_their_header() {
        assert_eq!(
            Carrier::new(Presentation::Bearer, None)
                .unwrap()
                .header_name(),
            "authorization"
        );
        assert_eq!(
            Carrier::new(Presentation::Basic, None)
                .unwrap()
                .header_name(),
            "authorization"
        );
        assert_eq!(
            Carrier::new(Presentation::Header, Some("PRIVATE-TOKEN"))
                .unwrap()
                .header_name(),
            "private-token"
        );
        assert_eq!(Carrier::new(Presentation::Header, None), None);
    }

    #[test]
    fn a_placeholder_is_found_in_any_form() {
        assert!(mentions(&format!("Bearer {P}"), P));
        assert!(mentions(&format!("x{P}y"), P));
        assert!(mentions(
            &format!("Basic {}", BASE64.encode(format!("{P}:x"))),
            P
        ));
        assert!(mentions(
            &format!("basic {}", BASE64.encode(format!("u:{P}"))),
            P
        ));
        assert!(!mentions("Bearer ghp_other", P));
        assert!(!mentions(&format!("Basic {}", BASE64.encode("u:pw")), P));
    }

    #[test]
    fn a_placeholder_is_found_in_a_body_however_it_is_split() {
        let other = "cassette-placeholder-gitlab-ffeeddccbbaa99887766554433221100";
        let body = format!("{{\"a\": \"{P}\", \"b\": \"{P}\", \"c\": \"{other}\"}}");
        for size in [1, 2, 7, 40, 61, 62, 1000] {
            let mut scan = PlaceholderScan::new(&[P, other]).unwrap();
            let mut found = Vec::new();
            for chunk in body.as_bytes().chunks(size) {
                found.extend(scan.feed(chunk));
            }
            assert_eq!(found, [0, 1], "chunks of {size}");
        }
        let mut scan = PlaceholderScan::new(&[P]).unwrap();
        assert!(scan.feed(b"cassette-placeholder-github-0011").is_empty());
        assert!(scan.feed(b"nothing here").is_empty());
        assert!(scan.feed(b"2233445566778899aabbccddeeff").is_empty());
        assert!(PlaceholderScan::new(&[]).is_none());
    }

    #[test]
    fn placeholders_are_recognised_by_their_shape() {
        let p = placeholder("github", &[0xab; PLACEHOLDER_RANDOM_BYTES]);
        assert!(is_placeholder_for("github", &p));
        assert!(!is_placeholder_for("gitlab", &p));
        assert!(!is_placeholder_for(
            "github",
            "cassette-placeholder-github-"
        ));
        assert!(!is_placeholder_for("github", "ghp_chosen_by_the_pod"));
        assert!(!is_placeholder_for("github", &format!("{p}0")));
        assert!(!is_placeholder_for("github", &p.to_uppercase()));
    }
}
