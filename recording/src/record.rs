//! The record model: what one line of a recording says. Plain serde types that the sidecar
//! constructs and the CLI reads; no encoding, hashing or I/O here (see `chain` and `spool`).
//!
//! Every record on disk is `{"seq":N,"time":"…","kind":"…", <fields of the kind>, "chain":"…"}`.
//! [`Event`] is the part a caller supplies; the recorder adds `seq`, `time` and `chain`.

use serde::{Deserialize, Serialize};

/// Identifies one HTTP exchange (request + response) within a recording.
pub type ExchangeId = u64;
/// Identifies one client connection within a recording.
pub type ConnId = u64;

/// One record as read back from a recording: the envelope plus the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the recording, from 0, without gaps, across segments.
    pub seq: u64,
    /// When the recorder wrote it: RFC 3339, UTC, nanoseconds (`2026-05-01T12:00:00.000000001Z`).
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// Hex SHA-256 over the previous record's `chain` and this record's canonical bytes.
    pub chain: String,
}

/// What happened. Serialized with its `kind` tag first, then its fields in declaration order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The recorder started (or restarted after a crash) for this pod.
    SessionStart(SessionStart),
    /// A client connection was accepted.
    ConnOpen(ConnOpen),
    /// TLS was intercepted (or tunnelled) on a connection.
    Tls(Tls),
    /// A request head, as received from the agent (after masking).
    Request(Request),
    /// A response head, as sent to the agent (after masking).
    Response(Response),
    /// A piece of a request or response body, or the end of one.
    Body(Body),
    /// An exchange is over: timings, sizes, the decision taken and its classification.
    ExchangeEnd(ExchangeEnd),
    /// A request was refused by policy, expiry or a failure to record.
    Blocked(Blocked),
    /// A request held for human review changed state.
    Review(Review),
    /// A placeholder credential was swapped for a real one (the token itself is never recorded).
    Token(Token),
    /// A brokered credential's placeholder went where it is not swapped (another host, an
    /// unverified connection, another presentation): it went as it is, worthless.
    Placeholder(Placeholder),
    /// A git smart-HTTP operation was understood.
    Git(Git),
    /// One object of a git pack that was pushed or fetched.
    GitObject(GitObject),
    /// What a git pack held, once it ended.
    GitPack(GitPack),
    /// The parts of a Google batch request, each classified and decided.
    Batch(Batch),
    /// Something could not be recorded; says what and why.
    Gap(Gap),
    /// Bytes of a connection carried without HTTP: a passthrough TLS tunnel, or the protocol
    /// an allowed upgrade switched to.
    Stream(Stream),
    /// One WebSocket message of an upgraded exchange.
    Message(Message),
    /// One DNS query the agent made, and its answer.
    Dns(Dns),
    /// The AgentSession's policy, masking or expiry changed while the recorder ran, and what
    /// follows is decided by the new one.
    SessionChange(SessionChange),
    /// A client connection closed.
    ConnClose(ConnClose),
    /// The end of a segment: signs the chain head. Written by the spool only.
    Seal(Seal),
    /// The session ended normally for this pod.
    SessionEnd(SessionEnd),
}

