//! Boot assessment of an A/B system (`keel build --verity --ab`): when the version running was
//! booted on trial (its UKI `keel-V+N-M.efi`, put there by `keel update` or `keelctl update`
//! and counted down by systemd-boot), PID 1 watches its services. Every service running and
//! ready for `keel.health_stable` seconds, within `keel.health_timeout` of the supervisor's
//! start: the version is blessed (its UKI renamed to `keel-V.efi`, permanent). Otherwise it is
//! rejected (renamed to no tries left, the reason written on the ESP for `keelctl version`)
//! and the machine reboots: systemd-boot then boots the other slot's version. A machine that
//! hangs or loses power during the trial gets there too: systemd-boot already counted the try.
//!
//! The disk work is a few sector reads and writes (directory entries of the ESP), done in the
//! loop like the rest.

use crate::cmdline::{Cmdline, MAX_HEALTH};
use keel_disk::ab::{Assessment, EntryName};
use keel_disk::running::System;
use keel_supervisor::{Kind, Record, Status};
use std::time::Duration;
use std::time::Instant;

/// The boot assessment's condition: every service (or those `services` names) running and
/// ready for `stable`, within `timeout` of the supervisor's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub timeout: Duration,
    pub stable: Duration,
    /// The services that must be running and ready; None: every service.
    pub services: Option<Vec<String>>,
}

impl Default for Health {
    /// Five minutes to get there (a slow machine, images pulled by a service), then ten
    /// seconds of every service ready.
    fn default() -> Self {
        Health {
            timeout: Duration::from_secs(300),
            stable: Duration::from_secs(10),
            services: None,
        }
    }
}

impl Health {
    /// The kernel command line's knobs over the YAML's `health:` over the defaults. A YAML
    /// value past [`MAX_HEALTH`] (keel build refuses one; a changed initrd may not) is logged and
    /// the default used: a deadline past the clock's range would panic.
    pub fn resolve(cmdline: &Cmdline, yaml: Option<&keel_bundle::HealthSettings>) -> Health {
        let default = Health::default();
        let from_yaml = |name: &str, value: Option<Duration>| {
            value.filter(|d| {
                let ok = *d <= MAX_HEALTH;
                if !ok {
                    log::warn!("health: {name} of {d:?} is longer than {MAX_HEALTH:?}: ignored");
                }
                ok
            })
        };
        Health {
            timeout: cmdline
                .health_timeout
                .or_else(|| from_yaml("timeout", yaml.and_then(|h| h.timeout)))
                .unwrap_or(default.timeout),
            stable: cmdline
                .health_stable
                .or_else(|| from_yaml("stable", yaml.and_then(|h| h.stable)))
                .unwrap_or(default.stable),
            // keel build refuses an empty list; read as one, it would watch nothing.
            services: yaml.and_then(|h| h.services.clone()).filter(|names| {
                if names.is_empty() {
                    log::warn!("health: an empty list of services: every service is watched");
                }
                !names.is_empty()
            }),
        }
    }

    /// Which services the condition is about, for the console and the failure note.
    fn which(&self) -> String {
        match &self.services {
            None => "every service".to_owned(),
            Some(names) => format!("every one of the services {}", names.join(", ")),
        }
    }
}

/// What the assessment does next.
#[derive(Debug)]
pub enum Assessor {
    /// Nothing to assess: not an A/B boot, the version is not on trial, or it was decided.
    Idle,
    Watching(Box<Trial>),
}

/// A version on trial, watched.
#[derive(Debug)]
pub struct Trial {
    system: System,
    entry: EntryName,
    health: Health,
    deadline: Instant,
    /// Since when every watched service has been running and ready.
    healthy_since: Option<Instant>,
}

/// What became of a trial.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Blessed,
    /// Rejected: the machine must reboot into the previous version.
    Rejected,
}

