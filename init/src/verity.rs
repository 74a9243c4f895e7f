//! The dm-verity root of the `kernel+squashfs` loader. Owns the `keel.verity=`,
//! `keel.verity_salt=` and `keel.verity_blocks=` knobs (a signed command line: the only trusted
//! input), the search for the data and hash partitions by GPT unique partition GUID (the first
//! and last 16 bytes of the root hash, systemd's Discoverable Partitions convention), and the
//! device-mapper requests that make them one read-only `verity` device. Nothing is read from the
//! verity superblock: a block that does not match the root hash reads as an I/O error, so a
//! changed disk fails closed.
//!
//! When the root's partitions are on more than one disk (an A/B update's source disk still
//! attached holds the new version's partitions under the same GUIDs), the disk the firmware
//! booted decides: the one holding the ESP that systemd-boot names in the EFI variable
//! `LoaderDevicePartUUID`. Without that variable such a boot is refused.

use crate::realroot;
use crate::sys;
use keel_disk::verity::DM_NAME;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The knobs, as the kernel command line spells them.
const KNOB_HASH: &str = "keel.verity";
const KNOB_SALT: &str = "keel.verity_salt";
const KNOB_BLOCKS: &str = "keel.verity_blocks";
/// Data and hash block size (veritysetup's default, the contract with the host).
const BLOCK: u64 = 4096;
/// 512-byte sectors per block.
const SECTORS_PER_BLOCK: u64 = BLOCK / 512;
/// The hash partition's first block is veritysetup's superblock; the tree follows.
const HASH_START_BLOCK: u64 = 1;
/// sha256 digests per hash block.
const DIGESTS_PER_BLOCK: u64 = BLOCK / 32;
/// The longest salt dm-verity accepts.
const MAX_SALT: usize = 256;
/// The module with the `verity` target (and, through its dependencies, device-mapper).
const DM_MODULE: &str = "dm_verity";
/// The device-mapper control device and its misc device number.
const CONTROL: &str = "/dev/mapper/control";
const CONTROL_MAJOR: u64 = 10;
const CONTROL_MINOR: u64 = 236;
/// How long to wait for devtmpfs to make a node before making it ourselves.
const NODE_WAIT: Duration = Duration::from_secs(2);
/// The GPT's bounds: larger entries or more of them are refused.
const GPT_MIN_ENTRY: u32 = 128;
const GPT_MAX_ENTRY: u32 = 4096;
const GPT_MAX_ENTRIES: u32 = 1024;
/// Where efivarfs shows EFI variables, and systemd-boot's variable naming the partition it was
/// started from (the Boot Loader Interface's vendor GUID).
const EFIVARS: &str = "/sys/firmware/efi/efivars";
const LOADER_DEVICE_PART_UUID: &str = "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The verified root the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySpec {
    /// The sha256 root hash of the hash tree.
    pub root_hash: [u8; 32],
    /// The salt (empty: none).
    pub salt: Vec<u8>,
    /// Data blocks of 4096 bytes covered by the tree.
    pub blocks: u64,
}

/// Why the verified root could not be set up. The caller prefixes `verity: `.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{0}= is missing")]
    Missing(&'static str),
    #[error("{0}= is given more than once")]
    Repeated(&'static str),
    #[error("{KNOB_HASH}={0} is not a sha256 root hash (64 hex digits)")]
    RootHash(String),
    #[error("{KNOB_SALT}={0} is not a salt (1 to {MAX_SALT} bytes in hex, or -)")]
    Salt(String),
    #[error("{KNOB_BLOCKS}={0} is not a number of 4096-byte data blocks (1 or more)")]
    Blocks(String),
    #[error("the {role} partition {guid} did not appear within {}s ({disks})", realroot::ROOT_WAIT.as_secs())]
    NotFound {
        role: Role,
        guid: Guid,
        disks: String,
    },
    #[error(
        "the {role} partition {guid} is on two devices, {first} and {second}, and the boot loader did not name either's disk as the one it booted from (an update's disk still attached? detach it)"
    )]
    Duplicate {
        role: Role,
        guid: Guid,
        first: String,
        second: String,
    },
    #[error(
        "the {role} partition {name} holds {bytes} bytes, fewer than the {need} the root hash needs"
    )]
    TooSmall {
        role: Role,
        name: String,
        bytes: u64,
        need: u64,
    },
    #[error(
        "cannot open the device-mapper control device {CONTROL} (no device-mapper in this kernel?)"
    )]
    Control(#[source] io::Error),
    #[error("cannot create the device node {}", .path.display())]
    Node {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device-mapper request: invalid {0}")]
    Request(&'static str),
    #[error("device-mapper answered without a device number")]
    NoDevNumber,
    #[error("device-mapper cannot {what}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount the verified root {} ({fstype}): {errno}{}", .device.display(), eio_hint(*.errno))]
    Mount {
        device: PathBuf,
        fstype: String,
        errno: nix::Error,
    },
}

/// What an I/O error from a verity device most likely means.
fn eio_hint(errno: nix::Error) -> &'static str {
    if errno == nix::Error::EIO {
        " (a block does not match the root hash: the disk was changed or is damaged)"
    } else {
        ""
    }
}

/// Which of the two partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The root filesystem (the first half of the root hash).
    Data,
    /// The hash tree (the second half).
    Hash,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Data => "root data",
            Role::Hash => "hash tree",
        })
    }
}

impl VeritySpec {
    /// The verified root the command line asks for: None when no `keel.verity*` knob is
    /// present; an error when one is given but the set is incomplete, repeated or invalid
    /// (never ignored: a verified boot must not fall back to an unverified one).
    pub fn from_cmdline(text: &str) -> Result<Option<VeritySpec>, VerityError> {
        let (mut hash, mut salt, mut blocks) = (None, None, None);
        for word in text.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            let (name, slot) = match key {
                KNOB_HASH => (KNOB_HASH, &mut hash),
                KNOB_SALT => (KNOB_SALT, &mut salt),
                KNOB_BLOCKS => (KNOB_BLOCKS, &mut blocks),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(VerityError::Repeated(name));
            }
        }
        if hash.is_none() && salt.is_none() && blocks.is_none() {
            return Ok(None);
        }
        let hash = hash.ok_or(VerityError::Missing(KNOB_HASH))?;
        let salt = salt.ok_or(VerityError::Missing(KNOB_SALT))?;
        let blocks = blocks.ok_or(VerityError::Missing(KNOB_BLOCKS))?;
        let root_hash = hex::decode(hash)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| VerityError::RootHash(hash.to_owned()))?;
        let salt_bytes = if salt == "-" {
            Vec::new()
        } else {
            hex::decode(salt)
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= MAX_SALT)
                .ok_or_else(|| VerityError::Salt(salt.to_owned()))?
        };
        let count = Some(blocks)
            .filter(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|b| b.parse::<u64>().ok())
            // The device's bytes must be countable.
            .filter(|&n| n > 0 && n.checked_mul(BLOCK).is_some())
            .ok_or_else(|| VerityError::Blocks(blocks.to_owned()))?;
        Ok(Some(VeritySpec {
            root_hash,
            salt: salt_bytes,
            blocks: count,
        }))
    }

    /// The GUIDs of the data and the hash partition: the root hash's halves.
    pub fn guids(&self) -> [Guid; 2] {
        let (data, hash) = self.root_hash.split_at(16);
        [data, hash].map(|half| Guid(half.try_into().unwrap_or_default()))
    }

    /// The `verity` target's parameters over the devices `data` and `hash` (`major:minor`):
    /// format 1, sha256, 4096-byte blocks, the tree after the superblock, no optional
    /// arguments (a mismatching block is an I/O error).
    pub fn table_params(&self, data: &str, hash: &str) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(&self.salt)
        };
        format!(
            "1 {data} {hash} {BLOCK} {BLOCK} {blocks} {HASH_START_BLOCK} sha256 {root} {salt}",
            blocks = self.blocks,
            root = hex::encode(self.root_hash),
        )
    }

    /// The bytes the data partition must hold.
    fn data_bytes(&self) -> u64 {
        self.blocks.saturating_mul(BLOCK)
    }

    /// The bytes the hash partition must hold: the superblock and the tree.
    fn hash_bytes(&self) -> u64 {
        HASH_START_BLOCK
            .saturating_add(hash_tree_blocks(self.blocks))
            .saturating_mul(BLOCK)
    }
}

