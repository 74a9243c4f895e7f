//! `keel build` and `keel validate`: YAML → pinned images → root filesystem → outputs.
//!
//! This module owns the order of a build and its guarantees: every image reference resolves to
//! a digest (recorded in the lock file), images are read only from the store, and outputs are
//! written through [`AtomicFile`]s committed together at the end, so a failed build leaves no
//! output behind.

use crate::assemble::{self, Assembled, Images};
use crate::lock::{self, Lock};
use bytes::Bytes;
use keel_config::{Config, Loc, Source};
use keel_image::{Arch, Digest, PullOptions, Reference, Store};
use keel_rootfs::{AtomicFile, Node, NodeKind, Tree, WriteOptions};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

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
    #[error("format {format} needs a kernel: add a kernel section with an image")]
    NoKernel { format: Format },
    #[error("format {0} must be the only format of a build")]
    Alone(Format),
    #[error("cannot write {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: keel_rootfs::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, Error>;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `NAME-kernel`, `NAME-initrd.img` (newc cpio, gzip), `NAME-cmdline`.
    KernelInitrd,
    /// `NAME.tar`: the whole root filesystem, with `boot/kernel` and `boot/cmdline`.
    Tar,
    /// `NAME-initrd.tar`: `kernel`, `initrd.img`, `cmdline` (and `ucode.cpio`) in one tar.
    TarKernelInitrd,
}

impl Format {
    const ALL: [Format; 3] = [Format::KernelInitrd, Format::Tar, Format::TarKernelInitrd];

    pub fn name(self) -> &'static str {
        match self {
            Format::KernelInitrd => "kernel+initrd",
            Format::Tar => "tar",
            Format::TarKernelInitrd => "tar-kernel-initrd",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown format {0:?}; expected one of: {list}", list = Format::ALL.map(Format::name).join(", "))]
pub struct UnknownFormat(String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownFormat> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.into()))
    }
}

/// Everything `keel build` takes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// YAML files in merge order; `-` is stdin.
    pub files: Vec<String>,
    pub formats: Vec<Format>,
    pub dir: PathBuf,
    pub name: Option<String>,
    pub arch: Arch,
    /// Disk size for disk formats (unused by the formats of this version).
    pub size: String,
    pub dry_run: bool,
    pub pull: bool,
    pub locked: bool,
    pub insecure: bool,
}

/// Reads the YAML inputs.
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
            } else {
                Source::from_file(Path::new(f)).map_err(|source| Error::ReadInput {
                    path: f.clone(),
                    source,
                })
            }
        })
        .collect()
}

/// Parses, merges and validates the YAML inputs. `@pkg:DIR` resolves to the package's tag;
/// with a store, packages missing from it are built first.
pub fn load(files: &[String], store: Option<&Store>) -> Result<Config> {
    let sources = sources(files)?;
    let pkg = |dir: &Path| {
        let reference = match store {
            Some(store) => crate::pkg::ensure(store, dir),
            None => crate::pkg::show_tag(dir, None),
        };
        reference
            .map(|r| r.to_string())
            .map_err(|e| error_chain(&e))
    };
    Ok(keel_config::load(&sources, &pkg)?)
}

