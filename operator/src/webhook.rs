//! The admission webhooks over HTTPS: `/inject` (Pods), `/guard` (UPDATE of session pods and
//! their ephemeral containers), `/connect` (exec, attach and port-forward into them),
//! `/mutate-agentsession` (requester stamp), `/validate-agentsession` (the shared rule
//! validation) and `/validate-agentsession-status` (who writes pods' keys). Each handler reads the
//! AdmissionReview, looks up what the pure decision needs, and answers with a JSON patch or a
//! refusal. Errors refuse too: the configurations fail closed, and so does the server.

use crate::admin::Health;
use crate::certs::ServingCert;
use crate::http::{Body, full};
use crate::inject::{self, Outcome};
use crate::metrics::{Metrics, Verdict, Webhook};
use anyhow::{Context as _, Result};
use cassette_api::names::ENFORCE_LABEL;
use cassette_api::{AgentSession, AgentSessionSpec, AgentSessionStatus};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The Secret type of a legacy service-account token.
const SERVICE_ACCOUNT_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";

/// The largest AdmissionReview read (a pod with many containers is well under it).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// What the handlers share.
pub struct Context {
    pub client: Client,
    pub inject: inject::Config,
    pub metrics: Arc<Metrics>,
    /// The operator's own user name when it runs as a service account: it writes the
    /// session-wide parts of the status.
    pub operator_user: Option<String>,
}

/// Serve the webhooks on `addr` with the certificate `serving` holds (swapped in place when
/// it is renewed).
pub async fn serve(
    addr: SocketAddr,
    context: Arc<Context>,
    serving: Arc<ServingCert>,
    health: Arc<Health>,
) -> Result<()> {
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(serving);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the webhook port {addr}"))?;
    tracing::info!(%addr, "serving admission webhooks");
    health.webhooks_listening.store(true, Ordering::Release);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a webhook connection");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let context = context.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let context = context.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, &context).await) }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

async fn route(req: Request<Incoming>, context: &Context) -> Response<Body> {
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("reading the body: {e}\n")),
    };
    match path.as_str() {
        "/inject" => answer(&body, |r| inject_pod(r, context), Webhook::Inject, context).await,
        "/mutate-agentsession" => {
            answer(
                &body,
                |r| async { mutate_session(r) },
                Webhook::MutateSession,
                context,
            )
            .await
        }
        "/validate-agentsession" => {
            answer(
                &body,
                |r| async { validate_session(r) },
                Webhook::ValidateSession,
                context,
            )
            .await
        }
        "/validate-agentsession-status" => {
            answer(
                &body,
                |r| validate_status(r, context),
                Webhook::ValidateStatus,
                context,
            )
            .await
        }
        "/guard" => answer(&body, |r| async { guard_pod(r) }, Webhook::Guard, context).await,
        "/connect" => {
            answer(
                &body,
                |r| connect_pod(r, context),
                Webhook::Connect,
                context,
            )
            .await
        }
        _ => plain(StatusCode::NOT_FOUND, "no such webhook\n"),
    }
}

/// Decode the review, run the handler, count and encode its answer.
async fn answer<K, F, Fut>(
    body: &[u8],
    handle: F,
    webhook: Webhook,
    context: &Context,
) -> Response<Body>
where
    K: Resource + DeserializeOwned,
    F: FnOnce(AdmissionRequest<K>) -> Fut,
    Fut: Future<Output = (AdmissionResponse, Verdict)>,
{
    let review: AdmissionReview<K> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => {
            context.metrics.admission(webhook, Verdict::Error);
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("not an AdmissionReview: {e}\n"),
            );
        }
    };
    let request: AdmissionRequest<K> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            context.metrics.admission(webhook, Verdict::Error);
            return plain(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        }
    };
    let (response, verdict) = handle(request).await;
    context.metrics.admission(webhook, verdict);
    json(&response.into_review())
}

