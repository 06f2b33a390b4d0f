//! The admin server on 15090: `/metrics`, `/healthz`, `/readyz`, and the metadata shim's
//! listener on 15080. Both are plain HTTP/1.1 servers over a small service.

use crate::http::{Body, BoxError, full};
use crate::metadata::{MetadataExchange, Shim};
use crate::metrics::Metrics;
use crate::record::{Recording, headers};
use crate::shutdown::Shutdown;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// What `/readyz` reports: ready once the CA bundle is written, the spool is writable and
/// every listener the capture rules redirect to is open. The kubelet starts the agent
/// containers on this answer, so "ready" must mean the agent's first connection is taken.
#[derive(Default)]
pub struct Readiness {
    pub bundle_written: AtomicBool,
    pub spool_writable: AtomicBool,
    pub listening: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.bundle_written.load(Ordering::Acquire)
            && self.spool_writable.load(Ordering::Acquire)
            && self.listening.load(Ordering::Acquire)
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until shutdown.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
) {
    let service = move |req: Request<Incoming>| {
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        async move { Ok::<_, BoxError>(admin(req, &metrics, &readiness)) }
    };
    serve_http1(listener, shutdown, service).await
}

fn admin(req: Request<Incoming>, metrics: &Metrics, readiness: &Readiness) -> Response<Body> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if readiness.ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => {
            let mut missing = Vec::new();
            if !readiness.bundle_written.load(Ordering::Acquire) {
                missing.push("the CA bundle is not written yet");
            }
            if !readiness.spool_writable.load(Ordering::Acquire) {
                missing.push("the spool is not writable");
            }
            if !readiness.listening.load(Ordering::Acquire) {
                missing.push("the capture, DNS and inbound listeners are not open yet");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {}\n", missing.join("; ")),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serve the metadata shim until shutdown. `record` is told about each request.
pub async fn serve_shim(
    listener: TcpListener,
    shim: Arc<Shim>,
    recording: Recording,
    shutdown: Shutdown,
) {
    let service = move |req: Request<Incoming>| {
        let shim = shim.clone();
        let recording = recording.clone();
        async move {
            let method = req.method().to_string();
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let request_headers = headers(req.headers());
            let started = std::time::Instant::now();
            let (response, served) = shim.handle(req).await;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            crate::metadata::record(
                &recording,
                MetadataExchange {
                    method: &method,
                    path: &path,
                    request_headers,
                    status: parts.status.as_u16(),
                    response_headers: headers(&parts.headers),
                    body: &body,
                    served: &served,
                    elapsed: started.elapsed(),
                },
            );
            Ok::<_, BoxError>(Response::from_parts(parts, full(body)))
        }
    };
    serve_http1(listener, shutdown, service).await
}

async fn serve_http1<S, F>(listener: TcpListener, shutdown: Shutdown, service: S)
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.requested() => return,
        };
        let service = service.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(service));
            if let Err(e) = conn.await {
                debug!(error = %e, %peer, "admin connection ended with an error");
            }
        });
    }
}
