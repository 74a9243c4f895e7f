//! The OCI runtime config keel writes, as typed structs: every field keel sets has a name the
//! compiler checks, and the document is serialised once. [`to_spec`] turns it into oci-spec's
//! [`Spec`] (what the rest of keel and the runtime read) and fails if that conversion would drop
//! anything — oci-spec ignores unknown keys, so a misspelled field (here, or in a user's
//! `seccomp:` or `resources:`) would otherwise vanish without a word.

use keel_bundle::Mount;
use oci_spec::runtime::Spec;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use crate::schema::IdMapping;

/// `config.json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Config {
    pub oci_version: &'static str,
    pub process: Process,
    pub root: Root,
    pub mounts: Vec<Mount>,
    pub linux: Linux,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Process {
    pub terminal: bool,
    pub user: User,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Capabilities,
    pub no_new_privileges: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Root {
    pub path: &'static str,
    pub readonly: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Linux {
    pub namespaces: Vec<Namespace>,
    /// The YAML's `resources` (checked against their schema when loaded) plus keel's device
    /// rules and pids default, built from [`DeviceRule`] and [`Pids`].
    pub resources: Map<String, Value>,
    pub cgroups_path: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysctl: Option<BTreeMap<String, String>>,
    /// The YAML's `seccomp:` (checked when loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid_mappings: Option<Vec<IdMapping>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid_mappings: Option<Vec<IdMapping>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Namespace {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Namespace {
    /// A new namespace of this kind.
    pub fn new(kind: &'static str) -> Self {
        Namespace { kind, path: None }
    }
}

/// A device node to create in the container.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub major: i64,
    pub minor: i64,
    pub file_mode: u32,
}

/// One device cgroup rule.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceRule {
    pub allow: bool,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    pub access: &'static str,
}

impl DeviceRule {
    /// Denies every access to every device.
    pub fn deny_all() -> Self {
        DeviceRule {
            allow: false,
            kind: None,
            major: None,
            minor: None,
            access: "rwm",
        }
    }

    /// Allows every access to devices of `kind`, one (`major`, `minor`) or all.
    pub fn allow(kind: &str, number: Option<(i64, i64)>) -> Self {
        DeviceRule {
            allow: true,
            kind: Some(kind.to_owned()),
            major: number.map(|n| n.0),
            minor: number.map(|n| n.1),
            access: "rwm",
        }
    }
}

/// `resources.pids`.
#[derive(Debug, Serialize)]
pub(crate) struct Pids {
    pub limit: i64,
}

/// Why [`to_spec`] failed.
#[derive(Debug)]
pub(crate) enum SpecError {
    Json(serde_json::Error),
    /// Fields oci-spec does not know, as JSON paths (`linux.seccomp.syscals`).
    Dropped(Vec<String>),
}

/// Serialises `config` and reads it as oci-spec's [`Spec`], refusing if any field did not
/// survive the conversion.
pub(crate) fn to_spec(config: &Config) -> Result<Spec, SpecError> {
    let written = serde_json::to_value(config).map_err(SpecError::Json)?;
    let spec: Spec = serde_json::from_value(written.clone()).map_err(SpecError::Json)?;
    let read = serde_json::to_value(&spec).map_err(SpecError::Json)?;
    let mut dropped = Vec::new();
    missing("", &written, &read, &mut dropped);
    if dropped.is_empty() {
        Ok(spec)
    } else {
        Err(SpecError::Dropped(dropped))
    }
}

/// Collects the object keys of `written` that `read` lacks (arrays compared element-wise).
fn missing(path: &str, written: &Value, read: &Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (key, value) in w {
                match r.get(key) {
                    Some(other) => missing(&join(key), value, other, out),
                    // An empty list or map may be omitted when read back; that loses nothing.
                    None if is_empty(value) => {}
                    None => out.push(join(key)),
                }
            }
        }
        (Value::Array(w), Value::Array(r)) => {
            for (i, (value, other)) in w.iter().zip(r).enumerate() {
                missing(&format!("{path}[{i}]"), value, other, out);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seccomp: Option<Value>) -> Config {
        Config {
            oci_version: oci_spec::runtime::VERSION,
            process: Process {
                terminal: false,
                user: User {
                    uid: 0,
                    gid: 0,
                    additional_gids: vec![],
                },
                args: vec!["/a".into()],
                env: vec![],
                cwd: "/".into(),
                capabilities: Capabilities {
                    bounding: vec!["CAP_CHOWN".into()],
                    effective: vec!["CAP_CHOWN".into()],
                    inheritable: vec![],
                    permitted: vec!["CAP_CHOWN".into()],
                    ambient: vec![],
                },
                no_new_privileges: true,
                rlimits: vec![],
                oom_score_adj: None,
            },
            root: Root {
                path: "rootfs",
                readonly: true,
            },
            mounts: vec![],
            linux: Linux {
                namespaces: vec![Namespace::new("mount")],
                resources: Map::new(),
                cgroups_path: "/keel/x".into(),
                devices: vec![],
                sysctl: None,
                seccomp,
                rootfs_propagation: None,
                masked_paths: vec![],
                readonly_paths: vec![],
                uid_mappings: None,
                gid_mappings: None,
            },
            hostname: None,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn a_config_reads_back_whole() {
        let spec = to_spec(&config(None)).unwrap();
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(std::path::Path::new("/keel/x"))
        );
    }

    #[test]
    fn a_field_oci_spec_does_not_know_is_an_error_not_dropped() {
        let seccomp = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscals": [{"names": ["mount"], "action": "SCMP_ACT_ALLOW"}]
        });
        match to_spec(&config(Some(seccomp))) {
            Err(SpecError::Dropped(paths)) => assert_eq!(paths, ["linux.seccomp.syscals"]),
            other => panic!("expected the misspelling to be refused, got {other:?}"),
        }
    }
}
