//! The crash test's writer: starts a recorder on a spool (recovering whatever an earlier,
//! killed run left), then records exchanges forever, printing `ack <seq> <chain>` on stdout
//! after each acknowledgement, until it is killed. With `--finish` it records nothing and
//! shuts down cleanly instead (seal, ship, manifest).
//!
//! usage: cassette-recording-crash-writer SPOOL_DIR SINK_DIR strict|batched [--finish]

use std::io::Write;
use std::process::ExitCode;

use cassette_recording::record::{
    Decision, Direction, Event, ExchangeEnd, Request, Response, Timings,
};
use cassette_recording::{Durability, Recorder, RecorderConfig, RecordingPath};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!(
            "usage: {} SPOOL_DIR SINK_DIR strict|batched [--finish]",
            args[0]
        );
        return ExitCode::from(2);
    }
    let path = RecordingPath {
        namespace: "crash".into(),
        session: "test".into(),
        pod: "writer".into(),
        pod_uid: "0".into(),
    };
    let mut config = RecorderConfig::new(format!("file://{}", args[2]), &args[1], path);
    config.durability = if args[3] == "strict" {
        Durability::Strict
    } else {
        Durability::Batched
    };
    config.segment_max_bytes = 4096;
    config.max_body_bytes = 512;
    config.digest_key = b"crash".to_vec();
    let recorder = match Recorder::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crash-writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.get(4).is_some_and(|a| a == "--finish") {
        return match recorder.shutdown().await {
            Ok(report) => {
                println!(
                    "finished {} records in {} segments",
                    report.records, report.segments
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("crash-writer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let stdout = std::io::stdout();
    let ack = |a: cassette_recording::Ack| {
        let mut out = stdout.lock();
        // The parent reads these as the records it may count on.
        let _ = writeln!(
            out,
            "ack {} {}",
            a.seq().unwrap_or(u64::MAX),
            a.chain().unwrap_or("-")
        );
        let _ = out.flush();
    };
    loop {
        let exchange = recorder.next_exchange_id();
        let conn = recorder.next_conn_id();
        let events = [
            Event::Request(Request {
                exchange,
                conn,
                method: "GET".into(),
                scheme: "https".into(),
                authority: "example.test".into(),
                path: format!("/item/{exchange}"),
                version: "HTTP/1.1".into(),
                headers: vec![("accept".into(), "*/*".into())],
            }),
            Event::Response(Response {
                exchange,
                status: 200,
                version: "HTTP/1.1".into(),
                headers: vec![],
                trailers: None,
            }),
        ];
        for event in events {
            match recorder.record(event).await {
                Ok(a) => ack(a),
                Err(e) => {
                    eprintln!("crash-writer: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let mut body = recorder.body(exchange, Direction::Response);
        let text = format!("item {exchange} ").repeat(20);
        if body.write(text.as_bytes()).await.is_err() || body.finish().await.is_err() {
            return ExitCode::FAILURE;
        }
        let end = Event::ExchangeEnd(ExchangeEnd {
            exchange,
            timings: Timings {
                total_us: 1,
                ..Timings::default()
            },
            bytes_up: 0,
            bytes_down: text.len() as u64,
            decision: Decision::Allow,
            rule: None,
            classification: None,
            masked: 0,
            masked_by: Default::default(),
            error: None,
            trailers: None,
            request_trailers: None,
        });
        match recorder.record(end).await {
            Ok(a) => ack(a),
            Err(e) => {
                eprintln!("crash-writer: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}
