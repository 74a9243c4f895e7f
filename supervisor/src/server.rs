//! The server side of the control socket, driven by PID 1's poll loop: non-blocking, bounded,
//! root-only. Each client sends JSON [`Request`] lines and gets one [`Response`] line each. A
//! client that sends garbage gets an error response; one that sends too much, stalls or hangs
//! up mid-request is dropped without ever blocking the loop.

use crate::protocol::{MAX_REQUEST, Request, Response};
use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Clients served at once; more are turned away.
const MAX_CLIENTS: usize = 32;
/// A client with a partial request or unread responses for this long is dropped.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A connected client that sends nothing for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Unread response bytes kept for one client before it is dropped.
const MAX_OUTPUT: usize = 8 * 1024 * 1024;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Drop once `output` is flushed (after an oversized request, or the peer hung up).
    closing: bool,
    last_progress: Instant,
}

impl Client {
    fn deadline(&self) -> Instant {
        if self.input.is_empty() && self.output.is_empty() {
            self.last_progress + IDLE_TIMEOUT
        } else {
            self.last_progress + STALL_TIMEOUT
        }
    }

    fn respond(&mut self, response: &Response) {
        match serde_json::to_vec(response) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                self.output.extend_from_slice(&bytes);
            }
            Err(e) => log::error!("cannot encode a control response: {e}"),
        }
    }

    /// Reads what is available and answers every complete request. Returns false when the
    /// client must be dropped.
    fn on_readable(&mut self, now: Instant, handler: &mut dyn FnMut(Request) -> Response) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // Hung up; a partial request is discarded.
                    self.closing = true;
                    self.input.clear();
                    break;
                }
                Ok(n) => {
                    self.last_progress = now;
                    self.input.extend_from_slice(&buf[..n]);
                    self.answer(handler);
                    if self.closing || self.output.len() > MAX_OUTPUT {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("control client read: {e}");
                    return false;
                }
            }
        }
        self.output.len() <= MAX_OUTPUT
    }

    fn answer(&mut self, handler: &mut dyn FnMut(Request) -> Response) {
        while let Some(end) = self.input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.input.drain(..=end).collect();
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let response = if line.len() > MAX_REQUEST {
                self.closing = true;
                Response::error("request too long")
            } else {
                match serde_json::from_slice::<Request>(line) {
                    Ok(request) => handler(request),
                    Err(e) => Response::error(format!("malformed request: {e}")),
                }
            };
            self.respond(&response);
            if self.closing {
                self.input.clear();
                return;
            }
        }
        if self.input.len() > MAX_REQUEST {
            self.respond(&Response::error("request too long"));
            self.input.clear();
            self.closing = true;
        }
    }

    /// Writes pending output. Returns false when the client must be dropped.
    fn on_writable(&mut self, now: Instant) -> bool {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return false,
                Ok(n) => {
                    self.output.drain(..n);
                    self.last_progress = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("control client write: {e}");
                    return false;
                }
            }
        }
        !self.closing
    }
}

