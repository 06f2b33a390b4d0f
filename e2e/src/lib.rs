//! End-to-end harness for cassette: the cluster the tests run against, and helpers to use it.
//!
//! By default a test binary starts one local control plane (a real kube-apiserver and etcd on
//! loopback) the first time a test asks for it; it dies with the binary, and a sweeper
//! process removes what it leaves. Set
//! `CASSETTE_E2E_KUBECONFIG` to run the same tests against an existing cluster (kind, GKE).

pub mod clients;
pub mod controlplane;
pub mod emulators;
pub mod fixtures;
pub mod netns;
pub mod node;
pub mod operator;
mod pki;
pub mod pods;
pub mod relay;
pub mod release;
pub mod story;
pub mod sweep;
pub mod upstreams;

use anyhow::{Context, Result, anyhow};
use controlplane::{Binaries, ControlPlane};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, mpsc};

/// The variable that points the tests at an existing cluster instead of a local one.
pub const KUBECONFIG_ENV: &str = "CASSETTE_E2E_KUBECONFIG";

/// The cluster a test binary runs against.
pub struct Cluster {
    kubeconfig: PathBuf,
    local: bool,
}

impl Cluster {
    /// The admin kubeconfig, for `kubectl --kubeconfig`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Whether this is the harness's own control plane (and not a user's cluster).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The API server's address, from the kubeconfig (`https://HOST:PORT`).
    pub fn server_addr(&self) -> Result<std::net::SocketAddr> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let server = kubeconfig
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .context("the kubeconfig names no server")?;
        let authority = server
            .strip_prefix("https://")
            .context("the server is not https://")?
            .trim_end_matches('/');
        authority
            .parse()
            .with_context(|| format!("the server {server} is not an IP address and port"))
    }

    /// A client for the current test's runtime, authenticated as the admin.
    pub async fn client(&self) -> Result<Client> {
        client_from(&self.kubeconfig).await
    }

    /// `kubectl` pointed at this cluster.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// `kubectl apply -f -` of a manifest (YAML or JSON, one or more documents) as the admin.
    pub fn apply(&self, manifest: &str) -> Result<()> {
        let out = self.kubectl_with_input(&["apply", "-f", "-"], manifest)?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `kubectl <args>` as the admin with `input` on its stdin; what it printed and how it
    /// ended (kubectl prints admission warnings on stderr).
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Result<std::process::Output> {
        let mut command = self.kubectl();
        command.args(args);
        with_input(command, input).with_context(|| format!("running kubectl {}", args.join(" ")))
    }

    /// A kubeconfig for a named user (client certificate; local control plane only).
    pub fn user_kubeconfig(&self, user: &str, group: Option<&str>) -> Result<PathBuf> {
        let guard = LOCAL
            .lock()
            .map_err(|_| anyhow!("control plane lock poisoned"))?;
        let plane = guard
            .as_ref()
            .context("named users need the local control plane; an existing cluster has its own")?;
        plane.user_kubeconfig(user, group)
    }
}

/// A client authenticated by the given kubeconfig.
pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kubeconfig_file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig_file, &KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig")?;
    Ok(Client::try_from(config)?)
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
static LOCAL: Mutex<Option<ControlPlane>> = Mutex::new(None);

/// The cluster shared by every test in this binary, started on first use.
///
/// Panics with the reason when no cluster can be had: every e2e test needs one.
pub fn cluster() -> &'static Cluster {
    match SHARED.get_or_init(|| start_shared().map_err(|e| format!("{e:#}"))) {
        Ok(cluster) => cluster,
        Err(e) => panic!("no cluster for the e2e tests: {e}"),
    }
}

fn start_shared() -> Result<Cluster> {
    if let Some(path) = std::env::var_os(KUBECONFIG_ENV) {
        return Ok(Cluster {
            kubeconfig: PathBuf::from(path),
            local: false,
        });
    }
    let kubeconfig = start_local()?;
    Ok(Cluster {
        kubeconfig,
        local: true,
    })
}

