//! The bootable ISO formats and the BIOS disk made from them.
//!
//! - `iso-efi`: an ISO 9660 image whose El Torito EFI entry (platform 0xEF, no emulation) is
//!   a FAT ESP holding the UKI at the removable-media path.
//! - `iso-bios`: isolinux (El Torito BIOS entry, no emulation, boot information table)
//!   booting the kernel and initrd with the command line, made isohybrid: an MBR from
//!   `isohdpfx.bin` that boots the same bytes as a disk.
//! - `raw-bios`: that isohybrid image as a disk, optionally grown to `--size`.
//! - `iso-efi-initrd`: kernel and initrd as ISO 9660 files, booted by Debian's monolithic CD
//!   GRUB (`gcdx64.efi`, `gcdaa64.efi`) from the El Torito ESP.

use crate::efi::{efi_boot_path, efi_esp};
use crate::error::{Error, Result};
use crate::esp::{EspFile, build_esp, esp_size_for};
use crate::iso9660::{BiosBoot, IsoFile, IsoOptions, build_iso};
use keel_image::Arch;
use sha2::{Digest, Sha256};

/// isohybrid rounds images up to whole cylinders of 64 heads × 32 sectors: 1 MiB.
const CYLINDER: u64 = 64 * 32 * 512;
/// The volume identifier of every bootable ISO keel writes.
const VOLUME_ID: &str = "KEEL";
/// Where isolinux finds its files (it looks in `/isolinux` first).
const ISOLINUX_BIN: &str = "isolinux/isolinux.bin";
const LDLINUX_C32: &str = "isolinux/ldlinux.c32";
const ISOLINUX_CFG: &str = "isolinux/isolinux.cfg";
/// isohybrid's check that `isolinux.bin` can be started from its MBR.
const HYBRID_SIGNATURE: u32 = 0x7078_c0fb;

/// `format` (a BIOS format) is refused on architectures without a PC BIOS: x86_64 only.
pub fn check_bios_arch(format: &'static str, arch: Arch) -> Result<()> {
    match arch {
        Arch::X86_64 => Ok(()),
        Arch::Aarch64 => Err(Error::Unsupported {
            format,
            arch: "aarch64",
            supported: "x86_64",
        }),
    }
}

/// The options of an ISO whose El Torito EFI entry is `/boot/efi.img`.
fn efi_iso_options(epoch: u64) -> IsoOptions<'static> {
    IsoOptions {
        volume_id: VOLUME_ID,
        epoch,
        efi_image: Some("boot/efi.img"),
        catalog_path: Some("boot/boot.catalog"),
        ..IsoOptions::default()
    }
}

/// An `iso-efi` image: the ESP holding `uki` as the El Torito EFI boot image.
pub fn iso_efi(uki: &[u8], arch: Arch, epoch: u64) -> Result<Vec<u8>> {
    let esp = efi_esp(uki, arch)?;
    let files = [IsoFile {
        path: "boot/efi.img",
        data: &esp,
    }];
    Ok(build_iso(&files, &efi_iso_options(epoch))?.bytes)
}

/// The `grub.cfg` that boots `/boot/kernel` with `/boot/initrd.img` at once. GRUB's own
/// quoting and variable expansion would change some command lines, so only plain ones (letters,
/// digits, space and `._,=:/@+-`) are accepted.
fn grub_cfg(cmdline: &str) -> Result<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || " ._,=:/@+-".contains(c);
    if !cmdline.chars().all(plain) {
        return Err(Error::IsoName {
            path: "boot/grub/grub.cfg".into(),
            reason: "the kernel command line has characters GRUB would interpret \
                     (only letters, digits, space and ._,=:/@+- pass through unchanged)",
        });
    }
    Ok(format!(
        "set timeout=0\nset default=0\nmenuentry \"keel\" {{\n  linux /boot/kernel {cmdline}\n  \
         initrd /boot/initrd.img\n}}\n"
    ))
}

