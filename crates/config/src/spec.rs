//! OCI spec generation: an image spec (+ the image's config and label) → `config.json` and
//! `runtime.json`, following LinuxKit's `ConfigToOCI`, plus what libcontainer needs to run the
//! spec unchanged on a read-only root (absolute `cgroupsPath`, `PATH`, explicit bounding set,
//! a `uts` namespace with `hostname`, pre-created mount points).
//!
//! Precedence: image config (Entrypoint+Cmd, Env, WorkingDir) < label < YAML. A YAML field
//! replaces the label's wholesale, except `capabilities.add` / `binds.add`, which append to the
//! label's (and are ignored when the YAML sets the plain field). `env` too is replaced, not
//! merged, as in LinuxKit: a YAML `env` drops the image's environment, `PATH` included (keel
//! then adds [`DEFAULT_PATH`]). The image's `User` is ignored, as in LinuxKit: `uid`/`gid`
//! default to 0.

use crate::error::{Error, Spanned};
use crate::load::{IdMap, check_volume_bind_in, resolve_id};
use crate::schema::{Config, ImageFields, ImageSpec, RuntimeSpec, Section, Volume};
use crate::{oci, seccomp_default, values};
use keel_bundle::{BindNamespaces, Mount, Runtime, Supervision};
use oci_spec::runtime::Spec;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The image configuration part of an OCI image (`config` in the image config JSON).
pub type ImageConfig = oci_spec::image::Config;

/// The label key holding LinuxKit's per-image defaults.
pub const LABEL: &str = "org.mobyproject.config";

/// The `PATH` added when the process environment has none: libcontainer refuses to start a
/// process without one, even an absolute command. LinuxKit adds nothing (runc then runs an
/// absolute command with no `PATH`, and cannot find a bare command name).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The defaults a container gets unless its YAML (or image label) says otherwise, and what
/// turns each off. Containers granted `CAP_SYS_ADMIN` are host-equivalent (they can undo any of
/// this), so they get LinuxKit's host-like `/proc` and `/sys`, as Docker's `--privileged` does.
/// Every row is documented in `docs/security.md`.
pub mod defaults {
    /// runc's and Docker's masked paths: kernel memory, keys, timers and firmware tables a
    /// container has no business reading. Off: `maskedPaths: []` or `CAP_SYS_ADMIN`.
    pub const MASKED_PATHS: &[&str] = &[
        "/proc/acpi",
        "/proc/asound",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/sys/devices/virtual/powercap",
        "/sys/firmware",
    ];
    /// runc's and Docker's read-only paths: host sysctls (`kernel.core_pattern` runs a helper as
    /// host root), SysRq, IRQ affinity. Off: `readonlyPaths: []` or `CAP_SYS_ADMIN`.
    pub const READONLY_PATHS: &[&str] = &[
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ];
    /// `pids.max` of a container whose `resources` set no `pids`: a fork bomb stops there.
    /// Off: `resources: {pids: {limit: -1}}`.
    pub const PIDS_LIMIT: i64 = 4096;
    /// The size of the tmpfs holding a writable root's upper layer (a share of the machine's
    /// memory): filling it fails with ENOSPC instead of exhausting memory. Bulk data belongs in
    /// a `tmpfs:` entry with its own size or a bind.
    pub const WRITABLE_LAYER_SIZE: &str = "size=25%";
    /// The capability that makes a container host-equivalent.
    pub const HOST_EQUIVALENT_CAP: &str = "CAP_SYS_ADMIN";
}

/// Where one container sits in the config, and what it may refer to.
#[derive(Debug, Clone, Copy)]
pub struct SpecContext<'a> {
    pub section: Section,
    /// Index within the section (the `NNN-` prefix of ordered bundles).
    pub index: usize,
    /// uid/gid allocation ([`Config::ids`]).
    pub ids: &'a IdMap,
    /// Declared volumes (bind sources that are volume names).
    pub volumes: &'a [Volume],
    /// The target architecture (`x86_64`, `aarch64`): the default seccomp profile names its
    /// system calls.
    pub arch: &'a str,
}

impl<'a> SpecContext<'a> {
    pub fn new(
        config: &'a Config,
        ids: &'a IdMap,
        section: Section,
        index: usize,
        arch: &'a str,
    ) -> Self {
        SpecContext {
            section,
            index,
            ids,
            volumes: &config.volumes,
            arch,
        }
    }
}

/// How a bundle's root filesystem is laid out (LinuxKit's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsLayout {
    /// Writable, ephemeral root: the image goes in `lower/`, with empty `tmp/` and `rootfs/`;
    /// `runtime.json` mounts a tmpfs on `tmp` and an overlay on `rootfs`.
    Overlay,
    /// `readonly: true`: the image goes in `rootfs/`, which `runtime.json` binds onto itself.
    Direct,
}

/// A generated bundle, minus the image's files.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub config: Spec,
    pub runtime: Runtime,
    pub readonly: bool,
    pub layout: RootfsLayout,
    /// Every mount destination, relative to the rootfs: create these in the image at build time
    /// (the root is read-only at run time).
    pub mount_points: Vec<String>,
    /// The bundle directory, relative to the root filesystem (`containers/onboot/000-name`).
    pub dir: String,
}

