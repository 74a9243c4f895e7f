//! SPDX 2.3 documents (JSON, typed) and the in-toto attestations that carry them in an OCI
//! image index, the way BuildKit and LinuxKit's `pkg build` attach SBOMs to images.
//!
//! A package image records what it holds at `keel pkg build` time: for each architecture, an
//! attestation manifest in the image's index (platform `unknown/unknown`, annotated
//! `vnd.docker.reference.type: attestation-manifest` and `vnd.docker.reference.digest: <the
//! platform manifest>`) whose one layer is an in-toto statement (`application/vnd.in-toto+json`,
//! annotated `in-toto.io/predicate-type: https://spdx.dev/Document`) with the SPDX document as
//! its predicate. `keel build` (and `linuxkit build`) read them back from the index.
//!
//! Everything here is deterministic: equal inputs give equal bytes.

use crate::error::{Error, Result};
use keel_debian::copyright::{self, Copyright};
use keel_image::oci::{Descriptor, MediaType, Platform};
use keel_image::{Arch, Digest, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

pub const SPDX_VERSION: &str = "SPDX-2.3";
pub const DATA_LICENSE: &str = "CC0-1.0";
pub const DOCUMENT_ID: &str = "SPDXRef-DOCUMENT";
pub const NOASSERTION: &str = "NOASSERTION";
/// The SPDX licence list version the identifiers keel writes come from.
pub const LICENSE_LIST_VERSION: &str = "3.20";
/// The base of keel's document namespaces (a hash of the document follows).
pub const NAMESPACE_BASE: &str = "https://keel.invalid/spdx/";

pub use keel_image::attestation::{
    ATTESTATION_MANIFEST, PREDICATE_TYPE_ANNOTATION, REFERENCE_DIGEST_ANNOTATION,
    REFERENCE_TYPE_ANNOTATION, SPDX_PREDICATE,
};
pub const IN_TOTO_STATEMENT: &str = "https://in-toto.io/Statement/v0.1";
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn noassertion() -> String {
    NOASSERTION.to_owned()
}

/// An SPDX 2.3 document. Reading is lenient (documents of other tools omit what they may);
/// fields keel does not model (`files`, `snippets`, `annotations`) are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub spdx_version: String,
    pub data_license: String,
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub name: String,
    pub document_namespace: String,
    pub creation_info: CreationInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<Package>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relationships: Vec<Relationship>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub has_extracted_licensing_infos: Vec<ExtractedLicense>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationInfo {
    pub created: String,
    pub creators: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_list_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    pub name: String,
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier: Option<String>,
    #[serde(default = "noassertion")]
    pub download_location: String,
    #[serde(default)]
    pub files_analyzed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<Checksum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_concluded: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_declared: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copyright_text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_package_purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Package {
    /// A package with only a name and an id; everything else unasserted.
    pub fn new(name: &str, spdx_id: String) -> Package {
        Package {
            name: name.to_owned(),
            spdx_id,
            version_info: None,
            supplier: None,
            download_location: noassertion(),
            files_analyzed: false,
            checksums: Vec::new(),
            license_concluded: None,
            license_declared: None,
            copyright_text: None,
            external_refs: Vec::new(),
            primary_package_purpose: None,
            comment: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    pub algorithm: String,
    pub checksum_value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRef {
    pub reference_category: String,
    pub reference_type: String,
    pub reference_locator: String,
}

impl ExternalRef {
    /// A package URL (`pkg:deb/...`, `pkg:oci/...`).
    pub fn purl(locator: String) -> ExternalRef {
        ExternalRef {
            reference_category: "PACKAGE-MANAGER".into(),
            reference_type: "purl".into(),
            reference_locator: locator,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    pub spdx_element_id: String,
    pub relationship_type: String,
    pub related_spdx_element: String,
}

impl Relationship {
    pub fn new(from: &str, kind: &str, to: &str) -> Relationship {
        Relationship {
            spdx_element_id: from.to_owned(),
            relationship_type: kind.to_owned(),
            related_spdx_element: to.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractedLicense {
    pub license_id: String,
    pub extracted_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Document {
    /// A document with no elements yet; `created` is seconds since the epoch.
    pub fn new(name: &str, created: u64, creators: Vec<String>) -> Document {
        Document {
            spdx_version: SPDX_VERSION.into(),
            data_license: DATA_LICENSE.into(),
            spdx_id: DOCUMENT_ID.into(),
            name: name.to_owned(),
            document_namespace: String::new(),
            creation_info: CreationInfo {
                created: timestamp(created),
                creators,
                license_list_version: Some(LICENSE_LIST_VERSION.into()),
                comment: None,
            },
            packages: Vec::new(),
            relationships: Vec::new(),
            has_extracted_licensing_infos: Vec::new(),
        }
    }

    /// Sorts packages (by name, version and id), relationships and licences, drops repeated
    /// relationships, then sets the namespace to [`NAMESPACE_BASE`]`<name>-<sha256 of the
    /// document without it>` and returns the JSON (pretty, with a final newline).
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.packages.sort_by(|a, b| {
            (&a.name, &a.version_info, &a.spdx_id).cmp(&(&b.name, &b.version_info, &b.spdx_id))
        });
        self.relationships.sort();
        self.relationships.dedup();
        self.has_extracted_licensing_infos
            .sort_by(|a, b| a.license_id.cmp(&b.license_id));
        self.has_extracted_licensing_infos
            .dedup_by(|a, b| a.license_id == b.license_id);
        self.document_namespace = String::new();
        let json = |doc: &Document| {
            serde_json::to_vec_pretty(doc).map_err(|source| Error::Sbom {
                what: "SBOM",
                source,
            })
        };
        let hash = hex::encode(Sha256::digest(json(&self)?));
        self.document_namespace = format!("{NAMESPACE_BASE}{}-{hash}", id_chars(&self.name));
        let mut out = json(&self)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// `seconds` since the epoch as SPDX writes times: `YYYY-MM-DDThh:mm:ssZ` (UTC).
pub fn timestamp(seconds: u64) -> String {
    let epoch = std::time::UNIX_EPOCH;
    // Past what the clock can hold (not a date anyone sets) prints as the epoch, not a panic.
    let t = epoch
        .checked_add(std::time::Duration::from_secs(seconds))
        .unwrap_or(epoch);
    keel_bundle::time::rfc3339(t)
}

/// `text` with every character SPDX ids may not hold (anything but letters, digits, `.` and
/// `-`) replaced by `-`; `+` becomes `plus`.
pub fn id_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => out.push(c),
            '+' => out.push_str("plus"),
            _ => out.push('-'),
        }
    }
    out
}

/// An element id, `SPDXRef-<kind>-<text>` with `text` made safe.
pub fn element_id(kind: &str, text: &str) -> String {
    format!("SPDXRef-{kind}-{}", id_chars(text))
}

/// Percent-encodes what a purl component may not hold as it is.
pub fn purl_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the SBOM says of one Debian package.
#[derive(Debug, Clone, Copy)]
pub struct DebianPackage<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// The `.deb`'s sha256 (hex).
    pub sha256: &'a str,
    pub control: &'a keel_debian::Control,
    pub copyright: Option<&'a Copyright>,
    /// The architecture built for (the package's own `Architecture`, e.g. `all`, wins).
    pub arch: Arch,
}

impl DebianPackage<'_> {
    /// Adds the package to `doc` (described by it), with the `LicenseRef-` licences its
    /// copyright file uses; returns its element id.
    pub fn add_to(&self, doc: &mut Document, purpose: &str) -> String {
        let debian_arch = self
            .control
            .get("Architecture")
            .unwrap_or(self.arch.oci_name());
        let id = element_id(
            "deb",
            &format!("{}-{}-{debian_arch}", self.name, self.version),
        );
        let mut pkg = Package::new(self.name, id.clone());
        pkg.version_info = Some(self.version.to_owned());
        pkg.supplier = Some("Organization: Debian".into());
        if let Some(url) = keel_debian::archive_url(self.control) {
            pkg.download_location = url;
        }
        pkg.checksums.push(Checksum {
            algorithm: "SHA256".into(),
            checksum_value: self.sha256.to_owned(),
        });
        let (license, refs) = debian_license(self.name, self.copyright);
        pkg.license_declared = Some(license);
        pkg.license_concluded = Some(NOASSERTION.into());
        pkg.copyright_text = Some(NOASSERTION.into());
        pkg.external_refs.push(ExternalRef::purl(format!(
            "pkg:deb/debian/{}@{}?arch={debian_arch}",
            purl_escape(self.name),
            purl_escape(self.version)
        )));
        pkg.primary_package_purpose = Some(purpose.to_owned());
        for r in refs {
            if !doc
                .has_extracted_licensing_infos
                .iter()
                .any(|e| e.license_id == r.license_id)
            {
                doc.has_extracted_licensing_infos.push(r);
            }
        }
        doc.relationships
            .push(Relationship::new(DOCUMENT_ID, "DESCRIBES", &id));
        doc.packages.push(pkg);
        id
    }
}

/// The licence of a Debian package from its copyright file, as an SPDX expression, with the
/// `LicenseRef-` licences it uses: every `License:` of a machine-readable file, joined with
/// `AND`; `NOASSERTION` for a free-form or missing file.
pub fn debian_license(
    package: &str,
    copyright: Option<&Copyright>,
) -> (String, Vec<ExtractedLicense>) {
    let Some(c) = copyright else {
        return (noassertion(), Vec::new());
    };
    let mut refs = Vec::new();
    let mut parts: Vec<String> = Vec::new();
    for name in &c.licenses {
        let expr = dep5_expression(name, &mut |term| {
            let id = format!("LicenseRef-{}", id_chars(term));
            let text = c.text(term).map(str::to_owned).unwrap_or_else(|| {
                format!(
                    "\"{term}\", as /{} names it (Debian's machine-readable copyright format; the file gives no text for it)",
                    copyright::path(package)
                )
            });
            if !refs.iter().any(|r: &ExtractedLicense| r.license_id == id) {
                refs.push(ExtractedLicense {
                    license_id: id.clone(),
                    extracted_text: text,
                    name: Some(term.to_owned()),
                });
            }
            id
        });
        if let Some(expr) = expr
            && !parts.contains(&expr)
        {
            parts.push(expr);
        }
    }
    let expr = match parts.len() {
        0 => noassertion(),
        1 => parts.remove(0),
        _ => parts
            .iter()
            .map(|p| {
                if p.contains(' ') {
                    format!("({p})")
                } else {
                    p.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" AND "),
    };
    (expr, refs)
}

/// One DEP-5 licence field name (`GPL-2+ or Artistic`, `GPL-2+ with OpenSSL exception`,
/// `A or B, and C`) as an SPDX expression: short names with an SPDX id become it, others
/// (and terms with an exception SPDX does not list) become what `license_ref` returns.
fn dep5_expression(name: &str, license_ref: &mut dyn FnMut(&str) -> String) -> Option<String> {
    let mut out: Option<String> = None;
    for (i, segment) in name.split(',').enumerate() {
        let mut words: Vec<&str> = segment.split_whitespace().collect();
        let mut lead = "AND";
        if i > 0
            && let Some(op) = words.first().and_then(|w| operator(w))
        {
            lead = op;
            words.remove(0);
        }
        let mut expr = String::new();
        let mut term: Vec<&str> = Vec::new();
        let mut pending: Option<&str> = None;
        for w in words {
            if let Some(op) = operator(w) {
                if !term.is_empty() {
                    expr.push_str(&spdx_term(&term.join(" "), license_ref));
                    term.clear();
                }
                pending = Some(op);
                continue;
            }
            if term.is_empty()
                && !expr.is_empty()
                && let Some(op) = pending.take()
            {
                expr.push_str(&format!(" {op} "));
            }
            term.push(w);
        }
        if !term.is_empty() {
            expr.push_str(&spdx_term(&term.join(" "), license_ref));
        }
        if expr.is_empty() {
            continue;
        }
        out = Some(match out {
            None => expr,
            Some(before) => format!("({before}) {lead} ({expr})"),
        });
    }
    out
}

fn operator(word: &str) -> Option<&'static str> {
    match word.to_ascii_lowercase().as_str() {
        "and" => Some("AND"),
        "or" => Some("OR"),
        _ => None,
    }
}

/// Licence exceptions DEP-5 files name, by their SPDX id.
const EXCEPTIONS: &[(&str, &str)] = &[
    ("autoconf", "Autoconf-exception-2.0"),
    ("bison", "Bison-exception-2.2"),
    ("classpath", "Classpath-exception-2.0"),
    ("font", "Font-exception-2.0"),
    ("gcc-runtime-library", "GCC-exception-3.1"),
    ("libtool", "Libtool-exception"),
];

fn spdx_term(term: &str, license_ref: &mut dyn FnMut(&str) -> String) -> String {
    let lower = term.to_ascii_lowercase();
    if let Some((base, exception)) = lower.split_once(" with ") {
        let exception = exception.trim_end_matches("exception").trim();
        let base_id = copyright::spdx_id(&term[..base.len()]);
        let exception_id = EXCEPTIONS
            .iter()
            .find(|(n, _)| *n == exception)
            .map(|(_, id)| *id);
        return match (base_id, exception_id) {
            (Some(b), Some(e)) => format!("{b} WITH {e}"),
            _ => license_ref(term),
        };
    }
    match copyright::spdx_id(term) {
        Some(id) => id.to_owned(),
        None => license_ref(term),
    }
}

// ---------------------------------------------------------------------------------------------
// Attestations in an OCI index.

/// An in-toto statement with an SPDX predicate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statement {
    #[serde(rename = "_type")]
    pub kind: String,
    pub predicate_type: String,
    #[serde(default)]
    pub subject: Vec<Subject>,
    pub predicate: Document,
}

/// The header of an in-toto statement, to check its predicate type before reading the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatementHeader {
    #[serde(default)]
    pub predicate_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

/// A descriptor as keel writes and reads them in indexes and manifests (fields in sorted order,
/// so the JSON is canonical).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    pub digest: String,
    #[serde(default)]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub size: u64,
}

impl Entry {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An image index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<Entry>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub schema_version: u32,
}

/// An image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Entry,
    #[serde(default)]
    pub layers: Vec<Entry>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub schema_version: u32,
}

#[derive(Debug, Serialize)]
struct AttestationConfig {
    architecture: &'static str,
    config: BTreeMap<String, String>,
    os: &'static str,
    rootfs: RootFs,
}

#[derive(Debug, Serialize)]
struct RootFs {
    diff_ids: Vec<String>,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| Error::Sbom { what, source })
}

fn size_of(data: &[u8]) -> u64 {
    u64::try_from(data.len()).unwrap_or(u64::MAX)
}

/// Stores one architecture's SBOM as an attestation manifest for the platform manifest
/// `subject` (of the image `name`); returns the index entry that attaches it.
fn put_attestation(store: &Store, name: &str, subject: &Digest, sbom: Document) -> Result<Entry> {
    let statement = Statement {
        kind: IN_TOTO_STATEMENT.into(),
        predicate_type: SPDX_PREDICATE.into(),
        subject: vec![Subject {
            name: name.to_owned(),
            digest: BTreeMap::from([("sha256".to_owned(), subject.hex().to_owned())]),
        }],
        predicate: sbom,
    };
    let statement = to_json("in-toto statement", &statement)?;
    let statement_digest = store.put_blob(&statement)?;
    let config = to_json(
        "attestation config",
        &AttestationConfig {
            architecture: "unknown",
            config: BTreeMap::new(),
            os: "unknown",
            rootfs: RootFs {
                diff_ids: vec![statement_digest.to_string()],
                kind: "layers",
            },
        },
    )?;
    let config_digest = store.put_blob(&config)?;
    let manifest = Manifest {
        config: Entry {
            annotations: None,
            digest: config_digest.to_string(),
            media_type: OCI_CONFIG.into(),
            platform: None,
            size: size_of(&config),
        },
        layers: vec![Entry {
            annotations: Some(BTreeMap::from([(
                PREDICATE_TYPE_ANNOTATION.to_owned(),
                SPDX_PREDICATE.to_owned(),
            )])),
            digest: statement_digest.to_string(),
            media_type: IN_TOTO_MEDIA_TYPE.into(),
            platform: None,
            size: size_of(&statement),
        }],
        media_type: OCI_MANIFEST.into(),
        schema_version: 2,
    };
    let manifest = to_json("attestation manifest", &manifest)?;
    let digest = store.put_blob(&manifest)?;
    let mut platform = Platform::default();
    platform.set_architecture("unknown".into());
    platform.set_os("unknown".into());
    Ok(Entry {
        annotations: Some(BTreeMap::from([
            (REFERENCE_DIGEST_ANNOTATION.to_owned(), subject.to_string()),
            (
                REFERENCE_TYPE_ANNOTATION.to_owned(),
                ATTESTATION_MANIFEST.to_owned(),
            ),
        ])),
        digest: digest.to_string(),
        media_type: OCI_MANIFEST.into(),
        platform: Some(platform),
        size: size_of(&manifest),
    })
}

/// Writes an image index over per-architecture manifests (as [`Store::write_index`] does),
/// each followed by the attestation manifest carrying its SBOM. Returns the index's descriptor.
pub fn write_index_with_sboms(
    store: &Store,
    name: &str,
    manifests: Vec<(Arch, Descriptor, Document)>,
) -> Result<Descriptor> {
    // The plain index gives each platform entry exactly as the store writes it.
    let plain: Vec<(Arch, Descriptor)> =
        manifests.iter().map(|(a, d, _)| (*a, d.clone())).collect();
    let plain = store.write_index(&plain)?;
    let plain_digest = Digest::try_from(plain.digest())?;
    let plain: Index =
        serde_json::from_slice(&store.read_blob(&plain_digest)?).map_err(|source| Error::Sbom {
            what: "image index",
            source,
        })?;
    let mut entries = Vec::new();
    for ((_, _, sbom), entry) in manifests.into_iter().zip(plain.manifests) {
        let subject: Digest = entry.digest.parse()?;
        let attestation = put_attestation(store, name, &subject, sbom)?;
        entries.push(entry);
        entries.push(attestation);
    }
    let index = Index {
        manifests: entries,
        media_type: OCI_INDEX.into(),
        schema_version: 2,
    };
    let data = to_json("image index", &index)?;
    let digest = store.put_blob(&data)?;
    Ok(Descriptor::new(
        MediaType::ImageIndex,
        size_of(&data),
        digest.to_oci(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_492_533_000), "2017-04-18T16:30:00Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn dep5_names_become_spdx_expressions() {
        let c = copyright::parse(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
             Files: *\nLicense: GPL-2+\n\n\
             Files: a/*\nLicense: BSD-3-clause or Expat\n\n\
             Files: b/*\nLicense: public-domain\n\n\
             Files: c/*\nLicense: GPL-3+ with autoconf exception\n\n\
             Files: d/*\nLicense: GPL-2+ with OpenSSL exception\n\n\
             License: public-domain\n Nobody owns this.\n",
        )
        .unwrap();
        let (expr, refs) = debian_license("hello", Some(&c));
        assert_eq!(
            expr,
            "GPL-2.0-or-later AND (BSD-3-Clause OR MIT) AND LicenseRef-public-domain AND \
             (GPL-3.0-or-later WITH Autoconf-exception-2.0) AND LicenseRef-GPL-2plus-with-OpenSSL-exception"
        );
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].license_id, "LicenseRef-public-domain");
        assert_eq!(refs[0].extracted_text, "Nobody owns this.");
        assert!(
            refs[1]
                .extracted_text
                .contains("usr/share/doc/hello/copyright")
        );
        assert_eq!(debian_license("x", None).0, NOASSERTION);
        // Commas group.
        let mut r = |t: &str| format!("LicenseRef-{t}");
        assert_eq!(
            dep5_expression("GPL-2 or MIT, and ISC", &mut r).unwrap(),
            "(GPL-2.0-only OR MIT) AND (ISC)"
        );
    }

    #[test]
    fn ids_and_purls_are_safe() {
        assert_eq!(
            element_id("deb", "libstdc++6_12.2"),
            "SPDXRef-deb-libstdcplusplus6-12.2"
        );
        assert_eq!(purl_escape("1:1.35.0-4+b3"), "1%3A1.35.0-4%2Bb3");
    }

    #[test]
    fn finish_is_deterministic_and_sorted() {
        let mut doc = Document::new("x", 0, vec!["Tool: keel".into()]);
        doc.packages.push(Package::new("b", "SPDXRef-b".into()));
        doc.packages.push(Package::new("a", "SPDXRef-a".into()));
        doc.relationships
            .push(Relationship::new(DOCUMENT_ID, "DESCRIBES", "SPDXRef-b"));
        doc.relationships
            .push(Relationship::new(DOCUMENT_ID, "DESCRIBES", "SPDXRef-a"));
        let mut other = doc.clone();
        other.packages.reverse();
        other.relationships.reverse();
        let (a, b) = (doc.finish().unwrap(), other.finish().unwrap());
        assert_eq!(a, b);
        let back: Document = serde_json::from_slice(&a).unwrap();
        assert_eq!(back.packages[0].name, "a");
        assert!(
            back.document_namespace
                .starts_with("https://keel.invalid/spdx/x-")
        );
        assert_eq!(back.creation_info.created, "1970-01-01T00:00:00Z");
    }
}
