//! git smart-HTTP as the sidecar sees it: which requests are fetches and pushes, the ref
//! updates a push asks for and the objects a fetch wants, and the report that refuses a push
//! so that `git push` prints `! [remote rejected] main (protected by AgentSession "fix-ci")`.
//!
//! Parsers are incremental (fed the body in any chunks) and stop at the pack: pack data is
//! never parsed or held. References: gitprotocol-http(5), gitprotocol-pack(5),
//! gitprotocol-common(5), gitprotocol-v2(5).

use std::fmt;

/// The largest pkt-line, length prefix included (gitprotocol-common).
pub const MAX_PKT_LEN: usize = 65520;

/// Content type of a `git-receive-pack` response.
pub const RECEIVE_PACK_RESULT: &str = "application/x-git-receive-pack-result";

/// Content type of a `git-upload-pack` response.
pub const UPLOAD_PACK_RESULT: &str = "application/x-git-upload-pack-result";

/// The two git services of smart HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    /// Fetch and clone.
    UploadPack,
    /// Push.
    ReceivePack,
}

impl GitService {
    /// `git-upload-pack` or `git-receive-pack`.
    pub fn name(self) -> &'static str {
        match self {
            GitService::UploadPack => "git-upload-pack",
            GitService::ReceivePack => "git-receive-pack",
        }
    }
}

/// Which half of a smart-HTTP exchange a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `GET …/info/refs?service=…`: the ref advertisement.
    Advertisement,
    /// `POST …/git-upload-pack` or `POST …/git-receive-pack`: the negotiation or the push.
    Rpc,
}

/// A request recognised as git smart HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartHttpRequest {
    /// Fetch or push.
    pub service: GitService,
    /// Advertisement or RPC.
    pub phase: Phase,
    /// The repository path, before `/info/refs` or `/git-*-pack`: `/org/repo.git`.
    pub repository: String,
}

/// Recognises git smart HTTP from the request line. The dumb protocol (`info/refs` without
/// `service=`) and anything else give `None`. The path is normalised first
/// ([`crate::path::normalize_path`]) and read both ways servers read it, the service names
/// compared without regard to case and the query decoded, so that `git%2Dreceive-pack`,
/// `//` and `/./` spellings of a push are pushes here too.
pub fn smart_http(method: &str, path: &str, query: Option<&str>) -> Option<SmartHttpRequest> {
    let normalized = crate::path::normalize_path(path);
    smart_http_normal(method, &normalized.path, query)
        .or_else(|| smart_http_normal(method, &normalized.decoded, query))
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    (text.is_char_boundary(cut) && text[cut..].eq_ignore_ascii_case(suffix)).then(|| &text[..cut])
}

fn smart_http_normal(method: &str, path: &str, query: Option<&str>) -> Option<SmartHttpRequest> {
    let method = method.to_ascii_uppercase();
    if method == "GET"
        && let Some(repository) = strip_suffix_ignore_case(path, "/info/refs")
    {
        let service = query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (crate::glob::decode_path(key) == "service").then(|| crate::glob::decode_path(value))
        })?;
        let service = match service.to_ascii_lowercase().as_str() {
            "git-upload-pack" => GitService::UploadPack,
            "git-receive-pack" => GitService::ReceivePack,
            _ => return None,
        };
        return Some(SmartHttpRequest {
            service,
            phase: Phase::Advertisement,
            repository: repository.to_owned(),
        });
    }
    if method == "POST" {
        for service in [GitService::UploadPack, GitService::ReceivePack] {
            if let Some(repository) =
                strip_suffix_ignore_case(path, service.name()).and_then(|p| p.strip_suffix('/'))
            {
                return Some(SmartHttpRequest {
                    service,
                    phase: Phase::Rpc,
                    repository: repository.to_owned(),
                });
            }
        }
    }
    None
}

/// Why a git request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The four length bytes are not hex.
    #[error("invalid pkt-line length {0:?}")]
    BadLength(String),
    /// The length is 3 (reserved) or over the maximum.
    #[error("pkt-line length {0} is not allowed (4 to 65520, or 0000/0001/0002)")]
    LengthOutOfRange(usize),
    /// A command line is not `<old-id> <new-id> <ref>`.
    #[error("malformed ref update {0:?}")]
    BadCommand(String),
    /// The body ended before the command list did.
    #[error("the push request ended before its command list was complete")]
    Truncated,
}

/// One pkt-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A data line (the payload, without the length).
    Data(Vec<u8>),
    /// `0000`.
    Flush,
    /// `0001` (protocol v2 section delimiter).
    Delim,
    /// `0002` (protocol v2 response end).
    ResponseEnd,
}

