//! The guest end of the host channel: the virtio-serial port `keel run` attaches under the
//! name [`keel_bundle::HOST_CHANNEL`], where `keel ctl` on the host sends one JSON
//! [`Tagged`] request per line and reads one tagged answer per line. Whoever can open the
//! host's unix socket may use every verb; nothing in the guest can reach this end: PID 1 holds
//! the port open (a second open is refused with EBUSY) and no container's device rules allow it.
//!
//! The port reports POLLHUP while no host client is connected; PID 1 then stops polling it and
//! waits for SIGIO, which the kernel sends when the host end opens, so an idle channel costs no
//! wake-ups. Everything buffered is dropped when the host goes away (a killed `keel ctl`).

use keel_supervisor::protocol::{MAX_REQUEST, Request, Response, Tagged};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Most bytes of answers waiting for the host; past it, requests are not read until the host
/// reads (the channel's own back-pressure).
pub const MAX_PENDING: usize = 8 * 1024 * 1024;
/// Bytes read per wake-up.
const READ_CHUNK: usize = 64 * 1024;

/// Where the host end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// A host client is connected (or may be): the port is polled.
    Up,
    /// No host client (POLLHUP): not polled until SIGIO.
    Down,
}

/// The open port and its buffers.
pub struct Channel {
    port: File,
    link: Link,
    /// Received bytes of the line being read.
    input: Vec<u8>,
    /// The line being read is over [`MAX_REQUEST`]: skip to its end, then answer with an error.
    skipping: bool,
    /// Answers not yet written.
    pending: Vec<u8>,
}

/// The device node of the virtio-serial port named `name`, looked up in `sys_ports`
/// (`/sys/class/virtio-ports`) and placed in `dev` (`/dev`).
pub fn find_port(sys_ports: &Path, dev: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_ports).ok()?;
    for entry in entries.flatten() {
        let mut text = String::new();
        let read = File::open(entry.path().join("name"))
            .and_then(|f| f.take(256).read_to_string(&mut text));
        if read.is_ok() && text.trim_end() == name {
            return Some(dev.join(entry.file_name()));
        }
    }
    None
}

impl Channel {
    /// Opens the port at `path` and asks for SIGIO on host connects.
    pub fn open(path: &Path) -> std::io::Result<Channel> {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        crate::sys::signal_on_io(port.as_fd())?;
        Ok(Channel {
            port,
            link: Link::Up,
            input: Vec::new(),
            skipping: false,
            pending: Vec::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.port.as_fd()
    }

    /// Whether the loop should poll the port (and for what).
    pub fn interest(&self) -> Option<(bool, bool)> {
        match self.link {
            Link::Down => None,
            Link::Up => Some((self.pending.len() < MAX_PENDING, !self.pending.is_empty())),
        }
    }

    /// SIGIO: the host end may have connected; poll again.
    pub fn wake(&mut self) {
        self.link = Link::Up;
    }

    /// The host end is gone: drop what was in flight and wait for SIGIO.
    ///
    /// The port is asked again first: a new client that connected after the hang-up the loop
    /// saw has already sent its SIGIO (which may have been handled before this call), so waiting
    /// for another would leave that client unanswered. Any later connect sends a new SIGIO.
    pub fn hang_up(&mut self) {
        if self.link == Link::Up {
            log::debug!("host channel: no host client");
        }
        self.input.clear();
        self.skipping = false;
        self.pending.clear();
        let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLIN)];
        let now = match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()),
            Err(_) => PollFlags::POLLERR,
        };
        // Not `no_host`: with no host the port also reports POLLIN (a read returns end-of-file
        // at once), and taking that for a client would poll the port in a busy loop.
        self.link = if host_absent(now) {
            Link::Down
        } else {
            Link::Up
        };
    }

    /// Reads requests and answers each complete one through `handler`.
    pub fn readable(&mut self, handler: &mut dyn FnMut(Request) -> Response) {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = match self.port.read(&mut buf) {
            // End of file: the host end closed.
            Ok(0) => return self.hang_up(),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return;
            }
            Err(e) => {
                log::debug!("host channel: read: {e}");
                return self.hang_up();
            }
        };
        self.received(&buf[..n], handler);
        self.writable();
    }

    /// Splits received bytes into lines and answers them.
    fn received(&mut self, mut bytes: &[u8], handler: &mut dyn FnMut(Request) -> Response) {
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                if self.input.len().saturating_add(part.len()) > MAX_REQUEST {
                    self.input.clear();
                    self.skipping = true;
                } else {
                    self.input.extend_from_slice(part);
                }
            }
            if !complete {
                continue;
            }
            let line = std::mem::take(&mut self.input);
            if !self.skipping && line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let answer = if std::mem::take(&mut self.skipping) {
                Tagged {
                    tag: 0,
                    body: Response::error(format!("request longer than {MAX_REQUEST} bytes")),
                }
            } else {
                answer(&line, handler)
            };
            let bytes = keel_supervisor::server::encode_tagged(answer.tag, &answer.body);
            self.pending.extend_from_slice(&bytes);
        }
    }

    /// Writes what the port accepts now.
    pub fn writable(&mut self) {
        if let Err(e) = crate::queued::write_pending(&mut self.port, &mut self.pending) {
            log::debug!("host channel: write: {e}");
            self.hang_up();
        }
    }
}

