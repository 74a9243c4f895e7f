//! The kernel command line knobs of the init (`keel.*`).

use std::time::Duration;

/// Settings read from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `keel.debug`: debug logging.
    pub debug: bool,
    /// `keel.console=1`: service output to the console too (onboot output always goes there).
    pub console: bool,
    /// `keel.onboot_timeout=<seconds>`: default time an onboot container may run.
    pub onboot_timeout: Duration,
    /// Knobs that were not understood, for a warning once logging is up.
    pub unknown: Vec<String>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            debug: false,
            console: false,
            onboot_timeout: Duration::from_secs(60),
            unknown: Vec::new(),
        }
    }
}

fn flag(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("1" | "true" | "on" | "yes") => Some(true),
        Some("0" | "false" | "off" | "no") => Some(false),
        Some(_) => None,
    }
}

impl Cmdline {
    /// Parses a kernel command line; other parameters are ignored.
    pub fn parse(text: &str) -> Self {
        let mut c = Cmdline::default();
        for word in text.split_ascii_whitespace() {
            let Some(knob) = word.strip_prefix("keel.") else {
                continue;
            };
            let (key, value) = match knob.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (knob, None),
            };
            let ok = match key {
                "debug" => flag(value).map(|v| c.debug = v).is_some(),
                "console" => flag(value).map(|v| c.console = v).is_some(),
                "onboot_timeout" => value
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|s| c.onboot_timeout = Duration::from_secs(s))
                    .is_some(),
                _ => false,
            };
            if !ok {
                c.unknown.push(word.to_owned());
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_knobs() {
        let c =
            Cmdline::parse("console=ttyS0 keel.debug quiet keel.console=1 keel.onboot_timeout=5\n");
        assert!(c.debug && c.console);
        assert_eq!(c.onboot_timeout, Duration::from_secs(5));
        assert!(c.unknown.is_empty());
        assert_eq!(Cmdline::parse("root=/dev/sda"), Cmdline::default());
    }

    #[test]
    fn bad_values_are_reported() {
        let c = Cmdline::parse("keel.debug=0 keel.onboot_timeout=soon keel.frobnicate");
        assert!(!c.debug);
        assert_eq!(c.onboot_timeout, Duration::from_secs(60));
        assert_eq!(c.unknown, ["keel.onboot_timeout=soon", "keel.frobnicate"]);
    }
}
