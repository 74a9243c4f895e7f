//! Moving an `--ab` disk to the version another `--ab` build holds, in place: offline on the
//! host (`keel update --to NEW DISK`) and on the running system (`keelctl update FILE`), the
//! same code. The new version's root and hash tree go into the slot the disk does not boot now,
//! that slot's partitions take the GUIDs of the new root hash (the loader finds a root by them),
//! and its UKI goes into the ESP beside the running one, on trial ([`TRIAL_TRIES`]): systemd-boot
//! boots it once, and unless the running system blesses it, the previous version after that.
//! The data partition is not touched.
//!
//! Everything the new version brings is checked before the disk is written: the UKI's
//! signature (by the caller's check), and that its command line's root hash is the hash tree of
//! the root it comes with. The writes are ordered so that a disk left half-written (the tool
//! killed, the machine off) boots the version it booted before: the old UKI of the slot being
//! replaced goes first, then the slot, then its GUIDs, and the new UKI last, written under a
//! temporary name and renamed.

use crate::ab::{self, EntryName, EspEdit, ImageVersion, TRIAL_TRIES};
use crate::gpt::{EntryInfo, Guid, Table};
use crate::uki;
use crate::verity::{self, HashTree};
use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A signature check's failure, whatever checked it.
pub type SignatureError = Box<dyn std::error::Error + Send + Sync>;

/// Checks a UKI's signature.
pub type VerifySignature<'a> = &'a dyn Fn(&[u8]) -> Result<(), SignatureError>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot read its partitions", path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: crate::Error,
    },
    #[error(
        "{}: not an A/B disk ({what}); build it with keel build -f raw-efi --verity --ab",
        path.display()
    )]
    NotAb { path: PathBuf, what: String },
    #[error("{}: its UKI's command line has no valid {knob}", path.display())]
    Cmdline { path: PathBuf, knob: &'static str },
    #[error(
        "{}: the root it carries does not hash to the root hash on its UKI's command line: it was changed after the build",
        .0.display()
    )]
    RootMismatch(PathBuf),
    #[error("{}: its UKI's signature does not verify", path.display())]
    Signature {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error(
        "version {new} is not newer than version {old}, which {} boots: systemd-boot boots the newest, so it would not boot it; build with a higher --image-version",
        disk.display()
    )]
    NotNewer {
        new: ImageVersion,
        old: ImageVersion,
        disk: PathBuf,
    },
    #[error(
        "{}: the new {what} ({need} bytes) does not fit slot {slot}'s partition ({have} bytes); build the disk with a larger --slot-size",
        disk.display()
    )]
    TooLarge {
        disk: PathBuf,
        what: &'static str,
        slot: char,
        need: u64,
        have: u64,
    },
    #[error(
        "version {version} failed its boot assessment on {} ({reason}); it is not installed again: build a newer version",
        disk.display()
    )]
    FailedBefore {
        version: ImageVersion,
        reason: String,
        disk: PathBuf,
    },
    #[error("{}: the disk and the update are for different architectures", .0.display())]
    Arch(PathBuf),
    #[error("{}: cannot write the update", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot write its partition table", path.display())]
    Table {
        path: PathBuf,
        #[source]
        source: crate::Error,
    },
}

/// The largest root an update may carry (it is read whole, to be checked).
const MAX_ROOT: u64 = 16 << 30;

/// The slots' names, in partition order.
pub const SLOTS: [char; 2] = ['a', 'b'];

/// What an update did.
#[derive(Debug)]
pub struct Updated {
    /// The slot now holding the new version (`a` or `b`).
    pub slot: char,
    pub version: ImageVersion,
    pub root_hash: [u8; 32],
    /// The version left in the other slot, booted before.
    pub previous: ImageVersion,
}

/// A version's UKI and what its command line says about its root.
#[derive(Debug)]
pub struct Version {
    pub entry: EntryName,
    pub uki: Vec<u8>,
    pub root: verity::Params,
}

/// A version's UKI with the `keel.verity*` parameters of its command line.
pub(crate) fn parse_version(path: &Path, entry: EntryName, uki: Vec<u8>) -> Result<Version, Error> {
    let sections = uki::sections(&uki).map_err(|source| Error::Disk {
        path: path.into(),
        source,
    })?;
    let cmdline = sections
        .iter()
        .find(|(name, _)| name == ".cmdline")
        .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
        .unwrap_or_default();
    let root = verity::Params::from_cmdline(&cmdline).map_err(|knob| Error::Cmdline {
        path: path.into(),
        knob,
    })?;
    Ok(Version { entry, uki, root })
}

/// The disk's root slots, by partition name.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Slot a's and b's root and hash partitions.
    pub slots: [(EntryInfo, EntryInfo); 2],
}

