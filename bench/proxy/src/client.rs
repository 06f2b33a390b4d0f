//! The bench client: kept-alive HTTPS connections that send requests back to back, either
//! straight to an address (the upstream, or nginx in front of it) or through an explicit
//! CONNECT proxy (the sidecar, mitmproxy). It only measures; it starts no peer.

use crate::upstream::HOST;
use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// How a client reaches the upstream. TLS always names [`HOST`].
#[derive(Clone)]
pub enum Route {
    /// TLS straight to this address.
    Direct(SocketAddr),
    /// `CONNECT target` through the proxy, then TLS through the tunnel.
    Connect { proxy: SocketAddr, target: String },
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One kept-alive connection, TLS and HTTP/1.1 handshakes done.
pub async fn connect(route: &Route, roots: Arc<rustls::RootCertStore>) -> Result<Sender> {
    let tcp = match route {
        Route::Direct(addr) => TcpStream::connect(addr).await?,
        Route::Connect { proxy, target } => {
            let mut tcp = TcpStream::connect(proxy).await?;
            tcp.write_all(
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut byte).await? == 0 {
                    bail!("the proxy closed during CONNECT");
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            if head.split_whitespace().nth(1) != Some("200") {
                bail!("CONNECT refused: {}", head.trim_end());
            }
            tcp
        }
    };
    tcp.set_nodelay(true)?;
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST)?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// What one row's load measured.
pub struct Measured {
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub bytes: u64,
}

impl Measured {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    pub fn requests_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// `connections` kept-alive clients sending `GET path` back to back for `seconds`. The clock
/// starts once every connection is open and has answered one request, so connection setup
/// (a proxy's DNS lookup, certificate minting, TLS handshakes) is not part of the window.
pub async fn load(
    route: &Route,
    roots: &Arc<rustls::RootCertStore>,
    path: &'static str,
    connections: usize,
    seconds: u64,
) -> Result<Measured> {
    let ready = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (route, roots, ready) = (route.clone(), roots.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let warmed = async {
                let mut sender = connect(&route, roots).await?;
                get(&mut sender, path).await?;
                anyhow::Ok(sender)
            }
            .await;
            // Every task reaches the barrier, failed or not, so none waits forever.
            ready.wait().await;
            let mut sender = warmed?;
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut latencies = Vec::new();
            let mut bytes = 0u64;
            loop {
                let t = Instant::now();
                bytes += get(&mut sender, path).await?;
                latencies.push(t.elapsed());
                if Instant::now() >= until {
                    break;
                }
            }
            anyhow::Ok((latencies, bytes))
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let (l, b) = t.await??;
        latencies.extend(l);
        bytes += b;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Measured {
        latencies,
        elapsed,
        bytes,
    })
}

/// One `GET path`, its whole body read; returns the body's length.
async fn get(sender: &mut Sender, path: &str) -> Result<u64> {
    let req = Request::get(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {path} answered {status}: {}", text(&body));
    }
    Ok(body.len() as u64)
}

/// An error page as one short line of text: tags dropped, whitespace collapsed.
fn text(body: &[u8]) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in String::from_utf8_lossy(body).chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let line = out.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(160).collect()
}
