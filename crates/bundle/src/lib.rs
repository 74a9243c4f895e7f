//! The on-disk contract between the host tool and the guest.
//!
//! The host tool writes one OCI bundle per container under [`CONTAINERS_DIR`]; the guest reads
//! them. Besides the OCI `config.json`, each bundle holds a `runtime.json` ([`Runtime`]): the
//! steps LinuxKit's `runtime:` section asks for (run outside the container, before it starts)
//! plus keel's supervision settings ([`Supervision`]). This crate is the single definition of
//! both, and of the guest paths the two sides agree on.

pub mod time;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where bundles live in the root filesystem.
pub const CONTAINERS_DIR: &str = "containers";
/// Onboot bundles: `containers/onboot/NNN-name`, run in lexical order, each to completion.
pub const ONBOOT: &str = "onboot";
/// Service bundles: `containers/services/name`, started and supervised.
pub const SERVICES: &str = "services";
/// Onshutdown bundles: `containers/onshutdown/NNN-name`, run in order at shutdown.
pub const ONSHUTDOWN: &str = "onshutdown";
/// Volume directories: `containers/volumes/name/{lower,tmp,merged}`.
pub const VOLUMES: &str = "volumes";

/// The OCI runtime spec file of a bundle.
pub const CONFIG_FILE: &str = "config.json";
/// keel's per-bundle runtime file (LinuxKit's `runtime.json`, extended).
pub const RUNTIME_FILE: &str = "runtime.json";
/// The root filesystem directory of a bundle (`root.path` in `config.json`).
pub const ROOTFS_DIR: &str = "rootfs";

/// The guest's runtime directory (a tmpfs, mode 0700): the control socket's directory and the
/// private runtime state below.
pub const RUN_DIR: &str = "/run/keel";
/// The directory of the control socket, which sits there alone: granting a container the
/// socket (a bind of this directory) grants nothing else.
pub const CONTROL_DIR: &str = "/run/keel/ctl";
/// The control socket `keelctl` talks to.
pub const CONTROL_SOCKET: &str = "/run/keel/ctl/control.sock";
/// libcontainer's state root (root-only). Kept short: Unix socket paths below it are limited to
/// 108 bytes.
pub const STATE_DIR: &str = "/run/keel/state";
/// The shim's private copies of bundle specs (root-only).
pub const SHIM_DIR: &str = "/run/keel/shim";
/// Directories holding runtime state no container may reach: whoever can write them can make
/// the shim (root, every capability, the host's mount namespace) run what they wrote. A YAML
/// bind that would expose them is refused at build time (see `docs/security.md`).
pub const PRIVATE_DIRS: [&str; 2] = [STATE_DIR, SHIM_DIR];
/// Where container logs are written.
pub const LOG_DIR: &str = "/var/log";
/// The name of the virtio-serial port `keel run` attaches for `keel ctl`: PID 1 serves the
/// control protocol on it (framed as `keel_supervisor::protocol::Tagged`), with every request
/// allowed, since only the host end's owner can reach it.
pub const HOST_CHANNEL: &str = "org.keel.ctl.0";

/// Where the shim lives in the root filesystem.
pub const SHIM_PATH: &str = "/usr/libexec/keel-shim";
/// Environment variable naming the file descriptor on which `keel-shim` reports
/// [`ShimEvent`]s to its parent. Without it the shim logs to stderr and reports nothing.
pub const SHIM_STATUS_FD_ENV: &str = "KEEL_SHIM_STATUS_FD";

/// What `keel-shim run <bundle> <id>` reports to its parent, one JSON object per line on the
/// status fd. The shim's exit status is the container's (128+signal when killed); a shim that
/// fails before the container starts exits with 127 after a `log` event saying why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ShimEvent {
    /// The container exists (namespaces, cgroup, mounts set up); its init waits to be started.
    Created { pid: i32 },
    /// The container's process runs.
    Started { pid: i32 },
    /// A diagnostic from the shim itself (not the container's output).
    Log { level: String, message: String },
    /// The container's process ended with this status (also the shim's exit status).
    Exited {
        status: i32,
        /// The kernel's OOM killer killed a process of the container (its cgroup's
        /// `memory.events` counted an `oom_kill`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        oom_killed: bool,
    },
}

/// The cgroup (below `/sys/fs/cgroup`) a container gets when its YAML names none.
pub fn default_cgroups_path(section: &str, name: &str) -> String {
    format!("/keel/{section}/{name}")
}

/// The bundle directory name of the `index`th container of an ordered section (onboot,
/// onshutdown): a zero-padded prefix keeps lexical order equal to YAML order.
pub fn ordered_bundle_name(index: usize, name: &str) -> String {
    format!("{index:03}-{name}")
}

