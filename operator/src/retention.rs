//! Retention of recordings: for a session with `spec.recording.retention`, each pod's
//! recording is deleted once its newest object is older than the retention — a whole
//! recording at a time, segments first and `manifest.json` last — unless a hold or retention
//! keeps any object of it, which is reported instead. Without `retention` nothing is deleted
//! (the bucket's lifecycle decides). Nothing here runs when an AgentSession is deleted: the
//! controller calls the sweep from its apply path only, on the leader, once per interval.

use cassette_api::AgentSession;
use cassette_recording::segment::{MANIFEST, parse_index};
use cassette_recording::sink::{Deleted, GcsOptions, Sink, SinkError, StoredObject};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How the operator sweeps: how it reaches GCS, and how often per session.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gcs: GcsOptions,
    pub every: Duration,
}

/// Remembers when each session was last swept, so that reconciles every few minutes do not
/// list the bucket every few minutes. In memory: a new leader sweeps once soon after it
/// starts, which is harmless.
pub struct Schedule {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Schedule {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True (and noted) when `session` has not been swept within the interval.
    pub fn due(&self, session: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(session) {
            Some(at) if now.saturating_duration_since(*at) < self.every => false,
            _ => {
                last.insert(session.to_string(), now);
                true
            }
        }
    }
}

/// `90d` or `36h`, as the CRD admits them.
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let refuse =
        || format!("{text:?} is not a retention: use whole days or hours, such as 90d or 36h");
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let hours = match unit {
        "d" => 24,
        "h" => 1,
        _ => return Err(refuse()),
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    let n: u64 = digits.parse().map_err(|_| refuse())?;
    n.checked_mul(hours * 3600)
        .map(Duration::from_secs)
        .ok_or_else(refuse)
}

/// One pod's recording as listed: `<namespace>/<session>/<pod>-<uid>/` and its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub prefix: String,
    /// In the order they are deleted: segments by number, anything else, the manifest last.
    pub objects: Vec<StoredObject>,
}

/// A recording old enough to go that something keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub prefix: String,
    /// Each object kept, and why.
    pub kept: Vec<(String, String)>,
}

/// What to do with a session's recordings (pure).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub expired: Vec<Recording>,
    pub held: Vec<Held>,
    /// Recordings younger than the retention.
    pub young: usize,
}

/// Groups a session's objects into recordings and decides each one. A recording expires when
/// its newest object is older than `retention` and its pod is not among `live` (the
/// `<pod>-<uid>` directories of pods still running: a quiet agent is not an old recording);
/// it is held when any of its objects is under a hold or retention at `now`, so a chain is
/// never cut in half on purpose.
pub fn plan(
    session_prefix: &str,
    objects: Vec<StoredObject>,
    retention: Duration,
    now: SystemTime,
    live: &[String],
) -> Plan {
    let mut recordings: BTreeMap<String, Vec<StoredObject>> = BTreeMap::new();
    for object in objects {
        let Some(rest) = object.key.strip_prefix(session_prefix) else {
            continue;
        };
        // Only objects inside a pod's directory belong to a recording.
        let Some((pod_dir, _)) = rest.split_once('/') else {
            continue;
        };
        recordings
            .entry(format!("{session_prefix}{pod_dir}/"))
            .or_default()
            .push(object);
    }
    let mut plan = Plan::default();
    for (prefix, mut objects) in recordings {
        let pod_dir = prefix[session_prefix.len()..].trim_end_matches('/');
        if live.iter().any(|l| l == pod_dir) {
            plan.young += 1;
            continue;
        }
        let newest = objects.iter().map(|o| o.created).max();
        let old = newest.is_some_and(|t| now.duration_since(t).is_ok_and(|age| age > retention));
        if !old {
            plan.young += 1;
            continue;
        }
        let kept: Vec<(String, String)> = objects
            .iter()
            .filter_map(|o| Some((o.key.clone(), o.kept_by(now)?.to_string())))
            .collect();
        if !kept.is_empty() {
            plan.held.push(Held { prefix, kept });
            continue;
        }
        objects.sort_by_key(|o| deletion_rank(&o.key[prefix.len()..]));
        plan.expired.push(Recording { prefix, objects });
    }
    plan
}

