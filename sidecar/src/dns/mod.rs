//! The DNS proxy on 15053: every query the agent makes — UDP or TCP port 53, to whichever
//! resolver it named; the capture rules redirect them here — is read, decided by the
//! session's host rules, forwarded only to the cluster's resolver (rebuilt from its question
//! alone, so nothing but what is recorded leaves), and recorded as one `dns` record with its
//! answer. It caches nothing and answers nothing itself but refusals and failures; bytes that
//! are not a DNS query are recorded and dropped.

mod message;

use crate::original_dst::original_dst;
use crate::record::Recording;
use crate::refusal::{Cause, Refusal};
use crate::session::Live;
use crate::shutdown::Shutdown;
use base64::Engine as _;
use cassette_recording::record::{Decision, Dns, Event, Gap};
use cassette_rules::mask::BodyKind;
use cassette_rules::policy::{self, Outcome};
use message::{CLASS_IN, NXDOMAIN, Query, REFUSED, SERVFAIL, rcode_name, type_name};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// The largest query taken from the agent, over either transport.
const MAX_QUERY_BYTES: usize = 4096;
/// Queries waiting for the resolver at once; past it a query is answered SERVFAIL.
const MAX_IN_FLIGHT: usize = 256;
/// TCP connections from the agent at once; past it a connection is closed unread.
const MAX_TCP_CONNECTIONS: usize = 64;
/// How long one resolver has to answer before the next is asked.
const RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an agent's TCP connection may sit idle between queries, and take over one.
const TCP_IDLE: Duration = Duration::from_secs(10);
const TCP_READ: Duration = Duration::from_secs(5);
/// What is kept of bytes that are not a DNS query.
const RECORDED_RAW_BYTES: usize = 512;

/// The proxy's state: where queries go, the rules they meet, the recording they end in.
pub struct DnsProxy {
    /// The cluster's resolvers, in the order they are asked.
    resolvers: Vec<SocketAddr>,
    session: Arc<Live>,
    recording: Recording,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Who sent a query, and (TCP only) where the agent sent it.
struct Origin {
    transport: Transport,
    client: SocketAddr,
    asked: Option<SocketAddr>,
}

impl DnsProxy {
    pub fn new(resolvers: Vec<SocketAddr>, session: Arc<Live>, recording: Recording) -> Self {
        Self {
            resolvers,
            session,
            recording,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            connections: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
        }
    }

