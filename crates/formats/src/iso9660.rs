//! ISO 9660 images, written natively and deterministically: the `--data` CD the `metadata`
//! package reads, and the file system of the `iso-*` formats.
//!
//! The image has the primary volume descriptor, L and M path tables, directories and file
//! data (ECMA-119, level 2 identifiers), plus Rock Ridge (RRIP 1.10: `SP`, `ER`, `PX`, `TF`,
//! `NM`) so Linux shows the names as given (`config`, not `CONFIG.` or `config.`), and,
//! when asked, an El Torito boot catalog with a BIOS and/or an EFI no-emulation entry.
//! Every timestamp is the given epoch; directory entries are sorted as the standard says and
//! file data is laid out in the order given, so the same inputs give the same bytes.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Logical sector (block) size of every ISO 9660 image written here.
pub const SECTOR: usize = 2048;
/// The first sector after the 32 KiB system area (where isohybrid puts its MBR).
const PVD_LBA: u32 = 16;
/// Longest Rock Ridge name accepted: keeps every directory record within 255 bytes.
const MAX_NAME: usize = 120;
/// The Rock Ridge extension reference, as `mkisofs -R` and `xorriso` write it.
const RRIP_ID: &[u8] = b"RRIP_1991A";
const RRIP_DESC: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

/// A file to put in the image: a `/`-separated path (parent directories are created) and its
/// contents.
#[derive(Debug, Clone, Copy)]
pub struct IsoFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

/// A BIOS El Torito entry (platform 0x00, no emulation): the firmware loads the first
/// `load_sectors` 512-byte sectors of the file at `path` to 0x7C00 and jumps there.
#[derive(Debug, Clone, Copy)]
pub struct BiosBoot<'a> {
    /// Path of the boot file among the image's files (e.g. `isolinux/isolinux.bin`).
    pub path: &'a str,
    /// 512-byte sectors the firmware loads (4 for isolinux).
    pub load_sectors: u16,
    /// Patch a boot information table into the file at offset 8, as `-boot-info-table` does
    /// (isolinux needs it to find itself).
    pub boot_info_table: bool,
}

/// What to put in an image besides its files.
#[derive(Debug, Clone, Copy, Default)]
pub struct IsoOptions<'a> {
    /// Volume identifier (up to 32 characters; upper-cased, others mapped to `_`).
    pub volume_id: &'a str,
    /// Seconds since the Unix epoch for every timestamp (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// A BIOS boot entry.
    pub bios: Option<BiosBoot<'a>>,
    /// Path of a FAT image among the files to make the EFI boot entry (platform 0xEF, no
    /// emulation). It is laid out last, so firmware that sizes the entry to the end of the
    /// volume (EDK2 when it is over 32 MiB) sees exactly the image.
    pub efi_image: Option<&'a str>,
    /// Boot catalog path (default `boot.catalog`) when there is a boot entry.
    pub catalog_path: Option<&'a str>,
}

/// A written image and where its boot pieces landed.
#[derive(Debug)]
pub struct Iso {
    /// The image, a whole number of 2048-byte sectors.
    pub bytes: Vec<u8>,
    /// Sector of the BIOS boot file, if any (isohybrid's MBR needs it).
    pub bios_boot_lba: Option<u32>,
}

/// A data CD: `files` in the root directory, no boot record. With Rock Ridge, Linux shows a
/// file named `config` as `/config`.
pub fn data_iso(volume_id: &str, files: &[(&str, &[u8])], epoch: u64) -> Result<Vec<u8>> {
    for (name, _) in files {
        if name.contains('/') {
            return Err(Error::IsoName {
                path: (*name).to_owned(),
                reason: "a data CD holds files in its root directory only",
            });
        }
    }
    let files: Vec<IsoFile<'_>> = files
        .iter()
        .map(|&(path, data)| IsoFile { path, data })
        .collect();
    let opts = IsoOptions {
        volume_id,
        epoch,
        ..IsoOptions::default()
    };
    Ok(build_iso(&files, &opts)?.bytes)
}

/// A node of the directory tree being laid out.
#[derive(Debug, Default)]
struct Dir {
    /// Sub-directories by their Rock Ridge (original) name.
    dirs: BTreeMap<String, Dir>,
    /// Files: original name → index into the file list.
    files: BTreeMap<String, usize>,
    /// Position in path-table order (root is 0).
    number: usize,
    /// Directory extent.
    lba: u32,
    size: u32,
}

