//! Assembly: a configuration and its (already resolved) images → one root filesystem tree.
//!
//! Follows LinuxKit's order — kernel, init, volumes, onboot, onshutdown, services, files — and
//! its layout and image filtering rules (reference/linuxkit.md §2.2–2.3). Each image is
//! flattened into its own tree, filtered, then grafted under its place in the root.

use bytes::Bytes;
use keel_config::{Config, FileContent, MetadataFormat, RootfsLayout, Section, SpecContext};
use keel_image::{Image, Store};
use keel_kernel::kconfig::KernelConfig;
use keel_rootfs::{Compression, Node, NodeKind, Tree};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read image {reference}")]
    Image {
        reference: String,
        #[source]
        source: keel_image::Error,
    },
    #[error("cannot unpack layer {layer} of image {reference}")]
    Layer {
        reference: String,
        layer: String,
        #[source]
        source: keel_rootfs::Error,
    },
    #[error("image {reference} is damaged in the store")]
    Corrupt {
        reference: String,
        #[source]
        source: Box<keel_image::Error>,
    },
    #[error("layer {layer} of image {reference} failed verification")]
    Verify {
        reference: String,
        layer: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel image {reference} has no file {file:?} (kernel.binary / kernel.tar / kernel.ucode name files in the image)"
    )]
    KernelFile { reference: String, file: String },
    #[error(transparent)]
    Config(#[from] keel_config::Error),
    #[error("cannot place {path} in the root filesystem")]
    Place {
        path: String,
        #[source]
        source: keel_rootfs::Error,
    },
    #[error("{loc}: cannot read files.source {path}")]
    FileSource {
        loc: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel+squashfs needs keel's init in the root (/init): list \"@pkg:pkg/init\" or keel/init under init:"
    )]
    NoLoader,
    #[error(
        "no image resolved for {0} (internal error: every reference is resolved before assembly)"
    )]
    Unresolved(String),
}

type Result<T> = std::result::Result<T, Error>;

/// The kernel parts of a build, kept out of the root filesystem.
#[derive(Debug, Clone)]
pub struct KernelParts {
    pub kernel: Bytes,
    pub cmdline: String,
    pub ucode: Option<Bytes>,
    /// The initramfs compressions the kernel unpacks (its `CONFIG_RD_*`); `None` when its image
    /// holds no configuration to tell.
    pub decompressors: Option<Vec<Compression>>,
}

impl KernelParts {
    /// The compressions a kernel with configuration `config` unpacks.
    pub fn decompressors_of(config: &KernelConfig) -> Vec<Compression> {
        Compression::ALL
            .into_iter()
            .filter(|c| {
                let option = c.kernel_option();
                config.value(option.strip_prefix("CONFIG_").unwrap_or(option)) == "y"
            })
            .collect()
    }
}

/// A kernel image's `.config`: keel's `config` file, or `boot/config-*` in LinuxKit's
/// `kernel.tar`.
pub(crate) fn kernel_image_config(tree: &Tree) -> Option<String> {
    let file = |path: &str| match tree.get(path).map(|n| &n.kind) {
        Some(NodeKind::File(data)) => Some(data.clone()),
        _ => None,
    };
    if let Some(data) = file("config") {
        return Some(String::from_utf8_lossy(&data).into_owned());
    }
    let modules = file("kernel.tar")?;
    let mut archive = tar::Archive::new(&modules[..]);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let path = entry.path().ok()?.to_string_lossy().into_owned();
        if path.trim_start_matches("./").starts_with("boot/config-") {
            let mut text = String::new();
            entry.read_to_string(&mut text).ok()?;
            return Some(text);
        }
    }
    None
}

/// The result of assembly.
#[derive(Debug)]
pub struct Assembled {
    /// The root filesystem (without `boot/`: outputs add what they carry).
    pub tree: Tree,
    pub kernel: Option<KernelParts>,
}

/// What an image becomes, which decides how it is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Init,
    Volume,
    Container,
}

/// `/etc/hosts` every image gets.
const HOSTS: &str = "127.0.0.1       localhost\n::1     localhost ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n";
/// Paths images may not bring (runtime provides them).
const EXCLUDED: &[&str] = &[
    ".dockerenv",
    "Dockerfile",
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc/hostname",
];
/// Directories every image root has.
const ENSURED_DIRS: &[&str] = &["dev", "dev/pts", "dev/shm", "etc", "proc", "sys"];

