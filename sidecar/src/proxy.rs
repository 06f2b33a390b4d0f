//! What every captured connection shares: the session CA, upstream trust, the credential
//! swap, routing (upstream overrides, passthrough hosts), the destination guard, metrics and
//! the recorder.

use crate::credentials::{Placeholder, TokenSource};
use crate::record::Recording;
use crate::tls::SessionCa;
use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The shared state of the data path.
pub struct Proxy {
    /// The AgentSession's policy, masking and expiry, as they stand now.
    pub session: Arc<crate::session::Live>,
    /// Requests held for review; `None` when the sidecar cannot reach its AgentSession, so
    /// no approval could ever arrive.
    pub reviews: Option<Arc<crate::review::Reviews>>,
    pub ca: SessionCa,
    pub upstream_roots: Arc<RootCertStore>,
    pub overrides: Overrides,
    /// Hosts tunnelled without interception, lower case.
    pub passthrough: Vec<String>,
    pub placeholder: Placeholder,
    /// The brokered credentials (`spec.credentials`) and their placeholders.
    pub brokered: crate::credentials::brokered::Brokered,
    /// Real tokens for the placeholder's swap; `None` outside GKE.
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// The bucket the recording ships to (`gs://BUCKET/…`), which no agent request may name.
    pub sink_bucket: Option<String>,
    pub recording: Recording,
    /// How long an agent connection may take over its TLS handshake or a request's headers.
    pub client_timeout: std::time::Duration,
}

impl Proxy {
    /// The metrics the data path exports.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.recording.metrics()
    }

    /// Whether `host` is tunnelled without interception.
    pub fn is_passthrough(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.passthrough.iter().any(|p| host_matches(p, &host))
    }
}

#[cfg(test)]
impl Proxy {
    /// A proxy for unit tests: the session `spec` (JSON), upstream `overrides`, records kept
    /// in memory, tokens from `tokens`, reviews answered through the returned `Reviews`.
    pub fn for_test(
        spec: &serde_json::Value,
        overrides: &[&str],
        tokens: Option<Arc<dyn TokenSource>>,
    ) -> (
        Arc<crate::record::memory::MemorySink>,
        Arc<Proxy>,
        Arc<crate::review::Reviews>,
    ) {
        Self::for_test_brokered(spec, overrides, tokens, Default::default())
    }

    /// [`Proxy::for_test`] with brokered credentials.
    pub fn for_test_brokered(
        spec: &serde_json::Value,
        overrides: &[&str],
        tokens: Option<Arc<dyn TokenSource>>,
        brokered: crate::credentials::brokered::Brokered,
    ) -> (
        Arc<crate::record::memory::MemorySink>,
        Arc<Proxy>,
        Arc<crate::review::Reviews>,
    ) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (sink, recording) = crate::record::memory::MemorySink::recording();
        let reviews = Arc::new(crate::review::Reviews::new("agent-0"));
        let session =
            crate::session::Session::load("fix-ci", Some(&spec.to_string()), None, b"auditor key")
                .unwrap();
        let proxy = Arc::new(Proxy {
            session: Arc::new(crate::session::Live::new(
                "fix-ci",
                session,
                b"auditor key".to_vec(),
                recording.clone(),
            )),
            reviews: Some(reviews.clone()),
            ca: SessionCa::generate("fix-ci", 16).unwrap(),
            upstream_roots: Arc::new(RootCertStore::empty()),
            overrides: Overrides::parse(overrides.iter().copied()).unwrap(),
            passthrough: Vec::new(),
            placeholder: Placeholder::generate(),
            brokered,
            tokens,
            sink_bucket: Some("acme-agent-recordings".into()),
            recording,
            client_timeout: std::time::Duration::from_secs(5),
        });
        (sink, proxy, reviews)
    }
}

/// `*.example.com` matches any subdomain (not the apex); anything else matches exactly.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Where a host is really served, for emulators and tests: `host=http://127.0.0.1:4443`.
/// Empty unless configured.
#[derive(Clone, Debug, Default)]
pub struct Overrides(HashMap<String, Endpoint>);

