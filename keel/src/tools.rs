//! Boot tools as pinned OCI images in the store: systemd's EFI stub (UKIs and every EFI disk),
//! systemd-boot (`--ab` disks), isolinux (the BIOS formats) and GRUB's CD image (`iso-efi-initrd`).
//!
//! Like LinuxKit's `mkimage-*` images, each tool is an image pinned by digest in this table. keel
//! makes it the way it makes kernel images: from pinned Debian packages (version and sha256 of
//! each `.deb`, in `keel_formats::tools`), into a multi-arch image holding the packages' files at
//! their Debian paths plus their copyright files. The build is reproducible, so the result must
//! have exactly the pinned digest or it is refused. An image with that digest already in the
//! store (built earlier, imported, or pulled from a mirror by digest) is used as is, without
//! touching Debian's archive.

use bytes::Bytes;
use keel_formats::tools::ToolFile;
use keel_image::oci::Descriptor;
use keel_image::{Arch, Digest, Reference, Store};
use keel_rootfs::{Node, NodeKind, Tree, WriteOptions};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

/// Bumped when the layout of tool images changes (their tags and digests change with it).
const LAYOUT_VERSION: &str = "keel-tool-image/1";

/// Every entry's mtime: fixed (not `SOURCE_DATE_EPOCH`), so the digest is one value.
const MTIME: u64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot make tool image {name} ({} {path}) from its pinned Debian package; or pull it \
         by its digest from a mirror (see `keel tools list`)",
        arch.uname()
    )]
    Package {
        name: &'static str,
        path: String,
        arch: Arch,
        #[source]
        source: keel_formats::Error,
    },
    #[error("cannot assemble tool image {0}")]
    Layer(&'static str, #[source] keel_rootfs::Error),
    #[error("cannot store or read tool image {0}")]
    Store(String, #[source] keel_image::Error),
    #[error("cannot read tool image {0}")]
    Unpack(String, #[source] Box<crate::assemble::Error>),
    #[error(
        "tool image {name} built from its pinned packages has digest {built}, not the pinned \
         {pinned}; if the packages' pins changed on purpose, pin the new digest in keel/src/tools.rs"
    )]
    Digest {
        name: &'static str,
        built: String,
        pinned: &'static str,
    },
    #[error("tool image {name} has no {} build (it has {arches})", arch.uname())]
    Arch {
        name: &'static str,
        arch: Arch,
        arches: String,
    },
    #[error("unknown tool image {name:?}; the tool images are: {known}")]
    Unknown { name: String, known: String },
    #[error("tool image {reference} has no file {path}")]
    Missing { reference: String, path: String },
}

type Result<T> = std::result::Result<T, Error>;

/// One pinned tool image.
#[derive(Debug)]
pub struct ToolImage {
    /// Repository name in the store.
    pub name: &'static str,
    /// What it is for, for `keel tools list`.
    pub purpose: &'static str,
    pub arches: &'static [Arch],
    /// Digest of the image index.
    pub digest: &'static str,
    /// The files it holds for an architecture (the first is the tool itself).
    files: fn(Arch) -> Vec<ToolFile>,
}

/// systemd's EFI stub, from `systemd-boot-efi`.
pub const EFI_STUB: ToolImage = ToolImage {
    name: "keel/tools/efi-stub",
    purpose: "systemd's EFI stub, for uki and every EFI disk and ISO",
    arches: &Arch::ALL,
    digest: "sha256:ca3e7264ebf654f5579aa0cb1168030dac359786c281a686af242a10d64677b8",
    files: |arch| vec![keel_formats::tools::efi_stub_pin(arch)],
};

/// systemd-boot, from `systemd-boot-efi` (the EFI stub's package): the boot manager of `--ab`
/// disks.
pub const SYSTEMD_BOOT: ToolImage = ToolImage {
    name: "keel/tools/systemd-boot",
    purpose: "systemd-boot, the boot manager of --ab disks",
    arches: &Arch::ALL,
    digest: "sha256:f5a98de7162c30cdafa2e2672e2801476807ba6d37991d201be27a4cb11526ef",
    files: |arch| vec![keel_formats::tools::systemd_boot_pin(arch)],
};

