//! keel's YAML format: LinuxKit's `linuxkit.yml` schema (plus a few keel extension fields),
//! parsed strictly with positions, merged across files, validated, and turned into OCI bundles.
//!
//! - [`load`] parses and merges [`Source`]s into a [`Config`]; every error renders as
//!   `FILE:LINE:COLUMN: message`.
//! - [`parse_label`] reads an image's `org.mobyproject.config` label.
//! - [`generate`] turns one image spec (+ image config + label) into a [`Bundle`]:
//!   `config.json` (OCI) and `runtime.json` ([`keel_bundle::Runtime`]).
//!
//! The schema (with the extension fields) is documented in [`schema`].

pub mod build_yml;
pub mod error;
pub mod load;
mod oci;
pub mod schema;
pub mod seccomp_default;
pub mod spec;
pub mod values;
mod yaml;

pub use error::{Error, Loc, Spanned};
pub use load::{IdMap, PkgResolver, Source, load, parse_label, resolve_id};
pub use schema::{
    Config, Device, DurationSpec, FileContent, FileSpec, Id, IdMapping, ImageFields, ImageSpec,
    Kernel, MetadataFormat, MountSpec, RuntimeSpec, Section, Volume,
};
pub use spec::{
    Bundle, ImageConfig, RootfsLayout, SpecContext, generate, image_label, rootfs_mounts,
};
