//! TCP relays across network namespaces, for what a node would route: the pod reaching the
//! API server's service address, and the test (in the root namespace) reaching an emulator that
//! lives in a test's net namespace.
//!
//! A socket keeps the namespace it was created in, so a relay is a listener made on one side
//! and connections made on the other; bytes are copied both ways by plain threads. Dropping a
//! [`Relay`] stops accepting; connections already open run until either end closes.

use crate::netns::{Side, Topology, in_namespace};
use anyhow::{Context, Result};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A listener that forwards every connection to a target elsewhere.
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Listen on `listen` *inside* one of the topology's namespaces and forward to `target` as
    /// seen from the root namespace (e.g. the API server on loopback).
    pub fn out_of_namespace(
        topology: &Topology,
        side: Side,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> Result<Self> {
        let listener = topology
            .enter(side, || TcpListener::bind(listen))?
            .with_context(|| format!("binding {listen} in {}", topology.ns(side)))?;
        Self::spawn(listener, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(5))
        })
    }

    /// Listen on a free loopback port of the root namespace and forward to `target` as seen
    /// from inside one of the topology's namespaces (e.g. an emulator in the net namespace).
    pub fn into_namespace(topology: &Topology, side: Side, target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let ns = topology.ns(side).to_string();
        Self::spawn(listener, move || {
            in_namespace(&ns, || {
                TcpStream::connect_timeout(&target, Duration::from_secs(5))
            })
            .map_err(std::io::Error::other)?
        })
    }

    /// Forward every connection accepted on `listener` (made wherever the caller likes) to
    /// `target` as seen from the root namespace: e.g. the test node reaching the API server,
    /// which listens on loopback, through the host side of the node's veth.
    pub fn forward(listener: TcpListener, target: SocketAddr) -> Result<Self> {
        Self::spawn(listener, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(5))
        })
    }

    /// Where the relay listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn spawn(
        listener: TcpListener,
        connect: impl Fn() -> std::io::Result<TcpStream> + Send + 'static,
    ) -> Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("relay-{addr}"))
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let upstream = match connect() {
                                Ok(upstream) => upstream,
                                Err(e) => {
                                    eprintln!("relay {addr}: connecting onwards: {e}");
                                    continue;
                                }
                            };
                            if let Err(e) = pipe(client, upstream) {
                                eprintln!("relay {addr}: {e}");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => {
                            eprintln!("relay {addr}: accept: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        Ok(Self { addr, stop })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copy both ways on two threads; each direction's end is passed on as a half-close.
fn pipe(client: TcpStream, upstream: TcpStream) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let (client_read, upstream_read) = (client.try_clone()?, upstream.try_clone()?);
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        }
    };
    std::thread::spawn(copy(client_read, upstream));
    std::thread::spawn(copy(upstream_read, client));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipe_carries_both_directions_and_half_closes() {
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let target_addr = target.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = target.accept().unwrap();
            let mut asked = String::new();
            socket.read_to_string(&mut asked).unwrap();
            socket
                .write_all(format!("echo:{asked}").as_bytes())
                .unwrap();
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Relay::spawn(listener, move || TcpStream::connect(target_addr)).unwrap();
        let mut client = TcpStream::connect(relay.addr()).unwrap();
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "echo:ping");
        server.join().unwrap();
    }
}