/// One entry of a directory, ready to be encoded.
struct Entry<'a> {
    iso_name: Vec<u8>,
    rr_name: &'a str,
    lba: u32,
    size: u32,
    dir: bool,
    /// Sub-directories of this directory, for Rock Ridge's link count.
    nlink: u32,
}

/// Builds an image of `files` (laid out in the order given, the EFI image last).
pub fn build_iso(files: &[IsoFile<'_>], opts: &IsoOptions<'_>) -> Result<Iso> {
    let mut root = Dir::default();
    for (i, f) in files.iter().enumerate() {
        insert(&mut root, f.path, i)?;
    }
    let find = |path: &str| {
        files
            .iter()
            .position(|f| f.path.trim_matches('/') == path.trim_matches('/'))
            .ok_or_else(|| Error::IsoName {
                path: path.to_owned(),
                reason: "the boot file is not among the image's files",
            })
    };
    let bios = opts.bios.map(|b| find(b.path)).transpose()?;
    let efi = opts.efi_image.map(find).transpose()?;
    let booting = bios.is_some() || efi.is_some();
    let catalog_path = opts.catalog_path.unwrap_or("boot.catalog");
    // The catalog is a file too (xorriso lists it), with its data written below.
    let catalog_index = files.len();
    if booting {
        insert(&mut root, catalog_path, catalog_index)?;
    }

    // Directories in path-table order: by level, then parent number, then name.
    let mut order: Vec<Vec<String>> = vec![Vec::new()];
    {
        let mut i = 0;
        while i < order.len() {
            let path = order[i].clone();
            let dir = lookup(&mut root, &path);
            dir.number = i;
            let names: Vec<String> = sorted_dirs(dir).map(|(_, n)| n.clone()).collect();
            for n in names {
                let mut child = path.clone();
                child.push(n);
                order.push(child);
            }
            i += 1;
        }
    }
    let path_table_len = path_table(&mut root, &order, false).len();
    let pt_sectors = sectors(path_table_len as u64);

    // Fixed sectors: system area, PVD, boot record, terminator, path tables, the Rock Ridge
    // continuation area (ER), the boot catalog.
    let mut next = PVD_LBA + 1 + u32::from(booting) + 1;
    let l_table = next;
    next += pt_sectors;
    let m_table = next;
    next += pt_sectors;
    let ce_lba = next;
    next += 1;
    let catalog_lba = next;
    if booting {
        next += 1;
    }
    // Directory extents: their sizes depend only on names, known now.
    for path in &order {
        let dir = lookup(&mut root, path);
        let size = dir_size(dir)?;
        dir.lba = next;
        dir.size = size;
        next += size / SECTOR as u32;
    }
    // File data, in the order given, the EFI image last.
    let mut file_lba = vec![0u32; files.len() + 1];
    file_lba[catalog_index] = catalog_lba;
    let data_order = (0..files.len())
        .filter(|&i| Some(i) != efi)
        .chain(efi)
        .collect::<Vec<_>>();
    for &i in &data_order {
        let len = files[i].data.len() as u64;
        if len > u64::from(u32::MAX) {
            return Err(Error::TooLarge {
                what: "an ISO 9660 file",
                size: len,
                max: u64::from(u32::MAX),
            });
        }
        if len > 0 {
            file_lba[i] = next;
            next = next.checked_add(sectors(len)).ok_or(Error::TooLarge {
                what: "the ISO 9660 image",
                size: len,
                max: u64::from(u32::MAX) * SECTOR as u64,
            })?;
        }
    }
    let total = next;
    let mut out = vec![0u8; total as usize * SECTOR];
    let date = dir_date(opts.epoch);

    // Volume descriptors.
    let root_record = record(&[0], root.lba, root.size, true, &date, &[]);
    let pvd = primary_descriptor(
        opts,
        total,
        path_table_len as u32,
        l_table,
        m_table,
        &root_record,
    );
    put(&mut out, PVD_LBA, &pvd);
    let mut lba = PVD_LBA + 1;
    if booting {
        let mut br = [0u8; SECTOR];
        br[0] = 0;
        br[1..6].copy_from_slice(b"CD001");
        br[6] = 1;
        br[7..7 + 23].copy_from_slice(b"EL TORITO SPECIFICATION");
        br[71..75].copy_from_slice(&catalog_lba.to_le_bytes());
        put(&mut out, lba, &br);
        lba += 1;
    }
    let mut term = [0u8; SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(&mut out, lba, &term);
    put(&mut out, l_table, &path_table(&mut root, &order, false));
    put(&mut out, m_table, &path_table(&mut root, &order, true));
    put(&mut out, ce_lba, &er_entry());

    // Directories.
    for path in &order {
        let parent = if path.is_empty() {
            (root.lba, root.size, dir_links(&root))
        } else {
            let p = lookup(&mut root, &path[..path.len() - 1]);
            (p.lba, p.size, dir_links(p))
        };
        let dir = lookup(&mut root, path);
        let bytes = dir_extent(
            dir,
            parent,
            path.is_empty(),
            ce_lba,
            &file_lba,
            files,
            &date,
        )?;
        put(&mut out, dir.lba, &bytes);
    }

    // File data; the boot file gets its boot information table.
    for &i in &data_order {
        let data = files[i].data;
        if data.is_empty() {
            continue;
        }
        let start = file_lba[i] as usize * SECTOR;
        out[start..start + data.len()].copy_from_slice(data);
        if let (Some(b), Some(bi)) = (opts.bios, bios)
            && bi == i
            && b.boot_info_table
        {
            patch_boot_info_table(&mut out[start..start + data.len()], file_lba[i]).map_err(
                |reason| Error::IsoName {
                    path: b.path.to_owned(),
                    reason,
                },
            )?;
        }
    }
    if booting {
        let cat = boot_catalog(
            opts.bios
                .zip(bios)
                .map(|(b, i)| (b.load_sectors, file_lba[i])),
            efi.map(|i| (files[i].data.len() as u64, file_lba[i])),
        );
        put(&mut out, catalog_lba, &cat);
    }
    Ok(Iso {
        bytes: out,
        bios_boot_lba: bios.map(|i| file_lba[i]),
    })
}

fn sectors(len: u64) -> u32 {
    len.div_ceil(SECTOR as u64) as u32
}

fn put(out: &mut [u8], lba: u32, bytes: &[u8]) {
    let at = lba as usize * SECTOR;
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Adds the file `index` at `path` to the tree, creating parent directories.
fn insert(root: &mut Dir, path: &str, index: usize) -> Result<()> {
    let bad = |reason| Error::IsoName {
        path: path.to_owned(),
        reason,
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((name, parents)) = parts.split_last() else {
        return Err(bad("empty path"));
    };
    if parts.len() > 8 {
        return Err(bad("deeper than the 8 levels ISO 9660 allows"));
    }
    let mut dir = root;
    for p in parents {
        check_name(p).map_err(bad)?;
        if dir.files.contains_key(*p) {
            return Err(bad("a file is in the way of a directory"));
        }
        dir = dir.dirs.entry((*p).to_owned()).or_default();
    }
    check_name(name).map_err(bad)?;
    if dir.dirs.contains_key(*name) || dir.files.insert((*name).to_owned(), index).is_some() {
        return Err(bad("given twice"));
    }
    Ok(())
}

fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name == "." || name == ".." {
        Err("`.` and `..` are not names")
    } else if name.len() > MAX_NAME {
        Err("name longer than 120 bytes")
    } else {
        Ok(())
    }
}

fn lookup<'d>(root: &'d mut Dir, path: &[String]) -> &'d mut Dir {
    let mut dir = root;
    for p in path {
        // Paths in `order` were built from the tree itself.
        dir = dir.dirs.entry(p.clone()).or_default();
    }
    dir
}

/// Sub-directories sorted by ISO identifier (the order of records and of the path table).
fn sorted_dirs(dir: &Dir) -> impl Iterator<Item = (Vec<u8>, &String)> {
    let mut v: Vec<_> = dir.dirs.keys().map(|n| (iso_dir_name(n), n)).collect();
    v.sort();
    v.into_iter()
}

/// Sub-directories plus `.` and `..`: the POSIX link count of a directory.
fn dir_links(dir: &Dir) -> u32 {
    2 + dir.dirs.len() as u32
}

/// A directory identifier: d-characters (A-Z, 0-9, `_`), at most 31.
fn iso_dir_name(name: &str) -> Vec<u8> {
    name.bytes().map(d_char).take(31).collect()
}

/// A file identifier `NAME.EXT;1`: d-characters, name and extension together at most 30.
fn iso_file_name(name: &str) -> Vec<u8> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let ext: Vec<u8> = ext.bytes().map(d_char).take(8).collect();
    let stem: Vec<u8> = stem.bytes().map(d_char).take(30 - ext.len()).collect();
    let mut id = stem;
    id.push(b'.');
    id.extend_from_slice(&ext);
    id.extend_from_slice(b";1");
    id
}

