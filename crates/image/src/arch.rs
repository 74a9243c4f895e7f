//! The machine architectures keel builds for, and their names in OCI and in `uname -m`.

use std::fmt;
use std::str::FromStr;

/// A target architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// 64-bit x86 (`amd64` in OCI, `x86_64` in `uname -m`).
    X86_64,
    /// 64-bit ARM (`arm64` in OCI, `aarch64` in `uname -m`).
    Aarch64,
}

/// An architecture name that is not one keel supports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture {0:?}: expected amd64/x86_64 or arm64/aarch64")]
pub struct ParseArchError(String);

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The GOARCH-style name used in OCI platforms (`amd64`, `arm64`).
    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The kernel's name (`uname -m`: `x86_64`, `aarch64`).
    pub fn uname(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The architecture this program was compiled for. keel's host tool only builds for x86_64
    /// and aarch64; any other host is treated as x86_64.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The architecture as the `oci-spec` type.
    pub fn to_oci(self) -> oci_spec::image::Arch {
        match self {
            Arch::X86_64 => oci_spec::image::Arch::Amd64,
            Arch::Aarch64 => oci_spec::image::Arch::ARM64,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.oci_name())
    }
}

impl FromStr for Arch {
    type Err = ParseArchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Aarch64),
            other => Err(ParseArchError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_parse() {
        for arch in Arch::ALL {
            assert_eq!(arch.oci_name().parse::<Arch>(), Ok(arch));
            assert_eq!(arch.uname().parse::<Arch>(), Ok(arch));
        }
        assert_eq!("arm64".parse::<Arch>(), Ok(Arch::Aarch64));
        assert_eq!("x86_64".parse::<Arch>(), Ok(Arch::X86_64));
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = "riscv64".parse::<Arch>().unwrap_err();
        assert!(err.to_string().contains("riscv64"), "{err}");
        assert!("AMD64".parse::<Arch>().is_err());
    }

    #[test]
    fn oci_names_match_oci_spec() {
        assert_eq!(Arch::X86_64.to_oci().to_string(), "amd64");
        assert_eq!(Arch::Aarch64.to_oci().to_string(), "arm64");
    }
}
