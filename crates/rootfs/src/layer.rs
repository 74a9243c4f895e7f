//! Applying an OCI image layer (an uncompressed tar) to a [`Tree`]: whiteouts, opaque
//! directories, replacement rules, and the refusals that keep a hostile layer inside the tree
//! or within its size limits.

use crate::Error;
use crate::tree::{Blocker, Key, LinkProblem, Node, NodeKind, Tree, bytes_path, join, parent_of};
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use tar::EntryType;

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const XATTR_PAX_PREFIX: &str = "SCHILY.xattr.";

/// The default for both [`SizeLimits`]: 4 GiB uncompressed. The tree holds every file in
/// memory, so this bounds what one image can make the host allocate, while leaving room for
/// the largest images a bootable system normally carries (a distribution kernel with all its
/// modules, a full Debian userland).
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 4 << 30;

/// Caps on the uncompressed bytes (the tar stream, headers included) that layers bring in.
///
/// A layer blob is small on the wire but can decompress to anything (a gzip of zeros grows a
/// thousandfold), and its tar is read into memory, so both are capped while reading: the
/// stream stops one byte past a limit, whatever the compressed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// One layer.
    pub layer: u64,
    /// All the layers of one image together.
    pub image: u64,
}

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits {
            layer: DEFAULT_MAX_IMAGE_SIZE,
            image: DEFAULT_MAX_IMAGE_SIZE,
        }
    }
}

/// What one image may still unpack: create one per image and pass it to each of its layers.
#[derive(Debug, Clone)]
pub struct ImageBudget {
    limits: SizeLimits,
    used: u64,
}

impl ImageBudget {
    pub fn new(limits: SizeLimits) -> Self {
        ImageBudget { limits, used: 0 }
    }

    /// Uncompressed bytes read so far from this image's layers.
    pub fn used(&self) -> u64 {
        self.used
    }
}

/// A reader that counts what it yields and fails rather than pass a limit.
struct Capped<R> {
    inner: R,
    /// Bytes this layer may yield: the smaller of the layer's limit and the image's remainder.
    allowed: u64,
    /// Which limit `allowed` comes from, for the error.
    scope: &'static str,
    limit: u64,
    read: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.allowed - self.read;
        if left == 0 {
            // Ending exactly at the limit is fine; one more byte passes it. That byte is all
            // that is ever asked of the decompressor beyond the limit.
            let mut probe = [0u8; 1];
            if buf.is_empty() || self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(io::Error::other(format!(
                "{} passes the size limit",
                self.scope
            )));
        }
        let max = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Why a layer path is refused.
enum BadPath {
    Absolute,
    Parent,
}

/// Splits a layer path into its meaningful components: `./` prefixes, empty components and
/// trailing slashes are accepted; absolute paths and `..` are refused.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, BadPath> {
    if raw.starts_with(b"/") {
        return Err(BadPath::Absolute);
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(BadPath::Parent),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// State for one layer being applied.
struct Apply<'a> {
    prefix: Vec<u8>,
    origin: &'a Arc<str>,
    /// Paths created or replaced by this layer: whiteouts and opaque markers spare them.
    ours: HashSet<Key>,
    /// Reading back keel's own tar ([`Tree::read_tar`]): no whiteouts, origins from the
    /// entries' records, and the archive's global records collected here.
    exact: Option<BTreeMap<String, Vec<u8>>>,
}

impl Tree {
    /// Applies one uncompressed tar layer under `prefix` (e.g. `containers/onboot/000-x/rootfs`,
    /// or the empty path for the root), with OCI semantics: `.wh.<name>` deletes `<name>` from
    /// earlier layers, `.wh..wh..opq` empties a directory of earlier layers' contents (wherever
    /// the marker appears in the tar), later entries replace earlier ones (a directory replacing
    /// a directory keeps its children). `origin` is recorded on every node.
    ///
    /// Refused, each with its own error naming `origin` and the entry: absolute paths, `..`
    /// components, entries below a symlink or non-directory, and hard links that are absolute,
    /// have `..` or point to nothing under `prefix`. Sockets and unknown entry types are skipped
    /// with a warning. On error the tree holds the entries applied so far.
    ///
    /// The layer is read to its end (past the tar's end-of-archive marker) within the default
    /// [`SizeLimits`]; use [`Tree::apply_layer_within`] to share a budget among an image's layers.
    pub fn apply_layer(
        &mut self,
        prefix: &Path,
        layer: impl Read,
        origin: &str,
    ) -> Result<(), Error> {
        let mut budget = ImageBudget::new(SizeLimits::default());
        self.apply_layer_within(prefix, layer, origin, &mut budget)
    }