/// isolinux, from `isolinux` and `syslinux-common` (BIOS, so x86_64 only).
pub const ISOLINUX: ToolImage = ToolImage {
    name: "keel/tools/isolinux",
    purpose: "isolinux, for iso-bios, raw-bios and qcow2-bios",
    arches: &[Arch::X86_64],
    digest: "sha256:1f0a5c4091ba0a9ed19799318b57bfad5e092ce3298cb7494ee13c7eb7342dcc",
    files: |_| keel_formats::tools::isolinux_pins().to_vec(),
};

/// Debian's signed monolithic GRUB for CDs, from `grub-efi-{amd64,arm64}-signed`.
pub const GRUB_CD: ToolImage = ToolImage {
    name: "keel/tools/grub-cd",
    purpose: "GRUB's CD image, for iso-efi-initrd",
    arches: &Arch::ALL,
    digest: "sha256:616ecb3736ad86c48b36ab9322c53cca49eac2068490737893f25d7dac4f1672",
    files: |arch| vec![keel_formats::tools::grub_cd_pin(arch)],
};

/// Every tool image.
pub const ALL: [&ToolImage; 4] = [&EFI_STUB, &SYSTEMD_BOOT, &ISOLINUX, &GRUB_CD];

impl ToolImage {
    /// Every file of the image for `arch` with its path: the tools, then each package's
    /// copyright file (GRUB and syslinux are GPL: the image says where they come from).
    fn contents(&self, arch: Arch) -> Vec<(ToolFile, String)> {
        let tools = (self.files)(arch);
        let mut all: Vec<(ToolFile, String)> =
            tools.iter().map(|t| (*t, t.path.to_string())).collect();
        for (i, t) in tools.iter().enumerate() {
            if !tools[..i].iter().any(|p| p.package == t.package) {
                all.push((*t, format!("usr/share/doc/{}/copyright", t.package)));
            }
        }
        all
    }

    /// `name:tag`, the tag a hash of the pins, so it changes exactly when they do.
    pub fn tag(&self) -> Reference {
        let mut h = Sha256::new();
        h.update(LAYOUT_VERSION.as_bytes());
        for &arch in self.arches {
            for f in (self.files)(arch) {
                h.update(format!(
                    "{arch} {} {} {} {} {}\n",
                    f.package, f.version, f.arch, f.sha256, f.path
                ));
            }
        }
        let text = format!("{}:{}", self.name, &hex::encode(h.finalize())[..16]);
        text.parse()
            .unwrap_or_else(|e| panic!("tool reference {text:?} does not parse: {e}"))
    }

    /// `name:tag@digest`: what a build uses.
    pub fn reference(&self) -> Reference {
        self.tag().with_digest(self.pinned_digest())
    }

    fn pinned_digest(&self) -> Digest {
        self.digest
            .parse()
            .unwrap_or_else(|e| panic!("pinned digest of {} does not parse: {e}", self.name))
    }

    /// Whether the store holds the pinned image.
    pub fn is_present(&self, store: &Store) -> bool {
        matches!(store.resolve(&self.reference()), Ok(Some(_)))
    }

    /// The image's single layer for `arch`, from the pinned packages (downloaded into
    /// `deb_cache` if absent).
    fn layer(&self, arch: Arch, deb_cache: &std::path::Path) -> Result<Vec<u8>> {
        let mut tree = Tree::new();
        for (f, path) in self.contents(arch) {
            let data = keel_formats::tools::fetch_file(&f, &path, deb_cache).map_err(|source| {
                Error::Package {
                    name: self.name,
                    path: path.clone(),
                    arch,
                    source,
                }
            })?;
            let node = Node::new(NodeKind::File(Bytes::from(data)), 0o644, self.name);
            tree.insert(&path, node)
                .map_err(|e| Error::Layer(self.name, e))?;
        }
        keel_rootfs::write_tar(&tree, Vec::new(), &WriteOptions { mtime: MTIME })
            .map_err(|e| Error::Layer(self.name, e))
    }

