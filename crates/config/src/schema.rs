//! The YAML schema: the typed configuration and its strict conversion from the positioned tree.
//!
//! Every field of LinuxKit's format (see `docs/yaml.md` upstream) is here, plus keel's
//! extension fields on image specs (a plain `linuxkit.yml` needs none of them):
//!
//! - `restart: always | on-failure | never` (services only; default `always`);
//! - `dependsOn: [service, ...]` (services only): start after these are ready;
//! - `readiness: {tcp: PORT} | {file: PATH}` (services only): when this service counts as ready;
//! - `timeout: DURATION` (onboot and onshutdown only): kill the container after this long;
//! - `stopGracePeriod: DURATION`: time between SIGTERM and SIGKILL when stopping;
//! - `control: none | inspect | admin`: what the container may ask of PID 1's control socket
//!   (default `none`; `inspect` reads, `admin` also starts, stops, kills and powers off);
//! - `seccomp: PROFILE`: a seccomp profile in the OCI `linux.seccomp` shape.
//!
//! Two top-level sections of LinuxKit's first releases (2017) load with a warning each:
//! `trust:` (ignored: the lock file pins digests and every download is checked against its
//! digest) and `outputs:` (`- format: NAME`; the formats are kept in [`Config::outputs`] as
//! `keel build`'s default formats, the cloud upload keys are ignored).
//!
//! Durations are integer seconds or strings such as `500ms`, `30s`, `2m`, `1h`, `1m30s`, at most
//! 24 hours.
//! Image spec fields are `Option`s: absent and present-but-empty differ when the YAML is merged
//! over an image's `org.mobyproject.config` label.

use crate::error::{Error, Loc, Spanned, hint};
use crate::values;
use crate::yaml::{Kind, Node};
use keel_bundle::{
    BindNamespaces, ConsoleSettings, ControlGrant, Interface, Mount, Readiness, RestartPolicy,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

type R<T> = Result<T, Error>;
/// A list of strings with positions.
pub type Strings = Spanned<Vec<Spanned<String>>>;

/// The whole (merged) configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub onboot: Vec<ImageSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub onshutdown: Vec<ImageSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ImageSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// keel's `console:` (the console prompt and container output on the console).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<Spanned<ConsoleSettings>>,
    /// keel's `health:` (an A/B version's boot assessment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Spanned<HealthSpec>>,
    /// The formats of LinuxKit's 2017 `outputs:` section (`- format: kernel+initrd`), in order,
    /// each once: what `keel build` makes when no `-f` is given. Kept as written (this crate
    /// does not know keel's formats); each carries its position for errors. Serialised back
    /// in LinuxKit's shape.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_outputs"
    )]
    pub outputs: Vec<Spanned<String>>,
}

/// `outputs` as LinuxKit wrote it: `[{format: NAME}, ...]`.
fn serialize_outputs<S: serde::Serializer>(
    outputs: &[Spanned<String>],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::{SerializeMap, SerializeSeq};
    struct Output<'a>(&'a str);
    impl Serialize for Output<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry("format", self.0)?;
            m.end()
        }
    }
    let mut seq = s.serialize_seq(Some(outputs.len()))?;
    for o in outputs {
        seq.serialize_element(&Output(o.as_str()))?;
    }
    seq.end()
}

/// `kernel:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Kernel {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tar: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ucode: Option<Spanned<String>>,
}

impl Kernel {
    /// The kernel file inside the image (default `kernel`).
    pub fn binary(&self) -> &str {
        self.binary
            .as_deref()
            .map(String::as_str)
            .filter(|b| !b.is_empty())
            .unwrap_or("kernel")
    }

    /// The modules tarball inside the image (default `kernel.tar`); `None` for `none` or `""`.
    pub fn tar(&self) -> Option<&str> {
        match self.tar.as_deref().map(String::as_str) {
            None => Some("kernel.tar"),
            Some("") | Some("none") => None,
            Some(t) => Some(t),
        }
    }

    /// The kernel command line (default empty).
    pub fn cmdline(&self) -> &str {
        self.cmdline.as_deref().map(String::as_str).unwrap_or("")
    }
}

/// Which list an image spec belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Onboot,
    Onshutdown,
    Services,
}

impl Section {
    /// The directory name under `containers/` (and the YAML key).
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Onboot => keel_bundle::ONBOOT,
            Section::Onshutdown => keel_bundle::ONSHUTDOWN,
            Section::Services => keel_bundle::SERVICES,
        }
    }

    /// The bundle directory name of the `index`th container named `name`.
    pub fn bundle_name(self, index: usize, name: &str) -> String {
        match self {
            Section::Services => name.to_string(),
            _ => keel_bundle::ordered_bundle_name(index, name),
        }
    }

    fn entry(self) -> &'static str {
        match self {
            Section::Onboot => "onboot entry",
            Section::Onshutdown => "onshutdown entry",
            Section::Services => "service",
        }
    }
}

/// One entry of `onboot`, `onshutdown` or `services`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageSpec {
    pub name: Spanned<String>,
    pub image: Spanned<String>,
    #[serde(flatten)]
    pub fields: ImageFields,
    /// Where the entry starts.
    #[serde(skip)]
    pub loc: Loc,
}

/// A uid or gid: a number, or the name of a container (its allocated id), or `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Id {
    Num(u32),
    Name(String),
}

/// A device to create in the container (`devices:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip)]
    pub loc: Loc,
}

/// An OCI mount as written in `mounts:` (type, source and destination may be inferred).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    #[serde(skip)]
    pub loc: Loc,
}

impl MountSpec {
    /// LinuxKit's inference: type from a well-known source (or `tmpfs` for `/dev`), source
    /// defaults to the type, destination defaults per type.
    pub fn resolve(&self) -> R<Mount> {
        let dest = self.destination.clone().unwrap_or_default();
        let src = self.source.clone().unwrap_or_default();
        let mut tp = self.kind.clone().unwrap_or_default();
        if tp.is_empty()
            && matches!(
                src.as_str(),
                "mqueue" | "devpts" | "proc" | "sysfs" | "cgroup"
            )
        {
            tp = src.clone();
        }
        if tp.is_empty() && dest == "/dev" {
            tp = "tmpfs".into();
        }
        if tp.is_empty() {
            return Err(self.loc.err(format!(
                "mount for destination {dest:?} is missing type; set type, or a source of proc, devpts, sysfs, cgroup or mqueue"
            )));
        }
        let dest = if dest.is_empty() {
            match tp.as_str() {
                "proc" => "/proc",
                "devpts" => "/dev/pts",
                "sysfs" => "/sys",
                "cgroup" => "/sys/fs/cgroup",
                "mqueue" => "/dev/mqueue",
                _ => {
                    return Err(self
                        .loc
                        .err(format!("mount of type {tp:?} is missing destination")));
                }
            }
            .to_string()
        } else {
            dest
        };
        // Relative destinations are written as given, as LinuxKit does (see
        // `values::check_destination`).
        values::check_destination(&dest).map_err(|why| {
            self.loc
                .err(format!("invalid mount destination {dest:?}: {why}"))
        })?;
        let source = if src.is_empty() { tp.clone() } else { src };
        Ok(Mount {
            destination: dest,
            kind: Some(tp),
            source: Some(source),
            options: self.options.clone().unwrap_or_default(),
        })
    }
}

