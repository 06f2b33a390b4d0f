//! The webhooks' serving certificates: a CA and a serving certificate (ECDSA P-256) made by the
//! operator, kept in a Secret that every replica shares, renewed well before they expire, with
//! the CA bundle patched into the operator's webhook configurations.
//!
//! `plan` (pure) decides what to do with what is stored; `Rotator` does it against the API.
//! With cert-manager the operator only serves the files it is given (`FileSource`).

use anyhow::{Context, Result};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a CA lives.
pub const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(5 * 365 * 24);
/// How long a serving certificate lives.
pub const SERVING_VALIDITY: SignedDuration = SignedDuration::from_hours(90 * 24);
/// How often the stored certificates are checked.
const CHECK_EVERY: Duration = Duration::from_secs(600);

const CA_NOT_AFTER: &str = "cassette.dev/ca-not-after";
const PREVIOUS_CA_NOT_AFTER: &str = "cassette.dev/previous-ca-not-after";
const SERVING_NOT_AFTER: &str = "cassette.dev/serving-not-after";
const SERVING_NAMES: &str = "cassette.dev/serving-names";
const CA_COMMON_NAME: &str = "cassette-operator webhook CA";

/// What is kept in the Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub ca_cert: String,
    pub ca_key: String,
    pub ca_not_after: Timestamp,
    /// The CA this one replaced, trusted until it expires so no replica's certificate is
    /// refused while the new bundle spreads.
    pub previous_ca: Option<(String, Timestamp)>,
    pub cert: String,
    pub key: String,
    pub serving_not_after: Timestamp,
    pub names: Vec<String>,
}

impl Stored {
    /// The caBundle for webhook configurations: the CA, and the previous one while it lives.
    pub fn bundle(&self, now: Timestamp) -> String {
        let mut bundle = self.ca_cert.clone();
        if let Some((pem, not_after)) = &self.previous_ca
            && *not_after > now
        {
            bundle.push_str(pem);
        }
        bundle
    }
}

/// What to do with the stored certificates.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// They are good for a while yet.
    Keep,
    /// Sign a new serving certificate with the stored CA.
    RenewServing,
    /// Make a new CA (keeping the old one in the bundle) and a serving certificate.
    RotateCa,
    /// Nothing usable is stored: make everything.
    Create,
}

/// Renew once less than a third of a certificate's life remains.
pub fn plan(stored: Option<&Stored>, names: &[String], now: Timestamp) -> Plan {
    let Some(stored) = stored else {
        return Plan::Create;
    };
    let third = |d: SignedDuration| d / 3;
    if stored.ca_not_after.duration_since(now) < third(CA_VALIDITY) {
        return Plan::RotateCa;
    }
    if stored.serving_not_after.duration_since(now) < third(SERVING_VALIDITY)
        || stored.names != names
    {
        return Plan::RenewServing;
    }
    Plan::Keep
}

fn ca_params(not_after: Option<Timestamp>) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Some(not_after) = not_after {
        params.not_before = offset(Timestamp::now() - SignedDuration::from_hours(1))?;
        params.not_after = offset(not_after)?;
    }
    Ok(params)
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).context("a time out of range")
}

/// Carry out a plan: the certificates to store.
pub fn execute(
    plan: &Plan,
    stored: Option<&Stored>,
    names: &[String],
    now: Timestamp,
) -> Result<Stored> {
    let (ca_cert, ca_key, ca_not_after, previous_ca) = match (plan, stored) {
        (Plan::Keep, Some(s)) => return Ok(s.clone()),
        (Plan::RenewServing, Some(s)) => (
            s.ca_cert.clone(),
            s.ca_key.clone(),
            s.ca_not_after,
            s.previous_ca.clone(),
        ),
        _ => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let not_after = now + CA_VALIDITY;
            let cert = ca_params(Some(not_after))?.self_signed(&key)?;
            let previous = stored.map(|s| (s.ca_cert.clone(), s.ca_not_after));
            (cert.pem(), key.serialize_pem(), not_after, previous)
        }
    };
    let issuer = Issuer::new(ca_params(None)?, KeyPair::from_pem(&ca_key)?);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("cassette"),
    );
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_not_after = now + SERVING_VALIDITY;
    params.not_before = offset(now - SignedDuration::from_hours(1))?;
    params.not_after = offset(serving_not_after)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Stored {
        ca_cert,
        ca_key,
        ca_not_after,
        previous_ca,
        cert: cert.pem(),
        key: key.serialize_pem(),
        serving_not_after,
        names: names.to_vec(),
    })
}