    /// [`Tree::apply_layer`], counting the layer's uncompressed bytes against `budget`: reading
    /// stops with [`Error::SizeLimit`] as soon as the layer passes the layer limit or the image's
    /// layers together pass the image limit. The whole stream is read, trailing data included,
    /// so nothing is left for a caller to decompress without a limit.
    pub fn apply_layer_within(
        &mut self,
        prefix: &Path,
        layer: impl Read,
        origin: &str,
        budget: &mut ImageBudget,
    ) -> Result<(), Error> {
        self.apply_capped(prefix, layer, origin, budget, None)
    }

    fn apply_capped(
        &mut self,
        prefix: &Path,
        layer: impl Read,
        origin: &str,
        budget: &mut ImageBudget,
        globals: Option<&mut BTreeMap<String, Vec<u8>>>,
    ) -> Result<(), Error> {
        let image_left = budget.limits.image.saturating_sub(budget.used);
        let (allowed, scope, limit) = if budget.limits.layer <= image_left {
            (budget.limits.layer, "layer", budget.limits.layer)
        } else {
            (image_left, "image", budget.limits.image)
        };
        let mut capped = Capped {
            inner: layer,
            allowed,
            scope,
            limit,
            read: 0,
            exceeded: false,
        };
        let result = self.apply_tar(prefix, &mut capped, origin, globals);
        budget.used = budget.used.saturating_add(capped.read);
        if capped.exceeded {
            return Err(Error::SizeLimit {
                origin: origin.to_owned(),
                what: capped.scope,
                limit: capped.limit,
            });
        }
        result
    }

    /// Reads back a tar that [`write_tar_with`](crate::write_tar_with) wrote: every entry
    /// exactly as archived (a name starting `.wh.` is a file here, not a whiteout), each node's
    /// origin from its [`SOURCE_PAX_KEY`](crate::SOURCE_PAX_KEY) record, within `limits`.
    /// `name` names the archive in errors. Returns the tree and the archive's global records.
    pub fn read_tar(
        archive: impl Read,
        name: &str,
        limits: SizeLimits,
    ) -> Result<(Tree, BTreeMap<String, Vec<u8>>), Error> {
        let mut tree = Tree::new();
        let mut globals = BTreeMap::new();
        let mut budget = ImageBudget::new(limits);
        tree.apply_capped(
            Path::new(""),
            archive,
            name,
            &mut budget,
            Some(&mut globals),
        )?;
        Ok((tree, globals))
    }

