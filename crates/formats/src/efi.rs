//! `raw-efi`: a GPT disk whose only partition is an EFI system partition holding a UKI at the
//! removable-media path firmware boots without any boot entry (`EFI/BOOT/BOOT<ARCH>.EFI`).

use crate::error::{Error, Result};
use crate::esp::{EspFile, build_esp, esp_size_for};
use crate::gpt::{self, FIRST_LBA, Guid, Partition, SECTOR};
use crate::verity::HashTree;
use keel_image::Arch;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};

const MIB: u64 = 1 << 20;

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
                guid: Guid::from_uuid_bytes(data_guid),
                name: "keel-root",
                first_lba: data_lba,
                sectors: data_sectors,
                data: self.data,
            },
            Partition {
                type_guid: hash_type,
                guid: Guid::from_uuid_bytes(hash_guid),
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

/// [`write_raw_efi`], with a verity-protected `root` after the ESP if given.
pub fn write_raw_efi_with(
    out: &mut impl Write,
    uki: &[u8],
    arch: Arch,
    size: Option<u64>,
    root: Option<&VerityRoot<'_>>,
) -> Result<u64> {
    let needed = raw_efi_size_with(uki, arch, root);
    let size = size.unwrap_or(needed);
    if size < needed {
        return Err(Error::TooSmall {
            what: "the raw-efi disk",
            needed,
            given: size,
        });
    }
    if !size.is_multiple_of(SECTOR) {
        return Err(Error::InvalidSize(format!(
            "{size} bytes (not a multiple of {SECTOR})"
        )));
    }
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

/// One GPT partition entry: its type and its first and last sectors.
struct Entry {
    type_guid: [u8; 16],
    first: u64,
    last: u64,
}

/// The partition table of a GPT disk, read with limits: a hostile table is refused, never
/// allocated for.
fn partition_table(disk: &mut (impl Read + Seek)) -> Result<Vec<Entry>> {
    let header = read_at(disk, SECTOR, SECTOR as usize)?;
    if &header[..8] != b"EFI PART" {
        return Err(Error::NotRawEfi("no GPT header"));
    }
    let le64 = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let (entries_lba, count, entry_size) = (
        le64(&header, 72),
        le32(&header, 80) as usize,
        le32(&header, 84) as usize,
    );
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        return Err(Error::NotRawEfi("an implausible partition table"));
    }
    let table = read_at(disk, entries_lba.saturating_mul(SECTOR), count * entry_size)?;
    Ok(table
        .chunks(entry_size)
        .map(|e| Entry {
            type_guid: e[..16].try_into().unwrap_or_default(),
            first: le64(e, 32),
            last: le64(e, 40),
        })
        .collect())
}

fn read_at(disk: &mut (impl Read + Seek), offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.read_exact(&mut buf))
        .map_err(|_| Error::NotRawEfi("shorter than its partition table says"))?;
    Ok(buf)
}

/// The contents of the first partition of type `type_guid`, if the disk has one, read whole
/// (at most `max` bytes: a larger one is refused).
pub fn read_partition(
    disk: &mut (impl Read + Seek),
    type_guid: Guid,
    max: u64,
) -> Result<Option<Vec<u8>>> {
    let Some(entry) = partition_table(disk)?
        .into_iter()
        .find(|e| e.type_guid == type_guid.bytes())
    else {
        return Ok(None);
    };
    let len = entry
        .last
        .checked_sub(entry.first)
        .map(|n| (n + 1).saturating_mul(SECTOR))
        .filter(|&n| n <= max)
        .ok_or(Error::NotRawEfi("an implausible partition"))?;
    let len = usize::try_from(len).map_err(|_| Error::NotRawEfi("an implausible partition"))?;
    read_at(disk, entry.first.saturating_mul(SECTOR), len).map(Some)
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
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(fat), fatfs::FsOptions::new())
        .map_err(Error::FatRead)?;
    let mut uki = Vec::new();
    fs.root_dir()
        .open_file(efi_boot_path(arch))
        .and_then(|mut f| f.read_to_end(&mut uki))
        .map_err(Error::FatRead)?;
    Ok(uki)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fatfs::{FileSystem, FsOptions};
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
    }
}
