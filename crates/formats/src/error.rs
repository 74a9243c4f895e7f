//! The error type of every format writer.

use std::path::PathBuf;

/// Why an output could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid size {0:?}: expected a number with an optional K, M, G or T suffix (no suffix: MiB)"
    )]
    InvalidSize(String),
    #[error("{what} needs {needed} bytes ({needed_mib} MiB) but --size is {given} bytes", needed_mib = .needed.div_ceil(1 << 20))]
    TooSmall {
        what: &'static str,
        needed: u64,
        given: u64,
    },
    #[error("{what} of {size} bytes is larger than the format allows ({max} bytes)")]
    TooLarge {
        what: &'static str,
        size: u64,
        max: u64,
    },
    #[error("not a keel raw-efi disk: {0}")]
    NotRawEfi(&'static str),
    #[error("not an iso-efi image: {0}")]
    NotIsoEfi(&'static str),
    #[error("format {format} is not available for {arch}: it is for {supported} only")]
    Unsupported {
        format: &'static str,
        /// The architecture as `uname -m` names it (`aarch64`), as `--arch` takes it.
        arch: &'static str,
        supported: &'static str,
    },
    #[error("invalid boot loader: {0}")]
    Boot(&'static str),
    #[error("cannot write the FAT file system")]
    Fat(#[source] std::io::Error),
    #[error("cannot read the UKI from the EFI system partition")]
    FatRead(#[source] std::io::Error),
    #[error(transparent)]
    Disk(#[from] keel_disk::Error),
    #[error("cannot write the output")]
    Write(#[source] std::io::Error),
    #[error("cannot run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Tool {
        program: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch the Debian package {package}")]
    Package {
        package: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot put {path:?} in an ISO 9660 image: {reason}")]
    IsoName { path: String, reason: &'static str },
    #[error(
        "--slot-size of {given} bytes cannot hold the verified root ({root} bytes): give at least {root_mib} MiB, or leave it out (default: twice the root)",
        root_mib = .root.div_ceil(1 << 20)
    )]
    SlotTooSmall { root: u64, given: u64 },
    #[error("the Debian package {package} has no file {path}")]
    MissingFile { package: String, path: String },
}

pub(crate) type Result<T> = std::result::Result<T, Error>;
