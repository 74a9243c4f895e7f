//! The server side of the control socket, driven by PID 1's poll loop: non-blocking, bounded in
//! memory, and deciding who may ask what ([`crate::access`]). Each client sends JSON
//! [`Request`] lines and gets one [`Response`] line each, one at a time: the next request is
//! read only once the answer to the previous one was written out, so a client that sends
//! without reading fills its own socket, not PID 1's memory. A client that sends garbage gets
//! an error response; one that sends too much, stalls or hangs up mid-request is dropped
//! without ever blocking the loop.
//!
//! Memory: at most [`MAX_BUFFERED`] bytes for all clients together. Per client, one request
//! being received (at most [`MAX_REQUEST`] plus one read) and one answer (at most
//! [`MAX_RESPONSE`]); answers are only begun while the unwritten answers of all clients stay
//! below [`MAX_PENDING_OUTPUT`], and a client that does not read its answer is dropped after
//! [`STALL_TIMEOUT`].

use crate::access::{self, ContainerAccess, MAX_CGROUP_TEXT, Origin};
use crate::protocol::{MAX_REQUEST, Request, Response, Tagged};
use crate::time::after;
use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Clients served at once; more are turned away.
pub const MAX_CLIENTS: usize = 32;
/// A client with a partial request or an unwritten answer for this long is dropped (a complete
/// request waiting for the answer budget is not a stall).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A connected client that sends nothing for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 4096;
/// Largest answer (JSON, newline included); a larger one is replaced by an error.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// No client's next request is answered while the unwritten answers of all clients reach this.
pub const MAX_PENDING_OUTPUT: usize = 4 * 1024 * 1024;
/// Requests answered for one client in one turn of the loop, so that a client that reads as
/// fast as it writes cannot hold the loop.
const MAX_ANSWERS_PER_TURN: usize = 32;
/// The most the server buffers for all its clients: the unwritten answers (the budget plus the
/// one answer that may cross it) and a request being received per client. About 10 MiB.
pub const MAX_BUFFERED: usize =
    MAX_PENDING_OUTPUT + MAX_RESPONSE + MAX_CLIENTS * (MAX_REQUEST + READ_CHUNK);

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

/// Who is at the other end of a connection: the syscalls behind the access check, behind a
/// trait so that tests can pose as any container.
pub trait PeerSource {
    /// The peer's uid and pid when it connected (`SO_PEERCRED`), as PID 1 sees them.
    fn credentials(&self, stream: &UnixStream) -> std::io::Result<(u32, i32)>;
    /// The text of `/proc/<pid>/cgroup`, at most [`MAX_CGROUP_TEXT`] bytes (longer: an error).
    fn cgroup(&self, pid: i32) -> std::io::Result<String>;
    /// The text of the server's own `/proc/self/cgroup`.
    fn own_cgroup(&self) -> std::io::Result<String>;
}

/// The real [`PeerSource`]: `SO_PEERCRED` and `/proc`.
///
/// The pid is the peer's when it connected; were it to exit and its pid be reused before
/// `/proc/<pid>/cgroup` is read, another process's cgroup would be read. PID 1 reads it as soon
/// as it accepts the connection (the same loop turn), so the pid would have to go round the
/// whole pid space in between; `SO_PEERPIDFD` (Linux 6.5) would close this gap.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemPeers;

impl PeerSource for SystemPeers {
    fn credentials(&self, stream: &UnixStream) -> std::io::Result<(u32, i32)> {
        let c = getsockopt(stream, PeerCredentials)?;
        Ok((c.uid(), c.pid()))
    }

    fn cgroup(&self, pid: i32) -> std::io::Result<String> {
        read_bounded(&Path::new("/proc").join(pid.to_string()).join("cgroup"))
    }

    fn own_cgroup(&self) -> std::io::Result<String> {
        read_bounded(Path::new("/proc/self/cgroup"))
    }
}