impl Assessor {
    /// Looks at how this boot came to be: `cmdline` is `/proc/cmdline`.
    pub fn start(cmdline: &str, health: Health, now: Instant) -> Assessor {
        let ab = cmdline
            .split_ascii_whitespace()
            .any(|w| w.starts_with(keel_disk::ab::VERSION_KNOB));
        if !ab {
            return Assessor::Idle;
        }
        // The boot disk, this version's UKI on it, and whether this boot is its trial.
        let found = System::find(
            cmdline,
            std::path::Path::new("/sys/block"),
            std::path::Path::new("/dev"),
        )
        .and_then(|system| {
            let entry = system.entry()?;
            let on_trial = system.on_trial(&entry)?;
            Ok((system, entry, on_trial))
        });
        let (system, entry, on_trial) = match found {
            Ok(found) => found,
            Err(e) => {
                log::error!(
                    "boot assessment: {}; this boot is neither blessed nor rejected",
                    crate::chain(&e)
                );
                return Assessor::Idle;
            }
        };
        let slot = keel_disk::update::SLOTS[system.slot];
        match (entry.assessment(), on_trial) {
            (Assessment::Good, _) => {
                log::info!(
                    "boot assessment: version {} (slot {slot}) is permanent",
                    entry.version
                );
                Assessor::Idle
            }
            (_, false) => {
                log::warn!(
                    "boot assessment: version {} (slot {slot}) failed its assessment before and boots only because nothing else does",
                    entry.version
                );
                Assessor::Idle
            }
            (_, true) => {
                log::info!(
                    "boot assessment: version {} (slot {slot}) is on trial ({}): it stays if {} runs and is ready for {} s within {} s",
                    entry.version,
                    entry.file_name(),
                    health.which(),
                    health.stable.as_secs(),
                    health.timeout.as_secs()
                );
                Assessor::Watching(Box::new(Trial {
                    system,
                    entry,
                    deadline: now + health.timeout,
                    health,
                    healthy_since: None,
                }))
            }
        }
    }

    /// When [`Assessor::check`] must run next, if at all.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            Assessor::Idle => None,
            Assessor::Watching(trial) => Some(match trial.healthy_since {
                Some(since) => (since + trial.health.stable).min(trial.deadline),
                None => trial.deadline,
            }),
        }
    }

    /// Looks at the services; blesses or rejects the trial when it is decided.
    pub fn check(&mut self, records: &[Record], now: Instant) -> Option<Verdict> {
        let Assessor::Watching(trial) = self else {
            return None;
        };
        let Trial {
            system,
            entry,
            health,
            deadline,
            healthy_since,
        } = &mut **trial;
        let unhealthy = unhealthy_services(records, health.services.as_deref());
        if unhealthy.is_empty() {
            let since = *healthy_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= health.stable {
                let verdict = match system.bless(entry) {
                    Ok(good) => {
                        log::info!(
                            "boot assessment: version {} is good: {} ran and was ready for {} s; {} is permanent",
                            entry.version,
                            health.which(),
                            health.stable.as_secs(),
                            good.path()
                        );
                        Verdict::Blessed
                    }
                    Err(e) => {
                        log::error!(
                            "boot assessment: version {} is good but cannot be made permanent: {}; the next boot returns to the previous version",
                            entry.version,
                            crate::chain(&e)
                        );
                        Verdict::Blessed
                    }
                };
                *self = Assessor::Idle;
                return Some(verdict);
            }
            return None;
        }
        *healthy_since = None;
        if now < *deadline {
            return None;
        }
        let reason = format!(
            "not {} ran and was ready for {} s within {} s of the boot: {}",
            health.which(),
            health.stable.as_secs(),
            health.timeout.as_secs(),
            unhealthy.join(", ")
        );
        match system.reject(entry, &reason) {
            Ok(bad) => log::error!(
                "boot assessment: version {} failed: {reason}; {} has no tries left: rebooting into the previous version",
                entry.version,
                bad.path()
            ),
            Err(e) => log::error!(
                "boot assessment: version {} failed: {reason}; marking it failed: {}; rebooting (systemd-boot counted its try)",
                entry.version,
                crate::chain(&e)
            ),
        }
        *self = Assessor::Idle;
        Some(Verdict::Rejected)
    }
}

/// Each service (of `only`, if given) that is not running and ready, with what it is doing
/// instead.
fn unhealthy_services(records: &[Record], only: Option<&[String]>) -> Vec<String> {
    let services: Vec<(&str, Option<String>)> = records
        .iter()
        .filter(|r| r.kind == Kind::Service)
        .map(|r| {
            let healthy = r.status == Status::Running && r.ready;
            (r.id.as_str(), (!healthy).then(|| describe(r)))
        })
        .collect();
    unhealthy(&services, only)
}

