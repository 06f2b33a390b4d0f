//! DNS messages as the proxy needs them (RFC 1035, RFC 6891): a query's question read with
//! every bound checked, the query rebuilt from that question alone for the resolver, and a
//! response's code and answers for the recording. Pure functions over bytes; no I/O.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A DNS header's length.
const HEADER: usize = 12;
/// The longest name on the wire (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;
/// The UDP payload the rebuilt query offers the resolver (the DNS flag day's figure).
pub const FORWARD_UDP_SIZE: u16 = 1232;
/// Answers recorded per response; the rest are counted.
const MAX_RECORDED_ANSWERS: usize = 256;
/// Characters recorded of one answer's value.
const MAX_VALUE_CHARS: usize = 512;

/// The class every query must ask in.
pub const CLASS_IN: u16 = 1;

/// Why bytes are not a DNS query (or a response to one), in words for the recording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn malformed<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// The question of one query, as the agent asked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The agent's message id, given back in the answer.
    pub id: u16,
    /// The name in presentation form: lower case, no trailing dot, bytes other than letters,
    /// digits, `-` and `_` escaped as `\DDD` (the root is `.`).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Whether the agent asked for recursion (given back in the answer).
    pub recursion_desired: bool,
    /// The largest UDP answer the agent takes: its EDNS payload size, or 512 without EDNS.
    pub udp_size: u16,
    /// The question's name as sent (its case kept), for the answer.
    asked_name: Vec<u8>,
}

impl Query {
    /// Read a query. Only a standard query with one question whose name is uncompressed is
    /// one; its other records are not forwarded, so they are only read for the EDNS size.
    pub fn parse(msg: &[u8]) -> Result<Query, Malformed> {
        if msg.len() < HEADER {
            return malformed(format!("{} bytes: shorter than a DNS header", msg.len()));
        }
        let flags = u16::from_be_bytes([msg[2], msg[3]]);
        if flags & 0x8000 != 0 {
            return malformed("a response, not a query");
        }
        let opcode = (flags >> 11) & 0xf;
        if opcode != 0 {
            return malformed(format!("opcode {opcode} is not a standard query"));
        }
        let count = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
        let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
        if qd != 1 {
            return malformed(format!("{qd} questions: a query asks one"));
        }
        let (wire_end, name) = question_name(msg, HEADER)?;
        let fixed = msg
            .get(wire_end..wire_end + 4)
            .ok_or_else(|| Malformed("the question ends before its type and class".into()))?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        let mut udp_size = 512;
        // An OPT record right after the question (no answer or authority records before it,
        // as every client sends it) says how large an answer the agent takes.
        if an == 0 && ns == 0 && ar >= 1 {
            let at = wire_end + 4;
            if let Some(opt) = msg.get(at..at + 11)
                && opt[0] == 0
                && u16::from_be_bytes([opt[1], opt[2]]) == TYPE_OPT
            {
                udp_size = u16::from_be_bytes([opt[3], opt[4]]).max(512);
            }
        }
        Ok(Query {
            id: u16::from_be_bytes([msg[0], msg[1]]),
            name,
            qtype,
            qclass,
            recursion_desired: flags & 0x0100 != 0,
            udp_size,
            asked_name: msg[HEADER..wire_end].to_vec(),
        })
    }

