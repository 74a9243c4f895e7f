//! The crate's error type: one enum for tree edits, layer application, writers and files.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in this crate. Layer variants name the layer's origin and the
/// offending tar entry so that a user can tell which image to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer entry has an absolute path.
    #[error("{origin}: entry {entry:?} has an absolute path")]
    AbsolutePath { origin: String, entry: String },
    /// A layer entry's path has a `..` component.
    #[error("{origin}: entry {entry:?} has a '..' component")]
    ParentComponent { origin: String, entry: String },
    /// A layer entry lies below a symlink already in the tree (it is refused, not followed).
    #[error("{origin}: entry {entry:?} lies below symlink {parent:?}")]
    SymlinkParent {
        origin: String,
        entry: String,
        parent: String,
    },
    /// A layer entry lies below something that is not a directory.
    #[error("{origin}: entry {entry:?} lies below non-directory {parent:?}")]
    ParentNotDirectory {
        origin: String,
        entry: String,
        parent: String,
    },
    /// A hard link's target is absolute or has a `..` component.
    #[error("{origin}: hard link {entry:?} escapes the layer with target {target:?}")]
    HardLinkEscape {
        origin: String,
        entry: String,
        target: String,
    },
    /// A hard link's target is not in the tree (under the same prefix).
    #[error("{origin}: hard link {entry:?} points to missing {target:?}")]
    HardLinkMissing {
        origin: String,
        entry: String,
        target: String,
    },
    /// A hard link's target is a directory.
    #[error("{origin}: hard link {entry:?} points to directory {target:?}")]
    HardLinkToDirectory {
        origin: String,
        entry: String,
        target: String,
    },
    /// A layer entry has a header field that cannot be represented (e.g. a 64-bit uid).
    #[error("{origin}: entry {entry:?} has an invalid {field}")]
    InvalidField {
        origin: String,
        entry: String,
        field: &'static str,
    },
    /// A layer, or an image's layers together, decompress to more than the limit allows.
    #[error(
        "{origin}: {what} passes the limit of {} uncompressed; raise it with `keel build --max-image-size SIZE`",
        size_text(*limit)
    )]
    SizeLimit {
        origin: String,
        /// `layer` or `image`: which limit was passed.
        what: &'static str,
        limit: u64,
    },
    /// Reading the layer stream failed (I/O or a malformed tar).
    #[error("{origin}: cannot read layer")]
    ReadLayer {
        origin: String,
        #[source]
        source: io::Error,
    },
    /// A path given to a tree helper is empty (the root) or has a `..` component.
    #[error("invalid tree path {path:?}")]
    InvalidPath { path: PathBuf },
    /// A tree helper was asked to put something below a non-directory.
    #[error("{path:?} lies below non-directory {parent:?}")]
    NotADirectory { path: PathBuf, parent: PathBuf },
    /// A hard link inserted by a helper (or found by a writer) has no usable target.
    #[error("hard link {path:?} has no usable target {target:?}")]
    BadHardLink { path: PathBuf, target: PathBuf },
    /// A value does not fit the archive format.
    #[error("{path:?}: {what} too large for {format}")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        format: &'static str,
    },
    /// `sqfstar` (squashfs-tools) could not be run.
    #[error("cannot run sqfstar (install squashfs-tools)")]
    SquashfsTool(#[source] io::Error),
    /// `sqfstar` failed; its messages.
    #[error("sqfstar failed: {0}")]
    Squashfs(String),
    /// Writing an archive failed.
    #[error("cannot write archive")]
    Write(#[source] io::Error),
    /// Creating or committing an output file failed.
    #[error("cannot {op} {path:?}")]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A byte count as a user would write it: `4 GiB`, `512 MiB`, else `N bytes`.
fn size_text(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}
