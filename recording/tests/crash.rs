//! Crash safety: a writer process is SIGKILLed at random points, again and again, on the same
//! spool. Every record it acknowledged (printed `ack <seq> <chain>`) must be in the final
//! recording with the same chain value, and the recording must verify.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cassette_recording::sink::GcsOptions;
use cassette_recording::{Completeness, Sink, list_recordings, load, verify};

const WRITER: &str = env!("CARGO_BIN_EXE_cassette-recording-crash-writer");
const KILLS: usize = 60;

/// Small deterministic PRNG (xorshift) so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();

    for round in 0..KILLS {
        let mode = if round % 2 == 0 { "strict" } else { "batched" };
        let mut child = Command::new(WRITER)
            .args([
                spool.path().to_str().unwrap(),
                out.path().to_str().unwrap(),
                mode,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().unwrap();
        // Kill after a random number of acks (0 = during start-up and recovery), or a time
        // limit as a backstop.
        let target = rng.below(300);
        let started = Instant::now();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        if target == 0 {
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        }
        while seen < target && started.elapsed() < Duration::from_secs(10) {
            match lines.next() {
                Some(Ok(line)) => {
                    let mut parts = line.split(' ');
                    assert_eq!(parts.next(), Some("ack"), "{line}");
                    let seq: u64 = parts.next().unwrap().parse().unwrap();
                    let chain = parts.next().unwrap().to_string();
                    if let Some(previous) = acked.insert(seq, chain.clone()) {
                        panic!(
                            "seed {seed}: seq {seq} acknowledged twice ({previous} then {chain}) — an acknowledged record was lost"
                        );
                    }
                    seen += 1;
                }
                _ => panic!("seed {seed}: the writer stopped in round {round}"),
            }
        }
        child.kill().expect("SIGKILL the writer");
        child.wait().unwrap();
        // Acks already in the pipe were printed before the kill: they count too.
        for line in lines.map_while(Result::ok) {
            let mut parts = line.split(' ');
            parts.next();
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            acked.insert(seq, parts.next().unwrap().to_string());
        }
    }

    let status = Command::new(WRITER)
        .args([
            spool.path().to_str().unwrap(),
            out.path().to_str().unwrap(),
            "strict",
            "--finish",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "seed {seed}: the final clean run failed");

    let sink = Sink::open(
        &format!("file://{}", out.path().display()),
        &GcsOptions::default(),
    )
    .await
    .unwrap();
    let recordings = list_recordings(&sink, "crash", "test").await.unwrap();
    assert_eq!(recordings.len(), 1);
    let objects = load(&sink, &recordings[0].prefix).await.unwrap();
    let report = verify(&objects, None);
    assert!(report.is_ok(), "seed {seed}: {:#?}", report.faults);
    assert_eq!(report.completeness, Completeness::Complete);
    assert!(
        report.segments.iter().any(|s| s.recovered),
        "seed {seed}: some segment was recovered"
    );

    let chains: BTreeMap<u64, String> = objects
        .records()
        .map(|r| r.unwrap())
        .map(|r| (r.seq, r.chain))
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .filter(|(seq, chain)| chains.get(seq) != Some(chain))
        .map(|(seq, _)| *seq)
        .collect();
    assert!(acked.len() > 1000, "seed {seed}: only {} acks", acked.len());
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged records lost: {lost:?}"
    );
}

/// Exchange and connection ids name one exchange and one connection of the recording, also
/// across restarts: a recorder killed and started again on its spool goes on after the ids it
/// handed out before, whether those records were still in the spool or already shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_unique_across_restarts() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = |finish: bool| {
        let mut cmd = Command::new(WRITER);
        cmd.args([
            spool.path().to_str().unwrap(),
            out.path().to_str().unwrap(),
            "batched",
        ]);
        if finish {
            cmd.arg("--finish");
        }
        cmd
    };
    for _ in 0..3 {
        let mut child = run(false)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        // Enough exchanges (three acks each) that some segments ship (4 KiB segments) and
        // some stay in the spool.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..450 {
            lines.next().expect("an ack").unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(run(true).status().unwrap().success());

    let sink = Sink::open(
        &format!("file://{}", out.path().display()),
        &GcsOptions::default(),
    )
    .await
    .unwrap();
    let recordings = list_recordings(&sink, "crash", "test").await.unwrap();
    let objects = load(&sink, &recordings[0].prefix).await.unwrap();
    let mut exchanges = BTreeMap::new();
    let mut conns = BTreeMap::new();
    let mut starts = 0;
    for r in objects.records() {
        let r = r.unwrap();
        match &r.event {
            cassette_recording::Event::SessionStart(_) => starts += 1,
            cassette_recording::Event::Request(q) => {
                if let Some(first) = exchanges.insert(q.exchange, r.seq) {
                    panic!(
                        "exchange {} names the request at seq {first} and the one at seq {}",
                        q.exchange, r.seq
                    );
                }
                if let Some(first) = conns.insert(q.conn, r.seq) {
                    panic!(
                        "connection {} opened at seq {first} and again at seq {}",
                        q.conn, r.seq
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(starts, 4, "three restarts and a final run");
    assert!(exchanges.len() >= 450, "{} exchanges", exchanges.len());
}
