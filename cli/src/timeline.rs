//! One recording's records regrouped the way an auditor reads them: exchanges (request,
//! response, bodies, end, and what happened to them) and the events between them, in the
//! order they were recorded. Pure: it takes records and never checks integrity (`verify`
//! does that).
//!
//! An exchange is keyed by its id *and* the recorder run it belongs to (the `session_start`
//! it follows): recorders before ids survived restarts started again at 1 after a crash, and
//! two exchanges must never be merged into one.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cassette_recording::Record;
use cassette_recording::record::{
    Blocked, Direction, Event, ExchangeEnd, Gap, Git, Placeholder, Request, Response, Review,
    SessionStart, Tls, Token,
};

/// A body as it was stored: the bytes kept and what the final record says about the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyData {
    /// The stored bytes (at most `maxBodyBytes`), text and base64 pieces put back together.
    pub bytes: Vec<u8>,
    /// Whether any piece was stored as base64 (the bytes are not UTF-8).
    pub binary: bool,
    /// Full length from the final record.
    pub length: Option<u64>,
    /// Whether bytes past the limit were left out.
    pub truncated: bool,
    /// `hmac-sha256:<hex>` of the full body.
    pub digest: Option<String>,
    /// Whether the final record was seen.
    pub complete: bool,
    /// A piece whose base64 did not decode, or whose offset did not follow the previous one.
    pub damaged: bool,
    /// What the final record says of the body's content encodings, when it says anything.
    pub decoding: Option<String>,
}

impl BodyData {
    fn push(&mut self, body: &cassette_recording::record::Body) {
        if body.last {
            self.complete = true;
            self.length = body.length;
            self.truncated = body.truncated.unwrap_or(false);
            self.digest = body.digest.clone();
            self.decoding = body.decoding.clone();
            return;
        }
        if body.offset != self.bytes.len() as u64 {
            self.damaged = true;
        }
        if let Some(text) = &body.text {
            self.bytes.extend_from_slice(text.as_bytes());
        }
        if let Some(b64) = &body.base64 {
            self.binary = true;
            match B64.decode(b64) {
                Ok(raw) => self.bytes.extend(raw),
                Err(_) => self.damaged = true,
            }
        }
    }

    /// Whether anything at all was recorded for this body.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.length.unwrap_or(0) == 0
    }

    /// Full length when known, else the bytes stored.
    pub fn full_length(&self) -> u64 {
        self.length.unwrap_or(self.bytes.len() as u64)
    }
}

/// An exchange's key: the recorder run it belongs to (1 for the first `session_start`, 0
/// before any) and its id.
pub type ExchangeKey = (u32, u64);

/// Everything recorded about one exchange.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub id: u64,
    /// The recorder run (the `session_start` it follows, from 1).
    pub run: u32,
    /// How the auditor names it: its id, or `<run>.<id>` where a recorder reused the id
    /// after a restart.
    pub label: String,
    /// Time of the exchange's first record.
    pub first_time: String,
    /// seq of the exchange's first record.
    pub first_seq: u64,
    pub request: Option<Request>,
    pub request_time: Option<String>,
    pub response: Option<Response>,
    pub response_time: Option<String>,
    pub request_body: BodyData,
    pub response_body: BodyData,
    pub end: Option<ExchangeEnd>,
    pub end_time: Option<String>,
    pub blocked: Vec<Blocked>,
    pub tokens: Vec<Token>,
    /// Brokered credentials' placeholders the agent sent where they are not swapped.
    pub placeholders: Vec<Placeholder>,
    pub git: Vec<Git>,
    pub reviews: Vec<Review>,
    /// The TLS facts of the exchange's connection, when it was intercepted.
    pub tls: Option<Tls>,
}

impl Exchange {
    fn new((run, id): ExchangeKey, record: &Record) -> Self {
        Exchange {
            id,
            run,
            label: id.to_string(),
            first_time: record.time.clone(),
            first_seq: record.seq,
            ..Default::default()
        }
    }

