//! The subcommands: each resolves what the auditor named (a session on the API server, or a
//! `--recording URI`) to recordings, reads them and prints. Exit codes are decided here and
//! documented in `main.rs`'s help.

pub mod approve;
pub mod export;
pub mod ls;
pub mod replay;
pub mod search;
pub mod show;
pub mod verify;

use anyhow::{Result, bail};
use cassette_api::AgentSession;
use cassette_recording::Record;

use crate::locate::{self, Access, Cluster, Recording};
use crate::timeline::Timeline;

/// What the auditor named: a session, a recording URI, a pod within them.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub session: Option<String>,
    pub recording: Option<String>,
    pub pod: Option<String>,
}

/// A target resolved to its recordings.
pub struct Resolved {
    /// The AgentSession, when the target came from the API server.
    pub session: Option<AgentSession>,
    pub cluster: Option<Cluster>,
    /// Where the recordings were looked for.
    pub uri: String,
    pub recordings: Vec<Recording>,
}

impl Resolved {
    /// `namespace/name` of the session, or the URI.
    pub fn title(&self) -> String {
        match &self.session {
            Some(s) => format!(
                "AgentSession {}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            ),
            None => self.uri.clone(),
        }
    }
}

/// Finds the recordings of a target. `--recording` wins over the API server; `--pod` narrows.
pub async fn resolve(access: &Access, target: &Target) -> Result<Resolved> {
    let (session, cluster, uri) = match (&target.recording, &target.session) {
        (Some(uri), _) => (None, None, uri.clone()),
        (None, Some(name)) => {
            let cluster = access.cluster().await?;
            let session = cluster.session(name).await?;
            let uri = locate::session_uri(&session)?;
            (Some(session), Some(cluster), uri)
        }
        (None, None) => {
            bail!("name a session (kubectl cassette show SESSION) or a --recording URI")
        }
    };
    let mut recordings = locate::discover(&uri, &access.gcs).await?;
    if let Some(s) = &session {
        for r in &mut recordings {
            r.status = locate::pod_status(s, &r.label).cloned();
        }
    }
    if let Some(pod) = &target.pod {
        let all: Vec<String> = recordings.iter().map(|r| r.label.clone()).collect();
        recordings.retain(|r| r.is_pod(pod));
        if recordings.is_empty() {
            bail!(
                "no recording of pod {pod:?} under {uri}; recordings there: {}",
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.join(", ")
                }
            );
        }
    }
    Ok(Resolved {
        session,
        cluster,
        uri,
        recordings,
    })
}

/// The recordings of a target, which must have at least one.
pub async fn resolve_some(access: &Access, target: &Target) -> Result<Resolved> {
    let resolved = resolve(access, target).await?;
    if resolved.recordings.is_empty() {
        bail!(
            "no recording found under {} (nothing shipped yet, or a wrong location)",
            resolved.uri
        );
    }
    Ok(resolved)
}

/// A recording's records in order, and a warning when reading stopped early.
pub fn records_of(objects: &cassette_recording::RecordingObjects) -> (Vec<Record>, Option<String>) {
    let mut records = Vec::new();
    for r in objects.records() {
        match r {
            Ok(r) => records.push(r),
            Err(e) => return (records, Some(e.to_string())),
        }
    }
    (records, None)
}

/// Loads a recording and builds its timeline; prints a warning for unreadable tails.
pub async fn timeline_of(
    recording: &Recording,
) -> Result<(Timeline, cassette_recording::RecordingObjects)> {
    let objects = recording.load().await?;
    let (records, warning) = records_of(&objects);
    if let Some(w) = warning {
        eprintln!(
            "warning: {}: reading stopped at an unreadable record ({w}); run `kubectl cassette verify`",
            recording.label
        );
    }
    Ok((Timeline::build(&records), objects))
}

/// The one recording a command that works on a single recording was given.
pub fn single<'a>(resolved: &'a Resolved, what: &str) -> Result<&'a Recording> {
    match resolved.recordings.as_slice() {
        [one] => Ok(one),
        many => {
            let labels: Vec<&str> = many.iter().map(|r| r.label.as_str()).collect();
            bail!(
                "{what} works on one recording; {} has {}: {} (choose one with --pod)",
                resolved.title(),
                many.len(),
                labels.join(", ")
            )
        }
    }
}
