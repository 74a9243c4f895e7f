//! `keel verify`: checks a built artifact against the keys and the YAML it is said to come
//! from. The UKI is read from the artifact (a `.efi`, the EFI system partition of a `raw-efi`
//! disk, of a qcow2, VMDK or VHD disk converted to raw first, or the El Torito EFI image of an
//! `iso-efi`); its Authenticode signature must verify with the key set's db certificate; and without
//! the signature it must be byte-identical to the UKI the YAML builds now from the images its
//! lock file pins (`--locked`). keel's outputs are reproducible, so any difference is a change:
//! the command line, the initramfs (every container image of the system), or the kernel.
//!
//! A disk built with `--verity` is rebuilt as such, and its root and hash-tree partitions must
//! be byte-identical to the rebuilt ones too: the root hash on the signed command line then
//! vouches for exactly the root the YAML makes.

use crate::build::{BuildOptions, Format};
use keel_image::{Arch, Store};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: not a UKI (.efi), an EFI disk (raw, qcow2, vmdk, vhd) or an iso-efi image",
        .0.display()
    )]
    Unknown(PathBuf),
    #[error("{}: cannot convert the disk to raw to read it", path.display())]
    Convert {
        path: PathBuf,
        #[source]
        source: keel_formats::Error,
    },
    #[error("{}: cannot find its UKI", path.display())]
    Extract {
        path: PathBuf,
        #[source]
        source: keel_formats::Error,
    },
    #[error("{}: a UKI for {}, not for {} (--arch)", path.display(), is.uname(), asked.uname())]
    WrongArch {
        path: PathBuf,
        is: Arch,
        asked: Arch,
    },
    #[error("{}: {what} is not signed, and --keys asks for a signature", path.display())]
    Unsigned { path: PathBuf, what: String },
    #[error("{}: the signature of {what} does not verify with {}", path.display(), cert.display())]
    Signature {
        path: PathBuf,
        what: String,
        cert: PathBuf,
        #[source]
        source: crate::keys::Error,
    },
    #[error("{}: not what {yaml} builds from its lock file: {what} differ", path.display())]
    Differs {
        path: PathBuf,
        yaml: String,
        what: String,
    },
    #[error("cannot build {yaml} to compare")]
    Build {
        yaml: String,
        #[source]
        source: Box<crate::build::Error>,
    },
    #[error(transparent)]
    Keys(#[from] crate::keys::Error),
    #[error(
        "{}: an A/B disk holding {} versions; keel verify checks a disk as keel build wrote it (one version)",
        .0.display(),
        .1
    )]
    AbVersions(PathBuf, usize),
    #[error("{}: the UKI cannot be read", .0.display())]
    Uki(PathBuf, #[source] keel_formats::Error),
}

impl Error {
    /// This error with `read` (a raw disk converted from the artifact) named as `artifact`.
    fn for_artifact(self, read: &Path, artifact: &Path) -> Error {
        let rename = |p: PathBuf| if p == read { artifact.to_path_buf() } else { p };
        match self {
            Error::Read { path, source } => Error::Read {
                path: rename(path),
                source,
            },
            Error::Unknown(path) => Error::Unknown(rename(path)),
            Error::AbVersions(path, n) => Error::AbVersions(rename(path), n),
            Error::Extract { path, source } => Error::Extract {
                path: rename(path),
                source,
            },
            Error::WrongArch { path, is, asked } => Error::WrongArch {
                path: rename(path),
                is,
                asked,
            },
            other => other,
        }
    }
}

/// What `keel verify` checks.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub artifact: PathBuf,
    /// The YAML files the artifact was built from, in merge order.
    pub files: Vec<String>,
    /// The architecture the artifact is for (`--arch`); `None`: the one its UKI is built for.
    pub arch: Option<Arch>,
    /// A key set (only its `db.crt` is read): the UKI must carry a signature it verifies.
    pub keys: Option<PathBuf>,
    /// The build's `--initrd-compression` (the rebuild must use the same).
    pub initrd_compression: crate::output::InitrdCompression,
    pub registry: keel_image::PullOptions,
}

