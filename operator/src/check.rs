//! `cassette-operator check`: an installation checked from inside the cluster, as `helm test`
//! runs it. Each step prints `ok` or what is wrong and what to look at; the first failure
//! ends the check with an error.
//!
//! 1. The AgentSession API is served (the CRD is installed and established).
//! 2. Every webhook of the release's two configurations carries a CA bundle and points at the
//!    webhook Service.
//! 3. The Service answers TLS with a certificate that bundle verifies for the Service's name,
//!    and the validating webhook refuses an AgentSession that does not validate, with its
//!    reason: what the API server does on every write.
//! 4. The operator's readiness endpoint answers through the Service.

use anyhow::{Context, Result, bail};
use cassette_api::AgentSession;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ServiceReference, ValidatingWebhookConfiguration,
};
use kube::api::{Api, ListParams};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// What the check is told about the installation (the chart passes its names).
pub struct Installation {
    /// The release's namespace: the Service lives here.
    pub namespace: String,
    /// The webhook Service.
    pub service_name: String,
    /// The Service's port for `/readyz`.
    pub metrics_port: u16,
    pub mutating_webhook_configuration: String,
    pub validating_webhook_configuration: String,
}

/// Run every step; the first that fails is the error.
pub async fn run(installation: &Installation) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let service = format!(
        "{}.{}.svc",
        installation.service_name, installation.namespace
    );

    step("the AgentSession API is served", async {
        let sessions: Api<AgentSession> = Api::namespaced(client.clone(), &installation.namespace);
        sessions
            .list(&ListParams::default().limit(1))
            .await
            .context("listing AgentSessions; is the CRD agentsessions.cassette.dev installed?")?;
        Ok("agentsessions.cassette.dev".to_string())
    })
    .await?;

    let bundle = step("every webhook carries a CA bundle for the Service", async {
        webhooks_bundle(&client, installation).await
    })
    .await?;

    step(
        "the validating webhook refuses an invalid AgentSession",
        async {
            let answer = refusal(&service, &bundle).await?;
            Ok(format!(
                "https://{service}/validate-agentsession said: {answer}"
            ))
        },
    )
    .await?;

    step("the operator is ready", async {
        let address = format!("{service}:{}", installation.metrics_port);
        let (status, body) = get_plain(&address, "/readyz").await?;
        if status != StatusCode::OK {
            bail!("http://{address}/readyz answered {status}: {}", body.trim());
        }
        Ok(format!("http://{address}/readyz"))
    })
    .await?;
    println!("cassette is installed and answering");
    Ok(())
}

/// Run one step with a deadline and print how it went.
async fn step<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<T>
where
    T: StepNote,
{
    let outcome = match tokio::time::timeout(STEP_TIMEOUT, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!("no answer within {STEP_TIMEOUT:?}")),
    };
    match outcome {
        Ok(value) => {
            println!("ok    {what}: {}", value.note());
            Ok(value)
        }
        Err(e) => {
            println!("FAIL  {what}: {e:#}");
            Err(e.context(what.to_string()))
        }
    }
}

/// What a step prints after `ok`.
trait StepNote {
    fn note(&self) -> String;
}

impl StepNote for String {
    fn note(&self) -> String {
        self.clone()
    }
}

impl StepNote for RootCertStore {
    fn note(&self) -> String {
        format!("{} root(s)", self.len())
    }
}

