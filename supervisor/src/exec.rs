//! Commands PID 1 runs inside containers for the console prompt and the host channel (`exec`
//! there): a bounded table of sessions, each keeping a bounded tail of its output until a client
//! has read it. PID 1 spawns `keel-shim exec`, feeds its output here and reports its exit; the
//! decisions and the bytes live here, so they are testable without processes.
//!
//! Clients poll ([`crate::protocol::Request::ExecOutput`]) rather than hold a stream open: a
//! client that dies mid-command leaves a session that ends with its process and expires, and
//! nothing in PID 1 waits on it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Sessions at once, running or waiting to be read; more are refused.
pub const MAX_SESSIONS: usize = 8;
/// Output kept per session: older bytes are dropped (and counted) when a client reads slower
/// than the command writes.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// Most output bytes in one answer.
pub const MAX_CHUNK: usize = 64 * 1024;
/// How long an ended session waits for a client to read its end.
pub const LINGER: Duration = Duration::from_secs(60);

/// Why an exec request cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    #[error("too many commands at once ({MAX_SESSIONS}); wait for one to end")]
    Full,
    #[error("no exec {0} (ended and read, or never started)")]
    Unknown(u64),
    #[error("exec {0} has ended")]
    Ended(u64),
}

/// Where a session's process is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Asked for; PID 1 has not spawned it yet.
    Pending,
    Running {
        pid: i32,
    },
    /// The process ended (exit code or 128+signal), at that time.
    Ended {
        status: i32,
        at: Instant,
    },
}

#[derive(Debug)]
struct Session {
    exec: u64,
    container: String,
    argv: Vec<String>,
    state: State,
    output: VecDeque<u8>,
    /// The offset of `output[0]` in everything the command wrote.
    base: u64,
    /// Whether a client has read up to the end after it ended.
    read_to_end: bool,
}

/// What one read of a session gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub output: String,
    /// The offset to ask from next.
    pub next: u64,
    /// Bytes before this chunk the client will never see (dropped for [`MAX_OUTPUT`]).
    pub dropped: u64,
    /// The exit status, once the process ended and this chunk reaches the end.
    pub exit_status: Option<i32>,
}

/// A command for PID 1 to spawn: `keel-shim exec CONTAINER -- ARGV`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    pub exec: u64,
    pub container: String,
    pub argv: Vec<String>,
}

/// Every session.
#[derive(Debug, Default)]
pub struct Execs {
    next: u64,
    sessions: Vec<Session>,
    /// Signals asked for, for PID 1 to send: (pid, signal number).
    signals: Vec<(i32, i32)>,
}

