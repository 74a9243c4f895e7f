//! `keel update --to NEW DISK`: moves a stopped `--ab` disk to the version another `--ab` build
//! holds, offline. The new version's root and hash tree go into the slot the disk does not boot
//! now, that slot's partitions take the GUIDs of the new root hash (the loader finds a root by
//! them), and its UKI goes into the ESP beside the running one, where systemd-boot, booting the
//! newest version, picks it. The data partition is not touched.
//!
//! Everything the new version brings is checked before the disk is written: the UKI's
//! signature (with `--keys`), and that its command line's root hash is the hash tree of the root
//! it comes with. The writes are ordered so that a disk left half-written (the tool killed, the
//! machine off) boots the version it booted before: the old UKI of the slot being replaced goes
//! first, then the slot, then its GUIDs, and the new UKI last, written under a temporary name and
//! renamed.

use keel_formats::gpt::{EntryInfo, Guid, Table};
use keel_formats::verity::{self, HashTree};
use keel_formats::{ImageVersion, efi::ab_uki_path};
use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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
        source: keel_formats::Error,
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
        source: crate::keys::Error,
    },
    #[error(transparent)]
    Keys(#[from] crate::keys::Error),
    #[error(
        "version {new} is not newer than version {old} on {}: systemd-boot boots the newest, so it would not boot it; build with a higher --image-version",
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
        source: keel_formats::Error,
    },
}

/// The largest root `keel update` reads from an update (it is read whole, to be checked).
const MAX_ROOT: u64 = 16 << 30;

/// What `keel update` did.
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
struct Version {
    version: ImageVersion,
    uki: Vec<u8>,
    root: verity::Params,
}

/// A version's UKI with the `keel.verity*` parameters of its command line.
fn parse_version(path: &Path, version: ImageVersion, uki: Vec<u8>) -> Result<Version, Error> {
    let sections = keel_formats::sections(&uki).map_err(|source| Error::Disk {
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
    Ok(Version { version, uki, root })
}

/// Compares versions as systemd-boot orders them, for the versions keel accepts: runs of
/// digits numerically, other runs byte by byte, a `~` before anything (a pre-release), and a
/// version that is a prefix of another older than it.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) => {}
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (run(a), run(b));
                let (da, db) = (&a[..na], &b[..nb]);
                let trim = |d: &[u8]| {
                    let zeros = d.iter().take_while(|c| **c == b'0').count();
                    d[zeros..].to_vec()
                };
                let (ta, tb) = (trim(da), trim(db));
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(&tb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
                continue;
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {}
        }
        a = &a[1..];
        b = &b[1..];
    }
}

/// The disk's partitions an update works on, by name.
struct Layout {
    /// Slot a's and b's root and hash partitions.
    slots: [(EntryInfo, EntryInfo); 2],
}

