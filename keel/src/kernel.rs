//! `keel kernel build`: a kernel recipe (`kernel/<name>/recipe.yml`) → a multi-arch kernel image
//! in the store, in LinuxKit's kernel image layout (`/kernel`, `/kernel.tar`, plus `/config`).
//!
//! The image is tagged `keel/kernel:<hash of the recipe>`, so a YAML can name it as
//! `"@pkg:../kernel/<name>"` and the tag changes exactly when the recipe does.

use bytes::Bytes;
use keel_image::oci::Descriptor;
use keel_image::{Arch, Reference, Store};
use keel_rootfs::{Node, NodeKind, Tree, WriteOptions};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Bumped when the image layout built from a recipe changes, so old tags are not reused.
/// `/2`: the image carries its SBOM (the kernel's Debian package), as packages do.
const LAYOUT_VERSION: &str = "keel-kernel-image/2";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kernel recipe {}", dir.display())]
    Recipe {
        dir: PathBuf,
        #[source]
        source: keel_kernel::RecipeError,
    },
    #[error("cannot build the {arch} kernel of {}", dir.display())]
    Build {
        dir: PathBuf,
        arch: Arch,
        #[source]
        source: Box<keel_kernel::KernelError>,
    },
    #[error("generated kernel image reference is invalid")]
    Tag(#[source] keel_image::ReferenceError),
    #[error("cannot assemble the kernel image")]
    Layer(#[source] keel_rootfs::Error),
    #[error("cannot store the kernel image")]
    Store(#[source] keel_image::Error),
    #[error("cannot attach the kernel image's SBOM")]
    Sbom(#[source] keel_pkg::Error),
    #[error(
        "{}: {package}={version} ({arch}) is no longer in Debian's archive; run `keel pkg update-lock {}` to move the pin to the newest kernel of its flavour (a build without --locked does this by itself)",
        recipe.display(), dir.display()
    )]
    PinLeftArchive {
        recipe: PathBuf,
        dir: PathBuf,
        /// `x86_64` or `aarch64`, as recipe.yml names it.
        arch: &'static str,
        package: String,
        version: String,
    },
    #[error("cannot move the {arch} pin of {}", dir.display())]
    Refresh {
        dir: PathBuf,
        arch: Arch,
        #[source]
        source: Box<keel_kernel::KernelError>,
    },
}

/// One pin a refresh moved: (architecture, old package=version, new package=version).
pub type PinMove = (Arch, String, String);

/// The reference a recipe's image gets.
pub fn tag(recipe_dir: &Path) -> Result<Reference, Error> {
    let recipe = load(recipe_dir)?;
    let text = std::fs::read(recipe.path.as_path()).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.as_bytes());
    h.update(&text);
    let hash = hex::encode(h.finalize());
    let reference = format!("keel/kernel:{}", &hash[..16]);
    Ok(reference
        .parse()
        .unwrap_or_else(|_| unreachable_reference(&reference)))
}

// The tag is built from hex digits and a fixed name: it always parses.
fn unreachable_reference(text: &str) -> Reference {
    panic!("generated reference {text:?} does not parse")
}

/// Whether a directory holds a kernel recipe (rather than a package).
pub fn is_recipe(dir: &Path) -> bool {
    dir.join("recipe.yml").is_file()
}

fn layer(artifacts: &keel_kernel::KernelArtifacts) -> Result<Vec<u8>, Error> {
    let mut tree = Tree::new();
    let origin = format!("kernel {}", artifacts.release);
    let mut put = |path: &str, data: &[u8]| {
        tree.insert(
            path,
            Node::new(
                NodeKind::File(Bytes::copy_from_slice(data)),
                0o644,
                origin.as_str(),
            ),
        )
        .map_err(Error::Layer)
    };
    put("kernel", &artifacts.kernel)?;
    put("kernel.tar", &artifacts.modules_tar)?;
    put("config", &artifacts.config)?;
    keel_rootfs::write_tar(&tree, Vec::new(), &WriteOptions::from_env()).map_err(Error::Layer)
}

