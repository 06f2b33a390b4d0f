//! `search --secret-file F`: which exchanges carried the secret(s) in F. The key comes from
//! the Secret named in `spec.masking.fingerprintKey` (read with the auditor's own
//! credentials) or `--key-file`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Target, resolve_some, timeline_of};
use crate::locate::Access;
use crate::render::{clock, printable};
use crate::search::{candidates, fingerprint, search};

/// Exit codes of `search`.
pub const FOUND: i32 = 0;
pub const NOT_FOUND: i32 = 1;

pub async fn run(
    access: &Access,
    target: &Target,
    secret_file: &Path,
    key_file: Option<&Path>,
) -> Result<i32> {
    let file = std::fs::read(secret_file)
        .with_context(|| format!("cannot read {}", secret_file.display()))?;
    let candidates = candidates(&file);
    if candidates.is_empty() {
        bail!(
            "{} holds no candidate secret (it is empty)",
            secret_file.display()
        );
    }
    let resolved = resolve_some(access, target).await?;
    let key = match key_file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let (Some(session), Some(cluster)) = (&resolved.session, &resolved.cluster) else {
                bail!("without an AgentSession to name the fingerprint key, pass --key-file");
            };
            let Some(secret) = session
                .spec
                .masking
                .as_ref()
                .and_then(|m| m.fingerprint_key.as_ref())
            else {
                bail!(
                    "{} sets no spec.masking.fingerprintKey, so each pod fingerprinted with a key of its own that never left it; such masks cannot be searched (pass --key-file if you hold the key)",
                    resolved.title()
                );
            };
            cluster.secret_key(&secret.name, &secret.key).await?
        }
    };
    let wanted: Vec<(String, String)> = candidates
        .iter()
        .map(|c| (c.source.clone(), fingerprint(&key, &c.value)))
        .collect();
    println!(
        "searching {} for {} candidate secret(s) from {}:",
        resolved.title(),
        wanted.len(),
        secret_file.display()
    );
    for (source, fp) in &wanted {
        println!("  {fp}  {}", printable(source, false));
    }
    let mut total = 0;
    for recording in &resolved.recordings {
        let (timeline, _) = timeline_of(recording).await?;
        let found = search(&timeline, &wanted);
        total += found.len();
        println!();
        println!(
            "recording {}: {} match(es) in {} exchange(s)",
            recording.label,
            found.len(),
            timeline.exchanges.len()
        );
        for f in &found {
            println!(
                "  {}  #{:<4} {:<8} {:<8} {}{}  in {} ({}, {}) — candidate {}",
                clock(&f.time),
                f.exchange,
                f.direction,
                printable(&f.method, false),
                printable(&f.host, false),
                printable(&f.path, false),
                f.place,
                if f.direction == "request" {
                    "sent by the agent"
                } else {
                    "seen by the agent"
                },
                f.detector,
                printable(&f.candidate, false),
            );
        }
    }
    Ok(if total > 0 { FOUND } else { NOT_FOUND })
}
