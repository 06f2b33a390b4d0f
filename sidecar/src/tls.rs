//! TLS on both sides of the sidecar.
//!
//! Toward the agent: a session CA made in memory at start (its key never leaves the process),
//! the public bundle (system roots + session CA) written for the agent's tools, and leaf
//! certificates minted per server name on demand and kept in a bounded cache.
//! Toward upstream: an ordinary verifying client with the web roots (plus any extra roots the
//! operator configures), so the agent gets no weaker checks than it would without cassette.

use anyhow::{Context, Result, bail};
use lru::LruCache;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::ring::sign::any_ecdsa_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

/// How long a minted leaf is valid. Leaves are re-minted well before they expire.
const LEAF_VALIDITY: Duration = Duration::days(7);
/// Leaves closer than this to expiry are minted again.
const LEAF_RENEW_BEFORE: Duration = Duration::days(1);

/// The per-session certificate authority and its cache of leaf certificates.
pub struct SessionCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// One key for every leaf: minting then costs a signature, not a key generation. It never
    /// leaves the process, like the CA key.
    leaf_key: Arc<rustls::sign::CertifiedKey>,
    leaf_key_pair: KeyPair,
    cache: Mutex<LruCache<String, CachedLeaf>>,
}

#[derive(Clone)]
struct CachedLeaf {
    key: Arc<CertifiedKey>,
    not_after: OffsetDateTime,
}

/// A leaf for one server name, and whether it came from the cache.
pub struct Leaf {
    pub key: Arc<CertifiedKey>,
    pub cached: bool,
}

