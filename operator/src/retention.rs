//! Retention of recordings: for a session with `spec.recording.retention`, each pod's
//! recording is deleted once its newest object is older than the retention — a whole
//! recording at a time, segments first and `manifest.json` last — unless a hold or retention
//! keeps any object of it, which is reported instead. Without `retention` nothing is deleted
//! (the bucket's lifecycle decides). Nothing here runs when an AgentSession is deleted: the
//! controller calls the sweep from its apply path only, on the leader, once per interval.
//!
//! The sweep deletes only what is provably this session's recording: directories
//! `<pod>-<uid>` its `status.pods` names (a new session of the same name does not inherit the
//! recordings of an earlier one), and in them only segments and the manifest, never an object
//! whose metadata names another session.

use cassette_api::AgentSession;
use cassette_recording::segment::{is_manifest_name, parse_index};
use cassette_recording::sink::{Deleted, GcsOptions, Sink, SinkError, StoredObject};
use cassette_rules::validate::parse_retention;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How the operator sweeps: how it reaches GCS, and how often per session.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gcs: GcsOptions,
    pub every: Duration,
}

/// Remembers when each session was last swept, so that reconciles every few minutes do not
/// list the bucket every few minutes, and which sweeps are running, so that a long one is
/// never joined by a second. In memory: a new leader sweeps once soon after it starts, which
/// is harmless.
pub struct Schedule {
    every: Duration,
    state: Arc<Mutex<ScheduleState>>,
}

#[derive(Default)]
struct ScheduleState {
    last: HashMap<String, Instant>,
    running: HashSet<String>,
}

/// A sweep under way; dropping it (however the sweep ends) lets the next one start.
pub struct Sweeping {
    session: String,
    state: Arc<Mutex<ScheduleState>>,
}

impl Drop for Sweeping {
    fn drop(&mut self) {
        lock(&self.state).running.remove(&self.session);
    }
}

fn lock(state: &Mutex<ScheduleState>) -> std::sync::MutexGuard<'_, ScheduleState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Schedule {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Arc::default(),
        }
    }

    /// Starts a sweep of `session` unless one ran within the interval or is still running.
    pub fn start(&self, session: &str, now: Instant) -> Option<Sweeping> {
        let mut state = lock(&self.state);
        if state.running.contains(session) {
            return None;
        }
        match state.last.get(session) {
            Some(at) if now.saturating_duration_since(*at) < self.every => None,
            _ => {
                state.last.insert(session.to_string(), now);
                state.running.insert(session.to_string());
                Some(Sweeping {
                    session: session.to_string(),
                    state: self.state.clone(),
                })
            }
        }
    }
}

/// One pod's recording as listed: `<namespace>/<session>/<pod>-<uid>/` and its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub prefix: String,
    /// In the order they are deleted: segments by number, the manifest last.
    pub objects: Vec<StoredObject>,
}

/// A recording old enough to go that something keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub prefix: String,
    /// Each object kept, and why.
    pub kept: Vec<(String, String)>,
}

/// The session whose recordings are swept, and which of them are its own.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub session: &'a str,
    /// The session's `metadata.uid`: on a sink that keeps metadata (GCS) an object is this
    /// session's only if it carries it as `cassette-session-uid`, which the sidecar writes
    /// and nobody who can edit the session's status can change.
    pub session_uid: Option<&'a str>,
    /// `<pod>-<uid>` of every pod the session's status names: the recordings it made.
    pub recorded: &'a [String],
    /// `<pod>-<uid>` of its pods still running: never swept, however quiet.
    pub live: &'a [String],
}

