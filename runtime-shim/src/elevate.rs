//! Seccomp without `noNewPrivileges`: libcontainer 0.7 calls the executor after it has
//! dropped capabilities, and installing a filter then needs `no_new_privs` or
//! `CAP_SYS_ADMIN`. runc installs the filter before dropping capabilities in that case; the
//! shim gets the same result by handing libcontainer a copy of the spec whose effective,
//! permitted and bounding sets also hold `CAP_SYS_ADMIN` and `CAP_SETPCAP`, and by dropping
//! those again in the executor right after the filter is in (see [`Restore::apply`]).
//!
//! The same copy also carries the other changes the shim makes to what libcontainer sees (a
//! bind of `/dev` taken out, see [`crate::devbind`]): [`derive`] is the one place making it.
//!
//! The copy lives in a private directory (`<SHIM_DIR>/<id>/config.json`, root path made
//! absolute) so the bundle itself, possibly on a read-only root, is never written. libcontainer
//! records that directory as the container's bundle, so the copy also holds a link back to the
//! bundle it came from ([`ORIGIN`]): `keel-shim exec` reads the container's own settings
//! there, never the elevated ones (see [`original_bundle`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use caps::{CapSet, CapsHashSet};

use crate::devbind::{self, DevBind};
use keel_bundle::{CONFIG_FILE, SHIM_DIR};
use libcontainer::capabilities::CapabilityExt;
use libcontainer::oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, Process, Spec};

/// The link, in a private spec directory, to the bundle the spec was derived from.
pub const ORIGIN: &str = "bundle";

