//! The VM test harness: builds test systems with the `keel` library into a shared image store,
//! boots them under QEMU ([`vm`]), and reads what their containers report on the console
//! ([`Checks`]).
//!
//! Containers under test print lines `CHECK <key>=<value>`; PID 1 relays them to the console as
//! `<container-id>| CHECK <key>=<value>`, which [`Checks::parse`] collects per container.

pub mod docker;
pub mod vm;

pub use keel::output::InitrdCompression;
pub use keel::run::Arch;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Serialises builds between the test threads of one process (the file lock below serialises
/// processes: `File::lock` does not exclude other handles of the same process reliably).
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// A failure to build a test system.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot prepare {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the image store {}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: keel_image::Error,
    },
    #[error("cannot build {} for {arch}", yaml.display())]
    Build {
        yaml: PathBuf,
        arch: Arch,
        #[source]
        source: keel::build::Error,
    },
}

/// The workspace root (the parent of this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A test system's YAML under `tests/cases/`.
pub fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(name)
}

/// The image store the VM tests of one run share ([`keel_testutil::store_dir`]: under
/// `KEEL_TEST_CACHE`, else `target/keel-test-cache/store`), so kernels and packages are built
/// once per run.
pub fn store_path() -> PathBuf {
    keel_testutil::store_dir()
}

/// The outputs of one build: `prefix` is what `keel run` takes (`<dir>/<name>`); the directory
/// is removed when this is dropped.
#[derive(Debug)]
pub struct Built {
    pub prefix: PathBuf,
    pub dir: tempfile::TempDir,
}

/// The environment variable naming a YAML file merged after every test system's own (a
/// `kernel.image` of its own): the whole VM suite on another kernel, e.g.
/// `KEEL_VMTEST_KERNEL=tests/cases/on-virt.yml cargo test -p keel-vmtests` (docs/testing.md).
pub const KERNEL_OVERRIDE_ENV: &str = "KEEL_VMTEST_KERNEL";

/// Builds `yamls` (merged in order) for `arch` as kernel+initrd into a temporary directory.
/// `@pkg:` images are built into the shared store on first use. Builds are serialised across
/// threads and processes, since they share the store and cargo's target directory.
pub fn build(yamls: &[&Path], arch: Arch) -> Result<Built, Error> {
    build_formats(yamls, arch, &[keel::build::Format::KernelInitrd])
}

/// Like [`build`], with the given output formats.
pub fn build_formats(
    yamls: &[&Path],
    arch: Arch,
    formats: &[keel::build::Format],
) -> Result<Built, Error> {
    build_with(yamls, arch, formats, InitrdCompression::Auto)
}

/// Like [`build_formats`], with the initramfs compressed as `initrd` asks.
pub fn build_with(
    yamls: &[&Path],
    arch: Arch,
    formats: &[keel::build::Format],
    initrd: InitrdCompression,
) -> Result<Built, Error> {
    build_signed(yamls, arch, formats, initrd, None)
}

/// Like [`build_with`], the UKI signed with `keys` (`keel build --sign-with`) when given.
pub fn build_signed(
    yamls: &[&Path],
    arch: Arch,
    formats: &[keel::build::Format],
    initrd: InitrdCompression,
    keys: Option<&keel::keys::KeySet>,
) -> Result<Built, Error> {
    build_secured(
        yamls,
        arch,
        formats,
        initrd,
        keys,
        keel::output::RootLayout::Initramfs,
    )
}

/// Like [`build_signed`], the root where `root` says (`keel build --verity`, `--ab`).
pub fn build_secured(
    yamls: &[&Path],
    arch: Arch,
    formats: &[keel::build::Format],
    initrd: InitrdCompression,
    keys: Option<&keel::keys::KeySet>,
    root: keel::output::RootLayout,
) -> Result<Built, Error> {
    let (_lock, store) = lock_store()?;
    let dir = tempfile::Builder::new()
        .prefix("keel-vmtest-")
        .tempdir()
        .map_err(|source| Error::Io {
            path: "temporary directory".into(),
            source,
        })?;
    let first = yamls.first().copied().unwrap_or(Path::new("-"));
    let name = first
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "test".into());
    let opts = keel::build::BuildOptions {
        files: yamls
            .iter()
            .map(|p| p.display().to_string())
            .chain(std::env::var(KERNEL_OVERRIDE_ENV).ok().map(|f| {
                // Relative to the workspace, where the documented command runs.
                workspace().join(f).display().to_string()
            }))
            .collect(),
        formats: formats.to_vec(),
        dir: dir.path().to_path_buf(),
        name: Some(name.clone()),
        arch,
        size: None,
        dry_run: false,
        pull: false,
        locked: false,
        registry: keel_image::PullOptions::default(),
        max_image_size: keel::build::DEFAULT_MAX_IMAGE_SIZE,
        // The SBOM is tested by keel/tests/cli_sbom.rs; VM tests boot the outputs.
        sbom: false,
        decompress_kernel: false,
        initrd_compression: initrd,
        input_tar: None,
        sign_with: keys.cloned(),
        pcr_file: true,
        root,
    };
    keel::build::build(&store, &opts).map_err(|source| Error::Build {
        yaml: first.to_path_buf(),
        arch,
        source,
    })?;
    Ok(Built {
        prefix: dir.path().join(name),
        dir,
    })
}