impl Layout {
    /// Reads the slots of the `--ab` disk at `path` from its partition table.
    pub fn of(path: &Path, table: &Table) -> Result<Layout, Error> {
        let entries = table.entries();
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .cloned()
                .ok_or_else(|| Error::NotAb {
                    path: path.into(),
                    what: format!("no {name} partition"),
                })
        };
        Ok(Layout {
            slots: [
                (find("keel-root-a")?, find("keel-root-verity-a")?),
                (find("keel-root-b")?, find("keel-root-verity-b")?),
            ],
        })
    }

    /// The slot (index into [`SLOTS`]) whose root partition the root hash names.
    pub fn slot_of(&self, root_hash: &[u8; 32]) -> Option<usize> {
        let (root_guid, _) = verity::partition_guids(root_hash);
        self.slots
            .iter()
            .position(|(root, _)| root.guid == root_guid)
    }
}

fn read_exact_at(file: &mut File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// The one version an `--ab` build holds, checked: its UKI (with `verify`, its signature),
/// root and hash tree.
#[derive(Debug)]
pub struct Update {
    pub version: Version,
    root: Vec<u8>,
    tree: HashTree,
    root_type: Guid,
}

impl Update {
    /// Reads the update at `path` (an `--ab` build's disk: a file or a block device) and checks
    /// it: `verify` checks the UKI's signature; the root must hash to the UKI's root hash.
    pub fn read(path: &Path, verify: Option<VerifySignature<'_>>) -> Result<Update, Error> {
        let open = |source| Error::Open {
            path: path.into(),
            source,
        };
        let disk_err = |source| Error::Disk {
            path: path.into(),
            source,
        };
        let mut file = File::open(path).map_err(open)?;
        let mut ukis = ab::read_ab_ukis(&mut file).map_err(disk_err)?;
        if ukis.len() != 1 {
            return Err(Error::NotAb {
                path: path.into(),
                what: format!("{} versions in EFI/Linux, not one", ukis.len()),
            });
        }
        let (entry, uki) = ukis.remove(0);
        if let Some(verify) = verify {
            verify(&uki).map_err(|source| Error::Signature {
                path: path.into(),
                source,
            })?;
        }
        let version = parse_version(path, entry, uki)?;
        let table = Table::read(&mut file).map_err(disk_err)?;
        let layout = Layout::of(path, &table)?;
        let (root_part, hash_part) = &layout.slots[0];
        let data_len = version
            .root
            .data_blocks
            .saturating_mul(verity::BLOCK as u64);
        if data_len > MAX_ROOT {
            return Err(Error::NotAb {
                path: path.into(),
                what: format!("a root of {data_len} bytes, more than keel reads ({MAX_ROOT})"),
            });
        }
        if data_len > root_part.bytes() {
            return Err(Error::RootMismatch(path.into()));
        }
        let read = |file: &mut File, part: &EntryInfo, len: u64| {
            read_exact_at(file, part.first_lba * 512, len).map_err(open)
        };
        let root = read(&mut file, root_part, data_len)?;
        let salt: [u8; 32] = version
            .root
            .salt
            .clone()
            .try_into()
            .map_err(|_| Error::Cmdline {
                path: path.into(),
                knob: "keel.verity_salt",
            })?;
        let tree = verity::hash_tree(&root, salt).map_err(disk_err)?;
        let on_disk = read(&mut file, hash_part, tree.hash_device.len() as u64)?;
        if tree.root_hash != version.root.root_hash || on_disk != tree.hash_device {
            return Err(Error::RootMismatch(path.into()));
        }
        Ok(Update {
            version,
            root,
            tree,
            root_type: root_part.type_guid,
        })
    }
}

/// A step of [`apply`], reported before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Removing the UKIs that boot the slot about to be written.
    RemoveStale { slot: char },
    /// Writing the root and the hash tree into the slot (the long step).
    WriteSlot { slot: char, bytes: u64 },
    /// Setting the slot's partition GUIDs to the new root hash.
    SetGuids { slot: char },
    /// Putting the new UKI into the ESP, on trial.
    PutUki { slot: char },
}