    /// Answer one query (or drop what is not one, saying so in the recording).
    async fn query(
        &self,
        from: &Origin,
        bytes: &[u8],
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        let query = match Query::parse(bytes) {
            Ok(q) => q,
            Err(why) => {
                self.malformed(from, bytes, &why.0);
                return None;
            }
        };
        let (name, masked) = self
            .session
            .current()
            .masker
            .mask(BodyKind::Other, query.name.as_bytes());
        if masked.total() > 0 {
            self.recording
                .counts
                .masked
                .fetch_add(masked.total(), std::sync::atomic::Ordering::Relaxed);
        }
        let mut record = Dns {
            transport: from.transport.as_str().into(),
            client: from.client.to_string(),
            asked: from.asked.map(|a| a.to_string()),
            resolver: None,
            name: String::from_utf8_lossy(&name).into_owned(),
            qtype: type_name(query.qtype),
            rcode: String::new(),
            answers: Vec::new(),
            decision: Decision::Allow,
            rule: None,
            elapsed_us: 0,
            error: None,
            base64: None,
        };
        if query.qclass != CLASS_IN {
            record.decision = Decision::Deny;
            record.error = Some(format!(
                "class {}: only Internet-class (IN) queries are forwarded",
                query.qclass
            ));
            return self.finish(record, &query, REFUSED, None, started);
        }

        let decision = self
            .session
            .current()
            .evaluator
            .evaluate_name(&query.name, jiff::Timestamp::now());
        let rule = decision.would_block().then(|| decision.cause.label());
        let cause = match decision.cause {
            policy::Cause::Expired { .. } => Cause::Expiry,
            _ => Cause::Policy,
        };
        match decision.outcome() {
            Outcome::Refuse => {
                Refusal::new(cause, http::StatusCode::FORBIDDEN, decision.reason.clone())
                    .by_rule(rule.clone())
                    .record(&self.recording, None);
                record.decision = Decision::Deny;
                record.rule = rule;
                // NXDOMAIN, not REFUSED: a stub resolver then goes on through its search
                // list instead of giving up on the whole lookup.
                return self.finish(record, &query, NXDOMAIN, None, started);
            }
            Outcome::Forward | Outcome::Hold => {
                if decision.would_block() {
                    Refusal::new(
                        Cause::Audit,
                        http::StatusCode::OK,
                        format!("audit mode, not enforced: {}", decision.reason),
                    )
                    .by_rule(rule.clone())
                    .record(&self.recording, None);
                    record.rule = rule;
                }
            }
        }

        let Some(_permit) = permit else {
            record.error = Some(format!(
                "more than {MAX_IN_FLIGHT} queries in flight: not forwarded"
            ));
            return self.finish(record, &query, SERVFAIL, None, started);
        };
        // onFailure: closed — a query the recording cannot take does not leave the pod.
        if !self.recording.accepting() {
            self.recording.cut(Gap {
                lost: format!(
                    "a DNS query ({} {}) from {}",
                    record.qtype, record.name, record.client
                ),
                reason: "the recording takes no more records; the query was not forwarded and was answered SERVFAIL".into(),
                records: Some(1),
                bytes: None,
                from: None,
                to: None,
            });
            return Some(query.answer(SERVFAIL));
        }

        let id = random_id();
        let forwarded = query.forwarded(id);
        let limit = match from.transport {
            Transport::Udp => usize::from(query.udp_size),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let mut failures = Vec::new();
        for resolver in &self.resolvers {
            record.resolver = Some(resolver.to_string());
            let response = match from.transport {
                Transport::Udp => over_udp(*resolver, &forwarded, id).await,
                Transport::Tcp => over_tcp(*resolver, &forwarded).await,
            };
            match response
                .map_err(|e| e.to_string())
                .and_then(|r| query.relay(id, &r, limit).map_err(|e| e.0))
            {
                Ok((answer, answered)) => {
                    record.rcode = rcode_name(answered.rcode);
                    record.answers = answered
                        .answers
                        .iter()
                        .map(|a| {
                            let (masked, _) = self
                                .session
                                .current()
                                .masker
                                .mask(BodyKind::Other, a.as_bytes());
                            String::from_utf8_lossy(&masked).into_owned()
                        })
                        .collect();
                    return self.finish(record, &query, answered.rcode, Some(answer), started);
                }
                Err(why) => failures.push(format!("{resolver}: {why}")),
            }
        }
        record.error = Some(if self.resolvers.is_empty() {
            "no cluster resolver is configured (--dns, or nameservers in /etc/resolv.conf)".into()
        } else {
            format!("no resolver answered ({})", failures.join("; "))
        });
        self.finish(record, &query, SERVFAIL, None, started)
    }

    /// Record the query and hand back its answer: `answer` (the resolver's, relayed), or the
    /// sidecar's own with `rcode`. An answer whose record is not kept is not given: the agent
    /// gets SERVFAIL, and a gap says what was lost.
    fn finish(
        &self,
        mut record: Dns,
        query: &Query,
        rcode: u8,
        answer: Option<Vec<u8>>,
        started: Instant,
    ) -> Option<Vec<u8>> {
        if record.rcode.is_empty() {
            record.rcode = rcode_name(rcode);
        }
        record.elapsed_us = started.elapsed().as_micros() as u64;
        let lost = format!(
            "the answer to a DNS query ({} {}) from {}",
            record.qtype, record.name, record.client
        );
        match self.recording.try_emit(Event::Dns(record)) {
            Ok(()) => Some(answer.unwrap_or_else(|| query.answer(rcode))),
            Err(e) => {
                self.recording.cut(Gap {
                    lost,
                    reason: format!(
                        "it could not be recorded ({e}); the agent was answered SERVFAIL"
                    ),
                    records: Some(1),
                    bytes: None,
                    from: None,
                    to: None,
                });
                Some(query.answer(SERVFAIL))
            }
        }
    }

    /// Record bytes that are not a DNS query; they are dropped.
    fn malformed(&self, from: &Origin, bytes: &[u8], why: &str) {
        let kept = &bytes[..bytes.len().min(RECORDED_RAW_BYTES)];
        let (masked, _) = self.session.current().masker.mask(BodyKind::Other, kept);
        debug!(client = %from.client, why, "not a DNS query; dropped");
        self.recording.emit(Event::Dns(Dns {
            transport: from.transport.as_str().into(),
            client: from.client.to_string(),
            asked: from.asked.map(|a| a.to_string()),
            resolver: None,
            name: String::new(),
            qtype: String::new(),
            rcode: rcode_name(message::FORMERR),
            answers: Vec::new(),
            decision: Decision::Deny,
            rule: None,
            elapsed_us: 0,
            error: Some(format!(
                "not a DNS query ({why}; {} bytes); dropped, nothing forwarded",
                bytes.len()
            )),
            base64: Some(base64::engine::general_purpose::STANDARD.encode(masked)),
        }));
    }
}

/// A fresh id for the query the resolver gets: the agent's own id is not passed on.
fn random_id() -> u16 {
    let mut id = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
    u16::from_be_bytes(id)
}

async fn over_udp(resolver: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let any: SocketAddr = if resolver.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    // Connected: only the resolver's datagrams are read, and a refusal shows at once.
    socket.connect(resolver).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    tokio::time::timeout(RESOLVER_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            if n >= 2 && buf[..2] == id.to_be_bytes() {
                return Ok(buf[..n].to_vec());
            }
        }
    })
    .await
    .map_err(|_| timed_out())?
}

