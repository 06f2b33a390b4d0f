//! A real kube-apiserver and etcd on loopback, with generated certificates, service-account
//! keys and an admin kubeconfig, in a temporary directory that goes away with it.
//!
//! The binaries are built from their Go modules by `e2e/controlplane/build.sh` and cached by
//! version; this module only runs them. It is not a cluster by itself: [`crate::node`] adds
//! the controller-manager, scheduler and a node.

use crate::pki::{ClusterCa, service_account_key};
use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustix::process::{Pid, Signal, kill_process};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the API server may take to report ready. A cold start takes a few seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Paths to the two binaries.
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
}

impl Binaries {
    /// Build (first time only) and locate the binaries through `e2e/controlplane/build.sh`.
    pub fn ensure() -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
        let out = Command::new("bash")
            .arg(&script)
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
        let stdout = String::from_utf8_lossy(&out.stdout);
        let find = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(PathBuf::from)
                .with_context(|| format!("{} printed no {key} line", script.display()))
        };
        Ok(Self {
            kube_apiserver: find("KUBE_APISERVER=")?,
            etcd: find("ETCD=")?,
        })
    }
}

/// A running etcd + kube-apiserver pair. Dropping it stops both and removes its directory.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    ca: ClusterCa,
    server: String,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

impl ControlPlane {
    /// Start etcd and kube-apiserver on free loopback ports and wait until the API server is
    /// ready.
    pub fn start(bins: &Binaries) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cassette-controlplane-")
            .tempdir()
            .context("creating the control plane's directory")?;
        let root = dir.path().to_path_buf();
        let pki = root.join("pki");
        fs::create_dir_all(&pki)?;

        let ca = ClusterCa::new()?;
        let serving = ca.serving()?;
        let (sa_private, sa_public) = service_account_key()?;
        write(&pki.join("ca.crt"), &ca.cert_pem)?;
        write(&pki.join("apiserver.crt"), &serving.cert)?;
        write(&pki.join("apiserver.key"), &serving.key)?;
        write(&pki.join("sa.key"), &sa_private)?;
        write(&pki.join("sa.pub"), &sa_public)?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let secure_port = free_port()?;
        let server = format!("https://127.0.0.1:{secure_port}");

        let mut plane = Self {
            dir,
            ca,
            server,
            etcd: None,
            apiserver: None,
        };

        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = dying_with_spawner(&bins.etcd);
        etcd.args(["--name", "cassette"])
            .arg("--data-dir")
            .arg(root.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("cassette={peer_url}")])
            // Test data: durability across power loss buys nothing and costs seconds.
            .arg("--unsafe-no-fsync")
            .args(["--log-level", "warn"]);
        plane.etcd = Some(spawn(etcd, &root.join("etcd.log"))?);

        let p = |name: &str| pki.join(name).display().to_string();
        let mut apiserver = dying_with_spawner(&bins.kube_apiserver);
        apiserver
            .arg(format!("--etcd-servers={client_url}"))
            .arg(format!("--cert-dir={}", p("")))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg(format!("--secure-port={secure_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // Webhooks and aggregated APIs through their Services' endpoints (the pod IPs the
            // host routes to the node), not the cluster IPs only the node's kube-proxy knows.
            .arg("--enable-aggregator-routing=true")
            .arg("--authorization-mode=RBAC")
            .arg("--allow-privileged=true")
            // The test node's name resolves nowhere: logs and exec go to its InternalIP.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!("--service-account-issuer={}", plane.server))
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ));
        plane.apiserver = Some(spawn(apiserver, &root.join("apiserver.log"))?);

        let admin = plane.ca.client("cassette-admin", Some("system:masters"))?;
        plane.write_kubeconfig(&plane.kubeconfig_path(), "cassette-admin", &admin)?;
        plane.wait_ready()?;
        Ok(plane)
    }

    /// The admin kubeconfig (user `cassette-admin`, group `system:masters`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory holding certificates, logs and kubeconfigs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig for a named user authenticated by a client certificate, with no rights
    /// until RBAC grants some.
    pub fn user_kubeconfig(&self, user: &str, group: Option<&str>) -> Result<PathBuf> {
        let pem = self.ca.client(user, group)?;
        let path = self.dir.path().join(format!("{user}.kubeconfig"));
        self.write_kubeconfig(&path, user, &pem)?;
        Ok(path)
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, pem: &crate::pki::Pem) -> Result<()> {
        // JSON is YAML: kubectl and kube-rs read it as a kubeconfig.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "cassette-e2e",
                "cluster": {
                    "server": self.server,
                    "certificate-authority-data": BASE64.encode(&self.ca.cert_pem),
                }
            }],
            "users": [{
                "name": user,
                "user": {
                    "client-certificate-data": BASE64.encode(&pem.cert),
                    "client-key-data": BASE64.encode(&pem.key),
                }
            }],
            "contexts": [{
                "name": "cassette-e2e",
                "context": {"cluster": "cassette-e2e", "user": user, "namespace": "default"}
            }],
            "current-context": "cassette-e2e",
        });
        write(path, &serde_json::to_string_pretty(&config)?)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let kubeconfig = self.kubeconfig_path();
        let started = Instant::now();
        let mut last_error = String::from("no answer yet");
        while started.elapsed() < READY_TIMEOUT {
            for name in ["etcd", "kube-apiserver"] {
                let child = if name == "etcd" {
                    &mut self.etcd
                } else {
                    &mut self.apiserver
                };
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!(
                        "{name} exited during start-up ({status}); its log ends with:\n{}",
                        self.log_tail(name)
                    );
                }
            }
            match runtime.block_on(readyz(&kubeconfig)) {
                Ok(()) => return Ok(()),
                Err(e) => last_error = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "kube-apiserver was not ready after {READY_TIMEOUT:?} (last answer: {last_error}); its log ends with:\n{}",
            self.log_tail("kube-apiserver")
        )
    }

    /// The last lines of a component's log, for error messages.
    pub fn log_tail(&self, component: &str) -> String {
        let file = if component == "etcd" {
            "etcd.log"
        } else {
            "apiserver.log"
        };
        tail(&self.dir.path().join(file), 4096)
    }

    /// Stop both processes: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            terminate(child);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn readyz(kubeconfig: &Path) -> Result<()> {
    let client = crate::client_from(kubeconfig).await?;
    let request = http::Request::get("/readyz").body(Vec::new())?;
    let body = client.request_text(request).await?;
    if body.trim() == "ok" {
        Ok(())
    } else {
        bail!("/readyz answered {body:?}")
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// A command for `program` that dies with the thread that spawns it: `setpriv --pdeathsig
/// KILL -- program`, so a test process killed outright leaves no control plane behind.
pub(crate) fn dying_with_spawner(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(crate::netns::find_binary("setpriv"));
    command.args(["--pdeathsig", "KILL", "--"]).arg(program);
    command
}

/// Start a component (a [`dying_with_spawner`] command) with its output in a log file.
pub(crate) fn spawn(mut command: Command, log: &Path) -> Result<Child> {
    let out = fs::File::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // The program after the wrappers' `--`s, for the error message.
    let args: Vec<&OsStr> = command.get_args().collect();
    let program = args
        .iter()
        .rposition(|a| *a == "--")
        .and_then(|i| args.get(i + 1).copied())
        .unwrap_or_else(|| command.get_program())
        .to_owned();
    command
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))
}

pub(crate) fn terminate(mut child: Child) {
    let _ = kill_process(Pid::from_child(&child), Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} is missing)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}
