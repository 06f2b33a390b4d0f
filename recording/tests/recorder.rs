//! The recorder end to end on a file sink: record, roll, ship, shut down, read back, verify.

use std::time::Duration;

use cassette_recording::record::{Direction, Event, Request, SessionEnd};
use cassette_recording::sink::GcsOptions;
use cassette_recording::{
    Completeness, Durability, OnFailure, Recorder, RecorderConfig, RecordingPath, Sink,
    list_recordings, load, verify,
};

fn path() -> RecordingPath {
    RecordingPath {
        namespace: "agents".into(),
        session: "fix-ci".into(),
        pod: "agent-0".into(),
        pod_uid: "uid-1".into(),
    }
}

fn request(exchange: u64) -> Event {
    Event::Request(Request {
        exchange,
        conn: 1,
        method: "POST".into(),
        scheme: "https".into(),
        authority: "storage.googleapis.com".into(),
        path: "/upload/storage/v1/b/bkt/o?uploadType=media&name=x".into(),
        version: "HTTP/1.1".into(),
        headers: vec![("content-type".into(), "text/plain".into())],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_ship_and_verify_on_a_file_sink() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let mut config = RecorderConfig::new(&sink_url, spool.path(), path());
    config.durability = Durability::Strict;
    config.segment_max_bytes = 2048;
    config.max_body_bytes = 100;
    config.digest_key = b"k".to_vec();
    let recorder = Recorder::start(config).await.unwrap();
    for exchange in 0..40 {
        let ack = recorder.record(request(exchange)).await.unwrap();
        assert!(ack.is_recorded());
        let mut body = recorder.body(exchange, Direction::Request);
        body.write("héllo ".repeat(30).as_bytes()).await.unwrap();
        let summary = body.finish().await.unwrap();
        assert!(summary.truncated);
        assert_eq!(summary.length, 7 * 30);
    }
    recorder
        .record(Event::SessionEnd(SessionEnd::default()))
        .await
        .unwrap();
    let report = recorder.shutdown().await.unwrap();
    assert!(report.segments > 3, "2 KiB segments roll: {report:?}");
    assert!(
        recorder.record(request(99)).await.is_err(),
        "recording is closed"
    );
    let stats = recorder.stats();
    assert_eq!(stats.segments_shipped as usize, report.segments);
    assert_eq!(stats.spool_bytes, 0, "everything shipped: {stats:?}");

    let sink = Sink::open(&sink_url, &GcsOptions::default()).await.unwrap();
    let recordings = list_recordings(&sink, "agents", "fix-ci").await.unwrap();
    assert_eq!(recordings.len(), 1);
    assert_eq!(recordings[0].pod_dir, "agent-0-uid-1");
    let objects = load(&sink, &recordings[0].prefix).await.unwrap();
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    assert!(verdict.is_ok(), "{:#?}", verdict.faults);
    assert_eq!(verdict.completeness, Completeness::Complete);
    assert_eq!(verdict.records, report.records);
    let records: Vec<_> = objects.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len() as u64, report.records);
    assert_eq!(records[0].event.kind(), "session_start");
    // Times are RFC 3339 UTC with nanoseconds.
    let t = &records[0].time;
    assert_eq!(t.len(), "2026-05-01T12:00:00.000000000Z".len(), "{t}");
    assert!(t.ends_with('Z'));
    // Text bodies stay text.
    assert!(
        records
            .iter()
            .any(|r| matches!(&r.event, Event::Body(b) if b.text.is_some()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_by_age_and_batched_acks_become_durable() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let mut config = RecorderConfig::new(&sink_url, spool.path(), path());
    config.segment_max_age = Duration::from_millis(200);
    config.on_failure = OnFailure::Open;
    let recorder = Recorder::start(config).await.unwrap();
    let mut ack = recorder.record(request(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), ack.durable())
        .await
        .expect("the batch is fsynced");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorder.stats().segments_shipped == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            recorder.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shipped = recorder.stats().last_shipped_segment.unwrap();
    assert_eq!(
        cassette_recording::segment::SegmentName::parse(&shipped).map(|n| n.index),
        Some(1),
        "{shipped}"
    );
    recorder.shutdown().await.unwrap();
}

fn gap(n: u64) -> Event {
    Event::Gap(cassette_recording::record::Gap {
        lost: format!("nothing ({n})"),
        reason: "padding to fill segments ".repeat(4),
        records: Some(n),
        bytes: None,
        from: None,
        to: None,
    })
}

/// A short config on a file sink for the bucket attacks below: small segments, quick
/// retries, and a shutdown that gives up after a few seconds (instead of 30).
fn small(sink_url: &str, spool: &std::path::Path) -> RecorderConfig {
    let mut config = RecorderConfig::new(sink_url, spool, path());
    config.segment_max_bytes = 1500;
    config.shutdown_timeout = Duration::from_secs(4);
    config.backoff = cassette_recording::ship::Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    config
}

async fn read_back(sink_url: &str) -> cassette_recording::RecordingObjects {
    let sink = Sink::open(sink_url, &GcsOptions::default()).await.unwrap();
    load(&sink, &format!("{}/", path().prefix())).await.unwrap()
}

/// The agent, reaching the bucket first, creates the names the sidecar will use for this pod
/// (they were `seg-000001.jsonl.zst`, `seg-000002.jsonl.zst`, …, and `manifest.json`).
/// Shipping must not stall on them, and the recording must still close and verify, with
/// the squatters named as objects the recorder did not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_squatted_ahead_of_the_recorder_stop_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let dir = out.path().join(path().prefix());
    std::fs::create_dir_all(&dir).unwrap();
    let squatted = [
        "seg-000001.jsonl.zst",
        "seg-000002.jsonl.zst",
        "seg-000003.jsonl.zst",
        "manifest.json",
    ];
    for name in squatted {
        std::fs::write(dir.join(name), b"the agent was here").unwrap();
    }
    let recorder = Recorder::start(small(&sink_url, spool.path()))
        .await
        .unwrap();
    for n in 0..20 {
        recorder.record(gap(n)).await.unwrap();
    }
    let report = recorder
        .shutdown()
        .await
        .expect("the recording closes although its names were taken");
    assert!(report.segments >= 3, "{report:?}");

    let objects = read_back(&sink_url).await;
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    let named: Vec<&str> = verdict
        .faults
        .iter()
        .filter_map(|f| f.object.as_deref())
        .collect();
    for name in squatted {
        assert!(
            named.contains(&name),
            "{name} not named: {:#?}",
            verdict.faults
        );
    }
    // Only the squatters are at fault: every record the recorder wrote is there and signed.
    assert!(
        verdict
            .faults
            .iter()
            .all(|f| f.object.as_deref().is_some_and(|o| squatted.contains(&o))),
        "{:#?}",
        verdict.faults
    );
    assert_eq!(verdict.records, report.records);
    assert_eq!(verdict.completeness, Completeness::Complete);
    let manifest = verdict.manifest.as_deref().unwrap();
    assert!(
        cassette_recording::segment::is_manifest_name(manifest) && manifest != "manifest.json",
        "{manifest}"
    );
}

/// A name the recorder chose was taken by someone else before it could write it (as if the
/// name had leaked). The write-once upload is refused; the segment goes out under another
/// name, the recording says so in a `gap` record, and shipping goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_someone_else_is_a_gap_and_shipping_goes_on() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let mut config = small(&sink_url, spool.path());
    config.segment_max_bytes = 1 << 20;
    let recorder = Recorder::start(config).await.unwrap();
    recorder.record(gap(0)).await.unwrap();
    // The open segment's name, as the spool holds it: the name it will be shipped under.
    let open: Vec<String> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    let taken = format!("{}.zst", open[0]);
    let dir = out.path().join(path().prefix());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&taken), b"not the recorder's").unwrap();
    recorder.seal_now().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorder.stats().segments_shipped < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shipping stalled on the taken name: {:?}",
            recorder.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 1..10 {
        recorder.record(gap(n)).await.unwrap();
    }
    let report = recorder
        .shutdown()
        .await
        .expect("shipping goes on past the taken name");

    let objects = read_back(&sink_url).await;
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    assert_eq!(verdict.records, report.records, "nothing was lost");
    assert!(
        verdict
            .faults
            .iter()
            .all(|f| f.object.as_deref() == Some(taken.as_str())),
        "only the taken name is at fault: {:#?}",
        verdict.faults
    );
    assert!(!verdict.faults.is_empty());
    let gaps: Vec<String> = objects
        .records_of(&verdict)
        .filter_map(|r| match r.unwrap().event {
            Event::Gap(g) if g.lost.contains(&taken) => Some(g.reason),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "the recording says what happened to {taken}");
}

/// Objects in a recording's directory that are neither segments nor the manifest were not
/// written by the recorder: verify names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_the_recorder_did_not_write_are_invalid() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let recorder = Recorder::start(small(&sink_url, spool.path()))
        .await
        .unwrap();
    for n in 0..5 {
        recorder.record(gap(n)).await.unwrap();
    }
    recorder.shutdown().await.unwrap();
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let dir = out.path().join(path().prefix());
    let objects = read_back(&sink_url).await;
    assert!(verify(&objects, Some(&key)).is_ok());

    std::fs::write(dir.join("notes.txt"), b"instructions for the next agent").unwrap();
    std::fs::create_dir_all(dir.join("more")).unwrap();
    std::fs::write(dir.join("more/seg-000001.jsonl.zst"), b"x").unwrap();
    let objects = read_back(&sink_url).await;
    let verdict = verify(&objects, Some(&key));
    let named: Vec<&str> = verdict
        .faults
        .iter()
        .filter_map(|f| f.object.as_deref())
        .collect();
    assert!(named.contains(&"notes.txt"), "{:#?}", verdict.faults);
    assert!(named.contains(&"more/"), "{:#?}", verdict.faults);
}

