//! `@pkg:DIR` templates: a directory built by keel resolves to its content-addressed tag.
//!
//! A kernel recipe directory (`recipe.yml`) resolves to its kernel image's tag. With a store,
//! [`ensure`] also builds the image when the store does not have it yet, so a YAML that names
//! local directories builds from a clean cache in one command.

use keel_image::{Arch, Reference, Store};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is neither a kernel recipe (recipe.yml) nor a package (build.yml)", .0.display())]
    NotAPackage(PathBuf),
    #[error(transparent)]
    Kernel(#[from] Box<crate::kernel::Error>),
    #[error("cannot look up {reference} in the store")]
    Store {
        reference: String,
        #[source]
        source: Box<keel_image::Error>,
    },
}

/// The image `@pkg:DIR` stands for.
pub fn show_tag(dir: &Path) -> Result<Reference, Error> {
    if crate::kernel::is_recipe(dir) {
        return crate::kernel::tag(dir).map_err(|e| Error::Kernel(Box::new(e)));
    }
    Err(Error::NotAPackage(dir.into()))
}

/// The image `@pkg:DIR` stands for, built into `store` first when it is not there.
pub fn ensure(store: &Store, dir: &Path) -> Result<Reference, Error> {
    let reference = show_tag(dir)?;
    let present = store.resolve(&reference).map_err(|source| Error::Store {
        reference: reference.to_string(),
        source: Box::new(source),
    })?;
    if present.is_none() {
        log::info!(
            "building {} ({reference} is not in the store)",
            dir.display()
        );
        crate::kernel::build(store, dir, &Arch::ALL).map_err(|e| Error::Kernel(Box::new(e)))?;
    }
    Ok(reference)
}