    /// Applies the tar read from `layer`, then reads the rest of the stream; with `globals`,
    /// exactly (see [`Tree::read_tar`]), collecting the archive's global records there.
    fn apply_tar(
        &mut self,
        prefix: &Path,
        mut layer: impl Read,
        origin: &str,
        globals: Option<&mut BTreeMap<String, Vec<u8>>>,
    ) -> Result<(), Error> {
        let origin_arc: Arc<str> = origin.into();
        let prefix = match crate::tree::normalize(prefix.as_os_str().as_bytes()) {
            Some(p) => p,
            None => {
                return Err(Error::InvalidPath {
                    path: prefix.to_path_buf(),
                });
            }
        };
        if !prefix.is_empty() {
            if let Some(blocker) = self.dir_blocker(&prefix) {
                let (Blocker::Symlink(p) | Blocker::NotDir(p)) = blocker;
                return Err(Error::NotADirectory {
                    path: bytes_path(&prefix).to_path_buf(),
                    parent: bytes_path(&p).to_path_buf(),
                });
            }
            let template = Node::new(NodeKind::Dir, 0o755, origin_arc.clone());
            self.create_dirs(&prefix, &template, |_| {});
        }
        let mut state = Apply {
            prefix,
            origin: &origin_arc,
            ours: HashSet::new(),
            exact: globals.as_ref().map(|_| BTreeMap::new()),
        };
        let read_error = |source| Error::ReadLayer {
            origin: origin.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(&mut layer);
        for entry in archive.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            self.apply_entry(&mut state, &mut entry)?;
        }
        // A tar reader stops at the end-of-archive marker: what follows (padding, or a bomb of
        // zeros) is still decompressed when the blob's digest is checked, so read it here,
        // where it counts against the limits.
        io::copy(&mut layer, &mut io::sink()).map_err(read_error)?;
        if let (Some(out), Some(found)) = (globals, state.exact) {
            *out = found;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        state: &mut Apply<'_>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), Error> {
        let raw = entry.path_bytes().into_owned();
        let origin = state.origin;
        // keel's own tar: the entry's provenance record is its origin.
        let global = entry.header().entry_type() == EntryType::XGlobalHeader;
        let own_origin: Option<Arc<str>> = match state.exact {
            Some(_) if !global => entry
                .pax_extensions()
                .ok()
                .flatten()
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.key() == Ok(crate::SOURCE_PAX_KEY))
                .and_then(|e| e.value().ok().map(Arc::from)),
            _ => None,
        };
        let name = || String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw).map_err(|bad| match bad {
            BadPath::Absolute => Error::AbsolutePath {
                origin: origin.to_string(),
                entry: name(),
            },
            BadPath::Parent => Error::ParentComponent {
                origin: origin.to_string(),
                entry: name(),
            },
        })?;
        let kind = entry.header().entry_type();
        let Some((last, parents)) = comps.split_last() else {
            // The layer's root directory: its metadata applies to the prefix directory.
            if kind == EntryType::Directory && !state.prefix.is_empty() {
                let node = self.header_node(state, entry, NodeKind::Dir, &raw)?;
                let key = Key::new(&state.prefix);
                if self.place(key, node).is_err() {
                    log::warn!("{origin}: cannot apply root entry {:?}", name());
                }
            }
            return Ok(());
        };
        let dir = join(&state.prefix, parents.iter().copied());
        self.check_parent(&dir, origin, &raw)?;

        if state.exact.is_none() && last.starts_with(WHITEOUT) {
            if *last == OPAQUE {
                self.remove_lower(&dir, false, &state.ours);
            } else if last.starts_with(b".wh..wh.") {
                log::debug!("{origin}: skipping aufs metadata {:?}", name());
            } else {
                let hidden = &last[WHITEOUT.len()..];
                match hidden {
                    b"" | b"." => log::warn!("{origin}: skipping empty whiteout {:?}", name()),
                    b".." => {
                        return Err(Error::ParentComponent {
                            origin: origin.to_string(),
                            entry: name(),
                        });
                    }
                    _ => self.remove_lower(&join(&dir, [hidden]), true, &state.ours),
                }
            }
            return Ok(());
        }