/// An incremental pkt-line decoder: push bytes in any chunks, pull whole packets.
#[derive(Debug, Default)]
pub struct PktLineDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl PktLineDecoder {
    /// Appends bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole packet, `None` when more bytes are needed.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, GitError> {
        let available = &self.buf[self.start..];
        if available.len() < 4 {
            return Ok(None);
        }
        let len = parse_length(&available[..4])?;
        let packet = match len {
            0 => Packet::Flush,
            1 => Packet::Delim,
            2 => Packet::ResponseEnd,
            3 => return Err(GitError::LengthOutOfRange(3)),
            n if n > MAX_PKT_LEN => return Err(GitError::LengthOutOfRange(n)),
            n if available.len() < n => return Ok(None),
            n => Packet::Data(available[4..n].to_vec()),
        };
        self.start += len.max(4);
        // Keep the buffer from growing with consumed bytes.
        if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(packet))
    }

    /// Bytes pushed but not yet returned as packets.
    pub fn remaining(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn parse_length(bytes: &[u8]) -> Result<usize, GitError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| GitError::BadLength(String::from_utf8_lossy(bytes).into_owned()))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GitError::BadLength(text.to_owned()));
    }
    usize::from_str_radix(text, 16).map_err(|_| GitError::BadLength(text.to_owned()))
}

/// Encodes one data pkt-line.
pub fn pkt_line(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The flush packet.
pub const FLUSH: &[u8] = b"0000";

/// What a ref update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefUpdateKind {
    /// The ref does not exist yet (old id is all zeros).
    Create,
    /// The ref is removed (new id is all zeros).
    Delete,
    /// The ref moves. Whether that is a fast-forward or a forced rewrite depends on the
    /// object graph, which is not known here.
    Update,
}

/// One `<old-id> <new-id> <ref>` command of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The id the client believes the ref has (hex; all zeros for a new ref).
    pub old: String,
    /// The id the ref should get (hex; all zeros to delete it).
    pub new: String,
    /// The full ref name: `refs/heads/main`.
    pub name: String,
}

impl RefUpdate {
    /// Create, delete or update.
    pub fn kind(&self) -> RefUpdateKind {
        if is_zero_id(&self.old) {
            RefUpdateKind::Create
        } else if is_zero_id(&self.new) {
            RefUpdateKind::Delete
        } else {
            RefUpdateKind::Update
        }
    }

    /// The name git prints: `main` for `refs/heads/main`, `v1` for `refs/tags/v1`.
    pub fn short_name(&self) -> &str {
        self.name
            .strip_prefix("refs/heads/")
            .or_else(|| self.name.strip_prefix("refs/tags/"))
            .unwrap_or(&self.name)
    }
}

impl RefUpdate {
    /// The change without the ref name: `update 1111111 -> 2222222`, `create at 2222222`,
    /// `delete, was 1111111` (ids cut to 12 digits).
    pub fn change(&self) -> String {
        let short = |id: &str| id.get(..12).unwrap_or(id).to_owned();
        match self.kind() {
            RefUpdateKind::Create => format!("create at {}", short(&self.new)),
            RefUpdateKind::Delete => format!("delete, was {}", short(&self.old)),
            RefUpdateKind::Update => {
                format!("update {} -> {}", short(&self.old), short(&self.new))
            }
        }
    }
}

impl fmt::Display for RefUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |id: &str| id.get(..12).unwrap_or(id).to_owned();
        match self.kind() {
            RefUpdateKind::Create => write!(f, "create {} at {}", self.name, short(&self.new)),
            RefUpdateKind::Delete => write!(f, "delete {} (was {})", self.name, short(&self.old)),
            RefUpdateKind::Update => write!(
                f,
                "update {} {} -> {}",
                self.name,
                short(&self.old),
                short(&self.new)
            ),
        }
    }
}

fn is_zero_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b == b'0')
}

fn is_object_id(id: &str) -> bool {
    (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses `<old> <new> <ref>`, tolerating a trailing LF.
fn parse_command(line: &[u8]) -> Result<RefUpdate, GitError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| GitError::BadCommand(String::from_utf8_lossy(line).into_owned()))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let bad = || GitError::BadCommand(text.to_owned());
    let mut parts = text.splitn(3, ' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !is_object_id(old) || !is_object_id(new) || old.len() != new.len() || name.is_empty() {
        return Err(bad());
    }
    Ok(RefUpdate {
        old: old.to_owned(),
        new: new.to_owned(),
        name: name.to_owned(),
    })
}

/// Splits `payload\0capabilities` into the payload and the capability list.
fn split_capabilities(line: &[u8]) -> (&[u8], Vec<String>) {
    match line.iter().position(|&b| b == 0) {
        Some(nul) => {
            let caps = String::from_utf8_lossy(&line[nul + 1..]);
            let caps = caps.split_ascii_whitespace().map(str::to_owned).collect();
            (&line[..nul], caps)
        }
        None => (line, Vec::new()),
    }
}

