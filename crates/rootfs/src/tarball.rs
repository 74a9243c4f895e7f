//! The deterministic PAX tar writer and the hard-link plan shared with the cpio writer.

use crate::tree::{Key, Node, NodeKind, Tree, cmp_paths};
use crate::{Error, WriteOptions};
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use tar::{EntryType, Header};

/// The PAX record naming each entry's provenance (LinuxKit writes `LINUXKIT.source`).
pub const SOURCE_PAX_KEY: &str = "KEEL.source";

const BLOCK: usize = 512;
/// Largest values the ustar octal fields hold; larger ones go into PAX records.
const MAX_OCTAL_ID: u64 = 0o7_777_777;
const MAX_OCTAL_SIZE: u64 = 0o77_777_777_777;

/// Where a path sits in its hard-link group.
pub(crate) struct Member<'a> {
    /// The regular file all members share.
    pub file: &'a Node,
    /// The group's first path in write order.
    pub first: &'a Key,
    /// This member's position in write order, and the group size.
    pub index: usize,
    pub count: usize,
    /// The group's number, in order of first appearance.
    pub group: usize,
}

/// Every path that belongs to a hard-link group (a file and its links), keyed by path bytes.
pub(crate) fn link_plan(tree: &Tree) -> Result<HashMap<&[u8], Member<'_>>, Error> {
    let mut groups: Vec<(&Node, Vec<&Key>)> = Vec::new();
    for (file, links) in tree.link_groups() {
        let node = tree
            .node(file.bytes())
            .filter(|n| matches!(n.kind, NodeKind::File(_)))
            .ok_or_else(|| Error::BadHardLink {
                path: links
                    .first()
                    .map(|k| k.path().to_path_buf())
                    .unwrap_or_default(),
                target: file.path().to_path_buf(),
            })?;
        let mut members: Vec<&Key> = links.iter().chain(std::iter::once(file)).collect();
        members.sort_by(|a, b| cmp_paths(a.bytes(), b.bytes()));
        groups.push((node, members));
    }
    groups.sort_by(|a, b| cmp_paths(a.1[0].bytes(), b.1[0].bytes()));
    let mut plan = HashMap::new();
    for (group, (file, members)) in groups.iter().enumerate() {
        for (index, key) in members.iter().enumerate() {
            plan.insert(
                key.bytes(),
                Member {
                    file,
                    first: members[0],
                    index,
                    count: members.len(),
                    group,
                },
            );
        }
    }
    Ok(plan)
}

/// Writes `tree` as a PAX tar: entries in [`Tree::iter`] order, numeric owners without names,
/// every mtime `opts.mtime`, a [`SOURCE_PAX_KEY`] record per entry, `SCHILY.xattr.*` records for
/// extended attributes, and PAX `path`/`linkpath` for names ustar cannot hold. In a hard-link
/// group the first path in write order carries the data and the others link to it. The output
/// ends with two zero blocks. Returns the writer.
pub fn write_tar<W: Write>(tree: &Tree, w: W, opts: &WriteOptions) -> Result<W, Error> {
    write_tar_with(tree, w, opts, &[])
}

/// [`write_tar`], with a PAX global header first holding `globals` (records about the whole
/// archive, which [`Tree::read_tar`] returns) when there are any.
///
/// [`Tree::read_tar`]: crate::Tree::read_tar
pub fn write_tar_with<W: Write>(
    tree: &Tree,
    w: W,
    opts: &WriteOptions,
    globals: &[(&str, Vec<u8>)],
) -> Result<W, Error> {
    let plan = link_plan(tree)?;
    let mut out = BufWriter::with_capacity(1 << 16, w);
    if !globals.is_empty() {
        write_pax_header(
            &mut out,
            b"pax_global_header",
            EntryType::XGlobalHeader,
            globals,
            opts,
        )
        .map_err(Error::Write)?;
    }
    for (key, node) in tree.entries() {
        write_entry(&mut out, key, node, plan.get(key.bytes()), opts)?;
    }
    out.write_all(&[0; 2 * BLOCK]).map_err(Error::Write)?;
    out.flush().map_err(Error::Write)?;
    let (w, _) = out.into_parts();
    Ok(w)
}

