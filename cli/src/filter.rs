//! The one filter grammar of the reading verbs (`show`, `replay`, `export`, `search`): flags
//! parsed by clap into [`FilterArgs`], compiled once into a [`Filter`], and applied to an
//! exchange with its classification, or to a record that belongs to no exchange. Pure: the
//! time "now" for `--since 15m` is passed in. It never hides a gap or a session event.

use clap::{Args, ValueEnum};
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};
use regex::Regex;

use cassette_recording::Record;
use cassette_recording::record::{Decision, Event};

use crate::timeline::{Exchange, Item, Timeline};

/// The grammar in words, for the reading verbs' `--help` (README.md's "Filters" says the same).
macro_rules! filter_grammar {
    () => {
        "\
Filters: a repeated flag matches any of its values (OR); different flags must all match (AND).
Globs take * (any run of characters, / included) and ?. An exchange is shown when it matches.
Records that are no exchange:
  gaps, session_start, session_change, session_end   always shown, whatever the filters
  refusals before any request (no exchange)           only --since/--until/--pod and
                                                      --decision blocked (or deny, for a
                                                      policy refusal) apply; any other
                                                      exchange filter hides them
  DNS queries (replay, export --jsonl)                --host matches the name queried,
                                                      --decision its allow or deny; any other
                                                      exchange filter hides them
  connection records (conn_open, tls, conn_close, passthrough streams; export --jsonl)
                                                      hidden by any exchange filter
When filters are set, the output says how many exchanges they hid (show and search in it,
replay and export on standard error)."
    };
}
pub(crate) use filter_grammar;

/// `--decision` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionArg {
    /// Let through by policy.
    Allow,
    /// Refused by a policy rule (or a default of deny).
    Deny,
    /// Held for a human's review.
    Review,
    /// Refused for any reason: policy, expiry, a recording failure, a certificate.
    Blocked,
    /// Tunnelled without interception.
    Passthrough,
}

/// The filter flags, as clap parses them (`#[command(flatten)]` into each reading verb).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Filters (repeat a flag to OR, combine flags to AND)")]
pub struct FilterArgs {
    /// Host the agent addressed, a glob, port optional: `*.googleapis.com`.
    #[arg(long, value_name = "GLOB")]
    pub host: Vec<String>,
    /// HTTP method, any case: `DELETE`.
    #[arg(long, value_name = "METHOD")]
    pub method: Vec<String>,
    /// Request path, a glob, matched with and without its query: `/storage/v1/b/*`.
    #[arg(long, value_name = "GLOB")]
    pub path: Vec<String>,
    /// Response status: `403`, or a class such as `4xx` (exchanges without a response match none).
    #[arg(long, value_name = "CODE")]
    pub status: Vec<String>,
    /// Google service: `storage.googleapis.com`, or `storage` for short.
    #[arg(long, value_name = "SERVICE")]
    pub service: Vec<String>,
    /// Google permission, a glob: `storage.objects.delete`, `storage.objects.*`.
    #[arg(long, value_name = "GLOB")]
    pub permission: Vec<String>,
    /// What the sidecar decided.
    #[arg(long, value_enum, value_name = "DECISION")]
    pub decision: Vec<DecisionArg>,
    /// Only exchanges in which something was masked.
    #[arg(long)]
    pub masked: bool,
    /// A git ref the exchange pushed, a glob: `refs/heads/main`, `refs/tags/*`.
    #[arg(long, value_name = "GLOB")]
    pub git_ref: Vec<String>,
    /// From this time on: RFC 3339 (`2026-05-01T12:00:00Z`) or a duration ago (`15m`, `2h`, `1d`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Up to this time: RFC 3339 or a duration ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Leave out the agent's exchanges with the metadata server (metadata.google.internal).
    #[arg(long)]
    pub hide_metadata: bool,
}

/// A glob compiled to an anchored regular expression.
#[derive(Debug, Clone)]
struct Glob(Regex);

impl Glob {
    fn new(flag: &str, glob: &str, any_case: bool) -> anyhow::Result<Glob> {
        let mut re = String::from(if any_case { "(?is)^" } else { "(?s)^" });
        for c in glob.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        re.push('$');
        Regex::new(&re)
            .map(Glob)
            .map_err(|e| anyhow::anyhow!("--{flag} {glob:?} is not a usable glob: {e}"))
    }

    fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

/// `--status`: a code, or a class (`4xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Code(u16),
    Class(u16),
}

impl Status {
    fn parse(s: &str) -> anyhow::Result<Status> {
        let s = s.trim();
        let bad =
            || anyhow::anyhow!("--status {s:?}: use a code such as 403 or a class such as 4xx");
        match s.as_bytes() {
            [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(Status::Class(u16::from(d - b'0'))),
            _ => match s.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(Status::Code(code)),
                _ => Err(bad()),
            },
        }
    }

    fn matches(self, status: u16) -> bool {
        match self {
            Status::Code(c) => c == status,
            Status::Class(c) => status / 100 == c,
        }
    }
}

/// Hosts of the metadata server, as the agent addresses it.
const METADATA_HOSTS: [&str; 4] = [
    "metadata.google.internal",
    "metadata",
    "169.254.169.254",
    "[fd20:ce::254]",
];

/// `host` of `host[:port]` (a bracketed IPv6 address keeps its brackets).
fn host_only(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Whether an exchange is the agent talking to the metadata server.
pub fn is_metadata(x: &Exchange) -> bool {
    let host = host_only(x.host());
    METADATA_HOSTS.iter().any(|m| host.eq_ignore_ascii_case(m))
}

/// Parses `--since`/`--until`: an RFC 3339 time, or a duration before `now`.
fn parse_time_arg(flag: &str, value: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    if let Ok(t) = value.parse::<Timestamp>() {
        return Ok(t);
    }
    let ago = value
        .parse::<Span>()
        .ok()
        .and_then(|s| s.to_duration(SpanRelativeTo::days_are_24_hours()).ok())
        .or_else(|| value.parse::<SignedDuration>().ok());
    match ago {
        Some(d) if !d.is_negative() => now.checked_sub(d).map_err(|e| {
            anyhow::anyhow!("--{flag} {value:?} reaches before any time there is: {e}")
        }),
        _ => anyhow::bail!(
            "--{flag} {value:?}: use an RFC 3339 time (2026-05-01T12:00:00Z) or a duration ago (15m, 2h, 1d)"
        ),
    }
}

/// The filters compiled: what `show`, `replay`, `export` and `search` apply.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    hosts: Vec<Glob>,
    methods: Vec<String>,
    paths: Vec<Glob>,
    statuses: Vec<Status>,
    services: Vec<String>,
    permissions: Vec<Glob>,
    decisions: Vec<DecisionArg>,
    masked: bool,
    git_refs: Vec<Glob>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    hide_metadata: bool,
}

/// What a filter did to a timeline.
#[derive(Debug, Clone)]
pub struct Narrowed {
    /// The timeline with only what the filter shows.
    pub timeline: Timeline,
    /// Exchanges left out.
    pub hidden: usize,
}

