//! `export --har FILE`: HAR 1.2 of every exchange; `export --jsonl FILE`: the records as
//! they are, byte for byte (so the chain can still be checked by hand). `-` is stdout.

use std::path::Path;

use anyhow::{Context, Result};
use cassette_recording::read::decode_segment;

use super::{Target, load, resolve_some};
use crate::filter::{Filter, hidden_note};
use crate::har;
use crate::locate::Access;
use crate::timeline::Timeline;

pub async fn har(access: &Access, target: &Target, filter: &Filter, out: &Path) -> Result<()> {
    let resolved = resolve_some(access, target).await?;
    let mut timelines = Vec::new();
    let mut hidden = 0;
    for recording in &resolved.recordings {
        let (records, warning) = load(recording).await?.records(&recording.label);
        if let Some(w) = warning {
            eprintln!(
                "warning: {}: reading stopped at an unreadable record ({w}); the export ends there",
                recording.label
            );
        }
        let narrowed = filter.narrow(&Timeline::build(&records));
        hidden += narrowed.hidden;
        timelines.push((recording.label.clone(), narrowed.timeline));
    }
    let comment = format!(
        "{} recorded by cassette; bodies are as recorded (secrets masked); verify with `kubectl cassette verify`",
        resolved.title()
    );
    let doc = har::document(&timelines, &comment);
    let entries = doc["log"]["entries"].as_array().map_or(0, Vec::len);
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    write_out(out, &bytes)?;
    if crate::output::closed() {
        return Ok(());
    }
    eprintln!(
        "wrote {entries} entr{} from {} recording(s) to {}{}",
        if entries == 1 { "y" } else { "ies" },
        timelines.len(),
        out.display(),
        if filter.is_active() {
            format!(
                "; filters: {}",
                hidden_note(hidden).unwrap_or_else(|| "no exchange hidden".into())
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

pub async fn jsonl(access: &Access, target: &Target, filter: &Filter, out: &Path) -> Result<()> {
    let resolved = resolve_some(access, target).await?;
    let mut bytes = Vec::new();
    let mut segments = 0;
    let mut hidden = 0;
    for recording in &resolved.recordings {
        let loaded = load(recording).await?;
        let left_out = loaded.objects.left_out(&loaded.report);
        if !left_out.is_empty() {
            eprintln!(
                "warning: {}: left out {}, which the recorder did not write (run `kubectl cassette verify`)",
                recording.label,
                left_out.join(", ")
            );
        }
        let mut text = Vec::new();
        for segment in &loaded.objects.segments {
            if left_out.contains(&segment.name.as_str()) {
                continue;
            }
            let segment_text =
                decode_segment(&segment.name, &segment.bytes).with_context(|| {
                    format!("{}/{}: cannot decompress", recording.label, segment.name)
                })?;
            text.extend_from_slice(&segment_text);
            segments += 1;
        }
        if filter.is_active() {
            let (kept, left) = filtered_lines(&text, filter, &recording.label)?;
            hidden += left;
            bytes.extend_from_slice(&kept);
        } else {
            bytes.extend_from_slice(&text);
        }
    }
    write_out(out, &bytes)?;
    if crate::output::closed() {
        return Ok(());
    }
    eprintln!(
        "wrote {segments} segment(s) of {} recording(s) to {}",
        resolved.recordings.len(),
        out.display()
    );
    if filter.is_active() {
        eprintln!(
            "filtered: {}; the lines kept are byte for byte as recorded, but the chain cannot be checked on a filtered file (export without filters for that)",
            hidden_note(hidden).unwrap_or_else(|| "no exchange hidden".into())
        );
    }
    Ok(())
}

/// The lines of a recording's records that the filter keeps, byte for byte, and how many
/// exchanges it left out. An exchange is judged on all its records, so it is read twice.
fn filtered_lines(text: &[u8], filter: &Filter, label: &str) -> Result<(Vec<u8>, usize)> {
    let mut records = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let record: cassette_recording::Record = serde_json::from_slice(line)
            .with_context(|| format!("{label} line {}: not a record", i + 1))?;
        records.push((line, record));
    }
    let mut timeline = Timeline::default();
    let keys: Vec<_> = records.iter().map(|(_, r)| timeline.take(r)).collect();
    let mut kept = Vec::new();
    for ((line, record), key) in records.iter().zip(&keys) {
        let shown = key.map(|k| {
            timeline
                .exchanges
                .get(&k)
                .is_some_and(|x| filter.exchange(x))
        });
        if filter.record(record, shown) {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        }
    }
    let hidden = timeline
        .exchanges
        .values()
        .filter(|x| !filter.exchange(x))
        .count();
    Ok((kept, hidden))
}

fn write_out(out: &Path, bytes: &[u8]) -> Result<()> {
    if out == Path::new("-") {
        crate::output::write_all(bytes);
        return Ok(());
    }
    std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))
}
