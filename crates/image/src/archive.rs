//! Importing images from OCI layout directories, OCI archives and `docker save` archives, and
//! exporting an image as an OCI archive.
//!
//! Archives are unpacked into a temp directory inside the store (members are confined to it:
//! absolute paths, `..` and escaping links are refused); every blob copied into the store is
//! verified against its digest.

use crate::error::{Error, Result};
use crate::layer::Compression;
use crate::reference::Reference;
use crate::store::{self, Layout, REF_NAME, Store};
use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read};
use std::path::{Component, Path, PathBuf};

/// containerd's name annotation, used when `ref.name` holds only a tag.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// How many links are followed when resolving an archive member.
const MAX_LINKS: usize = 16;

/// An archive unpacked into a temp directory, with its links kept aside.
struct Unpacked {
    dir: tempfile::TempDir,
    /// Link path → target path, both relative to the archive root.
    links: HashMap<PathBuf, PathBuf>,
}

impl Unpacked {
    /// The file an archive member name refers to, following links.
    fn path(&self, member: &str, what: &str) -> Result<PathBuf> {
        let mut p = confine(Path::new(member), Path::new("")).ok_or_else(|| {
            Error::invalid(what, format!("member {member:?} escapes the archive"))
        })?;
        for _ in 0..MAX_LINKS {
            match self.links.get(&p) {
                Some(target) => p = target.clone(),
                None => return Ok(self.dir.path().join(p)),
            }
        }
        Err(Error::invalid(
            what,
            format!("member {member:?} is a link loop"),
        ))
    }

    fn has(&self, member: &str) -> bool {
        self.dir.path().join(member).is_file()
    }
}