fn d_char(b: u8) -> u8 {
    match b.to_ascii_uppercase() {
        c @ (b'A'..=b'Z' | b'0'..=b'9' | b'_') => c,
        _ => b'_',
    }
}

/// The sort key of a file identifier: name, then extension (ECMA-119 9.3).
fn sort_key(id: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let id = id.strip_suffix(b";1").unwrap_or(id);
    match id.iter().position(|&b| b == b'.') {
        Some(i) => (id[..i].to_vec(), id[i + 1..].to_vec()),
        None => (id.to_vec(), Vec::new()),
    }
}

/// The records of `dir` other than `.` and `..`, sorted, with their extents.
fn entries<'a>(
    dir: &'a Dir,
    file_lba: &[u32],
    files: &[IsoFile<'_>],
    catalog_index: usize,
) -> Vec<Entry<'a>> {
    let mut v: Vec<Entry<'a>> = Vec::new();
    for (name, sub) in &dir.dirs {
        v.push(Entry {
            iso_name: iso_dir_name(name),
            rr_name: name,
            lba: sub.lba,
            size: sub.size,
            dir: true,
            nlink: dir_links(sub),
        });
    }
    for (name, &i) in &dir.files {
        let size = if i == catalog_index {
            SECTOR as u32
        } else {
            files.get(i).map_or(0, |f| f.data.len() as u32)
        };
        v.push(Entry {
            iso_name: iso_file_name(name),
            rr_name: name,
            lba: file_lba.get(i).copied().unwrap_or(0),
            size,
            dir: false,
            nlink: 1,
        });
    }
    v.sort_by_key(|e| sort_key(&e.iso_name));
    v
}