    /// The query the resolver gets: this question alone, its name in lower case, under
    /// `id`, recursion desired, with an EDNS record offering [`FORWARD_UDP_SIZE`]. Nothing of
    /// the agent's message but what the recording shows (name, type, class) is in it.
    pub fn forwarded(&self, id: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.asked_name.len() + 15);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&0x0100u16.to_be_bytes());
        for count in [1u16, 0, 0, 1] {
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend(self.asked_name.iter().map(u8::to_ascii_lowercase));
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&self.qclass.to_be_bytes());
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&FORWARD_UDP_SIZE.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        out
    }

    /// An answer of the sidecar's own with response code `rcode` and no records.
    pub fn answer(&self, rcode: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.asked_name.len() + 4);
        out.extend_from_slice(&self.id.to_be_bytes());
        let mut flags = 0x8080u16 | u16::from(rcode & 0xf);
        if self.recursion_desired {
            flags |= 0x0100;
        }
        out.extend_from_slice(&flags.to_be_bytes());
        for count in [1u16, 0, 0, 0] {
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend_from_slice(&self.asked_name);
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&self.qclass.to_be_bytes());
        out
    }

    /// The resolver's `response` to [`Query::forwarded`] under `id`, checked to answer this
    /// question, made the agent's: its id, its name's case, and cut to the header and question
    /// with the truncation bit when it is larger than `limit` (the agent then asks over TCP).
    /// Also what the recording says of it.
    pub fn relay(
        &self,
        id: u16,
        response: &[u8],
        limit: usize,
    ) -> Result<(Vec<u8>, Answered), Malformed> {
        if response.len() < HEADER {
            return malformed("the resolver's answer is shorter than a DNS header");
        }
        if u16::from_be_bytes([response[0], response[1]]) != id {
            return malformed("the resolver's answer has another id");
        }
        let flags = u16::from_be_bytes([response[2], response[3]]);
        if flags & 0x8000 == 0 {
            return malformed("the resolver sent a query, not an answer");
        }
        if u16::from_be_bytes([response[4], response[5]]) != 1 {
            return malformed("the resolver's answer does not carry the question");
        }
        let name_end = HEADER + self.asked_name.len();
        let mut type_class = [0u8; 4];
        type_class[..2].copy_from_slice(&self.qtype.to_be_bytes());
        type_class[2..].copy_from_slice(&self.qclass.to_be_bytes());
        let same_question = response.get(HEADER..name_end + 4).is_some_and(|q| {
            let (name, rest) = q.split_at(self.asked_name.len());
            name.eq_ignore_ascii_case(&self.asked_name) && rest == type_class
        });
        if !same_question {
            return malformed("the resolver's answer is for another question");
        }
        let answered = Answered::read(response, name_end + 4)?;
        let mut out = if response.len() > limit {
            let mut cut = response[..name_end + 4].to_vec();
            cut[2] |= 0x02;
            cut[6..12].fill(0);
            cut
        } else {
            response.to_vec()
        };
        out[..2].copy_from_slice(&self.id.to_be_bytes());
        out[HEADER..name_end].copy_from_slice(&self.asked_name);
        Ok((out, answered))
    }
}

/// What the recording says of a resolver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub rcode: u8,
    /// `TYPE value` of each answer record.
    pub answers: Vec<String>,
    /// Whether the resolver said its answer was truncated.
    pub truncated: bool,
}

impl Answered {
    /// Read the answer section of `msg`, which starts at `at` (right after the question).
    fn read(msg: &[u8], mut at: usize) -> Result<Answered, Malformed> {
        let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
        let mut answers = Vec::new();
        for i in 0..an {
            let (next, _) = read_name(msg, at)?;
            let fixed = msg
                .get(next..next + 10)
                .ok_or_else(|| Malformed("an answer record ends early".into()))?;
            let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
            let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
            let start = next + 10;
            let rdata = msg
                .get(start..start + len)
                .ok_or_else(|| Malformed("an answer record's data ends early".into()))?;
            if i < MAX_RECORDED_ANSWERS {
                let mut value = format!(
                    "{} {}",
                    type_name(rtype),
                    rdata_text(msg, start, rdata, rtype)
                );
                if value.chars().count() > MAX_VALUE_CHARS {
                    value = value.chars().take(MAX_VALUE_CHARS).collect::<String>() + "…";
                }
                answers.push(value);
            }
            at = start + len;
        }
        if an > MAX_RECORDED_ANSWERS {
            answers.push(format!(
                "({} more answers not recorded)",
                an - MAX_RECORDED_ANSWERS
            ));
        }
        Ok(Answered {
            rcode: msg[3] & 0xf,
            answers,
            truncated: msg[2] & 0x02 != 0,
        })
    }
}

