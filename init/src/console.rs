//! The prompt PID 1 serves on `/dev/console` when the YAML asks for one (`console: inspect` or
//! `admin`): the terminal in raw mode, typed bytes into the supervisor's [`Session`], its
//! output queued and written without ever blocking PID 1 (a serial line drains slowly, and a
//! flow-controlled one may not drain at all). Also `containers/system.json`, where the setting
//! comes from.

use keel_bundle::{ConsoleSettings, MAX_SYSTEM_FILE, System};
use keel_supervisor::prompt::{Handler, Session};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

/// Most bytes of prompt output waiting for the terminal; past it, output is dropped (and said
/// so) rather than held: a terminal nobody reads must not grow PID 1.
pub const MAX_PENDING: usize = 1024 * 1024;
/// Bytes read from the terminal per wake-up.
const READ_CHUNK: usize = 4096;

/// Why `system.json` was not used.
#[derive(Debug, thiserror::Error)]
pub enum SystemFileError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_SYSTEM_FILE} bytes")]
    TooLarge { path: String },
    #[error("{path} is not valid")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the system settings at `path`: absent means the defaults; a file that is too large,
/// not UTF-8 or not valid is an error (the caller keeps the defaults, which serve no prompt).
pub fn read_system(path: &Path) -> Result<System, SystemFileError> {
    let shown = || path.display().to_string();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(System::default()),
        Err(source) => {
            return Err(SystemFileError::Read {
                path: shown(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_SYSTEM_FILE.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| SystemFileError::Read {
            path: shown(),
            source,
        })?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_SYSTEM_FILE {
        return Err(SystemFileError::TooLarge { path: shown() });
    }
    let text = String::from_utf8(bytes).map_err(|e| SystemFileError::Read {
        path: shown(),
        source: std::io::Error::new(ErrorKind::InvalidData, e),
    })?;
    System::from_json(&text).map_err(|source| SystemFileError::Parse {
        path: shown(),
        source,
    })
}

/// The console prompt.
pub struct Console {
    tty: File,
    session: Session,
    /// Output not yet written.
    pending: Vec<u8>,
    /// Output was dropped since the terminal last accepted some: say so when it drains.
    dropped: bool,
    /// The greeting is out: from then on log lines redraw the prompt (before it, the boot's
    /// messages would each be followed by a prompt nobody asked for yet).
    greeted: bool,
}

impl Console {
    /// Opens `path` (the console) and shows the first prompt; `None` when the settings serve
    /// no prompt or the terminal cannot be used (logged).
    pub fn open(path: &Path, settings: ConsoleSettings) -> Option<Console> {
        if settings.prompt.is_none() {
            return None;
        }
        let tty = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                log::error!("console prompt: cannot open {}: {e}", path.display());
                return None;
            }
        };
        if let Err(e) = crate::sys::raw_terminal(tty.as_fd()) {
            // Not a terminal (a pipe in tests, a console driver without termios): the prompt
            // still works, with the terminal's own echo.
            log::warn!(
                "console prompt: cannot set raw mode on {}: {e}",
                path.display()
            );
        }
        Some(Console {
            tty,
            session: Session::new(settings.prompt, settings.raw),
            pending: Vec::new(),
            dropped: false,
            greeted: false,
        })
    }

    /// The greeting and the first prompt (once the boot's messages are out; typing works
    /// before).
    pub fn greet(&mut self) {
        let mut out = Vec::new();
        self.session.start(&mut out);
        self.greeted = true;
        self.queue(&out);
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.tty.as_fd()
    }

    /// Whether output waits for the terminal (poll for POLLOUT).
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When [`Console::tick`] has work (a follow mode's next refresh).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.session.next_deadline()
    }

    /// Whether the prompt line is what the terminal shows last (log lines must redraw it).
    pub fn showing_prompt(&self) -> bool {
        self.greeted && self.session.showing_prompt() && self.pending.is_empty()
    }

    /// Reads what was typed and acts on it.
    pub fn readable(&mut self, now: Instant, handler: Handler<'_>) {
        let mut buf = [0u8; READ_CHUNK];
        match self.tty.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let mut out = Vec::new();
                self.session.input(&buf[..n], now, handler, &mut out);
                self.queue(&out);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => log::debug!("console prompt: read: {e}"),
        }
    }

    /// Refreshes a follow mode when due.
    pub fn tick(&mut self, now: Instant, handler: Handler<'_>) {
        let mut out = Vec::new();
        self.session.tick(now, handler, &mut out);
        self.queue(&out);
    }

    /// Writes the prompt again (after log lines overwrote it).
    pub fn redraw(&mut self) {
        let mut out = Vec::new();
        self.session.redraw(&mut out);
        self.queue(&out);
    }

    /// Writes what the terminal accepts now.
    pub fn writable(&mut self) {
        if let Err(e) = crate::queued::write_pending(&mut self.tty, &mut self.pending) {
            log::debug!("console prompt: write: {e}");
            self.pending.clear();
            return;
        }
        if !self.pending.is_empty() {
            return;
        }
        if self.dropped {
            self.dropped = false;
            self.pending.extend_from_slice(
                b"\r\n[console output dropped: the terminal was not reading]\r\n",
            );
            self.redraw();
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        if self.pending.len().saturating_add(bytes.len()) > MAX_PENDING {
            self.dropped = true;
            return;
        }
        self.pending.extend_from_slice(bytes);
        self.writable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_bundle::ControlGrant;
    use keel_supervisor::protocol::{Request, Response};
    use std::io::Write;

    #[test]
    fn system_file_absent_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = read_system(&dir.path().join("system.json")).unwrap();
        assert_eq!(s, System::default());
        assert!(s.console.prompt.is_none());
    }

    #[test]
    fn system_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("system.json");
        std::fs::write(
            &path,
            r#"{"console":{"prompt":"admin","raw":true},"health":{"timeout":60000,"stable":500}}"#,
        )
        .unwrap();
        let s = read_system(&path).unwrap();
        assert_eq!(s.console.prompt, ControlGrant::Admin);
        assert!(s.console.raw);
        let health = s.health.unwrap();
        assert_eq!(health.timeout, Some(std::time::Duration::from_secs(60)));
        assert_eq!(health.stable, Some(std::time::Duration::from_millis(500)));
    }

    #[test]
    fn hostile_system_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("system.json");
        let huge = format!(
            r#"{{"console":{{"prompt":"inspect"}},"pad":"{}"}}"#,
            "x".repeat(usize::try_from(MAX_SYSTEM_FILE).unwrap())
        );
        std::fs::write(&path, huge).unwrap();
        assert!(matches!(
            read_system(&path),
            Err(SystemFileError::TooLarge { .. })
        ));
        for bad in [
            &b"{\"console\":{\"prompt\":\"root\"}}"[..],
            b"{\"console\":{\"prompt\":\"admin\"},\"shell\":true}",
            b"\xff\xfe{}",
            b"[]",
            b"{\"console\":",
            b"{\"health\":{\"timeout\":\"1h\"}}",
            b"{\"health\":{\"timeout\":-1}}",
            b"{\"health\":{\"timeout\":1e30}}",
            b"{\"health\":{\"forever\":true}}",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = read_system(&path).unwrap_err();
            assert!(e.to_string().contains("system.json"), "{bad:?} gave {e}");
        }
        // A directory where the file should be.
        let d = dir.path().join("dir.json");
        std::fs::create_dir(&d).unwrap();
        assert!(read_system(&d).is_err());
    }

    /// A console on a pipe pair: what it writes, what it answers.
    #[test]
    fn prompt_answers_over_a_descriptor_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO stands in for the terminal: not a tty, so raw mode is skipped (logged).
        let fifo = dir.path().join("tty");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Hold a reader so opening for write does not fail, and read what the console writes.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let settings = ConsoleSettings {
            prompt: ControlGrant::Inspect,
            raw: false,
        };
        let mut console = Console::open(&fifo, settings).unwrap();
        console.greet();
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        let mut drain = |reader: &mut File, seen: &mut Vec<u8>| {
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
        };
        drain(&mut reader, &mut seen);
        let text = String::from_utf8_lossy(&seen).into_owned();
        assert!(text.contains("keel console (inspect)"), "{text}");
        assert!(text.contains("keel> "), "{text}");

        // Input the console reads: here written into the same FIFO by the test (the console
        // reads what it finds), asking for the timeline.
        let mut asked = Vec::new();
        let mut handler = |r: Request| {
            asked.push(r);
            Response::Timeline { steps: Vec::new() }
        };
        {
            let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
            // Drain the greeting first so the console reads our bytes, not its own.
            writer.write_all(b"timeline\r").unwrap();
        }
        console.readable(Instant::now(), &mut handler);
        assert_eq!(asked, vec![Request::Timeline]);

        // Nobody reads: output piles up to the bound and is then dropped, never blocking.
        for _ in 0..2000 {
            console.queue(&[b'x'; 4096]);
        }
        assert!(console.pending.len() <= MAX_PENDING);
        assert!(console.dropped);
        for _ in 0..100 {
            drain(&mut reader, &mut seen);
            console.writable();
            if console.pending.is_empty() && !console.dropped {
                break;
            }
        }
        drain(&mut reader, &mut seen);
        let text = String::from_utf8_lossy(&seen).into_owned();
        assert!(text.contains("console output dropped"), "{}", text.len());
    }
}
