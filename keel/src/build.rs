//! `keel build` and `keel validate`: YAML → pinned images → root filesystem → outputs.
//!
//! This module owns the order of a build and its guarantees: every image reference resolves to
//! a digest (recorded in the lock file), images are read only from the store, and outputs are
//! written through [`AtomicFile`]s committed together at the end, so a failed build leaves no
//! output behind.

use crate::assemble::{self, Images};
use crate::lock::{self, Lock};
use keel_config::{Config, Loc, Source};
use keel_image::{Arch, Digest, PullOptions, Reference, Store};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    ReadInput {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] keel_config::Error),
    #[error(transparent)]
    Fetch(#[from] keel_image::fetch::FetchError),
    #[error(transparent)]
    Sbom(#[from] crate::sbom::Error),
    #[error("{loc}: invalid image reference {reference:?}")]
    Reference {
        loc: Loc,
        reference: String,
        #[source]
        source: keel_image::ReferenceError,
    },
    #[error(
        "{loc}: image {reference} is not in the store and could not be pulled (images built here come from `keel kernel build` / `keel pkg build`; others need a registry)"
    )]
    Missing {
        loc: Loc,
        reference: String,
        #[source]
        source: Box<keel_image::Error>,
    },
    #[error("{loc}: image {reference} resolves to an unusable digest")]
    Digest {
        loc: Loc,
        reference: String,
        #[source]
        source: keel_image::DigestError,
    },
    #[error("{loc}: cannot use image {reference}")]
    Image {
        loc: Loc,
        reference: String,
        #[source]
        source: Box<keel_image::Error>,
    },
    #[error("--locked: the lock file {} does not match:\n  {}\nrun without --locked (or with --pull) to update it", path.display(), changes.join("\n  "))]
    Locked { path: PathBuf, changes: Vec<String> },
    #[error(transparent)]
    Lock(#[from] lock::Error),
    #[error(transparent)]
    Assemble(#[from] assemble::Error),
    #[error(transparent)]
    Output(#[from] crate::output::Error),
    #[error(transparent)]
    Tool(#[from] crate::tools::Error),
    #[error(
        "--decompress-kernel: format {format} boots the kernel through a loader that needs the compressed image; use it with kernel+initrd, kernel+squashfs, tar or tar-kernel-initrd"
    )]
    DecompressFormat { format: &'static str },
    #[error("cannot read the input tar {path}")]
    InputTar {
        path: String,
        #[source]
        source: keel_rootfs::Error,
    },
    #[error("the input tar {path} names {what} as a part of the kernel, but it holds no such file")]
    InputTarLayout { path: String, what: String },
    #[error(
        "the input tar {path} records kernel decompressors {names:?}, which this keel does not know (gzip, zstd): build from the images"
    )]
    InputTarDecompressors { path: String, names: String },
    #[error(
        "--input-tar with --pull: --pull re-resolves every tag, so nothing of a previous build can be reused"
    )]
    InputTarWithPull,
    #[error("--decompress-kernel: cannot decompress the kernel of {reference}")]
    Decompress {
        reference: String,
        #[source]
        source: keel_kernel::decompress::DecompressError,
    },
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

pub use crate::output::Format;
pub use keel_rootfs::DEFAULT_MAX_IMAGE_SIZE;

