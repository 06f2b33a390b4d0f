//! `cassette-operator`: the AgentSession controller and admission webhooks.
//!
//! `main` only parses the command line and wires; each concern lives in its own module.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

mod admin;
mod approvers;
mod certs;
mod check;
mod controller;
mod crdgen;
mod guard;
mod http;
mod inject;
mod leader;
mod metrics;
mod retention;
mod session;
mod stamp;
mod status_writes;
mod webhook;

#[derive(Parser)]
#[command(name = "cassette-operator", version, about = "The cassette operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the AgentSession CustomResourceDefinition as YAML.
    Crdgen,
    /// Run the controller (on the leader) and the admission webhooks (on every replica).
    Run(Box<RunArgs>),
    /// Check an installation from inside the cluster (the chart's `helm test`): the API is
    /// served, every webhook carries the CA its Service's certificate verifies against, the
    /// validating webhook refuses an invalid AgentSession, and the operator is ready.
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// The release's namespace, where the webhook Service is.
    #[arg(long, env = "POD_NAMESPACE", default_value = "cassette-system")]
    namespace: String,
    /// The webhook Service.
    #[arg(long, default_value = "cassette-webhook")]
    service_name: String,
    /// The Service's port for /readyz.
    #[arg(long, default_value_t = 8080)]
    metrics_port: u16,
    /// The release's MutatingWebhookConfiguration.
    #[arg(long, default_value = "cassette")]
    mutating_webhook_configuration: String,
    /// The release's ValidatingWebhookConfiguration.
    #[arg(long, default_value = "cassette")]
    validating_webhook_configuration: String,
}

#[derive(Args)]
struct RunArgs {
    /// The operator's namespace: its certificate Secret and its Lease live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "cassette-system")]
    namespace: String,
    /// This replica's name, its identity in leader election.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,

    /// Where the admission webhooks listen (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_addr: SocketAddr,
    /// Where /metrics, /healthz and /readyz listen (HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// The cassette-sidecar image injected into agent pods.
    #[arg(long, env = "CASSETTE_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// imagePullPolicy of the injected containers (Always, IfNotPresent, Never).
    #[arg(long)]
    image_pull_policy: Option<String>,
    /// Extra environment for injected sidecars, NAME=VALUE (repeatable), such as
    /// CASSETTE_GCS_ENDPOINT for an emulator.
    #[arg(long = "sidecar-env", value_parser = parse_env)]
    sidecar_env: Vec<(String, String)>,
    /// The capabilities agent containers may hold, comma-separated (upper case, without
    /// CAP_): they run with drop: [ALL] and these added back; a pod asking for any other is
    /// refused. An empty value allows none. Defaults to the runtime's default set without
    /// NET_RAW, SETUID, SETGID and MKNOD.
    #[arg(long, value_delimiter = ',', value_parser = parse_capability)]
    agent_capabilities: Option<Vec<String>>,
    /// The operator's service account (in --namespace), when it runs as one: its writes to
    /// the session-wide parts of AgentSession status are its own, while other service
    /// accounts write only their pod's entry.
    #[arg(long, env = "POD_SERVICE_ACCOUNT")]
    service_account: Option<String>,

    #[command(flatten)]
    certs: CertArgs,

    #[command(flatten)]
    retention: RetentionArgs,

    /// Run the controller without electing a leader (a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// The Lease the replicas elect a leader with.
    #[arg(long, default_value = "cassette-operator")]
    lease_name: String,

    /// Log format: json or pretty (json in a cluster by default).
    #[arg(long, env = "CASSETTE_LOG_FORMAT")]
    log_format: Option<String>,
}

#[derive(Args)]
struct CertArgs {
    /// Serve the certificate in this directory (tls.crt, tls.key), issued by someone else
    /// such as cert-manager, instead of making and rotating one.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// The Secret in the operator's namespace that keeps the CA and serving certificate.
    #[arg(long, default_value = "cassette-webhook-tls")]
    cert_secret: String,
    /// The webhook Service's name; the certificate is valid for its cluster DNS names.
    #[arg(long, default_value = "cassette-webhook")]
    service_name: String,
    /// More names (DNS names or IP addresses) the certificate is valid for, such as
    /// 127.0.0.1 when the API server calls the webhooks by URL (repeatable).
    #[arg(long = "webhook-host")]
    webhook_hosts: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "cassette")]
    mutating_webhook_configuration: String,
    /// The ValidatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "cassette")]
    validating_webhook_configuration: String,
}

/// The retention sweep: how often, and how the operator reaches Cloud Storage to delete.
#[derive(Args)]
struct RetentionArgs {
    /// How often each session with spec.recording.retention is swept, such as 1h or 30m.
    #[arg(long, default_value = "1h", value_parser = cassette_rules::validate::parse_duration)]
    retention_interval: std::time::Duration,
    /// Cloud Storage endpoint override (an emulator); the real service when unset.
    #[arg(long, env = "CASSETTE_GCS_ENDPOINT")]
    gcs_endpoint: Option<String>,
    /// Send no credentials to Cloud Storage (emulators only).
    #[arg(long, env = "CASSETTE_GCS_ANONYMOUS")]
    gcs_anonymous: bool,
}

