//! GUID partition tables, written natively and streamed: protective MBR, primary header and
//! entries, the partitions' contents, then the backup entries and header.
//!
//! GUIDs are derived from the disk's content (see [`Guid::derive`]), so the same inputs give
//! the same bytes; two different systems still get different disk GUIDs.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{self, Write};

/// Bytes per logical block.
pub const SECTOR: u64 = 512;
/// Where the first partition starts: 1 MiB, the alignment every partitioner uses.
pub const FIRST_LBA: u64 = 2048;
/// Partition entries in each table (the minimum the specification allows, 16 KiB).
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by one partition entry array.
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// A GUID, stored as its on-disk bytes (the first three fields little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The EFI system partition type, `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
    pub const ESP: Guid = Guid::from_fields(
        0xC12A_7328,
        0xF81F,
        0x11D2,
        [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
    );
    /// The Linux file system data type, `0FC63DAF-8483-4772-8E79-3D69D8477DE4`.
    pub const LINUX_DATA: Guid = Guid::from_fields(
        0x0FC6_3DAF,
        0x8483,
        0x4772,
        [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
    );

    /// The Discoverable Partitions Specification's root partition for x86-64,
    /// `4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709`, and its dm-verity hash partition,
    /// `2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5`.
    pub const ROOT_X86_64: Guid = Guid::from_fields(
        0x4F68_BCE3,
        0xE8CD,
        0x4DB1,
        [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
    );
    pub const ROOT_VERITY_X86_64: Guid = Guid::from_fields(
        0x2C73_57ED,
        0xEBD2,
        0x46D9,
        [0xAE, 0xC1, 0x23, 0xD4, 0x37, 0xEC, 0x2B, 0xF5],
    );
    /// The same for arm64: `B921B045-1DF0-41C3-AF44-4C6F280D3FAE` and
    /// `DF3300CE-D69F-4C92-978C-9BFB0F38D820`.
    pub const ROOT_AARCH64: Guid = Guid::from_fields(
        0xB921_B045,
        0x1DF0,
        0x41C3,
        [0xAF, 0x44, 0x4C, 0x6F, 0x28, 0x0D, 0x3F, 0xAE],
    );
    pub const ROOT_VERITY_AARCH64: Guid = Guid::from_fields(
        0xDF33_00CE,
        0xD69F,
        0x4C92,
        [0x97, 0x8C, 0x9B, 0xFB, 0x0F, 0x38, 0xD8, 0x20],
    );

    /// The GUID whose textual form spells `bytes` in order (as a UUID's 16 bytes are written
    /// out): GPT stores the first three fields little-endian.
    pub const fn from_uuid_bytes(b: [u8; 16]) -> Guid {
        Guid([
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ])
    }

    /// A GUID from its textual fields.
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// A version-4-shaped GUID derived from `seed` and `purpose` by SHA-256: stable for the
    /// same inputs, distinct for different ones.
    pub fn derive(seed: &[u8], purpose: &str) -> Guid {
        let mut h = Sha256::new();
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(seed);
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.finalize()[..16]);
        // Version 4 (byte 7 holds the high byte of the little-endian third field), RFC 4122
        // variant.
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// The on-disk bytes.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }
}

/// The registry form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`: the first three fields are stored
/// little-endian, the last eight bytes as they are.
impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02x}"))
    }
}

/// One partition and its contents.
#[derive(Debug, Clone, Copy)]
pub struct Partition<'a> {
    pub type_guid: Guid,
    pub guid: Guid,
    /// The partition name (up to 36 UTF-16 code units).
    pub name: &'a str,
    /// First sector (at least [`FIRST_LBA`], after the previous partition).
    pub first_lba: u64,
    /// Length in sectors; `data` shorter than that is padded with zeros.
    pub sectors: u64,
    pub data: &'a [u8],
}

