//! `keel kernel build`: a kernel recipe (`kernel/<name>/recipe.yml`) → a multi-arch kernel image
//! in the store, in LinuxKit's kernel image layout (`/kernel`, `/kernel.tar`, plus `/config`).
//!
//! The image is tagged `keel/kernel:<hash of the recipe>`, so a YAML can name it as
//! `"@pkg:../kernel/<name>"` and the tag changes exactly when the recipe does.
//!
//! A recipe either repackages a pinned Debian kernel (`packages:`, [`keel_kernel::Recipe`]) or
//! builds one from Debian's kernel source (`source:`, [`keel_kernel::source`]); the image of a
//! source build also holds `/System.map` and `/kernel-dev.tar` (the configuration, symbol
//! versions and UAPI headers out-of-tree modules and eBPF programs build against).

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
    #[error("cannot build the {arch} kernel of {}", dir.display())]
    Source {
        dir: PathBuf,
        arch: Arch,
        #[source]
        source: Box<keel_kernel::source::SourceError>,
    },
    #[error("cannot read the source recipe in {}", dir.display())]
    SourceRecipe {
        dir: PathBuf,
        #[source]
        source: Box<keel_kernel::source::SourceError>,
    },
    #[error("{}: a source recipe's `source:` pin is moved by hand (a new kernel source is a new kernel: check its configuration with `keel kernel build` and `keel kernel check`)", dir.display())]
    SourcePin { dir: PathBuf },
    #[error("{}: the recipe signs its modules, so its image depends on the signing key, which a run without a store does not know", dir.display())]
    NoSigningKey { dir: PathBuf },
    #[error("{}: no such file ({SIGNING_KEY_ENV} names a PEM file holding the module signing key and its certificate)", path.display())]
    NoSuchSigningKey { path: PathBuf },
    #[error("cannot make the module signing key {}", path.display())]
    SigningKey {
        path: PathBuf,
        #[source]
        source: Box<keel_kernel::source::SourceError>,
    },
    #[error("--config-fragment and --patch need a source recipe (one with `source:`); {} repackages a Debian kernel", dir.display())]
    NotSource { dir: PathBuf },
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

/// One-off variations of a source recipe (`keel kernel build --config-fragment/--patch`).
pub type Variant = keel_kernel::source::BuildOptions;

/// The source recipe in `dir`, if its recipe.yml is one.
fn source_recipe(dir: &Path) -> Result<Option<keel_kernel::source::SourceRecipe>, Error> {
    let text =
        std::fs::read_to_string(dir.join(keel_kernel::recipe::RECIPE_FILE)).unwrap_or_default();
    if !keel_kernel::source::is_source_recipe(&text) {
        return Ok(None);
    }
    keel_kernel::source::SourceRecipe::parse(&text, dir)
        .map(Some)
        .map_err(|source| Error::SourceRecipe {
            dir: dir.into(),
            source: Box::new(source),
        })
}

/// The repository every kernel image is tagged in.
pub const REPOSITORY: &str = "keel/kernel";

/// The environment variable naming a module signing key of the user's own (a PEM file with
/// the private key and its certificate), used instead of the store's.
pub const SIGNING_KEY_ENV: &str = "KEEL_KERNEL_SIGNING_KEY";

/// The key source recipes that sign their modules sign with: `$KEEL_KERNEL_SIGNING_KEY` when
/// set, else the store's own `kernel-keys/module-signing.pem`, made on first use. One key per
/// store keeps the builds reproducible (the same key gives the same bytes) without a key in the
/// repository; the key is an input of the image's tag, so another key is another image.
pub fn signing_key(store: &Store) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(SIGNING_KEY_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::NoSuchSigningKey { path });
        }
        return Ok(path);
    }
    let path = store.path().join("kernel-keys/module-signing.pem");
    keel_kernel::source::ensure_signing_key(&path, "keel kernel module signing key").map_err(
        |source| Error::SigningKey {
            path: path.clone(),
            source: Box::new(source),
        },
    )?;
    Ok(path)
}