impl Bundle {
    /// `config.json`: pretty JSON with sorted keys and sorted capability lists (reproducible).
    pub fn config_json(&self) -> Result<String, Error> {
        let v = serde_json::to_value(&self.config).map_err(|source| Error::Json {
            what: "config.json",
            source,
        })?;
        Ok(pretty(&canonical(v)))
    }

    /// `runtime.json`, pretty.
    pub fn runtime_json(&self) -> Result<String, Error> {
        let v = serde_json::to_value(&self.runtime).map_err(|source| Error::Json {
            what: "runtime.json",
            source,
        })?;
        Ok(pretty(&canonical(v)))
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Sorts object keys (whatever serde_json's map type) and capability sets (hash sets in
/// oci-spec), so output bytes depend only on content.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                let v = if k == "capabilities" {
                    sort_cap_lists(v)
                } else {
                    v
                };
                out.insert(k, canonical(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn sort_cap_lists(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| match v {
                    Value::Array(mut a) => {
                        a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
                        (k, Value::Array(a))
                    }
                    other => (k, other),
                })
                .collect(),
        ),
        other => other,
    }
}

/// The runtime mounts that put the image root in place: an overlay of `image_root` with a tmpfs
/// upper (writable) or a bind of `image_root` onto `rootfs` (read-only). `bundle_dir` and
/// `image_root` are absolute guest paths; `image_root` is the bundle's own `lower`/`rootfs`
/// unless the builder shares another bundle's copy of the same image.
pub fn rootfs_mounts(bundle_dir: &str, image_root: &str, layout: RootfsLayout) -> Vec<Mount> {
    let rootfs = format!("{bundle_dir}/{}", keel_bundle::ROOTFS_DIR);
    match layout {
        RootfsLayout::Overlay => {
            let tmp = format!("{bundle_dir}/tmp");
            vec![
                Mount {
                    destination: tmp.clone(),
                    kind: Some("tmpfs".into()),
                    source: Some("tmpfs".into()),
                    options: vec![defaults::WRITABLE_LAYER_SIZE.into()],
                },
                // Private, so nothing else sees the temporary layers.
                Mount {
                    destination: tmp.clone(),
                    kind: None,
                    source: None,
                    options: vec!["remount".into(), "private".into()],
                },
                Mount {
                    destination: rootfs,
                    kind: Some("overlay".into()),
                    source: Some("overlay".into()),
                    options: vec![
                        format!("lowerdir={image_root}"),
                        format!("upperdir={tmp}/upper"),
                        format!("workdir={tmp}/work"),
                    ],
                },
            ]
        }
        // A self bind makes rootfs a mount point, which the runtime prefers.
        RootfsLayout::Direct => {
            vec![Mount {
                destination: rootfs,
                kind: None,
                source: Some(image_root.into()),
                options: vec!["bind".into()],
            }]
        }
    }
}

/// The image config's `org.mobyproject.config` label, parsed; `None` when absent or empty.
pub fn image_label(image: &ImageConfig, reference: &str) -> Result<Option<ImageFields>, Error> {
    match image.labels().as_ref().and_then(|l| l.get(LABEL)) {
        Some(text) if !text.trim().is_empty() => {
            crate::load::parse_label(text, reference).map(Some)
        }
        _ => Ok(None),
    }
}

fn pick<'a, T>(label: &'a Option<T>, yaml: &'a Option<T>) -> Option<&'a T> {
    yaml.as_ref().or(label.as_ref())
}

/// LinuxKit's "empty string does not override".
fn pick_str<'a>(
    label: &'a Option<Spanned<String>>,
    yaml: &'a Option<Spanned<String>>,
) -> Option<&'a str> {
    let ne =
        |o: &'a Option<Spanned<String>>| o.as_ref().map(|s| s.as_str()).filter(|s| !s.is_empty());
    ne(yaml).or(ne(label))
}

fn strs(l: &Spanned<Vec<Spanned<String>>>) -> Vec<String> {
    l.iter().map(|s| s.value.clone()).collect()
}

