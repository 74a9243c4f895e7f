//! The A/B layout's boot side: the versions of a keel system (`IMAGE_VERSION`, ordered as
//! systemd-boot orders them), the names of their UKIs in the ESP's `EFI/Linux` with systemd-boot's
//! boot counter (`keel-2+1-0.efi`: one try left, none done), and reading and changing the files of the ESP in
//! place on a disk or a block device.
//!
//! Boot counting is systemd-boot's (Boot Loader Specification, "Boot counting"): a UKI named
//! `keel-V+LEFT-DONE.efi` is on trial; before starting it systemd-boot renames it to one try
//! fewer (`keel-V+1-0.efi` to `keel-V+0-1.efi`), and one with no tries left sorts after every other entry, so the
//! default (`keel-*`, the first) becomes the previous version. The running system blesses a
//! good trial by renaming it to `keel-V.efi` (the counter gone: permanent).

use crate::error::{Error, Result};
use crate::gpt::{self, Guid, SECTOR};
use std::cmp::Ordering;
use std::io::{Read, Seek, SeekFrom, Write};

/// Where systemd-boot looks for UKIs (type #2 entries) on the ESP.
pub const ENTRY_DIR: &str = "EFI/Linux";

/// The command-line knob of an `--ab` UKI that names its version (`keel.version=2`): the
/// running system finds its own UKI on the ESP by it.
pub const VERSION_KNOB: &str = "keel.version";

/// The tries an update's UKI gets: it boots once; if that boot is not blessed, the next one
/// boots the previous version.
pub const TRIAL_TRIES: u32 = 1;

/// `IMAGE_VERSION`, by which systemd-boot sorts UKIs (newest first), and part of the UKI's file
/// name. One to 64 of `A-Z a-z 0-9 . _ ~ ^ -` (the characters systemd's version comparison
/// knows; no `+`, which starts the boot counter); the default is `1`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct ImageVersion(String);

impl ImageVersion {
    /// The longest version accepted.
    pub const MAX_LEN: usize = 64;

    /// The version as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ImageVersion {
    fn default() -> Self {
        ImageVersion("1".into())
    }
}

impl std::fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ImageVersion {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::ImageVersion {
            given: s.chars().take(80).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(bad("it is longer than 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~^-".contains(&b))
        {
            return Err(bad("it has a character other than those allowed"));
        }
        Ok(ImageVersion(s.into()))
    }
}

impl PartialOrd for ImageVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// systemd-boot's order ([`compare_versions`]); `01` and `1` are the same version.
impl Ord for ImageVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_versions(&self.0, &other.0)
    }
}

/// Compares versions as systemd-boot orders them, for the versions keel accepts: runs of
/// digits numerically, other runs byte by byte, a `~` before anything (a pre-release), and a
/// version that is a prefix of another older than it.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) => {}
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (run(a), run(b));
                let trim = |d: &[u8]| {
                    let zeros = d.iter().take_while(|c| **c == b'0').count();
                    d[zeros..].to_vec()
                };
                let (ta, tb) = (trim(&a[..na]), trim(&b[..nb]));
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(&tb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
                continue;
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {}
        }
        a = &a[1..];
        b = &b[1..];
    }
}

/// systemd-boot's boot counter of an entry on trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tries {
    /// Boots left before the entry counts as bad.
    pub left: u32,
    /// Boots already tried (systemd-boot adds `-DONE` on its first rename).
    pub done: Option<u32>,
}

/// Where a version stands in boot assessment, read from its UKI's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Assessment {
    /// No counter: a version that was blessed, or that was built (not updated to).
    Good,
    /// On trial: systemd-boot boots it while tries are left, then gives up on it.
    Trial(Tries),
    /// Out of tries: systemd-boot sorts it last and boots another version.
    Bad { tried: u32 },
}

/// A keel UKI's file name in [`ENTRY_DIR`]: `keel-VERSION.efi`, or with a boot counter
/// `keel-VERSION+LEFT.efi` / `keel-VERSION+LEFT-DONE.efi`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryName {
    pub version: ImageVersion,
    pub tries: Option<Tries>,
}

