//! The one host name an exchange's decisions use: the upstream name the sidecar verified
//! (the TLS certificate was checked against it, or the route was configured with it), never
//! the Host header, `:authority` or absolute-form target the agent wrote. Classification,
//! policy, the token swap and review text all take a [`VerifiedHost`]; a request whose own
//! authorities name another host or port is refused with 421 (Misdirected Request).
//!
//! Pure: the sidecar says what it verified and what the request claims.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A host name and port the sidecar verified for this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHost {
    /// Lowercase, without a trailing dot; IPv6 literals in brackets.
    name: String,
    port: u16,
}

/// Why a request's authority does not name the verified upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityMismatch {
    /// Another host.
    #[error(
        "the request names host {claimed:?}, but the connection was verified for {verified:?}; \
         it was refused (421 Misdirected Request) and recorded: send requests for another host \
         on a connection of their own"
    )]
    OtherHost {
        /// What the request said, as written.
        claimed: String,
        /// The verified name.
        verified: String,
    },
    /// The same host on another port.
    #[error(
        "the request names port {claimed} of {host:?}, but the connection goes to port \
         {verified}; it was refused (421 Misdirected Request) and recorded"
    )]
    OtherPort {
        /// The host.
        host: String,
        /// The port the request named (or its scheme's default).
        claimed: u16,
        /// The port of the verified connection.
        verified: u16,
    },
    /// Not an authority at all: userinfo, escapes, a path, a bad port.
    #[error(
        "the request's authority {claimed:?} is not a host[:port]; it was refused \
         (421 Misdirected Request) and recorded"
    )]
    Malformed {
        /// What the request said, as written.
        claimed: String,
    },
}

impl AuthorityMismatch {
    /// The HTTP status of the refusal.
    pub const STATUS: u16 = 421;
}

/// A parsed `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

fn parse_host(host: &str) -> Option<Host> {
    if let Some(inner) = host.strip_prefix('[') {
        return inner.strip_suffix(']')?.parse().ok().map(Host::V6);
    }
    if host.is_empty()
        || host.bytes().any(|b| {
            b.is_ascii_whitespace() || b.is_ascii_control() || b"@/?#%\\[]:,;\"'<>".contains(&b)
        })
    {
        return None;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.ends_with('.') {
        return None;
    }
    Some(match name.parse::<Ipv4Addr>() {
        Ok(a) => Host::V4(a),
        Err(_) => Host::Name(name.to_lowercase()),
    })
}

/// Splits `host[:port]`; an empty port is the default, as RFC 3986 allows.
fn parse_authority(authority: &str) -> Option<(Host, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        match rest.strip_prefix(':') {
            Some(port) => (&authority[..=end], Some(port)),
            None if rest.is_empty() => (authority, None),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u32 = p.parse().ok()?;
            Some(u16::try_from(n).ok().filter(|n| *n != 0)?)
        }
        Some(_) => return None,
    };
    Some((parse_host(host)?, port))
}

impl VerifiedHost {
    /// The verified upstream `name` (a DNS name or an IP literal, IPv6 with or without
    /// brackets) and the port of the connection. `None` when `name` is not a host.
    pub fn new(name: &str, port: u16) -> Option<VerifiedHost> {
        let bracketed;
        let name = if name.contains(':') && !name.starts_with('[') {
            bracketed = format!("[{name}]");
            &bracketed
        } else {
            name
        };
        let host = parse_host(name)?;
        Some(VerifiedHost {
            name: host.to_string(),
            port,
        })
    }

    /// The name as decisions use it: lowercase, no trailing dot, IPv6 in brackets.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port of the verified connection.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Checks one authority the request names (a Host header, `:authority`, or the
    /// authority of an absolute-form target): the same host, compared as servers compare
    /// names (case, one trailing dot, IP literals by address), and the same port, where a
    /// missing port is `default_port` (443 for https, 80 for http).
    pub fn check(&self, claimed: &str, default_port: u16) -> Result<(), AuthorityMismatch> {
        let malformed = || AuthorityMismatch::Malformed {
            claimed: claimed.to_owned(),
        };
        let (host, port) = parse_authority(claimed).ok_or_else(malformed)?;
        // `name` was made by `new`, so it parses.
        let verified = parse_host(&self.name).ok_or_else(malformed)?;
        if host != verified {
            return Err(AuthorityMismatch::OtherHost {
                claimed: claimed.to_owned(),
                verified: self.name.clone(),
            });
        }
        let port = port.unwrap_or(default_port);
        if port != self.port {
            return Err(AuthorityMismatch::OtherPort {
                host: self.name.clone(),
                claimed: port,
                verified: self.port,
            });
        }
        Ok(())
    }

