//! The patterns an admin writes in an AgentSession — host names, path and ref globs, IAM
//! permission groups — parsed once and matched many times.
//!
//! Parsing is strict (a pattern that would never match what its author meant is an error);
//! matching never fails.

use regex::Regex;

/// Why a pattern was refused, in words that say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

/// A host name, or `*.domain` for any subdomain of domain (not domain itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host.
    Exact(String),
    /// Any host ending in this suffix, which starts with a dot.
    Subdomains(String),
}

impl HostPattern {
    /// Parses `github.com` or `*.googleapis.com` (lowercase DNS names, as the CRD requires).
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let (wildcard, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if !is_dns_name(name) {
            return Err(PatternError(format!(
                "{pattern:?} is not a host pattern: use a lowercase DNS name such as github.com, or *. before one such as *.googleapis.com"
            )));
        }
        Ok(if wildcard {
            HostPattern::Subdomains(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether `host` (as sent: any case, maybe with a port or a trailing dot) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = normalize_host(host);
        match self {
            HostPattern::Exact(name) => host == *name,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// The host as policy compares it: lowercase, without port and without a trailing dot.
pub fn normalize_host(host: &str) -> String {
    let name = if host.starts_with('[') {
        // An IPv6 literal keeps its colons; only what follows the bracket is a port.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
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

/// A glob over `/`-separated names (request paths, git refs): `*` matches within one segment,
/// a `**` segment matches any number of segments, including none.
#[derive(Debug, Clone)]
pub struct SegmentGlob {
    source: String,
    regex: Regex,
}

impl SegmentGlob {
    /// Parses a glob; `**` must be a whole segment, such as `/storage/v1/b/**`.
    pub fn parse(glob: &str) -> Result<Self, PatternError> {
        let mut pattern = String::from("(?s)^");
        let mut segments = glob.split('/').peekable();
        let mut first = true;
        while let Some(segment) = segments.next() {
            let slash = if first { "" } else { "/" };
            first = false;
            if segment == "**" {
                if slash.is_empty() {
                    // A leading ** (no slash before it): any prefix, including none.
                    pattern.push_str("(?:.*/)?");
                    if segments.peek().is_none() {
                        pattern.push_str(".*");
                    }
                    first = true;
                    continue;
                }
                pattern.push_str("(?:/.*)?");
                continue;
            }
            if segment.contains("**") {
                return Err(PatternError(format!(
                    "{glob:?}: ** must be a whole segment, such as /storage/v1/b/** or refs/heads/**; use * within a segment"
                )));
            }
            pattern.push_str(slash);
            let mut parts = segment.split('*');
            if let Some(part) = parts.next() {
                pattern.push_str(&regex::escape(part));
            }
            for part in parts {
                pattern.push_str("[^/]*");
                pattern.push_str(&regex::escape(part));
            }
        }
        pattern.push('$');
        let regex = Regex::new(&pattern)
            .map_err(|e| PatternError(format!("{glob:?} cannot be used as a glob: {e}")))?;
        Ok(SegmentGlob {
            source: glob.to_owned(),
            regex,
        })
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// An IAM permission (`storage.objects.delete`) or a group of them (`storage.buckets.*`,
/// `storage.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionPattern {
    /// Exactly this permission.
    Exact(String),
    /// Every permission starting with this prefix, which ends with a dot.
    Group(String),
}

impl PermissionPattern {
    /// Parses a permission or a group ending in `.*`, as the CRD describes.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let refuse = || {
            PatternError(format!(
                "{pattern:?} is not an IAM permission: use service.resource.verb such as storage.objects.delete, or end in * such as storage.buckets.*"
            ))
        };
        let parts: Vec<&str> = pattern.split('.').collect();
        let name_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        let service_ok = |s: &str| {
            s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && s.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        match parts.as_slice() {
            [service, "*"] if service_ok(service) => {
                Ok(PermissionPattern::Group(format!("{service}.")))
            }
            [service, resource, "*"] if service_ok(service) && name_ok(resource) => {
                Ok(PermissionPattern::Group(format!("{service}.{resource}.")))
            }
            [service, resource, verb]
                if service_ok(service) && name_ok(resource) && name_ok(verb) =>
            {
                Ok(PermissionPattern::Exact(pattern.to_owned()))
            }
            _ => Err(refuse()),
        }
    }

    /// Whether `permission` is this one or in this group.
    pub fn matches(&self, permission: &str) -> bool {
        match self {
            PermissionPattern::Exact(p) => permission == p,
            PermissionPattern::Group(prefix) => {
                permission.len() > prefix.len() && permission.starts_with(prefix.as_str())
            }
        }
    }
}

/// Decodes `%XX` escapes in a request path, so that `/b/pro%64` is matched as `/b/prod`
/// (Google decodes them too). Invalid escapes stay as they are; invalid UTF-8 is replaced.
pub fn decode_path(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let cases = [
            ("*.googleapis.com", "storage.googleapis.com", true),
            ("*.googleapis.com", "STORAGE.googleapis.com:443", true),
            ("*.googleapis.com", "a.b.googleapis.com", true),
            ("*.googleapis.com", "googleapis.com", false),
            ("*.googleapis.com", "evilgoogleapis.com", false),
            ("github.com", "github.com", true),
            ("github.com", "github.com.", true),
            ("github.com", "api.github.com", false),
            ("github.com", "github.com:8443", true),
        ];
        for (pattern, host, want) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(host), want, "{pattern} vs {host}");
        }
    }

    #[test]
    fn host_pattern_errors() {
        for bad in [
            "",
            "*",
            "*.",
            "GitHub.com",
            "-a.com",
            "a..com",
            "**.com",
            "a.*.com",
            "http://a.com",
        ] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn normalize_hosts() {
        assert_eq!(normalize_host("Example.COM:443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("example.com"), "example.com");
    }

    #[test]
    fn segment_globs() {
        let cases = [
            ("/storage/v1/b/**", "/storage/v1/b", true),
            ("/storage/v1/b/**", "/storage/v1/b/", true),
            ("/storage/v1/b/**", "/storage/v1/b/x/o/y", true),
            ("/storage/v1/b/**", "/storage/v1/bx", false),
            ("/storage/v1/b/*", "/storage/v1/b/x", true),
            ("/storage/v1/b/*", "/storage/v1/b/x/o", false),
            ("/storage/v1/b/*/o", "/storage/v1/b/bkt/o", true),
            ("/a/**/z", "/a/z", true),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/bz", false),
            (
                "/v1/projects/*/secrets/prod-*",
                "/v1/projects/p/secrets/prod-db",
                true,
            ),
            (
                "/v1/projects/*/secrets/prod-*",
                "/v1/projects/p/secrets/dev-db",
                false,
            ),
            ("refs/tags/*", "refs/tags/v1.0", true),
            ("refs/tags/*", "refs/tags/release/v1", false),
            ("refs/heads/**", "refs/heads/feature/x", true),
            ("refs/heads/main", "refs/heads/main", true),
            ("refs/heads/main", "refs/heads/main2", false),
            ("refs/heads/ma.n", "refs/heads/main", false),
            ("**", "anything/at/all", true),
            ("**/main", "refs/heads/main", true),
        ];
        for (glob, name, want) in cases {
            let g = SegmentGlob::parse(glob).unwrap();
            assert_eq!(g.matches(name), want, "{glob} vs {name}");
        }
    }

    #[test]
    fn double_star_must_be_a_segment() {
        let err = SegmentGlob::parse("/a/b**").unwrap_err();
        assert!(err.0.contains("whole segment"), "{err}");
        assert!(SegmentGlob::parse("/a/***").is_err());
    }

    #[test]
    fn permission_patterns() {
        let cases = [
            ("storage.buckets.*", "storage.buckets.delete", true),
            ("storage.buckets.*", "storage.objects.delete", false),
            ("storage.*", "storage.objects.delete", true),
            ("storage.*", "storagetransfer.jobs.create", false),
            (
                "iam.serviceAccountKeys.create",
                "iam.serviceAccountKeys.create",
                true,
            ),
            (
                "iam.serviceAccountKeys.create",
                "iam.serviceAccountKeys.createX",
                false,
            ),
        ];
        for (pattern, permission, want) in cases {
            let p = PermissionPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(permission), want, "{pattern} vs {permission}");
        }
        for bad in [
            "storage",
            "storage.buckets",
            "*",
            "storage.*.delete",
            "Storage.a.b",
            "a.b.c.d",
        ] {
            assert!(PermissionPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decodes_paths() {
        assert_eq!(decode_path("/b/pro%64/o/a%2Fb"), "/b/prod/o/a/b");
        assert_eq!(decode_path("/b/100%"), "/b/100%");
        assert_eq!(decode_path("/b/%zz"), "/b/%zz");
        assert_eq!(decode_path("/plain"), "/plain");
    }
}
