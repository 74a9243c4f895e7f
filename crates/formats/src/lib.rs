//! Bootable output formats for keel builds.
//!
//! Each writer takes what a build has (kernel and initrd bytes, the command line, the
//! architecture, a disk size) and writes one output deterministically: the same inputs give
//! the same bytes, whatever the clock, time zone, umask or working directory.
//!
//! - [`uki`]: a unified kernel image (systemd's EFI stub + kernel + initrd + cmdline).
//! - [`efi`]: `raw-efi`, a GPT disk with an EFI system partition holding the UKI; with
//!   `--verity` a verified root beside it, with `--ab` two root slots and systemd-boot.
//! - [`esp`], [`gpt`]: the FAT and GPT writers beneath it.
//! - [`iso`]: `iso-efi`, `iso-efi-initrd` (GRUB), `iso-bios` (isolinux, isohybrid) and
//!   `raw-bios`.
//! - [`iso9660`]: ISO 9660 images (Rock Ridge names, El Torito boot catalog): the `--data`
//!   CD and the `iso-*` formats.
//! - [`gcp`]: the `raw-efi` disk as `disk.raw` in a GNU `.tar.gz`, as GCE imports it.
//! - [`vhd`]: the fixed VHD footer (`vhd` and `aws` are raw disks, this one with a footer).
//! - [`convert`]: qcow2, VMDK and dynamic VHD through `qemu-img convert`.
//! - [`verity`]: dm-verity hash trees for `--verity` disks' read-only root.
//! - [`tools`]: the pinned Debian packages boot binaries come from.
//!
//! Writers check sizes before writing anything, so a too-small `--size` fails with the needed
//! size and leaves the output untouched (callers write into a `keel_rootfs::AtomicFile`).

pub mod convert;
pub mod efi;
mod error;
pub mod esp;
pub mod gcp;
pub mod iso;
pub mod iso9660;
pub mod sparse;
pub mod tools;
pub mod vhd;

pub use keel_disk::{ab, gpt, uki, verity};

pub use convert::{Container, convert};
pub use efi::{
    AbDisk, VerityRoot, ab_efi_size, ab_os_release, efi_boot_path, efi_esp, partition_size,
    raw_efi_size, raw_efi_size_with, read_uki_from_disk, verity_partition_types, write_ab_efi,
    write_raw_efi, write_raw_efi_with,
};
pub use error::Error;
pub use gcp::{gcp_disk_size, write_gcp};
pub use iso::{
    BootParts, Isolinux, check_bios_arch, iso_bios, iso_efi, iso_efi_initrd, write_raw_bios,
};
pub use iso9660::{BiosBoot, Iso, IsoFile, IsoOptions, build_iso, data_iso};
pub use keel_disk::ab::{ImageVersion, read_ab_ukis, read_partition};
pub use keel_disk::uki::{
    UkiParts, build_uki, is_unsigned_original, predict_pcr11, sections, strip_signature,
};
pub use sparse::SparseWriter;
pub use tools::{efi_stub, systemd_boot};
pub use vhd::fixed_vhd_footer;

/// Parses a `--size` as LinuxKit does: a number of bytes with a `K`, `M`, `G` or `T` suffix
/// (binary multiples, an optional trailing `B`/`iB`), or a bare number of MiB.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let bad = || Error::InvalidSize(text.to_owned());
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 20),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024M").unwrap(), 1 << 30);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("512").unwrap(), 512 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("3MB").unwrap(), 3 << 20);
        for bad in ["", "0", "1X", "G", "-1G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