/// What a `git-receive-pack` request asks for, up to (not including) its pack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivePackRequest {
    /// The ref updates, in the order the client sent them.
    pub updates: Vec<RefUpdate>,
    /// Capabilities the client asked for: `report-status`, `side-band-64k`, `atomic`…
    pub capabilities: Vec<String>,
    /// `git push -o` options.
    pub push_options: Vec<String>,
    /// `shallow` ids sent before the commands.
    pub shallow: Vec<String>,
    /// Whether the commands came inside a signed push certificate.
    pub signed: bool,
}

impl ReceivePackRequest {
    fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }

    /// How a report to this client must be framed.
    pub fn report_framing(&self) -> ReportFraming {
        let status =
            self.has_capability("report-status") || self.has_capability("report-status-v2");
        let band = if self.has_capability("side-band-64k") {
            Some(SideBand::Large)
        } else if self.has_capability("side-band") {
            Some(SideBand::Small)
        } else {
            None
        };
        ReportFraming { status, band }
    }
}

/// Where the receive-pack parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReceiveState {
    Commands {
        first: bool,
    },
    Certificate {
        in_commands: bool,
        in_signature: bool,
    },
    AfterCertificate,
    PushOptions,
    Pack,
}

/// Whether the parser has everything policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    NeedMore,
    /// The command list (and push options) are complete; what follows is the pack.
    Complete,
}

/// An incremental parser of a `git-receive-pack` request body.
#[derive(Debug)]
pub struct ReceivePackParser {
    decoder: PktLineDecoder,
    state: ReceiveState,
    request: ReceivePackRequest,
    /// Bytes of the body before the pack.
    header_len: u64,
}

impl Default for ReceivePackParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceivePackParser {
    /// A parser at the start of a body.
    pub fn new() -> Self {
        ReceivePackParser {
            decoder: PktLineDecoder::default(),
            state: ReceiveState::Commands { first: true },
            request: ReceivePackRequest::default(),
            header_len: 0,
        }
    }

    /// Feeds the next chunk of the body. Pack bytes after the commands are ignored.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Progress, GitError> {
        if self.state == ReceiveState::Pack {
            return Ok(Progress::Complete);
        }
        self.decoder.push(chunk);
        while let Some(packet) = self.decoder.next_packet()? {
            self.header_len += match &packet {
                Packet::Data(payload) => payload.len() as u64 + 4,
                _ => 4,
            };
            self.accept(packet)?;
            if self.state == ReceiveState::Pack {
                // The rest is pack data: drop it rather than hold it.
                self.decoder = PktLineDecoder::default();
                return Ok(Progress::Complete);
            }
        }
        Ok(Progress::NeedMore)
    }

    /// Ends the body: an error if it ended before the command list did.
    pub fn finish(self) -> Result<ReceivePackRequest, GitError> {
        match self.state {
            ReceiveState::Pack => Ok(self.request),
            _ => Err(GitError::Truncated),
        }
    }

    /// The request as parsed so far.
    pub fn request(&self) -> &ReceivePackRequest {
        &self.request
    }

    /// The length of the body before the pack, once complete.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    fn accept(&mut self, packet: Packet) -> Result<(), GitError> {
        let push_options = |request: &ReceivePackRequest| {
            if request.has_capability("push-options") {
                ReceiveState::PushOptions
            } else {
                ReceiveState::Pack
            }
        };
        match (self.state, packet) {
            (ReceiveState::Commands { .. }, Packet::Flush) => {
                self.state = push_options(&self.request);
            }
            (ReceiveState::Commands { first }, Packet::Data(line)) => {
                let (payload, caps) = split_capabilities(&line);
                if let Some(id) = payload.strip_prefix(b"shallow ") {
                    self.request
                        .shallow
                        .push(String::from_utf8_lossy(id).trim_end().to_owned());
                    return Ok(());
                }
                if first {
                    self.request.capabilities = caps;
                }
                if payload == b"push-cert" || payload == b"push-cert\n" {
                    self.request.signed = true;
                    self.state = ReceiveState::Certificate {
                        in_commands: false,
                        in_signature: false,
                    };
                    return Ok(());
                }
                self.request.updates.push(parse_command(payload)?);
                self.state = ReceiveState::Commands { first: false };
            }
            (
                ReceiveState::Certificate {
                    in_commands,
                    in_signature,
                },
                Packet::Data(line),
            ) => {
                if line == b"push-cert-end\n" || line == b"push-cert-end" {
                    self.state = ReceiveState::AfterCertificate;
                } else if line == b"\n" && !in_commands {
                    self.state = ReceiveState::Certificate {
                        in_commands: true,
                        in_signature,
                    };
                } else if line.starts_with(b"-----BEGIN ") {
                    self.state = ReceiveState::Certificate {
                        in_commands,
                        in_signature: true,
                    };
                } else if in_commands && !in_signature {
                    self.request.updates.push(parse_command(&line)?);
                }
            }
            (ReceiveState::AfterCertificate, Packet::Flush) => {
                self.state = push_options(&self.request);
            }
            (ReceiveState::PushOptions, Packet::Data(line)) => {
                let option = String::from_utf8_lossy(&line);
                self.request
                    .push_options
                    .push(option.trim_end_matches('\n').to_owned());
            }
            (ReceiveState::PushOptions, Packet::Flush) => self.state = ReceiveState::Pack,
            (_, Packet::Data(line)) => {
                return Err(GitError::BadCommand(
                    String::from_utf8_lossy(&line).into_owned(),
                ));
            }
            // Stray delimiters are not part of receive-pack; ignore them.
            (_, _) => {}
        }
        Ok(())
    }
}