/// The hash blocks of the tree over `data_blocks` blocks, as dm-verity lays it out (no tree
/// for a single block: its digest is the root hash).
fn hash_tree_blocks(data_blocks: u64) -> u64 {
    let mut total = 0u64;
    let mut level = data_blocks;
    while level > 1 {
        level = level.div_ceil(DIGESTS_PER_BLOCK);
        total = total.saturating_add(level);
    }
    total
}

/// A GPT partition GUID, its bytes in the order its text shows them (the root hash's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From GPT's on-disk form, whose first three fields are little-endian.
    pub fn from_gpt(mut bytes: [u8; 16]) -> Guid {
        bytes[0..4].reverse();
        bytes[4..6].reverse();
        bytes[6..8].reverse();
        Guid(bytes)
    }
}

impl std::str::FromStr for Guid {
    type Err = ();

    /// The text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, either case (firmware variables
    /// spell it in upper case).
    fn from_str(text: &str) -> Result<Guid, ()> {
        let fields: Vec<&str> = text.split('-').collect();
        let lengths = fields.iter().map(|f| f.len()).collect::<Vec<_>>();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(());
        }
        let bytes = hex::decode(fields.concat()).map_err(|_| ())?;
        bytes.try_into().map(Guid).map_err(|_| ())
    }
}

/// The partition GUID in the value of the EFI variable `LoaderDevicePartUUID` as efivarfs shows
/// it: 4 bytes of attributes, then the GUID's text in UTF-16LE, NUL-terminated.
pub fn parse_loader_device_part_uuid(var: &[u8]) -> Option<Guid> {
    let text: Vec<u16> = var
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&text).ok()?.parse().ok()
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{}-{}-{}-{}-{}",
            hex::encode(&b[0..4]),
            hex::encode(&b[4..6]),
            hex::encode(&b[6..8]),
            hex::encode(&b[8..10]),
            hex::encode(&b[10..16])
        )
    }
}

/// The ESP the boot loader says it was started from, read from efivarfs (mounted for the
/// read, its module loaded if the kernel has it as one); None on a machine without EFI, a loader
/// that does not set the variable, or any error (logged).
fn booted_esp(load_module: &dyn Fn(&str)) -> Option<Guid> {
    let dir = Path::new(EFIVARS);
    if !dir.exists() {
        log::info!("verity: no EFI variables: the firmware did not boot through EFI");
        return None;
    }
    let flags = nix::mount::MsFlags::MS_RDONLY
        | nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOEXEC;
    let mount = || sys::mount(Some("efivarfs"), dir, Some("efivarfs"), flags, None);
    let mounted = match mount() {
        Ok(()) => true,
        Err(nix::Error::ENODEV) => {
            load_module("efivarfs");
            mount().is_ok()
        }
        // Already mounted.
        Err(nix::Error::EBUSY) => false,
        Err(e) => {
            log::warn!("verity: cannot mount efivarfs on {EFIVARS}: {e}");
            return None;
        }
    };
    let path = dir.join(LOADER_DEVICE_PART_UUID);
    let read = std::fs::read(&path);
    if mounted && let Err(e) = sys::umount(dir, true) {
        log::debug!("cannot unmount {EFIVARS}: {e}");
    }
    match read {
        Ok(var) => {
            let guid = parse_loader_device_part_uuid(&var);
            if guid.is_none() {
                log::warn!("verity: {} holds no partition GUID", path.display());
            }
            guid
        }
        Err(e) => {
            log::info!("verity: cannot read {}: {e}", path.display());
            None
        }
    }
}

/// Why a disk's GPT was not used.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("cannot read")]
    Read(#[source] io::Error),
    #[error("no GPT")]
    NoSignature,
    #[error("implausible logical block size {0}")]
    BlockSize(u64),
    #[error("implausible GPT header size {0}")]
    HeaderSize(u32),
    #[error("GPT header says it is at LBA {0}, not 1")]
    NotAtLba1(u64),
    #[error("implausible GPT entry size {0} ({GPT_MIN_ENTRY} to {GPT_MAX_ENTRY})")]
    EntrySize(u32),
    #[error("implausible GPT entry count {0} (at most {GPT_MAX_ENTRIES})")]
    EntryCount(u32),
    #[error("implausible GPT entry array at LBA {0}")]
    EntriesAt(u64),
}

/// A used GPT entry: its 1-based number and unique partition GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptEntry {
    pub number: u32,
    pub guid: Guid,
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_le_bytes)
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(8)?)?
        .try_into()
        .ok()
        .map(u64::from_le_bytes)
}