/// Read what a Secret holds; `None` when anything is missing or unreadable.
pub fn from_secret(secret: &Secret) -> Option<Stored> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let annotations = secret.metadata.annotations.as_ref()?;
    let time = |k: &str| annotations.get(k)?.parse::<Timestamp>().ok();
    Some(Stored {
        ca_cert: text("ca.crt")?,
        ca_key: text("ca.key")?,
        ca_not_after: time(CA_NOT_AFTER)?,
        previous_ca: text("previous-ca.crt").zip(time(PREVIOUS_CA_NOT_AFTER)),
        cert: text("tls.crt")?,
        key: text("tls.key")?,
        serving_not_after: time(SERVING_NOT_AFTER)?,
        names: annotations
            .get(SERVING_NAMES)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

fn to_secret(name: &str, namespace: &str, stored: &Stored, base: Option<&Secret>) -> Secret {
    let mut data = BTreeMap::from([
        (
            "ca.crt".to_string(),
            ByteString(stored.ca_cert.clone().into_bytes()),
        ),
        (
            "ca.key".to_string(),
            ByteString(stored.ca_key.clone().into_bytes()),
        ),
        (
            "tls.crt".to_string(),
            ByteString(stored.cert.clone().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(stored.key.clone().into_bytes()),
        ),
    ]);
    let mut annotations = BTreeMap::from([
        (CA_NOT_AFTER.to_string(), stored.ca_not_after.to_string()),
        (
            SERVING_NOT_AFTER.to_string(),
            stored.serving_not_after.to_string(),
        ),
        (SERVING_NAMES.to_string(), stored.names.join(",")),
    ]);
    if let Some((pem, not_after)) = &stored.previous_ca {
        data.insert(
            "previous-ca.crt".into(),
            ByteString(pem.clone().into_bytes()),
        );
        annotations.insert(PREVIOUS_CA_NOT_AFTER.into(), not_after.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: base.and_then(|b| b.metadata.resource_version.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".into(),
                "cassette".into(),
            )])),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The certificate the webhook server presents, swapped in place when it is renewed.
#[derive(Debug, Default)]
pub struct ServingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServingCert {
    /// Serve this certificate chain and key (PEM) from now on.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the serving certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("parsing the serving key")?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .context("the serving key is not a supported type")?;
        let certified = Arc::new(CertifiedKey::new(certs, signer));
        *self.current.write().expect("certificate lock") = Some(certified);
        Ok(())
    }

    /// Whether there is a certificate to serve yet.
    pub fn is_ready(&self) -> bool {
        self.current.read().expect("certificate lock").is_some()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

/// Where the certificates come from.
pub struct Settings {
    /// The operator's namespace, where the Secret lives.
    pub namespace: String,
    /// The Secret holding the CA and serving certificate.
    pub secret: String,
    /// The names (DNS names or IP addresses) the serving certificate is valid for.
    pub names: Vec<String>,
    /// The MutatingWebhookConfiguration to patch the caBundle into.
    pub mutating: Option<String>,
    /// The ValidatingWebhookConfiguration to patch the caBundle into.
    pub validating: Option<String>,
}

/// Keeps the Secret's certificates fresh, the server's certificate current and the webhook
/// configurations' caBundle in step. Every replica runs it; the Secret's resourceVersion
/// settles races between them.
pub async fn rotate(
    client: Client,
    settings: Settings,
    serving: Arc<ServingCert>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    loop {
        let wait = match rotate_once(&client, &settings, &serving).await {
            Ok(stored) => {
                metrics
                    .serving_cert_expiry
                    .set(stored.serving_not_after.as_second());
                match patch_bundles(&client, &settings, &stored.bundle(Timestamp::now())).await {
                    Ok(()) => CHECK_EVERY,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "patching caBundle into the webhook configurations");
                        Duration::from_secs(5)
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "keeping the webhook certificates");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn rotate_once(client: &Client, s: &Settings, serving: &ServingCert) -> Result<Stored> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let existing = api
        .get_opt(&s.secret)
        .await
        .with_context(|| format!("reading Secret {}/{}", s.namespace, s.secret))?;
    let stored = existing.as_ref().and_then(from_secret);
    let now = Timestamp::now();
    let plan = plan(stored.as_ref(), &s.names, now);
    let fresh = execute(&plan, stored.as_ref(), &s.names, now)?;
    if plan != Plan::Keep {
        let secret = to_secret(&s.secret, &s.namespace, &fresh, existing.as_ref());
        let written = match &existing {
            None => api.create(&PostParams::default(), &secret).await,
            Some(_) => {
                api.replace(&s.secret, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(?plan, secret = %s.secret, not_after = %fresh.serving_not_after, "stored new webhook certificates")
            }
            // Another replica wrote first: serve what it wrote.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let theirs = api.get(&s.secret).await?;
                let theirs = from_secret(&theirs)
                    .context("the Secret another replica wrote is unreadable")?;
                serving.set(&theirs.cert, &theirs.key)?;
                return Ok(theirs);
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("writing Secret {}/{}", s.namespace, s.secret));
            }
        }
    }
    serving.set(&fresh.cert, &fresh.key)?;
    Ok(fresh)
}

/// Patch the bundle into every webhook of the configured configurations that lacks it.
pub async fn patch_bundles(client: &Client, s: &Settings, bundle: &str) -> Result<()> {
    if let Some(name) = &s.mutating {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        patch_config(&api, name, bundle, |c| {
            c.webhooks
                .iter()
                .flatten()
                .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                .collect()
        })
        .await?;
    }
    if let Some(name) = &s.validating {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        patch_config(&api, name, bundle, |c| {
            c.webhooks
                .iter()
                .flatten()
                .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                .collect()
        })
        .await?;
    }
    Ok(())
}

async fn patch_config<K>(
    api: &Api<K>,
    name: &str,
    bundle: &str,
    webhooks: impl Fn(&K) -> Vec<(String, Option<ByteString>)>,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let config = api
        .get(name)
        .await
        .with_context(|| format!("reading webhook configuration {name}"))?;
    let want = ByteString(bundle.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, (webhook, current)) in webhooks(&config).into_iter().enumerate() {
        if current.as_ref() == Some(&want) {
            continue;
        }
        // The test guards against the list changing between our read and our write.
        ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook}));
        ops.push(serde_json::json!({
            "op": "add",
            "path": format!("/webhooks/{i}/clientConfig/caBundle"),
            "value": base64::engine::general_purpose::STANDARD.encode(bundle),
        }));
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .with_context(|| format!("patching caBundle into webhook configuration {name}"))?;
    tracing::info!(configuration = name, "patched caBundle");
    Ok(())
}

/// Certificates issued by someone else (cert-manager) and mounted as files: reloaded when
/// they change.
pub struct FileSource {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl FileSource {
    /// Load the files now and again every minute.
    pub async fn watch(self, serving: Arc<ServingCert>) {
        let mut last = None;
        loop {
            match (
                tokio::fs::read_to_string(&self.cert).await,
                tokio::fs::read_to_string(&self.key).await,
            ) {
                (Ok(cert), Ok(key)) if last.as_ref() != Some(&(cert.clone(), key.clone())) => {
                    match serving.set(&cert, &key) {
                        Ok(()) => {
                            tracing::info!(cert = %self.cert.display(), "loaded the serving certificate");
                            last = Some((cert, key));
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "loading the serving certificate")
                        }
                    }
                }
                (Ok(_), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, cert = %self.cert.display(), "reading the serving certificate");
                }
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn names() -> Vec<String> {
        vec![
            "cassette-webhook.cassette-system.svc".into(),
            "127.0.0.1".into(),
        ]
    }

    #[test]
    fn nothing_stored_makes_everything_and_fresh_certificates_are_kept() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(plan(None, &names(), now), Plan::Create);
        let made = execute(&Plan::Create, None, &names(), now).unwrap();
        assert_eq!(plan(Some(&made), &names(), now), Plan::Keep);
        assert_eq!(
            plan(
                Some(&made),
                &names(),
                now + SignedDuration::from_hours(24 * 30)
            ),
            Plan::Keep
        );
    }

    #[test]
    fn serving_certificates_are_renewed_with_a_third_of_their_life_left() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let made = execute(&Plan::Create, None, &names(), now).unwrap();
        let later = now + SignedDuration::from_hours(24 * 61);
        assert_eq!(plan(Some(&made), &names(), later), Plan::RenewServing);
        let renewed = execute(&Plan::RenewServing, Some(&made), &names(), later).unwrap();
        assert_eq!(renewed.ca_cert, made.ca_cert, "the CA stays");
        assert_ne!(renewed.cert, made.cert);
        assert_eq!(plan(Some(&renewed), &names(), later), Plan::Keep);
        // New names need a new certificate too.
        let more = [names(), vec!["other.example".into()]].concat();
        assert_eq!(plan(Some(&renewed), &more, later), Plan::RenewServing);
    }

    #[test]
    fn a_rotated_ca_keeps_the_old_one_in_the_bundle_until_it_expires() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let made = execute(&Plan::Create, None, &names(), now).unwrap();
        let late = made.ca_not_after - SignedDuration::from_hours(24 * 30);
        assert_eq!(plan(Some(&made), &names(), late), Plan::RotateCa);
        let rotated = execute(&Plan::RotateCa, Some(&made), &names(), late).unwrap();
        assert_ne!(rotated.ca_cert, made.ca_cert);
        let bundle = rotated.bundle(late);
        assert!(bundle.contains(&rotated.ca_cert) && bundle.contains(&made.ca_cert));
        assert!(!rotated.bundle(made.ca_not_after).contains(&made.ca_cert));
    }

    /// The stored certificate verifies against the stored CA for the configured names, with
    /// the TLS stack the API server's peers use.
    #[test]
    fn the_serving_certificate_chains_to_the_ca_for_every_name() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = Timestamp::now();
        let made = execute(&Plan::Create, None, &names(), now).unwrap();
        let renewed = execute(&Plan::RenewServing, Some(&made), &names(), now).unwrap();
        for stored in [&made, &renewed] {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(made.ca_cert.as_bytes()) {
                roots.add(ca.unwrap()).unwrap();
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            let cert = CertificateDer::from_pem_slice(stored.cert.as_bytes()).unwrap();
            for name in names() {
                let server = rustls_pki_types::ServerName::try_from(name.clone()).unwrap();
                verifier
                    .verify_server_cert(&cert, &[], &server, &[], rustls_pki_types::UnixTime::now())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn the_secret_round_trips() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let made = execute(&Plan::Create, None, &names(), now).unwrap();
        let rotated = execute(&Plan::RotateCa, Some(&made), &names(), now).unwrap();
        let secret = to_secret("tls", "ns", &rotated, None);
        assert_eq!(from_secret(&secret), Some(rotated));
    }
}