const TYPE_OPT: u16 = 41;

/// The question's name at `at`: where it ends, and its presentation form. Compression is
/// refused here: no client compresses the only name of a query.
fn question_name(msg: &[u8], mut at: usize) -> Result<(usize, String), Malformed> {
    let start = at;
    let mut name = String::new();
    loop {
        let len = *msg
            .get(at)
            .ok_or_else(|| Malformed("the question's name runs past the message".into()))?
            as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return malformed("the question's name is compressed or uses an extended label");
        }
        let label = msg
            .get(at + 1..at + 1 + len)
            .ok_or_else(|| Malformed("the question's name runs past the message".into()))?;
        push_label(&mut name, label);
        at += 1 + len;
        if at - start > MAX_NAME {
            return malformed(format!(
                "the question's name is longer than {MAX_NAME} bytes"
            ));
        }
    }
    if name.is_empty() {
        name.push('.');
    }
    Ok((at, name))
}

/// A name anywhere in `msg` (compression followed, backwards only, bounded): where the name
/// ends at `at`, and its presentation form with the trailing dot.
fn read_name(msg: &[u8], mut at: usize) -> Result<(usize, String), Malformed> {
    let mut name = String::new();
    let mut end = None;
    let mut wire = 0;
    let mut hops = 0;
    loop {
        let len = *msg
            .get(at)
            .ok_or_else(|| Malformed("a name runs past the message".into()))?
            as usize;
        match len & 0xc0 {
            0 if len == 0 => {
                let end = end.unwrap_or(at + 1);
                if name.is_empty() {
                    name.push('.');
                }
                return Ok((end, name));
            }
            0 => {
                let label = msg
                    .get(at + 1..at + 1 + len)
                    .ok_or_else(|| Malformed("a name runs past the message".into()))?;
                wire += 1 + len;
                if wire > MAX_NAME {
                    return malformed("a name longer than 255 bytes");
                }
                push_label(&mut name, label);
                name.push('.');
                at += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(at + 1).ok_or_else(|| {
                    Malformed("a compression pointer runs past the message".into())
                })?;
                let target = ((len & 0x3f) << 8) | low as usize;
                if target >= at || hops > 64 {
                    return malformed("a compression pointer that does not point back");
                }
                hops += 1;
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return malformed("an extended label type"),
        }
    }
}

fn push_label(name: &mut String, label: &[u8]) {
    if !name.is_empty() && !name.ends_with('.') {
        name.push('.');
    }
    for &b in label {
        let b = b.to_ascii_lowercase();
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' {
            name.push(b as char);
        } else {
            let _ = write!(name, "\\{b:03}");
        }
    }
}

/// An answer's data in presentation form.
fn rdata_text(msg: &[u8], start: usize, rdata: &[u8], rtype: u16) -> String {
    let name_at = |at: usize| read_name(msg, at).map(|(_, n)| n);
    let text = match rtype {
        1 if rdata.len() == 4 => {
            Some(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string())
        }
        28 if rdata.len() == 16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(rdata);
            Some(Ipv6Addr::from(octets).to_string())
        }
        2 | 5 | 12 | 39 => name_at(start).ok(),
        15 if rdata.len() > 2 => name_at(start + 2)
            .ok()
            .map(|n| format!("{} {n}", u16::from_be_bytes([rdata[0], rdata[1]]))),
        33 if rdata.len() > 6 => name_at(start + 6).ok().map(|n| {
            let n16 = |i: usize| u16::from_be_bytes([rdata[i], rdata[i + 1]]);
            format!("{} {} {} {n}", n16(0), n16(2), n16(4))
        }),
        16 => txt(rdata),
        _ => None,
    };
    text.unwrap_or_else(|| {
        // RFC 3597's generic form.
        let mut out = format!("\\# {}", rdata.len());
        if !rdata.is_empty() {
            out.push(' ');
            for b in rdata.iter().take(MAX_VALUE_CHARS / 2) {
                let _ = write!(out, "{b:02x}");
            }
        }
        out
    })
}

