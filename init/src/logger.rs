//! PID 1's one `log::Log`: every record goes to `/dev/kmsg` and to the console (directly, unless
//! the kernel echoes that kmsg record to the console itself). Also the console path for
//! container output, which must never block PID 1 (a serial console drains slowly): that goes
//! through a separate non-blocking descriptor and is dropped when full. Container output is
//! kept out of the kernel log so a chatty service cannot flush the kernel's messages, and shown
//! with control characters escaped (unless the YAML says `console: {raw: true}`), so no
//! container can drive the operator's terminal.
//!
//! When the console prompt is on screen, a line written here first clears it and marks it for
//! the loop to draw again below the line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Longest message written to `/dev/kmsg` (the kernel refuses records above ~1 KiB).
const KMSG_MAX: usize = 1000;

struct Sinks {
    console: Option<File>,
    /// The same console opened non-blocking, for container output.
    console_nb: Option<File>,
    kmsg: Option<File>,
    /// The kernel prints kmsg records below this level to the console itself.
    console_loglevel: u8,
}

struct Logger {
    sinks: Mutex<Sinks>,
    dropped: AtomicU64,
}

/// The console prompt's line is the last thing on the console.
static PROMPT_SHOWN: AtomicBool = AtomicBool::new(false);
/// A line was written over the prompt since the loop last looked.
static PROMPT_OVERWRITTEN: AtomicBool = AtomicBool::new(false);
/// Container output passes unescaped (`console: {raw: true}`).
static RAW: AtomicBool = AtomicBool::new(false);

/// Whether the console prompt is what the console shows last.
pub fn set_prompt_shown(shown: bool) {
    PROMPT_SHOWN.store(shown, Ordering::Relaxed);
}

/// Whether a line was written over the prompt since the last call.
pub fn take_prompt_overwritten() -> bool {
    PROMPT_OVERWRITTEN.swap(false, Ordering::Relaxed)
}

/// Container output to the console unescaped.
pub fn set_raw(raw: bool) {
    RAW.store(raw, Ordering::Relaxed);
}

/// What to write before a console line: the prompt's line cleared, if it is showing.
fn clear_prompt() -> &'static str {
    if PROMPT_SHOWN.swap(false, Ordering::Relaxed) {
        PROMPT_OVERWRITTEN.store(true, Ordering::Relaxed);
        "\r\x1b[K"
    } else {
        ""
    }
}

static LOGGER: Logger = Logger {
    sinks: Mutex::new(Sinks {
        console: None,
        console_nb: None,
        kmsg: None,
        console_loglevel: 0,
    }),
    dropped: AtomicU64::new(0),
};

/// Installs the logger and opens `/dev/console` (the initramfs carries the node).
pub fn init() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    reopen();
}

/// Debug records on or off (`keel.debug`).
pub fn set_debug(on: bool) {
    log::set_max_level(if on {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
}

/// (Re)opens the console and `/dev/kmsg`; called again once devtmpfs is mounted.
pub fn reopen() {
    let open = |path: &str, flags: i32| {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | flags)
            .open(path)
            .ok()
    };
    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = open("/dev/console", 0) {
        sinks.console = Some(f);
    }
    if let Some(f) = open("/dev/console", libc::O_NONBLOCK) {
        sinks.console_nb = Some(f);
    }
    if let Some(f) = open("/dev/kmsg", 0) {
        sinks.kmsg = Some(f);
    }
    sinks.console_loglevel = std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|t| t.split_ascii_whitespace().next()?.parse().ok())
        .unwrap_or(0);
}

/// One line of container output to the console, prefixed with the container's name; dropped
/// (and counted) when the console is backed up.
pub fn container_line(name: &str, line: &str) {
    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = sinks.console_nb.as_mut() {
        let line = if RAW.load(Ordering::Relaxed) {
            std::borrow::Cow::Borrowed(line)
        } else {
            keel_supervisor::cli::sanitize(line)
        };
        let text = format!("{}{name}| {line}\n", clear_prompt());
        match c.write(text.as_bytes()) {
            Ok(n) if n == text.len() => {}
            _ => {
                LOGGER.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Container output lines dropped from the console so far.
pub fn dropped_lines() -> u64 {
    LOGGER.dropped.load(Ordering::Relaxed)
}

/// `<prio>keel-init: message`, cut to fit a kmsg record.
fn kmsg_record(prio: u8, message: &str) -> String {
    let mut end = message.len().min(KMSG_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("<{prio}>keel-init: {}\n", &message[..end])
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let (prio, tag) = match record.level() {
            log::Level::Error => (3, "error: "),
            log::Level::Warn => (4, "warning: "),
            log::Level::Info => (6, ""),
            log::Level::Debug | log::Level::Trace => (7, "debug: "),
        };
        let message = format!("{tag}{}", record.args());
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        let echoed = sinks.kmsg.is_some() && prio < sinks.console_loglevel;
        let clear = clear_prompt();
        if echoed
            && !clear.is_empty()
            && let Some(c) = sinks.console.as_mut()
        {
            // The kernel prints the record itself: clear the prompt's line for it.
            let _ = c.write_all(clear.as_bytes());
        }
        if !echoed && let Some(c) = sinks.console.as_mut() {
            let t = crate::sys::boottime();
            let line = format!(
                "{clear}[{:5}.{:06}] keel-init: {message}\n",
                t.as_secs(),
                t.subsec_micros()
            );
            let _ = c.write_all(line.as_bytes());
        }
        if let Some(k) = sinks.kmsg.as_mut() {
            let _ = k.write(kmsg_record(prio, &message).as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_are_bounded() {
        assert_eq!(kmsg_record(6, "hello"), "<6>keel-init: hello\n");
        let long = "é".repeat(KMSG_MAX);
        let rec = kmsg_record(3, &long);
        assert!(rec.len() <= KMSG_MAX + 20);
        assert!(rec.starts_with("<3>keel-init: é"));
        assert!(rec.ends_with("é\n"));
    }
}