/// Everything `keel build` takes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// YAML files in merge order; `-` is stdin.
    pub files: Vec<String>,
    pub formats: Vec<Format>,
    pub dir: PathBuf,
    pub name: Option<String>,
    pub arch: Arch,
    /// Disk size for disk formats (`--size`, e.g. `1024M`); `None`: as small as the content.
    pub size: Option<String>,
    pub dry_run: bool,
    pub pull: bool,
    pub locked: bool,
    /// How registries are reached: `--insecure-registry`, `--mirror`.
    pub registry: PullOptions,
    /// The most an image's layers may decompress to, each and together (`--max-image-size`).
    pub max_image_size: u64,
    /// Write `<name>-sbom.spdx.json` beside the outputs (`--no-sbom` turns it off).
    pub sbom: bool,
    /// Write the kernel uncompressed (`--decompress-kernel`, LinuxKit's flag): an ELF `vmlinux`
    /// on x86_64, an `Image` on aarch64.
    pub decompress_kernel: bool,
    /// How the initramfs is compressed (`--initrd-compression`).
    pub initrd_compression: crate::output::InitrdCompression,
    /// A previous build's `tar` output to build from when it was made from the same inputs
    /// (`--input-tar`, LinuxKit's flag; see [`crate::input_tar`]).
    pub input_tar: Option<PathBuf>,
    /// The Secure Boot key set whose `db` key signs the UKI (`--sign-with`).
    pub sign_with: Option<crate::keys::KeySet>,
    /// Write `<name>-pcr11.json` beside a UKI's outputs (not with `-o`, which writes one file).
    pub pcr_file: bool,
    /// Where the root goes: the initramfs, or a dm-verity checked partition of the EFI disk
    /// formats (`--verity`), in the A/B layout (`--ab`).
    pub root: crate::output::RootLayout,
}

/// The largest YAML document fetched from a URL (the parser's own limit on a document).
const MAX_FETCHED_YAML: u64 = 64 << 20;
/// How long fetching one YAML document may take.
const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Reads the YAML inputs: files, `-` (stdin) and `http(s)://` URLs.
pub fn sources(files: &[String]) -> Result<Vec<Source>> {
    files
        .iter()
        .map(|f| {
            if f == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|source| Error::ReadInput {
                        path: "-".into(),
                        source,
                    })?;
                Ok(Source {
                    name: "-".into(),
                    text,
                    dir: None,
                })
            } else if keel_image::fetch::is_url(f) {
                // As LinuxKit does: a YAML file on a web server. It has no directory, so no
                // `@pkg:` and no lock file beside it.
                let bytes = keel_image::fetch::fetch(f, MAX_FETCHED_YAML, FETCH_DEADLINE)?;
                let text = String::from_utf8(bytes).map_err(|e| Error::ReadInput {
                    path: f.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?;
                Ok(Source {
                    name: f.clone(),
                    text,
                    dir: None,
                })
            } else {
                Source::from_file(Path::new(f)).map_err(|source| Error::ReadInput {
                    path: f.clone(),
                    source,
                })
            }
        })
        .collect()
}

/// How `@pkg:DIR` templates resolve.
#[derive(Debug, Clone, Copy)]
pub enum Packages<'a> {
    /// To the package's tag, building it into the store first when it is missing (with
    /// `locked`, without changing any Debian pin).
    Build { store: &'a Store, locked: bool },
    /// Without building anything (dry runs, `keel validate`): see [`unbuilt_reference`].
    Unbuilt,
}

/// The tag of a package with Rust `binaries:` when nothing was built: its real tag covers the
/// built bytes.
pub const UNBUILT_TAG: &str = "unbuilt";

/// Parses, merges and validates the YAML inputs, resolving `@pkg:DIR` as `packages` says.
pub fn load(files: &[String], packages: Packages<'_>) -> Result<Config> {
    let sources = sources(files)?;
    let pkg = |dir: &Path| {
        let reference = match packages {
            Packages::Build { store, locked } => crate::pkg::ensure(store, dir, locked),
            Packages::Unbuilt => return unbuilt_reference(dir),
        };
        reference
            .map(|r| r.to_string())
            .map_err(|e| error_chain(&e))
    };
    Ok(keel_config::load(&sources, &pkg)?)
}