/// `variant` with the store's signing key when the recipe in `dir` signs its modules and the
/// variant names no key.
fn with_signing_key(store: &Store, dir: &Path, variant: &Variant) -> Result<Variant, Error> {
    let mut variant = variant.clone();
    if variant.signing_key.is_none()
        && let Some(recipe) = source_recipe(dir)?
        && recipe.signs_modules()
    {
        variant.signing_key = Some(signing_key(store)?);
    }
    Ok(variant)
}

/// Whether `dir` is a source recipe that signs its modules (its tag needs the signing key).
pub fn signs_modules(dir: &Path) -> bool {
    matches!(source_recipe(dir), Ok(Some(recipe)) if recipe.signs_modules())
}

/// The reference a recipe's image gets (the store holds the signing key of a recipe that
/// signs its modules).
pub fn tag(recipe_dir: &Path, store: Option<&Store>) -> Result<Reference, Error> {
    match store {
        Some(store) => tag_of(
            recipe_dir,
            &with_signing_key(store, recipe_dir, &Variant::default())?,
        ),
        None => tag_of(recipe_dir, &Variant::default()),
    }
}

/// The reference of a recipe's image built with `variant`: a hash of every input (for a source
/// recipe: recipe.yml, fragments, patches, the variant's files and the compilers' versions).
pub fn tag_of(recipe_dir: &Path, variant: &Variant) -> Result<Reference, Error> {
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.as_bytes());
    if let Some(recipe) = source_recipe(recipe_dir)? {
        if recipe.signs_modules() && variant.signing_key.is_none() {
            return Err(Error::NoSigningKey {
                dir: recipe_dir.into(),
            });
        }
        let extra: Vec<PathBuf> = variant
            .fragments
            .iter()
            .chain(&variant.patches)
            .chain(&variant.signing_key)
            .cloned()
            .collect();
        let inputs = recipe
            .input_hash(&extra)
            .map_err(|source| Error::SourceRecipe {
                dir: recipe_dir.into(),
                source: Box::new(source),
            })?;
        h.update(b"source:");
        h.update(inputs.as_bytes());
    } else {
        if !variant.fragments.is_empty() || !variant.patches.is_empty() {
            return Err(Error::NotSource {
                dir: recipe_dir.into(),
            });
        }
        let recipe = load(recipe_dir)?;
        let text = std::fs::read(recipe.path.as_path()).unwrap_or_default();
        h.update(&text);
    }
    let hash = hex::encode(h.finalize());
    let reference = format!("{REPOSITORY}:{}", &hash[..16]);
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

/// Stores `arch`'s kernel image (one layer: [`layer`]), labelled with its release.
fn write_kernel_image(
    store: &Store,
    arch: Arch,
    artifacts: &keel_kernel::KernelArtifacts,
    extra: &[(&str, &[u8])],
) -> Result<Descriptor, Error> {
    let mut config = keel_image::oci::ImageConfiguration::default();
    let mut labels = std::collections::HashMap::new();
    labels.insert(
        "org.keel.kernel.release".to_string(),
        artifacts.release.clone(),
    );
    let mut c = keel_image::oci::Config::default();
    c.set_labels(Some(labels));
    config.set_config(Some(c));
    store
        .write_image(arch, config, &[layer(artifacts, extra)?])
        .map_err(Error::Store)
}

fn layer(
    artifacts: &keel_kernel::KernelArtifacts,
    extra: &[(&str, &[u8])],
) -> Result<Vec<u8>, Error> {
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
    for (path, data) in extra {
        put(path, data)?;
    }
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
    build_variant(store, recipe_dir, arches, locked, &Variant::default())
}