fn layout(path: &Path, table: &Table) -> Result<Layout, Error> {
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

fn read_exact_at(file: &mut File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// The one version an `--ab` build holds (its UKI, root and hash tree), checked.
fn read_update(path: &Path, keys: Option<&Path>) -> Result<(Version, Vec<u8>, HashTree), Error> {
    let open = |source| Error::Open {
        path: path.into(),
        source,
    };
    let disk_err = |source| Error::Disk {
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(open)?;
    let mut ukis = keel_formats::read_ab_ukis(&mut file).map_err(disk_err)?;
    if ukis.len() != 1 {
        return Err(Error::NotAb {
            path: path.into(),
            what: format!("{} versions in EFI/Linux, not one", ukis.len()),
        });
    }
    let (version, uki) = ukis.remove(0);
    if let Some(dir) = keys {
        let cert = crate::keys::certificate(dir, "db")?;
        crate::keys::verify_efi(&cert, &uki).map_err(|source| Error::Signature {
            path: path.into(),
            source,
        })?;
    }
    let version = parse_version(path, version, uki)?;
    let table = Table::read(&mut file).map_err(disk_err)?;
    let layout = layout(path, &table)?;
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
    let data = read(&mut file, root_part, data_len)?;
    let salt: [u8; 32] = version
        .root
        .salt
        .clone()
        .try_into()
        .map_err(|_| Error::Cmdline {
            path: path.into(),
            knob: "keel.verity_salt",
        })?;
    let tree = verity::hash_tree(&data, salt).map_err(disk_err)?;
    let on_disk = read(&mut file, hash_part, tree.hash_device.len() as u64)?;
    if tree.root_hash != version.root.root_hash || on_disk != tree.hash_device {
        return Err(Error::RootMismatch(path.into()));
    }
    Ok((version, data, tree))
}

/// `keel update --to NEW DISK`: see the module comment. `keys`: the key set whose db
/// certificate must verify the new UKI.
pub fn update(disk: &Path, new: &Path, keys: Option<&Path>) -> Result<Updated, Error> {
    let (update, data, tree) = read_update(new, keys)?;
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
    let layout = layout(disk, &table)?;
    if layout.slots[0].0.type_guid != table_type(new)? {
        return Err(Error::Arch(disk.into()));
    }
    let installed: Vec<Version> = keel_formats::read_ab_ukis(&mut file)
        .map_err(disk_err)?
        .into_iter()
        .map(|(v, uki)| parse_version(disk, v, uki))
        .collect::<Result<_, _>>()?;
    // The running version: the newest, as systemd-boot picks it.
    let current = installed
        .iter()
        .max_by(|a, b| compare_versions(a.version.as_str(), b.version.as_str()))
        .ok_or_else(|| Error::NotAb {
            path: disk.into(),
            what: "no UKI in EFI/Linux".into(),
        })?;
    if compare_versions(update.version.as_str(), current.version.as_str()) != Ordering::Greater {
        return Err(Error::NotNewer {
            new: update.version.clone(),
            old: current.version.clone(),
            disk: disk.into(),
        });
    }
    let (current_root, _) = verity::partition_guids(&current.root.root_hash);
    let active = layout
        .slots
        .iter()
        .position(|(root, _)| root.guid == current_root)
        .ok_or_else(|| Error::NotAb {
            path: disk.into(),
            what: format!(
                "version {} names a root in neither slot",
                current.version.as_str()
            ),
        })?;
    let target = 1 - active;
    let slot = ['a', 'b'][target];
    let (root_part, hash_part) = layout.slots[target].clone();
    for (what, need, part) in [
        ("root", data.len() as u64, &root_part),
        ("hash tree", tree.hash_device.len() as u64, &hash_part),
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
    let stale: Vec<String> = installed
        .iter()
        .filter(|v| verity::partition_guids(&v.root.root_hash).0 == root_part.guid)
        .map(|v| ab_uki_path(&v.version))
        .collect();
    keel_formats::efi::edit_esp(&mut file, &stale, None).map_err(disk_err)?;
    // 2. The slot's contents.
    for (part, bytes) in [(&root_part, &data), (&hash_part, &tree.hash_device)] {
        file.seek(SeekFrom::Start(part.first_lba * 512))
            .and_then(|_| file.write_all(bytes))
            .map_err(write_err)?;
    }
    file.sync_data().map_err(write_err)?;
    // 3. Its GUIDs: the loader finds the new root by them.
    let (root_guid, hash_guid) = verity::partition_guids(&update.root.root_hash);
    table.set_guid(root_part.index, root_guid);
    table.set_guid(hash_part.index, hash_guid);
    table.write(&mut file).map_err(|source| Error::Table {
        path: disk.into(),
        source,
    })?;
    file.sync_data().map_err(write_err)?;
    // 4. The new UKI, complete under a name systemd-boot ignores, then renamed.
    let path = ab_uki_path(&update.version);
    keel_formats::efi::edit_esp(&mut file, &[], Some((&path, &update.uki))).map_err(disk_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(Updated {
        slot,
        version: update.version,
        root_hash: update.root.root_hash,
        previous: current.version.clone(),
    })
}

/// The root partition type of the `--ab` disk at `path` (its architecture).
fn table_type(path: &Path) -> Result<Guid, Error> {
    let mut file = File::open(path).map_err(|source| Error::Open {
        path: path.into(),
        source,
    })?;
    let table = Table::read(&mut file).map_err(|source| Error::Disk {
        path: path.into(),
        source,
    })?;
    Ok(layout(path, &table)?.slots[0].0.type_guid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_systemd_boot_sorts_them() {
        for (a, b) in [
            ("2", "1"),
            ("10", "9"),
            ("1.10", "1.9"),
            ("1.2.1", "1.2"),
            ("1.0", "1.0~rc1"),
            ("2.0~rc2", "2.0~rc1"),
            ("1b", "1a"),
            ("007", "6"),
        ] {
            assert_eq!(compare_versions(a, b), Ordering::Greater, "{a} > {b}");
            assert_eq!(compare_versions(b, a), Ordering::Less, "{b} < {a}");
        }
        assert_eq!(compare_versions("1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare_versions("01", "1"), Ordering::Equal);
    }
}
