//! `runtime.json` steps done in the root mount namespace around a container's life, with
//! LinuxKit's semantics (`pkg/init/cmd/service/prepare.go`): before create, `mounts` (the
//! rootfs bind or overlay included), then `mkdir`, then `cgroups`; between create and start,
//! `bindNS`. The mounts are undone after the container is deleted.
//!
//! Paths: a relative mount destination or `mkdir` entry is relative to the bundle's rootfs
//! (LinuxKit); a relative bind source or overlay `lowerdir`/`upperdir`/`workdir` is relative
//! to the bundle directory (LinuxKit always writes absolute ones).

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use keel_bundle::{BindNamespaces, Mount, ROOTFS_DIR, Runtime};
use nix::mount::{MntFlags, MsFlags};

/// Errors of the runtime steps; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot create directory {0}")]
    Mkdir(PathBuf, #[source] io::Error),
    #[error("cannot create mount point {0}")]
    MountPoint(PathBuf, #[source] io::Error),
    #[error("cannot mount {source_name} on {target}")]
    Mount {
        source_name: String,
        target: PathBuf,
        #[source]
        err: nix::Error,
    },
    #[error("cannot bind {kind} namespace of pid {pid} on {path}")]
    BindNs {
        kind: &'static str,
        pid: i32,
        path: PathBuf,
        #[source]
        err: io::Error,
    },
}

/// Mount options parsed from their fstab form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount (or remount) itself.
    pub flags: MsFlags,
    /// Propagation change applied after the mount (needs a call of its own).
    pub propagation: MsFlags,
    /// Everything else, comma-joined: filesystem data.
    pub data: String,
}

/// Parses fstab-style options into mount flags and filesystem data (LinuxKit's table plus
/// the recursive propagation forms). Unknown options are filesystem data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for opt in options {
        // (clear?, flag, is-propagation)
        let entry = match opt.as_str() {
            "defaults" => continue,
            "async" => (true, MsFlags::MS_SYNCHRONOUS, false),
            "atime" => (true, MsFlags::MS_NOATIME, false),
            "bind" => (false, MsFlags::MS_BIND, false),
            "dev" => (true, MsFlags::MS_NODEV, false),
            "diratime" => (true, MsFlags::MS_NODIRATIME, false),
            "dirsync" => (false, MsFlags::MS_DIRSYNC, false),
            "exec" => (true, MsFlags::MS_NOEXEC, false),
            "mand" => (false, MsFlags::MS_MANDLOCK, false),
            "noatime" => (false, MsFlags::MS_NOATIME, false),
            "nodev" => (false, MsFlags::MS_NODEV, false),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME, false),
            "noexec" => (false, MsFlags::MS_NOEXEC, false),
            "nomand" => (true, MsFlags::MS_MANDLOCK, false),
            "norelatime" => (true, MsFlags::MS_RELATIME, false),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME, false),
            "nosuid" => (false, MsFlags::MS_NOSUID, false),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC, false),
            "relatime" => (false, MsFlags::MS_RELATIME, false),
            "remount" => (false, MsFlags::MS_REMOUNT, false),
            "ro" => (false, MsFlags::MS_RDONLY, false),
            "rw" => (true, MsFlags::MS_RDONLY, false),
            "strictatime" => (false, MsFlags::MS_STRICTATIME, false),
            "suid" => (true, MsFlags::MS_NOSUID, false),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS, false),
            "private" => (false, MsFlags::MS_PRIVATE, true),
            "shared" => (false, MsFlags::MS_SHARED, true),
            "slave" => (false, MsFlags::MS_SLAVE, true),
            "unbindable" => (false, MsFlags::MS_UNBINDABLE, true),
            "rprivate" => (false, MsFlags::MS_PRIVATE | MsFlags::MS_REC, true),
            "rshared" => (false, MsFlags::MS_SHARED | MsFlags::MS_REC, true),
            "rslave" => (false, MsFlags::MS_SLAVE | MsFlags::MS_REC, true),
            "runbindable" => (false, MsFlags::MS_UNBINDABLE | MsFlags::MS_REC, true),
            _ => {
                data.push(opt.as_str());
                continue;
            }
        };
        let (clear, flag, propagation) = entry;
        let target = if propagation {
            &mut out.propagation
        } else {
            &mut out.flags
        };
        if clear {
            target.remove(flag);
        } else {
            target.insert(flag);
        }
    }
    out.data = data.join(",");
    out
}