/// `services`: each service's name and, unless it is running and ready, what it does instead.
/// A name in `only` that is not a service is missing (keel build refuses such a name; a
/// changed initrd may not).
fn unhealthy(services: &[(&str, Option<String>)], only: Option<&[String]>) -> Vec<String> {
    let missing = only
        .unwrap_or_default()
        .iter()
        .filter(|name| !services.iter().any(|(id, _)| id == name))
        .map(|name| format!("service {name} is missing"));
    let watched = services
        .iter()
        .filter(|(id, _)| only.is_none_or(|names| names.iter().any(|n| n == id)))
        .filter_map(|(_, why)| why.clone());
    missing.chain(watched).collect()
}

/// A service that is not running and ready: what it is doing instead.
fn describe(r: &Record) -> String {
    let mut s = format!("service {} is {}", r.id, r.status.as_str());
    if r.status == Status::Running {
        s.push_str(" but not ready");
    }
    if let Some(code) = r.exit_status {
        s.push_str(&format!(" (last exit status {code}"));
        if r.restarts > 0 {
            s.push_str(&format!(", {} restarts", r.restarts));
        }
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_overrides_the_yaml() {
        let yaml = keel_bundle::HealthSettings {
            timeout: Some(Duration::from_secs(60)),
            stable: Some(Duration::from_secs(5)),
            services: Some(vec!["web".into()]),
        };
        let none = Cmdline::parse("");
        assert_eq!(Health::resolve(&none, None), Health::default());
        let h = Health::resolve(&none, Some(&yaml));
        assert_eq!((h.timeout.as_secs(), h.stable.as_secs()), (60, 5));
        let knob = Cmdline::parse("keel.health_stable=1");
        let h = Health::resolve(&knob, Some(&yaml));
        assert_eq!((h.timeout.as_secs(), h.stable.as_secs()), (60, 1));
        assert_eq!(h.services, Some(vec!["web".to_owned()]));
        assert_eq!(h.which(), "every one of the services web");
        assert_eq!(Health::default().which(), "every service");
        // From a changed system.json: past the clock's range, so the default.
        let huge = keel_bundle::HealthSettings {
            timeout: Some(Duration::from_millis(u64::MAX)),
            stable: Some(MAX_HEALTH + Duration::from_secs(1)),
            services: Some(vec![]),
        };
        assert_eq!(Health::resolve(&none, Some(&huge)), Health::default());
    }

    #[test]
    fn the_condition_watches_the_services_it_names() {
        let services = [
            ("web", None),
            (
                "db",
                Some("service db is crashloop (last exit status 3)".to_owned()),
            ),
            (
                "cron",
                Some("service cron is running but not ready".to_owned()),
            ),
        ];
        assert_eq!(
            unhealthy(&services, None),
            [
                "service db is crashloop (last exit status 3)",
                "service cron is running but not ready"
            ]
        );
        let only = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(unhealthy(&services, Some(&only(&["web"]))).is_empty());
        assert_eq!(
            unhealthy(&services, Some(&only(&["web", "cron"]))),
            ["service cron is running but not ready"]
        );
        // A name that is no service (a changed system.json) never counts as healthy.
        assert_eq!(
            unhealthy(&services, Some(&only(&["web", "gone"]))),
            ["service gone is missing"]
        );
        assert!(unhealthy(&[], None).is_empty());
    }

    #[test]
    fn a_plain_boot_is_not_assessed() {
        let a = Assessor::start("console=ttyS0", Health::default(), Instant::now());
        assert!(matches!(a, Assessor::Idle));
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn an_ab_boot_whose_disk_is_missing_is_not_assessed() {
        // No disk in the test's /sys/block holds this root: logged, nothing decided.
        let hash = "ab".repeat(32);
        let cmdline = format!(
            "keel.verity={hash} keel.verity_salt={hash} keel.verity_blocks=3 keel.version=2"
        );
        let a = Assessor::start(&cmdline, Health::default(), Instant::now());
        assert!(matches!(a, Assessor::Idle));
    }
}
