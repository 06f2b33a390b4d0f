//! Response bodies of the operator's servers: whole buffers.

use http_body_util::Full;
use hyper::body::Bytes;

pub type Body = Full<Bytes>;

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
}