/// `path` (relative to `base`, both inside the archive) normalised lexically; `None` if it is
/// absolute or climbs out of the archive.
fn confine(path: &Path, base: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in base.components().chain(path.components()) {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

impl Store {
    /// Import every tagged image from `path`: an OCI image layout directory, an OCI archive
    /// (a tar of a layout, as `skopeo copy … oci-archive:` writes), or a `docker save`
    /// archive (optionally gzipped). Returns the normalised references imported.
    ///
    /// In an OCI layout, images are named by their `org.opencontainers.image.ref.name`
    /// annotation, which must be a full reference (`docker.io/org/name:tag`, `name:tag`); bare
    /// tags such as `v1` name nothing keel can resolve and are skipped with a warning.
    pub fn import(&self, path: &Path) -> Result<Vec<String>> {
        let what = path.display().to_string();
        if path.is_dir() {
            if !path.join("oci-layout").is_file() {
                return Err(Error::invalid(
                    what,
                    "not an OCI image layout (no oci-layout file)",
                ));
            }
            let src = Layout {
                root: path.to_owned(),
            };
            return self.import_layout(&src, &what);
        }
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut reader = BufReader::new(file);
        let head = reader.fill_buf().map_err(|e| Error::io("read", path, e))?;
        let stream: Box<dyn Read> = match Compression::sniff(head) {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            _ => Box::new(reader),
        };
        let unpacked = self.unpack(stream, &what)?;
        if unpacked.has("manifest.json") {
            self.import_docker(&unpacked, &what)
        } else if unpacked.has("oci-layout") && unpacked.has("index.json") {
            let src = Layout {
                root: unpacked.dir.path().to_owned(),
            };
            self.import_layout(&src, &what)
        } else {
            Err(Error::invalid(
                what,
                "neither an OCI archive (oci-layout, index.json) nor a docker-archive (manifest.json)",
            ))
        }
    }

    fn import_layout(&self, src: &Layout, what: &str) -> Result<Vec<String>> {
        let index = src.read_index()?;
        let mut names = Vec::new();
        let mut skipped = Vec::new();
        for entry in index.manifests() {
            let annotations = entry.annotations().clone().unwrap_or_default();
            let name = annotations
                .get(REF_NAME)
                .filter(|n| n.contains('/') || n.contains(':'))
                .or_else(|| annotations.get(CONTAINERD_NAME));
            let Some(name) = name else {
                skipped.push(
                    annotations
                        .get(REF_NAME)
                        .cloned()
                        .unwrap_or_else(|| entry.digest().to_string()),
                );
                continue;
            };
            let reference: Reference = name.parse()?;
            let display = reference.to_string();
            for blob in src
                .reachable(entry)
                .map_err(|e| e.for_image(&format!("{display} in {what}")))?
            {
                if self.has_blob(&blob.digest) {
                    continue;
                }
                let path = src.blob_path(&blob.digest);
                let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
                self.put_verified(file, &blob.digest, blob.size)
                    .map_err(|e| e.for_image(&format!("{display} in {what}")))?;
            }
            let mut desc = entry.clone();
            desc.set_annotations(None);
            self.tag(&reference, desc)?;
            names.push(display);
        }
        if !skipped.is_empty() {
            log::warn!(
                "{what}: skipped images without a full reference name: {}",
                skipped.join(", ")
            );
        }
        if names.is_empty() {
            return Err(Error::invalid(
                what,
                "no image in it is named by a full reference (annotation org.opencontainers.image.ref.name such as docker.io/org/name:tag)",
            ));
        }
        Ok(names)
    }

    fn import_docker(&self, src: &Unpacked, what: &str) -> Result<Vec<String>> {
        let manifest_path = src.path("manifest.json", what)?;
        let data = fs::read(&manifest_path).map_err(|e| Error::io("read", &manifest_path, e))?;
        let entries: Vec<DockerManifest> = serde_json::from_slice(&data)
            .map_err(|e| Error::json(format!("manifest.json in {what}"), e))?;
        let mut names = Vec::new();
        for entry in entries {
            let tags = entry.repo_tags.unwrap_or_default();
            if tags.is_empty() {
                log::warn!("{what}: skipped untagged image {}", entry.config);
                continue;
            }
            let references = tags
                .iter()
                .map(|t| t.parse::<Reference>())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let config_path = src.path(&entry.config, what)?;
            let config_data =
                fs::read(&config_path).map_err(|e| Error::io("read", &config_path, e))?;
            let config: ImageConfiguration = serde_json::from_slice(&config_data)
                .map_err(|e| Error::json(format!("config {} in {what}", entry.config), e))?;
            let diff_ids = config.rootfs().diff_ids();
            if diff_ids.len() != entry.layers.len() {
                return Err(Error::invalid(
                    what,
                    format!(
                        "image {} lists {} layers but its config {} diff IDs",
                        tags.join(", "),
                        entry.layers.len(),
                        diff_ids.len()
                    ),
                ));
            }
            let mut layers = Vec::with_capacity(entry.layers.len());
            for (member, diff_id) in entry.layers.iter().zip(diff_ids) {
                let path = src.path(member, what)?;
                let mut reader =
                    BufReader::new(File::open(&path).map_err(|e| Error::io("open", &path, e))?);
                let head = reader.fill_buf().map_err(|e| Error::io("read", &path, e))?;
                let (compression, media_type) = match Compression::sniff(head) {
                    Compression::Gzip => (Compression::Gzip, MediaType::ImageLayerGzip),
                    Compression::Zstd => (Compression::Zstd, MediaType::ImageLayerZstd),
                    Compression::None => (Compression::None, MediaType::ImageLayer),
                };
                let (digest, size) = self.put_blob_from(reader)?;
                // An uncompressed layer's digest is its diff ID; a mismatch means a damaged archive.
                if compression == Compression::None && digest.as_str() != diff_id {
                    return Err(Error::invalid(
                        what,
                        format!("layer {member} hashes to {digest}, but the config says {diff_id}"),
                    ));
                }
                layers.push(Descriptor::new(media_type, size, digest.to_oci()));
            }
            let desc = self.put_image_manifest(&config_data, layers, None)?;
            for r in references {
                self.tag(&r, desc.clone())?;
                names.push(r.to_string());
            }
        }
        if names.is_empty() {
            return Err(Error::invalid(what, "the archive holds no tagged image"));
        }
        Ok(names)
    }

    /// Unpack a tar stream into a temp directory inside the store.
    fn unpack(&self, stream: impl Read, what: &str) -> Result<Unpacked> {
        let tmp_root = self.path().join(".keel-tmp");
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp_root)
            .map_err(|e| Error::io("create a directory in", &tmp_root, e))?;
        let mut links = HashMap::new();
        let mut archive = tar::Archive::new(stream);
        let bad_tar = |e: io::Error| Error::io("read the archive", what, e);
        for entry in archive.entries().map_err(bad_tar)? {
            let mut entry = entry.map_err(bad_tar)?;
            let member = entry.path().map_err(bad_tar)?.into_owned();
            let rel = confine(&member, Path::new("")).ok_or_else(|| {
                Error::invalid(
                    what,
                    format!("member {} escapes the archive", member.display()),
                )
            })?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let dest = dir.path().join(&rel);
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
                    }
                    let mut out = File::create(&dest).map_err(|e| Error::io("create", &dest, e))?;
                    io::copy(&mut entry, &mut out).map_err(|e| Error::io("write", &dest, e))?;
                }
                tar::EntryType::Directory => {
                    fs::create_dir_all(&dest).map_err(|e| Error::io("create", &dest, e))?;
                }
                kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let target = entry
                        .link_name()
                        .map_err(bad_tar)?
                        .ok_or_else(|| {
                            Error::invalid(what, format!("link {} has no target", member.display()))
                        })?
                        .into_owned();
                    // Symlinks are relative to their directory, hard links to the archive root.
                    let base = if kind == tar::EntryType::Symlink {
                        rel.parent().map(Path::to_path_buf).unwrap_or_default()
                    } else {
                        PathBuf::new()
                    };
                    let resolved = confine(&target, &base).ok_or_else(|| {
                        Error::invalid(
                            what,
                            format!("link {} points outside the archive", member.display()),
                        )
                    })?;
                    links.insert(rel, resolved);
                }
                _ => {}
            }
        }
        Ok(Unpacked { dir, links })
    }

    /// Write the image `reference` names (with every platform the store holds) as an OCI
    /// archive at `path`, tagged with the full reference. Written atomically.
    pub fn export(&self, reference: &Reference, path: &Path) -> Result<()> {
        let name = reference.to_string();
        let top = self.resolve(reference)?.ok_or_else(|| Error::NotFound {
            reference: name.clone(),
            store: self.path().to_owned(),
        })?;
        let layout = self.layout();
        let blobs = layout.reachable(&top).map_err(|e| e.for_image(&name))?;

        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(parent)
            .map_err(|e| Error::io("create a file in", parent, e))?;
        let mut builder = tar::Builder::new(BufWriter::new(tmp));
        let io_err = |e: io::Error| Error::io("write", path, e);

        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, 0, 0o755);
            builder
                .append_data(&mut h, dir, io::empty())
                .map_err(io_err)?;
        }
        let layout_json = br#"{"imageLayoutVersion":"1.0.0"}"#;
        let mut h = header(tar::EntryType::Regular, layout_json.len() as u64, 0o644);
        builder
            .append_data(&mut h, "oci-layout", &layout_json[..])
            .map_err(io_err)?;
        let mut entry = top.clone();
        entry.set_annotations(Some(HashMap::from([(REF_NAME.to_owned(), name.clone())])));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        });
        let index = store::canonical_json(&index).map_err(|e| Error::json("index.json", e))?;
        let mut h = header(tar::EntryType::Regular, index.len() as u64, 0o644);
        builder
            .append_data(&mut h, "index.json", &index[..])
            .map_err(io_err)?;

        for blob in &blobs {
            let blob_path = layout.blob_path(&blob.digest);
            let len = fs::metadata(&blob_path)
                .map_err(|e| Error::io("read", &blob_path, e))?
                .len();
            let mut reader = layout.open_blob(&blob.digest, blob.size)?;
            let mut h = header(tar::EntryType::Regular, len, 0o644);
            let member = format!("blobs/sha256/{}", blob.digest.hex());
            builder
                .append_data(&mut h, &member, &mut reader)
                .map_err(|e| Error::io("read", &blob_path, e).for_image(&name))?;
            // tar stops after `len` bytes; one more read reaches EOF, where the digest is checked.
            io::copy(&mut reader, &mut io::sink())
                .map_err(|e| Error::io("read", &blob_path, e).for_image(&name))?;
        }
        let writer = builder.into_inner().map_err(io_err)?;
        let tmp = writer.into_inner().map_err(|e| io_err(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(path).map_err(|e| io_err(e.error))?;
        Ok(())
    }
}

