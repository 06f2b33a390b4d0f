//! The destination a redirected connection was really headed for (`SO_ORIGINAL_DST`).
//!
//! The only `unsafe` in the sidecar lives here: one `getsockopt` per address family. A
//! connection that was not redirected by netfilter has no original destination; the caller
//! treats it as an explicit proxy client.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// `SO_ORIGINAL_DST` from `<linux/netfilter_ipv4.h>`; the IPv6 variant
/// (`IP6T_SO_ORIGINAL_DST`) has the same value at level `SOL_IPV6`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The original destination of a socket accepted from a REDIRECT rule, or `None` when the
/// connection was not redirected.
pub fn original_dst(socket: &impl AsRawFd, local_is_v6: bool) -> io::Result<Option<SocketAddr>> {
    let fd = socket.as_raw_fd();
    if local_is_v6 {
        let mut addr = MaybeUninit::<libc::sockaddr_in6>::zeroed();
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `addr` is a writable sockaddr_in6 of `len` bytes; the kernel writes at most
        // `len` bytes and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                addr.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return not_redirected(io::Error::last_os_error());
        }
        // SAFETY: getsockopt succeeded and filled the structure.
        let addr = unsafe { addr.assume_init() };
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            addr.sin6_flowinfo,
            addr.sin6_scope_id,
        ))))
    } else {
        let mut addr = MaybeUninit::<libc::sockaddr_in>::zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: as above, for sockaddr_in.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                addr.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return not_redirected(io::Error::last_os_error());
        }
        // SAFETY: getsockopt succeeded and filled the structure.
        let addr = unsafe { addr.assume_init() };
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        ))))
    }
}

/// ENOENT means conntrack has no NAT entry: the connection came straight to the listener.
fn not_redirected(err: io::Error) -> io::Result<Option<SocketAddr>> {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOPROTOOPT) => Ok(None),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_connection_has_no_original_destination() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // Without a REDIRECT rule either no NAT entry exists (None) or, where conntrack
        // tracks the flow, the original destination is the listener itself.
        match original_dst(&accepted, false).unwrap() {
            None => {}
            Some(dst) => assert_eq!(dst, addr),
        }
    }
}