impl Execs {
    /// Registers a command to run in `container`; PID 1 picks it up with [`Execs::take_pending`].
    pub fn start(&mut self, container: &str, argv: Vec<String>) -> Result<u64, ExecError> {
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(ExecError::Full);
        }
        self.next += 1;
        self.sessions.push(Session {
            exec: self.next,
            container: container.to_owned(),
            argv,
            state: State::Pending,
            output: VecDeque::new(),
            base: 0,
            read_to_end: false,
        });
        Ok(self.next)
    }

    /// The commands to spawn now.
    pub fn take_pending(&mut self) -> Vec<Spawn> {
        self.sessions
            .iter()
            .filter(|s| s.state == State::Pending)
            .map(|s| Spawn {
                exec: s.exec,
                container: s.container.clone(),
                argv: s.argv.clone(),
            })
            .collect()
    }

    /// `exec`'s process runs as `pid`.
    pub fn spawned(&mut self, exec: u64, pid: i32) {
        if let Some(s) = self.find_mut(exec) {
            s.state = State::Running { pid };
        }
    }

    /// `exec` could not be started: the message becomes its output, status 127 like a shell's.
    pub fn spawn_failed(&mut self, exec: u64, message: &str, now: Instant) {
        if let Some(s) = self.find_mut(exec) {
            push_bounded(s, format!("{message}\n").as_bytes());
            s.state = State::Ended {
                status: 127,
                at: now,
            };
        }
    }

    /// Output of `exec`'s process.
    pub fn output(&mut self, exec: u64, bytes: &[u8]) {
        if let Some(s) = self.find_mut(exec) {
            push_bounded(s, bytes);
        }
    }

    /// The session whose process is `pid`, if any.
    pub fn by_pid(&self, pid: i32) -> Option<u64> {
        self.sessions
            .iter()
            .find(|s| s.state == State::Running { pid })
            .map(|s| s.exec)
    }

    /// `exec`'s process ended (its output already drained into [`Execs::output`]).
    pub fn ended(&mut self, exec: u64, status: i32, now: Instant) {
        if let Some(s) = self.find_mut(exec) {
            s.state = State::Ended { status, at: now };
        }
    }

    /// Output from offset `after` on (at most [`MAX_CHUNK`] bytes).
    pub fn read(&mut self, exec: u64, after: u64) -> Result<Chunk, ExecError> {
        let s = self.find_mut(exec).ok_or(ExecError::Unknown(exec))?;
        let end = s.base + s.output.len() as u64;
        let from = after.clamp(s.base, end);
        let dropped = from.saturating_sub(after);
        let skip = usize::try_from(from - s.base).unwrap_or(usize::MAX);
        let take = s.output.len().saturating_sub(skip).min(MAX_CHUNK);
        let bytes: Vec<u8> = s.output.iter().skip(skip).take(take).copied().collect();
        let next = from + take as u64;
        let exit_status = match s.state {
            State::Ended { status, .. } if next == end => {
                s.read_to_end = true;
                Some(status)
            }
            _ => None,
        };
        Ok(Chunk {
            output: String::from_utf8_lossy(&bytes).into_owned(),
            next,
            dropped,
            exit_status,
        })
    }

    /// Asks PID 1 to send `signal` to `exec`'s process.
    pub fn kill(&mut self, exec: u64, signal: i32) -> Result<(), ExecError> {
        let s = self.find_mut(exec).ok_or(ExecError::Unknown(exec))?;
        let pid = match s.state {
            State::Running { pid } => pid,
            // Not spawned yet: it never will be.
            State::Pending => {
                s.state = State::Ended {
                    status: 128_i32.saturating_add(signal),
                    at: Instant::now(),
                };
                return Ok(());
            }
            State::Ended { .. } => return Err(ExecError::Ended(exec)),
        };
        self.signals.push((pid, signal));
        Ok(())
    }

    /// The signals to send now: (pid, signal number).
    pub fn take_signals(&mut self) -> Vec<(i32, i32)> {
        std::mem::take(&mut self.signals)
    }

    /// Forgets ended sessions that were read to the end, or ended more than [`LINGER`] ago.
    pub fn expire(&mut self, now: Instant) {
        self.sessions.retain(|s| match s.state {
            State::Ended { at, .. } => !s.read_to_end && now.saturating_duration_since(at) < LINGER,
            _ => true,
        });
    }

    /// When the next session may expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions
            .iter()
            .filter_map(|s| match s.state {
                State::Ended { at, .. } => Some(at + LINGER),
                _ => None,
            })
            .min()
    }

    /// Bytes held for clients.
    pub fn buffered(&self) -> usize {
        self.sessions.iter().map(|s| s.output.len()).sum()
    }

    fn find_mut(&mut self, exec: u64) -> Option<&mut Session> {
        self.sessions.iter_mut().find(|s| s.exec == exec)
    }
}

