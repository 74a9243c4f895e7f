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
const LAYOUT_VERSION: &str = "keel-kernel-image/1";

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
}

/// The reference a recipe's image gets.
pub fn tag(recipe_dir: &Path) -> Result<Reference, Error> {
    let recipe = keel_kernel::Recipe::load(recipe_dir).map_err(|source| Error::Recipe {
        dir: recipe_dir.into(),
        source,
    })?;
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
pub fn build(store: &Store, recipe_dir: &Path, arches: &[Arch]) -> Result<Reference, Error> {
    let recipe = keel_kernel::Recipe::load(recipe_dir).map_err(|source| Error::Recipe {
        dir: recipe_dir.into(),
        source,
    })?;
    let reference = tag(recipe_dir)?;
    let deb_cache = store.path().join("debs");
    let mut manifests: Vec<(Arch, Descriptor)> = Vec::new();
    for &arch in arches {
        let artifacts =
            keel_kernel::build(&recipe, arch.uname(), &deb_cache).map_err(|source| {
                Error::Build {
                    dir: recipe_dir.into(),
                    arch,
                    source: Box::new(source),
                }
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
        manifests.push((arch, desc));
    }
    let index = store.write_index(&manifests).map_err(Error::Store)?;
    store.tag(&reference, index).map_err(Error::Store)?;
    Ok(reference)
}