/// Rock Ridge entries for a record: `PX` (mode, links, owner root), `TF` (times), and `NM`
/// when the name is given.
fn rock_ridge(dir: bool, nlink: u32, name: Option<&str>, date: &[u8; 7]) -> Vec<u8> {
    let mut su = Vec::new();
    // PX, RRIP 1.10 form (36 bytes: no serial number), like the ER we write.
    let mode: u32 = if dir { 0o040555 } else { 0o100444 };
    su.extend_from_slice(&[b'P', b'X', 36, 1]);
    for v in [mode, nlink, 0, 0] {
        su.extend_from_slice(&both32(v));
    }
    // TF: modification, access and attribute-change times.
    su.extend_from_slice(&[b'T', b'F', 5 + 3 * 7, 1, 0x0E]);
    for _ in 0..3 {
        su.extend_from_slice(date);
    }
    if let Some(name) = name {
        su.extend_from_slice(&[b'N', b'M', 5 + name.len() as u8, 1, 0]);
        su.extend_from_slice(name.as_bytes());
    }
    su
}

/// The `SP` and `CE` entries that open the root's `.` record: SUSP is in use, and the `ER`
/// entry (too long for the record) is in the continuation sector `ce_lba`.
fn root_susp(ce_lba: u32) -> Vec<u8> {
    let mut su = vec![b'S', b'P', 7, 1, 0xBE, 0xEF, 0];
    su.extend_from_slice(&[b'C', b'E', 28, 1]);
    su.extend_from_slice(&both32(ce_lba));
    su.extend_from_slice(&both32(0));
    su.extend_from_slice(&both32(er_entry().len() as u32));
    su
}

fn er_entry() -> Vec<u8> {
    let len = 8 + RRIP_ID.len() + RRIP_DESC.len() + RRIP_SRC.len();
    let mut er = vec![
        b'E',
        b'R',
        len as u8,
        1,
        RRIP_ID.len() as u8,
        RRIP_DESC.len() as u8,
        RRIP_SRC.len() as u8,
        1,
    ];
    er.extend_from_slice(RRIP_ID);
    er.extend_from_slice(RRIP_DESC);
    er.extend_from_slice(RRIP_SRC);
    er
}

/// The size of `dir`'s extent: records never cross a sector boundary.
fn dir_size(dir: &Dir) -> Result<u32> {
    let date = [0u8; 7];
    let mut seen = std::collections::BTreeSet::new();
    for (iso, name) in dir
        .dirs
        .keys()
        .map(|n| (iso_dir_name(n), n))
        .chain(dir.files.keys().map(|n| (iso_file_name(n), n)))
    {
        if !seen.insert(sort_key(&iso)) {
            return Err(Error::IsoName {
                path: name.clone(),
                reason: "its ISO 9660 name clashes with another's in the same directory",
            });
        }
    }
    let mut lens: Vec<usize> = vec![
        record(
            &[0],
            0,
            0,
            true,
            &date,
            &[root_susp(0), rock_ridge(true, 0, None, &date)].concat(),
        )
        .len(),
        record(&[1], 0, 0, true, &date, &rock_ridge(true, 0, None, &date)).len(),
    ];
    for name in dir.dirs.keys() {
        lens.push(
            record(
                &iso_dir_name(name),
                0,
                0,
                true,
                &date,
                &rock_ridge(true, 0, Some(name), &date),
            )
            .len(),
        );
    }
    for name in dir.files.keys() {
        lens.push(
            record(
                &iso_file_name(name),
                0,
                0,
                false,
                &date,
                &rock_ridge(false, 1, Some(name), &date),
            )
            .len(),
        );
    }
    Ok(pack(&lens).div_ceil(SECTOR) as u32 * SECTOR as u32)
}

