//! The inbound listener on 15006: connections into the pod, redirected here by the capture
//! rules (every TCP port but the sidecar's own), are handed to the agent's listener at their
//! original destination and recorded both ways as `stream` records, masked, cut at
//! `maxBodyBytes` per direction with the digest beyond. No protocol is read in them: a
//! kubelet probe of an agent container, a peer's request, a `kubectl port-forward` session
//! are all bytes in and bytes out.

use crate::conn::refuse_connection;
use crate::original_dst::original_dst;
use crate::proxy::Proxy;
use crate::shutdown::Shutdown;
use crate::upstream::tunnel;
use cassette_api::names::{ADMIN_PORT, CAPTURE_PORT, DNS_PORT, INBOUND_PORT, METADATA_PORT};
use cassette_recording::record::{Capture, ConnClose, ConnOpen, Event, Flow, Gap};
use cassette_rules::mask::BodyKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// How long the agent's listener may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Accept connections until shutdown; each runs on its own task, tracked by `shutdown`.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.requested() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accepting an inbound connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (proxy, guard) = (proxy.clone(), shutdown.track());
        tokio::spawn(async move {
            handle(stream, peer, proxy).await;
            drop(guard);
        });
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let dst = match original_dst(&stream, local.is_ipv6()) {
        Ok(Some(dst)) if dst != local => dst,
        Ok(_) => {
            // Straight to 15006: there is no listener of the agent's to hand it to.
            debug!(%peer, "an inbound connection that was not redirected; closed");
            return;
        }
        Err(e) => {
            warn!(error = %e, %peer, "reading an inbound connection's original destination failed");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    proxy.metrics().connections.inc();
    let conn = proxy.recording.next_conn_id();
    proxy.recording.emit(Event::ConnOpen(ConnOpen {
        conn,
        client: peer.to_string(),
        dst: dst.to_string(),
        capture: Capture::Inbound,
    }));
    if [
        CAPTURE_PORT,
        INBOUND_PORT,
        DNS_PORT,
        METADATA_PORT,
        ADMIN_PORT,
    ]
    .contains(&dst.port())
    {
        refuse_connection(
            &proxy,
            conn,
            &dst.to_string(),
            "an inbound connection to one of the sidecar's own ports is not handed on",
        );
        return;
    }
    // onFailure: closed — a connection the recording cannot take is not carried.
    if !proxy.recording.accepting() {
        refuse_connection(
            &proxy,
            conn,
            &dst.to_string(),
            "the recording takes no more records",
        );
        return;
    }
    // The original destination, not loopback: a listener the agent bound to loopback only
    // stays out of reach from outside the pod, as it is without the sidecar.
    let agent = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            refuse_connection(
                &proxy,
                conn,
                &dst.to_string(),
                &format!("the agent's listener cannot be reached: {e}"),
            );
            return;
        }
        Err(_) => {
            refuse_connection(
                &proxy,
                conn,
                &dst.to_string(),
                "the agent's listener did not accept in time",
            );
            return;
        }
    };
    let _ = agent.set_nodelay(true);
    let mask = Some((proxy.session.current().masker, BodyKind::Other));
    // `up` is what the agent sent (toward the peer), `down` what the peer sent in.
    let mut up = proxy.recording.stream(conn, None, Flow::Up, mask);
    let mut down = proxy.recording.stream(conn, None, Flow::Down, mask);
    let carried = tunnel(stream, agent, &mut down, &mut up, proxy.session.ended()).await;
    let masked: u64 = up.finish().values().chain(down.finish().values()).sum();
    proxy.recording.exchange_done(masked);
    let error = carried.stopped.map(|why| {
        let why = why.to_string();
        proxy.recording.cut(Gap {
            lost: format!(
                "inbound connection {conn} from {peer} to {dst}: the bytes after {} in and {} out",
                carried.up, carried.down
            ),
            reason: format!("{why}; the connection was cut"),
            records: None,
            bytes: None,
            from: None,
            to: None,
        });
        why
    });
    proxy.recording.emit(Event::ConnClose(ConnClose {
        conn,
        bytes_up: carried.down,
        bytes_down: carried.up,
        error: error.or(carried.ended),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Without a redirect there is no listener of the agent's to hand the connection to:
    /// it is closed, nothing carried.
    #[tokio::test]
    async fn a_connection_that_was_not_redirected_is_closed() {
        let (sink, proxy, _) = Proxy::for_test(
            &serde_json::json!({"recording": {"sink": "file:///tmp/unused"}}),
            &[],
            None,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        tokio::spawn(serve(listener, proxy, shutdown.clone()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let _ = client.write_all(b"hello").await;
        let mut buf = [0u8; 8];
        let n = client.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert!(sink.kind("conn_open").is_empty());
        shutdown.trigger();
    }
}
