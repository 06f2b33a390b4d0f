//! `replay`: the session as it happened, one line per request, response, decision, refusal
//! and token swap, paced by the recorded times (`--speed`). `--follow` keeps polling the sink
//! for the segments a live recording ships until its `session_end`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use cassette_recording::Record;
use cassette_recording::read::decode_segment;
use cassette_recording::segment::{is_manifest_name, parse_index};
use tokio::time::Instant;

use super::{Target, load, resolve_some, single};
use crate::filter::{Filter, hidden_note};
use crate::locate::{Access, Recording};
use crate::render;
use crate::timeline::{ExchangeKey, Timeline, parse_time};

/// Sleeps so that records come out at their recorded pace, sped up by `speed` (0: no pacing).
struct Pacer {
    speed: f64,
    origin: Option<(jiff::Timestamp, Instant)>,
}

impl Pacer {
    fn new(speed: f64) -> Self {
        Pacer {
            speed,
            origin: None,
        }
    }

    async fn wait_for(&mut self, time: &str) {
        if self.speed <= 0.0 {
            return;
        }
        let Some(t) = parse_time(time) else { return };
        let (t0, wall0) = *self.origin.get_or_insert((t, Instant::now()));
        let recorded = t.duration_since(t0).as_secs_f64().max(0.0);
        let due = wall0 + Duration::from_secs_f64(recorded / self.speed);
        tokio::time::sleep_until(due).await;
    }
}

pub async fn run(
    access: &Access,
    target: &Target,
    filter: &Filter,
    speed: f64,
    follow: bool,
    interval: Duration,
) -> Result<()> {
    if !speed.is_finite() || speed < 0.0 {
        bail!("--speed must be 0 (no pacing) or a positive factor such as 10");
    }
    let resolved = resolve_some(access, target).await?;
    let mut pacer = Pacer::new(speed);
    if follow {
        let recording = single(&resolved, "replay --follow")?;
        let mut held = Held::new(filter);
        follow_one(recording, &mut pacer, interval, &mut held).await?;
        say_hidden(filter, held.hidden());
        return Ok(());
    }
    // Several pods: one timeline, merged by recorded time.
    let mut all: Vec<(jiff::Timestamp, String, Record)> = Vec::new();
    let mut hidden = 0;
    for recording in &resolved.recordings {
        let (records, warning) = load(recording).await?.records(&recording.label);
        if let Some(w) = warning {
            eprintln!(
                "warning: {}: reading stopped at an unreadable record ({w})",
                recording.label
            );
        }
        // Exchanges are judged on all their records: the timeline first, then the records.
        let mut timeline = Timeline::default();
        let keys: Vec<Option<ExchangeKey>> = records.iter().map(|r| timeline.take(r)).collect();
        hidden += timeline
            .exchanges
            .values()
            .filter(|x| !filter.exchange(x))
            .count();
        for (r, key) in records.into_iter().zip(keys) {
            let shown = key.map(|k| {
                timeline
                    .exchanges
                    .get(&k)
                    .is_some_and(|x| filter.exchange(x))
            });
            if !filter.record(&r, shown) {
                continue;
            }
            let t = parse_time(&r.time).unwrap_or_default();
            all.push((t, recording.label.clone(), r));
        }
    }
    all.sort_by_key(|a| a.0);
    for (_, pod, record) in &all {
        if crate::output::closed() {
            break;
        }
        if let Some(line) = render::replay_line(record, pod) {
            pacer.wait_for(&record.time).await;
            println!("{line}");
        }
    }
    say_hidden(filter, hidden);
    Ok(())
}

fn say_hidden(filter: &Filter, hidden: usize) {
    if filter.is_active() {
        eprintln!(
            "filters: {} (gaps and session events are always shown)",
            hidden_note(hidden).unwrap_or_else(|| "no exchange hidden".into())
        );
    }
}

/// What `replay --follow` holds back under filters: an exchange is judged when it ends (its
/// decision, status and classification are known then), so its lines come out together at
/// its end. Without filters nothing is held.
struct Held<'a> {
    filter: &'a Filter,
    timeline: Timeline,
    pending: std::collections::BTreeMap<ExchangeKey, Vec<Record>>,
    judged: std::collections::BTreeMap<ExchangeKey, bool>,
}

impl<'a> Held<'a> {
    fn new(filter: &'a Filter) -> Self {
        Held {
            filter,
            timeline: Timeline::default(),
            pending: Default::default(),
            judged: Default::default(),
        }
    }

    /// The records to print now, in recorded order, after taking in `record`.
    fn take(&mut self, record: Record) -> Vec<Record> {
        if !self.filter.is_active() {
            return vec![record];
        }
        let Some(key) = self.timeline.take(&record) else {
            let mut out = Vec::new();
            if matches!(record.event, cassette_recording::Event::SessionEnd(_)) {
                out = self.flush();
            }
            if self.filter.record(&record, None) {
                out.push(record);
            }
            return out;
        };
        if let Some(shown) = self.judged.get(&key) {
            return if *shown { vec![record] } else { Vec::new() };
        }
        let ends = matches!(record.event, cassette_recording::Event::ExchangeEnd(_));
        self.pending.entry(key).or_default().push(record);
        if ends { self.judge(key) } else { Vec::new() }
    }

