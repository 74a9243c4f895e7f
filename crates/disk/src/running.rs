//! The A/B state of the running system, as PID 1 (boot assessment) and `keelctl` (`version`,
//! `update`) see it: the boot disk (the one under the verified root's device-mapper device
//! whose slot partition the running root hash names, found through `/sys/block`), the slot and
//! version running, and what each slot holds.
//!
//! Everything comes from the signed command line (`keel.verity=`, `keel.version=`) and the
//! disk; nothing is trusted from elsewhere. Why a version failed its boot assessment is kept on
//! the ESP ([`failure_path`]) so that the version booted after it can say.

use crate::ab::{self, Assessment, EntryName, EspEdit, ImageVersion, VERSION_KNOB, failure_path};
use crate::gpt::Table;
use crate::update::{Layout, SLOTS};
use crate::verity;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel command line has no valid {0}: this is not a keel A/B system")]
    Cmdline(&'static str),
    #[error("no disk holds the running root's partition (looked at: {0})")]
    NoDisk(String),
    #[error("{}", path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: crate::Error,
    },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Update(#[from] crate::update::Error),
    #[error("no UKI for the running version {0} on the ESP")]
    NoEntry(ImageVersion),
}

/// The running A/B system.
#[derive(Debug, Clone)]
pub struct System {
    /// The whole-disk device it booted from (`/dev/vda`).
    pub disk: PathBuf,
    pub root_hash: [u8; 32],
    pub version: ImageVersion,
    /// Its slot's index in [`SLOTS`].
    pub slot: usize,
}

/// Which of the whole disks `names` (under `sys_block`) holds the partitions under the
/// verified root's device-mapper device ([`verity::DM_NAME`]), if it is there.
fn disk_under_root(sys_block: &Path, names: &[String]) -> Option<String> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    let root = entries.flatten().map(|e| e.path()).find(|dir| {
        std::fs::read_to_string(dir.join("dm/name")).is_ok_and(|n| n.trim() == verity::DM_NAME)
    })?;
    let parts: Vec<_> = std::fs::read_dir(root.join("slaves"))
        .ok()?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names
        .iter()
        .find(|disk| parts.iter().any(|p| sys_block.join(disk).join(p).exists()))
        .cloned()
}

