//! Talking to Debian's archive through the host's `apt-get`/`apt-cache` with a private state:
//! package lists, the binary cache and the "installed" database are redirected under a cache
//! directory the caller owns, and the architecture is forced, so the host's apt state is never
//! read for selection nor written, and foreign architectures need no `dpkg --add-architecture`.
//! The host's sources (`/etc/apt/sources.list*`) are used as they are.
//!
//! Layout under the cache directory:
//! - `sha256-<hex>.deb`: verified packages, named by their digest, so a second build does no
//!   network at all;
//! - `apt/<arch>/lists`, `apt/<arch>/cache`: the private apt state, refreshed (`apt-get update`)
//!   at most once per process and state directory, and only when something must be looked up.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use log::{debug, info, warn};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::PinnedPackage;
use crate::control::Control;

/// Why a package could not be resolved or fetched.
#[derive(Debug, Error)]
pub enum AptError {
    /// The architecture name is not a plain Debian architecture name.
    #[error("invalid Debian architecture {0:?}")]
    InvalidArch(String),
    /// A pin's digest is not 64 lower-case hex digits.
    #[error("{package}: sha256 {sha256:?} is not 64 lower-case hex digits")]
    InvalidSha256 {
        /// The package name.
        package: String,
        /// The digest as given.
        sha256: String,
    },
    /// A pin asks for another architecture than this [`Apt`] handles.
    #[error("{package} is pinned for {pinned}, not {arch}")]
    ArchMismatch {
        /// The package name.
        package: String,
        /// The pin's architecture.
        pinned: String,
        /// This state's architecture.
        arch: String,
    },
    /// A file or directory of the cache could not be used.
    #[error("cannot use {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `apt-get`/`apt-cache` could not be started.
    #[error("cannot run {program} (is apt installed?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An apt command failed for another reason than a missing package.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, without the private-state options.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The archive has no package of that name for that architecture.
    #[error("no package {package} for {arch} in the archive")]
    UnknownPackage {
        /// The package name.
        package: String,
        /// The architecture.
        arch: String,
    },
    /// The pinned version has left the archive (superseded by a newer upload).
    #[error(
        "{package}={version} ({arch}) is no longer in the archive; update the pin (available: {})",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    NotInArchive {
        /// The package name.
        package: String,
        /// The pinned version.
        version: String,
        /// The architecture.
        arch: String,
        /// Versions the archive offers now.
        available: Vec<String>,
    },
    /// The downloaded file does not have the pinned digest; it was deleted.
    #[error(
        "{package}={version} ({arch}): sha256 mismatch: expected {expected}, got {actual}; the file was deleted"
    )]
    Sha256Mismatch {
        /// The package name.
        package: String,
        /// The version.
        version: String,
        /// The architecture.
        arch: String,
        /// The pinned digest.
        expected: String,
        /// The digest of what was downloaded.
        actual: String,
    },
    /// `apt-get download` succeeded but left no `.deb`.
    #[error("apt-get download of {package} produced no .deb")]
    NoDownload {
        /// The package name.
        package: String,
    },
    /// `apt-cache show` lacks a field a pin needs.
    #[error("apt-cache show {package}: no {field} field")]
    MissingField {
        /// The package name.
        package: String,
        /// The field.
        field: &'static str,
    },
}

type Result<T> = std::result::Result<T, AptError>;

/// Serialises apt runs in this process (apt locks its lists directory and fails rather than
/// waits) and remembers which private states were refreshed.
static UPDATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// apt with a private state for one architecture, rooted in a cache directory.
#[derive(Debug, Clone)]
pub struct Apt {
    arch: String,
    cache_dir: PathBuf,
    state: PathBuf,
}

/// Downloads (or finds in `cache_dir`) the exact package `pkg` and verifies its sha256.
/// Returns the path of the verified `.deb` inside `cache_dir`.
pub fn download(pkg: &PinnedPackage, cache_dir: &Path) -> Result<PathBuf> {
    Apt::new(cache_dir, &pkg.arch)?.download(pkg)
}