/// A user-namespace id mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdMapping {
    #[serde(rename = "hostID")]
    pub host_id: u32,
    #[serde(rename = "containerID")]
    pub container_id: u32,
    pub size: u32,
}

/// `runtime:` as written (every part optional, merged per part over the label's).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuntimeSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkdir: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Interface>>,
    #[serde(rename = "bindNS", skip_serializing_if = "BindNamespaces::is_empty")]
    pub bind_ns: BindNamespaces,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A duration as written, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationSpec {
    pub text: String,
    pub value: Duration,
}

impl Serialize for DurationSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// The fields of an image spec other than `name` and `image` (also the label's shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Strings>,
    #[serde(rename = "capabilities.add", skip_serializing_if = "Option::is_none")]
    pub capabilities_add: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ambient: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Spanned<Vec<MountSpec>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binds: Option<Strings>,
    #[serde(rename = "binds.add", skip_serializing_if = "Option::is_none")]
    pub binds_add: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Spanned<Vec<Device>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uts: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masked_paths: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly_paths: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<Spanned<Id>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<Spanned<Id>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_gids: Option<Spanned<Vec<Spanned<Id>>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_new_privileges: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<Spanned<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<Spanned<String>>,
    /// OCI `LinuxResources`, already in OCI JSON spelling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Spanned<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysctl: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimits: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid_mappings: Option<Spanned<Vec<IdMapping>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid_mappings: Option<Spanned<Vec<IdMapping>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Spanned<RuntimeSpec>>,
    // keel extensions
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<Spanned<RestartPolicy>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Strings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Spanned<Readiness>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<DurationSpec>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Spanned<DurationSpec>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<Spanned<ControlGrant>>,
    /// keel extension: a seccomp profile in the OCI `linux.seccomp` shape (LinuxKit's YAML has
    /// no way to say one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Spanned<Value>>,
}

/// `files:` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileSpec {
    pub path: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<Spanned<Id>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<Spanned<Id>>,
    #[serde(skip)]
    pub loc: Loc,
    /// The directory of the YAML file that declared it (relative `source:` paths start here).
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

/// What a `files:` entry puts at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent<'a> {
    Directory,
    Symlink(&'a str),
    Contents(&'a str),
    /// A host file, and whether a missing one is silently skipped.
    Source {
        path: PathBuf,
        optional: bool,
    },
    /// The merged configuration, as YAML or JSON.
    Metadata(MetadataFormat),
}

/// `metadata:` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFormat {
    Yaml,
    Json,
}

impl FileSpec {
    /// What the entry holds (validated at load: exactly one kind).
    pub fn content(&self) -> FileContent<'_> {
        if let Some(s) = &self.symlink {
            FileContent::Symlink(s)
        } else if let Some(c) = &self.contents {
            FileContent::Contents(c)
        } else if let Some(s) = &self.source {
            FileContent::Source {
                path: self.source_path(s),
                optional: self.optional.as_ref().is_some_and(|o| **o),
            }
        } else if let Some(m) = &self.metadata {
            FileContent::Metadata(if m.as_str() == "json" {
                MetadataFormat::Json
            } else {
                MetadataFormat::Yaml
            })
        } else {
            FileContent::Directory
        }
    }

    /// `~/` is the builder's home (`$HOME`); relative paths are relative to the YAML's directory.
    fn source_path(&self, s: &str) -> PathBuf {
        if let Some(rest) = s.strip_prefix("~/")
            && let Some(home) = std::env::var_os("HOME")
        {
            return PathBuf::from(home).join(rest);
        }
        match &self.dir {
            Some(d) if !s.starts_with('/') => d.join(s),
            _ => PathBuf::from(s),
        }
    }

    /// The path without its leading `/`.
    pub fn relative_path(&self) -> &str {
        self.path.trim_start_matches('/')
    }

    /// The file mode: the given octal, else 0600 for files, 0700 for directories.
    pub fn mode(&self) -> u32 {
        match &self.mode {
            Some(m) => values::parse_octal(m).unwrap_or(0o600),
            None if matches!(self.content(), FileContent::Directory) => 0o700,
            None => 0o600,
        }
    }
}

/// `volumes:` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Volume {
    pub name: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Strings>,
    #[serde(skip)]
    pub loc: Loc,
}

impl Volume {
    pub fn is_readonly(&self) -> bool {
        self.readonly.as_ref().is_some_and(|r| **r)
    }

    /// Whether the volume holds an OCI image layout rather than a filesystem.
    pub fn is_oci(&self) -> bool {
        self.format.as_ref().is_some_and(|f| f.as_str() == "oci")
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion from the positioned tree.

const TOP_KEYS: &[&str] = &[
    "kernel",
    "init",
    "onboot",
    "onshutdown",
    "services",
    "files",
    "volumes",
    "trust",
    "outputs",
    "console",
    "health",
];
/// The keys of a 2017 `outputs:` entry (all but `format` were for uploads to clouds).
const OUTPUT_KEYS: &[&str] = &[
    "format", "project", "bucket", "family", "keys", "public", "replace",
];
const KERNEL_KEYS: &[&str] = &["image", "cmdline", "binary", "tar", "ucode"];
const IMAGE_KEYS: &[&str] = &[
    "name",
    "image",
    "capabilities",
    "capabilities.add",
    "ambient",
    "mounts",
    "binds",
    "binds.add",
    "tmpfs",
    "devices",
    "command",
    "env",
    "cwd",
    "net",
    "pid",
    "ipc",
    "uts",
    "userns",
    "hostname",
    "readonly",
    "maskedPaths",
    "readonlyPaths",
    "uid",
    "gid",
    "additionalGids",
    "noNewPrivileges",
    "oomScoreAdj",
    "rootfsPropagation",
    "cgroupsPath",
    "resources",
    "sysctl",
    "rlimits",
    "uidMappings",
    "gidMappings",
    "annotations",
    "runtime",
    "restart",
    "dependsOn",
    "readiness",
    "timeout",
    "stopGracePeriod",
    "control",
    "seccomp",
];
const FILE_KEYS: &[&str] = &[
    "path",
    "directory",
    "symlink",
    "contents",
    "source",
    "optional",
    "metadata",
    "mode",
    "uid",
    "gid",
];
const VOLUME_KEYS: &[&str] = &["name", "image", "readonly", "format", "platforms"];
const MOUNT_KEYS: &[&str] = &["destination", "type", "source", "options"];
const DEVICE_KEYS: &[&str] = &["path", "type", "major", "minor", "mode"];
const IDMAP_KEYS: &[&str] = &["hostID", "containerID", "size"];
const RUNTIME_KEYS: &[&str] = &[
    "cgroups",
    "mounts",
    "mkdir",
    "interfaces",
    "bindNS",
    "namespace",
];
const INTERFACE_KEYS: &[&str] = &["name", "add", "peer", "createInRoot"];
const BINDNS_KEYS: &[&str] = &["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"];
const PROPAGATIONS: &[&str] = &[
    "shared",
    "slave",
    "private",
    "unbindable",
    "rshared",
    "rslave",
    "rprivate",
    "runbindable",
];

pub(crate) fn unknown_key(key: &Node, k: &str, what: &str, allowed: &[&str]) -> Error {
    key.loc.err(format!(
        "unknown key {k:?} in {what}{}; expected one of: {}",
        hint(k, allowed),
        allowed.join(", ")
    ))
}

fn expected(n: &Node, what: &str) -> Error {
    n.loc
        .err(format!("expected {what}, found {}", n.describe()))
}

/// A mapping's entries with their keys as strings.
pub(crate) fn entries<'a>(n: &'a Node, what: &str) -> R<Vec<(&'a Node, &'a str, &'a Node)>> {
    match &n.kind {
        Kind::Map(e) => Ok(e
            .iter()
            .filter_map(|(k, v)| k.text().map(|t| (k, t, v)))
            .collect()),
        _ => Err(expected(n, &format!("a mapping for {what}"))),
    }
}

fn items<'a>(n: &'a Node, what: &str) -> R<&'a [Node]> {
    match &n.kind {
        Kind::Seq(items) => Ok(items),
        _ => Err(expected(n, &format!("a list for {what}"))),
    }
}

