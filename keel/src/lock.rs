//! The lock file: every image reference of a build pinned to a digest.
//!
//! `keel build` writes it beside the first YAML file (`minimal.yml` → `minimal.lock.json`).
//! Later builds resolve each reference to its pinned digest; `--pull` re-resolves and updates the
//! pins; `--locked` refuses to build when a pin is missing or would change.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Current lock file format version.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read lock file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock file {path} is malformed; delete it to re-pin every image")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("lock file {path} has version {found}, this keel reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error(
        "lock file pins {reference} to {digest:?}, which is not a sha256 digest; delete the entry to re-pin it"
    )]
    Invalid { reference: String, digest: String },
    #[error("cannot write lock file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Image reference (normalised, as written in the YAML after normalisation) → pinned digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    version: u32,
    images: BTreeMap<String, String>,
}

/// One difference between a lock file and what a build resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added {
        reference: String,
        digest: String,
    },
    Changed {
        reference: String,
        from: String,
        to: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { reference, digest } => {
                write!(f, "{reference}: not pinned (resolves to {digest})")
            }
            Change::Changed {
                reference,
                from,
                to,
            } => write!(f, "{reference}: pinned {from}, resolves to {to}"),
        }
    }
}

impl Lock {
    /// The lock file that belongs to a YAML file: same directory, `<stem>.lock.json`.
    pub fn path_for(yaml: &Path) -> PathBuf {
        let stem = yaml
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        yaml.with_file_name(format!("{stem}.lock.json"))
    }

    /// Reads a lock file; a missing file is an empty lock.
    pub fn load(path: &Path) -> Result<Lock, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(source) => {
                return Err(Error::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let lock: Lock = serde_json::from_str(&text).map_err(|source| Error::Parse {
            path: path.into(),
            source,
        })?;
        if lock.version != VERSION {
            return Err(Error::Version {
                path: path.into(),
                found: lock.version,
            });
        }
        Ok(lock)
    }

    /// The pinned digest of a reference.
    pub fn get(&self, reference: &str) -> Option<&str> {
        self.images.get(reference).map(String::as_str)
    }

    pub fn insert(&mut self, reference: String, digest: String) {
        self.images.insert(reference, digest);
    }

    /// Every pin, sorted by reference.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.images.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// What would change if `resolved` (every reference of a build) replaced this lock's pins.
    pub fn changes(&self, resolved: &Lock) -> Vec<Change> {
        resolved
            .images
            .iter()
            .filter_map(|(reference, digest)| match self.images.get(reference) {
                None => Some(Change::Added {
                    reference: reference.clone(),
                    digest: digest.clone(),
                }),
                Some(pinned) if pinned != digest => Some(Change::Changed {
                    reference: reference.clone(),
                    from: pinned.clone(),
                    to: digest.clone(),
                }),
                Some(_) => None,
            })
            .collect()
    }

    /// Writes the lock atomically (temp file + rename), sorted, with a trailing newline.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut lock = self.clone();
        lock.version = VERSION;
        let mut text = serde_json::to_string_pretty(&lock).unwrap_or_default();
        text.push('\n');
        let tmp = path.with_extension("json.tmp");
        let write = || -> io::Result<()> {
            std::fs::write(&tmp, text.as_bytes())?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            Error::Write {
                path: path.into(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(pairs: &[(&str, &str)]) -> Lock {
        let mut l = Lock::default();
        for (r, d) in pairs {
            l.insert((*r).into(), (*d).into());
        }
        l
    }

    #[test]
    fn path_sits_beside_the_yaml() {
        assert_eq!(
            Lock::path_for(Path::new("images/minimal.yml")),
            Path::new("images/minimal.lock.json")
        );
    }

    #[test]
    fn changes_report_new_and_moved_pins() {
        let old = lock(&[("a", "sha256:1"), ("b", "sha256:2")]);
        let new = lock(&[("a", "sha256:1"), ("b", "sha256:3"), ("c", "sha256:4")]);
        let changes: Vec<String> = old.changes(&new).iter().map(ToString::to_string).collect();
        assert_eq!(
            changes,
            [
                "b: pinned sha256:2, resolves to sha256:3",
                "c: not pinned (resolves to sha256:4)"
            ]
        );
        assert!(new.changes(&new).is_empty());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock.json");
        assert!(Lock::load(&path).unwrap().is_empty());
        let l = lock(&[("docker.io/library/alpine:3.19", "sha256:ab")]);
        l.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"version\": 1,"), "{text}");
        assert_eq!(
            Lock::load(&path)
                .unwrap()
                .get("docker.io/library/alpine:3.19"),
            Some("sha256:ab")
        );
    }

    #[test]
    fn wrong_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock.json");
        std::fs::write(&path, r#"{"version": 9, "images": {}}"#).unwrap();
        assert!(matches!(
            Lock::load(&path),
            Err(Error::Version { found: 9, .. })
        ));
    }
}