/// Generates the bundle of `spec`.
pub fn generate(
    spec: &ImageSpec,
    image: Option<&ImageConfig>,
    label: Option<&ImageFields>,
    ctx: &SpecContext<'_>,
) -> Result<Bundle, Error> {
    let empty = ImageFields::default();
    let l = label.unwrap_or(&empty);
    let y = &spec.fields;
    let name = spec.name.as_str();

    // Process: args, env, cwd.
    let args: Vec<String> = match pick(&l.command, &y.command) {
        Some(c) => strs(c),
        None => image
            .map(|i| {
                let mut a = i.entrypoint().clone().unwrap_or_default();
                a.extend(i.cmd().clone().unwrap_or_default());
                a
            })
            .unwrap_or_default(),
    };
    if args.is_empty() {
        return Err(spec.loc.err(format!(
            "{name:?} has no command: the image sets no Entrypoint or Cmd and the YAML no \"command\""
        )));
    }
    // LinuxKit's `assignStrings3`: the YAML's list, else the label's, else the image's; never
    // a merge of two.
    let mut env: Vec<String> = match pick(&l.env, &y.env) {
        Some(e) => strs(e),
        None => image.and_then(|i| i.env().clone()).unwrap_or_default(),
    };
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    let image_cwd = image
        .and_then(|i| i.working_dir().clone())
        .filter(|w| !w.is_empty());
    let cwd = pick_str(&l.cwd, &y.cwd)
        .map(str::to_owned)
        .or(image_cwd)
        .unwrap_or_else(|| "/".into());

    // Capabilities: effective = caps; bounding, permitted, inheritable = caps ∪ ambient.
    let caps_list: Vec<Spanned<String>> = match &y.capabilities {
        Some(c) => c.value.clone(),
        None => l
            .capabilities
            .iter()
            .chain(&y.capabilities_add)
            .flat_map(|c| c.iter().cloned())
            .collect(),
    };
    values::check_caps_merged(&caps_list)?;
    let mut caps = values::expand_caps(&caps_list);
    caps.sort();
    caps.dedup();
    let mut ambient = pick(&l.ambient, &y.ambient)
        .map(|a| values::expand_caps(a))
        .unwrap_or_default();
    ambient.sort();
    ambient.dedup();
    let mut bounding: Vec<String> = caps.iter().chain(&ambient).cloned().collect();
    bounding.sort();
    bounding.dedup();

    let host_equivalent = bounding.iter().any(|c| c == defaults::HOST_EQUIVALENT_CAP);

    let readonly = pick(&l.readonly, &y.readonly).is_some_and(|r| **r);

    // Mounts: defaults, then tmpfs, binds and mounts, each replacing the same destination.
    let mut mounts: BTreeMap<String, Mount> = BTreeMap::new();
    let mut add = |dest: &str, tp: &str, src: &str, opts: Vec<String>| {
        mounts.insert(
            dest.to_string(),
            Mount {
                destination: dest.into(),
                kind: Some(tp.into()),
                source: Some(src.into()),
                options: opts,
            },
        );
    };
    let o = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ro = |mut v: Vec<String>| {
        if readonly {
            v.push("ro".into());
        }
        v
    };
    add(
        "/proc",
        "proc",
        "proc",
        o(&["nosuid", "nodev", "noexec", "relatime"]),
    );
    add(
        "/dev",
        "tmpfs",
        "tmpfs",
        ro(o(&["nosuid", "strictatime", "mode=755", "size=65536k"])),
    );
    add(
        "/dev/pts",
        "devpts",
        "devpts",
        o(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ]),
    );
    // sysfs is read-only without CAP_SYS_ADMIN whatever `readonly` says: writable, it lets root
    // in any container rebind drivers, change power and firmware settings.
    let mut sys_options = o(&["nosuid", "noexec", "nodev"]);
    if readonly || !host_equivalent {
        sys_options.push("ro".into());
    }
    add("/sys", "sysfs", "sysfs", sys_options);
    add(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        o(&["nosuid", "noexec", "nodev", "relatime", "ro"]),
    );
    for t in pick(&l.tmpfs, &y.tmpfs).iter().flat_map(|t| t.iter()) {
        let (dest, opts) = values::parse_tmpfs(t)?;
        add(&dest, "tmpfs", "tmpfs", opts);
    }
    let binds: Vec<&Spanned<String>> = match &y.binds {
        Some(b) => b.iter().collect(),
        None => l
            .binds
            .iter()
            .chain(&y.binds_add)
            .flat_map(|b| b.iter())
            .collect(),
    };
    for b in binds {
        let bind = check_volume_bind_in(b, ctx.volumes)?;
        check_private_state(b, &bind)?;
        add(&bind.destination, "bind", &bind.source, bind.options);
    }
    for m in pick(&l.mounts, &y.mounts).iter().flat_map(|m| m.iter()) {
        let m = m.resolve()?;
        mounts.insert(m.destination.clone(), m);
    }
    let mount_points: Vec<String> = mounts
        .keys()
        .map(|d| d.trim_start_matches('/').to_string())
        .filter(|d| !d.is_empty())
        .collect();
    let mounts: Vec<Mount> = mounts.into_values().collect();

    // Namespaces (LinuxKit order), plus uts when a hostname needs one.
    let mut namespaces: Vec<oci::Namespace> = Vec::new();
    let ns = |namespaces: &mut Vec<oci::Namespace>,
              kind: &'static str,
              choice: &str,
              new_words: &[&str]| {
        if choice == "host" || choice == "root" {
            return false;
        }
        let path = (!new_words.contains(&choice)).then(|| choice.to_owned());
        namespaces.push(oci::Namespace { kind, path });
        true
    };
    ns(
        &mut namespaces,
        "network",
        pick_str(&l.net, &y.net).unwrap_or("root"),
        &["new", "none"],
    );
    ns(
        &mut namespaces,
        "ipc",
        pick_str(&l.ipc, &y.ipc).unwrap_or("root"),
        &["new"],
    );
    let hostname = pick_str(&l.hostname, &y.hostname);
    let has_uts = ns(
        &mut namespaces,
        "uts",
        pick_str(&l.uts, &y.uts).unwrap_or("root"),
        &["new"],
    );
    if hostname.is_some() && !has_uts {
        namespaces.push(oci::Namespace::new("uts"));
    }
    ns(
        &mut namespaces,
        "pid",
        pick_str(&l.pid, &y.pid).unwrap_or("new"),
        &["new"],
    );
    let userns = ns(
        &mut namespaces,
        "user",
        pick_str(&l.userns, &y.userns).unwrap_or("root"),
        &["new"],
    );
    namespaces.push(oci::Namespace::new("mount"));
    namespaces.push(oci::Namespace::new("cgroup"));

    let mut rlimits = Vec::new();
    for r in pick(&l.rlimits, &y.rlimits).iter().flat_map(|r| r.iter()) {
        let (kind, soft, hard) = values::parse_rlimit(r)?;
        rlimits.push(oci::Rlimit { kind, soft, hard });
    }

    let uid = pick(&l.uid, &y.uid)
        .map(|i| resolve_id(i, ctx.ids))
        .transpose()?
        .unwrap_or(0);
    let gid = pick(&l.gid, &y.gid)
        .map(|i| resolve_id(i, ctx.ids))
        .transpose()?
        .unwrap_or(0);
    let mut additional = Vec::new();
    for g in pick(&l.additional_gids, &y.additional_gids)
        .iter()
        .flat_map(|g| g.iter())
    {
        additional.push(resolve_id(g, ctx.ids)?);
    }

    let seccomp = match pick(&l.seccomp, &y.seccomp) {
        Some(s) if s.value.as_str() == Some(seccomp_default::UNCONFINED) => None,
        Some(s) => Some(s.value.clone()),
        // Host-equivalent containers could undo a filter anyway (as with Docker's
        // --privileged); the rest get Docker's default profile for their capabilities.
        None if host_equivalent => None,
        None => Some(
            seccomp_default::default_profile(&bounding, ctx.arch)
                .map_err(|e| spec.loc.err(format!("default seccomp profile: {e}")))?,
        ),
    };
    let process = oci::Process {
        terminal: false,
        user: oci::User {
            uid,
            gid,
            additional_gids: additional,
        },
        args,
        env,
        cwd,
        capabilities: oci::Capabilities {
            bounding: bounding.clone(),
            effective: caps,
            inheritable: bounding.clone(),
            permitted: bounding,
            ambient,
        },
        no_new_privileges: pick(&l.no_new_privileges, &y.no_new_privileges).is_some_and(|b| **b),
        rlimits,
        oom_score_adj: pick(&l.oom_score_adj, &y.oom_score_adj).map(|o| o.value),
    };

    // Resources (checked against their schema at load), with device cgroup rules and the pids
    // default added.
    let mut resources = match pick(&l.resources, &y.resources).map(|r| &r.value) {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    // Deny every device first, as runc's spec does: the runtime then allows only its standard
    // list (null, zero, full, random, urandom, tty, console, ptmx, pts) and what follows.
    let mut device_rules = vec![to_json(&oci::DeviceRule::deny_all())?];
    if let Some(Value::Array(given)) = resources.get("devices") {
        device_rules.extend(given.iter().cloned());
    }
    let mut devices = Vec::new();
    for d in pick(&l.devices, &y.devices).iter().flat_map(|d| d.iter()) {
        if d.path == "all" {
            device_rules.push(to_json(&oci::DeviceRule::allow(&d.kind, None))?);
            continue;
        }
        let mode_text = Spanned::new(d.mode.clone().unwrap_or_default(), d.loc.clone());
        let mode = values::parse_octal(&mode_text)?;
        let (major, minor) = (d.major.unwrap_or(0), d.minor.unwrap_or(0));
        devices.push(oci::Device {
            path: d.path.clone(),
            kind: d.kind.clone(),
            major,
            minor,
            file_mode: mode,
        });
        device_rules.push(to_json(&oci::DeviceRule::allow(
            &d.kind,
            Some((major, minor)),
        ))?);
    }
    resources.insert("devices".into(), Value::Array(device_rules));
    if !resources.contains_key("pids") {
        resources.insert(
            "pids".into(),
            to_json(&oci::Pids {
                limit: defaults::PIDS_LIMIT,
            })?,
        );
    }

    let mut cgroups_path = pick_str(&l.cgroups_path, &y.cgroups_path)
        .map(str::to_owned)
        .unwrap_or_else(|| keel_bundle::default_cgroups_path(ctx.section.as_str(), name));
    if !cgroups_path.starts_with('/') {
        // runc reads a relative cgroupfs path from the root; libcontainer needs it absolute.
        cgroups_path.insert(0, '/');
    }

    // A list in the YAML (or label) replaces the default; an empty one turns it off.
    let paths = |given: Option<&Spanned<Vec<Spanned<String>>>>, default: &[&str]| match given {
        Some(m) => strs(m),
        None if host_equivalent => Vec::new(),
        None => default.iter().map(|p| (*p).to_owned()).collect(),
    };
    let uid_maps = pick(&l.uid_mappings, &y.uid_mappings).filter(|m| !m.is_empty());
    let gid_maps = pick(&l.gid_mappings, &y.gid_mappings).filter(|m| !m.is_empty());
    if (uid_maps.is_some() || gid_maps.is_some()) && !userns {
        let at = uid_maps.or(gid_maps).map(|m| &m.loc).unwrap_or(&spec.loc);
        return Err(at.err("uidMappings/gidMappings need a user namespace; set userns: new"));
    }
    let linux = oci::Linux {
        namespaces,
        resources,
        cgroups_path,
        devices,
        sysctl: pick(&l.sysctl, &y.sysctl)
            .filter(|s| !s.is_empty())
            .map(|s| s.value.clone()),
        seccomp,
        rootfs_propagation: pick_str(&l.rootfs_propagation, &y.rootfs_propagation)
            .map(str::to_owned),
        masked_paths: paths(
            pick(&l.masked_paths, &y.masked_paths),
            defaults::MASKED_PATHS,
        ),
        readonly_paths: paths(
            pick(&l.readonly_paths, &y.readonly_paths),
            defaults::READONLY_PATHS,
        ),
        uid_mappings: uid_maps.map(|m| m.value.clone()),
        gid_mappings: gid_maps.map(|m| m.value.clone()),
    };
    let config = oci::Config {
        oci_version: oci_spec::runtime::VERSION,
        process,
        root: oci::Root {
            path: keel_bundle::ROOTFS_DIR,
            readonly,
        },
        mounts,
        linux,
        hostname: hostname.map(str::to_owned),
        annotations: pick(&l.annotations, &y.annotations)
            .map(|a| a.value.clone())
            .unwrap_or_default(),
    };
    let config = oci::to_spec(&config).map_err(|e| match e {
        oci::SpecError::Json(source) => Error::Json {
            what: "config.json",
            source,
        },
        oci::SpecError::Dropped(paths) => spec.loc.err(format!(
            "the runtime spec would silently drop {}: check the spelling of these fields (seccomp, resources)",
            paths.join(", ")
        )),
    })?;

    // runtime.json
    let dir = format!(
        "{}/{}/{}",
        keel_bundle::CONTAINERS_DIR,
        ctx.section.as_str(),
        ctx.section.bundle_name(ctx.index, name)
    );
    let layout = if readonly {
        RootfsLayout::Direct
    } else {
        RootfsLayout::Overlay
    };
    let image_root = format!(
        "/{dir}/{}",
        if readonly {
            keel_bundle::ROOTFS_DIR
        } else {
            "lower"
        }
    );
    let mut runtime = merge_runtime(
        l.runtime.as_ref().map(|r| &r.value),
        y.runtime.as_ref().map(|r| &r.value),
    );
    let mut rt_mounts = rootfs_mounts(&format!("/{dir}"), &image_root, layout);
    rt_mounts.append(&mut runtime.mounts);
    runtime.mounts = rt_mounts;
    runtime.keel = supervision(l, y, ctx.section);

    Ok(Bundle {
        config,
        runtime,
        readonly,
        layout,
        mount_points,
        dir,
    })
}

