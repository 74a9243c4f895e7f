//! `raw-efi`: a GPT disk whose only partition is an EFI system partition holding a UKI at the
//! removable-media path firmware boots without any boot entry (`EFI/BOOT/BOOT<ARCH>.EFI`).

use crate::error::{Error, Result};
use crate::esp::{EspFile, build_esp, esp_size_for};
use crate::gpt::{self, FIRST_LBA, Guid, Partition, SECTOR};
use keel_image::Arch;
use sha2::{Digest, Sha256};
use std::io::Write;

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
}
