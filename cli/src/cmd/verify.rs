//! `verify`: every recording of a session checked with `cassette_recording::verify` against
//! the key the AgentSession status publishes for its pod (or `--public-key`), plus what only
//! the status can tell: a pod that reported shipping segments that are not in the sink.

use anyhow::{Result, bail};
use cassette_recording::segment::parse_index;
use cassette_recording::{Completeness, Report};

use super::{Target, resolve};
use crate::locate::{Access, Recording};

/// Exit codes of `verify`.
pub const OK: i32 = 0;
pub const INVALID: i32 = 1;
pub const INCOMPLETE: i32 = 2;

/// The verdict on one recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Ok,
    Incomplete,
    Invalid,
}

pub async fn run(access: &Access, target: &Target, public_key: Option<&str>) -> Result<i32> {
    let expected_override = match public_key {
        Some(b64) => match cassette_recording::key::decode_public_key(b64.trim()) {
            Some(raw) => Some(raw),
            None => bail!("--public-key is not 32 bytes of standard base64: {b64:?}"),
        },
        None => None,
    };
    let resolved = resolve(access, target).await?;
    let mut worst = Verdict::Ok;
    let mut counts = [0usize; 3];

    // Pods the status knows that have no recording in the sink.
    if let Some(session) = &resolved.session {
        let pods = session.status.iter().flat_map(|s| s.pods.iter());
        for pod in pods {
            if target.pod.as_deref().is_some_and(|p| p != pod.name) {
                continue;
            }
            let found = resolved
                .recordings
                .iter()
                .any(|r| r.status.as_ref().is_some_and(|s| s.name == pod.name));
            if found {
                continue;
            }
            let verdict = match &pod.last_shipped_segment {
                Some(seg) => {
                    println!(
                        "INVALID     pod {}: the AgentSession status says it shipped {seg}, but no recording of it is under {}",
                        pod.name, resolved.uri
                    );
                    Verdict::Invalid
                }
                None => {
                    println!(
                        "INCOMPLETE  pod {}: nothing shipped yet (no recording under {})",
                        pod.name, resolved.uri
                    );
                    Verdict::Incomplete
                }
            };
            counts[verdict as usize] += 1;
            worst = worst.max(verdict);
        }
    }
    if resolved.recordings.is_empty() && counts.iter().sum::<usize>() == 0 {
        if resolved.session.is_some() {
            println!(
                "INCOMPLETE  no recording under {} yet (no pod has shipped a segment)",
                resolved.uri
            );
            return Ok(INCOMPLETE);
        }
        bail!("no recording found under {}", resolved.uri);
    }

    for recording in &resolved.recordings {
        let objects = recording.load().await?;
        let (expected, key_source) = match (&expected_override, &recording.status) {
            (Some(k), _) => (Some(k.clone()), "checked against --public-key".to_string()),
            (None, Some(pod)) => match pod.public_key.as_deref() {
                Some(b64) => match cassette_recording::key::decode_public_key(b64) {
                    Some(raw) => (
                        Some(raw),
                        format!(
                            "checked against the AgentSession status (pods[{}].publicKey)",
                            pod.name
                        ),
                    ),
                    None => bail!(
                        "the AgentSession status has an unreadable publicKey for pod {}: {b64:?}",
                        pod.name
                    ),
                },
                None => (None, unanchored("its status entry has no publicKey")),
            },
            (None, None) if resolved.session.is_some() => (
                None,
                unanchored("the AgentSession status does not list this pod"),
            ),
            (None, None) => (None, unanchored("no --public-key was given")),
        };
        let report = cassette_recording::verify(&objects, expected.as_deref());
        let mut extra = Vec::new();
        if let Some(claim) = shipped_beyond(recording, &report) {
            extra.push(claim);
        }
        let verdict = print_report(recording, &report, &extra, &key_source);
        counts[verdict as usize] += 1;
        worst = worst.max(verdict);
    }
    println!(
        "{}: {} ok, {} incomplete, {} invalid",
        resolved.title(),
        counts[Verdict::Ok as usize],
        counts[Verdict::Incomplete as usize],
        counts[Verdict::Invalid as usize]
    );
    Ok(match worst {
        Verdict::Ok => OK,
        Verdict::Incomplete => INCOMPLETE,
        Verdict::Invalid => INVALID,
    })
}

fn unanchored(why: &str) -> String {
    format!(
        "NOT checked against an expected key ({why}): the recording is only shown to be consistent with the key it announces itself; pass --public-key"
    )
}

/// A recording without a manifest cannot show that segments are missing at its end; the
/// pod's status entry can: it names the last segment the sidecar shipped.
fn shipped_beyond(recording: &Recording, report: &Report) -> Option<String> {
    let pod = recording.status.as_ref()?;
    let claimed = parse_index(pod.last_shipped_segment.as_deref()?)?;
    let present = report
        .segments
        .iter()
        .filter_map(|s| s.index)
        .max()
        .unwrap_or(0);
    (claimed > present).then(|| {
        format!(
            "the AgentSession status says segment {claimed} was shipped, but the recording ends at segment {present}: segments were removed from its end"
        )
    })
}

fn print_report(recording: &Recording, report: &Report, extra: &[String], key: &str) -> Verdict {
    let sealed = report.segments.iter().filter(|s| s.sealed).count();
    let summary = format!(
        "{} segment(s), {} record(s), {sealed} sealed",
        report.segments.len(),
        report.records
    );
    let verdict = if !report.faults.is_empty() || !extra.is_empty() {
        Verdict::Invalid
    } else if report.completeness != Completeness::Complete {
        Verdict::Incomplete
    } else {
        Verdict::Ok
    };
    match verdict {
        Verdict::Ok => println!(
            "OK          {}: {summary}; every chain link, seal and the manifest verify",
            recording.label
        ),
        Verdict::Incomplete => match &report.completeness {
            Completeness::Unshipped(gap) => println!(
                "INCOMPLETE  {}: {summary}; closed by its signed manifest, which says {} sealed segment(s) (seq {}..={}) could not be shipped before the recorder's deadline: {}. What is there verifies.",
                recording.label,
                gap.len(),
                gap.first().map_or(0, |s| s.first_seq),
                gap.last().map_or(0, |s| s.last_seq),
                gap.iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => println!(
                "INCOMPLETE  {}: {summary}; no manifest.json yet (the session is live, or its recorder died before closing it). What is there verifies.",
                recording.label
            ),
        },
        Verdict::Invalid => println!(
            "INVALID     {}: {} fault(s) ({summary})",
            recording.label,
            report.faults.len() + extra.len()
        ),
    }
    println!("            {}", recording.url);
    if let Some(k) = &report.public_key {
        println!("            announced key {k}; {key}");
    }
    for s in report.segments.iter().filter(|s| s.recovered) {
        println!(
            "            note: {} was sealed on restart after a crash (see its gap record)",
            s.name
        );
    }
    for fault in &report.faults {
        println!("            FAULT {fault}");
    }
    for e in extra {
        println!("            FAULT {e}");
    }
    verdict
}
