//! `keel-shim exec <id> -- CMD...`: runs a command inside a running container, like
//! `runc exec`, through libcontainer's tenant builder: it joins the container's namespaces and
//! cgroup (or, when the container's init has moved into a cgroup below its own, that one; see
//! [`init_sub_cgroup`]). Its stdio is the shim's own (keelctl's terminal); the shim forwards signals and
//! exits with the command's status.
//!
//! The command gets exactly the container's privileges, read from the container's own
//! `config.json` (the bundle libcontainer recorded, or, when the shim handed libcontainer a
//! private elevated copy, the bundle that copy links back to; see [`elevate::original_bundle`]):
//! the container's `process` with only `args` replaced, as runc's exec does — all five
//! capability sets, uid, gid, additional gids, `noNewPrivileges`, rlimits, environment and
//! working directory — and the container's seccomp profile, compiled and installed exactly as
//! for the container's init (capabilities raised around the install when needed, as there).
//! libcontainer's tenant builder would otherwise take capabilities from the spec it finds at
//! the recorded bundle (the elevated copy), run as uid 0 and install no filter.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use keel_bundle::{CONFIG_FILE, SHIM_DIR, STATE_DIR};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::OciSpecError;
use libcontainer::oci_spec::runtime::{Process, Spec};
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};

use crate::elevate::{self, ElevateError, Restore};
use crate::executor::ShimExecutor;
use crate::run::{RunError, block_signals, wait_for};
use crate::seccomp::{self, Compiled, SeccompError};

