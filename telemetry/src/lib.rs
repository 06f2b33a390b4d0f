//! How cassette's binaries log: `tracing` events to stderr, filtered by `RUST_LOG` (default
//! `info`), as JSON in a cluster (where a log agent reads them) and pretty text elsewhere.
//!
//! It does not decide what is logged; each binary does.

use tracing_subscriber::EnvFilter;

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
        Format::Json => builder.json().init(),
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
}