/// The used entries of the primary GPT of `disk`, whose logical blocks are `lba_size` bytes.
/// The CRCs are not checked: the kernel made the partition devices from this table, and the
/// root hash, not the table, says whether the contents are right.
pub fn read_gpt(disk: &mut (impl Read + Seek), lba_size: u64) -> Result<Vec<GptEntry>, GptError> {
    if !(512..=65536).contains(&lba_size) || !lba_size.is_power_of_two() {
        return Err(GptError::BlockSize(lba_size));
    }
    let lba = usize::try_from(lba_size).map_err(|_| GptError::BlockSize(lba_size))?;
    let mut header = vec![0u8; lba];
    disk.seek(SeekFrom::Start(lba_size))
        .and_then(|_| disk.read_exact(&mut header))
        .map_err(GptError::Read)?;
    if header.get(..8) != Some(b"EFI PART".as_slice()) {
        return Err(GptError::NoSignature);
    }
    let field = |v: Option<u32>| v.ok_or(GptError::NoSignature);
    let header_size = field(le_u32(&header, 12))?;
    if usize::try_from(header_size).map_or(true, |s| s < 92 || s > lba) {
        return Err(GptError::HeaderSize(header_size));
    }
    let my_lba = le_u64(&header, 24).ok_or(GptError::NoSignature)?;
    if my_lba != 1 {
        return Err(GptError::NotAtLba1(my_lba));
    }
    let entries_lba = le_u64(&header, 72).ok_or(GptError::NoSignature)?;
    let count = field(le_u32(&header, 80))?;
    let entry_size = field(le_u32(&header, 84))?;
    if !(GPT_MIN_ENTRY..=GPT_MAX_ENTRY).contains(&entry_size) {
        return Err(GptError::EntrySize(entry_size));
    }
    if count > GPT_MAX_ENTRIES {
        return Err(GptError::EntryCount(count));
    }
    let offset = Some(entries_lba)
        .filter(|&l| l >= 2)
        .and_then(|l| l.checked_mul(lba_size))
        .ok_or(GptError::EntriesAt(entries_lba))?;
    // At most 4 MiB by the bounds above.
    let size = usize::try_from(entry_size).map_err(|_| GptError::EntrySize(entry_size))?;
    let total = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(size))
        .ok_or(GptError::EntryCount(count))?;
    let mut entries = vec![0u8; total];
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.read_exact(&mut entries))
        .map_err(GptError::Read)?;
    let mut used = Vec::new();
    for (number, entry) in (1u32..).zip(entries.chunks_exact(size)) {
        let type_guid = entry.get(..16).unwrap_or_default();
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        if let Some(unique) = entry.get(16..32).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
            used.push(GptEntry {
                number,
                guid: Guid::from_gpt(unique),
            });
        }
    }
    Ok(used)
}

/// A partition's block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its kernel name (`vda1`).
    pub name: String,
    /// `major:minor`, as device-mapper tables name devices.
    pub dev: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What one look at the disks found.
#[derive(Debug, Default)]
pub struct Scan {
    pub data: Option<Partition>,
    pub hash: Option<Partition>,
    /// Per disk, what was seen (for the error when a partition never appears).
    pub disks: Vec<String>,
}

impl Scan {
    fn complete(&self) -> bool {
        self.data.is_some() && self.hash.is_some()
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The child of the disk's sysfs directory `disk_dir` that is partition `number`, once its
/// `dev` and `size` can be read.
fn partition_device(disk_dir: &Path, number: u32) -> Option<Partition> {
    let wanted = number.to_string();
    for e in std::fs::read_dir(disk_dir).ok()?.flatten() {
        let dir = e.path();
        if read_trimmed(&dir.join("partition")).as_deref() != Some(wanted.as_str()) {
            continue;
        }
        let dev = read_trimmed(&dir.join("dev"))?;
        let valid = dev.split_once(':').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        });
        let sectors: u64 = read_trimmed(&dir.join("size"))?.parse().ok()?;
        return valid.then(|| Partition {
            name: e.file_name().to_string_lossy().into_owned(),
            dev,
            bytes: sectors.saturating_mul(512),
        });
    }
    None
}

/// A disk with a partition of the root: every partition GUID it has, and the root's partitions
/// on it.
struct DiskWithRoot {
    disk: String,
    guids: Vec<Guid>,
    parts: Vec<(Role, Partition)>,
}