/// TXT data: its strings, quoted, bytes outside printable ASCII escaped.
fn txt(rdata: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut at = 0;
    while at < rdata.len() {
        let len = rdata[at] as usize;
        let s = rdata.get(at + 1..at + 1 + len)?;
        if !out.is_empty() {
            out.push(' ');
        }
        out.push('"');
        for &b in s {
            match b {
                b'"' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x20..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "\\{b:03}");
                }
            }
        }
        out.push('"');
        at += 1 + len;
    }
    Some(out)
}

/// `A`, `AAAA`, `TXT`, … or `TYPE<n>`.
pub fn type_name(t: u16) -> String {
    let known = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        39 => "DNAME",
        41 => "OPT",
        43 => "DS",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        252 => "AXFR",
        255 => "ANY",
        257 => "CAA",
        _ => return format!("TYPE{t}"),
    };
    known.to_string()
}

/// `NOERROR`, `NXDOMAIN`, … or `RCODE<n>`.
pub fn rcode_name(rcode: u8) -> String {
    let known = match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => return format!("RCODE{rcode}"),
    };
    known.to_string()
}

#[cfg(test)]
pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const REFUSED: u8 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A query as dig sends it: id, RD, one question, an OPT record with a cookie.
    fn dig_query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        // OPT: root, type 41, payload 1232, ttl 0, rdlen 12 (a cookie option).
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 12]);
        q.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        q
    }

    /// The resolver's answer to `forwarded` with `answers` (type, rdata) for its question.
    fn response(forwarded: &[u8], rcode: u8, answers: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let q = Query::parse(forwarded).unwrap();
        let mut r = forwarded[..2].to_vec();
        r.extend_from_slice(&(0x8180u16 | u16::from(rcode)).to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(&forwarded[HEADER..HEADER + q.asked_name.len() + 4]);
        for (t, data) in answers {
            r.extend_from_slice(&[0xc0, 0x0c]);
            r.extend_from_slice(&t.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn a_query_is_read_and_forwarded_as_its_question_alone() {
        let sent = dig_query("MzXW6YTBOI.Attacker.TLD", 16);
        let q = Query::parse(&sent).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name, "mzxw6ytboi.attacker.tld");
        assert_eq!(type_name(q.qtype), "TXT");
        assert_eq!(q.qclass, CLASS_IN);
        assert!(q.recursion_desired);
        assert_eq!(q.udp_size, 1232);
        let fwd = q.forwarded(0xbeef);
        // The cookie, the id and the case of the name stay behind.
        assert!(!fwd.windows(8).any(|w| w == [1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(&fwd[..2], &[0xbe, 0xef]);
        assert!(fwd.windows(10).any(|w| w == b"mzxw6ytboi"));
        let again = Query::parse(&fwd).unwrap();
        assert_eq!(again.name, q.name);
        assert_eq!(again.qtype, q.qtype);
    }

    #[test]
    fn names_keep_every_byte_in_the_recording() {
        let mut sent = dig_query("x", 1);
        // Replace the label "x" by one holding a dot, a space and a high byte.
        sent.splice(12..14, [3u8, b'a', b'.', 0xff]);
        let q = Query::parse(&sent).unwrap();
        assert_eq!(q.name, "a\\046\\255");
        let root = Query::parse(&dig_query("", 2)).unwrap();
        assert_eq!(root.name, ".");
    }

    #[test]
    fn what_is_not_a_query_is_said_why() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "shorter than a DNS header"),
            (b"this is not dns at all".to_vec(), "not a standard query"),
            (
                {
                    let mut r = dig_query("a.b", 1);
                    r[2] |= 0x80;
                    r
                },
                "a response",
            ),
            (
                {
                    let mut r = dig_query("a.b", 1);
                    r[5] = 2;
                    r
                },
                "2 questions",
            ),
            (
                {
                    let mut r = dig_query("a.b", 1);
                    r[12] = 0xc0;
                    r
                },
                "compressed",
            ),
            (
                {
                    let mut r = dig_query("a.b", 1);
                    r[12] = 60;
                    r
                },
                "runs past",
            ),
            (dig_query("a.b", 1)[..17].to_vec(), "before its type"),
        ];
        for (bytes, why) in cases {
            let e = Query::parse(&bytes).unwrap_err();
            assert!(
                e.0.contains(why),
                "{:?}: {e}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let long = format!("{}.tld", "a".repeat(64));
        assert!(
            Query::parse(&dig_query(&long, 1))
                .unwrap_err()
                .0
                .contains("extended label")
        );
        let huge = vec!["a".repeat(63); 5].join(".");
        assert!(
            Query::parse(&dig_query(&huge, 1))
                .unwrap_err()
                .0
                .contains("longer than 255")
        );
    }

    #[test]
    fn an_answer_is_relayed_in_the_agents_terms_and_recorded() {
        let q = Query::parse(&dig_query("Echo.Test", 1)).unwrap();
        let fwd = q.forwarded(7);
        let r = response(
            &fwd,
            NOERROR,
            &[
                (1, vec![10, 231, 5, 1]),
                (5, vec![3, b'f', b'o', b'o', 0xc0, 0x0c]),
                (16, b"\x05hi \"x".to_vec()),
            ],
        );
        let (relayed, answered) = q.relay(7, &r, 4096).unwrap();
        assert_eq!(&relayed[..2], &[0x12, 0x34]);
        assert_eq!(&relayed[13..17], b"Echo");
        assert_eq!(answered.rcode, NOERROR);
        assert_eq!(
            answered.answers,
            ["A 10.231.5.1", "CNAME foo.echo.test.", "TXT \"hi \\\"x\""]
        );
        // Too large for the agent's UDP: cut to the question, truncation bit set.
        let (cut, _) = q.relay(7, &r, 30).unwrap();
        assert_eq!(cut.len(), 12 + 11 + 4);
        assert!(cut[2] & 0x02 != 0);
        assert_eq!(&cut[6..12], &[0; 6]);
        // Someone else's answer is not relayed.
        assert!(q.relay(8, &r, 4096).is_err());
        let other = response(
            &Query::parse(&dig_query("other.test", 1))
                .unwrap()
                .forwarded(7),
            0,
            &[],
        );
        assert!(
            q.relay(7, &other, 4096)
                .unwrap_err()
                .0
                .contains("another question")
        );
    }

    #[test]
    fn the_sidecars_own_answer_echoes_the_question() {
        let q = Query::parse(&dig_query("X.pastebin.example", 1)).unwrap();
        let a = q.answer(NXDOMAIN);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0xf, NXDOMAIN);
        assert!(a[2] & 0x80 != 0, "a response");
        let again = &a[12..];
        assert_eq!(&again[..2], &[1, b'X']);
        assert_eq!(rcode_name(a[3] & 0xf), "NXDOMAIN");
    }

    #[test]
    fn compression_loops_are_refused() {
        let q = Query::parse(&dig_query("a.b", 1)).unwrap();
        let fwd = q.forwarded(1);
        let mut r = response(&fwd, 0, &[(5, vec![0xc0, 0x00])]);
        // Point the CNAME's data forward at itself.
        let len = r.len();
        r[len - 2] = 0xc0 | ((len - 2) >> 8) as u8;
        r[len - 1] = (len - 2) as u8;
        let (_, answered) = q.relay(1, &r, 4096).unwrap();
        assert!(
            answered.answers[0].starts_with("CNAME \\# 2"),
            "{answered:?}"
        );
    }

    proptest! {
        #[test]
        fn no_bytes_crash_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(q) = Query::parse(&bytes) {
                let _ = q.relay(1, &bytes, 512);
                let _ = q.answer(SERVFAIL);
            }
            let _ = Answered::read(&[bytes.clone(), vec![0; 12]].concat(), 12);
        }
    }
}