/// A capability agent containers may be allowed: a runtime name, never one that reaches the
/// capture.
fn parse_capability(value: &str) -> Result<String, String> {
    let name = value.trim().to_ascii_uppercase();
    if name.is_empty() {
        return Ok(name);
    }
    if name.starts_with("CAP_") || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(format!(
            "{value:?} is not a capability as Kubernetes spells it (for example NET_BIND_SERVICE)"
        ));
    }
    if inject::NEVER_AGENT_CAPABILITIES.contains(&name.as_str()) {
        return Err(format!(
            "{name} would let an agent container change, bypass or reach into the capture; it \
             cannot be allowed"
        ));
    }
    Ok(name)
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.into(), value.into())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Crdgen => {
            print!("{}", crdgen::yaml()?);
            Ok(())
        }
        Command::Check(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(check::run(&check::Installation {
                namespace: args.namespace,
                service_name: args.service_name,
                metrics_port: args.metrics_port,
                mutating_webhook_configuration: args.mutating_webhook_configuration,
                validating_webhook_configuration: args.validating_webhook_configuration,
            })),
        Command::Run(args) => {
            cassette_telemetry::init(args.log_format.as_deref());
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(*args))
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(metrics::Metrics::new());
    let serving = Arc::new(certs::ServingCert::default());
    let health = Arc::new(admin::Health::new(serving.clone()));

    // Certificates first: the webhooks cannot answer without one.
    match &args.certs.tls_dir {
        Some(dir) => {
            let files = certs::FileSource {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
            };
            tokio::spawn(files.watch(serving.clone()));
        }
        None => {
            let c = &args.certs;
            let mut names = vec![
                format!("{}.{}.svc", c.service_name, args.namespace),
                format!("{}.{}.svc.cluster.local", c.service_name, args.namespace),
            ];
            names.extend(c.webhook_hosts.iter().cloned());
            let settings = certs::Settings {
                namespace: args.namespace.clone(),
                secret: c.cert_secret.clone(),
                names,
                mutating: Some(c.mutating_webhook_configuration.clone()),
                validating: Some(c.validating_webhook_configuration.clone()),
            };
            tokio::spawn(certs::rotate(
                client.clone(),
                settings,
                serving.clone(),
                metrics.clone(),
            ));
        }
    }

    let context = Arc::new(webhook::Context {
        client: client.clone(),
        inject: inject::Config {
            sidecar_image: args.sidecar_image.clone(),
            image_pull_policy: args.image_pull_policy.clone(),
            sidecar_env: args.sidecar_env.clone(),
            agent_capabilities: args
                .agent_capabilities
                .clone()
                .map(|caps| caps.into_iter().filter(|c| !c.is_empty()).collect())
                .unwrap_or_else(|| inject::Config::default().agent_capabilities),
            ..inject::Config::default()
        },
        metrics: metrics.clone(),
        operator_user: args
            .service_account
            .as_ref()
            .map(|sa| format!("system:serviceaccount:{}:{sa}", args.namespace)),
    });
    let webhooks = tokio::spawn(webhook::serve(
        args.webhook_addr,
        context,
        serving,
        health.clone(),
    ));
    let probes = tokio::spawn(admin::serve(args.metrics_addr, metrics.clone(), health));

    // The controller runs on the leader only.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (leading_tx, leading_rx) = watch::channel(false);
    let elector = if args.no_leader_election {
        leading_tx.send_replace(true);
        None
    } else {
        let identity = args
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("cassette-operator-{}", std::process::id()));
        let elector =
            leader::Elector::new(client.clone(), &args.namespace, &args.lease_name, &identity);
        Some(tokio::spawn(elector.run(leading_tx, stop_rx.clone())))
    };
    let retention = retention::Settings {
        gcs: cassette_recording::GcsOptions {
            endpoint: args.retention.gcs_endpoint.clone(),
            anonymous: args.retention.gcs_anonymous,
        },
        every: args.retention.retention_interval,
    };
    let controllers = tokio::spawn(lead(client, metrics, retention, leading_rx, stop_rx));

    tokio::select! {
        result = webhooks => result?.context("the webhook server stopped")?,
        result = probes => result?.context("the metrics server stopped")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    stop_tx.send_replace(true);
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    let _ = controllers.await;
    Ok(())
}

/// Run the controller whenever this replica leads, until shutdown.
async fn lead(
    client: kube::Client,
    metrics: Arc<metrics::Metrics>,
    retention: retention::Settings,
    mut leading: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        metrics.leader.set(1);
        tracing::info!("leading: running the AgentSession controller");
        let mut lost = leading.clone();
        let mut stopping = stop.clone();
        controller::run(
            client.clone(),
            metrics.clone(),
            retention.clone(),
            async move {
                tokio::select! {
                    _ = lost.wait_for(|l| !*l) => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
            },
        )
        .await;
        metrics.leader.set(0);
        tracing::info!("the controller stopped");
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