/// The archive's current candidate of `name` for `arch`, as a pin (version and sha256 from the
/// freshly updated private lists).
pub fn resolve(name: &str, arch: &str, cache_dir: &Path) -> Result<PinnedPackage> {
    Apt::new(cache_dir, arch)?.resolve(name)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The last few lines of a command's standard error, on one line.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

impl Apt {
    /// A private apt state for `arch` (a Debian name like `amd64`) under `cache_dir`. Nothing is
    /// created or fetched until a method needs it.
    pub fn new(cache_dir: &Path, arch: &str) -> Result<Apt> {
        let valid = !arch.is_empty()
            && arch
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(AptError::InvalidArch(arch.to_owned()));
        }
        Ok(Apt {
            arch: arch.to_owned(),
            cache_dir: cache_dir.to_owned(),
            state: cache_dir.join("apt").join(arch),
        })
    }

    /// The Debian architecture this state serves.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Where a verified package with digest `sha256` is kept.
    pub fn cached_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("sha256-{sha256}.deb"))
    }

    fn options(&self) -> Vec<String> {
        let state = self.state.display();
        [
            format!("APT::Architecture={}", self.arch),
            format!("APT::Architectures={}", self.arch),
            format!("Dir::State::Lists={state}/lists"),
            format!("Dir::Cache={state}/cache"),
            // Selection must not depend on what the host has installed.
            "Dir::State::status=/dev/null".to_owned(),
            "Acquire::Languages=none".to_owned(),
            // The private directories belong to the caller; apt's `_apt` user could not write
            // them. Only has an effect when running as root.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect()
    }

    /// Runs an apt program with the private options. The outer error means it could not run;
    /// the inner one that it failed, so callers can interpret its message. The caller holds
    /// the apt locks.
    fn run(
        &self,
        program: &'static str,
        args: &[&str],
        cwd: Option<&Path>,
    ) -> Result<std::result::Result<String, AptError>> {
        let mut command = Command::new(program);
        command
            .args(self.options())
            .args(args)
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE");
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        debug!("running {program} {}", args.join(" "));
        let output = command
            .output()
            .map_err(|source| AptError::Spawn { program, source })?;
        if output.status.success() {
            return Ok(Ok(String::from_utf8_lossy(&output.stdout).into_owned()));
        }
        Ok(Err(AptError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: stderr_tail(&output.stderr),
        }))
    }

    fn create_state(&self) -> Result<()> {
        for dir in ["lists/partial", "cache/archives/partial"] {
            let path = self.state.join(dir);
            fs::create_dir_all(&path).map_err(|source| AptError::Io { path, source })?;
        }
        Ok(())
    }

    /// Refreshes the private package lists (`apt-get update`), unconditionally.
    pub fn update(&self) -> Result<()> {
        let mut updated = UPDATED.lock().unwrap_or_else(PoisonError::into_inner);
        let _state_lock = self.lock_state()?;
        self.update_locked(&mut updated)
    }

    /// Takes an exclusive lock on the private state against other processes (apt fails at
    /// once, rather than waits, when another apt holds its lists lock). Released on drop.
    fn lock_state(&self) -> Result<File> {
        self.create_state()?;
        let path = self.state.join("keel.lock");
        let file = File::create(&path).map_err(|source| AptError::Io {
            path: path.clone(),
            source,
        })?;
        file.lock()
            .map_err(|source| AptError::Io { path, source })?;
        Ok(file)
    }

    fn update_locked(&self, updated: &mut Vec<PathBuf>) -> Result<()> {
        self.create_state()?;
        info!(
            "updating the private {} package lists in {}",
            self.arch,
            self.state.display()
        );
        self.run("apt-get", &["-q", "update"], None)??;
        if !updated.contains(&self.state) {
            updated.push(self.state.clone());
        }
        Ok(())
    }

    /// Runs `f` with the apt lock held, after the lists were refreshed once in this process.
    fn with_lists<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut updated = UPDATED.lock().unwrap_or_else(PoisonError::into_inner);
        let _state_lock = self.lock_state()?;
        if !updated.contains(&self.state) {
            self.update_locked(&mut updated)?;
        }
        f()
    }

    /// `apt-cache show <spec>` (spec: `name`, `name=version`), one paragraph per version. A name
    /// the archive does not know is [`AptError::UnknownPackage`].
    pub fn show(&self, spec: &str) -> Result<Vec<Control>> {
        self.with_lists(|| self.show_locked(spec))
    }

    fn show_locked(&self, spec: &str) -> Result<Vec<Control>> {
        let (name, version) = match spec.split_once('=') {
            Some((name, version)) => (name, Some(version)),
            None => (spec, None),
        };
        let qualified = match version {
            Some(v) => format!("{name}:{}={v}", self.arch),
            None => format!("{name}:{}", self.arch),
        };
        let unknown = || AptError::UnknownPackage {
            package: name.to_owned(),
            arch: self.arch.clone(),
        };
        let text = match self.run("apt-cache", &["show", &qualified], None)? {
            Ok(text) => text,
            Err(AptError::Command { stderr, .. })
                if ["No packages found", "Unable to locate", "was not found"]
                    .iter()
                    .any(|m| stderr.contains(m)) =>
            {
                return Err(unknown());
            }
            Err(other) => return Err(other),
        };
        let paragraphs = Control::parse_all(&text).map_err(|_| unknown())?;
        if paragraphs.is_empty() {
            return Err(unknown());
        }
        Ok(paragraphs)
    }

    /// The fields of the version apt would install now (`Candidate` of `apt-cache policy`).
    pub fn candidate(&self, name: &str) -> Result<Control> {
        self.with_lists(|| {
            let unknown = || AptError::UnknownPackage {
                package: name.to_owned(),
                arch: self.arch.clone(),
            };
            let policy = self.run(
                "apt-cache",
                &["policy", &format!("{name}:{}", self.arch)],
                None,
            )??;
            let candidate = policy
                .lines()
                .find_map(|l| l.trim().strip_prefix("Candidate:"))
                .map(str::trim)
                .filter(|v| !v.is_empty() && *v != "(none)")
                .ok_or_else(unknown)?
                .to_owned();
            self.show_locked(&format!("{name}={candidate}"))?
                .into_iter()
                .next()
                .ok_or_else(unknown)
        })
    }

    /// The current candidate of `name` as a pin.
    pub fn resolve(&self, name: &str) -> Result<PinnedPackage> {
        let control = self.candidate(name)?;
        let field = |field: &'static str| {
            control
                .get(field)
                .map(str::to_owned)
                .ok_or_else(|| AptError::MissingField {
                    package: name.to_owned(),
                    field,
                })
        };
        Ok(PinnedPackage {
            name: name.to_owned(),
            version: field("Version")?,
            arch: self.arch.clone(),
            sha256: field("SHA256")?,
        })
    }

    /// Returns the verified `.deb` for `pkg` from the cache, downloading it first when absent.
    pub fn download(&self, pkg: &PinnedPackage) -> Result<PathBuf> {
        if !is_sha256(&pkg.sha256) {
            return Err(AptError::InvalidSha256 {
                package: pkg.name.clone(),
                sha256: pkg.sha256.clone(),
            });
        }
        if pkg.arch != self.arch {
            return Err(AptError::ArchMismatch {
                package: pkg.name.clone(),
                pinned: pkg.arch.clone(),
                arch: self.arch.clone(),
            });
        }
        let target = self.cached_path(&pkg.sha256);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| AptError::Io { path, source }
        };
        if target.exists() {
            let actual = sha256_file(&target).map_err(io_err(&target))?;
            if actual == pkg.sha256 {
                debug!("{} {} found in the cache", pkg.name, pkg.version);
                return Ok(target);
            }
            warn!(
                "cached {} is corrupt (sha256 {actual}); fetching it again",
                target.display()
            );
            fs::remove_file(&target).map_err(io_err(&target))?;
        }
        fs::create_dir_all(&self.cache_dir).map_err(io_err(&self.cache_dir))?;
        // Downloads land in a private directory next to the cache, so only a verified file is
        // ever renamed into place, and a failed one disappears with the directory.
        let scratch = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.cache_dir)
            .map_err(io_err(&self.cache_dir))?;
        let spec = format!("{}:{}={}", pkg.name, pkg.arch, pkg.version);
        info!("downloading {spec}");
        self.with_lists(|| {
            match self.run("apt-get", &["-q", "download", &spec], Some(scratch.path()))? {
                Ok(_) => Ok(()),
                Err(AptError::Command { stderr, .. }) if stderr.contains("was not found") => {
                    let available = self
                        .show_locked(&pkg.name)
                        .map(|all| {
                            all.iter()
                                .filter_map(|c| c.get("Version").map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    Err(AptError::NotInArchive {
                        package: pkg.name.clone(),
                        version: pkg.version.clone(),
                        arch: pkg.arch.clone(),
                        available,
                    })
                }
                Err(AptError::Command { stderr, .. })
                    if stderr.contains("Unable to locate package") =>
                {
                    Err(AptError::UnknownPackage {
                        package: pkg.name.clone(),
                        arch: pkg.arch.clone(),
                    })
                }
                Err(other) => Err(other),
            }
        })?;
        let downloaded = fs::read_dir(scratch.path())
            .map_err(io_err(scratch.path()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| AptError::NoDownload {
                package: pkg.name.clone(),
            })?;
        self.adopt(pkg, &downloaded, &target)?;
        Ok(target)
    }

    /// Verifies `file` against the pin and moves it to `target`; a mismatch deletes it.
    fn adopt(&self, pkg: &PinnedPackage, file: &Path, target: &Path) -> Result<()> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| AptError::Io { path, source }
        };
        let actual = sha256_file(file).map_err(io_err(file))?;
        if actual != pkg.sha256 {
            fs::remove_file(file).map_err(io_err(file))?;
            return Err(AptError::Sha256Mismatch {
                package: pkg.name.clone(),
                version: pkg.version.clone(),
                arch: pkg.arch.clone(),
                expected: pkg.sha256.clone(),
                actual,
            });
        }
        fs::rename(file, target).map_err(io_err(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(sha256: &str) -> PinnedPackage {
        PinnedPackage {
            name: "tiny".into(),
            version: "1.0".into(),
            arch: "arm64".into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn mismatch_is_refused_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let apt = Apt::new(dir.path(), "arm64").unwrap();
        let file = dir.path().join("tiny.deb");
        fs::write(&file, b"payload").unwrap();
        let expected = "0".repeat(64);
        let target = apt.cached_path(&expected);
        let err = apt.adopt(&pin(&expected), &file, &target).unwrap_err();
        let message = err.to_string();
        let actual = hex::encode(Sha256::digest(b"payload"));
        assert!(
            message.contains("tiny") && message.contains(&expected) && message.contains(&actual),
            "{message}"
        );
        assert!(!file.exists() && !target.exists());
    }

    #[test]
    fn matching_file_is_moved_into_the_cache_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let apt = Apt::new(dir.path(), "arm64").unwrap();
        let file = dir.path().join("tiny.deb");
        fs::write(&file, b"payload").unwrap();
        let sha = hex::encode(Sha256::digest(b"payload"));
        let target = apt.cached_path(&sha);
        apt.adopt(&pin(&sha), &file, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"payload");
        // A cache hit needs no apt at all: the pin names a package no archive has.
        assert_eq!(apt.download(&pin(&sha)).unwrap(), target);
    }

    #[test]
    fn bad_pins_are_refused_before_any_network() {
        let dir = tempfile::tempdir().unwrap();
        let apt = Apt::new(dir.path(), "arm64").unwrap();
        assert!(matches!(
            apt.download(&pin("abc")),
            Err(AptError::InvalidSha256 { .. })
        ));
        let mut amd = pin(&"a".repeat(64));
        amd.arch = "amd64".into();
        assert!(matches!(
            apt.download(&amd),
            Err(AptError::ArchMismatch { .. })
        ));
        assert!(matches!(
            Apt::new(dir.path(), "../x"),
            Err(AptError::InvalidArch(_))
        ));
    }

    #[test]
    fn options_keep_apt_private() {
        let apt = Apt::new(Path::new("/c"), "arm64").unwrap();
        let options = apt.options().join(" ");
        assert!(
            options.contains("-o Dir::State::Lists=/c/apt/arm64/lists"),
            "{options}"
        );
        assert!(options.contains("-o Dir::Cache=/c/apt/arm64/cache"));
        assert!(options.contains("-o APT::Architectures=arm64"));
    }

    /// Really talks to Debian's archive: resolve the current busybox-static for arm64 (a
    /// foreign architecture here), download it (under 1 MB) and unpack it.
    #[test]
    fn downloads_a_real_foreign_package() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = resolve("busybox-static", "arm64", dir.path()).unwrap();
        assert_eq!(pkg.arch, "arm64");
        assert!(is_sha256(&pkg.sha256), "{pkg:?}");
        let path = download(&pkg, dir.path()).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), pkg.sha256);
        let deb = crate::unpack(&path).unwrap();
        assert_eq!(deb.control().get("Architecture"), Some("arm64"));
        assert!(
            deb.entries()
                .unwrap()
                .iter()
                .any(|e| e.path == "bin/busybox")
        );

        assert!(matches!(
            resolve("keel-no-such-package", "arm64", dir.path()),
            Err(AptError::UnknownPackage { .. })
        ));

        let mut gone = pkg.clone();
        gone.version = "0.0-keel-does-not-exist".into();
        gone.sha256 = "1".repeat(64);
        let err = download(&gone, dir.path()).unwrap_err();
        match &err {
            AptError::NotInArchive { available, .. } => {
                assert!(available.contains(&pkg.version), "{err}")
            }
            other => panic!("expected NotInArchive, got {other}"),
        }
    }
}
