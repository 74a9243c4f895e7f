//! EFI system partitions: a FAT file system image, in memory, holding a few boot files.
//!
//! The `fatfs` crate formats and fills it. Determinism comes from a fixed clock (every
//! timestamp is the FAT epoch, 1980-01-01, whatever features other crates enable), a volume
//! ID derived from the contents, and files written in the order given.

use crate::error::{Error, Result};
use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use keel_disk::ab::FAT_EPOCH;
use sha2::{Digest, Sha256};
use std::io::{Cursor, Write};

/// Cluster size for the ESP: small enough to waste little, big enough for few FAT sectors.
const CLUSTER: u64 = 4096;

/// A file to put in the ESP: a `/`-separated path (parent directories are created) and its
/// contents.
#[derive(Debug, Clone, Copy)]
pub struct EspFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

/// The smallest ESP image, in bytes (a whole number of MiB), that holds `files`: their
/// clusters, a cluster per directory, both FATs and the reserved sectors, plus slack.
pub fn esp_size_for(files: &[EspFile<'_>]) -> u64 {
    let data: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(CLUSTER) * CLUSTER)
        .sum();
    let dirs = files
        .iter()
        .map(|f| f.path.matches('/').count() as u64)
        .sum::<u64>()
        + 1;
    let clusters = data / CLUSTER + dirs;
    // Two FATs of 4-byte entries, 64 KiB of reserved sectors, and 1 MiB of slack.
    let total = data + dirs * CLUSTER + 2 * 4 * clusters + (64 << 10) + (1 << 20);
    total.div_ceil(1 << 20) * (1 << 20)
}

/// Builds a FAT image of exactly `size` bytes (a multiple of 512) holding `files`. `label` is
/// the volume label (up to 11 characters, upper case).
pub fn build_esp(files: &[EspFile<'_>], size: u64, label: &str) -> Result<Vec<u8>> {
    let needed = esp_size_for(files);
    if size < needed {
        return Err(Error::TooSmall {
            what: "the EFI system partition",
            needed,
            given: size,
        });
    }
    let mut seed = Sha256::new();
    for f in files {
        seed.update(f.path.as_bytes());
        seed.update([0]);
        seed.update(Sha256::digest(f.data));
    }
    let digest = seed.finalize();
    let volume_id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let mut volume_label = [b' '; 11];
    for (d, s) in volume_label.iter_mut().zip(label.bytes()) {
        *d = s.to_ascii_uppercase();
    }
    let sectors = u32::try_from(size / 512).map_err(|_| Error::TooLarge {
        what: "an EFI system partition",
        size,
        max: u64::from(u32::MAX) * 512,
    })?;
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .bytes_per_cluster(CLUSTER as u32)
            .total_sectors(sectors)
            .volume_id(volume_id)
            .volume_label(volume_label),
    )
    .map_err(Error::Fat)?;
    {
        let fs = FileSystem::new(&mut disk, FsOptions::new().time_provider(&FAT_EPOCH))
            .map_err(Error::Fat)?;
        for f in files {
            let mut dir = fs.root_dir();
            let (parents, name) = match f.path.rsplit_once('/') {
                Some((p, n)) => (Some(p), n),
                None => (None, f.path),
            };
            for part in parents.into_iter().flat_map(|p| p.split('/')) {
                dir = dir.create_dir(part).map_err(Error::Fat)?;
            }
            let mut file = dir.create_file(name).map_err(Error::Fat)?;
            file.truncate().map_err(Error::Fat)?;
            file.write_all(f.data).map_err(Error::Fat)?;
        }
        fs.unmount().map_err(Error::Fat)?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn files<'a>(uki: &'a [u8]) -> Vec<EspFile<'a>> {
        vec![
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                data: uki,
            },
            EspFile {
                path: "loader/entries.txt",
                data: b"hello",
            },
        ]
    }

    #[test]
    fn reads_back_and_is_deterministic() {
        let uki: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let size = esp_size_for(&files(&uki));
        assert_eq!(size % (1 << 20), 0);
        let a = build_esp(&files(&uki), size, "esp").unwrap();
        let b = build_esp(&files(&uki), size, "esp").unwrap();
        assert_eq!(a.len() as u64, size);
        assert!(a == b, "two builds differ");

        let fs = FileSystem::new(Cursor::new(a), FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "ESP");
        let mut back = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == uki);
        let entry = fs
            .root_dir()
            .open_dir("EFI/BOOT")
            .unwrap()
            .iter()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "BOOTX64.EFI")
            .unwrap();
        assert_eq!(entry.modified().date.year, 1980);
    }

    #[test]
    fn volume_id_follows_content() {
        let a = build_esp(&files(b"one"), 2 << 20, "ESP").unwrap();
        let b = build_esp(&files(b"two"), 2 << 20, "ESP").unwrap();
        let id = |img: Vec<u8>| {
            FileSystem::new(Cursor::new(img), FsOptions::new())
                .unwrap()
                .volume_id()
        };
        assert_ne!(id(a), id(b));
    }

    #[test]
    fn too_small() {
        let big = vec![0u8; 3 << 20];
        let err = build_esp(&files(&big), 2 << 20, "ESP").unwrap_err();
        let needed = esp_size_for(&files(&big));
        assert!(err.to_string().contains(&needed.to_string()), "{err}");
    }
}