impl Scope<'_> {
    /// `<namespace>/<session>/`.
    pub fn prefix(&self) -> String {
        format!("{}/{}/", self.namespace, self.session)
    }

    /// Whether `name`, in the recording directory `pod_dir`, is a recording object of this
    /// session: a segment or the manifest whose metadata, where the sink keeps it, carries
    /// this session's UID and names no other namespace, session or pod.
    fn owns(&self, pod_dir: &str, name: &str, object: &StoredObject) -> bool {
        let recording_file =
            (name.ends_with(".jsonl.zst") && parse_index(name).is_some()) || is_manifest_name(name);
        let says = |key: &str, matches: &dyn Fn(&str) -> bool| {
            object.metadata.get(key).is_none_or(|v| matches(v))
        };
        // Where the sink keeps metadata, the session's UID must be there: the status that
        // names the pods can be written by more than the operator (the sidecars), and a pod
        // directory of an earlier session of the same name must not become this one's.
        let stamped = object.metadata.is_empty()
            || object
                .metadata
                .get("cassette-session-uid")
                .is_some_and(|uid| Some(uid.as_str()) == self.session_uid);
        recording_file
            && stamped
            && says("cassette-namespace", &|v| v == self.namespace)
            && says("cassette-session", &|v| v == self.session)
            && says("cassette-pod-uid", &|v| {
                pod_dir.strip_suffix(v).is_some_and(|p| p.ends_with('-'))
            })
    }
}

/// What to do with a session's recordings (pure).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub expired: Vec<Recording>,
    pub held: Vec<Held>,
    /// Recordings younger than the retention.
    pub young: usize,
    /// Recordings of pods still running.
    pub live: usize,
    /// Directories under the session's prefix its status does not name: an earlier session
    /// of the same name, or something else. Left alone.
    pub unclaimed: Vec<String>,
    /// Objects in its recordings that are not segments or manifests of this session. Left
    /// alone.
    pub ignored: Vec<String>,
}

