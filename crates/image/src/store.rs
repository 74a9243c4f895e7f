//! The image store: an OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/`).
//!
//! Tags are `index.json` descriptors annotated with `org.opencontainers.image.ref.name` = the
//! full normalised reference, as LinuxKit's cache does, so `skopeo` and `umoci` can read and
//! write the same directory. Blobs are written atomically (temp file + rename) and verified
//! against their digest whenever they are read. `index.json` updates hold an exclusive lock on
//! `.keel-lock` so concurrent keel processes do not lose each other's tags.

use crate::arch::Arch;
use crate::blob::BlobReader;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::layer::{self, LayerReader};
use crate::reference::Reference;
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os, Platform,
};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The annotation naming a tagged descriptor in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const TMP_DIR: &str = ".keel-tmp";
const LOCK_FILE: &str = ".keel-lock";
/// How deep an index may nest other indexes.
const MAX_INDEX_DEPTH: usize = 4;

/// An OCI image layout used as keel's image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One platform's image, loaded and verified from the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// The normalised reference the image was looked up by.
    pub reference: String,
    /// The digest the reference resolves to (an index's for a multi-platform image).
    pub digest: Digest,
    /// The digest of this platform's manifest.
    pub manifest_digest: Digest,
    /// The platform's manifest.
    pub manifest: ImageManifest,
    /// The image configuration.
    pub config: ImageConfiguration,
}

impl Image {
    /// The layer descriptors, base layer first.
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers()
    }

    /// The value of an image label (`config.Labels`).
    pub fn label(&self, key: &str) -> Option<&str> {
        self.config
            .config()
            .as_ref()?
            .labels()
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

/// What kind of document a descriptor points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Index,
    Manifest,
    Other,
}

pub(crate) fn kind_of(media_type: &MediaType) -> Kind {
    match media_type {
        MediaType::ImageIndex => Kind::Index,
        MediaType::ImageManifest => Kind::Manifest,
        MediaType::Other(s) if s == DOCKER_LIST => Kind::Index,
        MediaType::Other(s) if s == DOCKER_MANIFEST => Kind::Manifest,
        _ => Kind::Other,
    }
}

/// The media type a manifest or index document declares, or guesses from its shape.
pub(crate) fn sniff_media_type(data: &[u8]) -> Option<MediaType> {
    #[derive(Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_slice(data).ok()?;
    match (shape.media_type, shape.manifests, shape.layers) {
        (Some(mt), _, _) => Some(MediaType::from(mt.as_str())),
        (None, Some(_), _) => Some(MediaType::ImageIndex),
        (None, None, Some(_)) => Some(MediaType::ImageManifest),
        _ => None,
    }
}

/// Serialise with object keys sorted at every level, so equal values give equal bytes (and
/// digests) whatever the map types inside iterate in.
pub(crate) fn canonical_json<T: serde::Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    serde_json::to_vec(&sort(serde_json::to_value(value)?))
}

pub(crate) fn descriptor_digest(d: &Descriptor) -> Result<Digest> {
    Digest::try_from(d.digest()).map_err(|source| Error::Digest {
        what: "descriptor".into(),
        source,
    })
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

pub(crate) fn platform_string(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

fn empty_index() -> Result<ImageIndex> {
    oci_spec::image::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .map_err(|source| Error::Oci {
            what: "index.json",
            source,
        })
}

/// The children of a manifest or index, read leniently (only digests matter).
#[derive(Deserialize, Default)]
struct Children {
    #[serde(default)]
    manifests: Vec<ChildRef>,
    config: Option<ChildRef>,
    #[serde(default)]
    layers: Vec<ChildRef>,
}

#[derive(Deserialize)]
struct ChildRef {
    digest: String,
    size: Option<u64>,
}

/// A blob reachable from a root descriptor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Reachable {
    pub(crate) digest: Digest,
    pub(crate) size: Option<u64>,
}

/// Read-only access to any OCI image layout directory (the store, or one being imported).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
}

impl Layout {
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub(crate) fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub(crate) fn open_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<BlobReader<Box<dyn Read + Send>>> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(f) => Ok(BlobReader::new(Box::new(f), digest.clone(), size)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobNotFound {
                digest: digest.clone(),
                image: None,
            }),
            Err(e) => Err(Error::io("open", path, e)),
        }
    }

    pub(crate) fn read_blob(&self, digest: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        let mut r = self.open_blob(digest, size)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| Error::io("read", self.blob_path(digest), e))?;
        Ok(out)
    }

    pub(crate) fn read_index(&self) -> Result<ImageIndex> {
        let path = self.root.join("index.json");
        let data = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        serde_json::from_slice(&data).map_err(|e| Error::json(path.display().to_string(), e))
    }

    /// Every blob reachable from `root` that is present, root included. Manifests an index
    /// lists but the layout lacks are skipped (a store may hold one platform of an index); a
    /// manifest's missing config or layer is an error.
    pub(crate) fn reachable(&self, root: &Descriptor) -> Result<Vec<Reachable>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut stack = vec![(descriptor_digest(root)?, Some(root.size()), true, 0usize)];
        while let Some((digest, size, required, depth)) = stack.pop() {
            if seen.contains(&digest) {
                continue;
            }
            if !self.has_blob(&digest) {
                if required {
                    return Err(Error::BlobNotFound {
                        digest,
                        image: None,
                    });
                }
                continue;
            }
            seen.insert(digest.clone());
            if depth > MAX_INDEX_DEPTH {
                return Err(Error::invalid(
                    digest.to_string(),
                    "indexes nest too deeply",
                ));
            }
            let data = self.read_blob(&digest, size)?;
            let children: Children = serde_json::from_slice(&data)
                .map_err(|e| Error::json(format!("manifest {digest}"), e))?;
            for m in children.manifests {
                let d = parse_child(&m.digest)?;
                stack.push((d, m.size, false, depth + 1));
            }
            for leaf in children.config.into_iter().chain(children.layers) {
                let d = parse_child(&leaf.digest)?;
                if !self.has_blob(&d) {
                    return Err(Error::BlobNotFound {
                        digest: d,
                        image: None,
                    });
                }
                if seen.insert(d.clone()) {
                    out.push(Reachable {
                        digest: d,
                        size: leaf.size,
                    });
                }
            }
            out.push(Reachable { digest, size });
        }
        out.sort();
        Ok(out)
    }
}