impl Event {
    /// The `kind` string this event is tagged with.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::SessionStart(_) => "session_start",
            Event::ConnOpen(_) => "conn_open",
            Event::Tls(_) => "tls",
            Event::Request(_) => "request",
            Event::Response(_) => "response",
            Event::Body(_) => "body",
            Event::ExchangeEnd(_) => "exchange_end",
            Event::Blocked(_) => "blocked",
            Event::Review(_) => "review",
            Event::Token(_) => "token",
            Event::Placeholder(_) => "placeholder",
            Event::Git(_) => "git",
            Event::GitObject(_) => "git_object",
            Event::GitPack(_) => "git_pack",
            Event::Batch(_) => "batch",
            Event::Gap(_) => "gap",
            Event::Stream(_) => "stream",
            Event::Message(_) => "message",
            Event::Dns(_) => "dns",
            Event::SessionChange(_) => "session_change",
            Event::ConnClose(_) => "conn_close",
            Event::Seal(_) => "seal",
            Event::SessionEnd(_) => "session_end",
        }
    }

    /// The connection this event names, when it names one.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Event::ConnOpen(c) => Some(c.conn),
            Event::Tls(t) => Some(t.conn),
            Event::Request(r) => Some(r.conn),
            Event::ConnClose(c) => Some(c.conn),
            Event::Stream(s) => Some(s.conn),
            _ => None,
        }
    }

    /// The exchange this event belongs to, when it belongs to one.
    pub fn exchange(&self) -> Option<ExchangeId> {
        match self {
            Event::Request(r) => Some(r.exchange),
            Event::Response(r) => Some(r.exchange),
            Event::Body(b) => Some(b.exchange),
            Event::ExchangeEnd(e) => Some(e.exchange),
            Event::Blocked(b) => b.exchange,
            Event::Review(r) => Some(r.exchange),
            Event::Token(t) => Some(t.exchange),
            Event::Placeholder(p) => Some(p.exchange),
            Event::Git(g) => Some(g.exchange),
            Event::GitObject(o) => Some(o.exchange),
            Event::GitPack(p) => Some(p.exchange),
            Event::Batch(b) => Some(b.exchange),
            Event::Stream(s) => s.exchange,
            Event::Message(m) => Some(m.exchange),
            _ => None,
        }
    }
}

/// An HTTP header as recorded: `[name, value]`, in the order seen.
pub type Header = (String, String);

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `session_start`: who is recording, and the key that signs the recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    pub namespace: String,
    pub session: String,
    pub pod: String,
    pub pod_uid: String,
    /// The session's Ed25519 public key, standard base64 of the 32 raw bytes.
    pub public_key: String,
    /// `cassette-recording` version that wrote the recording.
    pub recorder: String,
    /// `batched` or `strict`.
    pub durability: String,
    /// `closed` or `open`.
    pub on_failure: String,
    pub max_body_bytes: u64,
    /// The KSA the agent runs as, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Who created the AgentSession, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// True when the recorder restarted on a spool that an earlier run left behind.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restarted: bool,
    /// Which key the `digest` of bodies is keyed with, from here on: the first 12 bytes of
    /// HMAC-SHA-256(key, `cassette-digest-key-id-v1`), hex. It tells whoever holds a key
    /// whether it is this one, and nobody else anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_key_id: Option<String>,
}

/// How a connection reached the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capture {
    /// Redirected by iptables; the destination came from `SO_ORIGINAL_DST`.
    Redirect,
    /// An explicit proxy client that sent HTTP `CONNECT`.
    Connect,
    /// A connection into the pod, redirected to the inbound listener; `client` is the peer
    /// outside, `dst` the agent's listener it was headed for.
    Inbound,
}

/// `conn_open`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnOpen {
    pub conn: ConnId,
    /// The agent-side address, `ip:port`.
    pub client: String,
    /// Where the agent meant to connect, `ip:port` (or `host:port` for CONNECT).
    pub dst: String,
    pub capture: Capture,
}

/// `tls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tls {
    pub conn: ConnId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    /// Negotiated with the agent, e.g. `TLSv1_3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Subject of the upstream certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_subject: Option<String>,
    /// Whether the upstream certificate verified against the SNI name.
    pub verified: bool,
    /// True when the connection was tunnelled without interception.
    #[serde(default, skip_serializing_if = "is_false")]
    pub passthrough: bool,
}

/// `request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub exchange: ExchangeId,
    pub conn: ConnId,
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` from `:authority` or `Host`.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub version: String,
    pub headers: Vec<Header>,
}

/// `response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub exchange: ExchangeId,
    pub status: u16,
    pub version: String,
    pub headers: Vec<Header>,
    /// HTTP/2 or chunked trailers, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailers: Option<Vec<Header>>,
}

/// Which way a body travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Agent → upstream.
    Request,
    /// Upstream → agent.
    Response,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// `body`: either a piece of data (`text` or `base64` at `offset`) or, with `final: true`,
