//! Starting `keel-shim run <bundle> <id>` and reading its three pipes (the container's stdout
//! and stderr, and the shim's status events) without ever blocking PID 1.

use keel_bundle::{SHIM_PATH, SHIM_STATUS_FD_ENV, ShimEvent};
use keel_supervisor::output::LineBuffer;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

/// The descriptor number the status pipe gets in the shim.
const STATUS_FD: i32 = 3;
/// Bytes read from one pipe per wake-up, so a flooding container cannot starve the others.
const READ_BUDGET: usize = 64 * 1024;
/// Longest output line kept whole.
const MAX_LINE: usize = 4096;

/// Which pipe of a shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    Status,
}

struct Pipe {
    file: File,
    lines: LineBuffer,
}

/// What came out of a pipe.
pub enum Item {
    /// A line of container output.
    Output(String),
    /// A status event from the shim.
    Event(ShimEvent),
}

/// One running (or just ended) shim and its pipes.
pub struct ShimIo {
    /// The supervisor record it runs.
    pub index: usize,
    pub pid: i32,
    /// The shim was reaped; the pipes may still hold output.
    pub reaped: bool,
    pipes: [Option<Pipe>; 3],
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
        Stream::Status => 2,
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    // Only our read end is non-blocking; the writer (the container) keeps blocking semantics.
    nix::fcntl::fcntl(
        w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok((r, w))
}

impl ShimIo {
    /// Starts the shim for record `index`.
    pub fn spawn(index: usize, bundle: &Path, id: &str) -> std::io::Result<ShimIo> {
        let mut cmd = Command::new(SHIM_PATH);
        cmd.arg("run").arg(bundle).arg(id);
        Self::start(index, cmd)
    }

    /// Runs `cmd` with the shim's environment: stdin `/dev/null`, stdout and stderr and the
    /// status descriptor on pipes we read, a minimal environment, a clean signal state.
    fn start(index: usize, mut cmd: Command) -> std::io::Result<ShimIo> {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (st_r, st_w) = pipe()?;
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env(SHIM_STATUS_FD_ENV, STATUS_FD.to_string())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        let child = crate::sys::spawn_clean(&mut cmd, Some((st_w.as_raw_fd(), STATUS_FD)))?;
        // Our copies of the write ends close here (st_w explicitly, the others with `cmd`), so
        // the pipes see end-of-file when the shim and container are gone.
        drop(st_w);
        drop(cmd);
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let pipe = |fd: OwnedFd| {
            Some(Pipe {
                file: File::from(fd),
                lines: LineBuffer::new(MAX_LINE),
            })
        };
        Ok(ShimIo {
            index,
            pid,
            reaped: false,
            pipes: [pipe(out_r), pipe(err_r), pipe(st_r)],
        })
    }

    /// The pipes still open, for poll.
    pub fn fds(&self) -> Vec<(BorrowedFd<'_>, Stream)> {
        [Stream::Stdout, Stream::Stderr, Stream::Status]
            .into_iter()
            .filter_map(|s| self.pipes[slot(s)].as_ref().map(|p| (p.file.as_fd(), s)))
            .collect()
    }

    /// Whether every pipe is closed and the shim reaped: nothing more will come.
    pub fn finished(&self) -> bool {
        self.reaped && self.pipes.iter().all(Option::is_none)
    }

    /// Reads what `stream` has (up to a budget, or all of it with `drain`) and returns the
    /// lines or events. Closes the pipe at end-of-file.
    pub fn read(&mut self, stream: Stream, drain: bool) -> Vec<Item> {
        let mut items = Vec::new();
        let Some(pipe) = self.pipes[slot(stream)].as_mut() else {
            return items;
        };
        let mut buf = [0u8; 8192];
        let mut budget = READ_BUDGET;
        let mut eof = false;
        let mut push = |line: &str| {
            if stream == Stream::Status {
                match serde_json::from_str::<ShimEvent>(line) {
                    Ok(e) => items.push(Item::Event(e)),
                    Err(e) => log::warn!("bad status line from shim: {e}: {line}"),
                }
            } else {
                items.push(Item::Output(line.to_owned()));
            }
        };
        while drain || budget > 0 {
            match pipe.file.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    pipe.lines.push(&buf[..n], &mut push);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("shim pipe: {e}");
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            pipe.lines.finish(&mut push);
            self.pipes[slot(stream)] = None;
        }
        items
    }
}

/// One `keel-shim exec CONTAINER -- ARGV` PID 1 runs for the console or the host channel: the
/// shim joins the container and applies its user, capabilities and seccomp filter; the
/// command's stdout and stderr share one pipe whose bytes go to the session in
/// [`keel_supervisor::exec::Execs`].
pub struct ExecIo {
    pub exec: u64,
    pub pid: i32,
    output: Option<File>,
}

impl ExecIo {
    pub fn spawn(exec: u64, container: &str, argv: &[String]) -> std::io::Result<ExecIo> {
        let mut cmd = Command::new(SHIM_PATH);
        cmd.arg("exec").arg(container).arg("--").args(argv);
        Self::start(exec, cmd)
    }