fn parse_child(s: &str) -> Result<Digest> {
    s.parse().map_err(|source| Error::Digest {
        what: "manifest entry".into(),
        source,
    })
}

impl Store {
    /// Open the store at `path`, creating an empty OCI layout there if there is none.
    pub fn open(path: impl Into<PathBuf>) -> Result<Store> {
        let root: PathBuf = path.into();
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| Error::io("create", &blobs, e))?;
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let store = Store { root };
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            store.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = store.root.join("index.json");
        if !index.exists() {
            let _lock = store.lock()?;
            if !index.exists() {
                store.write_index_json(&empty_index()?)?;
            }
        }
        Ok(store)
    }

    /// The default store location: `$KEEL_CACHE`, else `$XDG_CACHE_HOME/keel`, else
    /// `~/.cache/keel`.
    pub fn default_path() -> Result<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(p) = var("KEEL_CACHE") {
            return Ok(PathBuf::from(p));
        }
        if let Some(p) = var("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(p).join("keel"));
        }
        var("HOME")
            .map(|h| PathBuf::from(h).join(".cache").join("keel"))
            .ok_or(Error::NoCacheDir)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    pub(crate) fn layout(&self) -> Layout {
        Layout {
            root: self.root.clone(),
        }
    }

    /// The store's `index.json`. Unreadable JSON, or JSON that is not an image index, is
    /// [`Error::CorruptIndex`]: the store is damaged, which is not the same as an image missing.
    pub(crate) fn index(&self) -> Result<ImageIndex> {
        let path = self.root.join("index.json");
        let data = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        serde_json::from_slice(&data).map_err(|e| Error::CorruptIndex {
            path,
            reason: match e.classify() {
                serde_json::error::Category::Data => format!("it is not an OCI image index ({e})"),
                _ => format!("it is not valid JSON ({e})"),
            },
        })
    }

    /// Whether the blob is present (its content is not checked).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.layout().has_blob(digest)
    }

    /// Resolve a reference to the descriptor it names: a tag through `index.json`, a digest
    /// reference when the blob exists (the digest wins over any tag). `None` if absent.
    pub fn resolve(&self, reference: &Reference) -> Result<Option<Descriptor>> {
        let index = self.index()?;
        if let Some(digest) = reference.digest() {
            if !self.has_blob(digest) {
                return Ok(None);
            }
            let known = index
                .manifests()
                .iter()
                .find(|m| m.digest().as_ref() == digest.as_str());
            if let Some(known) = known {
                let mut d = known.clone();
                d.set_annotations(None);
                return Ok(Some(d));
            }
            let data = self.read_blob(digest)?;
            let media_type = sniff_media_type(&data).ok_or_else(|| {
                Error::invalid(
                    reference.to_string(),
                    "the digest names a blob that is neither a manifest nor an index",
                )
            })?;
            return Ok(Some(Descriptor::new(
                media_type,
                data.len() as u64,
                digest.to_oci(),
            )));
        }
        let name = reference.to_string();
        Ok(index
            .manifests()
            .iter()
            .find(|m| ref_name(m) == Some(name.as_str()))
            .cloned())
    }

    /// What the tag of `reference` points to in the store, ignoring any digest the reference
    /// also carries: for `name:tag@sha256:…`, what `name:tag` resolves to, so a caller can tell
    /// when the tag has moved away from the digest it was given. `None` when the reference has
    /// no tag or the store does not have it.
    pub fn resolve_tag(&self, reference: &Reference) -> Result<Option<Descriptor>> {
        if reference.tag().is_none() {
            return Ok(None);
        }
        self.resolve(&reference.without_digest())
    }

    /// Load the image `reference` names for `arch` from the store (never from the network):
    /// follow an index to the platform's manifest, then load and verify manifest and config.
    pub fn image(&self, reference: &Reference, arch: Arch) -> Result<Image> {
        let name = reference.to_string();
        let top = self.resolve(reference)?.ok_or_else(|| Error::NotFound {
            reference: name.clone(),
            store: self.root.clone(),
        })?;
        self.image_from(&name, &top, arch)
            .map_err(|e| e.for_image(&name))
    }

    fn image_from(&self, name: &str, top: &Descriptor, arch: Arch) -> Result<Image> {
        let digest = descriptor_digest(top)?;
        let mut current = top.clone();
        let mut via_index = false;
        for _ in 0..=MAX_INDEX_DEPTH {
            let current_digest = descriptor_digest(&current)?;
            let data = self
                .layout()
                .read_blob(&current_digest, Some(current.size()))?;
            let kind = match kind_of(current.media_type()) {
                Kind::Other => sniff_media_type(&data)
                    .map(|m| kind_of(&m))
                    .unwrap_or(Kind::Other),
                k => k,
            };
            match kind {
                Kind::Index => {
                    let index: ImageIndex = serde_json::from_slice(&data)
                        .map_err(|e| Error::json(format!("index {current_digest} of {name}"), e))?;
                    current = select_platform(name, &index, arch)?;
                    via_index = true;
                }
                Kind::Manifest => {
                    let manifest: ImageManifest = serde_json::from_slice(&data).map_err(|e| {
                        Error::json(format!("manifest {current_digest} of {name}"), e)
                    })?;
                    let config_digest = descriptor_digest(manifest.config())?;
                    let config_data = self
                        .layout()
                        .read_blob(&config_digest, Some(manifest.config().size()))?;
                    let config: ImageConfiguration = serde_json::from_slice(&config_data)
                        .map_err(|e| Error::json(format!("config {config_digest} of {name}"), e))?;
                    if !via_index
                        && (config.architecture() != &arch.to_oci() || config.os() != &Os::Linux)
                    {
                        return Err(Error::WrongPlatform {
                            reference: name.to_owned(),
                            arch,
                            found: format!("{}/{}", config.os(), config.architecture()),
                        });
                    }
                    return Ok(Image {
                        reference: name.to_owned(),
                        digest,
                        manifest_digest: current_digest,
                        manifest,
                        config,
                    });
                }
                Kind::Other => {
                    return Err(Error::UnsupportedMediaType {
                        what: format!("{name} ({current_digest})"),
                        media_type: current.media_type().to_string(),
                    });
                }
            }
        }
        Err(Error::invalid(name, "indexes nest too deeply"))
    }

    /// Open a blob for reading; the reader fails at end of file if the content does not match
    /// `digest` (the error carries a [`crate::CorruptBlob`]).
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobReader<Box<dyn Read + Send>>> {
        self.layout().open_blob(digest, None)
    }

    /// Read a whole (small) blob, verified.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.layout().read_blob(digest, None)
    }

    /// Open a layer for reading its uncompressed tar stream (gzip, zstd or plain, by media
    /// type, sniffed when the type does not say). Call [`LayerReader::finish`] at the end.
    pub fn open_layer(&self, layer: &Descriptor) -> Result<LayerReader> {
        let digest = descriptor_digest(layer)?;
        let blob = self.layout().open_blob(&digest, Some(layer.size()))?;
        let path = self.layout().blob_path(&digest);
        LayerReader::new(blob, layer.media_type()).map_err(|e| Error::io("read", path, e))
    }

    /// Open layer `index` of `image` like [`Store::open_layer`], also checking that its
    /// uncompressed content hashes to the config's `rootfs.diff_ids[index]`: the reader fails
    /// at the end of the tar stream with an error carrying a [`crate::DiffIdMismatch`]
    /// ([`Error::DiffIdMismatch`] once converted) if it does not. Call
    /// [`LayerReader::finish`] at the end, which reads the stream to its end.
    pub fn open_image_layer(&self, image: &Image, index: usize) -> Result<LayerReader> {
        let layers = image.layers();
        let diff_ids = image.config.rootfs().diff_ids();
        let what = || format!("image {}", image.reference);
        if diff_ids.len() != layers.len() {
            return Err(Error::invalid(
                what(),
                format!(
                    "its config lists {} rootfs.diff_ids for {} layers",
                    diff_ids.len(),
                    layers.len()
                ),
            ));
        }
        let (Some(layer), Some(diff_id)) = (layers.get(index), diff_ids.get(index)) else {
            return Err(Error::invalid(
                what(),
                format!("it has no layer {index} (it has {})", layers.len()),
            ));
        };
        let reader = self
            .open_layer(layer)
            .map_err(|e| e.for_image(&image.reference))?;
        Ok(reader.check_diff_id(
            image.reference.clone(),
            descriptor_digest(layer)?,
            diff_id.clone(),
        ))
    }

    /// Store `data` as a blob; returns its digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        self.put_verified(data, &digest, Some(data.len() as u64))?;
        Ok(digest)
    }

    /// Store the content of `reader` as a blob; returns its digest and size.
    pub fn put_blob_from(&self, reader: impl Read) -> Result<(Digest, u64)> {
        let (tmp, digest, size) = self.spool(reader, None)?;
        self.persist(tmp, &digest)?;
        Ok((digest, size))
    }

    /// Store the content of `reader`, which must match `digest` (and `size` if given), else
    /// [`Error::Corrupt`] and nothing is stored. Returns the size.
    pub(crate) fn put_verified(
        &self,
        reader: impl Read,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<u64> {
        let (tmp, actual, n) = self.spool(reader, size)?;
        let corrupt = |actual: String| Error::Corrupt {
            blob: crate::CorruptBlob {
                digest: digest.clone(),
                actual,
            },
            image: None,
        };
        if let Some(size) = size
            && size != n
        {
            return Err(corrupt(format!("{n} bytes instead of {size}")));
        }
        if &actual != digest {
            return Err(corrupt(actual.to_string()));
        }
        self.persist(tmp, digest)?;
        Ok(n)
    }

    /// Copy `reader` into a temp file in the store, hashing it. Stops early past `limit` bytes.
    pub(crate) fn spool(
        &self,
        mut reader: impl Read,
        limit: Option<u64>,
    ) -> Result<(tempfile::NamedTempFile, Digest, u64)> {
        let dir = self.root.join(TMP_DIR);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Error::io("create a file in", &dir, e))?;
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read into", tmp.path(), e)),
            };
            hasher.update(&buf[..k]);
            n += k as u64;
            tmp.write_all(&buf[..k])
                .map_err(|e| Error::io("write", tmp.path(), e))?;
            if limit.is_some_and(|l| n > l) {
                break;
            }
        }
        Ok((tmp, hasher.finish(), n))
    }

    fn persist(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.layout().blob_path(digest);
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io("set the mode of", tmp.path(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io("sync", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("write", &path, e.error))?;
        Ok(())
    }

    /// Write `data` to `path` atomically (temp file in the store + rename).
    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.root.join(TMP_DIR);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Error::io("create a file in", &dir, e))?;
        tmp.write_all(data)
            .and_then(|()| {
                tmp.as_file()
                    .set_permissions(fs::Permissions::from_mode(0o644))
            })
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io("write", tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| Error::io("write", path, e.error))?;
        Ok(())
    }

    /// Build and store an image manifest for `arch` from uncompressed layer tars: layers are
    /// gzipped deterministically, `rootfs.diff_ids`, `architecture` and `os` are set in the
    /// config. Returns the manifest's descriptor (with its platform). Equal inputs give equal
    /// digests.
    pub fn write_image(
        &self,
        arch: Arch,
        mut config: ImageConfiguration,
        layers: &[Vec<u8>],
    ) -> Result<Descriptor> {
        let mut layer_descs = Vec::with_capacity(layers.len());
        let mut diff_ids = Vec::with_capacity(layers.len());
        for tar in layers {
            let gz = layer::gzip_layer(tar)
                .map_err(|e| Error::io("compress a layer in", &self.root, e))?;
            let digest = self.put_blob(&gz.data)?;
            layer_descs.push(Descriptor::new(
                MediaType::ImageLayerGzip,
                gz.data.len() as u64,
                digest.to_oci(),
            ));
            diff_ids.push(gz.diff_id.to_string());
        }
        config.set_architecture(arch.to_oci());
        config.set_os(Os::Linux);
        config.rootfs_mut().set_diff_ids(diff_ids);
        let config_data = canonical_json(&config).map_err(|e| Error::json("image config", e))?;
        self.put_image_manifest(&config_data, layer_descs, Some(arch))
    }

    /// Stores an image config blob and the manifest over it and `layers` (already stored).
    pub(crate) fn put_image_manifest(
        &self,
        config_data: &[u8],
        layers: Vec<Descriptor>,
        arch: Option<Arch>,
    ) -> Result<Descriptor> {
        let config_digest = self.put_blob(config_data)?;
        let manifest = oci_spec::image::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                config_data.len() as u64,
                config_digest.to_oci(),
            ))
            .layers(layers)
            .build()
            .map_err(|source| Error::Oci {
                what: "image manifest",
                source,
            })?;
        self.put_manifest(&manifest, arch)
    }

    /// Store a manifest document; returns its descriptor (with a platform if `arch` is given).
    pub(crate) fn put_manifest(
        &self,
        manifest: &ImageManifest,
        arch: Option<Arch>,
    ) -> Result<Descriptor> {
        let data = canonical_json(manifest).map_err(|e| Error::json("image manifest", e))?;
        let digest = self.put_blob(&data)?;
        let mut desc =
            Descriptor::new(MediaType::ImageManifest, data.len() as u64, digest.to_oci());
        if let Some(arch) = arch {
            desc.set_platform(Some(linux_platform(arch)));
        }
        Ok(desc)
    }

    /// Build and store an image index over per-architecture manifests. Returns its descriptor.
    pub fn write_index(&self, manifests: &[(Arch, Descriptor)]) -> Result<Descriptor> {
        let entries = manifests
            .iter()
            .map(|(arch, d)| {
                let mut d = d.clone();
                d.set_platform(Some(linux_platform(*arch)));
                d.set_annotations(None);
                d
            })
            .collect::<Vec<_>>();
        let mut index = empty_index()?;
        index.set_manifests(entries);
        let data = canonical_json(&index).map_err(|e| Error::json("image index", e))?;
        let digest = self.put_blob(&data)?;
        Ok(Descriptor::new(
            MediaType::ImageIndex,
            data.len() as u64,
            digest.to_oci(),
        ))
    }

    /// Tag `descriptor` as `reference` in `index.json`, replacing any previous tag of that name.
    pub fn tag(&self, reference: &Reference, descriptor: Descriptor) -> Result<()> {
        let name = reference.to_string();
        let mut desc = descriptor;
        desc.set_annotations(Some(HashMap::from([(REF_NAME.to_owned(), name.clone())])));
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let mut manifests = index.manifests().clone();
        match manifests
            .iter_mut()
            .find(|m| ref_name(m) == Some(name.as_str()))
        {
            Some(existing) => *existing = desc,
            None => manifests.push(desc),
        }
        index.set_manifests(manifests);
        self.write_index_json(&index)
    }

    /// Every tagged image: (full reference, descriptor), sorted by name. Untagged entries of
    /// `index.json` are listed under their digest.
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>> {
        let index = self.index()?;
        let mut out: Vec<_> = index
            .manifests()
            .iter()
            .map(|m| {
                let name = ref_name(m).map_or_else(|| m.digest().to_string(), str::to_owned);
                (name, m.clone())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Remove a tag (for a digest reference: every entry with that digest), then delete the
    /// blobs nothing references any more. Returns how many blobs were deleted.
    pub fn remove(&self, reference: &Reference) -> Result<usize> {
        let name = reference.to_string();
        {
            let _lock = self.lock()?;
            let mut index = self.index()?;
            let mut manifests = index.manifests().clone();
            let before = manifests.len();
            manifests.retain(|m| {
                let by_name = ref_name(m) == Some(name.as_str());
                let by_digest = reference
                    .digest()
                    .is_some_and(|d| m.digest().as_ref() == d.as_str());
                !(by_name || by_digest)
            });
            if manifests.len() == before {
                return Err(Error::NotFound {
                    reference: name,
                    store: self.root.clone(),
                });
            }
            index.set_manifests(manifests);
            self.write_index_json(&index)?;
        }
        self.gc()
    }

    /// Delete every blob not reachable from `index.json`, and stale temp files. Returns how
    /// many blobs were deleted. Not safe against a concurrent pull that has written blobs but
    /// not yet tagged them.
    pub fn gc(&self) -> Result<usize> {
        let _lock = self.lock()?;
        let layout = self.layout();
        let index = self.index()?;
        let mut live = BTreeSet::new();
        for m in index.manifests() {
            // A damaged or partial entry keeps what can be reached from it.
            match layout.reachable(m) {
                Ok(blobs) => live.extend(blobs.into_iter().map(|r| r.digest)),
                Err(e) => {
                    log::warn!("gc: keeping what {} reaches: {e}", m.digest());
                    live.extend(self.reachable_lenient(m));
                }
            }
        }
        let dir = self.root.join("blobs").join("sha256");
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                continue;
            };
            if !live.contains(&digest) {
                fs::remove_file(entry.path()).map_err(|e| Error::io("remove", entry.path(), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Digests reachable from `root`, ignoring missing or unreadable blobs.
    fn reachable_lenient(&self, root: &Descriptor) -> Vec<Digest> {
        let mut out = Vec::new();
        let mut stack: Vec<Digest> = descriptor_digest(root).into_iter().collect();
        while let Some(d) = stack.pop() {
            if out.contains(&d) {
                continue;
            }
            out.push(d.clone());
            if let Ok(data) = fs::read(self.layout().blob_path(&d))
                && let Ok(children) = serde_json::from_slice::<Children>(&data)
            {
                for c in children.manifests {
                    stack.extend(c.digest.parse::<Digest>().ok());
                }
                for c in children.config.into_iter().chain(children.layers) {
                    out.extend(c.digest.parse::<Digest>().ok());
                }
            }
        }
        out
    }

    fn write_index_json(&self, index: &ImageIndex) -> Result<()> {
        let data = canonical_json(index).map_err(|e| Error::json("index.json", e))?;
        self.write_atomic(&self.root.join("index.json"), &data)
    }

    /// Exclusive lock for read-modify-write of `index.json`; released on drop.
    fn lock(&self) -> Result<File> {
        let path = self.root.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        file.lock().map_err(|e| Error::io("lock", &path, e))?;
        Ok(file)
    }
}

pub(crate) fn linux_platform(arch: Arch) -> Platform {
    let mut p = Platform::default();
    p.set_architecture(arch.to_oci());
    p.set_os(Os::Linux);
    p
}

/// Pick `arch`'s Linux manifest from an index. Variant-less entries win over variants (for
/// arm64, `v8` is the only one in practice).
pub(crate) fn select_platform(name: &str, index: &ImageIndex, arch: Arch) -> Result<Descriptor> {
    let want = arch.to_oci();
    let mut matches: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|m| {
            m.platform()
                .as_ref()
                .is_some_and(|p| p.architecture() == &want && p.os() == &Os::Linux)
        })
        .collect();
    matches.sort_by_key(|m| {
        m.platform()
            .as_ref()
            .and_then(|p| p.variant().clone())
            .is_some()
    });
    match matches.first() {
        Some(m) => Ok((*m).clone()),
        None => Err(Error::NoPlatform {
            reference: name.to_owned(),
            arch,
            available: index
                .manifests()
                .iter()
                .filter_map(|m| m.platform().as_ref())
                .map(platform_string)
                .filter(|p| p != "unknown/unknown")
                .collect(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

    pub(crate) use keel_testutil::tar_with;

    pub(crate) fn config_with_label(key: &str, value: &str) -> ImageConfiguration {
        ImageConfigurationBuilder::default()
            .config(
                ConfigBuilder::default()
                    .labels(HashMap::from([
                        (key.to_owned(), value.to_owned()),
                        ("z.other".to_owned(), "1".to_owned()),
                        ("a.other".to_owned(), "2".to_owned()),
                    ]))
                    .cmd(vec!["/bin/sh".to_owned()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    /// A store with a two-platform image tagged `docker.io/library/multi:1`.
    pub(crate) fn store_with_multi(dir: &Path) -> (Store, Reference, Descriptor) {
        let store = Store::open(dir.join("store")).unwrap();
        let amd = store
            .write_image(
                Arch::X86_64,
                config_with_label("arch", "amd"),
                &[tar_with("etc/arch", b"amd64\n")],
            )
            .unwrap();
        let arm = store
            .write_image(
                Arch::Aarch64,
                config_with_label("arch", "arm"),
                &[tar_with("etc/arch", b"arm64\n"), tar_with("etc/x", b"x")],
            )
            .unwrap();
        let index = store
            .write_index(&[(Arch::X86_64, amd), (Arch::Aarch64, arm)])
            .unwrap();
        let r: Reference = "multi:1".parse().unwrap();
        store.tag(&r, index.clone()).unwrap();
        (store, r, index)
    }

    fn layer_content(store: &Store, layer: &Descriptor) -> Vec<(String, Vec<u8>)> {
        let mut r = store.open_layer(layer).unwrap();
        let mut out = Vec::new();
        {
            let mut ar = tar::Archive::new(&mut r);
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                out.push((e.path().unwrap().display().to_string(), data));
            }
        }
        r.finish().unwrap();
        out
    }

    #[test]
    fn open_creates_a_layout_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = Store::open(&path).unwrap();
        let layout: serde_json::Value =
            serde_json::from_slice(&fs::read(path.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        assert!(store.list().unwrap().is_empty());
        let r: Reference = "a".parse().unwrap();
        let d = store
            .write_image(Arch::X86_64, ImageConfiguration::default(), &[])
            .unwrap();
        store.tag(&r, d.clone()).unwrap();
        let again = Store::open(&path).unwrap();
        assert_eq!(
            again.resolve(&r).unwrap().map(|x| x.digest().clone()),
            Some(d.digest().clone())
        );
    }

    #[test]
    fn index_selects_the_platform() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, index) = store_with_multi(dir.path());
        let amd = store.image(&r, Arch::X86_64).unwrap();
        let arm = store.image(&r, Arch::Aarch64).unwrap();
        let index_digest = descriptor_digest(&index).unwrap();
        assert_eq!(amd.digest, index_digest);
        assert_eq!(arm.digest, index_digest);
        assert_ne!(amd.manifest_digest, arm.manifest_digest);
        assert_eq!(amd.label("arch"), Some("amd"));
        assert_eq!(arm.label("arch"), Some("arm"));
        assert_eq!(amd.layers().len(), 1);
        assert_eq!(arm.layers().len(), 2);
        assert_eq!(arm.config.architecture(), &oci_spec::image::Arch::ARM64);
        assert_eq!(
            layer_content(&store, &arm.layers()[0]),
            vec![("etc/arch".to_owned(), b"arm64\n".to_vec())]
        );
        assert_eq!(amd.reference, "docker.io/library/multi:1");
    }

    #[test]
    fn missing_platform_lists_available_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let amd = store
            .write_image(Arch::X86_64, ImageConfiguration::default(), &[])
            .unwrap();
        let index = store.write_index(&[(Arch::X86_64, amd.clone())]).unwrap();
        let r: Reference = "org/only-amd:2".parse().unwrap();
        store.tag(&r, index).unwrap();
        let err = store.image(&r, Arch::Aarch64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image docker.io/org/only-amd:2 has no linux/arm64 manifest (available: linux/amd64)"
        );
        // A bare manifest for the wrong architecture is refused too.
        let single: Reference = "single".parse().unwrap();
        store.tag(&single, amd).unwrap();
        assert!(matches!(
            store.image(&single, Arch::Aarch64),
            Err(Error::WrongPlatform { .. })
        ));
        assert!(store.image(&single, Arch::X86_64).is_ok());
    }

    #[test]
    fn variant_less_entries_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let arm = store
            .write_image(Arch::Aarch64, ImageConfiguration::default(), &[])
            .unwrap();
        let mut v8 = Descriptor::new(MediaType::ImageManifest, 1, Digest::of(b"v8").to_oci());
        let mut p = linux_platform(Arch::Aarch64);
        p.set_variant(Some("v8".into()));
        v8.set_platform(Some(p));
        let mut index = empty_index().unwrap();
        let mut plain = arm.clone();
        plain.set_platform(Some(linux_platform(Arch::Aarch64)));
        index.set_manifests(vec![v8, plain]);
        let chosen = select_platform("x", &index, Arch::Aarch64).unwrap();
        assert_eq!(chosen.digest(), arm.digest());
    }

    #[test]
    fn resolve_by_tag_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, index) = store_with_multi(dir.path());
        let digest = descriptor_digest(&index).unwrap();
        let by_tag = store.resolve(&r).unwrap().unwrap();
        assert_eq!(by_tag.digest(), index.digest());
        let by_digest: Reference = format!("other/name@{digest}").parse().unwrap();
        let d = store.resolve(&by_digest).unwrap().unwrap();
        assert_eq!(d.digest(), index.digest());
        assert_eq!(d.media_type(), &MediaType::ImageIndex);
        // The platform manifest (untagged) resolves by digest too, its type sniffed.
        let arm = store.image(&r, Arch::Aarch64).unwrap();
        let m: Reference = format!("x@{}", arm.manifest_digest).parse().unwrap();
        let md = store.resolve(&m).unwrap().unwrap();
        assert_eq!(md.media_type(), &MediaType::ImageManifest);
        assert_eq!(
            store.image(&m, Arch::Aarch64).unwrap().manifest_digest,
            arm.manifest_digest
        );
        // Absent tags and digests resolve to nothing.
        assert!(
            store
                .resolve(&"multi:2".parse().unwrap())
                .unwrap()
                .is_none()
        );
        let absent: Reference = format!("x@{}", Digest::of(b"nothing")).parse().unwrap();
        assert!(store.resolve(&absent).unwrap().is_none());
        let err = store
            .image(&"multi:2".parse().unwrap(), Arch::X86_64)
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(
            err.to_string().contains("docker.io/library/multi:2"),
            "{err}"
        );
    }

    #[test]
    fn writing_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (_, _, ia) = store_with_multi(a.path());
        let (_, _, ib) = store_with_multi(b.path());
        assert_eq!(ia.digest(), ib.digest());
        assert_eq!(
            fs::read(a.path().join("store/index.json")).unwrap(),
            fs::read(b.path().join("store/index.json")).unwrap()
        );
    }

    #[test]
    fn corrupt_blob_is_reported_with_image_name() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _) = store_with_multi(dir.path());
        let amd = store.image(&r, Arch::X86_64).unwrap();
        let config = descriptor_digest(amd.manifest.config()).unwrap();
        let path = store.layout().blob_path(&config);
        let mut data = fs::read(&path).unwrap();
        data[0] = b' ';
        fs::write(&path, &data).unwrap();
        let err = store.image(&r, Arch::X86_64).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("blob {config} of docker.io/library/multi:1 is corrupt: expected {config}, got sha256:")),
            "{msg}"
        );
        // The layer reader reports tampering too.
        let layer = descriptor_digest(&amd.layers()[0]).unwrap();
        let path = store.layout().blob_path(&layer);
        let mut data = fs::read(&path).unwrap();
        data[4] ^= 1; // gzip mtime: decompresses fine, digest differs
        fs::write(&path, &data).unwrap();
        let mut r = store.open_layer(&amd.layers()[0]).unwrap();
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(crate::CorruptBlob::find(&err).unwrap().digest, layer);
    }

    /// Stores `image`'s manifest again over a config whose `rootfs.diff_ids` are `diff_ids`.
    fn with_diff_ids(store: &Store, image: &Image, diff_ids: Vec<String>) -> Reference {
        let mut config = image.config.clone();
        config.rootfs_mut().set_diff_ids(diff_ids);
        let data = canonical_json(&config).unwrap();
        let manifest = store
            .put_image_manifest(&data, image.layers().to_vec(), Some(Arch::X86_64))
            .unwrap();
        let r: Reference = "liar:1".parse().unwrap();
        store.tag(&r, manifest).unwrap();
        r
    }

    fn read_layer(store: &Store, image: &Image, i: usize) -> Result<Vec<u8>> {
        let mut r = store.open_image_layer(image, i)?;
        let mut out = Vec::new();
        let path = store.path().to_path_buf();
        r.read_to_end(&mut out)
            .and_then(|_| r.finish())
            .map_err(|e| Error::io("read", &path, e))?;
        Ok(out)
    }

    #[test]
    fn layers_are_checked_against_the_config_diff_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _) = store_with_multi(dir.path());
        let arm = store.image(&r, Arch::Aarch64).unwrap();
        // An honest image reads through.
        assert_eq!(
            read_layer(&store, &arm, 1).unwrap(),
            tar_with("etc/x", b"x")
        );

        // A config that lies about the second layer: the first still reads, the second fails
        // naming image, layer, the diff_id claimed and the one found.
        let amd = store.image(&r, Arch::X86_64).unwrap();
        let honest = amd.config.rootfs().diff_ids()[0].clone();
        let lie = Digest::of(b"something else").to_string();
        let liar = with_diff_ids(&store, &amd, vec![lie.clone()]);
        let image = store.image(&liar, Arch::X86_64).unwrap();
        let err = read_layer(&store, &image, 0).unwrap_err();
        let layer = descriptor_digest(&image.layers()[0]).unwrap();
        let Error::DiffIdMismatch(m) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(m.image, "docker.io/library/liar:1");
        assert_eq!(m.layer, layer);
        assert_eq!(m.expected, lie);
        assert_eq!(m.actual.as_str(), honest);
        assert_eq!(
            err.to_string(),
            format!(
                "layer {layer} of docker.io/library/liar:1 does not match its image config: \
                 rootfs.diff_ids says {lie}, the uncompressed layer hashes to {honest}"
            )
        );
        assert!(!err.is_not_found());
        // A tar reader that stops at the end-of-archive marker: finish() still catches it.
        let mut reader = store.open_image_layer(&image, 0).unwrap();
        for e in tar::Archive::new(&mut reader).entries().unwrap() {
            e.unwrap();
        }
        let e = reader.finish().unwrap_err();
        assert_eq!(crate::DiffIdMismatch::find(&e), Some(m));

        // A config listing fewer diff_ids than there are layers is refused up front.
        let short = with_diff_ids(&store, &amd, vec![]);
        let image = store.image(&short, Arch::X86_64).unwrap();
        let err = store.open_image_layer(&image, 0).err().unwrap().to_string();
        assert_eq!(
            err,
            "image docker.io/library/liar:1: its config lists 0 rootfs.diff_ids for 1 layers"
        );
    }

    #[test]
    fn resolve_tag_ignores_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, index) = store_with_multi(dir.path());
        let other = store
            .write_image(Arch::X86_64, config_with_label("n", "other"), &[])
            .unwrap();
        let other_digest = descriptor_digest(&other).unwrap();
        // multi:1@<other digest>: the digest wins for resolve, the tag points to the index.
        let pinned: Reference = format!("multi:1@{other_digest}").parse().unwrap();
        assert_eq!(
            store.resolve(&pinned).unwrap().unwrap().digest(),
            other.digest()
        );
        let tagged = store.resolve_tag(&pinned).unwrap().unwrap();
        assert_eq!(tagged.digest(), index.digest());
        // The same for the plain tag; nothing for a tag the store lacks or a digest alone.
        assert_eq!(
            store.resolve_tag(&r).unwrap().unwrap().digest(),
            index.digest()
        );
        let absent: Reference = format!("multi:2@{other_digest}").parse().unwrap();
        assert!(store.resolve_tag(&absent).unwrap().is_none());
        let bare: Reference = format!("multi@{other_digest}").parse().unwrap();
        assert!(store.resolve_tag(&bare).unwrap().is_none());
        assert_eq!(
            pinned.without_digest().to_string(),
            "docker.io/library/multi:1"
        );
    }

    #[test]
    fn a_corrupt_index_is_not_a_missing_image() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _) = store_with_multi(dir.path());
        let path = store.path().join("index.json");
        for (content, says) in [
            (
                &b"{\"schemaVersion\": 2, \"manifests\": ["[..],
                "it is not valid JSON (EOF while parsing",
            ),
            (&b"[]"[..], "it is not an OCI image index (invalid length 0"),
            (
                &br#"{"schemaVersion":2,"manifests":3}"#[..],
                "it is not an OCI image index (invalid type: integer",
            ),
            (&b""[..], "it is not valid JSON (EOF while parsing"),
        ] {
            fs::write(&path, content).unwrap();
            // Opening still works (so `keel cache clean` can empty the store)...
            let store = Store::open(store.path()).unwrap();
            // ...every read of the index says what is wrong with which file.
            for err in [
                store.resolve(&r).unwrap_err(),
                store.image(&r, Arch::X86_64).unwrap_err(),
                store.list().unwrap_err(),
                store
                    .tag(
                        &r,
                        Descriptor::new(MediaType::ImageManifest, 1, Digest::of(b"m").to_oci()),
                    )
                    .unwrap_err(),
            ] {
                assert!(err.is_store_corrupt(), "{err:?}");
                assert!(!err.is_not_found(), "{err:?}");
                let msg = err.to_string();
                assert!(
                    msg.starts_with(&format!(
                        "the image store's index.json at {} is corrupt: ",
                        path.display()
                    )),
                    "{msg}"
                );
                assert!(msg.contains(says), "{msg}");
                assert!(
                    msg.ends_with(&format!(
                        "; remove the store (`keel cache clean`, or delete {}) or restore the file",
                        store.path().display()
                    )),
                    "{msg}"
                );
            }
            // A pull fails the same way, before it reaches the (dead) registry.
            let remote: Reference = "127.0.0.1:9/x/y:1".parse().unwrap();
            let err = store
                .pull(&remote, Arch::X86_64, &crate::PullOptions::default())
                .unwrap_err();
            assert!(err.is_store_corrupt(), "{err:?}");
        }
    }

    #[test]
    fn remove_collects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _) = store_with_multi(dir.path());
        let keep: Reference = "keep".parse().unwrap();
        let kept = store
            .write_image(
                Arch::X86_64,
                config_with_label("k", "v"),
                &[tar_with("k", b"k")],
            )
            .unwrap();
        store.tag(&keep, kept).unwrap();
        let stray = store.put_blob(b"stray").unwrap();
        let count = || {
            fs::read_dir(store.path().join("blobs/sha256"))
                .unwrap()
                .count()
        };
        let before = count();
        // index + 2 manifests + 2 configs + 3 layers + the stray blob
        let removed = store.remove(&r).unwrap();
        assert_eq!(removed, 9);
        assert_eq!(count(), before - 9);
        assert!(!store.has_blob(&stray));
        assert!(store.image(&keep, Arch::X86_64).is_ok());
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.remove(&r).unwrap_err().is_not_found());
    }

    #[test]
    fn retag_replaces_and_lists_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store
            .write_image(Arch::X86_64, config_with_label("n", "a"), &[])
            .unwrap();
        let b = store
            .write_image(Arch::X86_64, config_with_label("n", "b"), &[])
            .unwrap();
        let z: Reference = "z/z".parse().unwrap();
        let x: Reference = "x".parse().unwrap();
        store.tag(&z, a.clone()).unwrap();
        store.tag(&x, a).unwrap();
        store.tag(&z, b.clone()).unwrap();
        let list = store.list().unwrap();
        let names: Vec<_> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["docker.io/library/x:latest", "docker.io/z/z:latest"]
        );
        assert_eq!(list[1].1.digest(), b.digest());
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: HashMap<&str, HashMap<&str, u8>> = HashMap::from([
            ("b", HashMap::from([("y", 1), ("x", 2)])),
            ("a", HashMap::new()),
        ]);
        assert_eq!(
            String::from_utf8(canonical_json(&v).unwrap()).unwrap(),
            r#"{"a":{},"b":{"x":2,"y":1}}"#
        );
    }

    #[test]
    fn default_path_honours_environment() {
        // Only KEEL_CACHE is checked here: changing HOME would race with other tests.
        let p = Store::default_path().unwrap();
        match std::env::var_os("KEEL_CACHE").filter(|v| !v.is_empty()) {
            Some(k) => assert_eq!(p, PathBuf::from(k)),
            None => assert!(p.ends_with("keel"), "{}", p.display()),
        }
    }
}
