//! `binds: [/dev:/dev]`: a bind mount of the host's `/dev` over the container's `/dev`.
//!
//! libcontainer 0.7 creates symlinks (`/dev/fd`, `/dev/ptmx`, ...) and device nodes in the
//! container's `/dev` after its mounts and fails on EEXIST, which a host `/dev` always
//! gives. runc skips that setup when `/dev` is bound; here the bind is taken out of the spec
//! libcontainer sees (a tmpfs `/dev` takes its place, for libcontainer to fill), the host
//! tree is cloned with `open_tree` before the container is built, and attached over the
//! container's `/dev` from inside its mount namespace once it is built, before it starts.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use libcontainer::oci_spec::runtime::{Mount, MountBuilder, Spec};
use nix::mount::MsFlags;

use crate::prepare::parse_options;
use crate::sys::{self, AttachStep};

/// Errors binding the host's `/dev`.
#[derive(Debug, thiserror::Error)]
pub enum DevBindError {
    #[error("invalid /dev bind source {0}")]
    Source(PathBuf),
    #[error("cannot clone the mount tree at {0}")]
    OpenTree(PathBuf, #[source] io::Error),
    #[error("cannot set attributes of the /dev tree")]
    Attributes(#[source] io::Error),
    #[error("cannot open the mount namespace of pid {0}")]
    Namespace(i32, #[source] io::Error),
    #[error("cannot attach /dev in container pid {pid} ({step})")]
    Attach {
        pid: i32,
        step: AttachStep,
        #[source]
        err: io::Error,
    },
}

/// The `/dev` bind taken out of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevBind {
    /// The host path bound (normally `/dev`).
    pub source: PathBuf,
    /// The bind's options, as in the spec.
    pub options: Vec<String>,
}

/// `path` without `.`, `..` or repeated and trailing slashes (lexically).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn is_dev_bind(m: &Mount) -> bool {
    let bind = m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind");
    bind && normalise(m.destination()) == Path::new("/dev")
}

/// The tmpfs libcontainer fills in place of the bind (as LinuxKit's default `/dev`).
fn dev_tmpfs() -> Option<Mount> {
    MountBuilder::default()
        .destination("/dev")
        .typ("tmpfs")
        .source("tmpfs")
        .options(
            ["nosuid", "strictatime", "mode=755", "size=65536k"]
                .map(String::from)
                .to_vec(),
        )
        .build()
        .ok()
}

/// Takes the last bind mount on `/dev` out of `spec` (earlier ones would be hidden by it
/// anyway) and returns it; a tmpfs `/dev` takes its place unless the spec mounts another
/// filesystem on `/dev`. `None`, and `spec` unchanged, when nothing binds `/dev`.
pub fn take(spec: &mut Spec) -> Option<DevBind> {
    let mounts = spec.mounts().as_ref()?;
    let at = mounts.iter().rposition(is_dev_bind)?;
    let bind = &mounts[at];
    let taken = DevBind {
        source: bind
            .source()
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev")),
        options: bind.options().clone().unwrap_or_default(),
    };
    let mut kept: Vec<Mount> = mounts.iter().filter(|m| !is_dev_bind(m)).cloned().collect();
    let other_dev = kept
        .iter()
        .any(|m| normalise(m.destination()) == Path::new("/dev"));
    if !other_dev && let Some(tmpfs) = dev_tmpfs() {
        // Before everything mounted below /dev, where the bind was.
        let pos = mounts[..at].iter().filter(|m| !is_dev_bind(m)).count();
        kept.insert(pos, tmpfs);
    }
    spec.set_mounts(Some(kept));
    Some(taken)
}

/// A cloned host `/dev` tree, ready to attach in a container.
#[derive(Debug)]
pub struct DevTree {
    tree: OwnedFd,
}

impl DevBind {
    /// Clones the source tree in this process's mount namespace (recursively for `rbind`)
    /// and applies `ro` and the propagation the options ask for.
    pub fn open(&self) -> Result<DevTree, DevBindError> {
        let opts = parse_options(&self.options);
        let recursive = opts.flags.contains(MsFlags::MS_REC);
        let path = CString::new(self.source.as_os_str().as_encoded_bytes())
            .map_err(|_| DevBindError::Source(self.source.clone()))?;
        let tree = sys::open_tree_clone(&path, recursive)
            .map_err(|e| DevBindError::OpenTree(self.source.clone(), e))?;
        let ro = if opts.flags.contains(MsFlags::MS_RDONLY) {
            sys::MOUNT_ATTR_RDONLY
        } else {
            0
        };
        let propagation = (opts.propagation - MsFlags::MS_REC).bits();
        if ro != 0 || propagation != 0 {
            // The propagation applies to the whole tree when any `r…` form was given.
            let rec = recursive || opts.propagation.contains(MsFlags::MS_REC);
            sys::mount_setattr(tree.as_fd(), rec, ro, propagation)
                .map_err(DevBindError::Attributes)?;
        }
        Ok(DevTree { tree })
    }
}

impl DevTree {
    /// Attaches the tree over `/dev` in the mount namespace of `pid` (the created, not yet
    /// started, container init).
    pub fn attach(&self, pid: i32) -> Result<(), DevBindError> {
        let ns = File::open(format!("/proc/{pid}/ns/mnt"))
            .map_err(|e| DevBindError::Namespace(pid, e))?;
        sys::attach_in_namespace(ns.as_fd(), self.tree.as_fd(), c"/dev")
            .map_err(|(step, err)| DevBindError::Attach { pid, step, err })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: &str) -> Spec {
        let mut s = Spec::default();
        s.set_mounts(Some(serde_json::from_str(mounts).unwrap()));
        s
    }

