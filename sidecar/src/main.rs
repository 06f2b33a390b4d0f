//! `cassette-sidecar`: `init` installs the capture rules; `run` is the recorder in the data
//! path. `main` parses flags and wires the pieces; each piece lives in its own module.

use anyhow::{Context, Result};
use cassette_api::names::{
    ADMIN_PORT, CAPTURE_PORT, DNS_PORT, INBOUND_PORT, METADATA_PORT, SIDECAR_UID,
};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod admin;
mod broker;
mod bypass;
mod capture;
mod conn;
mod credentials;
mod dns;
mod exchange;
mod http;
mod inbound;
mod init;
mod intercept;
mod metadata;
mod metrics;
#[allow(unsafe_code)] // getsockopt(SO_ORIGINAL_DST): the only unsafe code in the sidecar.
mod original_dst;
mod proxy;
mod record;
mod refusal;
mod review;
mod rewind;
mod serve;
mod session;
mod shutdown;
mod status;
mod tls;
mod upstream;
mod websocket;

#[derive(Parser)]
#[command(
    name = "cassette-sidecar",
    version,
    about = "cassette's recording sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the capture rules (iptables and ip6tables), then check that they capture.
    Init(InitArgs),
    /// Run the recorder: capture, intercept, record, ship.
    Run(Box<RunArgs>),
    /// Used by `init`'s check: connect or send as another UID and print what happened.
    #[command(hide = true)]
    Probe { proto: String, target: SocketAddr },
}

#[derive(Args)]
struct InitArgs {
    /// Accepted and ignored: every DNS query from the agent now goes to the sidecar's DNS
    /// proxy, whichever resolver it names (`run --dns` says where the proxy forwards).
    #[arg(long = "dns", env = "CASSETTE_DNS", value_delimiter = ',', hide = true)]
    _dns: Vec<std::net::IpAddr>,
    /// The UID the check connects as (any UID but the sidecar's).
    #[arg(long, default_value_t = 65534)]
    probe_uid: u32,
    /// Install without checking (for debugging only: the check is what makes init fail closed).
    #[arg(long)]
    skip_check: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The AgentSession this pod records into.
    #[arg(long, env = "CASSETTE_SESSION")]
    session: String,
    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The pod's name.
    #[arg(long, env = "POD_NAME", default_value = "local")]
    pod: String,
    /// The pod's UID.
    #[arg(long, env = "POD_UID", default_value = "local")]
    pod_uid: String,
    /// The AgentSession's UID (its metadata.uid), written on every object of the recording
    /// as cassette-session-uid: the operator's retention deletes only objects that carry it.
    #[arg(long, env = "CASSETTE_SESSION_UID")]
    session_uid: Option<String>,