fn write_entry(
    out: &mut impl Write,
    key: &Key,
    node: &Node,
    member: Option<&Member<'_>>,
    opts: &WriteOptions,
) -> Result<(), Error> {
    let mut header = Header::new_ustar();
    let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
    // Hard-link members take their metadata from the shared file.
    let meta = member.map_or(node, |m| m.file);
    let mut data: &[u8] = &[];
    let mut link: Option<Vec<u8>> = None;
    match (&node.kind, member) {
        (NodeKind::File(_) | NodeKind::HardLink(_), Some(m)) if m.index > 0 => {
            header.set_entry_type(EntryType::Link);
            link = Some(m.first.bytes().to_vec());
        }
        (NodeKind::File(_) | NodeKind::HardLink(_), Some(m)) => {
            header.set_entry_type(EntryType::Regular);
            if let NodeKind::File(bytes) = &m.file.kind {
                data = bytes;
            }
        }
        (NodeKind::File(bytes), None) => {
            header.set_entry_type(EntryType::Regular);
            data = bytes;
        }
        (NodeKind::HardLink(target), None) => {
            return Err(Error::BadHardLink {
                path: key.path().to_path_buf(),
                target: target.clone(),
            });
        }
        (NodeKind::Dir, _) => header.set_entry_type(EntryType::Directory),
        (NodeKind::Symlink(target), _) => {
            use std::os::unix::ffi::OsStrExt;
            header.set_entry_type(EntryType::Symlink);
            link = Some(target.as_os_str().as_bytes().to_vec());
        }
        (NodeKind::CharDevice { major, minor }, _) => {
            header.set_entry_type(EntryType::Char);
            set_device(&mut header, *major, *minor)?;
        }
        (NodeKind::BlockDevice { major, minor }, _) => {
            header.set_entry_type(EntryType::Block);
            set_device(&mut header, *major, *minor)?;
        }
        (NodeKind::Fifo, _) => header.set_entry_type(EntryType::Fifo),
    }

    let mut name = key.bytes().to_vec();
    if node.is_dir() {
        name.push(b'/');
    }
    if !set_ustar_name(&mut header, &name) {
        pax.push(("path", name.clone()));
    }
    if let Some(link) = link {
        if link.len() <= 100 {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(&link);
        } else {
            header.as_old_mut().linkname.copy_from_slice(&link[..100]);
            pax.push(("linkpath", link));
        }
    }
    header.set_mode(meta.mode & 0o7777);
    header.set_uid(u64::from(meta.uid));
    header.set_gid(u64::from(meta.gid));
    if u64::from(meta.uid) > MAX_OCTAL_ID {
        pax.push(("uid", meta.uid.to_string().into_bytes()));
    }
    if u64::from(meta.gid) > MAX_OCTAL_ID {
        pax.push(("gid", meta.gid.to_string().into_bytes()));
    }
    let size = data.len() as u64;
    header.set_size(size);
    if size > MAX_OCTAL_SIZE {
        pax.push(("size", size.to_string().into_bytes()));
    }
    header.set_mtime(opts.mtime);
    let xattr_keys: Vec<String> = meta
        .xattrs
        .keys()
        .map(|k| format!("SCHILY.xattr.{k}"))
        .collect();
    for (pax_key, value) in xattr_keys.iter().zip(meta.xattrs.values()) {
        pax.push((pax_key, value.clone()));
    }
    pax.push((SOURCE_PAX_KEY, node.origin.as_bytes().to_vec()));
    header.set_cksum();

    write_pax(out, &name, &pax, opts).map_err(Error::Write)?;
    out.write_all(header.as_bytes()).map_err(Error::Write)?;
    write_padded(out, data).map_err(Error::Write)
}

fn set_device(header: &mut Header, major: u32, minor: u32) -> Result<(), Error> {
    header.set_device_major(major).map_err(Error::Write)?;
    header.set_device_minor(minor).map_err(Error::Write)
}

