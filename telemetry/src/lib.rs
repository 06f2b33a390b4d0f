//! How cassette's binaries log: `tracing` events to stderr, filtered by `RUST_LOG` (default
//! `info`), as JSON in a cluster (the fields Cloud Logging reads, [`cloud`]) and pretty text
//! elsewhere.
//!
//! It does not decide what is logged; each binary does.

use tracing_subscriber::EnvFilter;

pub mod cloud;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Pretty,
}

impl Format {
    /// `json` or `pretty` when given; otherwise JSON inside Kubernetes (where
    /// `KUBERNETES_SERVICE_HOST` is set) and pretty text outside.
    pub fn choose(given: Option<&str>, in_cluster: bool) -> Format {
        match given {
            Some(f) if f.eq_ignore_ascii_case("json") => Format::Json,
            Some(_) => Format::Pretty,
            None if in_cluster => Format::Json,
            None => Format::Pretty,
        }
    }
}

/// Install the process's subscriber. `format` is the binary's `--log-format`, if given.
pub fn init(format: Option<&str>) {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match Format::choose(format, in_cluster) {
        Format::Json => builder
            .with_ansi(false)
            .event_format(cloud::CloudLogging)
            .init(),
        Format::Pretty => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_a_cluster_pretty_elsewhere_unless_told() {
        assert_eq!(Format::choose(None, true), Format::Json);
        assert_eq!(Format::choose(None, false), Format::Pretty);
        assert_eq!(Format::choose(Some("JSON"), false), Format::Json);
        assert_eq!(Format::choose(Some("pretty"), true), Format::Pretty);
    }

    /// A line as Cloud Logging parses a container's JSON log: its severity (not ERROR for
    /// every line on stderr), message, time, fields, and the span's fields as labels.
    #[test]
    fn json_lines_carry_what_cloud_logging_reads() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(cloud::CloudLogging)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("session", session = "fix-ci", pod = "agent-0");
            let _in = span.enter();
            tracing::warn!(segments = 2, "recovered a recording spool left by a crash");
            tracing::info!("ready");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let warned = &lines[0];
        assert_eq!(warned["severity"], "WARNING");
        assert_eq!(
            warned["message"],
            "recovered a recording spool left by a crash"
        );
        assert_eq!(warned["segments"], 2);
        assert!(
            warned["time"]
                .as_str()
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "{warned}"
        );
        let labels = &warned["logging.googleapis.com/labels"];
        assert_eq!(labels["session"], "fix-ci", "{warned}");
        assert_eq!(labels["pod"], "agent-0", "{warned}");
        assert_eq!(
            warned["logging.googleapis.com/sourceLocation"]["file"],
            file!()
        );
        assert_eq!(lines[1]["severity"], "INFO");
        assert_eq!(lines[1]["message"], "ready");
    }
}