impl EntryName {
    /// A version's entry without a counter (a built or blessed version).
    pub fn good(version: ImageVersion) -> EntryName {
        EntryName {
            version,
            tries: None,
        }
    }

    /// A version's entry on trial with `left` tries, none done: `keel-V+1-0.efi`. The `-0` is
    /// not optional here: systemd-boot 252 renames an entry in place with a buffer sized for
    /// the old name, which firmware refuses when the new one is longer (OVMF: "Invalid
    /// Parameter", and the try is not counted); `+1-0` → `+0-1` keeps the length.
    pub fn trial(version: ImageVersion, left: u32) -> EntryName {
        EntryName {
            version,
            tries: Some(Tries {
                left,
                done: Some(0),
            }),
        }
    }

    /// Parses a file name (not a path); `None` for anything that is not a keel UKI's name. The
    /// counter is parsed as systemd-boot parses it: the last `+`, digits, optionally `-` and
    /// digits, then the suffix.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let stem = file_name.strip_prefix("keel-")?.strip_suffix(".efi")?;
        let digits = |s: &str| {
            (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        let (version, tries) = match stem.rsplit_once('+') {
            None => (stem, None),
            Some((version, counter)) => {
                let tries = match counter.split_once('-') {
                    None => Tries {
                        left: digits(counter)?,
                        done: None,
                    },
                    Some((left, done)) => Tries {
                        left: digits(left)?,
                        done: Some(digits(done)?),
                    },
                };
                (version, Some(tries))
            }
        };
        Some(EntryName {
            version: version.parse().ok()?,
            tries,
        })
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.tries {
            None => format!("keel-{}.efi", self.version),
            Some(Tries { left, done: None }) => format!("keel-{}+{left}.efi", self.version),
            Some(Tries {
                left,
                done: Some(done),
            }) => format!("keel-{}+{left}-{done}.efi", self.version),
        }
    }

    /// The path on the ESP.
    pub fn path(&self) -> String {
        format!("{ENTRY_DIR}/{}", self.file_name())
    }

    pub fn assessment(&self) -> Assessment {
        match self.tries {
            None => Assessment::Good,
            Some(Tries { left: 0, done }) => Assessment::Bad {
                tried: done.unwrap_or(0),
            },
            Some(tries) => Assessment::Trial(tries),
        }
    }

    /// Whether systemd-boot would boot it at all (it boots a bad entry only if nothing else
    /// is there).
    pub fn bootable(&self) -> bool {
        !matches!(self.assessment(), Assessment::Bad { .. })
    }
}

/// The entry systemd-boot boots by default among `entries` (`default keel-*`): the newest
/// version with tries left, else the newest of all.
pub fn default_entry(entries: &[EntryName]) -> Option<&EntryName> {
    let newer = |a: &&EntryName, b: &&EntryName| a.version.cmp(&b.version);
    entries
        .iter()
        .filter(|e| e.bootable())
        .max_by(newer)
        .or_else(|| entries.iter().max_by(newer))
}

/// The first partition of type `type_guid` in the disk's GPT ([`gpt::Table`], read with
/// limits and checksums: a hostile table is refused, never allocated for).
pub fn find_partition(
    disk: &mut (impl Read + Seek),
    type_guid: Guid,
) -> Result<Option<gpt::EntryInfo>> {
    Ok(gpt::Table::read(disk)?
        .entries()
        .into_iter()
        .find(|e| e.type_guid == type_guid))
}

/// `len` bytes of `disk` at `offset`.
pub fn read_at(disk: &mut (impl Read + Seek), offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.read_exact(&mut buf))
        .map_err(|_| Error::NotRawEfi("shorter than its partition table says"))?;
    Ok(buf)
}

/// The contents of the first partition of type `type_guid`, if the disk has one, read whole
/// (at most `max` bytes: a larger one is refused).
pub fn read_partition(
    disk: &mut (impl Read + Seek),
    type_guid: Guid,
    max: u64,
) -> Result<Option<Vec<u8>>> {
    let Some(entry) = find_partition(disk, type_guid)? else {
        return Ok(None);
    };
    let len = Some(entry.bytes())
        .filter(|_| entry.last_lba >= entry.first_lba)
        .filter(|&n| n <= max)
        .ok_or(Error::NotRawEfi("an implausible partition"))?;
    let len = usize::try_from(len).map_err(|_| Error::NotRawEfi("an implausible partition"))?;
    read_at(disk, entry.first_lba.saturating_mul(SECTOR), len).map(Some)
}