/// One look at the whole disks under `sys_block` (`/sys/block`; loop, ram and dm devices
/// skipped) for the partitions whose unique GUIDs are `guids` (data, hash); `open_disk` opens a
/// disk by its kernel name. A partition not there yet is None. When the partitions are on more
/// than one disk, only the disk holding the partition `booted` names (the ESP the boot loader
/// was started from; asked only then) counts; without one that does, it is an error.
pub fn find_partitions(
    sys_block: &Path,
    open_disk: &dyn Fn(&str) -> io::Result<File>,
    guids: [Guid; 2],
    booted: &dyn Fn() -> Option<Guid>,
) -> Result<Scan, VerityError> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    let mut scan = Scan::default();
    let mut found: Vec<DiskWithRoot> = Vec::new();
    for disk in names {
        if ["loop", "ram", "dm-"].iter().any(|p| disk.starts_with(p)) {
            continue;
        }
        let dir = sys_block.join(&disk);
        let lba_size = read_trimmed(&dir.join("queue/logical_block_size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(512);
        let entries = match open_disk(&disk)
            .map_err(GptError::Read)
            .and_then(|mut f| read_gpt(&mut f, lba_size))
        {
            Ok(entries) => entries,
            Err(e) => {
                scan.disks.push(format!("{disk}: {}", crate::chain(&e)));
                continue;
            }
        };
        let mut note = format!("{disk}: GPT with {} partitions", entries.len());
        let mut parts = Vec::new();
        for entry in &entries {
            for (role, guid) in [Role::Data, Role::Hash].into_iter().zip(guids) {
                if entry.guid != guid {
                    continue;
                }
                match partition_device(&dir, entry.number) {
                    Some(part) => parts.push((role, part)),
                    None => {
                        let _ =
                            write!(note, ", {role} partition {} without a device", entry.number);
                    }
                }
            }
        }
        if !parts.is_empty() {
            found.push(DiskWithRoot {
                guids: entries.iter().map(|e| e.guid).collect(),
                disk,
                parts,
            });
        }
        scan.disks.push(note);
    }
    if found.len() > 1
        && let Some(esp) = booted()
        && let Some(at) = found.iter().position(|d| d.guids.contains(&esp))
    {
        let all: Vec<String> = found.iter().map(|d| d.disk.clone()).collect();
        found = vec![found.swap_remove(at)];
        log::info!(
            "verity: the root's partitions are on {}: using {}, which holds the ESP {esp} the boot loader was started from",
            all.join(" and "),
            found[0].disk
        );
    }
    for (role, part) in found.into_iter().flat_map(|d| d.parts) {
        let slot = match role {
            Role::Data => &mut scan.data,
            Role::Hash => &mut scan.hash,
        };
        if let Some(first) = slot {
            return Err(VerityError::Duplicate {
                role,
                guid: guids[usize::from(role == Role::Hash)],
                first: first.name.clone(),
                second: part.name,
            });
        }
        *slot = Some(part);
    }
    Ok(scan)
}

/// Refuses partitions smaller than what the root hash covers.
fn check_sizes(spec: &VeritySpec, data: &Partition, hash: &Partition) -> Result<(), VerityError> {
    for (role, part, need) in [
        (Role::Data, data, spec.data_bytes()),
        (Role::Hash, hash, spec.hash_bytes()),
    ] {
        if part.bytes < need {
            return Err(VerityError::TooSmall {
                role,
                name: part.name.clone(),
                bytes: part.bytes,
                need,
            });
        }
    }
    Ok(())
}

/// Sets up the verified root `spec` asks for and returns its read-only block device
/// (`/dev/dm-N`). `load_modules` is coldplug (run again while the disks are awaited),
/// `load_module` loads one module by name with its dependencies.
pub fn open_root(
    spec: &VeritySpec,
    load_modules: &dyn Fn(),
    load_module: &dyn Fn(&str),
) -> Result<PathBuf, VerityError> {
    load_modules();
    load_module(DM_MODULE);
    let guids = spec.guids();
    let open_disk = |disk: &str| File::open(Path::new("/dev").join(disk.replace('!', "/")));
    let esp = std::cell::OnceCell::new();
    let booted = || *esp.get_or_init(|| booted_esp(load_module));
    let start = Instant::now();
    let mut last = Ok(Scan::default());
    realroot::wait_for(load_modules, || {
        last = find_partitions(Path::new("/sys/block"), &open_disk, guids, &booted);
        last.as_ref().map_or(true, Scan::complete)
    });
    let scan = last?;
    let disks = || {
        if scan.disks.is_empty() {
            "no disks".to_owned()
        } else {
            scan.disks.join("; ")
        }
    };
    let (data, hash) = match (&scan.data, &scan.hash) {
        (Some(data), Some(hash)) => (data, hash),
        (None, _) => {
            return Err(VerityError::NotFound {
                role: Role::Data,
                guid: guids[0],
                disks: disks(),
            });
        }
        (Some(_), None) => {
            return Err(VerityError::NotFound {
                role: Role::Hash,
                guid: guids[1],
                disks: disks(),
            });
        }
    };
    log::info!(
        "verity: root data {} ({}) and hash tree {} ({}) appeared after {} ms",
        data.name,
        data.dev,
        hash.name,
        hash.dev,
        start.elapsed().as_millis()
    );
    check_sizes(spec, data, hash)?;
    let control = open_control()?;
    let dev = activate(&control, spec, data, hash)?;
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let node = PathBuf::from(format!("/dev/dm-{minor}"));
    wait_for_node(&node, |p| sys::mknod_block(p, 0o600, major, minor))?;
    log::info!("verity: {} is the verified root", node.display());
    Ok(node)
}

/// Waits briefly for devtmpfs to make `path`, then makes it with `mknod`.
fn wait_for_node(path: &Path, mknod: impl Fn(&Path) -> nix::Result<()>) -> Result<(), VerityError> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > NODE_WAIT {
            log::info!("verity: {} did not appear: creating it", path.display());
            let node_error = |source| VerityError::Node {
                path: path.to_owned(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(node_error)?;
            }
            return mknod(path).map_err(|e| node_error(e.into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn open_control() -> Result<File, VerityError> {
    let path = Path::new(CONTROL);
    wait_for_node(path, |p| {
        sys::mknod_char(p, 0o600, CONTROL_MAJOR, CONTROL_MINOR)
    })?;
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(VerityError::Control)
}

/// Creates the device, loads the verity table and activates it; removes the device again
/// when a step after the creation fails. Returns the device number (`dev_t`).
fn activate(
    control: &File,
    spec: &VeritySpec,
    data: &Partition,
    hash: &Partition,
) -> Result<u64, VerityError> {
    let uuid = format!("KEEL-VERITY-{}", hex::encode(&spec.root_hash[..8]));
    let mut create = DmIoctl::new(DM_NAME, &uuid, 0)?.request();
    dm(control, DM_DEV_CREATE, &mut create, "create keel-root")?;
    let result = (|| {
        let params = spec.table_params(&data.dev, &hash.dev);
        let sectors = spec.blocks.saturating_mul(SECTORS_PER_BLOCK);
        let mut load = table_load(DM_NAME, "verity", sectors, &params)?;
        dm(
            control,
            DM_TABLE_LOAD,
            &mut load,
            "load the verity table (the kernel log says why)",
        )?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live.
        let mut resume = DmIoctl::new(DM_NAME, "", 0)?.request();
        dm(control, DM_DEV_SUSPEND, &mut resume, "activate keel-root")?;
        [&resume, &create]
            .into_iter()
            .find_map(|answer| dev_of(answer).filter(|&dev| dev != 0))
            .ok_or(VerityError::NoDevNumber)
    })();
    if result.is_err() {
        let removed = DmIoctl::new(DM_NAME, "", 0)
            .map(|h| h.request())
            .and_then(|mut remove| dm(control, DM_DEV_REMOVE, &mut remove, "remove keel-root"));
        if let Err(e) = removed {
            log::warn!("verity: {}", crate::chain(&e));
        }
    }
    result
}

fn dm(control: &File, request: u32, buf: &mut [u8], what: &'static str) -> Result<(), VerityError> {
    sys::dm_ioctl(control, request, buf).map_err(|source| VerityError::Ioctl { what, source })
}

// --- device-mapper ioctls (linux/dm-ioctl.h, interface version 4.0.0) ---

/// `struct dm_ioctl`: the header of every device-mapper request and answer.
#[repr(C)]
#[derive(Debug, Clone)]
pub(crate) struct DmIoctl {
    pub(crate) version: [u32; 3],
    /// The bytes of the whole request: this header and the data after it.
    pub(crate) data_size: u32,
    /// Where the data starts, from the header's start.
    pub(crate) data_start: u32,
    pub(crate) target_count: u32,
    pub(crate) open_count: i32,
    pub(crate) flags: u32,
    pub(crate) event_nr: u32,
    pub(crate) padding: u32,
    /// The device's number (the kernel's huge_encode_dev), in answers.
    pub(crate) dev: u64,
    pub(crate) name: [u8; 128],
    pub(crate) uuid: [u8; 129],
    pub(crate) data: [u8; 7],
}

/// `struct dm_target_spec`, followed in a request by its NUL-terminated parameters padded to
/// 8 bytes.
#[repr(C)]
#[derive(Debug, Clone)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// Bytes from this spec's start to the next one's (for the last: to the end).
    next: u32,
    target_type: [u8; 16],
}

pub(crate) const DM_IOCTL_SIZE: usize = size_of::<DmIoctl>();
const DM_TARGET_SPEC_SIZE: usize = size_of::<DmTargetSpec>();
const _: () = assert!(DM_IOCTL_SIZE == 312 && DM_TARGET_SPEC_SIZE == 40);
/// The request's data (target specs) is 8-byte aligned.
const DM_ALIGN: usize = 8;
const DM_READONLY_FLAG: u32 = 1 << 0;

/// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)` (the generic ioctl encoding of x86-64 and arm64).
const fn dm_request(nr: u32) -> u32 {
    const IOC_READ_WRITE: u32 = 3;
    const DM_IOCTL: u32 = 0xfd;
    // 312 fits the 14-bit size field; checked above.
    #[allow(clippy::cast_possible_truncation)]
    let size = DM_IOCTL_SIZE as u32;
    (IOC_READ_WRITE << 30) | (size << 16) | (DM_IOCTL << 8) | nr
}
const DM_DEV_CREATE: u32 = dm_request(3);
const DM_DEV_REMOVE: u32 = dm_request(4);
const DM_DEV_SUSPEND: u32 = dm_request(6);
const DM_TABLE_LOAD: u32 = dm_request(9);

/// `text` as a NUL-terminated C array of `N` bytes.
fn c_array<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], VerityError> {
    let mut out = [0u8; N];
    if text.len() >= N || text.contains('\0') {
        return Err(VerityError::Request(what));
    }
    out.iter_mut().zip(text.bytes()).for_each(|(o, b)| *o = b);
    Ok(out)
}

/// Copies `bytes` into `buf` at `at` (in bounds by construction of the callers).
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = at
        .checked_add(bytes.len())
        .and_then(|end| buf.get_mut(at..end))
    {
        dst.copy_from_slice(bytes);
    }
}

impl DmIoctl {
    /// A header for device `name` (and `uuid` on creation: other requests must name the
    /// device one way only), without data.
    fn new(name: &str, uuid: &str, flags: u32) -> Result<DmIoctl, VerityError> {
        let size = u32::try_from(DM_IOCTL_SIZE).map_err(|_| VerityError::Request("header"))?;
        Ok(DmIoctl {
            version: [4, 0, 0],
            data_size: size,
            data_start: size,
            target_count: 0,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: c_array(name, "name")?,
            uuid: c_array(uuid, "uuid")?,
            data: [0; 7],
        })
    }

    /// The header's bytes, field by field at the C struct's offsets (native byte order).
    fn encode(&self) -> [u8; DM_IOCTL_SIZE] {
        let mut b = [0u8; DM_IOCTL_SIZE];
        for (i, v) in self.version.iter().enumerate() {
            put(
                &mut b,
                offset_of!(DmIoctl, version) + 4 * i,
                &v.to_ne_bytes(),
            );
        }
        put(
            &mut b,
            offset_of!(DmIoctl, data_size),
            &self.data_size.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmIoctl, data_start),
            &self.data_start.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmIoctl, target_count),
            &self.target_count.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmIoctl, open_count),
            &self.open_count.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmIoctl, flags),
            &self.flags.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmIoctl, event_nr),
            &self.event_nr.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmIoctl, padding),
            &self.padding.to_ne_bytes(),
        );
        put(&mut b, offset_of!(DmIoctl, dev), &self.dev.to_ne_bytes());
        put(&mut b, offset_of!(DmIoctl, name), &self.name);
        put(&mut b, offset_of!(DmIoctl, uuid), &self.uuid);
        put(&mut b, offset_of!(DmIoctl, data), &self.data);
        b
    }

    /// A request of this header alone.
    fn request(&self) -> Vec<u8> {
        self.encode().to_vec()
    }
}

