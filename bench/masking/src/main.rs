//! `bench-masking`: how fast the masker reads bodies, in MB/s, on the kinds of bodies agents
//! move: JSON API responses (with a few secrets in them), git packs, and binary objects.
//! Bodies are fed in 16 KiB chunks, as they arrive off the wire. Markdown on stdout.

use cassette_rules::mask::{BodyKind, Masker};
use cassette_rules::pack::{ObjectFormat, PackLimits, PackReader};
use std::io::Write;
use std::time::{Duration, Instant};

/// A deterministic pseudo-random generator (xorshift): the same bodies every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A Cloud Storage object listing: many items, one secret every 100 items.
fn json_listing(items: usize) -> Vec<u8> {
    let mut out = String::from("{\"kind\": \"storage#objects\", \"items\": [");
    for i in 0..items {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"kind\": \"storage#object\", \"name\": \"ci/logs/run-{i}.txt\", \"bucket\": \"acme-ci\", \
             \"size\": \"{}\", \"md5Hash\": \"q2hPv+pNB9D3wEJ2Cy9mVA==\", \"contentType\": \"text/plain\", \
             \"updated\": \"2026-11-25T10:00:00.000Z\", \"metadata\": {{\"job\": \"lint-{i}\"",
            1000 + i
        ));
        if i % 100 == 0 {
            out.push_str(", \"token\": \"ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\"");
        }
        out.push_str("}}");
    }
    out.push_str("]}");
    out.into_bytes()
}

/// A git pack: a pkt-line header, then compressed (random-looking) object data.
fn git_pack(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = b"00a0".to_vec();
    out.extend(b"0000000000000000000000000000000000000000 1111111111111111111111111111111111111111 refs/heads/fix-lint\0report-status side-band-64k\n");
    out.extend(b"0000PACK\0\0\0\x02\0\0\x01\0");
    out.extend(rng.bytes(n));
    out
}

/// A pack of `n` source-like text blobs of about 2 KiB, a token in one blob of 100, each
/// zlib-compressed as git stores them (the trailing checksum is left zero: the reader
/// records it as not matching and reads on).
fn text_pack(n: usize) -> (Vec<u8>, usize) {
    let mut pack = b"PACK".to_vec();
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&(n as u32).to_be_bytes());
    let mut inflated = 0;
    for i in 0..n {
        let mut blob = String::new();
        for line in 0..40 {
            blob.push_str(&format!(
                "    let value_{line} = compute(input_{i}, {line}); // step {line}\n"
            ));
        }
        if i % 100 == 0 {
            blob.push_str("GITHUB_TOKEN=ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\n");
        }
        inflated += blob.len();
        let mut size = blob.len();
        let mut first = 0x30 | (size & 0x0f) as u8;
        size >>= 4;
        if size > 0 {
            first |= 0x80;
        }
        pack.push(first);
        while size > 0 {
            let mut b = (size & 0x7f) as u8;
            size >>= 7;
            if size > 0 {
                b |= 0x80;
            }
            pack.push(b);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(blob.as_bytes()).expect("writing to memory");
        pack.extend(z.finish().expect("writing to memory"));
    }
    pack.extend_from_slice(&[0; 20]);
    (pack, inflated)
}

/// MB/s of pack bytes through [`PackReader`] (inflate, hash, mask each blob).
fn measure_pack(masker: &Masker, pack: &[u8]) -> (f64, u64) {
    let mut total = 0usize;
    let mut masked = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let mut reader = PackReader::new(masker, ObjectFormat::Sha1, PackLimits::default());
        let mut found = 0;
        for chunk in pack.chunks(16 * 1024) {
            let objects = reader.feed(chunk).expect("the generated pack reads");
            found += objects.iter().map(|o| o.masks.len() as u64).sum::<u64>();
        }
        let (rest, _) = reader.finish().expect("the generated pack ends");
        found += rest.iter().map(|o| o.masks.len() as u64).sum::<u64>();
        masked = found;
        total += pack.len();
    }
    (total as f64 / started.elapsed().as_secs_f64() / 1e6, masked)
}

fn measure(masker: &Masker, kind: BodyKind, body: &[u8]) -> (f64, u64) {
    let mut total = 0usize;
    let mut masked = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let mut stream = masker.stream(kind);
        let mut out = Vec::with_capacity(body.len());
        for chunk in body.chunks(16 * 1024) {
            stream.feed(chunk, &mut out);
        }
        masked = stream.finish(&mut out).total();
        total += body.len();
    }
    (total as f64 / started.elapsed().as_secs_f64() / 1e6, masked)
}

fn main() {
    let masker =
        Masker::new(None, b"bench-fingerprint-key").expect("the built-in masking compiles");
    let mut rng = Rng(0x5eed_cafe);
    let bodies: Vec<(&str, BodyKind, Vec<u8>)> = vec![
        (
            "JSON object listing, a token every 100 items",
            BodyKind::Json,
            json_listing(3300),
        ),
        (
            "git push (pkt-line commands, then pack data)",
            BodyKind::Other,
            git_pack(&mut rng, 4 << 20),
        ),
        (
            "binary object (random bytes)",
            BodyKind::Other,
            rng.bytes(4 << 20),
        ),
        (
            "plain-text log, no secrets",
            BodyKind::Other,
            "2026-11-25T10:00:00Z INFO lint passed for module payments-api\n"
                .repeat(16_000)
                .into_bytes(),
        ),
    ];
    println!("| body | size | masks found | MB/s |");
    println!("|---|---:|---:|---:|");
    for (name, kind, body) in &bodies {
        let (mbps, masked) = measure(&masker, *kind, body);
        println!(
            "| {name} | {:.1} MiB | {masked} | {mbps:.1} |",
            body.len() as f64 / (1 << 20) as f64
        );
    }
    let (pack, inflated) = text_pack(8000);
    let (mbps, masked) = measure_pack(&masker, &pack);
    println!(
        "| git pack read object by object (inflate, id, mask each blob): 8000 text blobs, {:.1} MiB inflated; MB/s of pack bytes | {:.1} MiB | {masked} | {mbps:.1} |",
        inflated as f64 / (1 << 20) as f64,
        pack.len() as f64 / (1 << 20) as f64
    );
}
