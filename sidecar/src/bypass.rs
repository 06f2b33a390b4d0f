//! The capture rules let the recorder's own UID out unrecorded, and nothing else. Another
//! process in the pod running as that UID (an image whose `USER` is 1337: the webhook cannot
//! see an image's user, and warns when a container sets none) would reach the network
//! unrecorded too. It cannot be stopped from here, but it can be seen: the pod's sockets are
//! listed per network namespace with their owner's UID, and a socket owned by this UID that is
//! not one of this process's descriptors belongs to someone else.
//!
//! Every [`EVERY`] the watch lists the namespace's sockets (TCP, UDP, UDP-Lite, ICMP, raw; IPv4
//! and IPv6) owned by this process's UID and compares them with its own descriptors (see
//! [`strangers`] for why its own are never mistaken). Each stranger's socket is reported once:
//! a `gap` record in the recording (the traffic it carries is not recorded), an error in the
//! log, and `cassette_sidecar_unrecorded_sockets_total`. A connection opened and closed
//! between two passes is not seen: the watch makes a bypass visible, it does not stop it.

use crate::proxy::Proxy;
use crate::shutdown::Shutdown;
use cassette_recording::record::{Event, Gap};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often the sockets are listed.
pub const EVERY: Duration = Duration::from_secs(1);

/// Whether the watch means anything for a process running as `uid`: only the recorder's UID is
/// exempt from the capture rules. (Run as anyone else, on a workstation as an explicit proxy,
/// the same UID's other sockets are the user's own programs.)
pub fn applies(uid: u32) -> bool {
    uid == cassette_api::names::SIDECAR_UID
}

/// One socket of the namespace, as one of the `/proc/net` tables in [`TABLES`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub protocol: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's TCP state number (`0A` is LISTEN); UDP sockets have their own.
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}

impl std::fmt::Display for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.remote.port() == 0 {
            write!(f, "{} socket on {}", self.protocol, self.local)
        } else {
            write!(
                f,
                "{} connection {} -> {}",
                self.protocol, self.local, self.remote
            )
        }
    }
}

