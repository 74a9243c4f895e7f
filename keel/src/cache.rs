//! `keel cache`: list, remove, clean, import, export and pull images of the store.

use keel_image::{Arch, PullOptions, Reference, Store};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {text:?}")]
    Reference {
        text: String,
        #[source]
        source: keel_image::ReferenceError,
    },
    #[error(transparent)]
    Store(#[from] keel_image::Error),
    #[error(
        "{} {} not in the store; `keel cache ls` lists what it holds",
        .0.join(", "),
        if .0.len() == 1 { "is" } else { "are" }
    )]
    NotFound(Vec<String>),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A `keel cache` command.
#[derive(Debug, Clone)]
pub enum Command {
    List,
    Remove(Vec<String>),
    Clean,
    Import(Vec<PathBuf>),
    Export {
        reference: String,
        output: PathBuf,
    },
    Pull {
        reference: String,
        arch: Arch,
        /// How the registry is reached (`--insecure-registry`, `--mirror`).
        registry: PullOptions,
    },
}

fn parse(text: &str) -> Result<Reference, Error> {
    text.parse().map_err(|source| Error::Reference {
        text: text.to_owned(),
        source,
    })
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
            for (reference, freed) in remove(store, &references)? {
                println!("removed {reference} ({freed} blobs freed)");
            }
        }
        Command::Clean => {
            let cleaned = clean(store)?;
            for path in &cleaned.kept {
                log::warn!("left {}: keel did not put it there", path.display());
            }
            println!(
                "removed {} {} from {}, {} freed",
                cleaned.images,
                if cleaned.images == 1 {
                    "image"
                } else {
                    "images"
                },
                store.path().display(),
                human_size(cleaned.bytes)
            );
        }
        Command::Import(paths) => {
            for path in paths {
                for name in store.import(&path)? {
                    println!("{name}");
                }
            }
        }
        Command::Export { reference, output } => {
            store.export(&parse(&reference)?, &output)?;
        }
        Command::Pull {
            reference,
            arch,
            registry,
        } => {
            let reference = parse(&reference)?;
            let desc = store.pull(&reference, arch, &registry)?;
            println!("{reference}@{}", desc.digest());
        }
    }
    Ok(())
}

/// `keel cache rm`: removes each image (its tag, then the blobs nothing else uses). Every
/// reference is checked first: when one is invalid or not in the store, nothing is removed.
/// Returns each reference with the number of blobs its removal freed.
pub fn remove(store: &Store, references: &[String]) -> Result<Vec<(Reference, usize)>, Error> {
    let references = references
        .iter()
        .map(|text| parse(text))
        .collect::<Result<Vec<_>, _>>()?;
    let mut missing = Vec::new();
    for reference in &references {
        if store.resolve(reference)?.is_none() {
            missing.push(reference.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(Error::NotFound(missing));
    }
    let mut out = Vec::with_capacity(references.len());
    for reference in references {
        let freed = store.remove(&reference)?;
        out.push((reference, freed));
    }
    Ok(out)
}

/// What [`clean`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// Images (tags) the store listed.
    pub images: usize,
    /// Bytes of the files removed.
    pub bytes: u64,
    /// Entries of the store directory that are not keel's, left in place.
    pub kept: Vec<PathBuf>,
}

/// What keel keeps in a store directory: the OCI layout, its temporary directory (see
/// `keel_image::Store`) and the `.deb` cache (`debs/`, with its apt state). `.keel-lock` stays:
/// another keel process may hold it, and it is empty.
const STORE_ENTRIES: &[&str] = &["blobs", "index.json", "oci-layout", ".keel-tmp", "debs"];
const STORE_LOCK: &str = ".keel-lock";

/// `keel cache clean`: empties the store, as `linuxkit cache clean` empties LinuxKit's cache:
/// every image, every blob and the `.deb` cache. Anything else in the directory (the store may
/// have been pointed at one that holds other files) is left where it is and listed in
/// [`Cleaned::kept`]. The store is an empty, usable layout afterwards.
pub fn clean(store: &Store) -> Result<Cleaned, Error> {
    // A corrupt index is what `clean` is for: count no images then, and go on.
    let images = match store.list() {
        Ok(list) => list.len(),
        Err(e) if e.is_store_corrupt() => 0,
        Err(e) => return Err(e.into()),
    };
    let root = store.path();
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let mut entries = std::fs::read_dir(root)
        .map_err(io("list", root))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("list", root))?;
    entries.sort();
    let mut bytes = 0;
    let mut kept = Vec::new();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == STORE_LOCK {
            continue;
        }
        if !STORE_ENTRIES.contains(&name) {
            kept.push(path);
            continue;
        }
        bytes += disk_size(&path)?;
        let meta = std::fs::symlink_metadata(&path).map_err(io("inspect", &path))?;
        if meta.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
        } else {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        }
    }
    // An empty layout again, for the next command.
    Store::open(root)?;
    Ok(Cleaned {
        images,
        bytes,
        kept,
    })
}

