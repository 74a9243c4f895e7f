//! The `.modinfo` section of a kernel module (an ELF64 relocatable object): the `key=value`
//! strings `depmod` reads to build `modules.dep`, `modules.alias` and `modules.softdep`.
//! Debian's kernel packages ship no `modules.dep` (their postinst runs `depmod`), so keel
//! derives those files from here.

use thiserror::Error;

/// Why a module's `.modinfo` could not be read.
#[derive(Debug, Error)]
pub enum ModinfoError {
    /// Not a little-endian ELF64 file (the only kind x86_64 and aarch64 produce).
    #[error("not a little-endian ELF64 object")]
    NotElf64,
    /// A header or section points outside the file.
    #[error("truncated or corrupt ELF")]
    Corrupt,
    /// The object has no `.modinfo` section.
    #[error("no .modinfo section")]
    NoModinfo,
}

/// What `depmod` needs from one module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, if the module records it (kernels since 5.3 do).
    pub name: Option<String>,
    /// `depends=`: modules providing symbols this one uses.
    pub depends: Vec<String>,
    /// Every `alias=` (device match patterns, `fs-*`, `devname:*`, `char-major-*`, ...).
    pub aliases: Vec<String>,
    /// Every `softdep=` value, e.g. `pre: crc32c`.
    pub softdeps: Vec<String>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, ModinfoError> {
    let bytes = data.get(at..at + 2).ok_or(ModinfoError::Corrupt)?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, ModinfoError> {
    let bytes = data.get(at..at + 4).ok_or(ModinfoError::Corrupt)?;
    let mut buf = [0u8; 4];
    buf.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(buf))
}

fn u64_at(data: &[u8], at: usize) -> Result<usize, ModinfoError> {
    let bytes = data.get(at..at + 8).ok_or(ModinfoError::Corrupt)?;
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    usize::try_from(u64::from_le_bytes(buf)).map_err(|_| ModinfoError::Corrupt)
}

fn slice(data: &[u8], offset: usize, size: usize) -> Result<&[u8], ModinfoError> {
    let end = offset.checked_add(size).ok_or(ModinfoError::Corrupt)?;
    data.get(offset..end).ok_or(ModinfoError::Corrupt)
}

/// The raw `.modinfo` section of an ELF64 little-endian object.
fn modinfo_section(data: &[u8]) -> Result<&[u8], ModinfoError> {
    // e_ident: magic, EI_CLASS = 2 (64-bit), EI_DATA = 1 (little endian).
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(ModinfoError::NotElf64);
    }
    let shoff = u64_at(data, 0x28)?;
    let shentsize = usize::from(u16_at(data, 0x3a)?);
    let shnum = usize::from(u16_at(data, 0x3c)?);
    let shstrndx = usize::from(u16_at(data, 0x3e)?);
    if shentsize < 64 || shstrndx >= shnum {
        return Err(ModinfoError::Corrupt);
    }
    let section = |index: usize| -> Result<(u32, usize, usize), ModinfoError> {
        let at = shoff
            .checked_add(index * shentsize)
            .ok_or(ModinfoError::Corrupt)?;
        Ok((
            u32_at(data, at)?,
            u64_at(data, at + 24)?,
            u64_at(data, at + 32)?,
        ))
    };
    let (_, strtab_offset, strtab_size) = section(shstrndx)?;
    let strtab = slice(data, strtab_offset, strtab_size)?;
    for index in 0..shnum {
        let (name_offset, offset, size) = section(index)?;
        let name = strtab
            .get(name_offset as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .ok_or(ModinfoError::Corrupt)?;
        if name == b".modinfo" {
            return slice(data, offset, size);
        }
    }
    Err(ModinfoError::NoModinfo)
}

impl ModInfo {
    /// Reads the `.modinfo` of an uncompressed module.
    pub fn parse(module: &[u8]) -> Result<ModInfo, ModinfoError> {
        let mut info = ModInfo::default();
        for entry in modinfo_section(module)?.split(|&b| b == 0) {
            let entry = String::from_utf8_lossy(entry);
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            match key {
                "name" => info.name = Some(value.to_owned()),
                "depends" => info.depends.extend(
                    value
                        .split(',')
                        .filter(|d| !d.is_empty())
                        .map(str::to_owned),
                ),
                "alias" => info.aliases.push(value.to_owned()),
                "softdep" => info.softdeps.push(value.to_owned()),
                _ => {}
            }
        }
        Ok(info)
    }
}

/// Builds a minimal ELF64 little-endian object with the given sections (tests only).
#[cfg(test)]
pub(crate) fn test_elf(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut shstrtab = vec![0u8];
    let mut names = Vec::new();
    for (name, _) in sections.iter().chain([(".shstrtab", &[][..])].iter()) {
        names.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    let mut out = vec![0u8; 64];
    out[..6].copy_from_slice(b"\x7fELF\x02\x01");
    let mut placed = Vec::new();
    for (_, data) in sections {
        placed.push((out.len(), data.len()));
        out.extend_from_slice(data);
    }
    placed.push((out.len(), shstrtab.len()));
    out.extend_from_slice(&shstrtab);
    let shoff = out.len();
    // Section 0 is the null section.
    out.extend_from_slice(&[0u8; 64]);
    for (name, (offset, size)) in names.iter().zip(&placed) {
        let mut header = [0u8; 64];
        header[..4].copy_from_slice(&name.to_le_bytes());
        header[24..32].copy_from_slice(&(*offset as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(*size as u64).to_le_bytes());
        out.extend_from_slice(&header);
    }
    let shnum = placed.len() as u16 + 1;
    out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&(shnum - 1).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_modinfo_fields() {
        let modinfo = b"license=GPL\0alias=virtio:d00000002v*\0depends=virtio,virtio_ring\0softdep=pre: crc32c\0name=virtio_blk\0vermagic=6.1.0 SMP mod_unload\0alias=fs-x\0";
        let elf = test_elf(&[(".text", b"\x90\x90"), (".modinfo", modinfo)]);
        let info = ModInfo::parse(&elf).unwrap();
        assert_eq!(info.name.as_deref(), Some("virtio_blk"));
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.aliases, ["virtio:d00000002v*", "fs-x"]);
        assert_eq!(info.softdeps, ["pre: crc32c"]);
    }

    #[test]
    fn empty_depends_means_none() {
        let elf = test_elf(&[(".modinfo", b"depends=\0name=overlay\0")]);
        assert!(ModInfo::parse(&elf).unwrap().depends.is_empty());
    }

    #[test]
    fn rejects_non_modules() {
        assert!(matches!(
            ModInfo::parse(b"MZ not elf"),
            Err(ModinfoError::NotElf64)
        ));
        let elf = test_elf(&[(".text", b"\x90")]);
        assert!(matches!(ModInfo::parse(&elf), Err(ModinfoError::NoModinfo)));
        let mut truncated = test_elf(&[(".modinfo", b"name=x\0")]);
        truncated.truncate(100);
        assert!(matches!(
            ModInfo::parse(&truncated),
            Err(ModinfoError::Corrupt)
        ));
    }
}
