//! Text for the terminal: the timeline table of `show`, one exchange in full for
//! `show --exchange N`, and the lines `replay` prints as records arrive. Pure: strings in,
//! strings out. Everything recorded came from an agent or an upstream, so control characters
//! are made visible before they reach the auditor's terminal.

use std::fmt::Write as _;

use cassette_recording::Record;
use cassette_recording::record::{
    Blocked, Decision, Direction, Event, ExchangeEnd, Git, Placeholder, Review, ReviewState, Token,
    TokenSwap,
};

use crate::search::masks_in;
use crate::timeline::{BodyData, Exchange, Item, Timeline};

/// Replaces control characters (escape sequences, carriage returns, …) with visible escapes;
/// newlines and tabs are kept when `multiline`.
pub fn printable(text: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' if multiline => out.push(c),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `12:00:00.250` from an RFC 3339 time (the date is in the header).
pub fn clock(time: &str) -> String {
    match crate::timeline::parse_time(time) {
        Some(t) => t.strftime("%H:%M:%S%.3f").to_string(),
        None => printable(time, false),
    }
}

/// A duration in microseconds, short: `850µs`, `12.3ms`, `1.20s`.
pub fn duration_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// A byte count, short: `512B`, `1.5KiB`, `3.0MiB`.
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if n < 1024 {
        format!("{n}B")
    } else if f < K * K {
        format!("{:.1}KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1}MiB", f / (K * K))
    } else {
        format!("{:.1}GiB", f / (K * K * K))
    }
}

