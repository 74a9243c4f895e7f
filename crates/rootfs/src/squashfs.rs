//! The deterministic squashfs writer (the `kernel+squashfs` format's root filesystem), through
//! the `backhand` crate: squashfs 4.0, gzip (every kernel with squashfs reads it), 128 KiB
//! blocks, every mtime and the superblock time `opts.mtime`, duplicate file data stored once.

use crate::tree::{NodeKind, Tree};
use crate::{Error, WriteOptions};
use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
use std::io::{Cursor, Seek, Write};
use std::path::{Path, PathBuf};

/// `new_encode_dev`: how squashfs (like the kernel's stat) stores a device number.
fn device_number(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn header(mode: u32, uid: u32, gid: u32, mtime: u32) -> NodeHeader {
    // Permission bits only; `Node::mode` keeps 0o7777, which fits.
    NodeHeader::new((mode & 0o7777) as u16, uid, gid, mtime)
}

fn squashfs_err(path: &Path) -> impl FnOnce(backhand::BackhandError) -> Error + '_ {
    move |e| Error::Squashfs {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Writes `tree` as a squashfs image. Hard links become separate inodes sharing one copy of
/// the data. Extended attributes are not written (backhand cannot): nodes that have them are
/// logged. Returns the writer.
pub fn write_squashfs<W: Write + Seek>(
    tree: &Tree,
    mut w: W,
    opts: &WriteOptions,
) -> Result<W, Error> {
    let mtime = u32::try_from(opts.mtime).map_err(|_| Error::TooLarge {
        path: PathBuf::new(),
        what: "mtime",
        format: "squashfs",
    })?;
    let mut fs = FilesystemWriter::default();
    fs.set_time(mtime);
    fs.set_root_mode(0o755);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    let compressor =
        FilesystemCompressor::new(Compressor::Gzip, None).map_err(squashfs_err(Path::new("")))?;
    fs.set_compressor(compressor);

    let mut without_xattrs = 0usize;
    for (path, node) in tree.iter() {
        if !node.xattrs.is_empty() {
            without_xattrs += 1;
            log::debug!(
                "squashfs: extended attributes of {} not written",
                path.display()
            );
        }
        let h = header(node.mode, node.uid, node.gid, mtime);
        let pushed = match &node.kind {
            // The tree has every parent, before its contents.
            NodeKind::Dir => fs.push_dir(path, h),
            NodeKind::File(bytes) => fs.push_file(Cursor::new(bytes.clone()), path, h),
            NodeKind::HardLink(target) => match tree.get(target) {
                Some(t) if matches!(t.kind, NodeKind::File(_)) => {
                    let NodeKind::File(bytes) = &t.kind else {
                        unreachable!("matched above")
                    };
                    let h = header(t.mode, t.uid, t.gid, mtime);
                    fs.push_file(Cursor::new(bytes.clone()), path, h)
                }
                _ => {
                    return Err(Error::BadHardLink {
                        path: path.to_path_buf(),
                        target: target.clone(),
                    });
                }
            },
            NodeKind::Symlink(target) => fs.push_symlink(target, path, h),
            NodeKind::CharDevice { major, minor } => {
                fs.push_char_device(device_number(*major, *minor), path, h)
            }
            NodeKind::BlockDevice { major, minor } => {
                fs.push_block_device(device_number(*major, *minor), path, h)
            }
            NodeKind::Fifo => fs.push_fifo(path, h),
        };
        pushed.map_err(squashfs_err(path))?;
    }
    if without_xattrs > 0 {
        log::warn!(
            "squashfs: {without_xattrs} entries lose their extended attributes (e.g. file capabilities)"
        );
    }
    fs.write(&mut w).map_err(squashfs_err(Path::new("")))?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;
    use backhand::{FilesystemReader, InnerNode};
    use bytes::Bytes;

    fn sample() -> Tree {
        let mut t = Tree::new();
        let file =
            |data: &'static [u8], mode| Node::new(NodeKind::File(Bytes::from(data)), mode, "t");
        t.insert("etc", Node::new(NodeKind::Dir, 0o755, "t"))
            .unwrap();
        t.insert("etc/hostname", file(b"keel\n", 0o644)).unwrap();
        t.insert("bin/sh", file(b"#!shell", 0o4755).with_owner(0, 5))
            .unwrap();
        t.insert(
            "bin/ash",
            Node::new(NodeKind::HardLink("bin/sh".into()), 0, "t"),
        )
        .unwrap();
        t.insert(
            "bin/busybox",
            Node::new(NodeKind::Symlink("sh".into()), 0o777, "t"),
        )
        .unwrap();
        t.insert(
            "dev/console",
            Node::new(NodeKind::CharDevice { major: 5, minor: 1 }, 0o600, "t"),
        )
        .unwrap();
        t.insert(
            "dev/big",
            Node::new(
                NodeKind::BlockDevice {
                    major: 259,
                    minor: 300,
                },
                0o600,
                "t",
            ),
        )
        .unwrap();
        t.insert("run/fifo", Node::new(NodeKind::Fifo, 0o644, "t"))
            .unwrap();
        t
    }

    fn write(tree: &Tree, mtime: u64) -> Vec<u8> {
        write_squashfs(tree, Cursor::new(Vec::new()), &WriteOptions { mtime })
            .unwrap()
            .into_inner()
    }

    #[test]
    fn same_tree_same_bytes() {
        let t = sample();
        assert_eq!(write(&t, 1_700_000_000), write(&t, 1_700_000_000));
        assert_ne!(write(&t, 1_700_000_000), write(&t, 1_700_000_001));
    }

    #[test]
    fn reads_back_with_modes_owners_and_devices() {
        let image = write(&sample(), 1_700_000_000);
        let fs = FilesystemReader::from_reader(Cursor::new(image)).unwrap();
        let find = |p: &str| {
            fs.files()
                .find(|n| n.fullpath == Path::new("/").join(p))
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        let sh = find("bin/sh");
        assert_eq!(
            (sh.header.permissions, sh.header.uid, sh.header.gid),
            (0o4755, 0, 5)
        );
        assert_eq!(sh.header.mtime, 1_700_000_000);
        for p in ["bin/sh", "bin/ash"] {
            let InnerNode::File(f) = &find(p).inner else {
                panic!("{p} is not a file")
            };
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut fs.file(f).reader(), &mut data).unwrap();
            assert_eq!(data, b"#!shell", "{p}");
        }
        let InnerNode::Symlink(l) = &find("bin/busybox").inner else {
            panic!("not a symlink")
        };
        assert_eq!(l.link, Path::new("sh"));
        let InnerNode::CharacterDevice(c) = &find("dev/console").inner else {
            panic!("not a char device")
        };
        assert_eq!(c.device_number, device_number(5, 1));
        let InnerNode::BlockDevice(b) = &find("dev/big").inner else {
            panic!("not a block device")
        };
        assert_eq!(b.device_number, device_number(259, 300));
        // `bin` and `dev` were made by `Tree::insert`.
        assert!(matches!(find("bin").inner, InnerNode::Dir(_)));
        assert!(matches!(find("run/fifo").inner, InnerNode::NamedPipe));
    }

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(device_number(5, 1), 0x0501);
        assert_eq!(
            device_number(259, 300),
            (300 & 0xff) | (259 << 8) | (0x100 << 12)
        );
    }
}