fn absolute_in(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Rewrites overlay `lowerdir`/`upperdir`/`workdir` values relative to `bundle`, and returns
/// the upper and work directories (to create).
fn resolve_overlay_data(bundle: &Path, data: &str) -> (String, Vec<PathBuf>) {
    let mut dirs = Vec::new();
    let parts: Vec<String> = data
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|part| match part.split_once('=') {
            Some((key @ ("upperdir" | "workdir"), value)) => {
                let p = absolute_in(bundle, value);
                let s = format!("{key}={}", p.display());
                dirs.push(p);
                s
            }
            Some(("lowerdir", value)) => {
                let lowers: Vec<String> = value
                    .split(':')
                    .map(|l| absolute_in(bundle, l).display().to_string())
                    .collect();
                format!("lowerdir={}", lowers.join(":"))
            }
            _ => part.to_owned(),
        })
        .collect();
    (parts.join(","), dirs)
}

fn mkdir_all(path: &Path) -> Result<(), PrepareError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| PrepareError::Mkdir(path.to_path_buf(), e))
}

/// Mounts made before create, to undo after delete.
#[derive(Debug, Default)]
pub struct Prepared {
    mounted: Vec<PathBuf>,
}

impl Prepared {
    /// The mount points made, in order.
    pub fn mounted(&self) -> &[PathBuf] {
        &self.mounted
    }

    /// Unmounts (lazily, in reverse order) what was mounted. Failures are logged.
    pub fn undo(&mut self) {
        while let Some(target) = self.mounted.pop() {
            if let Err(err) = nix::mount::umount2(&target, MntFlags::MNT_DETACH) {
                log::warn!("cannot unmount {}: {err}", target.display());
            }
        }
    }
}

/// The pre-create steps: `mounts`, `mkdir`, `cgroups`. On error, the mounts made so far are
/// undone before returning.
pub fn prepare_filesystem(bundle: &Path, runtime: &Runtime) -> Result<Prepared, PrepareError> {
    let mut done = Prepared::default();
    match prepare_inner(bundle, runtime, &mut done) {
        Ok(()) => Ok(done),
        Err(err) => {
            done.undo();
            Err(err)
        }
    }
}

fn prepare_inner(
    bundle: &Path,
    runtime: &Runtime,
    done: &mut Prepared,
) -> Result<(), PrepareError> {
    let rootfs = bundle.join(ROOTFS_DIR);
    for m in &runtime.mounts {
        if mount_one(bundle, &rootfs, m)? {
            done.mounted.push(absolute_in(&rootfs, &m.destination));
        }
    }
    for dir in &runtime.mkdir {
        mkdir_all(&absolute_in(&rootfs, dir))?;
    }
    for cgroup in &runtime.cgroups {
        let path = cgroup_dir(cgroup);
        // LinuxKit logs and goes on: the container's own cgroup is libcontainer's.
        if let Err(err) = mkdir_all(&path) {
            log::warn!("{err}: {}", err_source(&err));
        }
    }
    Ok(())
}

/// The cgroup v2 directory of a cgroup path (absolute or relative to the root cgroup).
pub fn cgroup_dir(path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    Path::new("/sys/fs/cgroup").join(path.strip_prefix("/").unwrap_or(path))
}

fn err_source(err: &PrepareError) -> String {
    std::error::Error::source(err).map_or_else(String::new, |s| s.to_string())
}

/// Performs one runtime mount; returns whether a new mount now exists at the target.
fn mount_one(bundle: &Path, rootfs: &Path, m: &Mount) -> Result<bool, PrepareError> {
    let target = absolute_in(rootfs, &m.destination);
    let opts = parse_options(&m.options);
    let is_bind = opts.flags.contains(MsFlags::MS_BIND);
    let is_remount = opts.flags.contains(MsFlags::MS_REMOUNT);
    let kind = m.kind.as_deref().filter(|k| !k.is_empty());
    let mut source = m.source.clone().filter(|s| !s.is_empty());
    let mut data = opts.data.clone();

    if is_bind && let Some(s) = &source {
        source = Some(absolute_in(bundle, s).display().to_string());
    }
    if kind == Some("overlay") {
        let (resolved, dirs) = resolve_overlay_data(bundle, &data);
        data = resolved;
        for d in dirs {
            mkdir_all(&d)?;
        }
    }
    // The mount point: a file for a bind of a file, else a directory (LinuxKit always
    // makes a directory; a file bind would then fail).
    let source_is_file = is_bind
        && source
            .as_deref()
            .and_then(|s| fs::metadata(s).ok())
            .is_some_and(|md| !md.is_dir());
    if source_is_file {
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)
            .map_err(|e| PrepareError::MountPoint(target.clone(), e))?;
    } else {
        mkdir_all(&target)?;
    }

    let mount_err = |err| PrepareError::Mount {
        source_name: source.clone().unwrap_or_else(|| "(none)".to_owned()),
        target: target.clone(),
        err,
    };
    let pure_propagation = opts.flags.is_empty() && kind.is_none() && source.is_none();
    let mut mounted = false;
    if !pure_propagation {
        let data_arg = (!data.is_empty()).then_some(data.as_str());
        nix::mount::mount(source.as_deref(), &target, kind, opts.flags, data_arg)
            .map_err(mount_err)?;
        mounted = !is_remount;
        // A new bind ignores most flags: apply them with a bind remount, as mount(8) does.
        let extra = opts.flags
            & (MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME);
        if is_bind && !is_remount && !extra.is_empty() {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
            if let Err(err) =
                nix::mount::mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
            {
                let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH);
                return Err(mount_err(err));
            }
        }
    }
    if !opts.propagation.is_empty() {
        // Propagation changes are ignored by mount(2) when combined with other flags.
        if let Err(err) = nix::mount::mount(
            None::<&str>,
            &target,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        ) {
            if mounted {
                let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH);
            }
            return Err(mount_err(err));
        }
    }
    Ok(mounted)
}

