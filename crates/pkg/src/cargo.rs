//! Building a package's `binaries:` with cargo: static musl binaries of the Cargo workspace that
//! holds the package directory, `--profile guest`, one `cargo build` per architecture and
//! Cargo package; not run at all when [`crate::fresh`] shows the binaries up to date.

use crate::error::{Error, Result};
use keel_config::build_yml::Binary;
use keel_image::Arch;
use std::collections::BTreeMap;
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

/// What cargo made for a package: per architecture the binaries' bytes in `binaries:` order,
/// and the SBOM's information on their Cargo packages.
pub(crate) struct Binaries {
    pub built: BTreeMap<Arch, Vec<Vec<u8>>>,
    pub crates: BTreeMap<String, CrateInfo>,
}

/// Builds `binaries` of the workspace at `root` for `arches`, or takes them as they are when
/// [`crate::fresh`] shows nothing they are made from has changed (no cargo run at all).
pub(crate) fn binaries(
    cargo: &Path,
    root: &Path,
    arches: &[Arch],
    binaries: &[Binary],
) -> Result<Binaries> {
    let key: Vec<(&str, &str)> = binaries
        .iter()
        .map(|b| (b.package.as_str(), b.bin.as_str()))
        .collect();
    let stamp = crate::fresh::stamp_path(&target_dir(root), &key, arches);
    if let Some(fresh) = crate::fresh::load(&stamp, arches, binaries.len()) {
        log::debug!("binaries up to date ({}): cargo not run", stamp.display());
        return Ok(Binaries {
            built: fresh.binaries,
            crates: fresh.crates,
        });
    }
    let started = std::time::SystemTime::now();
    let mut names: Vec<&str> = binaries.iter().map(|b| b.package.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let (crates, manifests) = metadata(cargo, root, &names)?;
    let mut outputs = BTreeMap::new();
    for &arch in arches {
        outputs.insert(arch, build(cargo, root, arch, binaries)?);
    }
    crate::fresh::record(
        &stamp,
        &crate::fresh::Made {
            started,
            root,
            manifests: &manifests,
            outputs: &outputs,
            crates: &crates,
        },
    );
    Ok(Binaries {
        built: outputs
            .into_iter()
            .map(|(arch, list)| (arch, list.into_iter().map(|(_, data)| data).collect()))
            .collect(),
        crates,
    })
}

/// Builds `binaries` for `arch` and returns their paths and bytes, in the same order.
fn build(
    cargo: &Path,
    root: &Path,
    arch: Arch,
    binaries: &[Binary],
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
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
            match std::fs::read(&path) {
                Ok(data) => Ok((path, data)),
                Err(source) => Err(Error::Io {
                    action: "read the built binary",
                    path,
                    source,
                }),
            }
        })
        .collect()
}

/// What the SBOM says of a Cargo package whose binaries an image holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    packages: Vec<Member>,
}

#[derive(serde::Deserialize)]
struct Member {
    #[serde(flatten)]
    info: CrateInfo,
    manifest_path: PathBuf,
}

/// The workspace members' names, versions, licences and repositories (`cargo metadata
/// --no-deps`), by name, only `wanted` ones kept; and every member's `Cargo.toml`.
fn metadata(
    cargo: &Path,
    root: &Path,
    wanted: &[&str],
) -> Result<(BTreeMap<String, CrateInfo>, Vec<PathBuf>)> {
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
    let manifests = parsed
        .packages
        .iter()
        .map(|m| m.manifest_path.clone())
        .collect();
    let crates = parsed
        .packages
        .into_iter()
        .map(|m| m.info)
        .filter(|p| wanted.contains(&p.name.as_str()))
        .map(|mut p| {
            p.license = p.license.map(|l| l.replace('/', " OR "));
            (p.name.clone(), p)
        })
        .collect();
    Ok((crates, manifests))
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