    /// Where the session CA bundle (system roots + session CA) is written for the agent.
    #[arg(
        long,
        env = "CASSETTE_CA_BUNDLE",
        default_value = "/var/run/cassette/ca/bundle.pem"
    )]
    ca_bundle: PathBuf,
    /// Extra PEM files of roots trusted for upstream servers (added to the system roots).
    #[arg(
        long = "upstream-ca",
        env = "CASSETTE_UPSTREAM_CA",
        value_delimiter = ','
    )]
    upstream_ca: Vec<PathBuf>,
    /// Extra roots trusted for upstream servers as PEM text, for a private CA or a
    /// TLS-inspecting egress proxy (the chart's `upstreamCA`; added to the system roots).
    #[arg(long = "upstream-ca-pem", env = "CASSETTE_UPSTREAM_CA_PEM")]
    upstream_ca_pem: Option<String>,
    /// Upstream overrides for emulators: host=http://127.0.0.1:port (repeatable, or
    /// comma-separated in the variable). Off unless set.
    #[arg(
        long = "upstream-override",
        env = "CASSETTE_UPSTREAM_OVERRIDES",
        value_delimiter = ','
    )]
    upstream_override: Vec<String>,
    /// Hosts tunnelled without interception (*.example.com for subdomains).
    #[arg(
        long = "passthrough",
        env = "CASSETTE_PASSTHROUGH",
        value_delimiter = ','
    )]
    passthrough: Vec<String>,

    /// Where the recording goes: gs://bucket/prefix or file:///dir.
    #[arg(long, env = "CASSETTE_SINK")]
    sink: String,
    /// Local spool directory for segments not yet shipped.
    #[arg(
        long,
        env = "CASSETTE_SPOOL",
        default_value = "/var/run/cassette/spool"
    )]
    spool: PathBuf,
    /// batched or strict.
    #[arg(long, env = "CASSETTE_DURABILITY", default_value = "batched")]
    durability: String,
    /// closed or open.
    #[arg(long, env = "CASSETTE_ON_FAILURE", default_value = "closed")]
    on_failure: String,
    /// Largest body recorded per message, in bytes.
    #[arg(long, env = "CASSETTE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: u64,
    /// Cloud Storage endpoint override (an emulator); the real service when unset.
    #[arg(long, env = "CASSETTE_GCS_ENDPOINT")]
    gcs_endpoint: Option<String>,
    /// Send no credentials to Cloud Storage (emulators only).
    #[arg(long, env = "CASSETTE_GCS_ANONYMOUS")]
    gcs_anonymous: bool,

    /// Answer the agent's metadata requests and swap its placeholder for real tokens from the
    /// metadata server (GKE Workload Identity). `off` outside GKE.
    #[arg(long, env = "CASSETTE_METADATA", default_value = "on")]
    metadata: String,
    /// The AgentSession's spec as JSON (policy and masking); without it nothing is refused
    /// and the built-in masking applies. The operator's injector sets it.
    #[arg(long, env = "CASSETTE_SESSION_SPEC")]
    session_spec: Option<String>,
    /// When the session ends (RFC 3339); after it every request is refused. The operator
    /// computes it from expiresAt or creation + maxDuration.
    #[arg(long, env = "CASSETTE_EXPIRES_AT")]
    expires_at: Option<String>,
    /// A file holding the key for masked-value fingerprints (the Secret named in
    /// spec.masking.fingerprintKey, mounted). Without it a key is made per pod.
    #[arg(long, env = "CASSETTE_FINGERPRINT_KEY_FILE")]
    fingerprint_key_file: Option<PathBuf>,
    /// The brokered credentials (JSON: name, hosts, presentation, header, file, placeholder
    /// per `spec.credentials` entry): each placeholder is swapped for its file's contents
    /// toward the entry's hosts. The operator's injector sets it.
    #[arg(long, env = "CASSETTE_CREDENTIALS")]
    credentials: Option<String>,
    /// Hand identity tokens to the agent through the shim.
    #[arg(long, env = "CASSETTE_ALLOW_IDENTITY_TOKENS")]
    allow_identity_tokens: bool,

    /// Captured-outbound listener (also the explicit CONNECT proxy). Loopback only: the pod
    /// network must not get an open proxy with this pod's credentials.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], CAPTURE_PORT)))]
    capture_addr: SocketAddr,
    /// Metadata shim listener.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], METADATA_PORT)))]
    metadata_addr: SocketAddr,
    /// DNS proxy listener (UDP and TCP): the capture rules redirect the agent's queries here.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DNS_PORT)))]
    dns_addr: SocketAddr,
    /// The cluster's resolvers, the only ones the DNS proxy forwards to; by default the
    /// nameservers of /etc/resolv.conf (the pod's, which admission keeps to the cluster's).
    #[arg(long = "dns", env = "CASSETTE_DNS", value_delimiter = ',')]
    dns: Vec<std::net::IpAddr>,
    /// Inbound listener: connections into the pod are redirected here, recorded and handed
    /// to the agent's listener. On the pod's addresses, since that is where they arrive.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], INBOUND_PORT)))]
    inbound_addr: SocketAddr,
    /// Admin listener (/metrics, /healthz, /readyz): the kubelet and Prometheus reach it.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)))]
    admin_addr: SocketAddr,
    /// How long in-flight exchanges may take to finish on shutdown (at most half of what is
    /// left of the grace period).
    #[arg(long, default_value = "20")]
    drain_seconds: u64,
    /// The pod's termination grace period: from SIGTERM, the time to drain, seal and ship
    /// before the kubelet kills the sidecar. The injector sets it from the pod spec.
    #[arg(long, env = "CASSETTE_GRACE_SECONDS", default_value = "30")]
    grace_seconds: u64,
    /// Where the kubelet reads the container's last words (its `terminationMessagePath`):
    /// what could not be shipped is written there.
    #[arg(
        long,
        env = "CASSETTE_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    termination_log: PathBuf,
    /// Seconds an agent connection may take to finish its TLS handshake or to send a
    /// request's headers; a slower client is disconnected and the connection recorded with
    /// why. An HTTP/1 keep-alive connection idle for as long between requests is closed too
    /// (clients reconnect).
    #[arg(long, env = "CASSETTE_CLIENT_TIMEOUT_SECONDS", default_value = "30")]
    client_timeout_seconds: u64,
    /// Report this pod's entry in the AgentSession status through this kubeconfig (in a
    /// cluster the mounted service-account token is used without it).
    #[arg(long, env = "CASSETTE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log format: json (in a cluster) or pretty.
    #[arg(long, env = "CASSETTE_LOG_FORMAT")]
    log_format: Option<String>,
}