/// Segments first, in order; then anything unexpected; the manifest last. A sweep cut off
/// half-way leaves the signed manifest in place, so `kubectl cassette verify` reports the
/// segments it lists as missing rather than calling the recording open (still running); and
/// the next sweep still finds the recording old and finishes it.
fn deletion_rank(name: &str) -> (u8, u64, String) {
    match parse_index(name) {
        Some(ix) => (0, ix, String::new()),
        None if name == MANIFEST => (2, 0, String::new()),
        None => (1, 0, name.to_string()),
    }
}

/// What a sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Objects deleted.
    pub deleted: u64,
    /// Recordings deleted whole.
    pub recordings: Vec<String>,
    /// Recordings (or what is left of one) kept by a hold, retention or the sink's refusal.
    pub held: Vec<Held>,
    /// Recordings younger than the retention.
    pub young: usize,
}

impl Outcome {
    /// Objects kept by a hold, retention or refusal.
    pub fn kept_objects(&self) -> u64 {
        self.held.iter().map(|h| h.kept.len() as u64).sum()
    }
}

/// Sweeps one session's recordings in `sink`, leaving alone those of the `live` pods
/// (`<pod>-<uid>`). Without `spec.recording.retention` it deletes nothing and does not even
/// list.
pub async fn sweep(
    sink: &Sink,
    session: &AgentSession,
    now: SystemTime,
    live: &[String],
) -> Result<Outcome, SweepError> {
    let Some(text) = session.spec.recording.retention.as_deref() else {
        return Ok(Outcome::default());
    };
    let retention = parse_retention(text).map_err(SweepError::Retention)?;
    let prefix = format!(
        "{}/{}/",
        session.namespace().unwrap_or_default(),
        session.name_any()
    );
    let objects = sink.list_stored(&prefix).await?;
    let plan = plan(&prefix, objects, retention, now, live);
    let mut outcome = Outcome {
        held: plan.held,
        young: plan.young,
        ..Outcome::default()
    };
    'recordings: for recording in plan.expired {
        for object in &recording.objects {
            match sink.delete(object).await? {
                Deleted::Deleted => outcome.deleted += 1,
                Deleted::AlreadyGone => {}
                // Kept after all (a hold set since the listing, a newer generation, no
                // permission): stop here, so the manifest stays and names what is gone.
                Deleted::Kept(why) => {
                    outcome.held.push(Held {
                        prefix: recording.prefix.clone(),
                        kept: vec![(object.key.clone(), why)],
                    });
                    continue 'recordings;
                }
            }
        }
        outcome.recordings.push(recording.prefix);
    }
    Ok(outcome)
}

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{0}")]
    Retention(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Opens the session's sink with the operator's GCS settings.
pub async fn open_sink(session: &AgentSession, settings: &Settings) -> Result<Sink, SweepError> {
    Ok(Sink::open(&session.spec.recording.sink, &settings.gcs).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_api::{AgentSessionSpec, Durability, OnFailure, Recording as RecordingSpec};
    use cassette_recording::sink::{HOLD_FILE, ObjectMeta};
    use std::path::Path;

    const DAY: Duration = Duration::from_secs(86_400);

    fn session(name: &str, sink: &str, retention: Option<&str>) -> AgentSession {
        let mut s = AgentSession::new(
            name,
            AgentSessionSpec {
                agent: None,
                requested_by: None,
                expires_at: None,
                max_duration: Some("2h".into()),
                recording: RecordingSpec {
                    sink: sink.into(),
                    max_body_bytes: 1024,
                    retention: retention.map(Into::into),
                    durability: Durability::Batched,
                    on_failure: OnFailure::Closed,
                },
                masking: None,
                policy: None,
                approvals: vec![],
            },
        );
        s.metadata.namespace = Some("team".into());
        s
    }

    /// Writes a recording of two segments and a manifest, `age` old.
    async fn recording(root: &Path, prefix: &str, age: Duration, meta: &ObjectMeta) {
        let sink = Sink::File(cassette_recording::sink::FileSink::new(root.to_path_buf()));
        for name in ["seg-000001.jsonl.zst", "seg-000002.jsonl.zst", MANIFEST] {
            let key = format!("{prefix}{name}");
            sink.put_once(&key, name.as_bytes().to_vec().into(), meta)
                .await
                .unwrap();
            // Owner may set times on a read-only file through a read-only handle.
            std::fs::File::open(root.join(&key))
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
        }
    }

    fn exists(root: &Path, prefix: &str) -> bool {
        root.join(prefix).join(MANIFEST).exists()
    }

    fn file_sink(root: &Path) -> (String, Sink) {
        let url = format!("file://{}", root.display());
        let sink = Sink::File(cassette_recording::sink::FileSink::new(root.to_path_buf()));
        (url, sink)
    }

    #[tokio::test]
    async fn old_recordings_go_young_ones_and_other_sessions_stay() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let plain = ObjectMeta::default();
        recording(root, "team/fix-ci/agent-0-aaa/", 100 * DAY, &plain).await;
        recording(root, "team/fix-ci/agent-1-bbb/", 10 * DAY, &plain).await;
        recording(root, "team/other/agent-0-ccc/", 100 * DAY, &plain).await;
        recording(root, "elsewhere/fix-ci/agent-0-ddd/", 100 * DAY, &plain).await;
        let (url, sink) = file_sink(root);

        let outcome = sweep(
            &sink,
            &session("fix-ci", &url, Some("90d")),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome.deleted, 3);
        assert_eq!(outcome.recordings, ["team/fix-ci/agent-0-aaa/"]);
        assert_eq!((outcome.young, outcome.held.len()), (1, 0));
        assert!(!root.join("team/fix-ci/agent-0-aaa").exists());
        assert!(exists(root, "team/fix-ci/agent-1-bbb/"));
        assert!(exists(root, "team/other/agent-0-ccc/"));
        assert!(exists(root, "elsewhere/fix-ci/agent-0-ddd/"));

        // A pod still running is not swept, however long it has been quiet.
        recording(root, "team/fix-ci/agent-9-zzz/", 100 * DAY, &plain).await;
        let outcome = sweep(
            &sink,
            &session("fix-ci", &url, Some("90d")),
            SystemTime::now(),
            &["agent-9-zzz".to_string()],
        )
        .await
        .unwrap();
        assert_eq!(outcome.deleted, 0);
        assert!(exists(root, "team/fix-ci/agent-9-zzz/"));
        std::fs::remove_dir_all(root.join("team/fix-ci/agent-9-zzz")).unwrap();
        let listed = cassette_recording::list_recordings(&sink, "team", "fix-ci")
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");

        // A recording is judged by its newest object: one fresh object keeps all of it.
        recording(root, "team/fix-ci/agent-2-eee/", 100 * DAY, &plain).await;
        std::fs::File::open(root.join("team/fix-ci/agent-2-eee").join(MANIFEST))
            .unwrap()
            .set_modified(SystemTime::now() - 30 * DAY)
            .unwrap();
        let outcome = sweep(
            &sink,
            &session("fix-ci", &url, Some("90d")),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap();
        assert_eq!((outcome.deleted, outcome.young), (0, 2));
        assert!(
            root.join("team/fix-ci/agent-2-eee/seg-000001.jsonl.zst")
                .exists()
        );
    }

    #[tokio::test]
    async fn a_hold_or_retention_keeps_the_whole_recording_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let retained = ObjectMeta {
            retain_for: Some(365 * DAY),
            ..ObjectMeta::default()
        };
        recording(root, "team/fix-ci/retained-1/", 100 * DAY, &retained).await;
        recording(
            root,
            "team/fix-ci/held-2/",
            100 * DAY,
            &ObjectMeta::default(),
        )
        .await;
        std::fs::write(root.join("team/fix-ci/held-2").join(HOLD_FILE), "").unwrap();
        let (url, sink) = file_sink(root);

        let outcome = sweep(
            &sink,
            &session("fix-ci", &url, Some("90d")),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome.deleted, 0);
        assert_eq!(outcome.kept_objects(), 6);
        let held = &outcome.held[0];
        assert_eq!(held.prefix, "team/fix-ci/held-2/");
        assert!(held.kept[0].1.contains(".hold"), "{:?}", held.kept);
        let retained = &outcome.held[1];
        assert_eq!(retained.prefix, "team/fix-ci/retained-1/");
        assert!(
            retained.kept[0].1.starts_with("object retention until"),
            "{:?}",
            retained.kept
        );
        assert!(exists(root, "team/fix-ci/retained-1/"));
        assert!(exists(root, "team/fix-ci/held-2/"));

        // Once the object retention has passed, the recording goes: move its recorded end
        // (`.<name>.retain-until`, see the file sink) into the past.
        for name in ["seg-000001.jsonl.zst", "seg-000002.jsonl.zst", MANIFEST] {
            let record = root.join(format!("team/fix-ci/retained-1/.{name}.retain-until"));
            assert!(record.exists(), "{record:?}");
            std::fs::write(record, "2020-01-01T00:00:00Z").unwrap();
        }
        let outcome = sweep(
            &sink,
            &session("fix-ci", &url, Some("90d")),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome.recordings, ["team/fix-ci/retained-1/"]);
        assert!(!root.join("team/fix-ci/retained-1").exists());
        assert!(exists(root, "team/fix-ci/held-2/"), "a hold has no end");
    }

    #[tokio::test]
    async fn without_retention_nothing_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        recording(
            root,
            "team/fix-ci/agent-0-aaa/",
            1000 * DAY,
            &ObjectMeta::default(),
        )
        .await;
        let (url, sink) = file_sink(root);
        let outcome = sweep(
            &sink,
            &session("fix-ci", &url, None),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome, Outcome::default());
        assert!(exists(root, "team/fix-ci/agent-0-aaa/"));
    }

    #[test]
    fn segments_go_first_in_order_and_the_manifest_last() {
        let now = SystemTime::now();
        let object = |name: &str| StoredObject {
            key: format!("ns/s/p-u/{name}"),
            created: now - 2 * DAY,
            generation: Some(1),
            protections: vec![],
        };
        let objects = [
            MANIFEST,
            "seg-000010.jsonl.zst",
            "stray.txt",
            "seg-000002.jsonl.zst",
        ]
        .map(object)
        .to_vec();
        let plan = plan("ns/s/", objects, DAY, now, &[]);
        let order: Vec<&str> = plan.expired[0]
            .objects
            .iter()
            .map(|o| &o.key["ns/s/p-u/".len()..])
            .collect();
        assert_eq!(
            order,
            [
                "seg-000002.jsonl.zst",
                "seg-000010.jsonl.zst",
                "stray.txt",
                MANIFEST
            ]
        );
    }

    #[test]
    fn retention_reads_days_and_hours() {
        assert_eq!(parse_retention("90d"), Ok(90 * DAY));
        assert_eq!(parse_retention("36h"), Ok(Duration::from_secs(36 * 3600)));
        for bad in ["", "d", "0d", "90", "1.5d", "90 days", "-1h"] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_session_is_swept_at_most_once_per_interval() {
        let schedule = Schedule::new(Duration::from_secs(3600));
        let t = Instant::now();
        assert!(schedule.due("team/a", t));
        assert!(!schedule.due("team/a", t + Duration::from_secs(60)));
        assert!(schedule.due("team/b", t + Duration::from_secs(60)));
        assert!(schedule.due("team/a", t + Duration::from_secs(3601)));
    }
}
