//! The bench's own certificate authority and the HTTPS upstream every row reaches: an
//! in-process HTTP/1.1 server on loopback that answers `/1m` with 1 MiB and anything else with
//! 1 KiB. It does not measure anything itself.

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The name every client asks for; the upstream's and nginx's certificates are issued for it.
pub const HOST: &str = "bench.test";

/// The bench's CA: it issues the upstream's certificate and nginx's.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert: rcgen::Certificate,
}

/// A leaf certificate for [`HOST`], as DER for rustls and PEM for the peers' config files.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Authority {
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // Distinct subjects: OpenSSL (nginx, mitmproxy) takes a leaf whose subject equals its
        // issuer's for a self-signed certificate and refuses it.
        params.distinguished_name = name("cassette bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert,
        })
    }

    pub fn leaf(&self) -> Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![HOST.to_string()])?;
        params.distinguished_name = name(HOST);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Roots that trust exactly this CA.
    pub fn roots(&self) -> Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone())?;
        Ok(Arc::new(roots))
    }
}

fn name(common: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    name
}

/// Starts the upstream on a free loopback port and returns its address.
pub async fn start(authority: &Authority) -> Result<SocketAddr> {
    let leaf = authority.leaf()?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert], PrivateKeyDer::Pkcs8(leaf.key))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let kib = Bytes::from(vec![b'x'; 1024]);
    let mib = Bytes::from(vec![b'y'; 1024 * 1024]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (kib, mib) = (kib.clone(), mib.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = if req.uri().path() == "/1m" {
                        mib.clone()
                    } else {
                        kib.clone()
                    };
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