/// the end of the body with its full length, keyed digest and whether storage was truncated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    pub exchange: ExchangeId,
    pub direction: Direction,
    /// Byte offset of this piece within the body (for the final record: bytes stored).
    pub offset: u64,
    /// The piece, when it is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The piece, standard base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Marks the last record of this body.
    #[serde(rename = "final", default, skip_serializing_if = "is_false")]
    pub last: bool,
    /// Full length of the body in bytes, stored or not (final record only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// `hmac-sha256:<hex>` of the full body under the session's digest key (final record only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether bytes past `maxBodyBytes` were left out (final record only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// What happened undoing the body's Content-Encoding, when something did: decoding
    /// stopped at maxBodyBytes, failed partway, or the encoding is not one the recorder
    /// decodes (final record only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding: Option<String>,
}

/// Which way the bytes of a stream or a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// Agent → upstream.
    Up,
    /// Upstream → agent.
    Down,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Up => "up",
            Flow::Down => "down",
        }
    }
}

/// `stream`: bytes of a connection the recorder carried without reading HTTP in them, cut
/// like a body: pieces at `offset` (`text` or `base64`, at most `maxBodyBytes` stored per
/// direction), then a `final` record with the full length, the keyed digest and whether
/// storage was truncated. Each record's `time` is when its bytes passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub conn: ConnId,
    /// The exchange whose upgrade started the stream; absent for a passthrough tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeId>,
    pub direction: Flow,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    #[serde(rename = "final", default, skip_serializing_if = "is_false")]
    pub last: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
}

/// `message`: one WebSocket message (its frames joined), masked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub exchange: ExchangeId,
    pub direction: Flow,
    /// `text`, `binary`, `close`, `ping` or `pong`.
    pub opcode: String,
    /// The payload's length on the wire, stored or not.
    pub length: u64,
    /// The payload (masked), when valid UTF-8 …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// … or standard base64 when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Whether bytes past `maxBodyBytes` were left out of `text`/`base64`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Secrets masked in the payload.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub masked: u64,
}

/// `dns`: a query the agent sent (to whichever resolver it named) and what the sidecar did
/// with it: forwarded to the cluster's resolver, or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    /// `udp` or `tcp`.
    pub transport: String,
    /// The agent's socket.
    pub client: String,
    /// The resolver the agent addressed, when the kernel says (TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<String>,
    /// The resolver the sidecar forwarded to; absent when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// The query's name, lower case, without the trailing dot.
    pub name: String,
    /// The query type: `A`, `AAAA`, `TXT`, …
    pub qtype: String,
    /// The response code: `NOERROR`, `NXDOMAIN`, `REFUSED`, …
    pub rcode: String,
    /// The answers, each `TYPE value` (`A 10.0.0.5`, `CNAME x.example.`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Time from the query to the answer.
    pub elapsed_us: u64,
    /// Why the query got no answer from the resolver, when it did not: it could not be read
    /// as a DNS query (then dropped), its class is not IN, too many were in flight, no
    /// resolver answered, or it could not be recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was received (masked, at most 512 bytes, standard base64), when it could not be
    /// read as a DNS query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// What was decided about an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    Review,
    Passthrough,
}

/// Time spent in each phase of an exchange, in microseconds. A phase that did not happen
/// (a reused connection has no connect) is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sent_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_us: Option<u64>,
    pub total_us: u64,
    /// Time the sidecar itself added (policy, masking, recording).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_us: Option<u64>,
}

/// What the sidecar understood an exchange to be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// Google service, e.g. `storage.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Google permission, e.g. `storage.objects.delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// `upload-pack` or `receive-pack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_service: Option<String>,
}

/// `exchange_end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeEnd {
    pub exchange: ExchangeId,
    pub timings: Timings,
    /// Request body bytes sent upstream.
    pub bytes_up: u64,
    /// Response body bytes sent to the agent.
    pub bytes_down: u64,
    pub decision: Decision,
    /// The policy rule that decided, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
    /// How many secrets were masked in this exchange.
    #[serde(default)]
    pub masked: u64,
    /// The masks per detector (`google-api-key`, `authorization`, a custom pattern's name…).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub masked_by: std::collections::BTreeMap<String, u64>,
    /// Set when the exchange failed (upstream unreachable, certificate refused, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The response's trailers (HTTP/2 or chunked), which arrive after the body: gRPC puts
    /// its status there. Masked like headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailers: Option<Vec<Header>>,
    /// The request's trailers, when it had any. Masked like headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_trailers: Option<Vec<Header>>,
}