/// `@pkg:DIR` without building or downloading anything: the tag of a kernel recipe or of a
/// package made only of files and Debian pins (both are hashes of the directory's inputs); a
/// package with Rust `binaries:` is `IMAGE:unbuilt` ([`UNBUILT_TAG`]).
fn unbuilt_reference(dir: &Path) -> std::result::Result<String, String> {
    let manifest = dir.join(keel_pkg::BUILD_YML);
    if manifest.is_file() {
        let parsed = keel_config::build_yml::load(&manifest).map_err(|e| error_chain(&e))?;
        if !parsed.binaries.is_empty() {
            log::info!(
                "{}: not built (a dry run), so its tag, which covers its Rust binaries, shows as {UNBUILT_TAG}",
                dir.display()
            );
            let text = format!("{}:{UNBUILT_TAG}", parsed.image.as_str());
            return text
                .parse::<Reference>()
                .map(|r| r.to_string())
                .map_err(|e| format!("{}: invalid image {text:?}: {e}", manifest.display()));
        }
    }
    if crate::kernel::signs_modules(dir) {
        log::info!(
            "{}: not built (a dry run), so its tag, which covers the module signing key, shows as {UNBUILT_TAG}",
            dir.display()
        );
        return Ok(format!("{}:{UNBUILT_TAG}", crate::kernel::REPOSITORY));
    }
    crate::pkg::show_tag(dir, None)
        .map(|r| r.to_string())
        .map_err(|e| error_chain(&e))
}

/// An error and its causes on one line (`a: b: c`), for messages embedded in other errors: the
/// one helper keel's programs share.
pub use keel_guest::chain as error_chain;

/// Every image reference a config names, as written, in build order.
pub(crate) fn reference_texts(config: &Config) -> Vec<String> {
    references(config).into_iter().map(|(t, _)| t).collect()
}

/// Every image reference a config names, with where it is named, in build order.
fn references(config: &Config) -> Vec<(String, Loc)> {
    let mut refs = Vec::new();
    if let Some(image) = config.kernel.as_ref().and_then(|k| k.image.as_ref()) {
        refs.push((image.value.clone(), image.loc.clone()));
    }
    refs.extend(config.init.iter().map(|i| (i.value.clone(), i.loc.clone())));
    refs.extend(
        config
            .volumes
            .iter()
            .filter_map(|v| v.image.as_ref())
            .map(|i| (i.value.clone(), i.loc.clone())),
    );
    refs.extend(
        config
            .containers()
            .map(|(_, _, s)| (s.image.value.clone(), s.image.loc.clone())),
    );
    refs
}

/// How references are resolved.
#[derive(Debug, Clone)]
pub struct Resolve {
    pub arch: Arch,
    pub pull: bool,
    /// How registries are reached.
    pub registry: PullOptions,
}

/// What [`resolve`] found.
#[derive(Debug)]
pub struct Resolved {
    /// Images by the reference text of the YAML.
    pub images: Images,
    /// The digest every reference was resolved to.
    pub pins: Lock,
    /// Pinned references whose tag in the store now points elsewhere (the pin was used).
    pub drift: Vec<lock::Change>,
}

