//! Output for machines: `-o json|yaml` prints these structs, whose field names are stable and
//! documented in README.md ("Output for machines"); `-o wide` widens the tables. The shapes
//! are built from what the commands already computed; nothing here reads or decides.

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::render;
use crate::timeline::{Exchange, Item, Timeline};

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The table, with more columns.
    Wide,
    /// JSON, the fields README.md documents.
    Json,
    /// YAML, the same fields as JSON.
    Yaml,
}

/// `-o FORMAT`, as `ls`, `show`, `verify` and `search` take it.
#[derive(Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Output format: json or yaml (stable field names, see README), or wide (a table with
    /// more columns); default: the table or text for people.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
}

impl OutputArgs {
    /// The format for a command that has no table to widen (`verify`, `search`).
    pub fn structured_only(&self, verb: &str) -> Result<Option<Format>> {
        match self.output {
            Some(Format::Wide) => anyhow::bail!(
                "{verb} prints no table to widen: use -o json or -o yaml, or no -o for text"
            ),
            other => Ok(other),
        }
    }
}

/// Prints a value as JSON or YAML (`wide` and text are the commands' own).
pub fn print<T: Serialize>(format: Format, value: &T) -> Result<()> {
    let text = match format {
        Format::Yaml => {
            serde_saphyr::to_string(value).map_err(|e| anyhow::anyhow!("cannot write YAML: {e}"))?
        }
        Format::Json | Format::Wide => serde_json::to_string_pretty(value)? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// `show -o json`: every recording with its integrity and its timeline.
#[derive(Debug, Serialize)]
pub struct ShowOutput {
    pub recordings: Vec<ShowRecording>,
}

/// One recording, as `show` summarises it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShowRecording {
    /// `<pod>-<uid>`.
    pub pod: String,
    pub url: String,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    pub records: u64,
    /// Counts over the whole recording, whatever the filters.
    pub exchanges: usize,
    pub blocked: usize,
    pub refused_before_request: usize,
    pub masked: u64,
    pub gaps: usize,
    /// Whether `session_end` was recorded.
    pub ended: bool,
    pub integrity: Integrity,
    /// Exchanges the filters hid; absent without filters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_by_filters: Option<usize>,
    pub timeline: Vec<Entry>,
}

/// What `show` found of a recording's integrity (`verify` says more).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Integrity {
    /// `verified` (sealed and closed by its manifest), `open` (no manifest yet), `unshipped`
    /// (the manifest lists segments never shipped) or `not_intact` (see `faults`).
    pub state: &'static str,
    /// Whether the key was checked against the AgentSession status.
    pub key_checked: bool,
    pub faults: Vec<String>,
}

/// One line of the timeline.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Entry {
    Exchange(Box<ExchangeRow>),
    SessionStart {
        time: String,
        pod: String,
        pod_uid: String,
        public_key: String,
        restarted: bool,
        agent: Option<String>,
        requested_by: Option<String>,
    },
    /// A refusal before any request (no exchange).
    Refused {
        time: String,
        reason: String,
        rule: Option<String>,
        message: String,
    },
    Gap {
        time: String,
        lost: String,
        reason: String,
        records: Option<u64>,
    },
    SessionChange {
        time: String,
        generation: i64,
        changed: Vec<String>,
        expires_at: Option<String>,
        deleted: bool,
    },
    SessionEnd {
        time: String,
        reason: String,
    },
}

/// One exchange, as a row of `show`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeRow {
    /// How `show --exchange` names it: `N`, or `RUN.N` where a recorder reused ids.
    pub exchange: String,
    pub time: String,
    pub method: Option<String>,
    pub scheme: Option<String>,
    pub host: String,
    pub path: Option<String>,
    pub http_version: Option<String>,
    pub status: Option<u16>,
    pub latency_us: Option<u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub masked: u64,
    /// `allow`, `deny`, `review` or `passthrough`; absent while the exchange has no end.
    pub decision: Option<&'static str>,
    pub rule: Option<String>,
    /// Refused for any reason (policy, expiry, recording failure, certificate).
    pub blocked: bool,
    pub service: Option<String>,
    pub permission: Option<String>,
    pub git_service: Option<String>,
    /// Git refs pushed: `refs/heads/main`.
    pub git_refs: Vec<String>,
    pub notes: Vec<String>,
}