/// Why the command could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("container {0} does not exist or does not run")]
    NoContainer(String),
    #[error("cannot load the state of container {0}")]
    State(String, #[source] LibcontainerError),
    #[error("cannot find the bundle of container {0}")]
    Origin(String, #[source] ElevateError),
    #[error("cannot read {0}")]
    Spec(PathBuf, #[source] OciSpecError),
    #[error("{0} has no process")]
    NoProcess(PathBuf),
    #[error("invalid seccomp profile")]
    Seccomp(#[source] SeccompError),
    #[error("cannot hand the process to libcontainer")]
    ProcessFile(#[source] io::Error),
    #[error("cannot duplicate stdio")]
    Stdio(#[source] io::Error),
    #[error("cannot exec in container {0}")]
    Tenant(String, #[source] LibcontainerError),
    #[error(transparent)]
    Wait(#[from] RunError),
}

/// What the exec'd command runs with, computed from the container's own spec.
#[derive(Debug)]
pub struct ExecPlan {
    /// The process libcontainer starts: the container's, with the command's `args`; its
    /// capabilities raised by `CAP_SYS_ADMIN`/`CAP_SETPCAP` when `restore` is set.
    pub process: Process,
    /// The container's seccomp filters, installed just before exec.
    pub seccomp: Option<Compiled>,
    /// The container's capability sets, restored once the filters are in.
    pub restore: Option<Restore>,
}

/// The settings of a command run in the container whose spec (its bundle's `config.json`,
/// never the elevated copy) is `container`.
pub fn plan(container: &Spec, args: Vec<String>, path: &Path) -> Result<ExecPlan, ExecError> {
    let mut process = container
        .process()
        .clone()
        .ok_or_else(|| ExecError::NoProcess(path.to_owned()))?;
    process.set_args(Some(args));
    // The command uses the shim's stdio; a terminal would need a console socket.
    process.set_terminal(Some(false));
    process.set_console_size(None);
    let seccomp = seccomp::compile_spec(container).map_err(ExecError::Seccomp)?;
    // As for the init (see run.rs): libcontainer sets no_new_privs only for `Some(true)`, and
    // without it the filter needs CAP_SYS_ADMIN at install time.
    let nnp = process.no_new_privileges() == Some(true);
    let restore = if seccomp.is_some() && !nnp {
        elevate::raise(&mut process)
    } else {
        None
    };
    Ok(ExecPlan {
        process,
        seccomp,
        restore,
    })
}

/// The spec container `id` was created from, and its path, given the bundle directory
/// libcontainer recorded for it (`recorded`) and the shim's private directory.
fn container_spec(
    id: &str,
    recorded: &Path,
    shim_dir: &Path,
) -> Result<(Spec, PathBuf), ExecError> {
    let bundle = elevate::original_bundle(recorded, shim_dir)
        .map_err(|e| ExecError::Origin(id.to_owned(), e))?;
    let path = bundle.join(CONFIG_FILE);
    let spec = Spec::load(&path).map_err(|e| ExecError::Spec(path.clone(), e))?;
    Ok((spec, path))
}

/// `process` as a `process.json` libcontainer can open by path: an anonymous memory file
/// (`/proc/self/fd/N`), so nothing is left on disk if the shim dies. The fd is close-on-exec:
/// the command never sees it.
fn process_file(process: &Process) -> Result<(OwnedFd, PathBuf), ExecError> {
    let json = serde_json::to_vec(process).map_err(|e| ExecError::ProcessFile(e.into()))?;
    let fd = memfd_create(c"keel-exec-process", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| ExecError::ProcessFile(e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&json).map_err(ExecError::ProcessFile)?;
    let fd = OwnedFd::from(file);
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    Ok((fd, path))
}

/// Runs `args` in container `id`; returns the command's exit status (128+signal if killed).
pub fn exec(id: &str, args: Vec<String>) -> Result<i32, ExecError> {
    if !Path::new(STATE_DIR).join(id).is_dir() {
        return Err(ExecError::NoContainer(id.to_owned()));
    }
    let state = Container::load(Path::new(STATE_DIR).join(id))
        .map_err(|e| ExecError::State(id.to_owned(), e))?;
    let (spec, path) = container_spec(id, state.bundle(), Path::new(SHIM_DIR))?;
    let plan = plan(&spec, args, &path)?;
    let (_process_fd, process_path) = process_file(&plan.process)?;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(ExecError::Stdio);
    let stdin = dup(io::stdin().as_fd())?;
    let stdout = dup(io::stdout().as_fd())?;
    let stderr = dup(io::stderr().as_fd())?;
    let sub_cgroup = state.pid().and_then(|pid| {
        let own = spec.linux().as_ref()?.cgroups_path().clone()?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        init_sub_cgroup(&own, &cgroup)
    });
    let signals = block_signals()?;
    let err = |e| ExecError::Tenant(id.to_owned(), e);
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .validate_id()
        .and_then(|b| b.with_root_path(STATE_DIR))
        .map_err(err)?
        // Resets the signal mask the shim blocked, installs the container's filters and drops
        // the capabilities raised for that, like for the container's init.
        .with_executor(ShimExecutor::new(plan.seccomp, plan.restore))
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_tenant()
        .with_sub_cgroup(sub_cgroup)
        // The whole process (args, env, cwd, user, capabilities, noNewPrivileges, rlimits);
        // the tenant builder's own choices would come from the elevated copy.
        .with_process(Some(process_path))
        // Only decides whether process.terminal needs a console socket: it must not.
        .with_detach(true)
        .build()
        .map_err(err)?;
    Ok(wait_for(pid, &signals)?)
}

/// The cgroup below the container's own (`own`, its `cgroupsPath`) that its init process is in
/// (`proc_cgroup`: `/proc/PID/cgroup` as the shim sees it), relative to `own`, if it is in one.
///
/// A container that runs containers itself (a Docker engine) enables controllers for cgroups
/// below its own, which cgroup v2 allows only once its processes have left that cgroup: they
/// move into a child (`init`, as Docker's `dind` does), and no process can join the container's
/// own cgroup any more. An exec'd command joins the init process's cgroup instead, as `runc
/// exec` does.
fn init_sub_cgroup(own: &Path, proc_cgroup: &str) -> Option<String> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let sub = Path::new(path.trim()).strip_prefix(own).ok()?;
    let sub = sub.to_str()?;
    (!sub.is_empty() && !sub.split('/').any(|c| c == "..")).then(|| sub.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

    /// A container spec as keel's host tool writes it (see crates/config/src/spec.rs): caps
    /// without CAP_SYS_ADMIN, a non-root user, a seccomp profile.
    fn container(nnp: bool, seccomp: bool) -> Spec {
        let profile = if seccomp {
            r#","seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","exit_group","execve"],"action":"SCMP_ACT_ALLOW"},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#
        } else {
            ""
        };
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs","readonly":true}},
                "process":{{"terminal":false,"user":{{"uid":1000,"gid":1001,"additionalGids":[10,20]}},
                  "args":["/usr/sbin/nginx"],"env":["PATH=/usr/bin:/bin","A=b"],"cwd":"/srv",
                  "noNewPrivileges":{nnp},
                  "rlimits":[{{"type":"RLIMIT_NOFILE","soft":1024,"hard":2048}}],
                  "capabilities":{{
                    "bounding":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],
                    "effective":["CAP_CHOWN"],
                    "inheritable":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],
                    "permitted":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],
                    "ambient":["CAP_NET_BIND_SERVICE"]}}}},
                "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}}]{profile}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn exec_joins_the_cgroup_init_moved_into() {
        let own = Path::new("/keel/services/docker");
        assert_eq!(
            init_sub_cgroup(own, "0::/keel/services/docker/init\n"),
            Some("init".into())
        );
        // Still in its own cgroup, or somewhere else entirely: the container's own.
        assert_eq!(init_sub_cgroup(own, "0::/keel/services/docker\n"), None);
        assert_eq!(init_sub_cgroup(own, "0::/keel/services/dockerd/x\n"), None);
        assert_eq!(init_sub_cgroup(own, "1:name=systemd:/x\n"), None);
        assert_eq!(init_sub_cgroup(own, ""), None);
    }

    fn caps(p: &Process) -> &LinuxCapabilities {
        p.capabilities().as_ref().unwrap()
    }

    fn set(list: &[Capability]) -> Option<Capabilities> {
        Some(list.iter().copied().collect())
    }

    fn cat() -> Vec<String> {
        vec!["cat".into(), "/proc/self/status".into()]
    }

    #[test]
    fn exec_carries_the_containers_settings() {
        let spec = container(true, true);
        let want = spec.process().clone().unwrap();
        let plan = plan(&spec, cat(), Path::new("/b/config.json")).unwrap();
        let p = &plan.process;
        assert_eq!(p.args().as_deref(), Some(&cat()[..]));
        assert_eq!(p.user(), want.user(), "uid, gid and additionalGids");
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[10, 20][..]));
        assert_eq!(p.env(), want.env());
        assert_eq!(p.cwd(), want.cwd());
        assert_eq!(p.rlimits(), want.rlimits());
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.terminal(), Some(false));
        // noNewPrivileges: the filter goes in without raising anything; all five sets are
        // the container's.
        assert_eq!(p.capabilities(), want.capabilities());
        assert!(plan.restore.is_none());
        assert_eq!(plan.seccomp.as_ref().map(Compiled::len), Some(2));
    }

    #[test]
    fn exec_without_nnp_raises_only_until_the_filter_is_in() {
        let spec = container(false, true);
        let want = spec.process().clone().unwrap();
        let want_caps = caps(&want);
        let plan = plan(&spec, cat(), Path::new("/b/config.json")).unwrap();
        assert_eq!(plan.process.no_new_privileges(), Some(false));
        // Raised for the install...
        let raised = caps(&plan.process);
        for s in [raised.bounding(), raised.effective(), raised.permitted()] {
            assert!(s.as_ref().unwrap().contains(&Capability::SysAdmin));
        }
        assert_eq!(raised.inheritable(), want_caps.inheritable());
        assert_eq!(raised.ambient(), want_caps.ambient());
        // ...and back to exactly the container's sets in the executor.
        let effective = want_caps.effective().as_ref().unwrap();
        assert_eq!(plan.restore, Some(Restore::of(want_caps, effective)));
        assert!(plan.seccomp.is_some());
    }

    #[test]
    fn exec_without_seccomp_changes_no_capability() {
        let spec = container(false, false);
        let plan = plan(&spec, cat(), Path::new("/b/config.json")).unwrap();
        assert!(plan.seccomp.is_none() && plan.restore.is_none());
        assert_eq!(
            plan.process.capabilities(),
            spec.process().as_ref().unwrap().capabilities()
        );
    }

    /// The shim's private copy (what libcontainer records as the bundle) has CAP_SYS_ADMIN
    /// and CAP_SETPCAP added; exec must follow its link to the container's own config.json.
    #[test]
    fn exec_reads_the_bundle_not_the_elevated_copy() {
        let base = std::env::temp_dir().join(format!("keel-shim-exec-{}", std::process::id()));
        let bundle = base.join("containers/services/web");
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = container(false, true);
        std::fs::write(bundle.join(CONFIG_FILE), serde_json::to_vec(&spec).unwrap()).unwrap();
        let derived = elevate::derive(&spec, &bundle, true).unwrap().unwrap();
        let private = base.join("shim/web");
        elevate::write(&private, &derived.spec, &bundle).unwrap();

        let (read, path) = container_spec("web", &private, &base.join("shim")).unwrap();
        assert_eq!(path, bundle.join(CONFIG_FILE));
        assert_eq!(read, spec);
        let plan = plan(&read, cat(), &path).unwrap();
        let elevated = derived.spec.process().clone().unwrap();
        assert!(
            caps(&elevated)
                .effective()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        // The final sets are the container's: no CAP_SYS_ADMIN, no CAP_SETPCAP.
        let want = spec.process().clone().unwrap();
        let effective = caps(&want).effective().as_ref().unwrap();
        assert_eq!(plan.restore, Some(Restore::of(caps(&want), effective)));
        assert_eq!(
            caps(&want).effective().clone(),
            set(&[Capability::Chown]),
            "the fixture's effective set"
        );
        assert_eq!(plan.process.user(), want.user());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_process_file_reads_back() {
        let spec = container(false, true);
        let (fd, path) = process_file(spec.process().as_ref().unwrap()).unwrap();
        let read: Process = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(&read, spec.process().as_ref().unwrap());
        drop(fd);
    }
}
