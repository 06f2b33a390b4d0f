//! `verify`: every recording of a session checked with `cassette_recording::verify_expecting`
//! against a key the auditor trusts — the pod's key in the AgentSession status, or one pinned
//! with `--public-key` — and against the place it sits at, plus what only the status can
//! tell: a pod that reported shipping segments that are not in the sink. A recording checked
//! only against the key it announces itself is UNCHECKED, never OK: anyone can make a key
//! and sign a recording with it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cassette_recording::segment::parse_index;
use cassette_recording::{Completeness, Expected, Place, Report};

use super::{Target, resolve};
use crate::locate::{Access, Recording};
use crate::machine::{self, Format};

/// Exit codes of `verify` (main.rs documents them in `--help`; 3 is every command's).
pub const OK: i32 = 0;
pub const INVALID: i32 = 1;
pub const INCOMPLETE: i32 = 2;
pub const UNCHECKED: i32 = 4;

/// The verdict on one recording, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Ok,
    Incomplete,
    Unchecked,
    Invalid,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Incomplete => "INCOMPLETE",
            Verdict::Unchecked => "UNCHECKED",
            Verdict::Invalid => "INVALID",
        }
    }

    fn code(self) -> i32 {
        match self {
            Verdict::Ok => OK,
            Verdict::Incomplete => INCOMPLETE,
            Verdict::Unchecked => UNCHECKED,
            Verdict::Invalid => INVALID,
        }
    }
}

/// Keys pinned with `--public-key`: the key itself (standard base64 of 32 bytes), or a file
/// holding one or more, separated by white space (as `kubectl get agentsession S -o
/// jsonpath='{.status.pods[*].publicKey}'` prints them).
struct Pinned {
    keys: Vec<Vec<u8>>,
    shown: String,
}

fn pinned(arg: &str) -> Result<Pinned> {
    let path = Path::new(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --public-key {}", path.display()))?;
        let mut keys = Vec::new();
        for word in text.split_whitespace() {
            match cassette_recording::key::decode_public_key(word) {
                Some(k) => keys.push(k),
                None => bail!(
                    "--public-key {}: {word:?} is not a public key (standard base64 of 32 bytes)",
                    path.display()
                ),
            }
        }
        if keys.is_empty() {
            bail!("--public-key {} holds no key", path.display());
        }
        return Ok(Pinned {
            keys,
            shown: format!("--public-key {}", path.display()),
        });
    }
    match cassette_recording::key::decode_public_key(arg.trim()) {
        Some(k) => Ok(Pinned {
            keys: vec![k],
            shown: "--public-key".to_string(),
        }),
        None => bail!(
            "--public-key {arg:?} is neither a public key (standard base64 of 32 bytes) nor a file"
        ),
    }
}

