//! Package builds without Docker: a package directory's `build.yml` (see
//! [`keel_config::build_yml`] and `docs/pkg.md`) becomes a multi-architecture OCI image in the
//! store, reproducibly.
//!
//! - [`show_tag`] computes the package's reference, `docker.io/<image>:<hash>`, where `<hash>`
//!   covers every input (build.yml, the files it uses, the Debian pins, the built binaries). An
//!   `image` without an organisation (`sshd`) is in LinuxKit's default one (`linuxkit/sshd`),
//!   as LinuxKit's `pkg build` names it.
//! - [`build`] assembles one single-layer image per architecture from the package's Rust
//!   binaries (built with cargo for musl), Debian packages (with their dependency closure,
//!   pinned in `build.lock.json`) and files, writes an index over them and tags it. The
//!   index carries each architecture's SBOM as an in-toto attestation (see [`spdx`]).
//!
//! Same inputs give the same tag and the same digests, byte for byte.

mod assemble;
pub mod cargo;
mod error;
mod fresh;
pub mod lock;
mod sources;
pub mod spdx;

pub use assemble::CONFIG_LABEL;
pub use error::{Error, Result};
pub use lock::{LOCK_FILE, Lock, PinChange};

use keel_config::build_yml::{self, BuildManifest};
use keel_debian::{Apt, AptError, Control, PinnedPackage};
use keel_image::{Arch, Reference, Store};
use lock::{ArchLock, Pin};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest's file name in a package directory.
pub const BUILD_YML: &str = "build.yml";

/// The organisation of an `image` that names none, as in LinuxKit's `pkg build`.
pub const DEFAULT_ORG: &str = "linuxkit";

/// The file that makes a directory a LinuxKit (Docker) package.
const DOCKERFILE: &str = "Dockerfile";

/// Keys of LinuxKit's build.yml that keel's does not have: a build.yml using them is written
/// for LinuxKit's Docker builds.
const LINUXKIT_KEYS: &[&str] = &[
    "tag",
    "dockerfile",
    "extra-sources",
    "gitrepo",
    "network",
    "disable-cache",
    "buildArgs",
    "depends",
];

/// keel's keys for what goes into the image.
const CONTENT_KEYS: &[&str] = &["binaries", "debs", "files"];

/// The repository a build.yml `image` names: itself when it has an organisation (or a
/// registry), else `<org>/<image>` like LinuxKit's `pkg build`, whose `org` defaults to
/// `linuxkit`.
pub fn repository(image: &str, org: Option<&str>) -> String {
    if image.contains('/') {
        image.to_owned()
    } else {
        format!("{}/{image}", org.unwrap_or(DEFAULT_ORG))
    }
}

/// The repository of a parsed build.yml: its `image`, in its `org`.
pub(crate) fn manifest_repository(m: &BuildManifest) -> String {
    repository(m.image.as_str(), m.org.as_ref().map(|o| o.as_str()))
}

/// Versions the tag computation: bump when the inputs or the image layout change meaning.
/// `keel-pkg/2`: images carry their SBOM (an attestation manifest per architecture).
const FORMAT: &str = "keel-pkg/2";

/// How [`show_tag`] and [`build`] run.
#[derive(Debug, Clone)]
pub struct PkgOptions {
    /// The architectures to build, each one listed in build.yml; `None`: all it lists.
    pub arches: Option<Vec<Arch>>,
    /// Resolve the Debian closure again and rewrite `build.lock.json`.
    pub update_lock: bool,
    /// Never change `build.lock.json` (`--locked`): a missing or stale lock, or a pin that has
    /// left Debian's archive, is an error naming the command that refreshes the pins.
    pub locked: bool,
    /// Rebuild even when the store already has the computed tag.
    pub force: bool,
    /// The cargo program (default `cargo`).
    pub cargo: PathBuf,
    /// Where `.deb` files and the private apt state live; `None`: the store's `debs/`.
    pub deb_cache: Option<PathBuf>,
}

impl Default for PkgOptions {
    fn default() -> Self {
        PkgOptions {
            arches: None,
            update_lock: false,
            locked: false,
            force: false,
            cargo: PathBuf::from("cargo"),
            deb_cache: None,
        }
    }
}

/// Everything a build consumes, read and resolved once.
struct Prepared {
    /// build.yml's bytes, hashed into the tag.
    yml: Vec<u8>,
    manifest: BuildManifest,
    arches: Vec<Arch>,
    pins: BTreeMap<Arch, Vec<Pin>>,
    /// The built binaries per architecture, in `manifest.binaries` order.
    binaries: BTreeMap<Arch, Vec<Vec<u8>>>,
    /// The Cargo packages of `binaries`, as the SBOM lists them.
    crates: BTreeMap<String, cargo::CrateInfo>,
    sources: sources::Sources,
    mtime: u64,
}