/// What was verified.
#[derive(Debug)]
pub struct Verified {
    /// The architecture the UKI is for.
    pub arch: Arch,
    /// The certificate the signature verified with, if one was asked for.
    pub signed_by: Option<PathBuf>,
    /// Whether the UKI carries a signature at all.
    pub signed: bool,
    /// PCR 11 as the UKI's stub will leave it.
    pub pcr11: [u8; 32],
    /// Whether the artifact is a disk whose root is verified by dm-verity (`--verity`), its
    /// root and hash partitions checked too.
    pub verity: bool,
    /// Whether the artifact is an A/B disk (`--ab`), its systemd-boot checked too.
    pub ab: bool,
}

/// The largest root or hash-tree partition `keel verify` reads (both are read whole).
const MAX_PARTITION: u64 = 16 << 30;

/// `path` opened, if it is a GPT disk (`EFI PART` at sector 1).
fn open_gpt_disk(path: &Path) -> Result<Option<std::fs::File>, Error> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let mut head = [0u8; 8];
    let is_disk = file.seek(SeekFrom::Start(512)).is_ok()
        && file.read_exact(&mut head).is_ok()
        && head == *b"EFI PART";
    Ok(is_disk.then_some(file))
}

/// The root and hash-tree partitions of a `--verity` disk, if `artifact` is one.
fn verity_partitions(artifact: &Path, arch: Arch) -> Result<Option<[Vec<u8>; 2]>, Error> {
    let Some(mut file) = open_gpt_disk(artifact)? else {
        return Ok(None);
    };
    let (root_type, hash_type) = keel_formats::verity_partition_types(arch);
    let mut read = |t| {
        keel_formats::read_partition(&mut file, t, MAX_PARTITION).map_err(|e| Error::Extract {
            path: artifact.into(),
            source: e.into(),
        })
    };
    match (read(root_type)?, read(hash_type)?) {
        (Some(root), Some(hash)) => Ok(Some([root, hash])),
        _ => Ok(None),
    }
}

/// The UKI of `artifact` and the architecture it is for: the file itself, or the one in a
/// `raw-efi` disk's ESP (at `arch`'s boot path, or at whichever there is).
fn extract(artifact: &Path, arch: Option<Arch>) -> Result<(Vec<u8>, Arch), Error> {
    let uki = read_uki(artifact, arch)?;
    let is = crate::run::pe_arch(&uki).ok_or_else(|| Error::Unknown(artifact.into()))?;
    match arch {
        Some(asked) if asked != is => Err(Error::WrongArch {
            path: artifact.into(),
            is,
            asked,
        }),
        _ => Ok((uki, is)),
    }
}

fn read_uki(artifact: &Path, arch: Option<Arch>) -> Result<Vec<u8>, Error> {
    use std::io::{Read, Seek, SeekFrom};
    let read_err = |source| Error::Read {
        path: artifact.into(),
        source,
    };
    let mut file = std::fs::File::open(artifact).map_err(read_err)?;
    let mut head = [0u8; 520];
    let n = file.read(&mut head).map_err(read_err)?;
    if head[..n.min(2)] == *b"MZ" {
        let mut uki = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;
        file.read_to_end(&mut uki).map_err(read_err)?;
        return Ok(uki);
    }
    if is_iso(&mut file) {
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let arches = match arch {
            Some(a) => vec![a],
            None => vec![Arch::X86_64, Arch::Aarch64],
        };
        let mut failure = None;
        for a in arches {
            match keel_formats::iso::read_uki_from_iso(&mut file, a) {
                Ok(uki) => return Ok(uki),
                Err(e) => failure = Some(e),
            }
        }
        return Err(Error::Extract {
            path: artifact.into(),
            source: failure.unwrap_or(keel_formats::Error::NotIsoEfi("no EFI boot entry")),
        });
    }
    if n == head.len() && head[512..520] == *b"EFI PART" {
        let arches = match arch {
            Some(a) => vec![a],
            None => vec![Arch::X86_64, Arch::Aarch64],
        };
        let mut failure = None;
        for a in arches {
            match keel_formats::read_uki_from_disk(&mut file, a) {
                Ok(uki) => return Ok(uki),
                Err(e) => failure = Some(e),
            }
        }
        return Err(Error::Extract {
            path: artifact.into(),
            source: failure.unwrap_or(keel_formats::Error::NotRawEfi("no EFI system partition")),
        });
    }
    Err(Error::Unknown(artifact.into()))
}