/// A tar header with fixed owner and time, so exports are reproducible.
fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Where a layout keeps the blob `d`.
#[cfg(test)]
fn blob_file(root: &Path, d: &crate::digest::Digest) -> PathBuf {
    root.join("blobs/sha256").join(d.hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::digest::Digest;
    use crate::store::tests::{config_with_label, store_with_multi, tar_with};
    use std::io::Write;
    use std::process::Command;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn export_import_round_trip_keeps_digests() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, index) = store_with_multi(dir.path());
        let archive = dir.path().join("multi.tar");
        store.export(&r, &archive).unwrap();
        // Reproducible: a second export is byte-identical.
        let again = dir.path().join("again.tar");
        store.export(&r, &again).unwrap();
        assert_eq!(fs::read(&archive).unwrap(), fs::read(&again).unwrap());

        let other = Store::open(dir.path().join("other")).unwrap();
        let names = other.import(&archive).unwrap();
        assert_eq!(names, ["docker.io/library/multi:1"]);
        assert_eq!(other.resolve(&r).unwrap().unwrap().digest(), index.digest());
        for arch in Arch::ALL {
            let a = store.image(&r, arch).unwrap();
            let b = other.image(&r, arch).unwrap();
            assert_eq!(a.manifest_digest, b.manifest_digest);
            assert_eq!(a.label("arch"), b.label("arch"));
        }
        // Importing twice is harmless.
        assert_eq!(other.import(&archive).unwrap(), names);
    }

    #[test]
    fn import_layout_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _) = store_with_multi(dir.path());
        let other = Store::open(dir.path().join("other")).unwrap();
        let names = other.import(store.path()).unwrap();
        assert_eq!(names, [r.to_string()]);
        assert!(other.image(&r, Arch::Aarch64).is_ok());
        let not_layout = dir.path().join("empty");
        fs::create_dir(&not_layout).unwrap();
        let err = other.import(&not_layout).unwrap_err().to_string();
        assert!(err.contains("no oci-layout"), "{err}");
    }

    #[test]
    fn export_fails_on_tampered_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _) = store_with_multi(dir.path());
        let img = store.image(&r, Arch::X86_64).unwrap();
        let layer = store::descriptor_digest(&img.layers()[0]).unwrap();
        let path = blob_file(store.path(), &layer);
        let mut data = fs::read(&path).unwrap();
        data[4] ^= 1;
        fs::write(&path, data).unwrap();
        let out = dir.path().join("out.tar");
        let err = store.export(&r, &out).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "blob {layer} of docker.io/library/multi:1 is corrupt"
            )),
            "{err}"
        );
        assert!(!out.exists(), "no half-written output");
    }

    /// A `docker save`-style archive: manifest.json, config, layer tars (one reached through a
    /// symlink, as docker writes duplicate layers).
    fn docker_archive(gzip: bool) -> (Vec<u8>, Vec<u8>) {
        let layer_a = tar_with("etc/a", b"a\n");
        let layer_b = tar_with("etc/b", b"b\n");
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"from": "docker"}, "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [
                Digest::of(&layer_a).to_string(), Digest::of(&layer_b).to_string()]},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_name = format!("{}.json", Digest::of(&config).hex());
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": ["example/app:1.0", "localhost:5000/app:dev"],
            "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
        }]);
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("manifest.json", &manifest[..]),
            (config_name.as_str(), &config[..]),
            ("aaa/layer.tar", &layer_a[..]),
            ("ccc/layer.tar", &layer_b[..]),
        ] {
            let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, "bbb/layer.tar", "../ccc/layer.tar")
            .unwrap();
        let tar = b.into_inner().unwrap();
        let tar = if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar).unwrap();
            enc.finish().unwrap()
        } else {
            tar
        };
        (tar, layer_b)
    }

    #[test]
    fn import_docker_archive() {
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (archive, layer_b) = docker_archive(gzip);
            let path = dir.path().join("docker.tar");
            fs::write(&path, archive).unwrap();
            let store = Store::open(dir.path().join("store")).unwrap();
            let names = store.import(&path).unwrap();
            assert_eq!(
                names,
                ["docker.io/example/app:1.0", "localhost:5000/app:dev"]
            );
            let img = store
                .image(&names[0].parse().unwrap(), Arch::X86_64)
                .unwrap();
            assert_eq!(img.label("from"), Some("docker"));
            assert_eq!(img.layers().len(), 2);
            assert_eq!(
                img.layers()[1].digest().as_ref(),
                Digest::of(&layer_b).as_str()
            );
            let mut content = Vec::new();
            let mut r = store.open_layer(&img.layers()[1]).unwrap();
            r.read_to_end(&mut content).unwrap();
            r.finish().unwrap();
            assert_eq!(content, layer_b);
        }
    }

    #[test]
    fn import_refuses_escaping_members_and_bad_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();

        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, "evil", "../../etc/passwd").unwrap();
        let path = dir.path().join("evil.tar");
        fs::write(&path, b.into_inner().unwrap()).unwrap();
        let err = store.import(&path).unwrap_err().to_string();
        assert!(err.contains("points outside the archive"), "{err}");

        let layer = tar_with("x", b"x");
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"other").to_string()]},
        });
        let manifest =
            serde_json::json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}]);
        let tar = tar_of(&[
            ("manifest.json", &serde_json::to_vec(&manifest).unwrap()),
            ("c.json", &serde_json::to_vec(&config).unwrap()),
            ("l.tar", &layer),
        ]);
        let path = dir.path().join("bad.tar");
        fs::write(&path, tar).unwrap();
        let err = store.import(&path).unwrap_err().to_string();
        assert!(err.contains("but the config says"), "{err}");

        let path = dir.path().join("junk.tar");
        fs::write(&path, tar_of(&[("hello", b"hi")])).unwrap();
        let err = store.import(&path).unwrap_err().to_string();
        assert!(err.contains("neither an OCI archive"), "{err}");
    }

    #[test]
    fn bare_tags_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let src = Store::open(dir.path().join("src")).unwrap();
        let d = src
            .write_image(
                Arch::X86_64,
                config_with_label("a", "b"),
                &[tar_with("f", b"f")],
            )
            .unwrap();
        // Write a layout whose only tag is a bare "v1", as umoci does.
        let mut d2 = d.clone();
        d2.set_annotations(Some(HashMap::from([(
            REF_NAME.to_owned(),
            "v1".to_owned(),
        )])));
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [d2]});
        fs::write(
            src.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        let dst = Store::open(dir.path().join("dst")).unwrap();
        let err = dst.import(src.path()).unwrap_err().to_string();
        assert!(err.contains("full reference"), "{err}");
    }

    /// Third-party OCI tools are installed by scripts/setup.sh (and in CI): a missing one fails.
    fn require(tool: &str) {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{tool} is not installed: run scripts/setup.sh");
    }

    /// skopeo reads what keel exports and writes what keel imports.
    #[test]
    fn skopeo_interoperates() {
        require("skopeo");
        let dir = tempfile::tempdir().unwrap();
        let (store, r, _) = store_with_multi(dir.path());
        // keel store → skopeo oci layout (by the full reference as ref.name).
        let copy = dir.path().join("copy");
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--all", "--quiet"])
            .arg(format!("oci:{}:{r}", store.path().display()))
            .arg(format!("oci:{}:docker.io/library/copied:2", copy.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // skopeo oci layout → keel.
        let names = store.import(&copy).unwrap();
        assert_eq!(names, ["docker.io/library/copied:2"]);
        let copied = store
            .image(&names[0].parse().unwrap(), Arch::Aarch64)
            .unwrap();
        assert_eq!(copied.label("arch"), Some("arm"));
        // keel export → skopeo oci-archive reader → skopeo docker-archive → keel import.
        let archive = dir.path().join("x.tar");
        store.export(&r, &archive).unwrap();
        let docker = dir.path().join("docker.tar");
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "--override-arch",
                "arm64",
                "copy",
                "--quiet",
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!(
                "docker-archive:{}:example.com/from/skopeo:3",
                docker.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names = store.import(&docker).unwrap();
        assert_eq!(names, ["example.com/from/skopeo:3"]);
        let img = store
            .image(&names[0].parse().unwrap(), Arch::Aarch64)
            .unwrap();
        assert_eq!(img.label("arch"), Some("arm"));
        assert_eq!(img.layers().len(), 2);
    }

    /// umoci builds an image keel imports.
    #[test]
    fn umoci_layout_imports() {
        require("umoci");
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let image = format!("{}:docker.io/umoci/test:1", layout.display());
        let run = |args: &[&str]| {
            let out = Command::new("umoci").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "umoci {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["init", "--layout", layout.to_str().unwrap()]);
        run(&["new", "--image", &image]);
        run(&[
            "config",
            "--image",
            &image,
            "--config.label",
            "made.by=umoci",
            "--architecture",
            "amd64",
        ]);
        let store = Store::open(dir.path().join("store")).unwrap();
        let names = store.import(&layout).unwrap();
        assert_eq!(names, ["docker.io/umoci/test:1"]);
        let img = store
            .image(&names[0].parse().unwrap(), Arch::X86_64)
            .unwrap();
        assert_eq!(img.label("made.by"), Some("umoci"));

        // And umoci reads keel's store (its tags and a keel-written image).
        let own: Reference = "keel/own:2".parse().unwrap();
        let d = store
            .write_image(
                Arch::X86_64,
                config_with_label("by", "keel"),
                &[tar_with("f", b"f")],
            )
            .unwrap();
        store.tag(&own, d).unwrap();
        let out = Command::new("umoci")
            .args(["ls", "--layout"])
            .arg(store.path())
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(listed.contains("docker.io/keel/own:2"), "{listed}");
        assert!(listed.contains("docker.io/umoci/test:1"), "{listed}");
        let out = Command::new("umoci")
            .args(["stat", "--json", "--image"])
            .arg(format!("{}:{own}", store.path().display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
