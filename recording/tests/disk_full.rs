//! A full disk under the spool, for real: the spool sits on a small tmpfs that another file
//! fills. With `onFailure: closed` a record is refused with the disk's own error (and the
//! caller refuses the traffic); once there is room again the next record is preceded by a
//! `gap` saying what was refused, when and why, and the recording verifies.
//!
//! Needs root to mount the tmpfs; skips with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use cassette_recording::record::{Event, Request, SessionEnd};
use cassette_recording::sink::GcsOptions;
use cassette_recording::{
    Durability, OnFailure, Recorder, RecorderConfig, RecordingPath, Sink, list_recordings, load,
    verify,
};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            println!(
                "skipped: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn request(exchange: u64) -> Event {
    Event::Request(Request {
        exchange,
        conn: 1,
        method: "GET".into(),
        scheme: "https".into(),
        authority: "storage.googleapis.com".into(),
        path: format!("/storage/v1/b/bkt/o/object-{exchange}"),
        version: "HTTP/1.1".into(),
        headers: vec![("accept".into(), "application/json".into())],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_records_with_its_error_and_the_gap_is_recorded_after() {
    // SAFETY: geteuid has no preconditions.
    if !rustix::process::geteuid().is_root() {
        println!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&spool, "512k") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let sink_url = format!("file://{}", out.path().display());
    let path = RecordingPath {
        namespace: "agents".into(),
        session: "fix-ci".into(),
        pod: "agent-0".into(),
        pod_uid: "uid-1".into(),
    };
    let mut config = RecorderConfig::new(&sink_url, &spool, path);
    config.durability = Durability::Batched;
    config.on_failure = OnFailure::Closed;
    let recorder = Recorder::start(config).await.unwrap();
    for exchange in 0..10 {
        recorder.record(request(exchange)).await.unwrap();
    }

    // Something else on the node fills the disk.
    let filler = spool.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 1 << 20]);
    let mut refused = 0;
    for exchange in 10..20 {
        match recorder.record(request(exchange)).await {
            Ok(ack) => assert!(ack.is_recorded(), "closed mode never drops silently"),
            Err(e) => {
                let said = e.to_string();
                assert!(
                    said.contains("No space left on device"),
                    "the refusal says why: {said}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "nothing was refused on a full disk");

    // Room again: recording goes on, after a gap that says what was refused.
    std::fs::remove_file(&filler).unwrap();
    for exchange in 20..25 {
        recorder.record(request(exchange)).await.unwrap();
    }
    recorder
        .record(Event::SessionEnd(SessionEnd::default()))
        .await
        .unwrap();
    recorder.shutdown().await.unwrap();

    let sink = Sink::open(&sink_url, &GcsOptions::default()).await.unwrap();
    let recordings = list_recordings(&sink, "agents", "fix-ci").await.unwrap();
    let objects = load(&sink, &recordings[0].prefix).await.unwrap();
    let key = cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
    let verdict = verify(&objects, Some(&key));
    assert!(verdict.is_ok(), "{:#?}", verdict.faults);
    let records: Vec<_> = objects.records().collect::<Result<_, _>>().unwrap();
    let gaps: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Gap(gap) => Some(gap),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "one outage, one gap");
    assert_eq!(gaps[0].records, Some(refused));
    assert!(
        gaps[0].reason.contains("could not be written") && gaps[0].reason.contains("No space"),
        "{:?}",
        gaps[0]
    );
    let requests = records
        .iter()
        .filter(|r| r.event.kind() == "request")
        .count() as u64;
    assert_eq!(requests, 25 - refused, "every acknowledged record is there");
}