/// The byte length of records of `lens` packed without crossing sector boundaries.
fn pack(lens: &[usize]) -> usize {
    let mut at = 0;
    for &l in lens {
        if at % SECTOR + l > SECTOR {
            at = at.div_ceil(SECTOR) * SECTOR;
        }
        at += l;
    }
    at.max(1)
}

/// Encodes the extent of `dir`. `parent` is its parent's extent and link count (the root's
/// own for the root).
fn dir_extent(
    dir: &Dir,
    parent: (u32, u32, u32),
    is_root: bool,
    ce_lba: u32,
    file_lba: &[u32],
    files: &[IsoFile<'_>],
    date: &[u8; 7],
) -> Result<Vec<u8>> {
    let mut recs = Vec::new();
    let mut dot_su = if is_root {
        root_susp(ce_lba)
    } else {
        Vec::new()
    };
    dot_su.extend(rock_ridge(true, dir_links(dir), None, date));
    recs.push(record(&[0], dir.lba, dir.size, true, date, &dot_su));
    recs.push(record(
        &[1],
        parent.0,
        parent.1,
        true,
        date,
        &rock_ridge(true, parent.2, None, date),
    ));
    for e in entries(dir, file_lba, files, files.len()) {
        let su = rock_ridge(e.dir, e.nlink, Some(e.rr_name), date);
        recs.push(record(&e.iso_name, e.lba, e.size, e.dir, date, &su));
    }
    let mut out = vec![0u8; dir.size as usize];
    let mut at = 0;
    for r in recs {
        if at % SECTOR + r.len() > SECTOR {
            at = at.div_ceil(SECTOR) * SECTOR;
        }
        out[at..at + r.len()].copy_from_slice(&r);
        at += r.len();
    }
    Ok(out)
}

/// A directory record (ECMA-119 9.1) with system use field `su`.
fn record(id: &[u8], lba: u32, size: u32, dir: bool, date: &[u8; 7], su: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(date);
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if id.len().is_multiple_of(2) {
        r.push(0);
    }
    r.extend_from_slice(su);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

/// The L (little-endian) or M (big-endian) path table.
fn path_table(root: &mut Dir, order: &[Vec<String>], big: bool) -> Vec<u8> {
    let mut t = Vec::new();
    for path in order {
        let (id, parent) = match path.split_last() {
            None => (vec![0u8], 1u16),
            Some((name, parents)) => {
                let p = lookup(root, parents).number as u16 + 1;
                (iso_dir_name(name), p)
            }
        };
        let lba = lookup(root, path).lba;
        t.push(id.len() as u8);
        t.push(0);
        if big {
            t.extend_from_slice(&lba.to_be_bytes());
            t.extend_from_slice(&parent.to_be_bytes());
        } else {
            t.extend_from_slice(&lba.to_le_bytes());
            t.extend_from_slice(&parent.to_le_bytes());
        }
        t.extend_from_slice(&id);
        if id.len() % 2 == 1 {
            t.push(0);
        }
    }
    t
}

fn primary_descriptor(
    opts: &IsoOptions<'_>,
    total: u32,
    path_table_len: u32,
    l_table: u32,
    m_table: u32,
    root_record: &[u8],
) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = 1;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    fill(&mut d[8..40], b"LINUX");
    let vol: Vec<u8> = opts.volume_id.bytes().map(d_char).take(32).collect();
    fill(&mut d[40..72], &vol);
    d[80..88].copy_from_slice(&both32(total));
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(path_table_len));
    d[140..144].copy_from_slice(&l_table.to_le_bytes());
    d[148..152].copy_from_slice(&m_table.to_be_bytes());
    d[156..190].copy_from_slice(root_record);
    fill(&mut d[190..318], b"");
    fill(&mut d[318..446], b"");
    fill(&mut d[446..574], b"");
    fill(&mut d[574..702], b"KEEL");
    fill(&mut d[702..813], b"");
    let stamp = volume_date(opts.epoch);
    d[813..830].copy_from_slice(&stamp);
    d[830..847].copy_from_slice(&stamp);
    // Expiration and effective dates: "not specified".
    for range in [847..864, 864..881] {
        d[range.start..range.end - 1].fill(b'0');
    }
    d[881] = 1;
    d
}

