//! `keel ctl`: the host end of keel's control channel. This module owns finding a VM's
//! channel socket (a socket, a state directory or a build prefix), the tagged exchange with the
//! guest's PID 1 over it — QEMU relays the socket to the virtio-serial port
//! [`keel_bundle::HOST_CHANNEL`] (see [`crate::run`]), one `Tagged<Request>` JSON line out and
//! lines in until the one carrying the same tag — and the verbs that take more than one
//! request: `logs -f`, `top` and `exec`. What the verbs are, how they parse and how answers
//! print is [`keel_supervisor::cli`]'s, shared with `keelctl` and the guest's console.

use crate::run::{CONTROL_SOCKET, default_state_dir};
use keel_supervisor::cli::{self, Command};
use keel_supervisor::protocol::{Request, Response, Tagged};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for each answer unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line read from the channel (bytes, newline excluded); the guest's answers are far
/// smaller, so a longer one means something else writes there.
pub const MAX_LINE: usize = 8 * 1024 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Exit status after ctrl-c (128 + SIGINT, what a shell reports for `keelctl` killed by it).
const INTERRUPTED: u8 = 130;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}\n\n{usage}", usage = usage())]
    Usage(String),
    #[error("invalid --timeout {0:?}: expected a positive number of seconds")]
    Timeout(String),
    #[error("no control socket at {path}: is the VM running (keel run qemu {prefix})?")]
    NoSocket { path: PathBuf, prefix: String },
    #[error("nothing listens on {path}: is the VM running (keel run qemu {prefix})?")]
    NotListening { path: PathBuf, prefix: String },
    #[error("permission denied on {0}: the VM is another user's")]
    PermissionDenied(PathBuf),
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control channel i/o")]
    Io(#[source] io::Error),
    #[error(
        "no answer from the guest within {}s (has it booted? is PID 1 keel's init?)",
        seconds(.0)
    )]
    NoAnswer(Duration),
    #[error("the control channel closed (has the VM stopped?)")]
    Closed,
    #[error("a line from the control channel is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    /// The guest's error answer, as it said it.
    #[error("{0}")]
    Guest(String),
    #[error("unexpected answer from the guest: {0}")]
    Unexpected(String),
    #[error("interrupted")]
    Interrupted,
    #[error("cannot catch ctrl-c")]
    Signal(#[source] nix::Error),
}

/// `keel ctl`'s usage line and the verbs.
pub fn usage() -> String {
    format!(
        "usage: keel ctl [--json] [--timeout SECS] TARGET <command> [args]\n\n\
         TARGET is the VM's control socket, its state directory or the build prefix it was\n\
         booted from (PREFIX-state/{CONTROL_SOCKET}).\n\n{}\n\n\
         --json prints JSON instead of tables (for logs: one object per line).",
        cli::COMMANDS
    )
}

fn seconds(d: &Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}

/// `--timeout`: seconds, fractions allowed.
pub fn parse_timeout(s: &str) -> Result<Duration, Error> {
    s.parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n).ok())
        .ok_or_else(|| Error::Timeout(s.to_owned()))
}

/// What `keel ctl` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub json: bool,
    /// Output goes to a terminal: what containers wrote is shown escaped ([`cli::sanitize`]),
    /// so their escape sequences cannot drive the operator's terminal.
    pub terminal: bool,
    /// How long to wait for each answer.
    pub timeout: Duration,
    pub command: Command,
}

impl Options {
    /// The words after TARGET: the verb and its arguments, with `--json` taken out wherever it
    /// is before an exec's command (as `keelctl` does).
    pub fn parse(words: &[String], json: bool, timeout: Duration) -> Result<Options, Error> {
        let mut json = json;
        let mut kept: Vec<String> = Vec::with_capacity(words.len());
        for (i, word) in words.iter().enumerate() {
            // Everything after `exec NAME` belongs to the command run in the container.
            if kept.len() >= 2 && kept[0] == "exec" {
                kept.extend(words[i..].iter().cloned());
                break;
            }
            match word.as_str() {
                "--json" => json = true,
                "-h" | "--help" => kept.insert(0, "help".to_owned()),
                _ => kept.push(word.clone()),
            }
        }
        let command = cli::parse(&kept).map_err(Error::Usage)?;
        Ok(Options {
            json,
            terminal: false,
            timeout,
            command,
        })
    }
}

