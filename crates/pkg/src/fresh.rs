//! Whether a package's cargo-built binaries are up to date, without running cargo.
//!
//! A warm `keel build` of a system with `@pkg:` packages used to run cargo once per package for
//! `cargo metadata` and once per Cargo package and architecture for `cargo build`: each a
//! no-op, together most of the build's time. After cargo has built them, keel writes a stamp
//! (`<target>/keel-fresh/<key>.json`) recording what the binaries were made from:
//!
//! - every file cargo's dep-info (`<target>/<triple>/guest/<bin>.d`) lists, which is every
//!   source file of the workspace and of its path dependencies that went into the binary;
//! - the workspace's `Cargo.toml`, `Cargo.lock` (which pins every registry dependency, whose
//!   sources never change), `.cargo/config.toml`, `rust-toolchain.toml`, and every member's
//!   `Cargo.toml`;
//! - the environment, less the variables that only describe the terminal or the session;
//! - each binary's size, modification time and sha256, and what `cargo metadata` said.
//!
//! The next build uses the binaries without running cargo when every one of these is as
//! recorded (files by size and modification time, as make and cargo itself compare them),
//! else it runs cargo and writes a new stamp. A stamp is not written when an input changed
//! after cargo started (it may have read the old contents), so the next build runs cargo
//! again. Deleting `<target>/keel-fresh` (or `cargo clean`) forces cargo to run.

use crate::cargo::CrateInfo;
use keel_image::Arch;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bumped when the stamp's meaning changes; another version is never trusted.
const VERSION: u32 = 1;

/// Files of the workspace root that change what cargo builds without being in any dep-info.
const ROOT_FILES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
    ".cargo/config",
    "rust-toolchain.toml",
    "rust-toolchain",
];

/// Environment variables that cannot change what cargo builds: the terminal, the session and
/// keel's own settings. Every other variable is recorded, so that a change of `PATH`,
/// `RUSTFLAGS`, `CC` or anything a build script reads makes cargo run.
const IGNORED_ENV: &[&str] = &[
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "TERM",
    "COLORTERM",
    "COLUMNS",
    "LINES",
    "LS_COLORS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "TMUX",
    "TMUX_PANE",
    "STY",
    "WINDOW",
    "MAIL",
    "HISTFILE",
    "RUST_LOG",
    "RUST_BACKTRACE",
];
const IGNORED_ENV_PREFIXES: &[&str] = &["SSH_", "XDG_SESSION_", "TERM_PROGRAM", "KEEL_"];

/// How long before cargo started an input must have last changed for the stamp to be written:
/// file times come from a coarse clock.
const SETTLE: Duration = Duration::from_secs(1);

/// A file's size and modification time; `None` in a stamp: the file did not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileState {
    len: u64,
    modified_ns: u128,
}

impl FileState {
    fn of(path: &Path) -> Option<FileState> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(FileState {
            len: meta.len(),
            modified_ns: modified.as_nanos(),
        })
    }
}

/// A built binary as the stamp records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Output {
    path: PathBuf,
    state: FileState,
    sha256: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stamp {
    version: u32,
    env: BTreeMap<String, String>,
    inputs: BTreeMap<PathBuf, Option<FileState>>,
    /// Per architecture (`uname -m`), the binaries in `binaries:` order.
    outputs: BTreeMap<String, Vec<Output>>,
    crates: BTreeMap<String, CrateInfo>,
}

/// Binaries and crate information taken from a stamp.
pub(crate) struct Fresh {
    pub binaries: BTreeMap<Arch, Vec<Vec<u8>>>,
    pub crates: BTreeMap<String, CrateInfo>,
}

/// The stamp of one set of binaries (Cargo package and target names) and architectures.
pub(crate) fn stamp_path(target: &Path, key: &[(&str, &str)], arches: &[Arch]) -> PathBuf {
    let mut h = Sha256::new();
    for (package, bin) in key {
        h.update(package.as_bytes());
        h.update([0]);
        h.update(bin.as_bytes());
        h.update([0]);
    }
    for arch in arches {
        h.update(arch.uname().as_bytes());
        h.update([0]);
    }
    let hash = hex::encode(h.finalize());
    target
        .join("keel-fresh")
        .join(format!("{}.json", &hash[..16]))
}

/// The environment as a stamp records it.
fn env_snapshot() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            !IGNORED_ENV.contains(&k.as_str())
                && !IGNORED_ENV_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .collect()
}