/// What a `git-upload-pack` request (a fetch or clone, protocol v0, v1 or v2) asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadPackRequest {
    /// The v2 command (`fetch`, `ls-refs`); `None` for v0/v1.
    pub command: Option<String>,
    /// Capabilities (v0: after the first want; v2: the lines before the delimiter).
    pub capabilities: Vec<String>,
    /// Object ids wanted.
    pub wants: Vec<String>,
    /// Refs wanted by name (v2 `want-ref`).
    pub want_refs: Vec<String>,
    /// Object ids the client has.
    pub haves: Vec<String>,
    /// v2 `ls-refs` prefixes.
    pub ref_prefixes: Vec<String>,
    /// Whether the client said `done`.
    pub done: bool,
}

/// An incremental parser of a `git-upload-pack` request body.
#[derive(Debug, Default)]
pub struct UploadPackParser {
    decoder: PktLineDecoder,
    request: UploadPackRequest,
    in_arguments: bool,
}

impl UploadPackParser {
    /// A parser at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the (decompressed) body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), GitError> {
        self.decoder.push(chunk);
        while let Some(packet) = self.decoder.next_packet()? {
            match packet {
                Packet::Data(line) => self.accept_line(&line),
                Packet::Delim => self.in_arguments = true,
                Packet::Flush | Packet::ResponseEnd => {}
            }
        }
        Ok(())
    }

    /// The request as parsed so far.
    pub fn request(&self) -> &UploadPackRequest {
        &self.request
    }

    /// Ends the body.
    pub fn finish(self) -> UploadPackRequest {
        self.request
    }

    fn accept_line(&mut self, line: &[u8]) {
        let (payload, caps) = split_capabilities(line);
        let text = String::from_utf8_lossy(payload);
        let text = text.trim_end_matches('\n');
        let r = &mut self.request;
        if let Some(command) = text.strip_prefix("command=") {
            r.command = Some(command.to_owned());
            return;
        }
        if r.command.is_some() && !self.in_arguments {
            r.capabilities.push(text.to_owned());
            return;
        }
        let mut words = text.splitn(2, ' ');
        let verb = words.next().unwrap_or("");
        let arg = words.next().unwrap_or("");
        match verb {
            "want" => {
                // v0/v1 put capabilities after the first want, separated by spaces.
                let mut parts = arg.split(' ');
                if let Some(id) = parts.next() {
                    r.wants.push(id.to_owned());
                }
                if r.command.is_none() && r.capabilities.is_empty() {
                    r.capabilities = parts.map(str::to_owned).collect();
                }
            }
            "want-ref" => r.want_refs.push(arg.to_owned()),
            "have" => r.haves.push(arg.to_owned()),
            "ref-prefix" => r.ref_prefixes.push(arg.to_owned()),
            "done" => r.done = true,
            _ => {}
        }
        if !caps.is_empty() && r.capabilities.is_empty() {
            r.capabilities = caps;
        }
    }
}

/// Which side-band a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideBand {
    /// `side-band`: 1000-byte packets.
    Small,
    /// `side-band-64k`: 65520-byte packets.
    Large,
}

impl SideBand {
    fn max_payload(self) -> usize {
        match self {
            SideBand::Small => 1000 - 5,
            SideBand::Large => MAX_PKT_LEN - 5,
        }
    }
}

/// How a report to a pushing client is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportFraming {
    /// The client asked for `report-status` (or `-v2`).
    pub status: bool,
    /// The client asked for a side-band.
    pub band: Option<SideBand>,
}

/// A ref the sidecar refuses, and the reason git shows in parentheses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefRejection {
    /// The full ref name.
    pub name: String,
    /// The reason, one line: `protected by AgentSession "fix-ci"`.
    pub reason: String,
}