fn push_bounded(s: &mut Session, bytes: &[u8]) {
    s.output.extend(bytes);
    let excess = s.output.len().saturating_sub(MAX_OUTPUT);
    if excess > 0 {
        s.output.drain(..excess);
        s.base += excess as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_session_runs_and_reports_its_end_after_its_output() {
        let mut e = Execs::default();
        let n = e.start("web", argv(&["id"])).unwrap();
        assert_eq!(
            e.take_pending(),
            [Spawn {
                exec: n,
                container: "web".into(),
                argv: argv(&["id"])
            }]
        );
        e.spawned(n, 42);
        assert!(e.take_pending().is_empty());
        assert_eq!(e.by_pid(42), Some(n));
        e.output(n, b"uid=0(root)\n");
        let c = e.read(n, 0).unwrap();
        assert_eq!(
            (c.output.as_str(), c.next, c.exit_status),
            ("uid=0(root)\n", 12, None)
        );
        let now = Instant::now();
        e.output(n, b"more");
        e.ended(n, 3, now);
        // The end is reported only with the last bytes.
        let c = e.read(n, 12).unwrap();
        assert_eq!((c.output.as_str(), c.exit_status), ("more", Some(3)));
        e.expire(now);
        assert_eq!(e.read(n, 16), Err(ExecError::Unknown(n)));
    }

    #[test]
    fn output_is_bounded_and_drops_are_counted() {
        let mut e = Execs::default();
        let n = e.start("web", argv(&["yes"])).unwrap();
        e.spawned(n, 7);
        let block = vec![b'y'; MAX_OUTPUT];
        e.output(n, &block);
        e.output(n, b"tail");
        assert_eq!(e.buffered(), MAX_OUTPUT);
        let c = e.read(n, 0).unwrap();
        assert_eq!(c.dropped, 4);
        assert_eq!(c.output.len(), MAX_CHUNK);
        assert_eq!(c.next, 4 + MAX_CHUNK as u64);
        // Asking past the end gives nothing and stays at the end.
        let c = e.read(n, u64::MAX).unwrap();
        assert_eq!((c.output.len(), c.next), (0, 4 + MAX_OUTPUT as u64));
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let mut e = Execs::default();
        let start = Instant::now();
        for i in 0..MAX_SESSIONS {
            let n = e.start("web", argv(&["sleep"])).unwrap();
            e.spawned(n, i32::try_from(i).unwrap() + 100);
        }
        assert_eq!(e.start("web", argv(&["x"])), Err(ExecError::Full));
        // An unread ended session lingers, then goes.
        e.ended(1, 0, start);
        e.expire(start + Duration::from_secs(1));
        assert!(e.read(1, 0).is_ok());
        assert_eq!(e.next_deadline(), Some(start + LINGER));
        e.expire(start + LINGER);
        assert_eq!(e.read(1, 0), Err(ExecError::Unknown(1)));
        assert!(e.start("web", argv(&["x"])).is_ok());
    }

    #[test]
    fn kills_go_to_running_processes_only() {
        let mut e = Execs::default();
        let n = e.start("web", argv(&["sleep"])).unwrap();
        e.kill(n, 2).unwrap();
        // Killed before it was spawned: it never is.
        assert!(e.take_pending().is_empty());
        assert!(e.take_signals().is_empty());
        assert_eq!(e.read(n, 0).unwrap().exit_status, Some(130));
        let m = e.start("web", argv(&["sleep"])).unwrap();
        e.spawned(m, 9);
        e.kill(m, 2).unwrap();
        assert_eq!(e.take_signals(), [(9, 2)]);
        e.ended(m, 130, Instant::now());
        assert_eq!(e.kill(m, 2), Err(ExecError::Ended(m)));
        assert_eq!(e.kill(99, 2), Err(ExecError::Unknown(99)));
        e.spawn_failed(m, "x", Instant::now());
    }

    #[test]
    fn a_failed_spawn_says_why() {
        let mut e = Execs::default();
        let n = e.start("web", argv(&["id"])).unwrap();
        e.spawn_failed(
            n,
            "cannot run /usr/libexec/keel-shim: not found",
            Instant::now(),
        );
        let c = e.read(n, 0).unwrap();
        assert!(c.output.contains("not found"));
        assert_eq!(c.exit_status, Some(127));
    }
}
