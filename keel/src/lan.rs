//! The private network of a cluster (`keel run qemu --nodes N`): an Ethernet switch in user
//! space that the nodes' QEMUs connect to over one unix socket, with the network's DHCP server
//! ([`dhcp`]) inside it.
//!
//! QEMU's `-netdev stream` speaks the framing this switch reads: each Ethernet frame as a
//! 4-byte big-endian length and the frame. The switch learns which port each source MAC is on,
//! sends a unicast frame to its port, floods group and unknown destinations, and gives each
//! port a bounded queue: a node that stops reading loses frames, it never stalls the others.
//! Nothing needs root, no host interface exists, and no frame leaves the switch except to a
//! connected node: the network is reachable only through the socket, in the run's 0700 state
//! directory.
//!
//! A client that breaks the framing (a length of zero or above [`MAX_FRAME`]) is disconnected;
//! frames shorter than an Ethernet header are dropped. The switch ends when the last node that
//! connected has gone, or when none has connected within [`FIRST_CLIENT_DEADLINE`].

pub mod dhcp;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use dhcp::Mac;

/// The largest frame a port may send: an Ethernet frame of the largest MTU virtio-net offers
/// (65535) with its header. QEMU's stream netdev carries no offloads, so real frames are far
/// smaller.
pub const MAX_FRAME: usize = 65_535 + 14;

/// How many bytes may wait for one port before frames for it are dropped.
pub const QUEUE_LIMIT: usize = 4 << 20;

/// How long the switch waits for its first node.
pub const FIRST_CLIENT_DEADLINE: Duration = Duration::from_secs(120);