    fn destinations(s: &Spec) -> Vec<(String, Option<String>)> {
        s.mounts()
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.destination().to_string_lossy().into_owned(),
                    m.typ().clone(),
                )
            })
            .collect()
    }

    #[test]
    fn the_bind_is_replaced_by_a_tmpfs() {
        let mut s = spec(
            r#"[{"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/dev/","type":"bind","source":"/dev","options":["rw","rbind","rshared"]},
                {"destination":"/dev/pts","type":"devpts","source":"devpts"}]"#,
        );
        let bind = take(&mut s).unwrap();
        assert_eq!(bind.source, Path::new("/dev"));
        assert_eq!(bind.options, ["rw", "rbind", "rshared"]);
        assert_eq!(
            destinations(&s),
            [
                ("/proc".to_owned(), Some("proc".to_owned())),
                ("/dev".to_owned(), Some("tmpfs".to_owned())),
                ("/dev/pts".to_owned(), Some("devpts".to_owned())),
            ]
        );
    }

    #[test]
    fn an_existing_dev_mount_stays_and_no_tmpfs_is_added() {
        let mut s = spec(
            r#"[{"destination":"/dev","type":"tmpfs","source":"tmpfs"},
                {"destination":"/./dev","source":"/host/dev","options":["bind","ro"]}]"#,
        );
        let bind = take(&mut s).unwrap();
        assert_eq!(bind.source, Path::new("/host/dev"));
        assert_eq!(
            destinations(&s),
            [("/dev".to_owned(), Some("tmpfs".to_owned()))]
        );
    }

    #[test]
    fn other_binds_are_left_alone() {
        let text = r#"[{"destination":"/dev/net/tun","source":"/dev/net/tun","options":["rbind"]},
                       {"destination":"/dev","type":"tmpfs","source":"tmpfs"},
                       {"destination":"/devices","source":"/dev","options":["rbind"]}]"#;
        let mut s = spec(text);
        assert!(take(&mut s).is_none());
        assert_eq!(s, spec(text));
    }

    #[test]
    fn paths_normalise_lexically() {
        assert_eq!(normalise(Path::new("/dev/")), Path::new("/dev"));
        assert_eq!(normalise(Path::new("//x/../dev/.")), Path::new("/dev"));
        assert_eq!(normalise(Path::new("dev")), Path::new("/dev"));
    }
}
