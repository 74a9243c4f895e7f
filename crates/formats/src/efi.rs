//! `raw-efi`: a GPT disk whose only partition is an EFI system partition holding a UKI at the
//! removable-media path firmware boots without any boot entry (`EFI/BOOT/BOOT<ARCH>.EFI`).

use crate::error::{Error, Result};
use crate::esp::{EspFile, build_esp, esp_size_for};
use crate::gpt::{self, FIRST_LBA, Guid, Partition, SECTOR};
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

/// The smallest `raw-efi` disk for `uki`, in bytes (a whole number of MiB).
pub fn raw_efi_size(uki: &[u8], arch: Arch) -> u64 {
    let esp = esp_size_for(&esp_files(uki, arch));
    gpt::disk_size_for(FIRST_LBA + esp / SECTOR).div_ceil(MIB) * MIB
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
    let needed = raw_efi_size(uki, arch);
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
    let part = Partition {
        type_guid: Guid::ESP,
        guid: Guid::derive(&seed, "esp"),
        name: "EFI system partition",
        first_lba: FIRST_LBA,
        sectors: esp.len() as u64 / SECTOR,
        data: &esp,
    };
    gpt::write_disk(out, size, Guid::derive(&seed, "disk"), &[part])?;
    Ok(size)
}

/// The UKI a `raw-efi` disk boots on `arch`: the file at [`efi_boot_path`] in the disk's EFI
/// system partition (the first GPT entry of the ESP type). Reads the partition table and the
/// ESP only, so a large sparse disk costs no more than a small one.
pub fn read_uki_from_disk(disk: &mut (impl Read + Seek), arch: Arch) -> Result<Vec<u8>> {
    let mut read_at = |offset: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        disk.seek(SeekFrom::Start(offset))
            .and_then(|_| disk.read_exact(&mut buf))
            .map_err(|_| Error::NotRawEfi("shorter than its partition table says"))?;
        Ok(buf)
    };
    let header = read_at(SECTOR, SECTOR as usize)?;
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
    let table = read_at(entries_lba * SECTOR, count * entry_size)?;
    let esp = table
        .chunks(entry_size)
        .find(|e| e[..16] == Guid::ESP.bytes())
        .ok_or(Error::NotRawEfi("no EFI system partition"))?;
    let (first, last) = (le64(esp, 32), le64(esp, 40));
    let len = last
        .checked_sub(first)
        .map(|n| (n + 1) * SECTOR)
        .filter(|&n| n <= 4 << 30)
        .ok_or(Error::NotRawEfi("an implausible EFI system partition"))?;
    let fat = read_at(first * SECTOR, len as usize)?;
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
}
