//! What keel's guest programs share: an error's cause chain on one line (all of them), and for
//! the small tools (`keel-metadata`, `keel-swarm`) a logger that writes every record to stderr
//! under the tool's name (a container's output, which PID 1 keeps for `keelctl logs` and shows
//! on the console for onboot containers).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

/// Where warnings and errors go besides stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// stderr only.
    No,
    /// Also the kernel's log (`/dev/kmsg`, which the kernel prints on the console): for a
    /// service, whose output PID 1 keeps off the console, to say there why it fails. The
    /// container needs the `/dev/kmsg` device (`c 1:11`); without it, stderr only.
    Kmsg,
}

/// Installs the stderr logger, every line prefixed with `name: ` (and `error: ` / `warning: `
/// by level), at `level` and above. A second call keeps the first logger.
pub fn init_logger(name: &'static str, level: log::LevelFilter, console: Console) {
    let kmsg = match console {
        Console::No => None,
        Console::Kmsg => File::options().write(true).open("/dev/kmsg").ok(),
    };
    // Leaked once per process: the logger lives as long as the program.
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        name,
        kmsg: kmsg.map(Mutex::new),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// An error with its causes, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct Logger {
    name: &'static str,
    kmsg: Option<Mutex<File>>,
}

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        let line = format!("{}: {level}{}", self.name, record.args());
        let _ = writeln!(std::io::stderr(), "{line}");
        // syslog priorities: 3 error, 4 warning; one write is one kernel log record.
        let priority = match record.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            _ => return,
        };
        if let Some(kmsg) = &self.kmsg {
            let mut kmsg = kmsg.lock().unwrap_or_else(|p| p.into_inner());
            let _ = kmsg.write_all(format!("<{priority}>{line}\n").as_bytes());
        }
    }
    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::chain;
    use std::fmt;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn chain_joins_every_cause() {
        let e = Layer(
            "cannot join",
            Some(Box::new(Layer(
                "cannot reach 10.0.0.1:2380",
                Some(Box::new(Layer("connection refused", None))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "cannot join: cannot reach 10.0.0.1:2380: connection refused"
        );
        assert_eq!(chain(&Layer("alone", None)), "alone");
    }
}