/// Copies `s` into `field`, padding with spaces.
fn fill(field: &mut [u8], s: &[u8]) {
    field.fill(b' ');
    field[..s.len()].copy_from_slice(s);
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// Civil date and time (UTC) of `epoch` seconds: year, month, day, hour, minute, second.
fn civil(epoch: u64) -> (u64, u8, u8, u8, u8, u8) {
    let days = epoch / 86400;
    let secs = epoch % 86400;
    // Howard Hinnant's days-to-civil, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (
        year,
        month,
        day,
        (secs / 3600) as u8,
        (secs / 60 % 60) as u8,
        (secs % 60) as u8,
    )
}

/// The 7-byte date of a directory record (years since 1900, capped at 2155; UTC).
fn dir_date(epoch: u64) -> [u8; 7] {
    let (y, mo, d, h, mi, s) = civil(epoch);
    [(y.saturating_sub(1900)).min(255) as u8, mo, d, h, mi, s, 0]
}

/// The 17-byte date of a volume descriptor: `YYYYMMDDHHMMSScc` and a zero UTC offset.
fn volume_date(epoch: u64) -> [u8; 17] {
    let (y, mo, d, h, mi, s) = civil(epoch);
    let text = format!("{:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}00", y.min(9999));
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(text.as_bytes());
    out
}

/// Writes the El Torito boot information table into a boot file laid out at `lba`: the PVD's
/// sector, the file's sector and length, and the 32-bit sum of the file from byte 64.
fn patch_boot_info_table(file: &mut [u8], lba: u32) -> std::result::Result<(), &'static str> {
    if file.len() < 64 {
        return Err("a boot file with a boot information table needs at least 64 bytes");
    }
    let mut sum = 0u32;
    for chunk in file[64..].chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        sum = sum.wrapping_add(u32::from_le_bytes(w));
    }
    let len = file.len() as u32;
    file[8..12].copy_from_slice(&PVD_LBA.to_le_bytes());
    file[12..16].copy_from_slice(&lba.to_le_bytes());
    file[16..20].copy_from_slice(&len.to_le_bytes());
    file[20..24].copy_from_slice(&sum.to_le_bytes());
    file[24..64].fill(0);
    Ok(())
}