/// Puts `name` into the ustar name (and prefix) fields; false if it does not fit, in which case
/// a truncated name is stored and the caller adds a PAX `path` record.
fn set_ustar_name(header: &mut Header, name: &[u8]) -> bool {
    let Some(ustar) = header.as_ustar_mut() else {
        return false;
    };
    if name.len() <= 100 {
        ustar.name[..name.len()].copy_from_slice(name);
        return true;
    }
    // Split at a '/' so that the prefix takes at most 155 bytes and the name at most 100.
    let split = name
        .iter()
        .enumerate()
        .rev()
        .find(|(i, c)| **c == b'/' && *i > 0 && *i <= 155 && name.len() - i - 1 <= 100)
        .map(|(i, _)| i);
    match split {
        Some(i) if i + 1 < name.len() => {
            ustar.prefix[..i].copy_from_slice(&name[..i]);
            ustar.name[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
            true
        }
        _ => {
            ustar.name.copy_from_slice(&name[..100]);
            false
        }
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn write_pax(
    out: &mut impl Write,
    name: &[u8],
    records: &[(&str, Vec<u8>)],
    opts: &WriteOptions,
) -> io::Result<()> {
    // Name it like Go's archive/tar: <dir>/PaxHeaders.0/<base>, truncated to fit.
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (dir, base) = match trimmed.iter().rposition(|c| *c == b'/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => (&trimmed[..0], trimmed),
    };
    let mut pax_name = dir.to_vec();
    pax_name.extend_from_slice(b"PaxHeaders.0/");
    pax_name.extend_from_slice(base);
    write_pax_header(out, &pax_name, EntryType::XHeader, records, opts)
}

/// A PAX header entry (`x` for the next entry, `g` for the archive) named `name`.
fn write_pax_header(
    out: &mut impl Write,
    name: &[u8],
    kind: EntryType,
    records: &[(&str, Vec<u8>)],
    opts: &WriteOptions,
) -> io::Result<()> {
    let mut body = Vec::new();
    for (key, value) in records {
        pax_record(&mut body, key, value);
    }
    let pax_name = &name[..name.len().min(100)];
    let mut header = Header::new_ustar();
    header.as_old_mut().name[..pax_name.len()].copy_from_slice(pax_name);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(body.len() as u64);
    header.set_mtime(opts.mtime);
    header.set_cksum();
    out.write_all(header.as_bytes())?;
    write_padded(out, &body)
}

fn write_padded(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    out.write_all(data)?;
    let rem = data.len() % BLOCK;
    if rem != 0 {
        out.write_all(&[0; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::Read;

    type Step = Box<dyn Fn(&mut Tree)>;

    const OPTS: WriteOptions = WriteOptions {
        mtime: 1_492_533_000,
    };

    fn file(data: &'static [u8], origin: &str) -> Node {
        Node::new(NodeKind::File(Bytes::from_static(data)), 0o644, origin)
    }

    /// A tree with every node kind, a hard-link group whose file sorts last, and long names.
    fn sample(reverse: bool) -> Tree {
        let long = format!("deep/{}/{}", "x".repeat(150), "y".repeat(120));
        let mut steps: Vec<Step> = vec![
            Box::new(|t| t.mkdir_all("etc", 0o755, 0, 0, "gen").unwrap()),
            Box::new(|t| {
                t.insert("etc/hosts", file(b"127.0.0.1 localhost\n", "gen"))
                    .unwrap()
            }),
            Box::new(|t| {
                t.insert(
                    "usr/bin/busybox",
                    file(b"ELF", "busybox").with_owner(10, 20),
                )
                .unwrap()
            }),
            Box::new(|t| {
                t.insert(
                    "dev/console",
                    Node::new(NodeKind::CharDevice { major: 5, minor: 1 }, 0o600, "gen"),
                )
                .unwrap()
            }),
            Box::new(|t| {
                t.insert(
                    "dev/sda",
                    Node::new(NodeKind::BlockDevice { major: 8, minor: 0 }, 0o660, "gen"),
                )
                .unwrap()
            }),
            Box::new(|t| {
                t.insert("run/p", Node::new(NodeKind::Fifo, 0o600, "gen"))
                    .unwrap()
            }),
            Box::new(|t| {
                t.insert("tmp", Node::new(NodeKind::Dir, 0o1777, "gen"))
                    .unwrap()
            }),
            Box::new(move |t| t.insert(&long, file(b"long", "gen")).unwrap()),
            Box::new(|t| {
                let target = format!("/{}", "t".repeat(200));
                t.insert(
                    "lnk",
                    Node::new(NodeKind::Symlink(target.into()), 0o777, "gen"),
                )
                .unwrap()
            }),
        ];
        let links: Vec<Step> = vec![
            Box::new(|t| {
                t.insert(
                    "bin/sh",
                    Node::new(NodeKind::HardLink("usr/bin/busybox".into()), 0, "link"),
                )
                .unwrap()
            }),
            Box::new(|t| {
                t.insert(
                    "bin/ls",
                    Node::new(NodeKind::HardLink("usr/bin/busybox".into()), 0, "link"),
                )
                .unwrap()
            }),
        ];
        if reverse {
            steps.reverse();
        }
        let mut tree = Tree::new();
        for step in steps.iter().chain(links.iter()) {
            step(&mut tree);
        }
        tree
    }

    struct Read_ {
        path: String,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        link: Option<String>,
        source: String,
        data: Vec<u8>,
        dev: Option<(u32, u32)>,
        uname_empty: bool,
    }

    fn read_back(bytes: &[u8]) -> Vec<Read_> {
        let mut archive = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut source = String::new();
            for ext in entry.pax_extensions().unwrap().unwrap() {
                let ext = ext.unwrap();
                if ext.key().unwrap() == SOURCE_PAX_KEY {
                    source = ext.value().unwrap().to_owned();
                }
            }
            let h = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push(Read_ {
                path: String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                link: entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).unwrap()),
                source,
                data,
                dev: match h.entry_type() {
                    EntryType::Char | EntryType::Block => Some((
                        h.device_major().unwrap().unwrap(),
                        h.device_minor().unwrap().unwrap(),
                    )),
                    _ => None,
                },
                uname_empty: h.username_bytes().unwrap_or_default().is_empty()
                    && h.groupname_bytes().unwrap_or_default().is_empty(),
            });
        }
        out
    }

    #[test]
    fn reads_back_with_the_tar_crate() {
        let tree = sample(false);
        let bytes = write_tar(&tree, Vec::new(), &OPTS).unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        assert!(bytes.ends_with(&[0; 2 * BLOCK]));
        let entries = read_back(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let long = format!("deep/{}/{}", "x".repeat(150), "y".repeat(120));
        let long_dir = format!("deep/{}/", "x".repeat(150));
        assert_eq!(
            names,
            [
                "bin/",
                "bin/ls",
                "bin/sh",
                "deep/",
                &long_dir,
                &long,
                "dev/",
                "dev/console",
                "dev/sda",
                "etc/",
                "etc/hosts",
                "lnk",
                "run/",
                "run/p",
                "tmp/",
                "usr/",
                "usr/bin/",
                "usr/bin/busybox",
            ]
        );
        for e in &entries {
            assert_eq!(e.mtime, OPTS.mtime, "{}", e.path);
            assert!(e.uname_empty, "{}", e.path);
            assert!(!e.source.is_empty(), "{}", e.path);
        }
        let by = |p: &str| entries.iter().find(|e| e.path == p).unwrap();
        // The hard-link group's first path carries the data with the file's metadata.
        let ls = by("bin/ls");
        assert_eq!(ls.kind, EntryType::Regular);
        assert_eq!((ls.data.as_slice(), ls.uid, ls.gid), (&b"ELF"[..], 10, 20));
        assert_eq!(ls.source, "link");
        for p in ["bin/sh", "usr/bin/busybox"] {
            assert_eq!(by(p).kind, EntryType::Link, "{p}");
            assert_eq!(by(p).link.as_deref(), Some("bin/ls"), "{p}");
            assert!(by(p).data.is_empty());
        }
        assert_eq!(by("usr/bin/busybox").source, "busybox");
        assert_eq!(by("tmp/").mode, 0o1777);
        assert_eq!(by("tmp/").kind, EntryType::Directory);
        assert_eq!(by("dev/console").dev, Some((5, 1)));
        assert_eq!(by("dev/sda").kind, EntryType::Block);
        assert_eq!(by("dev/sda").dev, Some((8, 0)));
        assert_eq!(by("run/p").kind, EntryType::Fifo);
        assert_eq!(by(&long).data, b"long");
        assert_eq!(
            by("lnk").link.as_deref(),
            Some(&*format!("/{}", "t".repeat(200)))
        );
        assert_eq!(by("etc/hosts").source, "gen");
        assert_eq!(by("etc/").source, "gen");
    }

    #[test]
    fn output_is_deterministic() {
        let a = write_tar(&sample(false), Vec::new(), &OPTS).unwrap();
        let b = write_tar(&sample(false), Vec::new(), &OPTS).unwrap();
        let c = write_tar(&sample(true), Vec::new(), &OPTS).unwrap();
        assert!(a == b, "same tree, different bytes");
        assert!(a == c, "insertion order changed the bytes");
        let d = write_tar(&sample(false), Vec::new(), &WriteOptions { mtime: 7 }).unwrap();
        assert!(a != d, "mtime ignored");
    }

    #[test]
    fn pax_record_lengths_are_self_inclusive() {
        for value_len in [0, 1, 5, 6, 7, 90, 94, 95, 96, 995, 996, 997] {
            let value = vec![b'v'; value_len];
            let mut out = Vec::new();
            pax_record(&mut out, "k", &value);
            let space = out.iter().position(|c| *c == b' ').unwrap();
            let stated: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(stated, out.len(), "value length {value_len}");
        }
    }

    #[test]
    fn ustar_prefix_split_and_pax_fallback() {
        // 150 bytes: fits by splitting into prefix and name, so no PAX path record.
        let split = format!("{}/{}", "a".repeat(90), "b".repeat(59));
        let mut h = Header::new_ustar();
        assert!(set_ustar_name(&mut h, split.as_bytes()));
        assert_eq!(h.path_bytes().as_ref(), split.as_bytes());
        // A final component over 100 bytes cannot be split.
        let unsplittable = format!("a/{}", "b".repeat(101));
        let mut h = Header::new_ustar();
        assert!(!set_ustar_name(&mut h, unsplittable.as_bytes()));

        let mut tree = Tree::new();
        tree.insert(&split, file(b"1", "g")).unwrap();
        tree.insert(&unsplittable, file(b"2", "g")).unwrap();
        let bytes = write_tar(&tree, Vec::new(), &OPTS).unwrap();
        let names: Vec<String> = read_back(&bytes).into_iter().map(|e| e.path).collect();
        assert_eq!(
            names,
            ["a/", &unsplittable, &format!("{}/", "a".repeat(90)), &split]
        );
    }

    #[test]
    fn gzipped_tar_is_stable() {
        let digest = || {
            let gz = crate::gzip_writer(Vec::new());
            let gz = write_tar(&sample(false), gz, &OPTS).unwrap();
            gz.finish().unwrap()
        };
        let a = digest();
        assert!(a == digest(), "gzip output changed between runs");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == write_tar(&sample(false), Vec::new(), &OPTS).unwrap());
    }

    #[test]
    fn system_tar_lists_the_archive() {
        // Cross-check with GNU tar when the machine has it (Debian always does).
        let Ok(version) = std::process::Command::new("tar").arg("--version").output() else {
            return;
        };
        assert!(version.status.success());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.tar");
        let bytes = write_tar(&sample(false), Vec::new(), &OPTS).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let out = std::process::Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(listing.contains("-rw-r--r-- 10/20"), "{listing}");
        // GNU tar notes unknown PAX keywords (LinuxKit's LINUXKIT.source gets the same).
        let stderr = String::from_utf8_lossy(&out.stderr);
        let other: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("unknown extended header keyword 'KEEL.source'"))
            .collect();
        assert!(other.is_empty(), "{stderr}");
        assert!(
            listing.contains(
                "hrw-r--r-- 10/20             0 2017-04-18 16:30 usr/bin/busybox link to bin/ls"
            ),
            "{listing}"
        );
        assert!(
            listing.contains("crw------- 0/0             5,1"),
            "{listing}"
        );
        assert!(listing.contains("drwxrwxrwt 0/0"), "{listing}");
        assert!(listing.contains(&"y".repeat(120)), "{listing}");
        assert_eq!(listing.lines().count(), 18, "{listing}");
    }

    /// keel's own tar reads back exactly: every node, owner, mode, link and origin, a `.wh.`
    /// name as a plain file, the global records; writing the tree again gives the same bytes.
    #[test]
    fn read_tar_round_trips_keels_own_archives() {
        let mut tree = sample(false);
        tree.insert("etc/.wh.not-a-whiteout", file(b"kept", "odd"))
            .unwrap();
        let mut xattr = file(b"cap", "caps");
        xattr
            .xattrs
            .insert("security.capability".into(), vec![1, 2, 3]);
        tree.insert("usr/bin/ping", xattr).unwrap();
        let globals = vec![("KEEL.input", b"sha256:abc".to_vec())];
        let bytes = write_tar_with(&tree, Vec::new(), &OPTS, &globals).unwrap();
        let (back, read_globals) =
            Tree::read_tar(&bytes[..], "test.tar", crate::SizeLimits::default()).unwrap();
        assert_eq!(
            read_globals.get("KEEL.input").map(Vec::as_slice),
            Some(&b"sha256:abc"[..])
        );
        assert_eq!(
            back.get("etc/.wh.not-a-whiteout")
                .map(|n| n.origin.as_ref()),
            Some("odd")
        );
        assert_eq!(
            back.get("usr/bin/busybox").map(|n| (n.uid, n.gid)),
            Some((10, 20))
        );
        let again = write_tar_with(&back, Vec::new(), &OPTS, &globals).unwrap();
        assert!(again == bytes, "the archive changed on the round trip");
        // Without globals the first entry is the tree's own.
        let plain = write_tar(&tree, Vec::new(), &OPTS).unwrap();
        assert_eq!(bytes.len() - plain.len(), 2 * BLOCK);
    }
}
