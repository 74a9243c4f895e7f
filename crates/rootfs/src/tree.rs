//! The in-memory filesystem: nodes keyed by normalised relative path, kept in component order
//! (every directory before its contents), plus the hard-link bookkeeping that keeps links valid
//! when their target is removed or replaced.

use crate::Error;
use bytes::Bytes;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a [`Node`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file and its contents.
    File(Bytes),
    /// A directory; its children are the tree entries below its path.
    Dir,
    /// A symbolic link and its target, stored verbatim (it may be absolute: it is never followed).
    Symlink(PathBuf),
    /// A hard link to the regular file at this normalised tree path. The tree keeps the target a
    /// [`NodeKind::File`]; writers take mode and owner from the target, not from the link node.
    HardLink(PathBuf),
    /// A character device.
    CharDevice { major: u32, minor: u32 },
    /// A block device.
    BlockDevice { major: u32, minor: u32 },
    /// A named pipe.
    Fifo,
}

/// One filesystem object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The object's type and payload.
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`); type bits are ignored.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Extended attributes (e.g. `security.capability`), written to tar as `SCHILY.xattr.*`.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Provenance, e.g. `onboot[1] docker.io/library/alpine:3.19`.
    pub origin: Arc<str>,
}

impl Node {
    /// A node owned by root:root with no extended attributes.
    pub fn new(kind: NodeKind, mode: u32, origin: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    /// The same node with another owner.
    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Whether this node is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir)
    }
}

/// A tree path in `/`-separated form whose order puts `/` below every other byte, so that a
/// directory's descendants follow it contiguously (component-wise order, like a depth-first walk).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(Box<[u8]>);

impl Key {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn path(&self) -> &Path {
        bytes_path(&self.0)
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_paths(&self.0, &other.0)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Component-wise path order: `a` < `a/b` < `a-b`.
pub(crate) fn cmp_paths(a: &[u8], b: &[u8]) -> Ordering {
    let rank = |c: &u8| {
        if *c == b'/' { 0u16 } else { u16::from(*c) + 1 }
    };
    a.iter().map(rank).cmp(b.iter().map(rank))
}

pub(crate) fn bytes_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// The parent of a normalised path (`""` for top-level entries).
pub(crate) fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|c| *c == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

/// Joins a normalised prefix (possibly empty) and components.
pub(crate) fn join<'a>(prefix: &[u8], components: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = prefix.to_vec();
    for c in components {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

fn is_descendant(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

/// Normalises a caller-supplied path: a leading `/` and `.` components are dropped, `..` is
/// refused (`None`). The root normalises to the empty string.
pub(crate) fn normalize(path: &[u8]) -> Option<Vec<u8>> {
    let mut components = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => components.push(c),
        }
    }
    Some(join(b"", components))
}

/// Why a directory path cannot hold children.
pub(crate) enum Blocker {
    Symlink(Vec<u8>),
    NotDir(Vec<u8>),
}

/// Why a hard link cannot point where it was asked to.
pub(crate) enum LinkProblem {
    Missing,
    Directory,
}

/// An in-memory filesystem tree. Paths are relative, normalised and never contain `..`; the
/// root itself is implicit. Every node's parent exists and is a directory.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<Key, Node>,
    /// Regular file path -> paths of the hard links to it.
    links: BTreeMap<Key, BTreeSet<Key>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `node` at `path`, creating missing parents as 0755 root:root directories. A directory
    /// replacing a directory keeps its children and takes the new metadata; anything else
    /// replaces the whole subtree. A [`NodeKind::HardLink`] target must already be in the tree.
    pub fn insert(&mut self, path: impl AsRef<Path>, node: Node) -> Result<(), Error> {
        let path = path.as_ref();
        let key = user_key(path)?;
        let parent = parent_of(&key).to_vec();
        if let Some(blocker) = self.dir_blocker(&parent) {
            let (Blocker::Symlink(p) | Blocker::NotDir(p)) = blocker;
            return Err(Error::NotADirectory {
                path: path.to_path_buf(),
                parent: bytes_path(&p).to_path_buf(),
            });
        }
        let mut node = node;
        let mut link_target = PathBuf::new();
        if let NodeKind::HardLink(target) = &node.kind {
            link_target.clone_from(target);
            let normalized = user_key(target)?;
            node.kind = NodeKind::HardLink(bytes_path(&normalized).to_path_buf());
        }
        let template = Node::new(NodeKind::Dir, 0o755, node.origin.clone());
        self.create_dirs(&parent, &template, |_| {});
        self.place(Key(key.into()), node)
            .map_err(|_| Error::BadHardLink {
                path: path.to_path_buf(),
                target: link_target,
            })
    }

    /// Creates `path` and its missing parents as directories with this mode and owner, like
    /// `mkdir -p`; existing directories are left unchanged.
    pub fn mkdir_all(
        &mut self,
        path: impl AsRef<Path>,
        mode: u32,
        uid: u32,
        gid: u32,
        origin: &str,
    ) -> Result<(), Error> {
        let path = path.as_ref();
        let key = user_key(path)?;
        if let Some(blocker) = self.dir_blocker(&key) {
            let (Blocker::Symlink(p) | Blocker::NotDir(p)) = blocker;
            return Err(Error::NotADirectory {
                path: path.to_path_buf(),
                parent: bytes_path(&p).to_path_buf(),
            });
        }
        let template = Node::new(NodeKind::Dir, mode, origin).with_owner(uid, gid);
        self.create_dirs(&key, &template, |_| {});
        Ok(())
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Node> {
        let key = normalize(path.as_ref().as_os_str().as_bytes())?;
        self.nodes.get(&Key(key.into()))
    }

    /// Removes `path` and everything below it; returns whether anything was removed. Hard
    /// links to a removed file survive: one of them takes over the file's contents.
    pub fn remove(&mut self, path: impl AsRef<Path>) -> bool {
        match normalize(path.as_ref().as_os_str().as_bytes()) {
            Some(key) if !key.is_empty() => {
                let keys = self.subtree(&key, true);
                let removed = !keys.is_empty();
                self.remove_keys(keys);
                removed
            }
            _ => false,
        }
    }

    /// All nodes in write order: sorted component-wise, every directory before its contents.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Node)> {
        self.nodes.iter().map(|(k, n)| (k.path(), n))
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The total size of regular file contents, each hard-linked file counted once.
    pub fn total_size(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.kind {
                NodeKind::File(data) => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    pub(crate) fn node(&self, key: &[u8]) -> Option<&Node> {
        self.nodes.get(&Key::new(key))
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&Key, &Node)> {
        self.nodes.iter()
    }

    /// Hard-link groups: each regular file with links, and the paths of its links.
    pub(crate) fn link_groups(&self) -> impl Iterator<Item = (&Key, &BTreeSet<Key>)> {
        self.links.iter()
    }

    /// The first path in `dir` and its ancestors that cannot hold children, if any.
    pub(crate) fn dir_blocker(&self, dir: &[u8]) -> Option<Blocker> {
        if dir.is_empty() {
            return None;
        }
        let ends = dir
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == b'/')
            .map(|(i, _)| i)
            .chain(std::iter::once(dir.len()));
        for end in ends {
            let path = &dir[..end];
            match self.nodes.get(&Key::new(path)).map(|n| &n.kind) {
                // Nothing exists below a missing path.
                None => return None,
                Some(NodeKind::Dir) => {}
                Some(NodeKind::Symlink(_)) => return Some(Blocker::Symlink(path.to_vec())),
                Some(_) => return Some(Blocker::NotDir(path.to_vec())),
            }
        }
        None
    }

    /// Creates `dir` and its missing ancestors as copies of `template`; `created` sees each new
    /// path. Callers check [`Tree::dir_blocker`] first.
    pub(crate) fn create_dirs(
        &mut self,
        dir: &[u8],
        template: &Node,
        mut created: impl FnMut(Key),
    ) {
        if dir.is_empty() {
            return;
        }
        let ends = dir
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == b'/')
            .map(|(i, _)| i)
            .chain(std::iter::once(dir.len()));
        for end in ends {
            let key = Key::new(&dir[..end]);
            if !self.nodes.contains_key(&key) {
                self.nodes.insert(key.clone(), template.clone());
                created(key);
            }
        }
    }

    /// Puts `node` at `key` with the replacement rules of [`Tree::insert`]. A hard link's target
    /// must be a normalised tree path; links to links are flattened, links to other non-files
    /// become copies. The parent must exist.
    pub(crate) fn place(&mut self, key: Key, mut node: Node) -> Result<(), LinkProblem> {
        node.mode &= 0o7777;
        if let Some(existing) = self.nodes.get_mut(&key) {
            if existing.is_dir() && node.is_dir() {
                *existing = node;
                return Ok(());
            }
            let keys = self.subtree(key.bytes(), true);
            self.remove_keys(keys);
        }
        if let NodeKind::HardLink(target) = &node.kind {
            let target = Key::new(target.as_os_str().as_bytes());
            let found = self.nodes.get(&target).ok_or(LinkProblem::Missing)?;
            match &found.kind {
                NodeKind::Dir => return Err(LinkProblem::Directory),
                NodeKind::File(_) => self.link(key.clone(), target, &mut node),
                NodeKind::HardLink(file) => {
                    let file = Key::new(file.as_os_str().as_bytes());
                    self.link(key.clone(), file, &mut node);
                }
                _ => {
                    // Only regular files share an inode here; a link to anything else is a copy.
                    node.kind = found.kind.clone();
                    node.mode = found.mode;
                    node.uid = found.uid;
                    node.gid = found.gid;
                    node.xattrs = found.xattrs.clone();
                }
            }
        }
        self.nodes.insert(key, node);
        Ok(())
    }

    fn link(&mut self, link: Key, file: Key, node: &mut Node) {
        node.kind = NodeKind::HardLink(file.path().to_path_buf());
        self.links.entry(file).or_default().insert(link);
    }

    /// `root` (if `include_self`) and all its descendants, in order.
    pub(crate) fn subtree(&self, root: &[u8], include_self: bool) -> Vec<Key> {
        if root.is_empty() {
            return self.nodes.keys().cloned().collect();
        }
        let start = Key::new(root);
        let mut out = Vec::new();
        if include_self && self.nodes.contains_key(&start) {
            out.push(start.clone());
        }
        out.extend(
            self.nodes
                .range((Bound::Excluded(&start), Bound::Unbounded))
                .map(|(k, _)| k)
                .take_while(|k| is_descendant(k.bytes(), root))
                .cloned(),
        );
        out
    }

    /// Removes exactly these keys (not their descendants), keeping hard links valid: when a
    /// linked file goes, its first surviving link becomes the file.
    pub(crate) fn remove_keys(&mut self, keys: Vec<Key>) {
        let mut removed = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(node) = self.nodes.remove(&key) {
                removed.push((key, node));
            }
        }
        for (key, node) in &removed {
            if let NodeKind::HardLink(target) = &node.kind {
                let target = Key::new(target.as_os_str().as_bytes());
                if let Some(set) = self.links.get_mut(&target) {
                    set.remove(key);
                    if set.is_empty() {
                        self.links.remove(&target);
                    }
                }
            }
        }
        for (key, node) in removed {
            if !matches!(node.kind, NodeKind::File(_)) {
                continue;
            }
            let Some(survivors) = self.links.remove(&key) else {
                continue;
            };
            let mut survivors = survivors.into_iter();
            let Some(heir) = survivors.next() else {
                continue;
            };
            let rest: BTreeSet<Key> = survivors.collect();
            if let Some(h) = self.nodes.get_mut(&heir) {
                h.kind = node.kind;
                h.mode = node.mode;
                h.uid = node.uid;
                h.gid = node.gid;
                h.xattrs = node.xattrs;
            }
            for other in &rest {
                if let Some(o) = self.nodes.get_mut(other) {
                    o.kind = NodeKind::HardLink(heir.path().to_path_buf());
                }
            }
            if !rest.is_empty() {
                self.links.insert(heir, rest);
            }
        }
    }
}

/// Normalises a helper's path argument, refusing `..` and the root.
fn user_key(path: &Path) -> Result<Vec<u8>, Error> {
    match normalize(path.as_os_str().as_bytes()) {
        Some(key) if !key.is_empty() => Ok(key),
        _ => Err(Error::InvalidPath {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str) -> Node {
        Node::new(NodeKind::File(Bytes::from(data.to_owned())), 0o644, "test")
    }

    fn paths(tree: &Tree) -> Vec<String> {
        tree.iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn order_is_component_wise() {
        let mut tree = Tree::new();
        for p in ["a-b", "a/b", "a/b/c", "a.x", "a"] {
            if p == "a" || p == "a/b" {
                tree.mkdir_all(p, 0o755, 0, 0, "test").unwrap();
            } else {
                tree.insert(p, file(p)).unwrap();
            }
        }
        assert_eq!(paths(&tree), ["a", "a/b", "a/b/c", "a-b", "a.x"]);
    }

    #[test]
    fn insert_creates_parents_and_normalises() {
        let mut tree = Tree::new();
        tree.insert("/usr/./bin//ls", file("ls")).unwrap();
        assert_eq!(paths(&tree), ["usr", "usr/bin", "usr/bin/ls"]);
        let usr = tree.get("usr").unwrap();
        assert!(usr.is_dir());
        assert_eq!((usr.mode, usr.uid, usr.gid), (0o755, 0, 0));
        assert!(tree.get("/usr/bin/ls").is_some());
        assert!(matches!(
            tree.insert("a/../b", file("x")),
            Err(Error::InvalidPath { .. })
        ));
        assert!(matches!(
            tree.insert("/", file("x")),
            Err(Error::InvalidPath { .. })
        ));
    }

    #[test]
    fn insert_below_file_fails() {
        let mut tree = Tree::new();
        tree.insert("etc", file("x")).unwrap();
        let err = tree.insert("etc/hosts", file("y")).unwrap_err();
        assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
        let err = tree.mkdir_all("etc/x/y", 0o700, 0, 0, "t").unwrap_err();
        assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn mkdir_all_keeps_existing() {
        let mut tree = Tree::new();
        tree.mkdir_all("var", 0o700, 5, 5, "first").unwrap();
        tree.mkdir_all("var/lib/x", 0o750, 1, 2, "second").unwrap();
        let var = tree.get("var").unwrap();
        assert_eq!((var.mode, var.uid, &*var.origin), (0o700, 5, "first"));
        let x = tree.get("var/lib/x").unwrap();
        assert_eq!((x.mode, x.uid, x.gid, &*x.origin), (0o750, 1, 2, "second"));
    }

    #[test]
    fn replacement_rules() {
        let mut tree = Tree::new();
        tree.insert("d/child", file("c")).unwrap();
        // A directory replacing a directory keeps children, takes metadata.
        tree.insert("d", Node::new(NodeKind::Dir, 0o700, "new").with_owner(3, 4))
            .unwrap();
        let d = tree.get("d").unwrap();
        assert_eq!((d.mode, d.uid, d.gid, &*d.origin), (0o700, 3, 4, "new"));
        assert!(tree.get("d/child").is_some());
        // A file replacing a directory removes the subtree.
        tree.insert("d", file("now a file")).unwrap();
        assert_eq!(paths(&tree), ["d"]);
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn remove_subtree_and_sizes() {
        let mut tree = Tree::new();
        tree.insert("a/b/c", file("123")).unwrap();
        tree.insert("a/d", file("45")).unwrap();
        tree.insert("ab", file("6")).unwrap();
        assert_eq!(tree.total_size(), 6);
        assert!(tree.remove("a/b"));
        assert!(!tree.remove("a/b"));
        assert_eq!(paths(&tree), ["a", "a/d", "ab"]);
        assert_eq!(tree.total_size(), 3);
        assert!(!tree.is_empty());
    }

    #[test]
    fn removing_a_linked_file_promotes_a_link() {
        let mut tree = Tree::new();
        tree.insert("z/file", file("data").with_owner(7, 8))
            .unwrap();
        let link = |t: &str| Node::new(NodeKind::HardLink(t.into()), 0, "l");
        tree.insert("b", link("z/file")).unwrap();
        tree.insert("a", link("/z/file")).unwrap();
        // A link to a link points at the file.
        tree.insert("c", link("a")).unwrap();
        assert_eq!(
            tree.get("c").unwrap().kind,
            NodeKind::HardLink("z/file".into())
        );
        assert_eq!(tree.total_size(), 4);

        assert!(tree.remove("z"));
        let a = tree.get("a").unwrap();
        assert_eq!(a.kind, NodeKind::File(Bytes::from_static(b"data")));
        assert_eq!((a.uid, a.gid), (7, 8));
        assert_eq!(tree.get("b").unwrap().kind, NodeKind::HardLink("a".into()));
        assert_eq!(tree.get("c").unwrap().kind, NodeKind::HardLink("a".into()));
        assert_eq!(tree.total_size(), 4);

        // Replacing the new file with another file leaves the links on the old contents.
        tree.insert("a", file("xy")).unwrap();
        assert_eq!(
            tree.get("b").unwrap().kind,
            NodeKind::File(Bytes::from_static(b"data"))
        );
        assert_eq!(tree.get("c").unwrap().kind, NodeKind::HardLink("b".into()));
    }

    #[test]
    fn bad_hard_links_are_refused() {
        let mut tree = Tree::new();
        tree.mkdir_all("dir", 0o755, 0, 0, "t").unwrap();
        let link = |t: &str| Node::new(NodeKind::HardLink(t.into()), 0, "l");
        assert!(matches!(
            tree.insert("x", link("missing")),
            Err(Error::BadHardLink { .. })
        ));
        assert!(matches!(
            tree.insert("x", link("dir")),
            Err(Error::BadHardLink { .. })
        ));
        assert!(tree.get("x").is_none());
        // A hard link to a symlink becomes a copy of it.
        tree.insert("s", Node::new(NodeKind::Symlink("/etc".into()), 0o777, "t"))
            .unwrap();
        tree.insert("x", link("s")).unwrap();
        assert_eq!(
            tree.get("x").unwrap().kind,
            NodeKind::Symlink("/etc".into())
        );
    }
}