/// The El Torito boot catalog: a validation entry, the BIOS entry as the default one (or an
/// unbootable default when there is none), and the EFI entry in a final section.
fn boot_catalog(bios: Option<(u16, u32)>, efi: Option<(u64, u32)>) -> Vec<u8> {
    let mut c = vec![0u8; SECTOR];
    // Validation entry; its platform is the default entry's.
    let platform = if bios.is_some() || efi.is_none() {
        0
    } else {
        0xEF
    };
    c[0] = 1;
    c[1] = platform;
    c[30] = 0x55;
    c[31] = 0xAA;
    let sum = c[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    c[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    // 512-byte sectors to load for an EFI image: all of it, or 0 past what 16 bits hold, in
    // which case firmware takes the rest of the volume (the image is laid out last).
    let efi_entry = efi.map(|(len, lba)| {
        let count = u16::try_from(len.div_ceil(512)).unwrap_or(0);
        entry(count, lba)
    });
    match (bios, efi_entry) {
        (Some((count, lba)), efi_entry) => {
            c[32..64].copy_from_slice(&entry(count, lba));
            if let Some(e) = efi_entry {
                c[64] = 0x91;
                c[65] = 0xEF;
                c[66..68].copy_from_slice(&1u16.to_le_bytes());
                c[96..128].copy_from_slice(&e);
            }
        }
        (None, Some(e)) => c[32..64].copy_from_slice(&e),
        (None, None) => {}
    }
    c
}

/// A bootable no-emulation entry loading `count` 512-byte sectors from `lba`.
fn entry(count: u16, lba: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0] = 0x88;
    e[6..8].copy_from_slice(&count.to_le_bytes());
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29T12:34:56Z
        assert_eq!(civil(1_709_210_096), (2024, 2, 29, 12, 34, 56));
        assert_eq!(dir_date(1_709_210_096), [124, 2, 29, 12, 34, 56, 0]);
        assert_eq!(&volume_date(1_709_210_096)[..16], b"2024022912345600");
    }

    /// The root directory's records: (ISO identifier, Rock Ridge name, extent, size).
    fn root_records(iso: &[u8]) -> Vec<(Vec<u8>, Option<String>, u32, u32)> {
        let pvd = &iso[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[1..6], b"CD001");
        let lba = u32::from_le_bytes(pvd[158..162].try_into().unwrap()) as usize;
        let size = u32::from_le_bytes(pvd[166..170].try_into().unwrap()) as usize;
        let dir = &iso[lba * SECTOR..lba * SECTOR + size];
        let mut out = Vec::new();
        let mut at = 0;
        while at < dir.len() {
            let len = dir[at] as usize;
            if len == 0 {
                at = (at / SECTOR + 1) * SECTOR;
                continue;
            }
            let r = &dir[at..at + len];
            let id_len = r[32] as usize;
            let id = r[33..33 + id_len].to_vec();
            let mut su = &r[33 + id_len + (1 - id_len % 2)..];
            let mut nm = None;
            while su.len() >= 4 && su[2] > 0 {
                if &su[..2] == b"NM" {
                    nm = Some(String::from_utf8(su[5..su[2] as usize].to_vec()).unwrap());
                }
                su = &su[su[2] as usize..];
            }
            let extent = u32::from_le_bytes(r[2..6].try_into().unwrap());
            let data = u32::from_le_bytes(r[10..14].try_into().unwrap());
            out.push((id, nm, extent, data));
            at += len;
        }
        out
    }

    #[test]
    fn data_iso_structure() {
        let iso = data_iso("cidata", &[("config", b"abc"), ("b.txt", b"")], 86_400).unwrap();
        let pvd = &iso[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[40..46], b"CIDATA");
        assert_eq!(
            u32::from_le_bytes(pvd[80..84].try_into().unwrap()) as usize,
            iso.len() / SECTOR
        );
        assert_eq!(&pvd[813..829], b"1970010200000000");
        // Terminator right after the PVD: no boot record without a boot entry.
        assert_eq!(iso[17 * SECTOR], 255);
        let recs = root_records(&iso);
        let ids: Vec<_> = recs.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
        assert_eq!(
            ids,
            [
                (vec![0], None),
                (vec![1], None),
                (b"B.TXT;1".to_vec(), Some("b.txt".to_owned())),
                (b"CONFIG.;1".to_vec(), Some("config".to_owned())),
            ]
        );
        let config = &recs[3];
        let at = config.2 as usize * SECTOR;
        assert_eq!(&iso[at..at + config.3 as usize], b"abc");
    }

    #[test]
    fn deterministic_and_epoch_driven() {
        let files: [(&str, &[u8]); 2] = [("config", b"x"), ("meta", b"y")];
        let a = data_iso("v", &files, 1_000).unwrap();
        assert_eq!(a, data_iso("v", &files, 1_000).unwrap());
        assert_ne!(a, data_iso("v", &files, 2_000).unwrap());
    }

    #[test]
    fn bad_names() {
        assert!(matches!(
            data_iso("v", &[("a/b", b"")], 0),
            Err(Error::IsoName { .. })
        ));
        let clash: [(&str, &[u8]); 2] = [("a.b", b""), ("A.B", b"")];
        assert!(matches!(
            data_iso("v", &clash, 0),
            Err(Error::IsoName { .. })
        ));
        let twice = [
            IsoFile {
                path: "x/y",
                data: b"",
            },
            IsoFile {
                path: "/x/y",
                data: b"",
            },
        ];
        let opts = IsoOptions::default();
        assert!(build_iso(&twice, &opts).is_err());
        let long = "n".repeat(121);
        assert!(data_iso("v", &[(long.as_str(), b"")], 0).is_err());
        let max = "n".repeat(120);
        assert!(data_iso("v", &[(max.as_str(), b"")], 0).is_ok());
    }

    #[test]
    fn identifiers() {
        assert_eq!(iso_file_name("config"), b"CONFIG.;1");
        assert_eq!(iso_file_name("user-data.json"), b"USER_DATA.JSON;1");
        assert_eq!(iso_dir_name("isolinux"), b"ISOLINUX");
        let long = "a".repeat(40) + ".txt";
        assert_eq!(iso_file_name(&long).len(), 30 + 1 + 2);
    }
}

#[cfg(test)]
mod readback {
    //! Images read back by `xorriso`/`osirrox` (package `xorriso`), an independent reader.
    use super::*;
    use std::process::Command;