impl ExchangeRow {
    pub fn of(x: &Exchange) -> Self {
        let end = x.end.as_ref();
        let class = end.and_then(|e| e.classification.as_ref());
        let request = x.request.as_ref();
        ExchangeRow {
            exchange: x.label.clone(),
            time: x.first_time.clone(),
            method: request.map(|r| r.method.clone()),
            scheme: request.map(|r| r.scheme.clone()),
            host: x.host().to_string(),
            path: request.map(|r| r.path.clone()),
            http_version: request.map(|r| r.version.clone()),
            status: x.response.as_ref().map(|r| r.status),
            latency_us: end.map(|e| e.timings.total_us),
            bytes_up: end.map_or(x.request_body.full_length(), |e| e.bytes_up),
            bytes_down: end.map_or(x.response_body.full_length(), |e| e.bytes_down),
            masked: render::masked(x),
            decision: end.map(|e| render::decision_word(e.decision)),
            rule: end.and_then(|e| e.rule.clone()),
            blocked: x.is_blocked(),
            service: class.and_then(|c| c.service.clone()),
            permission: class.and_then(|c| c.permission.clone()),
            git_service: class.and_then(|c| c.git_service.clone()),
            git_refs: x
                .git
                .iter()
                .flat_map(|g| g.updates.iter().map(|u| u.name.clone()))
                .collect(),
            notes: render::notes(x),
        }
    }
}

/// The timeline's items as entries.
pub fn entries(t: &Timeline) -> Vec<Entry> {
    t.items
        .iter()
        .filter_map(|item| {
            Some(match item {
                Item::Exchange(key) => {
                    Entry::Exchange(Box::new(ExchangeRow::of(t.exchanges.get(key)?)))
                }
                Item::Start { time, start } => Entry::SessionStart {
                    time: time.clone(),
                    pod: start.pod.clone(),
                    pod_uid: start.pod_uid.clone(),
                    public_key: start.public_key.clone(),
                    restarted: start.restarted,
                    agent: start.agent.clone(),
                    requested_by: start.requested_by.clone(),
                },
                Item::Blocked { time, blocked } => Entry::Refused {
                    time: time.clone(),
                    reason: blocked.reason.clone(),
                    rule: blocked.rule.clone(),
                    message: blocked.message.clone(),
                },
                Item::Gap { time, gap } => Entry::Gap {
                    time: time.clone(),
                    lost: gap.lost.clone(),
                    reason: gap.reason.clone(),
                    records: gap.records,
                },
                Item::Change { time, change } => Entry::SessionChange {
                    time: time.clone(),
                    generation: change.generation,
                    changed: change.changed.clone(),
                    expires_at: change.expires_at.clone(),
                    deleted: change.deleted,
                },
                Item::End { time, reason } => Entry::SessionEnd {
                    time: time.clone(),
                    reason: reason.clone(),
                },
            })
        })
        .collect()
}

/// `ls -o json`: sessions from the API server, each with the recordings found at its place;
/// with `--recording`, `sessions` is empty and `recordings` lists what is there.
#[derive(Debug, Default, Serialize)]
pub struct LsOutput {
    pub sessions: Vec<SessionEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recordings: Vec<RecordingEntry>,
}

/// One AgentSession, as `ls` lists it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEntry {
    pub namespace: String,
    pub name: String,
    pub phase: Option<String>,
    pub agent: Option<String>,
    pub requested_by: Option<String>,
    pub expires_at: Option<String>,
    pub created: Option<String>,
    /// Totals from the status; absent before the operator wrote any.
    pub exchanges: Option<u64>,
    pub blocked: Option<u64>,
    pub masked: Option<u64>,
    /// Where its recordings are (`gs://…` or `file://…`).
    pub recording: Option<String>,
    /// Why the recordings could not be listed, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub recordings: Vec<RecordingEntry>,
    /// Pods in the status with no recording in the sink.
    pub pods_without_recording: Vec<PodWithoutRecording>,
}