    /// Builds the image from its packages into the store; it is tagged only if it has the
    /// pinned digest.
    fn build(&self, store: &Store) -> Result<()> {
        let store_err = |e| Error::Store(self.name.into(), e);
        let deb_cache = store.path().join("debs");
        let mut manifests: Vec<(Arch, Descriptor)> = Vec::new();
        for &arch in self.arches {
            let mut labels = HashMap::new();
            labels.insert("org.opencontainers.image.title".into(), self.name.into());
            let packages = self
                .contents(arch)
                .iter()
                .map(|(f, _)| format!("{}:{}={} sha256:{}", f.package, f.arch, f.version, f.sha256))
                .fold(Vec::<String>::new(), |mut v, p| {
                    if !v.contains(&p) {
                        v.push(p);
                    }
                    v
                })
                .join(", ");
            labels.insert("org.keel.tool.packages".into(), packages);
            let mut c = keel_image::oci::Config::default();
            c.set_labels(Some(labels));
            let mut config = keel_image::oci::ImageConfiguration::default();
            config.set_config(Some(c));
            let desc = store
                .write_image(arch, config, &[self.layer(arch, &deb_cache)?])
                .map_err(store_err)?;
            manifests.push((arch, desc));
        }
        let index = store.write_index(&manifests).map_err(store_err)?;
        if index.digest().as_ref() != self.digest {
            return Err(Error::Digest {
                name: self.name,
                built: index.digest().to_string(),
                pinned: self.digest,
            });
        }
        store.tag(&self.tag(), index).map_err(store_err)
    }

    /// Makes sure the store holds the pinned image (building it if not); returns its reference.
    pub fn ensure(&self, store: &Store) -> Result<Reference> {
        if !self.is_present(store) {
            log::info!("making tool image {} from its pinned packages", self.name);
            self.build(store)?;
        }
        Ok(self.reference())
    }

