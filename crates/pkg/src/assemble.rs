//! One architecture's image: the root tree (Debian packages, then binaries, then files, each
//! later part overriding earlier ones) and the image configuration.

use crate::Prepared;
use crate::error::{Error, Result};
use crate::sources::{self, Input};
use crate::spdx;
use bytes::Bytes;
use keel_config::build_yml::{BuildManifest, PkgContent};
use keel_image::Arch;
use keel_image::oci::{Config, ImageConfiguration};
use keel_rootfs::{Node, NodeKind, Tree};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The label LinuxKit's `pkg build` writes from build.yml's `config:`.
pub const CONFIG_LABEL: &str = "org.mobyproject.config";

/// A Debian package the image holds, as its SBOM lists it.
pub(crate) struct DebInfo {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub control: keel_debian::Control,
    pub copyright: Option<keel_debian::copyright::Copyright>,
}

/// The root tree of `arch`'s image, and the Debian packages in it.
pub(crate) fn tree(p: &Prepared, arch: Arch, deb_cache: &Path) -> Result<(Tree, Vec<DebInfo>)> {
    let rootfs = |source| Error::Rootfs {
        arch: arch.to_string(),
        source,
    };
    let mut tree = Tree::new();
    let debian_arch = arch.oci_name();
    let apt = keel_debian::Apt::new(deb_cache, debian_arch).map_err(|source| Error::Fetch {
        package: String::new(),
        version: String::new(),
        arch: debian_arch.to_owned(),
        source: Box::new(source),
    })?;
    let mut debs = Vec::new();
    for pin in p.pins.get(&arch).map(Vec::as_slice).unwrap_or_default() {
        let pinned = keel_debian::PinnedPackage {
            name: pin.name.clone(),
            version: pin.version.clone(),
            arch: debian_arch.to_owned(),
            sha256: pin.sha256.clone(),
        };
        let path = apt.download(&pinned).map_err(|source| Error::Fetch {
            package: pin.name.clone(),
            version: pin.version.clone(),
            arch: debian_arch.to_owned(),
            source: Box::new(source),
        })?;
        let unpack_err = |source| Error::Unpack {
            package: pin.name.clone(),
            source,
        };
        let deb = keel_debian::unpack(&path).map_err(unpack_err)?;
        let data = deb.data_tar().map_err(unpack_err)?;
        let origin = format!("deb {}={}", pin.name, pin.version);
        tree.apply_layer(Path::new(""), data, &origin)
            .map_err(rootfs)?;
        debs.push(DebInfo {
            name: pin.name.clone(),
            version: pin.version.clone(),
            sha256: pin.sha256.clone(),
            control: deb.control().clone(),
            copyright: None,
        });
    }
    // Read once every package is in: a documentation directory may be a symlink to another
    // package's (`dh_installdocs --link-doc`).
    for deb in &mut debs {
        deb.copyright = copyright_of(&tree, &deb.name);
    }
    // What the packages install and the image does without; a path that is not there is an
    // error, so that a package update that moves it is noticed rather than shipped.
    for path in &p.manifest.remove {
        if !tree.remove(path.as_str()) {
            return Err(Error::RemoveMissing {
                loc: path.loc.to_string(),
                path: path.value.clone(),
                arch: arch.to_string(),
            });
        }
    }
    let built = p.binaries.get(&arch).map(Vec::as_slice).unwrap_or_default();
    for (b, data) in p.manifest.binaries.iter().zip(built) {
        let origin = format!("bin {}/{}", b.package.as_str(), b.bin.as_str());
        let node = Node::new(
            NodeKind::File(Bytes::from(data.clone())),
            0o755,
            origin.as_str(),
        );
        tree.insert(b.path.as_str(), node).map_err(rootfs)?;
        for link in &b.links {
            let node = Node::new(
                NodeKind::Symlink(PathBuf::from(b.path.as_str())),
                0o777,
                origin.as_str(),
            );
            tree.insert(link.as_str(), node).map_err(rootfs)?;
        }
    }
    for f in &p.manifest.files {
        let origin = format!("file {}", f.path.as_str());
        let mode = f.mode();
        match &f.content {
            PkgContent::Directory => {
                let node = Node::new(NodeKind::Dir, mode.unwrap_or(0o755), origin.as_str());
                tree.insert(f.path.as_str(), node).map_err(rootfs)?;
            }
            PkgContent::Symlink(target) => {
                let node = Node::new(
                    NodeKind::Symlink(PathBuf::from(target.as_str())),
                    0o777,
                    origin.as_str(),
                );
                tree.insert(f.path.as_str(), node).map_err(rootfs)?;
            }
            PkgContent::Contents(text) => {
                let data = Bytes::from(text.value.clone().into_bytes());
                let node = Node::new(NodeKind::File(data), mode.unwrap_or(0o644), origin.as_str());
                tree.insert(f.path.as_str(), node).map_err(rootfs)?;
            }
            PkgContent::Source(rel) => {
                for (suffix, input) in sources::under(&p.sources, rel) {
                    let path = format!("{}{suffix}", f.path.as_str());
                    // `mode:` applies to the source itself, not to what is below a directory.
                    let given = if suffix.is_empty() { mode } else { None };
                    let node = match input {
                        Input::File { mode, data } => Node::new(
                            NodeKind::File(Bytes::from(data.clone())),
                            given.unwrap_or(*mode),
                            origin.as_str(),
                        ),
                        Input::Dir => {
                            Node::new(NodeKind::Dir, given.unwrap_or(0o755), origin.as_str())
                        }
                        Input::Symlink(target) => {
                            Node::new(NodeKind::Symlink(target.clone()), 0o777, origin.as_str())
                        }
                    };
                    tree.insert(&path, node).map_err(rootfs)?;
                }
            }
        }
    }
    Ok((tree, debs))
}

