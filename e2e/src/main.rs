//! `cassette-e2e`: run the local control plane by hand, or the demo that `make demo` shows.

use anyhow::{Context, Result, bail};
use cassette_e2e::controlplane::{Binaries, ControlPlane};
use cassette_e2e::repo_root;
use cassette_e2e::upstreams::server::{ServeConfig, serve};
use clap::{Parser, Subcommand};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(
    name = "cassette-e2e",
    about = "cassette's local control plane, demo, and e2e test upstreams"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start kube-apiserver and etcd on loopback and keep them running until Ctrl-C.
    ControlPlane {
        /// Also copy the admin kubeconfig here.
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
    },
    /// Start a control plane, install the CRD, apply the example sessions, show them, and
    /// tear everything down.
    Demo,
    /// Serve the test upstreams (fake metadata server, HTTPS echo and git, emulator proxies);
    /// run inside a test's net namespace by `cassette_e2e::upstreams::Upstreams::start`.
    Upstreams(UpstreamsArgs),
}

#[derive(clap::Args)]
struct UpstreamsArgs {
    /// The net side's address: HTTPS on 443 and the emulator proxies listen here.
    #[arg(long)]
    listen_ip: Ipv4Addr,
    /// The fake metadata server's address (port 80).
    #[arg(long, default_value = "169.254.169.254")]
    metadata_ip: Ipv4Addr,
    /// PEM certificate chain for the HTTPS listener.
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM private key for the HTTPS listener.
    #[arg(long)]
    tls_key: PathBuf,
    /// Directory of bare repositories served by git http-backend.
    #[arg(long)]
    git_root: PathBuf,
    /// http://host:port of fake-gcs-server; enables the GCS proxy on :4444.
    #[arg(long)]
    gcs_backend: Option<String>,
    /// http://host:port of the Pub/Sub emulator; enables the Pub/Sub proxy on :8086.
    #[arg(long)]
    pubsub_backend: Option<String>,
    /// The real access token the metadata server hands out and the Google hosts require.
    #[arg(long)]
    token: String,
    /// Append one JSON line per request here.
    #[arg(long)]
    log: PathBuf,
    /// Create this file once every listener is bound.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::ControlPlane { kubeconfig_out } => control_plane(kubeconfig_out),
        Cmd::Demo => demo(),
        Cmd::Upstreams(args) => upstreams(args),
    }
}

fn upstreams(args: UpstreamsArgs) -> Result<()> {
    let config = ServeConfig {
        listen_ip: args.listen_ip,
        metadata_ip: args.metadata_ip,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        git_root: args.git_root,
        gcs_backend: args.gcs_backend,
        pubsub_backend: args.pubsub_backend,
        token: args.token,
        log: args.log,
        ready_file: args.ready_file,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(config))
}

fn start() -> Result<ControlPlane> {
    let bins = Binaries::ensure()?;
    eprintln!(
        "starting {} and {} on loopback",
        name_of(&bins.kube_apiserver),
        name_of(&bins.etcd)
    );
    let plane = ControlPlane::start(&bins)?;
    eprintln!("API server ready at {}", plane.server());
    Ok(plane)
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn control_plane(kubeconfig_out: Option<PathBuf>) -> Result<()> {
    let plane = start()?;
    let mut kubeconfig = plane.kubeconfig_path();
    if let Some(out) = kubeconfig_out {
        std::fs::copy(&kubeconfig, &out).with_context(|| format!("writing {}", out.display()))?;
        kubeconfig = out;
    }
    println!("export KUBECONFIG={}", kubeconfig.display());
    eprintln!("press Ctrl-C to stop");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(shutdown_signal())?;
    eprintln!("stopping the control plane");
    drop(plane);
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn demo() -> Result<()> {
    let plane = start()?;
    let root = repo_root();
    let kubeconfig = plane.kubeconfig_path();
    let kubectl = |args: &[&str]| run_kubectl(&kubeconfig, &root, args);

    kubectl(&["apply", "--server-side", "-f", "crds/agentsession.yaml"])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/agentsessions.cassette.dev",
    ])?;
    kubectl(&["create", "namespace", "agents"])?;
    kubectl(&["apply", "-f", "examples/"])?;
    kubectl(&["get", "agentsessions", "-A"])?;
    eprintln!("\nstopping the control plane");
    drop(plane);
    Ok(())
}

/// Run kubectl as a user would, echoing the command first.
fn run_kubectl(kubeconfig: &Path, dir: &Path, args: &[&str]) -> Result<()> {
    println!("\n$ kubectl {}", args.join(" "));
    let status = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .current_dir(dir)
        .status()
        .context("running kubectl (is it installed?)")?;
    if !status.success() {
        bail!("kubectl {} failed ({status})", args.join(" "));
    }
    Ok(())
}
