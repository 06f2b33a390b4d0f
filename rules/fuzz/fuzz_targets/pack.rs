//! The pack reader on arbitrary bytes behind a pack header, cut at an arbitrary point: no
//! panic, bounded memory, and the same objects whole or chunked, and an error (if any) for
//! the same object. How it breaks may differ: a broken zlib stream can show itself as a zlib
//! error, as overshooting the object's size, or (miniz_oxide skips its adler32 check under
//! cfg(fuzzing)) as a stream that never ends, so that the pack ends inside that object —
//! all of which say that object could not be read.
#![no_main]

use cassette_rules::mask::Masker;
use cassette_rules::pack::{ObjectFormat, PackError, PackLimits, PackReader};
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

/// An error as compared: the object that could not be read, not how.
fn where_(e: &PackError) -> String {
    match e {
        PackError::Corrupt { index, .. } => format!("object {index} unread"),
        PackError::Truncated { read, .. } => format!("object {read} unread"),
        other => other.to_string(),
    }
}

fn read(chunks: &[&[u8]]) -> String {
    let mut reader = PackReader::new(masker(), ObjectFormat::Sha1, LIMITS);
    let mut objects = Vec::new();
    for chunk in chunks {
        match reader.feed(chunk) {
            Ok(o) => objects.extend(o),
            Err(e) => return format!("{objects:?} {}", where_(&e)),
        }
    }
    match reader.finish() {
        Ok((rest, summary)) => format!("{objects:?} {rest:?} {summary:?}"),
        Err(e) => format!("{objects:?} {}", where_(&e)),
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