/// A partition of a disk file as a file of its own, for the FAT code.
struct Region<'a, F> {
    file: &'a mut F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F: Read + Seek> Read for Region<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let read = self.file.read(&mut buf[..n])?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl<F: Write + Seek> Write for Region<'_, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let written = self.file.write(&buf[..n])?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl<F> Seek for Region<'_, F> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

/// A reader that refuses writes: the FAT code wants a writable device even to read, and a
/// read must not change the disk.
struct ReadOnly<R>(R);

impl<R: Read> Read for ReadOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Seek> Seek for ReadOnly<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(to)
    }
}

impl<R> Write for ReadOnly<R> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the ESP is open read-only",
        ))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The disk's ESP as a region of it.
fn esp_region<F: Read + Seek>(disk: &mut F) -> Result<Region<'_, F>> {
    let esp = find_partition(disk, Guid::ESP)?
        .filter(|e| e.last_lba >= e.first_lba)
        .ok_or(Error::NotRawEfi("no EFI system partition"))?;
    Ok(Region {
        start: esp.first_lba.saturating_mul(SECTOR),
        len: esp.bytes(),
        pos: 0,
        file: disk,
    })
}

/// The keel UKIs in the ESP's [`ENTRY_DIR`] by name, in directory order (other files there
/// are left out; none if there is no such directory, as on a plain `raw-efi` disk). Reads
/// directory entries only.
pub fn esp_entries(disk: &mut (impl Read + Seek)) -> Result<Vec<EntryName>> {
    let region = ReadOnly(esp_region(disk)?);
    let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new()).map_err(Error::FatRead)?;
    let dir = match fs.root_dir().open_dir(ENTRY_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::FatRead(e)),
    };
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(Error::FatRead)?;
        if let (true, Some(name)) = (entry.is_file(), EntryName::parse(&entry.file_name())) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The file at `path` in the ESP, if there is one, at most `max` bytes (a larger one is
/// refused).
pub fn read_esp_file(
    disk: &mut (impl Read + Seek),
    path: &str,
    max: u64,
) -> Result<Option<Vec<u8>>> {
    let region = ReadOnly(esp_region(disk)?);
    let fs = fatfs::FileSystem::new(region, fatfs::FsOptions::new()).map_err(Error::FatRead)?;
    let mut file = match fs.root_dir().open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::FatRead(e)),
    };
    let mut data = Vec::new();
    (&mut file)
        .take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(Error::FatRead)?;
    if data.len() as u64 > max {
        return Err(Error::TooLarge {
            what: "a file on the ESP",
            size: data.len() as u64,
            max,
        });
    }
    Ok(Some(data))
}

/// Where the ESP keeps why `version` failed its boot assessment (see `running`).
pub fn failure_path(version: &ImageVersion) -> String {
    format!("EFI/keel/failed-{version}.txt")
}

/// The largest UKI keel reads.
pub const MAX_UKI: u64 = 1 << 30;

/// The UKIs of an `--ab` disk: each keel entry of [`esp_entries`] with its contents.
pub fn read_ab_ukis(disk: &mut (impl Read + Seek)) -> Result<Vec<(EntryName, Vec<u8>)>> {
    let mut ukis = Vec::new();
    for name in esp_entries(disk)? {
        let uki = read_esp_file(disk, &name.path(), MAX_UKI)?
            .ok_or(Error::NotRawEfi("a UKI went missing while it was read"))?;
        ukis.push((name, uki));
    }
    Ok(ukis)
}

/// A clock that always says 1980-01-01 00:00:00, for every FAT timestamp keel writes: outputs
/// stay reproducible, and firmware accepts the dates. (fatfs without a clock writes day 0 of
/// month 0, which OVMF's FAT driver reads back as an invalid time: it then refuses to rename
/// the file, and systemd-boot's boot counter stops counting.)
#[derive(Debug)]
pub struct FatEpoch;