impl SessionCa {
    /// Make a fresh CA (ECDSA P-256) named after the session.
    pub fn generate(session: &str, cache_size: usize) -> Result<Self> {
        let key = KeyPair::generate().context("generating the session CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("cassette session CA ({session})"),
        );
        dn.push(DnType::OrganizationName, "cassette");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(400);
        let cert = params
            .self_signed(&key)
            .context("self-signing the session CA")?;

        let leaf_key_pair = KeyPair::generate().context("generating the leaf key")?;
        let leaf_signing = any_ecdsa_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            leaf_key_pair.serialize_der(),
        )))
        .context("loading the leaf key")?;
        let cache_size = NonZeroUsize::new(cache_size.max(1)).expect("non-zero");
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            leaf_key: Arc::new(CertifiedKey::new(vec![], leaf_signing)),
            leaf_key_pair,
            cache: Mutex::new(LruCache::new(cache_size)),
        })
    }

    /// The CA certificate in DER.
    #[cfg(test)]
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A leaf for `name` (a DNS name or an IP address), from the cache when it is still fresh.
    pub fn leaf(&self, name: &str) -> Result<Leaf> {
        let now = OffsetDateTime::now_utc();
        let name = name.to_ascii_lowercase();
        if let Some(hit) = self.lock_cache().get(&name)
            && hit.not_after - now > LEAF_RENEW_BEFORE
        {
            return Ok(Leaf {
                key: hit.key.clone(),
                cached: true,
            });
        }
        let not_after = now + LEAF_VALIDITY;
        let key = Arc::new(self.mint(&name, now, not_after)?);
        self.lock_cache().put(
            name,
            CachedLeaf {
                key: key.clone(),
                not_after,
            },
        );
        Ok(Leaf { key, cached: false })
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, CachedLeaf>> {
        // A panic while holding the lock cannot leave the cache inconsistent: take it anyway.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mint(
        &self,
        name: &str,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertifiedKey> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_string()
                    .try_into()
                    .with_context(|| format!("{name:?} is not a DNS name"))?,
            ),
        };
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - Duration::hours(1);
        params.not_after = not_after;
        let cert = params
            .signed_by(&self.leaf_key_pair, &self.issuer)
            .with_context(|| format!("minting a certificate for {name}"))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            self.leaf_key.key.clone(),
        ))
    }

    /// The trust bundle for agent containers: the system roots followed by the session CA.
    /// Most tools *replace* their store with the file they are given, hence the system roots.
    pub fn bundle(&self, system_roots: &[CertificateDer<'_>]) -> String {
        let mut out = String::new();
        for root in system_roots {
            out.push_str(&pem("CERTIFICATE", root));
        }
        let _ = writeln!(out, "# cassette session CA");
        out.push_str(&self.cert_pem);
        out
    }

    /// Write the bundle atomically (write a temporary file, then rename), world-readable:
    /// agent containers run as other users.
    pub fn write_bundle(&self, path: &Path, system_roots: &[CertificateDer<'_>]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.bundle(system_roots))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// Serves one already-chosen certificate, whatever the ClientHello says.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server config presenting `leaf` and offering exactly `alpn` (chosen to match upstream).
pub fn server_config(leaf: Arc<CertifiedKey>, alpn: Option<&[u8]>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(leaf)));
    config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
    Arc::new(config)
}

/// The roots the sidecar trusts upstream: the system store plus extra PEM files and PEM text.
pub fn upstream_roots(
    extra: &[std::path::PathBuf],
    extra_pem: Option<&str>,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>)> {
    use rustls_pki_types::pem::PemObject;
    let loaded = rustls_native_certs::load_native_certs();
    let system: Vec<CertificateDer<'static>> = loaded.certs;
    let mut store = RootCertStore::empty();
    let (_added, _ignored) = store.add_parsable_certificates(system.iter().cloned());
    if let Some(pem) = extra_pem.filter(|pem| !pem.trim().is_empty()) {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing CASSETTE_UPSTREAM_CA_PEM")?;
        if certs.is_empty() {
            bail!("CASSETTE_UPSTREAM_CA_PEM holds no PEM certificate");
        }
        for cert in certs {
            store
                .add(cert)
                .context("adding a root from CASSETTE_UPSTREAM_CA_PEM")?;
        }
    }
    for path in extra {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", path.display()))?;
        for cert in certs {
            store
                .add(cert)
                .with_context(|| format!("adding a root from {}", path.display()))?;
        }
    }
    Ok((store, system))
}

/// The upstream client config, offering `alpn` (the client's own offer, passed through).
pub fn client_config(roots: Arc<RootCertStore>, alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// The name to verify upstream: the SNI the agent sent, else the destination address.
pub fn upstream_name(sni: Option<&str>, ip: IpAddr) -> Result<ServerName<'static>> {
    match sni {
        Some(name) => ServerName::try_from(name.to_string())
            .with_context(|| format!("SNI {name:?} is not a valid server name")),
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::UnixTime;

    fn install_provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[test]
    fn leaves_verify_against_the_session_ca_for_their_name_only() {
        install_provider();
        let ca = SessionCa::generate("test", 8).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let leaf = ca.leaf("storage.googleapis.com").unwrap();
        assert!(!leaf.cached);
        let chain = &leaf.key.cert;
        let name = ServerName::try_from("storage.googleapis.com").unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .expect("the leaf verifies for its own name");
        let other = ServerName::try_from("evil.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &other, &[], UnixTime::now())
                .is_err(),
            "a leaf must not verify for another name"
        );
    }

    #[test]
    fn leaves_are_cached_and_the_cache_is_bounded() {
        install_provider();
        let ca = SessionCa::generate("test", 2).unwrap();
        assert!(!ca.leaf("a.example").unwrap().cached);
        assert!(
            ca.leaf("A.example").unwrap().cached,
            "names are case-insensitive"
        );
        ca.leaf("b.example").unwrap();
        ca.leaf("c.example").unwrap();
        assert!(
            !ca.leaf("a.example").unwrap().cached,
            "the oldest entry was evicted"
        );
    }

    #[test]
    fn ip_addresses_get_ip_sans() {
        install_provider();
        let ca = SessionCa::generate("test", 2).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let leaf = ca.leaf("10.1.2.3").unwrap();
        let name = ServerName::try_from("10.1.2.3").unwrap();
        verifier
            .verify_server_cert(&leaf.key.cert[0], &[], &name, &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn the_bundle_holds_the_system_roots_then_the_session_ca() {
        install_provider();
        let ca = SessionCa::generate("test", 2).unwrap();
        let other = SessionCa::generate("other", 2).unwrap();
        let bundle = ca.bundle(&[other.cert_der().clone()]);
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(bundle.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(&certs[0], other.cert_der());
        assert_eq!(&certs[1], ca.cert_der());
    }

    #[test]
    fn upstream_roots_take_pem_text_and_refuse_text_that_holds_none() {
        let ca = SessionCa::generate("private", 8).unwrap();
        let text = pem("CERTIFICATE", ca.cert_der());
        let (without, _) = upstream_roots(&[], None).unwrap();
        let (with, _) = upstream_roots(&[], Some(&text)).unwrap();
        assert_eq!(with.len(), without.len() + 1);
        let (blank, _) = upstream_roots(&[], Some("  \n")).unwrap();
        assert_eq!(blank.len(), without.len());
        let refused = upstream_roots(&[], Some("not a certificate")).unwrap_err();
        assert!(
            format!("{refused:#}").contains("CASSETTE_UPSTREAM_CA_PEM holds no PEM certificate"),
            "{refused:#}"
        );
    }
}
