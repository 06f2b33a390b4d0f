//! One HTTP exchange, in the order it happens. Each stage is a file of this module:
//!
//! 1. [`head`]: the request head is recorded (masked) before anything else happens to it;
//! 2. [`classify`]: what the request is (Google service and permission, git) — once;
//! 3. the request body is recorded as it streams ([`tap`]); [`git`] reads a push's commands
//!    before it may go upstream and a fetch's wants as it passes;
//! 4. [`body`] reads the few bodies a decision depends on (a batch's parts, a code host's
//!    ref change, a Cloud Storage gRPC call's first message); [`bucket`] keeps the agent off the recordings bucket; [`policy`] decides, holding the request for [`review`] when a rule says so;
//!    [`upgrade`] lets only WebSocket follow the request;
//! 5. [`credentials`]: placeholders are swapped for real credentials toward verified hosts —
//!    a token toward Google, a brokered credential toward its entry's hosts;
//! 6. [`forward`]: the request goes upstream;
//! 7. [`response`]: the response head is recorded, the body recorded (masked) as it streams
//!    back, and `exchange_end` written when it ends.
//!
//! A stage that refuses returns a [`Refusal`](crate::refusal::Refusal) (or a [`Failure`] for an exchange that was
//! allowed but could not complete); [`answer`] turns either into the agent's answer and the
//! records that say what happened.

mod answer;
mod body;
mod bucket;
mod classify;
mod credentials;
mod forward;
mod git;
mod head;
mod ledger;
mod policy;
mod response;
mod review;
mod tap;
#[cfg(test)]
mod tests;
mod upgrade;

pub use answer::{Failure, Stop};
pub use classify::Classified;
pub use ledger::Ledger;

use crate::conn::ConnCtx;
use crate::http::Body;
use crate::upstream::Upstream;
use http::{Request, Response};
use std::sync::Arc;
use std::time::Instant;

/// What an exchange knows about itself as it runs.
pub struct Exchange {
    pub id: u64,
    pub started: Instant,
    /// The authority the request names (its URI or Host header), else the connection's host.
    pub authority: String,
    /// The request target: path and query, as sent (forwarded as it is).
    pub target: String,
    /// The target as recorded and shown in reasons, reviews and logs: secrets masked.
    pub shown_target: String,
    /// The host every decision uses: the upstream name the connection was verified for.
    pub verified: cassette_rules::authority::VerifiedHost,
    /// Whether the request's own authorities must name `verified` (TLS and CONNECT).
    pub authority_checked: bool,
    /// The request's Content-Type (a gRPC call is answered in gRPC).
    pub content_type: Option<String>,
    /// Whether the agent asked to upgrade the connection (HTTP/1.1 `Upgrade`).
    pub upgrade: bool,
    pub classified: Classified,
    pub ledger: Ledger,
}

impl Exchange {
    /// The target's path, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }
}

/// One request and its response.
pub async fn exchange(
    conn: Arc<ConnCtx>,
    upstream: Arc<Upstream>,
    req: Request<Body>,
) -> Response<Body> {
    let ex = head::begin(&conn, &req);
    match run(&conn, &upstream, &ex, req).await {
        Ok(response) => response,
        Err(stop) => answer::answer(&conn.proxy, &ex, stop),
    }
}

async fn run(
    conn: &Arc<ConnCtx>,
    upstream: &Upstream,
    ex: &Exchange,
    mut req: Request<Body>,
) -> Result<Response<Body>, Stop> {
    head::record(conn, ex, &req).await?;
    head::authority_matches(conn, ex, &req)?;
    head::upstream_usable(conn)?;
    let client_upgrade = ex.upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let encoding = crate::http::header_str(&parts.headers, &http::header::CONTENT_ENCODING)
        .map(str::to_string);
    let body = tap::request(conn, ex, &parts.headers, encoding.as_deref(), body);
    let (body, push) = git::inspect(conn, ex, encoding.as_deref(), body).await?;
    let (body, read) = body::read(conn, ex, &parts, body).await?;
    bucket::guard(conn, ex, &parts, &read)?;
    let body = policy::decide(conn, ex, &parts.method, push.as_ref(), &read, body).await?;
    upgrade::check(ex, &mut parts)?;
    credentials::swap(conn, upstream, ex, &mut parts.headers).await?;
    let (response, head_at) = forward::send(conn, upstream, ex, parts, body).await?;
    Ok(response::relay(conn, ex, response, head_at, client_upgrade))
}