/// A `/proc/<pid>/cgroup` file, refused past [`MAX_CGROUP_TEXT`] bytes or when not UTF-8.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(
            u64::try_from(MAX_CGROUP_TEXT)
                .unwrap_or(u64::MAX)
                .saturating_add(1),
        )
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_CGROUP_TEXT {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("longer than {MAX_CGROUP_TEXT} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

/// Counts the bytes of an encoding without keeping them, giving up past [`MAX_RESPONSE`].
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        if self.0 >= MAX_RESPONSE {
            return Err(std::io::Error::other("answer too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `response` as one JSON line, at most [`MAX_RESPONSE`] bytes: its size is measured first,
/// so a large answer is never even built. One past the bound becomes an error answer.
fn encode(response: &Response) -> Vec<u8> {
    encode_with(response, |message| encode(&Response::error(message)))
}

/// [`encode`] for the host channel, whose answers carry the request's tag.
pub fn encode_tagged(tag: u64, response: &Response) -> Vec<u8> {
    let tagged = Tagged {
        tag,
        body: response,
    };
    encode_with(&tagged, |message| {
        encode_tagged(tag, &Response::error(message))
    })
}

/// One JSON line of `value`, or `fallback`'s (an error answer's) when it would exceed
/// [`MAX_RESPONSE`] or cannot be encoded.
fn encode_with<T: serde::Serialize>(
    value: &T,
    fallback: impl FnOnce(String) -> Vec<u8>,
) -> Vec<u8> {
    let mut counter = Counter(0);
    if let Err(e) = serde_json::to_writer(&mut counter, value) {
        let message = if counter.0 >= MAX_RESPONSE {
            format!("answer too large (over {MAX_RESPONSE} bytes)")
        } else {
            log::error!("cannot encode a control response: {e}");
            "cannot encode the answer".to_owned()
        };
        return fallback(message);
    }
    let mut out = Vec::with_capacity(counter.0 + 1);
    if let Err(e) = serde_json::to_writer(&mut out, value) {
        // Encoding the same value twice cannot differ; say so rather than panic if it did.
        log::error!("cannot encode a control response: {e}");
        return fallback("cannot encode the answer".to_owned());
    }
    out.push(b'\n');
    out
}

struct Client {
    stream: UnixStream,
    /// Received bytes not yet answered: at most one request and what came with its last read.
    input: Vec<u8>,
    /// `input` holds a complete line.
    has_line: bool,
    /// The answer being written, and how much of it went out.
    output: Vec<u8>,
    written: usize,
    /// The peer shut down its writing side: its complete requests are still answered.
    eof: bool,
    /// Drop once the answer is written (after an oversized request).
    closing: bool,
    last_progress: Instant,
    origin: Origin,
    /// A refusal was logged already: once per client is enough.
    refusal_logged: bool,
}

impl Client {
    fn new(stream: UnixStream, origin: Origin, now: Instant) -> Self {
        Client {
            stream,
            input: Vec::new(),
            has_line: false,
            output: Vec::new(),
            written: 0,
            eof: false,
            closing: false,
            last_progress: now,
            origin,
            refusal_logged: false,
        }
    }

    fn unwritten(&self) -> usize {
        self.output.len().saturating_sub(self.written)
    }

    /// The last answer was written out entirely.
    fn answered(&self) -> bool {
        self.unwritten() == 0
    }

    /// Reading more is allowed: the previous answer is out and no request waits.
    fn wants_input(&self) -> bool {
        !self.eof && !self.closing && self.answered() && !self.has_line
    }

    /// A request waits for its answer.
    fn has_request(&self) -> bool {
        !self.closing && self.answered() && self.has_line
    }

    /// Nothing more will happen: drop it.
    fn finished(&self) -> bool {
        self.answered() && (self.closing || (self.eof && !self.has_line))
    }

    fn buffered(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    fn deadline(&self) -> Instant {
        // A request waiting for the answer budget waits for other clients, not for this one.
        if self.has_request() || (self.input.is_empty() && self.answered()) {
            after(self.last_progress, IDLE_TIMEOUT)
        } else {
            after(self.last_progress, STALL_TIMEOUT)
        }
    }

    fn set_answer(&mut self, response: &Response) {
        self.output = encode(response);
        self.written = 0;
    }

    /// Reads until a request is complete or nothing is available. Returns false when the
    /// client must be dropped.
    fn read(&mut self, now: Instant) -> bool {
        let mut buf = [0u8; READ_CHUNK];
        while self.wants_input() {
            // What is left after the last complete request may already be too long; reading
            // on would take `input` past its bound.
            if self.input.len() > MAX_REQUEST {
                self.too_long();
                break;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // Hung up: the complete requests are answered, a partial one is discarded.
                    self.eof = true;
                    let keep = self
                        .input
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |p| p + 1);
                    self.input.truncate(keep);
                    if self.input.is_empty() {
                        self.input = Vec::new();
                    }
                }
                Ok(n) => {
                    self.last_progress = now;
                    let new = &buf[..n];
                    self.has_line = new.contains(&b'\n');
                    // Exact: this buffer is part of the stated bound.
                    self.input.reserve_exact(n);
                    self.input.extend_from_slice(new);
                    if !self.has_line && self.input.len() > MAX_REQUEST {
                        self.too_long();
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
        true
    }

    /// Answers "request too long" and closes: the rest of the stream cannot be trusted to
    /// start at a request.
    fn too_long(&mut self) {
        self.input = Vec::new();
        self.has_line = false;
        self.closing = true;
        self.set_answer(&Response::error("request too long"));
    }

    /// The next complete line of `input`, without its newline.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.input.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.input.drain(..=end).collect();
        line.pop();
        self.has_line = self.input.contains(&b'\n');
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        Some(line)
    }

    /// Answers the next buffered request (a blank line gets no answer).
    fn answer_one(&mut self, handler: &mut dyn FnMut(Request) -> Response) {
        let Some(line) = self.take_line() else {
            return;
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if line.len() > MAX_REQUEST {
            self.too_long();
            return;
        }
        let response = match serde_json::from_slice::<Request>(&line) {
            Ok(request) => match access::decide(&self.origin, &request) {
                Ok(()) => handler(request),
                Err(why) => {
                    if !std::mem::replace(&mut self.refusal_logged, true) {
                        log::warn!("control socket: {why}");
                    }
                    Response::error(why)
                }
            },
            Err(e) => Response::error(format!("malformed request: {e}")),
        };
        self.set_answer(&response);
    }

    /// Writes what is left of the answer. Returns false when the client must be dropped.
    fn write(&mut self, now: Instant) -> bool {
        while !self.answered() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.written = self.written.saturating_add(n);
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
        // Written out: free the answer (it may have been megabytes).
        self.output = Vec::new();
        self.written = 0;
        true
    }
}

/// The listening control socket and its connected clients.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    allowed_uid: u32,
    clients: Vec<Client>,
    peers: Box<dyn PeerSource>,
    /// PID 1's own cgroup (v2): a peer there is on the host.
    host_cgroup: Option<String>,
    /// Every container's cgroup and grant.
    containers: Vec<ContainerAccess>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket), mode 0600, accepting only peers whose uid is
    /// `allowed_uid` (0 in the guest). Until [`ControlServer::set_access`] names the
    /// containers, only peers on the host are served.
    pub fn bind(path: &Path, allowed_uid: u32) -> Result<Self, ServerError> {
        Self::bind_with(path, allowed_uid, Box::new(SystemPeers))
    }

    /// [`ControlServer::bind`] with another way of identifying peers.
    pub fn bind_with(
        path: &Path,
        allowed_uid: u32,
        peers: Box<dyn PeerSource>,
    ) -> Result<Self, ServerError> {
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
        let host_cgroup = match peers.own_cgroup() {
            Ok(text) => match access::cgroup_v2_path(&text) {
                Ok(p) => Some(p.to_owned()),
                Err(why) => {
                    log::debug!("control socket: own cgroup: {why}");
                    None
                }
            },
            Err(e) => {
                log::debug!("control socket: own cgroup: {e}");
                None
            }
        };
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
            allowed_uid,
            clients: Vec::new(),
            peers,
            host_cgroup,
            containers: Vec::new(),
        })
    }

    /// The containers whose processes may connect, with their cgroups and grants (see
    /// [`crate::Supervisor::control_access`]). Applies to connections accepted from now on.
    pub fn set_access(&mut self, containers: Vec<ContainerAccess>) {
        self.containers = containers;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes buffered for all clients (allocated, not just used): at most [`MAX_BUFFERED`].
    pub fn buffered_bytes(&self) -> usize {
        self.clients.iter().map(Client::buffered).sum()
    }

    /// Unwritten answer bytes of all clients.
    fn pending_output(&self) -> usize {
        self.clients.iter().map(Client::unwritten).sum()
    }

    /// The descriptors to poll and for what.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut v = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.clients {
            let mut flags = PollFlags::empty();
            if c.wants_input() {
                flags |= PollFlags::POLLIN;
            }
            if !c.answered() {
                flags |= PollFlags::POLLOUT;
            }
            // A client with nothing to read or write waits for the answer budget; polled, its
            // hang-up would wake the loop over and over.
            if !flags.is_empty() {
                v.push((c.stream.as_fd(), flags));
            }
        }
        v
    }

    /// Serves the descriptors among `ready` (as returned by poll) that belong to this server,
    /// then answers waiting requests with `handler`. Call it every turn of the loop, with
    /// whatever is ready: requests that waited for the answer budget are answered here.
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
            let hangup = PollFlags::POLLHUP | PollFlags::POLLERR;
            let mut keep = true;
            if !client.answered() && revents.intersects(PollFlags::POLLOUT | hangup) {
                keep = client.write(now);
            }
            if keep && revents.intersects(PollFlags::POLLIN | hangup) {
                keep = client.read(now);
                // Reading may end in an answer ("request too long"): send it now.
                if keep && !client.answered() {
                    keep = client.write(now);
                }
            }
            if !keep {
                self.clients.swap_remove(i);
            }
        }
        self.serve(now, handler);
    }

    /// Answers buffered requests, one at a time per client, each written (as far as the
    /// socket takes it) before the next is looked at.
    fn serve(&mut self, now: Instant, handler: &mut dyn FnMut(Request) -> Response) {
        let mut i = 0;
        while i < self.clients.len() {
            let mut keep = true;
            for _ in 0..MAX_ANSWERS_PER_TURN {
                if !self.clients[i].has_request() {
                    break;
                }
                if self.pending_output() >= MAX_PENDING_OUTPUT {
                    break;
                }
                let client = &mut self.clients[i];
                client.answer_one(handler);
                keep = client.write(now);
                if !keep {
                    break;
                }
            }
            if keep && self.clients[i].finished() {
                keep = false;
            }
            if keep {
                i += 1;
            } else {
                self.clients.swap_remove(i);
            }
        }
    }

    /// When the server next has something to do without a descriptor becoming ready: a client
    /// to drop, or a request left for the next turn.
    pub fn next_deadline(&self) -> Option<Instant> {
        let budget_left = self.pending_output() < MAX_PENDING_OUTPUT;
        self.clients
            .iter()
            .map(|c| {
                if budget_left && c.has_request() {
                    // Due at once: `last_progress` is in the past.
                    c.last_progress
                } else {
                    c.deadline()
                }
            })
            .min()
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

    /// Who `stream`'s peer is, or why it is refused (already logged).
    fn identify(&self, stream: &UnixStream) -> Result<Origin, String> {
        let (uid, pid) = match self.peers.credentials(stream) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("control socket: cannot read peer credentials: {e}");
                return Err("permission denied".into());
            }
        };
        if uid != self.allowed_uid {
            log::warn!("control socket: refused a client with uid {uid}");
            return Err("permission denied".into());
        }
        let origin = if pid <= 0 {
            Origin::Unknown(format!("no process id ({pid})"))
        } else {
            match self.peers.cgroup(pid) {
                Ok(text) => access::origin(&text, self.host_cgroup.as_deref(), &self.containers),
                Err(e) => Origin::Unknown(format!("cannot read the cgroup of process {pid}: {e}")),
            }
        };
        match access::admit(&origin) {
            Ok(()) => Ok(origin),
            Err(why) => {
                log::warn!("control socket: refused process {pid}: {why}");
                Err(why)
            }
        }
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
            // Identified at once: the pid is only trustworthy while the peer still runs.
            let refusal = match self.identify(&stream) {
                Err(why) => Err(why),
                Ok(_) if self.clients.len() >= MAX_CLIENTS => Err("too many clients".into()),
                Ok(origin) => Ok(origin),
            };
            match refusal {
                Ok(origin) => self.clients.push(Client::new(stream, origin, now)),
                Err(why) => {
                    // Best effort: the socket buffer takes a short line without blocking.
                    let mut s = stream;
                    let _ = s.write(&encode(&Response::error(why)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;
    use crate::protocol::{ContainerInfo, LogLine};
    use keel_bundle::ControlGrant;
    use std::cell::RefCell;
    use std::io::{BufRead, BufReader};
    use std::rc::Rc;

    /// Real credentials, a made-up cgroup: the test process poses as whatever container the
    /// test says (shared, so it can change between connections).
    #[derive(Clone)]
    struct Posing(Rc<RefCell<String>>);

    impl Posing {
        fn as_cgroup(&self, text: &str) {
            *self.0.borrow_mut() = text.to_owned();
        }
    }

    impl PeerSource for Posing {
        fn credentials(&self, stream: &UnixStream) -> std::io::Result<(u32, i32)> {
            SystemPeers.credentials(stream)
        }
        fn cgroup(&self, _pid: i32) -> std::io::Result<String> {
            Ok(self.0.borrow().clone())
        }
        fn own_cgroup(&self) -> std::io::Result<String> {
            Ok("0::/init.scope\n".into())
        }
    }

    /// A server on `path` whose clients are on the host until the returned handle says
    /// otherwise.
    fn server_at(path: &Path, allowed_uid: u32) -> (ControlServer, Posing) {
        let posing = Posing(Rc::new(RefCell::new("0::/init.scope\n".into())));
        let mut server =
            ControlServer::bind_with(path, allowed_uid, Box::new(posing.clone())).unwrap();
        let grant = |id: &str, grant| ContainerAccess {
            id: id.into(),
            cgroup: format!("/keel/services/{id}"),
            grant,
        };
        server.set_access(vec![
            grant("status", ControlGrant::Inspect),
            grant("getty", ControlGrant::Admin),
            grant("web", ControlGrant::None),
        ]);
        (server, posing)
    }

    fn ready_fds(server: &ControlServer, timeout_ms: u16) -> Vec<(RawFd, PollFlags)> {
        // As PID 1's loop does: no sleeping past the server's next deadline.
        let timeout_ms = match server.next_deadline() {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now()).as_millis();
                u16::try_from(left).map_or(timeout_ms, |l| l.min(timeout_ms))
            }
            None => timeout_ms,
        };
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

    fn answer(r: Request) -> Response {
        match r {
            Request::List => Response::List { containers: vec![] },
            Request::Timeline => Response::error("no timeline here"),
            Request::Stop { id } => Response::Done {
                message: format!("stopping {id}"),
            },
            _ => Response::error("not served in this test"),
        }
    }

    /// Runs the server loop for a few rounds.
    fn pump(server: &mut ControlServer, rounds: usize) {
        pump_with(server, rounds, &mut answer);
    }

    fn pump_with(
        server: &mut ControlServer,
        rounds: usize,
        handler: &mut dyn FnMut(Request) -> Response,
    ) {
        for _ in 0..rounds {
            let ready = ready_fds(server, 20);
            server.handle(&ready, Instant::now(), handler);
        }
    }

    fn uid() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn read_reply(s: &UnixStream) -> Response {
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
    }

    /// `client::call` from a thread while the server runs here.
    fn call(server: &mut ControlServer, path: &Path, request: Request) -> Response {
        std::thread::scope(|scope| {
            let h = scope.spawn(|| client::call(path, &request));
            for _ in 0..200 {
                pump(server, 1);
                if h.is_finished() {
                    break;
                }
            }
            h.join().unwrap().unwrap()
        })
    }

    #[test]
    fn serves_requests_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/control.sock");
        let (mut server, _) = server_at(&path, uid());
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
    fn requests_sent_before_a_hang_up_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (mut server, _) = server_at(&path, uid());
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"request\":\"list\"}\n{\"request\":\"timeline\"}\n{\"req")
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        pump(&mut server, 3);
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(server.clients.is_empty(), "dropped once answered");
    }

    #[test]
    fn oversized_and_half_requests_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (mut server, _) = server_at(&path, uid());

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
        let resp = call(&mut server, &path, Request::List);
        assert_eq!(resp, Response::List { containers: vec![] });
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
    fn a_long_tail_after_a_request_is_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (mut server, _) = server_at(&path, uid());
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut bytes = b"{\"request\":\"list\"}\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', MAX_REQUEST + 10));
        let mut sent = 0;
        for _ in 0..100 {
            match s.write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            pump(&mut server, 1);
            assert!(server.buffered_bytes() <= MAX_REQUEST + READ_CHUNK + 64);
            if sent == bytes.len() || server.clients.is_empty() {
                break;
            }
        }
        for _ in 0..20 {
            if server.clients.is_empty() {
                break;
            }
            pump(&mut server, 1);
        }
        s.set_nonblocking(false).unwrap();
        let mut replies = BufReader::new(&s).lines();
        let first = replies.next().unwrap().unwrap();
        assert_eq!(first, r#"{"response":"list","containers":[]}"#);
        let second = replies.next().unwrap().unwrap();
        assert!(second.contains("request too long"), "{second}");
        assert!(server.clients.is_empty());
    }

    #[test]
    fn other_uids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (mut server, _) = server_at(&path, uid().wrapping_add(1));
        let s = UnixStream::connect(&path).unwrap();
        pump(&mut server, 1);
        assert_eq!(read_reply(&s), Response::error("permission denied"));
        assert!(server.clients.is_empty());
    }

    #[test]
    fn the_real_peer_source_reads_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let s = UnixStream::connect(&path).unwrap();
        let (peer_uid, pid) = SystemPeers.credentials(&s).unwrap();
        assert_eq!(peer_uid, uid());
        assert_eq!(u32::try_from(pid).ok(), Some(std::process::id()));
        let own = SystemPeers.own_cgroup().unwrap();
        assert_eq!(SystemPeers.cgroup(pid).unwrap(), own);
        assert!(SystemPeers.cgroup(i32::MAX).is_err());
    }

    /// A client that writes thousands of requests and never reads: the server takes one
    /// request at a time and stops reading while an answer waits, so its buffers stay at one
    /// request and one answer; other clients are served meanwhile.
    #[test]
    fn a_client_that_never_reads_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (mut server, _) = server_at(&path, uid());
        // Answers of about 20 KiB fill the socket after a few dozen.
        let row = ContainerInfo {
            id: "x".repeat(200),
            pid: 1,
            status: "running".into(),
            bundle: "/containers/services/x".into(),
            created: String::new(),
            owner: "root".into(),
            restarts: 0,
            kind: "service".into(),
            exit_status: None,
            exit_reason: None,
            ready: true,
        };
        let answered = std::cell::Cell::new(0usize);
        let mut handler = |r: Request| {
            answered.set(answered.get() + 1);
            match r {
                Request::List => Response::List {
                    containers: vec![row.clone(); 60],
                },
                other => answer(other),
            }
        };
        let mut flood = UnixStream::connect(&path).unwrap();
        flood.set_nonblocking(true).unwrap();
        let request = b"{\"request\":\"list\"}\n";
        let total = 20_000;
        let mut stream_bytes: Vec<u8> = request.repeat(total);
        let mut peak = 0;
        // Until both sides are stuck: its writes block and the server answers nothing more.
        let mut quiet = 0;
        while quiet < 3 && !stream_bytes.is_empty() {
            let before = answered.get();
            let blocked = match flood.write(&stream_bytes) {
                Ok(n) => {
                    stream_bytes.drain(..n);
                    false
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                Err(e) => panic!("{e}"),
            };
            pump_with(&mut server, 1, &mut handler);
            peak = peak.max(server.buffered_bytes());
            quiet = if blocked && answered.get() == before {
                quiet + 1
            } else {
                0
            };
        }
        pump_with(&mut server, 5, &mut handler);
        peak = peak.max(server.buffered_bytes());
        // One answer (the socket holds the rest) and one read of requests.
        let one_answer = encode(&Response::List {
            containers: vec![row.clone(); 60],
        })
        .len();
        assert!(
            peak <= one_answer + MAX_REQUEST + READ_CHUNK,
            "peak {peak} bytes, one answer {one_answer}"
        );
        assert!(peak <= MAX_BUFFERED);
        let stuck = answered.get();
        assert!(
            stuck < total,
            "the server stopped answering a client that does not read"
        );
        assert!(
            !stream_bytes.is_empty(),
            "its requests stay in its own socket"
        );
        pump_with(&mut server, 5, &mut handler);
        assert_eq!(
            answered.get(),
            stuck,
            "no more answers while it does not read"
        );

        // Others are served meanwhile, each in turn.
        for _ in 0..3 {
            assert_eq!(
                call(&mut server, &path, Request::Timeline),
                Response::error("no timeline here")
            );
        }

        // Reading, it gets every answer in order, one per request it sent.
        let sent = total - stream_bytes.len() / request.len();
        flood.set_nonblocking(false).unwrap();
        flood
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        flood.shutdown(std::net::Shutdown::Write).unwrap();
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            for line in BufReader::new(flood).lines() {
                let line = line.unwrap();
                assert!(
                    line.starts_with(r#"{"response":"list","containers":["#),
                    "{line}"
                );
                n += 1;
            }
            n
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reader.is_finished() && Instant::now() < deadline {
            pump(&mut server, 1);
        }
        // A partial last request (cut by a short write) gets no answer.
        let got = reader.join().unwrap();
        assert!(got == sent || got + 1 == sent, "{got} answers for {sent}");
        assert_eq!(server.buffered_bytes(), 0);
    }

    /// Many clients asking for large answers and reading none: the answers begun stay within
    /// the budget; the rest wait (unread requests), and are served once the hogs are dropped.
    #[test]
    fn answers_waiting_for_all_clients_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (mut server, _) = server_at(&path, uid());
        let big_line = "y".repeat(64 * 1024);
        let mut handler = |r: Request| match r {
            Request::Logs { .. } => Response::Logs {
                // About 3 MiB.
                lines: (0..48)
                    .map(|seq| LogLine {
                        seq,
                        line: big_line.clone(),
                    })
                    .collect(),
                next: 48,
            },
            other => answer(other),
        };
        let logs = b"{\"request\":\"logs\",\"id\":\"x\"}\n";
        let hogs: Vec<UnixStream> = (0..8)
            .map(|_| {
                let mut s = UnixStream::connect(&path).unwrap();
                s.write_all(logs).unwrap();
                s
            })
            .collect();
        let mut peak = 0;
        for _ in 0..10 {
            pump_with(&mut server, 1, &mut handler);
            peak = peak.max(server.buffered_bytes());
        }
        assert_eq!(server.clients.len(), 8);
        assert!(
            peak <= MAX_PENDING_OUTPUT + MAX_RESPONSE + 8 * (MAX_REQUEST + READ_CHUNK),
            "peak {peak}"
        );
        assert!(peak <= MAX_BUFFERED);
        let begun = server.clients.iter().filter(|c| !c.answered()).count();
        assert!((1..8).contains(&begun), "{begun} answers begun");
        // The loop is told to come back only when something can happen.
        assert!(server.next_deadline().unwrap() > Instant::now());

        // The hogs stall and are dropped; the requests that waited are answered then.
        let later = Instant::now() + STALL_TIMEOUT + Duration::from_secs(1);
        server.expire(later);
        let left = server.clients.len();
        assert_eq!(left, 8 - begun, "clients that waited are not stalled");
        server.handle(&[], later, &mut handler);
        assert!(server.clients.iter().any(|c| !c.answered()));
        drop(hogs);
    }

    #[test]
    fn oversized_answers_become_errors() {
        let huge = Response::Logs {
            lines: vec![
                LogLine {
                    seq: 0,
                    line: "\u{1}".repeat(MAX_RESPONSE / 6 + 1),
                };
                1
            ],
            next: 1,
        };
        let bytes = encode(&huge);
        assert!(bytes.len() < 200);
        let r: Response = serde_json::from_slice(&bytes).unwrap();
        assert!(
            matches!(&r, Response::Error { message } if message.starts_with("answer too large")),
            "{r:?}"
        );
        assert_eq!(encode(&Response::error("x")).last(), Some(&b'\n'));
    }

    #[test]
    fn containers_get_what_their_grant_allows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (mut server, posing) = server_at(&path, uid());
        let stop = || Request::Stop { id: "web".into() };

        // The host: everything.
        assert!(matches!(
            call(&mut server, &path, stop()),
            Response::Done { .. }
        ));
        // inspect: reading only, on the same connection the refusal does not end.
        posing.as_cgroup("0::/keel/services/status\n");
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"request\":\"stop\",\"id\":\"web\"}\n{\"request\":\"list\"}\n{\"request\":\"reboot\"}\n")
            .unwrap();
        pump(&mut server, 3);
        let mut replies = BufReader::new(&s).lines();
        let mut next =
            || serde_json::from_str::<Response>(&replies.next().unwrap().unwrap()).unwrap();
        assert_eq!(
            next(),
            Response::error(
                "permission denied: container status has control: inspect; stop needs control: admin"
            )
        );
        assert_eq!(next(), Response::List { containers: vec![] });
        let line = format!("{:?}", next());
        assert!(line.contains("reboot needs control: admin"), "{line}");
        assert!(server.clients.iter().any(|c| c.refusal_logged));
        drop(s);
        // A child cgroup of an admin container: everything.
        posing.as_cgroup("0::/keel/services/getty/session-1\n");
        assert!(matches!(
            call(&mut server, &path, stop()),
            Response::Done { .. }
        ));
        // No grant, a look-alike cgroup, garbage: refused when connecting.
        for (cgroup, why) in [
            (
                "0::/keel/services/web\n",
                "permission denied: container web was not granted control",
            ),
            (
                "0::/keel/services/web2\n",
                "permission denied: cannot tell which container the client runs in \
                 (cgroup /keel/services/web2 belongs to no container)",
            ),
            (
                "0::/keel/services/getty\n0::/\n",
                "permission denied: cannot tell which container the client runs in \
                 (more than one cgroup v2 line)",
            ),
        ] {
            posing.as_cgroup(cgroup);
            assert_eq!(
                call(&mut server, &path, Request::List),
                Response::error(why),
                "{cgroup:?}"
            );
        }
        let garbage = "x".repeat(MAX_CGROUP_TEXT * 2);
        posing.as_cgroup(&garbage);
        let r = call(&mut server, &path, Request::List);
        assert!(
            matches!(&r, Response::Error { message } if message.starts_with("permission denied")),
            "{r:?}"
        );
        assert!(server.clients.is_empty());
    }
}