    /// The files at `paths` (Debian paths, as in the pins) of the image for `arch`, made
    /// first if the store lacks it.
    fn files<const N: usize>(
        &self,
        store: &Store,
        arch: Arch,
        paths: [&str; N],
    ) -> Result<[Vec<u8>; N]> {
        if !self.arches.contains(&arch) {
            return Err(Error::Arch {
                name: self.name,
                arch,
                arches: self
                    .arches
                    .iter()
                    .map(|a| a.uname())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let reference = self.ensure(store)?;
        let shown = reference.to_string();
        let image = store
            .image(&reference, arch)
            .map_err(|e| Error::Store(shown.clone(), e))?;
        let tree = crate::assemble::image_tree(
            store,
            &image,
            self.name,
            keel_rootfs::DEFAULT_MAX_IMAGE_SIZE,
        )
        .map_err(|e| Error::Unpack(shown.clone(), Box::new(e)))?;
        let mut out = Vec::with_capacity(N);
        for path in paths {
            match tree.get(path).map(|n| &n.kind) {
                Some(NodeKind::File(data)) => out.push(data.to_vec()),
                _ => {
                    return Err(Error::Missing {
                        reference: shown,
                        path: path.into(),
                    });
                }
            }
        }
        Ok(out
            .try_into()
            .unwrap_or_else(|_| unreachable!("one entry per path")))
    }

    /// The tool itself (the first file) for `arch`.
    fn tool(&self, store: &Store, arch: Arch) -> Result<Vec<u8>> {
        let path = (self.files)(arch)[0].path;
        let [data] = self.files(store, arch, [path])?;
        Ok(data)
    }
}

/// The tool image called `name` (`efi-stub` or `keel/tools/efi-stub`).
pub fn find(name: &str) -> Result<&'static ToolImage> {
    ALL.into_iter()
        .find(|t| t.name == name || t.name.rsplit('/').next() == Some(name))
        .ok_or_else(|| Error::Unknown {
            name: name.into(),
            known: ALL
                .map(|t| t.name.rsplit('/').next().unwrap_or(t.name))
                .join(", "),
        })
}

/// `keel tools list`: every tool image, its pinned reference, and whether the store has it.
pub fn list(store: &Store) -> String {
    let mut out = String::new();
    for tool in ALL {
        let arches = tool
            .arches
            .iter()
            .map(|a| a.uname())
            .collect::<Vec<_>>()
            .join(",");
        let state = if tool.is_present(store) {
            "present"
        } else {
            "missing"
        };
        out.push_str(&format!(
            "{}\t{arches}\t{state}\t{}\n",
            tool.reference(),
            tool.purpose
        ));
    }
    out
}

/// systemd's EFI stub for `arch`.
pub fn efi_stub(store: &Store, arch: Arch) -> Result<Vec<u8>> {
    EFI_STUB.tool(store, arch)
}

/// systemd-boot for `arch`.
pub fn systemd_boot(store: &Store, arch: Arch) -> Result<Vec<u8>> {
    SYSTEMD_BOOT.tool(store, arch)
}

/// GRUB's CD image for `arch`.
pub fn grub_cd(store: &Store, arch: Arch) -> Result<Vec<u8>> {
    GRUB_CD.tool(store, arch)
}

/// isolinux's files (x86_64).
pub fn isolinux(store: &Store) -> Result<keel_formats::Isolinux> {
    let [bin, hdpfx, ldlinux] = keel_formats::tools::isolinux_pins().map(|f| f.path);
    let [isolinux_bin, isohdpfx, ldlinux_c32] =
        ISOLINUX.files(store, Arch::X86_64, [bin, hdpfx, ldlinux])?;
    Ok(keel_formats::Isolinux {
        isolinux_bin,
        isohdpfx,
        ldlinux_c32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh store whose package cache is the test run's shared one, so the real pinned
    /// packages are downloaded once per run.
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let debs = keel_testutil::deb_cache();
        std::fs::create_dir_all(&debs).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        std::os::unix::fs::symlink(&debs, store.path().join("debs")).unwrap();
        (dir, store)
    }

    #[test]
    fn tool_images_are_built_to_their_pinned_digests() {
        let (_dir, store) = store();
        let debs = store.path().join("debs");
        for tool in ALL {
            assert!(!tool.is_present(&store), "{}", tool.name);
            let reference = tool.ensure(&store).unwrap();
            assert!(tool.is_present(&store), "{}", tool.name);
            assert_eq!(reference.digest().unwrap().to_string(), tool.digest);
            // Tagged, so `keel cache ls` shows it.
            assert!(
                store.resolve(&tool.tag()).unwrap().is_some(),
                "{}",
                tool.name
            );
        }
        // What the formats get is the packages' files, byte for byte.
        for arch in Arch::ALL {
            let from_deb = keel_formats::tools::efi_stub(arch, &debs).unwrap();
            assert!(efi_stub(&store, arch).unwrap() == from_deb, "{arch}");
            let from_deb = keel_formats::tools::systemd_boot(arch, &debs).unwrap();
            assert!(systemd_boot(&store, arch).unwrap() == from_deb, "{arch}");
            let from_deb = keel_formats::tools::grub_cd(arch, &debs).unwrap();
            assert!(grub_cd(&store, arch).unwrap() == from_deb, "{arch}");
        }
        let from_deb = keel_formats::tools::isolinux(&debs).unwrap();
        let from_image = isolinux(&store).unwrap();
        assert!(from_image.isolinux_bin == from_deb.isolinux_bin);
        assert!(from_image.isohdpfx == from_deb.isohdpfx);
        assert!(from_image.ldlinux_c32 == from_deb.ldlinux_c32);
        // Each package's copyright file travels with it.
        let image = store.image(&GRUB_CD.reference(), Arch::Aarch64).unwrap();
        let tree = crate::assemble::image_tree(
            &store,
            &image,
            "test",
            keel_rootfs::DEFAULT_MAX_IMAGE_SIZE,
        )
        .unwrap();
        assert!(
            tree.get("usr/share/doc/grub-efi-arm64-signed/copyright")
                .is_some()
        );

        // With the images present, the packages are never looked at again.
        std::fs::remove_file(&debs).unwrap();
        for arch in Arch::ALL {
            efi_stub(&store, arch).unwrap();
        }
        isolinux(&store).unwrap();
        assert!(!debs.exists());
    }

    #[test]
    fn a_tool_is_refused_for_an_architecture_it_lacks() {
        let (_dir, store) = store();
        let err = ISOLINUX
            .files(&store, Arch::Aarch64, ["usr/lib/ISOLINUX/isolinux.bin"])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tool image keel/tools/isolinux has no aarch64 build (it has x86_64)"
        );
    }

    #[test]
    fn references_are_pinned_by_tag_and_digest() {
        for tool in ALL {
            let r = tool.reference();
            assert_eq!(r.repository(), tool.name);
            assert_eq!(r.tag().map(str::len), Some(16), "{r}");
            assert_eq!(
                r.digest().map(ToString::to_string).as_deref(),
                Some(tool.digest)
            );
        }
    }
}
