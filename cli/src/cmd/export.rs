//! `export --har FILE`: HAR 1.2 of every exchange; `export --jsonl FILE`: the records as
//! they are, byte for byte (so the chain can still be checked by hand). `-` is stdout.

use std::path::Path;

use anyhow::{Context, Result};
use cassette_recording::read::decode_segment;

use super::{Target, records_of, resolve_some};
use crate::har;
use crate::locate::Access;
use crate::timeline::Timeline;

pub async fn har(access: &Access, target: &Target, out: &Path) -> Result<()> {
    let resolved = resolve_some(access, target).await?;
    let mut timelines = Vec::new();
    for recording in &resolved.recordings {
        let objects = recording.load().await?;
        let (records, warning) = records_of(&objects);
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
        let objects = recording.load().await?;
        for segment in &objects.segments {
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