/// A typed value as JSON (for the parts of `resources` keel adds to the YAML's).
fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, Error> {
    serde_json::to_value(value).map_err(|source| Error::Json {
        what: "config.json",
        source,
    })
}

/// Refuses a bind of a path inside keel's private runtime state ([`keel_bundle::PRIVATE_DIRS`]):
/// whoever can write it makes the shim run what they wrote as root in the host's mount
/// namespace. (Binds of a directory above it, such as LinuxKit's common `/run` or `/var/run`,
/// are fine: the guest mounts the state unbindable, so a recursive bind leaves it out.)
fn check_private_state(b: &Spanned<String>, bind: &values::Bind) -> Result<(), Error> {
    let source = guest_path(&bind.source);
    for private in keel_bundle::PRIVATE_DIRS {
        let private = std::path::Path::new(private);
        if source.starts_with(private) {
            return Err(b.loc.err(format!(
                "bind source {} is inside keel's private runtime state ({}), which no container may reach; to reach the control socket bind {dir}:{dir} and set \"control: inspect\" or \"control: admin\"",
                bind.source,
                private.display(),
                dir = keel_bundle::CONTROL_DIR,
            )));
        }
    }
    Ok(())
}

/// A bind source as the guest resolves it: `.` and `..` applied, and the root filesystem's one
/// symlink into `/run` (`/var/run`) followed.
fn guest_path(source: &str) -> std::path::PathBuf {
    use std::path::{Component, PathBuf};
    let mut path = PathBuf::from("/");
    for c in std::path::Path::new(source).components() {
        match c {
            Component::Normal(n) => path.push(n),
            Component::ParentDir => {
                path.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    match path.strip_prefix("/var/run") {
        Ok(rest) => std::path::Path::new("/run").join(rest),
        Err(_) => path,
    }
}

/// LinuxKit's `assignRuntime`: each part from the YAML if set, else from the label.
fn merge_runtime(l: Option<&RuntimeSpec>, y: Option<&RuntimeSpec>) -> Runtime {
    let empty = RuntimeSpec::default();
    let (l, y) = (l.unwrap_or(&empty), y.unwrap_or(&empty));
    let b = |lv: &Option<String>, yv: &Option<String>| yv.clone().or_else(|| lv.clone());
    Runtime {
        cgroups: pick(&l.cgroups, &y.cgroups).cloned().unwrap_or_default(),
        mounts: pick(&l.mounts, &y.mounts).cloned().unwrap_or_default(),
        mkdir: pick(&l.mkdir, &y.mkdir).cloned().unwrap_or_default(),
        interfaces: pick(&l.interfaces, &y.interfaces)
            .cloned()
            .unwrap_or_default(),
        bind_ns: BindNamespaces {
            cgroup: b(&l.bind_ns.cgroup, &y.bind_ns.cgroup),
            ipc: b(&l.bind_ns.ipc, &y.bind_ns.ipc),
            mnt: b(&l.bind_ns.mnt, &y.bind_ns.mnt),
            net: b(&l.bind_ns.net, &y.bind_ns.net),
            pid: b(&l.bind_ns.pid, &y.bind_ns.pid),
            user: b(&l.bind_ns.user, &y.bind_ns.user),
            uts: b(&l.bind_ns.uts, &y.bind_ns.uts),
        },
        namespace: pick(&l.namespace, &y.namespace).cloned(),
        keel: Supervision::default(),
    }
}

/// keel's supervision settings; service-only settings from a label are ignored elsewhere.
fn supervision(l: &ImageFields, y: &ImageFields, section: Section) -> Supervision {
    let mut s = Supervision::default();
    if section == Section::Services {
        if let Some(r) = pick(&l.restart, &y.restart) {
            s.restart = r.value;
        }
        if let Some(r) = pick(&l.readiness, &y.readiness) {
            s.readiness = r.value.clone();
        }
        s.depends_on = y.depends_on.as_ref().map(strs).unwrap_or_default();
    } else if let Some(t) = pick(&l.timeout, &y.timeout) {
        s.timeout = Some(t.value.value);
    }
    s.stop_grace_period = pick(&l.stop_grace_period, &y.stop_grace_period).map(|d| d.value.value);
    // Any section may inspect or steer the system; a YAML `control: none` revokes a label's grant.
    if let Some(c) = pick(&l.control, &y.control) {
        s.control = c.value;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Source, load, parse_label};
    use std::path::Path;

    fn config(text: &str) -> Config {
        let no_pkg = |_: &Path| -> Result<String, String> { Err("none".into()) };
        load(
            &[Source {
                name: "t.yml".into(),
                text: text.into(),
                dir: None,
            }],
            &no_pkg,
        )
        .unwrap()
    }

    fn gen_with(
        c: &Config,
        section: Section,
        label: Option<&ImageFields>,
    ) -> Result<Bundle, Error> {
        let ids = c.ids();
        let list = match section {
            Section::Onboot => &c.onboot,
            Section::Onshutdown => &c.onshutdown,
            Section::Services => &c.services,
        };
        generate(
            &list[0],
            None,
            label,
            &SpecContext::new(c, &ids, section, 0, "x86_64"),
        )
    }

    #[test]
    fn layout_and_mount_points() {
        let c = config(
            "onboot:\n  - name: a\n    image: x\n    command: [/a]\n    tmpfs: [/var/cache]\n",
        );
        let b = gen_with(&c, Section::Onboot, None).unwrap();
        assert_eq!(b.layout, RootfsLayout::Overlay);
        assert_eq!(b.dir, "containers/onboot/000-a");
        assert_eq!(
            b.mount_points,
            [
                "dev",
                "dev/pts",
                "proc",
                "sys",
                "sys/fs/cgroup",
                "var/cache"
            ]
        );
        assert_eq!(
            b.runtime.mounts[2].options[0],
            "lowerdir=/containers/onboot/000-a/lower"
        );
        let c =
            config("services:\n  - name: s\n    image: x\n    command: [/a]\n    readonly: true\n");
        let b = gen_with(&c, Section::Services, None).unwrap();
        assert_eq!((b.layout, b.readonly), (RootfsLayout::Direct, true));
        assert_eq!(b.runtime.mounts.len(), 1);
        assert_eq!(
            b.runtime.mounts[0].source.as_deref(),
            Some("/containers/services/s/rootfs")
        );
    }

    #[test]
    fn seccomp_profiles_reach_the_spec() {
        let c = config(
            "onboot:\n  - name: a\n    image: x\n    command: [/a]\n    seccomp:\n      defaultAction: SCMP_ACT_ALLOW\n      syscalls:\n        - names: [mkdir, mkdirat]\n          action: SCMP_ACT_ERRNO\n          errnoRet: 1\n",
        );
        let b = gen_with(&c, Section::Onboot, None).unwrap();
        let json = b.config_json().unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            v["linux"]["seccomp"]["syscalls"][0]["names"],
            serde_json::json!(["mkdir", "mkdirat"])
        );
        assert_eq!(v["linux"]["seccomp"]["syscalls"][0]["errnoRet"], 1);
    }

    #[test]
    fn unsupported_seccomp_actions_fail_the_build() {
        let no_pkg = |_: &Path| -> Result<String, String> { Err("none".into()) };
        let load_err = |text: &str| {
            load(
                &[Source {
                    name: "t.yml".into(),
                    text: text.into(),
                    dir: None,
                }],
                &no_pkg,
            )
            .unwrap_err()
            .to_string()
        };
        let e = load_err(
            "onboot:\n  - name: a\n    image: x\n    seccomp:\n      defaultAction: SCMP_ACT_NOTIFY\n",
        );
        assert!(
            e.starts_with("t.yml:5:7: seccomp: unsupported action \"SCMP_ACT_NOTIFY\""),
            "{e}"
        );
        let e = load_err("onboot:\n  - name: a\n    image: x\n    seccomp: {syscalls: []}\n");
        assert!(e.contains("defaultAction is required"), "{e}");
        let e = load_err(
            "onboot:\n  - name: a\n    image: x\n    seccomp: {defaultAction: SCMP_ACT_ALLOW, bogus: 1}\n",
        );
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn no_command_is_an_error() {
        let c = config("onboot:\n  - name: a\n    image: x\n");
        let e = gen_with(&c, Section::Onboot, None).unwrap_err().to_string();
        assert!(e.starts_with("t.yml:2:5: \"a\" has no command"), "{e}");
    }

    #[test]
    fn label_binds_are_checked_against_volumes() {
        let c = config(
            "volumes:\n  - {name: v, readonly: true}\nonboot:\n  - name: a\n    image: x\n    command: [/a]\n",
        );
        let label = parse_label(r#"{"binds": ["v:/v"]}"#, "img:1").unwrap();
        let e = gen_with(&c, Section::Onboot, Some(&label))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("img:1 label:1:12: volume \"v\" is read-only"),
            "{e}"
        );
        let label = parse_label(r#"{"binds": ["w:/w"]}"#, "img:1").unwrap();
        assert!(gen_with(&c, Section::Onboot, Some(&label)).is_err());
    }

    #[test]
    fn label_uid_name_must_exist() {
        let c = config("onboot:\n  - name: a\n    image: x\n    command: [/a]\n");
        let label = parse_label(r#"{"uid": "nobody"}"#, "img").unwrap();
        let e = gen_with(&c, Section::Onboot, Some(&label))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("img label:1:9: unknown uid/gid name \"nobody\""),
            "{e}"
        );
    }

    #[test]
    fn mappings_need_userns() {
        let c = config(
            "onboot:\n  - name: a\n    image: x\n    command: [/a]\n    uidMappings: [{hostID: 1, containerID: 0, size: 1}]\n",
        );
        let e = gen_with(&c, Section::Onboot, None).unwrap_err().to_string();
        assert!(e.contains("set userns: new"), "{e}");
    }

    #[test]
    fn label_service_settings_ignored_for_onboot() {
        let c = config("onboot:\n  - name: a\n    image: x\n    command: [/a]\n");
        let label = parse_label(
            r#"{"restart": "never", "readiness": {"tcp": 80}, "timeout": "5s"}"#,
            "img",
        )
        .unwrap();
        let b = gen_with(&c, Section::Onboot, Some(&label)).unwrap();
        assert_eq!(b.runtime.keel.restart, keel_bundle::RestartPolicy::Always);
        assert!(b.runtime.keel.readiness.is_started());
        assert_eq!(
            b.runtime.keel.timeout,
            Some(std::time::Duration::from_secs(5))
        );
    }

    #[test]
    fn image_config_label_is_read() {
        let image: ImageConfig = serde_json::from_str(
            r#"{"Cmd": ["/x"], "Labels": {"org.mobyproject.config": "{\"pid\": \"host\"}"}}"#,
        )
        .unwrap();
        let label = image_label(&image, "img").unwrap().unwrap();
        assert_eq!(label.pid.as_deref().map(String::as_str), Some("host"));
        let bad: ImageConfig =
            serde_json::from_str(r#"{"Labels": {"org.mobyproject.config": "{\"pidd\": 1}"}}"#)
                .unwrap();
        assert!(
            image_label(&bad, "img")
                .unwrap_err()
                .to_string()
                .starts_with("img label:1:2: unknown key \"pidd\"")
        );
    }

    #[test]
    fn json_output_is_canonical() {
        let c = config(
            "onboot:\n  - name: a\n    image: x\n    command: [/a]\n    capabilities: [CAP_SYS_ADMIN, CAP_CHOWN, CAP_KILL]\n    annotations: {z: 1, a: 2}\n",
        );
        let b = gen_with(&c, Section::Onboot, None).unwrap();
        let text = b.config_json().unwrap();
        assert_eq!(
            text,
            gen_with(&c, Section::Onboot, None)
                .unwrap()
                .config_json()
                .unwrap()
        );
        let chown = text.find("CAP_CHOWN").unwrap();
        assert!(
            chown < text.find("CAP_KILL").unwrap()
                && text.find("CAP_KILL").unwrap() < text.find("CAP_SYS_ADMIN").unwrap()
        );
        assert!(text.find("\"a\": \"2\"").unwrap() < text.find("\"z\": \"1\"").unwrap());
        assert!(text.ends_with("}\n"));
    }

    fn linux(b: &Bundle) -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&b.config_json().unwrap()).unwrap()["linux"]
            .clone()
    }

    fn sys_options(b: &Bundle) -> Vec<String> {
        b.config
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination().to_str() == Some("/sys"))
            .and_then(|m| m.options().clone())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_confine_a_plain_container() {
        let c = config(
            "services:
  - name: a
    image: x
    command: [/a]
",
        );
        let b = gen_with(&c, Section::Services, None).unwrap();
        let l = linux(&b);
        let masked: Vec<&str> = l["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(masked, defaults::MASKED_PATHS);
        assert!(
            l["readonlyPaths"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("/proc/sys"))
        );
        assert_eq!(l["resources"]["pids"]["limit"], defaults::PIDS_LIMIT);
        assert_eq!(
            l["resources"]["devices"][0],
            serde_json::json!({"allow": false, "access": "rwm"})
        );
        assert!(sys_options(&b).contains(&"ro".to_owned()));
        let layer = &b.runtime.mounts[0];
        assert_eq!(layer.kind.as_deref(), Some("tmpfs"));
        assert_eq!(layer.options, [defaults::WRITABLE_LAYER_SIZE]);
    }

    #[test]
    fn yaml_and_cap_sys_admin_turn_defaults_off_predictably() {
        // CAP_SYS_ADMIN: host-like /proc and /sys (it could undo them anyway); device and pids
        // limits stay.
        let c = config(
            "onboot:\n  - name: a\n    image: x\n    command: [/a]\n    capabilities: [CAP_SYS_ADMIN]\n",
        );
        let b = gen_with(&c, Section::Onboot, None).unwrap();
        let l = linux(&b);
        assert!(
            l.get("maskedPaths").is_none() && l.get("readonlyPaths").is_none(),
            "{l}"
        );
        assert!(!sys_options(&b).contains(&"ro".to_owned()));
        assert_eq!(l["resources"]["pids"]["limit"], defaults::PIDS_LIMIT);
        assert_eq!(l["resources"]["devices"][0]["allow"], false);

        // Explicit lists replace the defaults; an empty one turns them off; pids -1 is no limit.
        let c = config(
            "onboot:\n  - name: a\n    image: x\n    command: [/a]\n    maskedPaths: []\n    readonlyPaths: [/proc/sys]\n    resources: {pids: {limit: -1}, devices: [{allow: true, type: c, major: 10, minor: 200, access: rwm}]}\n",
        );
        let l = linux(&gen_with(&c, Section::Onboot, None).unwrap());
        assert!(l.get("maskedPaths").is_none(), "{l}");
        assert_eq!(l["readonlyPaths"], serde_json::json!(["/proc/sys"]));
        assert_eq!(l["resources"]["pids"]["limit"], -1);
        // Deny-all still comes first, the YAML's own rule after it.
        assert_eq!(l["resources"]["devices"][0]["allow"], false);
        assert_eq!(l["resources"]["devices"][1]["minor"], 200);
    }

    #[test]
    fn default_seccomp_unless_unconfined_or_host_equivalent() {
        let seccomp = |extra: &str| {
            let c = config(&format!(
                "services:\n  - name: a\n    image: x\n    command: [/a]\n{extra}"
            ));
            linux(&gen_with(&c, Section::Services, None).unwrap())
                .get("seccomp")
                .cloned()
        };
        let default = seccomp("").expect("a default profile");
        assert_eq!(default["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            default["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64"])
        );
        assert!(seccomp("    seccomp: unconfined\n").is_none());
        assert!(seccomp("    capabilities: [CAP_SYS_ADMIN]\n").is_none());
        let no_pkg = |_: &Path| -> Result<String, String> { Err("none".into()) };
        let e = load(
            &[Source {
                name: "t.yml".into(),
                text: "services:\n  - name: a\n    image: x\n    seccomp: off\n".into(),
                dir: None,
            }],
            &no_pkg,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "t.yml:4:14: seccomp: expected a profile (a mapping) or \"unconfined\""
            ),
            "{e}"
        );
    }

    #[test]
    fn binds_cannot_reach_the_private_runtime_state() {
        for source in [
            "/run/keel/state",
            "/run/keel/state/web",
            "/run/keel/shim",
            "/var/run/keel/state",
            "/run/keel/ctl/../state",
        ] {
            let c = config(&format!(
                "services:\n  - name: a\n    image: x\n    command: [/a]\n    capabilities: [all]\n    binds: [\"{source}:/x\"]\n"
            ));
            let e = gen_with(&c, Section::Services, None)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t.yml:6:13: bind source") && e.contains("private runtime state"),
                "{source}: {e}"
            );
            assert!(e.contains("/run/keel/ctl:/run/keel/ctl"), "{e}");
        }
        // LinuxKit's common binds of directories above it are fine: the state is unbindable.
        for source in ["/run", "/var/run", "/", "/run/keel", "/run/keel/ctl"] {
            let c = config(&format!(
                "services:\n  - name: a\n    image: x\n    command: [/a]\n    binds: [\"{source}:/x\"]\n"
            ));
            gen_with(&c, Section::Services, None).unwrap();
        }
    }
}