/// The shared store, locked against other test threads and processes until the guard drops.
pub fn lock_store() -> Result<(StoreLock, keel_image::Store), Error> {
    let store_dir = store_path();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    fs::create_dir_all(&store_dir).map_err(io(&store_dir))?;
    let _threads = BUILD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let lock_path = store_dir.join(".keel-vmtests.lock");
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;

    let store = keel_image::Store::open(&store_dir).map_err(|source| Error::Store {
        path: store_dir.clone(),
        source,
    })?;
    Ok((
        StoreLock {
            _threads,
            _file: lock,
        },
        store,
    ))
}

/// Holds the shared store for one build (see [`lock_store`]).
#[derive(Debug)]
pub struct StoreLock {
    _threads: std::sync::MutexGuard<'static, ()>,
    _file: File,
}

/// The `keel` binary of this workspace's build (`cargo test --workspace` builds it).
pub fn keel_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("debug/keel")
}

/// Formats an error with its whole `source()` chain.
pub use keel::build::error_chain as chain;
pub use keel_testutil::virtiofsd;

/// The `CHECK key=value` lines of a console, per container id, in the order printed. A key
/// printed twice by one container keeps its last value.
#[derive(Debug, Default, Clone)]
pub struct Checks {
    by_container: BTreeMap<String, BTreeMap<String, String>>,
}

impl Checks {
    /// Collects every `<id>| CHECK key=value` line of `console`.
    pub fn parse(console: &str) -> Checks {
        let mut checks = Checks::default();
        for line in console.lines() {
            let line = strip_escapes(line.trim_end_matches('\r'));
            let Some((id, rest)) = line.split_once("| CHECK ") else {
                continue;
            };
            let Some((key, value)) = rest.split_once('=') else {
                continue;
            };
            // The console may interleave kernel output before the id: keep its last word.
            let id = id.rsplit(' ').next().unwrap_or(id).trim();
            checks
                .by_container
                .entry(id.to_string())
                .or_default()
                .insert(key.trim().to_string(), value.to_string());
        }
        checks
    }

    /// The value `container` reported for `key`.
    pub fn get(&self, container: &str, key: &str) -> Option<&str> {
        self.by_container
            .get(container)
            .and_then(|m| m.get(key))
            .map(String::as_str)
    }

    /// Every `(key, value)` `container` reported, sorted by key.
    pub fn entries(&self, container: &str) -> impl Iterator<Item = (&str, &str)> {
        self.by_container
            .get(container)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Every container that reported something.
    pub fn containers(&self) -> impl Iterator<Item = &str> {
        self.by_container.keys().map(String::as_str)
    }
}

/// `line` without terminal escape sequences (CSI, e.g. the `keel>` prompt's erase-line `ESC [K`
/// printed before a container's output line).
pub fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `keel-init: timeline: <step>` lines of a console, in order.
pub fn timeline(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| {
            l.split_once("timeline: ")
                .map(|(_, s)| s.trim().to_string())
        })
        .collect()
}

/// Position of the first line containing `needle`, if any.
pub fn line_of(console: &str, needle: &str) -> Option<usize> {
    console.lines().position(|l| l.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's CHECK line printed right after the console prompt redrew itself.
    #[test]
    fn checks_after_a_prompt_redraw() {
        let console = "keel> \x1b[K\x1b[Kbench| CHECK done=1\r\nplain| CHECK x=2\n";
        let c = Checks::parse(console);
        assert_eq!(c.get("bench", "done"), Some("1"));
        assert_eq!(c.get("plain", "x"), Some("2"));
        assert_eq!(strip_escapes("a\x1b[2Kb\x1b[?7lc"), "abc");
    }

    const CONSOLE: &str = "[    2.1] keel-init: timeline: init started\r\n\
        000-a| CHECK cap_eff=0000000000000000\n\
        000-a| not a check\n\
        [    3.0] random kernel line 000-b| CHECK late=yes\n\
        svc| CHECK json={\"a\":1}\n\
        svc| CHECK x=1\n\
        svc| CHECK x=2\n\
        keel-init: timeline: onboot done\n";

    #[test]
    fn checks_are_collected_per_container() {
        let c = Checks::parse(CONSOLE);
        assert_eq!(c.get("000-a", "cap_eff"), Some("0000000000000000"));
        assert_eq!(c.get("000-b", "late"), Some("yes"));
        assert_eq!(c.get("svc", "json"), Some("{\"a\":1}"));
        assert_eq!(c.get("svc", "x"), Some("2"), "the last value wins");
        assert_eq!(c.get("000-a", "missing"), None);
        assert_eq!(
            c.entries("svc").collect::<Vec<_>>(),
            [("json", "{\"a\":1}"), ("x", "2")]
        );
        assert_eq!(c.entries("nobody").count(), 0);
        assert_eq!(
            c.containers().collect::<Vec<_>>(),
            ["000-a", "000-b", "svc"]
        );
    }

    #[test]
    fn timeline_steps_in_order() {
        assert_eq!(timeline(CONSOLE), ["init started", "onboot done"]);
        assert_eq!(line_of(CONSOLE, "onboot done"), Some(7));
        assert_eq!(line_of(CONSOLE, "nowhere"), None);
    }

    #[test]
    fn store_is_in_the_run_cache() {
        assert_eq!(store_path(), keel_testutil::cache_root().join("store"));
        assert!(case("x.yml").starts_with(workspace().join("tests/cases")));
    }
}
