//! Kernel recipes: a pinned distribution kernel package, repackaged as what a keel kernel image
//! holds — the kernel binary, its config, and a deterministic tar of only the modules a system
//! needs, with `depmod`-style index files regenerated for that subset.
//!
//! # Recipe format
//!
//! A recipe is a directory `kernel/<name>/` holding `recipe.yml`:
//!
//! ```yaml
//! name: debian-cloud                 # required
//! version: 6.1.192                   # optional, informative only
//! packages:                          # at least one architecture
//!   x86_64:  { name: linux-image-6.1.0-56-cloud-amd64, version: "6.1.192-2", sha256: "<64 hex>" }
//!   aarch64: { name: linux-image-6.1.0-56-cloud-arm64, version: "6.1.192-2", sha256: "<64 hex>" }
//! modules: [virtio_pci, virtio_blk, overlay]   # '-' and '_' are interchangeable
//! ```
//!
//! Unknown keys are errors. `sha256` is the digest of the `.deb` (`apt-cache show` prints it).
//! A listed module the kernel has built in is accepted and skipped; one it has neither built in
//! nor as a module is an error. Dependencies of listed modules are added automatically.
//!
//! # Output
//!
//! [`build`] downloads the package through [`keel_debian`] (cached by digest) and returns
//! [`KernelArtifacts`]: `boot/vmlinuz-*` as is (a bzImage on x86_64; an `Image`, possibly with an
//! EFI stub, on aarch64), `boot/config-*`, and `modules_tar` holding `lib/modules/<release>/`
//! with the chosen modules (decompressed if the package ships `.ko.xz`/`.ko.zst`/`.ko.gz`) and
//! regenerated `modules.dep`, `modules.alias`, `modules.softdep`, `modules.devname`, the filtered
//! `modules.order`, and the package's `modules.builtin` and `modules.builtin.modinfo`. The tar is
//! byte-reproducible: sorted, uid/gid 0, modes 0644/0755, mtime `SOURCE_DATE_EPOCH` or
//! 1492533000 (LinuxKit's 2017-04-18T16:30:00Z).

pub mod decompress;
pub mod depmod;
pub mod kconfig;
pub mod kspp;
pub mod modinfo;
pub mod recipe;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use keel_debian::{AptError, Compression, DebContents, DebError, EntryKind};
use log::info;
use thiserror::Error;

pub use depmod::{DepmodError, ModuleDb, module_closure};
pub use modinfo::{ModInfo, ModinfoError};
pub use recipe::{PackagePin, Recipe, RecipeError, flavour_metapackage};

/// The modification time of generated files when `SOURCE_DATE_EPOCH` is unset:
/// 2017-04-18T16:30:00Z, as LinuxKit uses.
pub const DEFAULT_MTIME: u64 = 1_492_533_000;

/// Why a kernel could not be built from a recipe.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The recipe has no package for that architecture.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The package could not be fetched.
    #[error("cannot fetch the kernel package")]
    Fetch(#[from] AptError),
    /// The package could not be read.
    #[error("cannot read the kernel package")]
    Deb(#[from] DebError),
    /// The package has no `boot/vmlinuz-*`, or several.
    #[error("{package}: expected exactly one boot/vmlinuz-*, found {found}")]
    Kernel {
        /// The package file.
        package: String,
        /// How many were found.
        found: usize,
    },
    /// A file the image needs is missing from the package.
    #[error("{package}: no {file}")]
    Missing {
        /// The package file.
        package: String,
        /// The missing path.
        file: String,
    },
    /// A module file is unreadable.
    #[error("module {path}")]
    Module {
        /// Its path in the package.
        path: String,
        /// The cause.
        #[source]
        source: ModinfoError,
    },
    /// A compressed module could not be decompressed.
    #[error("cannot decompress module {path}")]
    Decompress {
        /// Its path in the package.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The module selection failed (e.g. a recipe names a module the kernel lacks).
    #[error("{recipe}: module selection")]
    Modules {
        /// The recipe (or package) the modules came from.
        recipe: String,
        /// The cause.
        #[source]
        source: DepmodError,
    },
    /// `SOURCE_DATE_EPOCH` is set but not a number of seconds.
    #[error("SOURCE_DATE_EPOCH={0:?} is not a number of seconds")]
    SourceDateEpoch(String),
    /// Writing the modules tar failed.
    #[error("cannot write the modules tar")]
    Tar(#[source] std::io::Error),
}

/// What a kernel image is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifacts {
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The kernel binary, as the package ships it.
    pub kernel: Vec<u8>,
    /// Deterministic tar of `lib/modules/<release>/` (see the crate documentation).
    pub modules_tar: Vec<u8>,
    /// The kernel's build configuration.
    pub config: Vec<u8>,
    /// Paths of the shipped modules, relative to `lib/modules/<release>/`, sorted.
    pub modules: Vec<String>,
    /// The package's control fields (name, version, architecture) and its copyright file, for
    /// the image's SBOM.
    pub control: keel_debian::Control,
    pub copyright: Option<keel_debian::copyright::Copyright>,
}

/// The mtime for generated files: `SOURCE_DATE_EPOCH` if set, else [`DEFAULT_MTIME`].
pub fn source_date_epoch() -> Result<u64, KernelError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| KernelError::SourceDateEpoch(value)),
        Err(_) => Ok(DEFAULT_MTIME),
    }
}

