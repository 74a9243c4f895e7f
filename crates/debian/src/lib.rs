//! Pinned Debian packages for the host tool: download them through the host's `apt` with a private
//! state (the host's apt configuration and lists are never touched, and foreign architectures
//! work), cache them by sha256, and unpack them without `dpkg`.
//!
//! - [`apt`]: [`Apt`] runs `apt-get`/`apt-cache` against a private state under a cache directory;
//!   [`download`] and [`resolve`] are the one-call forms.
//! - [`deb`]: [`unpack`] reads a `.deb` (`ar` + `control.tar.*` + `data.tar.*`) into
//!   [`DebContents`]: its `control` fields and its data tar, as a stream or as entries.
//! - [`control`]: deb822 paragraphs (`control` files, `apt-cache show` output).
//! - [`copyright`]: machine-readable `copyright` files (DEP-5) and their SPDX licence ids.
//! - [`compression`]: the decompressors a `.deb` member or a compressed module may need.
//!
//! Architectures are Debian names (`amd64`, `arm64`).

pub mod apt;
mod ar;
pub mod compression;
pub mod control;
pub mod copyright;
pub mod deb;

pub use apt::{Apt, AptError, download, resolve};
pub use compression::Compression;
pub use control::Control;
pub use deb::{DebContents, DebEntry, DebError, EntryKind, unpack};

/// One exact package build: what a recipe pins and what [`download`] fetches and verifies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedPackage {
    /// Package name, e.g. `linux-image-6.1.0-56-cloud-arm64`.
    pub name: String,
    /// Exact Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// Debian architecture name (`amd64`, `arm64`).
    pub arch: String,
    /// Lower-case hex sha256 of the `.deb` file.
    pub sha256: String,
}

/// Maps a Rust/OCI-style architecture name to Debian's (`x86_64` → `amd64`, `aarch64` →
/// `arm64`); Debian names pass through. `None` for anything else.
pub fn debian_arch(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" | "amd64" => Some("amd64"),
        "aarch64" | "arm64" => Some("arm64"),
        _ => None,
    }
}

/// Where Debian's archive publishes a package, from its `control` paragraph:
/// `https://deb.debian.org/debian/pool/<component>/<prefix>/<source>/<name>_<version>_<arch>.deb`
/// (the component from `Section:`, the source from `Source:`, the version without its epoch).
/// `None` when a field it needs is missing.
pub fn archive_url(control: &Control) -> Option<String> {
    let name = control.get("Package")?;
    let version = control.get("Version")?;
    let arch = control.get("Architecture")?;
    let source = control
        .get("Source")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or(name);
    let component = match control.get("Section").and_then(|s| s.split_once('/')) {
        Some((component, _)) => component,
        None => "main",
    };
    let prefix = if source.starts_with("lib") && source.len() > 3 {
        source.get(..4)?
    } else {
        source.get(..1)?
    };
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    Some(format!(
        "https://deb.debian.org/debian/pool/{component}/{prefix}/{source}/{name}_{version}_{arch}.deb"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_map() {
        assert_eq!(debian_arch("x86_64"), Some("amd64"));
        assert_eq!(debian_arch("arm64"), Some("arm64"));
        assert_eq!(debian_arch("riscv64"), None);
    }

    #[test]
    fn archive_urls_follow_the_pool_layout() {
        let c = Control::parse(
            "Package: libssl3\nSource: openssl (3.0.15-1)\nVersion: 1:3.0.15-1~deb12u1+b1\nArchitecture: amd64\nSection: libs\n",
        )
        .unwrap();
        assert_eq!(
            archive_url(&c).unwrap(),
            "https://deb.debian.org/debian/pool/main/o/openssl/libssl3_3.0.15-1~deb12u1+b1_amd64.deb"
        );
        let c = Control::parse(
            "Package: libfoo1\nVersion: 2\nArchitecture: all\nSection: contrib/libs\n",
        )
        .unwrap();
        assert_eq!(
            archive_url(&c).unwrap(),
            "https://deb.debian.org/debian/pool/contrib/libf/libfoo1/libfoo1_2_all.deb"
        );
        assert_eq!(archive_url(&Control::parse("Package: x\n").unwrap()), None);
    }
}
