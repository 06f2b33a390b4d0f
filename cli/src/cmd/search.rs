//! `search --secret-file F`: which exchanges carried the secret(s) in F; `search --body-file
//! F`: which recorded bodies were F, stored or not. The key comes from the Secret named in
//! `spec.masking.fingerprintKey`, or the operator's `cassette-fingerprint-<session>` when the
//! session names none (read with the auditor's own credentials), or `--key-file`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cassette_recording::body::{body_digest, digest_key_id};
use cassette_rules::mask::{BodyKind, Masker};

use super::{Resolved, Target, resolve_some, timeline_of};
use crate::filter::{Filter, hidden_note};
use crate::locate::Access;
use crate::machine::{self, Format, SearchOutput};
use crate::render::{clock, printable};
use crate::search::{body_matches, candidates, fingerprint, in_clear, search};
use crate::timeline::{Item, Timeline};

/// `println!` for text output only (`-o json|yaml` prints the gathered result at the end).
macro_rules! say {
    ($text:expr, $($arg:tt)*) => {
        if $text {
            println!($($arg)*)
        }
    };
}

/// Exit codes of `search`.
pub const FOUND: i32 = 0;
pub const NOT_FOUND: i32 = 1;

/// What to look for.
pub struct Candidates<'a> {
    pub secret_file: Option<&'a Path>,
    pub body_file: Option<&'a Path>,
}

pub async fn run(
    access: &Access,
    target: &Target,
    filter: &Filter,
    what: Candidates<'_>,
    key_file: Option<&Path>,
    format: Option<Format>,
) -> Result<i32> {
    let text = format.is_none();
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let secrets = what.secret_file.map(read).transpose()?;
    let body = what.body_file.map(read).transpose()?;
    let resolved = resolve_some(access, target).await?;
    let key = match key_file {
        Some(path) => read(path)?,
        None => session_key(&resolved).await?,
    };
    let mut total = 0;
    let mut out = SearchOutput {
        target: resolved.title(),
        ..Default::default()
    };
    if let (Some(file), Some(path)) = (&secrets, what.secret_file) {
        total += search_secrets(&resolved, filter, file, path, &key, text, &mut out).await?;
    }
    if let (Some(file), Some(path)) = (&body, what.body_file) {
        total += search_bodies(&resolved, filter, file, path, &key, text, &mut out).await?;
    }
    if let Some(format) = format {
        out.found = total > 0;
        machine::print(format, &out)?;
    }
    Ok(if total > 0 { FOUND } else { NOT_FOUND })
}

/// The fingerprint key from the Secret the AgentSession names, or the one the operator made
/// for it.
async fn session_key(resolved: &Resolved) -> Result<Vec<u8>> {
    let (Some(session), Some(cluster)) = (&resolved.session, &resolved.cluster) else {
        bail!("without an AgentSession to name the fingerprint key, pass --key-file");
    };
    let secret = session.fingerprint_key();
    cluster.secret_key(&secret.name, &secret.key).await
}

/// The labels of the exchanges the filter shows, and a line saying how many it hid; `None`
/// without filters. A match outside any exchange (a DNS name, a session record) is always
/// reported: a filter must not hide a secret that crossed the session.
fn shown_labels(filter: &Filter, timeline: &Timeline) -> Option<(BTreeSet<String>, String)> {
    filter.is_active().then(|| {
        let narrowed = filter.narrow(timeline);
        let labels = narrowed
            .timeline
            .exchanges
            .values()
            .map(|x| x.label.clone())
            .collect();
        let note = hidden_note(narrowed.hidden).unwrap_or_else(|| "no exchange hidden".into());
        (
            labels,
            format!("  filters: {note} (matches outside any exchange are always reported)"),
        )
    })
}

/// The structured entry of a recording, made on first use (a search for secrets and bodies
/// both report into it).
fn recording_entry<'a>(
    out: &'a mut SearchOutput,
    label: &str,
    timeline: &Timeline,
    labels: &Option<(BTreeSet<String>, String)>,
) -> &'a mut machine::SearchRecording {
    let at = match out.recordings.iter().position(|r| r.pod == label) {
        Some(at) => at,
        None => {
            out.recordings.push(machine::SearchRecording {
                pod: label.to_string(),
                exchanges: timeline.exchanges.len(),
                hidden_by_filters: labels
                    .as_ref()
                    .map(|(l, _)| timeline.exchanges.len() - l.len()),
                ..Default::default()
            });
            out.recordings.len() - 1
        }
    };
    &mut out.recordings[at]
}

fn shown(labels: &Option<(BTreeSet<String>, String)>, exchange: &str) -> bool {
    exchange == "-" || labels.as_ref().is_none_or(|(l, _)| l.contains(exchange))
}