    /// Runs `xorriso` on `iso` with `args` (warnings are errors), returning its output.
    fn xorriso(iso: &[u8], args: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.iso");
        std::fs::write(&path, iso).unwrap();
        let mut all = vec!["-abort_on", "WARNING", "-indev", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = Command::new("xorriso").args(&all).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    }

    /// Extracts all of `iso` with `osirrox` and returns its files by path.
    fn extract(iso: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.iso");
        std::fs::write(&path, iso).unwrap();
        let out_dir = dir.path().join("x");
        let out = Command::new("osirrox")
            .args(["-abort_on", "WARNING", "-indev"])
            .arg(&path)
            .args(["-extract", "/"])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files = BTreeMap::new();
        let mut stack = vec![out_dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p
                        .strip_prefix(&out_dir)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned();
                    files.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        files
    }

    #[test]
    fn data_iso_reads_back_with_the_names_given() {
        let files: [(&str, &[u8]); 3] = [
            ("config", b"{\"a\":1}\n"),
            ("user-data", b"hello"),
            ("empty", b""),
        ];
        let iso = data_iso("cidata", &files, 1_700_000_000).unwrap();
        assert_eq!(iso.len() % SECTOR, 0);
        let report = xorriso(&iso, &["-pvd_info", "-toc", "-lsl", "/"]);
        assert!(report.contains("ISO loaded   : Rock_Ridge"), "{report}");
        assert!(report.contains("Volume Id    : CIDATA"), "{report}");
        assert!(
            report.contains("Creation Time: 2023111422132000"),
            "{report}"
        );
        let blocks = format!("{}s , CIDATA", iso.len() / SECTOR);
        assert!(report.contains(&blocks), "{report}");
        for name in ["'config'", "'user-data'", "'empty'"] {
            assert!(report.contains(name), "{name}: {report}");
        }
        assert!(
            report.contains("-r--r--r--    1 0        0               8 Nov 14  2023 'config'"),
            "{report}"
        );
        let got = extract(&iso);
        let want: BTreeMap<String, Vec<u8>> = files
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    /// A BIOS and an EFI entry together: the BIOS one is the default entry, the EFI one in a
    /// final section; xorriso lists both with their load sizes.
    #[test]
    fn bios_and_efi_entries() {
        let mut boot = vec![0u8; 4096];
        boot[100] = 1;
        let esp = vec![9u8; 40 * SECTOR];
        let files = [
            IsoFile {
                path: "boot/efi.img",
                data: &esp,
            },
            IsoFile {
                path: "isolinux/isolinux.bin",
                data: &boot,
            },
        ];
        let opts = IsoOptions {
            volume_id: "BOTH",
            epoch: 0,
            bios: Some(BiosBoot {
                path: "isolinux/isolinux.bin",
                load_sectors: 4,
                boot_info_table: true,
            }),
            efi_image: Some("boot/efi.img"),
            catalog_path: None,
        };
        let iso = build_iso(&files, &opts).unwrap();
        let report = xorriso(&iso.bytes, &["-report_el_torito", "plain"]);
        let lba = iso.bios_boot_lba.unwrap();
        let bios = format!("1  BIOS  y   none  0x0000  0x00      4{lba:>12}");
        assert!(report.contains(&bios), "{bios}\n{report}");
        assert!(
            report.contains("2  UEFI  y   none  0x0000  0x00    160"),
            "{report}"
        );
        assert!(
            report.contains("El Torito cat path : /boot.catalog"),
            "{report}"
        );
        assert!(report.contains("boot-info-table"), "{report}");
        // The EFI image is laid out last, whatever the order given.
        assert!(iso.bytes[iso.bytes.len() - esp.len()..] == esp[..]);
    }

    #[test]
    fn nested_directories_read_back() {
        let big = vec![7u8; 3 * SECTOR + 5];
        // Enough entries that the root directory spans two sectors.
        let names: Vec<String> = (0..40).map(|i| format!("file-number-{i:02}.txt")).collect();
        let mut files = vec![
            IsoFile {
                path: "isolinux/isolinux.cfg",
                data: b"default linux\n",
            },
            IsoFile {
                path: "boot/kernel",
                data: &big,
            },
            IsoFile {
                path: "a/b/c/deep",
                data: b"deep",
            },
        ];
        files.extend(names.iter().map(|n| IsoFile {
            path: n,
            data: n.as_bytes(),
        }));
        let opts = IsoOptions {
            volume_id: "KEEL",
            epoch: 0,
            ..IsoOptions::default()
        };
        let iso = build_iso(&files, &opts).unwrap();
        let got = extract(&iso.bytes);
        assert_eq!(got.len(), files.len());
        for f in &files {
            assert_eq!(got[f.path], f.data, "{}", f.path);
        }
        assert_eq!(iso.bios_boot_lba, None);
    }
}
