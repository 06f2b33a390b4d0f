//! Reading recordings back: find the recordings of a session in a sink, fetch one pod's
//! segments and manifest, and iterate its records in order. This is what `kubectl cassette
//! show/verify/export/search` build on; checking integrity is `verify`'s job.

use std::io::Read;

use crate::record::Record;
use crate::segment::{MANIFEST, SegmentName, is_manifest_name};
use crate::sink::{Sink, SinkError};

/// One object of a recording: its name (without the recording's prefix) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentObject {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Everything stored for one pod's recording.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingObjects {
    /// Segments in order of their number.
    pub segments: Vec<SegmentObject>,
    /// `manifest.json`, once the session ended.
    pub manifest: Option<Vec<u8>>,
    /// Manifests under another name (`manifest-<random>.json`): where a recorder writes its
    /// manifest when `manifest.json` was taken by someone else.
    pub other_manifests: Vec<SegmentObject>,
    /// Everything else in the recording's place (a sub-directory ends in `/`): nothing the
    /// recorder writes, so verify names each as a fault.
    pub foreign: Vec<String>,
}

/// One pod's recording within a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRef {
    /// Key prefix below the sink, ending in `/`: `<namespace>/<session>/<pod>-<uid>/`.
    pub prefix: String,
    /// `<pod>-<uid>`.
    pub pod_dir: String,
}

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{name}: cannot decompress: {source}")]
    Decompress {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} line {line}: not a record: {error}")]
    Record {
        name: String,
        line: usize,
        error: String,
    },
}

/// The recordings (one per pod) of a session: `<namespace>/<session>/*/`.
pub async fn list_recordings(
    sink: &Sink,
    namespace: &str,
    session: &str,
) -> Result<Vec<RecordingRef>, ReadError> {
    let listing = sink.list(&format!("{namespace}/{session}/")).await?;
    Ok(listing
        .prefixes
        .into_iter()
        .map(|prefix| {
            let pod_dir = prefix
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            RecordingRef { prefix, pod_dir }
        })
        .collect())
}

/// Fetches one recording's segments (ordered by number) and manifest.
pub async fn load(sink: &Sink, prefix: &str) -> Result<RecordingObjects, ReadError> {
    let prefix = if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    let listing = sink.list(&prefix).await?;
    let mut names: Vec<(SegmentName, String)> = Vec::new();
    let mut manifests = Vec::new();
    let mut foreign = Vec::new();
    for key in listing.objects {
        let name = key[prefix.len()..].to_string();
        if is_manifest_name(&name) {
            manifests.push(name);
        } else if let Some(n) = SegmentName::parse(&name) {
            names.push((n, name));
        } else {
            foreign.push(name);
        }
    }
    foreign.extend(
        listing
            .prefixes
            .iter()
            .map(|p| p[prefix.len()..].to_string()),
    );
    foreign.sort();
    names.sort();
    manifests.sort();
    let mut objects = RecordingObjects {
        foreign,
        ..RecordingObjects::default()
    };
    for (_, name) in names {
        // An object listed and then gone is left for verify to report as missing.
        if let Some(bytes) = sink.get(&format!("{prefix}{name}")).await? {
            objects.segments.push(SegmentObject { name, bytes });
        }
    }
    for name in manifests {
        let Some(bytes) = sink.get(&format!("{prefix}{name}")).await? else {
            continue;
        };
        if name == MANIFEST {
            objects.manifest = Some(bytes);
        } else {
            objects.other_manifests.push(SegmentObject { name, bytes });
        }
    }
    Ok(objects)
}

/// The JSON-lines text of a segment: zstd-decompressed for `.zst` names, as is otherwise.
pub fn decode_segment(name: &str, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    if !name.ends_with(".zst") {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    zstd::stream::read::Decoder::new(bytes)?.read_to_end(&mut out)?;
    Ok(out)
}

impl RecordingObjects {
    /// All records of all segment objects, in order. Stops at the first segment or line that
    /// cannot be read; use [`crate::verify::verify`] to learn whether what was read is intact,
    /// and [`RecordingObjects::records_of`] to read only what verify took for the recording.
    pub fn records(&self) -> impl Iterator<Item = Result<Record, ReadError>> + '_ {
        self.records_where(|_| true)
    }

    /// The records of the segments `report` took for the recording's (its `segments` that end
    /// with a seal), in order: a segment the manifest does not list, a second object claiming
    /// a segment's number, or one without a seal is not the recorder's and never reads as
    /// part of the recording.
    pub fn records_of<'a>(
        &'a self,
        report: &'a crate::verify::Report,
    ) -> impl Iterator<Item = Result<Record, ReadError>> + 'a {
        self.records_where(move |name| report.segments.iter().any(|s| s.sealed && s.name == name))
    }

    /// The segment objects `records_of(report)` leaves out, by name.
    pub fn left_out<'a>(&'a self, report: &'a crate::verify::Report) -> Vec<&'a str> {
        self.segments
            .iter()
            .filter(|o| !report.segments.iter().any(|s| s.sealed && s.name == o.name))
            .map(|o| o.name.as_str())
            .collect()
    }

    fn records_where<'a>(
        &'a self,
        keep: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = Result<Record, ReadError>> + 'a {
        self.segments
            .iter()
            .filter(move |s| keep(&s.name))
            .flat_map(|segment| {
                let lines: Vec<Result<Record, ReadError>> =
                    match decode_segment(&segment.name, &segment.bytes) {
                        Err(source) => vec![Err(ReadError::Decompress {
                            name: segment.name.clone(),
                            source,
                        })],
                        Ok(text) => text
                            .split(|b| *b == b'\n')
                            .enumerate()
                            .filter(|(_, l)| !l.is_empty())
                            .map(|(i, l)| {
                                serde_json::from_slice::<Record>(l).map_err(|e| ReadError::Record {
                                    name: segment.name.clone(),
                                    line: i + 1,
                                    error: e.to_string(),
                                })
                            })
                            .collect(),
                    };
                lines
            })
    }
}
