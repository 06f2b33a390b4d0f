//! Finding recordings: an AgentSession on the API server names where its recordings are
//! (`status.recordingURI`, else `spec.recording.sink`), and the keys that must sign them
//! (`status.pods[].publicKey`); `--recording URI` names a place directly. This module does the
//! I/O (kube client, sinks); what is done with a recording is elsewhere.

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cassette_api::{AgentSession, PodRecording};
use cassette_recording::segment::{is_manifest_name, parse_index};
use cassette_recording::{GcsOptions, RecordingObjects, Sink};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How to reach the API server and the sinks: the options every command shares.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `--cluster`: the kubeconfig cluster to use instead of the context's.
    pub cluster: Option<String>,
    /// `--user`: the kubeconfig user to use instead of the context's.
    pub user: Option<String>,
    pub namespace: Option<String>,
    /// `--as`, `--as-group`: impersonate them, as kubectl does.
    pub impersonate: Option<String>,
    pub impersonate_groups: Vec<String>,
    /// `--request-timeout`: `None` keeps the client's defaults; `Some(None)` is no limit.
    pub request_timeout: Option<Option<std::time::Duration>>,
    pub gcs: GcsOptions,
}

/// Parses `--request-timeout` as kubectl does: a number of seconds or a duration such as
/// `5s`, `1m` or `2m3s`; `0` means no limit.
pub fn parse_request_timeout(value: &str) -> Result<Option<std::time::Duration>> {
    let value = value.trim();
    let duration = match value.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => value
            .parse::<jiff::SignedDuration>()
            .ok()
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .with_context(|| {
                format!(
                    "--request-timeout {value:?}: use seconds (30) or a duration (30s, 1m, 2m3s); 0 for no limit"
                )
            })?,
    };
    Ok((!duration.is_zero()).then_some(duration))
}

/// A client for the API server, and the namespace to use when none is given.
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
}

impl Access {
    /// Connects with `--kubeconfig`/`--context`/`--cluster`/`--user`, or the usual places
    /// (`KUBECONFIG`, `~/.kube/config`, in-cluster), then applies `--as`, `--as-group` and
    /// `--request-timeout`.
    pub async fn cluster(&self) -> Result<Cluster> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            cluster: self.cluster.clone(),
            user: self.user.clone(),
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
            }
            None if self.context.is_some() || self.cluster.is_some() || self.user.is_some() => {
                kube::Config::from_kubeconfig(&options)
                    .await
                    .context("cannot load the kubeconfig")?
            }
            None => kube::Config::infer().await.context(
                "no Kubernetes configuration found (set KUBECONFIG or --kubeconfig, or name a recording with --recording URI)",
            )?,
        };
        let mut config = config;
        self.apply(&mut config);
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).context("cannot build a Kubernetes client")?;
        Ok(Cluster { client, namespace })
    }
}

impl Access {
    /// The flags kubectl plugins take that change the client, not where it connects.
    fn apply(&self, config: &mut kube::Config) {
        if let Some(user) = &self.impersonate {
            config.auth_info.impersonate = Some(user.clone());
        }
        if !self.impersonate_groups.is_empty() {
            config.auth_info.impersonate_groups = Some(self.impersonate_groups.clone());
        }
        if let Some(timeout) = self.request_timeout {
            config.connect_timeout = timeout;
            config.read_timeout = timeout;
            config.write_timeout = timeout;
        }
    }
}

impl Cluster {
    /// One AgentSession.
    pub async fn session(&self, name: &str) -> Result<AgentSession> {
        let api: Api<AgentSession> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(name)
            .await
            .with_context(|| {
                format!(
                    "cannot read AgentSession {name:?} in namespace {:?}",
                    self.namespace
                )
            })?
            .with_context(|| {
                format!(
                    "AgentSession {name:?} not found in namespace {:?} (use -n NAMESPACE, or kubectl cassette ls -A)",
                    self.namespace
                )
            })
    }

