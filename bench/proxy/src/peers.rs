//! The peers the sidecar is measured beside, each started from its own temp dir on free
//! loopback ports and pointed at the bench's upstream: the sidecar and mitmproxy as explicit
//! CONNECT proxies that intercept and record, nginx as a plain TLS-terminating reverse proxy
//! that records nothing. Starting and stopping only; the client measures.

use crate::client::Route;
use crate::upstream::{Authority, HOST};
use anyhow::{Context, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running peer: how to reach the upstream through it, what to trust, and its processes.
pub struct Peer {
    pub route: Route,
    pub roots: Arc<rustls::RootCertStore>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Resident memory of the peer's process and all its descendants (nginx's workers).
    /// VmRSS counts shared pages once per process, so a multi-process peer is overstated.
    pub fn rss_kib(&self) -> u64 {
        process_tree(self.child.id()).into_iter().map(rss_kib).sum()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first: nginx's master stops its workers on it; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cassette-sidecar run` as an explicit proxy, recording to a `file://` sink.
pub fn sidecar(path: &Path, upstream: SocketAddr, authority: &Authority) -> Result<Peer> {
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, authority.pem())?;
    let capture = loopback()?;
    let bundle = dir.path().join("bundle.pem");
    let log = dir.path().join("sidecar.log");
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
        .arg(format!("--metadata-addr={}", loopback()?))
        .arg(format!("--admin-addr={}", loopback()?))
        .arg(format!("--upstream-ca={}", ca.display()))
        .arg(format!("--upstream-override={HOST}=https://{upstream}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("{} (build it with cargo build --release)", path.display()))?;
    let mut peer = Peer {
        route: Route::Connect {
            proxy: capture,
            target: format!("{HOST}:443"),
        },
        roots: Arc::new(rustls::RootCertStore::empty()),
        child,
        _dir: dir,
    };
    wait_ready(&mut peer.child, &log, || bundle.exists())?;
    peer.roots = roots_from(&bundle)?;
    Ok(peer)
}

/// nginx terminating TLS for [`HOST`] with a leaf from the bench's CA and proxying to the
/// upstream over verified TLS on kept-alive HTTP/1.1 connections. Defaults otherwise
/// (buffering, the unbuffered combined access log), except that kept-alive connections are
/// not closed after 1,000 requests.
pub fn nginx(path: &Path, upstream: SocketAddr, authority: &Authority) -> Result<Peer> {
    let dir = tempfile::tempdir()?;
    // Workers drop to an unprivileged user when run as root; they need to reach their
    // temp dirs (nginx creates and chowns them) inside this one.
    set_mode(dir.path(), 0o755)?;
    let d = dir.path().display();
    let leaf = authority.leaf()?;
    std::fs::write(dir.path().join("leaf.pem"), &leaf.cert_pem)?;
    std::fs::write(dir.path().join("leaf.key"), &leaf.key_pem)?;
    std::fs::write(dir.path().join("upstream-ca.pem"), authority.pem())?;
    let listen = loopback()?;
    let config = format!(
        r#"daemon off;
worker_processes auto;
worker_rlimit_nofile 8192;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # The one change from the defaults: every row keeps its connections for the whole run,
    # so nginx does not close them after its default 1,000 requests either.
    keepalive_requests 1000000;
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    upstream bench {{
        server {upstream};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} ssl;
        server_name {HOST};
        ssl_certificate {d}/leaf.pem;
        ssl_certificate_key {d}/leaf.key;
        location / {{
            proxy_pass https://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {HOST};
            proxy_ssl_server_name on;
            proxy_ssl_name {HOST};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {d}/upstream-ca.pem;
        }}
    }}
}}
"#
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config)?;
    let log = dir.path().join("error.log");
    let child = Command::new(path)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
        .spawn()
        .with_context(|| path.display().to_string())?;
    let mut peer = Peer {
        route: Route::Direct(listen),
        roots: authority.roots()?,
        child,
        _dir: dir,
    };
    wait_ready(&mut peer.child, &log, || listening(listen))?;
    Ok(peer)
}

/// `mitmdump` as an explicit proxy: TLS intercepted with its own CA, the upstream verified
/// against the bench's CA, every flow written to a file, nothing printed.
pub fn mitmdump(path: &Path, upstream: SocketAddr, authority: &Authority) -> Result<Peer> {
    let dir = tempfile::tempdir()?;
    let confdir = dir.path().join("mitmproxy");
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, authority.pem())?;
    let listen = loopback()?;
    let log = dir.path().join("mitmdump.log");
    let child = Command::new(path)
        .arg("--quiet")
        .args(["--listen-host", "127.0.0.1"])
        .args(["--listen-port", &listen.port().to_string()])
        .arg("--set")
        .arg(format!("confdir={}", confdir.display()))
        .arg("--set")
        .arg(format!("ssl_verify_upstream_trusted_ca={}", ca.display()))
        .arg("-w")
        .arg(dir.path().join("flows.mitm"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| path.display().to_string())?;
    let bundle = confdir.join("mitmproxy-ca-cert.pem");
    let mut peer = Peer {
        // The upstream has no DNS name, so the tunnel names its address; the client's SNI
        // is still HOST, which mitmproxy verifies the upstream's certificate against.
        route: Route::Connect {
            proxy: listen,
            target: upstream.to_string(),
        },
        roots: Arc::new(rustls::RootCertStore::empty()),
        child,
        _dir: dir,
    };
    wait_ready(&mut peer.child, &log, || {
        bundle.exists() && listening(listen)
    })?;
    peer.roots = roots_from(&bundle)?;
    Ok(peer)
}

/// Waits until `ready` holds, failing with the end of the peer's log if it exits or takes
/// longer than 30 s.
fn wait_ready(child: &mut Child, log: &Path, ready: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}): {}", last_line(log));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready within 30s: {}", last_line(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no log output".into())
}

fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

fn roots_from(bundle: &PathBuf) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(bundle)? {
        // A bundle may carry roots webpki cannot use; the one the peer signs with is usable.
        let _ = roots.add(cert?);
    }
    Ok(Arc::new(roots))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A free loopback address (free when asked; the peer binds it a moment later).
fn loopback() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `pid` and every process descended from it, from each thread's /proc children list.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", tree[i]));
        let children: Vec<u32> = tasks
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .flat_map(|list| {
                list.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        tree.extend(children);
        i += 1;
    }
    tree
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
