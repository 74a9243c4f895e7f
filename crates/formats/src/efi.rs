//! `raw-efi`: a GPT disk whose only partition is an EFI system partition holding a UKI at the
//! removable-media path firmware boots without any boot entry (`EFI/BOOT/BOOT<ARCH>.EFI`).
//!
//! With `--verity` a verified root follows the ESP: `keel-root` (squashfs, its unique GUID the
//! root hash's first half) and `keel-root-verity` (its dm-verity hash tree, the second half).
//!
//! # The A/B layout (`--ab`, [`write_ab_efi`])
//!
//! Room for two versions of the system, booted through systemd-boot, which picks the newest
//! UKI. In disk order, every partition starting on a MiB boundary:
//!
//! | # | name                 | type                         | size                           | contents |
//! |---|----------------------|------------------------------|--------------------------------|----------|
//! | 1 | EFI system partition | ESP                          | 2.5 × UKI + systemd-boot + 1 MiB, in MiB | FAT: systemd-boot at `EFI/BOOT/BOOT<ARCH>.EFI`, [`LOADER_CONF`] at `loader/loader.conf`, the UKI at `EFI/Linux/keel-<version>.efi` |
//! | 2 | `keel-root-a`        | root (Discoverable Partitions, per architecture) | the slot size | the squashfs root; GUID: the root hash's first half |
//! | 3 | `keel-root-verity-a` | root-verity                  | the hash tree of a full slot   | its hash tree; GUID: the root hash's second half |
//! | 4 | `keel-root-b`        | root                         | the slot size                  | empty (zeros), for the next version |
//! | 5 | `keel-root-verity-b` | root-verity                  | as 3                           | empty |
//! | 6 | `keel-data`          | Linux data                   | `--data-size` (64 MiB), in MiB | unformatted: the system formats and mounts it |
//!
//! The slot size is `--slot-size` rounded up to a MiB (at least the root), by default twice the
//! root rounded up to a MiB, so that the next version fits in slot B even if it grows. The ESP
//! holds two UKIs of this size with room to spare, so an update can add the new one before
//! removing the old. Slot B's and the data partition's unique GUIDs are derived from the disk's
//! seed (a hash of the UKI) and their names, never equal to a root-hash half: each UKI's loader
//! finds its own root by the root hash, wherever it is.

use crate::error::{Error, Result};
use crate::esp::{EspFile, build_esp, esp_size_for};
use keel_disk::ab::{EntryName, ImageVersion, find_partition, read_partition};
use keel_disk::gpt::{self, FIRST_LBA, Guid, Partition, SECTOR};
use keel_disk::verity::HashTree;
use keel_image::Arch;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};

const MIB: u64 = 1 << 20;
/// The largest `--slot-size` and `--data-size`: 1 PiB, so that no sum of sizes overflows.
const MAX_PARTITION: u64 = 1 << 50;

/// The path firmware boots from removable media on `arch`.
pub fn efi_boot_path(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
        Arch::Aarch64 => "EFI/BOOT/BOOTAA64.EFI",
    }
}

/// The files of the ESP for `uki`.
fn esp_files(uki: &[u8], arch: Arch) -> [EspFile<'_>; 1] {
    [EspFile {
        path: efi_boot_path(arch),
        data: uki,
    }]
}

/// The FAT image of an ESP holding `uki` at [`efi_boot_path`], sized to fit: what an El
/// Torito EFI boot image or a raw ESP needs.
pub fn efi_esp(uki: &[u8], arch: Arch) -> Result<Vec<u8>> {
    let files = esp_files(uki, arch);
    build_esp(&files, esp_size_for(&files), "EFI")
}

/// A dm-verity protected root to put beside the ESP (`--verity`): the root filesystem image
/// and its hash tree. The UKI's command line must carry [`HashTree::cmdline`].
#[derive(Debug, Clone, Copy)]
pub struct VerityRoot<'a> {
    /// The root filesystem, a whole number of [`crate::verity::BLOCK`]s.
    pub data: &'a [u8],
    pub tree: &'a HashTree,
}