/// An override's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Overrides {
    /// Parse `host=scheme://host:port` entries.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut map = HashMap::new();
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (host, url) = entry
                .split_once('=')
                .with_context(|| format!("upstream override {entry:?} is not host=URL"))?;
            let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
                (false, rest)
            } else if let Some(rest) = url.strip_prefix("https://") {
                (true, rest)
            } else {
                bail!("upstream override {entry:?}: the URL must start with http:// or https://");
            };
            let authority = rest.trim_end_matches('/');
            let (h, p) = authority
                .rsplit_once(':')
                .with_context(|| format!("upstream override {entry:?}: the URL needs a port"))?;
            let port = p
                .parse()
                .with_context(|| format!("upstream override {entry:?}: bad port {p:?}"))?;
            map.insert(
                host.to_ascii_lowercase(),
                Endpoint {
                    tls,
                    host: h.trim_matches(['[', ']']).to_string(),
                    port,
                },
            );
        }
        Ok(Self(map))
    }

    pub fn get(&self, host: &str) -> Option<&Endpoint> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(&host.trim_end_matches('.').to_ascii_lowercase())
    }
}

/// GCE's metadata server on IPv6, `fd20:ce::254`.
pub const GCE_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254);

/// Why a destination may not be reached through the sidecar, if it may not.
///
/// The sidecar's own upstream connections bypass the capture rules (it runs as UID 1337), so
/// forwarding the agent to the metadata server, to loopback (the sidecar's own ports) or to
/// link-local addresses would hand the agent what the rules keep from it.
pub fn forbidden_destination(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(169, 254, 169, 254) => {
            Some("the metadata server is only reachable through the metadata shim")
        }
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local destinations are not forwarded"),
        IpAddr::V4(v4) if v4.is_loopback() => {
            Some("loopback destinations are not forwarded (they are the sidecar's own sockets)")
        }
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("this address cannot be a destination")
        }
        // GCE's IPv6 metadata server (and EC2's, which a pod may also sit beside).
        IpAddr::V6(v6)
            if v6 == GCE_METADATA_V6
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) =>
        {
            Some("the metadata server is only reachable through the metadata shim")
        }
        IpAddr::V6(v6) if v6.is_loopback() => {
            Some("loopback destinations are not forwarded (they are the sidecar's own sockets)")
        }
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            Some("link-local destinations are not forwarded")
        }
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => {
            Some("this address cannot be a destination")
        }
        _ => None,
    }
}

/// Where one captured connection goes.
#[derive(Clone, Debug)]
pub struct Route {
    /// The name the agent asked for (SNI, CONNECT authority or Host), if any.
    pub host: Option<String>,
    /// The destination the agent connected to (or resolved from CONNECT).
    pub dst: SocketAddr,
    /// Set when an override sends this host elsewhere.
    pub endpoint: Option<Endpoint>,
}

impl Route {
    /// The host name to show in records and use for the credential decision.
    pub fn display_host(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(|| self.dst.ip().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_match_case_insensitively() {
        let o = Overrides::parse([
            "storage.googleapis.com=http://127.0.0.1:4443",
            "pubsub.googleapis.com=https://[::1]:8085/",
        ])
        .unwrap();
        assert_eq!(
            o.get("Storage.googleapis.com."),
            Some(&Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 4443
            })
        );
        assert_eq!(o.get("pubsub.googleapis.com").unwrap().host, "::1");
        assert!(o.get("github.com").is_none());
        assert!(Overrides::parse(["x=ftp://h:1"]).is_err());
        assert!(Overrides::parse(["x=http://h"]).is_err());
        assert!(Overrides::parse(["no-equals"]).is_err());
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("example.com", "EXAMPLE.com"));
    }

    #[test]
    fn the_metadata_server_and_loopback_are_never_forwarded() {
        for ip in [
            "169.254.169.254",
            "169.254.1.1",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            // GCE's IPv6 metadata server.
            "fd20:ce::254",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(forbidden_destination(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["142.250.1.1", "10.0.0.5", "2607:f8b0::1"] {
            assert!(forbidden_destination(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }
}