        let node_kind = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // The header size is untrusted: reserve at most 64 MiB up front.
                let reserve = entry.size().min(1 << 26);
                let mut data = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
                entry
                    .read_to_end(&mut data)
                    .map_err(|source| Error::ReadLayer {
                        origin: origin.to_string(),
                        source,
                    })?;
                NodeKind::File(Bytes::from(data))
            }
            EntryType::Directory => NodeKind::Dir,
            EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) if !target.is_empty() => {
                    NodeKind::Symlink(bytes_path(&target).to_path_buf())
                }
                _ => {
                    log::warn!("{origin}: skipping symlink {:?} without target", name());
                    return Ok(());
                }
            },
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let tname = || String::from_utf8_lossy(&target).into_owned();
                let tcomps = components(&target).map_err(|_| Error::HardLinkEscape {
                    origin: origin.to_string(),
                    entry: name(),
                    target: tname(),
                })?;
                if tcomps.is_empty() {
                    return Err(Error::HardLinkMissing {
                        origin: origin.to_string(),
                        entry: name(),
                        target: tname(),
                    });
                }
                let full = join(&state.prefix, tcomps);
                NodeKind::HardLink(bytes_path(&full).to_path_buf())
            }
            EntryType::Char | EntryType::Block => {
                let field = |v: std::io::Result<Option<u32>>| {
                    v.map(Option::unwrap_or_default)
                        .map_err(|_| Error::InvalidField {
                            origin: origin.to_string(),
                            entry: name(),
                            field: "device number",
                        })
                };
                let major = field(entry.header().device_major())?;
                let minor = field(entry.header().device_minor())?;
                if kind == EntryType::Char {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                }
            }
            EntryType::Fifo => NodeKind::Fifo,
            EntryType::XGlobalHeader => {
                if let Some(globals) = &mut state.exact {
                    let records = entry.pax_extensions().map_err(|source| Error::ReadLayer {
                        origin: origin.to_string(),
                        source,
                    })?;
                    for record in records.into_iter().flatten().flatten() {
                        if let Ok(key) = record.key() {
                            globals.insert(key.to_owned(), record.value_bytes().to_vec());
                        }
                    }
                }
                return Ok(());
            }
            other => {
                log::warn!(
                    "{origin}: skipping {:?} of unsupported type {other:?} (sockets cannot be archived)",
                    name()
                );
                return Ok(());
            }
        };

        let mut node = self.header_node(state, entry, node_kind, &raw)?;
        if let Some(own) = own_origin {
            node.origin = own;
        }
        let key = join(&dir, [*last]);
        let template = Node::new(NodeKind::Dir, 0o755, origin.clone());
        let ours = &mut state.ours;
        self.create_dirs(&dir, &template, |k| {
            ours.insert(k);
        });
        let link_target = match &node.kind {
            NodeKind::HardLink(t) => String::from_utf8_lossy(t.as_os_str().as_bytes()).into_owned(),
            _ => String::new(),
        };
        let key = Key::new(&key);
        self.place(key.clone(), node)
            .map_err(|problem| match problem {
                LinkProblem::Missing => Error::HardLinkMissing {
                    origin: origin.to_string(),
                    entry: name(),
                    target: link_target.clone(),
                },
                LinkProblem::Directory => Error::HardLinkToDirectory {
                    origin: origin.to_string(),
                    entry: name(),
                    target: link_target.clone(),
                },
            })?;
        state.ours.insert(key);
        Ok(())
    }

    /// Refuses entries whose parent directory (or an ancestor) is a symlink or a non-directory.
    fn check_parent(&self, dir: &[u8], origin: &str, raw: &[u8]) -> Result<(), Error> {
        let entry = || String::from_utf8_lossy(raw).into_owned();
        match self.dir_blocker(dir) {
            None => Ok(()),
            Some(Blocker::Symlink(p)) => Err(Error::SymlinkParent {
                origin: origin.to_owned(),
                entry: entry(),
                parent: String::from_utf8_lossy(&p).into_owned(),
            }),
            Some(Blocker::NotDir(p)) => Err(Error::ParentNotDirectory {
                origin: origin.to_owned(),
                entry: entry(),
                parent: String::from_utf8_lossy(&p).into_owned(),
            }),
        }
    }

    /// The node for an entry: its kind plus mode, owner and extended attributes from the header.
    fn header_node<R: Read>(
        &self,
        state: &Apply<'_>,
        entry: &mut tar::Entry<'_, R>,
        kind: NodeKind,
        raw: &[u8],
    ) -> Result<Node, Error> {
        let invalid = |field| Error::InvalidField {
            origin: state.origin.to_string(),
            entry: String::from_utf8_lossy(raw).into_owned(),
            field,
        };
        let header = entry.header();
        let mode = header.mode().map_err(|_| invalid("mode"))?;
        let uid = header
            .uid()
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| invalid("uid"))?;
        let gid = header
            .gid()
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| invalid("gid"))?;
        let mut node = Node::new(kind, mode, state.origin.clone()).with_owner(uid, gid);
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for ext in extensions.flatten() {
                if let Ok(key) = ext.key()
                    && let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX)
                {
                    node.xattrs
                        .insert(name.to_owned(), ext.value_bytes().to_vec());
                }
            }
        }
        Ok(node)
    }

    /// Removes what earlier layers put at `root` (itself only if `include_self`) and below it,
    /// sparing this layer's entries and the directories that hold them.
    fn remove_lower(&mut self, root: &[u8], include_self: bool, ours: &HashSet<Key>) {
        let candidates = self.subtree(root, include_self);
        let mut keep: HashSet<&[u8]> = HashSet::new();
        for key in candidates.iter().filter(|k| ours.contains(*k)) {
            let mut path = key.bytes();
            while path.len() > root.len() && keep.insert(path) {
                path = parent_of(path);
            }
            if include_self && path == root {
                keep.insert(path);
            }
        }
        let doomed: Vec<Key> = candidates
            .iter()
            .filter(|k| !keep.contains(k.bytes()))
            .cloned()
            .collect();
        self.remove_keys(doomed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{E, layer};
    use crate::{WriteOptions, write_tar};

    fn apply(tree: &mut Tree, prefix: &str, entries: &[E<'_>], origin: &str) -> Result<(), Error> {
        tree.apply_layer(Path::new(prefix), &layer(entries)[..], origin)
    }

    fn paths(tree: &Tree) -> Vec<String> {
        tree.iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect()
    }

    fn data(tree: &Tree, path: &str) -> Vec<u8> {
        match &tree.get(path).unwrap().kind {
            NodeKind::File(b) => b.to_vec(),
            other => panic!("{path} is {other:?}"),
        }
    }

    #[test]
    fn applies_entries_under_prefix() {
        let mut tree = Tree::new();
        let entries = [
            E::Dir("./"),
            E::Dir("./etc/"),
            E::Owned("./etc/shadow", b"secret", 0o4640, 0, 42),
            E::File("usr/bin/tool", b"#!"),
            E::Symlink("bin", "usr/bin"),
            E::Char("dev/null", 1, 3),
            E::Fifo("run/fifo"),
        ];
        apply(&mut tree, "/c/rootfs/", &entries, "onboot[0] img").unwrap();
        assert_eq!(
            paths(&tree),
            [
                "c",
                "c/rootfs",
                "c/rootfs/bin",
                "c/rootfs/dev",
                "c/rootfs/dev/null",
                "c/rootfs/etc",
                "c/rootfs/etc/shadow",
                "c/rootfs/run",
                "c/rootfs/run/fifo",
                "c/rootfs/usr",
                "c/rootfs/usr/bin",
                "c/rootfs/usr/bin/tool",
            ]
        );
        let shadow = tree.get("c/rootfs/etc/shadow").unwrap();
        assert_eq!((shadow.mode, shadow.uid, shadow.gid), (0o4640, 0, 42));
        assert_eq!(&*shadow.origin, "onboot[0] img");
        assert_eq!(data(&tree, "c/rootfs/etc/shadow"), b"secret");
        assert_eq!(
            tree.get("c/rootfs/dev/null").unwrap().kind,
            NodeKind::CharDevice { major: 1, minor: 3 }
        );
        assert_eq!(
            tree.get("c/rootfs/bin").unwrap().kind,
            NodeKind::Symlink("usr/bin".into())
        );
        assert_eq!(tree.get("c/rootfs/run/fifo").unwrap().kind, NodeKind::Fifo);
    }

    #[test]
    fn whiteouts_remove_lower_entries() {
        let mut tree = Tree::new();
        let lower = [
            E::File("a/x", b"x"),
            E::File("a/y", b"y"),
            E::File("d/sub/deep", b"z"),
        ];
        apply(&mut tree, "", &lower, "lower").unwrap();
        let upper = [E::File("a/.wh.x", b""), E::File("./.wh.d", b"")];
        apply(&mut tree, "", &upper, "upper").unwrap();
        assert_eq!(paths(&tree), ["a", "a/y"]);
        // A whiteout of something absent is harmless.
        apply(&mut tree, "", &[E::File("a/.wh.nothing", b"")], "x").unwrap();
        assert_eq!(paths(&tree), ["a", "a/y"]);
    }

    #[test]
    fn opaque_directory_keeps_only_this_layer() {
        let mut tree = Tree::new();
        let lower = [
            E::File("d/old", b"1"),
            E::File("d/sub/old2", b"2"),
            E::File("d/keep/old3", b"3"),
            E::File("other", b"4"),
        ];
        apply(&mut tree, "", &lower, "lower").unwrap();
        // The marker comes after some of this layer's entries and before others.
        let upper = [
            E::File("d/new", b"n"),
            E::File("d/keep/new2", b"m"),
            E::File("d/.wh..wh..opq", b""),
            E::File("d/later", b"l"),
        ];
        apply(&mut tree, "", &upper, "upper").unwrap();
        assert_eq!(
            paths(&tree),
            ["d", "d/keep", "d/keep/new2", "d/later", "d/new", "other"]
        );
    }

    #[test]
    fn opaque_root_of_a_prefixed_layer() {
        let mut tree = Tree::new();
        apply(&mut tree, "p", &[E::File("a", b"1")], "lower").unwrap();
        apply(&mut tree, "", &[E::File("q", b"1")], "outside").unwrap();
        apply(
            &mut tree,
            "p",
            &[E::File(".wh..wh..opq", b""), E::File("b", b"2")],
            "up",
        )
        .unwrap();
        assert_eq!(paths(&tree), ["p", "p/b", "q"]);
    }

    #[test]
    fn replacement_rules() {
        let mut tree = Tree::new();
        let lower = [E::File("d/child", b"c"), E::File("f", b"file")];
        apply(&mut tree, "", &lower, "lower").unwrap();
        // A directory over a directory keeps children and takes the new metadata.
        let mut dir = layer(&[E::Dir("d")]);
        // Patch mode 0700 into the raw header (octal field at offset 100).
        dir[100..108].copy_from_slice(b"0000700\0");
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&dir[..512]);
        h.set_cksum();
        dir[..512].copy_from_slice(h.as_bytes());
        tree.apply_layer(Path::new(""), &dir[..], "mid").unwrap();
        let d = tree.get("d").unwrap();
        assert_eq!((d.mode, &*d.origin), (0o700, "mid"));
        assert!(tree.get("d/child").is_some());
        // A file over a directory removes the subtree; a directory over a file replaces it.
        let upper = [
            E::File("d", b"now a file"),
            E::Dir("f"),
            E::File("f/x", b"x"),
        ];
        apply(&mut tree, "", &upper, "upper").unwrap();
        assert_eq!(paths(&tree), ["d", "f", "f/x"]);
        assert_eq!(data(&tree, "d"), b"now a file");
        // Later entries of the same layer replace earlier ones.
        apply(
            &mut tree,
            "",
            &[E::File("g", b"1"), E::File("g", b"2")],
            "u",
        )
        .unwrap();
        assert_eq!(data(&tree, "g"), b"2");
    }

    fn refused(entries: &[E<'_>]) -> Error {
        let mut tree = Tree::new();
        apply(
            &mut tree,
            "pre",
            &[
                E::File("etc/passwd", b"root"),
                E::Symlink("lib", "/usr/lib"),
            ],
            "base",
        )
        .unwrap();
        let err = apply(&mut tree, "pre", entries, "services[2] evil:1").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("services[2] evil:1"), "{text}");
        err
    }

    #[test]
    fn refuses_parent_components() {
        for name in ["../escape", "a/../../escape", "a/.wh..."] {
            let err = refused(&[E::File(name, b"x")]);
            assert!(matches!(err, Error::ParentComponent { .. }), "{err}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn refuses_absolute_paths() {
        let err = refused(&[E::File("/etc/passwd", b"x")]);
        assert!(matches!(err, Error::AbsolutePath { .. }), "{err}");
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
    }

    #[test]
    fn refuses_symlinked_parents() {
        // A symlink from an earlier layer.
        let err = refused(&[E::File("lib/evil.so", b"x")]);
        assert!(matches!(err, Error::SymlinkParent { .. }), "{err}");
        assert!(err.to_string().contains("lib/evil.so"), "{err}");
        // A symlink from the same layer, and a whiteout through a symlink.
        let err = refused(&[E::Symlink("up", ".."), E::File("up/x", b"x")]);
        assert!(matches!(err, Error::SymlinkParent { .. }), "{err}");
        let err = refused(&[E::File("lib/.wh.libc.so", b"")]);
        assert!(matches!(err, Error::SymlinkParent { .. }), "{err}");
        // Below a regular file.
        let err = refused(&[E::File("etc/passwd/x", b"x")]);
        assert!(matches!(err, Error::ParentNotDirectory { .. }), "{err}");
    }

    #[test]
    fn refuses_escaping_hard_links() {
        for target in ["/etc/passwd", "../etc/passwd", "etc/../../x"] {
            let err = refused(&[E::Link("pw", target)]);
            assert!(matches!(err, Error::HardLinkEscape { .. }), "{err}");
            assert!(err.to_string().contains("\"pw\""), "{err}");
            assert!(err.to_string().contains(target), "{err}");
        }
        let err = refused(&[E::Link("pw", "etc/shadow")]);
        assert!(matches!(err, Error::HardLinkMissing { .. }), "{err}");
        let err = refused(&[E::Link("pw", "etc")]);
        assert!(matches!(err, Error::HardLinkToDirectory { .. }), "{err}");
    }

    #[test]
    fn hard_links_stay_within_their_prefix() {
        let mut tree = Tree::new();
        apply(&mut tree, "", &[E::File("etc/shadow", b"host")], "init").unwrap();
        let err = apply(&mut tree, "c/rootfs", &[E::Link("x", "etc/shadow")], "img").unwrap_err();
        assert!(matches!(err, Error::HardLinkMissing { .. }), "{err}");
        // Within the prefix a link resolves to the prefixed path.
        let entries = [E::File("etc/shadow", b"own"), E::Link("x", "./etc/shadow")];
        apply(&mut tree, "c/rootfs", &entries, "img").unwrap();
        assert_eq!(
            tree.get("c/rootfs/x").unwrap().kind,
            NodeKind::HardLink("c/rootfs/etc/shadow".into())
        );
    }

    #[test]
    fn whiteout_of_a_linked_file_keeps_the_link() {
        let mut tree = Tree::new();
        let lower = [
            E::File("bin/busybox", b"bb"),
            E::Link("bin/sh", "bin/busybox"),
        ];
        apply(&mut tree, "", &lower, "lower").unwrap();
        apply(&mut tree, "", &[E::File("bin/.wh.busybox", b"")], "upper").unwrap();
        assert_eq!(paths(&tree), ["bin", "bin/sh"]);
        assert_eq!(data(&tree, "bin/sh"), b"bb");
    }

    #[test]
    fn skips_unknown_types() {
        // Tar has no socket type: archivers write them as unknown types, if at all.
        let mut tree = Tree::new();
        let entries = [
            E::Typed("label", b'V'),
            E::Typed("weird", b'Z'),
            E::File("ok", b"1"),
        ];
        apply(&mut tree, "", &entries, "img").unwrap();
        assert_eq!(paths(&tree), ["ok"]);
    }

    #[test]
    fn gnu_long_names_and_links() {
        let long_dir = "d".repeat(120);
        let name = format!("{long_dir}/{}", "f".repeat(130));
        let link = format!("{long_dir}/{}", "l".repeat(110));
        let entries = [E::File(&name, b"long"), E::Symlink(&link, &name)];
        let mut tree = Tree::new();
        apply(&mut tree, "", &entries, "img").unwrap();
        assert_eq!(data(&tree, &name), b"long");
        assert_eq!(
            tree.get(&link).unwrap().kind,
            NodeKind::Symlink(name.clone().into())
        );
    }

    /// A reader that counts the bytes it hands out.
    struct Counting<R> {
        inner: R,
        n: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.n += n as u64;
            Ok(n)
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn limits(layer: u64, image: u64) -> ImageBudget {
        ImageBudget::new(SizeLimits { layer, image })
    }

    #[test]
    fn gzip_bomb_stops_at_the_layer_limit() {
        // 8 MiB of zeros compress to a few KiB; the tar reader sees an end-of-archive block at
        // once, so only reading past the marker finds the bulk.
        let bomb = gzip(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 64 << 10);
        let mut decoded = Counting {
            inner: flate2::read::GzDecoder::new(&bomb[..]),
            n: 0,
        };
        let mut tree = Tree::new();
        let mut budget = limits(64 << 10, 1 << 30);
        let err = tree
            .apply_layer_within(Path::new(""), &mut decoded, "onboot[0] evil:1", &mut budget)
            .unwrap_err();
        assert!(
            matches!(err, Error::SizeLimit { what: "layer", limit, .. } if limit == 64 << 10),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "onboot[0] evil:1: layer passes the limit of 64 KiB uncompressed; raise it with `keel build --max-image-size SIZE`"
        );
        // Refused when passed, not after: one byte beyond the limit was decompressed.
        assert_eq!(decoded.n, (64 << 10) + 1);
        assert_eq!(budget.used(), 64 << 10);
        // An endless stream ends the same way.
        let err = tree
            .apply_layer_within(
                Path::new(""),
                io::repeat(0),
                "x",
                &mut limits(4096, 1 << 30),
            )
            .unwrap_err();
        assert!(matches!(err, Error::SizeLimit { .. }), "{err}");
    }

    #[test]
    fn a_layer_may_reach_its_limit_but_not_pass_it() {
        let tar = layer(&[E::File("big", &[7u8; 3000])]);
        let size = tar.len() as u64;
        let mut tree = Tree::new();
        let mut budget = limits(size, size);
        tree.apply_layer_within(Path::new(""), &tar[..], "img", &mut budget)
            .unwrap();
        assert_eq!(budget.used(), size);
        let err = tree
            .apply_layer_within(Path::new(""), &tar[..], "img", &mut limits(size - 1, size))
            .unwrap_err();
        assert!(
            matches!(err, Error::SizeLimit { what: "layer", .. }),
            "{err}"
        );
        // Trailing data after the end-of-archive marker counts.
        let mut padded = tar.clone();
        padded.extend_from_slice(&[0u8; 1024]);
        let err = tree
            .apply_layer_within(
                Path::new(""),
                &padded[..],
                "img",
                &mut limits(size, 1 << 20),
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::SizeLimit { what: "layer", .. }),
            "{err}"
        );
    }

    #[test]
    fn many_files_pass_the_image_limit_across_layers() {
        let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let data = [1u8; 1024];
        let files = |range: std::ops::Range<usize>| -> Vec<u8> {
            let entries: Vec<E<'_>> = names[range].iter().map(|n| E::File(n, &data)).collect();
            layer(&entries)
        };
        // Each file is a 512-byte header and 1 KiB of data: 20 files are about 31 KiB.
        let mut tree = Tree::new();
        let mut budget = limits(1 << 20, 48 << 10);
        tree.apply_layer_within(
            Path::new(""),
            &files(0..20)[..],
            "services[1] big:2",
            &mut budget,
        )
        .unwrap();
        let err = tree
            .apply_layer_within(
                Path::new(""),
                &files(20..40)[..],
                "services[1] big:2",
                &mut budget,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "services[1] big:2: image passes the limit of 48 KiB uncompressed; raise it with `keel build --max-image-size SIZE`"
        );
        assert_eq!(budget.used(), 48 << 10);
        // The second layer alone fits under the same limits.
        tree.apply_layer_within(
            Path::new(""),
            &files(20..40)[..],
            "x",
            &mut limits(1 << 20, 48 << 10),
        )
        .unwrap();
    }

    #[test]
    fn pax_long_names_and_xattrs_round_trip() {
        let long = format!("{}/{}", "p".repeat(160), "q".repeat(150));
        let mut src = Tree::new();
        let mut node = Node::new(NodeKind::File(Bytes::from_static(b"cap")), 0o755, "gen");
        node.xattrs
            .insert("security.capability".into(), vec![1, 0, 0, 2, 0xff]);
        src.insert(&long, node).unwrap();
        src.insert(
            "s",
            Node::new(NodeKind::Symlink(long.clone().into()), 0o777, "gen"),
        )
        .unwrap();
        let bytes = write_tar(&src, Vec::new(), &WriteOptions { mtime: 1 }).unwrap();

        let mut tree = Tree::new();
        tree.apply_layer(Path::new("x"), &bytes[..], "copy")
            .unwrap();
        let got = tree.get(format!("x/{long}")).unwrap();
        assert_eq!(got.kind, NodeKind::File(Bytes::from_static(b"cap")));
        assert_eq!(got.xattrs["security.capability"], [1, 0, 0, 2, 0xff]);
        assert_eq!(
            tree.get("x/s").unwrap().kind,
            NodeKind::Symlink(long.into())
        );
    }
}
