//! The permission classifier on arbitrary request lines: no panic on any host, method,
//! path, query or content type.
#![no_main]

use cassette_rules::classify::{HttpRequest, classify};
use cassette_rules::git::smart_http;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str, Option<&str>, bool)| {
    let (host, method, target, query, grpc) = input;
    let content_type = grpc.then_some("application/grpc+proto");
    let request = HttpRequest {
        host,
        method,
        path: target,
        query,
        content_type,
    };
    let _ = classify(&request);
    let _ = smart_http(method, target, query);
    // The Google hosts with arbitrary paths, the common case worth depth.
    for host in ["storage.googleapis.com", "pubsub.googleapis.com", "us-docker.pkg.dev"] {
        let _ = classify(&HttpRequest { host, ..request });
    }
});