/// A recorder that gets no digest key must not digest bodies with an empty one (anyone could
/// then confirm a guess of a body that was not stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_never_digested_with_an_empty_key() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let recorder = Recorder::start(small(&sink_url, spool.path()))
        .await
        .unwrap();
    let mut body = recorder.body(1, Direction::Response);
    body.write(b"hello").await.unwrap();
    let summary = body.finish().await.unwrap();
    assert_ne!(
        summary.digest,
        cassette_recording::body::body_digest(b"", b"hello")
    );
    recorder.shutdown().await.unwrap();
}

/// The key given is the key bodies are digested with, and `session_start` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_start_names_the_digest_key() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let mut config = small(&sink_url, spool.path());
    config.digest_key = b"the session's fingerprint key".to_vec();
    let recorder = Recorder::start(config).await.unwrap();
    let mut body = recorder.body(1, Direction::Response);
    body.write(b"hello").await.unwrap();
    let summary = body.finish().await.unwrap();
    assert_eq!(
        summary.digest,
        cassette_recording::body::body_digest(b"the session's fingerprint key", b"hello")
    );
    recorder.shutdown().await.unwrap();
    let objects = read_back(&sink_url).await;
    let start = objects.records().next().unwrap().unwrap();
    match start.event {
        Event::SessionStart(s) => assert_eq!(
            s.digest_key_id.as_deref(),
            Some(
                cassette_recording::body::digest_key_id(b"the session's fingerprint key").as_str()
            )
        ),
        other => panic!("{other:?}"),
    }
}