impl Filter {
    /// Compiles the flags; `now` anchors durations such as `--since 15m`.
    pub fn new(args: &FilterArgs, now: Timestamp) -> anyhow::Result<Filter> {
        let globs = |flag: &str, values: &[String], any_case: bool| {
            values
                .iter()
                .map(|g| Glob::new(flag, g, any_case))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let filter = Filter {
            hosts: globs("host", &args.host, true)?,
            methods: args.method.iter().map(|m| m.to_ascii_uppercase()).collect(),
            paths: globs("path", &args.path, false)?,
            statuses: args
                .status
                .iter()
                .map(|s| Status::parse(s))
                .collect::<anyhow::Result<_>>()?,
            services: args
                .service
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            permissions: globs("permission", &args.permission, false)?,
            decisions: args.decision.clone(),
            masked: args.masked,
            git_refs: globs("git-ref", &args.git_ref, false)?,
            since: args
                .since
                .as_deref()
                .map(|v| parse_time_arg("since", v, now))
                .transpose()?,
            until: args
                .until
                .as_deref()
                .map(|v| parse_time_arg("until", v, now))
                .transpose()?,
            hide_metadata: args.hide_metadata,
        };
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since > until
        {
            anyhow::bail!("--since {since} is after --until {until}: nothing could match");
        }
        Ok(filter)
    }

    /// Whether any filter is set.
    pub fn is_active(&self) -> bool {
        self.has_exchange_filters()
            || self.since.is_some()
            || self.until.is_some()
            || !self.decisions.is_empty()
    }

    /// Whether a filter is set that only an exchange's own facts can satisfy.
    fn has_exchange_filters(&self) -> bool {
        !self.hosts.is_empty()
            || !self.methods.is_empty()
            || !self.paths.is_empty()
            || !self.statuses.is_empty()
            || !self.services.is_empty()
            || !self.permissions.is_empty()
            || self.masked
            || !self.git_refs.is_empty()
            || self.hide_metadata
    }

    fn in_time(&self, time: &str) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        // A time that does not parse is shown: a filter must not hide what it cannot judge.
        let Some(t) = crate::timeline::parse_time(time) else {
            return true;
        };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    fn host_matches(&self, authority: &str) -> bool {
        self.hosts.is_empty()
            || self
                .hosts
                .iter()
                .any(|g| g.is_match(authority) || g.is_match(host_only(authority)))
    }

    /// Whether the filter shows this exchange.
    pub fn exchange(&self, x: &Exchange) -> bool {
        let request = x.request.as_ref();
        let class = x.end.as_ref().and_then(|e| e.classification.as_ref());
        let any = |empty: bool, hit: bool| empty || hit;
        if self.hide_metadata && is_metadata(x) {
            return false;
        }
        if !self.in_time(&x.first_time) || !self.host_matches(x.host()) {
            return false;
        }
        let method = request.map(|r| r.method.to_ascii_uppercase());
        if !any(
            self.methods.is_empty(),
            method.is_some_and(|m| self.methods.contains(&m)),
        ) {
            return false;
        }
        if !any(
            self.paths.is_empty(),
            request.is_some_and(|r| {
                let bare = r.path.split_once('?').map_or(r.path.as_str(), |(p, _)| p);
                self.paths
                    .iter()
                    .any(|g| g.is_match(&r.path) || g.is_match(bare))
            }),
        ) {
            return false;
        }
        if !any(
            self.statuses.is_empty(),
            x.response
                .as_ref()
                .is_some_and(|r| self.statuses.iter().any(|s| s.matches(r.status))),
        ) {
            return false;
        }
        if !any(
            self.services.is_empty(),
            class.and_then(|c| c.service.as_deref()).is_some_and(|s| {
                let s = s.to_ascii_lowercase();
                self.services
                    .iter()
                    .any(|want| *want == s || format!("{want}.googleapis.com") == s)
            }),
        ) {
            return false;
        }
        if !any(
            self.permissions.is_empty(),
            class
                .and_then(|c| c.permission.as_deref())
                .is_some_and(|p| self.permissions.iter().any(|g| g.is_match(p))),
        ) {
            return false;
        }
        if self.masked && crate::render::masked(x) == 0 {
            return false;
        }
        if !any(
            self.git_refs.is_empty(),
            x.git
                .iter()
                .flat_map(|g| &g.updates)
                .any(|u| self.git_refs.iter().any(|g| g.is_match(&u.name))),
        ) {
            return false;
        }
        self.decisions.is_empty() || self.decisions.iter().any(|d| decided(x, *d))
    }

    /// Whether the filter shows a refusal that came before any request (no exchange).
    fn refusal(&self, time: &str, reason: &str) -> bool {
        self.in_time(time)
            && !self.has_exchange_filters()
            && (self.decisions.is_empty()
                || self.decisions.iter().any(|d| {
                    *d == DecisionArg::Blocked || (*d == DecisionArg::Deny && reason == "policy")
                }))
    }

    /// Whether the filter shows a timeline item.
    pub fn item(&self, t: &Timeline, item: &Item) -> bool {
        match item {
            Item::Exchange(key) => t.exchanges.get(key).is_some_and(|x| self.exchange(x)),
            Item::Blocked { time, blocked } => self.refusal(time, &blocked.reason),
            Item::Start { .. } | Item::Gap { .. } | Item::Change { .. } | Item::End { .. } => true,
        }
    }

    /// The timeline with only what the filter shows, and how many exchanges it left out.
    pub fn narrow(&self, t: &Timeline) -> Narrowed {
        let mut timeline = t.clone();
        timeline.items.retain(|i| self.item(t, i));
        timeline.exchanges.retain(|_, x| self.exchange(x));
        let hidden = t.exchanges.len() - timeline.exchanges.len();
        Narrowed { timeline, hidden }
    }

    /// Whether the filter keeps a record, given whether the filter shows the exchange it
    /// belongs to (`None` for a record of no exchange): what `replay` and `export --jsonl` use.
    pub fn record(&self, record: &Record, exchange: Option<bool>) -> bool {
        if let Some(shown) = exchange {
            return shown;
        }
        match &record.event {
            Event::Gap(_)
            | Event::SessionStart(_)
            | Event::SessionChange(_)
            | Event::SessionEnd(_)
            | Event::Seal(_) => true,
            Event::Blocked(b) => self.refusal(&record.time, &b.reason),
            Event::Dns(d) => {
                let decided = |want: &DecisionArg| match want {
                    DecisionArg::Allow => d.decision == Decision::Allow,
                    DecisionArg::Deny | DecisionArg::Blocked => d.decision == Decision::Deny,
                    DecisionArg::Review | DecisionArg::Passthrough => false,
                };
                self.in_time(&record.time)
                    && (self.decisions.is_empty() || self.decisions.iter().any(decided))
                    && self.only_hosts()
                    && (self.hosts.is_empty() || self.hosts.iter().any(|g| g.is_match(&d.name)))
            }
            // Connection records, passthrough streams, and anything newer than this code.
            _ => self.in_time(&record.time) && !self.has_exchange_filters(),
        }
    }

    /// Whether `--host` is the only exchange filter set (or none is): a DNS query can be
    /// judged by the name it asked for and nothing more.
    fn only_hosts(&self) -> bool {
        let mut rest = self.clone();
        rest.hosts.clear();
        !rest.has_exchange_filters()
    }
}

/// Whether an exchange got this decision.
fn decided(x: &Exchange, want: DecisionArg) -> bool {
    let decision = x.end.as_ref().map(|e| e.decision);
    match want {
        DecisionArg::Allow => decision == Some(Decision::Allow) && !x.is_blocked(),
        DecisionArg::Deny => decision == Some(Decision::Deny),
        DecisionArg::Review => decision == Some(Decision::Review) || !x.reviews.is_empty(),
        DecisionArg::Blocked => x.is_blocked(),
        DecisionArg::Passthrough => decision == Some(Decision::Passthrough),
    }
}

/// The line said when filters hid exchanges, or `None` when they hid none.
pub fn hidden_note(hidden: usize) -> Option<String> {
    (hidden > 0).then(|| {
        format!(
            "{hidden} exchange{} hidden by filters",
            if hidden == 1 { "" } else { "s" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-05-01T13:00:00Z".parse().unwrap()
    }

    fn filter(args: &[&str]) -> Filter {
        filter_result(args).unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
    }

    fn filter_result(args: &[&str]) -> anyhow::Result<Filter> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            filter: FilterArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("t").chain(args.iter().copied()),
        )?;
        Filter::new(&cli.filter, now())
    }

    /// The labels of the exchanges a filter shows in a timeline.
    fn shown_in(t: &Timeline, args: &[&str]) -> Vec<String> {
        let f = filter(args);
        t.exchanges_in_order()
            .filter(|x| f.exchange(x))
            .map(|x| x.label.clone())
            .collect()
    }

    #[test]
    fn globs_match_whole_names_with_star_and_question_mark() {
        let g = Glob::new("host", "*.googleapis.com", true).unwrap();
        assert!(g.is_match("storage.googleapis.com"));
        assert!(g.is_match("STORAGE.googleapis.com"));
        assert!(!g.is_match("googleapis.com.evil.example"));
        assert!(!g.is_match("storage.googleapis.com.evil"));
        let g = Glob::new("path", "/v?/*", false).unwrap();
        assert!(g.is_match("/v1/projects/p/secrets"));
        assert!(!g.is_match("/v10/x"));
        // Regex characters in a glob are literal.
        assert!(Glob::new("path", "/a.b", false).unwrap().is_match("/a.b"));
        assert!(!Glob::new("path", "/a.b", false).unwrap().is_match("/aXb"));
    }

    #[test]
    fn ports_and_ipv6_addresses_leave_a_host() {
        assert_eq!(host_only("example.com:8443"), "example.com");
        assert_eq!(host_only("example.com"), "example.com");
        assert_eq!(host_only("[fd20:ce::254]:80"), "[fd20:ce::254]");
        assert_eq!(host_only("[fd20:ce::254]"), "[fd20:ce::254]");
    }

    #[test]
    fn statuses_and_times_parse_or_say_what_to_write() {
        assert_eq!(Status::parse("403").unwrap(), Status::Code(403));
        assert_eq!(Status::parse("4xx").unwrap(), Status::Class(4));
        assert!(Status::Class(4).matches(403) && !Status::Class(4).matches(500));
        for bad in ["4x", "forbidden", "700", "6xx"] {
            let e = Status::parse(bad).unwrap_err().to_string();
            assert!(e.contains("4xx"), "{bad}: {e}");
        }
        let t = |v: &str| parse_time_arg("since", v, now()).map(|t| t.to_string());
        assert_eq!(t("15m").unwrap(), "2026-05-01T12:45:00Z");
        assert_eq!(t("1h30m").unwrap(), "2026-05-01T11:30:00Z");
        assert_eq!(t("1d").unwrap(), "2026-04-30T13:00:00Z");
        assert_eq!(t("2026-05-01T12:00:00Z").unwrap(), "2026-05-01T12:00:00Z");
        assert_eq!(
            t("2026-05-01T14:00:00+02:00").unwrap(),
            "2026-05-01T12:00:00Z"
        );
        assert!(t("yesterday").unwrap_err().to_string().contains("RFC 3339"));
        assert!(t("-5m").is_err());
        let e = filter_result(&["--since", "1m", "--until", "1h"]).unwrap_err();
        assert!(e.to_string().contains("is after --until"), "{e}");
        assert!(filter_result(&["--decision", "maybe"]).is_err());
    }

    #[tokio::test]
    async fn each_kind_of_filter_picks_its_exchanges() {
        let (_f, t) = crate::timeline::fixture_timeline_auditor().await;
        let shown = |args: &[&str]| shown_in(&t, args);
        // The auditor fixture: 1 list, 2 secret read, 3 paste upload, 4 refused push,
        // 5 truncated upload, 6 metadata token, 7 refused delete (403), 8 metadata project.
        assert_eq!(shown(&[]), ["1", "2", "3", "4", "5", "6", "7", "8"]);
        assert_eq!(shown(&["--host", "*.googleapis.com"]), ["1", "2", "5", "7"]);
        assert_eq!(
            shown(&["--host", "*.googleapis.com", "--decision", "deny"]),
            ["7"]
        );
        assert_eq!(shown(&["--method", "delete"]), ["7"]);
        assert_eq!(
            shown(&["--method", "PUT", "--method", "POST"]),
            ["3", "4", "5"]
        );
        assert_eq!(shown(&["--path", "/storage/v1/b/logs/o"]), ["1"]);
        assert_eq!(shown(&["--path", "/storage/*"]), ["1", "7"]);
        assert_eq!(shown(&["--status", "4xx"]), ["7"]);
        assert_eq!(shown(&["--status", "201", "--status", "403"]), ["3", "7"]);
        assert_eq!(shown(&["--service", "storage"]), ["1", "5", "7"]);
        assert_eq!(shown(&["--service", "secretmanager.googleapis.com"]), ["2"]);
        assert_eq!(
            shown(&["--permission", "storage.objects.*"]),
            ["1", "5", "7"]
        );
        assert_eq!(shown(&["--permission", "storage.objects.delete"]), ["7"]);
        assert_eq!(shown(&["--decision", "blocked"]), ["4", "7"]);
        assert_eq!(
            shown(&["--decision", "allow"]),
            ["1", "2", "3", "5", "6", "8"]
        );
        assert_eq!(shown(&["--masked"]), ["1", "2", "3", "6"]);
        assert_eq!(shown(&["--git-ref", "refs/heads/*"]), ["4"]);
        assert_eq!(shown(&["--git-ref", "refs/tags/*"]), Vec::<String>::new());
        assert_eq!(shown(&["--hide-metadata"]), ["1", "2", "3", "4", "5", "7"]);
    }

    #[tokio::test]
    async fn time_filters_use_the_exchange_start() {
        let (_f, t) = crate::timeline::fixture_timeline_auditor().await;
        let x7 = t.find("7").unwrap();
        let f = filter(&["--since", &x7.first_time]);
        let labels: Vec<&str> = t
            .exchanges_in_order()
            .filter(|x| f.exchange(x))
            .map(|x| x.label.as_str())
            .collect();
        assert_eq!(labels, ["7", "8"]);
        let f = filter(&["--until", &x7.first_time]);
        assert_eq!(t.exchanges_in_order().filter(|x| f.exchange(x)).count(), 7);
    }

    #[tokio::test]
    async fn gaps_and_session_events_survive_every_filter_and_refusals_follow_the_rules() {
        let (_f, t) = crate::timeline::fixture_timeline_auditor().await;
        let kinds = |f: &Filter| -> Vec<&'static str> {
            f.narrow(&t)
                .timeline
                .items
                .iter()
                .filter_map(|i| match i {
                    Item::Start { .. } => Some("start"),
                    Item::Gap { .. } => Some("gap"),
                    Item::End { .. } => Some("end"),
                    Item::Blocked { .. } => Some("refused"),
                    _ => None,
                })
                .collect()
        };
        let f = filter(&[
            "--host",
            "nothing.example",
            "--until",
            "2000-01-01T00:00:00Z",
        ]);
        let narrowed = f.narrow(&t);
        assert_eq!(narrowed.hidden, 8);
        assert!(narrowed.timeline.exchanges.is_empty());
        assert_eq!(kinds(&f), ["start", "gap", "end"]);
        // A refusal before any request has no host: only time, pod and decision judge it.
        assert_eq!(
            kinds(&filter(&["--decision", "blocked"])),
            ["start", "gap", "refused", "end"]
        );
        assert_eq!(
            kinds(&filter(&["--decision", "deny"])),
            ["start", "gap", "end"]
        );
        assert_eq!(kinds(&filter(&[])), ["start", "gap", "refused", "end"]);
        assert_eq!(
            hidden_note(narrowed.hidden).unwrap(),
            "8 exchanges hidden by filters"
        );
        assert_eq!(hidden_note(1).unwrap(), "1 exchange hidden by filters");
        assert_eq!(hidden_note(0), None);
    }

    #[test]
    fn dns_and_connection_records_follow_the_rules() {
        let rec = |json: &str| -> Record {
            serde_json::from_str(&format!(
                r#"{{"seq":1,"time":"2026-05-01T12:00:00Z",{json},"chain":"{}"}}"#,
                "0".repeat(64)
            ))
            .unwrap()
        };
        let dns = rec(
            r#""kind":"dns","transport":"udp","client":"10.0.0.5:5353","name":"storage.googleapis.com","qtype":"A","rcode":"NOERROR","decision":"allow","elapsed_us":5"#,
        );
        let conn = rec(
            r#""kind":"conn_open","conn":1,"client":"10.0.0.5:4000","dst":"1.2.3.4:443","capture":"redirect""#,
        );
        let gap = rec(r#""kind":"gap","lost":"records","reason":"disk full""#);
        assert!(filter(&["--host", "*.googleapis.com"]).record(&dns, None));
        assert!(!filter(&["--host", "*.example.com"]).record(&dns, None));
        assert!(!filter(&["--method", "GET"]).record(&dns, None));
        assert!(filter(&["--decision", "allow"]).record(&dns, None));
        assert!(!filter(&["--decision", "deny"]).record(&dns, None));
        assert!(filter(&[]).record(&conn, None));
        assert!(!filter(&["--host", "*"]).record(&conn, None));
        assert!(filter(&["--host", "x", "--since", "1m"]).record(&gap, None));
        assert!(!filter(&[]).record(&conn, Some(false)));
    }
}