async fn over_tcp(resolver: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(RESOLVER_TIMEOUT, async {
        let mut stream = TcpStream::connect(resolver).await?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    })
    .await
    .map_err(|_| timed_out())?
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {}s", RESOLVER_TIMEOUT.as_secs()),
    )
}

/// Answer UDP queries until shutdown, each on its own task.
pub async fn serve_udp(socket: UdpSocket, dns: Arc<DnsProxy>, shutdown: Shutdown) {
    let socket = Arc::new(socket);
    // One byte more than a query may have: a datagram that fills it is too large.
    let mut buf = vec![0u8; MAX_QUERY_BYTES + 1];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = shutdown.requested() => return,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "receiving a DNS datagram failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let from = Origin {
            transport: Transport::Udp,
            client,
            asked: None,
        };
        if n > MAX_QUERY_BYTES {
            dns.malformed(
                &from,
                &buf[..n],
                &format!("a datagram larger than {MAX_QUERY_BYTES} bytes"),
            );
            continue;
        }
        let bytes = buf[..n].to_vec();
        let permit = dns.in_flight.clone().try_acquire_owned().ok();
        let (dns, socket, guard) = (dns.clone(), socket.clone(), shutdown.track());
        tokio::spawn(async move {
            if let Some(answer) = dns.query(&from, &bytes, permit).await
                && let Err(e) = socket.send_to(&answer, client).await
            {
                debug!(error = %e, %client, "a DNS answer could not be sent");
            }
            drop(guard);
        });
    }
}

/// Answer TCP connections until shutdown, each on its own task.
pub async fn serve_tcp(listener: TcpListener, dns: Arc<DnsProxy>, shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.requested() => return,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accepting a DNS connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = dns.connections.clone().try_acquire_owned() else {
            warn!(%client, "too many DNS connections; closed one unread");
            continue;
        };
        let (dns, guard) = (dns.clone(), shutdown.track());
        tokio::spawn(async move {
            connection(stream, client, &dns).await;
            drop((permit, guard));
        });
    }
}

