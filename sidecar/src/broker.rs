//! The token broker and what the sidecar learns from the real GKE metadata server.
//!
//! Real access tokens come from the metadata server through google-cloud-auth (which honours
//! `GCE_METADATA_HOST`, caches, and refreshes ahead of expiry). The non-secret facts the shim
//! repeats to the agent — project, zone, service-account email and scopes — are read once at
//! start. Only this process (UID 1337) can reach the real server; the capture rules send the
//! agent's metadata traffic to the shim.

use anyhow::{Context, Result, bail};
use google_cloud_auth::credentials::AccessTokenCredentials;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// The metadata server's address when `GCE_METADATA_HOST` is not set.
pub const DEFAULT_METADATA_HOST: &str = "169.254.169.254";

/// The metadata host the sidecar itself uses (`GCE_METADATA_HOST`, as Google's clients do).
pub fn metadata_host() -> String {
    std::env::var("GCE_METADATA_HOST").unwrap_or_else(|_| DEFAULT_METADATA_HOST.to_string())
}

/// Non-secret facts about the workload identity, repeated by the shim.
#[derive(Clone, Debug)]
pub struct Identity {
    pub project_id: String,
    pub numeric_project_id: String,
    pub zone: String,
    pub email: String,
    pub scopes: Vec<String>,
    pub cluster_name: Option<String>,
}

/// Real tokens for the pod's Google service account.
#[derive(Clone)]
pub struct Broker {
    credentials: AccessTokenCredentials,
}

impl Broker {
    pub fn new() -> Result<Self> {
        let credentials = google_cloud_auth::credentials::mds::Builder::default()
            .build_access_token_credentials()
            .context("building metadata-server credentials")?;
        Ok(Self { credentials })
    }

    /// A valid access token (cached and refreshed by google-cloud-auth).
    pub async fn token(&self) -> Result<String> {
        let token = self
            .credentials
            .access_token()
            .await
            .context("getting an access token from the metadata server")?;
        Ok(token.token)
    }
}

impl crate::credentials::TokenSource for Broker {
    fn token(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String>> + Send + '_>> {
        Box::pin(Broker::token(self))
    }
}

/// Read the identity facts from the real metadata server.
pub async fn identity(host: &str) -> Result<Identity> {
    let get = |path: &'static str| async move { get_value(host, path).await };
    let project_id = get("project/project-id").await?;
    let numeric_project_id = get("project/numeric-project-id").await?;
    let zone = get("instance/zone").await.unwrap_or_default();
    let email = get("instance/service-accounts/default/email").await?;
    let scopes = get("instance/service-accounts/default/scopes")
        .await
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let cluster_name = get("instance/attributes/cluster-name").await.ok();
    Ok(Identity {
        project_id,
        numeric_project_id,
        zone,
        email,
        scopes,
        cluster_name,
    })
}

/// GET one metadata value (path after `/computeMetadata/v1/`) over HTTP/1.1.
pub async fn get_value(host: &str, path: &str) -> Result<String> {
    let authority = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    .with_context(|| format!("connecting to the metadata server at {authority}: timed out"))?
    .with_context(|| format!("connecting to the metadata server at {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(format!("/computeMetadata/v1/{path}"))
        .header(http::header::HOST, host)
        .header("Metadata-Flavor", "Google")
        .body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("metadata server timed out")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("metadata server answered {status} for {path}");
    }
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}
