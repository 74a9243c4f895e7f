//! Root filesystem trees for keel builds.
//!
//! A build flattens many OCI image layers plus generated files into one [`Tree`] (an in-memory
//! filesystem), then writes it out as a PAX tar ([`write_tar`]), a newc cpio initramfs
//! ([`write_cpio`]) or a squashfs image ([`write_squashfs`]), optionally through deterministic
//! gzip ([`gzip_writer`]) or zstd ([`Compression`]), into an [`AtomicFile`] so that a failed
//! build leaves nothing behind.
//!
//! Output is byte-reproducible: entries are sorted (every directory before its contents), owners
//! are numeric, mtimes come from [`WriteOptions`] (normally [`source_date_epoch`]), inode numbers
//! are assigned in write order and compression settings are fixed. Nothing depends on the wall
//! clock, the time zone, the umask or the insertion order.
//!
//! Layer application ([`Tree::apply_layer`]) follows OCI whiteout semantics and refuses entries
//! that could escape the tree: absolute paths, `..`, symlinked parents and escaping hard links.

mod atomic;
mod compress;
mod cpio;
mod error;
mod gzip;
mod layer;
mod squashfs;
mod tarball;
mod tree;

#[cfg(test)]
mod testutil;

pub use atomic::{AtomicFile, remove_stale, remove_unfinished};
pub use compress::{Compression, Compressor};
pub use cpio::write_cpio;
pub use error::Error;
pub use gzip::{GzipWriter, gzip_writer};
pub use layer::{DEFAULT_MAX_IMAGE_SIZE, ImageBudget, SizeLimits};
pub use squashfs::write_squashfs;
pub use tarball::{SOURCE_PAX_KEY, write_tar, write_tar_with};
pub use tree::{Node, NodeKind, Tree};

/// LinuxKit's fixed timestamp for generated entries: 2017-04-18T16:30:00Z.
pub const DEFAULT_EPOCH: u64 = 1_492_533_000;

/// Settings shared by the archive writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// The modification time written for every entry, in seconds since the Unix epoch.
    pub mtime: u64,
}

impl WriteOptions {
    /// Options whose mtime is [`source_date_epoch`].
    pub fn from_env() -> Self {
        Self {
            mtime: source_date_epoch(),
        }
    }
}

/// The build timestamp: `$SOURCE_DATE_EPOCH` if set and a valid number of seconds, else
/// [`DEFAULT_EPOCH`] (an invalid value is logged and ignored).
pub fn source_date_epoch() -> u64 {
    parse_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())
}

fn parse_epoch(value: Option<&str>) -> u64 {
    match value.map(str::trim) {
        None | Some("") => DEFAULT_EPOCH,
        Some(v) => v.parse().unwrap_or_else(|_| {
            log::warn!("ignoring invalid SOURCE_DATE_EPOCH {v:?}");
            DEFAULT_EPOCH
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_parsing() {
        assert_eq!(parse_epoch(None), DEFAULT_EPOCH);
        assert_eq!(parse_epoch(Some("")), DEFAULT_EPOCH);
        assert_eq!(parse_epoch(Some("1700000000")), 1_700_000_000);
        assert_eq!(parse_epoch(Some(" 42\n")), 42);
        assert_eq!(parse_epoch(Some("-5")), DEFAULT_EPOCH);
        assert_eq!(parse_epoch(Some("yesterday")), DEFAULT_EPOCH);
    }
}