/// `runtime.json`: what happens outside the container around its start, and how it is
/// supervised. Field names follow LinuxKit's `runtime:` section so existing files read as-is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Runtime {
    /// Cgroups created (below `/sys/fs/cgroup`) before the container starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<String>,
    /// Mounts made in the root mount namespace before create; a relative destination is
    /// relative to the bundle's rootfs. Destinations (and overlay dirs) are created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Directories created in the root mount namespace (after `mounts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mkdir: Vec<String>,
    /// Network interfaces moved into or created in the container's network namespace between
    /// create and start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Namespaces of the container bind-mounted to paths, so later containers can join them.
    #[serde(
        default,
        rename = "bindNS",
        skip_serializing_if = "BindNamespaces::is_empty"
    )]
    pub bind_ns: BindNamespaces,
    /// LinuxKit's containerd namespace; accepted for compatibility, unused by keel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// keel's supervision settings.
    #[serde(default, skip_serializing_if = "Supervision::is_default")]
    pub keel: Supervision,
}

/// A mount in LinuxKit's runtime section (the OCI mount shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An interface to place in the container's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    /// Name of the interface (existing in the root namespace, or to create).
    pub name: String,
    /// Link type to create (for example `veth`, `wireguard`); empty moves an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<String>,
    /// For `veth`: the peer's name, which stays in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Create in the root namespace, then move.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_in_root: bool,
}

/// Paths to bind-mount the container's namespaces onto, by namespace type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindNamespaces {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
}

impl BindNamespaces {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// `(namespace type, path)` for every namespace to bind.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("cgroup", &self.cgroup),
            ("ipc", &self.ipc),
            ("mnt", &self.mnt),
            ("net", &self.net),
            ("pid", &self.pid),
            ("user", &self.user),
            ("uts", &self.uts),
        ]
        .into_iter()
        .filter_map(|(kind, path)| path.as_deref().map(|p| (kind, p)))
    }
}

/// How the supervisor treats a container. Set from keel's YAML extension fields; a plain
/// `linuxkit.yml` gets the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Supervision {
    /// Restart policy (services only; onboot and onshutdown containers never restart).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Services that must be ready before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// When the service counts as ready.
    #[serde(default, skip_serializing_if = "Readiness::is_started")]
    pub readiness: Readiness,
    /// For onboot/onshutdown containers: how long it may run before it is killed.
    #[serde(default, with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when stopping.
    #[serde(default, with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    /// What the container's processes may ask of the control socket (nothing by default).
    #[serde(default, skip_serializing_if = "ControlGrant::is_none")]
    pub control: ControlGrant,
}

impl Supervision {
    /// The longest `timeout` and `stopGracePeriod` keel accepts: the host tool refuses longer
    /// ones and the guest refuses a `runtime.json` with longer ones, so deadlines computed from
    /// them stay far from the clock's range.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The first duration above [`Supervision::MAX_DURATION`], as `(field name, value)`.
    pub fn out_of_range(&self) -> Option<(&'static str, Duration)> {
        [
            ("timeout", self.timeout),
            ("stopGracePeriod", self.stop_grace_period),
        ]
        .into_iter()
        .find_map(|(name, d)| d.filter(|d| *d > Self::MAX_DURATION).map(|d| (name, d)))
    }
}

/// `containers/system.json`: the system-wide settings PID 1 reads at boot (YAML `console:`).
/// Absent means every default; a file PID 1 cannot read or parse is reported and the defaults
/// are used (the console prompt stays off).
pub const SYSTEM_FILE: &str = "containers/system.json";
/// The most bytes of [`SYSTEM_FILE`] PID 1 reads; a longer file is refused.
pub const MAX_SYSTEM_FILE: u64 = 64 * 1024;

/// What [`SYSTEM_FILE`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct System {
    #[serde(default, skip_serializing_if = "ConsoleSettings::is_default")]
    pub console: ConsoleSettings,
    /// YAML `health:`; absent: PID 1's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSettings>,
}

/// YAML `health:`: when an A/B version on trial counts as good (PID 1's boot assessment): every
/// service (or those `services` names) running and ready for `stable`, within `timeout` of the
/// supervisor's start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthSettings {
    #[serde(default, with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub stable: Option<Duration>,
    /// The services that must be running and ready; absent: every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
}

/// YAML `console:`: the prompt PID 1 serves on the console, and how container output shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Who may use the prompt: `None` (off, the default), `Inspect` (read-only verbs) or
    /// `Admin` (every verb).
    #[serde(default)]
    pub prompt: ControlGrant,
    /// Container output reaches the console unfiltered (terminal escape sequences included);
    /// by default control characters are shown escaped (`\x1b`).
    #[serde(default)]
    pub raw: bool,
}

impl ConsoleSettings {
    pub fn is_default(&self) -> bool {
        *self == ConsoleSettings::default()
    }
}

impl System {
    /// Parses [`SYSTEM_FILE`]'s text.
    /// Only an object is accepted (serde would also read a struct from an array).
    pub fn from_json(text: &str) -> Result<System, serde_json::Error> {
        match serde_json::from_str::<serde_json::Value>(text)? {
            v @ serde_json::Value::Object(_) => serde_json::from_value(v),
            _ => Err(serde::de::Error::custom("expected an object")),
        }
    }
}

