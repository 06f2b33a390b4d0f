//! The credentials stage: the agent's placeholder is swapped for a real token, only toward
//! Google hosts whose name the upstream's certificate verified (or an override configured).
//! The Host header is not trusted for this: the agent writes it.

use super::Exchange;
use crate::conn::ConnCtx;
use crate::credentials::{self, Swap};
use crate::refusal::{Cause, Refusal};
use crate::upstream::Upstream;
use cassette_recording::record::{Event, Token, TokenSwap};
use http::{HeaderMap, StatusCode};

/// Swap the placeholder where it is allowed; a swap that cannot get a token is refused.
pub async fn swap(
    conn: &ConnCtx,
    upstream: &Upstream,
    ex: &Exchange,
    headers: &mut HeaderMap,
) -> Result<(), Refusal> {
    let proxy = &conn.proxy;
    let Some(swap) = credentials::needed(headers, &proxy.placeholder) else {
        return Ok(());
    };
    if !may_swap(conn, upstream.verified) {
        return Ok(());
    }
    let token = match &proxy.tokens {
        Some(tokens) => tokens.token().await,
        None => Err(anyhow::anyhow!("no token broker is configured")),
    };
    match token.and_then(|t| Ok(credentials::apply(headers, swap, &t)?)) {
        Ok(()) => {
            proxy.metrics().token_swaps.inc();
            proxy.recording.emit(Event::Token(Token {
                exchange: ex.id,
                host: conn.route.display_host(),
                swap: match swap {
                    Swap::Bearer => TokenSwap::Bearer,
                    Swap::GitBasic => TokenSwap::GitBasic,
                },
                account: proxy.recording.account(),
            }));
            Ok(())
        }
        Err(e) => Err(Refusal::new(
            Cause::Credentials,
            StatusCode::BAD_GATEWAY,
            format!(
                "no credential could be obtained for {}: {e:#}",
                ex.authority
            ),
        )),
    }
}

/// Whether the placeholder may be swapped on this connection: the upstream name was verified
/// by TLS (or configured as an override) and is a Google host.
fn may_swap(conn: &ConnCtx, verified: bool) -> bool {
    let Some(host) = &conn.route.host else {
        return false;
    };
    credentials::is_google_host(host) && (verified || conn.route.endpoint.is_some())
}