/// An HTTP response the sidecar sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalResponse {
    /// The HTTP status.
    pub status: u16,
    /// The Content-Type header.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

/// The response that refuses a whole push: `unpack ok` and one `ng <ref> <reason>` per
/// rejected ref, in side-band when the client asked for it, with `message` shown to the user
/// as `remote: …` lines. A client that did not ask for `report-status` gets a plain 403,
/// since it could not tell a refused push from an accepted one otherwise.
///
/// The response also needs `Cache-Control: no-cache`, as every smart-HTTP response does.
pub fn refuse_push(
    framing: ReportFraming,
    rejections: &[RefRejection],
    message: &str,
) -> RefusalResponse {
    if !framing.status {
        return RefusalResponse {
            status: 403,
            content_type: "text/plain; charset=utf-8",
            body: format!("{}\n", one_line(message)).into_bytes(),
        };
    }
    let mut report = pkt_line(b"unpack ok\n");
    for r in rejections {
        report.extend(pkt_line(
            format!("ng {} {}\n", one_line(&r.name), one_line(&r.reason)).as_bytes(),
        ));
    }
    report.extend_from_slice(FLUSH);
    let body = match framing.band {
        None => report,
        Some(band) => {
            let mut body = Vec::new();
            for line in message.lines().filter(|l| !l.is_empty()) {
                body.extend(side_band(band, 2, format!("{line}\n").as_bytes()));
            }
            body.extend(side_band(band, 1, &report));
            body.extend_from_slice(FLUSH);
            body
        }
    };
    RefusalResponse {
        status: 200,
        content_type: RECEIVE_PACK_RESULT,
        body,
    }
}

/// Wraps `data` in side-band packets of `band` (1 data, 2 progress, 3 error).
pub fn side_band(band: SideBand, channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    for piece in data.chunks(band.max_payload()) {
        let mut payload = Vec::with_capacity(piece.len() + 1);
        payload.push(channel);
        payload.extend_from_slice(piece);
        out.extend(pkt_line(&payload));
    }
    out
}

