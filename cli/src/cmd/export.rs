//! `export --har FILE`: HAR 1.2 of every exchange; `export --jsonl FILE`: the records as
//! they are, byte for byte (so the chain can still be checked by hand). `-` is stdout.

use std::path::Path;

use anyhow::{Context, Result};
use cassette_recording::read::decode_segment;

use super::{Target, load, resolve_some};
use crate::har;
use crate::locate::Access;
use crate::timeline::Timeline;

pub async fn har(access: &Access, target: &Target, out: &Path) -> Result<()> {
    let resolved = resolve_some(access, target).await?;
    let mut timelines = Vec::new();
    for recording in &resolved.recordings {
        let (records, warning) = load(recording).await?.records(&recording.label);
        if let Some(w) = warning {
            eprintln!(
                "warning: {}: reading stopped at an unreadable record ({w}); the export ends there",
                recording.label
            );
        }
        timelines.push((recording.label.clone(), Timeline::build(&records)));
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
        "wrote {entries} entr{} from {} recording(s) to {}",
        if entries == 1 { "y" } else { "ies" },
        timelines.len(),
        out.display()
    );
    Ok(())
}

pub async fn jsonl(access: &Access, target: &Target, out: &Path) -> Result<()> {
    let resolved = resolve_some(access, target).await?;
    let mut bytes = Vec::new();
    let mut segments = 0;
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
        for segment in &loaded.objects.segments {
            if left_out.contains(&segment.name.as_str()) {
                continue;
            }
            let text = decode_segment(&segment.name, &segment.bytes).with_context(|| {
                format!("{}/{}: cannot decompress", recording.label, segment.name)
            })?;
            bytes.extend_from_slice(&text);
            segments += 1;
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
    Ok(())
}

fn write_out(out: &Path, bytes: &[u8]) -> Result<()> {
    if out == Path::new("-") {
        crate::output::write_all(bytes);
        return Ok(());
    }
    std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))
}
