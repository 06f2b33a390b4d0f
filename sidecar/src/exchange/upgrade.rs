//! The upgrade stage: what may follow a request once the connection stops being HTTP. Only
//! WebSocket is carried — its messages are read and recorded — and it is offered without
//! extensions, so no compression hides them. Any other upgrade (`h2c`, a protocol of the
//! agent's own) and a CONNECT tunnel inside an intercepted connection would carry bytes the
//! recorder cannot read: refused.

use super::Exchange;
use crate::refusal::{Cause, Refusal};
use http::request::Parts;
use http::{Method, StatusCode, header};

/// Let the request through as it may go on (with what WebSocket must not negotiate taken
/// out), or refuse it.
pub fn check(ex: &Exchange, parts: &mut Parts) -> Result<(), Refusal> {
    if parts.method == Method::CONNECT {
        return Err(Refusal::new(
            Cause::Upgrade,
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "CONNECT {} inside an intercepted connection would open a tunnel the recorder cannot read; it was refused and recorded",
                ex.authority
            ),
        ));
    }
    if !ex.upgrade {
        return Ok(());
    }
    let protocol = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_string();
    if protocol.eq_ignore_ascii_case("websocket") {
        // permessage-deflate would compress what the recorder reads and masks.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        return Ok(());
    }
    Err(Refusal::new(
        Cause::Upgrade,
        StatusCode::FORBIDDEN,
        format!(
            "the upgrade to {protocol:?} would carry bytes the recorder cannot read (only WebSocket is carried); it was refused and recorded"
        ),
    ))
}