/// A reason or ref name on one line, as the protocol needs.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OLD: &str = "1111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    /// A push body as git 2.4x sends it: commands, flush, then the pack.
    fn push_body() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(pkt_line(
            format!("{OLD} {NEW} refs/heads/main\0 report-status side-band-64k object-format=sha1 agent=git/2.43.0").as_bytes(),
        ));
        body.extend(pkt_line(
            format!("{ZERO} {NEW} refs/heads/feature").as_bytes(),
        ));
        body.extend(pkt_line(format!("{OLD} {ZERO} refs/tags/v1").as_bytes()));
        body.extend_from_slice(FLUSH);
        body.extend_from_slice(
            b"PACK\x00\x00\x00\x02\x00\x00\x00\x01 pack bytes 0000 that look like pkt-lines",
        );
        body
    }

    #[test]
    fn recognises_smart_http_requests() {
        let cases = [
            (
                "GET",
                "/org/repo.git/info/refs",
                Some("service=git-upload-pack"),
                Some((
                    GitService::UploadPack,
                    Phase::Advertisement,
                    "/org/repo.git",
                )),
            ),
            (
                "GET",
                "/org/repo.git/info/refs",
                Some("service=git-receive-pack"),
                Some((
                    GitService::ReceivePack,
                    Phase::Advertisement,
                    "/org/repo.git",
                )),
            ),
            (
                "POST",
                "/org/repo.git/git-upload-pack",
                None,
                Some((GitService::UploadPack, Phase::Rpc, "/org/repo.git")),
            ),
            (
                "POST",
                "/org/repo/git-receive-pack",
                None,
                Some((GitService::ReceivePack, Phase::Rpc, "/org/repo")),
            ),
            ("GET", "/org/repo.git/info/refs", None, None),
            (
                "GET",
                "/org/repo.git/info/refs",
                Some("service=git-frobnicate"),
                None,
            ),
            ("GET", "/org/repo.git/git-upload-pack", None, None),
            ("POST", "/org/repo.git/xgit-upload-pack", None, None),
        ];
        for (method, path, query, want) in cases {
            let got = smart_http(method, path, query).map(|r| (r.service, r.phase, r.repository));
            let want = want.map(|(s, p, r)| (s, p, r.to_owned()));
            assert_eq!(got, want, "{method} {path} {query:?}");
        }
    }

    /// Spellings of a push that servers route to git-receive-pack.
    #[test]
    fn recognises_pushes_however_the_path_is_spelt() {
        for (method, path, query) in [
            ("POST", "/org/repo.git/git%2Dreceive-pack", None),
            ("POST", "/org/repo.git/git%2dreceive%2dpack", None),
            ("POST", "/org/repo.git//git-receive-pack", None),
            ("POST", "/org/repo.git/./git-receive-pack", None),
            ("POST", "/org/repo.git/x/../git-receive-pack", None),
            ("POST", "/org/repo.git/x%2F..%2Fgit-receive-pack", None),
            ("post", "/org/repo.git/git-receive-pack", None),
            (
                "GET",
                "/org/repo.git/info/refs",
                Some("service=git%2Dreceive-pack"),
            ),
            (
                "GET",
                "/org/repo.git/info//refs",
                Some("x=1&service=git-receive-pack"),
            ),
        ] {
            let got = smart_http(method, path, query);
            assert_eq!(
                got.as_ref().map(|r| (r.service, r.repository.as_str())),
                Some((GitService::ReceivePack, "/org/repo.git")),
                "{method} {path} {query:?}"
            );
        }
    }

    #[test]
    fn decodes_special_packets() {
        let mut d = PktLineDecoder::default();
        d.push(b"0000000100020006a\n000");
        assert_eq!(d.next_packet().unwrap(), Some(Packet::Flush));
        assert_eq!(d.next_packet().unwrap(), Some(Packet::Delim));
        assert_eq!(d.next_packet().unwrap(), Some(Packet::ResponseEnd));
        assert_eq!(
            d.next_packet().unwrap(),
            Some(Packet::Data(b"a\n".to_vec()))
        );
        assert_eq!(d.next_packet().unwrap(), None);
        d.push(b"5hello");
        assert_eq!(d.next_packet().unwrap(), Some(Packet::Data(b"h".to_vec())));
        assert_eq!(d.remaining(), b"ello");
    }

    #[test]
    fn refuses_bad_lengths() {
        for bad in [&b"zzzz"[..], b"0003", b"fff1", b"00-1"] {
            let mut d = PktLineDecoder::default();
            d.push(bad);
            assert!(d.next_packet().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_receive_pack_commands() {
        let body = push_body();
        let mut p = ReceivePackParser::new();
        assert_eq!(p.feed(&body).unwrap(), Progress::Complete);
        let header = p.header_len();
        let r = p.finish().unwrap();
        assert_eq!(&body[header as usize..header as usize + 4], b"PACK");
        assert_eq!(
            r.updates
                .iter()
                .map(|u| (u.name.as_str(), u.kind()))
                .collect::<Vec<_>>(),
            vec![
                ("refs/heads/main", RefUpdateKind::Update),
                ("refs/heads/feature", RefUpdateKind::Create),
                ("refs/tags/v1", RefUpdateKind::Delete),
            ]
        );
        assert_eq!(r.updates[0].old, OLD);
        assert_eq!(r.updates[0].new, NEW);
        assert!(r.capabilities.contains(&"report-status".to_owned()));
        assert_eq!(
            r.report_framing(),
            ReportFraming {
                status: true,
                band: Some(SideBand::Large)
            }
        );
        assert_eq!(r.updates[0].short_name(), "main");
        assert_eq!(r.updates[2].short_name(), "v1");
    }

    #[test]
    fn parses_push_options_and_shallow() {
        let mut body = Vec::new();
        body.extend(pkt_line(format!("shallow {OLD}").as_bytes()));
        body.extend(pkt_line(
            format!("{OLD} {NEW} refs/heads/main\0report-status push-options").as_bytes(),
        ));
        body.extend_from_slice(FLUSH);
        body.extend(pkt_line(b"ci.skip"));
        body.extend(pkt_line(b"merge_request.create"));
        body.extend_from_slice(FLUSH);
        body.extend_from_slice(b"PACK");
        let mut p = ReceivePackParser::new();
        assert_eq!(p.feed(&body).unwrap(), Progress::Complete);
        let r = p.finish().unwrap();
        assert_eq!(r.shallow, vec![OLD.to_owned()]);
        assert_eq!(r.push_options, vec!["ci.skip", "merge_request.create"]);
        assert_eq!(r.updates.len(), 1);
        assert_eq!(r.report_framing().band, None);
    }

    #[test]
    fn parses_signed_pushes() {
        let mut body = Vec::new();
        body.extend(pkt_line(b"push-cert\0report-status side-band-64k"));
        for line in [
            "certificate version 0.1\n",
            "pusher Agent <agent@example.com> 1700000000 +0000\n",
            "pushee https://git.example.com/repo.git\n",
            "nonce 1700000000-abc\n",
            "\n",
        ] {
            body.extend(pkt_line(line.as_bytes()));
        }
        body.extend(pkt_line(
            format!("{OLD} {NEW} refs/heads/main\n").as_bytes(),
        ));
        body.extend(pkt_line(b"-----BEGIN PGP SIGNATURE-----\n"));
        body.extend(pkt_line(b"iQEzBAABCAAdFiEE\n"));
        body.extend(pkt_line(b"-----END PGP SIGNATURE-----\n"));
        body.extend(pkt_line(b"push-cert-end\n"));
        body.extend_from_slice(FLUSH);
        let mut p = ReceivePackParser::new();
        assert_eq!(p.feed(&body).unwrap(), Progress::Complete);
        let r = p.finish().unwrap();
        assert!(r.signed);
        assert_eq!(r.updates.len(), 1);
        assert_eq!(r.updates[0].name, "refs/heads/main");
    }

    #[test]
    fn sha256_ids_and_errors() {
        let old = "a".repeat(64);
        let new = "b".repeat(64);
        let line = pkt_line(format!("{old} {new} refs/heads/x\0report-status").as_bytes());
        let mut p = ReceivePackParser::new();
        p.feed(&line).unwrap();
        p.feed(FLUSH).unwrap();
        assert_eq!(p.finish().unwrap().updates[0].new, new);

        let mut p = ReceivePackParser::new();
        let err = p.feed(&pkt_line(b"not a command")).unwrap_err();
        assert!(matches!(err, GitError::BadCommand(_)));

        let mut p = ReceivePackParser::new();
        p.feed(&pkt_line(format!("{OLD} {NEW} refs/heads/main").as_bytes()))
            .unwrap();
        assert_eq!(p.finish(), Err(GitError::Truncated));
    }

    #[test]
    fn parses_upload_pack_v0() {
        let mut body = Vec::new();
        body.extend(pkt_line(
            format!(
                "want {NEW} multi_ack_detailed side-band-64k thin-pack ofs-delta agent=git/2.43.0\n"
            )
            .as_bytes(),
        ));
        body.extend(pkt_line(format!("want {OLD}\n").as_bytes()));
        body.extend_from_slice(FLUSH);
        body.extend(pkt_line(format!("have {ZERO}\n").as_bytes()));
        body.extend(pkt_line(b"done\n"));
        let mut p = UploadPackParser::new();
        p.feed(&body).unwrap();
        let r = p.finish();
        assert_eq!(r.command, None);
        assert_eq!(r.wants, vec![NEW.to_owned(), OLD.to_owned()]);
        assert_eq!(r.haves, vec![ZERO.to_owned()]);
        assert!(r.done);
        assert!(r.capabilities.contains(&"side-band-64k".to_owned()));
    }

    #[test]
    fn parses_upload_pack_v2() {
        let mut body = Vec::new();
        body.extend(pkt_line(b"command=fetch\n"));
        body.extend(pkt_line(b"agent=git/2.43.0\n"));
        body.extend(pkt_line(b"object-format=sha1\n"));
        body.extend_from_slice(b"0001");
        body.extend(pkt_line(b"thin-pack\n"));
        body.extend(pkt_line(format!("want {NEW}\n").as_bytes()));
        body.extend(pkt_line(b"want-ref refs/heads/main\n"));
        body.extend(pkt_line(format!("have {OLD}\n").as_bytes()));
        body.extend(pkt_line(b"done\n"));
        body.extend_from_slice(FLUSH);
        let mut p = UploadPackParser::new();
        p.feed(&body).unwrap();
        let r = p.finish();
        assert_eq!(r.command.as_deref(), Some("fetch"));
        assert_eq!(
            r.capabilities,
            vec!["agent=git/2.43.0", "object-format=sha1"]
        );
        assert_eq!(r.wants, vec![NEW.to_owned()]);
        assert_eq!(r.want_refs, vec!["refs/heads/main"]);
        assert_eq!(r.haves, vec![OLD.to_owned()]);
        assert!(r.done);

        let mut p = UploadPackParser::new();
        let mut body = pkt_line(b"command=ls-refs\n");
        body.extend_from_slice(b"0001");
        body.extend(pkt_line(b"peel\n"));
        body.extend(pkt_line(b"ref-prefix refs/heads/\n"));
        body.extend_from_slice(FLUSH);
        p.feed(&body).unwrap();
        assert_eq!(p.finish().ref_prefixes, vec!["refs/heads/"]);
    }

    /// The exact bytes of a refused push in side-band-64k, built by hand from
    /// gitprotocol-pack ("report-status") and gitprotocol-common (side-band framing).
    #[test]
    fn refused_push_report_in_side_band() {
        let framing = ReportFraming {
            status: true,
            band: Some(SideBand::Large),
        };
        let response = refuse_push(
            framing,
            &[RefRejection {
                name: "refs/heads/main".into(),
                reason: "protected by AgentSession \"fix-ci\"".into(),
            }],
            "cassette: push refused",
        );
        assert_eq!(response.status, 200);
        assert_eq!(
            response.content_type,
            "application/x-git-receive-pack-result"
        );
        // "unpack ok\n" is 10 bytes: 0x0e with the length prefix.
        // "ng refs/heads/main protected by AgentSession \"fix-ci\"\n" is 54 bytes: 0x3a.
        let inner =
            b"000eunpack ok\n003ang refs/heads/main protected by AgentSession \"fix-ci\"\n0000";
        let mut want = Vec::new();
        // Band 2: "\x02cassette: push refused\n" is 24 bytes: 0x1c.
        want.extend_from_slice(b"001c\x02cassette: push refused\n");
        want.extend_from_slice(format!("{:04x}", inner.len() + 5).as_bytes());
        want.push(1);
        want.extend_from_slice(inner);
        want.extend_from_slice(b"0000");
        assert_eq!(
            String::from_utf8_lossy(&response.body),
            String::from_utf8_lossy(&want)
        );
    }

    #[test]
    fn refused_push_report_without_side_band() {
        let framing = ReportFraming {
            status: true,
            band: None,
        };
        let response = refuse_push(
            framing,
            &[RefRejection {
                name: "refs/heads/main".into(),
                reason: "protected\nby x".into(),
            }],
            "ignored without a side-band",
        );
        assert_eq!(
            response.body,
            b"000eunpack ok\n0026ng refs/heads/main protected by x\n0000".to_vec()
        );
    }

    #[test]
    fn clients_without_report_status_get_a_403() {
        let response = refuse_push(
            ReportFraming {
                status: false,
                band: None,
            },
            &[],
            "AgentSession \"fix-ci\" refuses pushes to refs/heads/main",
        );
        assert_eq!(response.status, 403);
        assert!(String::from_utf8_lossy(&response.body).contains("refs/heads/main"));
    }

    #[test]
    fn side_band_splits_long_data() {
        let data = vec![b'x'; 2500];
        let framed = side_band(SideBand::Small, 1, &data);
        let mut d = PktLineDecoder::default();
        d.push(&framed);
        let mut total = 0;
        while let Some(Packet::Data(p)) = d.next_packet().unwrap() {
            assert!(p.len() + 4 <= 1000);
            assert_eq!(p[0], 1);
            total += p.len() - 1;
        }
        assert_eq!(total, 2500);
    }

    fn chunked(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(body[last..p].to_vec());
            last = p;
        }
        chunks.push(body[last..].to_vec());
        chunks
    }

    proptest! {
        #[test]
        fn receive_pack_parsing_ignores_chunking(cuts in proptest::collection::vec(0usize..10_000, 0..20)) {
            let body = push_body();
            let mut whole = ReceivePackParser::new();
            whole.feed(&body).unwrap();
            let want_header = whole.header_len();
            let want = whole.finish().unwrap();
            let mut parts = ReceivePackParser::new();
            for chunk in chunked(&body, &cuts) {
                parts.feed(&chunk).unwrap();
            }
            prop_assert_eq!(parts.header_len(), want_header);
            prop_assert_eq!(parts.finish().unwrap(), want);
        }

        #[test]
        fn pkt_lines_round_trip_under_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
            cuts in proptest::collection::vec(0usize..10_000, 0..20),
        ) {
            let mut body = Vec::new();
            let mut want = Vec::new();
            for p in &payloads {
                if p.is_empty() {
                    body.extend_from_slice(FLUSH);
                    want.push(Packet::Flush);
                } else {
                    body.extend(pkt_line(p));
                    want.push(Packet::Data(p.clone()));
                }
            }
            let mut d = PktLineDecoder::default();
            let mut got = Vec::new();
            for chunk in chunked(&body, &cuts) {
                d.push(&chunk);
                while let Some(packet) = d.next_packet().unwrap() {
                    got.push(packet);
                }
            }
            prop_assert_eq!(got, want);
            prop_assert!(d.remaining().is_empty());
        }

        #[test]
        fn upload_pack_parsing_ignores_chunking(cuts in proptest::collection::vec(0usize..10_000, 0..20)) {
            let mut body = Vec::new();
            body.extend(pkt_line(format!("want {NEW} side-band-64k ofs-delta\n").as_bytes()));
            body.extend(pkt_line(format!("want {OLD}\n").as_bytes()));
            body.extend_from_slice(FLUSH);
            body.extend(pkt_line(format!("have {ZERO}\n").as_bytes()));
            body.extend(pkt_line(b"done\n"));
            let mut whole = UploadPackParser::new();
            whole.feed(&body).unwrap();
            let mut parts = UploadPackParser::new();
            for chunk in chunked(&body, &cuts) {
                parts.feed(&chunk).unwrap();
            }
            prop_assert_eq!(parts.finish(), whole.finish());
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut p = ReceivePackParser::new();
            let _ = p.feed(&bytes);
            let mut u = UploadPackParser::new();
            let _ = u.feed(&bytes);
        }
    }
}