/// Resolves every reference of `config` to a digest and loads its image for `arch` from the
/// store, pulling what is missing. A pin in `lock` wins over the store's tag unless `how.pull`.
pub fn resolve(store: &Store, config: &Config, lock: &Lock, how: Resolve) -> Result<Resolved> {
    let mut images = Images::new();
    let mut pins = Lock::default();
    let mut drift = Vec::new();
    let options = &how.registry;
    for (text, loc) in references(config) {
        if images.contains_key(&text) {
            continue;
        }
        let reference = parse_reference(&text, &loc)?;
        let name = reference.to_string();
        // A corrupt store is not a missing image: say which it is.
        let missing = |source: keel_image::Error| {
            if source.is_store_corrupt() {
                Error::Image {
                    loc: loc.clone(),
                    reference: name.clone(),
                    source: Box::new(source),
                }
            } else {
                Error::Missing {
                    loc: loc.clone(),
                    reference: name.clone(),
                    source: Box::new(source),
                }
            }
        };
        let bad_digest = |source| Error::Digest {
            loc: loc.clone(),
            reference: name.clone(),
            source,
        };
        let pull = |r: &Reference| -> Result<Digest> {
            let desc = store.pull(r, how.arch, options).map_err(missing)?;
            Digest::try_from(desc.digest()).map_err(bad_digest)
        };

        let digest: Digest = match (reference.digest(), lock.get(&name)) {
            (Some(d), _) => {
                // `name:tag@digest`: the digest wins, but a tag that now points elsewhere is
                // said (and refused under --locked, through `drift`).
                if let Some(tagged) = store.resolve_tag(&reference).map_err(missing)?
                    && tagged.digest().as_ref() != d.as_str()
                {
                    let tag = reference.without_digest();
                    log::warn!(
                        "{loc}: using {name} as pinned; the store's {tag} now points to {} instead",
                        tagged.digest()
                    );
                    drift.push(lock::Change::Changed {
                        reference: name.clone(),
                        from: d.to_string(),
                        to: tagged.digest().to_string(),
                    });
                }
                d.clone()
            }
            (None, Some(pinned)) if !how.pull => {
                let digest: Digest = pinned.parse().map_err(|_| {
                    Error::Lock(lock::Error::Invalid {
                        reference: name.clone(),
                        digest: pinned.into(),
                    })
                })?;
                if let Some(tagged) = store.resolve(&reference).map_err(missing)?
                    && tagged.digest().as_ref() != digest.as_str()
                {
                    log::warn!(
                        "{loc}: using {name}@{digest} from the lock file; the store's tag now points to {} (--pull updates the pin)",
                        tagged.digest()
                    );
                    drift.push(lock::Change::Changed {
                        reference: name.clone(),
                        from: digest.to_string(),
                        to: tagged.digest().to_string(),
                    });
                }
                digest
            }
            _ if how.pull => pull(&reference)?,
            _ => match store.resolve(&reference).map_err(missing)? {
                Some(d) => Digest::try_from(d.digest()).map_err(bad_digest)?,
                None => pull(&reference)?,
            },
        };
        let pinned = reference.with_digest(digest.clone());
        let image = match store.image(&pinned, how.arch) {
            Ok(image) => image,
            // Not here (or not this platform): fetch it by digest, then try again.
            Err(first) => {
                log::debug!("{name}: {first}; pulling");
                store.pull(&pinned, how.arch, options).map_err(missing)?;
                store
                    .image(&pinned, how.arch)
                    .map_err(|source| Error::Image {
                        loc: loc.clone(),
                        reference: name.clone(),
                        source: Box::new(source),
                    })?
            }
        };
        pins.insert(name, digest.to_string());
        images.insert(text, image);
    }
    Ok(Resolved {
        images,
        pins,
        drift,
    })
}

/// The lock file of a build: beside the first YAML file (none for stdin or a URL).
/// The lock file of a build of `files` (empty when there is none).
pub(crate) fn lock_for(files: &[String]) -> Result<Lock> {
    Ok(lock_path(files)
        .map(|p| Lock::load(&p))
        .transpose()?
        .unwrap_or_default())
}

fn lock_path(files: &[String]) -> Option<PathBuf> {
    files
        .first()
        .filter(|f| *f != "-" && !keel_image::fetch::is_url(f))
        .map(|f| Lock::path_for(Path::new(f)))
}