impl DmTargetSpec {
    fn encode(&self) -> [u8; DM_TARGET_SPEC_SIZE] {
        let mut b = [0u8; DM_TARGET_SPEC_SIZE];
        put(
            &mut b,
            offset_of!(DmTargetSpec, sector_start),
            &self.sector_start.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmTargetSpec, length),
            &self.length.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmTargetSpec, status),
            &self.status.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmTargetSpec, next),
            &self.next.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DmTargetSpec, target_type),
            &self.target_type,
        );
        b
    }
}

/// The DM_TABLE_LOAD request for device `name`: one read-only `target` over sectors
/// `[0, sectors)` with `params`.
fn table_load(
    name: &str,
    target: &str,
    sectors: u64,
    params: &str,
) -> Result<Vec<u8>, VerityError> {
    if params.contains('\0') {
        return Err(VerityError::Request("params"));
    }
    let params_size = (params.len() + 1).next_multiple_of(DM_ALIGN);
    let spec_size = DM_TARGET_SPEC_SIZE + params_size;
    let total = DM_IOCTL_SIZE + spec_size;
    let too_large = |_| VerityError::Request("params");
    let mut header = DmIoctl::new(name, "", DM_READONLY_FLAG)?;
    header.data_size = u32::try_from(total).map_err(too_large)?;
    header.target_count = 1;
    let spec = DmTargetSpec {
        sector_start: 0,
        length: sectors,
        status: 0,
        next: u32::try_from(spec_size).map_err(too_large)?,
        target_type: c_array(target, "target type")?,
    };
    let mut buf = vec![0u8; total];
    put(&mut buf, 0, &header.encode());
    put(&mut buf, DM_IOCTL_SIZE, &spec.encode());
    // The NUL and the padding are the zeros already there.
    put(
        &mut buf,
        DM_IOCTL_SIZE + DM_TARGET_SPEC_SIZE,
        params.as_bytes(),
    );
    Ok(buf)
}

