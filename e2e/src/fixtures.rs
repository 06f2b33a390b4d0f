//! What most e2e tests need before they start: the CRD installed and Established, and a
//! namespace of their own.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use std::time::Duration;

/// The field manager the harness applies with.
const MANAGER: &str = "cassette-e2e";

/// The checked-in CRD, parsed.
pub fn crd() -> Result<CustomResourceDefinition> {
    let path = crate::repo_root().join("crds/agentsession.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Apply the checked-in CRD (idempotent) and wait until the API server serves it.
pub async fn install_crd(client: &Client) -> Result<CustomResourceDefinition> {
    let crd = crd()?;
    let name = crd.name_any();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .with_context(|| format!("applying CRD {name}"))?;
    let established = await_condition(api, &name, conditions::is_crd_established());
    let crd = tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .with_context(|| format!("CRD {name} was not Established within 30s"))??
        .with_context(|| format!("CRD {name} disappeared"))?;
    Ok(crd)
}

/// Create a fresh namespace named after the test.
pub async fn namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = crate::unique_name(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}