/// An error and its causes on one line (`a: b: c`), for messages embedded in other errors.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
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
#[derive(Debug, Clone, Copy)]
pub struct Resolve {
    pub arch: Arch,
    pub pull: bool,
    pub insecure: bool,
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
    let options = PullOptions {
        insecure: how.insecure,
        ..PullOptions::default()
    };
    for (text, loc) in references(config) {
        if images.contains_key(&text) {
            continue;
        }
        let reference: Reference = text.parse().map_err(|source| Error::Reference {
            loc: loc.clone(),
            reference: text.clone(),
            source,
        })?;
        let name = reference.to_string();
        let missing = |source| Error::Missing {
            loc: loc.clone(),
            reference: name.clone(),
            source: Box::new(source),
        };
        let bad_digest = |source| Error::Digest {
            loc: loc.clone(),
            reference: name.clone(),
            source,
        };
        let pull = |r: &Reference| -> Result<Digest> {
            let desc = store.pull(r, how.arch, &options).map_err(missing)?;
            Digest::try_from(desc.digest()).map_err(bad_digest)
        };

        let digest: Digest = match (reference.digest(), lock.get(&name)) {
            (Some(d), _) => d.clone(),
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
                store.pull(&pinned, how.arch, &options).map_err(missing)?;
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

/// The lock file of a build: beside the first YAML file (none for stdin).
fn lock_path(files: &[String]) -> Option<PathBuf> {
    files
        .first()
        .filter(|f| *f != "-")
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

/// `keel build`.
pub fn build(store: &Store, opts: &BuildOptions) -> Result<Vec<PathBuf>> {
    let config = load(&opts.files, (!opts.dry_run).then_some(store))?;
    if opts.dry_run {
        print!("{}", config.to_yaml());
        return Ok(vec![]);
    }
    let mut formats = opts.formats.clone();
    formats.dedup();
    if formats.is_empty() {
        formats.push(Format::KernelInitrd);
    }

    let lock_file = lock_path(&opts.files);
    let lock = match &lock_file {
        Some(path) => Lock::load(path)?,
        None => Lock::default(),
    };
    if opts.locked && opts.pull {
        log::warn!("--pull with --locked: tags are re-resolved and must still match the lock file");
    }
    let how = Resolve {
        arch: opts.arch,
        pull: opts.pull,
        insecure: opts.insecure,
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

    let assembled = assemble::assemble(store, &config, &images)?;
    let written = write_outputs(&assembled, &formats, &opts.dir, &output_name(opts))?;
    if let Some(path) = &lock_file
        && (!changes.is_empty() || !path.exists())
    {
        let mut updated = lock;
        for (reference, digest) in pins.iter() {
            updated.insert(reference.clone(), digest.clone());
        }
        updated.save(path)?;
    }
    for path in &written {
        log::info!("wrote {}", path.display());
    }
    Ok(written)
}

/// `keel validate`: the merged YAML, then every generated `config.json` and `runtime.json`.
pub fn validate(store: &Store, files: &[String], arch: Arch, insecure: bool) -> Result<String> {
    let config = load(files, Some(store))?;
    let lock = lock_path(files)
        .map(|p| Lock::load(&p))
        .transpose()?
        .unwrap_or_default();
    let Resolved { images, .. } = resolve(
        store,
        &config,
        &lock,
        Resolve {
            arch,
            pull: false,
            insecure,
        },
    )?;
    let mut out = String::new();
    out.push_str("# merged configuration\n");
    out.push_str(&config.to_yaml());
    let ids = config.ids();
    for (section, index, spec) in config.containers() {
        let image = images
            .get(spec.image.as_str())
            .ok_or_else(|| assemble::Error::Unresolved(spec.image.value.clone()))?;
        let image_config = image.config.config().clone().unwrap_or_default();
        let label = keel_config::image_label(&image_config, &image.reference)?;
        let ctx = keel_config::SpecContext::new(&config, &ids, section, index);
        let bundle = keel_config::generate(spec, Some(&image_config), label.as_ref(), &ctx)?;
        out.push_str(&format!(
            "\n# {}/config.json\n{}",
            bundle.dir,
            bundle.config_json()?
        ));
        out.push_str(&format!(
            "\n# {}/runtime.json\n{}",
            bundle.dir,
            bundle.runtime_json()?
        ));
    }
    Ok(out)
}

fn file_node(data: impl Into<Bytes>, mode: u32) -> Node {
    Node::new(NodeKind::File(data.into()), mode, "keel")
}

/// The initrd: the (uncompressed) microcode cpio, then the gzip'd newc cpio of the tree.
fn initrd(
    tree: &Tree,
    kernel: &assemble::KernelParts,
    opts: &WriteOptions,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(ucode) = &kernel.ucode {
        out.extend_from_slice(ucode);
    }
    let gz =
        keel_rootfs::write_cpio(tree, keel_rootfs::gzip_writer(out), opts).map_err(|source| {
            Error::Output {
                path: path.into(),
                source,
            }
        })?;
    gz.finish().map_err(|source| Error::Write {
        path: path.into(),
        source,
    })
}

/// Writes every format into temporary files, then commits them all: either every output
/// appears or none does.
fn write_outputs(
    assembled: &Assembled,
    formats: &[Format],
    dir: &Path,
    name: &str,
) -> Result<Vec<PathBuf>> {
    if formats.len() > 1
        && let Some(alone) = formats.iter().find(|f| **f == Format::Tar)
    {
        return Err(Error::Alone(*alone));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    let opts = WriteOptions::from_env();
    let mut pending: Vec<AtomicFile> = Vec::new();
    let create = |file: &str| -> Result<AtomicFile> {
        let path = dir.join(file);
        AtomicFile::create(&path).map_err(|source| Error::Output { path, source })
    };
    let put = |pending: &mut Vec<AtomicFile>, file: &str, data: &[u8]| -> Result<()> {
        let mut f = create(file)?;
        f.write_all(data).map_err(|source| Error::Write {
            path: dir.join(file),
            source,
        })?;
        pending.push(f);
        Ok(())
    };
    let out_err = |file: &str| {
        let path = dir.join(file);
        move |source| Error::Output { path, source }
    };
    // `boot/` never goes into an initrd (LinuxKit drops it too).
    let mut rootfs = assembled.tree.clone();
    rootfs.remove("boot");

    for format in formats {
        let kernel = || {
            assembled
                .kernel
                .as_ref()
                .ok_or(Error::NoKernel { format: *format })
        };
        match format {
            Format::KernelInitrd => {
                let k = kernel()?;
                put(&mut pending, &format!("{name}-kernel"), &k.kernel)?;
                let img = format!("{name}-initrd.img");
                put(
                    &mut pending,
                    &img,
                    &initrd(&rootfs, k, &opts, &dir.join(&img))?,
                )?;
                put(
                    &mut pending,
                    &format!("{name}-cmdline"),
                    k.cmdline.as_bytes(),
                )?;
            }
            Format::TarKernelInitrd => {
                let k = kernel()?;
                let file = format!("{name}-initrd.tar");
                let mut t = Tree::new();
                let place = |t: &mut Tree, p: &str, n: Node| t.insert(p, n).map_err(out_err(&file));
                place(&mut t, "kernel", file_node(k.kernel.clone(), 0o644))?;
                place(
                    &mut t,
                    "initrd.img",
                    file_node(initrd(&rootfs, k, &opts, &dir.join(&file))?, 0o644),
                )?;
                place(
                    &mut t,
                    "cmdline",
                    file_node(k.cmdline.clone().into_bytes(), 0o644),
                )?;
                if let Some(u) = &k.ucode {
                    place(&mut t, "ucode.cpio", file_node(u.clone(), 0o644))?;
                }
                let f = create(&file)?;
                pending.push(keel_rootfs::write_tar(&t, f, &opts).map_err(out_err(&file))?);
            }
            Format::Tar => {
                let file = format!("{name}.tar");
                let mut t = assembled.tree.clone();
                if let Some(k) = &assembled.kernel {
                    let place = |t: &mut Tree, p: &str, n: Node| {
                        t.remove(p);
                        t.insert(p, n).map_err(out_err(&file))
                    };
                    place(&mut t, "boot/kernel", file_node(k.kernel.clone(), 0o644))?;
                    place(
                        &mut t,
                        "boot/cmdline",
                        file_node(k.cmdline.clone().into_bytes(), 0o644),
                    )?;
                    if let Some(u) = &k.ucode {
                        place(&mut t, "boot/ucode.cpio", file_node(u.clone(), 0o644))?;
                    }
                }
                let f = create(&file)?;
                pending.push(keel_rootfs::write_tar(&t, f, &opts).map_err(out_err(&file))?);
            }
        }
    }
    let mut written = Vec::new();
    for f in pending {
        let path = f.dest().to_path_buf();
        f.commit().map_err(|source| Error::Output {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_linuxkit_name() {
        assert_eq!(
            "kernel+initrd".parse::<Format>().unwrap(),
            Format::KernelInitrd
        );
        assert_eq!(
            "tar-kernel-initrd".parse::<Format>().unwrap(),
            Format::TarKernelInitrd
        );
        let err = "iso-bios".parse::<Format>().unwrap_err().to_string();
        assert!(
            err.contains("expected one of: kernel+initrd, tar, tar-kernel-initrd"),
            "{err}"
        );
    }

    #[test]
    fn output_name_defaults_to_the_first_file() {
        let mut opts = BuildOptions {
            files: vec!["images/minimal.yml".into(), "extra.yml".into()],
            formats: vec![],
            dir: ".".into(),
            name: None,
            arch: Arch::X86_64,
            size: "1G".into(),
            dry_run: false,
            pull: false,
            locked: false,
            insecure: false,
        };
        assert_eq!(output_name(&opts), "minimal");
        opts.files = vec!["-".into()];
        assert_eq!(output_name(&opts), "keel");
        opts.name = Some("x".into());
        assert_eq!(output_name(&opts), "x");
    }
}