    /// The AgentSessions of the namespace, or of all namespaces.
    pub async fn sessions(&self, all_namespaces: bool) -> Result<Vec<AgentSession>> {
        let api: Api<AgentSession> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.namespace)
        };
        let list = api.list(&ListParams::default()).await.context(
            "cannot list AgentSessions (is the cassette CRD installed, and may you list agentsessions.cassette.dev?)",
        )?;
        Ok(list.items)
    }

    /// One key of a Secret in the namespace, as its raw bytes.
    pub async fn secret_key(&self, name: &str, key: &str) -> Result<Vec<u8>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = api.get(name).await.with_context(|| {
            format!(
                "cannot read Secret {name:?} in namespace {:?} (the fingerprint key; auditors need get on it, or pass --key-file)",
                self.namespace
            )
        })?;
        secret
            .data
            .and_then(|mut d| d.remove(key))
            .map(|b| b.0)
            .with_context(|| format!("Secret {name:?} has no key {key:?}"))
    }
}

/// Where a session's recordings are: `status.recordingURI`, else `<sink>/<namespace>/<name>/`.
pub fn session_uri(session: &AgentSession) -> Result<String> {
    if let Some(uri) = session
        .status
        .as_ref()
        .and_then(|s| s.recording_uri.clone())
    {
        return Ok(uri);
    }
    let ns = session
        .metadata
        .namespace
        .as_deref()
        .context("the AgentSession has no namespace")?;
    let name = session
        .metadata
        .name
        .as_deref()
        .context("the AgentSession has no name")?;
    Ok(format!(
        "{}/{ns}/{name}/",
        session.spec.recording.sink.trim_end_matches('/')
    ))
}

/// One pod's recording, found in a sink.
#[derive(Debug, Clone)]
pub struct Recording {
    pub sink: Sink,
    /// Key prefix of the recording below the sink, ending in `/`.
    pub prefix: String,
    /// `<pod>-<uid>`: the recording's directory name.
    pub label: String,
    /// The recording's URL, for messages.
    pub url: String,
    /// What the AgentSession status says about this pod, when there is a session.
    pub status: Option<PodRecording>,
    /// Segment objects present (names below the prefix), from the listing.
    pub segment_names: Vec<String>,
    /// Whether `manifest.json` is present.
    pub has_manifest: bool,
}

impl Recording {
    /// Fetches the recording's objects.
    pub async fn load(&self) -> Result<RecordingObjects> {
        cassette_recording::load(&self.sink, &self.prefix)
            .await
            .with_context(|| format!("cannot read the recording {}", self.url))
    }