/// An `iso-efi-initrd` image: `grub` (Debian's monolithic CD GRUB, see
/// the tool image `keel/tools/grub-cd`) at the removable-media path of the El Torito ESP; it finds the
/// ISO 9660 volume by `/.disk/info` and reads `/boot/grub/grub.cfg`, which boots
/// `/boot/kernel` and `/boot/initrd.img` from the ISO: the initrd stays out of the ESP.
pub fn iso_efi_initrd(
    parts: &BootParts<'_>,
    grub: &[u8],
    arch: Arch,
    epoch: u64,
) -> Result<Vec<u8>> {
    let cfg = grub_cfg(parts.cmdline)?;
    let esp_files = [EspFile {
        path: efi_boot_path(arch),
        data: grub,
    }];
    let esp = build_esp(&esp_files, esp_size_for(&esp_files), "EFI")?;
    let files = [
        IsoFile {
            path: ".disk/info",
            data: b"keel\n",
        },
        IsoFile {
            path: "boot/grub/grub.cfg",
            data: cfg.as_bytes(),
        },
        IsoFile {
            path: "boot/kernel",
            data: parts.kernel,
        },
        IsoFile {
            path: "boot/initrd.img",
            data: parts.initrd,
        },
        IsoFile {
            path: "boot/efi.img",
            data: &esp,
        },
    ];
    Ok(build_iso(&files, &efi_iso_options(epoch))?.bytes)
}

/// The isolinux files of the pinned Debian packages (see [`crate::tools::isolinux`]).
#[derive(Debug, Clone)]
pub struct Isolinux {
    /// `isolinux.bin` (package `isolinux`): the El Torito boot file.
    pub isolinux_bin: Vec<u8>,
    /// `isohdpfx.bin` (package `isolinux`): the isohybrid MBR boot code (432 bytes).
    pub isohdpfx: Vec<u8>,
    /// `ldlinux.c32` (package `syslinux-common`): the rest of isolinux's core.
    pub ldlinux_c32: Vec<u8>,
}

/// What a BIOS image (or `iso-efi-initrd`) boots.
#[derive(Debug, Clone, Copy)]
pub struct BootParts<'a> {
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
}

/// The `isolinux.cfg` that boots `/boot/kernel` with `/boot/initrd.img` at once.
fn isolinux_cfg(cmdline: &str) -> Result<String> {
    if cmdline.contains(['\n', '\r']) {
        return Err(Error::IsoName {
            path: ISOLINUX_CFG.into(),
            reason: "the kernel command line has a line break",
        });
    }
    Ok(format!(
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /boot/kernel\n  \
         APPEND initrd=/boot/initrd.img {cmdline}\n"
    ))
}

/// An `iso-bios` image: isolinux booting `parts`, isohybrid, padded to whole MiB.
pub fn iso_bios(parts: &BootParts<'_>, isolinux: &Isolinux, epoch: u64) -> Result<Vec<u8>> {
    let bin = &isolinux.isolinux_bin;
    if bin.len() < 0x44
        || u32::from_le_bytes([bin[0x40], bin[0x41], bin[0x42], bin[0x43]]) != HYBRID_SIGNATURE
    {
        return Err(Error::Boot("isolinux.bin has no isohybrid signature"));
    }
    if isolinux.isohdpfx.len() != 432 {
        return Err(Error::Boot("isohdpfx.bin is not 432 bytes"));
    }
    let cfg = isolinux_cfg(parts.cmdline)?;
    let files = [
        IsoFile {
            path: ISOLINUX_BIN,
            data: bin,
        },
        IsoFile {
            path: LDLINUX_C32,
            data: &isolinux.ldlinux_c32,
        },
        IsoFile {
            path: ISOLINUX_CFG,
            data: cfg.as_bytes(),
        },
        IsoFile {
            path: "boot/kernel",
            data: parts.kernel,
        },
        IsoFile {
            path: "boot/initrd.img",
            data: parts.initrd,
        },
    ];
    let opts = IsoOptions {
        volume_id: VOLUME_ID,
        epoch,
        bios: Some(BiosBoot {
            path: ISOLINUX_BIN,
            load_sectors: 4,
            boot_info_table: true,
        }),
        catalog_path: Some("isolinux/boot.cat"),
        ..IsoOptions::default()
    };
    let iso = build_iso(&files, &opts)?;
    let lba = iso
        .bios_boot_lba
        .ok_or(Error::Boot("the image has no BIOS boot file"))?;
    let mut bytes = iso.bytes;
    let size = (bytes.len() as u64).div_ceil(CYLINDER) * CYLINDER;
    bytes.resize(size as usize, 0);
    let mbr = isohybrid_mbr(&isolinux.isohdpfx, lba, size);
    bytes[..512].copy_from_slice(&mbr);
    Ok(bytes)
}