    /// Checks every authority a request names (all Host headers, `:authority`, an
    /// absolute-form target's authority); the first that does not match refuses it. A
    /// request that names none (HTTP/1.0) is the verified host's.
    pub fn check_all<'a>(
        &self,
        claimed: impl IntoIterator<Item = &'a str>,
        default_port: u16,
    ) -> Result<(), AuthorityMismatch> {
        claimed
            .into_iter()
            .try_for_each(|authority| self.check(authority, default_port))
    }
}

/// The authority of an absolute-form request target (`http://host:port/path`), if the
/// target is one.
pub fn target_authority(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_the_verified_host_match() {
        let v = VerifiedHost::new("storage.googleapis.com", 443).unwrap();
        for ok in [
            "storage.googleapis.com",
            "STORAGE.googleapis.COM",
            "storage.googleapis.com.",
            "storage.googleapis.com:443",
            "storage.googleapis.com:",
            "storage.googleapis.com:0443",
        ] {
            assert_eq!(v.check(ok, 443), Ok(()), "{ok}");
        }
        let v6 = VerifiedHost::new("::1", 8443).unwrap();
        assert_eq!(v6.name(), "[::1]");
        assert_eq!(v6.check("[0:0::1]:8443", 443), Ok(()));
        assert!(v6.check("[::1]", 443).is_err());
        let v4 = VerifiedHost::new("127.0.0.1", 80).unwrap();
        assert_eq!(v4.check("127.0.0.1", 80), Ok(()));
    }

    /// What an agent writes to have a request classified, decided or credentialed as
    /// another host than the one it reaches.
    #[test]
    fn other_hosts_are_refused() {
        let v = VerifiedHost::new("storage.googleapis.com", 443).unwrap();
        let other_host = [
            "secretmanager.googleapis.com",
            "storage.googleapis.com.evil.example",
            "evil.example",
            "storage.googleapis.co",
            "storage.googleapis.com..",
        ];
        for claimed in other_host {
            let err = v.check(claimed, 443).unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthorityMismatch::OtherHost { .. } | AuthorityMismatch::Malformed { .. }
                ),
                "{claimed}: {err:?}"
            );
        }
        assert!(matches!(
            v.check("storage.googleapis.com:8443", 443),
            Err(AuthorityMismatch::OtherPort {
                claimed: 8443,
                verified: 443,
                ..
            })
        ));
        assert!(matches!(
            v.check("storage.googleapis.com", 80),
            Err(AuthorityMismatch::OtherPort { .. })
        ));
        for malformed in [
            "",
            "evil.example@storage.googleapis.com",
            "storage.googleapis.com%2eevil.example",
            "storage.googleapis.com/x",
            "storage.googleapis.com:443:443",
            "storage.googleapis.com:99999",
            "storage.googleapis.com:-1",
            "storage.googleapis.com :443",
            "[::1",
            "[::1]x",
        ] {
            assert!(
                matches!(
                    v.check(malformed, 443),
                    Err(AuthorityMismatch::Malformed { .. })
                ),
                "{malformed:?}"
            );
        }
        // Every authority the request names must match.
        assert!(
            v.check_all(["storage.googleapis.com", "evil.example"], 443)
                .is_err()
        );
        assert_eq!(v.check_all([], 443), Ok(()));
        let text = v.check("evil.example", 443).unwrap_err().to_string();
        assert!(text.contains("421 Misdirected Request"), "{text}");
    }

    #[test]
    fn absolute_form_authorities() {
        assert_eq!(
            target_authority("http://a.example:8080/x?y"),
            Some("a.example:8080")
        );
        assert_eq!(target_authority("https://a.example"), Some("a.example"));
        assert_eq!(target_authority("/x?u=http://a"), None);
        assert_eq!(target_authority("*"), None);
    }
}