    /// Whether this recording is the one `--pod` names (`<pod>` or `<pod>-<uid>`).
    pub fn is_pod(&self, pod: &str) -> bool {
        self.label == pod
            || self
                .label
                .strip_prefix(pod)
                .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// Splits a URI into the sink to open and the key prefix below it, so that the last path
/// component is listed as a prefix (a `file://` sink cannot list its own root by name).
fn split_uri(uri: &str) -> Result<(String, String)> {
    let trimmed = uri.trim_end_matches('/');
    if let Some(rest) = trimmed.strip_prefix("gs://")
        && !rest.contains('/')
    {
        return Ok((format!("gs://{rest}"), String::new()));
    }
    let (parent, name) = trimmed
        .rsplit_once('/')
        .with_context(|| format!("{uri:?} is not a file:// or gs:// URI"))?;
    let parent = if parent == "file://" {
        "file:///".to_string()
    } else {
        parent.to_string()
    };
    if name.is_empty() || parent.ends_with(":/") {
        bail!("{uri:?} names no directory: use file:///dir/... or gs://bucket/...");
    }
    Ok((parent, format!("{name}/")))
}

/// The recordings at or below `uri` (a recording, a session, a namespace or a sink root),
/// in name order.
pub async fn discover(uri: &str, gcs: &GcsOptions) -> Result<Vec<Recording>> {
    let (sink_url, base) = split_uri(uri)?;
    let sink = Sink::open(&sink_url, gcs)
        .await
        .with_context(|| format!("cannot open {uri}"))?;
    let mut found = Vec::new();
    let mut queue = VecDeque::from([(base, 0usize)]);
    while let Some((prefix, depth)) = queue.pop_front() {
        let listing = sink
            .list(&prefix)
            .await
            .with_context(|| format!("cannot list {}", sink.url_of(&prefix)))?;
        let names: Vec<String> = listing
            .objects
            .iter()
            .map(|k| k[prefix.len()..].to_string())
            .collect();
        let segment_names: Vec<String> = names
            .iter()
            .filter(|n| parse_index(n).is_some())
            .cloned()
            .collect();
        let has_manifest = names.iter().any(|n| is_manifest_name(n));
        if !segment_names.is_empty() || has_manifest {
            let label = prefix
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            found.push(Recording {
                url: sink.url_of(&prefix),
                sink: sink.clone(),
                prefix,
                label,
                status: None,
                segment_names,
                has_manifest,
            });
        } else if depth < 3 {
            queue.extend(listing.prefixes.into_iter().map(|p| (p, depth + 1)));
        }
    }
    found.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    Ok(found)
}

/// The status entry of the pod a recording directory belongs to.
pub fn pod_status<'a>(session: &'a AgentSession, label: &str) -> Option<&'a PodRecording> {
    let pods = &session.status.as_ref()?.pods;
    pods.iter()
        .find(|p| {
            p.uid
                .as_deref()
                .is_some_and(|uid| label == format!("{}-{uid}", p.name))
        })
        .or_else(|| {
            pods.iter().find(|p| {
                p.uid.is_none()
                    && label
                        .strip_prefix(p.name.as_str())
                        .is_some_and(|r| r.starts_with('-'))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_sink_and_prefix() {
        assert_eq!(
            split_uri("file:///rec/ns/s/").unwrap(),
            ("file:///rec/ns".into(), "s/".into())
        );
        assert_eq!(
            split_uri("file:///rec").unwrap(),
            ("file:///".into(), "rec/".into())
        );
        assert_eq!(
            split_uri("gs://b/agents/ns/s").unwrap(),
            ("gs://b/agents/ns".into(), "s/".into())
        );
        assert_eq!(split_uri("gs://b/").unwrap(), ("gs://b".into(), "".into()));
        assert!(split_uri("nothing").is_err());
        assert!(split_uri("file:///").is_err());
    }
}

#[cfg(test)]
mod access_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn request_timeouts_read_as_kubectl_writes_them() {
        let t = |v: &str| parse_request_timeout(v).unwrap();
        assert_eq!(t("30"), Some(Duration::from_secs(30)));
        assert_eq!(t("5s"), Some(Duration::from_secs(5)));
        assert_eq!(t("2m3s"), Some(Duration::from_secs(123)));
        assert_eq!(t("0"), None);
        assert_eq!(t("0s"), None);
        let e = parse_request_timeout("soon").unwrap_err().to_string();
        assert!(e.contains("30s, 1m"), "{e}");
        assert!(parse_request_timeout("-5s").is_err());
    }

    /// A kubeconfig with two clusters, two users and one context, and the client config that
    /// `--cluster`, `--user`, `--as`, `--as-group` and `--request-timeout` make of it.
    #[tokio::test]
    async fn kubectl_flags_reach_the_client_config() {
        let yaml = r#"
apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {cluster: dev, user: alice, namespace: agents}
clusters:
- name: dev
  cluster: {server: "https://dev.example:6443"}
- name: prod
  cluster: {server: "https://prod.example:6443"}
users:
- name: alice
  user: {username: alice, password: a}
- name: auditor
  user: {username: auditor, password: b}
"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, yaml).unwrap();
        let access = Access {
            kubeconfig: Some(path.clone()),
            cluster: Some("prod".into()),
            user: Some("auditor".into()),
            impersonate: Some("bob@example.com".into()),
            impersonate_groups: vec!["auditors".into(), "sre".into()],
            request_timeout: Some(Some(Duration::from_secs(7))),
            ..Default::default()
        };
        let options = KubeConfigOptions {
            context: None,
            cluster: access.cluster.clone(),
            user: access.user.clone(),
        };
        let file = Kubeconfig::read_from(&path).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .unwrap();
        access.apply(&mut config);
        assert_eq!(config.cluster_url.host(), Some("prod.example"));
        assert_eq!(config.auth_info.username.as_deref(), Some("auditor"));
        assert_eq!(
            config.auth_info.impersonate.as_deref(),
            Some("bob@example.com")
        );
        assert_eq!(
            config.auth_info.impersonate_groups,
            Some(vec!["auditors".to_string(), "sre".to_string()])
        );
        assert_eq!(config.read_timeout, Some(Duration::from_secs(7)));
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(config.default_namespace, "agents");
        // kube turns these into Impersonate-User and Impersonate-Group headers.
        assert!(kube::Client::try_from(config).is_ok());
    }
}
