//! Finding the bundles under `/containers` and reading their `runtime.json`.

use keel_bundle::{CONFIG_FILE, ONBOOT, ONSHUTDOWN, RUNTIME_FILE, Runtime, SERVICES};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which section of the YAML a container comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Onboot,
    Service,
    Onshutdown,
}

impl Kind {
    /// The directory below `/containers` holding this kind's bundles.
    pub fn dir_name(self) -> &'static str {
        match self {
            Kind::Onboot => ONBOOT,
            Kind::Service => SERVICES,
            Kind::Onshutdown => ONSHUTDOWN,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Onboot => "onboot",
            Kind::Service => "service",
            Kind::Onshutdown => "onshutdown",
        }
    }
}

/// One bundle directory as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The container id: the bundle directory's name (`000-name` for ordered sections).
    pub id: String,
    pub kind: Kind,
    pub dir: PathBuf,
    /// The parsed `runtime.json` (default when absent), or why the bundle cannot run.
    pub runtime: Result<Runtime, String>,
}

/// The bundles of `kind` below `containers_dir`, in lexical order (the run order for onboot and
/// onshutdown). A missing section directory means no bundles; unreadable entries are skipped
/// with a warning. A bundle without `config.json` or with an unreadable `runtime.json` is still
/// returned, with the reason in `runtime`, so it shows up as failed instead of vanishing.
pub fn discover(containers_dir: &Path, kind: Kind) -> Vec<Bundle> {
    let section = containers_dir.join(kind.dir_name());
    let entries = match std::fs::read_dir(&section) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            log::warn!("cannot read {}: {e}", section.display());
            return Vec::new();
        }
    };
    let mut bundles: Vec<Bundle> = entries
        .filter_map(|e| match e {
            Ok(e) => Some(e),
            Err(err) => {
                log::warn!("cannot read an entry of {}: {err}", section.display());
                None
            }
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let id = e.file_name().into_string().ok()?;
            let dir = e.path();
            let runtime = read_runtime(&dir);
            Some(Bundle {
                id,
                kind,
                dir,
                runtime,
            })
        })
        .collect();
    bundles.sort_by(|a, b| a.id.cmp(&b.id));
    bundles
}

fn read_runtime(dir: &Path) -> Result<Runtime, String> {
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(format!("no {CONFIG_FILE} in {}", dir.display()));
    }
    match std::fs::read(dir.join(RUNTIME_FILE)) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid {RUNTIME_FILE}: {e}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Runtime::default()),
        Err(e) => Err(format!("cannot read {RUNTIME_FILE}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn finds_sorted_bundles_and_reports_bad_ones() {
        let root = tempfile::tempdir().unwrap();
        let onboot = root.path().join("onboot");
        for (name, runtime) in [
            ("001-b", Some(r#"{"keel":{"timeout":2000}}"#)),
            ("000-a", None),
            ("002-c", Some("{not json")),
        ] {
            let d = onboot.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("config.json"), "{}").unwrap();
            if let Some(r) = runtime {
                fs::write(d.join("runtime.json"), r).unwrap();
            }
        }
        fs::create_dir_all(onboot.join("003-noconfig")).unwrap();
        fs::write(onboot.join("stray-file"), "").unwrap();

        let found = discover(root.path(), Kind::Onboot);
        let ids: Vec<_> = found.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["000-a", "001-b", "002-c", "003-noconfig"]);
        assert_eq!(found[0].runtime, Ok(Runtime::default()));
        let timeout = found[1].runtime.as_ref().unwrap().keel.timeout;
        assert_eq!(timeout, Some(std::time::Duration::from_secs(2)));
        assert!(
            found[2]
                .runtime
                .as_ref()
                .unwrap_err()
                .contains("invalid runtime.json")
        );
        assert!(
            found[3]
                .runtime
                .as_ref()
                .unwrap_err()
                .contains("no config.json")
        );
        assert!(discover(root.path(), Kind::Service).is_empty());
    }
}
