//! One container's life: `keel-shim run <bundle> <id>`.
//!
//! Order (LinuxKit's `service` tool, with libcontainer in place of runc): read the bundle,
//! compile seccomp and device rules, block the forwarded signals, remove stale state,
//! runtime.json mounts / mkdir / cgroups, create (report `created`), device program,
//! interfaces and bindNS, start (report `started`), forward signals and wait, delete
//! (force), undo the runtime mounts, report `exited`. The container init is this process's child (libcontainer clones it with
//! `CLONE_PARENT` from its intermediate), so it is reaped here.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use keel_bundle::{CONFIG_FILE, RUNTIME_FILE, Runtime, STATE_DIR, ShimEvent};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::devbind::{DevBind, DevBindError};
use crate::devices::{self, DevicesError};
use crate::elevate::{self, ElevateError};
use crate::events::report;
use crate::executor::ShimExecutor;
use crate::netlink::{self, NetlinkError};
use crate::prepare::{self, PrepareError, Prepared};
use crate::seccomp::{self, SeccompError};

/// Signals the shim forwards to the container process.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Failures before the container runs (the shim then exits 127), or while waiting for it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read bundle {0}")]
    Bundle(PathBuf, #[source] io::Error),
    #[error("cannot read {0}")]
    Spec(PathBuf, #[source] libcontainer::oci_spec::OciSpecError),
    #[error("cannot parse {0}")]
    RuntimeJson(PathBuf, #[source] serde_json::Error),
    #[error("invalid seccomp profile")]
    Seccomp(#[source] SeccompError),
    #[error("invalid device rules")]
    Devices(#[source] DevicesError),
    #[error("cannot prepare the spec for libcontainer")]
    Elevate(#[source] ElevateError),
    #[error("cannot bind /dev")]
    DevBind(#[source] DevBindError),
    #[error("cannot set up signal handling")]
    Signals(#[source] Errno),
    #[error("runtime.json step failed")]
    Prepare(#[source] PrepareError),
    #[error("cannot create container {0}")]
    Create(String, #[source] LibcontainerError),
    #[error("container {0} has no pid after create")]
    NoPid(String),
    #[error("runtime.json interfaces failed")]
    Interfaces(#[source] NetlinkError),
    #[error("cannot start container {0}")]
    Start(String, #[source] LibcontainerError),
    #[error("cannot duplicate stdio")]
    Stdio(#[source] io::Error),
    #[error("lost track of the container process")]
    Wait(#[source] Errno),
}

/// The shim's exit status for a wait status: the exit code, or 128+signal.
pub fn exit_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn read_runtime(bundle: &Path) -> Result<Runtime, RunError> {
    let path = bundle.join(RUNTIME_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RunError::RuntimeJson(path, e)),
        // LinuxKit: no runtime.json means nothing to do.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Runtime::default()),
        Err(e) => Err(RunError::Bundle(path, e)),
    }
}

/// How long the processes of a container's cgroup tree get to die after `cgroup.kill`.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Ends whatever still runs in a container's cgroup `dir` (cgroup v2's `cgroup.kill`) and
/// removes the cgroups below it, deepest first. A container that runs containers of its own (a
/// Docker engine) leaves cgroups of its own below its cgroup; the kernel removes a cgroup only
/// once it has none, and libcgroups removes the container's cgroup alone: without this a
/// service that delegates its cgroup could not be deleted, nor started again under the same
/// path.
fn remove_child_cgroups(dir: &Path) {
    let has_children = |dir: &Path| {
        fs::read_dir(dir).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir())))
        })
    };
    if !has_children(dir) {
        return;
    }
    // Everything in the tree: nested containers die with the container that ran them.
    if let Err(err) = fs::write(dir.join("cgroup.kill"), "1") {
        log::debug!("cannot kill the cgroup tree {}: {err}", dir.display());
    }
    let deadline = std::time::Instant::now() + KILL_WAIT;
    while fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    remove_below(dir);
}

fn remove_below(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let child = entry.path();
            remove_below(&child);
            if let Err(err) = fs::remove_dir(&child) {
                log::warn!("cannot remove cgroup {}: {err}", child.display());
            }
        }
    }
}

/// Removes what a previous shim for `id` may have left (after a crash or a SIGKILL).
fn remove_stale(id: &str) {
    let dir = Path::new(STATE_DIR).join(id);
    if !dir.exists() {
        return;
    }
    log::warn!("removing stale state of container {id}");
    let deleted = Container::load(dir.clone()).and_then(|mut c| {
        if let Some(cgroup) = Spec::load(c.bundle().join(CONFIG_FILE))
            .ok()
            .and_then(|spec| spec.linux().as_ref()?.cgroups_path().clone())
        {
            remove_child_cgroups(&prepare::cgroup_dir(cgroup));
        }
        c.delete(true)
    });
    if let Err(err) = deleted {
        log::debug!("stale container {id} could not be deleted ({err}); removing its state");
        if let Err(err) = fs::remove_dir_all(&dir) {
            log::warn!("cannot remove {}: {err}", dir.display());
        }
    }
}

/// Blocks the forwarded signals and SIGCHLD and returns a signalfd reading them.
pub fn block_signals() -> Result<SignalFd, RunError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in FORWARDED {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(RunError::Signals)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(RunError::Signals)
}

/// What must be undone if the shim gives up half-way.
struct Cleanup {
    prepared: Prepared,
    container: Option<Container>,
    /// The container's cgroup directory (under /sys/fs/cgroup), when the spec names one.
    cgroup: Option<PathBuf>,
    /// The private spec directory, when the spec was derived.
    private: Option<PathBuf>,
}

fn remove_private(dir: Option<&Path>) {
    if let Some(dir) = dir
        && let Err(err) = fs::remove_dir_all(dir)
    {
        log::warn!("cannot remove {}: {err}", dir.display());
    }
}

impl Cleanup {
    fn finish(mut self) {
        if let Some(mut c) = self.container.take() {
            if let Some(cgroup) = &self.cgroup {
                remove_child_cgroups(cgroup);
            }
            if let Err(err) = c.delete(true) {
                log::error!("cannot delete container {}: {err}", c.id());
            }
        }
        self.prepared.undo();
        remove_private(self.private.as_deref());
    }
}

/// Runs the bundle at `bundle` as container `id`; returns the container's exit status. An
/// error means the container never ran (or was lost); everything made is removed first.
pub fn run(bundle: &Path, id: &str) -> Result<i32, RunError> {
    let bundle = fs::canonicalize(bundle).map_err(|e| RunError::Bundle(bundle.to_owned(), e))?;
    let config_path = bundle.join(CONFIG_FILE);
    let spec = Spec::load(&config_path).map_err(|e| RunError::Spec(config_path.clone(), e))?;
    let runtime = read_runtime(&bundle)?;
    let seccomp = seccomp::compile_spec(&spec).map_err(RunError::Seccomp)?;
    // libcontainer sets no_new_privs only for `Some(true)`.
    let nnp = spec.process().as_ref().and_then(|p| p.no_new_privileges()) == Some(true);
    let derived =
        elevate::derive(&spec, &bundle, seccomp.is_some() && !nnp).map_err(RunError::Elevate)?;
    let linux = spec.linux().as_ref();
    let device_rules = devices::rules_for(
        linux
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().as_deref()),
        linux.and_then(|l| l.devices().as_deref()),
    )
    .map_err(RunError::Devices)?;

    let signals = block_signals()?;
    remove_stale(id);
    // libcontainer reads the spec from `<dir>/config.json`: the bundle, or a private copy.
    let (spec_dir, restore, dev_bind) = match derived {
        Some(d) => {
            let dir = elevate::private_bundle(id);
            elevate::write(&dir, &d.spec, &bundle).map_err(RunError::Elevate)?;
            (dir, d.restore, d.dev_bind)
        }
        None => (bundle.clone(), None, None),
    };

    let private = (spec_dir != bundle).then(|| spec_dir.clone());
    let prepared = match prepare::prepare_filesystem(&bundle, &runtime) {
        Ok(p) => p,
        Err(err) => {
            remove_private(private.as_deref());
            return Err(RunError::Prepare(err));
        }
    };
    log::debug!("runtime mounts: {:?}", prepared.mounted());
    let mut cleanup = Cleanup {
        prepared,
        container: None,
        cgroup: spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(prepare::cgroup_dir),
        private,
    };

    // Cloned in this (the root) mount namespace, attached in the container's once built.
    let dev_tree = match dev_bind.as_ref().map(DevBind::open).transpose() {
        Ok(t) => t,
        Err(err) => {
            cleanup.finish();
            return Err(RunError::DevBind(err));
        }
    };
    make_cgroup_parents(&spec);
    let created = create(&spec_dir, id, ShimExecutor::new(seccomp, restore));
    let container = match created {
        Ok(c) => cleanup.container.insert(c),
        Err(err) => {
            cleanup.finish();
            // libcontainer keeps its state directory after some failures.
            remove_stale(id);
            return Err(err);
        }
    };
    let Some(pid) = container.pid() else {
        cleanup.finish();
        return Err(RunError::NoPid(id.to_owned()));
    };
    report(&ShimEvent::Created { pid: pid.as_raw() });

    let devices = match &device_rules {
        Some(rules) => devices::apply(pid.as_raw(), rules),
        None => Ok(()),
    };
    let prestart = devices
        .map_err(RunError::Devices)
        .and_then(|()| match &dev_tree {
            Some(tree) => tree.attach(pid.as_raw()).map_err(RunError::DevBind),
            None => Ok(()),
        })
        .and_then(|()| {
            netlink::apply_interfaces(pid.as_raw(), &runtime.interfaces)
                .map_err(RunError::Interfaces)
        })
        .and_then(|()| {
            prepare::bind_namespaces(pid.as_raw(), &runtime.bind_ns).map_err(RunError::Prepare)
        })
        .and_then(|()| {
            container
                .start()
                .map_err(|e| RunError::Start(id.to_owned(), e))
        });
    if let Err(err) = prestart {
        cleanup.finish();
        return Err(err);
    }
    report(&ShimEvent::Started { pid: pid.as_raw() });

    let waited = wait_for(pid, &signals);
    // Before cleanup removes the cgroup, whose counters say whether the OOM killer struck.
    let oom_killed = oom_kills(&spec) > 0;
    cleanup.finish();
    let status = waited?;
    report(&ShimEvent::Exited { status, oom_killed });
    Ok(status)
}

/// The `oom_kill` count in the container's cgroup `memory.events` (0 when unreadable).
fn oom_kills(spec: &Spec) -> u64 {
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return 0;
    };
    let events = prepare::cgroup_dir(&path).join("memory.events");
    std::fs::read_to_string(events)
        .map(|text| parse_oom_kills(&text))
        .unwrap_or(0)
}

/// `oom_kill N` from a cgroup v2 `memory.events` file.
fn parse_oom_kills(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Creates the parent directories of the container's cgroup. libcgroups makes each component
/// with a check-then-create, so two containers under one new parent (services started
/// together) can fail with EEXIST; `create_dir_all` treats a directory that appeared meanwhile
/// as made. Failures are left for libcgroups to report.
fn make_cgroup_parents(spec: &Spec) {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    else {
        return;
    };
    let Some(parent) = prepare::cgroup_dir(path).parent().map(Path::to_path_buf) else {
        return;
    };
    if let Err(err) = fs::create_dir_all(&parent) {
        log::debug!("cannot create cgroup {}: {err}", parent.display());
    }
}

fn create(bundle: &Path, id: &str, executor: ShimExecutor) -> Result<Container, RunError> {
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(RunError::Stdio)?;
    let stderr = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(RunError::Stdio)?;
    let create_err = |e| RunError::Create(id.to_owned(), e);
    ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .validate_id()
        .and_then(|b| b.with_root_path(STATE_DIR))
        .map_err(create_err)?
        .with_executor(executor)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(bundle)
        .with_systemd(false)
        // Only decides whether process.terminal needs a console socket: it must not.
        .with_detach(true)
        .build()
        .map_err(create_err)
}

/// Forwards signals to `pid` and reaps children until `pid` exits; returns its status.
pub fn wait_for(pid: Pid, signals: &SignalFd) -> Result<i32, RunError> {
    loop {
        let info = match signals.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(RunError::Wait(e)),
        };
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            log::debug!("forwarding {sig} to {pid}");
            match kill(pid, sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => log::warn!("cannot forward {sig} to {pid}: {e}"),
            }
            continue;
        }
        // SIGCHLD coalesces: reap everything that has exited.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    if status.pid() == Some(pid)
                        && let Some(code) = exit_status(status)
                    {
                        return Ok(code);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(RunError::Wait(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn oom_kills_come_from_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), 2);
        assert_eq!(parse_oom_kills("low 0\n"), 0);
        assert_eq!(parse_oom_kills(""), 0);
    }

    use super::*;

    /// On a plain directory tree standing in for cgroupfs (where `rmdir` of a cgroup succeeds
    /// despite its control files): the cgroups below go, deepest first; the container's own is
    /// left for libcgroups.
    #[test]
    fn child_cgroups_are_removed_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("keel/services/docker");
        for sub in ["init", "docker/abc/nested", "docker/def"] {
            fs::create_dir_all(own.join(sub)).unwrap();
        }
        fs::write(own.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        remove_child_cgroups(&own);
        assert!(own.is_dir());
        let left: Vec<_> = fs::read_dir(&own)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(fs::read_to_string(own.join("cgroup.kill")).unwrap(), "1");
        // A leaf is not touched at all.
        let leaf = dir.path().join("keel/services/web");
        fs::create_dir_all(&leaf).unwrap();
        remove_child_cgroups(&leaf);
        assert!(!leaf.join("cgroup.kill").exists());
    }

    #[test]
    fn statuses_map_like_a_shell() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_status(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_status(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
    }

    #[test]
    fn runtime_json_is_optional_but_must_parse() {
        let dir = std::env::temp_dir().join(format!("keel-shim-rt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_runtime(&dir).unwrap(), Runtime::default());
        fs::write(dir.join(RUNTIME_FILE), r#"{"mkdir":["/run/x"]}"#).unwrap();
        assert_eq!(read_runtime(&dir).unwrap().mkdir, ["/run/x"]);
        fs::write(dir.join(RUNTIME_FILE), r#"{"bogus":1}"#).unwrap();
        assert!(matches!(read_runtime(&dir), Err(RunError::RuntimeJson(..))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