/// The segments a recorder cannot ship before its deadline (the pod is being deleted) are
/// not dropped in silence: the signed manifest lists them, so `verify` shows the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_shipped_in_time_is_a_gap_in_the_manifest() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let mut config = small(&sink_url, spool.path());
    config.segment_max_bytes = 1 << 20;
    config.shutdown_timeout = Duration::from_secs(2);
    let recorder = Recorder::start(config).await.unwrap();
    recorder.record(gap(0)).await.unwrap();
    recorder.seal_now().unwrap();
    let mut ack = recorder.record(gap(1)).await.unwrap();
    ack.durable().await;
    // Segment 1 ships; segment 2's name is blocked in the sink (a directory stands there),
    // so every attempt to write it fails, and segment 3 waits behind it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorder.stats().segments_shipped < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open: Vec<String> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    let blocked = out
        .path()
        .join(path().prefix())
        .join(format!("{}.zst", open[0]));
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
    recorder.seal_now().unwrap();
    recorder.record(gap(2)).await.unwrap();
    let err = recorder.shutdown().await.unwrap_err();
    assert!(
        matches!(err, cassette_recording::ShutdownError::Unshipped { .. }),
        "{err}"
    );
    std::fs::remove_dir_all(&blocked).unwrap();

    let manifest = out.path().join(path().prefix()).join("manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("a manifest was written")).unwrap();
    let unshipped = manifest["unshipped"]
        .as_array()
        .expect("unshipped segments");
    assert_eq!(unshipped.len(), 2, "{manifest}");
    assert_eq!(manifest["segments"].as_array().unwrap().len(), 1);

    // verify: what is there is intact, and the gap is the manifest's, signed.
    let objects = read_back(&sink_url).await;
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    assert!(verdict.is_ok(), "{:#?}", verdict.faults);
    match &verdict.completeness {
        Completeness::Unshipped(gap) => {
            assert_eq!(gap.len(), 2);
            assert_eq!(gap[0].first_seq, verdict.records);
        }
        other => panic!("{other:?}"),
    }
    // The spool is closed: its manifest is final.
    assert!(spool.path().join("unshipped.json").exists());
    assert!(spool.path().join("manifest.json").exists());

    // Segment 2's upload may land after all as the recorder stops: it is then checked
    // against the chain the manifest signed for it, and only segment 3 is missing.
    let second = unshipped[0]["name"].as_str().unwrap();
    std::fs::copy(
        spool.path().join(second),
        out.path().join(path().prefix()).join(second),
    )
    .unwrap();
    let objects = read_back(&sink_url).await;
    let verdict = verify(&objects, Some(&key));
    assert!(verdict.is_ok(), "{:#?}", verdict.faults);
    match &verdict.completeness {
        Completeness::Unshipped(gap) => assert_eq!(gap.len(), 1, "{gap:?}"),
        other => panic!("{other:?}"),
    }
}

/// When even the manifest cannot be written (the sink is gone), the spool keeps a report
/// that names what was not shipped, for the sidecar to hand on (its termination message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nothing_can_be_written_the_spool_keeps_a_report() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // A file where the sink's directory should be: every write fails.
    let root = out.path().join("sink");
    std::fs::write(&root, b"not a directory").unwrap();
    let sink_url = format!("file://{}", root.display());
    let mut config = small(&sink_url, spool.path());
    config.shutdown_timeout = Duration::from_secs(2);
    let recorder = Recorder::start(config).await.unwrap();
    for n in 0..10 {
        recorder.record(gap(n)).await.unwrap();
    }
    let err = recorder.shutdown().await.unwrap_err();
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(spool.path().join("unshipped.json")).expect("a local report"),
    )
    .unwrap();
    let listed = report["unshipped"].as_array().unwrap();
    assert!(listed.len() >= 2, "{report}");
    assert!(err.to_string().contains("unshipped.json"), "{err}");
}
