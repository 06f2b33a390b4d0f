//! One agent connection's context, shared by the exchanges it carries: who it is from, where
//! it goes, whether its upstream could be reached, and the bytes it carried.

use crate::proxy::{Proxy, Route};
use crate::refusal::{Cause, Refusal};
use crate::upstream::UpstreamError;
use cassette_recording::record::{ConnClose, Event};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::debug;

/// State shared by the exchanges of one agent connection.
pub struct ConnCtx {
    pub proxy: Arc<Proxy>,
    pub conn: u64,
    pub peer: SocketAddr,
    pub route: Route,
    /// `https` when the agent spoke TLS to us.
    pub scheme: &'static str,
    /// Why the upstream could not be used, when it could not.
    pub upstream_error: Option<Arc<UpstreamError>>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl ConnCtx {
    pub fn new(
        proxy: Arc<Proxy>,
        conn: u64,
        peer: SocketAddr,
        route: Route,
        scheme: &'static str,
        upstream_error: Option<Arc<UpstreamError>>,
    ) -> Self {
        Self {
            proxy,
            conn,
            peer,
            route,
            scheme,
            upstream_error,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }

    /// The route for a request: plain HTTP learns its host from the request, so an
    /// override can apply to it.
    pub fn route_for(&self, authority: &str) -> Route {
        let mut route = self.route.clone();
        if route.host.is_none() && route.endpoint.is_none() {
            let host = authority
                .rsplit_once(':')
                .filter(|(_, port)| port.parse::<u16>().is_ok())
                .map(|(h, _)| h)
                .unwrap_or(authority);
            route.endpoint = self.proxy.overrides.get(host).cloned();
            route.host = Some(host.to_string());
        }
        route
    }

    /// Count body bytes on this connection.
    pub fn add_bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// Record the connection's end, with the bytes it carried.
    pub fn close(&self, error: Option<String>) {
        if let Some(e) = &error {
            debug!(conn = self.conn, peer = %self.peer, error = %e, "agent connection ended with an error");
        }
        self.proxy.recording.emit(Event::ConnClose(ConnClose {
            conn: self.conn,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            error,
        }));
    }
}

/// Record and count a connection refused before any request was read.
pub fn refuse_connection(proxy: &Proxy, conn: u64, dst: &str, why: &str) {
    proxy.metrics().connections_refused.inc();
    debug!(conn, dst, why, "connection refused");
    Refusal::new(
        Cause::Destination,
        http::StatusCode::FORBIDDEN,
        format!("connection {conn} to {dst} refused: {why}"),
    )
    .record(&proxy.recording, None);
}