/// Base name of the outputs: `--name`, else the first file's stem.
fn output_name(opts: &BuildOptions) -> String {
    opts.name.clone().unwrap_or_else(|| {
        opts.files
            .first()
            .filter(|f| *f != "-")
            .and_then(|f| Path::new(f).file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keel".into())
    })
}

/// The formats to build when no `-f` is given: a 2017-era file's `outputs:` (LinuxKit's names
/// of then mapped to today's, with a warning), else `kernel+initrd`.
fn yaml_formats(config: &Config) -> Result<Vec<Format>> {
    let mut formats = Vec::new();
    for output in &config.outputs {
        let name = match output.as_str() {
            // LinuxKit renamed these when BIOS and EFI variants split (2017-2018).
            "gcp-img" => "gcp",
            "qcow" | "qcow2" => "qcow2-bios",
            "raw" => "raw-bios",
            other => other,
        };
        if name != output.as_str() {
            log::warn!(
                "{}: output format {:?} is called {name:?} today; building {name}",
                output.loc,
                output.as_str()
            );
        }
        let format: Format =
            name.parse()
                .map_err(|e: crate::output::UnknownFormat| keel_config::Error::At {
                    loc: output.loc.clone(),
                    message: e.to_string(),
                })?;
        if !formats.contains(&format) {
            formats.push(format);
        }
    }
    if formats.is_empty() {
        formats.push(Format::KernelInitrd);
    }
    Ok(formats)
}

/// Refuses `formats` that cannot be built together or with `opts`, before anything is written.
fn check_formats(formats: &[Format], name: &str, opts: &BuildOptions) -> Result<()> {
    crate::output::check(
        formats,
        name,
        opts.arch,
        opts.sign_with.is_some(),
        &opts.root,
    )?;
    check_decompress(formats, opts)
}

/// `keel build`.
pub fn build(store: &Store, opts: &BuildOptions) -> Result<Vec<PathBuf>> {
    let ab = opts.root.ab();
    let name = output_name(opts);
    if let Some(size) = &opts.size {
        crate::output::check_size(size, &opts.dir)?;
    }
    if let Some(ab) = ab {
        crate::output::check_ab_sizes(ab, &opts.dir)?;
    }
    let mut formats = opts.formats.clone();
    formats.dedup();
    // Formats given on the command line are checked before anything is built.
    if !opts.dry_run && !formats.is_empty() {
        check_formats(&formats, &name, opts)?;
    }
    let packages = if opts.dry_run {
        Packages::Unbuilt
    } else {
        Packages::Build {
            store,
            locked: opts.locked,
        }
    };
    let config = load(&opts.files, packages)?;
    if opts.dry_run {
        print!("{}", config.to_yaml()?);
        return Ok(vec![]);
    }
    if formats.is_empty() {
        formats = yaml_formats(&config)?;
        check_formats(&formats, &name, opts)?;
    }

    let lock_file = lock_path(&opts.files);
    let lock = match &lock_file {
        Some(path) => Lock::load(path)?,
        None => Lock::default(),
    };
    if opts.locked && opts.pull {
        log::warn!("--pull with --locked: tags are re-resolved and must still match the lock file");
    }
    if let Some(path) = &opts.input_tar {
        if opts.pull {
            return Err(Error::InputTarWithPull);
        }
        if let Some(previous) = reusable(path, &config, &lock, opts)? {
            return build_from(store, &config, &lock, previous, &formats, &name, opts);
        }
    }
    let how = Resolve {
        arch: opts.arch,
        pull: opts.pull,
        registry: opts.registry.clone(),
    };
    let Resolved {
        images,
        pins,
        drift,
    } = resolve(store, &config, &lock, how)?;
    let changes = lock.changes(&pins);
    if opts.locked && (!changes.is_empty() || !drift.is_empty()) {
        return Err(Error::Locked {
            path: lock_file.unwrap_or_default(),
            changes: changes
                .iter()
                .chain(&drift)
                .map(ToString::to_string)
                .collect(),
        });
    }

    // Boot tools before assembly: a tool that cannot be had fails the build early.
    for tool in formats.iter().filter_map(|f| f.tool()) {
        if tool.arches.contains(&opts.arch) {
            tool.ensure(store)?;
        }
    }
    if ab.is_some() {
        crate::tools::SYSTEMD_BOOT.ensure(store)?;
    }
    let fingerprint = crate::input_tar::fingerprint(&config, &pins, opts.arch, opts)?;
    let mut assembled = assemble::assemble(
        store,
        &config,
        &images,
        assemble::AssembleOptions {
            arch: opts.arch,
            max_image_size: opts.max_image_size,
        },
    )?;
    if opts.decompress_kernel
        && let Some(kernel) = &mut assembled.kernel
    {
        decompress_kernel(kernel, &config)?;
    }
    let settings = crate::output::Settings {
        dir: &opts.dir,
        name: &name,
        arch: opts.arch,
        size: opts.size.as_deref(),
        store,
        fingerprint: fingerprint.as_deref(),
        initrd_compression: opts.initrd_compression,
        sign_with: opts.sign_with.as_ref(),
        pcr_file: opts.pcr_file,
        root: &opts.root,
    };
    // The SBOM is made before any output is written, so that its failure leaves none.
    let sbom = if opts.sbom {
        Some(crate::sbom::document(store, &name, &images, opts.arch)?)
    } else {
        None
    };
    let mut written = crate::output::write(&assembled, &formats, &settings)?;
    if let Some(sbom) = &sbom {
        written.push(crate::sbom::write(&opts.dir, &name, sbom)?);
    }
    // The lock holds exactly this build's pins: references the YAML no longer names go.
    if let Some(path) = &lock_file
        && (pins != lock || !path.exists())
    {
        pins.save(path)?;
    }
    for path in &written {
        log::info!("wrote {}", path.display());
    }
    Ok(written)
}

/// The tree of the tar at `path` when it was built from exactly these inputs; else `None`,
/// with a warning saying why the images are read instead.
fn reusable(
    path: &Path,
    config: &Config,
    lock: &Lock,
    opts: &BuildOptions,
) -> Result<Option<crate::input_tar::Previous>> {
    let previous = crate::input_tar::read(path, opts.max_image_size)?;
    let ours = crate::input_tar::fingerprint(config, lock, opts.arch, opts)?;
    let why = match (&ours, &previous.fingerprint) {
        (Some(a), Some(b)) if a == b => {
            log::info!(
                "building from {}: it was made from the same inputs ({a})",
                path.display()
            );
            return Ok(Some(previous));
        }
        (_, None) => format!(
            "it has no {} record (it is not the tar output of this keel)",
            crate::input_tar::INPUT_KEY
        ),
        (None, _) => "an image reference has no pin in the lock file, or a host file of `files:` is missing, so nothing proves the tar was made from these inputs".to_owned(),
        (Some(_), Some(_)) => "it was made from other inputs (the YAML, an image digest, a host file, the architecture, SOURCE_DATE_EPOCH, --decompress-kernel or keel's version differ)".to_owned(),
    };
    log::warn!(
        "not using --input-tar {}: {why}; building from the images",
        path.display()
    );
    Ok(None)
}

/// Writes the outputs of a previous build's tree (see [`reusable`]). The lock file is left as
/// it is (its pins made the tree); the SBOM is written when every image is in the store.
fn build_from(
    store: &Store,
    config: &Config,
    lock: &Lock,
    previous: crate::input_tar::Previous,
    formats: &[Format],
    name: &str,
    opts: &BuildOptions,
) -> Result<Vec<PathBuf>> {
    for tool in formats.iter().filter_map(|f| f.tool()) {
        if tool.arches.contains(&opts.arch) {
            tool.ensure(store)?;
        }
    }
    if opts.root.ab().is_some() {
        crate::tools::SYSTEMD_BOOT.ensure(store)?;
    }
    let settings = crate::output::Settings {
        dir: &opts.dir,
        name,
        arch: opts.arch,
        size: opts.size.as_deref(),
        store,
        fingerprint: previous.fingerprint.as_deref(),
        initrd_compression: opts.initrd_compression,
        sign_with: opts.sign_with.as_ref(),
        pcr_file: opts.pcr_file,
        root: &opts.root,
    };
    let sbom = if opts.sbom {
        let images = local_images(store, config, lock, opts.arch)?;
        let missing: Vec<String> = reference_texts(config)
            .into_iter()
            .filter(|r| !images.contains_key(r))
            .collect();
        if missing.is_empty() {
            Some(crate::sbom::document(store, name, &images, opts.arch)?)
        } else {
            log::warn!(
                "no SBOM: it lists the images, and these are not in the store: {}",
                missing.join(", ")
            );
            None
        }
    } else {
        None
    };
    let mut written = crate::output::write(&previous.assembled, formats, &settings)?;
    if let Some(sbom) = &sbom {
        written.push(crate::sbom::write(&opts.dir, name, sbom)?);
    }
    for path in &written {
        log::info!("wrote {}", path.display());
    }
    Ok(written)
}

/// `--decompress-kernel` applies to formats that write the kernel as a file of its own.
fn check_decompress(formats: &[Format], opts: &BuildOptions) -> Result<()> {
    match formats.iter().find(|f| !f.has_bare_kernel()) {
        Some(f) if opts.decompress_kernel => Err(Error::DecompressFormat { format: f.name() }),
        _ => Ok(()),
    }
}

/// Replaces the kernel with what its image compresses (LinuxKit's `--decompress-kernel`).
fn decompress_kernel(kernel: &mut assemble::KernelParts, config: &Config) -> Result<()> {
    use keel_kernel::decompress::{Decompressed, decompress};
    let reference = config
        .kernel
        .as_ref()
        .and_then(|k| k.image.as_ref())
        .map(|i| i.value.clone())
        .unwrap_or_default();
    match decompress(&kernel.kernel).map_err(|source| Error::Decompress {
        reference: reference.clone(),
        source,
    })? {
        Decompressed::Unpacked {
            kernel: data,
            packing,
        } => {
            log::info!(
                "decompressed the kernel ({packing}): {} → {} KiB",
                kernel.kernel.len() >> 10,
                data.len() >> 10
            );
            kernel.kernel = data.into();
        }
        Decompressed::AsIs => {
            log::info!("the kernel of {reference} is not compressed: written as it is");
        }
    }
    Ok(())
}

/// What `keel validate` checked.
#[derive(Debug)]
pub struct Validation {
    /// The merged YAML, then every generated `config.json` and `runtime.json`.
    pub text: String,
    /// Images that were not in the store (without `require_images`): the specs of their
    /// containers were generated from the YAML alone, without the image's configuration
    /// (entrypoint, environment, user) and `org.mobyproject.config` label.
    pub skipped: Vec<String>,
}

/// `keel validate`: the merged YAML, then every generated `config.json` and `runtime.json`.
///
/// Like `linuxkit build --dry-run`, nothing is built or pulled unless `require_images`: an
/// image already in the store (or pinned in the lock file and present) is used; one that is
/// not is listed in [`Validation::skipped`], its container checked against the YAML alone.
/// With `require_images`, every image is built or pulled as `keel build` would, and a missing
/// one is an error.
pub fn validate(
    store: &Store,
    files: &[String],
    arch: Arch,
    registry: &PullOptions,
    require_images: bool,
) -> Result<Validation> {
    let packages = if require_images {
        Packages::Build {
            store,
            locked: false,
        }
    } else {
        Packages::Unbuilt
    };
    let config = load(files, packages)?;
    let lock = lock_path(files)
        .map(|p| Lock::load(&p))
        .transpose()?
        .unwrap_or_default();
    let images = if require_images {
        let how = Resolve {
            arch,
            pull: false,
            registry: registry.clone(),
        };
        resolve(store, &config, &lock, how)?.images
    } else {
        local_images(store, &config, &lock, arch)?
    };
    let mut out = String::new();
    out.push_str("# merged configuration\n");
    out.push_str(&config.to_yaml()?);
    let ids = config.ids();
    let mut skipped = Vec::new();
    for (section, index, spec) in config.containers() {
        let (image_config, label) = match images.get(spec.image.as_str()) {
            Some(image) => {
                let image_config = image.config.config().clone().unwrap_or_default();
                let label = keel_config::image_label(&image_config, &image.reference)?;
                (Some(image_config), label)
            }
            None if require_images => {
                return Err(assemble::Error::Unresolved(spec.image.value.clone()).into());
            }
            None => {
                if !skipped.contains(&spec.image.value) {
                    skipped.push(spec.image.value.clone());
                }
                (Some(stand_in(&spec.image.value)), None)
            }
        };
        let missing = label.is_none() && !images.contains_key(spec.image.as_str());
        let ctx = keel_config::SpecContext::new(&config, &ids, section, index, arch.uname());
        let bundle = keel_config::generate(spec, image_config.as_ref(), label.as_ref(), &ctx)?;
        let note = if missing {
            " (image not in the store: its entrypoint, environment, user and label are not applied)"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n# {}/config.json{note}\n{}",
            bundle.dir,
            bundle.config_json()?
        ));
        out.push_str(&format!(
            "\n# {}/runtime.json\n{}",
            bundle.dir,
            bundle.runtime_json()?
        ));
    }
    Ok(Validation { text: out, skipped })
}