impl fatfs::TimeProvider for FatEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

/// The one [`FatEpoch`].
pub static FAT_EPOCH: FatEpoch = FatEpoch;

/// One change to the files of an ESP.
#[derive(Debug, Clone, Copy)]
pub enum EspEdit<'a> {
    /// Removes a file, if it is there.
    Remove(&'a str),
    /// Writes a file whole under a temporary name, then renames it into place, so that a
    /// reader never sees it half-written under its name.
    Put(&'a str, &'a [u8]),
    /// Renames a file (the directory entry changes in one sector write).
    Rename(&'a str, &'a str),
}

/// Changes the files in the EFI system partition of `disk` in place, in order.
pub fn edit_esp(disk: &mut (impl Read + Write + Seek), edits: &[EspEdit<'_>]) -> Result<()> {
    let mut region = esp_region(disk)?;
    let fs = fatfs::FileSystem::new(
        &mut region,
        fatfs::FsOptions::new().time_provider(&FAT_EPOCH),
    )
    .map_err(Error::FatRead)?;
    let root = fs.root_dir();
    for edit in edits {
        match *edit {
            EspEdit::Remove(path) => match root.remove(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::Fat(e)),
                _ => {}
            },
            EspEdit::Put(path, data) => {
                // The temporary file beside its target: the rename stays in one directory.
                let parent = path.rsplit_once('/').map_or("", |(dir, _)| dir);
                let mut dir = root.clone();
                for part in parent.split('/').filter(|p| !p.is_empty()) {
                    dir = dir.create_dir(part).map_err(Error::Fat)?;
                }
                let name = path.rsplit('/').next().unwrap_or(path);
                const TEMPORARY: &str = "keel-update.tmp";
                let mut f = dir.create_file(TEMPORARY).map_err(Error::Fat)?;
                f.truncate().map_err(Error::Fat)?;
                f.write_all(data).map_err(Error::Fat)?;
                f.flush().map_err(Error::Fat)?;
                drop(f);
                if dir.open_file(name).is_ok() {
                    dir.remove(name).map_err(Error::Fat)?;
                }
                dir.rename(TEMPORARY, &dir, name).map_err(Error::Fat)?;
            }
            EspEdit::Rename(from, to) => root.rename(from, &root, to).map_err(Error::Fat)?,
        }
    }
    drop(root);
    fs.unmount().map_err(Error::Fat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_systemd_boot_sorts_them() {
        for (a, b) in [
            ("2", "1"),
            ("10", "9"),
            ("1.10", "1.9"),
            ("1.2.1", "1.2"),
            ("1.0", "1.0~rc1"),
            ("2.0~rc2", "2.0~rc1"),
            ("1b", "1a"),
            ("007", "6"),
        ] {
            assert_eq!(compare_versions(a, b), Ordering::Greater, "{a} > {b}");
            assert_eq!(compare_versions(b, a), Ordering::Less, "{b} < {a}");
        }
        assert_eq!(compare_versions("1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare_versions("01", "1"), Ordering::Equal);
    }

    #[test]
    fn entry_names_carry_systemd_boots_counter() {
        let v = |s: &str| s.parse::<ImageVersion>().unwrap();
        for (name, version, tries, assessment) in [
            ("keel-1.efi", "1", None, Assessment::Good),
            (
                "keel-2+1.efi",
                "2",
                Some(Tries {
                    left: 1,
                    done: None,
                }),
                Assessment::Trial(Tries {
                    left: 1,
                    done: None,
                }),
            ),
            (
                "keel-2.1-rc1+0-1.efi",
                "2.1-rc1",
                Some(Tries {
                    left: 0,
                    done: Some(1),
                }),
                Assessment::Bad { tried: 1 },
            ),
        ] {
            let parsed = EntryName::parse(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(parsed.version, v(version), "{name}");
            assert_eq!(parsed.tries, tries, "{name}");
            assert_eq!(parsed.assessment(), assessment, "{name}");
            assert_eq!(parsed.file_name(), name);
        }
        for hostile in [
            "keel-.efi",
            "keel-1+.efi",
            "keel-1+x.efi",
            "keel-1+1-.efi",
            "keel-1+1-2-3.efi",
            "keel-1+99999999999.efi",
            "keel-1/2.efi",
            "other-1.efi",
            "keel-1.EFI.tmp",
        ] {
            assert_eq!(EntryName::parse(hostile), None, "{hostile}");
        }
    }

    #[test]
    fn the_default_entry_is_the_newest_with_tries_left() {
        let e = |s: &str| EntryName::parse(s).unwrap();
        let entries = [e("keel-1.efi"), e("keel-3+0-1.efi"), e("keel-2.efi")];
        assert_eq!(default_entry(&entries), Some(&entries[2]));
        let entries = [e("keel-1.efi"), e("keel-3+1.efi")];
        assert_eq!(default_entry(&entries), Some(&entries[1]));
        let entries = [e("keel-1+0-3.efi")];
        assert_eq!(default_entry(&entries), Some(&entries[0]));
        assert_eq!(default_entry(&[]), None);
    }

    /// A GPT disk whose one partition is an empty 8 MiB FAT ESP.
    fn disk_with_esp() -> std::io::Cursor<Vec<u8>> {
        let mut fat = std::io::Cursor::new(vec![0u8; 8 << 20]);
        fatfs::format_volume(&mut fat, fatfs::FormatVolumeOptions::new()).unwrap();
        let fat = fat.into_inner();
        let mut disk = Vec::new();
        let sectors = fat.len() as u64 / SECTOR;
        gpt::write_disk(
            &mut disk,
            gpt::disk_size_for(gpt::FIRST_LBA + sectors),
            Guid::ESP,
            &[gpt::Partition {
                type_guid: Guid::ESP,
                guid: Guid::ESP,
                name: "EFI system partition",
                first_lba: gpt::FIRST_LBA,
                sectors,
                data: &fat,
            }],
        )
        .unwrap();
        std::io::Cursor::new(disk)
    }

    #[test]
    fn esp_edits_apply_in_order_with_valid_timestamps() {
        let mut disk = disk_with_esp();
        let trial = EntryName::trial("2".parse().unwrap(), TRIAL_TRIES);
        assert_eq!(trial.file_name(), "keel-2+1-0.efi");
        let failure = failure_path(&trial.version);
        edit_esp(
            &mut disk,
            &[
                EspEdit::Put(&trial.path(), b"uki"),
                EspEdit::Put(&failure, b"why"),
                EspEdit::Remove("EFI/Linux/absent.efi"),
            ],
        )
        .unwrap();
        assert_eq!(
            esp_entries(&mut disk).unwrap(),
            std::slice::from_ref(&trial)
        );
        assert_eq!(
            read_esp_file(&mut disk, &failure, 16).unwrap().as_deref(),
            Some(&b"why"[..])
        );
        let err = read_esp_file(&mut disk, &failure, 2).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        // Firmware (OVMF) refuses to rename a file whose dates do not exist: every date keel
        // writes is a real one.
        {
            let mut region = esp_region(&mut disk).unwrap();
            let fs = fatfs::FileSystem::new(&mut region, fatfs::FsOptions::new()).unwrap();
            let dir = fs.root_dir().open_dir(ENTRY_DIR).unwrap();
            for entry in dir.iter().map(|e| e.unwrap()) {
                for date in [
                    entry.created().date,
                    entry.modified().date,
                    entry.accessed(),
                ] {
                    assert!(
                        date.month >= 1 && date.day >= 1,
                        "{}: {date:?}",
                        entry.file_name()
                    );
                }
            }
        }
        let good = EntryName::good(trial.version.clone());
        edit_esp(&mut disk, &[EspEdit::Rename(&trial.path(), &good.path())]).unwrap();
        assert_eq!(esp_entries(&mut disk).unwrap(), [good]);
        assert_eq!(
            read_esp_file(&mut disk, "EFI/Linux/keel-2+1-0.efi", 16).unwrap(),
            None
        );
    }
}