/// Any scalar as text (plain numbers and booleans are accepted where LinuxKit wants strings).
pub(crate) fn string(n: &Node) -> R<Spanned<String>> {
    match &n.kind {
        Kind::Scalar { text, .. } => Ok(Spanned::new(text.clone(), n.loc.clone())),
        _ => Err(expected(n, "a string")),
    }
}

fn boolean(n: &Node) -> R<Spanned<bool>> {
    match &n.kind {
        Kind::Scalar { text, plain: true } => match text.as_str() {
            "true" | "True" | "TRUE" => Ok(Spanned::new(true, n.loc.clone())),
            "false" | "False" | "FALSE" => Ok(Spanned::new(false, n.loc.clone())),
            _ => Err(expected(n, "true or false")),
        },
        _ => Err(expected(n, "true or false")),
    }
}

fn integer(n: &Node) -> R<Spanned<i64>> {
    let parsed = match &n.kind {
        Kind::Scalar { text, plain: true } => {
            let t = text.replace('_', "");
            let (neg, t) = match t.strip_prefix('-') {
                Some(r) => (true, r.to_string()),
                None => (false, t.trim_start_matches('+').to_string()),
            };
            let v = if let Some(h) = t.strip_prefix("0x") {
                i64::from_str_radix(h, 16).ok()
            } else if let Some(o) = t.strip_prefix("0o") {
                i64::from_str_radix(o, 8).ok()
            } else {
                t.parse::<i64>().ok()
            };
            v.map(|v| if neg { -v } else { v })
        }
        _ => None,
    };
    parsed
        .map(|v| Spanned::new(v, n.loc.clone()))
        .ok_or_else(|| expected(n, "an integer"))
}

fn int_in<T: TryFrom<i64>>(n: &Node, what: &str) -> R<Spanned<T>> {
    let v = integer(n)?;
    T::try_from(v.value)
        .map(|t| Spanned::new(t, v.loc.clone()))
        .map_err(|_| v.loc.err(format!("{} is out of range for {what}", v.value)))
}

pub(crate) fn strings(n: &Node, what: &str) -> R<Strings> {
    let list = items(n, &format!("{what} (a list of strings)"))?
        .iter()
        .map(string)
        .collect::<R<Vec<_>>>()?;
    Ok(Spanned::new(list, n.loc.clone()))
}

fn string_map(n: &Node, what: &str) -> R<Spanned<BTreeMap<String, String>>> {
    let mut m = BTreeMap::new();
    for (_, k, v) in entries(n, what)? {
        m.insert(k.to_string(), string(v)?.value);
    }
    Ok(Spanned::new(m, n.loc.clone()))
}

fn opt_string(n: &Node) -> R<Option<String>> {
    string(n).map(|s| Some(s.value))
}

fn id(n: &Node) -> R<Spanned<Id>> {
    match &n.kind {
        Kind::Scalar { text, .. } => {
            if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                let v: Spanned<u32> = int_in(
                    &Node {
                        kind: Kind::Scalar {
                            text: text.clone(),
                            plain: true,
                        },
                        loc: n.loc.clone(),
                    },
                    "a uid or gid",
                )?;
                Ok(Spanned::new(Id::Num(v.value), n.loc.clone()))
            } else {
                Ok(Spanned::new(Id::Name(text.clone()), n.loc.clone()))
            }
        }
        _ => Err(expected(n, "a number or a container name")),
    }
}

fn duration(n: &Node) -> R<Spanned<DurationSpec>> {
    let s = string(n)?;
    let value = values::parse_duration(&s)?;
    Ok(Spanned::new(
        DurationSpec {
            text: s.value,
            value,
        },
        s.loc,
    ))
}

/// YAML `health:`, as written (durations keep their text, so the merged YAML prints back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable: Option<DurationSpec>,
    /// The services the assessment waits for (each must be a service of the config:
    /// [`crate::Config::validate`]); absent: every service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Strings>,
}

impl HealthSpec {
    /// What PID 1 reads (`containers/system.json`).
    pub fn settings(&self) -> keel_bundle::HealthSettings {
        keel_bundle::HealthSettings {
            timeout: self.timeout.as_ref().map(|d| d.value),
            stable: self.stable.as_ref().map(|d| d.value),
            services: self
                .services
                .as_ref()
                .map(|l| l.iter().map(|s| s.value.clone()).collect()),
        }
    }
}

/// `health: {timeout: DURATION, stable: DURATION, services: [NAME, ...]}`.
fn health(n: &Node) -> R<Spanned<HealthSpec>> {
    let mut spec = HealthSpec::default();
    for (k, key, v) in entries(n, "health")? {
        match key {
            "timeout" => spec.timeout = Some(duration(v)?.value),
            "stable" => spec.stable = Some(duration(v)?.value),
            "services" => {
                let list = strings(v, "health.services")?;
                if list.is_empty() {
                    return Err(v.loc.err(
                        "health.services is empty: name the services the boot assessment waits for, or leave it out to wait for every service",
                    ));
                }
                spec.services = Some(list);
            }
            other => {
                return Err(unknown_key(
                    k,
                    other,
                    "health",
                    &["timeout", "stable", "services"],
                ));
            }
        }
    }
    Ok(Spanned::new(spec, n.loc.clone()))
}

