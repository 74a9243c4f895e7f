//! Boot binaries from pinned Debian packages: systemd's EFI stub for UKIs.
//!
//! The pins live in this table (package, exact version, sha256 of the `.deb`, file inside it),
//! the simplest honest form: a `.deb` is fetched once through [`keel_debian`] into a cache
//! directory, verified against its sha256 and read without `dpkg`. To move to a newer upload,
//! look the package up (`apt-cache show systemd-boot-efi`) and update version and sha256
//! together.

use crate::error::{Error, Result};
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

/// The bytes of `tool`, from its package in `cache_dir` (downloaded and verified first if
/// absent).
pub fn fetch(tool: &ToolFile, cache_dir: &Path) -> Result<Vec<u8>> {
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
        .find(|e| e.path == tool.path && e.kind == keel_debian::EntryKind::File)
        .map(|e| e.data)
        .ok_or_else(|| Error::MissingFile {
            package: name.clone(),
            path: tool.path.into(),
        })
}

/// systemd's EFI stub for `arch`, from the pinned package.
pub fn efi_stub(arch: Arch, cache_dir: &Path) -> Result<Vec<u8>> {
    fetch(&efi_stub_pin(arch), cache_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uki::{UkiParts, build_uki};

    /// Fetches the real pinned stubs (Debian's archive is reachable from build machines) into
    /// a cache shared between runs, and builds a UKI from each.
    #[test]
    fn pinned_stubs_build_ukis() {
        let cache = std::env::temp_dir().join("keel-formats-test-debs");
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