/// An ISO 9660 image: `CD001` in its first volume descriptor (sector 16).
fn is_iso(file: &mut std::fs::File) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 6];
    file.seek(SeekFrom::Start(16 * 2048)).is_ok()
        && file.read_exact(&mut magic).is_ok()
        && magic[1..] == *b"CD001"
}

/// A disk container `qemu-img` reads (qcow2, VMDK, dynamic VHD), by its magic: such an
/// artifact is converted to raw before it is read.
fn is_container(artifact: &Path) -> Result<bool, Error> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(artifact).map_err(|source| Error::Read {
        path: artifact.into(),
        source,
    })?;
    let n = file.read(&mut head).map_err(|source| Error::Read {
        path: artifact.into(),
        source,
    })?;
    let head = &head[..n];
    Ok(head.starts_with(b"QFI\xfb") || head.starts_with(b"KDMV") || head.starts_with(b"conectix"))
}

/// Names what differs between two UKIs: their sections, or else their headers.
fn differences(a: &[u8], b: &[u8]) -> String {
    let (Ok(a), Ok(b)) = (keel_formats::sections(a), keel_formats::sections(b)) else {
        return "the files".into();
    };
    let mut names: Vec<String> = a
        .iter()
        .filter(|(name, data)| !b.iter().any(|(n, d)| n == name && d == data))
        .map(|(name, _)| name.clone())
        .collect();
    names.extend(
        b.iter()
            .filter(|(name, _)| !a.iter().any(|(n, _)| n == name))
            .map(|(name, _)| name.clone()),
    );
    if names.is_empty() {
        "the PE headers".into()
    } else {
        format!("sections {}", names.join(", "))
    }
}