impl System {
    /// The running system from the kernel command line `cmdline`, its disk found among the
    /// whole disks under `sys_block` (opened under `dev`).
    pub fn find(cmdline: &str, sys_block: &Path, dev: &Path) -> Result<System, Error> {
        let params = verity::Params::from_cmdline(cmdline).map_err(Error::Cmdline)?;
        let version: ImageVersion = verity::knob(cmdline, VERSION_KNOB)
            .and_then(|v| v.parse().ok())
            .ok_or(Error::Cmdline(VERSION_KNOB))?;
        let mut names: Vec<String> = std::fs::read_dir(sys_block)
            .map_err(|source| Error::Io {
                path: sys_block.into(),
                source,
            })?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                !["loop", "ram", "dm-", "sr"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .collect();
        names.sort_unstable();
        // With an update's source disk attached, the running root's partitions are on two
        // disks: the one under the verified root's device is the one the loader chose.
        if let Some(disk) = disk_under_root(sys_block, &names) {
            names.retain(|n| *n == disk);
        }
        let mut looked = Vec::new();
        for name in names {
            let path = dev.join(name.replace('!', "/"));
            let Ok(mut file) = File::open(&path) else {
                looked.push(format!("{name}: cannot open"));
                continue;
            };
            let Ok(table) = Table::read(&mut file) else {
                looked.push(format!("{name}: no GPT"));
                continue;
            };
            let Ok(layout) = Layout::of(&path, &table) else {
                looked.push(format!("{name}: no A/B slots"));
                continue;
            };
            if let Some(slot) = layout.slot_of(&params.root_hash) {
                return Ok(System {
                    disk: path,
                    root_hash: params.root_hash,
                    version,
                    slot,
                });
            }
            looked.push(format!("{name}: neither slot is the running root"));
        }
        Err(Error::NoDisk(if looked.is_empty() {
            "no disks".into()
        } else {
            looked.join("; ")
        }))
    }

    /// The running system of this machine (`/proc/cmdline`, `/sys/block`, `/dev`).
    pub fn this_machine() -> Result<System, Error> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|source| Error::Io {
            path: "/proc/cmdline".into(),
            source,
        })?;
        System::find(&cmdline, Path::new("/sys/block"), Path::new("/dev"))
    }

    fn open(&self, write: bool) -> Result<File, Error> {
        File::options()
            .read(true)
            .write(write)
            .open(&self.disk)
            .map_err(|source| Error::Io {
                path: self.disk.clone(),
                source,
            })
    }

    fn disk_err(&self) -> impl Fn(crate::Error) -> Error + '_ {
        |source| Error::Disk {
            path: self.disk.clone(),
            source,
        }
    }

    /// The running version's UKI entry on the ESP.
    pub fn entry(&self) -> Result<EntryName, Error> {
        let mut file = self.open(false)?;
        ab::esp_entries(&mut file)
            .map_err(self.disk_err())?
            .into_iter()
            .find(|e| e.version == self.version)
            .ok_or_else(|| Error::NoEntry(self.version.clone()))
    }

    /// Why `version` failed its boot assessment, if it did (the note PID 1 left on the ESP).
    pub fn failure(&self, version: &ImageVersion) -> Result<Option<String>, Error> {
        let mut file = self.open(false)?;
        Ok(ab::read_esp_file(&mut file, &failure_path(version), 4096)
            .map_err(self.disk_err())?
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned()))
    }

    /// Whether this boot is the running version's trial: its UKI still carries a counter (by
    /// now systemd-boot has counted this boot: `keel-V+0-1.efi` for the last try) and no failure
    /// is recorded for it. A version that failed and boots only because nothing else does has
    /// one.
    pub fn on_trial(&self, entry: &EntryName) -> Result<bool, Error> {
        Ok(entry.tries.is_some() && self.failure(&entry.version)?.is_none())
    }

    /// The running version's UKI, read from the ESP.
    pub fn uki(&self) -> Result<Vec<u8>, Error> {
        let entry = self.entry()?;
        let mut file = self.open(false)?;
        ab::read_esp_file(&mut file, &entry.path(), ab::MAX_UKI)
            .map_err(self.disk_err())?
            .ok_or(Error::NoEntry(self.version.clone()))
    }

    /// Makes the running version permanent: its UKI renamed to the name without a counter.
    pub fn bless(&self, entry: &EntryName) -> Result<EntryName, Error> {
        let good = EntryName::good(entry.version.clone());
        let mut file = self.open(true)?;
        ab::edit_esp(&mut file, &[EspEdit::Rename(&entry.path(), &good.path())])
            .map_err(self.disk_err())?;
        file.sync_all().map_err(|source| Error::Io {
            path: self.disk.clone(),
            source,
        })?;
        Ok(good)
    }

    /// Gives up on the running version: its UKI renamed to one with no tries left (systemd-boot
    /// then boots the other slot's version), and `reason` written where [`status`] finds it.
    pub fn reject(&self, entry: &EntryName, reason: &str) -> Result<EntryName, Error> {
        let done = entry.tries.and_then(|t| t.done).unwrap_or(0).max(1);
        let bad = EntryName {
            version: entry.version.clone(),
            tries: Some(ab::Tries {
                left: 0,
                done: Some(done),
            }),
        };
        let failure = failure_path(&entry.version);
        let mut edits = vec![EspEdit::Put(&failure, reason.as_bytes())];
        let (from, to) = (entry.path(), bad.path());
        if from != to {
            edits.push(EspEdit::Rename(&from, &to));
        }
        let mut file = self.open(true)?;
        ab::edit_esp(&mut file, &edits).map_err(self.disk_err())?;
        file.sync_all().map_err(|source| Error::Io {
            path: self.disk.clone(),
            source,
        })?;
        Ok(bad)
    }

    /// What each slot holds.
    pub fn status(&self) -> Result<Status, Error> {
        let mut file = self.open(false)?;
        let installed: Vec<(EntryName, Vec<u8>)> =
            ab::read_ab_ukis(&mut file).map_err(self.disk_err())?;
        let table = Table::read(&mut file).map_err(self.disk_err())?;
        let layout = Layout::of(&self.disk, &table)?;
        let mut slots: Vec<SlotStatus> = SLOTS
            .iter()
            .map(|&name| SlotStatus {
                name,
                versions: Vec::new(),
            })
            .collect();
        for (entry, uki) in installed {
            // A UKI that names no slot's root boots nothing here: not listed.
            let Ok(version) = crate::update::parse_version(&self.disk, entry, uki) else {
                continue;
            };
            let Some(slot) = layout.slot_of(&version.root.root_hash) else {
                continue;
            };
            let entry = version.entry;
            let failure = ab::read_esp_file(&mut file, &failure_path(&entry.version), 4096)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            slots[slot].versions.push(VersionStatus {
                assessment: entry.assessment(),
                running: slot == self.slot && entry.version == self.version,
                entry,
                failure,
            });
        }
        let default = {
            let names: Vec<EntryName> = slots
                .iter()
                .flat_map(|s| s.versions.iter().map(|v| v.entry.clone()))
                .collect();
            ab::default_entry(&names).cloned()
        };
        Ok(Status {
            disk: self.disk.clone(),
            slots,
            next_boot: default,
        })
    }
}

