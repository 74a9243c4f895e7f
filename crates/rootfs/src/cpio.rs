//! The deterministic newc (`070701`) cpio writer, in the form the kernel unpacks as an initramfs.

use crate::tarball::link_plan;
use crate::tree::{NodeKind, Tree};
use crate::{Error, WriteOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

const S_IFIFO: u32 = 0o010_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const TRAILER: &[u8] = b"TRAILER!!!";

/// The numeric fields of one newc header, in order after the magic.
#[derive(Default)]
struct Fields {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

/// Writes `tree` as a newc cpio archive: entries in [`Tree::iter`] order, inode numbers from 1
/// in write order, every mtime `opts.mtime`, `dev` 0, no checksums. Hard-linked paths share one
/// inode with `nlink` set to the group size and the data on the group's last entry, as the
/// kernel's initramfs unpacker expects. Ends with `TRAILER!!!`, everything padded to 4 bytes.
/// Returns the writer.
pub fn write_cpio<W: Write>(tree: &Tree, w: W, opts: &WriteOptions) -> Result<W, Error> {
    let plan = link_plan(tree)?;
    let mtime = u32::try_from(opts.mtime).map_err(|_| Error::TooLarge {
        path: Path::new("").to_path_buf(),
        what: "mtime",
        format: "cpio",
    })?;
    let mut group_inodes: Vec<u32> = Vec::new();
    let mut next_ino: u32 = 1;
    let mut out = BufWriter::with_capacity(1 << 16, w);
    for (key, node) in tree.entries() {
        let member = plan.get(key.bytes());
        let meta = member.map_or(node, |m| m.file);
        let mut fields = Fields {
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            nlink: 1,
            mtime,
            ..Fields::default()
        };
        let mut data: &[u8] = &[];
        match (&node.kind, member) {
            (NodeKind::File(_) | NodeKind::HardLink(_), Some(m)) => {
                fields.mode |= S_IFREG;
                fields.nlink = u32::try_from(m.count).unwrap_or(u32::MAX);
                if m.index + 1 == m.count
                    && let NodeKind::File(bytes) = &m.file.kind
                {
                    data = bytes;
                }
                // The group's inode is assigned when its first member is written.
                if m.group == group_inodes.len() {
                    group_inodes.push(next_ino);
                    next_ino += 1;
                }
                fields.ino = group_inodes.get(m.group).copied().unwrap_or_default();
            }
            (NodeKind::HardLink(target), None) => {
                return Err(Error::BadHardLink {
                    path: key.path().to_path_buf(),
                    target: target.clone(),
                });
            }
            (kind, _) => {
                fields.ino = next_ino;
                next_ino += 1;
                match kind {
                    NodeKind::File(bytes) => {
                        fields.mode |= S_IFREG;
                        data = bytes;
                    }
                    NodeKind::Dir => {
                        fields.mode |= S_IFDIR;
                        fields.nlink = 2;
                    }
                    NodeKind::Symlink(target) => {
                        use std::os::unix::ffi::OsStrExt;
                        fields.mode |= S_IFLNK;
                        data = target.as_os_str().as_bytes();
                    }
                    NodeKind::CharDevice { major, minor } => {
                        fields.mode |= S_IFCHR;
                        (fields.rdevmajor, fields.rdevminor) = (*major, *minor);
                    }
                    NodeKind::BlockDevice { major, minor } => {
                        fields.mode |= S_IFBLK;
                        (fields.rdevmajor, fields.rdevminor) = (*major, *minor);
                    }
                    NodeKind::Fifo => fields.mode |= S_IFIFO,
                    NodeKind::HardLink(_) => {}
                }
            }
        }
        fields.filesize = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
            path: key.path().to_path_buf(),
            what: "file",
            format: "cpio",
        })?;
        write_entry(&mut out, &fields, key.bytes(), data).map_err(Error::Write)?;
    }
    let trailer = Fields {
        nlink: 1,
        ..Fields::default()
    };
    write_entry(&mut out, &trailer, TRAILER, &[]).map_err(Error::Write)?;
    out.flush().map_err(Error::Write)?;
    let (w, _) = out.into_parts();
    Ok(w)
}