impl VerityRoot<'_> {
    /// The data and hash partitions: the Discoverable Partitions Specification's root and
    /// root-verity types for `arch`, their unique GUIDs taken from the root hash, each starting
    /// on a MiB boundary at or after sector `from`.
    fn partitions(&self, arch: Arch, from: u64) -> [Partition<'_>; 2] {
        let (data_type, hash_type) = verity_partition_types(arch);
        let (data_guid, hash_guid) = self.tree.partition_guids();
        let align = MIB / SECTOR;
        let data_lba = from.div_ceil(align) * align;
        let data_sectors = (self.data.len() as u64).div_ceil(MIB) * align;
        let hash = &self.tree.hash_device;
        [
            Partition {
                type_guid: data_type,
                guid: data_guid,
                name: "keel-root",
                first_lba: data_lba,
                sectors: data_sectors,
                data: self.data,
            },
            Partition {
                type_guid: hash_type,
                guid: hash_guid,
                name: "keel-root-verity",
                first_lba: data_lba + data_sectors,
                sectors: (hash.len() as u64).div_ceil(MIB) * align,
                data: hash,
            },
        ]
    }
}

/// The smallest `raw-efi` disk for `uki`, in bytes (a whole number of MiB).
pub fn raw_efi_size(uki: &[u8], arch: Arch) -> u64 {
    raw_efi_size_with(uki, arch, None)
}

/// The smallest `raw-efi` disk for `uki` and `root`, in bytes (a whole number of MiB).
pub fn raw_efi_size_with(uki: &[u8], arch: Arch, root: Option<&VerityRoot<'_>>) -> u64 {
    let esp = esp_size_for(&esp_files(uki, arch));
    let mut end = FIRST_LBA + esp / SECTOR;
    if let Some(root) = root {
        let [_, hash] = root.partitions(arch, end);
        end = hash.first_lba + hash.sectors;
    }
    gpt::disk_size_for(end).div_ceil(MIB) * MIB
}

/// Writes a `raw-efi` disk holding `uki` into `out` and returns its size: `size` if given
/// (at least [`raw_efi_size`], a multiple of 512), else the smallest. The ESP is only as big
/// as its contents; the rest of a larger disk is left unpartitioned for the system to use.
pub fn write_raw_efi(
    out: &mut impl Write,
    uki: &[u8],
    arch: Arch,
    size: Option<u64>,
) -> Result<u64> {
    write_raw_efi_with(out, uki, arch, size, None)
}

/// The size of a disk that needs `needed` bytes: `size` if given (at least `needed`, a
/// multiple of 512; `what` names the disk in the error), else `needed`.
fn disk_size(size: Option<u64>, needed: u64, what: &'static str) -> Result<u64> {
    let size = size.unwrap_or(needed);
    if size < needed {
        return Err(Error::TooSmall {
            what,
            needed,
            given: size,
        });
    }
    if !size.is_multiple_of(SECTOR) {
        return Err(Error::InvalidSize(format!(
            "{size} bytes (not a multiple of {SECTOR})"
        )));
    }
    Ok(size)
}

/// [`write_raw_efi`], with a verity-protected `root` after the ESP if given.
pub fn write_raw_efi_with(
    out: &mut impl Write,
    uki: &[u8],
    arch: Arch,
    size: Option<u64>,
    root: Option<&VerityRoot<'_>>,
) -> Result<u64> {
    let needed = raw_efi_size_with(uki, arch, root);
    let size = disk_size(size, needed, "the raw-efi disk")?;
    let esp = efi_esp(uki, arch)?;
    let seed = Sha256::digest(uki);
    let esp = Partition {
        type_guid: Guid::ESP,
        guid: Guid::derive(&seed, "esp"),
        name: "EFI system partition",
        first_lba: FIRST_LBA,
        sectors: esp.len() as u64 / SECTOR,
        data: &esp,
    };
    let mut parts = vec![esp];
    if let Some(root) = root {
        parts.extend(root.partitions(arch, esp.first_lba + esp.sectors));
    }
    gpt::write_disk(out, size, Guid::derive(&seed, "disk"), &parts)?;
    Ok(size)
}

/// The version of the system an `--ab` disk's UKI carries (`--image-version`): os-release's
/// The `.osrel` of an `--ab` disk's UKI: `NAME` and `ID` as every keel UKI has them, then
/// `IMAGE_ID=keel` (systemd-boot's sort key, the same for every version) and `IMAGE_VERSION`
/// (which it sorts by, newest first).
pub fn ab_os_release(version: &ImageVersion) -> String {
    format!("NAME=keel\nID=keel\nIMAGE_ID=keel\nIMAGE_VERSION={version}\n")
}