/// Builds the recipe for `arches` into the store and tags it; returns the reference.
///
/// A pinned kernel package that has left Debian's archive moves to the newest kernel of the same
/// flavour (one warning, recipe.yml rewritten, and so a new tag), unless `locked`, where it is
/// an error naming the command that moves it.
pub fn build(
    store: &Store,
    recipe_dir: &Path,
    arches: &[Arch],
    locked: bool,
) -> Result<Reference, Error> {
    let mut recipe = load(recipe_dir)?;
    let deb_cache = store.path().join("debs");
    let mut manifests: Vec<(Arch, Descriptor, keel_pkg::spdx::Document)> = Vec::new();
    for &arch in arches {
        let _step = crate::progress::Step::start(format!(
            "building kernel {} for {arch}",
            recipe_dir.display()
        ));
        let artifacts = match keel_kernel::build(&recipe, arch.uname(), &deb_cache) {
            // A version replaced by a newer upload, or the whole ABI package removed.
            Err(keel_kernel::KernelError::Fetch(
                keel_debian::AptError::NotInArchive { .. } | keel_debian::AptError::UnknownPackage { .. },
            )) => {
                let old = recipe.package(arch.uname()).map_err(|source| Error::Recipe {
                    dir: recipe_dir.into(),
                    source,
                })?;
                let (package, version) = (old.name, old.version);
                if locked {
                    return Err(Error::PinLeftArchive {
                        recipe: recipe.path.clone(),
                        dir: recipe_dir.into(),
                        arch: arch.uname(),
                        package,
                        version,
                    });
                }
                let (moved, refreshed) = move_pin(&recipe, recipe_dir, arch, &deb_cache)?;
                log::warn!(
                    "{}: {} ({}) has left Debian's archive; using {} and updating recipe.yml (`--locked` refuses this)",
                    recipe_dir.display(),
                    moved.1,
                    arch.uname(),
                    moved.2
                );
                recipe = refreshed;
                keel_kernel::build(&recipe, arch.uname(), &deb_cache)
            }
            other => other,
        }
        .map_err(|source| Error::Build {
            dir: recipe_dir.into(),
            arch,
            source: Box::new(source),
        })?;
        let mut config = keel_image::oci::ImageConfiguration::default();
        let mut labels = std::collections::HashMap::new();
        labels.insert(
            "org.keel.kernel.release".to_string(),
            artifacts.release.clone(),
        );
        let mut c = keel_image::oci::Config::default();
        c.set_labels(Some(labels));
        config.set_config(Some(c));
        let desc = store
            .write_image(arch, config, &[layer(&artifacts)?])
            .map_err(Error::Store)?;
        log::info!(
            "{arch}: kernel {} ({} modules)",
            artifacts.release,
            artifacts.modules.len()
        );
        let sbom = sbom(&recipe, arch, &artifacts)?;
        manifests.push((arch, desc, sbom));
    }
    // The tag covers recipe.yml as it is now, after any pin moved.
    let reference = tag(recipe_dir)?;
    let index = keel_pkg::spdx::write_index_with_sboms(store, &reference.to_string(), manifests)
        .map_err(Error::Sbom)?;
    store.tag(&reference, index).map_err(Error::Store)?;
    Ok(reference)
}

/// The SBOM of `arch`'s kernel image: the Debian package it was made from.
fn sbom(
    recipe: &keel_kernel::Recipe,
    arch: Arch,
    artifacts: &keel_kernel::KernelArtifacts,
) -> Result<keel_pkg::spdx::Document, Error> {
    let pin = recipe
        .package(arch.uname())
        .map_err(|source| Error::Recipe {
            dir: recipe.path.clone(),
            source,
        })?;
    let created = keel_kernel::source_date_epoch().map_err(|source| Error::Build {
        dir: recipe.path.clone(),
        arch,
        source: Box::new(source),
    })?;
    let mut doc = keel_pkg::spdx::Document::new(
        &format!(
            "{} kernel {} ({})",
            recipe.name,
            artifacts.release,
            arch.uname()
        ),
        created,
        vec!["Tool: keel".into(), "Organization: keel".into()],
    );
    keel_pkg::spdx::DebianPackage {
        name: &pin.name,
        version: &pin.version,
        sha256: &pin.sha256,
        control: &artifacts.control,
        copyright: artifacts.copyright.as_ref(),
        arch,
    }
    .add_to(&mut doc, "OPERATING-SYSTEM");
    Ok(doc)
}

fn load(recipe_dir: &Path) -> Result<keel_kernel::Recipe, Error> {
    keel_kernel::Recipe::load(recipe_dir).map_err(|source| Error::Recipe {
        dir: recipe_dir.into(),
        source,
    })
}

/// Moves `arch`'s pin to the newest kernel of its flavour and rewrites recipe.yml when it
/// differs; returns the move and the recipe as now written.
fn move_pin(
    recipe: &keel_kernel::Recipe,
    recipe_dir: &Path,
    arch: Arch,
    deb_cache: &Path,
) -> Result<(PinMove, keel_kernel::Recipe), Error> {
    let refresh = |source| Error::Refresh {
        dir: recipe_dir.into(),
        arch,
        source: Box::new(source),
    };
    let old = recipe
        .package(arch.uname())
        .map_err(|e| refresh(e.into()))?;
    let new = keel_kernel::newest_of_flavour(&old, deb_cache).map_err(refresh)?;
    let moved = (
        arch,
        format!("{}={}", old.name, old.version),
        format!("{}={}", new.name, new.version),
    );
    if new.sha256 == old.sha256 {
        return Ok((moved, recipe.clone()));
    }
    let pin = keel_kernel::PackagePin {
        name: new.name,
        version: new.version,
        sha256: new.sha256,
    };
    let written = recipe
        .set_pin(arch.uname(), &pin)
        .map_err(|e| refresh(e.into()))?;
    Ok((moved, written))
}

/// `keel pkg update-lock` for a kernel recipe: every architecture's pin moves to the newest
/// kernel of its flavour in the archive now. Returns the pins that moved.
pub fn update_pins(store: &Store, recipe_dir: &Path) -> Result<Vec<PinMove>, Error> {
    let mut recipe = load(recipe_dir)?;
    let deb_cache = store.path().join("debs");
    let mut moves = Vec::new();
    for arch in Arch::ALL {
        if recipe.package(arch.uname()).is_err() {
            continue;
        }
        let (moved, written) = move_pin(&recipe, recipe_dir, arch, &deb_cache)?;
        if moved.1 != moved.2 {
            moves.push(moved);
        }
        recipe = written;
    }
    Ok(moves)
}