/// Writes `update` into the slot of `disk` that does not hold the running version: the one
/// whose root hash is `running` (on the running system, from its command line), else the one
/// systemd-boot boots by default. `progress` hears each step before it starts.
pub fn apply(
    disk: &Path,
    update: &Update,
    running: Option<&[u8; 32]>,
    progress: &mut dyn FnMut(Step),
) -> Result<Updated, Error> {
    let open = |source| Error::Open {
        path: disk.into(),
        source,
    };
    let disk_err = |source| Error::Disk {
        path: disk.into(),
        source,
    };
    let mut file = File::options()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(open)?;
    let mut table = Table::read(&mut file).map_err(disk_err)?;
    let layout = Layout::of(disk, &table)?;
    if layout.slots[0].0.type_guid != update.root_type {
        return Err(Error::Arch(disk.into()));
    }
    let installed: Vec<Version> = ab::read_ab_ukis(&mut file)
        .map_err(disk_err)?
        .into_iter()
        .map(|(entry, uki)| parse_version(disk, entry, uki))
        .collect::<Result<_, _>>()?;
    let current = match running {
        Some(hash) => installed.iter().find(|v| &v.root.root_hash == hash),
        None => {
            let names: Vec<EntryName> = installed.iter().map(|v| v.entry.clone()).collect();
            ab::default_entry(&names).and_then(|d| installed.iter().find(|v| &v.entry == d))
        }
    }
    .ok_or_else(|| Error::NotAb {
        path: disk.into(),
        what: "no UKI in EFI/Linux boots the running root".into(),
    })?;
    let active = layout
        .slot_of(&current.root.root_hash)
        .ok_or_else(|| Error::NotAb {
            path: disk.into(),
            what: format!(
                "version {} names a root in neither slot",
                current.entry.version
            ),
        })?;
    let target = 1 - active;
    let slot = SLOTS[target];
    let (root_part, hash_part) = layout.slots[target].clone();
    // The new version must sort first among what stays (the versions booting the active
    // slot); whatever boots the target slot is removed below.
    let new_version = &update.version.entry.version;
    let stays = |v: &&Version| layout.slot_of(&v.root.root_hash) != Some(target);
    if let Some(newest) = installed
        .iter()
        .filter(stays)
        .map(|v| &v.entry.version)
        .max()
        && new_version.cmp(newest) != Ordering::Greater
    {
        return Err(Error::NotNewer {
            new: new_version.clone(),
            old: newest.clone(),
            disk: disk.into(),
        });
    }
    // A version this disk already tried and gave up on is not tried again (an updater that
    // runs at every boot would otherwise loop: install, fail, fall back, install).
    if let Some(failed) = installed
        .iter()
        .find(|v| !stays(v) && v.entry.version == *new_version && !v.entry.bootable())
    {
        let reason = ab::read_esp_file(&mut file, &ab::failure_path(new_version), 4096)
            .ok()
            .flatten()
            .map_or_else(
                || "systemd-boot used up its tries".to_owned(),
                |r| String::from_utf8_lossy(&r).trim().to_owned(),
            );
        return Err(Error::FailedBefore {
            version: failed.entry.version.clone(),
            reason,
            disk: disk.into(),
        });
    }
    for (what, need, part) in [
        ("root", update.root.len() as u64, &root_part),
        (
            "hash tree",
            update.tree.hash_device.len() as u64,
            &hash_part,
        ),
    ] {
        if need > part.bytes() {
            return Err(Error::TooLarge {
                disk: disk.into(),
                what,
                slot,
                need,
                have: part.bytes(),
            });
        }
    }
    let write_err = |source| Error::Write {
        path: disk.into(),
        source,
    };

    // 1. The UKIs of the slot about to be replaced go: none may boot a half-written slot.
    progress(Step::RemoveStale { slot });
    let stale: Vec<String> = installed
        .iter()
        .filter(|v| !stays(v))
        .flat_map(|v| [v.entry.path(), ab::failure_path(&v.entry.version)])
        .collect();
    let removals: Vec<EspEdit<'_>> = stale.iter().map(|p| EspEdit::Remove(p)).collect();
    ab::edit_esp(&mut file, &removals).map_err(disk_err)?;
    file.sync_data().map_err(write_err)?;
    // 2. The slot's contents.
    progress(Step::WriteSlot {
        slot,
        bytes: (update.root.len() + update.tree.hash_device.len()) as u64,
    });
    for (part, bytes) in [
        (&root_part, &update.root),
        (&hash_part, &update.tree.hash_device),
    ] {
        file.seek(SeekFrom::Start(part.first_lba * 512))
            .and_then(|_| file.write_all(bytes))
            .map_err(write_err)?;
    }
    file.sync_data().map_err(write_err)?;
    // 3. Its GUIDs: the loader finds the new root by them.
    progress(Step::SetGuids { slot });
    let (root_guid, hash_guid) = verity::partition_guids(&update.version.root.root_hash);
    table.set_guid(root_part.index, root_guid);
    table.set_guid(hash_part.index, hash_guid);
    table.write(&mut file).map_err(|source| Error::Table {
        path: disk.into(),
        source,
    })?;
    file.sync_data().map_err(write_err)?;
    // 4. The new UKI, on trial, complete under a name systemd-boot ignores, then renamed.
    progress(Step::PutUki { slot });
    let path = EntryName::trial(new_version.clone(), TRIAL_TRIES).path();
    ab::edit_esp(&mut file, &[EspEdit::Put(&path, &update.version.uki)]).map_err(disk_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(Updated {
        slot,
        version: new_version.clone(),
        root_hash: update.version.root.root_hash,
        previous: current.entry.version.clone(),
    })
}