/// A version installed in a slot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionStatus {
    pub entry: EntryName,
    /// Its boot assessment, from the entry's name.
    pub assessment: Assessment,
    pub running: bool,
    /// Why it failed its boot assessment, if it did.
    pub failure: Option<String>,
}

/// A slot and the versions whose UKIs boot it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotStatus {
    pub name: char,
    pub versions: Vec<VersionStatus>,
}

/// The A/B state of the boot disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub disk: PathBuf,
    pub slots: Vec<SlotStatus>,
    /// What systemd-boot boots next by default.
    pub next_boot: Option<EntryName>,
}

impl std::fmt::Display for Status {
    /// One line per slot: `slot a: version 1 (running, good)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for slot in &self.slots {
            write!(f, "slot {}:", slot.name)?;
            if slot.versions.is_empty() {
                write!(f, " empty")?;
            }
            for v in &slot.versions {
                let state = match v.entry.assessment() {
                    Assessment::Good => "good".to_owned(),
                    _ if v.running && v.failure.is_none() => {
                        "on trial: this boot decides".to_owned()
                    }
                    Assessment::Trial(t) => format!("on trial, {} boot(s) left", t.left),
                    Assessment::Bad { .. } => "bad: failed its boot assessment".to_owned(),
                };
                let running = if v.running { "running, " } else { "" };
                write!(f, " version {} ({running}{state})", v.entry.version)?;
                if let Some(why) = &v.failure {
                    write!(f, ": {}", why.trim())?;
                }
            }
            writeln!(f)?;
        }
        match &self.next_boot {
            Some(e) => writeln!(f, "next boot: version {}", e.version),
            None => writeln!(f, "next boot: nothing bootable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_must_name_a_root_and_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let err = System::find("console=ttyS0", dir.path(), dir.path()).unwrap_err();
        assert!(matches!(err, Error::Cmdline("keel.verity")), "{err}");
        let hash = "ab".repeat(32);
        let cmdline = format!(
            "keel.verity={hash} keel.verity_salt={hash} keel.verity_blocks=3 keel.version=1+2"
        );
        let err = System::find(&cmdline, dir.path(), dir.path()).unwrap_err();
        assert!(matches!(err, Error::Cmdline("keel.version")), "{err}");
        let cmdline = cmdline.replace("1+2", "1");
        let err = System::find(&cmdline, dir.path(), dir.path()).unwrap_err();
        assert!(matches!(err, Error::NoDisk(_)), "{err}");
    }

    #[test]
    fn the_disk_under_the_verified_root_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let names = ["vda".to_owned(), "vdb".to_owned()];
        for p in [
            "vda/vda2",
            "vda/vda3",
            "vdb/vdb2",
            "vdb/vdb3",
            "dm-1/slaves/loop0",
        ] {
            std::fs::create_dir_all(sys.join(p)).unwrap();
        }
        assert_eq!(disk_under_root(sys, &names), None);
        std::fs::create_dir_all(sys.join("dm-1/dm")).unwrap();
        std::fs::write(sys.join("dm-1/dm/name"), "other\n").unwrap();
        assert_eq!(disk_under_root(sys, &names), None);
        std::fs::create_dir_all(sys.join("dm-0/dm")).unwrap();
        std::fs::write(sys.join("dm-0/dm/name"), "keel-root\n").unwrap();
        assert_eq!(disk_under_root(sys, &names), None, "no slaves yet");
        for p in ["vdb2", "vdb3"] {
            std::fs::create_dir_all(sys.join("dm-0/slaves").join(p)).unwrap();
        }
        assert_eq!(disk_under_root(sys, &names).as_deref(), Some("vdb"));
    }
}