fn cut(text: &str, max: usize) -> String {
    let text = printable(text, false);
    if text.chars().count() <= max {
        return text;
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

pub fn decision_word(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::Review => "review",
        Decision::Passthrough => "passthrough",
    }
}

/// `allow`, `deny (no-push-main)`, …; `-` while the exchange has no end record.
pub fn decision(x: &Exchange) -> String {
    match &x.end {
        Some(end) => match &end.rule {
            Some(rule) => format!("{} ({rule})", decision_word(end.decision)),
            None => decision_word(end.decision).to_string(),
        },
        None if !x.blocked.is_empty() => "deny".into(),
        None => "-".into(),
    }
}

/// The Google permission, else the service, else the git service.
pub fn classification(end: Option<&ExchangeEnd>) -> String {
    let Some(c) = end.and_then(|e| e.classification.as_ref()) else {
        return String::new();
    };
    c.permission
        .clone()
        .or_else(|| c.service.clone())
        .or_else(|| c.git_service.as_ref().map(|g| format!("git {g}")))
        .unwrap_or_default()
}

/// Masks in the exchange: the count the sidecar recorded, else the masks found in it.
pub fn masked(x: &Exchange) -> u64 {
    if let Some(end) = &x.end {
        return end.masked;
    }
    let heads = x
        .request
        .iter()
        .flat_map(|r| {
            r.headers
                .iter()
                .map(|(_, v)| v.as_str())
                .chain([r.path.as_str()])
        })
        .chain(
            x.response
                .iter()
                .flat_map(|r| r.headers.iter().map(|(_, v)| v.as_str())),
        )
        .map(|t| masks_in(t).len())
        .sum::<usize>();
    let bodies = [&x.request_body, &x.response_body]
        .iter()
        .map(|b| masks_in(&String::from_utf8_lossy(&b.bytes)).len())
        .sum::<usize>();
    (heads + bodies) as u64
}

fn token_note(t: &Token) -> String {
    let how = match t.swap {
        TokenSwap::Bearer => "bearer",
        TokenSwap::GitBasic => "git password",
        TokenSwap::Token => "token",
        TokenSwap::Header => "header",
    };
    match (&t.credential, &t.account) {
        (Some(c), _) => format!("credential {c} swapped ({how})"),
        (None, Some(a)) => format!("token swapped ({how}, {a})"),
        (None, None) => format!("token swapped ({how})"),
    }
}

fn git_note(g: &Git) -> String {
    if g.updates.is_empty() {
        return format!("git {}: {} want(s)", g.service, g.wants.len());
    }
    let updates: Vec<String> = g
        .updates
        .iter()
        .map(|u| format!("{} {}→{}", u.name, short_oid(&u.old), short_oid(&u.new)))
        .collect();
    format!("git {}: {}", g.service, updates.join(", "))
}

fn short_oid(oid: &str) -> &str {
    oid.get(..10).unwrap_or(oid)
}

fn review_note(r: &Review) -> String {
    let state = match r.state {
        ReviewState::Pending => "pending",
        ReviewState::Approved => "approved",
        ReviewState::Denied => "denied",
        ReviewState::TimedOut => "timed out",
    };
    match &r.by {
        Some(by) => format!("review {} {state} by {by}", r.id),
        None => format!("review {} {state}", r.id),
    }
}

fn blocked_note(b: &Blocked) -> String {
    match &b.rule {
        Some(rule) => format!("BLOCKED {} ({rule}): {}", b.reason, b.message),
        None => format!("BLOCKED {}: {}", b.reason, b.message),
    }
}

/// A brokered placeholder sent where it is not swapped: what an auditor looks for when an
/// agent was talked into sending its credential elsewhere.
fn placeholder_note(p: &Placeholder) -> String {
    format!("PLACEHOLDER of credential {}: {}", p.credential, p.note)
}

/// What else happened in an exchange, for the table's last column.
pub fn notes(x: &Exchange) -> Vec<String> {
    let mut out: Vec<String> = x.blocked.iter().map(blocked_note).collect();
    out.extend(x.tokens.iter().map(token_note));
    out.extend(x.placeholders.iter().map(placeholder_note));
    out.extend(x.git.iter().map(git_note));
    out.extend(x.reviews.iter().map(review_note));
    // A blocked exchange ends with its refusal as the error; it is already in the note.
    if let Some(e) = x.end.as_ref().and_then(|e| e.error.as_ref())
        && !x.blocked.iter().any(|b| &b.message == e)
    {
        out.push(format!("error: {e}"));
    }
    if x.end.is_none() {
        out.push("no exchange_end recorded (in flight, or cut off)".into());
    }
    if x.request_body.truncated || x.response_body.truncated {
        out.push("body truncated".into());
    }
    out
}

const HEADER: [&str; 13] = [
    "TIME",
    "#",
    "METHOD",
    "HOST",
    "PATH",
    "STATUS",
    "LATENCY",
    "UP",
    "DOWN",
    "MASKED",
    "DECISION",
    "SERVICE/PERMISSION",
    "NOTES",
];

/// Columns `-o wide` adds before NOTES.
const WIDE: [&str; 5] = ["CONN", "HTTP", "TTFB", "SIDECAR", "TLS"];

/// The TLS facts of an exchange, short: `h2 TLSv1_3 verified`, `passthrough`, `-`.
fn tls_cell(x: &Exchange) -> String {
    match &x.tls {
        None => "-".into(),
        Some(t) if t.passthrough => "passthrough".into(),
        Some(t) => format!(
            "{} {} {}",
            t.alpn.as_deref().unwrap_or("-"),
            t.version.as_deref().unwrap_or("-"),
            if t.verified { "verified" } else { "UNVERIFIED" }
        ),
    }
}

/// The timeline table: one row per exchange, and a line for each event between them.
/// `wide` adds the connection, HTTP version, time to first byte, the sidecar's own time and
/// TLS, and cuts no host or path short.
pub fn table(t: &Timeline, wide: bool) -> String {
    enum Line {
        Row(Vec<String>),
        Event(String, String),
    }
    let mut lines = Vec::new();
    for item in &t.items {
        match item {
            Item::Exchange(id) => {
                let x = &t.exchanges[id];
                let (method, path) = x
                    .request
                    .as_ref()
                    .map(|r| (r.method.as_str(), r.path.as_str()))
                    .unwrap_or(("?", "?"));
                let end = x.end.as_ref();
                let (host_max, path_max) = if wide {
                    (usize::MAX, usize::MAX)
                } else {
                    (36, 48)
                };
                let mut cells = vec![
                    clock(&x.first_time),
                    x.label.clone(),
                    cut(method, 8),
                    cut(x.host(), host_max),
                    cut(path, path_max),
                    x.response
                        .as_ref()
                        .map_or("-".into(), |r| r.status.to_string()),
                    end.map_or("-".into(), |e| duration_us(e.timings.total_us)),
                    end.map_or(bytes(x.request_body.full_length()), |e| bytes(e.bytes_up)),
                    end.map_or(bytes(x.response_body.full_length()), |e| {
                        bytes(e.bytes_down)
                    }),
                    masked(x).to_string(),
                    cut(&decision(x), 32),
                    cut(&classification(end), 40),
                ];
                if wide {
                    let us = |v: Option<u64>| v.map_or("-".into(), duration_us);
                    cells.extend([
                        x.request
                            .as_ref()
                            .map_or("-".into(), |r| r.conn.to_string()),
                        x.request
                            .as_ref()
                            .map_or("-".into(), |r| cut(&r.version, 10)),
                        us(end.and_then(|e| e.timings.ttfb_us)),
                        us(end.and_then(|e| e.timings.sidecar_us)),
                        printable(&tls_cell(x), false),
                    ]);
                }
                cells.push(printable(&notes(x).join("; "), false));
                lines.push(Line::Row(cells));
            }
            Item::Start { time, start } => {
                let mut text = format!(
                    "session_start{} pod {} (uid {}), key {}, {} durability, on failure {}",
                    if start.restarted {
                        " (RESTARTED after a crash)"
                    } else {
                        ""
                    },
                    start.pod,
                    start.pod_uid,
                    start.public_key,
                    start.durability,
                    start.on_failure
                );
                if let Some(agent) = &start.agent {
                    let _ = write!(text, ", agent {agent}");
                }
                if let Some(by) = &start.requested_by {
                    let _ = write!(text, ", requested by {by}");
                }
                lines.push(Line::Event(clock(time), text));
            }
            Item::Blocked { time, blocked } => {
                lines.push(Line::Event(clock(time), blocked_note(blocked)));
            }
            Item::Gap { time, gap } => {
                let mut text = format!("GAP: {} — {}", gap.lost, gap.reason);
                if let Some(n) = gap.records {
                    let _ = write!(text, " ({n} records)");
                }
                lines.push(Line::Event(clock(time), text));
            }
            Item::Change { time, change } => {
                lines.push(Line::Event(clock(time), session_change_note(change)));
            }
            Item::End { time, reason } => {
                lines.push(Line::Event(clock(time), format!("session_end ({reason})")));
            }
        }
    }
    let mut header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    if wide {
        let notes = header.pop().unwrap_or_default();
        header.extend(WIDE.iter().map(|h| h.to_string()));
        header.push(notes);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for line in &lines {
        if let Line::Row(cells) = line {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    // Numbers align right.
    let right: &[usize] = if wide {
        &[1, 5, 6, 7, 8, 9, 12, 14, 15]
    } else {
        &[1, 5, 6, 7, 8, 9]
    };
    let row = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
                break;
            }
            let pad = widths[i].saturating_sub(c.chars().count());
            if right.contains(&i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
            s.push_str("  ");
        }
        s.trim_end().to_string()
    };
    let mut out = row(&header);
    out.push('\n');
    for line in lines {
        match line {
            Line::Row(cells) => out.push_str(&row(&cells)),
            Line::Event(time, text) => {
                let _ = write!(
                    out,
                    "{time:<w$}  ── {}",
                    printable(&text, false),
                    w = widths[0]
                );
            }
        }
        out.push('\n');
    }
    out
}

/// One exchange in full: its facts, request and response heads, and, with `bodies`, the
/// bodies (text as is, binary as a hexdump).
pub fn exchange(x: &Exchange, bodies: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "exchange {}", x.label);
    let _ = writeln!(out, "  started     {}", printable(&x.first_time, false));
    if let Some(r) = &x.request {
        let _ = writeln!(out, "  connection  {}", r.conn);
    }
    if let Some(tls) = &x.tls {
        let mut s = format!(
            "  tls         sni {}, alpn {}, {}",
            tls.sni.as_deref().unwrap_or("-"),
            tls.alpn.as_deref().unwrap_or("-"),
            tls.version.as_deref().unwrap_or("-"),
        );
        if tls.passthrough {
            s.push_str(", passthrough (not intercepted)");
        } else if tls.verified {
            let _ = write!(
                s,
                ", upstream verified ({})",
                tls.upstream_subject.as_deref().unwrap_or("-")
            );
        } else {
            s.push_str(", upstream NOT verified");
        }
        let _ = writeln!(out, "{}", printable(&s, false));
    }
    let _ = writeln!(out, "  decision    {}", printable(&decision(x), false));
    let class = classification(x.end.as_ref());
    if !class.is_empty() {
        let _ = writeln!(out, "  permission  {}", printable(&class, false));
    }
    if let Some(end) = &x.end {
        let t = &end.timings;
        let mut parts = vec![format!("total {}", duration_us(t.total_us))];
        for (name, v) in [
            ("connect", t.connect_us),
            ("tls", t.tls_us),
            ("send", t.request_sent_us),
            ("ttfb", t.ttfb_us),
            ("sidecar", t.sidecar_us),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name} {}", duration_us(v)));
            }
        }
        let _ = writeln!(out, "  timings     {}", parts.join(", "));
        let _ = writeln!(
            out,
            "  bytes       up {}, down {}; masked {}",
            bytes(end.bytes_up),
            bytes(end.bytes_down),
            end.masked
        );
    }
    for note in notes(x) {
        let _ = writeln!(out, "  note        {}", printable(&note, false));
    }
    out.push('\n');
    match &x.request {
        Some(r) => {
            let _ = writeln!(
                out,
                "> {} {}://{}{} {}",
                printable(&r.method, false),
                printable(&r.scheme, false),
                printable(&r.authority, false),
                printable(&r.path, false),
                printable(&r.version, false)
            );
            for (name, value) in &r.headers {
                let _ = writeln!(
                    out,
                    "> {}: {}",
                    printable(name, false),
                    printable(value, false)
                );
            }
        }
        None => out.push_str("> (no request head recorded)\n"),
    }
    out.push_str(&body(&x.request_body, Direction::Request, bodies));
    out.push('\n');
    match &x.response {
        Some(r) => {
            let _ = writeln!(out, "< {} {}", printable(&r.version, false), r.status);
            for (name, value) in &r.headers {
                let _ = writeln!(
                    out,
                    "< {}: {}",
                    printable(name, false),
                    printable(value, false)
                );
            }
        }
        None => out.push_str("< (no response recorded)\n"),
    }
    out.push_str(&body(&x.response_body, Direction::Response, bodies));
    let trailers = x
        .response
        .as_ref()
        .and_then(|r| r.trailers.as_ref())
        .or_else(|| x.end.as_ref().and_then(|e| e.trailers.as_ref()));
    for (name, value) in trailers.into_iter().flatten() {
        let _ = writeln!(
            out,
            "< (trailer) {}: {}",
            printable(name, false),
            printable(value, false)
        );
    }
    out
}