/// The machine-readable copyright file of `package` in `tree`, following a symlinked
/// documentation directory or file within `usr/share/doc` (one level each).
fn copyright_of(tree: &Tree, package: &str) -> Option<keel_debian::copyright::Copyright> {
    let doc = Path::new("usr/share/doc");
    let mut dir = doc.join(package);
    if let Some(NodeKind::Symlink(target)) = tree.get(&dir).map(|n| &n.kind) {
        let name = target.file_name()?;
        dir = doc.join(name);
    }
    let mut file = dir.join("copyright");
    if let Some(NodeKind::Symlink(target)) = tree.get(&file).map(|n| &n.kind) {
        let name = target.strip_prefix("/").unwrap_or(target);
        file = if target.is_absolute() {
            name.to_path_buf()
        } else {
            dir.join(name)
        };
    }
    match &tree.get(&file)?.kind {
        NodeKind::File(data) => keel_debian::copyright::parse(&String::from_utf8_lossy(data)),
        _ => None,
    }
}

/// The SBOM of one architecture's image: its Debian packages and Rust binaries.
pub(crate) fn sbom(p: &Prepared, arch: Arch, debs: &[DebInfo]) -> spdx::Document {
    let name = crate::manifest_repository(&p.manifest);
    let mut doc = spdx::Document::new(
        &format!("{name} ({})", arch.uname()),
        p.mtime,
        vec!["Tool: keel".into(), "Organization: keel".into()],
    );
    for deb in debs {
        spdx::DebianPackage {
            name: &deb.name,
            version: &deb.version,
            sha256: &deb.sha256,
            control: &deb.control,
            copyright: deb.copyright.as_ref(),
            arch,
        }
        .add_to(&mut doc, "LIBRARY");
    }
    for b in &p.manifest.binaries {
        let krate = p.crates.get(b.package.as_str());
        let id = spdx::element_id("bin", &format!("{}-{}", b.package.as_str(), b.bin.as_str()));
        let mut pkg = spdx::Package::new(b.bin.as_str(), id.clone());
        pkg.version_info = krate.map(|c| c.version.clone());
        pkg.license_declared = Some(
            krate
                .and_then(|c| c.license.clone())
                .unwrap_or_else(|| spdx::NOASSERTION.into()),
        );
        pkg.license_concluded = Some(spdx::NOASSERTION.into());
        pkg.copyright_text = Some(spdx::NOASSERTION.into());
        if let Some(repository) = krate.and_then(|c| c.repository.clone()) {
            pkg.download_location = repository;
        }
        pkg.primary_package_purpose = Some("APPLICATION".into());
        pkg.comment = Some(format!(
            "Rust binary {} of Cargo package {}, built by keel for {} at {}",
            b.bin.as_str(),
            b.package.as_str(),
            crate::cargo::target_triple(arch),
            b.path.as_str()
        ));
        doc.relationships
            .push(spdx::Relationship::new(spdx::DOCUMENT_ID, "DESCRIBES", &id));
        doc.packages.push(pkg);
    }
    doc
}

/// The image configuration: entrypoint, cmd, env, working directory and the label.
pub(crate) fn image_config(m: &BuildManifest) -> ImageConfiguration {
    let list = |l: &Option<keel_config::schema::Strings>| {
        l.as_ref()
            .map(|l| l.iter().map(|s| s.value.clone()).collect::<Vec<_>>())
    };
    let mut c = Config::default();
    c.set_entrypoint(list(&m.entrypoint));
    c.set_cmd(list(&m.cmd));
    c.set_env(list(&m.env));
    c.set_working_dir(m.workdir.as_ref().map(|w| w.value.clone()));
    if let Some(label) = &m.label {
        c.set_labels(Some(HashMap::from([(
            CONFIG_LABEL.to_owned(),
            label.value.clone(),
        )])));
    }
    let mut ic = ImageConfiguration::default();
    ic.set_config(Some(c));
    ic
}
