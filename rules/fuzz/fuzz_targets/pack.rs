//! The pack reader on arbitrary bytes behind a pack header, cut at an arbitrary point: no
//! panic, bounded memory, and the same objects whole or chunked.
#![no_main]

use cassette_rules::mask::Masker;
use cassette_rules::pack::{ObjectFormat, PackLimits, PackReader};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn masker() -> &'static Masker {
    static MASKER: OnceLock<Masker> = OnceLock::new();
    MASKER.get_or_init(|| Masker::new(None, b"fuzz-key").expect("built-ins compile"))
}

/// Small bounds, so that the fuzzer reaches the paths where they bite.
const LIMITS: PackLimits = PackLimits {
    max_objects: 64,
    max_object_bytes: 4096,
    max_cache_bytes: 8192,
    max_delta_depth: 4,
    max_tree_entries: 256,
};

fn read(chunks: &[&[u8]]) -> String {
    let mut reader = PackReader::new(masker(), ObjectFormat::Sha1, LIMITS);
    let mut objects = Vec::new();
    for chunk in chunks {
        match reader.feed(chunk) {
            Ok(o) => objects.extend(o),
            Err(e) => return format!("{objects:?} {e}"),
        }
    }
    match reader.finish() {
        Ok((rest, summary)) => format!("{objects:?} {rest:?} {summary:?}"),
        Err(e) => format!("{objects:?} {e}"),
    }
}

fuzz_target!(|input: (u16, u8, &[u8])| {
    let (cut, count, body) = input;
    let mut pack = b"PACK\0\0\0\x02\0\0\0".to_vec();
    pack.push(count % 8);
    pack.extend_from_slice(body);
    let cut = usize::from(cut) % (pack.len() + 1);
    let (a, b) = pack.split_at(cut);
    assert_eq!(read(&[&pack]), read(&[a, b]), "chunking changed the result");
});
