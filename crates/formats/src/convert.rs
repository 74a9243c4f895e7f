//! Image containers made by `qemu-img convert` from a raw disk: qcow2, VMDK and dynamic VHD.
//!
//! QEMU's writers are the reference implementations of these formats and what LinuxKit uses,
//! so keel converts rather than reimplements them. Two of them put non-reproducible values in
//! their headers, which are then fixed here: the dynamic VHD's footer (creation time and a
//! random UUID, in the copy at the start and at the end) and the VMDK's content ID.

use crate::error::{Error, Result};
use crate::gpt::Guid;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

/// A container `qemu-img` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// qcow2 (compat 1.1), as `qcow2-bios` and `qcow2-efi`.
    Qcow2,
    /// Monolithic sparse VMDK.
    Vmdk,
    /// Dynamic VHD (`vpc`, `subformat=dynamic`, `force_size`).
    DynamicVhd,
}

impl Container {
    fn args(self) -> &'static [&'static str] {
        match self {
            Container::Qcow2 => &["-O", "qcow2", "-o", "compat=1.1"],
            Container::Vmdk => &["-O", "vmdk"],
            Container::DynamicVhd => &["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
        }
    }
}

/// Converts the raw disk `raw` into `to` and streams the result into `out`. `mtime` (Unix
/// seconds) and `seed` replace the clock and randomness `qemu-img` would put in the header.
pub fn convert(
    raw: &Path,
    to: Container,
    mtime: u64,
    seed: &[u8],
    out: &mut impl Write,
) -> Result<()> {
    let dir = tempfile::tempdir().map_err(Error::Write)?;
    let dest = dir.path().join("image");
    qemu_img(
        Command::new("qemu-img")
            .arg("convert")
            .args(["-q", "-f", "raw"])
            .args(to.args())
            .arg(raw)
            .arg(&dest)
            .env("TZ", "UTC"),
    )?;
    let mut file = File::options()
        .read(true)
        .write(true)
        .open(&dest)
        .map_err(Error::Write)?;
    match to {
        Container::Qcow2 => {}
        Container::Vmdk => fix_vmdk_cid(&mut file, seed).map_err(Error::Write)?,
        Container::DynamicVhd => fix_vhd_footers(&mut file, mtime, seed).map_err(Error::Write)?,
    }
    file.seek(SeekFrom::Start(0)).map_err(Error::Write)?;
    io::copy(&mut file, out).map_err(Error::Write)?;
    Ok(())
}

/// Rewrites the `CID=` (and a `parentCID` of `ffffffff` stays) in a monolithic sparse VMDK's
/// embedded descriptor with a value derived from `seed`.
fn fix_vmdk_cid(file: &mut File, seed: &[u8]) -> io::Result<()> {
    // The descriptor starts at the sector given in the sparse header (offset 28, u64 LE).
    let mut header = [0u8; 512];
    file.read_exact(&mut header)?;
    if &header[..4] != b"KDMV" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a sparse VMDK",
        ));
    }
    let at = u64::from_le_bytes(header[28..36].try_into().unwrap_or_default()) * 512;
    let len = u64::from_le_bytes(header[36..44].try_into().unwrap_or_default()) * 512;
    let mut area = vec![0u8; len.min(1 << 20) as usize];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut area)?;
    // The text ends at the first NUL. qemu rewrites the CID in place on the first write
    // (`vmdk_write_cid`), so when the new value is shorter than the one it created the image
    // with, the old text's last bytes stay after that NUL: they are dropped, not kept.
    let desc = &area[..area.iter().position(|b| *b == 0).unwrap_or(area.len())];
    let key = b"\nCID=";
    let Some(pos) = desc.windows(key.len()).position(|w| w == key) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "VMDK descriptor has no CID",
        ));
    };
    let cid = Guid::derive(seed, "vmdk-cid").bytes();
    let text = format!(
        "{:08x}",
        u32::from_le_bytes([cid[0], cid[1], cid[2], cid[3]]) | 1
    );
    let start = pos + key.len();
    // qemu-img writes the CID with `%x`: 1 to 8 digits. Rewrite the whole descriptor with a
    // fixed-width value, re-padded with NULs, so the bytes do not depend on the random one.
    let end = desc[start..]
        .iter()
        .position(|b| *b == b'\n')
        .map(|n| start + n)
        .filter(|&e| e > start && desc[start..e].iter().all(u8::is_ascii_hexdigit))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "VMDK CID is not hexadecimal"))?;
    let mut fixed = Vec::with_capacity(area.len());
    fixed.extend_from_slice(&desc[..start]);
    fixed.extend_from_slice(text.as_bytes());
    fixed.extend_from_slice(&desc[end..]);
    // At least one NUL must end the text inside the area.
    if fixed.len() >= area.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "VMDK descriptor overflows its area",
        ));
    }
    fixed.resize(area.len(), 0);
    file.seek(SeekFrom::Start(at))?;
    file.write_all(&fixed)
}

