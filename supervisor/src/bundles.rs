//! Finding the bundles under `/containers` and reading their `runtime.json`.

use keel_bundle::{CONFIG_FILE, ONBOOT, ONSHUTDOWN, RUNTIME_FILE, Runtime, SERVICES, Supervision};
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
    /// Its cgroup (`linux.cgroupsPath` of `config.json`, normalised by
    /// [`crate::access::normalize_cgroup`]); `None` when the spec names none usable. The
    /// control socket recognises the container's processes by it.
    pub cgroups_path: Option<String>,
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
            let cgroups_path = read_cgroups_path(&dir);
            Some(Bundle {
                id,
                kind,
                dir,
                runtime,
                cgroups_path,
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
    let runtime: Runtime = match std::fs::read(dir.join(RUNTIME_FILE)) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid {RUNTIME_FILE}: {e}"))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Runtime::default(),
        Err(e) => return Err(format!("cannot read {RUNTIME_FILE}: {e}")),
    };
    // `keel build` refuses these; a bundle made by hand gets the same bound, so no deadline
    // PID 1 computes is ever far out.
    if let Some((field, value)) = runtime.keel.out_of_range() {
        return Err(format!(
            "invalid {RUNTIME_FILE}: keel.{field} of {} s is longer than the maximum of {} s",
            value.as_secs(),
            Supervision::MAX_DURATION.as_secs()
        ));
    }
    Ok(runtime)
}

/// The part of an OCI `config.json` the supervisor reads; the shim reads the rest.
#[derive(Deserialize)]
struct SpecCgroup {
    #[serde(default)]
    linux: Option<LinuxCgroup>,
}

#[derive(Deserialize)]
struct LinuxCgroup {
    #[serde(default, rename = "cgroupsPath")]
    cgroups_path: Option<String>,
}

/// The container's cgroup from its `config.json`; `None` (with a log line) when the file
/// names none usable, so the container's processes are not recognised on the control socket.
fn read_cgroups_path(dir: &Path) -> Option<String> {
    let path = dir.join(CONFIG_FILE);
    let spec: SpecCgroup = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            log::debug!("{}: {e}", path.display());
            return None;
        }
    };
    let raw = spec.linux?.cgroups_path?;
    let normal = crate::access::normalize_cgroup(&raw);
    if normal.is_none() {
        log::warn!(
            "{}: cgroupsPath {raw:?} cannot identify the container on the control socket",
            path.display()
        );
    }
    normal
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
            (
                "004-long",
                Some(r#"{"keel":{"stopGracePeriod":18446744073709551615}}"#),
            ),
        ] {
            let d = onboot.join(name);
            fs::create_dir_all(&d).unwrap();
            let config = match name {
                "000-a" => r#"{"linux":{"cgroupsPath":"/keel/onboot/a","namespaces":[]}}"#,
                "001-b" => r#"{"linux":{"cgroupsPath":"relative//b/"}}"#,
                "002-c" => r#"{"linux":{"cgroupsPath":"/x/../y"}}"#,
                _ => "{}",
            };
            fs::write(d.join("config.json"), config).unwrap();
            if let Some(r) = runtime {
                fs::write(d.join("runtime.json"), r).unwrap();
            }
        }
        fs::create_dir_all(onboot.join("003-noconfig")).unwrap();
        fs::write(onboot.join("stray-file"), "").unwrap();

        let found = discover(root.path(), Kind::Onboot);
        let ids: Vec<_> = found.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["000-a", "001-b", "002-c", "003-noconfig", "004-long"]);
        let cgroups: Vec<_> = found.iter().map(|b| b.cgroups_path.as_deref()).collect();
        assert_eq!(
            cgroups,
            [
                Some("/keel/onboot/a"),
                Some("/relative/b"),
                None,
                None,
                None
            ]
        );
        assert_eq!(
            found[4].runtime,
            Err(
                "invalid runtime.json: keel.stopGracePeriod of 18446744073709551 s is longer \
                 than the maximum of 86400 s"
                    .into()
            )
        );
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
