//! `ls`: AgentSessions from the API server with their phase, agent, requester, counts and
//! recording location, and under each the recordings (one per pod) found there. With
//! `--recording URI`, only the recordings under that place. What is found is gathered first
//! (`machine::LsOutput`), then printed as a table or as JSON/YAML.

use anyhow::Result;
use cassette_api::AgentSession;

use crate::locate::{self, Access, Recording};
use crate::machine::{self, Format, LsOutput, PodWithoutRecording, RecordingEntry, SessionEntry};
use crate::render::printable;

pub async fn run(
    access: &Access,
    all_namespaces: bool,
    recording: Option<&str>,
    output: Option<Format>,
) -> Result<()> {
    let structured = match output {
        Some(f @ (Format::Json | Format::Yaml)) => Some(f),
        _ => None,
    };
    let wide = output == Some(Format::Wide);
    if let Some(uri) = recording {
        let found = locate::discover(uri, &access.gcs).await?;
        let recordings: Vec<RecordingEntry> = found.iter().map(|r| entry(r, None)).collect();
        if let Some(format) = structured {
            return machine::print(
                format,
                &LsOutput {
                    sessions: Vec::new(),
                    recordings,
                },
            );
        }
        if found.is_empty() {
            println!("no recording under {uri}");
        }
        for r in &recordings {
            println!("{}", recording_line(r));
        }
        return Ok(());
    }
    let cluster = access.cluster().await?;
    let mut sessions = cluster.sessions(all_namespaces).await?;
    sessions.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut entries = Vec::new();
    for session in &sessions {
        entries.push(session_entry(access, session).await);
    }
    if let Some(format) = structured {
        return machine::print(
            format,
            &LsOutput {
                sessions: entries,
                recordings: Vec::new(),
            },
        );
    }
    if entries.is_empty() {
        if all_namespaces {
            println!("no AgentSessions in any namespace");
        } else {
            println!("no AgentSessions in namespace {}", cluster.namespace);
        }
        return Ok(());
    }
    print_table(&entries, wide);
    Ok(())
}

/// A session and what its recording place holds.
async fn session_entry(access: &Access, s: &AgentSession) -> SessionEntry {
    let status = s.status.as_ref();
    let totals = status.and_then(|s| s.totals.as_ref());
    let mut entry = SessionEntry {
        namespace: s.metadata.namespace.clone().unwrap_or_default(),
        name: s.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase).map(|p| format!("{p:?}")),
        agent: s
            .spec
            .agent
            .as_ref()
            .and_then(|a| a.service_account.clone()),
        requested_by: s.spec.requested_by.as_ref().map(|r| r.username.clone()),
        expires_at: s.spec.expires_at.as_ref().map(|t| t.0.to_string()),
        created: s
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        exchanges: totals.map(|t| t.exchanges),
        blocked: totals.map(|t| t.blocked),
        masked: totals.map(|t| t.masked),
        recording: None,
        error: None,
        recordings: Vec::new(),
        pods_without_recording: Vec::new(),
    };
    let uri = match locate::session_uri(s) {
        Ok(uri) => uri,
        Err(e) => {
            entry.error = Some(format!("no recording location: {e}"));
            return entry;
        }
    };
    entry.recording = Some(uri.clone());
    match locate::discover(&uri, &access.gcs).await {
        Err(e) => entry.error = Some(format!("cannot list recordings: {e:#}")),
        Ok(found) => {
            let mut seen = Vec::new();
            for mut r in found {
                r.status = locate::pod_status(s, &r.label).cloned();
                if let Some(p) = &r.status {
                    seen.push(p.name.clone());
                }
                entry.recordings.push(self::entry(&r, Some(s)));
            }
            let pods = status.iter().flat_map(|s| s.pods.iter());
            entry.pods_without_recording = pods
                .filter(|p| !seen.contains(&p.name))
                .map(|p| PodWithoutRecording {
                    pod: p.name.clone(),
                    last_shipped_segment: p.last_shipped_segment.clone(),
                })
                .collect();
        }
    }
    entry
}

fn entry(r: &Recording, session: Option<&AgentSession>) -> RecordingEntry {
    let status = r.status.as_ref();
    RecordingEntry {
        pod: r.label.clone(),
        url: r.url.clone(),
        segments: r.segment_names.len(),
        closed: r.has_manifest,
        in_status: session.map(|_| status.is_some()),
        public_key: status.and_then(|p| p.public_key.clone()),
        exchanges: status.map(|p| p.exchanges),
        blocked: status.map(|p| p.blocked),
        masked: status.map(|p| p.masked),
    }
}

fn print_table(entries: &[SessionEntry], wide: bool) {
    let mut header: Vec<String> = [
        "NAMESPACE",
        "NAME",
        "PHASE",
        "AGENT",
        "REQUESTED-BY",
        "EXCHANGES",
        "BLOCKED",
        "MASKED",
    ]
    .map(String::from)
    .to_vec();
    if wide {
        header.extend(["PODS", "EXPIRES", "CREATED"].map(String::from));
    }
    header.push("RECORDING".into());
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let count = |v: Option<u64>| v.map_or("-".into(), |n| n.to_string());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut cells = vec![
                e.namespace.clone(),
                e.name.clone(),
                dash(&e.phase),
                dash(&e.agent),
                dash(&e.requested_by),
                count(e.exchanges),
                count(e.blocked),
                count(e.masked),
            ];
            if wide {
                cells.push((e.recordings.len() + e.pods_without_recording.len()).to_string());
                cells.push(dash(&e.expires_at));
                cells.push(dash(&e.created));
            }
            cells.push(dash(&e.recording));
            cells.into_iter().map(|c| printable(&c, false)).collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(&header));
    for (e, cells) in entries.iter().zip(&rows) {
        println!("{}", line(cells));
        if let Some(err) = &e.error {
            println!("    ({})", printable(err, false));
        }
        for r in &e.recordings {
            println!("    {}", recording_line(r));
        }
        for p in &e.pods_without_recording {
            println!(
                "    pod {}: in the status, but no recording in the sink{}",
                printable(&p.pod, false),
                p.last_shipped_segment
                    .as_ref()
                    .map(|s| format!(" (status says {s} was shipped)"))
                    .unwrap_or_default()
            );
        }
    }
}

fn recording_line(r: &RecordingEntry) -> String {
    let state = if r.closed {
        "closed (manifest.json)"
    } else {
        "open (no manifest yet)"
    };
    let mut line = format!(
        "recording {}: {} segment(s), {state}, {}",
        r.pod, r.segments, r.url
    );
    match (r.in_status, r.exchanges) {
        (Some(true), Some(exchanges)) => {
            if let Some(k) = &r.public_key {
                line.push_str(&format!(", key {k}"));
            }
            line.push_str(&format!(
                ", {exchanges} exchange(s), {} blocked, {} masked",
                r.blocked.unwrap_or(0),
                r.masked.unwrap_or(0)
            ));
        }
        (Some(false), _) => line.push_str(", not listed in the AgentSession status"),
        _ => {}
    }
    printable(&line, false)
}
