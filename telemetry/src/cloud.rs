//! Log lines as Cloud Logging reads a container's JSON: `severity` (which GKE otherwise takes
//! as ERROR for every line on stderr), `message`, `time` (RFC 3339), the event's other fields
//! beside them, its span's fields under `logging.googleapis.com/labels` as strings (so a
//! session's lines can be filtered by `labels.session`), and the code's place under
//! `logging.googleapis.com/sourceLocation`.

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The formatter: one JSON object per line.
pub struct CloudLogging;

/// Cloud Logging's name for a `tracing` level.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Collects an event's fields as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert(
            "message".into(),
            fields.0.remove("message").unwrap_or_default(),
        );
        line.insert("time".into(), jiff::Timestamp::now().to_string().into());
        line.insert("target".into(), meta.target().into());
        for (name, value) in fields.0 {
            line.entry(name).or_insert(value);
        }
        // The spans' fields as the line's labels: what the fmt layer recorded for each span,
        // `name=value` pairs separated by spaces, read back as strings.
        let mut labels = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(recorded) = span.extensions().get::<FormattedFields<N>>() {
                    for pair in recorded.fields.split(' ') {
                        if let Some((name, value)) = pair.split_once('=') {
                            labels.insert(name.into(), value.trim_matches('"').into());
                        }
                    }
                }
            }
        }
        if !labels.is_empty() {
            line.insert("logging.googleapis.com/labels".into(), labels.into());
        }
        if let (Some(file), Some(number)) = (meta.file(), meta.line()) {
            line.insert(
                "logging.googleapis.com/sourceLocation".into(),
                serde_json::json!({"file": file, "line": number.to_string()}),
            );
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}