/// Every connection the agent opens is two descriptors here (its side and the upstream's):
/// take the hard limit the runtime gives, as nginx's `worker_rlimit_nofile` and Go programs
/// do, rather than a soft limit of 1024 the agent could exhaust with a few hundred sockets.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum
        && let Err(e) = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
    {
        tracing::warn!(error = %e, soft = ?limit.current, "raising the open-files limit failed");
    }
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Init(args) => {
            let rules = init::Rules::default();
            init::install(&rules)?;
            if !args.skip_check {
                init::validate(&rules, args.probe_uid)?;
            }
            Ok(())
        }
        Command::Probe { proto, target } => {
            println!("{}", init::probe(&proto, target));
            Ok(())
        }
        Command::Run(args) => {
            cassette_telemetry::init(args.log_format.as_deref());
            let uid = rustix::process::getuid().as_raw();
            if uid != SIDECAR_UID {
                tracing::warn!(
                    uid,
                    "not running as UID {SIDECAR_UID}: the capture rules will redirect the sidecar's own traffic"
                );
            }
            raise_open_files_limit();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(*args))
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let readiness = Arc::new(admin::Readiness::default());
    let shutdown = shutdown::Shutdown::new();

    // Admin first, so the startup probe can say what is missing.
    let admin = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin port {}", args.admin_addr))?;
    tokio::spawn(admin::serve_admin(
        admin,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    // Credentials: what the metadata server says about the identity, and the token broker.
    let placeholder = credentials::Placeholder::generate();
    let (identity, broker) = if args.metadata == "off" {
        (None, None)
    } else {
        let host = broker::metadata_host();
        let identity = retry(Duration::from_secs(30), || broker::identity(&host))
            .await
            .with_context(|| {
                format!("reading the workload identity from the metadata server at {host}")
            })?;
        (Some(identity), Some(broker::Broker::new()?))
    };

    let brokered = credentials::brokered::Brokered::parse(
        args.credentials.as_deref(),
        credentials::brokered::RECHECK,
    )?;

    // The session's policy and masking, validated as the operator validates them, and its
    // fingerprint key, which also keys the digests of bodies past maxBodyBytes.
    let fingerprint_key = match &args.fingerprint_key_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("reading the fingerprint key {}", path.display()))?,
        None => {
            let mut key = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
            key
        }
    };
    let session = session::Session::load(
        &args.session,
        args.session_spec.as_deref(),
        args.expires_at.as_deref(),
        &fingerprint_key,
    )?;

    // The recording: started (and any crashed spool recovered) before traffic flows.
    let started = record::writer::start(
        &args,
        record::writer::Keys {
            digest: &fingerprint_key,
            retention: session.retention,
        },
        identity.as_ref().map(|i| i.email.clone()),
        metrics.clone(),
    )
    .await
    .context("starting the recording")?;
    readiness.spool_writable.store(true, Ordering::Release);
    // The session in force: replaced when the AgentSession changes while the pod runs.
    let session = Arc::new(session::Live::new(
        &args.session,
        session,
        fingerprint_key,
        started.recording.clone(),
    ));
    // Brokered credentials' values are masked from the first record on, not from their first
    // swap: the agent must not learn one from a recording of another exchange.
    for entry in brokered.entries() {
        match entry.value() {
            Ok(value) => session.mask_secret(&entry.name, &value),
            Err(e) => {
                tracing::warn!(credential = %entry.name, error = %format!("{e:#}"), "a brokered credential cannot be read yet: requests that need it are refused until it can")
            }
        }
    }

    // TLS: a fresh CA, and the bundle the agent's tools trust.
    let ca = tls::SessionCa::generate(&args.session, 10_000)?;
    let (roots, system) = tls::upstream_roots(&args.upstream_ca, args.upstream_ca_pem.as_deref())?;
    ca.write_bundle(&args.ca_bundle, &system)?;
    readiness.bundle_written.store(true, Ordering::Release);

    // Held requests wait for approvals, which reach the sidecar with its status reports.
    let reviews = Arc::new(review::Reviews::new(&args.pod));
    // The pod's entry in the AgentSession status, kept fresh while the sidecar runs.
    let reporter = match status::Reporter::connect(
        &args,
        started.recording.clone(),
        started.writer.clone(),
        reviews.clone(),
        session.clone(),
    )
    .await
    {
        Ok(reporter) => reporter.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no status reports: the API server is not reachable");
            None
        }
    };
    // The session as it stands now, not as it was at injection, before any traffic.
    if let Some(reporter) = &reporter {
        match tokio::time::timeout(Duration::from_secs(5), reporter.refresh()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the AgentSession at start failed: starting with the spec from injection until the watch brings it")
            }
            Err(_) => tracing::warn!(
                "reading the AgentSession at start took over 5 s: starting with the spec from injection until the watch brings it"
            ),
        }
    }
    let proxy = Arc::new(proxy::Proxy {
        session,
        reviews: reporter.as_ref().map(|_| reviews.clone()),
        ca,
        upstream_roots: Arc::new(roots),
        overrides: proxy::Overrides::parse(args.upstream_override.iter().map(String::as_str))?,
        passthrough: args
            .passthrough
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        placeholder: placeholder.clone(),
        brokered,
        tokens: broker.map(|b| Arc::new(b) as Arc<dyn credentials::TokenSource>),
        sink_bucket: args
            .sink
            .strip_prefix("gs://")
            .and_then(|rest| rest.split('/').next())
            .filter(|b| !b.is_empty())
            .map(str::to_ascii_lowercase),
        recording: started.recording.clone(),
        client_timeout: Duration::from_secs(args.client_timeout_seconds.max(1)),
    });

    let uid = rustix::process::geteuid().as_raw();
    if bypass::applies(uid) {
        tokio::spawn(bypass::watch(proxy.clone(), shutdown.clone(), uid));
    }

    // IPv6 is redirected to [::1]; a namespace without IPv6 simply has no such listener.
    for (i, addr) in loopback_pair(args.capture_addr).iter().enumerate() {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tokio::spawn(capture::serve(listener, proxy.clone(), shutdown.clone()));
            }
            Err(e) if i > 0 => tracing::warn!(%addr, error = %e, "no IPv6 capture listener"),
            Err(e) => return Err(e).with_context(|| format!("binding the capture port {addr}")),
        }
    }
    // DNS: every query of the agent's, recorded, to the cluster's resolver only.
    let resolvers = if args.dns.is_empty() {
        init::resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    } else {
        args.dns.clone()
    };
    if resolvers.is_empty() {
        tracing::warn!(
            "no cluster resolver (--dns or /etc/resolv.conf): every DNS query will be answered SERVFAIL"
        );
    }
    let dns = Arc::new(dns::DnsProxy::new(
        resolvers
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .collect(),
        proxy.session.clone(),
        started.recording.clone(),
    ));
    for (i, addr) in loopback_pair(args.dns_addr).iter().enumerate() {
        let bound = async {
            let udp = tokio::net::UdpSocket::bind(addr).await?;
            let tcp = tokio::net::TcpListener::bind(addr).await?;
            std::io::Result::Ok((udp, tcp))
        };
        match bound.await {
            Ok((udp, tcp)) => {
                tokio::spawn(dns::serve_udp(udp, dns.clone(), shutdown.clone()));
                tokio::spawn(dns::serve_tcp(tcp, dns.clone(), shutdown.clone()));
            }
            Err(e) if i > 0 => tracing::warn!(%addr, error = %e, "no IPv6 DNS listener"),
            Err(e) => return Err(e).with_context(|| format!("binding the DNS port {addr}")),
        }
    }
    // Inbound: IPv4 only; IPv6 connections into the pod find no listener and are refused.
    let inbound = tokio::net::TcpListener::bind(args.inbound_addr)
        .await
        .with_context(|| format!("binding the inbound port {}", args.inbound_addr))?;
    tokio::spawn(inbound::serve(inbound, proxy.clone(), shutdown.clone()));

    if let Some(identity) = identity {
        let shim = Arc::new(metadata::Shim {
            identity,
            placeholder,
            allow_identity_tokens: args.allow_identity_tokens,
            metadata_host: broker::metadata_host(),
        });
        // fd20:ce::254 is redirected to [::1]: the shim listens there too, where IPv6 exists.
        for (i, addr) in loopback_pair(args.metadata_addr).iter().enumerate() {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    tokio::spawn(admin::serve_shim(
                        listener,
                        shim.clone(),
                        started.recording.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) if i > 0 => tracing::warn!(%addr, error = %e, "no IPv6 metadata shim"),
                Err(e) => {
                    return Err(e).with_context(|| format!("binding the metadata shim {addr}"));
                }
            }
        }
    }
    readiness.listening.store(true, Ordering::Release);
    let reporting = reporter
        .clone()
        .map(|r| [tokio::spawn(r.clone().run()), tokio::spawn(r.follow())]);
    tracing::info!(
        session = %args.session,
        capture = %args.capture_addr,
        bundle = %args.ca_bundle.display(),
        "recording"
    );

    wait_for_signal().await?;
    // The kubelet kills the pod at the end of its grace period: drain, then seal and ship
    // with what is left of it, a margin kept for the last status report.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(
            args.grace_seconds
                .saturating_sub(GRACE_MARGIN_SECONDS)
                .max(1),
        );
    tracing::info!("shutting down: no new connections; letting in-flight exchanges finish");
    shutdown.trigger();
    let drain = Duration::from_secs(args.drain_seconds)
        .min(deadline.saturating_duration_since(tokio::time::Instant::now()) / 2);
    let left = shutdown.drain(drain).await;
    if left > 0 {
        tracing::warn!(
            left,
            "connections still open after the drain period; closing them"
        );
    }
    for task in reporting.into_iter().flatten() {
        task.abort();
    }
    match started.shutdown_by(deadline).await {
        Ok(()) => tracing::info!("recording sealed and shipped"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the recording could not be shipped in full");
            record::writer::termination_message(&args.termination_log, &e);
        }
    }
    if let Some(reporter) = reporter {
        // The last word: everything shipped, the spool empty.
        if let Err(e) = reporter.report().await {
            tracing::warn!(error = %format!("{e:#}"), "the final status report failed");
        }
    }
    Ok(())
}

/// What is kept of the grace period for the last status report after shipping.
const GRACE_MARGIN_SECONDS: u64 = 3;

/// A loopback IPv4 listener's address and its IPv6 twin on `[::1]` (capture rules redirect
/// IPv6 there); any other address alone.
fn loopback_pair(addr: SocketAddr) -> Vec<SocketAddr> {
    let mut addrs = vec![addr];
    if addr.ip().is_loopback() && addr.is_ipv4() {
        addrs.push(SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            addr.port(),
        )));
    }
    addrs
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Retry `f` with backoff until it succeeds or `limit` passes.
async fn retry<T, F, Fut>(limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() + wait > deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}