fn write_entry(out: &mut impl Write, f: &Fields, name: &[u8], data: &[u8]) -> io::Result<()> {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        f.ino,
        f.mode,
        f.uid,
        f.gid,
        f.nlink,
        f.mtime,
        f.filesize,
        0, // devmajor
        0, // devminor
        f.rdevmajor,
        f.rdevminor,
        namesize,
        0, // check
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name)?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(header.len() + namesize)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{CpioEntry, read_cpio};
    use crate::tree::Node;
    use bytes::Bytes;
    use std::process::Command;

    type Step = Box<dyn Fn(&mut Tree)>;

    const OPTS: WriteOptions = WriteOptions {
        mtime: 1_492_533_000,
    };

    fn file(data: &'static [u8]) -> Node {
        Node::new(NodeKind::File(Bytes::from_static(data)), 0o755, "t")
    }

    fn link(target: &str) -> Node {
        Node::new(NodeKind::HardLink(target.into()), 0, "t")
    }

    /// Builds the same tree in the given order of steps.
    fn sample(order: &[usize]) -> Tree {
        let mut tree = Tree::new();
        let mut steps: Vec<Step> = vec![
            Box::new(|t| t.insert("init", file(b"#!/bin/sh\n")).unwrap()),
            Box::new(|t| {
                t.insert(
                    "dev/console",
                    Node::new(NodeKind::CharDevice { major: 5, minor: 1 }, 0o600, "t"),
                )
                .unwrap()
            }),
            Box::new(|t| {
                t.insert(
                    "bin/sh",
                    Node::new(NodeKind::Symlink("busybox".into()), 0o777, "t"),
                )
                .unwrap()
            }),
            Box::new(|t| {
                t.insert("etc/motd", file(b"hello").with_owner(1, 2))
                    .unwrap()
            }),
            Box::new(|t| {
                t.insert("tmp", Node::new(NodeKind::Dir, 0o1777, "t"))
                    .unwrap()
            }),
        ];
        // The hard-link group: the file sorts last, the links first.
        steps.push(Box::new(|t| {
            t.insert("usr/bin/busybox", file(b"ELF-busybox")).unwrap();
            t.insert("bin/ls", link("usr/bin/busybox")).unwrap();
            t.insert("bin/cat", link("usr/bin/busybox")).unwrap();
        }));
        for &i in order {
            steps[i](&mut tree);
        }
        tree
    }

    fn names(entries: &[CpioEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn newc_bytes_parse_back() {
        let bytes = write_cpio(&sample(&[0, 1, 2, 3, 4, 5]), Vec::new(), &OPTS).unwrap();
        let entries = read_cpio(&bytes);
        assert_eq!(
            names(&entries),
            [
                "bin",
                "bin/cat",
                "bin/ls",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/motd",
                "init",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/busybox",
            ]
        );
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        for e in &entries {
            assert_eq!(e.mtime, 1_492_533_000, "{}", e.name);
        }
        // Inodes in write order; the link group takes its number at its first member.
        let inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 2]);
        for n in ["bin/cat", "bin/ls", "usr/bin/busybox"] {
            assert_eq!(by(n).nlink, 3, "{n}");
            assert_eq!(by(n).mode, S_IFREG | 0o755, "{n}");
        }
        // The data rides on the group's last entry only.
        assert!(by("bin/cat").data.is_empty());
        assert!(by("bin/ls").data.is_empty());
        assert_eq!(by("usr/bin/busybox").data, b"ELF-busybox");

        assert_eq!(by("bin").mode, S_IFDIR | 0o755);
        assert_eq!(by("tmp").mode, S_IFDIR | 0o1777);
        assert_eq!(by("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(by("bin/sh").data, b"busybox");
        assert_eq!(by("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(by("dev/console").rdev, (5, 1));
        let motd = by("etc/motd");
        assert_eq!((motd.uid, motd.gid, motd.nlink), (1, 2, 1));
        assert_eq!(motd.data, b"hello");
    }

    #[test]
    fn output_is_deterministic() {
        let a = write_cpio(&sample(&[0, 1, 2, 3, 4, 5]), Vec::new(), &OPTS).unwrap();
        let b = write_cpio(&sample(&[0, 1, 2, 3, 4, 5]), Vec::new(), &OPTS).unwrap();
        let c = write_cpio(&sample(&[5, 4, 3, 2, 1, 0]), Vec::new(), &OPTS).unwrap();
        assert!(a == b, "same tree, different bytes");
        assert!(a == c, "insertion order changed the bytes");
    }

    #[test]
    fn empty_tree_is_just_the_trailer() {
        let bytes = write_cpio(&Tree::new(), Vec::new(), &OPTS).unwrap();
        assert!(read_cpio(&bytes).is_empty());
        assert_eq!(bytes.len(), 124);
    }

    #[test]
    fn mtime_beyond_32_bits_is_refused() {
        let err =
            write_cpio(&Tree::new(), Vec::new(), &WriteOptions { mtime: 1 << 32 }).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { what: "mtime", .. }),
            "{err}"
        );
    }

    #[test]
    fn gnu_cpio_extracts_hard_links() {
        use std::os::unix::fs::MetadataExt;
        // Cross-check with GNU cpio when the machine has it.
        if Command::new("cpio").arg("--version").output().is_err() {
            return;
        }
        let bytes = write_cpio(&sample(&[0, 2, 3, 4, 5]), Vec::new(), &OPTS).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &bytes).unwrap();
        let out_dir = dir.path().join("x");
        std::fs::create_dir(&out_dir).unwrap();
        let out = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&archive)
            .current_dir(&out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta = |p: &str| std::fs::symlink_metadata(out_dir.join(p)).unwrap();
        assert_eq!(
            std::fs::read(out_dir.join("bin/ls")).unwrap(),
            b"ELF-busybox"
        );
        assert_eq!(meta("bin/ls").ino(), meta("usr/bin/busybox").ino());
        assert_eq!(meta("bin/cat").ino(), meta("usr/bin/busybox").ino());
        assert_eq!(meta("usr/bin/busybox").nlink(), 3);
        assert_eq!(
            std::fs::read_link(out_dir.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(std::fs::read(out_dir.join("etc/motd")).unwrap(), b"hello");
    }
}