async fn inject_pod(
    request: AdmissionRequest<Pod>,
    context: &Context,
) -> (AdmissionResponse, Verdict) {
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Create {
        return (response, Verdict::Allowed);
    }
    let Some(pod) = request.object.as_ref() else {
        return (
            response.deny("the AdmissionReview carries no pod"),
            Verdict::Error,
        );
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    match decide(pod, &namespace, context).await {
        Ok(Outcome::NotRecorded | Outcome::Unchanged) => (response, Verdict::Allowed),
        Ok(Outcome::Refused(message)) => {
            tracing::info!(namespace, pod = ?pod.metadata.name, %message, "refused a pod");
            (response.deny(message), Verdict::Denied)
        }
        Ok(Outcome::Injected(injected)) => match patch(pod, &*injected) {
            Ok(patch) => {
                tracing::info!(namespace, pod = ?pod.metadata.name, "injected the recorder");
                match response.clone().with_patch(patch) {
                    Ok(mut patched) => {
                        let warnings = inject::warnings(pod);
                        patched.warnings = (!warnings.is_empty()).then_some(warnings);
                        (patched, Verdict::Patched)
                    }
                    Err(e) => (
                        response.deny(format!("cassette could not encode the patch: {e}")),
                        Verdict::Error,
                    ),
                }
            }
            Err(e) => (
                response.deny(format!("cassette could not build the patch: {e:#}")),
                Verdict::Error,
            ),
        },
        Err(e) => (
            response.deny(format!(
                "cassette could not decide whether pod may start, so it is refused: {e:#}"
            )),
            Verdict::Error,
        ),
    }
}

/// An UPDATE of a pod, or ephemeral containers added to it: the session pod keeps what the
/// injector built.
fn guard_pod(request: AdmissionRequest<Pod>) -> (AdmissionResponse, Verdict) {
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Update {
        return (response, Verdict::Allowed);
    }
    let (Some(new), Some(old)) = (request.object.as_ref(), request.old_object.as_ref()) else {
        return (
            response.deny("the AdmissionReview carries no pod"),
            Verdict::Error,
        );
    };
    let decision = match request.sub_resource.as_deref() {
        Some("ephemeralcontainers") => {
            if crate::guard::is_session_pod(old) {
                crate::guard::ephemeral_containers(old)
            } else {
                crate::guard::ephemeral_containers(new)
            }
        }
        // Only the pod itself and its ephemeral containers are registered.
        _ => crate::guard::update(old, new),
    };
    match decision {
        Ok(()) => (response, Verdict::Allowed),
        Err(message) => {
            tracing::info!(
                namespace = ?request.namespace, pod = ?request.name, user = ?request.user_info.username,
                %message, "refused a change to a session pod"
            );
            (response.deny(message), Verdict::Denied)
        }
    }
}

/// exec, attach or port-forward into a pod: the options name the container, the pod says
/// whether it records.
async fn connect_pod(
    request: AdmissionRequest<DynamicObject>,
    context: &Context,
) -> (AdmissionResponse, Verdict) {
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Connect {
        return (response, Verdict::Allowed);
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let pod = match Api::<Pod>::namespaced(context.client.clone(), &namespace)
        .get_opt(&request.name)
        .await
    {
        Ok(Some(pod)) => pod,
        // The kubelet will say the pod is not there.
        Ok(None) => return (response, Verdict::Allowed),
        Err(e) => {
            return (
                response.deny(format!(
                    "cassette could not read pod {namespace}/{} to check whether it records, so \
                     the connection is refused: {e}",
                    request.name
                )),
                Verdict::Error,
            );
        }
    };
    let subresource = request.sub_resource.clone().unwrap_or_default();
    let container = request
        .object
        .as_ref()
        .and_then(|o| o.data.get("container"))
        .and_then(|c| c.as_str())
        .filter(|c| !c.is_empty());
    match crate::guard::connect(&pod, &subresource, container) {
        Ok(()) => (response, Verdict::Allowed),
        Err(message) => {
            tracing::info!(
                namespace, pod = request.name, subresource, user = ?request.user_info.username,
                %message, "refused a connection into a session pod"
            );
            (response.deny(message), Verdict::Denied)
        }
    }
}

/// Look up what the injector needs and ask it.
async fn decide(pod: &Pod, namespace: &str, context: &Context) -> Result<Outcome> {
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(cassette_api::names::SESSION_LABEL));
    let session = match label {
        Some(name) => Api::<AgentSession>::namespaced(context.client.clone(), namespace)
            .get_opt(name)
            .await
            .with_context(|| format!("reading AgentSession {namespace}/{name}"))?,
        None => None,
    };
    // Only pods without a session label need the namespace's verdict.
    let enforced = match label {
        Some(_) => false,
        None => Api::<Namespace>::all(context.client.clone())
            .get_opt(namespace)
            .await
            .with_context(|| format!("reading namespace {namespace}"))?
            .and_then(|ns| ns.metadata.labels)
            .and_then(|l| l.get(ENFORCE_LABEL).cloned())
            .is_some_and(|v| v == "true"),
    };
    // A pod that names no session is not injected: the types of its Secrets do not matter.
    let mut token_secrets = BTreeSet::new();
    if label.is_some() {
        let secrets = Api::<Secret>::namespaced(context.client.clone(), namespace);
        for name in inject::named_secrets(pod) {
            let secret = secrets.get_opt(&name).await.with_context(|| {
                format!(
                    "reading the type of Secret {namespace}/{name}, which the pod names (the \
                     operator needs get on secrets in namespaces where session pods run)"
                )
            })?;
            if secret.and_then(|s| s.type_).as_deref() == Some(SERVICE_ACCOUNT_TOKEN_TYPE) {
                token_secrets.insert(name);
            }
        }
    }
    Ok(inject::inject(
        &context.inject,
        &inject::Request {
            pod,
            namespace,
            enforced,
            session: session.as_ref(),
            token_secrets: &token_secrets,
            now: Timestamp::now(),
            seed: placeholder_seed(),
        },
    ))
}

fn patch<T: Serialize>(before: &T, after: &T) -> Result<json_patch::Patch> {
    Ok(json_patch::diff(
        &serde_json::to_value(before)?,
        &serde_json::to_value(after)?,
    ))
}

fn mutate_session(request: AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Verdict) {
    let response = AdmissionResponse::from(&request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return (response, Verdict::Allowed);
    }
    let Some(object) = request.object.as_ref() else {
        return (
            response.deny("the AdmissionReview carries no AgentSession"),
            Verdict::Error,
        );
    };
    let old_spec = request.old_object.as_ref().and_then(|o| o.data.get("spec"));
    let mut stamped = object.clone();
    if let Some(spec) = stamped.data.get_mut("spec") {
        crate::stamp::stamp(spec, old_spec, &request.user_info, Timestamp::now());
    }
    match patch(object, &stamped) {
        Ok(p) if p.0.is_empty() => (response, Verdict::Allowed),
        Ok(p) => match response.clone().with_patch(p) {
            Ok(patched) => (patched, Verdict::Patched),
            Err(e) => (
                response.deny(format!("cassette could not encode the patch: {e}")),
                Verdict::Error,
            ),
        },
        Err(e) => (
            response.deny(format!("cassette could not build the patch: {e:#}")),
            Verdict::Error,
        ),
    }
}

fn validate_session(request: AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Verdict) {
    let response = AdmissionResponse::from(&request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return (response, Verdict::Allowed);
    }
    let Some(object) = request.object.as_ref() else {
        return (
            response.deny("the AdmissionReview carries no AgentSession"),
            Verdict::Error,
        );
    };
    let name = object.metadata.name.clone().unwrap_or_default();
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    let spec: AgentSessionSpec = match serde_json::from_value(spec) {
        Ok(spec) => spec,
        Err(e) => {
            return (
                response.deny(format!(
                    "AgentSession {name:?} has a spec cassette cannot read: {e}"
                )),
                Verdict::Denied,
            );
        }
    };
    let old_spec = match request.old_object.as_ref().and_then(|o| o.data.get("spec")) {
        Some(old) if request.operation == Operation::Update => {
            match serde_json::from_value::<AgentSessionSpec>(old.clone()) {
                Ok(old) => Some(old),
                // The change cannot be checked against what it changes: refuse it.
                Err(e) => {
                    return (
                        response.deny(format!(
                            "AgentSession {name:?} as stored has a spec cassette cannot read, so \
                             no change to it can be checked: {e}; delete it and create it again \
                             from a valid spec"
                        )),
                        Verdict::Denied,
                    );
                }
            }
        }
        _ => None,
    };
    let checked = cassette_rules::validate::agent_session(&spec).and_then(|()| match &old_spec {
        Some(old) => cassette_rules::validate::agent_session_update(old, &spec),
        None => Ok(()),
    });
    if let Err(errors) = checked {
        return (
            response.deny(format!("AgentSession {name:?} is invalid: {errors}")),
            Verdict::Denied,
        );
    }
    let namespace = request.namespace.as_deref().unwrap_or_default();
    match crate::approvers::check(namespace, old_spec.as_ref(), &spec, &request.user_info) {
        Ok(()) => (response, Verdict::Allowed),
        Err(message) => (
            response.deny(format!("AgentSession {name:?}: {message}")),
            Verdict::Denied,
        ),
    }
}

/// A write to the status subresource: pods' keys come only from their own sidecars.
async fn validate_status(
    request: AdmissionRequest<DynamicObject>,
    context: &Context,
) -> (AdmissionResponse, Verdict) {
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Update {
        return (response, Verdict::Allowed);
    }
    let status = |object: Option<&DynamicObject>| -> Result<AgentSessionStatus, String> {
        match object.and_then(|o| o.data.get("status")) {
            None | Some(serde_json::Value::Null) => Ok(AgentSessionStatus::default()),
            Some(status) => serde_json::from_value(status.clone())
                .map_err(|e| format!("the status cannot be read: {e}")),
        }
    };
    let checked = match (
        status(request.old_object.as_ref()),
        status(request.object.as_ref()),
    ) {
        (Ok(old), Ok(new)) => {
            match crate::status_writes::check(
                &request.user_info,
                context.operator_user.as_deref(),
                &old,
                &new,
            ) {
                Ok(()) => {
                    let namespace = request.namespace.as_deref().unwrap_or_default();
                    injected_publishers(&old, &new, namespace, context).await
                }
                Err(e) => Err(e),
            }
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match checked {
        Ok(()) => (response, Verdict::Allowed),
        Err(message) => {
            tracing::warn!(
                namespace = ?request.namespace, session = request.name,
                user = ?request.user_info.username, %message,
                "refused a write to a session's status"
            );
            (
                response.deny(format!("AgentSession {:?}: {message}", request.name)),
                Verdict::Denied,
            )
        }
    }
}

/// A pod that publishes its key must be one the injector recorded into a session: a pod of
/// the same service account outside any session has a bound token too, but no recorder.
async fn injected_publishers(
    old: &AgentSessionStatus,
    new: &AgentSessionStatus,
    namespace: &str,
    context: &Context,
) -> Result<(), String> {
    let pods = Api::<Pod>::namespaced(context.client.clone(), namespace);
    for entry in &new.pods {
        let had_key = old
            .pods
            .iter()
            .any(|p| p.name == entry.name && p.public_key.is_some());
        if entry.public_key.is_none() || had_key {
            continue;
        }
        let pod = pods.get_opt(&entry.name).await.map_err(|e| {
            format!(
                "cassette could not read pod {:?} to check it records: {e}",
                entry.name
            )
        })?;
        let recorded = pod.as_ref().is_some_and(|p| {
            p.metadata.uid == entry.uid
                && p.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(cassette_api::names::INJECTED_ANNOTATION))
        });
        if !recorded {
            return Err(format!(
                "pod {:?} (uid {}) was not injected into a session (no {} annotation), so it has \
                 no recorder whose key could be published: only a session pod's sidecar publishes \
                 a key",
                entry.name,
                entry.uid.as_deref().unwrap_or("none"),
                cassette_api::names::INJECTED_ANNOTATION
            ));
        }
    }
    Ok(())
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(full(body))
            .expect("a valid response"),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding: {e}\n"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(full(text.to_string()))
        .expect("a valid response")
}

/// Randomness for a pod's credential placeholders, from the system RNG.
fn placeholder_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .expect("the system RNG works");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use serde_json::{Value, json};

    fn session(retention: Value) -> Value {
        json!({
            "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
            "metadata": {"name": "fix-ci", "namespace": "agents"},
            "spec": {"maxDuration": "2h", "recording": {"sink": "gs://audit/agents", "retention": retention}}
        })
    }

    /// An UPDATE review of the session from `old` to `new`, answered by the validating hook.
    fn update(old: Value, new: Value) -> (AdmissionResponse, Verdict) {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "1",
                "kind": {"group": "cassette.dev", "version": "v1alpha1", "kind": "AgentSession"},
                "resource": {"group": "cassette.dev", "version": "v1alpha1", "resource": "agentsessions"},
                "operation": "UPDATE",
                "userInfo": {"username": "bob"},
                "name": "fix-ci", "namespace": "agents",
                "object": new, "oldObject": old
            }
        }))
        .expect("an AdmissionReview");
        validate_session(review.try_into().expect("a request"))
    }

    #[test]
    fn an_update_is_checked_against_the_stored_session() {
        let (response, verdict) = update(session(json!("90d")), session(json!("91d")));
        assert!(response.allowed && matches!(verdict, Verdict::Allowed));

        let (response, verdict) = update(session(json!("90d")), session(json!("1h")));
        assert!(!response.allowed && matches!(verdict, Verdict::Denied));
        assert!(
            response
                .result
                .message
                .contains("spec.recording.retention: cannot be shortened from \"90d\" to \"1h\""),
            "{}",
            response.result.message
        );

        let mut unreadable = session(json!("90d"));
        unreadable["spec"]["recording"]["maxBodyBytes"] = json!("many");
        let (response, verdict) = update(unreadable, session(json!("90d")));
        assert!(!response.allowed && matches!(verdict, Verdict::Denied));
        assert!(
            response
                .result
                .message
                .contains("delete it and create it again"),
            "{}",
            response.result.message
        );
    }

    #[test]
    fn the_validating_hook_refuses_a_credential_for_a_google_host_naming_the_field() {
        let with = |hosts: Value| {
            let mut s = session(json!("90d"));
            s["spec"]["credentials"] = json!([{
                "name": "github", "hosts": hosts, "secretRef": {"name": "gh", "key": "token"},
                "presentation": "Bearer", "env": "GITHUB_TOKEN"
            }]);
            s
        };
        let (response, verdict) = update(
            with(json!(["api.github.com"])),
            with(json!(["api.github.com"])),
        );
        assert!(response.allowed && matches!(verdict, Verdict::Allowed));
        let (response, verdict) = update(
            with(json!(["api.github.com"])),
            with(json!(["api.github.com", "*.googleapis.com"])),
        );
        assert!(!response.allowed && matches!(verdict, Verdict::Denied));
        assert!(
            response
                .result
                .message
                .contains("spec.credentials[0].hosts[1]: \"*.googleapis.com\" is a Google host"),
            "{}",
            response.result.message
        );
    }
}
