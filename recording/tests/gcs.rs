//! The `gs://` sink against fake-gcs-server (installed by tests/fake-gcs.sh on first use):
//! write-once with 412 on a second write, metadata, listing, the retention sweep's detailed
//! listing and delete, and a recorder that keeps recording through an emulator outage and
//! ships everything once it is back.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cassette_recording::record::{Event, Gap};
use cassette_recording::ship::Backoff;
use cassette_recording::sink::{Deleted, GcsOptions, ObjectMeta, Protection, Put};
use cassette_recording::{
    Completeness, Recorder, RecorderConfig, RecordingPath, Sink, list_recordings, load, verify,
};

const BUCKET: &str = "cassette-test";

fn emulator_binary() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-gcs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/fake-gcs.sh");
    assert!(out.status.success(), "tests/fake-gcs.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// One fake-gcs-server process, with a filesystem backend so a restart keeps the objects.
struct Emulator {
    binary: PathBuf,
    port: u16,
    root: tempfile::TempDir,
    child: Option<Child>,
}

impl Emulator {
    async fn start() -> Emulator {
        cassette_recording::sink::install_ring_provider();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut e = Emulator {
            binary: emulator_binary(),
            port,
            root: tempfile::tempdir().unwrap(),
            child: None,
        };
        e.run().await;
        let created = reqwest::Client::new()
            .post(format!("{}/storage/v1/b", e.endpoint()))
            .json(&serde_json::json!({ "name": BUCKET }))
            .send()
            .await
            .unwrap();
        assert!(
            created.status().is_success(),
            "create bucket: {}",
            created.status()
        );
        e
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-log-level",
                "error",
            ])
            .args(["-port", &self.port.to_string()])
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start fake-gcs-server");
        self.child = Some(child);
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(format!("{}/storage/v1/b", self.endpoint()))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fake-gcs-server did not start on port {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn options(&self) -> GcsOptions {
        GcsOptions {
            endpoint: Some(self.endpoint()),
            anonymous: true,
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_once_with_metadata_and_lists() {
    let emulator = Emulator::start().await;
    let sink = Sink::open(&format!("gs://{BUCKET}/pfx"), &emulator.options())
        .await
        .unwrap();
    let meta = ObjectMeta {
        pairs: vec![("cassette-session".into(), "s1".into())],
        retain_for: None,
        content_type: "application/zstd",
    };
    assert_eq!(
        sink.put_once("ns/s1/p-u/seg-000001.jsonl.zst", "first".into(), &meta)
            .await
            .unwrap(),
        Put::Created
    );
    // The same bytes again: the emulator answers 412 and the sink sees they are identical.
    assert_eq!(
        sink.put_once("ns/s1/p-u/seg-000001.jsonl.zst", "first".into(), &meta)
            .await
            .unwrap(),
        Put::AlreadyThere
    );
    // Different bytes: refused, and the object is unchanged.
    let err = sink
        .put_once("ns/s1/p-u/seg-000001.jsonl.zst", "second".into(), &meta)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(
        sink.get("ns/s1/p-u/seg-000001.jsonl.zst")
            .await
            .unwrap()
            .unwrap(),
        b"first"
    );
    assert_eq!(sink.get("ns/s1/p-u/none").await.unwrap(), None);

    let object: serde_json::Value = reqwest::get(format!(
        "{}/storage/v1/b/{BUCKET}/o/pfx%2Fns%2Fs1%2Fp-u%2Fseg-000001.jsonl.zst",
        emulator.endpoint()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(object["metadata"]["cassette-session"], "s1");
    assert_eq!(object["size"], "5", "no checksum bytes appended: {object}");

    let recordings = list_recordings(&sink, "ns", "s1").await.unwrap();
    assert_eq!(recordings.len(), 1);
    assert_eq!(recordings[0].pod_dir, "p-u");
    assert_eq!(recordings[0].prefix, "ns/s1/p-u/");
}

/// fake-gcs-server v1.56 keeps object retention and reports it, but stores no holds and
/// enforces neither holds, retention nor `ifGenerationMatch` on delete: the sweep's skip of a
/// held object rests on the listing, which is what this checks (hold parsing and the 403/412
/// answers of the real service are unit tests in sink/gcs.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_stored_objects_with_times_and_retention_and_deletes_them() {
    let emulator = Emulator::start().await;
    let sink = Sink::open(&format!("gs://{BUCKET}/pfx"), &emulator.options())
        .await
        .unwrap();
    let before = std::time::SystemTime::now() - Duration::from_secs(60);
    let plain = ObjectMeta {
        content_type: "application/zstd",
        pairs: vec![("cassette-session".into(), "s1".into())],
        ..ObjectMeta::default()
    };
    let retained = ObjectMeta {
        retain_for: Some(Duration::from_secs(3600)),
        ..plain.clone()
    };
    for (key, meta) in [
        ("ns/s1/p-1/seg-000001.jsonl.zst", &plain),
        ("ns/s1/p-1/manifest.json", &plain),
        ("ns/s1/p-2/seg-000001.jsonl.zst", &retained),
        ("ns/s2/p-3/seg-000001.jsonl.zst", &plain),
    ] {
        sink.put_once(key, "bytes".into(), meta).await.unwrap();
    }

    let stored = sink.list_stored("ns/s1/").await.unwrap();
    let keys: Vec<&str> = stored.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ns/s1/p-1/manifest.json",
            "ns/s1/p-1/seg-000001.jsonl.zst",
            "ns/s1/p-2/seg-000001.jsonl.zst",
        ],
        "every depth below the prefix, keys relative to the sink, other sessions left out"
    );
    let now = std::time::SystemTime::now();
    for object in &stored {
        assert!(object.created > before && object.created <= now + Duration::from_secs(5));
        assert!(object.generation.is_some(), "{object:?}");
    }
    assert!(stored[0].protections.is_empty());
    assert_eq!(
        stored[0]
            .metadata
            .get("cassette-session")
            .map(String::as_str),
        Some("s1"),
        "the retention sweep reads whose object it is from the listing"
    );
    match stored[2].kept_by(now) {
        Some(Protection::RetainedUntil(until)) => {
            assert!(*until > now + Duration::from_secs(3000), "{until:?}")
        }
        other => panic!("retention not listed: {other:?}"),
    }

    assert_eq!(sink.delete(&stored[1]).await.unwrap(), Deleted::Deleted);
    assert_eq!(
        sink.get("ns/s1/p-1/seg-000001.jsonl.zst").await.unwrap(),
        None
    );
    assert_eq!(sink.delete(&stored[1]).await.unwrap(), Deleted::AlreadyGone);
    assert_eq!(sink.delete(&stored[0]).await.unwrap(), Deleted::Deleted);
    let recordings = list_recordings(&sink, "ns", "s1").await.unwrap();
    assert_eq!(
        recordings
            .iter()
            .map(|r| r.pod_dir.as_str())
            .collect::<Vec<_>>(),
        ["p-2"]
    );
    assert!(
        sink.get("ns/s2/p-3/seg-000001.jsonl.zst")
            .await
            .unwrap()
            .is_some()
    );
}

fn event(n: u64) -> Event {
    Event::Gap(Gap {
        lost: format!("nothing ({n})"),
        reason: "padding to fill segments ".repeat(4),
        records: Some(n),
        bytes: None,
        from: None,
        to: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_grows_the_spool_and_shipping_resumes() {
    let mut emulator = Emulator::start().await;
    let spool = tempfile::tempdir().unwrap();
    let path = RecordingPath {
        namespace: "ns".into(),
        session: "outage".into(),
        pod: "agent".into(),
        pod_uid: "1".into(),
    };
    let url = format!("gs://{BUCKET}/recordings");
    let mut config = RecorderConfig::new(&url, spool.path(), path.clone());
    config.gcs = emulator.options();
    config.session_uid = Some("5e55-10n".into());
    config.segment_max_bytes = 2000;
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let recorder = Recorder::start(config).await.unwrap();
    for n in 0..30 {
        recorder.record(event(n)).await.unwrap();
    }
    wait_until(|| recorder.stats().segments_shipped >= 2).await;

    emulator.stop();
    let shipped_before = recorder.stats().segments_shipped;
    for n in 30..120 {
        recorder.record(event(n)).await.unwrap();
    }
    wait_until(|| recorder.stats().ship_failures >= 2).await;
    let during = recorder.stats();
    assert!(
        during.spool_bytes > 4000,
        "the spool holds what cannot ship: {during:?}"
    );
    assert!(during.segments_shipped <= shipped_before + 1, "{during:?}");

    emulator.run().await;
    wait_until(|| recorder.stats().spool_bytes < 2000).await;
    let report = recorder.shutdown().await.unwrap();

    let sink = Sink::open(&url, &emulator.options()).await.unwrap();
    let objects = load(&sink, &format!("{}/", path.prefix())).await.unwrap();
    assert_eq!(objects.segments.len(), report.segments);
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    assert!(verdict.is_ok(), "{:#?}", verdict.faults);
    assert_eq!(verdict.completeness, Completeness::Complete);
    assert_eq!(verdict.records, report.records);
    let gaps = objects
        .records()
        .filter(|r| matches!(r.as_ref().unwrap().event, Event::Gap(_)))
        .count();
    assert_eq!(gaps, 120, "every record written during the outage was kept");

    // Every object, segments and manifest, names the AgentSession it belongs to.
    let stored = sink
        .list_stored(&format!("{}/", path.prefix()))
        .await
        .unwrap();
    assert_eq!(stored.len(), report.segments + 1, "{stored:?}");
    for object in &stored {
        assert_eq!(
            object
                .metadata
                .get("cassette-session-uid")
                .map(String::as_str),
            Some("5e55-10n"),
            "{object:?}"
        );
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `RecorderConfig.retention` reaches every object the recorder writes as GCS object
/// retention (retainUntilTime), segments and manifest alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_carries_the_sessions_retention() {
    let emulator = Emulator::start().await;
    let spool = tempfile::tempdir().unwrap();
    let path = RecordingPath {
        namespace: "ns".into(),
        session: "retained".into(),
        pod: "agent".into(),
        pod_uid: "2".into(),
    };
    let url = format!("gs://{BUCKET}/recordings");
    let mut config = RecorderConfig::new(&url, spool.path(), path.clone());
    config.gcs = emulator.options();
    config.segment_max_bytes = 2000;
    config.retention = Some(Duration::from_secs(90 * 86_400));
    let before = std::time::SystemTime::now();
    let recorder = Recorder::start(config).await.unwrap();
    for n in 0..20 {
        recorder.record(event(n)).await.unwrap();
    }
    let report = recorder.shutdown().await.unwrap();
    let sink = Sink::open(&url, &emulator.options()).await.unwrap();
    let stored = sink
        .list_stored(&format!("{}/", path.prefix()))
        .await
        .unwrap();
    assert_eq!(stored.len(), report.segments + 1, "{stored:?}");
    for object in &stored {
        let until = object.protections.iter().find_map(|p| match p {
            Protection::RetainedUntil(t) => Some(*t),
            _ => None,
        });
        let until = until.unwrap_or_else(|| panic!("{} has no retention: {object:?}", object.key));
        let days = until.duration_since(before).unwrap().as_secs_f64() / 86_400.0;
        assert!((89.9..90.1).contains(&days), "{}: {days} days", object.key);
    }
}

/// On GCS a taken name is a 412 from `ifGenerationMatch=0` and other bytes under the name: the
/// segment goes out under another name, a gap says so, and shipping goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_in_the_bucket_is_a_gap_and_shipping_goes_on() {
    let emulator = Emulator::start().await;
    let spool = tempfile::tempdir().unwrap();
    let path = RecordingPath {
        namespace: "ns".into(),
        session: "taken".into(),
        pod: "agent".into(),
        pod_uid: "3".into(),
    };
    let url = format!("gs://{BUCKET}/recordings");
    let mut config = RecorderConfig::new(&url, spool.path(), path.clone());
    config.gcs = emulator.options();
    config.segment_max_bytes = 1 << 20;
    config.shutdown_timeout = Duration::from_secs(10);
    let recorder = Recorder::start(config).await.unwrap();
    recorder.record(event(0)).await.unwrap();
    let open: Vec<String> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
        .collect();
    let taken = format!("{}.zst", open[0]);
    let sink = Sink::open(&url, &emulator.options()).await.unwrap();
    let meta = ObjectMeta {
        content_type: "application/zstd",
        ..ObjectMeta::default()
    };
    sink.put_once(
        &format!("{}/{taken}", path.prefix()),
        "not the recorder's".into(),
        &meta,
    )
    .await
    .unwrap();
    recorder.seal_now().unwrap();
    wait_until(|| recorder.stats().segments_shipped >= 1).await;
    recorder.record(event(1)).await.unwrap();
    let report = recorder.shutdown().await.unwrap();

    let objects = load(&sink, &format!("{}/", path.prefix())).await.unwrap();
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    assert_eq!(verdict.records, report.records);
    assert!(
        !verdict.faults.is_empty()
            && verdict
                .faults
                .iter()
                .all(|f| f.object.as_deref() == Some(taken.as_str())),
        "{:#?}",
        verdict.faults
    );
    assert!(
        objects
            .records_of(&verdict)
            .any(|r| matches!(r.unwrap().event, Event::Gap(g) if g.lost.contains(&taken)))
    );
}

/// What the IAM gate saw: requests refused, and uploads whose answer it dropped.
#[derive(Default)]
struct GateLog {
    refused: Vec<String>,
    answers_lost: Vec<String>,
}

/// A stand-in for a bucket where the recorder holds create rights only
/// (`roles/storage.objectCreator`: `storage.objects.create`, nothing to read, list, delete or
/// overwrite). Uploads pass to the emulator; anything else gets the 403 GCS gives for a
/// missing permission. The first segment upload's answer is lost on the way back (a 503 after
/// the object was made), as a dropped connection would lose it.
async fn create_only_gate(emulator: &str, log: std::sync::Arc<std::sync::Mutex<GateLog>>) -> u16 {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = emulator.to_string();
    let client = reqwest::Client::new();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (log, upstream, client) = (log.clone(), upstream.clone(), client.clone());
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let (log, upstream, client) = (log.clone(), upstream.clone(), client.clone());
                async move {
                    let method = req.method().clone();
                    let target = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    let create = matches!(method.as_str(), "POST" | "PUT")
                        && target.starts_with("/upload/storage/v1/b/");
                    let answer = |status: u16, body: Bytes| {
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                    };
                    if !create {
                        log.lock()
                            .unwrap()
                            .refused
                            .push(format!("{method} {target}"));
                        let body = serde_json::json!({"error": {"code": 403, "message":
                            "recorder@example.iam.gserviceaccount.com does not have storage.objects.get access (create only)"}});
                        return answer(403, body.to_string().into());
                    }
                    let headers = req.headers().clone();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut forward = client.request(method.clone(), format!("{upstream}{target}"));
                    for (name, value) in &headers {
                        if name != "host" {
                            forward = forward.header(name, value);
                        }
                    }
                    let response = forward.body(body.clone()).send().await.unwrap();
                    let status = response.status().as_u16();
                    let bytes = response.bytes().await.unwrap();
                    let text = String::from_utf8_lossy(&body);
                    let manifest =
                        target.contains("manifest.json") || text.contains("manifest.json");
                    let segment = !manifest
                        && (target.contains("seg-000001-") || text.contains("seg-000001-"));
                    let mut log = log.lock().unwrap();
                    let kind = if manifest { "manifest" } else { "segment" };
                    if status == 200
                        && (segment || manifest)
                        && !log.answers_lost.iter().any(|k| k == kind)
                    {
                        log.answers_lost.push(kind.to_string());
                        return answer(503, "{}".into());
                    }
                    answer(status, bytes)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// Issue 14.2: the recorder works with create-only rights on its bucket. It never reads,
/// lists, deletes or overwrites; when an upload's answer is lost, the retry's 412 cannot be
/// read to tell, so the segment goes again under a fresh name with a gap saying so, and the
/// recording still verifies (the orphan is byte for byte a listed segment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_needs_only_create_rights() {
    let emulator = Emulator::start().await;
    let log = std::sync::Arc::new(std::sync::Mutex::new(GateLog::default()));
    let gate = create_only_gate(&emulator.endpoint(), log.clone()).await;
    let spool = tempfile::tempdir().unwrap();
    let path = RecordingPath {
        namespace: "ns".into(),
        session: "create-only".into(),
        pod: "agent".into(),
        pod_uid: "1".into(),
    };
    let url = format!("gs://{BUCKET}/recordings");
    let mut config = RecorderConfig::new(&url, spool.path(), path.clone());
    config.gcs = GcsOptions {
        endpoint: Some(format!("http://127.0.0.1:{gate}")),
        anonymous: true,
    };
    config.segment_max_bytes = 2000;
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let recorder = Recorder::start(config).await.unwrap();
    for n in 0..40 {
        recorder.record(event(n)).await.unwrap();
    }
    // Shipped while recording goes on, so the rename's gap is in the chain (after
    // `session_end` it could only be logged; verify would still name the copy).
    wait_until(|| recorder.stats().segments_shipped >= 2).await;
    recorder.record(event(40)).await.unwrap();
    let report = recorder
        .shutdown()
        .await
        .expect("shipped with create rights alone");

    let log = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(
        log.answers_lost,
        ["segment", "manifest"],
        "the gate lost two answers"
    );
    // The only things refused are the reads that could have told a retry's 412 apart.
    assert_eq!(log.refused.len(), 2, "{:?}", log.refused);
    assert!(
        log.refused.iter().all(|r| r.starts_with("GET "))
            && log.refused[0].contains("seg-000001-")
            && log.refused[1].contains("manifest.json"),
        "{:?}",
        log.refused
    );

    // The auditor reads with full rights.
    let sink = Sink::open(&url, &emulator.options()).await.unwrap();
    let objects = load(&sink, &format!("{}/", path.prefix())).await.unwrap();
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    assert!(verdict.is_ok(), "{:#?}", verdict.faults);
    assert_eq!(verdict.completeness, Completeness::Complete);
    assert_eq!(verdict.records, report.records);
    assert_eq!(verdict.copies.len(), 2, "{:?}", verdict.copies);
    assert!(
        verdict
            .copies
            .iter()
            .any(|(copy, first)| copy.starts_with("manifest-") && first == "manifest.json")
            || verdict
                .copies
                .iter()
                .any(|(copy, first)| copy == "manifest.json" && first.starts_with("manifest")),
        "the manifest written again under another name is a copy: {:?}",
        verdict.copies
    );
    let (copy, listed) = verdict
        .copies
        .iter()
        .find(|(copy, _)| copy.starts_with("seg-"))
        .expect("the segment's copy");
    assert!(copy.starts_with("seg-000001-") && listed.starts_with("seg-000001-") && copy != listed);
    let gap = objects
        .records()
        .map(|r| r.unwrap())
        .find_map(|r| match r.event {
            Event::Gap(g) if g.lost.contains(copy.as_str()) => Some(g),
            _ => None,
        })
        .expect("the renamed segment is a gap in the recording");
    assert!(gap.lost.contains(listed.as_str()), "{gap:?}");
}