/// The bytes of the files under `path`, symlinks not followed.
fn disk_size(path: &Path) -> Result<u64, Error> {
    let err = |source| Error::Io {
        action: "inspect",
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(err)? {
        total += disk_size(&entry.map_err(err)?.path())?;
    }
    Ok(total)
}

/// `1234567` → `1.2 MiB`: bytes in the largest binary unit that keeps a whole number.
pub fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scale: u64 = 1024;
    while unit + 1 < UNITS.len() && bytes / scale >= 1024 {
        unit += 1;
        scale *= 1024;
    }
    let tenths = u128::from(bytes) * 10 / u128::from(scale);
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a temporary directory with an image per name (each with its own layer).
    fn store_with(names: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for name in names {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(u64::try_from(name.len()).unwrap());
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, "name", name.as_bytes()).unwrap();
            let layer = tar.into_inner().unwrap();
            let config = keel_image::oci::ImageConfiguration::default();
            let desc = store.write_image(Arch::X86_64, config, &[layer]).unwrap();
            store.tag(&name.parse().unwrap(), desc).unwrap();
        }
        (dir, store)
    }

    fn listed(store: &Store) -> Vec<String> {
        store.list().unwrap().into_iter().map(|(r, _)| r).collect()
    }

    #[test]
    fn rm_checks_every_reference_before_removing_any() {
        let (_dir, store) = store_with(&["test/a:1", "test/b:1"]);
        let e = remove(&store, &["test/a:1".into(), "test/c:1".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "docker.io/test/c:1 is not in the store; `keel cache ls` lists what it holds"
        );
        let e = remove(&store, &["test/c:1".into(), "test/d".into()]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("docker.io/test/c:1, docker.io/test/d:latest are not in the store"),
            "{e}"
        );
        let e = remove(&store, &["test/a:1".into(), "Bad Name".into()]).unwrap_err();
        assert!(matches!(e, Error::Reference { .. }), "{e}");
        assert!(e.to_string().contains("\"Bad Name\""), "{e}");
        assert_eq!(listed(&store), ["docker.io/test/a:1", "docker.io/test/b:1"]);

        let removed = remove(&store, &["test/a:1".into()]).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].0.to_string(), "docker.io/test/a:1");
        // Its manifest, config and layer: b's are different blobs.
        assert_eq!(removed[0].1, 3);
        assert_eq!(listed(&store), ["docker.io/test/b:1"]);
        let e = remove(&store, &["test/a:1".into()]).unwrap_err();
        assert!(e.to_string().contains("is not in the store"), "{e}");
    }

    #[test]
    fn clean_empties_the_store_and_leaves_foreign_files() {
        let (dir, store) = store_with(&["test/a:1", "test/b:1"]);
        let debs = dir.path().join("debs");
        std::fs::create_dir_all(debs.join("apt/amd64")).unwrap();
        std::fs::write(debs.join("sha256-00.deb"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();

        let cleaned = clean(&store).unwrap();
        assert_eq!(cleaned.images, 2);
        assert!(cleaned.bytes > 4096, "{cleaned:?}");
        assert_eq!(cleaned.kept, [dir.path().join("notes.txt")]);
        assert!(!debs.exists());
        assert_eq!(
            std::fs::read(dir.path().join("notes.txt")).unwrap(),
            b"mine"
        );
        let blobs = dir.path().join("blobs/sha256");
        assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);
        // Still a store: empty, and usable.
        assert!(listed(&store).is_empty());
        let reopened = Store::open(dir.path()).unwrap();
        assert!(listed(&reopened).is_empty());
        let again = store_again(&reopened);
        let cleaned = clean(&reopened).unwrap();
        assert_eq!(cleaned.images, 1);
        assert_eq!(cleaned.kept, [dir.path().join("notes.txt")]);
        assert!(reopened.resolve(&again).unwrap().is_none());
    }

    /// Writes and tags an image, proving the store works.
    fn store_again(store: &Store) -> Reference {
        let reference: Reference = "test/again:1".parse().unwrap();
        let config = keel_image::oci::ImageConfiguration::default();
        let desc = store.write_image(Arch::X86_64, config, &[]).unwrap();
        store.tag(&reference, desc).unwrap();
        assert!(store.resolve(&reference).unwrap().is_some());
        reference
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 + 1024 * 1024 / 2), "5.5 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(u64::MAX), "16777215.9 TiB");
    }
}
