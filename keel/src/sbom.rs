//! The SBOM of a build: one SPDX 2.3 JSON document (`<name>-sbom.spdx.json` beside the
//! outputs) listing every image of the build and what their own SBOMs say they hold.
//!
//! - Each image is a package (its reference, digest and platform manifest), contained in a
//!   package for the system the build makes, which the document describes.
//! - An image whose OCI index carries an SPDX attestation for the build's platform (as
//!   `keel pkg build` writes them for keel's packages, and BuildKit for `linuxkit pkg build`)
//!   contributes the packages of that document, contained in the image's package.
//!
//! The document is deterministic: its time is `SOURCE_DATE_EPOCH` (else LinuxKit's fixed
//! build time), its namespace a hash of its content, and everything in it sorted. See
//! docs/sbom.md.

use crate::assemble::Images;
use keel_image::{Arch, Digest, Image, Store};
use keel_pkg::spdx::{self, Document, ExtractedLicense, Package, Relationship};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the SBOM of image {reference}")]
    Read {
        reference: String,
        #[source]
        source: Box<keel_image::Error>,
    },
    #[error(transparent)]
    Document(#[from] keel_pkg::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: keel_rootfs::Error,
    },
}

type Result<T> = std::result::Result<T, Error>;

/// The SBOM's file name for outputs named `name`.
pub fn file_name(name: &str) -> String {
    format!("{name}-sbom.spdx.json")
}

/// The SBOM of a build named `name` of `images` for `arch`, dated `SOURCE_DATE_EPOCH` (else
/// LinuxKit's fixed build time, like every output).
pub fn document(store: &Store, name: &str, images: &Images, arch: Arch) -> Result<Vec<u8>> {
    let created = keel_rootfs::WriteOptions::from_env().mtime;
    document_at(store, name, images, arch, created)
}

/// [`document`] dated `created` (seconds since the epoch).
pub fn document_at(
    store: &Store,
    name: &str,
    images: &Images,
    arch: Arch,
    created: u64,
) -> Result<Vec<u8>> {
    let creators = vec![
        format!("Tool: keel-{}", env!("CARGO_PKG_VERSION")),
        "Organization: keel".to_owned(),
    ];
    let mut doc = Document::new(name, created, creators);
    let system = spdx::element_id("system", name);
    let mut root = Package::new(name, system.clone());
    root.primary_package_purpose = Some("OPERATING-SYSTEM".into());
    root.comment = Some(format!("the system keel built for {}", arch.uname()));
    root.license_concluded = Some(spdx::NOASSERTION.into());
    root.license_declared = Some(spdx::NOASSERTION.into());
    root.copyright_text = Some(spdx::NOASSERTION.into());
    doc.packages.push(root);
    doc.relationships
        .push(Relationship::new(spdx::DOCUMENT_ID, "DESCRIBES", &system));

    // The same image may be named by several spellings of its reference.
    let mut unique: BTreeMap<(String, String), &Image> = BTreeMap::new();
    for image in images.values() {
        unique
            .entry((image.reference.clone(), image.manifest_digest.to_string()))
            .or_insert(image);
    }
    let mut licenses: Vec<ExtractedLicense> = Vec::new();
    let mut missing = Vec::new();
    for (n, image) in unique.values().enumerate() {
        let id = format!("SPDXRef-image{n}");
        doc.packages.push(image_package(image, &id, arch));
        doc.relationships
            .push(Relationship::new(&system, "CONTAINS", &id));
        match attestations(store, image)? {
            Attested::Documents(docs) => {
                for (k, attested) in docs.into_iter().enumerate() {
                    let prefix = if k == 0 {
                        format!("image{n}")
                    } else {
                        format!("image{n}.{k}")
                    };
                    merge(&mut doc, &mut licenses, &id, &prefix, attested);
                }
            }
            Attested::NotInStore => missing.push(image.reference.clone()),
            Attested::None => {}
        }
    }
    if !missing.is_empty() {
        doc.creation_info.comment = Some(format!(
            "the SBOMs these images carry are not in keel's store (a pull keeps only the image's own platform), so their contents are not listed: {}",
            missing.join(", ")
        ));
    }
    define_license_refs(&doc.packages, &mut licenses);
    doc.has_extracted_licensing_infos = licenses;
    Ok(doc.finish()?)
}

/// Writes the SBOM as `<dir>/<name>-sbom.spdx.json` (through a temporary file renamed into
/// place) and returns its path.
pub fn write(dir: &Path, name: &str, sbom: &[u8]) -> Result<PathBuf> {
    use std::io::Write as _;
    let path = dir.join(file_name(name));
    let write_err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let mut file = keel_rootfs::AtomicFile::create(&path).map_err(write_err)?;
    file.write_all(sbom).map_err(|e| {
        write_err(keel_rootfs::Error::File {
            op: "write",
            path: path.clone(),
            source: e,
        })
    })?;
    file.commit().map_err(write_err)?;
    Ok(path)
}

