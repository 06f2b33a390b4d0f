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
    /// Pods to narrow to (any of them); none: every pod.
    pub pod: Vec<String>,
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
    if !target.pod.is_empty() {
        let all: Vec<String> = recordings.iter().map(|r| r.label.clone()).collect();
        if let Some(pod) = target
            .pod
            .iter()
            .find(|p| !recordings.iter().any(|r| r.is_pod(p)))
        {
            bail!(
                "no recording of pod {pod:?} under {uri}; recordings there: {}",
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.join(", ")
                }
            );
        }
        recordings.retain(|r| target.pod.iter().any(|p| r.is_pod(p)));
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

/// A recording loaded and checked: what `show`, `replay`, `export` and `search` read.
pub struct Loaded {
    pub objects: cassette_recording::RecordingObjects,
    /// `verify` against the pod's key in the AgentSession status (when there is one) and the
    /// recording's place.
    pub report: cassette_recording::Report,
    /// Whether `report` was checked against a key from the status.
    pub anchored: bool,
}

impl Loaded {
    /// The records of the segments verify took for the recorder's, in order, and a warning
    /// when reading stopped early. Objects someone else put in the recording's place — a
    /// segment the manifest does not list, one without a seal, a second claim to a number —
    /// are not read as part of it: they are named in a warning.
    pub fn records(&self, label: &str) -> (Vec<Record>, Option<String>) {
        let left_out = self.objects.left_out(&self.report);
        if !left_out.is_empty() {
            eprintln!(
                "warning: {label}: left out {}, which the recorder did not write (run `kubectl cassette verify`)",
                left_out.join(", ")
            );
        }
        let mut records = Vec::new();
        for r in self.objects.records_of(&self.report) {
            match r {
                Ok(r) => records.push(r),
                Err(e) => return (records, Some(e.to_string())),
            }
        }
        (records, None)
    }
}

/// Loads a recording and checks it (against its pod's key in the status, when known).
pub async fn load(recording: &Recording) -> Result<Loaded> {
    let objects = recording.load().await?;
    let key = recording
        .status
        .as_ref()
        .and_then(|p| p.public_key.as_deref())
        .and_then(cassette_recording::key::decode_public_key);
    let report = cassette_recording::verify_expecting(
        &objects,
        &cassette_recording::Expected {
            keys: key.iter().cloned().collect(),
            place: cassette_recording::Place::of(&recording.url),
        },
    );
    Ok(Loaded {
        objects,
        report,
        anchored: key.is_some(),
    })
}

/// Loads a recording and builds its timeline; prints a warning for unreadable tails and for
/// objects left out.
pub async fn timeline_of(recording: &Recording) -> Result<(Timeline, Loaded)> {
    let loaded = load(recording).await?;
    let (records, warning) = loaded.records(&recording.label);
    if let Some(w) = warning {
        eprintln!(
            "warning: {}: reading stopped at an unreadable record ({w}); run `kubectl cassette verify`",
            recording.label
        );
    }
    Ok((Timeline::build(&records), loaded))
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