/// Errors preparing the elevated spec.
#[derive(Debug, thiserror::Error)]
pub enum ElevateError {
    #[error("cannot write the elevated spec {0}")]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot serialise the elevated spec")]
    Serialise(#[source] serde_json::Error),
    #[error("the spec has no process")]
    NoProcess,
    #[error("cannot link {0} to its bundle")]
    Link(PathBuf, #[source] io::Error),
    #[error("cannot read the bundle link {0}")]
    Origin(PathBuf, #[source] io::Error),
}

/// Capabilities granted only until the filter is installed.
const TEMPORARY: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// The capability sets the container must end up with, applied in the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: Option<CapsHashSet>,
}

fn to_caps(set: &Capabilities) -> CapsHashSet {
    set.iter().map(|c| c.to_cap()).collect()
}

/// The effective set libcontainer leaves: the spec's, else its permitted set; `None` means
/// every capability (nothing in the spec limits it).
pub fn final_effective(c: &LinuxCapabilities) -> Option<&Capabilities> {
    c.effective().as_ref().or(c.permitted().as_ref())
}

impl Restore {
    /// The sets of `c`, whose final effective set is `effective`.
    pub fn of(c: &LinuxCapabilities, effective: &Capabilities) -> Self {
        Self {
            // libcontainer empties the bounding set when the spec has none.
            bounding: c.bounding().as_ref().map(to_caps).unwrap_or_default(),
            effective: to_caps(effective),
            permitted: c.permitted().as_ref().map(to_caps),
        }
    }

    /// Drops the temporary capabilities: from the bounding set first (needs CAP_SETPCAP),
    /// then back to the spec's effective and permitted sets.
    pub fn apply(&self) -> Result<(), caps::errors::CapsError> {
        for cap in TEMPORARY.iter().map(|c| c.to_cap()) {
            if !self.bounding.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
        // Effective first: capset refuses a permitted set smaller than the effective one.
        caps::set(None, CapSet::Effective, &self.effective)?;
        if let Some(p) = &self.permitted {
            caps::set(None, CapSet::Permitted, p)?;
        }
        Ok(())
    }
}

/// The spec libcontainer gets when it differs from the bundle's, with what the shim must do
/// around libcontainer because of the difference.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The spec to write to the private directory (root path absolute).
    pub spec: Spec,
    /// Capabilities to drop once seccomp is in, when they were raised.
    pub restore: Option<Restore>,
    /// The `/dev` bind the shim attaches itself.
    pub dev_bind: Option<DevBind>,
}

/// The one place deriving the spec libcontainer sees from the bundle's: capabilities raised
/// for seccomp when `elevate` (no `noNewPrivileges` and a seccomp profile; see [`raise`]),
/// and a bind of `/dev` taken out (see [`devbind::take`]). `None` when the bundle's spec can
/// be used as it is.
pub fn derive(spec: &Spec, bundle: &Path, elevate: bool) -> Result<Option<Derived>, ElevateError> {
    let mut out = spec.clone();
    let restore = if elevate {
        let mut process = spec.process().clone().ok_or(ElevateError::NoProcess)?;
        let restore = raise(&mut process);
        out.set_process(Some(process));
        restore
    } else {
        None
    };
    let dev_bind = devbind::take(&mut out);
    if restore.is_none() && dev_bind.is_none() {
        return Ok(None);
    }
    if let Some(root) = spec.root() {
        let mut root = root.clone();
        if root.path().is_relative() {
            root.set_path(bundle.join(root.path()));
        }
        out.set_root(Some(root));
    }
    Ok(Some(Derived {
        spec: out,
        restore,
        dev_bind,
    }))
}

/// Raises `process`'s capabilities when they would leave no `CAP_SYS_ADMIN` to install
/// seccomp with, and returns what to restore; `None` (and `process` unchanged) when it keeps
/// that capability. Used for the container's init ([`derive`]) and for `keel-shim exec`.
pub fn raise(process: &mut Process) -> Option<Restore> {
    // No capabilities section, or no effective/permitted limit: everything stays.
    let caps = process.capabilities().as_ref()?;
    let effective = final_effective(caps)?;
    if effective.contains(&Capability::SysAdmin) {
        return None;
    }
    let restore = Restore::of(caps, effective);
    let mut raised = caps.clone();
    // An absent set stays absent (libcontainer then leaves it whole, temporaries included).
    let add = |set: Option<&Capabilities>| {
        set.map(|s| {
            let mut s = s.clone();
            s.extend(TEMPORARY);
            s
        })
    };
    let mut bounding = caps.bounding().clone().unwrap_or_default();
    bounding.extend(TEMPORARY);
    raised.set_bounding(Some(bounding));
    raised.set_permitted(add(caps.permitted().as_ref()));
    raised.set_effective(add(caps.effective().as_ref()));
    process.set_capabilities(Some(raised));
    Some(restore)
}

/// Where the derived copy of container `id`'s spec lives.
pub fn private_bundle(id: &str) -> PathBuf {
    Path::new(SHIM_DIR).join(id)
}

/// Writes `spec` as the `config.json` of `dir` (created), with the [`ORIGIN`] link to
/// `bundle`, the bundle it was derived from.
pub fn write(dir: &Path, spec: &Spec, bundle: &Path) -> Result<(), ElevateError> {
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_vec(spec).map_err(ElevateError::Serialise)?;
    fs::create_dir_all(dir).map_err(|e| ElevateError::Write(path.clone(), e))?;
    fs::write(&path, text).map_err(|e| ElevateError::Write(path, e))?;
    let link = dir.join(ORIGIN);
    // A shim that died may have left one behind.
    match fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ElevateError::Link(link, e)),
    }
    std::os::unix::fs::symlink(bundle, &link).map_err(|e| ElevateError::Link(link, e))
}