/// systemd-boot's `loader/loader.conf` on an `--ab` disk; every line makes the choice fixed:
///
/// - `timeout 0`: no menu, the default entry boots at once (a key held at boot shows it).
/// - `default keel-*`: the default is the first keel UKI in systemd-boot's order, which sorts
///   UKIs by `IMAGE_ID`, then `IMAGE_VERSION` newest first (and ones out of boot-counting tries
///   last); nothing else on the ESP can become the default.
/// - `editor no`: the kernel command line cannot be edited at the menu (it carries the root
///   hash; a signed UKI ignores an edited one anyway).
/// - `auto-entries no`, `auto-firmware no`: no generated entries (other OSes, "reboot into
///   firmware setup") beside keel's.
/// - `random-seed-mode off`: systemd-boot 252 writes nothing to the ESP (no `loader/random-seed`),
///   so the ESP changes only when keel changes it.
///
/// EFI variables still take precedence, as systemd-boot documents: `LoaderEntryOneShot` (a
/// trial boot of a new version) and `LoaderEntryDefault`.
pub const LOADER_CONF: &str = "timeout 0\ndefault keel-*\neditor no\nauto-entries no\nauto-firmware no\nrandom-seed-mode off\n";

/// The default size of an `--ab` disk's `keel-data` partition (`--data-size`): 64 MiB.
pub const DEFAULT_DATA_SIZE: u64 = 64 * MIB;

/// What an `--ab` disk holds (see the module's table).
#[derive(Debug, Clone, Copy)]
pub struct AbDisk<'a> {
    /// systemd-boot for the disk's architecture, signed with the db key when the UKI is.
    pub boot_manager: &'a [u8],
    /// The UKI, whose `.osrel` is [`ab_os_release`] of `version` and whose command line names
    /// `root`.
    pub uki: &'a [u8],
    pub version: &'a ImageVersion,
    /// Slot A's contents.
    pub root: VerityRoot<'a>,
    /// Each slot's root partition, in bytes (`--slot-size`); `None`: twice the root. Rounded up
    /// to a MiB.
    pub slot_size: Option<u64>,
    /// The `keel-data` partition, in bytes (`--data-size`), rounded up to a MiB.
    pub data_size: u64,
}

/// The length of the hash device [`crate::verity::hash_tree`] (and `veritysetup format`) makes
/// for `data_len` bytes.
fn hash_device_len(data_len: u64) -> u64 {
    crate::verity::hash_device_len(data_len.div_ceil(crate::verity::BLOCK as u64))
}

/// The partitions' sizes of an `--ab` disk, in sectors.
#[derive(Debug, Clone, Copy)]
struct AbSizes {
    esp: u64,
    slot: u64,
    hash: u64,
    data: u64,
}

impl AbDisk<'_> {
    /// The ESP's files for `arch`, the UKI at `uki_path` ([`EntryName::path`]).
    fn esp_files<'a>(&'a self, arch: Arch, uki_path: &'a str) -> [EspFile<'a>; 3] {
        [
            EspFile {
                path: efi_boot_path(arch),
                data: self.boot_manager,
            },
            EspFile {
                path: "loader/loader.conf",
                data: LOADER_CONF.as_bytes(),
            },
            EspFile {
                path: uki_path,
                data: self.uki,
            },
        ]
    }

    /// The partitions' sizes, the options checked.
    fn sizes(&self, arch: Arch) -> Result<AbSizes> {
        let len = |b: &[u8]| u64::try_from(b.len()).unwrap_or(u64::MAX);
        let mib = |n: u64| n.div_ceil(MIB) * MIB;
        let (uki, boot) = (len(self.uki), len(self.boot_manager));
        if uki > MAX_PARTITION || boot > MAX_PARTITION {
            return Err(Error::TooLarge {
                what: "the UKI",
                size: uki.max(boot),
                max: MAX_PARTITION,
            });
        }
        let uki_path = EntryName::good(self.version.clone()).path();
        let esp = mib(uki * 5 / 2 + boot + MIB).max(esp_size_for(&self.esp_files(arch, &uki_path)));
        let root = len(self.root.data);
        let slot = match self.slot_size {
            None => mib(root.saturating_mul(2)),
            Some(given) if given > MAX_PARTITION => {
                return Err(Error::TooLarge {
                    what: "--slot-size",
                    size: given,
                    max: MAX_PARTITION,
                });
            }
            Some(given) if given < root => return Err(Error::SlotTooSmall { root, given }),
            Some(given) => mib(given),
        };
        if self.data_size > MAX_PARTITION {
            return Err(Error::TooLarge {
                what: "--data-size",
                size: self.data_size,
                max: MAX_PARTITION,
            });
        }
        Ok(AbSizes {
            esp: esp / SECTOR,
            slot: slot / SECTOR,
            hash: mib(hash_device_len(slot)) / SECTOR,
            data: mib(self.data_size) / SECTOR,
        })
    }
}

