//! Kernel recipes: `kernel/<name>/recipe.yml`, which pins one distribution kernel package per
//! architecture and lists the modules a keel system ships. The format is described in the crate
//! documentation.

use std::path::{Path, PathBuf};

use keel_debian::PinnedPackage;
use serde::Deserialize;
use thiserror::Error;

/// The file name of a recipe inside its directory.
pub const RECIPE_FILE: &str = "recipe.yml";

/// Why a recipe could not be loaded or used.
#[derive(Debug, Error)]
pub enum RecipeError {
    /// The recipe file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The recipe file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the recipe schema (unknown keys included).
    #[error("{path}: invalid recipe")]
    Parse {
        /// The recipe file.
        path: PathBuf,
        /// The cause, with line and column.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A value is well-formed YAML but not acceptable.
    #[error("{path}: {problem}")]
    Invalid {
        /// The recipe file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The recipe pins no package for the requested architecture.
    #[error("{path}: no package for {arch}")]
    NoPackage {
        /// The recipe file.
        path: PathBuf,
        /// The architecture asked for.
        arch: String,
    },
}

/// One pinned package, as written in a recipe (its architecture is the key it is under).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagePin {
    /// Debian package name.
    pub name: String,
    /// Exact Debian version.
    pub version: String,
    /// sha256 of the `.deb`, lower-case hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Packages {
    x86_64: Option<PackagePin>,
    aarch64: Option<PackagePin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    name: String,
    #[serde(default)]
    version: Option<String>,
    packages: Packages,
    #[serde(default)]
    modules: Vec<String>,
}

/// A loaded, validated recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The recipe file it came from (for messages).
    pub path: PathBuf,
    /// Recipe name, e.g. `debian-cloud`.
    pub name: String,
    /// Informative upstream version.
    pub version: Option<String>,
    /// Package for x86_64.
    pub x86_64: Option<PackagePin>,
    /// Package for aarch64.
    pub aarch64: Option<PackagePin>,
    /// Modules to ship (dependencies are added automatically; `-` and `_` are equivalent).
    pub modules: Vec<String>,
}

impl Recipe {
    /// Loads `dir/recipe.yml`.
    pub fn load(dir: &Path) -> Result<Recipe, RecipeError> {
        let path = dir.join(RECIPE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| RecipeError::Read {
            path: path.clone(),
            source,
        })?;
        Recipe::parse(&text, &path)
    }

    /// Parses recipe text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Recipe, RecipeError> {
        let file: RecipeFile =
            serde_saphyr::from_str(text).map_err(|source| RecipeError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        let invalid = |problem: String| RecipeError::Invalid {
            path: path.to_owned(),
            problem,
        };
        if file.name.trim().is_empty() {
            return Err(invalid("name is empty".into()));
        }
        if file.packages.x86_64.is_none() && file.packages.aarch64.is_none() {
            return Err(invalid("packages pins no architecture".into()));
        }
        for (arch, pin) in [
            ("x86_64", &file.packages.x86_64),
            ("aarch64", &file.packages.aarch64),
        ] {
            let Some(pin) = pin else { continue };
            let hex = pin.sha256.len() == 64
                && pin
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !hex {
                return Err(invalid(format!(
                    "packages.{arch}.sha256 must be 64 lower-case hex digits"
                )));
            }
            if pin.name.is_empty() || pin.version.is_empty() {
                return Err(invalid(format!(
                    "packages.{arch} needs a name and a version"
                )));
            }
        }
        for module in &file.modules {
            let ok = !module.is_empty()
                && module
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(invalid(format!("bad module name {module:?}")));
            }
        }
        Ok(Recipe {
            path: path.to_owned(),
            name: file.name,
            version: file.version,
            x86_64: file.packages.x86_64,
            aarch64: file.packages.aarch64,
            modules: file.modules,
        })
    }

    /// The pinned package for `arch` (`x86_64`/`aarch64`, or Debian's `amd64`/`arm64`).
    pub fn package(&self, arch: &str) -> Result<PinnedPackage, RecipeError> {
        let no_package = || RecipeError::NoPackage {
            path: self.path.clone(),
            arch: arch.to_owned(),
        };
        let debian = keel_debian::debian_arch(arch).ok_or_else(no_package)?;
        let pin = match debian {
            "amd64" => self.x86_64.as_ref(),
            _ => self.aarch64.as_ref(),
        }
        .ok_or_else(no_package)?;
        Ok(PinnedPackage {
            name: pin.name.clone(),
            version: pin.version.clone(),
            arch: debian.to_owned(),
            sha256: pin.sha256.clone(),
        })
    }
}

