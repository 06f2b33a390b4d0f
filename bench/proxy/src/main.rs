//! `bench-proxy`: what the sidecar costs an agent, measured side by side with a direct
//! connection and with its peers in one run, on one upstream.
//!
//! The upstream is an in-process HTTPS server (h1) on loopback. Clients keep their
//! connections alive and send requests back to back: directly to the upstream; through the
//! sidecar and through mitmproxy, both explicit CONNECT proxies that intercept TLS and record
//! every exchange; and to nginx, a TLS-terminating reverse proxy that records nothing. Reports
//! p50/p99 latency, the latency each path adds over direct, requests per second relative to
//! direct, and each peer's resident memory idle, under load, and holding 1,000 open
//! connections. A peer that cannot be started is a row saying why. Markdown on stdout.

mod client;
mod peers;
mod upstream;

use anyhow::{Context, Result, bail};
use client::{Measured, Route};
use peers::Peer;
use std::path::PathBuf;
use std::time::Duration;

struct Args {
    sidecar: PathBuf,
    nginx: Option<PathBuf>,
    mitmdump: Option<PathBuf>,
    seconds: u64,
    connections: usize,
}

const USAGE: &str = "usage: bench-proxy [--sidecar PATH] [--nginx PATH] [--mitmdump PATH] \
                     [--seconds N] [--connections N] (bench/proxy/peers.sh prints the peers' flags)";

fn args() -> Result<Args> {
    let mut args = Args {
        sidecar: PathBuf::from("target/release/cassette-sidecar"),
        nginx: None,
        mitmdump: None,
        seconds: 5,
        connections: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), value.to_string()),
            None => (
                arg.clone(),
                it.next()
                    .with_context(|| format!("{arg} needs a value; {USAGE}"))?,
            ),
        };
        match flag.as_str() {
            "--sidecar" => args.sidecar = value.into(),
            "--nginx" => args.nginx = Some(value.into()),
            "--mitmdump" => args.mitmdump = Some(value.into()),
            "--seconds" => args.seconds = value.parse()?,
            "--connections" => args.connections = value.parse()?,
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    Ok(args)
}

/// A row of the comparison: a peer that runs, or the reason it does not.
struct Contender {
    name: &'static str,
    peer: Result<Peer, String>,
    rss_idle: u64,
    rss_load: u64,
    rss_1000: Option<u64>,
}

fn contender(name: &'static str, started: Result<Peer>) -> Contender {
    let peer = started.map_err(|e| format!("{e:#}"));
    if let Err(reason) = &peer {
        eprintln!("bench-proxy: {name} not available: {reason}");
    }
    Contender {
        name,
        peer,
        rss_idle: 0,
        rss_load: 0,
        rss_1000: None,
    }
}

