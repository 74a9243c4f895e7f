//! Builds one output from a `kernel+initrd` build, for trying formats by hand:
//!
//! `cargo run -p keel-formats --example mkformat -- FORMAT ARCH KERNEL INITRD CMDLINE_FILE OUT [SIZE]`
//!
//! FORMAT is `uki`, `raw-efi`, `qcow2-efi`, `vhd`, `dynamic-vhd`, `vmdk`, `iso-efi`, `iso-efi-initrd`, `iso-bios`
//! or `raw-bios`; ARCH `x86_64` or `aarch64`. The EFI stub and isolinux are fetched into
//! `$KEEL_CACHE/debs` (default `/tmp/keel-debs`).

use keel_formats::{Container, UkiParts, build_uki, efi_stub, write_raw_efi};
use keel_image::Arch;
use std::error::Error;
use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [format, arch, kernel, initrd, cmdline, out, rest @ ..] = &args[..] else {
        return Err("usage: mkformat FORMAT ARCH KERNEL INITRD CMDLINE_FILE OUT [SIZE]".into());
    };
    let arch: Arch = arch.parse()?;
    let size = rest
        .first()
        .map(|s| keel_formats::parse_size(s))
        .transpose()?;
    let cache = std::env::var_os("KEEL_CACHE")
        .map(|c| PathBuf::from(c).join("debs"))
        .unwrap_or_else(|| "/tmp/keel-debs".into());
    let stub = efi_stub(arch, &cache)?;
    let kernel = std::fs::read(kernel)?;
    let initrd = std::fs::read(initrd)?;
    let cmdline = std::fs::read_to_string(cmdline)?;
    let uki = build_uki(
        &stub,
        &UkiParts {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: cmdline.trim(),
            os_release: Some("NAME=keel\nID=keel\nPRETTY_NAME=keel\n"),
            uname: None,
        },
    )?;
    let mtime = keel_rootfs::source_date_epoch();
    let mut file = keel_rootfs::AtomicFile::create(out)?;
    let bios = || -> Result<Vec<u8>, Box<dyn Error>> {
        keel_formats::check_bios_arch("iso-bios", arch)?;
        let parts = keel_formats::BootParts {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: cmdline.trim(),
        };
        let isolinux = keel_formats::tools::isolinux(&cache)?;
        Ok(keel_formats::iso_bios(&parts, &isolinux, mtime)?)
    };
    match format.as_str() {
        "uki" => file.write_all(&uki)?,
        "iso-efi" => file.write_all(&keel_formats::iso_efi(&uki, arch, mtime)?)?,
        "iso-bios" => file.write_all(&bios()?)?,
        "iso-efi-initrd" => {
            let parts = keel_formats::BootParts {
                kernel: &kernel,
                initrd: &initrd,
                cmdline: cmdline.trim(),
            };
            let grub = keel_formats::tools::grub_cd(arch, &cache)?;
            file.write_all(&keel_formats::iso_efi_initrd(&parts, &grub, arch, mtime)?)?;
        }
        "raw-bios" => {
            keel_formats::write_raw_bios(&mut file, &bios()?, size)?;
        }
        "raw-efi" => {
            write_raw_efi(&mut file, &uki, arch, size)?;
        }
        "vhd" => {
            let size = write_raw_efi(&mut file, &uki, arch, size)?;
            file.write_all(&keel_formats::fixed_vhd_footer(size, mtime, &uki))?;
        }
        "qcow2-efi" | "dynamic-vhd" | "vmdk" => {
            let to = match format.as_str() {
                "qcow2-efi" => Container::Qcow2,
                "vmdk" => Container::Vmdk,
                _ => Container::DynamicVhd,
            };
            let mut raw = tempfile::NamedTempFile::new()?;
            write_raw_efi(&mut raw, &uki, arch, size)?;
            raw.flush()?;
            keel_formats::convert(raw.path(), to, mtime, &uki, &mut file)?;
        }
        other => return Err(format!("unknown format {other}").into()),
    }
    file.commit()?;
    Ok(())
}