    fn judge(&mut self, key: ExchangeKey) -> Vec<Record> {
        let shown = self
            .timeline
            .exchanges
            .get(&key)
            .is_some_and(|x| self.filter.exchange(x));
        self.judged.insert(key, shown);
        let held = self.pending.remove(&key).unwrap_or_default();
        if shown { held } else { Vec::new() }
    }

    /// Exchanges that never ended (cut off), judged on what was recorded of them.
    fn flush(&mut self) -> Vec<Record> {
        let keys: Vec<ExchangeKey> = self.pending.keys().copied().collect();
        let mut out: Vec<Record> = keys.into_iter().flat_map(|k| self.judge(k)).collect();
        out.sort_by_key(|r| r.seq);
        out
    }

    fn hidden(&self) -> usize {
        self.judged.values().filter(|shown| !**shown).count()
            + self
                .pending
                .keys()
                .filter(|k| {
                    !self
                        .timeline
                        .exchanges
                        .get(k)
                        .is_some_and(|x| self.filter.exchange(x))
                })
                .count()
    }
}

/// Whether a segment that just appeared in a live recording is the recorder's next one: it
/// chains on from the last record followed and ends with a seal (the recorder ships nothing
/// else; `verify` checks the signatures).
fn follows_on(text: &[u8], prev: &str) -> Option<String> {
    let mut lines = text.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let first = cassette_recording::chain::split_line(lines.next()?).ok()?;
    let last_line = lines.next_back().unwrap_or(first.body);
    let last = cassette_recording::chain::split_line(last_line).ok()?;
    let sealed = serde_json::from_slice::<Record>(last_line)
        .is_ok_and(|r| matches!(r.event, cassette_recording::Event::Seal(_)));
    (first.expected_chain(prev) == first.chain && sealed).then(|| last.chain.to_string())
}

async fn follow_one(
    recording: &Recording,
    pacer: &mut Pacer,
    interval: Duration,
    held: &mut Held<'_>,
) -> Result<()> {
    let mut next_index = 1u64;
    let mut prev = cassette_recording::chain::GENESIS.to_string();
    let mut left_out = std::collections::BTreeSet::new();
    loop {
        let listing = recording
            .sink
            .list(&recording.prefix)
            .await
            .with_context(|| format!("cannot list {}", recording.url))?;
        let mut fresh: Vec<(u64, String)> = listing
            .objects
            .iter()
            .map(|k| k[recording.prefix.len()..].to_string())
            .filter_map(|n| parse_index(&n).map(|ix| (ix, n)))
            .filter(|(ix, _)| *ix >= next_index)
            .collect();
        fresh.sort();
        let closed = listing
            .objects
            .iter()
            .any(|k| is_manifest_name(&k[recording.prefix.len()..]));
        for (ix, name) in fresh {
            if ix < next_index || left_out.contains(&name) {
                continue; // a second claim to a number already followed, or not the recorder's
            }
            if ix != next_index {
                eprintln!(
                    "warning: {}: segment {next_index} is missing; continuing with {name}",
                    recording.label
                );
            }
            let key = format!("{}{name}", recording.prefix);
            let Some(bytes) = recording.sink.get(&key).await? else {
                continue;
            };
            let text = decode_segment(&name, &bytes)
                .with_context(|| format!("{name}: cannot decompress"))?;
            let Some(head) = follows_on(&text, &prev) else {
                eprintln!(
                    "warning: {}: left out {name}, which does not follow on from the recording or has no seal: the recorder did not write it (run `kubectl cassette verify`)",
                    recording.label
                );
                left_out.insert(name);
                continue;
            };
            prev = head;
            for (i, line) in text.split(|b| *b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                let record: Record = serde_json::from_slice(line)
                    .with_context(|| format!("{name} line {}: not a record", i + 1))?;
                if crate::output::closed() {
                    return Ok(());
                }
                let end = matches!(record.event, cassette_recording::Event::SessionEnd(_));
                for record in held.take(record) {
                    if let Some(out) = render::replay_line(&record, &recording.label) {
                        pacer.wait_for(&record.time).await;
                        println!("{out}");
                    }
                }
                if end {
                    return Ok(());
                }
            }
            next_index = ix + 1;
        }
        if closed || crate::output::closed() {
            // A closed recording without session_end: what filters held is judged now.
            for record in held.flush() {
                if let Some(out) = render::replay_line(&record, &recording.label) {
                    pacer.wait_for(&record.time).await;
                    println!("{out}");
                }
            }
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}
