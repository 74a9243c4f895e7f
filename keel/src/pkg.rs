//! `@pkg:DIR` templates and `keel pkg`: a directory built by keel resolves to its
//! content-addressed tag.
//!
//! A package directory (`build.yml`) is built by `keel-pkg`; a kernel recipe directory
//! (`recipe.yml`) by [`crate::kernel`]. With a store, [`ensure`] also builds the image when the
//! store does not have it yet, so a YAML naming local directories builds from a clean cache in
//! one command.

use keel_image::{Arch, Reference, Store};
use keel_pkg::PkgOptions;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is neither a package (build.yml) nor a kernel recipe (recipe.yml)", .0.display())]
    NotAPackage(PathBuf),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::Error),
    #[error(transparent)]
    Pkg(#[from] keel_pkg::Error),
    #[error("cannot look up {reference} in the store")]
    Store {
        reference: String,
        #[source]
        source: keel_image::Error,
    },
}

/// Options for the store a package build uses.
fn options(store: Option<&Store>) -> PkgOptions {
    PkgOptions {
        deb_cache: store.map(|s| s.path().join("debs")),
        ..PkgOptions::default()
    }
}

fn is_package(dir: &Path) -> bool {
    dir.join(keel_pkg::BUILD_YML).is_file()
}

/// The image `@pkg:DIR` stands for. Packages with Rust binaries build those first (cargo is
/// quick when they are up to date): the tag covers their bytes.
pub fn show_tag(dir: &Path, store: Option<&Store>) -> Result<Reference, Error> {
    if is_package(dir) {
        return Ok(keel_pkg::show_tag(dir, &options(store))?);
    }
    if crate::kernel::is_recipe(dir) {
        return Ok(crate::kernel::tag(dir, store)?);
    }
    Err(Error::NotAPackage(dir.into()))
}

/// `opts` with the store's `debs/` as the default `.deb` cache: what [`build`] and
/// [`build_tag`] both use, so that they agree.
fn with_store(store: &Store, opts: PkgOptions) -> PkgOptions {
    PkgOptions {
        deb_cache: opts.deb_cache.or_else(|| Some(store.path().join("debs"))),
        ..opts
    }
}

/// `keel pkg show-tag`: the reference [`build`] with the same options builds `dir` to. The
/// architectures are inputs of a package's tag, so `--arch` must match the build's.
pub fn build_tag(store: &Store, dir: &Path, opts: PkgOptions) -> Result<Reference, Error> {
    if is_package(dir) {
        return Ok(keel_pkg::show_tag(dir, &with_store(store, opts))?);
    }
    if crate::kernel::is_recipe(dir) {
        return Ok(crate::kernel::tag(dir, Some(store))?);
    }
    Err(Error::NotAPackage(dir.into()))
}

/// `keel pkg build`: builds a package (or kernel recipe) into the store.
pub fn build(store: &Store, dir: &Path, opts: PkgOptions) -> Result<Reference, Error> {
    if is_package(dir) {
        let _step = crate::progress::Step::start(format!("building package {}", dir.display()));
        return Ok(keel_pkg::build(store, dir, &with_store(store, opts))?);
    }
    if crate::kernel::is_recipe(dir) {
        let arches = opts.arches.unwrap_or_else(|| Arch::ALL.to_vec());
        return Ok(crate::kernel::build(store, dir, &arches, opts.locked)?);
    }
    Err(Error::NotAPackage(dir.into()))
}

/// The image `@pkg:DIR` stands for, built into `store` first when it is not there. With
/// `locked`, pins are never changed: one that has left Debian's archive is an error.
pub fn ensure(store: &Store, dir: &Path, locked: bool) -> Result<Reference, Error> {
    let reference = show_tag(dir, Some(store))?;
    let present = store.resolve(&reference).map_err(|source| Error::Store {
        reference: reference.to_string(),
        source,
    })?;
    if present.is_some() {
        return Ok(reference);
    }
    log::info!(
        "building {} ({reference} is not in the store)",
        dir.display()
    );
    // The build's own reference: the inputs may have changed since the tag was computed (a pin
    // that left the archive moves).
    let opts = PkgOptions {
        locked,
        ..PkgOptions::default()
    };
    build(store, dir, opts)
}

/// `keel pkg update-lock DIR`: moves a package's Debian pins (build.lock.json) or a kernel
/// recipe's kernel pins (recipe.yml) to the archive's current versions. Returns one line per
/// change, `ARCH: what`.
pub fn update_lock(store: &Store, dir: &Path) -> Result<Vec<String>, Error> {
    if is_package(dir) {
        let changes = keel_pkg::update_lock(dir, &options(Some(store)))?;
        return Ok(changes
            .iter()
            .map(|(arch, change)| format!("{}: {change}", arch.uname()))
            .collect());
    }
    if crate::kernel::is_recipe(dir) {
        let moves = crate::kernel::update_pins(store, dir)?;
        return Ok(moves
            .iter()
            .map(|(arch, from, to)| format!("{}: {from} -> {to}", arch.uname()))
            .collect());
    }
    Err(Error::NotAPackage(dir.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(yml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(keel_pkg::BUILD_YML), yml).unwrap();
        dir
    }

    /// `keel pkg show-tag` prints exactly what `keel pkg build` builds and tags, with and
    /// without `--arch`.
    #[test]
    fn show_tag_is_the_tag_build_uses() {
        let pkg = package("image: test/tagged\nfiles: [{path: /a, contents: a}]\n");
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        for arches in [None, Some(vec![Arch::X86_64]), Some(vec![Arch::Aarch64])] {
            let opts = || PkgOptions {
                arches: arches.clone(),
                ..PkgOptions::default()
            };
            let shown = build_tag(&store, pkg.path(), opts()).unwrap();
            let built = build(&store, pkg.path(), opts()).unwrap();
            assert_eq!(shown, built, "{arches:?}");
            assert!(store.resolve(&built).unwrap().is_some());
        }
        // Without --arch, show-tag is what "@pkg:DIR" resolves to.
        assert_eq!(
            build_tag(&store, pkg.path(), PkgOptions::default()).unwrap(),
            show_tag(pkg.path(), Some(&store)).unwrap()
        );
    }

    #[test]
    fn dockerfile_packages_are_refused() {
        let pkg = package("image: sshd\nconfig: {pid: host}\n");
        std::fs::write(pkg.path().join("Dockerfile"), "FROM alpine\n").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let e = build(&store, pkg.path(), PkgOptions::default()).unwrap_err();
        assert!(e.to_string().contains("is a Dockerfile package"), "{e}");
        let e = build_tag(&store, pkg.path(), PkgOptions::default()).unwrap_err();
        assert!(e.to_string().contains("docker build"), "{e}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn other_directories_are_not_packages() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let e = build_tag(&store, dir.path(), PkgOptions::default()).unwrap_err();
        assert!(matches!(e, Error::NotAPackage(_)), "{e}");
    }
}