    /// `host[:port]` the agent addressed.
    pub fn host(&self) -> &str {
        self.request.as_ref().map_or("", |r| r.authority.as_str())
    }

    /// Whether the sidecar refused this exchange (a `blocked` record, or a deny decision).
    pub fn is_blocked(&self) -> bool {
        !self.blocked.is_empty()
            || self
                .end
                .as_ref()
                .is_some_and(|e| e.decision == cassette_recording::record::Decision::Deny)
    }
}

/// What the timeline shows, in recorded order.
#[derive(Debug, Clone)]
pub enum Item {
    /// The recorder started (or restarted).
    Start { time: String, start: SessionStart },
    /// An exchange, at the time of its first record.
    Exchange(ExchangeKey),
    /// A refusal that belongs to no exchange (e.g. a connection refused before any request).
    Blocked { time: String, blocked: Blocked },
    /// Something was not recorded.
    Gap { time: String, gap: Gap },
    /// The AgentSession changed while the pod recorded: what follows is decided by the new one.
    Change {
        time: String,
        change: cassette_recording::record::SessionChange,
    },
    /// The session ended for this pod.
    End { time: String, reason: String },
}

/// One recording as exchanges and events.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub items: Vec<Item>,
    pub exchanges: BTreeMap<ExchangeKey, Exchange>,
    /// Records taken in.
    pub records: u64,
    /// Time of the first and last record.
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// Whether `session_end` was seen.
    pub ended: bool,
    /// TLS facts by connection (of a run), to attach to the exchanges that use it.
    tls_by_conn: BTreeMap<(u32, u64), Tls>,
    /// The recorder run records belong to: the number of `session_start`s so far.
    run: u32,
}