/// One agent TCP connection: length-prefixed queries, answered in turn.
async fn connection(mut stream: TcpStream, client: SocketAddr, dns: &DnsProxy) {
    let asked = stream.local_addr().ok().and_then(|local| {
        original_dst(&stream, local.is_ipv6())
            .ok()
            .flatten()
            .filter(|dst| *dst != local)
    });
    let from = Origin {
        transport: Transport::Tcp,
        client,
        asked,
    };
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 || n > MAX_QUERY_BYTES {
            // Not DNS framing (an HTTP request's first bytes read as a length, say): keep
            // what came with it, then close.
            let mut seen = len.to_vec();
            let mut more = vec![0u8; RECORDED_RAW_BYTES - 2];
            if let Ok(Ok(got)) =
                tokio::time::timeout(Duration::from_millis(200), stream.read(&mut more)).await
            {
                seen.extend_from_slice(&more[..got]);
            }
            dns.malformed(
                &from,
                &seen,
                &format!("a TCP message of {n} bytes (1 to {MAX_QUERY_BYTES} are taken)"),
            );
            return;
        }
        let mut msg = vec![0u8; n];
        match tokio::time::timeout(TCP_READ, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => {
                dns.malformed(
                    &from,
                    &len,
                    &format!("the connection ended or stalled before its {n}-byte message did"),
                );
                return;
            }
        }
        let permit = dns.in_flight.clone().try_acquire_owned().ok();
        let Some(answer) = dns.query(&from, &msg, permit).await else {
            return;
        };
        let mut framed = (answer.len().min(usize::from(u16::MAX)) as u16)
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&answer);
        if tokio::time::timeout(TCP_READ, stream.write_all(&framed))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Proxy;

    /// A stand-in resolver on loopback: answers `A 10.0.0.7` to everything, over UDP, and
    /// hands each query it got to the test.
    async fn resolver() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
                let q = buf[..n].to_vec();
                tx.send(q.clone()).unwrap();
                let parsed = Query::parse(&q).unwrap();
                let mut r = parsed.answer(0);
                r[..2].copy_from_slice(&q[..2]);
                r[7] = 1;
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 7]);
                socket.send_to(&r, peer).await.unwrap();
            }
        });
        (addr, rx)
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    fn proxy(
        spec: serde_json::Value,
        resolvers: Vec<SocketAddr>,
    ) -> (Arc<crate::record::memory::MemorySink>, DnsProxy) {
        let (sink, proxy, _) = Proxy::for_test(&spec, &[], None);
        let dns = DnsProxy::new(resolvers, proxy.session.clone(), proxy.recording.clone());
        (sink, dns)
    }

    fn udp_from() -> Origin {
        Origin {
            transport: Transport::Udp,
            client: "10.0.0.5:4000".parse().unwrap(),
            asked: None,
        }
    }

    #[tokio::test]
    async fn a_query_is_forwarded_to_the_resolver_and_recorded_with_its_answer() {
        let (addr, mut seen) = resolver().await;
        let (sink, dns) = proxy(
            serde_json::json!({"recording": {"sink": "file:///tmp/unused"}}),
            vec![addr],
        );
        let permit = dns.in_flight.clone().try_acquire_owned().ok();
        let answer = dns
            .query(&udp_from(), &query("Echo.test", 1), permit)
            .await
            .unwrap();
        assert_eq!(&answer[..2], &[0xab, 0xcd], "the agent's id comes back");
        assert_eq!(answer[3] & 0xf, 0);
        let forwarded = seen.recv().await.unwrap();
        assert_ne!(
            &forwarded[..2],
            &[0xab, 0xcd],
            "the resolver gets a fresh id"
        );
        let record = &sink.kind("dns")[0];
        assert_eq!(record["transport"], "udp");
        assert_eq!(record["client"], "10.0.0.5:4000");
        assert_eq!(record["resolver"], addr.to_string());
        assert_eq!(record["name"], "echo.test");
        assert_eq!(record["qtype"], "A");
        assert_eq!(record["rcode"], "NOERROR");
        assert_eq!(record["answers"], serde_json::json!(["A 10.0.0.7"]));
        assert_eq!(record["decision"], "allow");
    }

    #[tokio::test]
    async fn a_name_a_rule_denies_is_answered_nxdomain_and_never_forwarded() {
        let (addr, mut seen) = resolver().await;
        let (sink, dns) = proxy(
            serde_json::json!({
                "recording": {"sink": "file:///tmp/unused"},
                "policy": {"rules": [{"name": "no-exfil", "action": "deny", "match": {"host": "*.attacker.tld"}}]}
            }),
            vec![addr],
        );
        let answer = dns
            .query(&udp_from(), &query("mzxw6ytboi.attacker.tld", 16), None)
            .await
            .unwrap();
        assert_eq!(answer[3] & 0xf, NXDOMAIN);
        assert!(seen.try_recv().is_err(), "the resolver heard nothing");
        let record = &sink.kind("dns")[0];
        assert_eq!(record["decision"], "deny");
        assert_eq!(record["rcode"], "NXDOMAIN");
        assert_eq!(record["name"], "mzxw6ytboi.attacker.tld");
        assert_eq!(record["rule"], "rule \"no-exfil\" (spec.policy.rules[0])");
        assert!(record.get("resolver").is_none());
        let blocked = &sink.kind("blocked")[0];
        assert_eq!(blocked["reason"], "policy");
    }

    #[tokio::test]
    async fn when_the_recording_takes_nothing_a_query_is_not_forwarded() {
        let (addr, mut seen) = resolver().await;
        let (sink, dns) = proxy(
            serde_json::json!({"recording": {"sink": "file:///tmp/unused"}}),
            vec![addr],
        );
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let permit = dns.in_flight.clone().try_acquire_owned().ok();
        let answer = dns
            .query(&udp_from(), &query("secret.attacker.tld", 1), permit)
            .await
            .unwrap();
        assert_eq!(answer[3] & 0xf, SERVFAIL);
        assert!(
            seen.try_recv().is_err(),
            "the query left the pod unrecorded"
        );
    }

    #[tokio::test]
    async fn what_is_not_dns_is_recorded_and_dropped() {
        let (sink, dns) = proxy(
            serde_json::json!({"recording": {"sink": "file:///tmp/unused"}}),
            Vec::new(),
        );
        let bytes = b"this is not dns at all, AIzaSyD3f4k3K3yF0rC4ss3tt3T3st1ng0123456";
        assert!(dns.query(&udp_from(), bytes, None).await.is_none());
        let record = &sink.kind("dns")[0];
        assert_eq!(record["rcode"], "FORMERR");
        assert_eq!(record["decision"], "deny");
        assert!(
            record["error"]
                .as_str()
                .unwrap()
                .contains("not a standard query"),
            "{record}"
        );
        let kept = base64::engine::general_purpose::STANDARD
            .decode(record["base64"].as_str().unwrap())
            .unwrap();
        let kept = String::from_utf8_lossy(&kept);
        assert!(kept.starts_with("this is not dns"), "{kept}");
        assert!(
            !kept.contains("AIzaSyD3f4k3K3yF0rC4ss3tt3T3st1ng0123456"),
            "masked: {kept}"
        );
    }

    #[tokio::test]
    async fn without_a_resolver_or_a_permit_the_agent_gets_servfail_and_the_record_says_why() {
        let (sink, dns) = proxy(
            serde_json::json!({"recording": {"sink": "file:///tmp/unused"}}),
            Vec::new(),
        );
        let permit = dns.in_flight.clone().try_acquire_owned().ok();
        let answer = dns
            .query(&udp_from(), &query("a.test", 1), permit)
            .await
            .unwrap();
        assert_eq!(answer[3] & 0xf, SERVFAIL);
        let answer = dns
            .query(&udp_from(), &query("b.test", 1), None)
            .await
            .unwrap();
        assert_eq!(answer[3] & 0xf, SERVFAIL);
        let records = sink.kind("dns");
        assert!(
            records[0]["error"]
                .as_str()
                .unwrap()
                .contains("no cluster resolver")
        );
        assert!(records[1]["error"].as_str().unwrap().contains("in flight"));
        assert_eq!(records[1]["rcode"], "SERVFAIL");
    }
}