/// A body for `show --exchange`: a summary line, and with `full` the content.
pub fn body(b: &BodyData, direction: Direction, full: bool) -> String {
    let mut out = String::new();
    let what = direction.as_str();
    if b.is_empty() && !b.truncated {
        if b.complete {
            let _ = writeln!(out, "[{what} body: empty]");
        }
        return out;
    }
    let stored = b.bytes.len() as u64;
    let mut summary = format!(
        "[{what} body: {} {}",
        bytes(b.full_length()),
        if b.binary { "binary" } else { "text" }
    );
    if let Some(d) = &b.digest {
        let _ = write!(summary, ", digest {d}");
    }
    if !b.complete {
        summary.push_str(", no final record (cut off)");
    }
    if b.damaged {
        summary.push_str(", DAMAGED: pieces missing or undecodable");
    }
    summary.push(']');
    let _ = writeln!(out, "{summary}");
    if !full {
        let _ = writeln!(out, "(--bodies prints it; {stored} byte(s) stored)");
        return out;
    }
    match std::str::from_utf8(&b.bytes) {
        Ok(text) if !b.binary => {
            out.push_str(&printable(text, true));
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        _ => {
            out.push_str(&hexdump(&b.bytes, 512));
            if stored > 512 {
                let _ = writeln!(
                    out,
                    "… {} more stored byte(s) not shown; `export --jsonl` has them all (base64)",
                    stored - 512
                );
            }
        }
    }
    if b.truncated {
        let _ = writeln!(
            out,
            "… truncated at {stored} of {} bytes (maxBodyBytes); the rest was counted and digested, not stored",
            b.full_length()
        );
    }
    out
}

/// `hexdump -C` style lines for up to `max` bytes.
pub fn hexdump(data: &[u8], max: usize) -> String {
    let mut out = String::new();
    for (i, chunk) in data[..data.len().min(max)].chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", i * 16);
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// The line `replay` prints for a record, or `None` for records it passes over silently
/// (bodies, seals, connection and TLS details).
pub fn replay_line(r: &Record, pod: &str) -> Option<String> {
    let text = match &r.event {
        Event::SessionStart(s) => format!(
            "session_start pod {} key {}{}",
            s.pod,
            s.public_key,
            if s.restarted { " (RESTARTED)" } else { "" }
        ),
        Event::Request(q) => format!("#{} → {} {}{}", q.exchange, q.method, q.authority, q.path),
        Event::Response(p) => format!("#{} ← {}", p.exchange, p.status),
        Event::ExchangeEnd(e) => {
            let mut s = format!(
                "#{} done: {}{} in {}, up {} down {}",
                e.exchange,
                decision_word(e.decision),
                e.rule
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                duration_us(e.timings.total_us),
                bytes(e.bytes_up),
                bytes(e.bytes_down)
            );
            if e.masked > 0 {
                let _ = write!(s, ", {} masked", e.masked);
            }
            let class = classification(Some(e));
            if !class.is_empty() {
                let _ = write!(s, ", {class}");
            }
            if let Some(err) = &e.error {
                let _ = write!(s, ", error: {err}");
            }
            s
        }
        Event::Blocked(b) => match b.exchange {
            Some(x) => format!("#{x} {}", blocked_note(b)),
            None => blocked_note(b),
        },
        Event::Token(t) => format!("#{} {} for {}", t.exchange, token_note(t), t.host),
        Event::Placeholder(p) => format!("#{} {}", p.exchange, placeholder_note(p)),
        Event::Git(g) => format!("#{} {}", g.exchange, git_note(g)),
        Event::Review(v) => format!("#{} {}", v.exchange, review_note(v)),
        Event::Gap(g) => format!("GAP: {} — {}", g.lost, g.reason),
        Event::SessionChange(c) => session_change_note(c),
        Event::SessionEnd(e) => format!("session_end ({})", e.reason),
        _ => return None,
    };
    Some(printable(
        &format!("{} {pod}  {text}", clock(&r.time)),
        false,
    ))
}

/// `session_change` in words: what changed, and when the session ends now.
fn session_change_note(c: &cassette_recording::record::SessionChange) -> String {
    let until = c
        .expires_at
        .as_deref()
        .map(|t| format!(", ends {t}"))
        .unwrap_or_default();
    if c.deleted {
        return format!("SESSION DELETED: the AgentSession is gone; the session ended{until}");
    }
    format!(
        "SESSION CHANGED (generation {}): {}{until}",
        c.generation,
        c.changed.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_change_says_what_changed_and_when_it_ends() {
        use cassette_recording::record::SessionChange;
        let change = SessionChange {
            generation: 3,
            changed: vec!["policy".into(), "expiry".into()],
            expires_at: Some("2026-12-02T18:00:00Z".into()),
            deleted: false,
        };
        assert_eq!(
            session_change_note(&change),
            "SESSION CHANGED (generation 3): policy, expiry, ends 2026-12-02T18:00:00Z"
        );
        let gone = SessionChange {
            deleted: true,
            ..change
        };
        assert!(session_change_note(&gone).starts_with("SESSION DELETED"));
    }

    #[test]
    fn control_characters_are_made_visible() {
        assert_eq!(printable("a\x1b[31mb\r", false), "a\\u{1b}[31mb\\u{d}");
        assert_eq!(printable("a\nb", true), "a\nb");
        assert_eq!(printable("a\nb", false), "a\\u{a}b");
    }

    #[test]
    fn sizes_and_durations_read_short() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(duration_us(850), "850µs");
        assert_eq!(duration_us(12_300), "12.3ms");
        assert_eq!(duration_us(1_200_000), "1.20s");
        assert_eq!(clock("2026-05-01T12:00:00.250000000Z"), "12:00:00.250");
    }

    #[test]
    fn hexdump_shows_offsets_bytes_and_ascii() {
        let dump = hexdump(b"\x00\x01hello", 512);
        assert_eq!(
            dump,
            "00000000  00 01 68 65 6c 6c 6f                              |..hello|\n"
        );
        // The same layout as `hexdump -C`.
        assert_eq!(
            hexdump(b"0123456789abcdef", 512),
            "00000000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|\n"
        );
    }

    fn row<'a>(table: &'a str, needle: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{table}"))
    }

    /// Character offset of a column's start in a line.
    fn col(line: &str, at: &str) -> usize {
        line[..line
            .find(at)
            .unwrap_or_else(|| panic!("{at:?} not in {line:?}"))]
            .chars()
            .count()
    }

    #[tokio::test]
    async fn table_of_a_real_recording() {
        let (_f, t) = crate::timeline::fixture_timeline().await;
        let table = table(&t, false);
        let header = table.lines().next().unwrap();
        assert!(header.starts_with("TIME"), "{header}");
        for h in &HEADER[1..] {
            assert!(header.contains(h), "{h} missing from {header}");
        }

        let list = row(&table, "/storage/v1/b/logs/o?prefix=ci%2F&maxResults=2");
        for cell in [
            " 1 ",
            "GET",
            "storage.googleapis.com",
            " 200 ",
            "12.3ms",
            " 0B ",
            "35B",
            "allow",
            "storage.objects.list",
            "token swapped (bearer, agent@proj.iam.gserviceaccount.com)",
        ] {
            assert!(list.contains(cell), "{cell:?} missing from {list:?}");
        }
        let push = row(&table, "git-receive-pack");
        for cell in [
            "POST",
            "deny (no-push-main)",
            "git receive-pack",
            "BLOCKED policy (no-push-main): push to refs/heads/main refused",
            "git receive-pack: refs/heads/main 1111111111→2222222222",
        ] {
            assert!(push.contains(cell), "{cell:?} missing from {push:?}");
        }
        // No response was recorded for the refused push, and its refusal is said once.
        assert_eq!(push.split_whitespace().nth(5), Some("-"), "{push}");
        assert!(!push.contains("error:"), "{push}");
        let upload = row(&table, "uploadType=media");
        assert!(
            upload.contains("1.1KiB") && upload.contains("body truncated"),
            "{upload}"
        );
        let secret = row(&table, "secretmanager.googleapis.com");
        assert!(secret.contains("secretmanager.versions.access"), "{secret}");

        // Columns line up: DECISION starts at the same place in the header and every row.
        let at = col(header, "DECISION");
        assert_eq!(col(list, "allow"), at, "{list}");
        assert_eq!(col(push, "deny"), at, "{push}");

        // Events between exchanges.
        let start = row(&table, "── session_start");
        assert!(
            start.contains("pod agent-0 (uid 5f1c)")
                && start.contains("requested by alice@example.com")
        );
        assert!(row(&table, "── BLOCKED expired").contains("AgentSession \"fix-ci\" expired"));
        assert!(
            table.trim_end().ends_with("── session_end (shutdown)"),
            "{table}"
        );
        // In recorded order: start, exchanges 1..5, the refused connection, the end.
        let order: Vec<usize> = [
            "session_start",
            "prefix=ci",
            "secretmanager",
            "paste.example.com",
            "receive-pack",
            "uploadType",
            "BLOCKED expired",
            "session_end",
        ]
        .iter()
        .map(|n| table.find(n).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{table}");
    }

    #[tokio::test]
    async fn exchange_detail_with_bodies() {
        let (_f, t) = crate::timeline::fixture_timeline().await;
        let listing = exchange(&t.exchanges[&(1, 1)], true);
        assert!(listing.contains("> GET https://storage.googleapis.com/storage/v1/b/logs/o?prefix=ci%2F&maxResults=2 HTTP/2"), "{listing}");
        assert!(listing.contains("> authorization: Bearer «masked:google-oauth-token:"));
        assert!(listing.contains("< HTTP/2 200"));
        assert!(listing.contains("{\"items\":[{\"name\":\"ci/build.log\"}]}"));
        assert!(listing.contains("tls         sni storage.googleapis.com, alpn h2, TLSv1_3, upstream verified (CN=*.googleapis.com)"), "{listing}");
        assert!(
            listing.contains("timings     total 12.3ms, connect 2.0ms, tls 3.0ms"),
            "{listing}"
        );

        let upload = exchange(&t.exchanges[&(1, 5)], true);
        assert!(
            upload.contains("[request body: 1.1KiB binary, digest hmac-sha256:"),
            "{upload}"
        );
        assert!(upload.contains("00000000  80 a5 ca ef"), "{upload}");
        assert!(
            upload.contains("… 512 more stored byte(s) not shown"),
            "{upload}"
        );
        assert!(
            upload.contains("… truncated at 1024 of 1100 bytes"),
            "{upload}"
        );

        let heads_only = exchange(&t.exchanges[&(1, 1)], false);
        assert!(
            heads_only.contains("(--bodies prints it; 35 byte(s) stored)"),
            "{heads_only}"
        );
        assert!(!heads_only.contains("ci/build.log"));
    }
}