/// One recording (one pod), as `ls` lists it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingEntry {
    /// `<pod>-<uid>`.
    pub pod: String,
    pub url: String,
    pub segments: usize,
    /// Whether its manifest is there (the recorder closed it).
    pub closed: bool,
    /// Whether the AgentSession status lists the pod; absent with `--recording`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_status: Option<bool>,
    /// From the pod's status entry.
    pub public_key: Option<String>,
    pub exchanges: Option<u64>,
    pub blocked: Option<u64>,
    pub masked: Option<u64>,
}

/// A pod the status lists that has no recording.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodWithoutRecording {
    pub pod: String,
    pub last_shipped_segment: Option<String>,
}

/// `verify -o json`: the verdict, and each recording's.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOutput {
    /// `AgentSession <namespace>/<name>`, or the URI.
    pub target: String,
    /// The worst verdict: `OK`, `INCOMPLETE`, `UNCHECKED` or `INVALID`.
    pub verdict: &'static str,
    /// The exit code, as `--help` documents it.
    pub exit_code: i32,
    pub recordings: Vec<RecordingVerdict>,
    /// Pods the status lists with no recording in the sink.
    pub pods: Vec<PodVerdict>,
}

/// One recording's verdict.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingVerdict {
    pub pod: String,
    pub url: String,
    pub verdict: &'static str,
    pub segments: usize,
    pub records: u64,
    pub sealed: usize,
    /// `complete`, `open` or `unshipped`.
    pub completeness: &'static str,
    /// Segments the manifest says were sealed but never shipped.
    pub unshipped: Vec<String>,
    pub announced_key: Option<String>,
    /// What the key was checked against; absent when no key you trust was at hand.
    pub key_source: Option<String>,
    pub manifest: Option<String>,
    pub faults: Vec<String>,
    pub notes: Vec<String>,
}

/// A pod without a recording.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVerdict {
    pub pod: String,
    pub verdict: &'static str,
    pub message: String,
}

/// `search -o json`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchOutput {
    pub target: String,
    /// Whether anything matched (exit code 0).
    pub found: bool,
    /// `--secret-file`: the candidates, by source and fingerprint.
    pub candidates: Vec<Candidate>,
    pub recordings: Vec<SearchRecording>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub source: String,
    pub fingerprint: String,
}

/// What one recording holds of the candidates.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchRecording {
    pub pod: String,
    pub exchanges: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_by_filters: Option<usize>,
    /// `--secret-file`: masks that carry a candidate's fingerprint.
    pub matches: Vec<SecretMatch>,
    /// `--secret-file`: a candidate stored as it is, which no detector masked.
    pub stored_in_clear: Vec<InClear>,
    /// `--body-file`: recorded bodies that were the file.
    pub body_matches: Vec<BodyMatch>,
    /// What could not be searched (a "no" does not cover it).
    pub not_searched: NotSearched,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretMatch {
    /// The exchange, or `-` for a record of no exchange.
    pub exchange: String,
    pub time: String,
    /// `request` (sent by the agent), `response` (seen by it) or `recorded`.
    pub direction: &'static str,
    pub method: String,
    pub host: String,
    pub path: String,
    /// Where in the exchange: `url`, `header authorization`, `body`, `file …`.
    pub place: String,
    pub detector: String,
    pub candidate: String,
    pub fingerprint: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InClear {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub exchange: Option<String>,
    pub field: String,
    pub candidate: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BodyMatch {
    pub exchange: String,
    pub time: String,
    pub direction: &'static str,
    pub method: String,
    pub host: String,
    pub path: String,
    pub length: u64,
    pub stored: u64,
    /// `as it is`, or `after masking N secret(s)`.
    pub how: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotSearched {
    pub truncated_bodies: usize,
    pub undecoded_bodies: usize,
    pub unread_packs: usize,
    pub damaged_bodies: usize,
}
