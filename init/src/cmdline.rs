//! The kernel command line knobs of the init (`keel.*`).

use std::time::Duration;

/// The longest `keel.onboot_timeout=`: the bound YAML timeouts have too. A larger value is
/// reported with the unknown knobs and the default is used: a typo on the kernel command line
/// must not make PID 1 compute a deadline past the clock's range (a panic, then a reboot
/// loop on every boot).
pub const MAX_ONBOOT_TIMEOUT: Duration = keel_bundle::Supervision::MAX_DURATION;

/// The longest `keel.health_timeout=` and `keel.health_stable=`, as for durations in the YAML.
pub const MAX_HEALTH: Duration = keel_bundle::Supervision::MAX_DURATION;

/// Settings read from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `keel.debug`: debug logging.
    pub debug: bool,
    /// `keel.console=1`: service output to the console too (onboot output always goes there).
    pub console: bool,
    /// `keel.onboot_timeout=<seconds>`: default time an onboot container may run, at most
    /// [`MAX_ONBOOT_TIMEOUT`].
    pub onboot_timeout: Duration,
    /// `keel.health_timeout=<seconds>` and `keel.health_stable=<seconds>`: the boot assessment's
    /// condition (`crate::assess`), over the YAML's `health:`.
    pub health_timeout: Option<Duration>,
    pub health_stable: Option<Duration>,
    /// Knobs that were not understood, for a warning once logging is up.
    pub unknown: Vec<String>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            debug: false,
            console: false,
            onboot_timeout: Duration::from_secs(60),
            health_timeout: None,
            health_stable: None,
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
        let seconds = |value: Option<&str>, max: Duration| {
            value
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs)
                .filter(|t| *t <= max)
        };
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
                "onboot_timeout" => seconds(value, MAX_ONBOOT_TIMEOUT)
                    .map(|t| c.onboot_timeout = t)
                    .is_some(),
                "health_timeout" => seconds(value, MAX_HEALTH)
                    .map(|t| c.health_timeout = Some(t))
                    .is_some(),
                "health_stable" => seconds(value, MAX_HEALTH)
                    .map(|t| c.health_stable = Some(t))
                    .is_some(),
                // The loader's verified root (crate::verity checks them before this runs) and
                // the A/B version (crate::assess reads it with them).
                "verity" | "verity_salt" | "verity_blocks" | "version" => true,
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
        let verity = "keel.verity=ab keel.verity_salt=cd keel.verity_blocks=8 keel.version=2";
        assert_eq!(Cmdline::parse(verity), Cmdline::default());
        let c = Cmdline::parse("keel.health_timeout=30 keel.health_stable=0");
        assert_eq!(c.health_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.health_stable, Some(Duration::ZERO));
        let c = Cmdline::parse("keel.health_timeout=86401 keel.health_stable=x");
        assert_eq!((c.health_timeout, c.health_stable), (None, None));
        assert_eq!(c.unknown.len(), 2);
    }

    #[test]
    fn bad_values_are_reported() {
        let c = Cmdline::parse("keel.debug=0 keel.onboot_timeout=soon keel.frobnicate");
        assert!(!c.debug);
        assert_eq!(c.onboot_timeout, Duration::from_secs(60));
        assert_eq!(c.unknown, ["keel.onboot_timeout=soon", "keel.frobnicate"]);
    }

    #[test]
    fn out_of_range_timeouts_keep_the_default() {
        for word in [
            "keel.onboot_timeout=18446744073709551615",
            "keel.onboot_timeout=18446744073709551616",
            "keel.onboot_timeout=86401",
            "keel.onboot_timeout=-1",
            "keel.onboot_timeout=",
            "keel.onboot_timeout",
        ] {
            let c = Cmdline::parse(word);
            assert_eq!(c.onboot_timeout, Duration::from_secs(60), "{word}");
            assert_eq!(c.unknown, [word]);
        }
        let c = Cmdline::parse("keel.onboot_timeout=86400");
        assert_eq!(c.onboot_timeout, MAX_ONBOOT_TIMEOUT);
        assert!(c.unknown.is_empty());
        // The last valid one wins; an invalid one after it changes nothing.
        let c = Cmdline::parse("keel.onboot_timeout=5 keel.onboot_timeout=99999999999");
        assert_eq!(c.onboot_timeout, Duration::from_secs(5));
    }
}