/// `console: off|inspect|admin`, or `console: {prompt: ..., raw: true|false}`.
fn console(n: &Node) -> R<Spanned<ConsoleSettings>> {
    let prompt = |v: &Node| -> R<ControlGrant> {
        let s = string(v)?;
        Ok(match s.as_str() {
            "off" | "none" => ControlGrant::None,
            "inspect" => ControlGrant::Inspect,
            "admin" => ControlGrant::Admin,
            other => {
                return Err(s.loc.err(format!(
                    "invalid console prompt {other:?}; expected off, inspect or admin"
                )));
            }
        })
    };
    let mut settings = ConsoleSettings::default();
    if matches!(n.kind, Kind::Scalar { .. }) {
        settings.prompt = prompt(n)?;
        return Ok(Spanned::new(settings, n.loc.clone()));
    }
    for (k, key, v) in entries(n, "console")? {
        match key {
            "prompt" => settings.prompt = prompt(v)?,
            "raw" => settings.raw = boolean(v)?.value,
            other => return Err(unknown_key(k, other, "console", &["prompt", "raw"])),
        }
    }
    Ok(Spanned::new(settings, n.loc.clone()))
}

/// Parses a whole document (one source) into a `Config`.
pub(crate) fn config(root: &Node, dir: Option<&PathBuf>) -> R<Config> {
    let mut c = Config::default();
    for (k, key, v) in entries(root, "the top level")? {
        if matches!(v.kind, Kind::Null) && key != "kernel" && key != "trust" {
            continue; // an empty section
        }
        match key {
            "kernel" => c.kernel = Some(kernel(v)?),
            "init" => c.init = strings(v, "init")?.value,
            "onboot" => c.onboot = images(v, Section::Onboot)?,
            "onshutdown" => c.onshutdown = images(v, Section::Onshutdown)?,
            "services" => c.services = images(v, Section::Services)?,
            "files" => {
                c.files = items(v, "files")?
                    .iter()
                    .map(|f| file(f, dir))
                    .collect::<R<_>>()?;
            }
            "volumes" => c.volumes = items(v, "volumes")?.iter().map(volume).collect::<R<_>>()?,
            "console" => c.console = Some(console(v)?),
            "health" => c.health = Some(health(v)?),
            "trust" => {
                if !matches!(v.kind, Kind::Null) {
                    for (k, key, v) in entries(v, "trust")? {
                        match key {
                            "image" | "org" => {
                                strings(v, "trust")?;
                            }
                            other => return Err(unknown_key(k, other, "trust", &["image", "org"])),
                        }
                    }
                }
                log::warn!(
                    "{}: \"trust\" is ignored: keel pins every image by digest in the lock file and checks every download against its digest",
                    k.loc
                );
            }
            "outputs" => {
                let (formats, ignored) = outputs(v)?;
                let mut note = String::new();
                if !ignored.is_empty() {
                    note = format!("; {} ignored", ignored.join(", "));
                }
                log::warn!(
                    "{}: \"outputs\" (from LinuxKit's first releases): {} become keel build's default formats when no -f is given{note}",
                    k.loc,
                    formats
                        .iter()
                        .map(|f| f.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                append_outputs(&mut c.outputs, formats);
            }
            other => return Err(unknown_key(k, other, "the top level", TOP_KEYS)),
        }
    }
    Ok(c)
}

/// Adds `more` to `outputs`, skipping formats already there (a format is made once).
pub(crate) fn append_outputs(outputs: &mut Vec<Spanned<String>>, more: Vec<Spanned<String>>) {
    for f in more {
        if !outputs.iter().any(|o| o.value == f.value) {
            outputs.push(f);
        }
    }
}

/// `outputs:`: the formats, and the upload keys given (which keel ignores).
fn outputs(n: &Node) -> R<(Vec<Spanned<String>>, Vec<&'static str>)> {
    let mut formats = Vec::new();
    let mut ignored: Vec<&'static str> = Vec::new();
    for item in items(n, "outputs")? {
        let mut format = None;
        for (k, key, v) in entries(item, "output")? {
            match OUTPUT_KEYS.iter().find(|o| **o == key) {
                Some(&"format") => format = Some(string(v)?),
                Some(&o @ ("public" | "replace")) => {
                    boolean(v)?;
                    if !ignored.contains(&o) {
                        ignored.push(o);
                    }
                }
                Some(&o) => {
                    string(v)?;
                    if !ignored.contains(&o) {
                        ignored.push(o);
                    }
                }
                None => return Err(unknown_key(k, key, "output", OUTPUT_KEYS)),
            }
        }
        let format = format.ok_or_else(|| item.loc.err("output is missing \"format\""))?;
        if format.trim().is_empty() {
            return Err(format.loc.err("empty output format"));
        }
        formats.push(format);
    }
    Ok((formats, ignored))
}

fn kernel(n: &Node) -> R<Kernel> {
    let mut kn = Kernel::default();
    if matches!(n.kind, Kind::Null) {
        return Ok(kn);
    }
    for (k, key, v) in entries(n, "kernel")? {
        let s = Some(string(v)?);
        match key {
            "image" => kn.image = s,
            "cmdline" => kn.cmdline = s,
            "binary" => kn.binary = s,
            "tar" => kn.tar = s,
            "ucode" => kn.ucode = s,
            other => return Err(unknown_key(k, other, "kernel", KERNEL_KEYS)),
        }
    }
    Ok(kn)
}

fn images(n: &Node, section: Section) -> R<Vec<ImageSpec>> {
    items(n, section.as_str())?
        .iter()
        .map(|i| image_spec(i, section))
        .collect()
}

fn image_spec(n: &Node, section: Section) -> R<ImageSpec> {
    let what = section.entry();
    let (name, image, fields) = image_map(n, what, false)?;
    let name = name.ok_or_else(|| n.loc.err(format!("{what} is missing \"name\"")))?;
    let image = image.ok_or_else(|| {
        n.loc
            .err(format!("{what} {:?} is missing \"image\"", name.value))
    })?;
    if name.is_empty() || name.contains('/') || name.as_str() == "." || name.as_str() == ".." {
        return Err(name.loc.err(format!(
            "invalid name {:?}; a name is used as a directory name and must not be empty or contain '/'",
            name.value
        )));
    }
    if image.is_empty() {
        return Err(image.loc.err("empty image reference"));
    }
    Ok(ImageSpec {
        name,
        image,
        fields,
        loc: n.loc.clone(),
    })
}

type ImageMap = (
    Option<Spanned<String>>,
    Option<Spanned<String>>,
    ImageFields,
);

/// An image spec mapping (or, with `label`, the `org.mobyproject.config` label).
pub(crate) fn image_map(n: &Node, what: &str, label: bool) -> R<ImageMap> {
    let mut name = None;
    let mut image = None;
    let mut f = ImageFields::default();
    let allowed: Vec<&str> = IMAGE_KEYS
        .iter()
        .copied()
        .filter(|k| !label || !matches!(*k, "name" | "image" | "dependsOn"))
        .collect();
    for (k, key, v) in entries(n, what)? {
        match key {
            "name" | "image" if label => {
                return Err(k.loc.err(format!(
                    "{key} cannot be set in the org.mobyproject.config label"
                )));
            }
            "dependsOn" if label => {
                return Err(k
                    .loc
                    .err("dependsOn cannot be set in the org.mobyproject.config label"));
            }
            "name" => name = Some(string(v)?),
            "image" => image = Some(string(v)?),
            "capabilities" | "capabilities.add" | "ambient" => {
                let list = strings(v, key)?;
                values::check_caps(&list)?;
                match key {
                    "capabilities" => f.capabilities = Some(list),
                    "capabilities.add" => f.capabilities_add = Some(list),
                    _ => f.ambient = Some(list),
                }
            }
            "mounts" => {
                let list = items(v, "mounts")?
                    .iter()
                    .map(mount_spec)
                    .collect::<R<Vec<_>>>()?;
                f.mounts = Some(Spanned::new(list, v.loc.clone()));
            }
            "binds" | "binds.add" => {
                let list = strings(v, key)?;
                for b in list.iter() {
                    values::parse_bind(b)?;
                }
                if key == "binds" {
                    f.binds = Some(list);
                } else {
                    f.binds_add = Some(list);
                }
            }
            "tmpfs" => {
                let list = strings(v, key)?;
                for t in list.iter() {
                    values::parse_tmpfs(t)?;
                }
                f.tmpfs = Some(list);
            }
            "devices" => {
                let list = items(v, "devices")?
                    .iter()
                    .map(device)
                    .collect::<R<Vec<_>>>()?;
                f.devices = Some(Spanned::new(list, v.loc.clone()));
            }
            "command" => f.command = Some(strings(v, key)?),
            "env" => f.env = Some(strings(v, key)?),
            "maskedPaths" => f.masked_paths = Some(strings(v, key)?),
            "readonlyPaths" => f.readonly_paths = Some(strings(v, key)?),
            "cwd" => f.cwd = Some(string(v)?),
            "hostname" => f.hostname = Some(string(v)?),
            "cgroupsPath" => f.cgroups_path = Some(string(v)?),
            "rootfsPropagation" => {
                let s = string(v)?;
                if !PROPAGATIONS.contains(&s.as_str()) {
                    return Err(s.loc.err(format!(
                        "invalid rootfsPropagation {:?}; expected one of: {}",
                        s.value,
                        PROPAGATIONS.join(", ")
                    )));
                }
                f.rootfs_propagation = Some(s);
            }
            "net" | "pid" | "ipc" | "uts" | "userns" => {
                let s = string(v)?;
                values::check_namespace(key, &s)?;
                match key {
                    "net" => f.net = Some(s),
                    "pid" => f.pid = Some(s),
                    "ipc" => f.ipc = Some(s),
                    "uts" => f.uts = Some(s),
                    _ => f.userns = Some(s),
                }
            }
            "readonly" => f.readonly = Some(boolean(v)?),
            "noNewPrivileges" => f.no_new_privileges = Some(boolean(v)?),
            "uid" => f.uid = Some(id(v)?),
            "gid" => f.gid = Some(id(v)?),
            "additionalGids" => {
                let list = items(v, key)?.iter().map(id).collect::<R<Vec<_>>>()?;
                f.additional_gids = Some(Spanned::new(list, v.loc.clone()));
            }
            "oomScoreAdj" => {
                let o: Spanned<i32> = int_in(v, "oomScoreAdj")?;
                if !(-1000..=1000).contains(&o.value) {
                    return Err(o.loc.err(format!(
                        "oomScoreAdj {} is out of range -1000..1000",
                        o.value
                    )));
                }
                f.oom_score_adj = Some(o);
            }
            "resources" => {
                f.resources = Some(Spanned::new(
                    typed(v, &RESOURCES, "resources")?,
                    v.loc.clone(),
                ));
            }
            "sysctl" => f.sysctl = Some(string_map(v, key)?),
            "annotations" => f.annotations = Some(string_map(v, key)?),
            "rlimits" => {
                let list = strings(v, key)?;
                for r in list.iter() {
                    values::parse_rlimit(r)?;
                }
                f.rlimits = Some(list);
            }
            "uidMappings" => f.uid_mappings = Some(id_mappings(v)?),
            "gidMappings" => f.gid_mappings = Some(id_mappings(v)?),
            "runtime" => f.runtime = Some(Spanned::new(runtime(v)?, v.loc.clone())),
            "restart" => {
                let s = string(v)?;
                let p = match s.as_str() {
                    "always" => RestartPolicy::Always,
                    "on-failure" => RestartPolicy::OnFailure,
                    "never" => RestartPolicy::Never,
                    other => {
                        return Err(s.loc.err(format!(
                            "invalid restart {other:?}; expected always, on-failure or never"
                        )));
                    }
                };
                f.restart = Some(Spanned::new(p, s.loc));
            }
            "dependsOn" => f.depends_on = Some(strings(v, key)?),
            "readiness" => f.readiness = Some(readiness(v)?),
            "timeout" => f.timeout = Some(duration(v)?),
            "stopGracePeriod" => f.stop_grace_period = Some(duration(v)?),
            "control" => {
                let s = string(v)?;
                let g = match s.as_str() {
                    "none" => ControlGrant::None,
                    "inspect" => ControlGrant::Inspect,
                    "admin" => ControlGrant::Admin,
                    other => {
                        return Err(s.loc.err(format!(
                            "invalid control {other:?}; expected none, inspect or admin"
                        )));
                    }
                };
                f.control = Some(Spanned::new(g, s.loc));
            }
            "seccomp" => f.seccomp = Some(seccomp(v)?),
            other => return Err(unknown_key(k, other, what, &allowed)),
        }
    }
    Ok((name, image, f))
}

fn readiness(n: &Node) -> R<Spanned<Readiness>> {
    let bad = || expected(n, "a mapping with one key: tcp (a port) or file (a path)");
    let e = entries(n, "readiness").map_err(|_| bad())?;
    let [(k, key, v)] = e.as_slice() else {
        return Err(bad());
    };
    let r = match *key {
        "tcp" => Readiness::Tcp(int_in::<u16>(v, "a TCP port")?.value),
        "file" => {
            let s = string(v)?;
            if !s.starts_with('/') {
                return Err(s.loc.err("readiness file must be an absolute path"));
            }
            Readiness::File(s.value)
        }
        other => return Err(unknown_key(k, other, "readiness", &["tcp", "file"])),
    };
    Ok(Spanned::new(r, n.loc.clone()))
}

fn mount_spec(n: &Node) -> R<MountSpec> {
    let mut m = MountSpec {
        loc: n.loc.clone(),
        ..MountSpec::default()
    };
    for (k, key, v) in entries(n, "mount")? {
        match key {
            "destination" => m.destination = opt_string(v)?,
            "type" => m.kind = opt_string(v)?,
            "source" => m.source = opt_string(v)?,
            "options" => {
                m.options = Some(
                    strings(v, "options")?
                        .value
                        .into_iter()
                        .map(|s| s.value)
                        .collect(),
                )
            }
            "uidmappings" | "gidmappings" => return Err(idmapped_mount(k, key)),
            other => return Err(unknown_key(k, other, "mount", MOUNT_KEYS)),
        }
    }
    m.resolve()?;
    Ok(m)
}

/// LinuxKit's schema has `uidmappings`/`gidmappings` on a mount (idmapped mounts, passed to
/// runc); keel's runtime cannot make them, so they are refused rather than dropped.
fn idmapped_mount(k: &Node, key: &str) -> Error {
    k.loc.err(format!(
        "{key}: idmapped mounts are not supported by keel's runtime; remove {key}, or give the container a user namespace (userns: new with uidMappings/gidMappings)"
    ))
}

fn runtime_mount(n: &Node) -> R<Mount> {
    let mut m = Mount::default();
    let mut dest = None;
    for (k, key, v) in entries(n, "runtime mount")? {
        match key {
            "destination" => dest = Some(string(v)?.value),
            "type" => m.kind = opt_string(v)?,
            "source" => m.source = opt_string(v)?,
            "options" => {
                m.options = strings(v, "options")?
                    .value
                    .into_iter()
                    .map(|s| s.value)
                    .collect()
            }
            "uidmappings" | "gidmappings" => return Err(idmapped_mount(k, key)),
            other => return Err(unknown_key(k, other, "runtime mount", MOUNT_KEYS)),
        }
    }
    m.destination = dest.ok_or_else(|| n.loc.err("runtime mount is missing \"destination\""))?;
    Ok(m)
}

fn device(n: &Node) -> R<Device> {
    let (mut path, mut kind, mut major, mut minor, mut mode) = (None, None, None, None, None);
    for (k, key, v) in entries(n, "device")? {
        match key {
            "path" => path = Some(string(v)?.value),
            "type" => kind = Some(string(v)?),
            "major" => major = Some(integer(v)?.value),
            "minor" => minor = Some(integer(v)?.value),
            "mode" => mode = Some(string(v)?),
            other => return Err(unknown_key(k, other, "device", DEVICE_KEYS)),
        }
    }
    let path = path.ok_or_else(|| n.loc.err("device is missing \"path\""))?;
    let kind = kind.ok_or_else(|| n.loc.err("device is missing \"type\""))?;
    let kinds: &[&str] = if path == "all" {
        &["a", "b", "c"]
    } else {
        &["b", "c", "u", "p"]
    };
    if !kinds.contains(&kind.as_str()) {
        return Err(kind.loc.err(format!(
            "invalid device type {:?}; expected one of: {}",
            kind.value,
            kinds.join(", ")
        )));
    }
    if path != "all" {
        if !path.starts_with("/dev/") {
            return Err(n.loc.err(format!(
                "device path {path:?} must be below /dev, or \"all\""
            )));
        }
        match &mode {
            Some(m) => {
                values::parse_octal(m)?;
            }
            None => {
                return Err(n
                    .loc
                    .err("device is missing \"mode\" (an octal string such as \"0666\")"));
            }
        }
    }
    Ok(Device {
        path,
        kind: kind.value,
        major,
        minor,
        mode: mode.map(|m| m.value),
        loc: n.loc.clone(),
    })
}

fn id_mappings(n: &Node) -> R<Spanned<Vec<IdMapping>>> {
    let mut out = Vec::new();
    for item in items(n, "id mappings")? {
        let (mut h, mut c, mut s) = (None, None, None);
        for (k, key, v) in entries(item, "id mapping")? {
            let x: Spanned<u32> = int_in(v, key)?;
            match key {
                "hostID" => h = Some(x.value),
                "containerID" => c = Some(x.value),
                "size" => s = Some(x.value),
                other => return Err(unknown_key(k, other, "id mapping", IDMAP_KEYS)),
            }
        }
        match (h, c, s) {
            (Some(host_id), Some(container_id), Some(size)) => out.push(IdMapping {
                host_id,
                container_id,
                size,
            }),
            _ => {
                return Err(item
                    .loc
                    .err("id mapping needs hostID, containerID and size"));
            }
        }
    }
    Ok(Spanned::new(out, n.loc.clone()))
}

fn runtime(n: &Node) -> R<RuntimeSpec> {
    let mut r = RuntimeSpec::default();
    for (k, key, v) in entries(n, "runtime")? {
        match key {
            "cgroups" => {
                r.cgroups = Some(
                    strings(v, key)?
                        .value
                        .into_iter()
                        .map(|s| s.value)
                        .collect(),
                )
            }
            "mkdir" => {
                r.mkdir = Some(
                    strings(v, key)?
                        .value
                        .into_iter()
                        .map(|s| s.value)
                        .collect(),
                )
            }
            "namespace" => r.namespace = Some(string(v)?.value),
            "mounts" => {
                r.mounts = Some(items(v, key)?.iter().map(runtime_mount).collect::<R<_>>()?)
            }
            "interfaces" => {
                let mut list = Vec::new();
                for item in items(v, key)? {
                    let mut i = Interface::default();
                    let mut name = None;
                    for (k, key, v) in entries(item, "interface")? {
                        match key {
                            "name" => name = Some(string(v)?.value),
                            "add" => i.add = opt_string(v)?,
                            "peer" => i.peer = opt_string(v)?,
                            "createInRoot" => i.create_in_root = boolean(v)?.value,
                            other => {
                                return Err(unknown_key(k, other, "interface", INTERFACE_KEYS));
                            }
                        }
                    }
                    i.name = name.ok_or_else(|| item.loc.err("interface is missing \"name\""))?;
                    list.push(i);
                }
                r.interfaces = Some(list);
            }
            "bindNS" => {
                for (k, key, v) in entries(v, key)? {
                    let s = Some(string(v)?.value);
                    match key {
                        "cgroup" => r.bind_ns.cgroup = s,
                        "ipc" => r.bind_ns.ipc = s,
                        "mnt" => r.bind_ns.mnt = s,
                        "net" => r.bind_ns.net = s,
                        "pid" => r.bind_ns.pid = s,
                        "user" => r.bind_ns.user = s,
                        "uts" => r.bind_ns.uts = s,
                        other => return Err(unknown_key(k, other, "bindNS", BINDNS_KEYS)),
                    }
                }
            }
            other => return Err(unknown_key(k, other, "runtime", RUNTIME_KEYS)),
        }
    }
    Ok(r)
}

fn file(n: &Node, dir: Option<&PathBuf>) -> R<FileSpec> {
    let mut f = FileSpec {
        path: Spanned::new(String::new(), n.loc.clone()),
        directory: None,
        symlink: None,
        contents: None,
        source: None,
        optional: None,
        metadata: None,
        mode: None,
        uid: None,
        gid: None,
        loc: n.loc.clone(),
        dir: dir.cloned(),
    };
    let mut path = None;
    for (k, key, v) in entries(n, "file")? {
        match key {
            "path" => path = Some(string(v)?),
            "directory" => f.directory = Some(boolean(v)?),
            "symlink" => f.symlink = Some(string(v)?),
            "contents" => f.contents = Some(string(v)?),
            "source" => f.source = Some(string(v)?),
            "optional" => f.optional = Some(boolean(v)?),
            "metadata" => {
                let m = string(v)?;
                if !matches!(m.as_str(), "yaml" | "json") {
                    return Err(m.loc.err(format!(
                        "invalid metadata {:?}; expected yaml or json",
                        m.value
                    )));
                }
                f.metadata = Some(m);
            }
            "mode" => {
                let m = string(v)?;
                values::parse_octal(&m)?;
                f.mode = Some(m);
            }
            "uid" => f.uid = Some(id(v)?),
            "gid" => f.gid = Some(id(v)?),
            other => return Err(unknown_key(k, other, "file", FILE_KEYS)),
        }
    }
    f.path = path.ok_or_else(|| n.loc.err("file is missing \"path\""))?;
    if f.relative_path().is_empty() {
        return Err(f.path.loc.err("file path must not be empty or \"/\""));
    }
    let kinds: Vec<&str> = [
        ("directory", f.directory.as_ref().is_some_and(|d| **d)),
        ("symlink", f.symlink.is_some()),
        ("contents", f.contents.is_some()),
        ("source", f.source.is_some()),
        ("metadata", f.metadata.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    match kinds.len() {
        1 => {}
        0 => {
            return Err(n.loc.err(format!(
                "file {:?} has no content; set one of: directory, symlink, contents, source, metadata",
                f.path.value
            )));
        }
        _ => {
            return Err(n.loc.err(format!(
                "file {:?} sets both {} and {}; set only one of: directory, symlink, contents, source, metadata",
                f.path.value, kinds[0], kinds[1]
            )));
        }
    }
    if let Some(o) = &f.optional
        && f.source.is_none()
    {
        return Err(o
            .loc
            .err("\"optional\" applies only to a file with \"source\""));
    }
    Ok(f)
}

fn volume(n: &Node) -> R<Volume> {
    let mut name = None;
    let mut v = Volume {
        name: Spanned::new(String::new(), n.loc.clone()),
        image: None,
        readonly: None,
        format: None,
        platforms: None,
        loc: n.loc.clone(),
    };
    for (k, key, val) in entries(n, "volume")? {
        match key {
            "name" => name = Some(string(val)?),
            "image" => v.image = Some(string(val)?),
            "readonly" => v.readonly = Some(boolean(val)?),
            "format" => {
                let f = string(val)?;
                if !matches!(f.as_str(), "filesystem" | "oci") {
                    return Err(f.loc.err(format!(
                        "invalid volume format {:?}; expected filesystem or oci",
                        f.value
                    )));
                }
                v.format = Some(f);
            }
            "platforms" => {
                let list = strings(val, key)?;
                for p in list.iter() {
                    let parts: Vec<&str> = p.split('/').collect();
                    if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                        return Err(p.loc.err(format!(
                            "invalid platform {:?}; expected OS/ARCH[/VARIANT] such as linux/amd64",
                            p.value
                        )));
                    }
                }
                v.platforms = Some(list);
            }
            other => return Err(unknown_key(k, other, "volume", VOLUME_KEYS)),
        }
    }
    v.name = name.ok_or_else(|| n.loc.err("volume is missing \"name\""))?;
    let ok = !v.name.is_empty()
        && v.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(v.name.loc.err(format!(
            "invalid volume name {:?}; expected lower-case letters, digits, '_' and '-'",
            v.name.value
        )));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// `resources:` is checked against a small schema and converted to OCI JSON spelling.

/// A field type for [`typed`].
pub(crate) enum Ty {
    Int,
    Uint,
    Bool,
    Str,
    /// `(yaml key, OCI JSON key, type)`.
    Obj(&'static [(&'static str, &'static str, Ty)]),
    Arr(&'static Ty),
}

const DEVICE_CGROUP: Ty = Ty::Obj(&[
    ("allow", "allow", Ty::Bool),
    ("type", "type", Ty::Str),
    ("major", "major", Ty::Int),
    ("minor", "minor", Ty::Int),
    ("access", "access", Ty::Str),
]);
const MEMORY: Ty = Ty::Obj(&[
    ("limit", "limit", Ty::Int),
    ("reservation", "reservation", Ty::Int),
    ("swap", "swap", Ty::Int),
    ("kernel", "kernel", Ty::Int),
    ("kernelTCP", "kernelTCP", Ty::Int),
    ("swappiness", "swappiness", Ty::Uint),
    ("disableOOMKiller", "disableOOMKiller", Ty::Bool),
]);
const CPU: Ty = Ty::Obj(&[
    ("shares", "shares", Ty::Uint),
    ("quota", "quota", Ty::Int),
    ("period", "period", Ty::Uint),
    ("realtimeRuntime", "realtimeRuntime", Ty::Int),
    ("realtimePeriod", "realtimePeriod", Ty::Uint),
    ("cpus", "cpus", Ty::Str),
    ("mems", "mems", Ty::Str),
]);
const PIDS: Ty = Ty::Obj(&[("limit", "limit", Ty::Int)]);
const WEIGHT_DEVICE: Ty = Ty::Obj(&[
    ("major", "major", Ty::Int),
    ("minor", "minor", Ty::Int),
    ("weight", "weight", Ty::Uint),
    ("leafWeight", "leafWeight", Ty::Uint),
]);
const THROTTLE_DEVICE: Ty = Ty::Obj(&[
    ("major", "major", Ty::Int),
    ("minor", "minor", Ty::Int),
    ("rate", "rate", Ty::Uint),
]);
const BLOCKIO: Ty = Ty::Obj(&[
    ("weight", "weight", Ty::Uint),
    ("leafWeight", "leafWeight", Ty::Uint),
    ("weightDevice", "weightDevice", Ty::Arr(&WEIGHT_DEVICE)),
    (
        "throttleReadBpsDevice",
        "throttleReadBpsDevice",
        Ty::Arr(&THROTTLE_DEVICE),
    ),
    (
        "throttleWriteBpsDevice",
        "throttleWriteBpsDevice",
        Ty::Arr(&THROTTLE_DEVICE),
    ),
    (
        "throttleReadIOPSDevice",
        "throttleReadIOPSDevice",
        Ty::Arr(&THROTTLE_DEVICE),
    ),
    (
        "throttleWriteIOPSDevice",
        "throttleWriteIOPSDevice",
        Ty::Arr(&THROTTLE_DEVICE),
    ),
]);
const HUGEPAGE: Ty = Ty::Obj(&[
    ("pageSize", "pageSize", Ty::Str),
    ("limit", "limit", Ty::Uint),
]);
const PRIORITY: Ty = Ty::Obj(&[
    ("name", "name", Ty::Str),
    ("priority", "priority", Ty::Uint),
]);
const NETWORK: Ty = Ty::Obj(&[
    ("classID", "classID", Ty::Uint),
    ("priorities", "priorities", Ty::Arr(&PRIORITY)),
]);
pub(crate) const RESOURCES: Ty = Ty::Obj(&[
    ("devices", "devices", Ty::Arr(&DEVICE_CGROUP)),
    ("memory", "memory", MEMORY),
    ("cpu", "cpu", CPU),
    ("pids", "pids", PIDS),
    ("blockio", "blockIO", BLOCKIO),
    ("blockIO", "blockIO", BLOCKIO),
    ("hugepageLimits", "hugepageLimits", Ty::Arr(&HUGEPAGE)),
    ("network", "network", NETWORK),
]);

const STR: Ty = Ty::Str;
const SECCOMP_ARG: Ty = Ty::Obj(&[
    ("index", "index", Ty::Uint),
    ("value", "value", Ty::Uint),
    ("valueTwo", "valueTwo", Ty::Uint),
    ("op", "op", Ty::Str),
]);
const SECCOMP_SYSCALL: Ty = Ty::Obj(&[
    ("names", "names", Ty::Arr(&STR)),
    ("action", "action", Ty::Str),
    ("errnoRet", "errnoRet", Ty::Uint),
    ("args", "args", Ty::Arr(&SECCOMP_ARG)),
]);
pub(crate) const SECCOMP: Ty = Ty::Obj(&[
    ("defaultAction", "defaultAction", Ty::Str),
    ("defaultErrnoRet", "defaultErrnoRet", Ty::Uint),
    ("architectures", "architectures", Ty::Arr(&STR)),
    ("flags", "flags", Ty::Arr(&STR)),
    ("syscalls", "syscalls", Ty::Arr(&SECCOMP_SYSCALL)),
]);
const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
];
const SECCOMP_OPS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// `seccomp:`: the OCI profile shape, with actions and operators checked here so a profile
/// the runtime cannot honour fails the build, not the boot.
fn seccomp(n: &Node) -> R<Spanned<Value>> {
    // `unconfined`: no filter, not even keel's default profile.
    if let Kind::Scalar { text, .. } = &n.kind {
        if text == crate::seccomp_default::UNCONFINED {
            return Ok(Spanned::new(Value::String(text.clone()), n.loc.clone()));
        }
        return Err(n.loc.err(format!(
            "seccomp: expected a profile (a mapping) or \"unconfined\", got {text:?}"
        )));
    }
    let v = typed(n, &SECCOMP, "seccomp")?;
    let check = |value: Option<&Value>, allowed: &[&str], what: &str| -> R<()> {
        match value.and_then(Value::as_str) {
            Some(a) if !allowed.contains(&a) => Err(n.loc.err(format!(
                "seccomp: unsupported {what} {a:?}; expected one of: {}",
                allowed.join(", ")
            ))),
            _ => Ok(()),
        }
    };
    if v.get("defaultAction").is_none() {
        return Err(n
            .loc
            .err("seccomp: defaultAction is required (e.g. SCMP_ACT_ALLOW)"));
    }
    check(v.get("defaultAction"), SECCOMP_ACTIONS, "action")?;
    for rule in v
        .get("syscalls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(rule.get("action"), SECCOMP_ACTIONS, "action")?;
        for arg in rule
            .get("args")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            check(arg.get("op"), SECCOMP_OPS, "operator")?;
        }
    }
    Ok(Spanned::new(v, n.loc.clone()))
}

/// Converts a node to JSON following `ty`, with LinuxKit's strictness (unknown keys are errors).
pub(crate) fn typed(n: &Node, ty: &Ty, what: &str) -> R<Value> {
    Ok(match ty {
        Ty::Int => Value::from(integer(n)?.value),
        Ty::Uint => Value::from(int_in::<u64>(n, what)?.value),
        Ty::Bool => Value::from(boolean(n)?.value),
        Ty::Str => Value::from(string(n)?.value),
        Ty::Arr(item) => Value::Array(
            items(n, what)?
                .iter()
                .map(|i| typed(i, item, what))
                .collect::<R<_>>()?,
        ),
        Ty::Obj(fields) => {
            let mut m = serde_json::Map::new();
            for (k, key, v) in entries(n, what)? {
                let Some((_, json, t)) = fields.iter().find(|(y, _, _)| *y == key) else {
                    let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
                    return Err(unknown_key(k, key, what, &names));
                };
                m.insert((*json).to_string(), typed(v, t, key)?);
            }
            Value::Object(m)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::Section;
    use crate::load::{Source, load, parse_label};
    use crate::spec::{SpecContext, generate};
    use keel_bundle::{ControlGrant, Supervision};
    use std::path::Path;
    use std::time::Duration;

    fn load_one(text: &str) -> Result<crate::Config, String> {
        let no_pkg = |_: &Path| -> Result<String, String> { Err("none".into()) };
        load(
            &[Source {
                name: "t.yml".into(),
                text: text.into(),
                dir: None,
            }],
            &no_pkg,
        )
        .map_err(|e| e.to_string())
    }

    fn supervision(text: &str, section: Section, label: Option<&str>) -> Supervision {
        let c = load_one(text).unwrap();
        let ids = c.ids();
        let label = label.map(|l| parse_label(l, "img:1").unwrap());
        let list = match section {
            Section::Onboot => &c.onboot,
            Section::Onshutdown => &c.onshutdown,
            Section::Services => &c.services,
        };
        generate(
            &list[0],
            None,
            label.as_ref(),
            &SpecContext::new(&c, &ids, section, 0, "x86_64"),
        )
        .unwrap()
        .runtime
        .keel
    }

    #[test]
    fn control_is_parsed_from_yaml_and_labels() {
        let svc = "services:\n  - name: s\n    image: x\n    command: [/s]\n";
        assert_eq!(
            supervision(svc, Section::Services, None).control,
            ControlGrant::None
        );
        let inspect = format!("{svc}    control: inspect\n");
        assert_eq!(
            supervision(&inspect, Section::Services, None).control,
            ControlGrant::Inspect
        );
        let label = r#"{"control": "admin"}"#;
        assert_eq!(
            supervision(svc, Section::Services, Some(label)).control,
            ControlGrant::Admin
        );
        // The YAML wins over the label, `none` included.
        let none = format!("{svc}    control: none\n");
        assert_eq!(
            supervision(&none, Section::Services, Some(label)).control,
            ControlGrant::None
        );
        let onboot = "onboot:\n  - name: o\n    image: x\n    command: [/o]\n    control: admin\n";
        assert_eq!(
            supervision(onboot, Section::Onboot, None).control,
            ControlGrant::Admin
        );
        assert_eq!(
            load_one(&format!("{svc}    control: root\n")).unwrap_err(),
            "t.yml:5:14: invalid control \"root\"; expected none, inspect or admin"
        );
        let e = parse_label(r#"{"control": "everything"}"#, "img:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid control \"everything\""), "{e}");
    }

    #[test]
    fn durations_above_a_day_are_errors_with_their_position() {
        let onboot = "onboot:\n  - name: o\n    image: x\n    command: [/o]\n";
        assert_eq!(
            load_one(&format!("{onboot}    timeout: 18446744073709551615\n")).unwrap_err(),
            "t.yml:5:14: duration \"18446744073709551615\" is longer than the maximum of 24h (86400 seconds)"
        );
        assert_eq!(
            load_one(&format!("{onboot}    stopGracePeriod: 25h\n")).unwrap_err(),
            "t.yml:5:22: duration \"25h\" is longer than the maximum of 24h (86400 seconds)"
        );
        let e = parse_label(r#"{"timeout": "99999999999h"}"#, "img:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than the maximum of 24h"), "{e}");
        let s = supervision(
            &format!("{onboot}    timeout: 24h\n    stopGracePeriod: 86400\n"),
            Section::Onboot,
            None,
        );
        assert_eq!(s.timeout, Some(Duration::from_secs(86_400)));
        assert_eq!(s.stop_grace_period, Some(Supervision::MAX_DURATION));
        assert_eq!(s.out_of_range(), None);
    }
}
