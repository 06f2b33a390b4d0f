//! The credentials stage: the agent's placeholders are swapped for real credentials, only
//! toward hosts whose name the upstream's certificate verified (or an override configured):
//! Google hosts get a Workload Identity token, a brokered credential's hosts its Secret's
//! value in its presentation. The Host header is not trusted for this: the agent writes it.
//! A brokered placeholder found anywhere else goes as it is, and is recorded.

use super::Exchange;
use crate::conn::ConnCtx;
use crate::credentials::brokered::Entry;
use crate::credentials::{self, Swap};
use crate::metrics::CredentialLabels;
use crate::refusal::{Cause, Refusal};
use crate::upstream::Upstream;
use cassette_recording::record::{Event, Placeholder, Token, TokenSwap};
use cassette_rules::credential::{Carrier, mentions};
use cassette_rules::mask::CREDENTIAL_DETECTOR_PREFIX;
use http::{HeaderMap, HeaderValue, StatusCode};

/// Swap the placeholders where it is allowed; a swap that cannot get its credential is
/// refused.
pub async fn swap(
    conn: &ConnCtx,
    upstream: &Upstream,
    ex: &Exchange,
    headers: &mut HeaderMap,
) -> Result<(), Refusal> {
    workload_identity(conn, upstream, ex, headers).await?;
    for entry in conn.proxy.brokered.entries() {
        brokered(conn, upstream, ex, entry, headers)?;
    }
    Ok(())
}

async fn workload_identity(
    conn: &ConnCtx,
    upstream: &Upstream,
    ex: &Exchange,
    headers: &mut HeaderMap,
) -> Result<(), Refusal> {
    let proxy = &conn.proxy;
    let Some(swap) = credentials::needed(headers, &proxy.placeholder) else {
        return Ok(());
    };
    if !verified_host(conn, upstream.verified).is_some_and(credentials::is_google_host) {
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
                credential: None,
                header: None,
                value: None,
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

/// The host a real credential may be presented to on this connection: the upstream name
/// TLS verified at the dialled address (or one an override configured), else none.
fn verified_host(conn: &ConnCtx, verified: bool) -> Option<&str> {
    let host = conn.route.host.as_deref()?;
    (verified || conn.route.endpoint.is_some()).then_some(host)
}

/// Swap `entry`'s placeholder where its presentation carries it toward one of its hosts; a
/// placeholder anywhere else stays, and the exchange records where it went.
fn brokered(
    conn: &ConnCtx,
    upstream: &Upstream,
    ex: &Exchange,
    entry: &Entry,
    headers: &mut HeaderMap,
) -> Result<(), Refusal> {
    let proxy = &conn.proxy;
    let placeholder = entry.placeholder.as_str();
    let carrier = entry.carrier.header_name();
    // Why the placeholder went as it is, the first reason found.
    let mut stray: Option<String> = None;
    let mut swapped_at: Option<String> = None;
    let mut fingerprint: Option<String> = None;
    let names: Vec<_> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let holds = |v: &HeaderValue| mentions(&String::from_utf8_lossy(v.as_bytes()), placeholder);
        if !values.iter().any(holds) {
            continue;
        }
        if name.as_str() != carrier {
            stray.get_or_insert_with(|| {
                format!(
                    "it was in the {name} header, and credential {} is presented as {}",
                    entry.name,
                    entry.carrier.describe()
                )
            });
            continue;
        }
        let host = match verified_host(conn, upstream.verified) {
            Some(host) if entry.is_for(host) => host,
            Some(_) => {
                stray
                    .get_or_insert_with(|| format!("not one of credential {}'s hosts", entry.name));
                continue;
            }
            None => {
                stray.get_or_insert_with(|| unverified(conn, upstream));
                continue;
            }
        };
        let secret = entry.value().map_err(|e| {
            Refusal::new(
                Cause::Credentials,
                StatusCode::BAD_GATEWAY,
                format!(
                    "credential {} for {} could not be read: {e:#}; the request was not sent",
                    entry.name, ex.authority
                ),
            )
        })?;
        // Masked before it goes upstream, so that an echo of it in the response is masked.
        proxy.session.mask_secret(&entry.name, &secret);
        let mut out = Vec::with_capacity(values.len());
        for value in values {
            let text = value.to_str().ok();
            match text.and_then(|t| entry.carrier.swap(t, placeholder, &secret)) {
                Some(real) => {
                    let mut real = HeaderValue::from_str(&real).map_err(|_| {
                        Refusal::new(
                            Cause::Credentials,
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "credential {}'s Secret holds a value that cannot go in an HTTP header (a line break or a control character); the request was not sent",
                                entry.name
                            ),
                        )
                    })?;
                    real.set_sensitive(true);
                    out.push(real);
                    swapped_at = Some(host.to_owned());
                    fingerprint = Some(
                        proxy
                            .session
                            .current()
                            .masker
                            .fingerprint(secret.as_bytes()),
                    );
                }
                None => {
                    if holds(&value) {
                        stray.get_or_insert_with(|| {
                            format!(
                                "it was not presented as {}, as credential {} is",
                                entry.carrier.describe(),
                                entry.name
                            )
                        });
                    }
                    out.push(value);
                }
            }
        }
        headers.remove(&name);
        for value in out {
            headers.append(name.clone(), value);
        }
    }
    if ex.target.contains(placeholder) {
        stray.get_or_insert_with(|| "it was in the request target".to_owned());
    }
    let labels = CredentialLabels {
        credential: entry.name.clone(),
    };
    if let Some(host) = swapped_at {
        proxy
            .metrics()
            .credential_swaps
            .get_or_create(&labels)
            .inc();
        proxy.recording.emit(Event::Token(Token {
            exchange: ex.id,
            host,
            swap: match &entry.carrier {
                Carrier::Bearer => TokenSwap::Bearer,
                Carrier::Token => TokenSwap::Token,
                Carrier::Basic => TokenSwap::GitBasic,
                Carrier::Header(_) => TokenSwap::Header,
            },
            account: None,
            credential: Some(entry.name.clone()),
            header: match &entry.carrier {
                Carrier::Header(h) => Some(h.clone()),
                _ => None,
            },
            value: fingerprint.map(|fp| {
                cassette_rules::mask::mask_text(
                    &format!("{CREDENTIAL_DETECTOR_PREFIX}{}", entry.name),
                    &fp,
                )
            }),
        }));
    }
    if let Some(why) = stray {
        let host = conn.route.display_host();
        proxy
            .metrics()
            .placeholder_leaks
            .get_or_create(&labels)
            .inc();
        tracing::warn!(credential = %entry.name, %host, why, "a brokered credential's placeholder went where it is not swapped");
        proxy.recording.emit(Event::Placeholder(Placeholder {
            exchange: ex.id,
            credential: entry.name.clone(),
            note: format!("placeholder sent to {host}: {why}"),
            host,
        }));
    }
    Ok(())
}

/// Why the connection cannot carry a real credential.
fn unverified(conn: &ConnCtx, upstream: &Upstream) -> String {
    match &conn.route.host {
        None => "the connection names no host whose certificate could be verified".into(),
        Some(_) if !upstream.tls => {
            "the connection is plain HTTP, not TLS verified for the host".into()
        }
        Some(host) => format!("the upstream's certificate was not verified for {host}"),
    }
}
