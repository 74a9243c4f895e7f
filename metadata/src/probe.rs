//! Which block devices may hold user data, as LinuxKit's `cdrom` provider sees them: devices
//! whose filesystem (ISO 9660 or FAT) is labelled `cidata`/`CIDATA` (cloud-init's NoCloud
//! convention, any kind of disk) first, then every CD-ROM drive (`sr*`). This module owns
//! reading the labels from the devices' first sectors; it does not mount anything.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The volume label that marks a user-data volume.
pub const CIDATA: &str = "cidata";

/// A filesystem type this tool mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Iso9660,
    Vfat,
}

impl FsType {
    /// The kernel's name for it (`mount -t`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            FsType::Iso9660 => "iso9660",
            FsType::Vfat => "vfat",
        }
    }
}

/// A device to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The kernel's name (`sr0`, `vdb`).
    pub name: String,
    pub fs: FsType,
}

/// Where block devices are listed (`/sys/class/block`) and where their nodes are (`/dev`).
#[derive(Debug, Clone)]
pub struct Devices {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for Devices {
    fn default() -> Self {
        Devices {
            sys: "/sys/class/block".into(),
            dev: "/dev".into(),
        }
    }
}

impl Devices {
    /// Block device names, sorted, without loop, RAM and zram devices.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.sys)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
            .collect();
        names.sort();
        Ok(names)
    }

    /// `major:minor` of a device, from sysfs.
    pub fn numbers(&self, name: &str) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(self.sys.join(name).join("dev")).ok()?;
        let (major, minor) = text.trim().split_once(':')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }

    /// The device's node.
    pub fn node(&self, name: &str) -> PathBuf {
        self.dev.join(name)
    }

    /// The candidates in the order to try them, given a way to make a device's node: labelled
    /// `cidata` first, then CD-ROM drives. Devices that cannot be read are left out (a drive
    /// with no disc, a node that cannot be made).
    pub fn candidates(&self, ensure_node: impl Fn(&str) -> bool) -> io::Result<Vec<Candidate>> {
        let mut labelled = Vec::new();
        let mut drives = Vec::new();
        for name in self.names()? {
            let is_drive = name.starts_with("sr");
            if !ensure_node(&name) {
                continue;
            }
            let Ok(mut f) = File::open(self.node(&name)) else {
                continue;
            };
            match identify(&mut f) {
                Some((fs, label)) if label.eq_ignore_ascii_case(CIDATA) => {
                    labelled.push(Candidate { name, fs })
                }
                Some((FsType::Iso9660, _)) if is_drive => drives.push(Candidate {
                    name,
                    fs: FsType::Iso9660,
                }),
                _ => {}
            }
        }
        labelled.extend(drives);
        Ok(labelled)
    }
}

/// The filesystem type and label at the start of a device, if it is one this tool reads.
pub fn identify<R: Read + Seek>(dev: &mut R) -> Option<(FsType, String)> {
    iso9660_label(dev).or_else(|| fat_label(dev))
}

/// The volume identifier of an ISO 9660 primary volume descriptor (sector 16 of 2048 bytes).
fn iso9660_label<R: Read + Seek>(dev: &mut R) -> Option<(FsType, String)> {
    let mut pvd = [0u8; 72];
    dev.seek(SeekFrom::Start(16 * 2048)).ok()?;
    dev.read_exact(&mut pvd).ok()?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    Some((FsType::Iso9660, text(&pvd[40..72])))
}