/// The listening control socket and its connected clients.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    allowed_uid: u32,
    clients: Vec<Client>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket), mode 0600, accepting only peers whose uid is
    /// `allowed_uid` (0 in the guest).
    pub fn bind(path: &Path, allowed_uid: u32) -> Result<Self, ServerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let bind_err = |source| ServerError::Bind {
            path: path.to_owned(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
            allowed_uid,
            clients: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptors to poll and for what.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut v = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.clients {
            let mut flags = PollFlags::empty();
            if !c.closing {
                flags |= PollFlags::POLLIN;
            }
            if !c.output.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            v.push((c.stream.as_fd(), flags));
        }
        v
    }

    /// Serves the descriptors among `ready` (as returned by poll) that belong to this server,
    /// answering requests with `handler`.
    pub fn handle(
        &mut self,
        ready: &[(RawFd, PollFlags)],
        now: Instant,
        handler: &mut dyn FnMut(Request) -> Response,
    ) {
        let listener_fd = self.listener.as_raw_fd();
        for &(fd, revents) in ready {
            if fd == listener_fd {
                if revents.intersects(PollFlags::POLLIN) {
                    self.accept(now);
                }
                continue;
            }
            let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd) else {
                continue;
            };
            let client = &mut self.clients[i];
            let mut keep = true;
            if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                keep = client.on_readable(now, handler);
            }
            if keep {
                keep = client.on_writable(now);
            }
            if !keep {
                self.clients.swap_remove(i);
            }
        }
    }

    /// When [`ControlServer::expire`] next has a client to drop.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(Client::deadline).min()
    }

    /// Drops clients that stalled.
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|c| {
            let keep = now < c.deadline();
            if !keep {
                log::debug!("dropping a stalled control client");
            }
            keep
        });
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket accept: {e}");
                    return;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("control socket: {e}");
                continue;
            }
            let uid = getsockopt(&stream, PeerCredentials).map(|c| c.uid());
            let refusal = match uid {
                Ok(uid) if uid == self.allowed_uid => None,
                Ok(uid) => {
                    log::warn!("control socket: refused a client with uid {uid}");
                    Some("permission denied")
                }
                Err(e) => {
                    log::warn!("control socket: cannot read peer credentials: {e}");
                    Some("permission denied")
                }
            };
            let refusal =
                refusal.or((self.clients.len() >= MAX_CLIENTS).then_some("too many clients"));
            let mut client = Client {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
                last_progress: now,
            };
            match refusal {
                Some(why) => {
                    // Best effort: the socket buffer takes a short line without blocking.
                    client.respond(&Response::error(why));
                    let _ = client.stream.write(&client.output);
                }
                None => self.clients.push(client),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;
    use std::io::{BufRead, BufReader};

    fn ready_fds(server: &ControlServer, timeout_ms: u16) -> Vec<(RawFd, PollFlags)> {
        let interest = server.interest();
        let mut fds: Vec<_> = interest
            .iter()
            .map(|(fd, flags)| nix::poll::PollFd::new(*fd, *flags))
            .collect();
        nix::poll::poll(&mut fds, timeout_ms).unwrap();
        fds.iter()
            .zip(&interest)
            .filter_map(|(p, (fd, _))| {
                let r = p.revents().unwrap_or(PollFlags::empty());
                (!r.is_empty()).then(|| (fd.as_raw_fd(), r))
            })
            .collect()
    }

    /// Runs the server loop for a few rounds.
    fn pump(server: &mut ControlServer, rounds: usize) {
        let mut handler = |r: Request| match r {
            Request::List => Response::List { containers: vec![] },
            Request::Timeline => Response::error("no timeline here"),
            _ => Response::error("not served in this test"),
        };
        for _ in 0..rounds {
            let ready = ready_fds(server, 20);
            server.handle(&ready, Instant::now(), &mut handler);
        }
    }

    fn uid() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    #[test]
    fn serves_requests_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/control.sock");
        let mut server = ControlServer::bind(&path, uid()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"request\":\"list\"}\nnot json\n\n{\"request\":\"timeline\"}\n")
            .unwrap();
        pump(&mut server, 3);
        let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
        let first: Response = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first, Response::List { containers: vec![] });
        let second: Response = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(matches!(second, Response::Error { message } if message.starts_with("malformed")));
        let third: Response = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(third, Response::error("no timeline here"));
    }

    #[test]
    fn oversized_and_half_requests_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let mut server = ControlServer::bind(&path, uid()).unwrap();

        // A client that closes mid-request.
        let mut half = UnixStream::connect(&path).unwrap();
        half.write_all(b"{\"request\":").unwrap();
        drop(half);
        // A client that stalls mid-request.
        let mut stall = UnixStream::connect(&path).unwrap();
        stall.write_all(b"{\"req").unwrap();
        // A client whose request is too long.
        let mut big = UnixStream::connect(&path).unwrap();
        big.set_nonblocking(true).unwrap();
        let junk = vec![b'x'; MAX_REQUEST + 10];
        let mut sent = 0;
        for _ in 0..50 {
            match big.write(&junk[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            pump(&mut server, 1);
            if sent == junk.len() {
                break;
            }
        }
        pump(&mut server, 3);
        big.set_nonblocking(false).unwrap();
        let mut reply = String::new();
        BufReader::new(&big).read_line(&mut reply).unwrap();
        assert!(reply.contains("request too long"), "{reply}");

        // A normal client is still served while the staller hangs.
        let resp = std::thread::scope(|scope| {
            let h = scope.spawn(|| client::call(&path, &Request::List));
            for _ in 0..50 {
                pump(&mut server, 1);
                if h.is_finished() {
                    break;
                }
            }
            h.join().unwrap()
        });
        assert_eq!(resp.unwrap(), Response::List { containers: vec![] });
        // The finished client's hang-up may still be in flight.
        for _ in 0..50 {
            if server.clients.len() == 1 {
                break;
            }
            pump(&mut server, 1);
        }
        assert_eq!(server.clients.len(), 1, "only the staller is left");
        server.expire(Instant::now() + STALL_TIMEOUT + Duration::from_secs(1));
        assert!(server.clients.is_empty());
        drop(stall);
    }

    #[test]
    fn other_uids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let mut server = ControlServer::bind(&path, uid().wrapping_add(1)).unwrap();
        let s = UnixStream::connect(&path).unwrap();
        pump(&mut server, 1);
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).unwrap();
        assert!(reply.contains("permission denied"), "{reply}");
        assert!(server.clients.is_empty());
    }
}