/// Where a VM's control socket is, and the build prefix to name in hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub socket: PathBuf,
    pub prefix: String,
}

impl Target {
    /// An existing socket is used as it is; a directory is a state directory, holding
    /// [`CONTROL_SOCKET`]; anything else is a build prefix, whose state directory is
    /// `PREFIX-state` (as [`crate::run::state_dir`] has it without `--state`).
    pub fn resolve(target: &Path) -> Target {
        let is_socket = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket && !target.is_dir() {
            return Target {
                socket: default_state_dir(target).join(CONTROL_SOCKET),
                prefix: target.display().to_string(),
            };
        }
        let socket = if is_socket {
            target.to_owned()
        } else {
            target.join(CONTROL_SOCKET)
        };
        let prefix = socket
            .parent()
            .and_then(|dir| dir.to_str())
            .and_then(|dir| dir.strip_suffix("-state"))
            .filter(|p| !p.is_empty())
            .unwrap_or("PREFIX")
            .to_owned();
        Target { socket, prefix }
    }
}

/// ctrl-c presses since [`catch_ctrl_c`].
static CTRL_C: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_ctrl_c(_: nix::libc::c_int) {
    CTRL_C.fetch_add(1, Ordering::Relaxed);
}

fn ctrl_c_presses() -> u32 {
    CTRL_C.load(Ordering::Relaxed)
}

/// Counts SIGINT instead of dying of it. No `SA_RESTART`: a wait for an answer returns at once
/// (EINTR) to look at the count.
fn catch_ctrl_c() -> Result<(), Error> {
    crate::sys::catch_sigint(count_ctrl_c).map_err(Error::Signal)
}

/// A fresh tag for a request: random (std seeds its hash keys from the OS), never 0, which
/// the guest uses for answers to requests it could not read.
fn random_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// A connection to a VM's control channel.
pub struct Channel {
    stream: UnixStream,
    timeout: Duration,
    /// Bytes read and not yet taken as lines.
    input: Vec<u8>,
    /// ctrl-c presses so far (a counter, for tests to stand in).
    presses: fn() -> u32,
    /// After this many presses a wait for an answer gives up with [`Error::Interrupted`].
    give_up_at: u32,
}

impl Channel {
    /// Connects to `target`'s socket; each answer is then awaited for `timeout`.
    pub fn connect(target: &Target, timeout: Duration) -> Result<Channel, Error> {
        let stream = UnixStream::connect(&target.socket).map_err(|source| {
            let path = target.socket.clone();
            let prefix = target.prefix.clone();
            match source.kind() {
                ErrorKind::NotFound => Error::NoSocket { path, prefix },
                ErrorKind::ConnectionRefused => Error::NotListening { path, prefix },
                ErrorKind::PermissionDenied => Error::PermissionDenied(path),
                _ => Error::Connect { path, source },
            }
        })?;
        stream.set_write_timeout(Some(timeout)).map_err(Error::Io)?;
        let mut channel = Channel {
            stream,
            timeout,
            input: Vec::new(),
            presses: ctrl_c_presses,
            give_up_at: u32::MAX,
        };
        // Ends whatever a client killed mid-request left of a line; the guest skips blank lines.
        channel.send(b"\n")?;
        Ok(channel)
    }

