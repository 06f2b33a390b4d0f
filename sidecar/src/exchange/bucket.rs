//! The recordings bucket stage: the sidecar ships with the pod's Google identity, the same
//! one the agent's requests get through the token swap, so a request that names the session's
//! sink bucket anywhere (path, host, copy source, routing header, a batch part, a gRPC
//! message) is refused and
//! recorded before any token is swapped: the agent can neither read a recording nor take the
//! name of a segment before the recorder writes it.

use super::Exchange;
use super::body::Read;
use crate::conn::ConnCtx;
use crate::refusal::{Cause, Refusal};
use cassette_rules::sink::{grpc_names_bucket, names_bucket};
use http::StatusCode;
use http::request::Parts;

/// Refuse a request that names the sink's bucket.
pub fn guard(conn: &ConnCtx, ex: &Exchange, parts: &Parts, read: &Read) -> Result<(), Refusal> {
    let Some(bucket) = conn.proxy.sink_bucket.as_deref() else {
        return Ok(());
    };
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let refuse = |where_: String| {
        Refusal::new(
            Cause::Sink,
            StatusCode::FORBIDDEN,
            format!(
                "the request names the session's recordings bucket {bucket:?} in {where_}; recordings are out of the agent's reach, so it was refused and recorded"
            ),
        )
    };
    if let Some(where_) = names_bucket(&ex.verified, ex.path(), &headers, bucket) {
        return Err(refuse(where_));
    }
    if let Some(first) = &read.grpc_first {
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok());
        match grpc_names_bucket(first, encoding, bucket) {
            Ok(true) => return Err(refuse("its gRPC message".to_string())),
            Ok(false) => {}
            Err(e) => return Err(unreadable_storage_call(e)),
        }
    }
    for (i, sub) in read.batch.iter().flatten().enumerate() {
        let host = sub
            .host
            .as_deref()
            .and_then(|h| cassette_rules::authority::VerifiedHost::new(h, 443))
            .unwrap_or_else(|| ex.verified.clone());
        if let Some(where_) = names_bucket(&host, sub.path(), &[], bucket) {
            return Err(refuse(format!("part {} of the batch ({where_})", i + 1)));
        }
    }
    Ok(())
}

/// The refusal of a Cloud Storage gRPC call whose first message could not be read for the
/// buckets it names.
pub fn unreadable_storage_call(why: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        Cause::Sink,
        StatusCode::FORBIDDEN,
        format!(
            "{why}; a Cloud Storage call is read for the buckets it names before it goes on, so it was refused and recorded; send its messages uncompressed or gzip-compressed, at most 4 MiB each"
        ),
    )
}
