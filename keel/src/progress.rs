//! Progress of long steps (a package or kernel build, writing an output) on a terminal: one
//! spinner line on stderr with what is being done and for how long, cleared when the step ends.
//! Shown only when stderr is a terminal and info messages are logged (`-q` hides it), like a
//! pull's progress. Log lines printed while a step runs go above its line ([`Logger`]).

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

/// Every step's line, so that the logger can clear them while it prints.
fn lines() -> &'static indicatif::MultiProgress {
    static LINES: OnceLock<indicatif::MultiProgress> = OnceLock::new();
    LINES.get_or_init(indicatif::MultiProgress::new)
}

/// Whether steps are shown: on a terminal, when not quiet.
fn shown() -> bool {
    log::log_enabled!(log::Level::Info) && std::io::stderr().is_terminal()
}

/// A long step: its line is shown from [`Step::start`] until it is dropped.
#[derive(Debug)]
pub struct Step(indicatif::ProgressBar);

impl Step {
    /// Starts a step described by `what` ("building pkg/init for x86_64").
    pub fn start(what: impl Into<String>) -> Step {
        let what = what.into();
        if !shown() {
            return Step(indicatif::ProgressBar::hidden());
        }
        let bar = lines().add(indicatif::ProgressBar::new_spinner());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(200));
        Step(bar)
    }

    /// Changes what the step says it is doing.
    pub fn set(&self, what: impl Into<String>) {
        self.0.set_message(what.into());
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.0.finish_and_clear();
        lines().remove(&self.0);
    }
}

/// A logger that clears the progress lines while it prints, so a log line never lands in the
/// middle of a spinner.
pub struct Logger<L>(pub L);

impl<L: log::Log> log::Log for Logger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.0.enabled(record.metadata()) {
            lines().suspend(|| self.0.log(record));
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