impl Timeline {
    /// Builds the timeline of a recording from its records, in order.
    pub fn build<'a>(records: impl IntoIterator<Item = &'a Record>) -> Timeline {
        let mut t = Timeline::default();
        for r in records {
            t.take(r);
        }
        // Ids a recorder reused after a restart are shown with their run.
        let mut runs: BTreeMap<u64, u32> = BTreeMap::new();
        for (_, id) in t.exchanges.keys() {
            *runs.entry(*id).or_default() += 1;
        }
        for ((run, id), x) in &mut t.exchanges {
            if runs[id] > 1 {
                x.label = format!("{run}.{id}");
            }
        }
        t
    }

    /// The exchange an auditor names: `N`, or `R.N` for exchange N of recorder run R.
    pub fn find(&self, name: &str) -> Result<&Exchange, String> {
        let parse = |s: &str| s.trim().parse::<u64>().ok();
        let wanted: Vec<&Exchange> = match name.split_once('.') {
            Some((run, id)) => match (parse(run), parse(id)) {
                (Some(run), Some(id)) => u32::try_from(run)
                    .ok()
                    .and_then(|run| self.exchanges.get(&(run, id)))
                    .into_iter()
                    .collect(),
                _ => return Err(format!("{name:?} is not an exchange: use N or RUN.N")),
            },
            None => match parse(name) {
                Some(id) => self.exchanges.values().filter(|x| x.id == id).collect(),
                None => return Err(format!("{name:?} is not an exchange: use N or RUN.N")),
            },
        };
        match wanted.as_slice() {
            [one] => Ok(one),
            [] => {
                let last = self.exchanges.values().map(|x| x.id).max().unwrap_or(0);
                Err(format!(
                    "has no exchange {name} (its exchanges are numbered 1 to {last})"
                ))
            }
            many => Err(format!(
                "has more than one exchange {name}: its recorder restarted and numbered from 1 again; choose {}",
                many.iter()
                    .map(|x| x.label.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
        }
    }

    /// Takes in the next record and says which exchange it belongs to, if any (what filters
    /// of records need). Exchanges taken in this way keep their plain ids as labels.
    pub fn take(&mut self, record: &Record) -> Option<ExchangeKey> {
        self.push(record);
        match &record.event {
            Event::Blocked(b) if b.exchange.is_none() => None,
            event => event.exchange().map(|id| (self.run, id)),
        }
    }

    fn push(&mut self, record: &Record) {
        self.records += 1;
        if self.first_time.is_none() {
            self.first_time = Some(record.time.clone());
        }
        self.last_time = Some(record.time.clone());
        let time = record.time.clone();
        match &record.event {
            Event::SessionStart(s) => {
                self.run += 1;
                self.items.push(Item::Start {
                    time,
                    start: s.clone(),
                })
            }
            Event::Tls(tls) => {
                self.tls_by_conn.insert((self.run, tls.conn), tls.clone());
            }
            Event::Gap(g) => self.items.push(Item::Gap {
                time,
                gap: g.clone(),
            }),
            Event::SessionChange(c) => self.items.push(Item::Change {
                time,
                change: c.clone(),
            }),
            Event::SessionEnd(e) => {
                self.ended = true;
                self.items.push(Item::End {
                    time,
                    reason: e.reason.clone(),
                });
            }
            Event::Blocked(b) if b.exchange.is_none() => self.items.push(Item::Blocked {
                time,
                blocked: b.clone(),
            }),
            event => {
                if let Some(id) = event.exchange() {
                    let tls = match event {
                        Event::Request(r) => self.tls_by_conn.get(&(self.run, r.conn)).cloned(),
                        _ => None,
                    };
                    let x = self.exchange_mut((self.run, id), record);
                    if tls.is_some() {
                        x.tls = tls;
                    }
                    apply(x, event, &record.time);
                }
            }
        }
    }

    fn exchange_mut(&mut self, key: ExchangeKey, record: &Record) -> &mut Exchange {
        if !self.exchanges.contains_key(&key) {
            self.items.push(Item::Exchange(key));
        }
        self.exchanges
            .entry(key)
            .or_insert_with(|| Exchange::new(key, record))
    }

    /// The exchanges in recorded order.
    pub fn exchanges_in_order(&self) -> impl Iterator<Item = &Exchange> {
        self.items.iter().filter_map(|i| match i {
            Item::Exchange(id) => self.exchanges.get(id),
            _ => None,
        })
    }
}

fn apply(x: &mut Exchange, event: &Event, time: &str) {
    match event {
        Event::Request(r) => {
            x.request = Some(r.clone());
            x.request_time = Some(time.to_string());
        }
        Event::Response(r) => {
            x.response = Some(r.clone());
            x.response_time = Some(time.to_string());
        }
        Event::Body(b) => match b.direction {
            Direction::Request => x.request_body.push(b),
            Direction::Response => x.response_body.push(b),
        },
        Event::ExchangeEnd(e) => {
            x.end = Some(e.clone());
            x.end_time = Some(time.to_string());
        }
        Event::Blocked(b) => x.blocked.push(b.clone()),
        Event::Token(t) => x.tokens.push(t.clone()),
        Event::Placeholder(p) => x.placeholders.push(p.clone()),
        Event::Git(g) => x.git.push(g.clone()),
        Event::Review(r) => x.reviews.push(r.clone()),
        _ => {}
    }
}

/// A recorded time as a timestamp; `None` when it does not parse.
pub fn parse_time(time: &str) -> Option<jiff::Timestamp> {
    time.parse().ok()
}

/// The fixture recording, read back as a timeline.
#[cfg(test)]
pub(crate) async fn fixture_timeline() -> (crate::fixture::Fixture, Timeline) {
    read_fixture(crate::fixture::write().await).await
}

/// The auditor fixture (with metadata chatter, a refused delete and a gap), as a timeline.
#[cfg(test)]
pub(crate) async fn fixture_timeline_auditor() -> (crate::fixture::Fixture, Timeline) {
    read_fixture(crate::fixture::write_auditor().await).await
}

#[cfg(test)]
async fn read_fixture(f: crate::fixture::Fixture) -> (crate::fixture::Fixture, Timeline) {
    let found = crate::locate::discover(&f.session_uri, &Default::default())
        .await
        .expect("discover");
    assert_eq!(found.len(), 1, "one recording");
    let objects = found[0].load().await.expect("load");
    let records: Vec<Record> = objects.records().map(|r| r.expect("record")).collect();
    (f, Timeline::build(&records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, time: &str, json: &str) -> Record {
        let line = format!(
            r#"{{"seq":{seq},"time":"{time}",{json},"chain":"{}"}}"#,
            "0".repeat(64)
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn bodies_are_reassembled_from_text_and_base64() {
        let records = [
            rec(
                0,
                "2026-05-01T12:00:00.000000000Z",
                r#""kind":"body","exchange":1,"direction":"response","offset":0,"text":"ab""#,
            ),
            rec(
                1,
                "2026-05-01T12:00:00.000000001Z",
                r#""kind":"body","exchange":1,"direction":"response","offset":2,"base64":"/wA=""#,
            ),
            rec(
                2,
                "2026-05-01T12:00:00.000000002Z",
                r#""kind":"body","exchange":1,"direction":"response","offset":4,"final":true,"length":10,"digest":"hmac-sha256:00","truncated":true"#,
            ),
        ];
        let t = Timeline::build(&records);
        let body = &t.exchanges[&(0, 1)].response_body;
        assert_eq!(body.bytes, b"ab\xff\x00");
        assert!(body.binary && body.complete && body.truncated && !body.damaged);
        assert_eq!(body.full_length(), 10);
    }

    #[test]
    fn an_id_reused_after_a_restart_is_another_exchange() {
        let start = |seq, restarted: bool| {
            rec(
                seq,
                "2026-05-01T12:00:00.000000000Z",
                &format!(
                    r#""kind":"session_start","namespace":"n","session":"s","pod":"p","pod_uid":"u","public_key":"k","recorder":"r","durability":"batched","on_failure":"closed","max_body_bytes":1{}"#,
                    if restarted {
                        r#","restarted":true"#
                    } else {
                        ""
                    }
                ),
            )
        };
        let request = |seq, time, host: &str, exchange| {
            rec(
                seq,
                time,
                &format!(
                    r#""kind":"request","exchange":{exchange},"conn":1,"method":"GET","scheme":"https","authority":"{host}","path":"/","version":"HTTP/1.1","headers":[]"#
                ),
            )
        };
        let records = [
            start(0, false),
            request(1, "2026-05-01T12:01:00.000000000Z", "a.example", 1),
            request(2, "2026-05-01T12:02:00.000000000Z", "b.example", 2),
            start(3, true),
            request(4, "2026-05-01T12:05:00.000000000Z", "c.example", 1),
        ];
        let t = Timeline::build(&records);
        assert_eq!(t.exchanges.len(), 3);
        let labels: Vec<(&str, &str, &str)> = t
            .exchanges_in_order()
            .map(|x| (x.label.as_str(), x.host(), x.first_time.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("1.1", "a.example", "2026-05-01T12:01:00.000000000Z"),
                ("2", "b.example", "2026-05-01T12:02:00.000000000Z"),
                ("2.1", "c.example", "2026-05-01T12:05:00.000000000Z"),
            ]
        );
        assert_eq!(t.find("2").unwrap().host(), "b.example");
        assert_eq!(t.find("2.1").unwrap().host(), "c.example");
        assert!(t.find("1").unwrap_err().contains("1.1 or 2.1"));
        assert!(t.find("9").unwrap_err().contains("no exchange 9"));
        assert!(t.find("x").is_err());
    }

    #[test]
    fn a_refused_connection_is_its_own_item() {
        let records = [rec(
            0,
            "2026-05-01T12:00:00.000000000Z",
            r#""kind":"blocked","reason":"expired","message":"session expired""#,
        )];
        let t = Timeline::build(&records);
        assert!(t.exchanges.is_empty());
        assert!(
            matches!(&t.items[0], Item::Blocked { blocked, .. } if blocked.reason == "expired")
        );
    }
}