    /// Sends `request` and returns the guest's answer to it (an error answer included),
    /// skipping lines that are not answers or answer other requests.
    pub fn call(&mut self, request: &Request) -> Result<Response, Error> {
        let tag = random_tag();
        let mut line = serde_json::to_vec(&Tagged { tag, body: request }).map_err(Error::Encode)?;
        line.push(b'\n');
        self.send(&line)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let line = self.read_line(deadline)?;
            match serde_json::from_slice::<Tagged<Response>>(&line) {
                Ok(answer) if answer.tag == tag => return Ok(answer.body),
                Ok(answer) => log::debug!("skipped an answer to another request ({})", answer.tag),
                Err(e) => log::debug!("skipped a line that is no answer: {e}"),
            }
        }
    }

    /// [`Channel::call`], with an error answer as [`Error::Guest`].
    pub fn request(&mut self, request: &Request) -> Result<Response, Error> {
        match self.call(request)? {
            Response::Error { message } => Err(Error::Guest(message)),
            answer => Ok(answer),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::NoAnswer(self.timeout),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => Error::Closed,
            _ => Error::Io(e),
        })
    }

    /// The next line (newline removed), waiting until `deadline`.
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, Error> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.input[scanned..].iter().position(|&b| b == b'\n') {
                if scanned + i > MAX_LINE {
                    return Err(Error::TooLong);
                }
                let mut line: Vec<u8> = self.input.drain(..=scanned + i).collect();
                line.pop();
                return Ok(line);
            }
            scanned = self.input.len();
            if scanned > MAX_LINE {
                return Err(Error::TooLong);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NoAnswer(self.timeout));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(Error::Io)?;
            self.input.resize(scanned + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.input[scanned..]);
            self.input.truncate(scanned + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(Error::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    if (self.presses)() >= self.give_up_at {
                        return Err(Error::Interrupted);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Error::NoAnswer(self.timeout));
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(Error::Closed),
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Waits `d`; `false` when ctrl-c was pressed [`Channel::give_up_at`] times meanwhile.
    fn pause(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if (self.presses)() >= self.give_up_at {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// Runs `opts.command` against the VM at `target`, printing to `out`; returns the exit status.
/// `logs -f` and `exec` catch ctrl-c (see [`logs`] and [`exec`]).
pub fn run(target: &Path, opts: &Options, out: &mut dyn Write) -> Result<u8, Error> {
    if matches!(
        opts.command,
        Command::Logs { follow: true, .. } | Command::Exec { .. }
    ) {
        catch_ctrl_c()?;
    }
    run_with(target, opts, out, ctrl_c_presses)
}

fn run_with(
    target: &Path,
    opts: &Options,
    out: &mut dyn Write,
    presses: fn() -> u32,
) -> Result<u8, Error> {
    if opts.command == Command::Help {
        // Printed like an answer; a closed stdout is not worth an error.
        let _ = writeln!(out, "{}", usage());
        return Ok(0);
    }
    if matches!(opts.command, Command::Version | Command::Update { .. }) {
        return Err(disk_command());
    }
    let mut channel = Channel::connect(&Target::resolve(target), opts.timeout)?;
    channel.presses = presses;
    match &opts.command {
        Command::Help => Ok(0),
        Command::Call(request) => {
            let text = cli::render(channel.call(request)?, opts.json).map_err(Error::Guest)?;
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            Ok(0)
        }
        Command::Logs { id, lines, follow } => {
            channel.give_up_at = 1;
            logs(&mut channel, id, *lines, *follow, opts, out)
        }
        Command::Top => {
            let text = top(&mut channel, opts.json)?;
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            Ok(0)
        }
        Command::Exec { id, argv } => {
            channel.give_up_at = 2;
            exec(&mut channel, id, argv, opts, out)
        }
        Command::Version | Command::Update { .. } => Err(disk_command()),
    }
}

/// `version` and `update` are keelctl's own work on the guest's boot disk, not requests.
fn disk_command() -> Error {
    Error::Guest(
        "version and update read and write the boot disk: run keelctl on the system (keel ctl exec NAME keelctl version), or keel update on a stopped disk".into(),
    )
}

fn unexpected(answer: &Response) -> Error {
    Error::Unexpected(serde_json::to_string(answer).unwrap_or_else(|_| format!("{answer:?}")))
}

/// `top`: two samples [`cli::TOP_SAMPLE`] apart, so CPU shows as a share of one CPU (as
/// `keelctl top`); with `json`, the second sample.
fn top(channel: &mut Channel, json: bool) -> Result<String, Error> {
    let mut sample = || match channel.request(&Request::Top)? {
        Response::Top { init, containers } => Ok((init, containers, Instant::now())),
        other => Err(unexpected(&other)),
    };
    let (_, before, then) = sample()?;
    std::thread::sleep(cli::TOP_SAMPLE);
    let (init, now, at) = sample()?;
    cli::top_view(init, &before, now, at - then, json).map_err(Error::Guest)
}

/// `logs`: the last lines, then (`follow`) new ones as they come, asking every
/// [`cli::FOLLOW_INTERVAL`] from the number the last answer gave, until ctrl-c (exit 130) or a
/// closed stdout (exit 0). With `json`, one object per line (as `keelctl logs`).
fn logs(
    channel: &mut Channel,
    id: &str,
    lines: Option<usize>,
    follow: bool,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let mut after = None;
    loop {
        let request = Request::Logs {
            id: id.to_owned(),
            lines: if after.is_none() { lines } else { None },
            after,
        };
        let (got, next) = match channel.request(&request) {
            Ok(Response::Logs { lines, next }) => (lines, next),
            Ok(other) => return Err(unexpected(&other)),
            Err(Error::Interrupted) => return Ok(INTERRUPTED),
            Err(e) => return Err(e),
        };
        for l in &got {
            let text = cli::log_line(l, opts.json, opts.terminal).map_err(Error::Guest)?;
            // A closed pipe (`keel ctl out/x logs -f web | head`) ends the command quietly.
            if writeln!(out, "{text}").is_err() {
                return Ok(0);
            }
        }
        if out.flush().is_err() || !follow {
            return Ok(0);
        }
        after = Some(next);
        if !channel.pause(cli::FOLLOW_INTERVAL) {
            return Ok(INTERRUPTED);
        }
    }
}

/// `exec`: PID 1 starts the command in the container ([`Request::Exec`]); its output is asked
/// for ([`Request::ExecOutput`]) and printed until it has exited, whose status (128 + signal
/// when killed) is returned. The first ctrl-c sends it SIGINT and keeps waiting; a second one
/// stops waiting (exit 130) and leaves it to run.
fn exec(
    channel: &mut Channel,
    id: &str,
    argv: &[String],
    opts: &Options,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let json = opts.json;
    let request = Request::Exec {
        id: id.to_owned(),
        command: argv.to_vec(),
    };
    let exec = match channel.request(&request) {
        Ok(Response::Exec { exec }) => exec,
        Ok(other) => return Err(unexpected(&other)),
        Err(Error::Interrupted) => return Ok(INTERRUPTED),
        Err(e) => return Err(e),
    };
    let left_running = || {
        eprintln!("keel: not waiting any longer; exec {exec} may still run in {id}");
        Ok(INTERRUPTED)
    };
    let (mut after, mut signalled, mut printing) = (0, false, true);
    loop {
        if !signalled && (channel.presses)() > 0 {
            signalled = true;
            let kill = Request::ExecKill {
                exec,
                signal: nix::sys::signal::Signal::SIGINT as i32,
            };
            match channel.call(&kill) {
                // It may have ended just now: its status comes with the output.
                Ok(Response::Error { message }) => log::debug!("exec {exec}: {message}"),
                Ok(_) => {}
                Err(Error::Interrupted) => return left_running(),
                Err(e) => return Err(e),
            }
        }
        let (output, next, dropped, exit_status) =
            match channel.request(&Request::ExecOutput { exec, after }) {
                Ok(Response::ExecOutput {
                    output,
                    next,
                    dropped,
                    exit_status,
                }) => (output, next, dropped, exit_status),
                Ok(other) => return Err(unexpected(&other)),
                Err(Error::Interrupted) => return left_running(),
                Err(e) => return Err(e),
            };
        if dropped > 0 {
            eprintln!(
                "keel: {dropped} bytes of output were lost (the guest keeps a bounded buffer)"
            );
        }
        // A closed stdout does not end the command; its status is still awaited.
        if printing && !output.is_empty() {
            let text = if opts.terminal {
                cli::sanitize(&output)
            } else {
                std::borrow::Cow::Borrowed(output.as_str())
            };
            printing = out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_ok();
        }
        after = next;
        if let Some(code) = exit_status {
            if json && printing {
                let _ = writeln!(out, "{}", cli::exec_summary(id, code));
            }
            return Ok(u8::try_from(code & 0xff).unwrap_or(1));
        }
        if output.is_empty() && !channel.pause(cli::EXEC_INTERVAL) {
            return left_running();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_supervisor::protocol::{LogLine, ProcessInfo};
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    fn words(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn line<T: serde::Serialize>(tag: u64, body: T) -> String {
        serde_json::to_string(&Tagged { tag, body }).unwrap()
    }

    /// A guest on `dir/ctl.sock`: for each request line it writes the lines `answer` returns
    /// for it (given its tag); returns the requests it got once the client hangs up.
    fn fake_guest(
        dir: &Path,
        mut answer: impl FnMut(u64, &Request) -> Vec<String> + Send + 'static,
    ) -> (PathBuf, JoinHandle<Vec<Request>>) {
        let path = dir.join(CONTROL_SOCKET);
        let listener = UnixListener::bind(&path).unwrap();
        let guest = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut got = Vec::new();
            for text in io::BufReader::new(stream).lines() {
                let Ok(text) = text else { break };
                if text.trim().is_empty() {
                    continue;
                }
                let request: Tagged<Request> = serde_json::from_str(&text).unwrap();
                for out in answer(request.tag, &request.body) {
                    if writer.write_all(format!("{out}\n").as_bytes()).is_err() {
                        break;
                    }
                }
                got.push(request.body);
            }
            got
        });
        (path, guest)
    }

    fn options(a: &[&str]) -> Options {
        Options::parse(&words(a), false, Duration::from_secs(5)).unwrap()
    }

    fn no_presses() -> u32 {
        0
    }

    #[test]
    fn answers_to_others_and_garbage_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, guest) = fake_guest(dir.path(), |tag, request| {
            assert_eq!(request, &Request::Ps { id: "web".into() });
            let mine = Response::Ps {
                processes: vec![ProcessInfo {
                    pid: 42,
                    command: "httpd -f".into(),
                }],
            };
            vec![
                "\u{1}{\"tag\":garbled".to_owned(),
                line(tag.wrapping_add(1), Response::error("not yours")),
                "{\"tag\":1}".to_owned(),
                line(tag, mine),
            ]
        });
        let mut out = Vec::new();
        let code = run_with(&socket, &options(&["ps", "web"]), &mut out, no_presses).unwrap();
        assert_eq!(code, 0);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("PID"), "{out}");
        assert!(out.contains("42") && out.contains("httpd -f"), "{out}");
        assert_eq!(guest.join().unwrap().len(), 1);
    }

    #[test]
    fn json_and_guest_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, guest) = fake_guest(dir.path(), |tag, request| match request {
            Request::Stop { .. } => vec![line(tag, Response::error("no container named x"))],
            _ => vec![line(
                tag,
                Response::Done {
                    message: "rebooting".into(),
                },
            )],
        });
        let mut opts =
            Options::parse(&words(&["reboot", "--json"]), false, Duration::from_secs(5)).unwrap();
        assert!(opts.json);
        let mut out = Vec::new();
        run_with(&socket, &opts, &mut out, no_presses).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["message"], "rebooting");
        drop(guest);

        let dir = tempfile::tempdir().unwrap();
        let (socket, _guest) = fake_guest(dir.path(), |tag, _| {
            vec![line(tag, Response::error("no container named x"))]
        });
        opts.command = Command::Call(Request::Stop { id: "x".into() });
        let err = run_with(&socket, &opts, &mut Vec::new(), no_presses).unwrap_err();
        assert!(matches!(err, Error::Guest(_)), "{err:?}");
        assert_eq!(err.to_string(), "no container named x");
    }

    #[test]
    fn disk_commands_are_refused_before_connecting() {
        // No guest at this path: the refusal must come first, naming where they do run.
        let dir = tempfile::tempdir().unwrap();
        for command in [&["version"][..], &["update", "/dev/vdb"]] {
            let err = run_with(
                &dir.path().join("none"),
                &options(command),
                &mut Vec::new(),
                no_presses,
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("run keelctl on the system"),
                "{command:?}: {err}"
            );
        }
    }

    #[test]
    fn a_silent_guest_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _guest) = fake_guest(dir.path(), |_, _| vec![]);
        let opts = Options {
            timeout: Duration::from_millis(300),
            ..options(&["list"])
        };
        let start = Instant::now();
        let err = run_with(&socket, &opts, &mut Vec::new(), no_presses).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            err.to_string(),
            "no answer from the guest within 0.3s (has it booted? is PID 1 keel's init?)"
        );
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _guest) = fake_guest(dir.path(), |_, _| vec!["x".repeat(MAX_LINE + 1)]);
        let err = run_with(&socket, &options(&["list"]), &mut Vec::new(), no_presses).unwrap_err();
        assert!(matches!(err, Error::TooLong), "{err:?}");
    }

    #[test]
    fn targets_resolve_to_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("out/minimal-state");
        std::fs::create_dir_all(&state).unwrap();
        let socket = state.join(CONTROL_SOCKET);
        let prefix = dir.path().join("out/minimal");
        let hint = prefix.display().to_string();

        // Nothing there yet: each form says where it looked and what to run.
        for target in [&prefix, &state] {
            let t = Target::resolve(target);
            assert_eq!(t.socket, socket);
            assert_eq!(t.prefix, hint);
            let err = Channel::connect(&t, DEFAULT_TIMEOUT).err().unwrap();
            assert_eq!(
                err.to_string(),
                format!(
                    "no control socket at {}: is the VM running (keel run qemu {hint})?",
                    socket.display()
                )
            );
        }
        let elsewhere = Target::resolve(&dir.path().join("vm"));
        assert_eq!(elsewhere.socket, dir.path().join("vm-state/ctl.sock"));

        // A socket left by a VM that is gone.
        drop(UnixListener::bind(&socket).unwrap());
        for target in [&prefix, &state, &socket] {
            let t = Target::resolve(target);
            assert_eq!(t.socket, socket);
            assert_eq!(t.prefix, hint);
            let err = Channel::connect(&t, DEFAULT_TIMEOUT).err().unwrap();
            assert!(matches!(err, Error::NotListening { .. }), "{err:?}");
            assert!(
                err.to_string()
                    .ends_with(&format!("is the VM running (keel run qemu {hint})?")),
                "{err}"
            );
        }
        // A socket anywhere else is taken as it is.
        let other = dir.path().join("other.sock");
        let _listener = UnixListener::bind(&other).unwrap();
        let t = Target::resolve(&other);
        assert_eq!(
            (t.socket.as_path(), t.prefix.as_str()),
            (other.as_path(), "PREFIX")
        );
    }

    #[test]
    fn exec_prints_output_until_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut polls = 0;
        let (socket, guest) = fake_guest(dir.path(), move |tag, request| {
            let chunk = |output: &str, next, exit_status| {
                vec![line(
                    tag,
                    Response::ExecOutput {
                        output: output.into(),
                        next,
                        dropped: 0,
                        exit_status,
                    },
                )]
            };
            match request {
                Request::Exec { .. } => vec![line(tag, Response::Exec { exec: 7 })],
                Request::ExecOutput { exec: 7, .. } => {
                    polls += 1;
                    match polls {
                        1 => chunk("hello ", 6, None),
                        2 => chunk("", 6, None),
                        _ => chunk("world\n", 12, Some(3)),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        });
        let opts = options(&["exec", "web", "sh", "-c", "--json"]);
        let mut out = Vec::new();
        let code = run_with(&socket, &opts, &mut out, no_presses).unwrap();
        assert_eq!(code, 3);
        assert_eq!(String::from_utf8(out).unwrap(), "hello world\n");
        let requests = guest.join().unwrap();
        assert_eq!(
            requests,
            [
                Request::Exec {
                    id: "web".into(),
                    command: words(&["sh", "-c", "--json"])
                },
                Request::ExecOutput { exec: 7, after: 0 },
                Request::ExecOutput { exec: 7, after: 6 },
                Request::ExecOutput { exec: 7, after: 6 },
            ]
        );
    }

    static EXEC_PRESSES: AtomicU32 = AtomicU32::new(0);

    #[test]
    fn ctrl_c_signals_an_exec_once() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, guest) = fake_guest(dir.path(), |tag, request| match request {
            Request::Exec { .. } => {
                EXEC_PRESSES.store(1, Ordering::Relaxed);
                vec![line(tag, Response::Exec { exec: 9 })]
            }
            Request::ExecKill { .. } => vec![line(tag, Response::Done { message: "".into() })],
            Request::ExecOutput { after, .. } => {
                let ended = *after > 0;
                vec![line(
                    tag,
                    Response::ExecOutput {
                        output: if ended { "" } else { "^C" }.into(),
                        next: 2,
                        dropped: 0,
                        exit_status: ended.then_some(130),
                    },
                )]
            }
            other => panic!("unexpected {other:?}"),
        });
        let mut out = Vec::new();
        let code = run_with(
            &socket,
            &options(&["exec", "web", "sleep", "9"]),
            &mut out,
            || EXEC_PRESSES.load(Ordering::Relaxed),
        )
        .unwrap();
        assert_eq!(code, 130);
        let requests = guest.join().unwrap();
        let kills: Vec<_> = requests
            .iter()
            .filter(|r| matches!(r, Request::ExecKill { .. }))
            .collect();
        assert_eq!(kills, [&Request::ExecKill { exec: 9, signal: 2 }]);
        assert_eq!(
            requests.last(),
            Some(&Request::ExecOutput { exec: 9, after: 2 })
        );
    }

    static FOLLOW_PRESSES: AtomicU32 = AtomicU32::new(0);

    #[test]
    fn logs_follow_from_the_next_line_until_ctrl_c() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, guest) = fake_guest(dir.path(), |tag, request| {
            let Request::Logs { after, .. } = request else {
                panic!("unexpected {request:?}");
            };
            let seq = after.unwrap_or(4);
            if after.is_some() {
                FOLLOW_PRESSES.store(1, Ordering::Relaxed);
            }
            vec![line(
                tag,
                Response::Logs {
                    lines: vec![LogLine {
                        seq,
                        line: format!("line {seq}"),
                    }],
                    next: seq + 1,
                },
            )]
        });
        let mut out = Vec::new();
        let code = run_with(
            &socket,
            &options(&["logs", "-f", "-n", "1", "web"]),
            &mut out,
            || FOLLOW_PRESSES.load(Ordering::Relaxed),
        )
        .unwrap();
        assert_eq!(code, 130);
        assert_eq!(String::from_utf8(out).unwrap(), "line 4\nline 5\n");
        assert_eq!(
            guest.join().unwrap(),
            [
                Request::Logs {
                    id: "web".into(),
                    lines: Some(1),
                    after: None
                },
                Request::Logs {
                    id: "web".into(),
                    lines: None,
                    after: Some(5)
                },
            ]
        );
    }

    #[test]
    fn container_escapes_reach_a_terminal_escaped_and_a_pipe_as_written() {
        let answer = |tag| {
            vec![line(
                tag,
                Response::Logs {
                    lines: vec![LogLine {
                        seq: 1,
                        line: "\x1b]0;owned\x07red".into(),
                    }],
                    next: 2,
                },
            )]
        };
        for (terminal, want) in [
            (true, "\\x1b]0;owned\\x07red\n"),
            (false, "\x1b]0;owned\x07red\n"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (socket, _guest) = fake_guest(dir.path(), move |tag, _| answer(tag));
            let opts = Options {
                terminal,
                ..options(&["logs", "web"])
            };
            let mut out = Vec::new();
            run_with(&socket, &opts, &mut out, no_presses).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want,
                "terminal: {terminal}"
            );
        }
    }

    #[test]
    fn words_parse_like_keelctl() {
        assert_eq!(options(&["list"]).command, Command::Call(Request::List));
        assert!(!options(&["list"]).json);
        assert!(options(&["--json", "top"]).json);
        assert_eq!(options(&["--help"]).command, Command::Help);
        // After `exec NAME` every word is the command's.
        let o = options(&["exec", "web", "ls", "--json"]);
        assert!(!o.json);
        assert_eq!(
            o.command,
            Command::Exec {
                id: "web".into(),
                argv: words(&["ls", "--json"])
            }
        );
        let err = Options::parse(&words(&["frobnicate"]), false, DEFAULT_TIMEOUT).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown command frobnicate\n\nusage: keel ctl")
        );
        assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("inf").is_err());
        assert_ne!(random_tag(), random_tag());
    }

    #[test]
    fn help_needs_no_vm() {
        let mut out = Vec::new();
        let code = run_with(
            Path::new("/nonexistent"),
            &options(&["help"]),
            &mut out,
            no_presses,
        )
        .unwrap();
        assert_eq!(code, 0);
        assert!(String::from_utf8(out).unwrap().contains("exec NAME CMD"));
    }
}