/// [`build`], with a source recipe's one-off fragments and patches.
pub fn build_variant(
    store: &Store,
    recipe_dir: &Path,
    arches: &[Arch],
    locked: bool,
    variant: &Variant,
) -> Result<Reference, Error> {
    if let Some(recipe) = source_recipe(recipe_dir)? {
        let variant = with_signing_key(store, recipe_dir, variant)?;
        return build_source(store, &recipe, arches, &variant);
    }
    if !variant.fragments.is_empty() || !variant.patches.is_empty() {
        return Err(Error::NotSource {
            dir: recipe_dir.into(),
        });
    }
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
        let desc = write_kernel_image(store, arch, &artifacts, &[])?;
        log::info!(
            "{arch}: kernel {} ({} modules)",
            artifacts.release,
            artifacts.modules.len()
        );
        let sbom = sbom(&recipe, arch, &artifacts)?;
        manifests.push((arch, desc, sbom));
    }
    // The tag covers recipe.yml as it is now, after any pin moved.
    let reference = tag(recipe_dir, Some(store))?;
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
    Ok(kernel_sbom(
        &recipe.name,
        arch,
        artifacts,
        (&pin.name, &pin.version, &pin.sha256),
        "OPERATING-SYSTEM",
    ))
}

/// The SBOM of `arch`'s kernel image: the one Debian package (`name`, `version`, `.deb`
/// sha256) it was made from, with `purpose` (the binary kernel package, or the source).
fn kernel_sbom(
    recipe_name: &str,
    arch: Arch,
    artifacts: &keel_kernel::KernelArtifacts,
    (name, version, sha256): (&str, &str, &str),
    purpose: &str,
) -> keel_pkg::spdx::Document {
    let mut doc = keel_pkg::spdx::Document::new(
        &format!(
            "{recipe_name} kernel {} ({})",
            artifacts.release,
            arch.uname()
        ),
        keel_rootfs::WriteOptions::from_env().mtime,
        vec!["Tool: keel".into(), "Organization: keel".into()],
    );
    keel_pkg::spdx::DebianPackage {
        name,
        version,
        sha256,
        control: &artifacts.control,
        copyright: artifacts.copyright.as_ref(),
        arch,
    }
    .add_to(&mut doc, purpose);
    doc
}

/// A source recipe built for `arches` (each in the store's kernel work directory, kept for
/// the next, incremental build), stored and tagged.
fn build_source(
    store: &Store,
    recipe: &keel_kernel::source::SourceRecipe,
    arches: &[Arch],
    variant: &Variant,
) -> Result<Reference, Error> {
    let deb_cache = store.path().join("debs");
    let work = store.path().join("kernel-work");
    let reference = tag_of(&recipe.dir, variant)?;
    let mut manifests = Vec::new();
    for &arch in arches {
        let _step = crate::progress::Step::start(format!(
            "building kernel {} from source for {arch}",
            recipe.dir.display()
        ));
        let built = keel_kernel::source::build(recipe, arch.uname(), &deb_cache, &work, variant)
            .map_err(|source| Error::Source {
                dir: recipe.dir.clone(),
                arch,
                source: Box::new(source),
            })?;
        let artifacts = &built.artifacts;
        let desc = write_kernel_image(
            store,
            arch,
            artifacts,
            &[
                ("System.map", &built.system_map),
                ("kernel-dev.tar", &built.dev_tar),
            ],
        )?;
        log::info!(
            "{arch}: kernel {} built from {}={} ({} KiB)",
            artifacts.release,
            recipe.source.name,
            recipe.source.version,
            artifacts.kernel.len() >> 10
        );
        let doc = kernel_sbom(
            &recipe.name,
            arch,
            artifacts,
            (
                &recipe.source.name,
                &recipe.source.version,
                &recipe.source.sha256,
            ),
            "SOURCE",
        );
        manifests.push((arch, desc, doc));
    }
    let index = keel_pkg::spdx::write_index_with_sboms(store, &reference.to_string(), manifests)
        .map_err(Error::Sbom)?;
    store.tag(&reference, index).map_err(Error::Store)?;
    Ok(reference)
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
    if source_recipe(recipe_dir)?.is_some() {
        return Err(Error::SourcePin {
            dir: recipe_dir.into(),
        });
    }
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