/// Sets the timestamp and unique ID of both footers of a dynamic VHD and recomputes their
/// checksums.
fn fix_vhd_footers(file: &mut File, mtime: u64, seed: &[u8]) -> io::Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    for at in [0, len - 512] {
        let mut f = [0u8; 512];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut f)?;
        if &f[..8] != b"conectix" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no VHD footer"));
        }
        let stamp = u32::try_from(mtime.saturating_sub(946_684_800)).unwrap_or(u32::MAX);
        f[24..28].copy_from_slice(&stamp.to_be_bytes());
        f[68..84].copy_from_slice(&Guid::derive(seed, "vhd").bytes());
        f[64..68].fill(0);
        let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&f)?;
    }
    Ok(())
}

/// Converts the disk image `image` (any container `qemu-img` reads: qcow2, VMDK, VHD) to a raw
/// disk at `raw`, sparse where the image has no data.
pub fn to_raw(image: &Path, raw: &Path) -> Result<()> {
    qemu_img(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(image)
            .arg(raw),
    )
}

/// Runs a `qemu-img` command; its failure carries what it printed.
fn qemu_img(command: &mut Command) -> Result<()> {
    let output = command.output().map_err(|source| Error::Spawn {
        program: "qemu-img",
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Tool {
            program: "qemu-img",
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A sparse VMDK header (sector 0) and a one-sector embedded descriptor with this CID.
    fn fake_vmdk(cid: &str) -> tempfile::NamedTempFile {
        fake_vmdk_with_tail(cid, b"")
    }

    /// As [`fake_vmdk`], with `tail` after the NUL that ends the descriptor's text (what qemu
    /// leaves when it rewrites a CID with a shorter one).
    fn fake_vmdk_with_tail(cid: &str, tail: &[u8]) -> tempfile::NamedTempFile {
        let mut header = [0u8; 512];
        header[..4].copy_from_slice(b"KDMV");
        header[28..36].copy_from_slice(&1u64.to_le_bytes());
        header[36..44].copy_from_slice(&1u64.to_le_bytes());
        let mut desc = format!(
            "# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n"
        )
        .into_bytes();
        desc.push(0);
        desc.extend_from_slice(tail);
        desc.resize(512, 0);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&header).unwrap();
        f.write_all(&desc).unwrap();
        f
    }

    #[test]
    fn vmdk_cid_is_rewritten_whatever_its_width() {
        let fixed = |f: tempfile::NamedTempFile| {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(f.path())
                .unwrap();
            fix_vmdk_cid(&mut file, b"seed").unwrap();
            std::fs::read(f.path()).unwrap()
        };
        let short = fixed(fake_vmdk("7a3"));
        assert_eq!(
            short,
            fixed(fake_vmdk("1234abcd")),
            "the random CID's width leaks into the output"
        );
        // What qemu leaves behind a CID rewritten one digit shorter: `\n` after the NUL.
        assert_eq!(
            fixed(fake_vmdk_with_tail("1234abc", b"\n")),
            short,
            "bytes after the descriptor's NUL leak into the output"
        );
        let text = String::from_utf8_lossy(&short[512..]).into_owned();
        let cid = text.lines().find_map(|l| l.strip_prefix("CID=")).unwrap();
        assert_eq!(cid.len(), 8, "{text}");
        assert!(text.contains("\nparentCID=ffffffff\ncreateType="), "{text}");
        assert_eq!(short.len(), 1024);
        assert!(
            fix_vmdk_cid(
                &mut std::fs::File::open(fake_vmdk("xyz").path()).unwrap(),
                b"s"
            )
            .is_err()
        );
    }

    use super::*;
    use keel_image::Arch;

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn containers_check_and_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let uki: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let mut file = File::create(&raw).unwrap();
        let size = crate::write_raw_efi(&mut file, &uki, Arch::X86_64, Some(48 << 20)).unwrap();
        drop(file);
        for (to, format) in [
            (Container::Qcow2, "qcow2"),
            (Container::Vmdk, "vmdk"),
            (Container::DynamicVhd, "vpc"),
        ] {
            let mut a = Vec::new();
            convert(&raw, to, 1_700_000_000, b"seed", &mut a).unwrap();
            let mut b = Vec::new();
            convert(&raw, to, 1_700_000_000, b"seed", &mut b).unwrap();
            assert!(a == b, "{format}: two conversions differ");

            let path = dir.path().join(format!("out.{format}"));
            std::fs::write(&path, &a).unwrap();
            let path = path.to_str().unwrap();
            let (ok, info) = qemu_img(&["info", "--output=json", path]);
            assert!(ok, "{info}");
            let info: serde_json::Value = serde_json::from_str(&info).unwrap();
            assert_eq!(info["format"], format, "{info}");
            assert_eq!(info["virtual-size"], size, "{format}: {info}");
            if to != Container::DynamicVhd {
                let (ok, out) = qemu_img(&["check", path]);
                assert!(ok, "{format}: {out}");
            }
            // The data reads back as the raw disk.
            let (ok, out) = qemu_img(&[
                "compare",
                "-f",
                "raw",
                "-F",
                format,
                raw.to_str().unwrap(),
                path,
            ]);
            assert!(ok, "{format}: {out}");
        }
    }

    #[test]
    fn qemu_img_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = convert(
            &dir.path().join("missing"),
            Container::Qcow2,
            0,
            b"",
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Tool { .. }), "{err}");
    }
}
