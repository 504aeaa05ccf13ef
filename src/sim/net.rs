//! Closing connections that tiny_http keeps to itself.
//!
//! tiny_http hands out requests, not sockets, and keeps a connection open for the next
//! request. To drop a connection without answering (a simulated reset) or to end the
//! keep-alive connections on stop, the simulator finds the socket by its addresses:
//! the one whose local address is the simulator's and whose peer is the client's. A
//! `shutdown` there makes the client read end-of-stream at once and tiny_http's
//! connection thread end; tiny_http closes the descriptor itself.

use std::io::Write;
use std::net::SocketAddr;

/// Closes the connection of `request` without answering it. The request has been read
/// and processed already.
pub(crate) fn reset(request: tiny_http::Request, server: SocketAddr) {
    let peer = request.remote_addr().copied();
    #[cfg(unix)]
    if let Some(peer) = peer {
        if unix::shutdown_matching(server, Some(peer)) > 0 {
            // Nothing is written; dropping the writer lets tiny_http move on.
            drop(request.into_writer());
            return;
        }
    }
    let _ = (peer, server);
    garble(request);
}

/// Where the socket cannot be found, answers with bytes that are no HTTP response: the
/// client still sees a transport failure after the server processed the call, and
/// closes the connection.
fn garble(request: tiny_http::Request) {
    let mut writer = request.into_writer();
    let _ = writer.write_all(b"\0\0\0 connection reset by the quotagate simulator\r\n\r\n");
    let _ = writer.flush();
}

/// Shuts down every connection accepted on `server` (keep-alive ones included).
pub(crate) fn close_all(server: SocketAddr) {
    #[cfg(unix)]
    unix::shutdown_matching(server, None);
    #[cfg(not(unix))]
    let _ = server;
}

#[cfg(unix)]
mod unix {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::raw::c_int;

    /// Shuts down the connected sockets whose local address is `local` (and whose peer is
    /// `peer`, if given). Returns how many it shut down.
    pub(super) fn shutdown_matching(local: SocketAddr, peer: Option<SocketAddr>) -> usize {
        let mut done = 0;
        for fd in descriptors() {
            if address(fd, libc::getsockname) != Some(local) {
                continue;
            }
            let Some(their) = address(fd, libc::getpeername) else {
                continue; // the listener, or not connected
            };
            if peer.is_some_and(|p| p != their) {
                continue;
            }
            // SAFETY: shutdown on a descriptor only changes the state of that socket;
            // an unrelated or closed descriptor makes it fail, which is ignored.
            if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0 {
                done += 1;
            }
        }
        done
    }

    /// The open descriptors of this process that might be sockets.
    fn descriptors() -> Vec<c_int> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            return dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
        }
        (0..4096).collect()
    }

    type AddressFn =
        unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int;

    /// The local or peer address of `fd`, when it is an IP socket.
    fn address(fd: c_int, which: AddressFn) -> Option<SocketAddr> {
        // SAFETY: an all-zero sockaddr_storage is valid; the call writes at most `len`
        // bytes into it and fails harmlessly on a descriptor that is no socket.
        unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if which(fd, (&raw mut storage).cast(), &mut len) != 0 {
                return None;
            }
            match c_int::from(storage.ss_family) {
                libc::AF_INET => {
                    let a = &*(&raw const storage).cast::<libc::sockaddr_in>();
                    let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
                }
                libc::AF_INET6 => {
                    let a = &*(&raw const storage).cast::<libc::sockaddr_in6>();
                    let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                    Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
                }
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_garbled_answer_is_a_transport_error() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", server.server_addr().to_ip().unwrap());
        let client = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            agent.post(&url).send("body")
        });
        let request = server.recv().unwrap();
        super::garble(request);
        assert!(client.join().unwrap().is_err());
    }
}