/// The package's reference, `docker.io/<image>:<hash>` (normalised), where `<hash>` is the first
/// 16 hex digits of a sha256 over every input. Resolves the Debian closure when the lock file is
/// missing or stale (and writes it), and builds the binaries (cargo is quick when they are up to
/// date).
pub fn show_tag(dir: &Path, opts: &PkgOptions) -> Result<Reference> {
    Ok(prepare(dir, opts, &deb_cache(opts)?)?.1)
}

/// `opts.deb_cache`, else the default store's `debs/`.
fn deb_cache(opts: &PkgOptions) -> Result<PathBuf> {
    match &opts.deb_cache {
        Some(d) => Ok(d.clone()),
        None => Ok(Store::default_path()?.join("debs")),
    }
}

/// Builds the package in `dir` into `store` and tags it with [`show_tag`]'s reference. When
/// the store already has that tag (and `opts.force` is off) nothing is rebuilt.
///
/// Before assembling, every pinned `.deb` is fetched: a pin whose version has left Debian's
/// archive is re-resolved to the archive's current version (one warning per package, the lock
/// rewritten, and so a new tag), or refused under `opts.locked`.
pub fn build(store: &Store, dir: &Path, opts: &PkgOptions) -> Result<Reference> {
    let deb_cache = opts
        .deb_cache
        .clone()
        .unwrap_or_else(|| store.path().join("debs"));
    let (mut p, mut reference) = prepare(dir, opts, &deb_cache)?;
    if !opts.force && store.resolve(&reference)?.is_some() {
        log::info!("{reference} is up to date");
        return Ok(reference);
    }
    if fetch_pins(dir, &mut p, opts, &deb_cache)? {
        reference = p.reference()?;
        if !opts.force && store.resolve(&reference)?.is_some() {
            log::info!("{reference} is up to date");
            return Ok(reference);
        }
    }
    let wopts = keel_rootfs::WriteOptions { mtime: p.mtime };
    let mut manifests = Vec::with_capacity(p.arches.len());
    for &arch in &p.arches {
        let (tree, debs) = assemble::tree(&p, arch, &deb_cache)?;
        let sbom = assemble::sbom(&p, arch, &debs);
        let layer =
            keel_rootfs::write_tar(&tree, Vec::new(), &wopts).map_err(|source| Error::Rootfs {
                arch: arch.to_string(),
                source,
            })?;
        let config = assemble::image_config(&p.manifest);
        manifests.push((arch, store.write_image(arch, config, &[layer])?, sbom));
    }
    let index = spdx::write_index_with_sboms(store, &reference.to_string(), manifests)?;
    store.tag(&reference, index)?;
    log::info!("built {reference}");
    Ok(reference)
}

/// `keel pkg update-lock`: resolves every architecture's closure against the archive as it is
/// now, rewrites `build.lock.json`, and returns what changed per architecture.
pub fn update_lock(dir: &Path, opts: &PkgOptions) -> Result<Vec<(Arch, PinChange)>> {
    let deb_cache = deb_cache(opts)?;
    let (_, manifest) = read_manifest(dir)?;
    let arches = select_arches(&manifest, opts)?;
    let before = Lock::read(dir)?.unwrap_or_default();
    let opts = PkgOptions {
        update_lock: true,
        locked: false,
        ..opts.clone()
    };
    let after = locked_pins(dir, &manifest, &arches, &opts, &deb_cache)?;
    let mut out = Vec::new();
    for (arch, pins) in after {
        let old = before
            .arches
            .get(arch.uname())
            .map(|l| l.packages.as_slice())
            .unwrap_or_default();
        out.extend(lock::changes(old, &pins).into_iter().map(|c| (arch, c)));
    }
    Ok(out)
}

/// A pin as [`keel_debian`] takes it.
fn pinned(pin: &Pin, debian_arch: &str) -> PinnedPackage {
    PinnedPackage {
        name: pin.name.clone(),
        version: pin.version.clone(),
        arch: debian_arch.to_owned(),
        sha256: pin.sha256.clone(),
    }
}

