//! How an image's SBOM travels in its OCI index (BuildKit's layout, which `linuxkit pkg build`
//! and `keel pkg build` write): an attestation manifest per platform (platform
//! `unknown/unknown`, annotated with [`REFERENCE_TYPE_ANNOTATION`] = [`ATTESTATION_MANIFEST`]
//! and [`REFERENCE_DIGEST_ANNOTATION`] = the platform manifest's digest), whose layers are
//! in-toto statements annotated with their [`PREDICATE_TYPE_ANNOTATION`]; an SBOM's is
//! [`SPDX_PREDICATE`]. A pull keeps the SPDX ones of the platform it pulls.

use oci_spec::image::Descriptor;

/// The in-toto predicate type of an SPDX document.
pub const SPDX_PREDICATE: &str = "https://spdx.dev/Document";
/// The layer annotation naming a statement's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// The index annotation saying what an entry is ([`ATTESTATION_MANIFEST`]).
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
/// The index annotation naming the manifest an attestation is about.
pub const REFERENCE_DIGEST_ANNOTATION: &str = "vnd.docker.reference.digest";
/// [`REFERENCE_TYPE_ANNOTATION`]'s value for an attestation manifest.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";
/// The largest SBOM statement a pull fetches (a large distribution image's is a few MiB).
pub const MAX_STATEMENT: u64 = 64 << 20;

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

/// Whether index entry `entry` is an attestation manifest about `manifest` (a digest).
pub fn attests(entry: &Descriptor, manifest: &str) -> bool {
    annotation(entry, REFERENCE_TYPE_ANNOTATION) == Some(ATTESTATION_MANIFEST)
        && annotation(entry, REFERENCE_DIGEST_ANNOTATION) == Some(manifest)
}

/// Whether attestation layer `layer` is an SPDX statement.
pub fn is_spdx(layer: &Descriptor) -> bool {
    annotation(layer, PREDICATE_TYPE_ANNOTATION) == Some(SPDX_PREDICATE)
}