/// Groups a session's objects into recordings and decides each one. A recording expires when
/// its newest object is older than `retention`, it is one the session `recorded` and its pod
/// is not `live`; it is held when any of its objects is under a hold or retention at `now`,
/// so a chain is never cut in half on purpose.
pub fn plan(
    scope: &Scope<'_>,
    objects: Vec<StoredObject>,
    retention: Duration,
    now: SystemTime,
) -> Plan {
    let session_prefix = scope.prefix();
    let mut plan = Plan::default();
    let mut recordings: BTreeMap<String, Vec<StoredObject>> = BTreeMap::new();
    for object in objects {
        let Some(rest) = object.key.strip_prefix(&session_prefix) else {
            plan.ignored.push(object.key);
            continue;
        };
        // Only files directly inside a pod's directory can belong to a recording.
        let Some((pod_dir, name)) = rest.split_once('/') else {
            plan.ignored.push(object.key);
            continue;
        };
        if !scope.recorded.iter().any(|r| r == pod_dir) {
            let dir = format!("{session_prefix}{pod_dir}/");
            if plan.unclaimed.last() != Some(&dir) {
                plan.unclaimed.push(dir);
            }
            continue;
        }
        if !scope.owns(pod_dir, name, &object) {
            plan.ignored.push(object.key);
            continue;
        }
        recordings
            .entry(format!("{session_prefix}{pod_dir}/"))
            .or_default()
            .push(object);
    }
    for (prefix, mut objects) in recordings {
        let pod_dir = prefix[session_prefix.len()..].trim_end_matches('/');
        if scope.live.iter().any(|l| l == pod_dir) {
            plan.live += 1;
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
        // Segments first, in order; the manifest last. A sweep cut off half-way leaves the
        // signed manifest in place, so `kubectl cassette verify` reports the segments it
        // lists as missing rather than calling the recording open (still running); and the
        // next sweep still finds the recording old and finishes it.
        objects.sort_by_key(|o| parse_index(&o.key[prefix.len()..]).unwrap_or(u64::MAX));
        plan.expired.push(Recording { prefix, objects });
    }
    plan
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
    /// Recordings of pods still running.
    pub live: usize,
    /// Directories the session's status does not name, left alone.
    pub unclaimed: Vec<String>,
    /// Objects in its recordings that are not its segments or manifests, left alone.
    pub ignored: Vec<String>,
}

impl Outcome {
    /// Objects kept by a hold, retention or refusal.
    pub fn kept_objects(&self) -> u64 {
        self.held.iter().map(|h| h.kept.len() as u64).sum()
    }
}

/// The recording directories (`<pod>-<uid>`) the session's status names.
pub fn recorded(session: &AgentSession) -> Vec<String> {
    session
        .status
        .iter()
        .flat_map(|s| &s.pods)
        .filter_map(|p| Some(format!("{}-{}", p.name, p.uid.as_deref()?)))
        .collect()
}

/// Sweeps one session's recordings in `sink`, leaving alone those of the `live` pods
/// (`<pod>-<uid>`) and those its status does not name. Without `spec.recording.retention`
/// it deletes nothing and does not even list.
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
    let namespace = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let recorded = recorded(session);
    let scope = Scope {
        namespace: &namespace,
        session: &name,
        session_uid: session.metadata.uid.as_deref(),
        recorded: &recorded,
        live,
    };
    let objects = sink.list_stored(&scope.prefix()).await?;
    let plan = plan(&scope, objects, retention, now);
    let mut outcome = Outcome {
        held: plan.held,
        young: plan.young,
        live: plan.live,
        unclaimed: plan.unclaimed,
        ignored: plan.ignored,
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
    use cassette_api::{
        AgentSessionSpec, AgentSessionStatus, Durability, OnFailure, PodRecording,
        Recording as RecordingSpec,
    };
    use cassette_recording::segment::MANIFEST;
    use cassette_recording::sink::{HOLD_FILE, ObjectMeta};
    use std::path::Path;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A session in namespace `team` whose status names the pods `recorded`
    /// (`<pod>-<uid>`, split at the last dash).
    fn session(name: &str, sink: &str, retention: Option<&str>, recorded: &[&str]) -> AgentSession {
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
                credentials: vec![],
            },
        );
        s.metadata.namespace = Some("team".into());
        s.status = Some(AgentSessionStatus {
            pods: recorded
                .iter()
                .map(|dir| {
                    let (pod, uid) = dir.rsplit_once('-').unwrap();
                    PodRecording {
                        name: pod.into(),
                        uid: Some(uid.into()),
                        ..PodRecording::default()
                    }
                })
                .collect(),
            ..AgentSessionStatus::default()
        });
        s
    }

    fn backdate(path: &Path, age: Duration) {
        // Owner may set times on a read-only file through a read-only handle.
        std::fs::File::open(path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }

    /// Writes a recording of two segments and a manifest, `age` old.
    async fn recording(root: &Path, prefix: &str, age: Duration, meta: &ObjectMeta) {
        let sink = Sink::File(cassette_recording::sink::FileSink::new(root.to_path_buf()));
        for name in ["seg-000001.jsonl.zst", "seg-000002.jsonl.zst", MANIFEST] {
            let key = format!("{prefix}{name}");
            sink.put_once(&key, name.as_bytes().to_vec().into(), meta)
                .await
                .unwrap();
            backdate(&root.join(&key), age);
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

    const ALL: &[&str] = &["agent-0-aaa", "agent-1-bbb", "agent-2-eee", "agent-9-zzz"];

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
        let fix_ci = session("fix-ci", &url, Some("90d"), ALL);

        let outcome = sweep(&sink, &fix_ci, SystemTime::now(), &[]).await.unwrap();
        assert_eq!(outcome.deleted, 3);
        assert_eq!(outcome.recordings, ["team/fix-ci/agent-0-aaa/"]);
        assert_eq!((outcome.young, outcome.held.len()), (1, 0));
        assert!(!root.join("team/fix-ci/agent-0-aaa").exists());
        assert!(exists(root, "team/fix-ci/agent-1-bbb/"));
        assert!(exists(root, "team/other/agent-0-ccc/"));
        assert!(exists(root, "elsewhere/fix-ci/agent-0-ddd/"));

        // A pod still running is not swept, however long it has been quiet.
        recording(root, "team/fix-ci/agent-9-zzz/", 100 * DAY, &plain).await;
        let live = ["agent-9-zzz".to_string()];
        let outcome = sweep(&sink, &fix_ci, SystemTime::now(), &live)
            .await
            .unwrap();
        assert_eq!((outcome.deleted, outcome.live, outcome.young), (0, 1, 1));
        assert!(exists(root, "team/fix-ci/agent-9-zzz/"));
        std::fs::remove_dir_all(root.join("team/fix-ci/agent-9-zzz")).unwrap();
        let listed = cassette_recording::list_recordings(&sink, "team", "fix-ci")
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");

        // A recording is judged by its newest object: one fresh object keeps all of it.
        recording(root, "team/fix-ci/agent-2-eee/", 100 * DAY, &plain).await;
        backdate(
            &root.join("team/fix-ci/agent-2-eee").join(MANIFEST),
            30 * DAY,
        );
        let outcome = sweep(&sink, &fix_ci, SystemTime::now(), &[]).await.unwrap();
        assert_eq!((outcome.deleted, outcome.young), (0, 2));
        assert!(
            root.join("team/fix-ci/agent-2-eee/seg-000001.jsonl.zst")
                .exists()
        );
    }

    #[tokio::test]
    async fn a_new_session_of_the_same_name_leaves_the_old_recordings_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let plain = ObjectMeta::default();
        // An earlier `fix-ci` recorded agent-0-old; the session now there recorded agent-0-new.
        recording(root, "team/fix-ci/agent-0-old/", 100 * DAY, &plain).await;
        recording(root, "team/fix-ci/agent-0-new/", 100 * DAY, &plain).await;
        let (url, sink) = file_sink(root);
        let now = session("fix-ci", &url, Some("1h"), &["agent-0-new"]);

        let outcome = sweep(&sink, &now, SystemTime::now(), &[]).await.unwrap();
        assert_eq!(outcome.recordings, ["team/fix-ci/agent-0-new/"]);
        assert_eq!(outcome.unclaimed, ["team/fix-ci/agent-0-old/"]);
        assert!(exists(root, "team/fix-ci/agent-0-old/"));
    }

    #[tokio::test]
    async fn only_segments_and_the_manifest_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        recording(
            root,
            "team/fix-ci/agent-0-aaa/",
            100 * DAY,
            &ObjectMeta::default(),
        )
        .await;
        let pod = root.join("team/fix-ci/agent-0-aaa");
        std::fs::write(pod.join("notes.txt"), "kept").unwrap();
        std::fs::create_dir(pod.join("nested")).unwrap();
        std::fs::write(pod.join("nested/seg-000003.jsonl.zst"), "kept").unwrap();
        for extra in ["notes.txt", "nested/seg-000003.jsonl.zst"] {
            backdate(&pod.join(extra), 100 * DAY);
        }
        let (url, sink) = file_sink(root);
        let outcome = sweep(
            &sink,
            &session("fix-ci", &url, Some("90d"), ALL),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome.deleted, 3);
        assert_eq!(
            outcome.ignored,
            [
                "team/fix-ci/agent-0-aaa/nested/seg-000003.jsonl.zst",
                "team/fix-ci/agent-0-aaa/notes.txt"
            ]
        );
        assert!(pod.join("notes.txt").exists());
        assert!(pod.join("nested/seg-000003.jsonl.zst").exists());
        assert!(!pod.join(MANIFEST).exists());
    }

    #[test]
    fn an_object_whose_metadata_does_not_name_this_session_is_not_deleted() {
        let now = SystemTime::now();
        let object = |name: &str, meta: &[(&str, &str)]| StoredObject {
            key: format!("team/fix-ci/agent-0-aaa/{name}"),
            created: now - 2 * DAY,
            generation: Some(1),
            protections: vec![],
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let ours = [
            ("cassette-session-uid", "s-1"),
            ("cassette-namespace", "team"),
            ("cassette-session", "fix-ci"),
            ("cassette-pod-uid", "aaa"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut m = ours.to_vec();
            m.retain(|(k, _)| *k != extra.0);
            m.push(extra);
            m
        };
        let objects = vec![
            object("seg-000001.jsonl.zst", &ours),
            object("seg-000002.jsonl.zst", &with(("cassette-session", "other"))),
            object(
                "seg-000003.jsonl.zst",
                &with(("cassette-namespace", "prod")),
            ),
            object("seg-000004.jsonl.zst", &with(("cassette-pod-uid", "bbb"))),
            // An earlier session of the same name, and an object that names none.
            object(
                "seg-000005.jsonl.zst",
                &with(("cassette-session-uid", "s-0")),
            ),
            object("seg-000006.jsonl.zst", &ours[1..]),
            object(MANIFEST, &ours[..3]),
        ];
        let recorded = ["agent-0-aaa".to_string()];
        let scope = Scope {
            namespace: "team",
            session: "fix-ci",
            session_uid: Some("s-1"),
            recorded: &recorded,
            live: &[],
        };
        let plan = plan(&scope, objects, DAY, now);
        let deleted: Vec<&str> = plan.expired[0]
            .objects
            .iter()
            .map(|o| &o.key["team/fix-ci/agent-0-aaa/".len()..])
            .collect();
        assert_eq!(deleted, ["seg-000001.jsonl.zst", MANIFEST]);
        assert_eq!(plan.ignored.len(), 5, "{:?}", plan.ignored);
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
        let fix_ci = session("fix-ci", &url, Some("90d"), &["retained-1", "held-2"]);

        let outcome = sweep(&sink, &fix_ci, SystemTime::now(), &[]).await.unwrap();
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
        let outcome = sweep(&sink, &fix_ci, SystemTime::now(), &[]).await.unwrap();
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
            &session("fix-ci", &url, None, ALL),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome, Outcome::default());
        assert!(exists(root, "team/fix-ci/agent-0-aaa/"));
    }

    #[tokio::test]
    async fn a_sink_directory_that_is_not_there_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-mounted");
        let (url, sink) = file_sink(&missing);
        let error = sweep(
            &sink,
            &session("fix-ci", &url, Some("1h"), ALL),
            SystemTime::now(),
            &[],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("does not exist"), "{error}");
    }

    #[test]
    fn segments_go_first_in_order_and_the_manifest_last() {
        let now = SystemTime::now();
        let object = |name: &str| StoredObject {
            key: format!("ns/s/p-u/{name}"),
            created: now - 2 * DAY,
            generation: Some(1),
            protections: vec![],
            metadata: BTreeMap::new(),
        };
        let objects = [MANIFEST, "seg-000010.jsonl.zst", "seg-000002.jsonl.zst"]
            .map(object)
            .to_vec();
        let recorded = ["p-u".to_string()];
        let scope = Scope {
            namespace: "ns",
            session: "s",
            session_uid: None,
            recorded: &recorded,
            live: &[],
        };
        let plan = plan(&scope, objects, DAY, now);
        let order: Vec<&str> = plan.expired[0]
            .objects
            .iter()
            .map(|o| &o.key["ns/s/p-u/".len()..])
            .collect();
        assert_eq!(
            order,
            ["seg-000002.jsonl.zst", "seg-000010.jsonl.zst", MANIFEST]
        );
    }

    #[test]
    fn a_session_is_swept_at_most_once_per_interval_and_never_twice_at_once() {
        let schedule = Schedule::new(Duration::from_secs(3600));
        let t = Instant::now();
        let first = schedule.start("team/a", t);
        assert!(first.is_some());
        assert!(
            schedule
                .start("team/a", t + Duration::from_secs(60))
                .is_none()
        );
        assert!(
            schedule
                .start("team/b", t + Duration::from_secs(60))
                .is_some()
        );
        assert!(
            schedule
                .start("team/a", t + Duration::from_secs(3601))
                .is_none(),
            "still running"
        );
        drop(first);
        assert!(
            schedule
                .start("team/a", t + Duration::from_secs(3601))
                .is_some()
        );
    }
}