/// The bundle a container was made from, given the directory libcontainer recorded as its
/// bundle: the origin of a private copy (a directory under `shim_dir`, `SHIM_DIR` outside
/// tests), else that directory.
pub fn original_bundle(recorded: &Path, shim_dir: &Path) -> Result<PathBuf, ElevateError> {
    // Only the shim's own directory is trusted to hold a link: a bundle elsewhere is the
    // container's own, whatever files it has.
    if !recorded.starts_with(shim_dir) {
        return Ok(recorded.to_path_buf());
    }
    let link = recorded.join(ORIGIN);
    fs::read_link(&link).map_err(|e| ElevateError::Origin(link, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(process: &str) -> Spec {
        let mut s = Spec::default();
        s.set_process(Some(serde_json::from_str(process).unwrap()));
        s
    }

    #[test]
    fn raises_and_remembers() {
        let s = spec(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"capabilities":{
                "bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        );
        let d = derive(&s, Path::new("/b"), true).unwrap().unwrap();
        let (out, restore) = (d.spec, d.restore.unwrap());
        let c = out
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        for set in [c.bounding(), c.effective(), c.permitted()] {
            let set = set.as_ref().unwrap();
            assert!(set.contains(&Capability::SysAdmin) && set.contains(&Capability::Kill));
            assert!(set.contains(&Capability::Setpcap));
        }
        assert!(c.inheritable().is_none());
        let kill: CapsHashSet = [caps::Capability::CAP_KILL].into_iter().collect();
        assert_eq!(restore.bounding, kill);
        assert_eq!(restore.effective, kill);
        assert_eq!(out.root().as_ref().unwrap().path(), Path::new("/b/rootfs"));
        assert!(d.dev_bind.is_none());
    }

    #[test]
    fn only_effective_limits_need_raising() {
        let s = spec(r#"{"cwd":"/","user":{"uid":0,"gid":0}}"#);
        assert!(derive(&s, Path::new("/b"), true).unwrap().is_none());
        let s = spec(r#"{"cwd":"/","user":{"uid":0,"gid":0},"capabilities":{"bounding":[]}}"#);
        assert!(derive(&s, Path::new("/b"), true).unwrap().is_none());
        let s = spec(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"capabilities":{"effective":["CAP_SYS_ADMIN"]}}"#,
        );
        assert!(derive(&s, Path::new("/b"), true).unwrap().is_none());
        let s = spec(r#"{"cwd":"/","user":{"uid":0,"gid":0},"capabilities":{"effective":[]}}"#);
        assert!(derive(&s, Path::new("/b"), false).unwrap().is_none());
    }

    #[test]
    fn a_dev_bind_alone_derives_a_spec() {
        let mut s = spec(r#"{"cwd":"/","user":{"uid":0,"gid":0},"capabilities":{"effective":[]}}"#);
        s.set_mounts(Some(
            serde_json::from_str(r#"[{"destination":"/dev","source":"/dev","options":["rbind"]}]"#)
                .unwrap(),
        ));
        let d = derive(&s, Path::new("/b"), false).unwrap().unwrap();
        assert!(d.restore.is_none());
        assert_eq!(d.dev_bind.unwrap().source, Path::new("/dev"));
        assert_eq!(d.spec.process(), s.process(), "capabilities untouched");
        let m = d.spec.mounts().as_ref().unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].typ().as_deref(), Some("tmpfs"));
        assert_eq!(
            d.spec.root().as_ref().unwrap().path(),
            Path::new("/b/rootfs")
        );
    }

    #[test]
    fn private_copies_link_back_to_their_bundle() {
        let base = std::env::temp_dir().join(format!("keel-shim-origin-{}", std::process::id()));
        let shim_dir = base.join("shim");
        let private = shim_dir.join("web");
        let bundle = base.join("containers/services/web");
        let s = spec(r#"{"cwd":"/","user":{"uid":0,"gid":0},"capabilities":{"effective":[]}}"#);
        write(&private, &s, &bundle).unwrap();
        // Written twice (a stale copy), the link is replaced.
        write(&private, &s, &bundle).unwrap();
        assert_eq!(original_bundle(&private, &shim_dir).unwrap(), bundle);
        // A bundle outside the shim's directory is the original, whatever it holds.
        assert_eq!(original_bundle(&bundle, &shim_dir).unwrap(), bundle);
        fs::remove_file(private.join(ORIGIN)).unwrap();
        assert!(matches!(
            original_bundle(&private, &shim_dir),
            Err(ElevateError::Origin(..))
        ));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn missing_effective_falls_back_to_permitted() {
        let s = spec(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"capabilities":{"permitted":["CAP_CHOWN"]}}"#,
        );
        let d = derive(&s, Path::new("/b"), true).unwrap().unwrap();
        let (out, restore) = (d.spec, d.restore.unwrap());
        let c = out
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(
            c.effective().is_none(),
            "libcontainer keeps E = P when E is absent"
        );
        assert!(
            c.permitted()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        let chown: CapsHashSet = [caps::Capability::CAP_CHOWN].into_iter().collect();
        assert_eq!(restore.effective, chown);
        assert_eq!(restore.permitted, Some(chown));
    }
}