/// The package standing for an image of the build.
fn image_package(image: &Image, id: &str, arch: Arch) -> Package {
    // The name as written without the digest, which is the version.
    let name = image
        .reference
        .split_once('@')
        .map_or(image.reference.as_str(), |(name, _)| name);
    let mut p = Package::new(name, id.to_owned());
    p.version_info = Some(image.digest.to_string());
    p.primary_package_purpose = Some("CONTAINER".into());
    p.license_concluded = Some(spdx::NOASSERTION.into());
    p.license_declared = Some(spdx::NOASSERTION.into());
    p.copyright_text = Some(spdx::NOASSERTION.into());
    if let Ok(reference) = image.reference.parse::<keel_image::Reference>() {
        let repository = reference.repository();
        let last = repository.rsplit('/').next().unwrap_or(repository);
        p.external_refs.push(spdx::ExternalRef::purl(format!(
            "pkg:oci/{}@{}?arch={}&repository_url={}",
            spdx::purl_escape(&last.to_ascii_lowercase()),
            spdx::purl_escape(image.digest.as_str()),
            arch.oci_name(),
            spdx::purl_escape(&format!("{}/{repository}", reference.registry())),
        )));
    }
    p.comment = Some(format!(
        "image {} ({}); its linux/{} manifest is {}",
        image.reference,
        image.digest,
        arch.oci_name(),
        image.manifest_digest
    ));
    p
}

/// What the store holds of an image's SBOMs.
enum Attested {
    Documents(Vec<Document>),
    /// The image's index names an attestation whose blobs the store does not have.
    NotInStore,
    /// No attestation (a single-platform image, or an index without one).
    None,
}

/// The SPDX documents attested for `image`'s platform manifest in its index.
fn attestations(store: &Store, image: &Image) -> Result<Attested> {
    if image.digest == image.manifest_digest {
        return Ok(Attested::None);
    }
    let read_err = |source| Error::Read {
        reference: image.reference.clone(),
        source: Box::new(source),
    };
    let Some(index) = read_json::<spdx::Index>(store, &image.digest).map_err(read_err)? else {
        return Ok(Attested::None);
    };
    let mut docs = Vec::new();
    let mut incomplete = false;
    for entry in index.manifests.iter().filter(|m| {
        m.annotation(spdx::REFERENCE_TYPE_ANNOTATION) == Some(spdx::ATTESTATION_MANIFEST)
            && m.annotation(spdx::REFERENCE_DIGEST_ANNOTATION)
                == Some(image.manifest_digest.as_str())
    }) {
        let Ok(digest) = entry.digest.parse::<Digest>() else {
            continue;
        };
        if !store.has_blob(&digest) {
            incomplete = true;
            continue;
        }
        let Some(manifest) = read_json::<spdx::Manifest>(store, &digest).map_err(read_err)? else {
            continue;
        };
        for layer in &manifest.layers {
            if layer.annotation(spdx::PREDICATE_TYPE_ANNOTATION) != Some(spdx::SPDX_PREDICATE) {
                continue;
            }
            let Ok(digest) = layer.digest.parse::<Digest>() else {
                continue;
            };
            if !store.has_blob(&digest) {
                incomplete = true;
                continue;
            }
            let data = store.read_blob(&digest).map_err(read_err)?;
            match serde_json::from_slice::<spdx::Statement>(&data) {
                Ok(s) if s.predicate_type == spdx::SPDX_PREDICATE => docs.push(s.predicate),
                Ok(_) => {}
                Err(e) => log::warn!(
                    "{}: the SBOM attestation {digest} is not an SPDX 2 JSON document keel can read ({e}); its packages are not listed",
                    image.reference
                ),
            }
        }
    }
    Ok(match (docs.is_empty(), incomplete) {
        (false, _) => Attested::Documents(docs),
        (true, true) => Attested::NotInStore,
        (true, false) => Attested::None,
    })
}

/// A JSON blob of the store; `None` (with a warning) when it does not parse as `T`.
fn read_json<T: serde::de::DeserializeOwned>(
    store: &Store,
    digest: &Digest,
) -> std::result::Result<Option<T>, keel_image::Error> {
    let data = store.read_blob(digest)?;
    match serde_json::from_slice(&data) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            log::warn!("SBOM: cannot read {digest} ({e}); skipping it");
            Ok(None)
        }
    }
}