/// The smallest `--ab` disk for `disk` on `arch`, in bytes (a whole number of MiB); an error
/// names the option that does not fit.
pub fn ab_efi_size(disk: &AbDisk<'_>, arch: Arch) -> Result<u64> {
    let s = disk.sizes(arch)?;
    let end = FIRST_LBA + s.esp + 2 * (s.slot + s.hash) + s.data;
    Ok(gpt::disk_size_for(end).div_ceil(MIB) * MIB)
}

/// A GUID derived from `seed` and `purpose` that is none of `avoid` (derived again with a
/// counter in the astronomically unlikely case it is).
fn derive_avoiding(seed: &[u8], purpose: &str, avoid: &[Guid]) -> Guid {
    let mut guid = Guid::derive(seed, purpose);
    let mut n = 0u32;
    while avoid.contains(&guid) {
        n += 1;
        guid = Guid::derive(seed, &format!("{purpose} {n}"));
    }
    guid
}

/// Writes an `--ab` disk (the module's table) into `out` and returns its size: `size` if given
/// (at least [`ab_efi_size`], a multiple of 512), else the smallest; the rest of a larger
/// disk is left unpartitioned. Everything is checked before the first byte is written.
pub fn write_ab_efi(
    out: &mut impl Write,
    disk: &AbDisk<'_>,
    arch: Arch,
    size: Option<u64>,
) -> Result<u64> {
    let s = disk.sizes(arch)?;
    let needed = ab_efi_size(disk, arch)?;
    let size = disk_size(size, needed, "the A/B disk")?;
    let uki_path = EntryName::good(disk.version.clone()).path();
    let esp = build_esp(&disk.esp_files(arch, &uki_path), s.esp * SECTOR, "EFI")?;
    let seed = Sha256::digest(disk.uki);
    let (root_type, hash_type) = verity_partition_types(arch);
    let (root_a, hash_a) = disk.root.tree.partition_guids();
    let mut taken = vec![root_a, hash_a];
    let mut guid = |purpose: &str| {
        let g = derive_avoiding(&seed, purpose, &taken);
        taken.push(g);
        g
    };
    let (esp_guid, root_b, hash_b, data_guid) = (
        guid("esp"),
        guid("keel-root-b"),
        guid("keel-root-verity-b"),
        guid("keel-data"),
    );
    let mut at = FIRST_LBA;
    let mut next = |sectors: u64| {
        let first = at;
        at += sectors;
        first
    };
    let parts = [
        Partition {
            type_guid: Guid::ESP,
            guid: esp_guid,
            name: "EFI system partition",
            first_lba: next(s.esp),
            sectors: s.esp,
            data: &esp,
        },
        Partition {
            type_guid: root_type,
            guid: root_a,
            name: "keel-root-a",
            first_lba: next(s.slot),
            sectors: s.slot,
            data: disk.root.data,
        },
        Partition {
            type_guid: hash_type,
            guid: hash_a,
            name: "keel-root-verity-a",
            first_lba: next(s.hash),
            sectors: s.hash,
            data: &disk.root.tree.hash_device,
        },
        Partition {
            type_guid: root_type,
            guid: root_b,
            name: "keel-root-b",
            first_lba: next(s.slot),
            sectors: s.slot,
            data: &[],
        },
        Partition {
            type_guid: hash_type,
            guid: hash_b,
            name: "keel-root-verity-b",
            first_lba: next(s.hash),
            sectors: s.hash,
            data: &[],
        },
        Partition {
            type_guid: Guid::LINUX_DATA,
            guid: data_guid,
            name: "keel-data",
            first_lba: next(s.data),
            sectors: s.data,
            data: &[],
        },
    ];
    gpt::write_disk(out, size, Guid::derive(&seed, "disk"), &parts)?;
    Ok(size)
}

/// The size in bytes of the first partition of type `type_guid`, if the disk has one.
pub fn partition_size(disk: &mut (impl Read + Seek), type_guid: Guid) -> Result<Option<u64>> {
    Ok(find_partition(disk, type_guid)?.map(|e| e.bytes()))
}

