//! Building a package's `binaries:` with cargo: static musl binaries of the Cargo workspace that
//! holds the package directory, `--profile guest`, one `cargo build` per architecture and
//! Cargo package.

use crate::error::{Error, Result};
use keel_config::build_yml::Binary;
use keel_image::Arch;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target triple keel builds guest binaries for.
pub fn target_triple(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-musl",
        Arch::Aarch64 => "aarch64-unknown-linux-musl",
    }
}

/// The nearest directory at or above `dir` whose `Cargo.toml` has a `[workspace]` table.
pub fn workspace_root(dir: &Path) -> Result<PathBuf> {
    let start = dir.canonicalize().map_err(|source| Error::Io {
        action: "open",
        path: dir.to_path_buf(),
        source,
    })?;
    for d in start.ancestors() {
        let manifest = d.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest)
            && text.lines().any(|l| l.trim() == "[workspace]")
        {
            return Ok(d.to_path_buf());
        }
    }
    Err(Error::NoWorkspace { dir: start })
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` (relative to the root) or `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// How many of cargo's last lines a failed build's error shows.
const CARGO_OUTPUT_LINES: usize = 40;

/// The last `lines` lines of `output`, each indented, after a newline; empty for no output.
fn tail(output: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].iter().map(|l| format!("\n  {l}")).collect()
}

/// Builds `binaries` for `arch` and returns their bytes, in the same order.
pub(crate) fn build(
    cargo: &Path,
    root: &Path,
    arch: Arch,
    binaries: &[Binary],
) -> Result<Vec<Vec<u8>>> {
    let triple = target_triple(arch);
    let mut packages: Vec<&str> = binaries.iter().map(|b| b.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    for package in packages {
        let mut command = Command::new(cargo);
        command
            .current_dir(root)
            .args(["build", "--locked", "-p", package]);
        for b in binaries.iter().filter(|b| b.package.as_str() == package) {
            command.args(["--bin", b.bin.as_str()]);
        }
        command.args(["--target", triple, "--profile", "guest"]);
        let line = format!("{command:?}").replace('"', "");
        log::info!("building {package} for {arch}: {line}");
        let spawn_err = |source| Error::CargoSpawn {
            cargo: cargo.to_path_buf(),
            source,
        };
        // Cargo's own lines would tear keel's progress line; they are shown with -v, and the
        // end of them when the build fails.
        let (status, output) = if log::log_enabled!(log::Level::Debug) {
            (command.status().map_err(spawn_err)?, String::new())
        } else {
            let out = command.output().map_err(spawn_err)?;
            (out.status, tail(&out.stderr, CARGO_OUTPUT_LINES))
        };
        if !status.success() {
            return Err(Error::CargoFailed {
                command: line,
                status: status.to_string(),
                output,
            });
        }
    }
    let out = target_dir(root).join(triple).join("guest");
    binaries
        .iter()
        .map(|b| {
            let path = out.join(b.bin.as_str());
            std::fs::read(&path).map_err(|source| Error::Io {
                action: "read the built binary",
                path,
                source,
            })
        })
        .collect()
}

/// What the SBOM says of a Cargo package whose binaries an image holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CrateInfo {
    pub name: String,
    pub version: String,
    /// The `license` field (an SPDX expression; the old `A/B` form is read as `A OR B`).
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
}

#[derive(serde::Deserialize)]
struct Metadata {
    packages: Vec<CrateInfo>,
}

/// The workspace members' names, versions, licences and repositories (`cargo metadata
/// --no-deps`), by name; only `wanted` ones are kept.
pub(crate) fn metadata(
    cargo: &Path,
    root: &Path,
    wanted: &[&str],
) -> Result<std::collections::BTreeMap<String, CrateInfo>> {
    let mut command = Command::new(cargo);
    command.current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ]);
    let line = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|source| Error::CargoSpawn {
        cargo: cargo.to_path_buf(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::CargoFailed {
            command: line,
            status: output.status.to_string(),
            output: tail(&output.stderr, CARGO_OUTPUT_LINES),
        });
    }
    let parsed: Metadata =
        serde_json::from_slice(&output.stdout).map_err(|source| Error::CargoMetadata {
            command: line,
            source,
        })?;
    Ok(parsed
        .packages
        .into_iter()
        .filter(|p| wanted.contains(&p.name.as_str()))
        .map(|mut p| {
            p.license = p.license.map(|l| l.replace('/', " OR "));
            (p.name.clone(), p)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_is_the_nearest_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
        let member = root.join("crates/x");
        std::fs::create_dir_all(member.join("pkg")).unwrap();
        // A member's own Cargo.toml (no [workspace]) is skipped.
        std::fs::write(member.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        assert_eq!(workspace_root(&member.join("pkg")).unwrap(), root);
    }

    #[test]
    fn missing_workspace_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // /tmp has no workspace above it on a sane machine; the error names the directory.
        match workspace_root(dir.path()) {
            Err(e @ Error::NoWorkspace { .. }) => {
                assert!(e.to_string().contains("no Cargo workspace"), "{e}");
            }
            Ok(root) => assert!(root.join("Cargo.toml").exists()),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn triples_are_musl() {
        assert_eq!(target_triple(Arch::Aarch64), "aarch64-unknown-linux-musl");
        assert_eq!(target_triple(Arch::X86_64), "x86_64-unknown-linux-musl");
    }
}