/// The `dev` field of an answer.
fn dev_of(answer: &[u8]) -> Option<u64> {
    let at = offset_of!(DmIoctl, dev);
    answer
        .get(at..at + 8)?
        .try_into()
        .ok()
        .map(u64::from_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const ROOT: &str = "aabbccddeeff00112233445566778899a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
    const SALT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn cmdline(hash: &str, salt: &str, blocks: &str) -> String {
        format!(
            "console=ttyS0 keel.verity={hash} keel.verity_salt={salt} keel.verity_blocks={blocks} root=/dev/vda"
        )
    }

    fn spec() -> VeritySpec {
        VeritySpec::from_cmdline(&cmdline(ROOT, SALT, "1000"))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn knobs_parse() {
        assert_eq!(
            VeritySpec::from_cmdline("root=/dev/vda quiet").unwrap(),
            None
        );
        let s = spec();
        assert_eq!(hex::encode(s.root_hash), ROOT);
        assert_eq!(hex::encode(&s.salt), SALT);
        assert_eq!(s.blocks, 1000);
        let upper = VeritySpec::from_cmdline(&cmdline(&ROOT.to_uppercase(), "-", "1"))
            .unwrap()
            .unwrap();
        assert_eq!(upper.root_hash, s.root_hash);
        assert!(upper.salt.is_empty());
    }

    #[test]
    fn hostile_knobs_are_errors() {
        let long_salt = "ab".repeat(257);
        for (hash, salt, blocks) in [
            ("", SALT, "1"),
            (&ROOT[..62], SALT, "1"),
            (&format!("{ROOT}00"), SALT, "1"),
            (&ROOT.replace('a', "g"), SALT, "1"),
            (&ROOT.replacen("aa", "é", 1), SALT, "1"),
            (ROOT, "", "1"),
            (ROOT, "abc", "1"),
            (ROOT, "zz", "1"),
            (ROOT, &long_salt, "1"),
            (ROOT, SALT, "0"),
            (ROOT, SALT, ""),
            (ROOT, SALT, "-1"),
            (ROOT, SALT, "+1"),
            (ROOT, SALT, "1k"),
            (ROOT, SALT, "18446744073709551616"),
            (ROOT, SALT, "18446744073709551615"),
        ] {
            let text = cmdline(hash, salt, blocks);
            assert!(VeritySpec::from_cmdline(&text).is_err(), "{text}");
        }
        for text in [
            "keel.verity",
            &format!("keel.verity={ROOT}"),
            &format!("keel.verity_salt={SALT} keel.verity_blocks=1"),
            "keel.verity_blocks=1",
            &format!("{} keel.verity={ROOT}", cmdline(ROOT, SALT, "1")),
            &format!("{} keel.verity_blocks=2", cmdline(ROOT, SALT, "1")),
        ] {
            assert!(VeritySpec::from_cmdline(text).is_err(), "{text}");
        }
        let e = VeritySpec::from_cmdline(&format!("keel.verity={ROOT} keel.verity_blocks=5"))
            .unwrap_err();
        assert_eq!(e.to_string(), "keel.verity_salt= is missing");
        let e = VeritySpec::from_cmdline(&cmdline(ROOT, SALT, "0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "keel.verity_blocks=0 is not a number of 4096-byte data blocks (1 or more)"
        );
    }

    #[test]
    fn guids_are_the_root_hash_halves() {
        let [data, hash] = spec().guids();
        assert_eq!(data.to_string(), "aabbccdd-eeff-0011-2233-445566778899");
        assert_eq!(hash.to_string(), "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf");
        let on_disk = [
            0xdd, 0xcc, 0xbb, 0xaa, 0xff, 0xee, 0x11, 0x00, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
            0x88, 0x99,
        ];
        assert_eq!(Guid::from_gpt(on_disk), data);
    }

    /// GPT's on-disk form of `guid`.
    fn to_gpt(guid: Guid) -> [u8; 16] {
        // The conversion swaps within fields: it is its own inverse.
        Guid::from_gpt(guid.0).0
    }

    /// A disk image of `lba` byte blocks with a GPT (128 entries) holding `parts`:
    /// (entry index, unique GUID, first LBA, last LBA).
    fn disk_image(lba: usize, parts: &[(usize, Guid, u64, u64)]) -> Vec<u8> {
        let entries_lba = 2;
        let entry_size = 128;
        let count = 128;
        let size = (entries_lba * lba + count * entry_size).next_multiple_of(lba) + 8 * lba;
        let mut img = vec![0u8; size];
        let h = lba;
        img[h..h + 8].copy_from_slice(b"EFI PART");
        img[h + 8..h + 12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        img[h + 12..h + 16].copy_from_slice(&92u32.to_le_bytes());
        img[h + 24..h + 32].copy_from_slice(&1u64.to_le_bytes());
        img[h + 72..h + 80].copy_from_slice(&u64::try_from(entries_lba).unwrap().to_le_bytes());
        img[h + 80..h + 84].copy_from_slice(&u32::try_from(count).unwrap().to_le_bytes());
        img[h + 84..h + 88].copy_from_slice(&u32::try_from(entry_size).unwrap().to_le_bytes());
        for &(index, guid, first, last) in parts {
            let e = entries_lba * lba + index * entry_size;
            img[e..e + 16].copy_from_slice(&[0x5a; 16]);
            img[e + 16..e + 32].copy_from_slice(&to_gpt(guid));
            img[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            img[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
        }
        img
    }

    fn two_partitions(lba: usize) -> Vec<u8> {
        let [data, hash] = spec().guids();
        disk_image(lba, &[(0, data, 40, 1000), (2, hash, 1001, 1100)])
    }

    #[test]
    fn gpt_entries_are_found() {
        let [data, hash] = spec().guids();
        for lba in [512, 4096] {
            let entries = read_gpt(
                &mut Cursor::new(two_partitions(lba)),
                u64::try_from(lba).unwrap(),
            )
            .unwrap();
            assert_eq!(
                entries,
                [
                    GptEntry {
                        number: 1,
                        guid: data
                    },
                    GptEntry {
                        number: 3,
                        guid: hash
                    }
                ]
            );
        }
    }

    fn set(img: &mut [u8], at: usize, bytes: &[u8]) {
        img[512 + at..512 + at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn hostile_gpts_are_errors() {
        let good = two_partitions(512);
        let gpt = |img: Vec<u8>| read_gpt(&mut Cursor::new(img), 512);
        assert!(matches!(gpt(good[..700].to_vec()), Err(GptError::Read(_))));
        assert!(matches!(
            gpt(good[..512 * 10].to_vec()),
            Err(GptError::Read(_))
        ));
        assert!(matches!(gpt(vec![0; 4096]), Err(GptError::NoSignature)));
        assert!(matches!(gpt(Vec::new()), Err(GptError::Read(_))));
        assert!(matches!(
            read_gpt(&mut Cursor::new(good.clone()), 1000),
            Err(GptError::BlockSize(1000))
        ));
        let cases: [(usize, &[u8]); 9] = [
            (80, &u32::MAX.to_le_bytes()),
            (80, &1025u32.to_le_bytes()),
            (84, &0u32.to_le_bytes()),
            (84, &127u32.to_le_bytes()),
            (84, &4097u32.to_le_bytes()),
            (72, &0u64.to_le_bytes()),
            (72, &1u64.to_le_bytes()),
            (72, &u64::MAX.to_le_bytes()),
            (12, &0u32.to_le_bytes()),
        ];
        for (at, bytes) in cases {
            let mut img = good.clone();
            set(&mut img, at, bytes);
            assert!(gpt(img).is_err(), "field at {at} = {bytes:?}");
        }
        let mut img = good.clone();
        set(&mut img, 24, &7u64.to_le_bytes());
        assert!(matches!(gpt(img), Err(GptError::NotAtLba1(7))));
        // Entries past the end of the disk.
        let mut img = good.clone();
        set(&mut img, 72, &(1u64 << 40).to_le_bytes());
        assert!(matches!(gpt(img), Err(GptError::Read(_))));
        // The largest table allowed, past the end of this disk.
        let mut img = good.clone();
        set(&mut img, 80, &1024u32.to_le_bytes());
        set(&mut img, 84, &4096u32.to_le_bytes());
        assert!(gpt(img).is_err());
        // Garbage everywhere but the signature and the sane fields: no panic.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let mut img = good.clone();
            for b in img[512 + 8..512 * 40].iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x.to_le_bytes()[0];
            }
            if x.is_multiple_of(2) {
                set(&mut img, 24, &1u64.to_le_bytes());
                set(&mut img, 12, &92u32.to_le_bytes());
                set(&mut img, 72, &2u64.to_le_bytes());
                set(
                    &mut img,
                    80,
                    &(u32::from(x.to_le_bytes()[1]) * 4).to_le_bytes(),
                );
                set(&mut img, 84, &128u32.to_le_bytes());
            }
            let _ = gpt(img);
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A fake `/sys/block` and `/dev`: `vda` with the two partitions (`vda1`, `vda3`), `vdb`
    /// without a GPT, `loop0` (skipped) with a copy of vda's image.
    fn fake_system(data_sectors: u64) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("block");
        let dev = root.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vda"), two_partitions(512)).unwrap();
        std::fs::write(dev.join("vdb"), vec![0u8; 8192]).unwrap();
        std::fs::write(dev.join("loop0"), two_partitions(512)).unwrap();
        write(&sys.join("vda/queue/logical_block_size"), "512\n");
        for (child, number, major_minor, sectors) in [
            ("vda1", 1, "254:1", data_sectors),
            ("vda3", 3, "254:3", 100),
        ] {
            write(
                &sys.join("vda").join(child).join("partition"),
                &format!("{number}\n"),
            );
            write(
                &sys.join("vda").join(child).join("dev"),
                &format!("{major_minor}\n"),
            );
            write(
                &sys.join("vda").join(child).join("size"),
                &format!("{sectors}\n"),
            );
        }
        write(&sys.join("vda/dev"), "254:0\n");
        write(&sys.join("vdb/queue/logical_block_size"), "512\n");
        write(&sys.join("loop0/queue/logical_block_size"), "512\n");
        write(&sys.join("loop0/loop0p1/partition"), "1\n");
        root
    }

    #[test]
    fn partitions_are_found_in_sysfs() {
        let root = fake_system(8000);
        let dev = root.path().join("dev");
        let open = |name: &str| File::open(dev.join(name));
        let s = spec();
        let scan = find_partitions(&root.path().join("block"), &open, s.guids(), &|| None).unwrap();
        let data = scan.data.unwrap();
        let hash = scan.hash.unwrap();
        assert_eq!(
            data,
            Partition {
                name: "vda1".into(),
                dev: "254:1".into(),
                bytes: 8000 * 512
            }
        );
        assert_eq!((hash.name.as_str(), hash.dev.as_str()), ("vda3", "254:3"));
        assert_eq!(scan.disks, ["vda: GPT with 2 partitions", "vdb: no GPT"]);
        check_sizes(&s, &data, &hash).unwrap();

        // One sector short of the 1000 blocks.
        let root = fake_system(7999);
        let dev = root.path().join("dev");
        let open = |name: &str| File::open(dev.join(name));
        let scan = find_partitions(&root.path().join("block"), &open, s.guids(), &|| None).unwrap();
        let e = check_sizes(&s, &scan.data.unwrap(), &scan.hash.unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the root data partition vda1 holds 4095488 bytes, fewer than the 4096000 the root hash needs"
        );
    }

    #[test]
    fn missing_and_duplicate_partitions() {
        let root = fake_system(8000);
        let sys = root.path().join("block");
        let dev = root.path().join("dev");
        let open = |name: &str| File::open(dev.join(name));
        // The partition device is not there yet.
        std::fs::remove_dir_all(sys.join("vda/vda3")).unwrap();
        let scan = find_partitions(&sys, &open, spec().guids(), &|| None).unwrap();
        assert!(scan.data.is_some() && scan.hash.is_none());
        assert_eq!(
            scan.disks[0],
            "vda: GPT with 2 partitions, hash tree partition 3 without a device"
        );
        // A second disk with the same partitions and an ESP: refused unless the boot loader
        // names the disk it was started from, and then only that disk's partitions count.
        let [data, _] = spec().guids();
        let esp: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
        let image = disk_image(512, &[(0, esp, 34, 39), (1, data, 40, 1000)]);
        std::fs::write(dev.join("vdc"), image).unwrap();
        write(&sys.join("vdc/vdc2/partition"), "2\n");
        write(&sys.join("vdc/vdc2/dev"), "254:18\n");
        write(&sys.join("vdc/vdc2/size"), "8000\n");
        let asked = std::cell::Cell::new(0);
        let unknown = || {
            asked.set(asked.get() + 1);
            None
        };
        let refused = "the root data partition aabbccdd-eeff-0011-2233-445566778899 is on two devices, vda1 and vdc2, and the boot loader did not name either's disk as the one it booted from (an update's disk still attached? detach it)";
        let e = find_partitions(&sys, &open, spec().guids(), &unknown).unwrap_err();
        assert_eq!(e.to_string(), refused);
        assert_eq!(asked.get(), 1);
        let elsewhere = || Some(Guid([7; 16]));
        let e = find_partitions(&sys, &open, spec().guids(), &elsewhere).unwrap_err();
        assert_eq!(e.to_string(), refused);
        let scan = find_partitions(&sys, &open, spec().guids(), &|| Some(esp)).unwrap();
        assert_eq!(scan.data.unwrap().name, "vdc2");
        assert!(scan.hash.is_none(), "vda's hash partition counts no more");
        // One disk: the boot loader is not asked.
        std::fs::remove_file(dev.join("vdc")).unwrap();
        let scan = find_partitions(&sys, &open, spec().guids(), &unknown).unwrap();
        assert_eq!(scan.data.unwrap().name, "vda1");
        assert_eq!(asked.get(), 1);
        // The same GUID twice on one disk stays an error whatever the boot loader says.
        let image = disk_image(
            512,
            &[(0, esp, 34, 39), (1, data, 40, 1000), (2, data, 1001, 1100)],
        );
        std::fs::write(dev.join("vdc"), image).unwrap();
        write(&sys.join("vdc/vdc3/partition"), "3\n");
        write(&sys.join("vdc/vdc3/dev"), "254:19\n");
        write(&sys.join("vdc/vdc3/size"), "8000\n");
        let e = find_partitions(&sys, &open, spec().guids(), &|| Some(esp)).unwrap_err();
        assert!(e.to_string().contains("vdc2 and vdc3"), "{e}");
        // No disks at all.
        let scan =
            find_partitions(&root.path().join("none"), &open, spec().guids(), &|| None).unwrap();
        assert!(scan.data.is_none() && scan.disks.is_empty());
    }

    #[test]
    fn loader_device_part_uuid_is_parsed() {
        let var = |text: &str| {
            let mut v = 6u32.to_le_bytes().to_vec();
            v.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
            v
        };
        let want = Guid([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        for text in [
            "12345678-9ABC-DEF0-0123-456789ABCDEF\0",
            "12345678-9abc-def0-0123-456789abcdef",
        ] {
            assert_eq!(
                parse_loader_device_part_uuid(&var(text)),
                Some(want),
                "{text}"
            );
        }
        assert_eq!(want.to_string(), "12345678-9abc-def0-0123-456789abcdef");
        // Hostile or broken values: nothing, never a panic.
        for text in [
            "",
            "12345678-9ABC-DEF0-0123-456789ABCDE",
            "12345678-9ABC-DEF0-0123-456789ABCDEFF",
            "123456789ABCDEF00123456789ABCDEF0123",
            "1234567g-9ABC-DEF0-0123-456789ABCDEF",
            "12345678+9ABC-DEF0-0123-456789ABCDEF",
            "éé345678-9ABC-DEF0-0123-456789ABCDEF",
        ] {
            assert_eq!(parse_loader_device_part_uuid(&var(text)), None, "{text}");
        }
        assert_eq!(parse_loader_device_part_uuid(&[6, 0, 0]), None);
        assert_eq!(parse_loader_device_part_uuid(&[6, 0, 0, 0, 0x31]), None);
        assert_eq!(
            parse_loader_device_part_uuid(&[6, 0, 0, 0, 0x00, 0xd8]),
            None
        );
    }

    #[test]
    fn hash_partition_size() {
        assert_eq!(hash_tree_blocks(1), 0);
        assert_eq!(hash_tree_blocks(2), 1);
        assert_eq!(hash_tree_blocks(128), 1);
        assert_eq!(hash_tree_blocks(129), 3);
        assert_eq!(hash_tree_blocks(128 * 128 + 1), 129 + 2 + 1);
        // 1000 blocks: 8 + 1 tree blocks after the superblock.
        assert_eq!(spec().hash_bytes(), 10 * 4096);
        let s = VeritySpec {
            blocks: u64::MAX / 4096,
            ..spec()
        };
        assert!(s.hash_bytes() > 0 && s.data_bytes() > 0);
    }

    #[test]
    fn table_params() {
        assert_eq!(
            spec().table_params("254:1", "254:3"),
            format!("1 254:1 254:3 4096 4096 1000 1 sha256 {ROOT} {SALT}")
        );
        let unsalted = VeritySpec {
            salt: Vec::new(),
            ..spec()
        };
        assert!(
            unsalted
                .table_params("8:1", "8:2")
                .ends_with(&format!("{ROOT} -"))
        );
    }

    fn ne_u32(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn ne_u64(b: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn ioctl_layout() {
        // linux/dm-ioctl.h, checked with offsetof().
        assert_eq!(size_of::<DmIoctl>(), 312);
        assert_eq!(offset_of!(DmIoctl, data_size), 12);
        assert_eq!(offset_of!(DmIoctl, data_start), 16);
        assert_eq!(offset_of!(DmIoctl, target_count), 20);
        assert_eq!(offset_of!(DmIoctl, open_count), 24);
        assert_eq!(offset_of!(DmIoctl, flags), 28);
        assert_eq!(offset_of!(DmIoctl, event_nr), 32);
        assert_eq!(offset_of!(DmIoctl, dev), 40);
        assert_eq!(offset_of!(DmIoctl, name), 48);
        assert_eq!(offset_of!(DmIoctl, uuid), 176);
        assert_eq!(offset_of!(DmIoctl, data), 305);
        assert_eq!(size_of::<DmTargetSpec>(), 40);
        assert_eq!(offset_of!(DmTargetSpec, status), 16);
        assert_eq!(offset_of!(DmTargetSpec, next), 20);
        assert_eq!(offset_of!(DmTargetSpec, target_type), 24);
        assert_eq!(
            [DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD],
            [0xc138_fd03, 0xc138_fd04, 0xc138_fd06, 0xc138_fd09]
        );

        let create = DmIoctl::new(DM_NAME, "KEEL-VERITY-aabb", 0)
            .unwrap()
            .request();
        assert_eq!(create.len(), 312);
        assert_eq!(
            [ne_u32(&create, 0), ne_u32(&create, 4), ne_u32(&create, 8)],
            [4, 0, 0]
        );
        assert_eq!((ne_u32(&create, 12), ne_u32(&create, 16)), (312, 312));
        assert_eq!(&create[48..58], b"keel-root\0");
        assert_eq!(&create[176..193], b"KEEL-VERITY-aabb\0");
        assert!(DmIoctl::new(&"x".repeat(128), "", 0).is_err());
        assert!(DmIoctl::new("a\0b", "", 0).is_err());
        assert!(DmIoctl::new(DM_NAME, &"u".repeat(128), 0).is_ok());

        let params = "1 254:1 254:3 4096 4096 1000 1 sha256 ab cd";
        assert_eq!(params.len(), 43);
        let load = table_load(DM_NAME, "verity", 8000, params).unwrap();
        // 312 + 40 + 48 (43 bytes, NUL, padding to 8).
        assert_eq!(load.len(), 400);
        assert_eq!(ne_u32(&load, 12), 400, "data_size");
        assert_eq!(ne_u32(&load, 16), 312, "data_start");
        assert_eq!(ne_u32(&load, 20), 1, "target_count");
        assert_eq!(ne_u32(&load, 28), DM_READONLY_FLAG, "flags");
        assert_eq!(load[176], 0, "no uuid beside the name");
        let spec = &load[312..];
        assert_eq!(ne_u64(spec, 0), 0, "sector_start");
        assert_eq!(ne_u64(spec, 8), 8000, "length");
        assert_eq!(ne_u32(spec, 20), 88, "next");
        assert_eq!(&spec[24..40], b"verity\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&spec[40..83], params.as_bytes());
        assert!(spec[83..].iter().all(|&b| b == 0));
        // A parameter string of exactly 8k-1 bytes still gets its NUL.
        let load = table_load(DM_NAME, "verity", 8, "1234567").unwrap();
        assert_eq!(load.len(), 312 + 40 + 8);
        assert!(table_load(DM_NAME, "verity", 8, "a\0b").is_err());
        assert!(table_load(DM_NAME, "a-target-type-too-long", 8, "").is_err());
    }

    #[test]
    fn device_numbers_decode_as_the_kernel_encodes_them() {
        // The kernel's huge_encode_dev (new_encode_dev).
        let encode =
            |major: u64, minor: u64| (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        for (major, minor) in [(253, 0), (253, 7), (254, 300), (259, 0xf_ffff)] {
            let dev = encode(major, minor);
            assert_eq!(nix::sys::stat::major(dev), major);
            assert_eq!(nix::sys::stat::minor(dev), minor);
            let mut answer = DmIoctl::new(DM_NAME, "", 0).unwrap();
            answer.dev = dev;
            assert_eq!(dev_of(&answer.request()), Some(dev));
        }
        assert_eq!(dev_of(&[0; 20]), None);
    }

    #[test]
    fn ioctl_buffers_are_checked() {
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let mut create = DmIoctl::new(DM_NAME, "", 0).unwrap().request();
        let e = sys::dm_ioctl(&null, DM_DEV_CREATE, &mut create).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOTTY),
            "the call reaches the kernel"
        );
        let mut short = create[..311].to_vec();
        let e = sys::dm_ioctl(&null, DM_DEV_CREATE, &mut short).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut lying = table_load(DM_NAME, "verity", 8, "x").unwrap();
        lying.truncate(lying.len() - 1);
        let e = sys::dm_ioctl(&null, DM_TABLE_LOAD, &mut lying).unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::InvalidInput,
            "data_size beyond the buffer"
        );
    }

    #[test]
    fn mount_errors_explain_eio() {
        let e = VerityError::Mount {
            device: "/dev/dm-0".into(),
            fstype: "squashfs".into(),
            errno: nix::Error::EIO,
        };
        assert_eq!(
            e.to_string(),
            "cannot mount the verified root /dev/dm-0 (squashfs): EIO: I/O error (a block does not match the root hash: the disk was changed or is damaged)"
        );
    }
}