fn not_installed(path: Option<PathBuf>) -> Result<PathBuf> {
    path.context("not installed (bench/proxy/peers.sh installs it and prints its flag)")
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn row(label: &str, name: &str, m: &Measured, direct: Option<&Measured>) -> String {
    let (p50, p99) = (m.percentile(0.5), m.percentile(0.99));
    let (added50, added99, share) = match direct {
        Some(d) => (
            format!("{:.0} µs", micros(p50) - micros(d.percentile(0.5))),
            format!("{:.0} µs", micros(p99) - micros(d.percentile(0.99))),
            format!(
                "{:.0}%",
                100.0 * m.requests_per_second() / d.requests_per_second()
            ),
        ),
        None => ("—".into(), "—".into(), "100%".into()),
    };
    format!(
        "| {label} | {name} | {:.0} µs | {:.0} µs | {added50} | {added99} | {:.0} | {share} | {:.1} |",
        micros(p50),
        micros(p99),
        m.requests_per_second(),
        m.megabytes_per_second(),
    )
}

/// Runs the load through `peer` while sampling its resident memory; returns the peak.
async fn load_sampled(peer: &Peer, path: &'static str, args: &Args) -> (Result<Measured>, u64) {
    let load = client::load(
        &peer.route,
        &peer.roots,
        path,
        args.connections,
        args.seconds,
    );
    tokio::pin!(load);
    let mut peak = peer.rss_kib();
    loop {
        tokio::select! {
            measured = &mut load => return (measured, peak),
            _ = tokio::time::sleep(Duration::from_millis(100)) => peak = peak.max(peer.rss_kib()),
        }
    }
}

/// 1,000 idle kept-alive TLS connections through `peer`; its resident memory holding them.
/// Opened 50 at a time, so one slow setup does not hold up the rest.
async fn hold_thousand(peer: &Peer) -> Result<u64> {
    let mut held = Vec::new();
    for _ in 0..20 {
        let batch = (0..50).map(|_| {
            let (route, roots) = (peer.route.clone(), peer.roots.clone());
            tokio::spawn(async move { client::connect(&route, roots).await })
        });
        for opened in batch.collect::<Vec<_>>() {
            held.push(opened.await??);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(peer.rss_kib())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args()?;
    let authority = upstream::Authority::new()?;
    let upstream_addr = upstream::start(&authority).await?;
    let direct = Route::Direct(upstream_addr);
    let direct_roots = authority.roots()?;

    let mut contenders = vec![
        contender(
            "sidecar",
            peers::sidecar(&args.sidecar, upstream_addr, &authority),
        ),
        contender(
            "nginx",
            not_installed(args.nginx.clone())
                .and_then(|path| peers::nginx(&path, upstream_addr, &authority)),
        ),
        contender(
            "mitmproxy",
            not_installed(args.mitmdump.clone())
                .and_then(|path| peers::mitmdump(&path, upstream_addr, &authority)),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in &mut contenders {
        if let Ok(peer) = &c.peer {
            c.rss_idle = peer.rss_kib();
        }
    }

    println!("| body | path | p50 | p99 | added p50 | added p99 | requests/s | of direct | MB/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, path) in [("1 KiB", "/1k"), ("1 MiB", "/1m")] {
        let baseline = client::load(&direct, &direct_roots, path, args.connections, args.seconds)
            .await
            .context("the direct row (no peer involved)")?;
        println!("{}", row(label, "direct", &baseline, None));
        for c in &mut contenders {
            let peer = match &c.peer {
                Ok(peer) => peer,
                Err(reason) => {
                    println!(
                        "| {label} | {} | not available: {reason} | | | | | | |",
                        c.name
                    );
                    continue;
                }
            };
            eprintln!("bench-proxy: {}, {label}", c.name);
            let (measured, peak) = load_sampled(peer, path, &args).await;
            c.rss_load = c.rss_load.max(peak);
            match measured {
                Ok(m) => println!("{}", row(label, c.name, &m, Some(&baseline))),
                Err(e) => println!("| {label} | {} | failed: {e:#} | | | | | | |", c.name),
            }
        }
    }

    for c in &mut contenders {
        if let Ok(peer) = &c.peer {
            eprintln!("bench-proxy: {}, 1,000 connections", c.name);
            let started = std::time::Instant::now();
            match hold_thousand(peer).await {
                Ok(kib) => {
                    c.rss_1000 = Some(kib);
                    eprintln!(
                        "bench-proxy: {} held them after {:.1?}",
                        c.name,
                        started.elapsed()
                    );
                }
                Err(e) => eprintln!(
                    "bench-proxy: {} did not hold 1,000 connections: {e:#}",
                    c.name
                ),
            }
        }
    }

    println!();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    println!("| resident memory, MiB | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    let cells = |f: &dyn Fn(&Contender) -> Option<u64>| -> String {
        contenders
            .iter()
            .map(|c| match (&c.peer, f(c)) {
                (Ok(_), Some(kib)) => mib(kib),
                _ => "—".into(),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("| idle | {} |", cells(&|c| Some(c.rss_idle)));
    println!("| under load (peak) | {} |", cells(&|c| Some(c.rss_load)));
    println!(
        "| 1,000 open TLS connections | {} |",
        cells(&|c| c.rss_1000)
    );
    Ok(())
}