const ETH_HEADER: usize = 14;
const LENGTH_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot wait for the cluster network's sockets")]
    Poll(#[source] nix::Error),
    #[error("cannot accept a node on the cluster network's socket")]
    Accept(#[source] io::Error),
    #[error("cannot set up the cluster network's socket")]
    Socket(#[source] io::Error),
}

/// The listening socket `keel run lan` was handed as its standard input.
pub fn listener_from_stdin() -> Result<UnixListener, Error> {
    let listener = crate::sys::stdin_as_listener().map_err(Error::Socket)?;
    // Fails (ENOTSOCK, EINVAL) when standard input is anything but a unix socket.
    listener.local_addr().map_err(Error::Socket)?;
    Ok(listener)
}

/// One connected node.
#[derive(Debug)]
struct Port {
    stream: UnixStream,
    /// Bytes read and not yet taken as frames.
    input: Vec<u8>,
    /// Frames (with their length prefix) waiting to be written.
    output: VecDeque<u8>,
}

/// What happened to the frames the switch has seen: for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    pub frames: u64,
    pub answered: u64,
    pub dropped_runt: u64,
    pub dropped_full: u64,
    pub disconnected_bad_length: u64,
}

/// The switch: its listening socket, its ports and what it learned.
#[derive(Debug)]
pub struct Switch {
    listener: UnixListener,
    server: dhcp::Server,
    ports: HashMap<u64, Port>,
    next_port: u64,
    learned: HashMap<Mac, u64>,
    counters: Counters,
}

impl Switch {
    pub fn new(listener: UnixListener, server: dhcp::Server) -> Result<Switch, Error> {
        listener.set_nonblocking(true).map_err(Error::Socket)?;
        Ok(Switch {
            listener,
            server,
            ports: HashMap::new(),
            next_port: 0,
            learned: HashMap::new(),
            counters: Counters::default(),
        })
    }

    /// Runs until the last node has gone (or none came within [`FIRST_CLIENT_DEADLINE`]).
    pub fn serve(mut self) -> Result<Counters, Error> {
        let started = Instant::now();
        let mut had_client = false;
        loop {
            self.turn(Duration::from_secs(1))?;
            had_client |= !self.ports.is_empty();
            if had_client && self.ports.is_empty() {
                log::info!("lan: the last node has gone; {:?}", self.counters);
                return Ok(self.counters);
            }
            if !had_client && started.elapsed() > FIRST_CLIENT_DEADLINE {
                log::warn!("lan: no node connected within {FIRST_CLIENT_DEADLINE:?}");
                return Ok(self.counters);
            }
        }
    }

    /// One round of the loop: waits up to `timeout` for the listener or a port, then accepts,
    /// reads, switches and writes what is ready.
    pub fn turn(&mut self, timeout: Duration) -> Result<(), Error> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ids: Vec<u64> = self.ports.keys().copied().collect();
        let ready: Vec<PollFlags> = {
            let mut fds = Vec::with_capacity(ids.len() + 1);
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            for id in &ids {
                let port = &self.ports[id];
                let mut flags = PollFlags::POLLIN;
                if !port.output.is_empty() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(port.stream.as_fd(), flags));
            }
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(Error::Poll(e)),
            }
            fds.iter()
                .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        if !ready[0].is_empty() {
            self.accept()?;
        }
        for (id, flags) in ids.iter().zip(&ready[1..]) {
            if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_from(*id);
            }
            if flags.contains(PollFlags::POLLOUT) {
                self.write_to(*id);
            }
        }
        Ok(())
    }

    fn accept(&mut self) -> Result<(), Error> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true).map_err(Error::Socket)?;
                    let id = self.next_port;
                    self.next_port += 1;
                    log::info!("lan: node connected (port {id})");
                    self.ports.insert(
                        id,
                        Port {
                            stream,
                            input: Vec::new(),
                            output: VecDeque::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Accept(e)),
            }
        }
    }

    fn read_from(&mut self, id: u64) {
        let mut buf = [0u8; 64 * 1024];
        let mut closed = false;
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        loop {
            match port.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => port.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if port.input.len() > MAX_FRAME + LENGTH_PREFIX {
                break;
            }
        }
        let mut frames = Vec::new();
        let mut bad_length = false;
        let mut taken = 0;
        while let Some(prefix) = port.input.get(taken..taken + LENGTH_PREFIX) {
            let len = usize::try_from(u32::from_be_bytes([
                prefix[0], prefix[1], prefix[2], prefix[3],
            ]))
            .unwrap_or(usize::MAX);
            if len == 0 || len > MAX_FRAME {
                bad_length = true;
                break;
            }
            let Some(frame) = port
                .input
                .get(taken + LENGTH_PREFIX..taken + LENGTH_PREFIX + len)
            else {
                break;
            };
            frames.push(frame.to_vec());
            taken += LENGTH_PREFIX + len;
        }
        port.input.drain(..taken);
        for frame in frames {
            self.switch(id, &frame);
        }
        if bad_length {
            log::warn!(
                "lan: port {id} broke the framing (a frame of length 0 or above {MAX_FRAME}); disconnected"
            );
            self.counters.disconnected_bad_length += 1;
            self.remove(id);
        } else if closed {
            log::info!("lan: node disconnected (port {id})");
            self.remove(id);
        }
    }

    fn write_to(&mut self, id: u64) {
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        let mut failed = false;
        while !port.output.is_empty() {
            let (front, _) = port.output.as_slices();
            match port.stream.write(front) {
                Ok(n) => {
                    port.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        self.ports.remove(&id);
        self.learned.retain(|_, port| *port != id);
    }

    /// Handles one frame from port `from`: the network's own answers first, then forwarding.
    fn switch(&mut self, from: u64, frame: &[u8]) {
        if frame.len() < ETH_HEADER {
            self.counters.dropped_runt += 1;
            return;
        }
        self.counters.frames += 1;
        let mut src = [0u8; 6];
        src.copy_from_slice(&frame[6..12]);
        let src = Mac(src);
        if !src.is_group() {
            self.learned.insert(src, from);
        }
        if let Some(reply) = self.server.answer(frame) {
            self.counters.answered += 1;
            self.enqueue(from, &reply);
            return;
        }
        if self.server.is_for_server(frame) {
            return;
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let dst = Mac(dst);
        let to: Vec<u64> = match self.learned.get(&dst) {
            Some(&port) if !dst.is_group() => vec![port],
            _ => self.ports.keys().copied().collect(),
        };
        for port in to.into_iter().filter(|p| *p != from) {
            self.enqueue(port, frame);
        }
    }

    fn enqueue(&mut self, id: u64, frame: &[u8]) {
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        if port.output.len() + LENGTH_PREFIX + frame.len() > QUEUE_LIMIT {
            self.counters.dropped_full += 1;
            return;
        }
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        port.output.extend(len.to_be_bytes());
        port.output.extend(frame);
        // Most frames go out at once; what the socket does not take waits for POLLOUT.
        self.write_to(id);
    }

    /// What happened so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Switch, std::path::PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lan.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (
            Switch::new(listener, dhcp::tests::server()).unwrap(),
            path,
            dir,
        )
    }

    fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]); // a local experimental ethertype
        f.extend_from_slice(payload);
        f
    }

    fn send(s: &mut UnixStream, f: &[u8]) {
        s.write_all(&u32::try_from(f.len()).unwrap().to_be_bytes())
            .unwrap();
        s.write_all(f).unwrap();
    }

    /// The next frame on `s`, or `None` when none comes within a short while.
    fn recv(switch: &mut Switch, s: &mut UnixStream) -> Option<Vec<u8>> {
        s.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        for _ in 0..50 {
            switch.turn(Duration::from_millis(10)).unwrap();
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if got.len() >= 4 {
                let len =
                    usize::try_from(u32::from_be_bytes(got[..4].try_into().unwrap())).unwrap();
                if got.len() >= 4 + len {
                    return Some(got[4..4 + len].to_vec());
                }
            }
        }
        None
    }

    fn connect(switch: &mut Switch, path: &std::path::Path, n: usize) -> Vec<UnixStream> {
        let clients: Vec<UnixStream> = (0..n).map(|_| UnixStream::connect(path).unwrap()).collect();
        while switch.ports.len() < n {
            switch.turn(Duration::from_millis(10)).unwrap();
        }
        clients
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn floods_then_learns() {
        let (mut switch, path, _dir) = pair();
        let mut c = connect(&mut switch, &path, 3);
        // A broadcast from A reaches B and C, not A.
        let hello = frame([0xff; 6], A, b"hello");
        send(&mut c[0], &hello);
        assert_eq!(recv(&mut switch, &mut c[1]).as_deref(), Some(&hello[..]));
        assert_eq!(recv(&mut switch, &mut c[2]).as_deref(), Some(&hello[..]));
        assert_eq!(recv(&mut switch, &mut c[0]), None);
        // B answers A by unicast: the switch learned A's port, so C does not see it.
        let answer = frame(A, B, b"answer");
        send(&mut c[1], &answer);
        assert_eq!(recv(&mut switch, &mut c[0]).as_deref(), Some(&answer[..]));
        assert_eq!(recv(&mut switch, &mut c[2]), None);
    }

    #[test]
    fn dhcp_is_answered_on_the_asking_port_only() {
        let (mut switch, path, _dir) = pair();
        let mut c = connect(&mut switch, &path, 2);
        let discover = dhcp::tests::request(dhcp::tests::NODE, 1, &[]);
        send(&mut c[0], &discover);
        let offer = recv(&mut switch, &mut c[0]).unwrap();
        assert_eq!(&offer[..6], &dhcp::tests::NODE.0);
        assert_eq!(recv(&mut switch, &mut c[1]), None, "not flooded");
        assert_eq!(switch.counters().answered, 1);
    }

    #[test]
    fn a_port_that_breaks_the_framing_is_dropped_and_runts_are_ignored() {
        let (mut switch, path, _dir) = pair();
        let mut c = connect(&mut switch, &path, 2);
        send(&mut c[0], &[1, 2, 3]);
        assert_eq!(recv(&mut switch, &mut c[1]), None);
        assert_eq!(switch.counters().dropped_runt, 1);
        // A length no frame has: the port goes, the other stays.
        c[0].write_all(&u32::MAX.to_be_bytes()).unwrap();
        for _ in 0..20 {
            switch.turn(Duration::from_millis(10)).unwrap();
        }
        assert_eq!(switch.ports.len(), 1);
        assert_eq!(switch.counters().disconnected_bad_length, 1);
        // A zero length, too.
        let mut d = connect(&mut switch, &path, 1).remove(0);
        d.write_all(&0u32.to_be_bytes()).unwrap();
        for _ in 0..20 {
            switch.turn(Duration::from_millis(10)).unwrap();
        }
        assert_eq!(switch.counters().disconnected_bad_length, 2);
        assert_eq!(switch.ports.len(), 1);
    }

    #[test]
    fn a_frame_split_across_reads_is_put_together() {
        let (mut switch, path, _dir) = pair();
        let mut c = connect(&mut switch, &path, 2);
        let f = frame([0xff; 6], A, &[7u8; 3000]);
        let mut bytes = u32::try_from(f.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(&f);
        for chunk in bytes.chunks(1000) {
            c[0].write_all(chunk).unwrap();
            switch.turn(Duration::from_millis(10)).unwrap();
        }
        assert_eq!(recv(&mut switch, &mut c[1]).as_deref(), Some(&f[..]));
    }

    #[test]
    fn a_node_that_stops_reading_loses_frames_without_stalling_the_rest() {
        let (mut switch, path, _dir) = pair();
        let mut c = connect(&mut switch, &path, 3);
        // c[2] never reads: its queue fills, and c[1] still gets every frame.
        let big = frame([0xff; 6], A, &[1u8; 60_000]);
        let n = QUEUE_LIMIT / big.len() + 200;
        c[1].set_nonblocking(true).unwrap();
        let mut at_b = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..n {
            send(&mut c[0], &big);
            switch.turn(Duration::from_millis(0)).unwrap();
            while let Ok(k) = c[1].read(&mut buf) {
                at_b += k;
            }
        }
        for _ in 0..100 {
            switch.turn(Duration::from_millis(5)).unwrap();
            while let Ok(k) = c[1].read(&mut buf) {
                at_b += k;
            }
        }
        assert_eq!(at_b, n * (4 + big.len()), "every frame reached the reader");
        assert!(
            switch.counters().dropped_full > 0,
            "{:?}",
            switch.counters()
        );
    }

    #[test]
    fn serve_ends_when_the_last_node_has_gone() {
        let (switch, path, _dir) = pair();
        let t = std::thread::spawn(move || switch.serve().unwrap());
        let c = UnixStream::connect(&path).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(c);
        let counters = t.join().unwrap();
        assert_eq!(counters.frames, 0);
    }
}
