//! Readiness probes PID 1 runs when the supervisor asks ([`crate::Action::Probe`]): a TCP port
//! on the guest's loopback that accepts a connection, or a file that exists. A probe never
//! waits longer than [`CONNECT_WAIT`], so the loop stays responsive.
//!
//! The TCP probe connects to 127.0.0.1 in PID 1's network namespace: it sees services on the
//! host network (the default); a service in its own network namespace cannot be probed this
//! way (use a `file:` check there).

use keel_bundle::Readiness;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Longest time a TCP probe waits for the handshake; loopback completes in microseconds.
pub const CONNECT_WAIT: Duration = Duration::from_millis(10);

/// Whether `readiness` holds now. `Started` always does (the caller asks after the start).
pub fn probe(readiness: &Readiness) -> bool {
    match readiness {
        Readiness::Started => true,
        Readiness::Tcp(port) => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            TcpStream::connect_timeout(&addr, CONNECT_WAIT).is_ok()
        }
        Readiness::File(path) => Path::new(path).exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_probe_sees_a_listener_come_and_go() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(probe(&Readiness::Tcp(port)));
        drop(listener);
        assert!(!probe(&Readiness::Tcp(port)));
    }

    #[test]
    fn file_probe_checks_existence() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ready");
        let check = Readiness::File(f.display().to_string());
        assert!(!probe(&check));
        std::fs::write(&f, "").unwrap();
        assert!(probe(&check));
        assert!(probe(&Readiness::Started));
    }
}