/// The boot sector's volume label of a FAT12/16 or FAT32 filesystem.
fn fat_label<R: Read + Seek>(dev: &mut R) -> Option<(FsType, String)> {
    let mut bs = [0u8; 512];
    dev.seek(SeekFrom::Start(0)).ok()?;
    dev.read_exact(&mut bs).ok()?;
    if bs[510..512] != [0x55, 0xaa] {
        return None;
    }
    let label = if &bs[82..87] == b"FAT32" {
        &bs[71..82]
    } else if &bs[54..57] == b"FAT" {
        &bs[43..54]
    } else {
        return None;
    };
    Some((FsType::Vfat, text(label)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// The user-data file of a mounted volume: `user-data` (NoCloud), else `config` (LinuxKit's
/// `--data` CD), as LinuxKit reads them.
pub fn userdata_file(mountpoint: &Path) -> Option<PathBuf> {
    ["user-data", "config"]
        .iter()
        .map(|f| mountpoint.join(f))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Cursor;

    fn iso(label: &str) -> Vec<u8> {
        let mut img = vec![0u8; 17 * 2048];
        let pvd = &mut img[16 * 2048..];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        pvd[40..72].copy_from_slice(&id);
        img
    }

    fn fat32(label: &str) -> Vec<u8> {
        let mut bs = vec![0u8; 1024];
        bs[82..90].copy_from_slice(b"FAT32   ");
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        bs[71..82].copy_from_slice(&l);
        bs[510] = 0x55;
        bs[511] = 0xaa;
        bs
    }

    #[test]
    fn labels_are_read() {
        assert_eq!(
            identify(&mut Cursor::new(iso("cidata"))),
            Some((FsType::Iso9660, "cidata".into()))
        );
        assert_eq!(
            identify(&mut Cursor::new(fat32("CIDATA"))),
            Some((FsType::Vfat, "CIDATA".into()))
        );
        let mut fat16 = fat32("");
        fat16[82..90].fill(0);
        fat16[54..62].copy_from_slice(b"FAT16   ");
        fat16[43..54].copy_from_slice(b"cidata     ");
        assert_eq!(
            identify(&mut Cursor::new(fat16)),
            Some((FsType::Vfat, "cidata".into()))
        );
        assert_eq!(identify(&mut Cursor::new(vec![0u8; 40000])), None);
        assert_eq!(identify(&mut Cursor::new(vec![1u8; 10])), None);
    }

    /// A fake /sys/class/block and /dev whose "nodes" are regular files.
    fn devices(devs: &[(&str, Option<Vec<u8>>)]) -> (tempfile::TempDir, Devices) {
        let root = tempfile::tempdir().unwrap();
        let d = Devices {
            sys: root.path().join("sys"),
            dev: root.path().join("dev"),
        };
        fs::create_dir_all(&d.dev).unwrap();
        for (i, (name, content)) in devs.iter().enumerate() {
            fs::create_dir_all(d.sys.join(name)).unwrap();
            fs::write(d.sys.join(name).join("dev"), format!("8:{i}\n")).unwrap();
            if let Some(c) = content {
                fs::write(d.node(name), c).unwrap();
            }
        }
        (root, d)
    }

    #[test]
    fn cidata_volumes_come_before_drives() {
        let (_root, d) = devices(&[
            ("loop0", Some(iso("cidata"))),
            ("sr0", Some(iso("OTHER"))),
            ("sr1", None),
            ("vda", Some(vec![0u8; 40000])),
            ("vdb", Some(iso("cidata"))),
            ("vdc", Some(fat32("CIDATA"))),
            ("vdd", Some(iso("data"))),
        ]);
        let got = d.candidates(|n| d.node(n).exists()).unwrap();
        let names: Vec<(&str, FsType)> = got.iter().map(|c| (c.name.as_str(), c.fs)).collect();
        assert_eq!(
            names,
            [
                ("vdb", FsType::Iso9660),
                ("vdc", FsType::Vfat),
                ("sr0", FsType::Iso9660)
            ]
        );
        assert_eq!(d.numbers("vdb"), Some((8, 4)));
        assert_eq!(d.numbers("nope"), None);
    }

    #[test]
    fn nodes_that_cannot_be_made_are_skipped() {
        let (_root, d) = devices(&[("sr0", Some(iso("x"))), ("vdb", Some(iso("cidata")))]);
        let got = d.candidates(|n| n != "vdb").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "sr0");
    }

    #[test]
    fn user_data_prefers_user_data_over_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(userdata_file(dir.path()), None);
        fs::write(dir.path().join("config"), "c").unwrap();
        assert_eq!(userdata_file(dir.path()), Some(dir.path().join("config")));
        fs::write(dir.path().join("user-data"), "u").unwrap();
        assert_eq!(
            userdata_file(dir.path()),
            Some(dir.path().join("user-data"))
        );
    }
}