/// Adds the packages of an image's attested document, their ids prefixed to keep images
/// apart: what the document describes (everything, if it says nothing) is contained in the
/// image's package; relationships between its packages are kept, others (to files, to other
/// documents) dropped.
fn merge(
    doc: &mut Document,
    licenses: &mut Vec<ExtractedLicense>,
    image_id: &str,
    prefix: &str,
    attested: Document,
) {
    let rename = |id: &str| format!("SPDXRef-{prefix}-{}", id.trim_start_matches("SPDXRef-"));
    let ids: BTreeSet<&str> = attested
        .packages
        .iter()
        .map(|p| p.spdx_id.as_str())
        .collect();
    let mut described = false;
    for r in &attested.relationships {
        let from_doc = r.spdx_element_id == attested.spdx_id;
        if from_doc
            && r.relationship_type == "DESCRIBES"
            && ids.contains(r.related_spdx_element.as_str())
        {
            described = true;
            doc.relationships.push(Relationship::new(
                image_id,
                "CONTAINS",
                &rename(&r.related_spdx_element),
            ));
        } else if ids.contains(r.spdx_element_id.as_str())
            && ids.contains(r.related_spdx_element.as_str())
        {
            doc.relationships.push(Relationship::new(
                &rename(&r.spdx_element_id),
                &r.relationship_type,
                &rename(&r.related_spdx_element),
            ));
        }
    }
    for mut p in attested.packages {
        if !described {
            doc.relationships
                .push(Relationship::new(image_id, "CONTAINS", &rename(&p.spdx_id)));
        }
        p.spdx_id = rename(&p.spdx_id);
        doc.packages.push(p);
    }
    for l in attested.has_extracted_licensing_infos {
        if !licenses.iter().any(|e| e.license_id == l.license_id) {
            licenses.push(l);
        }
    }
}