/// The meta-package that follows a pinned kernel's flavour: Debian names its kernels
/// `linux-image-<ABI>-<flavour>` (`linux-image-6.1.0-56-cloud-amd64`) and the package that always
/// depends on the newest one `linux-image-<flavour>` (`linux-image-cloud-amd64`). `None` for a
/// name without an ABI part.
pub fn flavour_metapackage(package: &str) -> Option<String> {
    let rest = package.strip_prefix("linux-image-")?;
    let mut parts = rest.splitn(3, '-');
    let (version, abi, flavour) = (parts.next()?, parts.next()?, parts.next()?);
    let dotted = version.contains('.')
        && version
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let abi_number = !abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit());
    (dotted && abi_number && !flavour.is_empty()).then(|| format!("linux-image-{flavour}"))
}

impl Recipe {
    /// Rewrites the recipe file so that `arch` pins `new`, keeping every other byte: the line
    /// holding the old pin's sha256 must also hold its name and version (the flow style
    /// `{ name: …, version: "…", sha256: "…" }`), else nothing is written and the error says
    /// what to edit by hand. Returns the reloaded recipe.
    pub fn set_pin(&self, arch: &str, new: &PackagePin) -> Result<Recipe, RecipeError> {
        let old = self.package(arch)?;
        let text = std::fs::read_to_string(&self.path).map_err(|source| RecipeError::Read {
            path: self.path.clone(),
            source,
        })?;
        let by_hand = || RecipeError::Invalid {
            path: self.path.clone(),
            problem: format!(
                "cannot rewrite the {arch} pin automatically; set it by hand to name: {}, version: \"{}\", sha256: \"{}\"",
                new.name, new.version, new.sha256
            ),
        };
        let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
        let mut hits = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(&old.sha256))
            .map(|(i, _)| i);
        let (Some(index), None) = (hits.next(), hits.next()) else {
            return Err(by_hand());
        };
        let line = &lines[index];
        let quoted_version = format!("\"{}\"", old.version);
        if !line.contains(&old.name) || !line.contains(&quoted_version) {
            return Err(by_hand());
        }
        lines[index] = line
            .replacen(&old.sha256, &new.sha256, 1)
            .replacen(&old.name, &new.name, 1)
            .replacen(&quoted_version, &format!("\"{}\"", new.version), 1);
        let updated = lines.concat();
        let reloaded = Recipe::parse(&updated, &self.path)?;
        let other = if keel_debian::debian_arch(arch) == Some("amd64") {
            (&self.aarch64, &reloaded.aarch64)
        } else {
            (&self.x86_64, &reloaded.x86_64)
        };
        if reloaded.package(arch)?.sha256 != new.sha256 || other.0 != other.1 {
            return Err(by_hand());
        }
        let tmp = self.path.with_extension("yml.tmp");
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, &updated)?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            RecipeError::Read {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(reloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: debian-cloud
version: 6.1.192   # informative
packages:
  x86_64:  { name: linux-image-6.1.0-56-cloud-amd64, version: "6.1.192-2", sha256: "e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee" }
modules: [virtio_blk, virtio-rng]
"#;

    #[test]
    fn parses_a_recipe() {
        let recipe = Recipe::parse(GOOD, Path::new("k/recipe.yml")).unwrap();
        assert_eq!(recipe.name, "debian-cloud");
        assert_eq!(recipe.version.as_deref(), Some("6.1.192"));
        assert_eq!(recipe.modules, ["virtio_blk", "virtio-rng"]);
        let pkg = recipe.package("x86_64").unwrap();
        assert_eq!(pkg.arch, "amd64");
        assert_eq!(pkg.version, "6.1.192-2");
        assert_eq!(recipe.package("amd64").unwrap(), pkg);
        let err = recipe.package("aarch64").unwrap_err();
        assert!(err.to_string().contains("k/recipe.yml") && err.to_string().contains("aarch64"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        for text in [
            GOOD.replace("modules:", "modulez:"),
            GOOD.replace("x86_64:", "riscv64:"),
            GOOD.replace("sha256:", "digest:"),
        ] {
            let err = Recipe::parse(&text, Path::new("kernel/x/recipe.yml")).unwrap_err();
            assert!(matches!(err, RecipeError::Parse { .. }), "{err}");
            assert!(err.to_string().contains("kernel/x/recipe.yml"));
            let cause = std::error::Error::source(&err).unwrap().to_string();
            assert!(
                cause.contains("unknown field") && cause.contains("line "),
                "{cause}"
            );
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        let short = GOOD.replace("e7d02b94", "e7d0");
        assert!(matches!(
            Recipe::parse(&short, Path::new("r")),
            Err(RecipeError::Invalid { .. })
        ));
        let bad_module = GOOD.replace("virtio-rng", "\"../evil\"");
        assert!(matches!(
            Recipe::parse(&bad_module, Path::new("r")),
            Err(RecipeError::Invalid { .. })
        ));
    }

    #[test]
    fn flavours_follow_debian_names() {
        assert_eq!(
            flavour_metapackage("linux-image-6.1.0-56-cloud-amd64").as_deref(),
            Some("linux-image-cloud-amd64")
        );
        assert_eq!(
            flavour_metapackage("linux-image-6.12.48+deb12-arm64").as_deref(),
            None
        );
        assert_eq!(
            flavour_metapackage("linux-image-6.1.0-57-rt-arm64").as_deref(),
            Some("linux-image-rt-arm64")
        );
        for odd in [
            "linux-image-cloud-amd64",
            "linux-headers-6.1.0-5-amd64",
            "linux-image-6.1.0-x-amd64",
        ] {
            assert_eq!(flavour_metapackage(odd), None, "{odd}");
        }
    }

    #[test]
    fn set_pin_rewrites_one_line_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let aarch64 = format!(
            "  aarch64: {{ name: linux-image-6.1.0-56-cloud-arm64, version: \"6.1.192-2\", sha256: \"{}\" }}\nmodules:",
            "b".repeat(64)
        );
        let text = format!(
            "# a comment that stays\n{}",
            GOOD.trim_start().replace("modules:", &aarch64)
        );
        std::fs::write(dir.path().join(RECIPE_FILE), &text).unwrap();
        let recipe = Recipe::load(dir.path()).unwrap();
        let new = PackagePin {
            name: "linux-image-6.1.0-57-cloud-amd64".into(),
            version: "6.1.192-3".into(),
            sha256: "c".repeat(64),
        };
        let reloaded = recipe.set_pin("x86_64", &new).unwrap();
        assert_eq!(reloaded.x86_64.as_ref(), Some(&new));
        assert_eq!(reloaded.aarch64, recipe.aarch64);
        let written = std::fs::read_to_string(dir.path().join(RECIPE_FILE)).unwrap();
        assert_eq!(Recipe::load(dir.path()).unwrap(), reloaded);
        assert!(written.starts_with("# a comment that stays\n"));
        assert_eq!(written.lines().count(), text.lines().count());
        assert!(written.contains("version: 6.1.192   # informative"));

        // A pin spread over several lines is not guessed at: nothing is written.
        let block = GOOD.replace(
            "x86_64:  { name: linux-image-6.1.0-56-cloud-amd64, version: \"6.1.192-2\", sha256: ",
            "x86_64:\n    name: linux-image-6.1.0-56-cloud-amd64\n    version: \"6.1.192-2\"\n    sha256: ",
        ).replace("\" }", "\"");
        std::fs::write(dir.path().join(RECIPE_FILE), &block).unwrap();
        let recipe = Recipe::load(dir.path()).unwrap();
        let err = recipe.set_pin("x86_64", &new).unwrap_err();
        assert!(err.to_string().contains("set it by hand"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(RECIPE_FILE)).unwrap(),
            block
        );
    }

    #[test]
    fn load_reads_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Recipe::load(dir.path()),
            Err(RecipeError::Read { .. })
        ));
        std::fs::write(dir.path().join(RECIPE_FILE), GOOD).unwrap();
        assert_eq!(Recipe::load(dir.path()).unwrap().name, "debian-cloud");
    }
}
