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
    /// Run a program as a pod's container would see it: in a private mount namespace with the
    /// container's volumes bind-mounted at their paths, as its user, from its working
    /// directory. The e2e harness runs every container of a stored pod through this (inside
    /// the pod's network namespace), since there is no kubelet.
    Contain(ContainArgs),
}

#[derive(clap::Args)]
struct ContainArgs {
    /// `SOURCE:TARGET` or `SOURCE:TARGET:ro`: bind SOURCE (a host directory) at TARGET.
    #[arg(long = "mount", value_name = "SOURCE:TARGET[:ro]")]
    mounts: Vec<String>,
    /// Run as this UID (with `--gid`, no supplementary groups); root when absent.
    #[arg(long, requires = "gid")]
    uid: Option<u32>,
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// Set no_new_privs (the container's `allowPrivilegeEscalation: false`).
    #[arg(long)]
    no_new_privs: bool,
    /// The working directory.
    #[arg(long, default_value = "/")]
    workdir: PathBuf,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
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
        Cmd::Contain(args) => contain(args),
    }
}

fn contain(args: ContainArgs) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let cstr = |path: &Path| CString::new(path.as_os_str().as_bytes()).context("a path with NUL");
    let check = |rc: libc::c_int, what: String| -> Result<()> {
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context(what);
        }
        Ok(())
    };
    // SAFETY: plain syscalls on this single-threaded process before it execs.
    unsafe {
        check(
            libc::unshare(libc::CLONE_NEWNS),
            "unshare(CLONE_NEWNS)".into(),
        )?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making / private".into(),
        )?;
    }
    for spec in &args.mounts {
        let mut parts = spec.splitn(3, ':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
            bail!("--mount {spec:?}: expected SOURCE:TARGET[:ro]");
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some(other) => bail!("--mount {spec:?}: unknown option {other:?}"),
        };
        let (source, target) = (Path::new(source), Path::new(target));
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating the mount point {}", target.display()))?;
        let (src, dst) = (cstr(source)?, cstr(target)?);
        // SAFETY: bind mounts of existing paths in our own mount namespace.
        unsafe {
            check(
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ),
                format!("binding {} at {}", source.display(), target.display()),
            )?;
            if read_only {
                check(
                    libc::mount(
                        std::ptr::null(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ),
                    format!("making {} read-only", target.display()),
                )?;
            }
        }
    }
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]).current_dir(&args.workdir);
    if let (Some(uid), Some(gid)) = (args.uid, args.gid) {
        // std clears the supplementary groups when root sets a UID.
        command.uid(uid).gid(gid);
    }
    if args.no_new_privs {
        // SAFETY: prctl with constant arguments; inherited across exec.
        unsafe {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                "PR_SET_NO_NEW_PRIVS".into(),
            )?;
        }
    }
    let error = command.exec();
    Err(error).with_context(|| format!("executing {}", args.command[0]))
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
    record_a_session(&kubeconfig)?;
    eprintln!("\nstopping the control plane");
    drop(plane);
    Ok(())
}

/// The recorder at work on the fix-ci session, outside a pod: the sidecar runs as an explicit
/// proxy (no iptables needed), an agent's requests go through it to a local stand-in for
/// Google APIs, and the recording is shown and verified as an auditor would.
fn record_a_session(kubeconfig: &Path) -> Result<()> {
    let target = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .to_path_buf();
    let (sidecar, cli) = (
        target.join("cassette-sidecar"),
        target.join("kubectl-cassette"),
    );
    if !sidecar.exists() || !cli.exists() {
        bail!("build cassette-sidecar and kubectl-cassette first (make demo does)");
    }
    let dir = tempfile::Builder::new()
        .prefix("cassette-demo-")
        .tempdir()?;
    let upstream = stand_in_for_google()?;
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (capture, admin, shim) = (free()?, free()?, free()?);
    let sink = format!("file://{}", dir.path().join("sink").display());
    let spec = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "get",
            "agentsession",
            "fix-ci",
            "-n",
            "agents",
            "-o",
            "jsonpath={.spec}",
        ])
        .output()?;
    let spec = String::from_utf8(spec.stdout)?;
    println!(
        "\n$ cassette-sidecar run --session fix-ci ...   # as an explicit proxy on 127.0.0.1:{capture}"
    );
    let mut child = Command::new(&sidecar)
        .arg("run")
        .args([
            "--session",
            "fix-ci",
            "--namespace",
            "agents",
            "--pod",
            "agent-0",
            "--pod-uid",
            "demo",
        ])
        .arg(format!("--sink={sink}"))
        .arg(format!("--spool={}", dir.path().join("spool").display()))
        .arg(format!(
            "--ca-bundle={}",
            dir.path().join("bundle.pem").display()
        ))
        .arg(format!("--capture-addr=127.0.0.1:{capture}"))
        .arg(format!("--admin-addr=127.0.0.1:{admin}"))
        .arg(format!("--metadata-addr=127.0.0.1:{shim}"))
        .arg(format!(
            "--upstream-override=storage.googleapis.com=http://127.0.0.1:{upstream}"
        ))
        .arg("--metadata=off")
        .arg(format!("--session-spec={spec}"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", sidecar.display()))?;
    let bundle = dir.path().join("bundle.pem");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !bundle.exists() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!("the sidecar did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let proxy = format!("http://127.0.0.1:{capture}");
    for (what, args) in [
        (
            "the agent lists a bucket (the response holds a leaked token)",
            vec!["http://storage.googleapis.com/storage/v1/b/acme-ci/o?prefix=logs%2F"],
        ),
        (
            "the agent tries to delete the bucket",
            vec![
                "-X",
                "DELETE",
                "http://storage.googleapis.com/storage/v1/b/acme-ci",
            ],
        ),
    ] {
        println!("\n# {what}\n$ curl -x {proxy} {}", args.join(" "));
        let out = Command::new("curl")
            .args(["-sS", "-x", &proxy])
            .args(&args)
            .output()?;
        println!("{}", String::from_utf8_lossy(&out.stdout).trim_end());
    }
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let recording = format!("{sink}/agents/fix-ci/");
    // The key the sidecar published in the AgentSession status: what verify checks against.
    let key = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "agentsession", "fix-ci", "-n", "agents"])
        .arg("-o=jsonpath={.status.pods[0].publicKey}")
        .output()?;
    let key = String::from_utf8(key.stdout)?;
    for args in [
        vec!["show", "--recording", &recording],
        vec!["verify", "--recording", &recording, "--public-key", &key],
    ] {
        println!("\n$ kubectl cassette {}", args.join(" "));
        let status = Command::new(&cli)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(&args)
            .status()?;
        if !status.success() && args[0] == "show" {
            bail!("kubectl cassette show failed");
        }
    }
    Ok(())
}

/// A plain-HTTP stand-in for storage.googleapis.com: answers a listing whose metadata leaks a
/// token, and 204 to anything else.
fn stand_in_for_google() -> Result<u16> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let body = if request.starts_with("GET") {
                r#"{"kind":"storage#objects","items":[{"name":"logs/ci-1.txt","metadata":{"deploy_token":"ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"}}]}"#
            } else {
                ""
            };
            let status = if body.is_empty() {
                "204 No Content"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
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