/// Which control-socket requests a container's processes may make (YAML `control:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlGrant {
    /// None: the container is refused (the default).
    #[default]
    None,
    /// Requests that only read: list, ps, logs, timeline, top.
    Inspect,
    /// Every request, including start, stop, restart, kill, poweroff and reboot (and, on the
    /// console, exec).
    Admin,
}

impl ControlGrant {
    pub fn is_none(&self) -> bool {
        *self == ControlGrant::None
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ControlGrant::None => "none",
            ControlGrant::Inspect => "inspect",
            ControlGrant::Admin => "admin",
        }
    }
}

/// Whether a service is started again after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status (the default for services).
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// When a started service counts as ready for the services that depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Readiness {
    /// As soon as its process has started.
    #[default]
    Started,
    /// When a TCP port on the guest's loopback accepts connections.
    Tcp(u16),
    /// When a file exists (a path in the root mount namespace).
    File(String),
}

impl Readiness {
    pub fn is_started(&self) -> bool {
        matches!(self, Readiness::Started)
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linuxkit_runtime_json_reads() {
        let text = r#"{"cgroups":["/a"],"mounts":[{"destination":"rootfs","type":"overlay",
            "source":"overlay","options":["lowerdir=lower"]}],"mkdir":["/run/x"],
            "interfaces":[{"name":"eth1","add":"veth","peer":"eth2","createInRoot":true}],
            "bindNS":{"net":"/run/netns/x"},"namespace":"services.linuxkit"}"#;
        let rt: Runtime = serde_json::from_str(text).unwrap();
        assert_eq!(rt.cgroups, ["/a"]);
        assert_eq!(rt.mounts[0].kind.as_deref(), Some("overlay"));
        assert!(rt.interfaces[0].create_in_root);
        assert_eq!(
            rt.bind_ns.entries().collect::<Vec<_>>(),
            [("net", "/run/netns/x")]
        );
        assert_eq!(rt.keel, Supervision::default());
    }

    #[test]
    fn supervision_round_trips() {
        let rt = Runtime {
            keel: Supervision {
                restart: RestartPolicy::OnFailure,
                depends_on: vec!["db".into()],
                readiness: Readiness::Tcp(6379),
                timeout: Some(Duration::from_millis(1500)),
                stop_grace_period: None,
                control: ControlGrant::None,
            },
            ..Runtime::default()
        };
        let text = serde_json::to_string(&rt).unwrap();
        assert_eq!(
            text,
            r#"{"keel":{"restart":"on-failure","dependsOn":["db"],"readiness":{"tcp":6379},"timeout":1500}}"#
        );
        assert_eq!(serde_json::from_str::<Runtime>(&text).unwrap(), rt);
    }

    #[test]
    fn control_grants_are_kept_only_when_given() {
        let mut rt = Runtime::default();
        assert_eq!(serde_json::to_string(&rt).unwrap(), "{}");
        rt.keel.control = ControlGrant::Inspect;
        let text = serde_json::to_string(&rt).unwrap();
        assert_eq!(text, r#"{"keel":{"restart":"always","control":"inspect"}}"#);
        assert_eq!(serde_json::from_str::<Runtime>(&text).unwrap(), rt);
        let admin: Supervision = serde_json::from_str(r#"{"control":"admin"}"#).unwrap();
        assert_eq!(admin.control, ControlGrant::Admin);
        assert!(serde_json::from_str::<Supervision>(r#"{"control":"root"}"#).is_err());
        assert!(ControlGrant::Admin > ControlGrant::Inspect);
    }

    #[test]
    fn durations_above_the_maximum_are_found() {
        let mut s = Supervision {
            timeout: Some(Supervision::MAX_DURATION),
            ..Supervision::default()
        };
        assert_eq!(s.out_of_range(), None);
        s.stop_grace_period = Some(Duration::MAX);
        assert_eq!(s.out_of_range(), Some(("stopGracePeriod", Duration::MAX)));
        // Milliseconds as runtime.json has them: u64::MAX reads without overflow.
        let big: Supervision = serde_json::from_str(r#"{"timeout":18446744073709551615}"#).unwrap();
        assert_eq!(big.out_of_range().map(|(n, _)| n), Some("timeout"));
    }

    #[test]
    fn shim_events_are_json_lines() {
        let e = ShimEvent::Started { pid: 42 };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"event":"started","pid":42}"#);
        assert_eq!(serde_json::from_str::<ShimEvent>(&text).unwrap(), e);
    }

    #[test]
    fn exit_events_say_when_the_oom_killer_struck() {
        let plain = ShimEvent::Exited {
            status: 0,
            oom_killed: false,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"event":"exited","status":0}"#
        );
        let oom: ShimEvent =
            serde_json::from_str(r#"{"event":"exited","status":137,"oom_killed":true}"#).unwrap();
        assert_eq!(
            oom,
            ShimEvent::Exited {
                status: 137,
                oom_killed: true
            }
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<Runtime>(r#"{"mount":[]}"#).is_err());
    }

    #[test]
    fn ordered_names_sort_in_yaml_order() {
        let mut names: Vec<_> = (0..12).map(|i| ordered_bundle_name(i, "x")).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted);
        names.dedup();
        assert_eq!(names.len(), 12);
    }
}
