//! `spec.masking.jsonFields`: an incremental JSON scanner that reports the byte spans of
//! values at the configured dotted paths (`credentials.password`, `items.*.token`).
//!
//! It does not build the document: it keeps the path to the current value and a small
//! state, so bodies of any size stream through. A path that names an object or array masks
//! every string and number inside it. Several top-level values (JSON lines) each start at the
//! root. Invalid JSON stops the scanner; what it found so far stands. Keys are compared as
//! written (escapes are not decoded).

use std::collections::VecDeque;

/// One segment of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A key, or an array index written in digits.
    Name(String),
    /// `*`: any key or index.
    Any,
}

/// A parsed `jsonFields[].path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// Parses `a.b.*.c`; each segment is `[A-Za-z0-9_$@-]+` or `*`.
    pub(crate) fn parse(path: &str) -> Result<FieldPath, String> {
        let mut segments = Vec::new();
        for part in path.split('.') {
            if part == "*" {
                segments.push(Segment::Any);
            } else if !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_$@-".contains(&b))
            {
                segments.push(Segment::Name(part.to_owned()));
            } else {
                return Err(format!(
                    "{path:?} is not a field path: use dot-separated names or *, such as credentials.password or items.*.token"
                ));
            }
        }
        Ok(FieldPath(segments))
    }

    /// Whether this path names `at` or one of its ancestors.
    fn covers(&self, at: &[Step]) -> bool {
        self.0.len() <= at.len()
            && self
                .0
                .iter()
                .zip(at)
                .all(|(segment, step)| match (segment, step) {
                    (Segment::Any, _) => true,
                    (Segment::Name(name), Step::Key(key)) => name.as_bytes() == key.as_slice(),
                    (Segment::Name(name), Step::Index(i)) => name.parse::<usize>().ok() == Some(*i),
                    (Segment::Name(_), Step::Pending) => false,
                })
    }
}

/// Where a value sits in its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(Vec<u8>),
    Index(usize),
    /// An object member whose key has not been read yet.
    Pending,
}

/// A value to mask, by absolute byte offsets into the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
    /// A string's contents (escaped) rather than a number.
    pub string: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a value.
    Value,
    /// Inside an object, expecting a key or `}`.
    Key,
    /// After a key, expecting `:`.
    Colon,
    /// After a value, expecting `,`, `}` or `]`.
    After,
    /// Inside a string.
    Str { key: bool, escaped: bool },
    /// Inside a number or a literal (true, false, null).
    Scalar,
    /// Invalid JSON: nothing more is reported.
    Dead,
}

const MAX_KEY: usize = 256;

/// The incremental scanner.
#[derive(Debug)]
pub(crate) struct JsonScanner {
    paths: Vec<FieldPath>,
    /// The steps from the root to the current value; a `None` container kind marks arrays.
    path: Vec<Step>,
    /// For each open container: is it an object?
    objects: Vec<bool>,
    state: State,
    key: Vec<u8>,
    /// The value being masked, if one is open: (start, is string).
    open: Option<(u64, bool)>,
    /// Whether the current scalar is masked.
    masking_scalar: bool,
    /// Closed spans waiting to be taken.
    spans: VecDeque<Span>,
    /// Longest span before it is closed and a new one opened (bounded memory).
    max_span: u64,
}

impl JsonScanner {
    pub(crate) fn new(paths: Vec<FieldPath>, max_span: usize) -> Self {
        JsonScanner {
            paths,
            path: Vec::new(),
            objects: Vec::new(),
            state: State::Value,
            key: Vec::new(),
            open: None,
            masking_scalar: false,
            spans: VecDeque::new(),
            max_span: max_span as u64,
        }
    }

    /// The start of the value being scanned, if it is to be masked and not yet complete.
    pub(crate) fn open_start(&self) -> Option<u64> {
        self.open.map(|(start, _)| start)
    }

    /// Takes the next closed span that starts before `limit`.
    pub(crate) fn take_span_before(&mut self, limit: u64) -> Option<Span> {
        if self.spans.front().is_some_and(|s| s.start < limit) {
            self.spans.pop_front()
        } else {
            None
        }
    }

    fn covered(&self) -> bool {
        self.paths.iter().any(|p| p.covers(&self.path))
    }

    fn close(&mut self, end: u64) {
        if let Some((start, string)) = self.open.take()
            && end > start
        {
            self.spans.push_back(Span { start, end, string });
        }
    }

    /// A value ended: move to the state after it.
    fn value_done(&mut self) {
        self.state = if self.objects.is_empty() {
            State::Value
        } else {
            State::After
        };
    }

    /// Feeds `chunk`, whose first byte is at absolute offset `offset`.
    pub(crate) fn feed(&mut self, chunk: &[u8], offset: u64) {
        for (i, &b) in chunk.iter().enumerate() {
            let at = offset + i as u64;
            self.byte(b, at);
            if let Some((start, string)) = self.open
                && at + 1 - start >= self.max_span
            {
                // Bound memory: a very long value is masked in pieces.
                self.close(at + 1);
                self.open = Some((at + 1, string));
            }
        }
    }

    /// Ends the stream: an unfinished value is masked up to the end.
    pub(crate) fn finish(&mut self, end: u64) {
        if self.state == State::Scalar && self.masking_scalar {
            self.close(end);
        }
        self.close(end);
    }