/// The smallest disk, in bytes, holding partitions that end at sector `end_lba` (exclusive):
/// the backup entries and header follow.
pub fn disk_size_for(end_lba: u64) -> u64 {
    (end_lba + ENTRY_SECTORS + 1) * SECTOR
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A protective MBR covering the whole disk, as the UEFI specification describes it.
fn protective_mbr(total_sectors: u64) -> [u8; SECTOR as usize] {
    let mut mbr = [0u8; SECTOR as usize];
    let e = 446;
    mbr[e + 1..e + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[e + 4] = 0xEE;
    mbr[e + 5..e + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    put_u32(&mut mbr, e + 8, 1);
    put_u32(
        &mut mbr,
        e + 12,
        u32::try_from(total_sectors - 1).unwrap_or(u32::MAX),
    );
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn entry_array(parts: &[Partition<'_>]) -> Vec<u8> {
    let mut a = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut a[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[..16].copy_from_slice(&p.type_guid.0);
        e[16..32].copy_from_slice(&p.guid.0);
        put_u64(e, 32, p.first_lba);
        put_u64(e, 40, p.first_lba + p.sectors - 1);
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    a
}

fn header(disk: Guid, total_sectors: u64, backup: bool, entries_crc: u32) -> [u8; SECTOR as usize] {
    let last = total_sectors - 1;
    let (me, other, entries_lba) = if backup {
        (last, 1, last - ENTRY_SECTORS)
    } else {
        (1, last, 2)
    };
    let mut h = [0u8; SECTOR as usize];
    h[..8].copy_from_slice(b"EFI PART");
    put_u32(&mut h, 8, 0x0001_0000);
    put_u32(&mut h, 12, 92);
    put_u64(&mut h, 24, me);
    put_u64(&mut h, 32, other);
    put_u64(&mut h, 40, 2 + ENTRY_SECTORS);
    put_u64(&mut h, 48, last - ENTRY_SECTORS - 1);
    h[56..72].copy_from_slice(&disk.0);
    put_u64(&mut h, 72, entries_lba);
    put_u32(&mut h, 80, ENTRIES as u32);
    put_u32(&mut h, 84, ENTRY_SIZE as u32);
    put_u32(&mut h, 88, entries_crc);
    let crc = crc32fast::hash(&h[..92]);
    put_u32(&mut h, 16, crc);
    h
}

/// Writes a whole GPT disk of `size` bytes (a multiple of [`SECTOR`]) holding `parts`, which
/// must be sorted, not overlap and fit between the tables.
pub fn write_disk(
    out: &mut impl Write,
    size: u64,
    disk: Guid,
    parts: &[Partition<'_>],
) -> Result<()> {
    let mut end = FIRST_LBA;
    for p in parts {
        if p.first_lba < end || p.data.len() as u64 > p.sectors * SECTOR {
            return Err(Error::Write(io::Error::new(
                io::ErrorKind::InvalidInput,
                "partitions overlap or overflow",
            )));
        }
        end = p.first_lba + p.sectors;
    }
    let needed = disk_size_for(end);
    if size < needed {
        return Err(Error::TooSmall {
            what: "the disk",
            needed,
            given: size,
        });
    }
    let total = size / SECTOR;
    let entries = entry_array(parts);
    let crc = crc32fast::hash(&entries);
    let w = |r: io::Result<()>| r.map_err(Error::Write);
    w(out.write_all(&protective_mbr(total)))?;
    w(out.write_all(&header(disk, total, false, crc)))?;
    w(out.write_all(&entries))?;
    let mut at = 2 + ENTRY_SECTORS;
    for p in parts {
        w(write_zeros(out, (p.first_lba - at) * SECTOR))?;
        w(out.write_all(p.data))?;
        w(write_zeros(out, p.sectors * SECTOR - p.data.len() as u64))?;
        at = p.first_lba + p.sectors;
    }
    w(write_zeros(out, (total - 1 - ENTRY_SECTORS - at) * SECTOR))?;
    w(out.write_all(&entries))?;
    w(out.write_all(&header(disk, total, true, crc)))?;
    w(write_zeros(out, size - total * SECTOR))
}

/// One entry of a partition table read back from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// Its index in the entry array (the partition number minus one).
    pub index: usize,
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

impl EntryInfo {
    /// The partition's size in bytes.
    pub fn bytes(&self) -> u64 {
        (self.last_lba.saturating_sub(self.first_lba) + 1).saturating_mul(SECTOR)
    }
}

/// A disk's GPT as read back (primary header and entries, and the backup header), to be
/// changed in place: a partition's unique GUID, then [`Table::write`] both copies with their
/// checksums. Read with limits (at most 1 024 entries of 128 to 4 096 bytes); a header whose
/// checksum does not match is refused.
#[derive(Debug, Clone)]
pub struct Table {
    primary: [u8; SECTOR as usize],
    backup: [u8; SECTOR as usize],
    entries: Vec<u8>,
    entry_size: usize,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

/// A header's CRC32 over its first 92 bytes, with the CRC field itself zero.
fn header_crc(h: &[u8]) -> u32 {
    let mut copy = [0u8; 92];
    copy.copy_from_slice(&h[..92]);
    copy[16..20].fill(0);
    crc32fast::hash(&copy)
}

impl Table {
    /// Reads the GPT of `disk`.
    pub fn read(disk: &mut (impl io::Read + io::Seek)) -> Result<Table> {
        let bad = |what: &'static str| Error::NotRawEfi(what);
        let mut read_at = |lba: u64, len: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            disk.seek(io::SeekFrom::Start(lba.saturating_mul(SECTOR)))
                .and_then(|_| disk.read_exact(&mut buf))
                .map_err(|_| bad("shorter than its partition table says"))?;
            Ok(buf)
        };
        let header = |b: Vec<u8>| -> Result<[u8; SECTOR as usize]> {
            let mut h = [0u8; SECTOR as usize];
            h.copy_from_slice(&b);
            if &h[..8] != b"EFI PART" {
                return Err(bad("no GPT header"));
            }
            let (count, entry_size) = (le32(&h, 80), le32(&h, 84));
            if !(128..=4096).contains(&entry_size) || count > 1024 {
                return Err(bad("an implausible partition table"));
            }
            if header_crc(&h) != le32(&h, 16) {
                return Err(bad("a GPT header whose checksum does not match"));
            }
            Ok(h)
        };
        let primary = header(read_at(1, SECTOR as usize)?)?;
        let (count, entry_size) = (le32(&primary, 80) as usize, le32(&primary, 84) as usize);
        let entries = read_at(le64(&primary, 72), count * entry_size)?;
        if crc32fast::hash(&entries) != le32(&primary, 88) {
            return Err(bad("partition entries whose checksum does not match"));
        }
        let backup = header(read_at(le64(&primary, 32), SECTOR as usize)?)?;
        Ok(Table {
            primary,
            backup,
            entries,
            entry_size,
        })
    }

    /// The used entries, in table order.
    pub fn entries(&self) -> Vec<EntryInfo> {
        self.entries
            .chunks(self.entry_size)
            .enumerate()
            .filter(|(_, e)| e[..16].iter().any(|b| *b != 0))
            .map(|(index, e)| {
                let units: Vec<u16> = e[56..128]
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|u| *u != 0)
                    .collect();
                let guid = |o: usize| {
                    let mut g = [0u8; 16];
                    g.copy_from_slice(&e[o..o + 16]);
                    Guid(g)
                };
                EntryInfo {
                    index,
                    type_guid: guid(0),
                    guid: guid(16),
                    first_lba: le64(e, 32),
                    last_lba: le64(e, 40),
                    name: String::from_utf16_lossy(&units),
                }
            })
            .collect()
    }

    /// Gives entry `index` the unique GUID `guid`.
    pub fn set_guid(&mut self, index: usize, guid: Guid) {
        if let Some(e) = self.entries.chunks_mut(self.entry_size).nth(index) {
            e[16..32].copy_from_slice(&guid.0);
        }
    }

    /// Writes both copies of the table (entries, then headers with new checksums) to `disk`.
    pub fn write(&self, disk: &mut (impl io::Write + io::Seek)) -> Result<()> {
        let crc = crc32fast::hash(&self.entries);
        let w = |r: io::Result<()>| r.map_err(Error::Write);
        for header in [&self.backup, &self.primary] {
            let mut h = *header;
            put_u32(&mut h, 88, crc);
            put_u32(&mut h, 16, 0);
            let c = header_crc(&h);
            put_u32(&mut h, 16, c);
            let (me, entries_lba) = (le64(&h, 24), le64(&h, 72));
            w(disk
                .seek(io::SeekFrom::Start(entries_lba * SECTOR))
                .map(|_| ()))?;
            w(disk.write_all(&self.entries))?;
            w(disk.seek(io::SeekFrom::Start(me * SECTOR)).map(|_| ()))?;
            w(disk.write_all(&h))?;
        }
        w(disk.flush())
    }
}

/// Writes `n` zero bytes in large buffers (one MiB at most), so that a sparse writer skips a
/// disk's empty space in few steps.
pub fn write_zeros(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    let chunk = vec![0u8; n.min(1 << 20) as usize];
    while n > 0 {
        let k = n.min(chunk.len() as u64);
        out.write_all(&chunk[..k as usize])?;
        n -= k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn esp_type_guid_bytes() {
        // As `sgdisk` and the specification lay it out on disk.
        assert_eq!(
            Guid::ESP.bytes(),
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        let a = Guid::derive(b"x", "disk");
        assert_eq!(a, Guid::derive(b"x", "disk"));
        assert_ne!(a, Guid::derive(b"x", "esp"));
        assert_eq!(a.bytes()[7] >> 4, 4);
    }

    #[test]
    fn tables_are_consistent() {
        let data = vec![0xAB; 3000];
        let size = 4 << 20;
        let part = Partition {
            type_guid: Guid::ESP,
            guid: Guid::derive(b"d", "p"),
            name: "ESP",
            first_lba: FIRST_LBA,
            sectors: 8,
            data: &data,
        };
        let mut disk = Vec::new();
        write_disk(&mut disk, size, Guid::derive(b"d", "disk"), &[part]).unwrap();
        assert_eq!(disk.len() as u64, size);
        let total = size / SECTOR;
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
        assert_eq!(disk[446 + 4], 0xEE);
        let check = |lba: u64, me: u64, entries_lba: u64| {
            let h = &disk[(lba * SECTOR) as usize..][..SECTOR as usize];
            assert_eq!(&h[..8], b"EFI PART");
            let mut copy = h[..92].to_vec();
            copy[16..20].fill(0);
            assert_eq!(u32_at(h, 16), crc32fast::hash(&copy));
            assert_eq!(u64_at(h, 24), me);
            assert_eq!(u64_at(h, 72), entries_lba);
            let entries = &disk[(entries_lba * SECTOR) as usize..][..16384];
            assert_eq!(u32_at(h, 88), crc32fast::hash(entries));
            assert_eq!(&entries[..16], &Guid::ESP.bytes());
            assert_eq!(u64_at(entries, 32), FIRST_LBA);
            assert_eq!(u64_at(entries, 40), FIRST_LBA + 7);
            assert_eq!(&entries[56..62], &[b'E', 0, b'S', 0, b'P', 0]);
        };
        check(1, 1, 2);
        check(total - 1, total - 1, total - 33);
        let start = (FIRST_LBA * SECTOR) as usize;
        assert_eq!(&disk[start..start + 3000], &data[..]);
        assert!(disk[start + 3000..start + 4096].iter().all(|b| *b == 0));
    }

    #[test]
    fn too_small_names_the_needed_size() {
        let data = vec![1u8; 1 << 20];
        let part = Partition {
            type_guid: Guid::ESP,
            guid: Guid::derive(b"", "p"),
            name: "ESP",
            first_lba: FIRST_LBA,
            sectors: 2048,
            data: &data,
        };
        let mut out = Vec::new();
        let err = write_disk(&mut out, 2 << 20, Guid::derive(b"", "d"), &[part]).unwrap_err();
        let needed = disk_size_for(4096);
        assert!(
            matches!(err, Error::TooSmall { needed: n, .. } if n == needed),
            "{err}"
        );
        assert!(err.to_string().contains(&needed.to_string()), "{err}");
        assert!(out.is_empty());
    }

    #[test]
    fn guids_print_in_registry_form() {
        assert_eq!(
            Guid::ESP.to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(
            Guid::ROOT_VERITY_AARCH64.to_string(),
            "df3300ce-d69f-4c92-978c-9bfb0f38d820"
        );
        let bytes: [u8; 16] = std::array::from_fn(|i| u8::try_from(i * 17).unwrap());
        assert_eq!(
            Guid::from_uuid_bytes(bytes).to_string(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
    }

    #[test]
    fn a_table_reads_back_and_changes_in_place() {
        let data = vec![0xAB; 3000];
        let part = |name, first_lba| Partition {
            type_guid: Guid::LINUX_DATA,
            guid: Guid::derive(name, "p"),
            name: std::str::from_utf8(name).unwrap(),
            first_lba,
            sectors: 8,
            data: &data,
        };
        let mut disk = Vec::new();
        let parts = [part(b"one", FIRST_LBA), part(b"two", FIRST_LBA + 8)];
        write_disk(&mut disk, 4 << 20, Guid::derive(b"d", "disk"), &parts).unwrap();
        let mut cursor = io::Cursor::new(disk);
        let mut table = Table::read(&mut cursor).unwrap();
        let entries = table.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, "two");
        assert_eq!(entries[1].first_lba, FIRST_LBA + 8);
        assert_eq!(entries[1].bytes(), 8 * SECTOR);
        let new = Guid::derive(b"new", "p");
        table.set_guid(1, new);
        table.write(&mut cursor).unwrap();
        // Both copies changed, with checksums that match (read checks them, as sfdisk would).
        let back = Table::read(&mut cursor).unwrap();
        assert_eq!(back.entries()[1].guid, new);
        assert_eq!(back.entries()[0].guid, Guid::derive(b"one", "p"));
        let disk = cursor.into_inner();
        let backup_entries = (4 << 20) / 512 - 1 - 32;
        let at = usize::try_from(backup_entries * 512 + 128 + 16).unwrap();
        assert_eq!(&disk[at..at + 16], &new.bytes());
        // A changed byte in the entries is refused.
        let mut bad = disk.clone();
        bad[1024 + 60] ^= 1;
        let err = Table::read(&mut io::Cursor::new(bad)).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
