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
    /// The seed's story end to end on a local one-node cluster (needs root): the operator, a
    /// session, the agent's pod injected and run by the kubelet, and what an auditor sees;
    /// then tear down.
    Demo,
    /// Serve the test upstreams (fake metadata server, HTTPS echo and git, emulator proxies);
    /// run inside a test's net namespace by `cassette_e2e::upstreams::Upstreams::start`.
    Upstreams(UpstreamsArgs),
    /// Wait for a test process to exit (its end of stdin closes), then remove what its local
    /// control plane and node left; started by the harness with the control plane.
    Sweep {
        /// The test process.
        #[arg(long)]
        after: i32,
        /// A directory to remove after the node's leftovers.
        #[arg(long = "remove")]
        dirs: Vec<PathBuf>,
    },
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
    /// The code host's token: when given, git.test and api.git.test answer 401 without it, as a
    /// private repository on a code host does.
    #[arg(long, env = "CASSETTE_E2E_CODE_HOST_TOKEN")]
    code_host_token: Option<String>,
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
        Cmd::Sweep { after, dirs } => cassette_e2e::sweep::after_exit(after, &dirs),
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
        code_host_token: args.code_host_token,
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

/// The seed's story on a local one-node cluster, as `tests/full_loop.rs` plays it, narrated:
/// alice asks for the fix-ci session, the agent's pod is stored injected and run by the
/// kubelet, the agent works, and an auditor reads what happened.
fn demo() -> Result<()> {
    if let Some(reason) = cassette_e2e::node::unavailable_reason() {
        bail!("make demo runs the agent's pod on a local node: {reason}; run it as root");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(play_the_story())
}

async fn play_the_story() -> Result<()> {
    use cassette_e2e::story::{self, JOB, SESSION, World};
    let step = |text: &str| println!("\n\x1b[1m# {text}\x1b[0m");

    step(
        "a local cluster: kube-apiserver and etcd on loopback, one node (kubelet, containerd, \
         runc, kube-proxy, CoreDNS)",
    );
    let cluster = cassette_e2e::cluster();
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    println!("export KUBECONFIG={}", kubeconfig.display());
    step(
        "cassette installed: helm install charts/cassette (the CRD, cassette-operator as a \
         Deployment, its webhooks through its Service, failurePolicy: Fail, the chart's RBAC); \
         git, a code host, GCS and the metadata server beside the node",
    );
    let world = World::start(&std::env::current_exe()?).await?;
    run_kubectl(&kubeconfig, &repo_root(), &["get", "nodes", "-o", "wide"])?;
    run_kubectl(
        &kubeconfig,
        &repo_root(),
        &["get", "deployments,pods,services", "-n", "cassette-system"],
    )?;
    println!("where each part comes from:");
    for (part, source) in [
        (
            "kube-apiserver, etcd, kubelet, kube-proxy, scheduler, controller-manager",
            "built from their pinned Go modules (e2e/controlplane/build.sh)",
        ),
        ("containerd, runc, CNI plugins", "Debian's packages"),
        (
            "cassette-sidecar image",
            "docker/sidecar.Dockerfile with this build's binary, by buildah",
        ),
        (
            "coding-agent image",
            "docker/coding-agent.Dockerfile: Debian, git, curl, gofmt, gcloud",
        ),
        (
            "cassette-operator image",
            "docker/operator.Dockerfile with this build's binary, by buildah",
        ),
        (
            "GCS, the metadata server, git and the code host",
            "emulated: fake-gcs-server, cassette-e2e upstreams",
        ),
    ] {
        println!("  {part:<74} {source}");
    }

    step("alice asks for a session for the coding agent");
    println!("$ kubectl apply -f examples/   # as alice@example.com");
    let session = world.request_session().await?;
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(world.alice_kubeconfig())
        .args(["apply", "-f"])
        .arg(repo_root().join("examples"))
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if let Some(by) = &session.spec.requested_by {
        println!("spec.requestedBy (stamped by the webhook): {}", by.username);
    }

    step("the agent's Job: its image, its command, and one label on its pod");
    println!(
        "$ kubectl apply -f {JOB}.yaml   # a Job; its pod template: labels: cassette.dev/session={SESSION}; \
         command: bash -c <the story>"
    );
    let stored = world.create_job().await?;
    let pod = stored.metadata.name.clone().unwrap_or_default();
    println!("stored by the API server as:");
    let spec = stored.spec.clone().unwrap_or_default();
    for container in spec.init_containers.iter().flatten() {
        let role = if container.restart_policy.as_deref() == Some("Always") {
            "native sidecar, UID 1337, the pod's only token"
        } else {
            "init: iptables capture, checked fail-closed"
        };
        println!("  initContainer {:<17} {role}", container.name);
    }
    for container in &spec.containers {
        println!(
            "  container     {:<17} UID 1000, trusts only the session CA",
            container.name
        );
    }

    step("the kubelet runs the stored pod; the agent's command");
    println!("{}", story::STORY.trim_end());
    let run = world.run_pod(&pod).await?;
    run_kubectl(
        &kubeconfig,
        &repo_root(),
        &["get", "jobs,pods", "-n", story::NAMESPACE, "-o", "wide"],
    )?;
    step("what the agent saw");
    if run.exit_codes.get("agent") == Some(&0) {
        run_kubectl(
            &kubeconfig,
            &repo_root(),
            &["logs", "-n", story::NAMESPACE, &pod, "-c", "agent"],
        )?;
    } else {
        print!("{}", run.log("agent"));
        bail!(
            "the agent's story failed; the sidecar said:\n{}",
            run.log("cassette-sidecar")
        );
    }

    step("the operator completes the session from the sidecar's report");
    world.wait_for_completion().await?;
    run_kubectl(&kubeconfig, &repo_root(), &["get", "agentsessions", "-A"])?;

    step("the auditor");
    for args in [["show", SESSION], ["verify", SESSION]] {
        println!(
            "\n$ kubectl cassette {} -n {}",
            args.join(" "),
            story::NAMESPACE
        );
        let out = world.cassette(&args)?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!(
                "kubectl cassette {} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    eprintln!("\nstopping everything");
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