/// The verity root partitions' types for `arch`: the root's and its hash tree's.
pub fn verity_partition_types(arch: Arch) -> (Guid, Guid) {
    match arch {
        Arch::X86_64 => (Guid::ROOT_X86_64, Guid::ROOT_VERITY_X86_64),
        Arch::Aarch64 => (Guid::ROOT_AARCH64, Guid::ROOT_VERITY_AARCH64),
    }
}

/// The UKI a `raw-efi` disk boots on `arch`: the file at [`efi_boot_path`] in the disk's EFI
/// system partition (the first GPT entry of the ESP type). Reads the partition table and the
/// ESP only, so a large sparse disk costs no more than a small one.
pub fn read_uki_from_disk(disk: &mut (impl Read + Seek), arch: Arch) -> Result<Vec<u8>> {
    let fat = read_partition(disk, Guid::ESP, 4 << 30)?
        .ok_or(Error::NotRawEfi("no EFI system partition"))?;
    read_boot_file(fat, arch)
}

/// The file at [`efi_boot_path`] for `arch` in the FAT image `fat` (an ESP, or an El Torito
/// EFI image).
pub(crate) fn read_boot_file(fat: Vec<u8>, arch: Arch) -> Result<Vec<u8>> {
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(fat), fatfs::FsOptions::new())
        .map_err(Error::FatRead)?;
    let mut file = Vec::new();
    fs.root_dir()
        .open_file(efi_boot_path(arch))
        .and_then(|mut f| f.read_to_end(&mut file))
        .map_err(Error::FatRead)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fatfs::{FileSystem, FsOptions};
    use keel_disk::ab::read_ab_ukis;
    use std::io::{Cursor, Read};

    #[test]
    fn disk_holds_the_uki_in_its_esp() {
        let uki: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut disk = Vec::new();
        let size = write_raw_efi(&mut disk, &uki, Arch::Aarch64, None).unwrap();
        assert_eq!(size, raw_efi_size(&uki, Arch::Aarch64));
        assert_eq!(disk.len() as u64, size);
        assert_eq!(size % MIB, 0);

        // The first partition entry (LBA 2) says where the ESP is.
        let entry = &disk[1024..1024 + 128];
        assert_eq!(&entry[..16], &Guid::ESP.bytes());
        let first = u64::from_le_bytes(entry[32..40].try_into().unwrap());
        let last = u64::from_le_bytes(entry[40..48].try_into().unwrap());
        let esp = disk[(first * SECTOR) as usize..((last + 1) * SECTOR) as usize].to_vec();
        let fs = FileSystem::new(Cursor::new(esp), FsOptions::new()).unwrap();
        let mut back = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTAA64.EFI")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == uki);

        let mut again = Vec::new();
        write_raw_efi(&mut again, &uki, Arch::Aarch64, None).unwrap();
        assert!(again == disk, "two builds differ");
    }

    #[test]
    fn explicit_sizes() {
        let uki = vec![1u8; 10_000];
        let needed = raw_efi_size(&uki, Arch::X86_64);
        let mut disk = Vec::new();
        let size = write_raw_efi(&mut disk, &uki, Arch::X86_64, Some(needed + 4 * MIB)).unwrap();
        assert_eq!(disk.len() as u64, size);
        assert_eq!(size, needed + 4 * MIB);

        let mut out = Vec::new();
        let err = write_raw_efi(&mut out, &uki, Arch::X86_64, Some(needed - MIB)).unwrap_err();
        assert!(err.to_string().contains(&needed.to_string()), "{err}");
        assert!(
            out.is_empty(),
            "nothing is written before the size is checked"
        );
    }

    #[test]
    fn the_uki_reads_back_from_the_disk() {
        let uki: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let mut disk = Vec::new();
            write_raw_efi(&mut disk, &uki, arch, Some(64 << 20)).unwrap();
            let back = read_uki_from_disk(&mut std::io::Cursor::new(&disk), arch).unwrap();
            assert!(back == uki, "{arch}");
        }
        let mut disk = Vec::new();
        write_raw_efi(&mut disk, &uki, Arch::X86_64, None).unwrap();
        // The other architecture's path is not there.
        let err = read_uki_from_disk(&mut std::io::Cursor::new(&disk), Arch::Aarch64);
        assert!(matches!(err, Err(Error::FatRead(_))), "{err:?}");
        // Hostile tables: no header, an entry size that would allocate without end.
        let mut bad = disk.clone();
        bad[512..520].copy_from_slice(b"NOT PART");
        let err = read_uki_from_disk(&mut std::io::Cursor::new(&bad), Arch::X86_64).unwrap_err();
        assert_eq!(err.to_string(), "not a keel raw-efi disk: no GPT header");
        let mut bad = disk.clone();
        bad[512 + 84..512 + 88].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_uki_from_disk(&mut std::io::Cursor::new(&bad), Arch::X86_64).unwrap_err();
        assert!(err.to_string().contains("implausible"), "{err}");
        let err =
            read_uki_from_disk(&mut std::io::Cursor::new(&disk[..4096]), Arch::X86_64).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
    }

    /// `sfdisk`, as a user inspecting the disk would, sees the ESP, then the root and its hash
    /// partition with the Discoverable Partitions types and the root hash's halves as their
    /// UUIDs; `veritysetup` verifies the two partitions against the root hash.
    #[test]
    fn verity_disk_holds_root_and_hash_partitions() {
        let uki = vec![7u8; 200_000];
        let data: Vec<u8> = (0..300 * 4096u32)
            .map(|i| u8::try_from(i % 241).unwrap())
            .collect();
        let tree = crate::verity::hash_tree(&data, crate::verity::derive_salt(&data)).unwrap();
        let root = VerityRoot {
            data: &data,
            tree: &tree,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut disk = Vec::new();
        let size = write_raw_efi_with(&mut disk, &uki, Arch::X86_64, None, Some(&root)).unwrap();
        assert_eq!(size, raw_efi_size_with(&uki, Arch::X86_64, Some(&root)));
        assert_eq!(disk.len() as u64, size);
        std::fs::write(&path, &disk).unwrap();
        let out = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let parts = table["partitiontable"]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 3, "{table}");
        let text = |half: &[u8]| {
            Guid::from_uuid_bytes(half.try_into().unwrap())
                .to_string()
                .to_uppercase()
        };
        assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
        assert_eq!(parts[1]["uuid"], text(&tree.root_hash[..16]));
        assert_eq!(parts[1]["name"], "keel-root");
        assert_eq!(parts[2]["type"], "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5");
        assert_eq!(parts[2]["uuid"], text(&tree.root_hash[16..]));
        let extract = |p: &serde_json::Value, name: &str| {
            let start = usize::try_from(p["start"].as_u64().unwrap() * SECTOR).unwrap();
            let len = usize::try_from(p["size"].as_u64().unwrap() * SECTOR).unwrap();
            assert_eq!(
                start % usize::try_from(MIB).unwrap(),
                0,
                "{name} is MiB-aligned"
            );
            let file = dir.path().join(name);
            std::fs::write(&file, &disk[start..start + len]).unwrap();
            file
        };
        let (data_part, hash_part) = (extract(&parts[1], "data"), extract(&parts[2], "hash"));
        let verify = std::process::Command::new("veritysetup")
            .arg("verify")
            .arg(&data_part)
            .arg(&hash_part)
            .arg(hex::encode(tree.root_hash))
            .output()
            .unwrap();
        assert!(verify.status.success(), "{verify:?}");
        let mut cursor = Cursor::new(&disk);
        let read = read_partition(&mut cursor, Guid::ROOT_X86_64, 1 << 30)
            .unwrap()
            .unwrap();
        assert!(read[..data.len()] == data[..] && read[data.len()..].iter().all(|b| *b == 0));
        assert!(
            read_partition(&mut cursor, Guid::ROOT_AARCH64, 1 << 30)
                .unwrap()
                .is_none()
        );
        let err = read_partition(&mut cursor, Guid::ROOT_X86_64, 4096).unwrap_err();
        assert!(err.to_string().contains("implausible"), "{err}");
        assert_eq!(read_uki_from_disk(&mut cursor, Arch::X86_64).unwrap(), uki);
        let mut again = Vec::new();
        write_raw_efi_with(&mut again, &uki, Arch::X86_64, None, Some(&root)).unwrap();
        assert!(again == disk, "two builds differ");
        // Not an --ab disk: no UKIs in EFI/Linux.
        assert!(read_ab_ukis(&mut cursor).unwrap().is_empty());
    }

    fn ab_root() -> (Vec<u8>, crate::verity::HashTree) {
        let data: Vec<u8> = (0..700 * 4096u32)
            .map(|i| u8::try_from(i % 239).unwrap())
            .collect();
        let tree = crate::verity::hash_tree(&data, crate::verity::derive_salt(&data)).unwrap();
        (data, tree)
    }

    fn sfdisk(disk: &[u8]) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, disk).unwrap();
        let out = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn hash_partitions_fit_the_hash_tree_of_a_full_slot() {
        for blocks in [1u32, 2, 127, 128, 129, 128 * 128, 128 * 128 + 1, 40_000] {
            let data = vec![0u8; usize::try_from(blocks).unwrap() * 4096];
            let tree = crate::verity::hash_tree(&data, [1; 32]).unwrap();
            assert_eq!(
                hash_device_len(u64::from(blocks) * 4096),
                u64::try_from(tree.hash_device.len()).unwrap(),
                "{blocks} blocks"
            );
        }
    }

    /// The six partitions in order, with their types, names and GUIDs; systemd-boot, its
    /// configuration and the UKI in the ESP; slot A verifies with `veritysetup`; two builds are
    /// byte-identical.
    #[test]
    fn ab_disk_layout() {
        let (data, tree) = ab_root();
        let boot: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let uki = vec![9u8; 3 * 1024 * 1024 + 17];
        let version: ImageVersion = "2.1~rc1^git".parse().unwrap();
        let disk = AbDisk {
            boot_manager: &boot,
            uki: &uki,
            version: &version,
            root: VerityRoot {
                data: &data,
                tree: &tree,
            },
            slot_size: None,
            data_size: DEFAULT_DATA_SIZE,
        };
        for arch in Arch::ALL {
            let mut image = Vec::new();
            let size = write_ab_efi(&mut image, &disk, arch, None).unwrap();
            assert_eq!(size, ab_efi_size(&disk, arch).unwrap());
            assert_eq!(image.len() as u64, size);
            let mut again = Vec::new();
            write_ab_efi(&mut again, &disk, arch, None).unwrap();
            assert!(again == image, "two builds differ");

            let table = sfdisk(&image);
            let parts = table["partitiontable"]["partitions"].as_array().unwrap();
            let (root_type, hash_type) = verity_partition_types(arch);
            let up = |g: Guid| g.to_string().to_uppercase();
            let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
            assert_eq!(
                names,
                [
                    "EFI system partition",
                    "keel-root-a",
                    "keel-root-verity-a",
                    "keel-root-b",
                    "keel-root-verity-b",
                    "keel-data"
                ]
            );
            let types: Vec<String> = parts
                .iter()
                .map(|p| p["type"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                types,
                [
                    up(Guid::ESP),
                    up(root_type),
                    up(hash_type),
                    up(root_type),
                    up(hash_type),
                    up(Guid::LINUX_DATA)
                ]
            );
            let half = |h: &[u8]| up(Guid::from_uuid_bytes(h.try_into().unwrap()));
            let (a, a_hash) = (half(&tree.root_hash[..16]), half(&tree.root_hash[16..]));
            assert_eq!(parts[1]["uuid"], a.as_str());
            assert_eq!(parts[2]["uuid"], a_hash.as_str());
            let uuids: Vec<&str> = parts.iter().map(|p| p["uuid"].as_str().unwrap()).collect();
            for (i, u) in uuids.iter().enumerate() {
                assert_eq!(uuids.iter().filter(|v| *v == u).count(), 1, "{u} repeats");
                if i > 2 {
                    assert!(*u != a && *u != a_hash, "{u}");
                }
            }
            // Sizes: the slots are twice the root, in MiB; B's are A's; data is 64 MiB.
            let sectors = |i: usize| parts[i]["size"].as_u64().unwrap();
            let slot = (2 * data.len() as u64).div_ceil(MIB) * MIB / SECTOR;
            assert_eq!((sectors(1), sectors(3)), (slot, slot));
            assert_eq!(sectors(2), sectors(4));
            assert!(sectors(2) * SECTOR >= hash_device_len(slot * SECTOR));
            assert_eq!(sectors(5) * SECTOR, 64 * MIB);
            // The ESP: 2.5 UKIs, systemd-boot and a MiB.
            let esp_len = (uki.len() as u64 * 5 / 2 + boot.len() as u64 + MIB).div_ceil(MIB) * MIB;
            assert_eq!(sectors(0) * SECTOR, esp_len);
            for p in parts {
                assert_eq!(p["start"].as_u64().unwrap() % (MIB / SECTOR), 0, "{p}");
            }

            let esp = read_partition(&mut Cursor::new(&image), Guid::ESP, 1 << 30)
                .unwrap()
                .unwrap();
            let fs = FileSystem::new(Cursor::new(esp), FsOptions::new()).unwrap();
            let read = |path: &str| {
                let mut back = Vec::new();
                fs.root_dir()
                    .open_file(path)
                    .unwrap_or_else(|e| panic!("{path}: {e}"))
                    .read_to_end(&mut back)
                    .unwrap();
                back
            };
            assert!(read(efi_boot_path(arch)) == boot);
            assert_eq!(read("loader/loader.conf"), LOADER_CONF.as_bytes());
            assert!(read("EFI/Linux/keel-2.1~rc1^git.efi") == uki);
            let ukis = read_ab_ukis(&mut Cursor::new(&image)).unwrap();
            assert_eq!(ukis.len(), 1);
            assert_eq!(ukis[0].0, EntryName::good(version.clone()));
            assert!(ukis[0].1 == uki);

            // Slot A's two partitions verify against the root hash.
            let dir = tempfile::tempdir().unwrap();
            let extract = |i: usize| {
                let start = usize::try_from(parts[i]["start"].as_u64().unwrap() * SECTOR).unwrap();
                let len = usize::try_from(sectors(i) * SECTOR).unwrap();
                let file = dir.path().join(i.to_string());
                std::fs::write(&file, &image[start..start + len]).unwrap();
                file
            };
            let verify = std::process::Command::new("veritysetup")
                .arg("verify")
                .arg(extract(1))
                .arg(extract(2))
                .arg(hex::encode(tree.root_hash))
                .output()
                .unwrap();
            assert!(verify.status.success(), "{verify:?}");
        }
    }

    #[test]
    fn ab_options_are_checked_before_writing() {
        let (data, tree) = ab_root();
        let version = ImageVersion::default();
        let disk = AbDisk {
            boot_manager: b"boot",
            uki: b"uki",
            version: &version,
            root: VerityRoot {
                data: &data,
                tree: &tree,
            },
            slot_size: Some(MIB),
            data_size: MIB,
        };
        let mut out = Vec::new();
        let err = write_ab_efi(&mut out, &disk, Arch::X86_64, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--slot-size of 1048576 bytes cannot hold the verified root (2867200 bytes): give at least 3 MiB, or leave it out (default: twice the root)"
        );
        let hostile = AbDisk {
            slot_size: Some(u64::MAX),
            ..disk
        };
        let err = write_ab_efi(&mut out, &hostile, Arch::X86_64, None).unwrap_err();
        assert!(err.to_string().starts_with("--slot-size of"), "{err}");
        let hostile = AbDisk {
            slot_size: None,
            data_size: u64::MAX - 1,
            ..disk
        };
        let err = write_ab_efi(&mut out, &hostile, Arch::X86_64, None).unwrap_err();
        assert!(err.to_string().starts_with("--data-size of"), "{err}");
        // A slot rounded up to a MiB; --size too small for the layout.
        let fits = AbDisk {
            slot_size: Some(3 * MIB - 5),
            ..disk
        };
        let needed = ab_efi_size(&fits, Arch::X86_64).unwrap();
        let err = write_ab_efi(&mut out, &fits, Arch::X86_64, Some(needed - MIB)).unwrap_err();
        assert!(err.to_string().contains(&needed.to_string()), "{err}");
        assert!(out.is_empty(), "nothing is written before the checks");
        let size = write_ab_efi(&mut out, &fits, Arch::X86_64, Some(needed + MIB)).unwrap();
        assert_eq!(out.len() as u64, size);
    }

    #[test]
    fn image_versions() {
        for good in [
            "1",
            "2.0",
            "2024.12.07-3",
            "1.0~rc1",
            "1^git",
            "a_b",
            &"9".repeat(64),
        ] {
            let v: ImageVersion = good.parse().unwrap();
            assert_eq!(v.as_str(), good);
            assert!(ab_os_release(&v).ends_with(&format!("IMAGE_VERSION={good}\n")));
        }
        assert_eq!(ImageVersion::default().as_str(), "1");
        for bad in ["", "a b", "../x", "a/b", "1\n", "é", "x=y", &"9".repeat(65)] {
            let err = bad.parse::<ImageVersion>().unwrap_err();
            assert!(
                err.to_string().starts_with("invalid image version"),
                "{err}"
            );
        }
        assert_eq!(
            "a/b".parse::<ImageVersion>().unwrap_err().to_string(),
            "invalid image version \"a/b\": it has a character other than those allowed; use up to 64 of A-Z a-z 0-9 . _ ~ ^ -, such as 1 or 2.1"
        );
    }
}