/// The image configuration a container is checked with when its image is not in the store: a
/// command that says where the real one comes from, so a spec without `command:` (LinuxKit's
/// usual form: the image's label or entrypoint gives it) still generates.
fn stand_in(image: &str) -> keel_config::ImageConfig {
    let mut config = keel_config::ImageConfig::default();
    config.set_entrypoint(Some(vec![format!("<entrypoint of {image}>")]));
    config
}

/// A reference of the YAML, or an error at its position.
fn parse_reference(text: &str, loc: &Loc) -> Result<Reference> {
    text.parse().map_err(|source| Error::Reference {
        loc: loc.clone(),
        reference: text.into(),
        source,
    })
}

/// The images of `config` the store already holds for `arch` (by the lock file's pin, the
/// reference's digest or the store's tag), without pulling: a reference that is invalid is
/// an error, one that is absent is left out.
fn local_images(store: &Store, config: &Config, lock: &Lock, arch: Arch) -> Result<Images> {
    let mut images = Images::new();
    for (text, loc) in references(config) {
        if images.contains_key(&text) {
            continue;
        }
        let reference = parse_reference(&text, &loc)?;
        let name = reference.to_string();
        let digest = match (reference.digest(), lock.get(&name)) {
            (Some(d), _) => Some(d.to_string()),
            (None, Some(pinned)) => Some(pinned.to_string()),
            (None, None) => store
                .resolve(&reference)
                .ok()
                .flatten()
                .map(|d| d.digest().to_string()),
        };
        let Some(digest) = digest.and_then(|d| d.parse::<Digest>().ok()) else {
            continue;
        };
        if let Ok(image) = store.image(&reference.with_digest(digest), arch) {
            images.insert(text, image);
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_name_defaults_to_the_first_file() {
        let mut opts = BuildOptions {
            files: vec!["images/minimal.yml".into(), "extra.yml".into()],
            formats: vec![],
            dir: ".".into(),
            name: None,
            arch: Arch::X86_64,
            size: None,
            dry_run: false,
            pull: false,
            locked: false,
            registry: PullOptions::default(),
            max_image_size: keel_rootfs::DEFAULT_MAX_IMAGE_SIZE,
            sbom: true,
            decompress_kernel: false,
            initrd_compression: Default::default(),
            input_tar: None,
            sign_with: None,
            pcr_file: true,
            root: crate::output::RootLayout::Initramfs,
        };
        assert_eq!(output_name(&opts), "minimal");
        opts.files = vec!["-".into()];
        assert_eq!(output_name(&opts), "keel");
        opts.name = Some("x".into());
        assert_eq!(output_name(&opts), "x");
    }
}