/// Start the control plane from a thread that lives as long as the process, so the
/// parent-death signal on its children fires only when the whole test binary goes away, and
/// a sweeper that removes its directory (and the node's leftovers) once the binary is gone.
fn start_local() -> Result<PathBuf> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("control-plane".into())
        .spawn(move || {
            let started = Binaries::ensure().and_then(|bins| {
                let plane = ControlPlane::start(&bins)?;
                sweep::start(&[plane.dir()])?;
                Ok(plane)
            });
            match started {
                Ok(plane) => {
                    let kubeconfig = plane.kubeconfig_path();
                    *LOCAL.lock().expect("control plane lock") = Some(plane);
                    let _ = tx.send(Ok(kubeconfig));
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    rx.recv().context("the control-plane thread died")?
}

static NODE_INFO: OnceLock<Result<node::NodeInfo, String>> = OnceLock::new();
static NODE: Mutex<Option<node::Node>> = Mutex::new(None);

/// The real node of this binary's local cluster, started on first use (after the control
/// plane) from a thread that lives as long as the process: its components die with the
/// binary, and the control plane's sweeper removes what they leave.
///
/// Panics with the reason when it cannot start; tests check [`node::unavailable_reason`]
/// first and skip.
pub fn node() -> &'static node::NodeInfo {
    match NODE_INFO.get_or_init(|| start_node().map_err(|e| format!("{e:#}"))) {
        Ok(info) => info,
        Err(e) => panic!("no node for the e2e tests: {e}"),
    }
}

fn start_node() -> Result<node::NodeInfo> {
    let cluster = cluster();
    anyhow::ensure!(
        cluster.is_local(),
        "the real node runs only beside the local control plane (not with {KUBECONFIG_ENV})"
    );
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("node".into())
        .spawn(move || {
            let started = (|| {
                let guard = LOCAL
                    .lock()
                    .map_err(|_| anyhow!("control plane lock poisoned"))?;
                let plane = guard.as_ref().context("the local control plane is gone")?;
                let server = cluster.server_addr()?;
                let admin = plane.kubeconfig_path();
                let user = |name: &str, group: Option<&str>| plane.user_kubeconfig(name, group);
                let access = node::PlaneAccess {
                    server,
                    admin_kubeconfig: &admin,
                    ca_file: plane.dir().join("pki/ca.crt"),
                    sa_key_file: plane.dir().join("pki/sa.key"),
                    user_kubeconfig: &user,
                };
                node::Node::start(&access)
            })();
            match started {
                Ok(node) => {
                    let info = node.info().clone();
                    *NODE.lock().expect("node lock") = Some(node);
                    let _ = tx.send(Ok(info));
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    rx.recv().context("the node thread died")?
}

/// The cluster CA (PEM) a kubeconfig trusts, from its first cluster's
/// `certificate-authority-data` or `certificate-authority` file.
pub fn cluster_ca_pem(kubeconfig: &Path) -> Result<String> {
    use base64::Engine;
    let config = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cluster = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .context("the kubeconfig names no cluster")?;
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("decoding certificate-authority-data")?;
        return Ok(String::from_utf8(pem)?);
    }
    let file = cluster
        .certificate_authority
        .as_deref()
        .context("the kubeconfig's cluster has no certificate authority")?;
    Ok(std::fs::read_to_string(file)?)
}

/// A unique, DNS-safe name for test objects: `<prefix>-<pid>-<counter>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A binary of this workspace (`cassette-sidecar`, `kubectl-cassette`, …), built first:
/// cargo does nothing when it is up to date, and a stale binary would test old code. Cargo's
/// lock is free while tests run, so this works from inside `cargo test`.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Not the variables `cargo test` sets for this test binary (CARGO_MANIFEST_DIR, CARGO_PKG_*,
    // …): build scripts that watch them (ring's does) would run again, and every dependent
    // crate would be rebuilt, each time a test asks for a binary.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let configures_cargo = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_TERM_"]
            .iter()
            .any(|keep| key.starts_with(keep))
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_NET_");
        if key.starts_with("CARGO_") && !configures_cargo {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        .args(["build", "-q", "-p", name, "--bin", name])
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("running cargo build -p {name}"))?;
    anyhow::ensure!(status.success(), "cargo build -p {name} failed");
    // Test binaries live in target/<profile>/deps, cassette-e2e itself in target/<profile>.
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("the running binary's directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("target/<profile>")?;
    }
    let path = dir.join(name);
    anyhow::ensure!(path.exists(), "{} was not built", path.display());
    Ok(path)
}

/// helm, built from its Go module at the pinned version by `e2e/controlplane/build.sh` (cached).
pub fn helm() -> Result<PathBuf> {
    let script = repo_root().join("e2e/controlplane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "{} failed", script.display());
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("HELM="))
        .map(PathBuf::from)
        .context("build.sh printed no HELM= line")
}

/// The repository root, for paths such as `crds/` and `examples/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Run `command` with `input` on its stdin; what it printed and how it ended.
pub fn with_input(mut command: std::process::Command, input: &str) -> Result<std::process::Output> {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("the command's stdin")?
        .write_all(input.as_bytes())?;
    Ok(child.wait_with_output()?)
}
