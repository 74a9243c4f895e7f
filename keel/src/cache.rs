//! `keel cache`: list, remove, import, export and pull images of the store.

use keel_image::{Arch, PullOptions, Reference, Store};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference")]
    Reference(#[from] keel_image::ReferenceError),
    #[error(transparent)]
    Store(#[from] keel_image::Error),
    #[error("{0} is not in the store")]
    NotFound(String),
}

/// A `keel cache` command.
#[derive(Debug, Clone)]
pub enum Command {
    List,
    Remove(Vec<String>),
    Import(Vec<PathBuf>),
    Export {
        reference: String,
        output: PathBuf,
    },
    Pull {
        reference: String,
        arch: Arch,
        insecure: bool,
    },
}

/// Runs a cache command, printing its result on stdout.
pub fn run(store: &Store, command: Command) -> Result<(), Error> {
    match command {
        Command::List => {
            let images = store.list()?;
            let width = images
                .iter()
                .map(|(r, _)| r.len())
                .max()
                .unwrap_or(0)
                .max("REFERENCE".len());
            println!("{:width$}  DIGEST", "REFERENCE");
            for (reference, desc) in images {
                println!("{reference:width$}  {}", desc.digest());
            }
        }
        Command::Remove(references) => {
            for text in references {
                let reference: Reference = text.parse()?;
                if store.resolve(&reference)?.is_none() {
                    return Err(Error::NotFound(reference.to_string()));
                }
                let freed = store.remove(&reference)?;
                println!("removed {reference} ({freed} blobs freed)");
            }
        }
        Command::Import(paths) => {
            for path in paths {
                for name in store.import(&path)? {
                    println!("{name}");
                }
            }
        }
        Command::Export { reference, output } => {
            let reference: Reference = reference.parse()?;
            store.export(&reference, &output)?;
        }
        Command::Pull {
            reference,
            arch,
            insecure,
        } => {
            let reference: Reference = reference.parse()?;
            let desc = store.pull(
                &reference,
                arch,
                &PullOptions {
                    insecure,
                    ..PullOptions::default()
                },
            )?;
            println!("{reference}@{}", desc.digest());
        }
    }
    Ok(())
}