/// The isohybrid MBR, as syslinux's `isohybrid` writes it with its defaults (64 heads, 32
/// sectors, partition 1 of type 0x17, active, from sector 0 over the whole image): the boot
/// code, the boot file's 512-byte sector for the code to load, a disk signature (derived from
/// the image instead of random) and the partition table. `size` is a whole number of
/// cylinders.
fn isohybrid_mbr(isohdpfx: &[u8], boot_lba: u32, size: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    mbr[..432].copy_from_slice(&isohdpfx[..432]);
    mbr[432..436].copy_from_slice(&(boot_lba * 4).to_le_bytes());
    let mut h = Sha256::new();
    h.update(b"keel isohybrid");
    h.update(boot_lba.to_le_bytes());
    h.update(size.to_le_bytes());
    let id = h.finalize();
    mbr[440..444].copy_from_slice(&id[..4]);
    let (heads, sectors) = (64u64, 32u64);
    let cylinders = size / CYLINDER;
    let last = cylinders.saturating_sub(1);
    let p = &mut mbr[446..462];
    p[0] = 0x80;
    p[1] = 0; // start head
    p[2] = 1; // start sector (cylinder 0)
    p[3] = 0;
    p[4] = 0x17;
    p[5] = (heads - 1) as u8;
    p[6] = (sectors as u8) | (((last & 0x300) >> 2) as u8);
    p[7] = (last & 0xff) as u8;
    let total = u32::try_from(size / 512).unwrap_or(u32::MAX);
    p[8..12].copy_from_slice(&0u32.to_le_bytes());
    p[12..16].copy_from_slice(&total.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// Writes a `raw-bios` disk: the `iso-bios` image `iso` (whose partition covers it), grown with
/// zeros to `size` if given. Returns the disk size.
pub fn write_raw_bios(out: &mut impl std::io::Write, iso: &[u8], size: Option<u64>) -> Result<u64> {
    let needed = iso.len() as u64;
    let size = size.unwrap_or(needed);
    if size < needed {
        return Err(Error::TooSmall {
            what: "the raw-bios disk",
            needed,
            given: size,
        });
    }
    if !size.is_multiple_of(512) {
        return Err(Error::InvalidSize(format!(
            "{size} bytes (not a multiple of 512)"
        )));
    }
    out.write_all(iso).map_err(Error::Write)?;
    crate::sparse::write_zeros(out, size - needed).map_err(Error::Write)?;
    Ok(size)
}

/// ISO 9660's logical sector.
const ISO_SECTOR: u64 = 2048;

/// The UKI an `iso-efi` image boots on `arch`: the file at [`efi_boot_path`] in the FAT image
/// its El Torito catalog names for the EFI platform (0xEF). The FAT image's size comes from its
/// own boot sector (an El Torito entry's 16-bit count cannot hold it); everything is read with
/// limits, so a hostile image is refused, never allocated for.
pub fn read_uki_from_iso(
    iso: &mut (impl std::io::Read + std::io::Seek),
    arch: Arch,
) -> Result<Vec<u8>> {
    use std::io::SeekFrom;
    let mut read_at = |offset: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        iso.seek(SeekFrom::Start(offset))
            .and_then(|_| iso.read_exact(&mut buf))
            .map_err(|_| Error::NotIsoEfi("shorter than its descriptors say"))?;
        Ok(buf)
    };
    let record = read_at(17 * ISO_SECTOR, 2048)?;
    if &record[1..6] != b"CD001" || &record[7..30] != b"EL TORITO SPECIFICATION" {
        return Err(Error::NotIsoEfi("no El Torito boot record"));
    }
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let le16 = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let catalog = read_at(u64::from(le32(&record, 71)) * ISO_SECTOR, 2048)?;
    // The validation entry names the default entry's platform; section headers (0x90, 0x91)
    // name their entries'.
    let mut platform = catalog[1];
    let mut esp_lba = None;
    for e in catalog.chunks(32).skip(1) {
        match e[0] {
            0x90 | 0x91 => platform = e[1],
            0x88 if platform == 0xEF => {
                esp_lba = Some(u64::from(le32(e, 8)));
                break;
            }
            _ => {}
        }
    }
    let start = esp_lba.ok_or(Error::NotIsoEfi("no EFI boot entry"))? * ISO_SECTOR;
    let boot = read_at(start, 512)?;
    let sector_size = u64::from(le16(&boot, 11));
    let sectors = match le16(&boot, 19) {
        0 => u64::from(le32(&boot, 32)),
        n => u64::from(n),
    };
    let len = Some(sector_size)
        .filter(|n| [512, 1024, 2048, 4096].contains(n))
        .and_then(|n| n.checked_mul(sectors))
        .filter(|n| (512..=4 << 30).contains(n))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(Error::NotIsoEfi("an implausible EFI boot image"))?;
    crate::efi::read_boot_file(read_at(start, len)?, arch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso9660::SECTOR;

    fn fake_isolinux() -> Isolinux {
        let mut bin = vec![0u8; 4096];
        bin[0x40..0x44].copy_from_slice(&HYBRID_SIGNATURE.to_le_bytes());
        bin[100] = 9;
        Isolinux {
            isolinux_bin: bin,
            isohdpfx: vec![0x33; 432],
            ldlinux_c32: vec![5; 1000],
        }
    }

    #[test]
    fn bios_image_is_isohybrid_with_a_patched_boot_file() {
        let parts = BootParts {
            kernel: &[1; 5000],
            initrd: &[2; 7000],
            cmdline: "console=ttyS0",
        };
        let iso = iso_bios(&parts, &fake_isolinux(), 0).unwrap();
        assert_eq!(iso.len() as u64 % CYLINDER, 0);
        // El Torito boot record → catalog → default entry → isolinux.bin.
        assert_eq!(
            &iso[17 * SECTOR + 7..17 * SECTOR + 30],
            b"EL TORITO SPECIFICATION"
        );
        let cat = u32::from_le_bytes(iso[17 * SECTOR + 71..17 * SECTOR + 75].try_into().unwrap());
        let cat = &iso[cat as usize * SECTOR..][..64];
        assert_eq!((cat[0], cat[1], cat[30], cat[31]), (1, 0, 0x55, 0xAA));
        assert_eq!(cat[32], 0x88);
        assert_eq!(u16::from_le_bytes([cat[38], cat[39]]), 4);
        let lba = u32::from_le_bytes(cat[40..44].try_into().unwrap());
        let bin = &iso[lba as usize * SECTOR..][..4096];
        // Boot information table: PVD at 16, the file's own LBA and length, checksum.
        assert_eq!(u32::from_le_bytes(bin[8..12].try_into().unwrap()), 16);
        assert_eq!(u32::from_le_bytes(bin[12..16].try_into().unwrap()), lba);
        assert_eq!(u32::from_le_bytes(bin[16..20].try_into().unwrap()), 4096);
        let sum = fake_isolinux().isolinux_bin[64..]
            .chunks(4)
            .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
            .fold(0u32, u32::wrapping_add);
        assert_eq!(u32::from_le_bytes(bin[20..24].try_into().unwrap()), sum);
        assert_eq!(&bin[24..64], &[0u8; 40][..]);
        // The MBR: boot code, the boot file's 512-byte sector, one active 0x17 partition
        // over the whole image.
        assert_eq!(&iso[..432], &[0x33; 432][..]);
        assert_eq!(
            u32::from_le_bytes(iso[432..436].try_into().unwrap()),
            lba * 4
        );
        assert_eq!((iso[446], iso[450]), (0x80, 0x17));
        let sectors = u32::from_le_bytes(iso[458..462].try_into().unwrap());
        assert_eq!(sectors as usize * 512, iso.len());
        assert_eq!(&iso[462..510], &[0u8; 48][..]);
        assert_eq!((iso[510], iso[511]), (0x55, 0xAA));
        assert!(iso == iso_bios(&parts, &fake_isolinux(), 0).unwrap());
    }

    #[test]
    fn bios_needs_a_hybrid_isolinux() {
        let mut l = fake_isolinux();
        l.isolinux_bin[0x40] = 0;
        let parts = BootParts {
            kernel: b"k",
            initrd: b"i",
            cmdline: "",
        };
        assert!(matches!(iso_bios(&parts, &l, 0), Err(Error::Boot(_))));
        let parts = BootParts {
            cmdline: "a\nb",
            ..parts
        };
        assert!(iso_bios(&parts, &fake_isolinux(), 0).is_err());
    }

    #[test]
    fn efi_image_boot_entry() {
        let uki = vec![7u8; 100_000];
        let iso = iso_efi(&uki, Arch::Aarch64, 5).unwrap();
        let cat = u32::from_le_bytes(iso[17 * SECTOR + 71..17 * SECTOR + 75].try_into().unwrap());
        let cat = &iso[cat as usize * SECTOR..][..64];
        // Validation entry for platform EFI, then the default entry: the ESP, all of it.
        assert_eq!((cat[0], cat[1]), (1, 0xEF));
        let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(cat[32], 0x88);
        let esp = efi_esp(&uki, Arch::Aarch64).unwrap();
        let count = u16::from_le_bytes([cat[38], cat[39]]) as usize;
        assert_eq!(count * 512, esp.len());
        let lba = u32::from_le_bytes(cat[40..44].try_into().unwrap()) as usize;
        assert!(iso[lba * SECTOR..][..esp.len()] == esp[..]);
        // Laid out last.
        assert_eq!(iso.len(), lba * SECTOR + esp.len());
        assert!(iso == iso_efi(&uki, Arch::Aarch64, 5).unwrap());
        assert!(iso != iso_efi(&uki, Arch::Aarch64, 6).unwrap());
    }

    #[test]
    fn raw_bios_sizes() {
        let iso = vec![3u8; 2 << 20];
        let mut out = Vec::new();
        assert_eq!(write_raw_bios(&mut out, &iso, None).unwrap(), 2 << 20);
        assert!(out == iso);
        let mut out = Vec::new();
        let err = write_raw_bios(&mut out, &iso, Some(1 << 20)).unwrap_err();
        assert!(err.to_string().contains(&(2u64 << 20).to_string()), "{err}");
        assert!(out.is_empty());
        assert_eq!(
            write_raw_bios(&mut out, &iso, Some(3 << 20)).unwrap(),
            3 << 20
        );
        assert_eq!(out.len(), 3 << 20);
        assert!(out[2 << 20..].iter().all(|&b| b == 0));
    }

    #[test]
    fn efi_initrd_image_keeps_the_initrd_on_the_iso() {
        let parts = BootParts {
            kernel: &[1; 5000],
            initrd: &[2; 70_000],
            cmdline: "console=ttyS0 keel.console=1",
        };
        let iso = iso_efi_initrd(&parts, b"grub", Arch::X86_64, 0).unwrap();
        let cat = u32::from_le_bytes(iso[17 * SECTOR + 71..17 * SECTOR + 75].try_into().unwrap());
        let cat = &iso[cat as usize * SECTOR..][..64];
        assert_eq!((cat[1], cat[32]), (0xEF, 0x88));
        let lba = u32::from_le_bytes(cat[40..44].try_into().unwrap()) as usize;
        let count = u16::from_le_bytes([cat[38], cat[39]]) as usize;
        // The ESP holds GRUB only; the initrd is on the ISO 9660 side.
        let esp = &iso[lba * SECTOR..][..count * 512];
        let grub_only = [EspFile {
            path: "EFI/BOOT/BOOTX64.EFI",
            data: b"grub",
        }];
        assert_eq!(esp.len() as u64, esp_size_for(&grub_only));
        assert!(!esp.windows(64).any(|w| w == [2u8; 64]));
        assert!(iso.windows(64).any(|w| w == [2u8; 64]));
        let cfg = grub_cfg(parts.cmdline).unwrap();
        assert!(
            cfg.contains("linux /boot/kernel console=ttyS0 keel.console=1\n"),
            "{cfg}"
        );
        assert!(iso.windows(cfg.len()).any(|w| w == cfg.as_bytes()));
        for bad in ["a$b", "x\"y", "a;b", "a\nb"] {
            let parts = BootParts {
                cmdline: bad,
                ..parts
            };
            assert!(
                iso_efi_initrd(&parts, b"grub", Arch::X86_64, 0).is_err(),
                "{bad}"
            );
        }
        assert!(iso == iso_efi_initrd(&parts, b"grub", Arch::X86_64, 0).unwrap());
    }

    #[test]
    fn bios_formats_are_x86_64_only() {
        assert!(check_bios_arch("iso-bios", Arch::X86_64).is_ok());
        let err = check_bios_arch("iso-bios", Arch::Aarch64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "format iso-bios is not available for aarch64: it is for x86_64 only"
        );
    }

    #[test]
    fn the_uki_reads_back_from_an_iso() {
        let uki: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let iso = iso_efi(&uki, arch, 0).unwrap();
            let back = read_uki_from_iso(&mut std::io::Cursor::new(&iso), arch).unwrap();
            assert!(back == uki, "{arch}");
        }
        let iso = iso_efi(&uki, Arch::X86_64, 0).unwrap();
        // Hostile images: no boot record, a catalog without an EFI entry, a huge FAT.
        let mut bad = iso.clone();
        bad[17 * 2048 + 7] = b'X';
        let err = read_uki_from_iso(&mut std::io::Cursor::new(&bad), Arch::X86_64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not an iso-efi image: no El Torito boot record"
        );
        let catalog = u64::from(u32::from_le_bytes(
            iso[17 * 2048 + 71..17 * 2048 + 75].try_into().unwrap(),
        ));
        let at = usize::try_from(catalog * 2048).unwrap();
        let mut bad = iso.clone();
        bad[at + 1] = 0;
        let err = read_uki_from_iso(&mut std::io::Cursor::new(&bad), Arch::X86_64).unwrap_err();
        assert!(err.to_string().contains("no EFI boot entry"), "{err}");
        let lba = u32::from_le_bytes(iso[at + 40..at + 44].try_into().unwrap());
        let fat = usize::try_from(u64::from(lba) * 2048).unwrap();
        let mut bad = iso.clone();
        bad[fat + 11..fat + 13].copy_from_slice(&u16::MAX.to_le_bytes());
        bad[fat + 19..fat + 21].copy_from_slice(&u16::MAX.to_le_bytes());
        let err = read_uki_from_iso(&mut std::io::Cursor::new(&bad), Arch::X86_64).unwrap_err();
        assert!(err.to_string().contains("implausible"), "{err}");
        let err =
            read_uki_from_iso(&mut std::io::Cursor::new(&iso[..40_000]), Arch::X86_64).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
    }
}
