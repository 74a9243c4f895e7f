//! `keel-shim exec <id> -- CMD...`: runs a command inside a running container, like
//! `runc exec`, through libcontainer's tenant builder: it joins the container's namespaces and
//! cgroup with the container's environment, working directory, user and capabilities. Its
//! stdio is the shim's own (keelctl's terminal); the shim forwards signals and exits with the
//! command's status.
//!
//! Not applied: the container's seccomp profile (keel installs it from the init spec in its
//! own executor, which the tenant path does not compile again) — an exec'd command runs
//! without it.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use keel_bundle::STATE_DIR;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;

use crate::executor::ShimExecutor;
use crate::run::{RunError, block_signals, wait_for};

/// Why the command could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("container {0} does not exist or does not run")]
    NoContainer(String),
    #[error("cannot duplicate stdio")]
    Stdio(#[source] io::Error),
    #[error("cannot exec in container {0}")]
    Tenant(String, #[source] LibcontainerError),
    #[error(transparent)]
    Wait(#[from] RunError),
}

/// Runs `args` in container `id`; returns the command's exit status (128+signal if killed).
pub fn exec(id: &str, args: Vec<String>) -> Result<i32, ExecError> {
    if !Path::new(STATE_DIR).join(id).is_dir() {
        return Err(ExecError::NoContainer(id.to_owned()));
    }
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(ExecError::Stdio);
    let stdin = dup(io::stdin().as_fd())?;
    let stdout = dup(io::stdout().as_fd())?;
    let stderr = dup(io::stderr().as_fd())?;
    let signals = block_signals()?;
    let err = |e| ExecError::Tenant(id.to_owned(), e);
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .validate_id()
        .and_then(|b| b.with_root_path(STATE_DIR))
        .map_err(err)?
        // Resets the signal mask the shim blocked, like for the container's init.
        .with_executor(ShimExecutor::default())
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_tenant()
        .with_container_args(args)
        // Only decides whether process.terminal needs a console socket: it must not.
        .with_detach(true)
        .build()
        .map_err(err)?;
    Ok(wait_for(pid, &signals)?)
}
