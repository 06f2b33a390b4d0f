//! One normaliser for request paths, applied before git detection, classification and
//! policy, so that an agent cannot spell a request so that cassette reads one path and the
//! server another: `git%2Dreceive-pack`, `//`, `/./`, `/x/../`.
//!
//! Two readings come out. [`NormalizedPath::path`] is RFC 3986's normal form as Google's
//! front end and most servers apply it: escapes of unreserved characters decoded (§2.3),
//! hex digits upper-cased (§6.2.2.1), dot segments removed (§5.2.4), and empty segments
//! merged (nginx's `merge_slashes`, Apache's path walk); reserved escapes such as `%2F` stay,
//! since such servers do not split on them. [`NormalizedPath::decoded`] is what a server that
//! decodes everything before routing sees (nginx location matching, many frameworks):
//! escapes decoded first, then the same normalisation, with `\` as `/`. A decision that
//! must hold for every server checks both.

use std::fmt;

/// A request path in the two readings servers give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// RFC 3986 normal form: unreserved escapes decoded, dot segments removed, `//` merged,
    /// other escapes kept (upper-case hex). Always starts with `/`.
    pub path: String,
    /// Everything decoded, then normalised the same way (`\` read as `/`): the reading of a
    /// server that decodes before it routes.
    pub decoded: String,
}

impl NormalizedPath {
    /// The normal form with its remaining escapes decoded: what path rules are matched
    /// against (`/storage/v1/b/bkt/o/a%2Fb` is matched as `/storage/v1/b/bkt/o/a/b`).
    pub fn matching(&self) -> String {
        percent_encoding::percent_decode_str(&self.path)
            .decode_utf8_lossy()
            .into_owned()
    }

    /// Whether the two readings differ once escapes are decoded: the path holds an encoded
    /// `/`, `\` or dot segment that servers read differently. A decision that depends on
    /// the path (a git push under a gitRef rule) cannot be sure which one the server uses.
    pub fn is_ambiguous(&self) -> bool {
        self.matching() != self.decoded
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// Normalises a request path (without its query). Never fails: bytes that are not valid
/// escapes stay as written, invalid UTF-8 in decoded escapes is replaced.
pub fn normalize_path(raw: &str) -> NormalizedPath {
    let path = remove_dot_segments(&decode_unreserved(raw));
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .replace('\\', "/");
    NormalizedPath {
        path,
        decoded: remove_dot_segments(&decoded),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// Decodes `%XX` of unreserved characters and upper-cases the hex of the others.
fn decode_unreserved(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(escape) = bytes
            .get(i..i + 3)
            .filter(|e| e[0] == b'%' && e[1].is_ascii_hexdigit() && e[2].is_ascii_hexdigit())
        {
            let decoded: Vec<u8> = percent_encoding::percent_decode(escape).collect();
            match decoded.as_slice() {
                [b] if is_unreserved(*b) => out.push(char::from(*b)),
                _ => {
                    out.push('%');
                    out.push(char::from(escape[1].to_ascii_uppercase()));
                    out.push(char::from(escape[2].to_ascii_uppercase()));
                }
            }
            i += 3;
            continue;
        }
        // Not an escape: copy the character (raw is a str, so whole UTF-8 sequences).
        let ch = raw[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// RFC 3986 §5.2.4 with empty segments merged: `/a//b/./c/../d/` → `/a/b/d/`. `..` above
/// the root stays at the root. A path that ends in a dot segment or `/` keeps a trailing
/// slash, as the RFC's algorithm gives.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = path.ends_with('/');
    for segment in path.split('/') {
        match segment {
            "" => {}
            "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    if path.ends_with('/') {
        trailing = true;
    }
    let mut normal = String::with_capacity(path.len() + 1);
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing || out.is_empty() {
        normal.push('/');
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (as sent, normal form, decoded reading)
    #[test]
    fn attacker_spellings() {
        let cases = [
            (
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            (
                "/org/repo.git/git%2Dreceive-pack",
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            (
                "/org/repo.git/git%2dreceive%2Dpack",
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            (
                "/org/repo.git//git-receive-pack",
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            (
                "//org/repo.git/./git-receive-pack",
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            (
                "/org/repo.git/x/../git-receive-pack",
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            (
                "/org/repo.git/x/%2E%2E/git-receive-pack",
                "/org/repo.git/git-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            // An encoded slash is one segment to Google and Apache, a separator to a decoder.
            (
                "/org/repo.git/x%2F..%2Fgit-receive-pack",
                "/org/repo.git/x%2F..%2Fgit-receive-pack",
                "/org/repo.git/git-receive-pack",
            ),
            (
                "/storage/v1/b/bkt/o/a%2fb",
                "/storage/v1/b/bkt/o/a%2Fb",
                "/storage/v1/b/bkt/o/a/b",
            ),
            (
                "/storage/v1/b/x/../logs/o/y",
                "/storage/v1/b/logs/o/y",
                "/storage/v1/b/logs/o/y",
            ),
            ("/../../etc", "/etc", "/etc"),
            ("/a\\..\\b", "/a\\..\\b", "/b"),
            ("/a/b/", "/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/", "/a/b/"),
            ("/a/b/..", "/a/", "/a/"),
            ("", "/", "/"),
            ("/", "/", "/"),
            ("/caf%C3%A9/%zz", "/caf%C3%A9/%zz", "/café/%zz"),
        ];
        for (raw, path, decoded) in cases {
            let n = normalize_path(raw);
            assert_eq!(n.path, path, "{raw}");
            assert_eq!(n.decoded, decoded, "{raw}");
        }
        assert!(normalize_path("/repo.git/x%2F..%2Fgit-receive-pack").is_ambiguous());
        assert!(!normalize_path("/storage/v1/b/bkt/o/a%2Fb").is_ambiguous());
        assert!(!normalize_path("/org/repo.git//./git%2Dreceive-pack").is_ambiguous());
    }

    proptest! {
        /// Normalising the normal form again changes nothing, and neither reading holds a dot
        /// segment or an empty one.
        #[test]
        fn normalisation_is_idempotent(raw in "[a-z/.%2A-F\\\\]{0,40}") {
            let once = normalize_path(&raw);
            let twice = normalize_path(&once.path);
            prop_assert_eq!(&twice.path, &once.path);
            for reading in [&once.path, &once.decoded] {
                let inner = reading.trim_matches('/');
                prop_assert!(inner.is_empty() || inner.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{}", reading);
                prop_assert!(reading.starts_with('/'));
            }
        }
    }
}
