//! Throughput of cassette's recording path, in release mode: encode + chain alone; the whole
//! recorder (encode, chain, spool write, fsync, seal, zstd, ship to a file sink) in batched and
//! strict durability; and verification of the result. Prints a Markdown table.
//!
//! usage: cargo run --release -p cassette-bench-recording [-- RECORDS]

use std::time::{Duration, Instant};

use cassette_recording::record::{Event, Request};
use cassette_recording::sink::GcsOptions;
use cassette_recording::{
    Durability, Recorder, RecorderConfig, RecordingPath, Sink, chain, load, verify,
};

fn request(exchange: u64) -> Event {
    Event::Request(Request {
        exchange,
        conn: exchange / 10,
        method: "POST".into(),
        scheme: "https".into(),
        authority: "storage.googleapis.com".into(),
        path: format!(
            "/upload/storage/v1/b/agent-bucket/o?uploadType=media&name=build/{exchange}.log"
        ),
        version: "HTTP/1.1".into(),
        headers: vec![
            ("host".into(), "storage.googleapis.com".into()),
            (
                "user-agent".into(),
                "gcloud/528.0.0 command/gcloud.storage.cp".into(),
            ),
            ("content-type".into(), "text/plain".into()),
            (
                "authorization".into(),
                "«masked:oauth-access-token:3f9a1c22»".into(),
            ),
            ("accept-encoding".into(), "gzip".into()),
        ],
    })
}

struct Row {
    what: String,
    records: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Row {
    fn print(&self) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.1} |",
            self.what,
            self.records,
            self.records as f64 / secs,
            self.bytes as f64 / secs / 1e6
        );
    }
}

fn encode_and_chain(n: u64) -> Row {
    let mut head = chain::GENESIS.to_string();
    let mut bytes = 0;
    let time = "2026-05-01T12:00:00.000000000Z";
    let events: Vec<Event> = (0..1000).map(request).collect();
    let start = Instant::now();
    for seq in 0..n {
        let canonical = chain::canonical(seq, time, &events[(seq % 1000) as usize]);
        head = chain::link(&head, &canonical);
        bytes += canonical.len() as u64 + 77;
    }
    std::hint::black_box(head);
    Row {
        what: "encode + chain (no I/O)".into(),
        records: n,
        bytes,
        elapsed: start.elapsed(),
    }
}

async fn record(durability: Durability, writers: u64, n: u64) -> (Row, Row) {
    let spool = tempfile::tempdir().expect("spool dir");
    let out = tempfile::tempdir().expect("sink dir");
    let url = format!("file://{}", out.path().display());
    let path = RecordingPath {
        namespace: "bench".into(),
        session: "s".into(),
        pod: "p".into(),
        pod_uid: "u".into(),
    };
    let mut config = RecorderConfig::new(&url, spool.path(), path.clone());
    config.durability = durability;
    let recorder = Recorder::start(config).await.expect("start");
    let start = Instant::now();
    let per = n / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let r = recorder.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    r.record(request(w * per + i)).await.expect("record");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    recorder.shutdown().await.expect("shutdown");
    let elapsed = start.elapsed();
    let stats = recorder.stats();
    let mode = match durability {
        Durability::Batched => "batched",
        Durability::Strict => "strict",
    };
    let write = Row {
        what: format!("record, {mode}, {writers} writer(s), incl. seal + zstd + ship"),
        records: stats.records,
        bytes: stats.bytes,
        elapsed,
    };
    let sink = Sink::open(&url, &GcsOptions::default())
        .await
        .expect("sink");
    let objects = load(&sink, &format!("{}/", path.prefix()))
        .await
        .expect("load");
    let start = Instant::now();
    let report = verify(&objects, None);
    let elapsed = start.elapsed();
    assert!(report.is_ok(), "{:?}", report.faults.first());
    let verify_row = Row {
        what: "verify (zstd + chain + seals + manifest)".into(),
        records: report.records,
        bytes: stats.bytes,
        elapsed,
    };
    (write, verify_row)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    println!("| path | records | records/s | MB/s |");
    println!("|---|---:|---:|---:|");
    encode_and_chain(n).print();
    let (w, v) = record(Durability::Batched, 1, n).await;
    w.print();
    v.print();
    let (w, _) = record(Durability::Batched, 8, n).await;
    w.print();
    let (w, _) = record(Durability::Strict, 1, (n / 50).max(100)).await;
    w.print();
    let (w, _) = record(Durability::Strict, 8, (n / 10).max(800)).await;
    w.print();
}
