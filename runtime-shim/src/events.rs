//! Reporting to the parent: [`ShimEvent`] JSON lines on the status fd, and the `log` logger
//! that turns the shim's (and libcontainer's, through `tracing`'s `log` feature) records into
//! `log` events there, or into lines on stderr when there is no status fd.
//!
//! The sink is a raw fd written with one `write(2)` per line: no locks, so the logger also
//! works in libcontainer's cloned intermediate and init processes.

use std::os::fd::RawFd;
use std::sync::OnceLock;

use keel_bundle::{SHIM_STATUS_FD_ENV, ShimEvent};

use crate::sys;

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// JSON lines on this fd (the status pipe).
    StatusFd(RawFd),
    /// No status fd: log records as text on stderr, other events dropped.
    Stderr,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Reads [`SHIM_STATUS_FD_ENV`] and returns the sink it names (stderr without one, or when
/// the value is not an open fd).
pub fn sink_from_env() -> Sink {
    std::env::var(SHIM_STATUS_FD_ENV)
        .ok()
        .and_then(|v| parse_fd(&v))
        .filter(|fd| sys::fd_is_open(*fd))
        .map_or(Sink::Stderr, Sink::StatusFd)
}

fn parse_fd(value: &str) -> Option<RawFd> {
    value.trim().parse::<RawFd>().ok().filter(|fd| *fd > 2)
}

/// Installs the sink and the logger. `level` caps what is reported.
pub fn init(sink: Sink, level: log::LevelFilter) {
    if let Sink::StatusFd(fd) = sink {
        // The payload must not inherit the status pipe (libcontainer also marks fds >= 3
        // close-on-exec, but hooks fork+exec from this process).
        let _ = sys::set_cloexec(fd);
    }
    let _ = SINK.set(sink);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Sends one event to the parent. Errors are ignored: the parent may be gone, and the shim
/// must still clean up.
pub fn report(event: &ShimEvent) {
    match SINK.get().copied().unwrap_or(Sink::Stderr) {
        Sink::StatusFd(fd) => {
            if let Ok(mut line) = serde_json::to_vec(event) {
                line.push(b'\n');
                let _ = sys::write_all_raw(fd, &line);
            }
        }
        Sink::Stderr => {
            if let ShimEvent::Log { level, message } = event {
                let line = format!("keel-shim: {level}: {message}\n");
                let _ = sys::write_all_raw(2, line.as_bytes());
            }
        }
    }
}

/// The level name used in `log` events.
pub fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

struct Logger;

static LOGGER: Logger = Logger;

/// Longest message forwarded; libcontainer's debug records can carry a whole spec.
const MAX_MESSAGE: usize = 4000;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let level = effective_level(record.target(), &text, record.level());
        if level > log::max_level() {
            return;
        }
        let mut message = if record.target().starts_with("keel_shim") {
            text
        } else {
            format!("{}: {text}", record.target())
        };
        truncate_at_char(&mut message, MAX_MESSAGE);
        report(&ShimEvent::Log {
            level: level_name(level).to_owned(),
            message,
        });
    }

    fn flush(&self) {}
}

/// libcontainer records that say nothing useful to an operator here, demoted to debug:
/// its seccomp warnings (the shim installs the filters itself), per-container chatter, and
/// controllers it does not know.
const DEMOTED: [&str; 4] = [
    "seccomp not available",
    "cgroup manager V2 will be used",
    "close_range; preserve_fds",
    "is not yet implemented",
];

fn effective_level(target: &str, message: &str, level: log::Level) -> log::Level {
    let foreign = !target.starts_with("keel_shim");
    if foreign && level >= log::Level::Warn && DEMOTED.iter().any(|d| message.contains(d)) {
        log::Level::Debug
    } else {
        level
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_values_parse() {
        assert_eq!(parse_fd("7"), Some(7));
        assert_eq!(parse_fd(" 12\n"), Some(12));
        assert_eq!(parse_fd("2"), None, "stdio is never the status fd");
        assert_eq!(parse_fd("x"), None);
    }

    #[test]
    fn truncation_keeps_utf8() {
        let mut s = "ééé".to_owned();
        truncate_at_char(&mut s, 3);
        assert_eq!(s, "é…");
        let mut short = "ok".to_owned();
        truncate_at_char(&mut short, 3);
        assert_eq!(short, "ok");
    }

    #[test]
    fn libcontainer_noise_is_demoted() {
        let l = effective_level(
            "libcontainer::process::init::process",
            "seccomp not available, unable to set seccomp privileges!",
            log::Level::Warn,
        );
        assert_eq!(l, log::Level::Debug);
        let l = effective_level("libcontainer::x", "failed to mount", log::Level::Error);
        assert_eq!(l, log::Level::Error);
        let l = effective_level("keel_shim::run", "seccomp not available", log::Level::Warn);
        assert_eq!(l, log::Level::Warn);
    }

    #[test]
    fn levels_match_the_contract() {
        assert_eq!(level_name(log::Level::Error), "error");
        assert_eq!(level_name(log::Level::Warn), "warn");
    }
}