/// Fetches the recipe's package for `arch` (`x86_64`/`aarch64`) into `deb_cache` (reused when
/// already there and intact) and builds the kernel artifacts from it.
pub fn build(
    recipe: &Recipe,
    arch: &str,
    deb_cache: &Path,
) -> Result<KernelArtifacts, KernelError> {
    let pin = recipe.package(arch)?;
    let deb_path = keel_debian::download(&pin, deb_cache)?;
    let deb = keel_debian::unpack(&deb_path)?;
    info!(
        "building kernel {} for {arch} from {}",
        recipe.name, pin.name
    );
    from_deb(&deb, &recipe.modules, source_date_epoch()?).map_err(|e| match e {
        KernelError::Modules { source, .. } => KernelError::Modules {
            recipe: recipe.path.display().to_string(),
            source,
        },
        other => other,
    })
}

/// The current pin for a kernel meta-package's image (for writing or refreshing a recipe): the
/// archive's candidate of `meta` (e.g. `linux-image-cloud-arm64`) names the ABI package it
/// depends on (`linux-image-6.1.0-NN-cloud-arm64`), whose candidate version and sha256 are
/// returned. Uses the private apt state in `deb_cache` and the network.
pub fn resolve_meta_package(
    meta: &str,
    arch: &str,
    deb_cache: &Path,
) -> Result<keel_debian::PinnedPackage, KernelError> {
    let debian =
        keel_debian::debian_arch(arch).ok_or_else(|| AptError::InvalidArch(arch.to_owned()))?;
    let apt = keel_debian::Apt::new(deb_cache, debian)?;
    let image = apt
        .candidate(meta)?
        .relation_names("Depends")
        .into_iter()
        .find(|name| name.starts_with("linux-image-"))
        .ok_or_else(|| AptError::UnknownPackage {
            package: format!("linux-image-* (a dependency of {meta})"),
            arch: debian.to_owned(),
        })?;
    Ok(apt.resolve(&image)?)
}

/// The newest kernel of the same flavour as `pin` in the archive now: through the flavour's
/// meta-package ([`recipe::flavour_metapackage`]) when the name has an ABI part, else the
/// candidate of the same package. This is where a recipe's pin moves when its version has
/// left the archive.
pub fn newest_of_flavour(
    pin: &keel_debian::PinnedPackage,
    deb_cache: &Path,
) -> Result<keel_debian::PinnedPackage, KernelError> {
    match recipe::flavour_metapackage(&pin.name) {
        Some(meta) => resolve_meta_package(&meta, &pin.arch, deb_cache),
        None => Ok(keel_debian::Apt::new(deb_cache, &pin.arch)?.resolve(&pin.name)?),
    }
}

