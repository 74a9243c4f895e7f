//! `keel build --input-tar PREV.tar` (LinuxKit's flag): a previous build's `tar` output as the
//! input of this one, so that a system is rebuilt (or converted to other formats) without its
//! images.
//!
//! Every `tar` keel writes records, in its PAX global header, a digest of everything its root
//! filesystem was made from ([`INPUT_KEY`]): the merged YAML, every image's pinned digest, the
//! contents of host files it copies, the architecture, `SOURCE_DATE_EPOCH`, the options that
//! change the tree, and keel's version. A build with `--input-tar` computes the same digest
//! from its YAML and lock file; only when they are equal is the tar's tree used, whole, and
//! then the outputs are byte-identical to a build from the images. Otherwise the build reads
//! its images as usual and says why. LinuxKit reuses the parts of the tar whose image
//! *reference* is unchanged, which silently keeps an old image when a tag has moved; keel
//! reuses nothing it cannot prove equal.

use crate::assemble::{Assembled, KernelParts};
use crate::build::{BuildOptions, Error, Result};
use crate::lock::Lock;
use keel_config::{Config, FileContent};
use keel_image::{Arch, Reference};
use keel_rootfs::{Compression, NodeKind, SizeLimits, Tree};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The global record holding a tar's input digest.
pub const INPUT_KEY: &str = "KEEL.input";
/// Global records naming where the tar output put the kernel's parts, and `boot` when that
/// output created the directory: what is taken out again to get the root filesystem back.
pub const KERNEL_KEY: &str = "KEEL.kernel";
pub const CMDLINE_KEY: &str = "KEEL.cmdline";
pub const UCODE_KEY: &str = "KEEL.ucode";
pub const MADE_KEY: &str = "KEEL.made";
/// The global record listing the initramfs compressions the kernel unpacks (space-separated;
/// absent when its image held no configuration), so that a rebuild from the tar compresses the
/// initrd as a build from the images would.
pub const DECOMPRESSORS_KEY: &str = "KEEL.kernel-decompressors";

/// Bumped when the meaning of the digest or of the tar's records changes (2: the kernel's
/// decompressors are recorded).
const FORMAT: &str = "keel-input/2";

/// What a build's root filesystem and kernel parts are made from, as `sha256:<hex>`, given the
/// digest of every image reference (`pins`, keyed by normalised reference). `None` when a
/// reference has no pin or an optional host file is missing (nothing then proves two builds
/// equal).
pub fn fingerprint(
    config: &Config,
    pins: &Lock,
    arch: Arch,
    opts: &BuildOptions,
) -> Result<Option<String>> {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update(u64::try_from(value.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(value);
    };
    field("format", FORMAT.as_bytes());
    field("keel", env!("CARGO_PKG_VERSION").as_bytes());
    field("arch", arch.uname().as_bytes());
    field(
        "mtime",
        &keel_rootfs::WriteOptions::from_env().mtime.to_le_bytes(),
    );
    field("decompress-kernel", &[u8::from(opts.decompress_kernel)]);
    field("yaml", config.to_yaml()?.as_bytes());
    let mut digests = BTreeMap::new();
    for text in crate::build::reference_texts(config) {
        let Ok(reference) = text.parse::<Reference>() else {
            return Ok(None);
        };
        let name = reference.to_string();
        let digest = match (reference.digest(), pins.get(&name)) {
            (Some(d), _) => d.to_string(),
            (None, Some(pinned)) => pinned.to_owned(),
            (None, None) => return Ok(None),
        };
        digests.insert(name, digest);
    }
    for (name, digest) in &digests {
        field("image", format!("{name}={digest}").as_bytes());
    }
    for spec in &config.files {
        if let FileContent::Source { path, .. } = spec.content() {
            match std::fs::read(&path) {
                Ok(data) => field("file", &data),
                Err(_) => return Ok(None),
            }
        }
    }
    Ok(Some(format!("sha256:{}", hex::encode(h.finalize()))))
}

/// The records a `tar` output adds to its global header: the input digest, and where it put
/// what it added to the root filesystem.
pub fn globals(
    fingerprint: &str,
    kernel: Option<&KernelParts>,
    made_boot: bool,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut records = vec![(INPUT_KEY, fingerprint.as_bytes().to_vec())];
    if kernel.is_some() {
        records.push((KERNEL_KEY, b"boot/kernel".to_vec()));
        records.push((CMDLINE_KEY, b"boot/cmdline".to_vec()));
    }
    if kernel.is_some_and(|k| k.ucode.is_some()) {
        records.push((UCODE_KEY, b"boot/ucode.cpio".to_vec()));
    }
    if let Some(codecs) = kernel.and_then(|k| k.decompressors.as_ref()) {
        let names: Vec<&str> = codecs.iter().map(|c| c.name()).collect();
        records.push((DECOMPRESSORS_KEY, names.join(" ").into_bytes()));
    }
    if made_boot {
        records.push((MADE_KEY, b"boot".to_vec()));
    }
    records
}

/// A previous build's tar, read back.
#[derive(Debug)]
pub struct Previous {
    /// Its input digest, if it has one (keel's own `tar` output).
    pub fingerprint: Option<String>,
    pub assembled: Assembled,
}

/// Reads `path` (a `keel build -f tar` output) within `max` bytes.
pub fn read(path: &Path, max: u64) -> Result<Previous> {
    let name = path.display().to_string();
    let io_err = |source| Error::ReadInput {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let limits = SizeLimits {
        layer: max,
        image: max,
    };
    let (mut tree, globals) = Tree::read_tar(std::io::BufReader::new(file), &name, limits)
        .map_err(|source| Error::InputTar {
            path: name.clone(),
            source,
        })?;
    let text = |key: &str| {
        globals
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut take = |key: &str| -> Result<Option<bytes::Bytes>> {
        let Some(at) = text(key) else {
            return Ok(None);
        };
        let data = match tree.get(&at).map(|n| &n.kind) {
            Some(NodeKind::File(data)) => data.clone(),
            _ => {
                return Err(Error::InputTarLayout {
                    path: name.clone(),
                    what: at,
                });
            }
        };
        tree.remove(&at);
        Ok(Some(data))
    };
    let kernel = take(KERNEL_KEY)?;
    let cmdline = take(CMDLINE_KEY)?;
    let ucode = take(UCODE_KEY)?;
    if let Some(made) = text(MADE_KEY) {
        tree.remove(&made);
    }
    let decompressors = match text(DECOMPRESSORS_KEY) {
        None => None,
        Some(names) => Some(
            names
                .split_whitespace()
                .map(Compression::from_name)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::InputTarDecompressors {
                    path: name.clone(),
                    names: names.clone(),
                })?,
        ),
    };
    let kernel = match (kernel, cmdline) {
        (Some(kernel), Some(cmdline)) => Some(KernelParts {
            kernel,
            cmdline: String::from_utf8_lossy(&cmdline).into_owned(),
            ucode,
            decompressors,
        }),
        _ => None,
    };
    Ok(Previous {
        fingerprint: text(INPUT_KEY),
        assembled: Assembled { tree, kernel },
    })
}
