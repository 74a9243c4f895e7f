//! dm-verity hash trees, written natively in `veritysetup format`'s layout (format version 1,
//! SHA-256, 4 KiB data and hash blocks, a superblock in the hash device's first block), so that
//! `veritysetup verify DATA HASH ROOT` accepts them and the kernel's `verity` target checks every
//! block of a read-only root against the root hash.
//!
//! The salt is derived from the data, not random: the same root gives the same bytes, and two
//! different roots still get different salts.

use crate::error::{Error, Result};
use crate::gpt::Guid;
use sha2::{Digest, Sha256};

/// Data and hash block size, in bytes.
pub const BLOCK: usize = 4096;
/// The name of the device-mapper device the guest's loader makes of the verified root.
pub const DM_NAME: &str = "keel-root";
/// [`BLOCK`] as the superblock stores it.
const BLOCK_U32: u32 = 4096;
/// SHA-256 digests per hash block.
const HASHES_PER_BLOCK: u64 = 4096 / 32;

/// A hash tree over some data, and what the kernel's `verity` target needs to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTree {
    /// The root hash: `sha256(salt ‖ top hash block)`.
    pub root_hash: [u8; 32],
    pub salt: [u8; 32],
    /// Data blocks covered ([`BLOCK`] bytes each).
    pub data_blocks: u64,
    /// The hash device: the superblock block, then the tree's levels, the top one first.
    pub hash_device: Vec<u8>,
}

impl HashTree {
    /// The kernel command line that hands this tree's parameters to keel's loader, which finds
    /// the data and hash partitions by the GUIDs [`partition_guids`] derives from the root
    /// hash.
    pub fn cmdline(&self) -> String {
        format!(
            "keel.verity={} keel.verity_salt={} keel.verity_blocks={}",
            hex::encode(self.root_hash),
            hex::encode(self.salt),
            self.data_blocks
        )
    }

    /// The unique GUIDs of the data and hash partitions: [`partition_guids`] of the root hash.
    pub fn partition_guids(&self) -> (Guid, Guid) {
        partition_guids(&self.root_hash)
    }
}

/// The unique GUIDs of a verified root's data and hash partitions, as systemd's Discoverable
/// Partitions Specification derives them: the first and the last 128 bits of the root hash,
/// each in a GUID's textual byte order.
pub fn partition_guids(root_hash: &[u8; 32]) -> (Guid, Guid) {
    let mut data = [0u8; 16];
    let mut hash = [0u8; 16];
    data.copy_from_slice(&root_hash[..16]);
    hash.copy_from_slice(&root_hash[16..]);
    (Guid::from_uuid_bytes(data), Guid::from_uuid_bytes(hash))
}

/// What a command line [`HashTree::cmdline`] wrote says about a verified root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub root_hash: [u8; 32],
    pub salt: Vec<u8>,
    pub data_blocks: u64,
}

/// The value of `name=` on the kernel command line `cmdline` (a UKI's `.cmdline` may end in
/// NULs).
pub fn knob<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim_end_matches('\0'))
}

impl Params {
    /// The `keel.verity*` parameters of `cmdline`; the error names the knob that is missing or
    /// invalid.
    pub fn from_cmdline(cmdline: &str) -> std::result::Result<Params, &'static str> {
        let knob = |name: &str| knob(cmdline, name);
        let root_hash = knob("keel.verity")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or("keel.verity")?;
        let salt = knob("keel.verity_salt")
            .and_then(|s| hex::decode(s).ok())
            .ok_or("keel.verity_salt")?;
        let data_blocks = knob("keel.verity_blocks")
            .and_then(|b| b.parse::<u64>().ok())
            .filter(|b| *b > 0)
            .ok_or("keel.verity_blocks")?;
        Ok(Params {
            root_hash,
            salt,
            data_blocks,
        })
    }
}

/// The salt keel uses for `data`: a hash of it (see the module comment).
pub fn derive_salt(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keel verity salt\0");
    h.update(Sha256::digest(data));
    h.finalize().into()
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Hash blocks per level, the lowest (hashes of data blocks) first, as the kernel's
/// `verity_ctr` computes them: enough levels that the top one is a single block.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut levels = 0u32;
    while 7 * levels < 64 && (data_blocks - 1) >> (7 * levels) != 0 {
        levels += 1;
    }
    (1..=levels)
        .map(|i| data_blocks.div_ceil(HASHES_PER_BLOCK.pow(i)))
        .collect()
}

/// The size in bytes of the hash device for `data_blocks` blocks of data: the superblock's
/// block and the tree's.
pub fn hash_device_len(data_blocks: u64) -> u64 {
    (1 + level_sizes(data_blocks.max(1)).iter().sum::<u64>()) * HASHES_PER_BLOCK * 32
}

/// Builds the hash tree of `data` (a whole number of [`BLOCK`]s, at least one) with `salt`.
pub fn hash_tree(data: &[u8], salt: [u8; 32]) -> Result<HashTree> {
    if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
        return Err(Error::VerityBlocks { len: data.len() });
    }
    let data_blocks = (data.len() / BLOCK) as u64;
    let sizes = level_sizes(data_blocks);
    // Each level's hash blocks, lowest first; a level hashes the blocks of the one below.
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(sizes.len());
    for &blocks in &sizes {
        let below = levels.last().map_or(data, Vec::as_slice);
        let mut level = vec![0u8; usize::try_from(blocks).unwrap_or(usize::MAX) * BLOCK];
        for (i, block) in below.chunks(BLOCK).enumerate() {
            level[i * 32..i * 32 + 32].copy_from_slice(&salted(&salt, block));
        }
        levels.push(level);
    }
    let root_hash = match levels.last() {
        Some(top) => salted(&salt, top),
        // A single data block is its own tree.
        None => salted(&salt, data),
    };
    let mut hash_device = superblock(data_blocks, &salt, &root_hash);
    for level in levels.iter().rev() {
        hash_device.extend_from_slice(level);
    }
    Ok(HashTree {
        root_hash,
        salt,
        data_blocks,
        hash_device,
    })
}

