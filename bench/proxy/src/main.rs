//! `bench-proxy`: what the sidecar costs an agent, measured side by side with a direct
//! connection in one run, on one upstream.
//!
//! The upstream is an in-process HTTPS server (h1) on loopback. Clients keep their
//! connections alive and send requests back to back: directly to the upstream, and through
//! the sidecar (as an explicit CONNECT proxy, so no iptables are needed; the data path after
//! the CONNECT is the same as for a redirected connection). Reports p50/p99 latency, the
//! added latency (sidecar minus direct), requests per second, and the sidecar's resident
//! memory idle, under load, and holding 1,000 open connections. Markdown on stdout.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "bench.test";

struct Args {
    sidecar: PathBuf,
    seconds: u64,
    connections: usize,
}

fn args() -> Result<Args> {
    let mut sidecar = PathBuf::from("target/release/cassette-sidecar");
    let mut seconds = 5;
    let mut connections = 4;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sidecar" => sidecar = it.next().context("--sidecar PATH")?.into(),
            "--seconds" => seconds = it.next().context("--seconds N")?.parse()?,
            "--connections" => connections = it.next().context("--connections N")?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: bench-proxy [--sidecar PATH] [--seconds N] [--connections N]"
            ),
        }
    }
    Ok(Args {
        sidecar,
        seconds,
        connections,
    })
}

/// An upstream that answers every request with a body of the size the path asks for.
async fn upstream(issuer: &Issuer<'static, KeyPair>) -> Result<SocketAddr> {
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![HOST.to_string()])?.signed_by(&key, issuer)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
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

/// How a client reaches the upstream.
#[derive(Clone)]
enum Route {
    Direct(SocketAddr),
    Proxy(SocketAddr),
}

async fn connect(
    route: &Route,
    roots: Arc<rustls::RootCertStore>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = match route {
        Route::Direct(addr) => TcpStream::connect(addr).await?,
        Route::Proxy(proxy) => {
            let mut tcp = TcpStream::connect(proxy).await?;
            tcp.write_all(
                format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n").as_bytes(),
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
            if !head.starts_with(b"HTTP/1.1 200") {
                bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
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

struct Measured {
    latencies: Vec<Duration>,
    elapsed: Duration,
    bytes: u64,
}

/// `connections` kept-alive clients sending back to back for `seconds`.
async fn load(
    route: Route,
    roots: Arc<rustls::RootCertStore>,
    path: &'static str,
    connections: usize,
    seconds: u64,
) -> Result<Measured> {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (route, roots) = (route.clone(), roots.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&route, roots).await?;
            let mut latencies = Vec::new();
            let mut bytes = 0u64;
            // Warm the connection (and the sidecar's certificate cache) before measuring.
            for warm in [true, false] {
                loop {
                    let t = Instant::now();
                    let req = Request::get(path)
                        .header("host", HOST)
                        .body(Full::new(Bytes::new()))?;
                    let resp = sender.send_request(req).await?;
                    let body = resp.into_body().collect().await?.to_bytes();
                    if warm {
                        break;
                    }
                    latencies.push(t.elapsed());
                    bytes += body.len() as u64;
                    if Instant::now() >= until {
                        break;
                    }
                }
            }
            anyhow::Ok((latencies, bytes))
        }));
    }
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let (l, b) = t.await??;
        latencies.extend(l);
        bytes += b;
    }
    latencies.sort();
    Ok(Measured {
        latencies,
        elapsed: started.elapsed(),
        bytes,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Sidecar {
    child: Child,
    _dir: tempfile::TempDir,
    capture: SocketAddr,
    bundle: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_sidecar(path: &PathBuf, upstream: SocketAddr, upstream_ca: &str) -> Result<Sidecar> {
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, upstream_ca)?;
    let capture = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = free_port()?;
    let bundle = dir.path().join("bundle.pem");
    let child = Command::new(path)
        .arg("run")
        .args(["--session", "bench", "--metadata", "off"])
        .arg(format!(
            "--sink=file://{}",
            dir.path().join("sink").display()
        ))
        .arg(format!("--spool={}", dir.path().join("spool").display()))
        .arg(format!("--ca-bundle={}", bundle.display()))
        .arg(format!("--capture-addr={capture}"))
        .arg(format!("--metadata-addr=127.0.0.1:{}", free_port()?))
        .arg(format!("--admin-addr=127.0.0.1:{admin}"))
        .arg(format!("--upstream-ca={}", ca.display()))
        .arg(format!("--upstream-override={HOST}=https://{upstream}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with cargo build --release)",
                path.display()
            )
        })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bundle.exists() {
        if Instant::now() > deadline {
            bail!("the sidecar did not write its bundle within 20s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Sidecar {
        child,
        _dir: dir,
        capture,
        bundle,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args()?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let upstream_addr = upstream(&issuer).await?;

    let mut direct_roots = rustls::RootCertStore::empty();
    direct_roots.add(ca_cert.der().clone())?;
    let direct_roots = Arc::new(direct_roots);

    let sidecar = start_sidecar(&args.sidecar, upstream_addr, &ca_cert.pem())?;
    let mut proxy_roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in CertificateDer::pem_file_iter(&sidecar.bundle)? {
        let _ = proxy_roots.add(cert?);
    }
    let proxy_roots = Arc::new(proxy_roots);
    let pid = sidecar.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(pid);

    println!("| body | path | p50 | p99 | added p50 | added p99 | requests/s | MB/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rss_load = 0;
    for (label, path) in [("1 KiB", "/1k"), ("1 MiB", "/1m")] {
        let direct = load(
            Route::Direct(upstream_addr),
            direct_roots.clone(),
            path,
            args.connections,
            args.seconds,
        )
        .await?;
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..(args.seconds * 10) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        });
        let via = load(
            Route::Proxy(sidecar.capture),
            proxy_roots.clone(),
            path,
            args.connections,
            args.seconds,
        )
        .await?;
        rss_load = rss_load.max(sampler.await?);
        for (name, m) in [("direct", &direct), ("sidecar", &via)] {
            let p50 = percentile(&m.latencies, 0.5);
            let p99 = percentile(&m.latencies, 0.99);
            let (a50, a99) = if name == "sidecar" {
                (
                    format!(
                        "{:.0} µs",
                        p50.as_secs_f64() * 1e6
                            - percentile(&direct.latencies, 0.5).as_secs_f64() * 1e6
                    ),
                    format!(
                        "{:.0} µs",
                        p99.as_secs_f64() * 1e6
                            - percentile(&direct.latencies, 0.99).as_secs_f64() * 1e6
                    ),
                )
            } else {
                ("—".into(), "—".into())
            };
            println!(
                "| {label} | {name} | {:.0} µs | {:.0} µs | {a50} | {a99} | {:.0} | {:.1} |",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                m.latencies.len() as f64 / m.elapsed.as_secs_f64(),
                m.bytes as f64 / m.elapsed.as_secs_f64() / 1e6,
            );
        }
    }

    // 1,000 idle kept-alive connections through the sidecar.
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(connect(&Route::Proxy(sidecar.capture), proxy_roots.clone()).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_1000 = rss_kib(pid);
    drop(held);

    println!();
    println!("| sidecar resident memory | MiB |");
    println!("|---|---|");
    println!("| idle | {:.1} |", rss_idle as f64 / 1024.0);
    println!("| under load (peak) | {:.1} |", rss_load as f64 / 1024.0);
    println!(
        "| 1,000 open TLS connections | {:.1} |",
        rss_1000 as f64 / 1024.0
    );
    Ok(())
}
