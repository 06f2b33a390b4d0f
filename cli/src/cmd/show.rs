//! `show`: the timeline table of each recording of a session, with a one-line integrity
//! verdict on top; `show --exchange N [--bodies]`: one exchange in full.

use anyhow::{Result, bail};
use cassette_recording::Completeness;

use super::{Target, resolve_some, single, timeline_of};
use crate::filter::{Filter, hidden_note};
use crate::locate::{Access, Recording};
use crate::machine::{self, Format};
use crate::render;
use crate::timeline::Timeline;

pub async fn run(
    access: &Access,
    target: &Target,
    filter: &Filter,
    exchange: Option<&str>,
    bodies: bool,
    output: Option<Format>,
) -> Result<()> {
    if exchange.is_some() && output.is_some() {
        bail!(
            "show --exchange prints one exchange for people; -o gives every exchange's row (export --har has heads and bodies for machines)"
        );
    }
    if exchange.is_some() && filter.is_active() {
        bail!(
            "--exchange names one exchange and filters choose rows of the table: use one or the other"
        );
    }
    let resolved = resolve_some(access, target).await?;
    if let Some(name) = exchange {
        let recording = single(&resolved, "show --exchange")?;
        let (timeline, _) = timeline_of(recording).await?;
        let x = match timeline.find(name) {
            Ok(x) => x,
            Err(why) => bail!("recording {} {why}", recording.label),
        };
        print!("{}", render::exchange(x, bodies));
        return Ok(());
    }
    if let Some(format @ (Format::Json | Format::Yaml)) = output {
        let mut recordings = Vec::new();
        for recording in &resolved.recordings {
            let (timeline, loaded) = timeline_of(recording).await?;
            recordings.push(structured(
                recording,
                &timeline,
                &loaded.report,
                loaded.anchored,
                filter,
            ));
        }
        return machine::print(format, &machine::ShowOutput { recordings });
    }
    let wide = output == Some(Format::Wide);
    for (i, recording) in resolved.recordings.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let (timeline, loaded) = timeline_of(recording).await?;
        println!(
            "{}",
            header(recording, &timeline, &loaded.report, loaded.anchored)
        );
        if filter.is_active() {
            let narrowed = filter.narrow(&timeline);
            println!(
                "  filters: {} (gaps and session events are always shown)",
                hidden_note(narrowed.hidden).unwrap_or_else(|| "no exchange hidden".into())
            );
            print!("{}", render::table(&narrowed.timeline, wide));
        } else {
            print!("{}", render::table(&timeline, wide));
        }
    }
    Ok(())
}

/// Counts over the whole recording: exchanges blocked, refusals before any request, gaps,
/// masks.
fn counts(t: &Timeline) -> (usize, usize, usize, u64) {
    let blocked = t.exchanges.values().filter(|x| x.is_blocked()).count();
    let refused = t
        .items
        .iter()
        .filter(|i| matches!(i, crate::timeline::Item::Blocked { .. }))
        .count();
    let gaps = t
        .items
        .iter()
        .filter(|i| matches!(i, crate::timeline::Item::Gap { .. }))
        .count();
    let masked: u64 = t.exchanges.values().map(render::masked).sum();
    (blocked, refused, gaps, masked)
}

/// One recording for `-o json|yaml`.
fn structured(
    recording: &Recording,
    t: &Timeline,
    report: &cassette_recording::Report,
    anchored: bool,
    filter: &Filter,
) -> machine::ShowRecording {
    let (blocked, refused_before_request, gaps, masked) = counts(t);
    let state = if !report.faults.is_empty() {
        "not_intact"
    } else {
        match report.completeness {
            Completeness::Complete => "verified",
            Completeness::Open => "open",
            Completeness::Unshipped(_) => "unshipped",
        }
    };
    let (shown, hidden) = if filter.is_active() {
        let narrowed = filter.narrow(t);
        (narrowed.timeline, Some(narrowed.hidden))
    } else {
        (t.clone(), None)
    };
    machine::ShowRecording {
        pod: recording.label.clone(),
        url: recording.url.clone(),
        first_time: t.first_time.clone(),
        last_time: t.last_time.clone(),
        records: t.records,
        exchanges: t.exchanges.len(),
        blocked,
        refused_before_request,
        masked,
        gaps,
        ended: t.ended,
        integrity: machine::Integrity {
            state,
            key_checked: anchored,
            faults: report.faults.iter().map(|f| f.to_string()).collect(),
        },
        hidden_by_filters: hidden,
        timeline: machine::entries(&shown),
    }
}

fn header(
    recording: &Recording,
    t: &Timeline,
    report: &cassette_recording::Report,
    anchored: bool,
) -> String {
    let (blocked, refused, gaps, masked) = counts(t);
    let span = match (&t.first_time, &t.last_time) {
        (Some(a), Some(b)) => format!("{a} → {b} (times UTC)"),
        _ => "empty".to_string(),
    };
    let integrity = if !report.faults.is_empty() {
        format!(
            "NOT INTACT: {} fault(s), first: {} — run `kubectl cassette verify`",
            report.faults.len(),
            report.faults[0]
        )
    } else {
        let key = if anchored {
            "key matches the AgentSession status"
        } else {
            "key NOT checked against one you trust (kubectl cassette verify --public-key)"
        };
        match &report.completeness {
            Completeness::Complete => format!("verified, sealed and closed by its manifest; {key}"),
            Completeness::Open => format!("verified so far, no manifest yet; {key}"),
            Completeness::Unshipped(gap) => format!(
                "verified; its manifest says {} segment(s) were sealed but never shipped (seq {}..={}); {key}",
                gap.len(),
                gap.first().map_or(0, |s| s.first_seq),
                gap.last().map_or(0, |s| s.last_seq),
            ),
        }
    };
    format!(
        "recording {}  {}\n  {span}\n  {} record(s), {} exchange(s), {blocked} blocked{}, {masked} masked{}{}\n  integrity: {integrity}",
        recording.label,
        recording.url,
        t.records,
        t.exchanges.len(),
        if refused > 0 {
            format!(", {refused} refused before any request")
        } else {
            String::new()
        },
        if gaps > 0 {
            format!(", {gaps} GAP(S) in the recording")
        } else {
            String::new()
        },
        if t.ended { "" } else { ", no session_end yet" },
    )
}
