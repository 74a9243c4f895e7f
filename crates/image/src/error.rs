//! The error type of store, pull, import and export operations.

use crate::arch::Arch;
use crate::blob::CorruptBlob;
use crate::digest::{Digest, DigestError};
use crate::layer::DiffIdMismatch;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use std::io;
use std::path::PathBuf;

/// What can go wrong reading or writing the image store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done ("read", "create", …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No cache directory could be determined.
    #[error("no image store location: set KEEL_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// A JSON document (index, manifest, config, …) could not be parsed or written.
    #[error("invalid {what}")]
    Json {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The reference is not in the store.
    #[error("image {reference} is not in the store at {}; pull or import it", store.display())]
    NotFound {
        /// The normalised reference.
        reference: String,
        /// The store's directory.
        store: PathBuf,
    },
    /// A blob the image needs is not in the store.
    #[error(
        "blob {digest}{} is not in the store; pull the image again",
        of_image(image)
    )]
    BlobNotFound {
        /// The missing blob.
        digest: Digest,
        /// The image it belongs to, when known.
        image: Option<String>,
    },
    /// A blob's content does not match its digest.
    #[error("blob {}{} is corrupt: expected {}, got {}; remove the image and pull it again",
        blob.digest, of_image(image), blob.digest, blob.actual)]
    Corrupt {
        /// Which blob and what it hashed to.
        blob: CorruptBlob,
        /// The image it belongs to, when known.
        image: Option<String>,
    },
    /// A layer's uncompressed content does not match its image config's `rootfs.diff_ids`.
    #[error(transparent)]
    DiffIdMismatch(DiffIdMismatch),
    /// The store's `index.json` is not valid JSON, or not an image index. The store is
    /// damaged: this is not [`Error::NotFound`], and pulling does not repair it.
    #[error(
        "the image store's index.json at {} is corrupt: {reason}; remove the store (`keel cache clean`, or delete {}) or restore the file",
        path.display(),
        path.parent().unwrap_or(path).display()
    )]
    CorruptIndex {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (the JSON parser's message, with line and column).
        reason: String,
    },
    /// A multi-platform image has no manifest for the requested architecture.
    #[error("image {reference} has no linux/{arch} manifest (available: {})",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
    NoPlatform {
        /// The image.
        reference: String,
        /// The architecture asked for.
        arch: Arch,
        /// The `os/arch[/variant]` platforms the index lists.
        available: Vec<String>,
    },
    /// A single-platform image is for another architecture.
    #[error("image {reference} is for {found}, not linux/{arch}")]
    WrongPlatform {
        /// The image.
        reference: String,
        /// The architecture asked for.
        arch: Arch,
        /// The image's `os/arch`.
        found: String,
    },
    /// A document has a media type keel does not handle.
    #[error("{what} has unsupported media type {media_type}")]
    UnsupportedMediaType {
        /// Which document.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// Content is structurally wrong (bad archive member, inconsistent manifest, …).
    #[error("{what}: {reason}")]
    Invalid {
        /// Which input.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A reference could not be parsed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A digest could not be parsed.
    #[error("{what}")]
    Digest {
        /// Where the digest came from.
        what: String,
        /// The cause.
        #[source]
        source: DigestError,
    },
    /// Pulling from a registry failed.
    #[error("cannot pull {reference}")]
    Pull {
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: RegistryError,
    },
    /// Pushing to a registry failed.
    #[error("cannot push to {reference}")]
    Push {
        /// The destination.
        reference: String,
        /// The cause.
        #[source]
        source: RegistryError,
    },
    /// Building an OCI document failed.
    #[error("cannot build {what}")]
    Oci {
        /// Which document.
        what: &'static str,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

fn of_image(image: &Option<String>) -> String {
    image
        .as_ref()
        .map(|i| format!(" of {i}"))
        .unwrap_or_default()
}

impl Error {
    /// Attach the image name to blob errors that do not carry one yet.
    pub fn for_image(self, image: &str) -> Error {
        match self {
            Error::Corrupt { blob, image: None } => Error::Corrupt {
                blob,
                image: Some(image.to_owned()),
            },
            Error::BlobNotFound {
                digest,
                image: None,
            } => Error::BlobNotFound {
                digest,
                image: Some(image.to_owned()),
            },
            other => other,
        }
    }

    /// Whether the error means "not in the store" (the image or one of its blobs), so that
    /// pulling the image may fix it.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. } | Error::BlobNotFound { .. })
    }

    /// Whether the store itself is damaged ([`Error::CorruptIndex`]): no pull can fix that, and
    /// it must not be reported as an image that is missing.
    pub fn is_store_corrupt(&self) -> bool {
        matches!(self, Error::CorruptIndex { .. })
    }

    /// An I/O error on `path`, or [`Error::Corrupt`] if the I/O error carries a [`CorruptBlob`]
    /// ([`Error::DiffIdMismatch`] if it carries a [`DiffIdMismatch`]).
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        if let Some(m) = DiffIdMismatch::find(&source) {
            return Error::DiffIdMismatch(m.clone());
        }
        match CorruptBlob::find(&source) {
            Some(blob) => Error::Corrupt {
                blob: blob.clone(),
                image: None,
            },
            None => Error::Io {
                action,
                path: path.into(),
                source,
            },
        }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Error {
        Error::Json {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_blob_message_names_blob_and_image() {
        let expected = Digest::of(b"a");
        let actual = Digest::of(b"b");
        let err = Error::Corrupt {
            blob: CorruptBlob {
                digest: expected.clone(),
                actual: actual.to_string(),
            },
            image: None,
        }
        .for_image("docker.io/x/y:1");
        assert_eq!(
            err.to_string(),
            format!(
                "blob {expected} of docker.io/x/y:1 is corrupt: expected {expected}, got {actual}; \
                 remove the image and pull it again"
            )
        );
    }

    #[test]
    fn io_errors_carrying_corruption_become_corrupt() {
        let blob = CorruptBlob {
            digest: Digest::of(b"a"),
            actual: "x".into(),
        };
        let io = io::Error::new(io::ErrorKind::InvalidData, blob.clone());
        assert!(matches!(Error::io("read", "/x", io), Error::Corrupt { blob: b, .. } if b == blob));
        let plain = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert!(matches!(Error::io("read", "/x", plain), Error::Io { .. }));
    }

    #[test]
    fn platform_error_lists_what_exists() {
        let err = Error::NoPlatform {
            reference: "docker.io/library/a:1".into(),
            arch: Arch::Aarch64,
            available: vec!["linux/amd64".into(), "linux/s390x".into()],
        };
        assert_eq!(
            err.to_string(),
            "image docker.io/library/a:1 has no linux/arm64 manifest (available: linux/amd64, linux/s390x)"
        );
    }
}