/// Downloads (or finds in the cache) every pinned `.deb` of `p`. Pins that have left the
/// archive are re-resolved — the rest of the lock kept as it is — and the lock file rewritten,
/// like `cargo` treats a `Cargo.lock` entry that no longer resolves; under `opts.locked` they
/// are an error instead. Returns whether any pin changed.
fn fetch_pins(dir: &Path, p: &mut Prepared, opts: &PkgOptions, deb_cache: &Path) -> Result<bool> {
    let mut changed = false;
    for &arch in &p.arches {
        let debian_arch = arch.oci_name();
        let apt = Apt::new(deb_cache, debian_arch).map_err(|source| Error::Resolve {
            package: String::new(),
            arch: debian_arch.to_owned(),
            source: Box::new(source),
        })?;
        let fetch_err = |pin: &Pin| {
            let (package, version) = (pin.name.clone(), pin.version.clone());
            move |source| Error::Fetch {
                package,
                version,
                arch: debian_arch.to_owned(),
                source: Box::new(source),
            }
        };
        let pins = p.pins.get(&arch).cloned().unwrap_or_default();
        let mut gone = Vec::new();
        for pin in &pins {
            match apt.download(&pinned(pin, debian_arch)) {
                Ok(_) => {}
                // A version replaced by a newer upload, or a package the archive dropped.
                Err(AptError::NotInArchive { .. } | AptError::UnknownPackage { .. }) => {
                    gone.push(pin.clone())
                }
                Err(e) => return Err(fetch_err(pin)(e)),
            }
        }
        if gone.is_empty() {
            continue;
        }
        if opts.locked {
            return Err(Error::PinsLeftArchive {
                lock: dir.join(LOCK_FILE),
                dir: dir.to_owned(),
                arch: arch.uname().to_owned(),
                gone: gone
                    .iter()
                    .map(|g| format!("{}={}", g.name, g.version))
                    .collect(),
            });
        }
        // Every kept pin's .deb is in the cache now: its own control paragraph tells what it
        // depends on, without asking the archive for a version it may also drop one day.
        let mut kept = BTreeMap::new();
        for pin in pins.iter().filter(|pin| !gone.contains(pin)) {
            let path = apt.cached_path(&pin.sha256);
            let deb = keel_debian::unpack(&path).map_err(|source| Error::Unpack {
                package: pin.name.clone(),
                source,
            })?;
            let mut control: Control = deb.control().clone();
            control.set("Version", &pin.version);
            control.set("SHA256", &pin.sha256);
            kept.insert(pin.name.clone(), control);
        }
        let roots = lock::roots(&debs_of(&p.manifest));
        let refreshed = lock::closure(
            &lock::Preferring {
                archive: &apt,
                kept,
            },
            &roots,
        )?;
        let gone_names: Vec<&str> = gone.iter().map(|g| g.name.as_str()).collect();
        for change in lock::changes(&pins, &refreshed) {
            match &change {
                PinChange::Moved { name, from, to } if gone_names.contains(&name.as_str()) => {
                    log::warn!(
                        "{}: {name} {from} ({}) has left Debian's archive; using {to} and updating {LOCK_FILE} (`--locked` refuses this)",
                        dir.display(),
                        arch.uname()
                    );
                }
                other => log::warn!("{}: {other} ({}) with it", dir.display(), arch.uname()),
            }
        }
        for pin in &refreshed {
            apt.download(&pinned(pin, debian_arch))
                .map_err(fetch_err(pin))?;
        }
        let mut lock = Lock::read(dir)?.unwrap_or_default();
        lock.arches.insert(
            arch.uname().to_owned(),
            ArchLock {
                debs: roots,
                packages: refreshed.clone(),
            },
        );
        lock.write(dir)?;
        p.pins.insert(arch, refreshed);
        changed = true;
    }
    Ok(changed)
}

fn debs_of(manifest: &BuildManifest) -> Vec<String> {
    manifest.debs.iter().map(|d| d.value.clone()).collect()
}

/// The top-level keys of a YAML mapping, by a look at its lines (for telling what kind of
/// build.yml one is that keel's parser refused).
fn top_level_keys(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        if line.starts_with(|c: char| c.is_whitespace() || c == '#' || c == '-') {
            return None;
        }
        let (key, _) = line.split_once(':')?;
        Some(key.trim().trim_matches(|c| c == '"' || c == '\''))
    })
}