/// Paths of the root the `kernel+squashfs` loader initramfs carries: the init and its links,
/// the console node and the mount points the loader uses; everything under `lib/modules` too.
const LOADER_PATHS: &[&str] = &[
    "init",
    "sbin",
    "sbin/init",
    "sbin/modprobe",
    "dev",
    "dev/console",
    "proc",
    "sys",
];

/// The `kernel+squashfs` format's initramfs, taken from the root: keel's init with the kernel's
/// modules, if it has any. Finding no `/containers` there, PID 1 loads the modules the `root=`
/// device needs, mounts it and executes the init on it (Debian's kernels have virtio and
/// squashfs as modules, so the kernel cannot mount that root by itself; keel's `virt` has them
/// built in and no `/lib/modules`).
pub fn loader_tree(root: &Tree) -> Result<Tree> {
    if root.get("init").is_none() {
        return Err(Error::NoLoader);
    }
    let mut loader = Tree::new();
    for (path, node) in root.iter() {
        let keep = LOADER_PATHS.iter().any(|p| path == Path::new(p))
            || path.starts_with("lib/modules")
            || path == Path::new("lib");
        if keep {
            place(&mut loader, &path.to_string_lossy(), node.clone())?;
        }
    }
    Ok(loader)
}

/// Flattens an image's layers into a tree, verifying every layer blob. The layers may
/// decompress to at most `max` bytes, each and together (`keel build --max-image-size`): every
/// image is flattened in memory, so this protects the host running keel.
pub fn image_tree(store: &Store, image: &Image, origin: &str, max: u64) -> Result<Tree> {
    let mut tree = Tree::new();
    let mut budget = keel_rootfs::ImageBudget::new(keel_rootfs::SizeLimits {
        layer: max,
        image: max,
    });
    for (index, layer) in image.layers().iter().enumerate() {
        // Checked against the config's diff_ids as it is read: a config cannot lie about
        // what its layers hold.
        let mut reader = store
            .open_image_layer(image, index)
            .map_err(|source| Error::Image {
                reference: image.reference.clone(),
                source,
            })?;
        if let Err(source) =
            tree.apply_layer_within(Path::new(""), &mut reader, origin, &mut budget)
        {
            // A damaged blob often fails as a broken compressed stream before its digest can
            // be checked: say which blob is corrupt rather than how decompression failed.
            verify_blob(store, image, layer)?;
            return Err(Error::Layer {
                reference: image.reference.clone(),
                layer: layer.digest().to_string(),
                source,
            });
        }
        reader.finish().map_err(|source| Error::Verify {
            reference: image.reference.clone(),
            layer: layer.digest().to_string(),
            source,
        })?;
    }
    Ok(tree)
}

/// Reads a layer blob to the end, checking its digest.
fn verify_blob(store: &Store, image: &Image, layer: &keel_image::oci::Descriptor) -> Result<()> {
    let corrupt = |source: keel_image::Error| Error::Corrupt {
        reference: image.reference.clone(),
        source: Box::new(source.for_image(&image.reference)),
    };
    let Ok(digest) = keel_image::Digest::try_from(layer.digest()) else {
        return Ok(()); // not a digest keel can check; the unpack error stands
    };
    let mut blob = store.open_blob(&digest).map_err(corrupt)?;
    match std::io::copy(&mut blob, &mut std::io::sink()) {
        Ok(_) => Ok(()),
        Err(e) => match keel_image::CorruptBlob::find(&e) {
            Some(c) => Err(corrupt(keel_image::Error::Corrupt {
                blob: c.clone(),
                image: None,
            })),
            None => Err(Error::Verify {
                reference: image.reference.clone(),
                layer: layer.digest().to_string(),
                source: e,
            }),
        },
    }
}

fn place(tree: &mut Tree, path: &str, node: Node) -> Result<()> {
    tree.remove(path);
    tree.insert(path, node).map_err(|source| Error::Place {
        path: path.into(),
        source,
    })
}

pub(crate) fn file(data: impl Into<Bytes>, mode: u32, origin: &str) -> Node {
    Node::new(NodeKind::File(data.into()), mode, origin)
}

fn symlink(target: &str, origin: &str) -> Node {
    Node::new(NodeKind::Symlink(target.into()), 0o777, origin)
}