/// `blocked`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    /// Absent when the refusal came before any request was read (e.g. a refused connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeId>,
    /// `policy`, `expired`, `review_timeout`, `recording_failed`, `certificate`, …
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// What the agent was told.
    pub message: String,
}

/// State of a held request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    Pending,
    Approved,
    Denied,
    TimedOut,
}

/// `review`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub exchange: ExchangeId,
    pub id: String,
    pub state: ReviewState,
    /// Who approved or denied, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// How a credential was swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenSwap {
    /// `Authorization: Bearer <placeholder>` → real access token.
    Bearer,
    /// git basic-auth password placeholder → real access token (or, for a brokered
    /// credential, the HTTP Basic password → the Secret's value).
    GitBasic,
    /// `Authorization: token <placeholder>` → the Secret's value.
    Token,
    /// The whole value of a named header (`header`) → the Secret's value.
    Header,
}

/// `token`: never carries the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub exchange: ExchangeId,
    pub host: String,
    pub swap: TokenSwap,
    /// The Google service account whose token was used, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The `spec.credentials` entry whose Secret was swapped in; absent for Workload Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The header that carried it, for swap `header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The brokered value swapped in, masked (`«masked:credential-<entry>:<fingerprint>»`), so
    /// `search` proves which exchanges used a given secret; absent for Workload Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `placeholder`: a brokered credential's placeholder sent where it is not swapped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placeholder {
    pub exchange: ExchangeId,
    /// The `spec.credentials` entry the placeholder stands for.
    pub credential: String,
    /// Where it was sent: the connection's host.
    pub host: String,
    /// `placeholder sent to <host>`, and why it was not swapped there.
    pub note: String,
}

/// One ref update of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    #[serde(rename = "ref")]
    pub name: String,
}

/// `git`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Git {
    pub exchange: ExchangeId,
    /// `upload-pack` (fetch) or `receive-pack` (push).
    pub service: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<RefUpdate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wants: Vec<String>,
}

/// `git_object`: one object of a pushed or fetched pack — what it is and what it names, its
/// contents never (a blob's secrets are its `masks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitObject {
    pub exchange: ExchangeId,
    /// `request` for a push, `response` for a fetch.
    pub direction: Direction,
    /// Where it starts in the pack.
    pub offset: u64,
    /// `commit`, `tree`, `blob` or `tag`; absent for a delta that could not be resolved.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its id (hex); absent for an unresolved delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its size in bytes (an unresolved delta's: the delta's own).
    pub size: u64,
    /// Set when it was stored as a delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<GitDelta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<GitCommit>,
    /// A tree's entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tree: Vec<GitTreeEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<GitTag>,
    /// The secrets masked in its contents (offsets into the object's contents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<GitMask>,
    /// Why its contents were not parsed or fully scanned, when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How a delta object was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitDelta {
    /// The base: its id, or `offset N`.
    pub base: String,
    pub resolved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What a commit names. `message` is masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCommit {
    pub tree: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub signed: bool,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitTreeEntry {
    pub mode: String,
    pub name: String,
    pub id: String,
}

/// What an annotated tag names. `message` is masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitTag {
    pub object: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagger: Option<String>,
    pub message: String,
}

/// A secret masked in an object's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitMask {
    pub detector: String,
    pub fingerprint: String,
    pub offset: u64,
    pub len: u64,
}

/// A secret masked in a file, by the path a tree of the pack gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitPathMask {
    /// The commit whose tree names the path, when a commit of the pack reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub path: String,
    pub blob: String,
    pub detector: String,
    pub fingerprint: String,
}

