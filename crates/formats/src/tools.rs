//! Boot binaries from pinned Debian packages: systemd's EFI stub for UKIs, systemd-boot for
//! `--ab` disks, isolinux for the BIOS formats, GRUB for `iso-efi-initrd`.
//!
//! The pins live in this table (package, exact version, sha256 of the `.deb`, file inside it).
//! A `.deb` is fetched through [`keel_debian`] into a cache directory, verified against its
//! sha256 and read without `dpkg`. The `keel` tool turns these files into pinned OCI tool
//! images in its store (`keel/src/tools.rs`), which is where builds take them from. To move
//! to a newer upload, look the package up (`apt-cache show systemd-boot-efi`), update version
//! and sha256 together, then the tool image's digest.

use crate::error::{Error, Result};
use crate::iso::Isolinux;
use keel_debian::PinnedPackage;
use keel_image::Arch;
use std::path::Path;

/// One file of one pinned package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolFile {
    pub package: &'static str,
    pub version: &'static str,
    /// Debian architecture of the package.
    pub arch: &'static str,
    pub sha256: &'static str,
    /// Path of the file inside the package, without a leading `/`.
    pub path: &'static str,
}

/// systemd's EFI stub (`systemd-boot-efi`, bookworm's 252), for [`crate::build_uki`].
pub fn efi_stub_pin(arch: Arch) -> ToolFile {
    match arch {
        Arch::X86_64 => ToolFile {
            package: "systemd-boot-efi",
            version: "252.39-1~deb12u2",
            arch: "amd64",
            sha256: "8f2b81bdcfafc466882a0cae460272dbf10d8d97c6a3c1c6ea33038c155a2f5e",
            path: "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        },
        Arch::Aarch64 => ToolFile {
            package: "systemd-boot-efi",
            version: "252.39-1~deb12u2",
            arch: "arm64",
            sha256: "d75fbbfa90d37d409e7e65f1149afd770bc17daa3f15f49ef651f608fe7e1dbc",
            path: "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
        },
    }
}

/// systemd-boot (`systemd-boot-efi`, the same upload as [`efi_stub_pin`]), the boot manager of
/// `--ab` disks ([`crate::efi::write_ab_efi`]): it picks the newest UKI in `EFI/Linux/`.
pub fn systemd_boot_pin(arch: Arch) -> ToolFile {
    let stub = efi_stub_pin(arch);
    ToolFile {
        path: match arch {
            Arch::X86_64 => "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            Arch::Aarch64 => "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        },
        ..stub
    }
}

/// The syslinux upload both isolinux packages come from (bookworm's; `Architecture: all`,
/// pinned as the amd64 archive lists them).
const SYSLINUX_VERSION: &str = "3:6.04~git20190206.bf6db5b4+dfsg1-3";

/// isolinux's files: `isolinux.bin` and `isohdpfx.bin` (package `isolinux`) and
/// `ldlinux.c32` (package `syslinux-common`), in that order.
pub fn isolinux_pins() -> [ToolFile; 3] {
    let isolinux = |path| ToolFile {
        package: "isolinux",
        version: SYSLINUX_VERSION,
        arch: "amd64",
        sha256: "cb14af88adc2c3844976cd2de61571d2af94d2fb65c277fe4acf3dc8a5d25aae",
        path,
    };
    [
        isolinux("usr/lib/ISOLINUX/isolinux.bin"),
        isolinux("usr/lib/ISOLINUX/isohdpfx.bin"),
        ToolFile {
            package: "syslinux-common",
            version: SYSLINUX_VERSION,
            arch: "amd64",
            sha256: "f7e4ead7fdfe5cb6117d8d2485d75e53570a8cf680c81a432f92c1774f878875",
            path: "usr/lib/syslinux/modules/bios/ldlinux.c32",
        },
    ]
}

/// Debian's monolithic GRUB for CDs (`iso9660` built in; it finds its volume by
/// `/.disk/info` and reads `/boot/grub/grub.cfg`), bookworm's 2.06, as signed for shim (the
/// signature is inert without Secure Boot).
pub fn grub_cd_pin(arch: Arch) -> ToolFile {
    match arch {
        Arch::X86_64 => ToolFile {
            package: "grub-efi-amd64-signed",
            version: "1+2.06+13+deb12u2",
            arch: "amd64",
            sha256: "fbe2b28166a6dca8111bbf6a30d52d4781973c3a0440d8080f901e039b1f83f2",
            path: "usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed",
        },
        Arch::Aarch64 => ToolFile {
            package: "grub-efi-arm64-signed",
            version: "1+2.06+13+deb12u2",
            arch: "arm64",
            sha256: "0035392c773553c70bb22079146b0365ff8220419997837289cc1591c2233e8e",
            path: "usr/lib/grub/arm64-efi-signed/gcdaa64.efi.signed",
        },
    }
}

/// The CD GRUB for `arch`, from the pinned package, for [`crate::iso::iso_efi_initrd`].
pub fn grub_cd(arch: Arch, cache_dir: &Path) -> Result<Vec<u8>> {
    fetch(&grub_cd_pin(arch), cache_dir)
}

/// isolinux from the pinned packages, for [`crate::iso_bios`].
pub fn isolinux(cache_dir: &Path) -> Result<Isolinux> {
    let [bin, hdpfx, ldlinux] = isolinux_pins();
    Ok(Isolinux {
        isolinux_bin: fetch(&bin, cache_dir)?,
        isohdpfx: fetch(&hdpfx, cache_dir)?,
        ldlinux_c32: fetch(&ldlinux, cache_dir)?,
    })
}

/// The bytes of `tool`, from its package in `cache_dir` (downloaded and verified first if
/// absent).
pub fn fetch(tool: &ToolFile, cache_dir: &Path) -> Result<Vec<u8>> {
    fetch_file(tool, tool.path, cache_dir)
}

/// The bytes of another regular file of `tool`'s package (`path` without a leading `/`), such
/// as its copyright file.
pub fn fetch_file(tool: &ToolFile, path: &str, cache_dir: &Path) -> Result<Vec<u8>> {
    let name = format!("{}:{}={}", tool.package, tool.arch, tool.version);
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| Error::Package {
        package: name.clone(),
        source,
    };
    let pin = PinnedPackage {
        name: tool.package.into(),
        version: tool.version.into(),
        arch: tool.arch.into(),
        sha256: tool.sha256.into(),
    };
    let deb = keel_debian::download(&pin, cache_dir).map_err(|e| fail(e.into()))?;
    let contents = keel_debian::unpack(&deb).map_err(|e| fail(e.into()))?;
    contents
        .entries()
        .map_err(|e| fail(e.into()))?
        .into_iter()
        .find(|e| e.path == path && e.kind == keel_debian::EntryKind::File)
        .map(|e| e.data)
        .ok_or_else(|| Error::MissingFile {
            package: name.clone(),
            path: path.into(),
        })
}

/// systemd's EFI stub for `arch`, from the pinned package.
pub fn efi_stub(arch: Arch, cache_dir: &Path) -> Result<Vec<u8>> {
    fetch(&efi_stub_pin(arch), cache_dir)
}

/// systemd-boot for `arch`, from the pinned package.
pub fn systemd_boot(arch: Arch, cache_dir: &Path) -> Result<Vec<u8>> {
    fetch(&systemd_boot_pin(arch), cache_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uki::{UkiParts, build_uki};

    #[test]
    fn pinned_systemd_boot_is_a_pe_image_for_its_machine() {
        let cache = keel_testutil::deb_cache();
        for arch in Arch::ALL {
            let boot = systemd_boot(arch, &cache).unwrap();
            let pe = goblin::pe::PE::parse(&boot).unwrap();
            let expected = match arch {
                Arch::X86_64 => goblin::pe::header::COFF_MACHINE_X86_64,
                Arch::Aarch64 => goblin::pe::header::COFF_MACHINE_ARM64,
            };
            assert_eq!(pe.header.coff_header.machine, expected, "{arch}");
            // The boot manager, not the stub: it reads loader.conf.
            assert!(boot.windows(13).any(|w| w == b"auto-firmware"), "{arch}");
        }
    }

    /// Fetches the real pinned stubs (Debian's archive is reachable from build machines) into
    /// the test run's shared cache, and builds a UKI from each.
    /// The pinned isolinux files are the ones the host's packages install, when it has them.
    #[test]
    fn pinned_isolinux() {
        let cache = keel_testutil::deb_cache();
        let l = isolinux(&cache).unwrap();
        assert_eq!(l.isohdpfx.len(), 432);
        assert_eq!(&l.isolinux_bin[0x40..0x44], &0x7078_c0fbu32.to_le_bytes());
        // ldlinux.c32 is an ELF module.
        assert_eq!(&l.ldlinux_c32[..4], b"\x7fELF");
        for (pin, data) in
            isolinux_pins()
                .iter()
                .zip([&l.isolinux_bin, &l.isohdpfx, &l.ldlinux_c32])
        {
            let host = Path::new("/").join(pin.path);
            if let Ok(host) = std::fs::read(&host) {
                assert!(host == *data, "{} differs from the host's", pin.path);
            }
        }
    }

    #[test]
    fn pinned_cd_grubs_are_pe_images_for_their_machine() {
        let cache = keel_testutil::deb_cache();
        for arch in Arch::ALL {
            let grub = grub_cd(arch, &cache).unwrap();
            let pe = goblin::pe::PE::parse(&grub).unwrap();
            let expected = match arch {
                Arch::X86_64 => goblin::pe::header::COFF_MACHINE_X86_64,
                Arch::Aarch64 => goblin::pe::header::COFF_MACHINE_ARM64,
            };
            assert_eq!(pe.header.coff_header.machine, expected, "{arch}");
            // The embedded early config that finds the CD.
            assert!(grub.windows(11).any(|w| w == b"/.disk/info"), "{arch}");
        }
    }

    #[test]
    fn pinned_stubs_build_ukis() {
        let cache = keel_testutil::deb_cache();
        for arch in Arch::ALL {
            let stub = efi_stub(arch, &cache).unwrap();
            let uki = build_uki(
                &stub,
                &UkiParts {
                    kernel: b"kernel",
                    initrd: b"initrd",
                    cmdline: "quiet",
                    os_release: None,
                    uname: None,
                },
            )
            .unwrap();
            let pe = goblin::pe::PE::parse(&uki).unwrap();
            let machine = pe.header.coff_header.machine;
            let expected = match arch {
                Arch::X86_64 => goblin::pe::header::COFF_MACHINE_X86_64,
                Arch::Aarch64 => goblin::pe::header::COFF_MACHINE_ARM64,
            };
            assert_eq!(machine, expected, "{arch}");
            let last = pe.sections.last().unwrap();
            assert_eq!(last.name().unwrap(), ".linux");
            // The stub's own sections survive, before the three appended ones.
            let own = goblin::pe::PE::parse(&stub).unwrap().sections.len();
            assert_eq!(pe.sections.len(), own + 3, "{arch}");
            assert_eq!(pe.sections[0].name().unwrap(), ".text");
        }
    }
}
