//! `ls`: AgentSessions from the API server with their phase, agent, requester, counts and
//! recording location, and under each the recordings (one per pod) found there. With
//! `--recording URI`, only the recordings under that place.

use anyhow::Result;
use cassette_api::AgentSession;

use crate::locate::{self, Access, Recording};
use crate::render::printable;

pub async fn run(access: &Access, all_namespaces: bool, recording: Option<&str>) -> Result<()> {
    if let Some(uri) = recording {
        let found = locate::discover(uri, &access.gcs).await?;
        if found.is_empty() {
            println!("no recording under {uri}");
        }
        for r in &found {
            println!("{}", recording_line(r, None));
        }
        return Ok(());
    }
    let cluster = access.cluster().await?;
    let mut sessions = cluster.sessions(all_namespaces).await?;
    sessions.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    if sessions.is_empty() {
        if all_namespaces {
            println!("no AgentSessions in any namespace");
        } else {
            println!("no AgentSessions in namespace {}", cluster.namespace);
        }
        return Ok(());
    }
    let rows: Vec<[String; 9]> = sessions.iter().map(row).collect();
    let header = [
        "NAMESPACE",
        "NAME",
        "PHASE",
        "AGENT",
        "REQUESTED-BY",
        "EXCHANGES",
        "BLOCKED",
        "MASKED",
        "RECORDING",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 9]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(&header));
    for (session, cells) in sessions.iter().zip(&rows) {
        println!("{}", line(cells));
        match locate::session_uri(session) {
            Err(e) => println!("    (no recording location: {e})"),
            Ok(uri) => match locate::discover(&uri, &access.gcs).await {
                Err(e) => println!("    (cannot list recordings: {e:#})"),
                Ok(found) => {
                    let mut seen = Vec::new();
                    for mut r in found {
                        r.status = locate::pod_status(session, &r.label).cloned();
                        if let Some(p) = &r.status {
                            seen.push(p.name.clone());
                        }
                        println!("    {}", recording_line(&r, Some(session)));
                    }
                    let pods = session.status.iter().flat_map(|s| s.pods.iter());
                    for p in pods.filter(|p| !seen.contains(&p.name)) {
                        println!(
                            "    pod {}: in the status, but no recording in the sink{}",
                            printable(&p.name, false),
                            p.last_shipped_segment
                                .as_ref()
                                .map(|s| format!(" (status says {s} was shipped)"))
                                .unwrap_or_default()
                        );
                    }
                }
            },
        }
    }
    Ok(())
}

fn row(s: &AgentSession) -> [String; 9] {
    let status = s.status.as_ref();
    let totals = status.and_then(|s| s.totals.as_ref());
    let count =
        |f: fn(&cassette_api::Totals) -> u64| totals.map_or("-".into(), |t| f(t).to_string());
    [
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
        status
            .and_then(|s| s.phase)
            .map_or("-".into(), |p| format!("{p:?}")),
        s.spec
            .agent
            .as_ref()
            .and_then(|a| a.service_account.clone())
            .unwrap_or_else(|| "-".into()),
        s.spec
            .requested_by
            .as_ref()
            .map_or("-".into(), |r| r.username.clone()),
        count(|t| t.exchanges),
        count(|t| t.blocked),
        count(|t| t.masked),
        locate::session_uri(s).unwrap_or_else(|_| "-".into()),
    ]
    .map(|c| printable(&c, false))
}

fn recording_line(r: &Recording, session: Option<&AgentSession>) -> String {
    let segments = r.segment_names.len();
    let state = if r.has_manifest {
        "closed (manifest.json)"
    } else {
        "open (no manifest yet)"
    };
    let mut line = format!(
        "recording {}: {segments} segment(s), {state}, {}",
        r.label, r.url
    );
    match (&r.status, session) {
        (Some(p), _) => {
            if let Some(k) = &p.public_key {
                line.push_str(&format!(", key {k}"));
            }
            line.push_str(&format!(
                ", {} exchange(s), {} blocked, {} masked",
                p.exchanges, p.blocked, p.masked
            ));
        }
        (None, Some(_)) => line.push_str(", not listed in the AgentSession status"),
        (None, None) => {}
    }
    printable(&line, false)
}