/// The binaries and crates the stamp at `path` records, if every input and output is as
/// recorded; `None` (cargo must run) otherwise, with the reason at debug level.
pub(crate) fn load(path: &Path, arches: &[Arch], count: usize) -> Option<Fresh> {
    let stale = |why: &str| {
        log::debug!("{}: {why}: running cargo", path.display());
        None
    };
    let Ok(text) = std::fs::read(path) else {
        return stale("no stamp");
    };
    let Ok(stamp) = serde_json::from_slice::<Stamp>(&text) else {
        return stale("unreadable stamp");
    };
    if stamp.version != VERSION {
        return stale("another stamp version");
    }
    if stamp.env != env_snapshot() {
        return stale("the environment changed");
    }
    if let Some(changed) = stamp
        .inputs
        .iter()
        .find(|(p, state)| FileState::of(p) != **state)
    {
        return stale(&format!("{} changed", changed.0.display()));
    }
    let mut binaries = BTreeMap::new();
    for &arch in arches {
        let Some(outputs) = stamp.outputs.get(arch.uname()) else {
            return stale("no binaries for this architecture");
        };
        if outputs.len() != count {
            return stale("another set of binaries");
        }
        let mut bytes = Vec::with_capacity(count);
        for out in outputs {
            if FileState::of(&out.path) != Some(out.state) {
                return stale(&format!("{} changed", out.path.display()));
            }
            let Ok(data) = std::fs::read(&out.path) else {
                return stale("a binary cannot be read");
            };
            if hex::encode(Sha256::digest(&data)) != out.sha256 {
                return stale(&format!("{} changed", out.path.display()));
            }
            bytes.push(data);
        }
        binaries.insert(arch, bytes);
    }
    Some(Fresh {
        binaries,
        crates: stamp.crates,
    })
}

/// What [`record`] writes into a stamp.
pub(crate) struct Made<'a> {
    /// When cargo was started: inputs changed since then do not make a stamp.
    pub started: SystemTime,
    pub root: &'a Path,
    /// Every workspace member's `Cargo.toml`.
    pub manifests: &'a [PathBuf],
    /// Per architecture, each binary's path and bytes, in `binaries:` order.
    pub outputs: &'a BTreeMap<Arch, Vec<(PathBuf, Vec<u8>)>>,
    pub crates: &'a BTreeMap<String, CrateInfo>,
}

/// Writes the stamp at `path` for what cargo just made. Failing to is not an error of the
/// build (the next one runs cargo); it is logged.
pub(crate) fn record(path: &Path, made: &Made<'_>) {
    match stamp(made) {
        Ok(stamp) => {
            if let Err(e) = write(path, &stamp) {
                log::warn!("cannot write {}: {e}", path.display());
            }
        }
        Err(why) => log::debug!("no stamp written ({why}): the next build runs cargo"),
    }
}

fn stamp(made: &Made<'_>) -> Result<Stamp, String> {
    let mut inputs = BTreeMap::new();
    for name in ROOT_FILES {
        let p = made.root.join(name);
        inputs.insert(p.clone(), FileState::of(&p));
    }
    for m in made.manifests {
        inputs.insert(m.clone(), FileState::of(m));
    }
    let mut outputs = BTreeMap::new();
    for (arch, built) in made.outputs {
        let mut list = Vec::with_capacity(built.len());
        for (bin, data) in built {
            let dep_info = bin.with_extension("d");
            let text = std::fs::read_to_string(&dep_info)
                .map_err(|e| format!("cannot read {}: {e}", dep_info.display()))?;
            for p in dep_info_paths(&text)
                .ok_or_else(|| format!("cannot parse {}", dep_info.display()))?
            {
                let state = FileState::of(&p);
                inputs.insert(p, state);
            }
            let state =
                FileState::of(bin).ok_or_else(|| format!("cannot stat {}", bin.display()))?;
            list.push(Output {
                path: bin.clone(),
                state,
                sha256: hex::encode(Sha256::digest(data)),
            });
        }
        outputs.insert(arch.uname().to_owned(), list);
    }
    let settled = made
        .started
        .checked_sub(SETTLE)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    if let Some((p, _)) = inputs
        .iter()
        .find(|(_, s)| s.is_some_and(|s| s.modified_ns > settled))
    {
        return Err(format!("{} changed while cargo ran", p.display()));
    }
    Ok(Stamp {
        version: VERSION,
        env: env_snapshot(),
        inputs,
        outputs,
        crates: made.crates.clone(),
    })
}

fn write(path: &Path, stamp: &Stamp) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let mut file = keel_rootfs::AtomicFile::create(path).map_err(|e| e.to_string())?;
    serde_json::to_writer(&mut file, stamp).map_err(|e| e.to_string())?;
    file.commit().map_err(|e| e.to_string())
}