/// The CA bundle every webhook of the release carries (they must all carry the same one),
/// checking that each points at the webhook Service.
async fn webhooks_bundle(
    client: &kube::Client,
    installation: &Installation,
) -> Result<RootCertStore> {
    let mutating: MutatingWebhookConfiguration = Api::all(client.clone())
        .get(&installation.mutating_webhook_configuration)
        .await
        .with_context(|| {
            format!(
                "reading MutatingWebhookConfiguration {}",
                installation.mutating_webhook_configuration
            )
        })?;
    let validating: ValidatingWebhookConfiguration = Api::all(client.clone())
        .get(&installation.validating_webhook_configuration)
        .await
        .with_context(|| {
            format!(
                "reading ValidatingWebhookConfiguration {}",
                installation.validating_webhook_configuration
            )
        })?;
    let configs = mutating
        .webhooks
        .iter()
        .flatten()
        .map(|w| (&w.name, &w.client_config))
        .chain(
            validating
                .webhooks
                .iter()
                .flatten()
                .map(|w| (&w.name, &w.client_config)),
        );
    let mut bundle: Option<Vec<u8>> = None;
    let mut count = 0;
    for (name, config) in configs {
        count += 1;
        match &config.service {
            Some(ServiceReference {
                name: service,
                namespace,
                ..
            }) if *service == installation.service_name && *namespace == installation.namespace => {
            }
            other => bail!(
                "webhook {name} is not served by Service {}/{} (its clientConfig names {other:?})",
                installation.namespace,
                installation.service_name
            ),
        }
        let Some(ca) = &config.ca_bundle else {
            bail!(
                "webhook {name} has no caBundle yet: the operator patches it once it has made its \
                 certificate (see its log), or cert-manager's CA injector does"
            );
        };
        match &bundle {
            Some(first) if first != &ca.0 => bail!(
                "webhook {name} carries another caBundle than the others: a rotation is half done \
                 or something else patches it"
            ),
            Some(_) => {}
            None => bundle = Some(ca.0.clone()),
        }
    }
    let Some(bundle) = bundle else {
        bail!("the release's webhook configurations hold no webhooks");
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bundle) {
        roots
            .add(cert.context("a caBundle certificate that is no PEM")?)
            .context("a caBundle certificate rustls cannot use")?;
    }
    if roots.is_empty() {
        bail!("the caBundle holds no certificate");
    }
    tracing::debug!(webhooks = count, "every webhook carries the same caBundle");
    Ok(roots)
}

/// POST a review of an AgentSession whose masking regex does not compile to the validating
/// webhook, over TLS verified with `roots` for `service`; the refusal's message.
async fn refusal(service: &str, roots: &RootCertStore) -> Result<String> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "cassette-check",
            "kind": {"group": "cassette.dev", "version": "v1alpha1", "kind": "AgentSession"},
            "resource": {"group": "cassette.dev", "version": "v1alpha1", "resource": "agentsessions"},
            "name": "cassette-check",
            "namespace": "cassette-check",
            "operation": "CREATE",
            "userInfo": {"username": "cassette-check"},
            "dryRun": true,
            "object": {
                "apiVersion": "cassette.dev/v1alpha1",
                "kind": "AgentSession",
                "metadata": {"name": "cassette-check", "namespace": "cassette-check"},
                "spec": {
                    "agent": {"serviceAccount": "cassette-check"},
                    "maxDuration": "1h",
                    "recording": {"sink": "gs://cassette-check/sessions"},
                    "masking": {"patterns": [{"name": "broken", "regex": "token=([a-z"}]}
                }
            }
        }
    });
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(Arc::new(roots.clone()))
        .with_no_client_auth();
    let name = ServerName::try_from(service.to_string())
        .with_context(|| format!("{service} is not a DNS name"))?;
    let tcp = tokio::net::TcpStream::connect((service, 443))
        .await
        .with_context(|| format!("connecting to {service}:443"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| {
            format!(
                "TLS to {service}:443, verified with the caBundle for that name; a certificate \
                 the bundle does not verify is one the API server refuses too"
            )
        })?;
    let (status, body) = exchange(
        tls,
        Request::post("/validate-agentsession")
            .header("host", service)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(review.to_string())))?,
    )
    .await?;
    if status != StatusCode::OK {
        bail!("the webhook answered {status}: {}", body.trim());
    }
    let answer: Value = serde_json::from_str(&body).context("the webhook's answer is no JSON")?;
    let response = &answer["response"];
    if response["uid"] != "cassette-check" {
        bail!("the webhook answered another review: {body}");
    }
    if response["allowed"] != false {
        bail!("the webhook allowed an AgentSession whose regex does not compile: {body}");
    }
    let message = response["status"]["message"].as_str().unwrap_or_default();
    if !message.contains("spec.masking.patterns[0].regex") {
        bail!("the webhook refused, but not for the broken regex: {message:?}");
    }
    Ok(message.to_string())
}

/// GET `path` over plain HTTP from `address` (`host:port`).
async fn get_plain(address: &str, path: &str) -> Result<(StatusCode, String)> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let host = address.split(':').next().unwrap_or(address);
    exchange(
        tcp,
        Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))?,
    )
    .await
}

/// One HTTP/1.1 request on `io`; the status and the body as text.
async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> Result<(StatusCode, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("an HTTP/1.1 handshake")?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.context("the request")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