    fn byte(&mut self, b: u8, at: u64) {
        match self.state {
            State::Dead => {}
            State::Str { key, escaped } => {
                if escaped {
                    self.state = State::Str {
                        key,
                        escaped: false,
                    };
                    if key && self.key.len() < MAX_KEY {
                        self.key.push(b);
                    }
                } else if b == b'\\' {
                    self.state = State::Str { key, escaped: true };
                    if key && self.key.len() < MAX_KEY {
                        self.key.push(b);
                    }
                } else if b == b'"' {
                    if key {
                        if let Some(last) = self.path.last_mut() {
                            *last = Step::Key(std::mem::take(&mut self.key));
                        }
                        self.state = State::Colon;
                    } else {
                        self.close(at);
                        self.value_done();
                    }
                } else if key && self.key.len() < MAX_KEY {
                    self.key.push(b);
                }
            }
            State::Scalar => {
                if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                    if self.masking_scalar {
                        self.close(at);
                    }
                    self.value_done();
                    self.byte(b, at);
                }
            }
            _ if b.is_ascii_whitespace() => {}
            State::Value => self.value_start(b, at),
            State::Key => match b {
                b'"' => {
                    self.key.clear();
                    self.state = State::Str {
                        key: true,
                        escaped: false,
                    };
                }
                b'}' => self.end_container(true),
                _ => self.state = State::Dead,
            },
            State::Colon => self.state = if b == b':' { State::Value } else { State::Dead },
            State::After => match (b, self.objects.last()) {
                (b',', Some(true)) => {
                    if let Some(last) = self.path.last_mut() {
                        *last = Step::Pending;
                    }
                    self.state = State::Key;
                }
                (b',', Some(false)) => {
                    if let Some(Step::Index(i)) = self.path.last_mut() {
                        *i += 1;
                    }
                    self.state = State::Value;
                }
                (b'}', Some(true)) => self.end_container(true),
                (b']', Some(false)) => self.end_container(false),
                _ => self.state = State::Dead,
            },
        }
    }

    fn value_start(&mut self, b: u8, at: u64) {
        match b {
            b'{' => {
                self.objects.push(true);
                self.path.push(Step::Pending);
                self.state = State::Key;
            }
            b'[' => {
                self.objects.push(false);
                self.path.push(Step::Index(0));
                self.state = State::Value;
            }
            // An empty array: `]` where a value was expected.
            b']' if self.objects.last() == Some(&false) => self.end_container(false),
            b'"' => {
                if self.covered() {
                    self.open = Some((at + 1, true));
                }
                self.state = State::Str {
                    key: false,
                    escaped: false,
                };
            }
            b'-' | b'0'..=b'9' => {
                self.masking_scalar = self.covered();
                if self.masking_scalar {
                    self.open = Some((at, false));
                }
                self.state = State::Scalar;
            }
            b't' | b'f' | b'n' => {
                self.masking_scalar = false;
                self.state = State::Scalar;
            }
            _ => self.state = State::Dead,
        }
    }

    fn end_container(&mut self, object: bool) {
        if self.objects.pop() != Some(object) {
            self.state = State::Dead;
            return;
        }
        self.path.pop();
        self.value_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(paths: &[&str], doc: &str) -> Vec<String> {
        let paths = paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect();
        let mut s = JsonScanner::new(paths, 1 << 20);
        s.feed(doc.as_bytes(), 0);
        s.finish(doc.len() as u64);
        let mut out = Vec::new();
        while let Some(span) = s.take_span_before(u64::MAX) {
            out.push(doc[span.start as usize..span.end as usize].to_owned());
        }
        out
    }

    #[test]
    fn finds_values_at_paths() {
        let doc = r#"{"user": "a", "credentials": {"password": "p\"w", "pin": 1234}, "items": [{"token": "t0"}, {"token": "t1", "x": [1, 2]}], "empty": [], "n": null}"#;
        assert_eq!(spans(&["credentials.password"], doc), vec![r#"p\"w"#]);
        assert_eq!(spans(&["credentials"], doc), vec![r#"p\"w"#, "1234"]);
        assert_eq!(spans(&["items.*.token"], doc), vec!["t0", "t1"]);
        assert_eq!(spans(&["items.1.token"], doc), vec!["t1"]);
        assert_eq!(spans(&["items.*.x.1"], doc), vec!["2"]);
        assert_eq!(spans(&["user"], doc), vec!["a"]);
        assert_eq!(spans(&["password"], doc), Vec::<String>::new());
        assert_eq!(spans(&["n"], doc), Vec::<String>::new());
    }

    #[test]
    fn json_lines_each_start_at_the_root() {
        let doc = "{\"token\": \"a\"}\n{\"token\": \"b\"}\n[{\"token\": \"c\"}]";
        assert_eq!(spans(&["token"], doc), vec!["a", "b"]);
        assert_eq!(spans(&["*.token"], doc), vec!["c"]);
    }

    #[test]
    fn invalid_json_stops_quietly() {
        assert_eq!(
            spans(&["a"], r#"{"a" "b"} {"a": "c"}"#),
            Vec::<String>::new()
        );
        assert_eq!(
            spans(&["a"], r#"{"a": "unterminated"#),
            vec!["unterminated"]
        );
    }

    #[test]
    fn long_values_are_cut_into_pieces() {
        let value = "x".repeat(25);
        let doc = format!(r#"{{"a": "{value}"}}"#);
        let paths = vec![FieldPath::parse("a").unwrap()];
        let mut s = JsonScanner::new(paths, 10);
        s.feed(doc.as_bytes(), 0);
        s.finish(doc.len() as u64);
        let mut lens = Vec::new();
        while let Some(span) = s.take_span_before(u64::MAX) {
            lens.push(span.end - span.start);
        }
        assert_eq!(lens, vec![10, 10, 5]);
    }

    #[test]
    fn field_path_syntax() {
        assert!(FieldPath::parse("a.b.*.c").is_ok());
        assert!(FieldPath::parse("$meta.@id").is_ok());
        for bad in ["", "a..b", "a.b c", "a.**", ".a"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
