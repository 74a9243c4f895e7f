//! The error type of everything that reads or changes a keel disk.

/// Why a disk, a partition, a UKI or an update could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("invalid EFI stub: {0}")]
    Stub(&'static str),
    #[error("the EFI stub has no room for {needed} more section headers")]
    StubHeaderFull { needed: usize },
    #[error("not a keel raw-efi disk: {0}")]
    NotRawEfi(&'static str),
    #[error("cannot write the FAT file system")]
    Fat(#[source] std::io::Error),
    #[error("cannot read the EFI system partition")]
    FatRead(#[source] std::io::Error),
    #[error("cannot write the output")]
    Write(#[source] std::io::Error),
    #[error("a dm-verity data area of {len} bytes is not a whole number of 4096-byte blocks")]
    VerityBlocks { len: usize },
    #[error(
        "invalid image version {given:?}: {reason}; use up to 64 of A-Z a-z 0-9 . _ ~ ^ -, such as 1 or 2.1"
    )]
    ImageVersion { given: String, reason: &'static str },
}

pub(crate) type Result<T> = std::result::Result<T, Error>;
