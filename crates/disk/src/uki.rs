//! Unified kernel images: systemd's EFI stub with the kernel, initrd and command line appended
//! as PE sections, the way `ukify` builds them.
//!
//! This module owns a minimal PE32+ editor: it parses only what appending sections needs
//! (the COFF header, the optional header's sizes and alignments, the section table), appends
//! each new section at the next `SectionAlignment` boundary after the last one, and fixes
//! `NumberOfSections`, `SizeOfInitializedData`, `SizeOfImage` and the checksum.

use crate::error::{Error, Result};

/// The parts of a UKI besides the stub.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    /// The kernel image (`bzImage` on x86_64, the PE `Image` on aarch64).
    pub kernel: &'a [u8],
    /// The initrd (concatenated cpio archives, compressed or not).
    pub initrd: &'a [u8],
    /// The kernel command line.
    pub cmdline: &'a str,
    /// `/etc/os-release` text for `.osrel` (boot menus show its `PRETTY_NAME`).
    pub os_release: Option<&'a str>,
    /// The kernel release (`uname -r`) for `.uname`.
    pub uname: Option<&'a str>,
}

/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`: what ukify gives every section.
const DATA_SECTION: u32 = 0x0000_0040 | 0x4000_0000;
const SECTION_HEADER: usize = 40;
const PE32_PLUS: u16 = 0x20b;
/// Index of the certificate table among the data directories.
const SECURITY_DIR: usize = 4;

/// Builds a UKI: `stub` with `.osrel`, `.cmdline`, `.uname`, `.initrd` and `.linux` appended in
/// ukify's order (`.linux` last, so that the kernel's own image can grow past the file).
pub fn build_uki(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>> {
    let mut sections: Vec<(&str, &[u8])> = Vec::new();
    if let Some(osrel) = parts.os_release {
        sections.push((".osrel", osrel.as_bytes()));
    }
    sections.push((".cmdline", parts.cmdline.as_bytes()));
    if let Some(uname) = parts.uname {
        sections.push((".uname", uname.as_bytes()));
    }
    sections.push((".initrd", parts.initrd));
    sections.push((".linux", parts.kernel));
    append_sections(stub, &sections)
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(Error::Stub("truncated header"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(Error::Stub("truncated header"))
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

/// Where the fields this editor touches are, in a PE32+ image.
struct Layout {
    coff: usize,
    opt: usize,
    sections: usize,
    count: usize,
    section_align: u64,
    file_align: u64,
    size_of_headers: usize,
}

impl Layout {
    /// The layout of a stub keel may append to: not signed.
    fn parse(pe: &[u8]) -> Result<Layout> {
        let l = Layout::parse_any(pe)?;
        let dirs = u32_at(pe, l.opt + 108)? as usize;
        if dirs > SECURITY_DIR && u32_at(pe, l.opt + 112 + 8 * SECURITY_DIR + 4)? != 0 {
            // Appending would invalidate the signature; a signed UKI is signed as a whole.
            return Err(Error::Stub("the stub is signed"));
        }
        Ok(l)
    }

    /// The layout of any PE32+ image, signed or not.
    fn parse_any(pe: &[u8]) -> Result<Layout> {
        if pe.get(..2) != Some(b"MZ") {
            return Err(Error::Stub("no MZ signature"));
        }
        let sig = u32_at(pe, 0x3c)? as usize;
        if pe.get(sig..sig + 4) != Some(b"PE\0\0") {
            return Err(Error::Stub("no PE signature"));
        }
        let coff = sig + 4;
        let count = usize::from(u16_at(pe, coff + 2)?);
        let opt_size = usize::from(u16_at(pe, coff + 16)?);
        let opt = coff + 20;
        if u16_at(pe, opt)? != PE32_PLUS {
            return Err(Error::Stub("not a PE32+ image"));
        }
        let section_align = u64::from(u32_at(pe, opt + 32)?);
        let file_align = u64::from(u32_at(pe, opt + 36)?);
        if !section_align.is_power_of_two() || !file_align.is_power_of_two() {
            return Err(Error::Stub("alignment is not a power of two"));
        }
        let l = Layout {
            coff,
            opt,
            sections: opt + opt_size,
            count,
            section_align,
            file_align,
            size_of_headers: u32_at(pe, opt + 60)? as usize,
        };
        if l.sections + l.count * SECTION_HEADER > pe.len().min(l.size_of_headers) {
            return Err(Error::Stub("truncated section table"));
        }
        Ok(l)
    }

    fn section(&self, i: usize) -> usize {
        self.sections + i * SECTION_HEADER
    }
}

/// Appends `(name, data)` sections to the PE32+ image `stub` and returns the new image.
fn append_sections(stub: &[u8], new: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let l = Layout::parse(stub)?;
    if l.sections + (l.count + new.len()) * SECTION_HEADER > l.size_of_headers {
        return Err(Error::StubHeaderFull { needed: new.len() });
    }
    // The end of the existing sections, in memory and in the file. Anything after the last
    // section's raw data (an overlay, a COFF symbol table) is dropped, as objcopy would.
    let mut virt_end = 0u64;
    let mut file_end = l.size_of_headers as u64;
    for i in 0..l.count {
        let s = l.section(i);
        let vsize = u64::from(u32_at(stub, s + 8)?);
        let va = u64::from(u32_at(stub, s + 12)?);
        let raw_size = u64::from(u32_at(stub, s + 16)?);
        let raw_ptr = u64::from(u32_at(stub, s + 20)?);
        virt_end = virt_end.max(va + vsize.max(raw_size));
        if raw_size > 0 {
            file_end = file_end.max(raw_ptr + raw_size);
        }
    }
    if file_end > stub.len() as u64 {
        return Err(Error::Stub("section data past the end of the file"));
    }
    let mut out = stub[..file_end as usize].to_vec();
    let mut init_data = u64::from(u32_at(&out, l.opt + 8)?);
    let mut va = align_up(virt_end, l.section_align);
    let mut ptr = align_up(file_end, l.file_align);
    for (i, (name, data)) in new.iter().enumerate() {
        let raw_size = align_up(data.len() as u64, l.file_align);
        let end = ptr + raw_size;
        let too_large = || Error::TooLarge {
            what: "a UKI",
            size: end,
            max: u64::from(u32::MAX),
        };
        let fits = |v: u64| u32::try_from(v).map_err(|_| too_large());
        let mut header = [0u8; SECTION_HEADER];
        let name = name.as_bytes();
        header[..name.len().min(8)].copy_from_slice(&name[..name.len().min(8)]);
        put_u32(&mut header, 8, fits(data.len() as u64)?);
        put_u32(&mut header, 12, fits(va)?);
        put_u32(&mut header, 16, fits(raw_size)?);
        put_u32(&mut header, 20, fits(ptr)?);
        put_u32(&mut header, 36, DATA_SECTION);
        let at = l.section(l.count + i);
        out[at..at + SECTION_HEADER].copy_from_slice(&header);

        out.resize(ptr as usize, 0);
        out.extend_from_slice(data);
        out.resize((ptr + raw_size) as usize, 0);
        init_data += data.len() as u64;
        va = align_up(va + data.len() as u64, l.section_align);
        ptr += raw_size;
        fits(va)?;
    }
    let count = u16::try_from(l.count + new.len()).map_err(|_| Error::Stub("too many sections"))?;
    put_u16(&mut out, l.coff + 2, count);
    // A symbol table would have been in the dropped overlay.
    put_u32(&mut out, l.coff + 8, 0);
    put_u32(&mut out, l.coff + 12, 0);
    put_u32(
        &mut out,
        l.opt + 8,
        u32::try_from(init_data).map_err(|_| Error::Stub("initialised data too large"))?,
    );
    // `va` is already the aligned end of the last section.
    put_u32(&mut out, l.opt + 56, va as u32);
    let checksum = pe_checksum(&out, l.opt + 64);
    put_u32(&mut out, l.opt + 64, checksum);
    Ok(out)
}

/// The sections of a PE image by name, each as the loader sees it (`VirtualSize` bytes, the
/// file's data followed by zeros where the size in memory is larger), in file order.
pub fn sections(pe: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let l = Layout::parse_any(pe)?;
    let mut out = Vec::with_capacity(l.count);
    for i in 0..l.count {
        let h = l.section(i);
        let raw_name = &pe[h..h + 8];
        let name = &raw_name[..raw_name.iter().position(|&b| b == 0).unwrap_or(8)];
        let vsize = u32_at(pe, h + 8)? as usize;
        let raw_size = u32_at(pe, h + 16)? as usize;
        let raw_ptr = u32_at(pe, h + 20)? as usize;
        let file = pe
            .get(raw_ptr..raw_ptr + raw_size.min(vsize))
            .ok_or(Error::Stub("section data past the end of the file"))?;
        let mut data = file.to_vec();
        data.resize(vsize, 0);
        out.push((String::from_utf8_lossy(name).into_owned(), data));
    }
    Ok(out)
}

/// Where the fields Authenticode treats specially are in a PE32+ image, and its sections'
/// data, as file offsets.
#[derive(Debug, Clone)]
pub struct PeHeaders {
    /// The 4-byte checksum.
    pub checksum: usize,
    /// The certificate table's 8-byte data directory entry.
    pub cert_dir: usize,
    pub size_of_headers: usize,
    /// Each section's data: (offset, length in the file).
    pub sections: Vec<(usize, usize)>,
    /// The certificate table (offset, length), if the image has one.
    pub cert_table: Option<(usize, usize)>,
}

/// The [`PeHeaders`] of any PE32+ image, signed or not; a certificate directory is required
/// (every EFI stub has one).
pub fn pe_headers(pe: &[u8]) -> Result<PeHeaders> {
    let l = Layout::parse_any(pe)?;
    let dirs = u32_at(pe, l.opt + 108)? as usize;
    if dirs <= SECURITY_DIR {
        return Err(Error::Stub("no certificate table directory"));
    }
    let cert_dir = l.opt + 112 + 8 * SECURITY_DIR;
    let (at, size) = (
        u32_at(pe, cert_dir)? as usize,
        u32_at(pe, cert_dir + 4)? as usize,
    );
    let mut sections = Vec::with_capacity(l.count);
    for i in 0..l.count {
        let h = l.section(i);
        sections.push((u32_at(pe, h + 20)? as usize, u32_at(pe, h + 16)? as usize));
    }
    Ok(PeHeaders {
        checksum: l.opt + 64,
        cert_dir,
        size_of_headers: l.size_of_headers,
        sections,
        cert_table: (size != 0).then_some((at, size)),
    })
}

/// `pe` without its Authenticode signature, as it was before `sbsign`: the certificate table
/// cut off, its directory entry zeroed, the checksum recomputed. `None` if it has none.
pub fn strip_signature(pe: &[u8]) -> Result<Option<Vec<u8>>> {
    let l = Layout::parse_any(pe)?;
    let dirs = u32_at(pe, l.opt + 108)? as usize;
    if dirs <= SECURITY_DIR {
        return Ok(None);
    }
    let entry = l.opt + 112 + 8 * SECURITY_DIR;
    let (at, size) = (u32_at(pe, entry)? as usize, u32_at(pe, entry + 4)? as usize);
    if size == 0 {
        return Ok(None);
    }
    // The table is the file's tail, after every section's data.
    if at.checked_add(size) != Some(pe.len()) {
        return Err(Error::Stub(
            "the certificate table is not at the end of the file",
        ));
    }
    let mut out = pe[..at].to_vec();
    put_u32(&mut out, entry, 0);
    put_u32(&mut out, entry + 4, 0);
    let checksum = pe_checksum(&out, l.opt + 64);
    put_u32(&mut out, l.opt + 64, checksum);
    Ok(Some(out))
}

/// Whether `stripped` ([`strip_signature`]'s output) is `original` as it was before `sbsign`:
/// identical but for what signing changes besides appending the table, the checksum and up to
/// seven zero bytes that align the table to 8 bytes (a file keel wrote is aligned already).
pub fn is_unsigned_original(stripped: &[u8], original: &[u8]) -> Result<bool> {
    let l = Layout::parse_any(original)?;
    let checksum = l.opt + 64..l.opt + 68;
    let Some(padding) = stripped.get(original.len()..) else {
        return Ok(false);
    };
    if padding.len() > 7 || padding.iter().any(|b| *b != 0) {
        return Ok(false);
    }
    let same = |range: std::ops::Range<usize>| stripped.get(range.clone()) == original.get(range);
    Ok(same(0..checksum.start) && same(checksum.end..original.len()))
}

/// The sections systemd's stub (252, the version keel's stub is) extends into TPM PCR 11, in
/// the order it does: each one present is measured as its name with a NUL, then its data.
/// (`.pcrsig` is in the stub's list but not measured; `.uname` and `.sbat` came after 252.)
pub const PCR11_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// The value TPM PCR 11 (SHA-256 bank) has once systemd's stub in `uki` has measured it: it
/// starts at zero, and each measurement extends it, `pcr = sha256(pcr || sha256(event))`.
/// Firmware and the kernel's own stub use other PCRs, so this is PCR 11 when the kernel starts
/// (a `systemd-pcrphase` would extend it further; keel's systems have none).
pub fn predict_pcr11(uki: &[u8]) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let sections = sections(uki)?;
    let mut pcr = [0u8; 32];
    let mut extend = |event: &[u8]| {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(Sha256::digest(event));
        pcr = h.finalize().into();
    };
    for wanted in PCR11_SECTIONS {
        if let Some((_, data)) = sections.iter().find(|(n, _)| n == wanted) {
            if data.is_empty() {
                continue;
            }
            let mut name = wanted.as_bytes().to_vec();
            name.push(0);
            extend(&name);
            extend(data);
        }
    }
    Ok(pcr)
}

/// The PE image checksum (as `imagehlp`'s `CheckSumMappedFile` and pefile compute it): the
/// 16-bit one's-complement-style sum of the file with the checksum field taken as zero, plus
/// the file's length.
fn pe_checksum(pe: &[u8], field: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in pe.chunks(2).enumerate() {
        let off = i * 2;
        if off == field || off == field + 2 {
            continue;
        }
        let word = u64::from(chunk[0]) | u64::from(*chunk.get(1).unwrap_or(&0)) << 8;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use goblin::pe::PE;

    /// A minimal PE32+ EFI application: headers with room for 16 sections and one `.text`
    /// section, alignments as in systemd's stubs.
    pub(crate) fn fake_stub() -> Vec<u8> {
        let mut pe = vec![0u8; 0x600];
        pe[..2].copy_from_slice(b"MZ");
        put_u32(&mut pe, 0x3c, 0x80);
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut pe, coff, 0x8664);
        put_u16(&mut pe, coff + 2, 1);
        put_u16(&mut pe, coff + 16, 240);
        put_u16(&mut pe, coff + 18, 0x206);
        let opt = coff + 20;
        put_u16(&mut pe, opt, PE32_PLUS);
        put_u32(&mut pe, opt + 4, 0x200);
        put_u32(&mut pe, opt + 16, 0x1000);
        put_u32(&mut pe, opt + 20, 0x1000);
        put_u32(&mut pe, opt + 32, 0x1000);
        put_u32(&mut pe, opt + 36, 0x200);
        put_u32(&mut pe, opt + 56, 0x2000);
        put_u32(&mut pe, opt + 60, 0x400);
        put_u16(&mut pe, opt + 68, 10);
        put_u32(&mut pe, opt + 108, 16);
        let s = opt + 240;
        pe[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut pe, s + 8, 0x10);
        put_u32(&mut pe, s + 12, 0x1000);
        put_u32(&mut pe, s + 16, 0x200);
        put_u32(&mut pe, s + 20, 0x400);
        put_u32(&mut pe, s + 36, 0x6000_0020);
        pe[0x400] = 0xc3;
        pe
    }

    fn parts<'a>(kernel: &'a [u8], initrd: &'a [u8]) -> UkiParts<'a> {
        UkiParts {
            kernel,
            initrd,
            cmdline: "console=ttyS0",
            os_release: Some("ID=keel\n"),
            uname: Some("6.1.0"),
        }
    }

    /// The value a TPM reaches from zero by extending each event's SHA-256 in turn.
    fn extended(events: &[&[u8]]) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        events.iter().fold([0u8; 32], |pcr, event| {
            Sha256::new()
                .chain_update(pcr)
                .chain_update(Sha256::digest(event))
                .finalize()
                .into()
        })
    }

    #[test]
    fn a_signature_strips_back_to_the_unsigned_image() {
        let uki = build_uki(&fake_stub(), &parts(b"kernel", b"initrd")).unwrap();
        assert!(strip_signature(&uki).unwrap().is_none());
        // What sbsign does: a certificate table appended, named in the security directory,
        // the checksum recomputed.
        let mut signed = uki.clone();
        let l = Layout::parse_any(&uki).unwrap();
        let entry = l.opt + 112 + 8 * SECURITY_DIR;
        put_u32(&mut signed, entry, uki.len() as u32);
        put_u32(&mut signed, entry + 4, 24);
        signed.extend_from_slice(&[0x5a; 24]);
        let checksum = pe_checksum(&signed, l.opt + 64);
        put_u32(&mut signed, l.opt + 64, checksum);
        assert!(strip_signature(&signed).unwrap().unwrap() == uki);
        // A table that does not end the file is not cut blindly.
        signed.push(0);
        assert!(strip_signature(&signed).is_err());
        let names: Vec<String> = sections(&uki).unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
    }

    #[test]
    fn pcr11_measures_the_payload_sections_in_the_stubs_order() {
        let kernel: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let initrd = vec![7u8; 5000];
        let uki = build_uki(&fake_stub(), &parts(&kernel, &initrd)).unwrap();
        // .linux first though it is last in the file; .uname (after 252) and the stub's own
        // .text are not measured; each name with its NUL, then its data without the padding.
        let expected = extended(&[
            b".linux\0",
            &kernel,
            b".osrel\0",
            b"ID=keel\n",
            b".cmdline\0",
            b"console=ttyS0",
            b".initrd\0",
            &initrd,
        ]);
        assert_eq!(predict_pcr11(&uki).unwrap(), expected);
        // Any byte of the command line changes it.
        let other = UkiParts {
            cmdline: "console=ttyS1",
            ..parts(&kernel, &initrd)
        };
        let other = build_uki(&fake_stub(), &other).unwrap();
        assert_ne!(predict_pcr11(&other).unwrap(), expected);
        // A truncated image is an error, not a value.
        assert!(predict_pcr11(&uki[..uki.len() - 6000]).is_err());
    }

    #[test]
    fn sections_parse_back_in_ukify_order() {
        let kernel: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let initrd = vec![7u8; 5000];
        let uki = build_uki(&fake_stub(), &parts(&kernel, &initrd)).unwrap();
        let pe = PE::parse(&uki).unwrap();
        let names: Vec<String> = pe
            .sections
            .iter()
            .map(|s| s.name().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
        let data = |name: &str| {
            let s = pe
                .sections
                .iter()
                .find(|s| s.name().unwrap() == name)
                .unwrap();
            let start = s.pointer_to_raw_data as usize;
            &uki[start..start + s.virtual_size as usize]
        };
        assert_eq!(data(".linux"), &kernel[..]);
        assert_eq!(data(".initrd"), &initrd[..]);
        assert_eq!(data(".cmdline"), b"console=ttyS0");
        assert_eq!(data(".uname"), b"6.1.0");
        // Sections follow one another at SectionAlignment, and SizeOfImage covers the last.
        let opt = pe.header.optional_header.unwrap().windows_fields;
        let mut end = 0;
        for s in &pe.sections {
            assert_eq!(s.virtual_address % 0x1000, 0);
            assert!(s.virtual_address >= end, "{} overlaps", s.name().unwrap());
            end = s.virtual_address + s.virtual_size;
            assert_eq!(s.pointer_to_raw_data % 0x200, 0);
        }
        assert_eq!(opt.size_of_image, end.div_ceil(0x1000) * 0x1000);
        assert_eq!(opt.check_sum, pe_checksum(&uki, 0x84 + 20 + 64));
        assert_ne!(opt.check_sum, 0);
        let init = pe
            .header
            .optional_header
            .unwrap()
            .standard_fields
            .size_of_initialized_data;
        assert_eq!(init as usize, 8 + 13 + 5 + 5000 + 10_000);
    }

    #[test]
    fn deterministic_and_input_sensitive() {
        let a = build_uki(&fake_stub(), &parts(b"kernel", b"initrd")).unwrap();
        let b = build_uki(&fake_stub(), &parts(b"kernel", b"initrd")).unwrap();
        let c = build_uki(&fake_stub(), &parts(b"kernel", b"initrD")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bad_stubs_are_refused() {
        let err = build_uki(b"not a pe", &parts(b"k", b"i")).unwrap_err();
        assert!(err.to_string().contains("no MZ signature"), "{err}");

        // Headers that end right after the section table: no room to append.
        let mut full = fake_stub();
        put_u32(&mut full, 0x84 + 20 + 60, (0x84 + 20 + 240 + 40) as u32);
        let err = build_uki(&full, &parts(b"k", b"i")).unwrap_err();
        assert!(matches!(err, Error::StubHeaderFull { needed: 5 }), "{err}");

        let mut signed = fake_stub();
        put_u32(&mut signed, 0x84 + 20 + 112 + 8 * SECURITY_DIR + 4, 0x100);
        let err = build_uki(&signed, &parts(b"k", b"i")).unwrap_err();
        assert!(err.to_string().contains("signed"), "{err}");
    }

    #[test]
    fn checksum_matches_known_value() {
        // Two words, one carry fold, plus the length: 0xffff + 0x0002 = 0x10001 → 0x0002, + 4.
        assert_eq!(pe_checksum(&[0xff, 0xff, 0x02, 0x00], 100), 6);
        // The checksum field itself is skipped.
        assert_eq!(pe_checksum(&[0xff, 0xff, 0x02, 0x00], 0), 4);
    }
}