/// `veritysetup`'s superblock (`struct verity_sb`), padded to a hash block. Its UUID is derived
/// from the root hash.
fn superblock(data_blocks: u64, salt: &[u8; 32], root_hash: &[u8; 32]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(b"verity\0\0");
    b[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
    b[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: the normal format
    let uuid = crate::gpt::Guid::derive(root_hash, "verity superblock").bytes();
    b[16..32].copy_from_slice(&uuid);
    b[32..38].copy_from_slice(b"sha256");
    b[64..68].copy_from_slice(&BLOCK_U32.to_le_bytes());
    b[68..72].copy_from_slice(&BLOCK_U32.to_le_bytes());
    b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    b[80..82].copy_from_slice(&32u16.to_le_bytes()); // salt size
    b[88..120].copy_from_slice(salt); // of a 256-byte field; 168 bytes of padding end it
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK)
            .map(|i| u8::try_from((i * 7 + i / BLOCK) % 251).unwrap())
            .collect()
    }

    #[test]
    fn levels_follow_the_kernel() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(2), [1]);
        assert_eq!(level_sizes(128), [1]);
        assert_eq!(level_sizes(129), [2, 1]);
        assert_eq!(level_sizes(128 * 128), [128, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), [129, 2, 1]);
    }

    #[test]
    fn the_hash_device_length_is_the_trees() {
        for blocks in [1, 2, 128, 129, 300, 128 * 128 + 1] {
            let tree = hash_tree(&data(usize::try_from(blocks).unwrap()), [0; 32]).unwrap();
            assert_eq!(
                tree.hash_device.len() as u64,
                hash_device_len(blocks),
                "{blocks}"
            );
        }
    }

    #[test]
    fn refuses_partial_blocks() {
        for len in [0, 1, BLOCK + 1] {
            let err = hash_tree(&vec![0; len], [0; 32]).unwrap_err();
            assert!(err.to_string().contains("whole number"), "{err}");
        }
    }

    /// `veritysetup`, the reference implementation, writes the same bytes for the same salt
    /// and UUID, and verifies keel's tree; a changed data byte fails its verification.
    #[test]
    fn veritysetup_writes_and_accepts_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        for blocks in [1, 3, 129, 300] {
            let mut bytes = data(blocks);
            let salt = derive_salt(&bytes);
            let tree = hash_tree(&bytes, salt).unwrap();
            let data_path = dir.path().join(format!("data{blocks}"));
            let ours = dir.path().join(format!("ours{blocks}"));
            let theirs = dir.path().join(format!("theirs{blocks}"));
            std::fs::write(&data_path, &bytes).unwrap();
            std::fs::write(&ours, &tree.hash_device).unwrap();
            let uuid = Guid::from_uuid_bytes(tree.hash_device[16..32].try_into().unwrap());
            let out = Command::new("veritysetup")
                .arg("format")
                .arg(format!("--salt={}", hex::encode(salt)))
                .arg(format!("--uuid={uuid}"))
                .arg(&data_path)
                .arg(&theirs)
                .output()
                .expect("veritysetup (cryptsetup-bin; scripts/setup.sh installs it)");
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!(
                    "Root hash:      \t{}",
                    hex::encode(tree.root_hash)
                )),
                "{blocks} blocks: {text}"
            );
            assert_eq!(std::fs::read(&theirs).unwrap(), tree.hash_device);
            let verify = |data: &std::path::Path| {
                Command::new("veritysetup")
                    .arg("verify")
                    .arg(data)
                    .arg(&ours)
                    .arg(hex::encode(tree.root_hash))
                    .output()
                    .unwrap()
            };
            assert!(verify(&data_path).status.success());
            bytes[blocks * BLOCK / 2] ^= 1;
            std::fs::write(&data_path, &bytes).unwrap();
            assert!(!verify(&data_path).status.success(), "{blocks} blocks");
        }
    }

    #[test]
    fn same_data_same_tree_and_the_salt_follows_the_data() {
        let a = data(5);
        let mut b = a.clone();
        b[0] ^= 1;
        assert_eq!(
            hash_tree(&a, derive_salt(&a)).unwrap(),
            hash_tree(&a, derive_salt(&a)).unwrap()
        );
        assert_ne!(derive_salt(&a), derive_salt(&b));
        let tree = hash_tree(&a, derive_salt(&a)).unwrap();
        let (data_guid, hash_guid) = tree.partition_guids();
        let half = |h: &[u8]| Guid::from_uuid_bytes(h.try_into().unwrap());
        assert_eq!(data_guid, half(&tree.root_hash[..16]));
        assert_eq!(hash_guid, half(&tree.root_hash[16..]));
        assert_eq!(
            Params::from_cmdline(&format!("console=ttyS0 {}", tree.cmdline())),
            Ok(Params {
                root_hash: tree.root_hash,
                salt: tree.salt.to_vec(),
                data_blocks: 5
            })
        );
        assert_eq!(
            Params::from_cmdline("keel.verity=00 keel.verity_salt=00 keel.verity_blocks=1"),
            Err("keel.verity")
        );
        assert_eq!(
            tree.cmdline(),
            format!(
                "keel.verity={} keel.verity_salt={} keel.verity_blocks=5",
                hex::encode(tree.root_hash),
                hex::encode(tree.salt)
            )
        );
    }
}
