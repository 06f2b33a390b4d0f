//! The git pkt-line parsers on arbitrary bodies, cut at an arbitrary point: no panic, and
//! the same result whole or chunked.
#![no_main]

use cassette_rules::git::{ReceivePackParser, UploadPackParser};
use libfuzzer_sys::fuzz_target;

fn receive(chunks: &[&[u8]]) -> Option<String> {
    let mut parser = ReceivePackParser::new();
    for chunk in chunks {
        if parser.feed(chunk).is_err() {
            return None;
        }
    }
    parser.finish().ok().map(|r| format!("{:?}", r.updates))
}

fn upload(chunks: &[&[u8]]) -> Option<String> {
    let mut parser = UploadPackParser::new();
    for chunk in chunks {
        if parser.feed(chunk).is_err() {
            return None;
        }
    }
    Some(format!("{:?}", parser.finish()))
}

fuzz_target!(|input: (u16, &[u8])| {
    let (cut, body) = input;
    let cut = usize::from(cut) % (body.len() + 1);
    let (a, b) = body.split_at(cut);
    assert_eq!(receive(&[body]), receive(&[a, b]));
    assert_eq!(upload(&[body]), upload(&[a, b]));
});