/// Defines every `LicenseRef-` the packages use that no attested document defined, so the
/// document stays valid.
fn define_license_refs(packages: &[Package], licenses: &mut Vec<ExtractedLicense>) {
    for p in packages {
        let exprs = [&p.license_declared, &p.license_concluded];
        for expr in exprs.into_iter().flatten() {
            for token in expr.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
                if token.starts_with("LicenseRef-")
                    && !licenses.iter().any(|l| l.license_id == token)
                {
                    licenses.push(ExtractedLicense {
                        license_id: token.to_owned(),
                        extracted_text: format!(
                            "{token}, which the SBOM of {} uses without giving its text",
                            p.name
                        ),
                        name: None,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_image::oci::{ConfigBuilder, ImageConfigurationBuilder};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn config() -> keel_image::oci::ImageConfiguration {
        ImageConfigurationBuilder::default()
            .config(ConfigBuilder::default().build().unwrap())
            .build()
            .unwrap()
    }

    /// A two-platform image; with `sbom`, each platform attested with a document listing one
    /// package (`pkg-<arch>`, licensed `LicenseRef-custom`).
    fn put(store: &Store, reference: &str, sbom: bool) -> Image {
        let mut manifests = Vec::new();
        for arch in Arch::ALL {
            let layer = vec![0u8; 1024];
            let desc = store.write_image(arch, config(), &[layer]).unwrap();
            let mut doc = Document::new("x", 0, vec!["Tool: test".into()]);
            let mut p = Package::new(&format!("pkg-{}", arch.uname()), "SPDXRef-p".into());
            p.version_info = Some("1.0".into());
            p.license_declared = Some("MIT AND LicenseRef-custom".into());
            doc.packages.push(p);
            doc.packages.push(Package::new("dep", "SPDXRef-dep".into()));
            doc.relationships.push(Relationship::new(
                spdx::DOCUMENT_ID,
                "DESCRIBES",
                "SPDXRef-p",
            ));
            doc.relationships
                .push(Relationship::new("SPDXRef-p", "DEPENDS_ON", "SPDXRef-dep"));
            doc.relationships
                .push(Relationship::new("SPDXRef-p", "CONTAINS", "SPDXRef-File-x"));
            manifests.push((arch, desc, doc));
        }
        let r: keel_image::Reference = reference.parse().unwrap();
        let index = if sbom {
            spdx::write_index_with_sboms(store, reference, manifests).unwrap()
        } else {
            let plain: Vec<_> = manifests.into_iter().map(|(a, d, _)| (a, d)).collect();
            store.write_index(&plain).unwrap()
        };
        store.tag(&r, index).unwrap();
        store.image(&r, Arch::X86_64).unwrap()
    }

    fn parse(data: &[u8]) -> Document {
        serde_json::from_slice(data).unwrap()
    }

    #[test]
    fn images_and_their_sboms_are_listed() {
        let (_d, store) = store();
        let mut images = Images::new();
        images.insert("a/with:1".into(), put(&store, "a/with:1", true));
        images.insert("a/without:1".into(), put(&store, "a/without:1", false));
        // Another spelling of the same image is listed once.
        images.insert("docker.io/a/with:1".into(), images["a/with:1"].clone());
        let doc = parse(&document_at(&store, "sys", &images, Arch::X86_64, 0).unwrap());
        assert_eq!(doc.spdx_version, "SPDX-2.3");
        assert_eq!(doc.creation_info.created, "1970-01-01T00:00:00Z");
        let names: Vec<&str> = doc.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dep",
                "docker.io/a/with:1",
                "docker.io/a/without:1",
                "pkg-x86_64",
                "sys"
            ]
        );
        let id = |name: &str| {
            doc.packages
                .iter()
                .find(|p| p.name == name)
                .unwrap()
                .spdx_id
                .clone()
        };
        let has = |a: &str, kind: &str, b: &str| {
            doc.relationships.contains(&Relationship::new(a, kind, b))
        };
        assert!(has(spdx::DOCUMENT_ID, "DESCRIBES", &id("sys")));
        assert!(has(&id("sys"), "CONTAINS", &id("docker.io/a/with:1")));
        assert!(has(&id("sys"), "CONTAINS", &id("docker.io/a/without:1")));
        assert!(has(
            &id("docker.io/a/with:1"),
            "CONTAINS",
            &id("pkg-x86_64")
        ));
        assert!(has(&id("pkg-x86_64"), "DEPENDS_ON", &id("dep")));
        // Relationships to elements not carried over (files) are dropped.
        assert_eq!(doc.relationships.len(), 5);
        let with = &doc.packages[1];
        assert_eq!(
            with.version_info.as_deref(),
            Some(images["a/with:1"].digest.as_str())
        );
        assert!(
            with.external_refs[0]
                .reference_locator
                .starts_with("pkg:oci/with@sha256%3A")
        );
        // The LicenseRef the attested document used without defining it is defined.
        assert_eq!(doc.has_extracted_licensing_infos.len(), 1);
        assert_eq!(
            doc.has_extracted_licensing_infos[0].license_id,
            "LicenseRef-custom"
        );
    }

    #[test]
    fn documents_are_deterministic() {
        let (_d, store) = store();
        let mut images = Images::new();
        images.insert("a/with:1".into(), put(&store, "a/with:1", true));
        images.insert("b/without:1".into(), put(&store, "b/without:1", false));
        let one = document_at(&store, "sys", &images, Arch::X86_64, 1_492_533_000).unwrap();
        let two = document_at(&store, "sys", &images, Arch::X86_64, 1_492_533_000).unwrap();
        assert_eq!(one, two);
        // Another time, another name or other images: another document and namespace.
        let later = document_at(&store, "sys", &images, Arch::X86_64, 1_500_000_000).unwrap();
        assert_ne!(later, one);
        assert_ne!(
            parse(&later).document_namespace,
            parse(&one).document_namespace
        );
        images.remove("b/without:1");
        let fewer = document_at(&store, "sys", &images, Arch::X86_64, 1_492_533_000).unwrap();
        assert_ne!(
            parse(&fewer).document_namespace,
            parse(&one).document_namespace
        );
        assert!(
            parse(&one)
                .document_namespace
                .starts_with("https://keel.invalid/spdx/sys-")
        );
    }

    #[test]
    fn attestations_missing_from_the_store_are_noted() {
        let (_d, store) = store();
        let image = put(&store, "a/with:1", true);
        // What a pull keeps: the index and the platform's own blobs, not the attestation.
        let index: spdx::Index =
            serde_json::from_slice(&store.read_blob(&image.digest).unwrap()).unwrap();
        let attestation: Digest = index.manifests[1].digest.parse().unwrap();
        let blob = store.path().join("blobs/sha256").join(attestation.hex());
        std::fs::remove_file(blob).unwrap();
        let mut images = Images::new();
        images.insert("a/with:1".into(), image);
        let doc = parse(&document_at(&store, "sys", &images, Arch::X86_64, 0).unwrap());
        assert_eq!(doc.packages.len(), 2);
        assert!(
            doc.creation_info
                .comment
                .unwrap()
                .contains("docker.io/a/with:1")
        );
    }

    #[test]
    fn write_puts_the_file_beside_the_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "sys", b"{}\n").unwrap();
        assert_eq!(path, dir.path().join("sys-sbom.spdx.json"));
        assert_eq!(std::fs::read(&path).unwrap(), b"{}\n");
    }
}