/// `git_pack`: what a pushed or fetched pack held. The pack's bytes are not stored; the
/// body's `length` and `digest` cover them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitPack {
    pub exchange: ExchangeId,
    pub direction: Direction,
    /// The object count its header announced.
    pub announced: u32,
    /// Objects read.
    pub objects: u32,
    /// Objects per type.
    pub kinds: std::collections::BTreeMap<String, u32>,
    /// Deltas that could not be resolved.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub unresolved: u32,
    /// Whether the pack's trailing checksum matched.
    pub checksum_ok: bool,
    /// Every secret found in a file, with its path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_masks: Vec<GitPathMask>,
    /// Why the pack could not be read to its end, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `batch`: a Google batch request's parts, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub exchange: ExchangeId,
    pub parts: Vec<BatchPart>,
}

/// One part of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    pub method: String,
    /// The part's target, masked.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `unknown` for a Google request cassette cannot classify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// `gap`: something was not recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// What was lost, in words.
    pub lost: String,
    /// Why.
    pub reason: String,
    /// Records not written, when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Bytes of records not written, when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// When the loss began and ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `conn_close`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnClose {
    pub conn: ConnId,
    pub bytes_up: u64,
    pub bytes_down: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `seal`: the last record of a segment. `signature` is Ed25519 over
/// `cassette-seal-v1:` followed by `head` (see FORMAT.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seal {
    /// Segment number, from 1.
    pub segment: u64,
    /// seq of the first record of the segment.
    pub first_seq: u64,
    /// `chain` of the record before this seal: the head being signed.
    pub head: String,
    /// Standard base64 of the 64-byte signature.
    pub signature: String,
    /// True when the segment was sealed on restart, after a crash cut it short.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recovered: bool,
}

/// `session_change`: the sidecar applied a new version of its AgentSession.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionChange {
    /// The AgentSession's `metadata.generation` now applied.
    pub generation: i64,
    /// What changed, of `policy`, `masking` and `expiry`.
    pub changed: Vec<String>,
    /// When the session ends now (RFC 3339), when it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Set when the AgentSession is gone (deleted): the session ended with it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
}

/// `session_end`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionEnd {
    /// Why the session ended, in words (`shutdown`, `expired`, …).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_tag_matches_serde() {
        let events = [
            Event::Gap(Gap {
                lost: "x".into(),
                reason: "y".into(),
                records: None,
                bytes: None,
                from: None,
                to: None,
            }),
            Event::SessionEnd(SessionEnd::default()),
            Event::ConnClose(ConnClose {
                conn: 1,
                bytes_up: 0,
                bytes_down: 0,
                error: None,
            }),
            Event::Stream(Stream {
                conn: 2,
                exchange: None,
                direction: Flow::Up,
                offset: 0,
                text: Some("\u{16}".into()),
                base64: None,
                last: false,
                length: None,
                digest: None,
                truncated: None,
            }),
            Event::Message(Message {
                exchange: 3,
                direction: Flow::Down,
                opcode: "text".into(),
                length: 2,
                text: Some("hi".into()),
                base64: None,
                truncated: false,
                masked: 0,
            }),
            Event::Dns(Dns {
                transport: "udp".into(),
                client: "10.0.0.5:4000".into(),
                asked: None,
                resolver: Some("10.96.0.10:53".into()),
                name: "example.com".into(),
                qtype: "A".into(),
                rcode: "NOERROR".into(),
                answers: vec!["A 93.184.216.34".into()],
                decision: Decision::Allow,
                rule: None,
                elapsed_us: 900,
                error: None,
                base64: None,
            }),
        ];
        for e in events {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["kind"], e.kind());
        }
    }

    #[test]
    fn record_round_trips_through_json() {
        let line = r#"{"seq":3,"time":"2026-05-01T12:00:00.000000000Z","kind":"git","exchange":4,"service":"receive-pack","updates":[{"old":"0000","new":"abcd","ref":"refs/heads/main"}],"chain":"00"}"#;
        let r: Record = serde_json::from_str(line).unwrap();
        assert_eq!(r.event.exchange(), Some(4));
        match &r.event {
            Event::Git(g) => assert_eq!(g.updates[0].name, "refs/heads/main"),
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
    }
}
