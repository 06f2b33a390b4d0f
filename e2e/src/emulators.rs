//! The Google Cloud emulators the upstreams proxy to, started at a [`Site`] on its address (a
//! topology's net side, or the real node's host side): fake-gcs-server for GCS and Google's
//! Pub/Sub emulator. Each stops (with its whole process group) when dropped.
//!
//! They accept any credential; [`crate::upstreams`] in front of them checks tokens and logs.

use crate::netns::Site;
use crate::upstreams::{PROJECT_ID, net_daemon, spawn_logged, tail, terminate};
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// fake-gcs-server's port on the net side.
pub const FAKE_GCS_PORT: u16 = 4443;
/// The Pub/Sub emulator's port on the net side.
pub const PUBSUB_PORT: u16 = 8085;

/// Overrides where fake-gcs-server is taken from (a binary path).
pub const FAKE_GCS_ENV: &str = "CASSETTE_FAKE_GCS_SERVER";

const GCS_START_TIMEOUT: Duration = Duration::from_secs(20);
const PUBSUB_START_TIMEOUT: Duration = Duration::from_secs(60);

/// fake-gcs-server with an in-memory store, over plain HTTP.
pub struct FakeGcs {
    child: Option<Child>,
    site: Site,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl FakeGcs {
    /// The binary: `$CASSETTE_FAKE_GCS_SERVER`, or the one `recording/tests/fake-gcs.sh`
    /// installs (built once from its Go module, cached by version).
    pub fn binary() -> Result<PathBuf> {
        if let Some(path) = std::env::var_os(FAKE_GCS_ENV) {
            return Ok(PathBuf::from(path));
        }
        let script = crate::repo_root().join("recording/tests/fake-gcs.sh");
        if !script.exists() {
            bail!(
                "{} is missing; set {FAKE_GCS_ENV} to a fake-gcs-server binary",
                script.display()
            );
        }
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}); see its output above",
                script.display(),
                out.status
            );
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if path.is_empty() {
            bail!("{} printed no path", script.display());
        }
        Ok(PathBuf::from(path))
    }

    /// Start it on `<net side>:4443` and wait until it answers. Upload URLs it hands out point
    /// at `https://storage.googleapis.com`, as the real service's do.
    pub fn start(site: impl Into<Site>) -> Result<Self> {
        let site = site.into();
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("cassette-fake-gcs-")
            .tempdir()?;
        let ip = site.ip();
        let addr = SocketAddr::from((ip, FAKE_GCS_PORT));
        let mut command = net_daemon(&site, &binary, [("HOME", dir.path())]);
        command
            .args(["-scheme", "http", "-backend", "memory"])
            .args(["-host", &ip.to_string()])
            .args(["-port", &FAKE_GCS_PORT.to_string()])
            .args(["-public-host", "storage.googleapis.com"])
            .args(["-external-url", "https://storage.googleapis.com"])
            .args(["-log-level", "warn"]);
        let mut gcs = FakeGcs {
            child: None,
            site: site.clone(),
            addr,
            dir,
        };
        let output = gcs.output_path();
        gcs.child = Some(spawn_logged(command, &output)?);
        wait_started(&site, addr, GCS_START_TIMEOUT, gcs.child.as_mut(), &output)
            .context("starting fake-gcs-server")?;
        Ok(gcs)
    }

    /// `http://<net side>:4443`, for `--gcs-backend` and storage clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Create a bucket over the JSON API (`POST /storage/v1/b`).
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, answer) = http_request(
            &self.site,
            self.addr,
            "POST",
            &format!("/storage/v1/b?project={PROJECT_ID}"),
            Some(("application/json", body.as_bytes())),
        )?;
        if !(200..300).contains(&status) {
            bail!(
                "creating bucket {name} on fake-gcs-server: HTTP {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    }

    /// Put an object straight into the emulator (`POST /upload/…?uploadType=media`), as
    /// something already in the bucket before the agent came.
    pub fn upload(&self, bucket: &str, object: &str, bytes: &[u8]) -> Result<()> {
        let path = format!(
            "/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            encode_path(object)
        );
        let (status, answer) = http_request(
            &self.site,
            self.addr,
            "POST",
            &path,
            Some(("application/octet-stream", bytes)),
        )?;
        if !(200..300).contains(&status) {
            bail!(
                "uploading gs://{bucket}/{object} to fake-gcs-server: HTTP {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    }

    /// An object's bytes, straight from the emulator (`GET …?alt=media`).
    pub fn read_object(&self, bucket: &str, object: &str) -> Result<Vec<u8>> {
        let path = format!("/storage/v1/b/{bucket}/o/{}?alt=media", encode_path(object));
        let (status, answer) = http_request(&self.site, self.addr, "GET", &path, None)?;
        if status != 200 {
            bail!(
                "reading gs://{bucket}/{object} from fake-gcs-server: HTTP {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(answer)
    }

    /// The names of the objects under `prefix` (`GET /storage/v1/b/B/o?prefix=…`).
    pub fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let path = format!("/storage/v1/b/{bucket}/o?prefix={}", encode_path(prefix));
        let (status, answer) = http_request(&self.site, self.addr, "GET", &path, None)?;
        if status != 200 {
            bail!(
                "listing gs://{bucket}/{prefix} on fake-gcs-server: HTTP {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let listing: serde_json::Value = serde_json::from_slice(&answer)?;
        Ok(listing["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["name"].as_str().map(str::to_string))
            .collect())
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("fake-gcs-server.out")
    }

    /// The end of its output, for error messages.
    pub fn output_tail(&self) -> String {
        tail(&self.output_path(), 8192)
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// Google's Pub/Sub emulator (Java), on `<net side>:8085`, speaking plaintext gRPC.
pub struct PubsubEmulator {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl PubsubEmulator {
    /// The emulator's launcher in the Google Cloud SDK (`$CLOUDSDK_ROOT`, else the Debian
    /// package's `/usr/lib/google-cloud-sdk`).
    pub fn binary() -> Result<PathBuf> {
        let root = std::env::var_os("CLOUDSDK_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/google-cloud-sdk"));
        let launcher = root.join("platform/pubsub-emulator/bin/cloud-pubsub-emulator");
        if !launcher.is_file() {
            bail!(
                "{} is missing: install the emulator (apt-get install google-cloud-cli-pubsub-emulator, \
                 or gcloud components install pubsub-emulator) or set CLOUDSDK_ROOT",
                launcher.display()
            );
        }
        Ok(launcher)
    }

    /// Start it with a fresh data directory and wait until its port answers.
    pub fn start(site: impl Into<Site>) -> Result<Self> {
        let site = site.into();
        let launcher = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("cassette-pubsub-")
            .tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let ip = site.ip();
        let addr = SocketAddr::from((ip, PUBSUB_PORT));
        let mut env = vec![("HOME".to_string(), dir.path().display().to_string())];
        if let Ok(java_home) = std::env::var("JAVA_HOME") {
            env.push(("JAVA_HOME".into(), java_home));
        }
        let mut command = net_daemon(&site, &launcher, env);
        command
            .arg(format!("--host={ip}"))
            .arg(format!("--port={PUBSUB_PORT}"))
            .arg(format!("--data-dir={}", data.display()));
        let mut emulator = PubsubEmulator {
            child: None,
            addr,
            dir,
        };
        let output = emulator.output_path();
        emulator.child = Some(spawn_logged(command, &output)?);
        wait_started(
            &site,
            addr,
            PUBSUB_START_TIMEOUT,
            emulator.child.as_mut(),
            &output,
        )
        .context("starting the Pub/Sub emulator")?;
        Ok(emulator)
    }

    /// `<net side>:8085`, the form `PUBSUB_EMULATOR_HOST` takes.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// `http://<net side>:8085`, for `--pubsub-backend`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("pubsub-emulator.out")
    }

    /// The end of its output, for error messages.
    pub fn output_tail(&self) -> String {
        tail(&self.output_path(), 8192)
    }
}

impl Drop for PubsubEmulator {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// Wait until `addr` answers at `site`, failing early if the process exits.
fn wait_started(
    site: &Site,
    addr: SocketAddr,
    timeout: Duration,
    mut child: Option<&mut Child>,
    output: &Path,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        if site.connect(addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if let Some(child) = child.as_deref_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "it exited ({status}) before listening on {addr}; its output:\n{}",
                tail(output, 8192)
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "nothing listened on {addr} after {timeout:?}; its output:\n{}",
                tail(output, 8192)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 request from inside a namespace: (status, body).
fn http_request(
    site: &Site,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<(u16, Vec<u8>)> {
    let mut stream = site.connect(addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let payload = body.map(|(content_type, bytes)| {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
        bytes
    });
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    if let Some(bytes) = payload {
        stream.write_all(bytes)?;
    }
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {method} {path} from {addr}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{addr} answered {method} {path} without a header block"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{addr} answered with a bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Undo `Transfer-Encoding: chunked`.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let after = &rest[line_end + 2..];
        let Some(size) = size.filter(|&n| n > 0 && after.len() >= n) else {
            break;
        };
        out.extend_from_slice(&after[..size]);
        rest = after[size..]
            .strip_prefix(b"\r\n")
            .unwrap_or(&after[size..]);
    }
    out
}

/// Percent-encode an object name for a path segment.
fn encode_path(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
    }

    #[test]
    fn object_names_are_escaped() {
        assert_eq!(encode_path("a/b c.txt"), "a%2Fb%20c.txt");
    }
}