/// Builds kernel artifacts from an unpacked kernel package, shipping `modules` (and their
/// dependencies), with `mtime` on every tar entry.
pub fn from_deb(
    deb: &DebContents,
    modules: &[String],
    mtime: u64,
) -> Result<KernelArtifacts, KernelError> {
    let package = deb.path().display().to_string();
    let entries = deb.entries()?;
    let kernels: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.path.starts_with("boot/vmlinuz-"))
        .collect();
    let [kernel] = kernels[..] else {
        return Err(KernelError::Kernel {
            package,
            found: kernels.len(),
        });
    };
    let release = kernel.path["boot/vmlinuz-".len()..].to_owned();
    let config_path = format!("boot/config-{release}");
    let missing = |file: &str| KernelError::Missing {
        package: package.clone(),
        file: file.to_owned(),
    };
    let config = entries
        .iter()
        .find(|e| e.kind == EntryKind::File && e.path == config_path)
        .ok_or_else(|| missing(&config_path))?;

    // Debian before trixie ships /lib/modules, later /usr/lib/modules.
    let prefixes = [
        format!("lib/modules/{release}/"),
        format!("usr/lib/modules/{release}/"),
    ];
    let mut module_files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut infos = Vec::new();
    let mut index_files: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let Some(rel) = prefixes
            .iter()
            .find_map(|p| entry.path.strip_prefix(p.as_str()))
        else {
            continue;
        };
        if let Some(index) = [
            "modules.builtin",
            "modules.builtin.modinfo",
            "modules.order",
        ]
        .into_iter()
        .find(|name| *name == rel)
        {
            index_files.insert(index, entry.data.clone());
            continue;
        }
        let (stem, compression) = Compression::split_suffix(rel);
        if !stem.ends_with(".ko") {
            continue;
        }
        let data = match compression {
            Compression::None => entry.data.clone(),
            other => other
                .decompress(&entry.data)
                .map_err(|source| KernelError::Decompress {
                    path: entry.path.clone(),
                    source,
                })?,
        };
        let info = ModInfo::parse(&data).map_err(|source| KernelError::Module {
            path: entry.path.clone(),
            source,
        })?;
        infos.push((stem.to_owned(), info));
        module_files.insert(stem.to_owned(), data);
    }
    let db = ModuleDb::new(infos);
    let builtin_text = index_files
        .get("modules.builtin")
        .cloned()
        .unwrap_or_default();
    let builtin = depmod::builtin_names(&String::from_utf8_lossy(&builtin_text));
    let wanted: Vec<String> = modules
        .iter()
        .filter(|name| {
            let name = depmod::normalise_name(name);
            let is_builtin = builtin.contains(&name) && db.path(&name).is_none();
            if is_builtin {
                info!("module {name} is built into {release}");
            }
            !is_builtin
        })
        .cloned()
        .collect();
    let selected: BTreeSet<String> = module_closure(&db.modules_dep(None), &wanted)
        .map_err(|source| KernelError::Modules {
            recipe: package.clone(),
            source,
        })?
        .into_iter()
        .collect();
    info!(
        "{release}: shipping {} of {} modules",
        selected.len(),
        db.len()
    );

    let root = format!("lib/modules/{release}");
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for path in &selected {
        if let Some(data) = module_files.get(path) {
            files.insert(format!("{root}/{path}"), data.clone());
        }
    }
    // modules.order names compressed files when the package compresses them.
    let order = String::from_utf8_lossy(index_files.get("modules.order").map_or(&[][..], |v| v))
        .lines()
        .map(|line| format!("{}\n", Compression::split_suffix(line.trim()).0))
        .collect::<String>();
    let generated = [
        ("modules.dep", db.modules_dep(Some(&selected)).into_bytes()),
        ("modules.alias", db.modules_alias(&selected).into_bytes()),
        (
            "modules.softdep",
            db.modules_softdep(&selected).into_bytes(),
        ),
        (
            "modules.devname",
            db.modules_devname(&selected).into_bytes(),
        ),
        (
            "modules.order",
            depmod::filter_lines(&order, &selected).into_bytes(),
        ),
        ("modules.builtin", builtin_text),
        (
            "modules.builtin.modinfo",
            index_files
                .remove("modules.builtin.modinfo")
                .unwrap_or_default(),
        ),
    ];
    for (name, data) in generated {
        files.insert(format!("{root}/{name}"), data);
    }
    let copyright = deb
        .control()
        .get("Package")
        .map(keel_debian::copyright::path)
        .and_then(|path| {
            entries
                .iter()
                .find(|e| e.kind == EntryKind::File && e.path == path)
        })
        .and_then(|e| keel_debian::copyright::parse(&String::from_utf8_lossy(&e.data)));
    Ok(KernelArtifacts {
        release,
        kernel: kernel.data.clone(),
        modules_tar: deterministic_tar(&files, mtime).map_err(KernelError::Tar)?,
        config: config.data.clone(),
        modules: selected.into_iter().collect(),
        control: deb.control().clone(),
        copyright,
    })
}