/// Bind-mounts `/proc/<pid>/ns/<kind>` on each path of `binds`, creating the file and its
/// parents. These stay after the container ends: later containers join them by path.
pub fn bind_namespaces(pid: i32, binds: &BindNamespaces) -> Result<(), PrepareError> {
    for (kind, path) in binds.entries() {
        let path = PathBuf::from(path);
        let err = |err| PrepareError::BindNs {
            kind,
            pid,
            path: path.clone(),
            err,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(err)?;
        }
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let ns = format!("/proc/{pid}/ns/{kind}");
        nix::mount::mount(
            Some(ns.as_str()),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err(io::Error::from(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_under_the_cgroup2_root() {
        let want = Path::new("/sys/fs/cgroup/keel/services/web");
        assert_eq!(cgroup_dir("/keel/services/web"), want);
        assert_eq!(cgroup_dir("keel/services/web"), want);
        assert_eq!(cgroup_dir("/"), Path::new("/sys/fs/cgroup"));
    }

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn fstab_options_split_into_flags_and_data() {
        let o = opts(&["nosuid", "nodev", "size=10%", "mode=0755", "ro"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY
        );
        assert_eq!(o.data, "size=10%,mode=0755");
        assert!(o.propagation.is_empty());
    }

    #[test]
    fn later_options_clear_earlier_ones() {
        let o = opts(&["ro", "rw", "noexec", "exec", "defaults"]);
        assert!(o.flags.is_empty());
        assert_eq!(o.data, "");
    }

    #[test]
    fn propagation_is_kept_apart() {
        let o = opts(&["remount", "private"]);
        assert_eq!(o.flags, MsFlags::MS_REMOUNT);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE);
        let o = opts(&["rbind", "rslave"]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
    }

    #[test]
    fn overlay_dirs_resolve_against_the_bundle() {
        let (data, dirs) = resolve_overlay_data(
            Path::new("/c/b"),
            "lowerdir=lower:/abs/l2,upperdir=tmp/upper,workdir=/c/b/tmp/work,index=off",
        );
        assert_eq!(
            data,
            "lowerdir=/c/b/lower:/abs/l2,upperdir=/c/b/tmp/upper,workdir=/c/b/tmp/work,index=off"
        );
        assert_eq!(
            dirs,
            [
                PathBuf::from("/c/b/tmp/upper"),
                PathBuf::from("/c/b/tmp/work")
            ]
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_base() {
        assert_eq!(
            absolute_in(Path::new("/b/rootfs"), "etc/x"),
            Path::new("/b/rootfs/etc/x")
        );
        assert_eq!(
            absolute_in(Path::new("/b/rootfs"), "/run/x"),
            Path::new("/run/x")
        );
    }

    #[test]
    fn mkdir_entries_and_cgroups_without_mounts() {
        let dir = std::env::temp_dir().join(format!("keel-shim-prep-{}", std::process::id()));
        fs::create_dir_all(dir.join(ROOTFS_DIR)).unwrap();
        let abs = dir.join("abs/made");
        let rt = Runtime {
            mkdir: vec!["var/lib/x".into(), abs.display().to_string()],
            ..Runtime::default()
        };
        let mut p = prepare_filesystem(&dir, &rt).unwrap();
        assert!(dir.join("rootfs/var/lib/x").is_dir());
        assert!(abs.is_dir());
        assert!(p.mounted().is_empty());
        p.undo();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_mount_names_its_target() {
        let dir = std::env::temp_dir().join(format!("keel-shim-prep-fail-{}", std::process::id()));
        fs::create_dir_all(dir.join(ROOTFS_DIR)).unwrap();
        let rt = Runtime {
            mounts: vec![Mount {
                destination: "mnt".into(),
                kind: Some("no-such-fs-type".into()),
                source: Some("none".into()),
                options: vec![],
            }],
            ..Runtime::default()
        };
        let err = prepare_filesystem(&dir, &rt).unwrap_err();
        assert!(err.to_string().contains("rootfs/mnt"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
