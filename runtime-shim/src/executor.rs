//! The libcontainer `Executor` of the shim: libcontainer's default executor, preceded, in the
//! container's init just before `execvp`, by what libcontainer 0.7 does not do itself:
//! signal dispositions and mask reset (the shim blocks the signals it forwards, and the Rust
//! runtime ignores SIGPIPE; both survive exec), then the seccomp filters.
//!
//! libcontainer calls the executor after it has dropped capabilities, so installing a filter
//! here needs `noNewPrivileges` or `CAP_SYS_ADMIN`; without them the shim hands libcontainer
//! a spec with that capability added and the executor drops it after the filter is in (see
//! [`crate::elevate`]).

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use crate::elevate::Restore;
use crate::seccomp::Compiled;
use crate::sys;

/// The shim's executor; cloned into the container init by libcontainer.
#[derive(Clone, Debug, Default)]
pub struct ShimExecutor {
    seccomp: Option<Compiled>,
    restore: Option<Restore>,
}

impl ShimExecutor {
    /// An executor that installs `seccomp` (compiled beforehand, in the shim) before exec,
    /// then restores the spec's capabilities when they were raised for it.
    pub fn new(seccomp: Option<Compiled>, restore: Option<Restore>) -> Self {
        Self { seccomp, restore }
    }
}

impl Executor for ShimExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        sys::reset_signals_for_exec()
            .map_err(|e| ExecutorError::Other(format!("cannot reset signals: {e}")))?;
        if let Some(filters) = &self.seccomp {
            filters.install().map_err(|e| {
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                ExecutorError::Other(format!("{e}: {}", cause.unwrap_or_default()))
            })?;
        }
        if let Some(restore) = &self.restore {
            restore
                .apply()
                .map_err(|e| ExecutorError::Other(format!("cannot restore capabilities: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