/// Whether the port's poll events say no host client is connected: the port reports POLLHUP
/// (with POLLIN, reads returning end-of-file) until the host connects, which SIGIO announces.
fn host_absent(revents: PollFlags) -> bool {
    revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
}

/// Whether the loop should hang up without reading first: no host, and nothing to read (with
/// POLLIN the loop reads, and a read of end-of-file hangs up; what a client sent just before
/// it went is read and answered into the void rather than left in the port).
pub fn no_host(revents: PollFlags) -> bool {
    host_absent(revents) && !revents.contains(PollFlags::POLLIN)
}

/// The answer to one request line (blank lines, such as a client's keep-alive, get none).
fn answer(line: &[u8], handler: &mut dyn FnMut(Request) -> Response) -> Tagged<Response> {
    match serde_json::from_slice::<Tagged<Request>>(line) {
        Ok(Tagged { tag, body }) => Tagged {
            tag,
            body: handler(body),
        },
        Err(e) => Tagged {
            // The tag, if the line has one, so the client can tell this answer is its own.
            tag: serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("tag")?.as_u64())
                .unwrap_or(0),
            body: Response::error(format!("bad request: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(channel: &mut Channel, input: &[u8]) -> Vec<Tagged<Response>> {
        let mut handler = |r: Request| match r {
            Request::List => Response::List {
                containers: Vec::new(),
            },
            other => Response::error(format!("unexpected {other:?}")),
        };
        channel.received(input, &mut handler);
        let out = std::mem::take(&mut channel.pending);
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn channel() -> (Channel, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("port");
        std::fs::write(&path, b"").unwrap();
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (
            Channel {
                port,
                link: Link::Up,
                input: Vec::new(),
                skipping: false,
                pending: Vec::new(),
            },
            dir,
        )
    }

    #[test]
    fn requests_are_answered_with_their_tags_across_reads() {
        let (mut c, _dir) = channel();
        let line = br#"{"tag":41,"body":{"request":"list"}}"#;
        let (a, b) = line.split_at(10);
        assert!(served(&mut c, a).is_empty());
        let answers = served(&mut c, &[b, b"\n", line, b"\n"].concat());
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(|a| a.tag == 41));
        assert!(matches!(answers[0].body, Response::List { .. }));
    }

    #[test]
    fn hostile_lines_get_errors_not_crashes() {
        let (mut c, _dir) = channel();
        let cases: [&[u8]; 5] = [
            b"not json\n",
            b"{\"tag\":7,\"body\":{\"request\":\"format-disk\"}}\n",
            b"{\"tag\":18446744073709551616}\n",
            b"\xff\xfe\n",
            b"{\"tag\":3,\"body\":{\"request\":\"list\"},\"extra\":1}\n",
        ];
        for case in cases {
            let answers = served(&mut c, case);
            assert_eq!(answers.len(), 1, "{case:?}");
            assert!(
                matches!(&answers[0].body, Response::Error { message } if message.starts_with("bad request")),
                "{case:?}: {:?}",
                answers[0]
            );
        }
        // The tag of a bad request comes back when it can be read.
        let answers = served(
            &mut c,
            b"{\"tag\":7,\"body\":{\"request\":\"format-disk\"}}\n",
        );
        assert_eq!(answers[0].tag, 7);
    }

    #[test]
    fn an_oversized_line_is_skipped_and_refused_and_the_next_one_served() {
        let (mut c, _dir) = channel();
        let chunk = vec![b'a'; 60 * 1024];
        for _ in 0..5 {
            assert!(served(&mut c, &chunk).is_empty());
            assert!(c.input.len() <= MAX_REQUEST);
        }
        let answers = served(&mut c, b"\n{\"tag\":9,\"body\":{\"request\":\"list\"}}\n");
        assert_eq!(answers.len(), 2);
        assert!(
            matches!(&answers[0].body, Response::Error { message } if message.contains("longer than"))
        );
        assert_eq!(answers[1].tag, 9);
        assert!(matches!(answers[1].body, Response::List { .. }));
    }

    /// A channel on one end of a socket pair, which polls like the virtio-serial port: POLLIN
    /// and POLLHUP, reads at end-of-file, once the other end (the "host") is gone; nothing
    /// while it is there.
    fn socket() -> (Channel, std::os::unix::net::UnixStream) {
        let (port, host) = std::os::unix::net::UnixStream::pair().unwrap();
        port.set_nonblocking(true).unwrap();
        let (mut c, _dir) = channel();
        c.port = File::from(std::os::fd::OwnedFd::from(port));
        (c, host)
    }

    #[test]
    fn a_hang_up_drops_what_was_in_flight_until_woken() {
        let (mut c, host) = socket();
        drop(host);
        c.input.extend_from_slice(b"{\"tag\":1,");
        c.pending.extend_from_slice(b"answer\n");
        c.hang_up();
        assert_eq!(c.interest(), None);
        assert!(c.input.is_empty() && c.pending.is_empty());
        c.wake();
        assert_eq!(c.interest(), Some((true, false)));
    }

    #[test]
    fn no_host_is_not_polled_again_until_woken() {
        // With no host the port is always readable (end-of-file): the loop reads, the read
        // hangs up, and the port must then stay out of the poll set, or PID 1 spins.
        let (mut c, host) = socket();
        drop(host);
        let mut fds = [PollFd::new(c.fd(), PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, PollTimeout::ZERO).unwrap();
        let revents = fds[0].revents().unwrap();
        assert!(
            revents.contains(PollFlags::POLLIN | PollFlags::POLLHUP),
            "{revents:?}"
        );
        assert!(!no_host(revents), "the loop reads first");
        let mut handler = |_: Request| Response::error("unexpected".to_owned());
        c.readable(&mut handler);
        assert_eq!(c.interest(), None, "an absent host is polled again");
    }

    #[test]
    fn a_client_already_back_when_the_hang_up_is_handled_stays_polled() {
        // The loop saw the old client's POLLHUP, the new client's SIGIO came and went: the
        // port, asked again, is connected, so it must stay polled (no SIGIO will follow).
        let (mut c, _host) = socket();
        c.pending.extend_from_slice(b"answer to the old client\n");
        c.hang_up();
        assert!(c.pending.is_empty());
        assert_eq!(c.interest(), Some((true, false)));
    }

    #[test]
    fn ports_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("virtio-ports");
        for (port, name) in [
            ("vport0p0", "other"),
            ("vport1p1", keel_bundle::HOST_CHANNEL),
        ] {
            std::fs::create_dir_all(sys.join(port)).unwrap();
            std::fs::write(sys.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir_all(sys.join("vport2p1")).unwrap();
        assert_eq!(
            find_port(&sys, Path::new("/dev"), keel_bundle::HOST_CHANNEL),
            Some(PathBuf::from("/dev/vport1p1"))
        );
        assert_eq!(find_port(&sys, Path::new("/dev"), "org.example"), None);
        assert_eq!(
            find_port(&dir.path().join("absent"), Path::new("/dev"), "x"),
            None
        );
    }
}