/// LinuxKit's image filter: drop what the runtime provides, replace hosts and resolv.conf,
/// make sure the mount points every container needs exist.
fn filter(tree: &mut Tree, role: Role, origin: &str) -> Result<()> {
    for path in EXCLUDED {
        tree.remove(path);
    }
    for dir in ENSURED_DIRS {
        tree.mkdir_all(dir, 0o755, 0, 0, origin)
            .map_err(|source| Error::Place {
                path: (*dir).into(),
                source,
            })?;
    }
    place(tree, "etc/mtab", symlink("/proc/mounts", origin))?;
    place(tree, "etc/hosts", file(HOSTS, 0o644, origin))?;
    // The root is read-only: dhcpcd writes the real file under /run.
    let resolv = match role {
        Role::Init | Role::Volume => symlink("/run/resolvconf/resolv.conf", origin),
        Role::Container => file(Bytes::new(), 0o644, origin),
    };
    place(tree, "etc/resolv.conf", resolv)
}

/// Places every node of `src` under `prefix` in `dst`, hard links re-pointed into `prefix`.
fn graft(dst: &mut Tree, prefix: &str, src: &Tree) -> Result<()> {
    let under = |p: &Path| -> PathBuf {
        if prefix.is_empty() {
            p.into()
        } else {
            Path::new(prefix).join(p)
        }
    };
    // Hard links last: their targets may sort after them.
    let mut links = Vec::new();
    for (path, node) in src.iter() {
        let at = under(path);
        match &node.kind {
            NodeKind::HardLink(target) => {
                let mut n = node.clone();
                n.kind = NodeKind::HardLink(under(target));
                links.push((at, n));
            }
            NodeKind::Dir if dst.get(&at).is_some_and(Node::is_dir) => {
                // Keep children from earlier images; take the new metadata.
                dst.insert(&at, node.clone())
                    .map_err(|source| Error::Place {
                        path: at.display().to_string(),
                        source,
                    })?;
            }
            _ => {
                dst.remove(&at);
                dst.insert(&at, node.clone())
                    .map_err(|source| Error::Place {
                        path: at.display().to_string(),
                        source,
                    })?;
            }
        }
    }
    for (at, node) in links {
        dst.remove(&at);
        dst.insert(&at, node).map_err(|source| Error::Place {
            path: at.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Images by the reference string written in the YAML.
pub type Images = BTreeMap<String, Image>;

fn image<'a>(images: &'a Images, reference: &str) -> Result<&'a Image> {
    images
        .get(reference)
        .ok_or_else(|| Error::Unresolved(reference.into()))
}

/// How [`assemble`] builds.
#[derive(Debug, Clone, Copy)]
pub struct AssembleOptions {
    /// The target architecture (the default seccomp profile names its system calls).
    pub arch: keel_image::Arch,
    /// The most an image's layers may decompress to, each and together.
    pub max_image_size: u64,
}

/// Assembles the root filesystem of `config` from `images` (every reference it names).
pub fn assemble(
    store: &Store,
    config: &Config,
    images: &Images,
    opts: AssembleOptions,
) -> Result<Assembled> {
    let max_image_size = opts.max_image_size;
    let mut root = Tree::new();

    let kernel = match &config.kernel {
        Some(k) if k.image.is_some() => {
            let reference = k.image.as_ref().map(|i| i.as_str()).unwrap_or_default();
            let img = image(images, reference)?;
            let tree = image_tree(store, img, "kernel", max_image_size)?;
            let get = |name: &str| -> Result<Bytes> {
                match tree.get(name).map(|n| &n.kind) {
                    Some(NodeKind::File(data)) => Ok(data.clone()),
                    _ => Err(Error::KernelFile {
                        reference: reference.into(),
                        file: name.into(),
                    }),
                }
            };
            let kernel = get(k.binary())?;
            if let Some(tar) = k.tar() {
                let modules = get(tar)?;
                root.apply_layer(
                    Path::new(""),
                    modules.as_ref(),
                    &format!("kernel {reference}"),
                )
                .map_err(|source| Error::Layer {
                    reference: reference.into(),
                    layer: tar.to_string(),
                    source,
                })?;
            }
            let ucode = match &k.ucode {
                Some(name) => Some(get(name.as_str())?),
                None => None,
            };
            let decompressors = kernel_image_config(&tree)
                .map(|text| KernelParts::decompressors_of(&KernelConfig::parse(&text)));
            Some(KernelParts {
                kernel,
                cmdline: k.cmdline().to_string(),
                ucode,
                decompressors,
            })
        }
        _ => None,
    };

    for (i, reference) in config.init.iter().enumerate() {
        let origin = format!("init[{i}] {}", reference.as_str());
        let mut tree = image_tree(
            store,
            image(images, reference.as_str())?,
            &origin,
            max_image_size,
        )?;
        filter(&mut tree, Role::Init, &origin)?;
        graft(&mut root, "", &tree)?;
    }

    for (i, volume) in config.volumes.iter().enumerate() {
        let dir = format!(
            "{}/{}/{}",
            keel_bundle::CONTAINERS_DIR,
            keel_bundle::VOLUMES,
            volume.name.as_str()
        );
        let origin = format!("volumes[{i}] {}", volume.name.as_str());
        for sub in ["lower", "tmp", "merged"] {
            root.mkdir_all(format!("{dir}/{sub}"), 0o755, 0, 0, &origin)
                .map_err(|source| Error::Place {
                    path: dir.clone(),
                    source,
                })?;
        }
        if let Some(reference) = &volume.image {
            let img = image(images, reference.as_str())?;
            let mut tree = image_tree(store, img, &origin, max_image_size)?;
            filter(&mut tree, Role::Volume, &origin)?;
            graft(&mut root, &format!("{dir}/lower"), &tree)?;
        }
    }

    let ids = config.ids();
    let mut mount_points = Vec::new();
    let mut shared_roots: BTreeMap<keel_image::Digest, String> = BTreeMap::new();
    for (section, index, spec) in config.containers() {
        let reference = spec.image.as_str();
        let img = image(images, reference)?;
        let origin = format!("{}[{index}] {reference}", section.as_str());
        let label = keel_config::image_label(
            img.config.config().as_ref().unwrap_or(&Default::default()),
            reference,
        )?;
        let ctx = SpecContext::new(config, &ids, section, index, opts.arch.uname());
        let bundle =
            keel_config::generate(spec, img.config.config().as_ref(), label.as_ref(), &ctx)?;

        let mut bundle = bundle;
        let image_dir = match bundle.layout {
            RootfsLayout::Direct => keel_bundle::ROOTFS_DIR,
            RootfsLayout::Overlay => "lower",
        };
        root.mkdir_all(&bundle.dir, 0o755, 0, 0, &origin)
            .map_err(|source| Error::Place {
                path: bundle.dir.clone(),
                source,
            })?;
        // Containers of the same image share one extracted copy: an overlay's lower layer
        // or a read-only bind source is never written, so one copy serves them all.
        let own_root = format!("{}/{image_dir}", bundle.dir);
        let image_root = match shared_roots.get(&img.manifest_digest) {
            Some(shared) if share_root(&mut bundle, &own_root, shared) => {
                root.mkdir_all(&own_root, 0o755, 0, 0, &origin)
                    .map_err(|source| Error::Place {
                        path: own_root.clone(),
                        source,
                    })?;
                shared.clone()
            }
            _ => {
                let mut tree = image_tree(store, img, &origin, max_image_size)?;
                filter(&mut tree, Role::Container, &origin)?;
                graft(&mut root, &own_root, &tree)?;
                shared_roots.insert(img.manifest_digest.clone(), own_root.clone());
                own_root
            }
        };

        for m in bundle.config.mounts().iter().flatten() {
            let bind = m
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
            let source = m
                .source()
                .as_ref()
                .filter(|_| bind)
                .map(|p| p.to_string_lossy().into_owned());
            mount_points.push(MountPoint {
                at: format!(
                    "{image_root}/{}",
                    m.destination().to_string_lossy().trim_start_matches('/')
                ),
                bind_source: source,
                origin: origin.clone(),
            });
        }
        if bundle.layout == RootfsLayout::Overlay {
            for sub in ["tmp", keel_bundle::ROOTFS_DIR] {
                root.mkdir_all(format!("{}/{sub}", bundle.dir), 0o755, 0, 0, &origin)
                    .map_err(|source| Error::Place {
                        path: bundle.dir.clone(),
                        source,
                    })?;
            }
        }
        place(
            &mut root,
            &format!("{}/{}", bundle.dir, keel_bundle::CONFIG_FILE),
            file(bundle.config_json()?, 0o644, &origin),
        )?;
        place(
            &mut root,
            &format!("{}/{}", bundle.dir, keel_bundle::RUNTIME_FILE),
            file(bundle.runtime_json()?, 0o644, &origin),
        )?;
    }
    // Sections are directories even when empty, so the guest can tell "none" from "broken".
    for section in [Section::Onboot, Section::Onshutdown, Section::Services] {
        let dir = format!("{}/{}", keel_bundle::CONTAINERS_DIR, section.as_str());
        root.mkdir_all(&dir, 0o755, 0, 0, "keel")
            .map_err(|source| Error::Place {
                path: dir.clone(),
                source,
            })?;
    }

    // System-wide settings for PID 1, only when the YAML asks for something: systems that do
    // not keep their bytes.
    let console = config
        .console
        .as_ref()
        .map(|c| c.value)
        .filter(|c| !c.is_default());
    let health = config.health.as_ref().map(|h| h.settings());
    if console.is_some() || health.is_some() {
        let system = keel_bundle::System {
            console: console.unwrap_or_default(),
            health,
        };
        let json =
            serde_json::to_vec_pretty(&system).map_err(|source| keel_config::Error::Json {
                what: "system.json",
                source,
            })?;
        place(
            &mut root,
            keel_bundle::SYSTEM_FILE,
            file(json, 0o644, "keel console: and health:"),
        )?;
    }

    add_files(&mut root, config, &ids)?;
    // After `files:`, so binds of files it adds are known.
    for point in &mount_points {
        create_mount_point(&mut root, point)?;
    }
    // The kernel opens /dev/console on the root filesystem before PID 1 starts (devtmpfs is
    // not mounted yet); without it PID 1 has no stdin, stdout or stderr.
    if root.get("dev/console").is_none() {
        let console = Node::new(NodeKind::CharDevice { major: 5, minor: 1 }, 0o600, "keel");
        place(&mut root, "dev/console", console)?;
    }
    Ok(Assembled { tree: root, kernel })
}

/// Points `bundle`'s root filesystem mounts (the first entries of its `runtime.json`) at the
/// image copy in `shared` instead of its own `own_root`. Returns false, changing nothing, when
/// the mounts are not the generated ones.
fn share_root(bundle: &mut keel_config::Bundle, own_root: &str, shared: &str) -> bool {
    let dir = format!("/{}", bundle.dir);
    let own = keel_config::rootfs_mounts(&dir, &format!("/{own_root}"), bundle.layout);
    let mounts = &mut bundle.runtime.mounts;
    if mounts.len() < own.len() || mounts[..own.len()] != own[..] {
        return false;
    }
    let replacement = keel_config::rootfs_mounts(&dir, &format!("/{shared}"), bundle.layout);
    mounts.splice(..own.len(), replacement);
    true
}

/// A mount destination inside a bundle's image root, created at build time because the root
/// is read-only at run time.
#[derive(Debug)]
struct MountPoint {
    /// The destination, as a path of the root filesystem.
    at: String,
    /// For binds: the source, a path of the guest's root filesystem.
    bind_source: Option<String>,
    origin: String,
}

/// Lexically normalises a relative path (`a/./b/../c` → `a/c`); `..` never leaves the root.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Resolves `path` in `root` following symlinks in every component, as the kernel would in
/// the running system. `None` when a component is missing (or symlinks loop).
fn resolve_in(root: &Tree, path: &Path) -> Option<PathBuf> {
    let mut pending: Vec<PathBuf> = normalize(path)
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(next) = pending.pop() {
        cur.push(next);
        if let NodeKind::Symlink(target) = &root.get(&cur)?.kind {
            hops += 1;
            if hops > 40 {
                return None;
            }
            cur.pop();
            let joined = if target.is_absolute() {
                normalize(target)
            } else {
                normalize(&cur.join(target))
            };
            pending.extend(
                joined
                    .components()
                    .rev()
                    .map(|c| PathBuf::from(c.as_os_str())),
            );
            cur = PathBuf::new();
        }
    }
    Some(cur)
}

/// Whether a bind source is a file (not a directory) in the assembled root.
fn source_is_file(root: &Tree, source: &str) -> bool {
    match resolve_in(root, Path::new(source)) {
        Some(p) => root.get(&p).is_some_and(|n| !n.is_dir()),
        // Through a symlink to something only the running system has (e.g. resolv.conf →
        // /run/resolvconf/resolv.conf): a file far more often than a directory.
        None => {
            let direct = normalize(Path::new(source));
            root.get(&direct)
                .is_some_and(|n| matches!(n.kind, NodeKind::Symlink(_)))
        }
    }
}

/// Creates a mount point unless the image has something there: an empty file for a bind of a
/// file (a file cannot be bound onto a directory), else a directory.
fn create_mount_point(root: &mut Tree, point: &MountPoint) -> Result<()> {
    if point.at.ends_with('/') || root.get(&point.at).is_some() {
        return Ok(());
    }
    let err = |source| Error::Place {
        path: point.at.clone(),
        source,
    };
    let file = point
        .bind_source
        .as_deref()
        .is_some_and(|s| source_is_file(root, s));
    if file {
        if let Some(parent) = Path::new(&point.at).parent() {
            root.mkdir_all(parent, 0o755, 0, 0, &point.origin)
                .map_err(err)?;
        }
        root.insert(
            &point.at,
            Node::new(NodeKind::File(Bytes::new()), 0o644, point.origin.as_str()),
        )
        .map_err(err)
    } else {
        root.mkdir_all(&point.at, 0o755, 0, 0, &point.origin)
            .map_err(err)
    }
}

/// Mode of a parent directory created for a file: the file's mode with `x` wherever it has `r`
/// or `w` (LinuxKit's rule), so 0600 → 0700 and 0644 → 0755.
fn parent_mode(mode: u32) -> u32 {
    let mut m = mode & 0o777;
    for shift in [6, 3, 0] {
        if m & (0o6 << shift) != 0 {
            m |= 0o1 << shift;
        }
    }
    m
}

fn add_files(root: &mut Tree, config: &Config, ids: &keel_config::IdMap) -> Result<()> {
    for (i, spec) in config.files.iter().enumerate() {
        let origin = format!("files[{i}]");
        let path = spec.relative_path().to_string();
        let mode = spec.mode();
        let uid = spec
            .uid
            .as_ref()
            .map(|id| keel_config::resolve_id(id, ids))
            .transpose()?
            .unwrap_or(0);
        let gid = spec
            .gid
            .as_ref()
            .map(|id| keel_config::resolve_id(id, ids))
            .transpose()?
            .unwrap_or(0);
        let node = match spec.content() {
            FileContent::Directory => Node::new(NodeKind::Dir, mode, origin.as_str()),
            FileContent::Symlink(target) => symlink(target, &origin),
            FileContent::Contents(text) => {
                file(Bytes::copy_from_slice(text.as_bytes()), mode, &origin)
            }
            FileContent::Metadata(MetadataFormat::Yaml) => file(config.to_yaml()?, mode, &origin),
            FileContent::Metadata(MetadataFormat::Json) => file(config.to_json()?, mode, &origin),
            FileContent::Source {
                path: source,
                optional,
            } => match std::fs::read(&source) {
                Ok(data) => file(data, mode, &origin),
                Err(_) if optional => {
                    log::debug!("{}: skipping optional {}", spec.loc, source.display());
                    continue;
                }
                Err(err) => {
                    return Err(Error::FileSource {
                        loc: spec.loc.to_string(),
                        path: source,
                        source: err,
                    });
                }
            },
        }
        .with_owner(uid, gid);
        if let Some(parent) = Path::new(&path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            && root.get(parent).is_none()
        {
            root.mkdir_all(parent, parent_mode(mode), uid, gid, &origin)
                .map_err(|source| Error::Place {
                    path: path.clone(),
                    source,
                })?;
        }
        if matches!(node.kind, NodeKind::Dir) && root.get(&path).is_some_and(Node::is_dir) {
            root.insert(&path, node).map_err(|source| Error::Place {
                path: path.clone(),
                source,
            })?;
        } else {
            place(root, &path, node)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_past_the_size_limit_is_refused_naming_its_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = |name: &str| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(3000);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, name, &[0u8; 3000][..]).unwrap();
            b.into_inner().unwrap()
        };
        let config = keel_image::oci::ImageConfigurationBuilder::default()
            .build()
            .unwrap();
        let arch = keel_image::Arch::X86_64;
        let desc = store
            .write_image(arch, config, &[tar("a"), tar("b")])
            .unwrap();
        let reference: keel_image::Reference = "test/big:1".parse().unwrap();
        store.tag(&reference, desc).unwrap();
        let image = store.image(&reference, arch).unwrap();
        // Each layer is 4.5 KiB of tar (header, data, end-of-archive blocks): together they
        // fit in 16 KiB, and the second passes 8 KiB.
        image_tree(&store, &image, "onboot[0] test/big:1", 16 << 10).unwrap();
        let err = image_tree(&store, &image, "onboot[0] test/big:1", 8 << 10).unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        let second = image.layers()[1].digest().to_string();
        assert!(
            text.contains(&format!("cannot unpack layer {second} of image ")),
            "{text}"
        );
        assert!(text.contains("test/big:1"), "{text}");
        assert!(
            text.contains("image passes the limit of 8 KiB uncompressed; raise it with `keel build --max-image-size SIZE`"),
            "{text}"
        );
    }

    #[test]
    fn loader_of_a_kernel_without_modules_is_init_alone() {
        let mut root = Tree::new();
        root.insert("init", file("elf", 0o755, "init")).unwrap();
        root.insert("etc/passwd", file("root", 0o644, "init"))
            .unwrap();
        let loader = loader_tree(&root).unwrap();
        let paths: Vec<String> = loader
            .iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["init"]);
    }

    #[test]
    fn loader_keeps_init_modules_and_mount_points_only() {
        let mut root = Tree::new();
        assert!(matches!(loader_tree(&root), Err(Error::NoLoader)));
        root.insert("init", file("elf", 0o755, "init")).unwrap();
        root.insert("sbin/init", symlink("/init", "init")).unwrap();
        root.insert("sbin/modprobe", symlink("/init", "init"))
            .unwrap();
        root.insert("sbin/getty", file("elf", 0o755, "getty"))
            .unwrap();
        root.insert(
            "lib/modules/6.1.0/kernel/fs/squashfs.ko",
            file("ko", 0o644, "kernel"),
        )
        .unwrap();
        root.insert("lib/libc.so", file("so", 0o644, "busybox"))
            .unwrap();
        root.insert(
            "containers/services/web/config.json",
            file("{}", 0o644, "web"),
        )
        .unwrap();
        root.insert("etc/passwd", file("root", 0o644, "init"))
            .unwrap();
        root.mkdir_all("proc", 0o555, 0, 0, "init").unwrap();
        let loader = loader_tree(&root).unwrap();
        let paths: Vec<String> = loader
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1.0",
                "lib/modules/6.1.0/kernel",
                "lib/modules/6.1.0/kernel/fs",
                "lib/modules/6.1.0/kernel/fs/squashfs.ko",
                "proc",
                "sbin",
                "sbin/init",
                "sbin/modprobe",
            ]
        );
        assert_eq!(loader.get("proc").unwrap().mode, 0o555);
    }

    #[test]
    fn mount_points_match_their_bind_source() {
        let mut root = Tree::new();
        root.insert("usr/bin/keelctl", file("elf", 0o755, "init"))
            .unwrap();
        root.insert(
            "etc/resolv.conf",
            symlink("/run/resolvconf/resolv.conf", "init"),
        )
        .unwrap();
        root.insert("bin", symlink("usr/bin", "init")).unwrap();
        root.mkdir_all("run", 0o755, 0, 0, "init").unwrap();
        let point = |at: &str, src: Option<&str>| MountPoint {
            at: format!("b/rootfs/{at}"),
            bind_source: src.map(String::from),
            origin: "t".into(),
        };
        for p in [
            point("usr/bin/keelctl", Some("/usr/bin/keelctl")),
            point("etc/resolv.conf", Some("/etc/resolv.conf")),
            point("keelctl2", Some("/bin/keelctl")),
            point("run/keel", Some("/run/keel")),
            point("proc", None),
            point("data", Some("/var/lib/data")),
        ] {
            create_mount_point(&mut root, &p).unwrap();
        }
        let kind = |root: &Tree, p: &str| root.get(format!("b/rootfs/{p}")).map(|n| n.is_dir());
        assert_eq!(
            kind(&root, "usr/bin/keelctl"),
            Some(false),
            "a file bound from the init image"
        );
        assert_eq!(
            kind(&root, "etc/resolv.conf"),
            Some(false),
            "a symlink into /run is a file"
        );
        assert_eq!(
            kind(&root, "keelctl2"),
            Some(false),
            "followed through a relative symlink"
        );
        assert_eq!(kind(&root, "run/keel"), Some(true));
        assert_eq!(kind(&root, "proc"), Some(true));
        assert_eq!(
            kind(&root, "data"),
            Some(true),
            "unknown sources are directories"
        );
        // Something the image already has is left alone.
        root.insert("b/rootfs/keep", file("x", 0o600, "img"))
            .unwrap();
        create_mount_point(&mut root, &point("keep", Some("/run/keel"))).unwrap();
        assert_eq!(kind(&root, "keep"), Some(false));
    }

    #[test]
    fn parent_modes_follow_linuxkit() {
        assert_eq!(parent_mode(0o600), 0o700);
        assert_eq!(parent_mode(0o644), 0o755);
        assert_eq!(parent_mode(0o400), 0o500);
        assert_eq!(parent_mode(0o000), 0o000);
    }

    #[test]
    fn filter_applies_linuxkit_rules() {
        let mut t = Tree::new();
        t.insert("etc/hostname", file("x", 0o644, "t")).unwrap();
        t.insert(".dockerenv", file("", 0o644, "t")).unwrap();
        t.insert("dev/console", file("", 0o644, "t")).unwrap();
        t.insert("etc/hosts", file("10.0.0.1 evil\n", 0o644, "t"))
            .unwrap();
        filter(&mut t, Role::Container, "t").unwrap();
        assert!(t.get("etc/hostname").is_none());
        assert!(t.get(".dockerenv").is_none());
        assert!(t.get("dev/console").is_none());
        for d in ENSURED_DIRS {
            assert!(t.get(d).is_some_and(Node::is_dir), "{d}");
        }
        assert!(
            matches!(&t.get("etc/hosts").unwrap().kind, NodeKind::File(b) if b.starts_with(b"127.0.0.1"))
        );
        assert!(
            matches!(&t.get("etc/mtab").unwrap().kind, NodeKind::Symlink(p) if p == Path::new("/proc/mounts"))
        );
        assert!(
            matches!(&t.get("etc/resolv.conf").unwrap().kind, NodeKind::File(b) if b.is_empty())
        );

        let mut init = Tree::new();
        filter(&mut init, Role::Init, "t").unwrap();
        assert!(
            matches!(&init.get("etc/resolv.conf").unwrap().kind, NodeKind::Symlink(p) if p == Path::new("/run/resolvconf/resolv.conf"))
        );
    }

    #[test]
    fn graft_reprefixes_hard_links_and_keeps_existing_children() {
        let mut src = Tree::new();
        src.insert(
            "a/link",
            Node::new(NodeKind::HardLink("z/target".into()), 0o644, "s"),
        )
        .unwrap_err();
        src.insert("z/target", file("data", 0o644, "s")).unwrap();
        src.insert(
            "a/link",
            Node::new(NodeKind::HardLink("z/target".into()), 0o644, "s"),
        )
        .unwrap();
        let mut dst = Tree::new();
        dst.insert("p/keep/me", file("old", 0o600, "d")).unwrap();
        src.insert("keep", Node::new(NodeKind::Dir, 0o700, "s"))
            .unwrap();
        graft(&mut dst, "p", &src).unwrap();
        assert!(
            dst.get("p/keep/me").is_some(),
            "existing children survive a directory graft"
        );
        assert_eq!(dst.get("p/keep").unwrap().mode & 0o777, 0o700);
        let mut out = Vec::new();
        keel_rootfs::write_tar(&dst, &mut out, &keel_rootfs::WriteOptions { mtime: 0 }).unwrap();
        let mut archive = tar::Archive::new(out.as_slice());
        let link = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.header().entry_type().is_hard_link())
            .expect("a hard link entry");
        let mut pair = [
            link.path().unwrap().into_owned(),
            link.link_name().unwrap().unwrap().into_owned(),
        ];
        pair.sort();
        assert_eq!(
            pair,
            [PathBuf::from("p/a/link"), PathBuf::from("p/z/target")]
        );
    }
}