/// Parses one `/proc/net/*` table. Lines that do not parse are skipped: the kernel's format
/// is stable, and a watch that stops on a surprise would see nothing.
pub fn parse_table(protocol: &'static str, text: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Socket {
                protocol,
                local: address(f.get(1)?)?,
                remote: address(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                uid: f.get(7)?.parse().ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:3A99` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel
/// prints it, each 32-bit word as a host-order number.
fn address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    // Each word as the kernel holds it in memory: network order bytes, read as a host u32.
    let bytes: Vec<u8> = words?.into_iter().flat_map(u32::to_ne_bytes).collect();
    let ip = match <[u8; 4]>::try_from(bytes.as_slice()) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?)),
    };
    Some(SocketAddr::new(ip, port))
}

/// The inodes of the sockets among this process's descriptors.
fn own_sockets(fd_dir: &Path) -> std::io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(fd_dir)? {
        // A descriptor closed while the directory is read is simply gone.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            out.insert(inode);
        }
    }
    Ok(out)
}

/// Every socket table of the namespace: TCP, UDP, UDP-Lite, ICMP (ping sockets) and raw
/// sockets, each for IPv4 and IPv6. All but TCP share UDP's columns.
const TABLES: &[(&str, &str)] = &[
    ("tcp", "tcp"),
    ("tcp", "tcp6"),
    ("udp", "udp"),
    ("udp", "udp6"),
    ("udplite", "udplite"),
    ("udplite", "udplite6"),
    ("icmp", "icmp"),
    ("icmp", "icmp6"),
    ("raw", "raw"),
    ("raw", "raw6"),
];

/// The namespace's sockets owned by `uid`, as one listing of every table.
fn listing(proc_net: &Path, uid: u32) -> std::io::Result<HashMap<u64, Socket>> {
    const LISTEN: u8 = 0x0A;
    let mut out = HashMap::new();
    for (protocol, file) in TABLES {
        match std::fs::read_to_string(proc_net.join(file)) {
            Ok(text) => out.extend(
                parse_table(protocol, &text)
                    .into_iter()
                    // Inode 0: no descriptor holds it any more (TIME_WAIT, orphaned, not yet
                    // accepted). A listening socket carries no traffic out.
                    .filter(|s| s.uid == uid && s.inode != 0)
                    .filter(|s| !(s.protocol == "tcp" && s.state == LISTEN))
                    .map(|s| (s.inode, s)),
            ),
            // A table this kernel or namespace does not have (no IPv6, no UDP-Lite).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The namespace's sockets owned by `uid` that are not this process's. The sockets are
/// listed twice, around a second look at this process's descriptors: a socket in both
/// listings that neither look at the descriptors found is someone else's, because one of
/// ours still open at the second listing was open at the second look too, and one closed
/// before it has no inode any more. So one pass decides, however short the connection, as
/// long as it is open while the pass runs.
fn strangers(proc_net: &Path, fd_dir: &Path, uid: u32) -> std::io::Result<Vec<Socket>> {
    let before = own_sockets(fd_dir)?;
    let first = listing(proc_net, uid)?;
    let after = own_sockets(fd_dir)?;
    let second = listing(proc_net, uid)?;
    let mut out: Vec<Socket> = first
        .into_values()
        .filter(|s| second.contains_key(&s.inode))
        .filter(|s| !before.contains(&s.inode) && !after.contains(&s.inode))
        .collect();
    out.sort_by_key(|s| s.inode);
    Ok(out)
}

/// Remembers which sockets were reported, so that each is reported once.
#[derive(Default)]
pub struct Watch {
    reported: HashSet<u64>,
}

impl Watch {
    /// Takes one pass's strangers; returns those not reported yet.
    pub fn observe(&mut self, strangers: Vec<Socket>) -> Vec<Socket> {
        let listed: HashSet<u64> = strangers.iter().map(|s| s.inode).collect();
        let report: Vec<Socket> = strangers
            .into_iter()
            .filter(|s| !self.reported.contains(&s.inode))
            .collect();
        // Inodes are reused once a socket is gone: forget those no longer listed.
        self.reported.retain(|inode| listed.contains(inode));
        self.reported.extend(report.iter().map(|s| s.inode));
        report
    }
}

/// Lists and reports until shutdown.
pub async fn watch(proxy: Arc<Proxy>, shutdown: Shutdown, uid: u32) {
    let mut state = Watch::default();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.requested() => return,
        }
        let listing = tokio::task::spawn_blocking(move || {
            strangers(Path::new("/proc/self/net"), Path::new("/proc/self/fd"), uid)
        })
        .await;
        let found = match listing {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot list the pod's sockets, so traffic that escapes the capture rules cannot be seen; the sidecar needs /proc (trying again every second)");
                    warned = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        for socket in state.observe(found) {
            tracing::error!(
                %socket,
                inode = socket.inode,
                uid,
                "a process other than the recorder runs as its UID {uid} in this pod; its traffic is not captured: set runAsUser on the agent's containers (is the image's USER {uid}?)"
            );
            proxy.metrics().unrecorded_sockets.inc();
            proxy.recording.emit(Event::Gap(Gap {
                lost: format!("the traffic of a {socket}"),
                reason: format!(
                    "a process other than the recorder runs as the recorder's UID {uid} in this \
                     pod, which the capture rules let out unrecorded (check the agent image's \
                     USER; set runAsUser)"
                ),
                records: None,
                bytes: None,
                from: None,
                to: None,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0500000A:A1B2 0101A8C0:01BB 01 00000000:00000000 00:00000000 00000000  1337        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0500000A:A1B3 0101A8C0:01BB 06 00000000:00000000 03:00000D9B 00000000     0        0 0 3 0000000000000000
   3: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 2001 1 0000000000000000 100 0 0 10 0
   1: FECA00FD000000000000000001000000:C350 FECA00FD000000000000000002000000:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 2002 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn the_kernel_tables_parse() {
        let v4 = parse_table("tcp", TCP);
        assert_eq!(v4.len(), 3, "{v4:?}");
        assert_eq!(v4[0].local, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(v4[0].state, 0x0A);
        assert_eq!(v4[1].local, "10.0.0.5:41394".parse().unwrap());
        assert_eq!(v4[1].remote, "192.168.1.1:443".parse().unwrap());
        assert_eq!((v4[1].uid, v4[1].inode), (1337, 1002));
        assert_eq!(
            v4[1].to_string(),
            "tcp connection 10.0.0.5:41394 -> 192.168.1.1:443"
        );
        assert_eq!(v4[2].inode, 0);
        let v6 = parse_table("tcp", TCP6);
        assert_eq!(v6[0].local, "[::ffff:127.0.0.1]:15001".parse().unwrap());
        assert_eq!(v6[1].local, "[fd00:cafe::1]:50000".parse().unwrap());
        assert_eq!(v6[1].remote, "[fd00:cafe::2]:443".parse().unwrap());
    }

    #[test]
    fn each_stranger_is_reported_once() {
        let sock = |inode| Socket {
            protocol: "tcp",
            local: "10.0.0.5:40000".parse().unwrap(),
            remote: "192.168.1.1:443".parse().unwrap(),
            state: 1,
            uid: 1337,
            inode,
        };
        let mut watch = Watch::default();
        assert_eq!(watch.observe(vec![sock(7), sock(8)]), [sock(7), sock(8)]);
        assert_eq!(watch.observe(vec![sock(7), sock(9)]), [sock(9)]);
        assert!(watch.observe(vec![sock(7), sock(9)]).is_empty());
        // Gone, then an inode reused by a new stranger: reported again.
        assert!(watch.observe(vec![]).is_empty());
        assert_eq!(watch.observe(vec![sock(7)]), [sock(7)]);
    }

    /// This process's own sockets are never strangers; another process's are.
    #[test]
    fn own_sockets_are_not_strangers() {
        let me = rustix::process::geteuid().as_raw();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _mine = std::net::TcpStream::connect(addr).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let found = strangers(Path::new("/proc/self/net"), Path::new("/proc/self/fd"), me).unwrap();
        assert!(
            !found.iter().any(|s| s.local == addr || s.remote == addr),
            "{found:?}"
        );
        // The same listing read as another process (here: PID 1's descriptors, which hold
        // none of these sockets) finds this process's connection as a stranger's.
        let other = strangers(Path::new("/proc/self/net"), Path::new("/proc/1/fd"), me);
        if let Ok(other) = other {
            assert!(other.iter().any(|s| s.remote == addr), "{other:?}");
        }
    }
}
