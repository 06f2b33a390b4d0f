//! `cassette-e2e`: run the local control plane by hand, or the demo that `make demo` shows.

use anyhow::{Context, Result, bail};
use cassette_e2e::controlplane::{Binaries, ControlPlane};
use cassette_e2e::repo_root;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(
    name = "cassette-e2e",
    about = "cassette's local control plane and demo"
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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::ControlPlane { kubeconfig_out } => control_plane(kubeconfig_out),
        Cmd::Demo => demo(),
    }
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