/// A tar of `files` (path → contents) and all their parent directories, sorted by path, with
/// fixed owners, modes and mtime.
pub(crate) fn deterministic_tar(
    files: &BTreeMap<String, Vec<u8>>,
    mtime: u64,
) -> std::io::Result<Vec<u8>> {
    deterministic_tar_with(files, &BTreeSet::new(), mtime)
}

/// [`deterministic_tar`], with the files named in `executable` mode 0755 (a kernel build
/// tree's host programs).
pub(crate) fn deterministic_tar_with(
    files: &BTreeMap<String, Vec<u8>>,
    executable: &BTreeSet<String>,
    mtime: u64,
) -> std::io::Result<Vec<u8>> {
    let mut dirs = BTreeSet::new();
    for path in files.keys() {
        let mut parent = path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            dirs.insert(dir.to_owned());
            parent = dir;
        }
    }
    let mut all: BTreeMap<&str, Option<&[u8]>> = dirs.iter().map(|d| (d.as_str(), None)).collect();
    all.extend(files.iter().map(|(p, d)| (p.as_str(), Some(d.as_slice()))));
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in all {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        match data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if executable.contains(path) {
                    0o755
                } else {
                    0o644
                });
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data)?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), &[][..])?;
            }
        }
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_debian::deb::build_deb;
    use std::io::Read;

    const RELEASE: &str = "6.1.0-99-test-amd64";

    fn module(name: &str, depends: &str, extra: &str) -> Vec<u8> {
        let modinfo = format!("license=GPL\0{extra}depends={depends}\0name={name}\0");
        modinfo::test_elf(&[(".text", b"\xc3"), (".modinfo", modinfo.as_bytes())])
    }

    /// A fake kernel package: two kernel files, five modules (one compressed), index files.
    fn package(dir: &Path) -> DebContents {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, data).unwrap();
        };
        let m = format!("./lib/modules/{RELEASE}");
        add(&format!("./boot/vmlinuz-{RELEASE}"), b"MZ fake bzImage");
        add(&format!("./boot/config-{RELEASE}"), b"CONFIG_VIRTIO=m\n");
        add(&format!("./boot/System.map-{RELEASE}"), b"ffff T _text\n");
        add(
            &format!("{m}/kernel/drivers/block/virtio_blk.ko"),
            &module(
                "virtio_blk",
                "virtio,virtio_ring",
                "alias=virtio:d00000002v*\0",
            ),
        );
        add(
            &format!("{m}/kernel/drivers/virtio/virtio.ko"),
            &module("virtio", "virtio_ring", ""),
        );
        let ring = module("virtio_ring", "", "");
        let ring_xz = {
            use std::io::Write;
            let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
            xz.write_all(&ring).unwrap();
            xz.finish().unwrap()
        };
        add(
            &format!("{m}/kernel/drivers/virtio/virtio_ring.ko.xz"),
            &ring_xz,
        );
        add(
            &format!("{m}/kernel/drivers/char/hw_random/virtio-rng.ko"),
            &module("virtio_rng", "virtio,virtio_ring", ""),
        );
        add(
            &format!("{m}/kernel/fs/nfs/nfs.ko"),
            &module("nfs", "", "alias=fs-nfs\0"),
        );
        add(&format!("{m}/modules.order"), b"kernel/drivers/virtio/virtio_ring.ko.xz\nkernel/drivers/virtio/virtio.ko\nkernel/drivers/block/virtio_blk.ko\nkernel/fs/nfs/nfs.ko\n");
        add(
            &format!("{m}/modules.builtin"),
            b"kernel/crypto/crc32c_generic.ko\n",
        );
        add(
            &format!("{m}/modules.builtin.modinfo"),
            b"crc32c_generic.license=GPL\0",
        );
        let data = builder.into_inner().unwrap();
        let path = dir.join("linux.deb");
        std::fs::write(
            &path,
            build_deb(
                "Package: linux-image-test\nVersion: 1\n",
                &data,
                Compression::Gzip,
            )
            .unwrap(),
        )
        .unwrap();
        keel_debian::unpack(&path).unwrap()
    }

    fn tar_files(tar: &[u8]) -> BTreeMap<String, (u32, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        let mut out = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().unwrap();
            let mtime = entry.header().mtime().unwrap();
            assert_eq!(entry.header().uid().unwrap(), 0);
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(path, (mode, mtime, data));
        }
        out
    }

    #[test]
    fn builds_artifacts_with_only_the_needed_modules() {
        let dir = tempfile::tempdir().unwrap();
        let deb = package(dir.path());
        let wanted = vec!["virtio_blk".to_owned(), "crc32c-generic".to_owned()];
        let artifacts = from_deb(&deb, &wanted, 1234).unwrap();
        assert_eq!(artifacts.release, RELEASE);
        assert_eq!(artifacts.kernel, b"MZ fake bzImage");
        assert_eq!(artifacts.config, b"CONFIG_VIRTIO=m\n");
        let files = tar_files(&artifacts.modules_tar);
        let root = format!("lib/modules/{RELEASE}");
        let file =
            |name: &str| String::from_utf8(files[&format!("{root}/{name}")].2.clone()).unwrap();
        assert!(files.contains_key(&format!("{root}/kernel/drivers/block/virtio_blk.ko")));
        assert!(files.contains_key(&format!("{root}/kernel/drivers/virtio/virtio.ko")));
        // The compressed dependency ships decompressed, under the .ko name.
        let ring = &files[&format!("{root}/kernel/drivers/virtio/virtio_ring.ko")];
        assert_eq!(
            ModInfo::parse(&ring.2).unwrap().name.as_deref(),
            Some("virtio_ring")
        );
        assert!(
            !files
                .keys()
                .any(|p| p.contains("nfs") || p.contains("virtio-rng"))
        );
        assert_eq!(
            file("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n"
        );
        assert!(file("modules.alias").contains("alias virtio:d00000002v* virtio_blk\n"));
        assert!(!file("modules.alias").contains("fs-nfs"));
        assert_eq!(
            file("modules.order"),
            "kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko\nkernel/drivers/block/virtio_blk.ko\n"
        );
        assert_eq!(file("modules.builtin"), "kernel/crypto/crc32c_generic.ko\n");
        assert!(files.contains_key(&format!("{root}/modules.builtin.modinfo")));
        assert!(files.contains_key(&format!("{root}/modules.softdep")));
        assert_eq!(files["lib/"].0, 0o755);
        assert!(
            files
                .values()
                .all(|(mode, mtime, _)| *mtime == 1234 && (*mode == 0o644 || *mode == 0o755))
        );
        // Parents come before children, and the order is sorted.
        let order: Vec<_> = files.keys().collect();
        assert_eq!(order.first().map(|s| s.as_str()), Some("lib/"));
        // Same input, same bytes.
        assert_eq!(
            from_deb(&deb, &wanted, 1234).unwrap().modules_tar,
            artifacts.modules_tar
        );
        assert_ne!(
            from_deb(&deb, &wanted, 99).unwrap().modules_tar,
            artifacts.modules_tar
        );
    }

    #[test]
    fn unknown_modules_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let deb = package(dir.path());
        let err = from_deb(&deb, &["virtio_blk".into(), "no_such_mod".into()], 0).unwrap_err();
        match &err {
            KernelError::Modules {
                source: DepmodError::UnknownModules(names),
                ..
            } => {
                assert_eq!(names, &["no_such_mod"])
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn tar_entries_are_sorted_with_parents_first() {
        let files: BTreeMap<String, Vec<u8>> = [
            ("a/b-c/x".to_owned(), b"1".to_vec()),
            ("a/b/y".to_owned(), b"2".to_vec()),
        ]
        .into();
        let tar = deterministic_tar(&files, 5).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert_eq!(paths, ["a/", "a/b/", "a/b-c/", "a/b-c/x", "a/b/y"]);
    }
}