/// The prerequisites of a make-style dep-info file (`target: a b\ c`), spaces escaped with a
/// backslash, as cargo writes them; `None` when it is not one.
fn dep_info_paths(text: &str) -> Option<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // The target ends at the first unescaped ": ".
        let mut rest = None;
        let bytes = line.as_bytes();
        for i in 0..bytes.len() {
            if bytes[i] == b':'
                && bytes.get(i + 1).is_none_or(|b| *b == b' ')
                && (i == 0 || bytes[i - 1] != b'\\')
            {
                rest = Some(&line[i + 1..]);
                break;
            }
        }
        let mut word = String::new();
        let mut chars = rest?.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => {
                    word.push(' ');
                    chars.next();
                }
                ' ' => {
                    if !word.is_empty() {
                        paths.push(PathBuf::from(std::mem::take(&mut word)));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            paths.push(PathBuf::from(word));
        }
    }
    Some(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_lists_the_prerequisites() {
        let text = "/t/guest/hi: /w/src/main.rs /w/src/my\\ mod.rs /w/build/out.rs\n\n\
                    /w/src/main.rs:\n";
        assert_eq!(
            dep_info_paths(text).unwrap(),
            [
                PathBuf::from("/w/src/main.rs"),
                PathBuf::from("/w/src/my mod.rs"),
                PathBuf::from("/w/build/out.rs"),
            ]
        );
        assert!(dep_info_paths("not a dep-info file\n").is_none());
    }

    #[test]
    fn the_session_is_not_part_of_the_environment() {
        let env = env_snapshot();
        assert!(!env.contains_key("PWD") && !env.contains_key("TERM"));
        assert!(env.keys().all(|k| !k.starts_with("KEEL_")));
        // What cargo reads is.
        if let Ok(path) = std::env::var("PATH") {
            assert_eq!(env.get("PATH"), Some(&path));
        }
    }

    #[test]
    fn the_stamp_depends_on_the_binaries_and_arches() {
        let t = Path::new("/t");
        let a = stamp_path(t, &[("keel-init", "init")], &[Arch::X86_64]);
        assert_ne!(a, stamp_path(t, &[("keel-init", "init")], &Arch::ALL));
        assert_ne!(
            a,
            stamp_path(t, &[("keel-init", "keelctl")], &[Arch::X86_64])
        );
        assert!(a.starts_with("/t/keel-fresh"));
    }

    #[test]
    fn an_input_changed_during_the_build_makes_no_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("main.rs");
        std::fs::write(&src, "fn main() {}\n").unwrap();
        let bin = dir.path().join("hi");
        std::fs::write(&bin, b"\x7fELF").unwrap();
        std::fs::write(
            dir.path().join("hi.d"),
            format!("{}: {}\n", bin.display(), src.display()),
        )
        .unwrap();
        let outputs = BTreeMap::from([(Arch::X86_64, vec![(bin.clone(), b"\x7fELF".to_vec())])]);
        let crates = BTreeMap::new();
        let made = |started| Made {
            started,
            root: dir.path(),
            manifests: &[],
            outputs: &outputs,
            crates: &crates,
        };
        // The source was written "after" a build that started an hour ago.
        let err = stamp(&made(SystemTime::now() - Duration::from_secs(3600))).unwrap_err();
        assert!(err.contains("changed while cargo ran"), "{err}");
        // Started later: recorded, and loads while nothing changes.
        let path = dir.path().join("stamp.json");
        record(&path, &made(SystemTime::now() + Duration::from_secs(5)));
        let fresh = load(&path, &[Arch::X86_64], 1).expect("fresh");
        assert_eq!(fresh.binaries[&Arch::X86_64], [b"\x7fELF".to_vec()]);
        assert!(load(&path, &[Arch::X86_64, Arch::Aarch64], 1).is_none());
        assert!(load(&path, &[Arch::X86_64], 2).is_none());
        // A changed source, or a replaced binary, makes it stale.
        std::fs::write(&src, "fn main() { }\n").unwrap();
        assert!(load(&path, &[Arch::X86_64], 1).is_none());
        std::fs::write(&src, "fn main() {}\n").unwrap();
        record(&path, &made(SystemTime::now() + Duration::from_secs(5)));
        assert!(load(&path, &[Arch::X86_64], 1).is_some());
        std::fs::write(&bin, b"\x7fELG").unwrap();
        assert!(load(&path, &[Arch::X86_64], 1).is_none());
    }
}
