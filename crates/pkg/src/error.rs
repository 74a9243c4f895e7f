//! The crate's error type.

use std::path::PathBuf;

/// Everything that can stop a package build or a tag computation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `build.yml` is invalid; the message carries `FILE:LINE:COLUMN`.
    #[error(transparent)]
    Manifest(#[from] keel_config::Error),
    /// A LinuxKit package: a Dockerfile (or LinuxKit's build.yml keys) and none of keel's own
    /// build fields. keel does not run Dockerfiles.
    #[error(
        "{} is a Dockerfile package (LinuxKit's format), which keel does not build: keel assembles packages without Docker from build.yml's binaries, debs and files (pinned Debian packages; see docs/pkg.md). Build it with `docker build -t IMAGE {}` and bring the image in with `docker save IMAGE -o image.tar && keel cache import image.tar` (or push it and `keel cache pull IMAGE`)",
        dir.display(), dir.display()
    )]
    DockerfilePackage { dir: PathBuf },
    /// `build.yml` names nothing to put in the image.
    #[error(
        "{}: no binaries, debs or files, so the image would be empty; list what the image holds (see docs/pkg.md)",
        yml.display()
    )]
    EmptyPackage { yml: PathBuf },
    /// A file of the package could not be read, or a lock file written.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `files: source:` entry names something that cannot go into an image.
    #[error("{loc}: {} is {what}; expected a regular file, directory or symlink", path.display())]
    UnsupportedSource {
        loc: String,
        path: PathBuf,
        what: &'static str,
    },
    /// An architecture was asked for that `build.yml` does not list.
    #[error("{package} is not built for {arch} (build.yml arches: {listed})")]
    ArchNotListed {
        package: String,
        arch: String,
        listed: String,
    },
    /// `build.lock.json` is not a lock file this version understands.
    #[error("invalid lock file {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A Debian package (or a dependency) could not be resolved against the archive.
    #[error("cannot resolve Debian package {package} for {arch}")]
    Resolve {
        package: String,
        arch: String,
        #[source]
        source: Box<keel_debian::AptError>,
    },
    /// No alternative of a dependency exists in the archive.
    #[error("{package} ({arch}) depends on \"{dependency}\", which the archive cannot satisfy")]
    Unsatisfiable {
        package: String,
        dependency: String,
        arch: String,
    },
    /// A pinned package could not be fetched or failed its sha256 check.
    #[error("cannot fetch Debian package {package}={version} ({arch})")]
    Fetch {
        package: String,
        version: String,
        arch: String,
        #[source]
        source: Box<keel_debian::AptError>,
    },
    /// `--locked`: pinned packages have left Debian's archive; refreshing the pins would change
    /// the lock file.
    #[error(
        "{}: {} ({arch}) no longer in Debian's archive; run `keel pkg update-lock {}` to move the pins to the archive's current versions (a build without --locked does this by itself)",
        lock.display(), gone.join(", "), dir.display()
    )]
    PinsLeftArchive {
        lock: PathBuf,
        dir: PathBuf,
        arch: String,
        /// `name=version` of each pin that is gone.
        gone: Vec<String>,
    },
    /// `--locked`: the lock file is missing or was resolved for other `debs:`.
    #[error(
        "{}: {problem}; run `keel pkg update-lock {}` to resolve the pins (a build without --locked does this by itself)",
        lock.display(), dir.display()
    )]
    LockOutdated {
        lock: PathBuf,
        dir: PathBuf,
        problem: String,
    },
    /// A `remove:` path that no Debian package of the image installs.
    #[error(
        "{loc}: remove {path}: no Debian package of this image installs it ({arch}); drop the entry or fix the path"
    )]
    RemoveMissing {
        loc: String,
        path: String,
        arch: String,
    },
    /// A fetched package could not be unpacked.
    #[error("cannot unpack Debian package {package}")]
    Unpack {
        package: String,
        #[source]
        source: keel_debian::DebError,
    },
    /// No Cargo workspace above the package directory.
    #[error("no Cargo workspace (a Cargo.toml with [workspace]) above {}", dir.display())]
    NoWorkspace { dir: PathBuf },
    /// cargo could not be started.
    #[error("cannot run {}", cargo.display())]
    CargoSpawn {
        cargo: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `cargo build` failed; `output` is the end of what it printed (empty when it printed
    /// straight to standard error, with `-v`).
    #[error("`{command}` failed ({status}){output}")]
    CargoFailed {
        command: String,
        status: String,
        output: String,
    },
    /// Assembling the image's tree or writing its layer failed.
    #[error("cannot assemble the {arch} image")]
    Rootfs {
        arch: String,
        #[source]
        source: keel_rootfs::Error,
    },
    /// `<image>:<hash>` is not a valid reference.
    #[error("invalid image name {image:?}")]
    Reference {
        image: String,
        #[source]
        source: keel_image::ReferenceError,
    },
    /// Writing to the image store failed.
    #[error(transparent)]
    Store(#[from] keel_image::Error),
    /// The SBOM (or the attestation manifests that carry it) could not be serialised.
    #[error("cannot write the {what}")]
    Sbom {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A digest of the store's own writing did not parse (an internal error).
    #[error("invalid digest in the store")]
    Digest(#[from] keel_image::DigestError),
    /// `cargo metadata` printed something that is not its JSON.
    #[error("cannot read the output of `{command}`")]
    CargoMetadata {
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
