//! keel's image handling: architectures, digests and references, the OCI image-layout store
//! every build reads images from, registry pulls, and import/export of OCI and Docker archives.
//!
//! ```no_run
//! use keel_image::{Arch, PullOptions, Reference, Store};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open(Store::default_path()?)?;
//! let r: Reference = "alpine:3.20".parse()?;
//! if store.resolve(&r)?.is_none() {
//!     store.pull(&r, Arch::X86_64, &PullOptions::default())?;
//! }
//! let image = store.image(&r, Arch::X86_64)?;
//! for i in 0..image.layers().len() {
//!     let mut tar = store.open_image_layer(&image, i)?;
//!     // ... unpack `tar` ...
//!     tar.finish()?; // verifies the blob's digest and the config's diff_id
//! }
//! # Ok(()) }
//! ```

mod arch;
mod archive;
pub mod attestation;
mod blob;
mod digest;
mod error;
pub mod fetch;
mod layer;
mod mirror;
mod reference;
mod registry;
mod store;

pub use arch::{Arch, ParseArchError};
pub use blob::{BlobReader, CorruptBlob};
pub use digest::{Digest, DigestError};
pub use error::{Error, Result};
pub use layer::{Compression, DiffIdMismatch, LayerReader};
pub use mirror::{Mirror, MirrorError, Mirrors};
pub use reference::{DEFAULT_REGISTRY, Reference, ReferenceError};
pub use registry::{
    BLOB_ALLOWANCE, BlobProgress, MANIFEST_ALLOWANCE, MIN_RATE, PULL_TIMEOUT_ENV, PullOptions,
    PullProgress, RegistryError, default_blob_deadline,
};
pub use store::{Image, REF_NAME, Store};

/// The OCI image types the API uses (descriptors, manifests, configurations).
pub use oci_spec::image as oci;