async fn search_secrets(
    resolved: &Resolved,
    filter: &Filter,
    file: &[u8],
    path: &Path,
    key: &[u8],
    text: bool,
    out: &mut SearchOutput,
) -> Result<usize> {
    let candidates = candidates(file);
    if candidates.is_empty() {
        bail!("{} holds no candidate secret (it is empty)", path.display());
    }
    let wanted: Vec<(String, String)> = candidates
        .iter()
        .map(|c| (c.source.clone(), fingerprint(key, &c.value)))
        .collect();
    say!(
        text,
        "searching {} for {} candidate secret(s) from {}:",
        resolved.title(),
        wanted.len(),
        path.display()
    );
    for (source, fp) in &wanted {
        say!(text, "  {fp}  {}", printable(source, false));
        out.candidates.push(machine::Candidate {
            source: source.clone(),
            fingerprint: fp.clone(),
        });
    }
    let values: Vec<(String, Vec<u8>)> = candidates
        .iter()
        .map(|c| (c.source.clone(), c.value.clone()))
        .collect();
    let mut total = 0;
    for recording in &resolved.recordings {
        let (timeline, loaded) = timeline_of(recording).await?;
        let (records, _) = loaded.records(&recording.label);
        let labels = shown_labels(filter, &timeline);
        let mut found = search(&timeline, &records, &wanted);
        let (mut clear, unsearched) = in_clear(&timeline, &records, &values);
        found.retain(|f| shown(&labels, &f.exchange));
        clear.retain(|c| shown(&labels, c.exchange.as_deref().unwrap_or("-")));
        total += found.len() + clear.len();
        let entry = recording_entry(out, &recording.label, &timeline, &labels);
        entry
            .matches
            .extend(found.iter().map(|f| machine::SecretMatch {
                exchange: f.exchange.clone(),
                time: f.time.clone(),
                direction: f.direction,
                method: f.method.clone(),
                host: f.host.clone(),
                path: f.path.clone(),
                place: f.place.to_string(),
                detector: f.detector.clone(),
                candidate: f.candidate.clone(),
                fingerprint: f.fingerprint.clone(),
            }));
        entry
            .stored_in_clear
            .extend(clear.iter().map(|c| machine::InClear {
                seq: c.seq,
                time: c.time.clone(),
                kind: c.kind.clone(),
                exchange: c.exchange.clone(),
                field: c.field.clone(),
                candidate: c.candidate.clone(),
            }));
        entry.not_searched = machine::NotSearched {
            truncated_bodies: unsearched.truncated_bodies,
            undecoded_bodies: unsearched.undecoded_bodies,
            unread_packs: unsearched.unread_packs,
            damaged_bodies: unsearched.damaged_bodies,
        };
        say!(text,);
        say!(
            text,
            "recording {}: {} match(es) in {} exchange(s)",
            recording.label,
            found.len(),
            timeline.exchanges.len()
        );
        if let Some((_, note)) = &labels {
            say!(text, "{note}");
        }
        for f in &found {
            say!(
                text,
                "  {}  #{:<4} {:<8} {:<8} {}{}  in {} ({}, {}) — candidate {}",
                clock(&f.time),
                f.exchange,
                f.direction,
                printable(&f.method, false),
                printable(&f.host, false),
                printable(&f.path, false),
                f.place,
                match f.direction {
                    "request" => "sent by the agent",
                    "response" => "seen by the agent",
                    _ => "recorded",
                },
                f.detector,
                printable(&f.candidate, false),
            );
        }
        if clear.is_empty() {
            say!(
                text,
                "  stored in clear: nowhere (every record, header and stored body searched)"
            );
        } else {
            say!(
                text,
                "  STORED IN CLEAR (no detector masked it): {} place(s)",
                clear.len()
            );
        }
        for c in &clear {
            say!(
                text,
                "  {}  {:<6} seq {:<6} {:<10} {} — candidate {}",
                clock(&c.time),
                c.exchange
                    .as_deref()
                    .map(|e| format!("#{e}"))
                    .unwrap_or_else(|| "-".into()),
                c.seq,
                c.kind,
                printable(&c.field, false),
                printable(&c.candidate, false),
            );
        }
        if !unsearched.is_empty() {
            say!(
                text,
                "  not searched (a \"no\" above does not cover these):"
            );
        }
        if unsearched.truncated_bodies > 0 {
            say!(
                text,
                "    the unstored rest of {} body(ies) longer than maxBodyBytes (only their \
                 digest is kept: try --body-file with the whole body)",
                unsearched.truncated_bodies
            );
        }
        if unsearched.undecoded_bodies > 0 {
            say!(
                text,
                "    {} body(ies) in a content encoding the recorder did not decode, or that \
                 broke partway (stored as sent from there)",
                unsearched.undecoded_bodies
            );
        }
        if unsearched.unread_packs > 0 {
            say!(
                text,
                "    the objects after the break of {} git pack(s) that could not be read to \
                 their end",
                unsearched.unread_packs
            );
        }
        if unsearched.damaged_bodies > 0 {
            say!(
                text,
                "    {} body(ies) whose pieces do not fit together (run verify)",
                unsearched.damaged_bodies
            );
        }
    }
    Ok(total)
}

