//! `@pkg:DIR` templates: a directory built by keel resolves to its content-addressed tag.
//!
//! A kernel recipe directory (`recipe.yml`) resolves to its kernel image's tag.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is neither a kernel recipe (recipe.yml) nor a package (build.yml)", .0.display())]
    NotAPackage(std::path::PathBuf),
    #[error(transparent)]
    Kernel(#[from] Box<crate::kernel::Error>),
}

/// The tag `@pkg:DIR` stands for.
pub fn show_tag(dir: &Path) -> Result<String, Error> {
    if crate::kernel::is_recipe(dir) {
        return Ok(crate::kernel::tag(dir).map_err(Box::new)?.to_string());
    }
    Err(Error::NotAPackage(dir.into()))
}