/// Reads and parses `build.yml`, refusing what would not build a useful image: a LinuxKit
/// Dockerfile package (a `Dockerfile`, or LinuxKit's own build.yml keys, without any of keel's
/// content fields) and a manifest that puts nothing into the image.
fn read_manifest(dir: &Path) -> Result<(Vec<u8>, BuildManifest)> {
    let yml_path = dir.join(BUILD_YML);
    let yml = std::fs::read(&yml_path).map_err(|source| Error::Io {
        action: "read",
        path: yml_path.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&yml);
    let has_content_key = top_level_keys(&text).any(|k| CONTENT_KEYS.contains(&k));
    let linuxkit_style = !has_content_key
        && (dir.join(DOCKERFILE).exists()
            || top_level_keys(&text).any(|k| LINUXKIT_KEYS.contains(&k)));
    let manifest = match build_yml::parse(&yml_path.display().to_string(), &text) {
        Ok(m) => m,
        Err(_) if linuxkit_style => {
            return Err(Error::DockerfilePackage { dir: dir.into() });
        }
        Err(e) => return Err(e.into()),
    };
    if manifest.binaries.is_empty() && manifest.debs.is_empty() && manifest.files.is_empty() {
        return Err(if linuxkit_style {
            Error::DockerfilePackage { dir: dir.into() }
        } else {
            Error::EmptyPackage { yml: yml_path }
        });
    }
    Ok((yml, manifest))
}

fn prepare(dir: &Path, opts: &PkgOptions, deb_cache: &Path) -> Result<(Prepared, Reference)> {
    let (yml, manifest) = read_manifest(dir)?;
    let arches = select_arches(&manifest, opts)?;
    let pins = locked_pins(dir, &manifest, &arches, opts, deb_cache)?;
    let mut binaries = BTreeMap::new();
    let mut crates = BTreeMap::new();
    if !manifest.binaries.is_empty() {
        let root = cargo::workspace_root(dir)?;
        let made = cargo::binaries(&opts.cargo, &root, &arches, &manifest.binaries)?;
        binaries = made.built;
        crates = made.crates;
    }
    let sources = sources::collect(dir, &manifest)?;
    let p = Prepared {
        yml,
        manifest,
        arches,
        pins,
        binaries,
        crates,
        sources,
        mtime: keel_rootfs::WriteOptions::from_env().mtime,
    };
    let reference = p.reference()?;
    Ok((p, reference))
}

impl Prepared {
    /// `<repository>:<first 16 hex digits of the input hash>`, the repository as
    /// [`repository`] makes it.
    fn reference(&self) -> Result<Reference> {
        let hash = input_hash(self);
        let text = format!("{}:{}", manifest_repository(&self.manifest), &hash[..16]);
        text.parse().map_err(|source| Error::Reference {
            image: self.manifest.image.value.clone(),
            source,
        })
    }
}

/// The requested architectures, sorted; each must be listed in build.yml (default: both).
fn select_arches(manifest: &BuildManifest, opts: &PkgOptions) -> Result<Vec<Arch>> {
    let listed: Vec<Arch> = match &manifest.arches {
        Some(list) => list
            .iter()
            .map(|a| {
                a.parse::<Arch>().map_err(|e| {
                    Error::Manifest(keel_config::Error::At {
                        loc: a.loc.clone(),
                        message: e.to_string(),
                    })
                })
            })
            .collect::<Result<_>>()?,
        None => Arch::ALL.to_vec(),
    };
    let mut arches = match &opts.arches {
        Some(wanted) => {
            for a in wanted {
                if !listed.contains(a) {
                    let names: Vec<&str> = listed.iter().map(|l| l.uname()).collect();
                    return Err(Error::ArchNotListed {
                        package: manifest.image.value.clone(),
                        arch: a.uname().to_owned(),
                        listed: names.join(", "),
                    });
                }
            }
            wanted.clone()
        }
        None => listed,
    };
    arches.sort_unstable();
    arches.dedup();
    Ok(arches)
}

/// The pins per architecture: from the lock file when it was resolved for the same `debs:`,
/// else resolved now (and the lock file rewritten).
fn locked_pins(
    dir: &Path,
    manifest: &BuildManifest,
    arches: &[Arch],
    opts: &PkgOptions,
    deb_cache: &Path,
) -> Result<BTreeMap<Arch, Vec<Pin>>> {
    let roots = lock::roots(&debs_of(manifest));
    let existing = Lock::read(dir)?;
    let mut lock = existing.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for &arch in arches {
        let key = arch.uname();
        let current = lock
            .arches
            .get(key)
            .filter(|l| !opts.update_lock && l.debs == roots);
        let packages = match current {
            Some(l) => l.packages.clone(),
            None if roots.is_empty() => Vec::new(),
            None if opts.locked => {
                let problem = match lock.arches.get(key) {
                    Some(_) => {
                        format!("the {key} pins were resolved for other debs than build.yml lists")
                    }
                    None if existing.is_none() => "missing".to_owned(),
                    None => format!("no pins for {key}"),
                };
                return Err(Error::LockOutdated {
                    lock: dir.join(LOCK_FILE),
                    dir: dir.to_owned(),
                    problem,
                });
            }
            None => {
                log::info!("resolving {} for {arch}", roots.join(", "));
                let apt = keel_debian::Apt::new(deb_cache, arch.oci_name()).map_err(|source| {
                    Error::Resolve {
                        package: roots.join(", "),
                        arch: arch.oci_name().to_owned(),
                        source: Box::new(source),
                    }
                })?;
                lock::closure(&apt, &roots)?
            }
        };
        lock.arches.insert(
            key.to_owned(),
            ArchLock {
                debs: roots.clone(),
                packages: packages.clone(),
            },
        );
        out.insert(arch, packages);
    }
    let needed = existing.is_some() || !roots.is_empty();
    if needed && existing.as_ref() != Some(&lock) {
        lock.write(dir)?;
    }
    Ok(out)
}

/// Length-prefixed fields, so that no two input sets hash alike by concatenation.
struct InputHasher(Sha256);

impl InputHasher {
    fn field(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }
}

/// sha256 (hex) over: the format version, build.yml, the build timestamp, the source files
/// (path, kind, mode, bytes; sorted), then per architecture (sorted) the pins and the binaries.
fn input_hash(p: &Prepared) -> String {
    let mut h = InputHasher(Sha256::new());
    h.field(FORMAT);
    h.field(&p.yml);
    h.field(p.mtime.to_string());
    h.field(p.sources.len().to_string());
    for (path, input) in &p.sources {
        h.field(path);
        match input {
            sources::Input::File { mode, data } => {
                h.field("file");
                h.field(format!("{mode:o}"));
                h.field(data);
            }
            sources::Input::Dir => h.field("dir"),
            sources::Input::Symlink(target) => {
                h.field("symlink");
                h.field(target.as_os_str().as_encoded_bytes());
            }
        }
    }
    for arch in &p.arches {
        h.field(arch.uname());
        let pins = p.pins.get(arch).map(Vec::as_slice).unwrap_or_default();
        h.field(pins.len().to_string());
        for pin in pins {
            h.field(&pin.name);
            h.field(&pin.version);
            h.field(&pin.sha256);
        }
        let bins = p.binaries.get(arch).map(Vec::as_slice).unwrap_or_default();
        h.field(bins.len().to_string());
        for (b, data) in p.manifest.binaries.iter().zip(bins) {
            h.field(b.package.as_str());
            h.field(b.bin.as_str());
            h.field(data);
        }
    }
    // What the SBOM says of the binaries' Cargo packages.
    h.field(p.crates.len().to_string());
    for c in p.crates.values() {
        h.field(&c.name);
        h.field(&c.version);
        h.field(c.license.as_deref().unwrap_or_default());
        h.field(c.repository.as_deref().unwrap_or_default());
    }
    hex::encode(h.0.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// One tar entry of an image layer: kind, mode, contents or link target.
    #[derive(Debug, PartialEq)]
    struct Entry {
        kind: tar::EntryType,
        mode: u32,
        data: Vec<u8>,
    }

    fn layer(store: &Store, r: &Reference, arch: Arch) -> BTreeMap<String, Entry> {
        let image = store.image(r, arch).unwrap();
        assert_eq!(image.layers().len(), 1);
        let mut reader = store.open_layer(&image.layers()[0]).unwrap();
        let mut tar = Vec::new();
        reader.read_to_end(&mut tar).unwrap();
        reader.finish().unwrap();
        let mut out = BTreeMap::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned();
            let kind = e.header().entry_type();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            if kind == tar::EntryType::Symlink {
                data = e.link_name_bytes().unwrap().into_owned();
            } else {
                e.read_to_end(&mut data).unwrap();
            }
            out.insert(path, Entry { kind, mode, data });
        }
        out
    }

    /// A package using a (synthetic) Debian package, whose `.deb` is already in `cache`.
    fn fixture(cache: &Path) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join(BUILD_YML),
            "image: test/fixture\narches: [x86_64]\nconfig: {pid: host, readonly: true}\n\
             entrypoint: [/bin/hello]\nenv: [A=b]\ndebs: [hello]\nfiles:\n  \
             - {source: etc, path: /etc}\n  - {path: /bin/hi, symlink: hello}\n  \
             - {path: /etc/motd, contents: \"hi\\n\"}\n",
        )
        .unwrap();
        std::fs::create_dir(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        let mut data = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(5);
        h.set_entry_type(tar::EntryType::Regular);
        data.append_data(&mut h, "./bin/hello", &b"\x7fELF!"[..])
            .unwrap();
        let copyright = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-2+\n";
        h.set_mode(0o644);
        h.set_size(copyright.len() as u64);
        data.append_data(&mut h, "./usr/share/doc/hello/copyright", &copyright[..])
            .unwrap();
        let deb = keel_debian::deb::build_deb(
            "Package: hello\nVersion: 1.0\nArchitecture: amd64\n",
            &data.into_inner().unwrap(),
            keel_debian::Compression::Gzip,
        )
        .unwrap();
        let sha = hex::encode(Sha256::digest(&deb));
        std::fs::create_dir_all(cache).unwrap();
        std::fs::write(cache.join(format!("sha256-{sha}.deb")), &deb).unwrap();
        let mut lock = Lock::default();
        lock.arches.insert(
            "x86_64".into(),
            ArchLock {
                debs: vec!["hello".into()],
                packages: vec![Pin {
                    name: "hello".into(),
                    version: "1.0".into(),
                    sha256: sha,
                }],
            },
        );
        lock.write(d).unwrap();
        dir
    }

    fn opts(cache: &Path) -> PkgOptions {
        PkgOptions {
            deb_cache: Some(cache.to_path_buf()),
            ..PkgOptions::default()
        }
    }

    #[test]
    fn tag_is_stable_and_covers_every_input() {
        let cache = tempfile::tempdir().unwrap();
        let pkg = fixture(cache.path());
        let d = pkg.path();
        let o = opts(cache.path());
        let tag = show_tag(d, &o).unwrap();
        assert_eq!(tag.registry(), "docker.io");
        assert_eq!(tag.repository(), "test/fixture");
        assert_eq!(tag.tag().unwrap().len(), 16);
        assert_eq!(show_tag(d, &o).unwrap(), tag);

        let changed = |edit: &dyn Fn(), undo: &dyn Fn()| {
            edit();
            let other = show_tag(d, &o).unwrap();
            undo();
            assert_ne!(other, tag);
            assert_eq!(show_tag(d, &o).unwrap(), tag);
        };
        let passwd = d.join("etc/passwd");
        changed(
            &|| std::fs::write(&passwd, "root:x:0:0::/:/bin/ash\n").unwrap(),
            &|| std::fs::write(&passwd, "root:x:0:0::/:/bin/sh\n").unwrap(),
        );
        let set_mode = |m| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(m)).unwrap();
        };
        changed(&|| set_mode(0o755), &|| set_mode(0o644));
        let yml = std::fs::read_to_string(d.join(BUILD_YML)).unwrap();
        changed(
            &|| std::fs::write(d.join(BUILD_YML), yml.replace("A=b", "A=c")).unwrap(),
            &|| std::fs::write(d.join(BUILD_YML), &yml).unwrap(),
        );
        let lock = std::fs::read_to_string(d.join(LOCK_FILE)).unwrap();
        changed(
            &|| std::fs::write(d.join(LOCK_FILE), lock.replace("\"1.0\"", "\"1.1\"")).unwrap(),
            &|| std::fs::write(d.join(LOCK_FILE), &lock).unwrap(),
        );
        // A file the package directory holds but build.yml does not use is not an input.
        std::fs::write(d.join("README.md"), "notes").unwrap();
        assert_eq!(show_tag(d, &o).unwrap(), tag);
    }

    #[test]
    fn build_is_reproducible_and_complete() {
        let cache = tempfile::tempdir().unwrap();
        let pkg = fixture(cache.path());
        let o = opts(cache.path());
        let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (store1, store2) = (
            Store::open(s1.path()).unwrap(),
            Store::open(s2.path()).unwrap(),
        );
        let r = build(&store1, pkg.path(), &o).unwrap();
        assert_eq!(r, show_tag(pkg.path(), &o).unwrap());
        assert_eq!(build(&store2, pkg.path(), &o).unwrap(), r);
        let d1 = store1.resolve(&r).unwrap().unwrap();
        let d2 = store2.resolve(&r).unwrap().unwrap();
        assert_eq!(d1.digest(), d2.digest());
        assert_eq!(d1.media_type(), &keel_image::oci::MediaType::ImageIndex);

        let image = store1.image(&r, Arch::X86_64).unwrap();
        assert_eq!(
            image.label(assemble::CONFIG_LABEL),
            Some(r#"{"pid":"host","readonly":true}"#)
        );
        let config = image.config.config().as_ref().unwrap();
        assert_eq!(
            config.entrypoint().as_deref(),
            Some(&["/bin/hello".to_owned()][..])
        );
        assert_eq!(config.env().as_deref(), Some(&["A=b".to_owned()][..]));
        assert!(config.cmd().is_none());
        // Only the arches asked for.
        assert!(store1.image(&r, Arch::Aarch64).is_err());

        let files = layer(&store1, &r, Arch::X86_64);
        assert_eq!(files["bin/hello"].data, b"\x7fELF!");
        assert_eq!(files["bin/hello"].mode, 0o755);
        assert_eq!(files["bin/hi"].kind, tar::EntryType::Symlink);
        assert_eq!(files["bin/hi"].data, b"hello");
        assert_eq!(files["etc/passwd"].mode, 0o644);
        assert_eq!(files["etc/motd"].data, b"hi\n");
        assert_eq!(files["etc"].kind, tar::EntryType::Directory);
    }

    /// The index carries, per architecture, an in-toto SPDX attestation of what the image
    /// holds, attached to that architecture's manifest.
    #[test]
    fn build_attaches_an_sbom() {
        let cache = tempfile::tempdir().unwrap();
        let pkg = fixture(cache.path());
        let o = opts(cache.path());
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        let r = build(&store, pkg.path(), &o).unwrap();
        let image = store.image(&r, Arch::X86_64).unwrap();
        let index: spdx::Index =
            serde_json::from_slice(&store.read_blob(&image.digest).unwrap()).unwrap();
        assert_eq!(index.manifests.len(), 2);
        let att = &index.manifests[1];
        assert_eq!(
            att.annotation(spdx::REFERENCE_TYPE_ANNOTATION),
            Some(spdx::ATTESTATION_MANIFEST)
        );
        assert_eq!(
            att.annotation(spdx::REFERENCE_DIGEST_ANNOTATION),
            Some(image.manifest_digest.as_str())
        );
        let manifest: spdx::Manifest =
            serde_json::from_slice(&store.read_blob(&att.digest.parse().unwrap()).unwrap())
                .unwrap();
        let layer = &manifest.layers[0];
        assert_eq!(layer.media_type, spdx::IN_TOTO_MEDIA_TYPE);
        let statement: spdx::Statement =
            serde_json::from_slice(&store.read_blob(&layer.digest.parse().unwrap()).unwrap())
                .unwrap();
        assert_eq!(statement.predicate_type, spdx::SPDX_PREDICATE);
        assert_eq!(
            statement.subject[0].digest["sha256"],
            image.manifest_digest.hex()
        );
        let doc = statement.predicate;
        assert_eq!(doc.packages.len(), 1);
        let hello = &doc.packages[0];
        assert_eq!(hello.name, "hello");
        assert_eq!(hello.version_info.as_deref(), Some("1.0"));
        assert_eq!(hello.license_declared.as_deref(), Some("GPL-2.0-or-later"));
        let pins = Lock::read(pkg.path()).unwrap().unwrap();
        assert_eq!(
            hello.checksums[0].checksum_value,
            pins.arches["x86_64"].packages[0].sha256
        );
        assert_eq!(
            hello.download_location,
            "https://deb.debian.org/debian/pool/main/h/hello/hello_1.0_amd64.deb"
        );
        assert_eq!(doc.creation_info.created, "2017-04-18T16:30:00Z");
    }

    #[test]
    fn arches_must_be_listed() {
        let cache = tempfile::tempdir().unwrap();
        let pkg = fixture(cache.path());
        let o = PkgOptions {
            arches: Some(vec![Arch::Aarch64]),
            ..opts(cache.path())
        };
        let e = show_tag(pkg.path(), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "test/fixture is not built for aarch64 (build.yml arches: x86_64)"
        );
    }

    #[test]
    fn manifest_errors_have_positions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BUILD_YML), "image: x\nfiels: []\n").unwrap();
        let e = show_tag(dir.path(), &PkgOptions::default()).unwrap_err();
        let want = format!("{}:2:1: unknown key", dir.path().join(BUILD_YML).display());
        assert!(e.to_string().starts_with(&want), "{e}");
    }

    /// A LinuxKit package (Dockerfile + LinuxKit's build.yml) is refused, never built into an
    /// image holding only its label; so is any build.yml that puts nothing into the image.
    #[test]
    fn dockerfile_packages_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let o = opts(d);
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let refused = |yml: &str| {
            std::fs::write(d.join(BUILD_YML), yml).unwrap();
            let e = build(&store, d, &o).unwrap_err();
            assert!(matches!(e, Error::DockerfilePackage { .. }), "{yml}: {e}");
            let tag = show_tag(d, &o).unwrap_err();
            assert!(
                matches!(tag, Error::DockerfilePackage { .. }),
                "{yml}: {tag}"
            );
            e.to_string()
        };
        std::fs::write(d.join("Dockerfile"), "FROM alpine\nRUN apk add openssh\n").unwrap();
        // keel's parser takes this one: it would have been an image with only the label.
        let msg = refused("image: sshd\nconfig:\n  pid: host\n");
        assert!(msg.contains("docker build"), "{msg}");
        assert!(msg.contains("keel cache import"), "{msg}");
        assert!(msg.contains("binaries, debs and files"), "{msg}");
        // LinuxKit's own keys, which keel's parser does not know.
        refused("image: sshd\nnetwork: true\narches: [amd64]\n");
        // Without a Dockerfile, LinuxKit's keys still tell what it is.
        std::fs::remove_file(d.join("Dockerfile")).unwrap();
        refused("image: sshd\norg: example\ndockerfile: Dockerfile.alt\n");
        assert!(store.list().unwrap().is_empty());

        // Not a LinuxKit package, but nothing to build either.
        std::fs::write(d.join(BUILD_YML), "image: x/y\nconfig: {pid: host}\n").unwrap();
        let e = build(&store, d, &o).unwrap_err();
        assert!(matches!(e, Error::EmptyPackage { .. }), "{e}");
        assert!(e.to_string().contains("the image would be empty"), "{e}");

        // A keel package with a Dockerfile beside it builds from its build.yml.
        std::fs::write(d.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(
            d.join(BUILD_YML),
            "image: x/y\nfiles: [{path: /a, contents: a}]\n",
        )
        .unwrap();
        assert_eq!(build(&store, d, &o).unwrap(), show_tag(d, &o).unwrap());
    }

    /// An image without an organisation is in LinuxKit's default one; keel's own (`keel/...`)
    /// and registry-qualified names are kept.
    #[test]
    fn bare_images_are_in_the_linuxkit_org() {
        assert_eq!(repository("sshd", None), "linuxkit/sshd");
        assert_eq!(repository("sshd", Some("ghcr.io/me")), "ghcr.io/me/sshd");
        assert_eq!(repository("keel/init", None), "keel/init");
        assert_eq!(repository("ghcr.io/me/tool", None), "ghcr.io/me/tool");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(BUILD_YML),
            "image: sshd\nfiles: [{path: /a, contents: a}]\n",
        )
        .unwrap();
        let o = opts(dir.path());
        let tag = show_tag(dir.path(), &o).unwrap();
        assert_eq!(tag.registry(), "docker.io");
        assert_eq!(tag.repository(), "linuxkit/sshd");
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        assert_eq!(build(&store, dir.path(), &o).unwrap(), tag);
        // LinuxKit's org: key puts it in another organisation, for show-tag and build alike.
        std::fs::write(
            dir.path().join(BUILD_YML),
            "image: sshd\norg: ghcr.io/me\nfiles: [{path: /a, contents: a}]\n",
        )
        .unwrap();
        let tag = show_tag(dir.path(), &o).unwrap();
        assert_eq!(tag.registry(), "ghcr.io");
        assert_eq!(tag.repository(), "me/sshd");
        assert_eq!(build(&store, dir.path(), &o).unwrap(), tag);
        assert!(store.resolve(&tag).unwrap().is_some());
    }

    #[test]
    fn packages_without_debs_need_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(BUILD_YML),
            "image: x/y\nfiles: [{path: /a, contents: a}]\n",
        )
        .unwrap();
        let o = opts(dir.path());
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let r = build(&store, dir.path(), &o).unwrap();
        assert!(!dir.path().join(LOCK_FILE).exists());
        for arch in Arch::ALL {
            assert_eq!(layer(&store, &r, arch)["a"].data, b"a");
        }
    }

    /// A Cargo workspace in a temporary directory with one tiny binary, and a package inside it.
    #[test]
    fn binaries_are_built_per_arch() {
        let ws = tempfile::tempdir().unwrap();
        let w = ws.path();
        std::fs::write(
            w.join("Cargo.toml"),
            "[workspace]\nmembers = [\"hello\"]\nresolver = \"3\"\n\n\
             [profile.guest]\ninherits = \"release\"\nstrip = true\npanic = \"abort\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(w.join(".cargo")).unwrap();
        std::fs::write(
            w.join(".cargo/config.toml"),
            "[target.aarch64-unknown-linux-musl]\nlinker = \"rust-lld\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(w.join("hello/src")).unwrap();
        std::fs::write(
            w.join("hello/Cargo.toml"),
            "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [[bin]]\nname = \"hi\"\npath = \"src/main.rs\"\n",
        )
        .unwrap();
        std::fs::write(
            w.join("hello/src/main.rs"),
            "fn main() { println!(\"hi\"); }\n",
        )
        .unwrap();
        std::fs::write(
            w.join("Cargo.lock"),
            "version = 4\n\n[[package]]\nname = \"hello\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        let pkg = w.join("pkg/hi");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(
            pkg.join(BUILD_YML),
            "image: test/hi\nbinaries:\n  - {package: hello, bin: hi, path: /usr/bin/hi, links: [/hi]}\n",
        )
        .unwrap();
        // cargo through a wrapper that counts its runs.
        let real = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from);
        let runs = w.join("cargo-runs");
        let wrapper = w.join("cargo-counting");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
                runs.display(),
                Path::new(&real).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let count = || {
            std::fs::read_to_string(&runs)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        // Sources written a while ago, as in a checkout (a file changed while cargo runs would
        // rightly keep the next build from trusting the binaries).
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for f in [
            "Cargo.toml",
            "Cargo.lock",
            ".cargo/config.toml",
            "hello/Cargo.toml",
            "hello/src/main.rs",
        ] {
            std::fs::File::options()
                .write(true)
                .open(w.join(f))
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        }
        let o = PkgOptions {
            cargo: wrapper.clone(),
            deb_cache: Some(w.join("debs")),
            ..PkgOptions::default()
        };
        let store = Store::open(w.join("store")).unwrap();
        let r = build(&store, &pkg, &o).unwrap();
        // cargo metadata, then cargo build per architecture.
        assert_eq!(count(), 3);
        // Warm: nothing changed, so cargo is not run at all.
        assert_eq!(build(&store, &pkg, &o).unwrap(), r);
        assert_eq!(show_tag(&pkg, &o).unwrap(), r);
        assert_eq!(count(), 3, "cargo ran for up-to-date binaries");
        // A manifest touched (a profile or a feature may have changed): cargo runs again.
        std::fs::File::options()
            .write(true)
            .open(w.join("hello/Cargo.toml"))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
            .unwrap();
        assert_eq!(show_tag(&pkg, &o).unwrap(), r);
        assert_eq!(count(), 6);
        assert_eq!(show_tag(&pkg, &o).unwrap(), r);
        assert_eq!(count(), 6);
        for (arch, machine) in [(Arch::X86_64, 62u16), (Arch::Aarch64, 183)] {
            let files = layer(&store, &r, arch);
            let bin = &files["usr/bin/hi"];
            assert_eq!(bin.mode, 0o755);
            assert_eq!(&bin.data[..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([bin.data[18], bin.data[19]]), machine);
            assert_eq!(files["hi"].data, b"/usr/bin/hi");
        }
        // The binaries are inputs: a changed program changes the tag (cargo runs).
        std::fs::write(
            w.join("hello/src/main.rs"),
            "fn main() { println!(\"ho\"); }\n",
        )
        .unwrap();
        assert_ne!(show_tag(&pkg, &o).unwrap(), r);
        assert_eq!(count(), 9);
        // A cargo failure is reported with its command.
        std::fs::write(w.join("hello/src/main.rs"), "fn main() { nope }\n").unwrap();
        let e = show_tag(&pkg, &o).unwrap_err();
        assert!(e.to_string().contains("--bin hi --target"), "{e}");
    }
}
