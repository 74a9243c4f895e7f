//! The few system calls the host tool makes directly (signal handling, a child's fate when
//! keel dies), each behind a safe function.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Calls `handler` on SIGINT instead of dying of it. No `SA_RESTART`: a blocking read returns
/// at once (EINTR) so the caller can look at what the handler recorded.
pub fn catch_sigint(handler: extern "C" fn(nix::libc::c_int)) -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: callers pass handlers that only touch atomics (async-signal-safe); no SIGINT
    // handler that anything relies on is replaced.
    unsafe { sigaction(Signal::SIGINT, &action) }?;
    Ok(())
}

/// Makes the child `cmd` starts receive `signal` when keel exits, however it exits (killed
/// with SIGKILL included): a VM must not outlive the `keel run` that owns its console.
pub fn die_with_parent(cmd: &mut Command, signal: Signal) {
    let parent = std::process::id();
    let hook = move || {
        nix::sys::prctl::set_pdeathsig(signal)?;
        // keel may have died between fork and prctl: then the death signal never comes.
        if nix::unistd::getppid().as_raw().unsigned_abs() != parent {
            return Err(std::io::Error::other(
                "keel exited while starting the child",
            ));
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only makes two system calls (prctl,
    // getppid) and builds an error value; it takes no locks and touches no shared state.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Asks `child` to end (SIGTERM). `child` must not have been reaped yet (then its pid is still
/// its own).
pub fn terminate(child: &std::process::Child) -> nix::Result<()> {
    let pid = i32::try_from(child.id()).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM)
}

/// Sends `signal` to process `pid`, ignoring a process that is gone (the callers check first
/// that `pid` is the process they mean).
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// The size of the filesystem holding `path` (or, when `path` does not exist yet, its nearest
/// existing ancestor): what a sparse disk image written there can at most be filled with.
pub fn filesystem_size(path: &std::path::Path) -> std::io::Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let stat = nix::sys::statvfs::statvfs(existing)?;
    Ok(stat.blocks().saturating_mul(stat.fragment_size()))
}

/// The termination signal received, 0 for none.
static TERMINATED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn record_termination(signal: nix::libc::c_int) {
    TERMINATED_BY.store(signal, std::sync::atomic::Ordering::SeqCst);
}

/// On SIGINT, SIGTERM or SIGHUP: runs `cleanup` (from a watcher thread, where it may take
/// locks and allocate), then dies of the same signal, so the caller sees how keel ended.
/// Children keep the default handlers (a handled signal is reset by exec) and get the
/// terminal's ctrl-c themselves.
pub fn clean_up_on_termination(cleanup: fn()) -> nix::Result<()> {
    use std::sync::atomic::Ordering;
    const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];
    let action = SigAction::new(
        SigHandler::Handler(record_termination),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in SIGNALS {
        // SAFETY: the handler only stores into an atomic (async-signal-safe).
        unsafe { sigaction(signal, &action) }?;
    }
    std::thread::spawn(move || {
        loop {
            let raw = TERMINATED_BY.load(Ordering::SeqCst);
            if let Ok(signal) = Signal::try_from(raw) {
                cleanup();
                let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
                // SAFETY: restoring the default disposition installs no handler.
                let _ = unsafe { sigaction(signal, &default) };
                let _ = nix::sys::signal::raise(signal);
                std::process::exit(128_i32.saturating_add(raw));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    Ok(())
}

/// Standard input as a unix listening socket: how `keel run lan` receives the socket its parent
/// bound. Takes ownership of file descriptor 0; the caller checks that it is a socket.
pub fn stdin_as_listener() -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fd = std::io::stdin().as_raw_fd();
    // Refuse a closed descriptor before taking ownership of it.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: fd 0 is open (checked above) and nothing else in the process owns it: `keel run
    // lan` calls this once, at its start, and never reads standard input otherwise.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(std::os::unix::net::UnixListener::from(owned))
}