pub async fn run(
    access: &Access,
    target: &Target,
    public_key: Option<&str>,
    format: Option<Format>,
) -> Result<i32> {
    let text = format.is_none();
    macro_rules! say {
        ($($arg:tt)*) => {
            if text {
                println!($($arg)*)
            }
        };
    }
    let pinned = public_key.map(pinned).transpose()?;
    let resolved = resolve(access, target).await?;
    let mut out = machine::VerifyOutput {
        target: resolved.title(),
        ..Default::default()
    };
    let mut worst = Verdict::Ok;
    let mut counts = [0usize; 4];

    // Pods the status knows that have no recording in the sink.
    if let Some(session) = &resolved.session {
        let pods = session.status.iter().flat_map(|s| s.pods.iter());
        for pod in pods {
            if !target.pod.is_empty() && !target.pod.contains(&pod.name) {
                continue;
            }
            let found = resolved
                .recordings
                .iter()
                .any(|r| r.status.as_ref().is_some_and(|s| s.name == pod.name));
            if found {
                continue;
            }
            let (verdict, message) = match &pod.last_shipped_segment {
                Some(seg) => (
                    Verdict::Invalid,
                    format!(
                        "the AgentSession status says it shipped {seg}, but no recording of it is under {}",
                        resolved.uri
                    ),
                ),
                None => (
                    Verdict::Incomplete,
                    format!("nothing shipped yet (no recording under {})", resolved.uri),
                ),
            };
            say!("{:<11} pod {}: {message}", verdict.word(), pod.name);
            out.pods.push(machine::PodVerdict {
                pod: pod.name.clone(),
                verdict: verdict.word(),
                message,
            });
            counts[verdict as usize] += 1;
            worst = worst.max(verdict);
        }
    }
    if resolved.recordings.is_empty() && counts.iter().sum::<usize>() == 0 {
        if resolved.session.is_some() {
            let message = format!(
                "no recording under {} yet (no pod has shipped a segment)",
                resolved.uri
            );
            say!("INCOMPLETE  {message}");
            if let Some(format) = format {
                out.verdict = Verdict::Incomplete.word();
                out.exit_code = INCOMPLETE;
                out.pods.push(machine::PodVerdict {
                    pod: String::new(),
                    verdict: Verdict::Incomplete.word(),
                    message,
                });
                machine::print(format, &out)?;
            }
            return Ok(INCOMPLETE);
        }
        bail!("no recording found under {}", resolved.uri);
    }

    for recording in &resolved.recordings {
        let objects = recording.load().await?;
        let (keys, key_source) = match (&pinned, &recording.status) {
            (Some(p), _) => (p.keys.clone(), Some(format!("checked against {}", p.shown))),
            (None, Some(pod)) => match pod.public_key.as_deref() {
                Some(b64) => match cassette_recording::key::decode_public_key(b64) {
                    Some(raw) => (
                        vec![raw],
                        Some(format!(
                            "checked against the AgentSession status (pods[{}].publicKey)",
                            pod.name
                        )),
                    ),
                    None => bail!(
                        "the AgentSession status has an unreadable publicKey for pod {}: {b64:?}",
                        pod.name
                    ),
                },
                None => (Vec::new(), None),
            },
            (None, None) => (Vec::new(), None),
        };
        let why_unchecked = match (&pinned, &recording.status) {
            (None, Some(_)) => "its status entry has no publicKey",
            (None, None) if resolved.session.is_some() => {
                "the AgentSession status does not list this pod"
            }
            _ => "no --public-key was given",
        };
        let expected = Expected {
            keys,
            place: Place::of(&recording.url),
        };
        let report = cassette_recording::verify_expecting(&objects, &expected);
        let mut extra = Vec::new();
        if let Some(claim) = shipped_beyond(recording, &report) {
            extra.push(claim);
        }
        let (verdict, structured) = print_report(
            recording,
            &report,
            &extra,
            key_source.as_deref(),
            why_unchecked,
            text,
        );
        out.recordings.push(structured);
        counts[verdict as usize] += 1;
        worst = worst.max(verdict);
    }
    if let Some(format) = format {
        out.verdict = worst.word();
        out.exit_code = worst.code();
        machine::print(format, &out)?;
        return Ok(worst.code());
    }
    println!(
        "{}: {} ok, {} incomplete, {} invalid, {} unchecked",
        resolved.title(),
        counts[Verdict::Ok as usize],
        counts[Verdict::Incomplete as usize],
        counts[Verdict::Invalid as usize],
        counts[Verdict::Unchecked as usize],
    );
    Ok(worst.code())
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

fn print_report(
    recording: &Recording,
    report: &Report,
    extra: &[String],
    key: Option<&str>,
    why_unchecked: &str,
    text: bool,
) -> (Verdict, machine::RecordingVerdict) {
    macro_rules! say {
        ($($arg:tt)*) => {
            if text {
                println!($($arg)*)
            }
        };
    }
    let sealed = report.segments.iter().filter(|s| s.sealed).count();
    let summary = format!(
        "{} segment(s), {} record(s), {sealed} sealed",
        report.segments.len(),
        report.records
    );
    let verdict = if !report.faults.is_empty() || !extra.is_empty() {
        Verdict::Invalid
    } else if key.is_none() {
        Verdict::Unchecked
    } else if report.completeness != Completeness::Complete {
        Verdict::Incomplete
    } else {
        Verdict::Ok
    };
    match verdict {
        Verdict::Ok => say!(
            "OK          {}: {summary}; every chain link, seal and the manifest verify",
            recording.label
        ),
        Verdict::Unchecked => say!(
            "UNCHECKED   {}: {summary}; it holds together, but only against the key it announces itself, and anyone can make a key and sign a recording with it ({why_unchecked}): pass --public-key with the key the pod's sidecar published",
            recording.label
        ),
        Verdict::Incomplete => match &report.completeness {
            Completeness::Unshipped(gap) => say!(
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
            _ => say!(
                "INCOMPLETE  {}: {summary}; no manifest.json yet (the session is live, or its recorder died before closing it). What is there verifies.",
                recording.label
            ),
        },
        Verdict::Invalid => say!(
            "INVALID     {}: {} fault(s) ({summary})",
            recording.label,
            report.faults.len() + extra.len()
        ),
    }
    say!("            {}", recording.url);
    if let Some(m) = report.manifest.as_deref().filter(|m| *m != "manifest.json") {
        say!(
            "            closed by {m}: the recorder wrote its manifest there because manifest.json was taken"
        );
    }
    if let Some(k) = &report.public_key {
        match key {
            Some(source) => say!("            announced key {k}; {source}"),
            None => say!("            announced key {k}; NOT checked against a key you trust"),
        }
    }
    if verdict == Verdict::Unchecked && report.completeness != Completeness::Complete {
        say!("            and it is not closed by a signed manifest");
    }
    for s in report.segments.iter().filter(|s| s.recovered) {
        say!(
            "            note: {} was sealed on restart after a crash (see its gap record)",
            s.name
        );
    }
    for (copy, listed) in &report.copies {
        say!(
            "            note: {copy} is byte for byte {listed} (an upload whose answer was lost, shipped again under a new name)"
        );
    }
    for fault in &report.faults {
        say!("            FAULT {fault}");
    }
    for e in extra {
        say!("            FAULT {e}");
    }
    let structured = machine::RecordingVerdict {
        pod: recording.label.clone(),
        url: recording.url.clone(),
        verdict: verdict.word(),
        segments: report.segments.len(),
        records: report.records,
        sealed,
        completeness: match &report.completeness {
            Completeness::Complete => "complete",
            Completeness::Open => "open",
            Completeness::Unshipped(_) => "unshipped",
        },
        unshipped: match &report.completeness {
            Completeness::Unshipped(gap) => gap.iter().map(|s| s.name.clone()).collect(),
            _ => Vec::new(),
        },
        announced_key: report.public_key.clone(),
        key_source: key.map(str::to_string),
        manifest: report.manifest.clone(),
        faults: report
            .faults
            .iter()
            .map(|f| f.to_string())
            .chain(extra.iter().cloned())
            .collect(),
        notes: report
            .segments
            .iter()
            .filter(|s| s.recovered)
            .map(|s| format!("{} was sealed on restart after a crash (see its gap record)", s.name))
            .chain(report.copies.iter().map(|(copy, listed)| {
                format!("{copy} is byte for byte {listed} (an upload whose answer was lost, shipped again under a new name)")
            }))
            .collect(),
    };
    (verdict, structured)
}