    fn start(exec: u64, mut cmd: Command) -> std::io::Result<ExecIo> {
        let (out_r, out_w) = pipe()?;
        let err_w = out_w.try_clone()?;
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        let child = crate::sys::spawn_clean(&mut cmd, None)?;
        drop(cmd);
        Ok(ExecIo {
            exec,
            pid: i32::try_from(child.id()).unwrap_or(i32::MAX),
            output: Some(File::from(out_r)),
        })
    }

    /// The output pipe while open.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.output.as_ref().map(AsFd::as_fd)
    }

    /// What the pipe holds now (up to a budget, or all of it with `drain`); closes it at
    /// end-of-file.
    pub fn read(&mut self, drain: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        let Some(pipe) = self.output.as_mut() else {
            return bytes;
        };
        let mut buf = [0u8; 8192];
        let mut eof = false;
        while drain || bytes.len() < READ_BUDGET {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("exec pipe: {e}");
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            self.output = None;
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::Pid;

    fn sh(script: &str) -> ShimIo {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        ShimIo::start(7, cmd).unwrap()
    }

    /// Reads `stream` until end-of-file (the test child exits quickly).
    fn read_all(io: &mut ShimIo, stream: Stream) -> Vec<Item> {
        let mut items = Vec::new();
        for _ in 0..500 {
            items.extend(io.read(stream, false));
            if io.pipes[slot(stream)].is_none() {
                return items;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no end-of-file on {stream:?}");
    }

    fn lines(items: Vec<Item>) -> Vec<String> {
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Output(l) => Some(l),
                Item::Event(_) => None,
            })
            .collect()
    }

    #[test]
    fn pipes_carry_output_and_events() {
        let mut io = sh(r#"echo out1; echo err1 >&2; printf 'partial'
            echo '{"event":"started","pid":5}' >&$KEEL_SHIM_STATUS_FD
            echo 'garbage' >&$KEEL_SHIM_STATUS_FD
            echo '{"event":"exited","status":0}' >&$KEEL_SHIM_STATUS_FD"#);
        assert_eq!(io.index, 7);
        assert_eq!(
            lines(read_all(&mut io, Stream::Stdout)),
            ["out1", "partial"]
        );
        assert_eq!(lines(read_all(&mut io, Stream::Stderr)), ["err1"]);
        let events: Vec<ShimEvent> = read_all(&mut io, Stream::Status)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                Item::Output(_) => None,
            })
            .collect();
        assert_eq!(
            events,
            [
                ShimEvent::Started { pid: 5 },
                ShimEvent::Exited {
                    status: 0,
                    oom_killed: false
                }
            ]
        );
        assert!(io.fds().is_empty());
        assert!(!io.finished(), "not reaped yet");
        let status = waitpid(Pid::from_raw(io.pid), None).unwrap();
        assert_eq!(status, WaitStatus::Exited(Pid::from_raw(io.pid), 0));
        io.reaped = true;
        assert!(io.finished());
    }

    #[test]
    fn child_gets_a_clean_signal_mask_and_the_status_fd() {
        let mut block = SigSet::empty();
        block.add(Signal::SIGUSR1);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&block), None).unwrap();
        let mut io = sh("grep SigBlk /proc/self/status; ls /proc/self/fd | tr '\\n' ' '");
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&block), None).unwrap();
        let out = lines(read_all(&mut io, Stream::Stdout));
        assert_eq!(out[0], "SigBlk:\t0000000000000000");
        assert!(
            out[1].split_whitespace().any(|fd| fd == "3"),
            "status fd: {out:?}"
        );
        waitpid(Pid::from_raw(io.pid), None).unwrap();
    }

    #[test]
    fn a_flood_is_read_in_bounded_slices() {
        let mut io = sh("head -c 300000 /dev/zero | tr '\\0' 'x'; echo");
        let mut first = Vec::new();
        for _ in 0..500 {
            first = io.read(Stream::Stdout, false);
            if !first.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let bytes: usize = lines(first).iter().map(String::len).sum();
        assert!(bytes > 0 && bytes <= READ_BUDGET + 8192, "{bytes}");
        let rest: usize = lines(read_all(&mut io, Stream::Stdout))
            .iter()
            .map(String::len)
            .sum();
        assert_eq!(bytes + rest, 300_000);
        waitpid(Pid::from_raw(io.pid), None).unwrap();
    }

    #[test]
    fn exec_output_shares_one_pipe_and_ends() {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("echo out; echo err >&2; exit 3");
        let mut io = ExecIo::start(5, cmd).unwrap();
        let mut got = Vec::new();
        for _ in 0..500 {
            got.extend(io.read(false));
            if io.fd().is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(io.fd().is_none(), "no end-of-file");
        assert_eq!(String::from_utf8_lossy(&got), "out\nerr\n");
        let status = waitpid(Pid::from_raw(io.pid), None).unwrap();
        assert_eq!(status, WaitStatus::Exited(Pid::from_raw(io.pid), 3));
    }
}