/// Verifies `opts.artifact` against its keys and YAML, building the YAML's UKI in `store`.
pub fn verify(store: &Store, opts: &VerifyOptions) -> Result<Verified, Error> {
    let path = &opts.artifact;
    let scratch = tempfile::tempdir().map_err(|source| Error::Read {
        path: std::env::temp_dir(),
        source,
    })?;
    // A container is read as the raw disk it holds (errors still name the artifact).
    let disk = if is_container(path)? {
        let raw = scratch.path().join("disk.raw");
        keel_formats::convert::to_raw(path, &raw).map_err(|source| Error::Convert {
            path: path.clone(),
            source,
        })?;
        raw
    } else {
        path.clone()
    };
    let (boot_file, arch) = extract(&disk, opts.arch).map_err(|e| e.for_artifact(&disk, path))?;
    // An `--ab` disk boots systemd-boot, which boots the UKI in EFI/Linux.
    let ab = ab_layout(&disk, arch).map_err(|e| e.for_artifact(&disk, path))?;
    let (uki, boot_manager) = match ab {
        Some((_, ref uki)) => (uki.clone(), Some(boot_file)),
        None => (boot_file, None),
    };
    let check = |efi: &[u8], what: &str| -> Result<(Vec<u8>, bool, Option<PathBuf>), Error> {
        let stripped =
            keel_formats::strip_signature(efi).map_err(|e| Error::Uki(path.clone(), e.into()))?;
        let signed = stripped.is_some();
        let signed_by = match &opts.keys {
            None => None,
            Some(_) if !signed => {
                return Err(Error::Unsigned {
                    path: path.clone(),
                    what: what.to_owned(),
                });
            }
            Some(dir) => {
                let cert = crate::keys::certificate(dir, "db").map_err(Error::Keys)?;
                crate::keys::verify_efi(&cert, efi).map_err(|source| Error::Signature {
                    path: path.clone(),
                    what: what.to_owned(),
                    cert: cert.clone(),
                    source,
                })?;
                Some(cert)
            }
        };
        Ok((stripped.unwrap_or_else(|| efi.to_vec()), signed, signed_by))
    };
    let (unsigned, signed, signed_by) = check(&uki, "the UKI")?;
    let boot_manager = boot_manager
        .map(|efi| check(&efi, "systemd-boot"))
        .transpose()?
        .map(|(unsigned, _, _)| unsigned);

    let yaml = opts.files.join(" ");
    let dir = tempfile::tempdir().map_err(|source| Error::Read {
        path: std::env::temp_dir(),
        source,
    })?;
    let verity = verity_partitions(&disk, arch).map_err(|e| e.for_artifact(&disk, path))?;
    let build = BuildOptions {
        files: opts.files.clone(),
        // A verified root's UKI exists only inside its disk.
        formats: vec![if verity.is_some() {
            Format::RawEfi
        } else {
            Format::Uki
        }],
        dir: dir.path().into(),
        name: Some("verify".into()),
        arch,
        size: None,
        dry_run: false,
        pull: false,
        locked: true,
        registry: opts.registry.clone(),
        max_image_size: crate::build::DEFAULT_MAX_IMAGE_SIZE,
        sbom: false,
        decompress_kernel: false,
        initrd_compression: opts.initrd_compression,
        input_tar: None,
        sign_with: None,
        pcr_file: false,
        root: match (ab, &verity) {
            (Some((settings, _)), _) => crate::output::RootLayout::Ab(settings),
            (None, Some(_)) => crate::output::RootLayout::Verity,
            (None, None) => crate::output::RootLayout::Initramfs,
        },
    };
    crate::build::build(store, &build).map_err(|source| Error::Build {
        yaml: yaml.clone(),
        source: Box::new(source),
    })?;
    let rebuilt_path = dir.path().join(if verity.is_some() {
        "verify-efi.img"
    } else {
        "verify.efi"
    });
    let rebuilt = match &boot_manager {
        None => read_uki(&rebuilt_path, Some(arch))?,
        Some(ours) => {
            let theirs = read_uki(&rebuilt_path, Some(arch))?;
            let same = keel_formats::is_unsigned_original(ours, &theirs)
                .map_err(|e| Error::Uki(path.clone(), e.into()))?;
            if !same {
                return Err(Error::Differs {
                    path: path.clone(),
                    yaml,
                    what: "the boot managers (systemd-boot)".into(),
                });
            }
            ab_layout(&rebuilt_path, arch)?
                .map(|(_, uki)| uki)
                .unwrap_or_default()
        }
    };
    if rebuilt != unsigned {
        return Err(Error::Differs {
            path: path.clone(),
            yaml,
            what: format!("the UKIs' {}", differences(&unsigned, &rebuilt)),
        });
    }
    if let Some(partitions) = &verity {
        let expected = verity_partitions(&rebuilt_path, arch)?.unwrap_or_default();
        for ((ours, theirs), what) in partitions
            .iter()
            .zip(&expected)
            .zip(["the root partitions", "the hash-tree partitions"])
        {
            if ours != theirs {
                return Err(Error::Differs {
                    path: path.clone(),
                    yaml,
                    what: what.into(),
                });
            }
        }
    }
    let pcr11 =
        keel_formats::predict_pcr11(&unsigned).map_err(|e| Error::Uki(path.clone(), e.into()))?;
    Ok(Verified {
        arch,
        signed_by,
        signed,
        pcr11,
        verity: verity.is_some(),
        ab: boot_manager.is_some(),
    })
}

/// The `--ab` settings a disk was built with and the UKI it boots, if it is an A/B disk: its
/// ESP holds `EFI/Linux/keel-<version>.efi` (exactly one, as `keel build` writes it), the
/// slot size is its first root partition's, the data size its data partition's.
fn ab_layout(
    disk: &Path,
    arch: Arch,
) -> Result<Option<(crate::output::AbSettings, Vec<u8>)>, Error> {
    let Some(mut file) = open_gpt_disk(disk)? else {
        return Ok(None);
    };
    let fail = |source| Error::Extract {
        path: disk.into(),
        source,
    };
    let mut ukis = keel_formats::read_ab_ukis(&mut file).map_err(|e| fail(e.into()))?;
    let (keel_formats::ab::EntryName { version, .. }, uki) = match ukis.len() {
        0 => return Ok(None),
        1 => ukis.remove(0),
        n => return Err(Error::AbVersions(disk.into(), n)),
    };
    let (root_type, _) = keel_formats::verity_partition_types(arch);
    let slot_size = keel_formats::partition_size(&mut file, root_type).map_err(fail)?;
    let data_size = keel_formats::partition_size(&mut file, keel_formats::gpt::Guid::LINUX_DATA)
        .map_err(fail)?;
    let settings = crate::output::AbSettings {
        version,
        slot_size,
        data_size,
    };
    Ok(Some((settings, uki)))
}