/// The `digest_key_id` of each recorder run (1-based, as the timeline counts them).
fn run_key_ids(timeline: &Timeline) -> Vec<(u32, Option<String>)> {
    timeline
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Start { start, .. } => Some(start.digest_key_id.clone()),
            _ => None,
        })
        .zip(1u32..)
        .map(|(id, run)| (run, id))
        .collect()
}

async fn search_bodies(
    resolved: &Resolved,
    filter: &Filter,
    file: &[u8],
    path: &Path,
    key: &[u8],
    text: bool,
    out: &mut SearchOutput,
) -> Result<usize> {
    // What the sidecar would have recorded for this file: the bytes as they are, or with
    // their secrets masked (JSON bodies also by field), under the session's masking.
    let masking = resolved
        .session
        .as_ref()
        .and_then(|s| s.spec.masking.as_ref());
    let masker = Masker::new(masking, key)
        .map_err(|e| anyhow::anyhow!("cannot build the session's masking: {e}"))?;
    let mut wanted = vec![("as it is".to_string(), body_digest(key, file))];
    for kind in [BodyKind::Json, BodyKind::Other] {
        let (masked, summary) = masker.mask(kind, file);
        let digest = body_digest(key, &masked);
        if summary.total() > 0 && !wanted.iter().any(|(_, d)| *d == digest) {
            wanted.push((
                format!("after masking {} secret(s)", summary.total()),
                digest,
            ));
        }
    }
    let ours = digest_key_id(key);
    say!(
        text,
        "searching {} for the body in {} ({} bytes){}:",
        resolved.title(),
        path.display(),
        file.len(),
        if masking.is_none() && resolved.session.is_none() {
            ", masked with the built-in detectors (no AgentSession to read spec.masking from)"
        } else {
            ""
        }
    );
    // Which runs of which recording use the key given: a key that fits none is a mistake
    // to say, not a "no match".
    let mut timelines = Vec::new();
    let mut checked_any = false;
    let mut foreign_ids = BTreeSet::new();
    for recording in &resolved.recordings {
        let (timeline, _) = timeline_of(recording).await?;
        let runs = run_key_ids(&timeline);
        // Bodies of a run are digested with the key its session_start names; a run that
        // names none (recorded before digest_key_id) used a per-pod key that never left it.
        let usable: BTreeSet<u32> = runs
            .iter()
            .filter(|(_, id)| id.as_deref() == Some(ours.as_str()))
            .map(|(run, _)| *run)
            .collect();
        for (run, id) in &runs {
            match id {
                Some(id) if *id != ours => {
                    foreign_ids.insert(id.clone());
                }
                None => eprintln!(
                    "warning: {}: recorder run {run} does not name its digest key (recorded before digest_key_id): its body digests cannot be checked by anyone",
                    recording.label
                ),
                _ => {}
            }
        }
        checked_any |= !usable.is_empty();
        timelines.push((recording, timeline, usable));
    }
    if !checked_any && !foreign_ids.is_empty() {
        bail!(
            "the key given is not the key this recording's bodies are digested with (digest_key_id {}, the key given has {ours}): use the session's fingerprint key",
            foreign_ids.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let mut total = 0;
    for (recording, timeline, usable) in &timelines {
        let labels = shown_labels(filter, timeline);
        let mut found = body_matches(timeline, &wanted, |run| usable.contains(&run));
        found.retain(|m| shown(&labels, &m.exchange));
        total += found.len();
        let entry = recording_entry(out, &recording.label, timeline, &labels);
        entry
            .body_matches
            .extend(found.iter().map(|m| machine::BodyMatch {
                exchange: m.exchange.clone(),
                time: m.time.clone(),
                direction: m.direction,
                method: m.method.clone(),
                host: m.host.clone(),
                path: m.path.clone(),
                length: m.length,
                stored: m.stored,
                how: m.how.clone(),
            }));
        say!(text,);
        say!(
            text,
            "recording {}: {} match(es) in {} exchange(s)",
            recording.label,
            found.len(),
            timeline.exchanges.len()
        );
        if let Some((_, note)) = &labels {
            say!(text, "{note}");
        }
        for m in &found {
            say!(
                text,
                "  {}  #{:<4} {} body  {:<8} {}{}  ({} bytes, {} stored; {}) — matches {}",
                clock(&m.time),
                m.exchange,
                m.direction,
                printable(&m.method, false),
                printable(&m.host, false),
                printable(&m.path, false),
                m.length,
                m.stored,
                if m.direction == "request" {
                    "sent by the agent"
                } else {
                    "seen by the agent"
                },
                m.how,
            );
        }
    }
    Ok(total)
}
