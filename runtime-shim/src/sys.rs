//! The shim's raw system calls: every `unsafe` block of the crate lives here.
//!
//! Each wrapper is small and returns `std::io::Result`; callers add context. Safe wrappers
//! from `nix` are used elsewhere; only what `nix` does not offer safely is here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use seccompiler::sock_filter;

/// `struct sock_fprog` from `<linux/filter.h>`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// Installs one seccomp BPF program on the calling thread with `SECCOMP_SET_MODE_FILTER`.
///
/// Unlike `seccompiler::apply_filter` this does not set `no_new_privs`: the OCI spec decides
/// that, and the caller needs `CAP_SYS_ADMIN` when it is not set.
pub fn seccomp_set_filter(program: &[sock_filter], flags: libc::c_ulong) -> io::Result<()> {
    let len = libc::c_ushort::try_from(program.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = SockFprog {
        len,
        filter: program.as_ptr(),
    };
    // SAFETY: `fprog` points at `len` valid, initialised `sock_filter`s (a `#[repr(C)]` copy
    // of the kernel's struct) that outlive the call; the kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const SockFprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`): `regs` is `src << 4 | dst`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct BpfProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union bpf_attr` of the
    // size passed; the kernel zero-extends it and only writes within that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program; on failure returns the error and the
/// verifier's log.
pub fn bpf_prog_load_cgroup_device(prog: &[BpfInsn]) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"Apache-2.0";
    let cnt = u32::try_from(prog.len())
        .map_err(|_| (io::Error::from_raw_os_error(libc::E2BIG), String::new()))?;
    let mut attr = BpfProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: cnt,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..BpfProgLoadAttr::default()
    };
    let err = match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a successful BPF_PROG_LOAD returns a new fd owned by nobody else.
        Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => e,
    };
    // Again with a log, to say why.
    let mut log = vec![0u8; 16 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: as above.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).trim().to_owned();
    Err((err, text))
}

/// Attaches a device program to a cgroup directory (`BPF_F_ALLOW_MULTI`, so a program a
/// parent cgroup has still applies).
pub fn bpf_prog_attach_cgroup_device(cgroup: BorrowedFd, prog: BorrowedFd) -> io::Result<()> {
    let fd = |f: BorrowedFd| u32::try_from(f.as_raw_fd()).unwrap_or(u32::MAX);
    let mut attr = BpfProgAttachAttr {
        target_fd: fd(cgroup),
        attach_bpf_fd: fd(prog),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

/// Resets every ignored signal to its default action and empties the signal mask, so an
/// exec'd payload starts with the dispositions a shell would give it (the Rust runtime
/// ignores SIGPIPE; the shim blocks the signals it forwards).
pub fn reset_signals_for_exec() -> io::Result<()> {
    // Realtime signals reserved by the C library make sigaction fail: skip those quietly.
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a zeroed `sigaction` is a valid value (SIG_DFL, empty mask, no flags).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: querying the action with a null new action only writes into `old`.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction == libc::SIG_IGN {
            // SAFETY: zeroed is SIG_DFL with an empty mask, a valid action to install.
            let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: installs SIG_DFL; `dfl` is a valid, initialised sigaction.
            if unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: a zeroed sigset_t is a valid object for sigemptyset to initialise.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut empty) };
    // SAFETY: `empty` is initialised; a null old-set pointer is allowed.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `buf` to a raw fd the process does not own (the status fd, stderr), in as
/// few `write(2)` calls as possible so a short line stays atomic on a pipe.
pub fn write_all_raw(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice for its length; `fd` is only written to.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Whether `fd` is an open file descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; an invalid fd yields EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Sets `FD_CLOEXEC` on a raw fd the process does not own as an `OwnedFd` (the status fd).
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only touch the descriptor flags of `fd`.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_all_raw_reaches_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        use std::os::fd::AsRawFd;
        write_all_raw(w.as_raw_fd(), b"hello\n").unwrap();
        drop(w);
        let mut out = String::new();
        use std::io::Read;
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn fd_checks() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        use std::os::fd::AsRawFd;
        assert!(fd_is_open(r.as_raw_fd()));
        set_cloexec(r.as_raw_fd()).unwrap();
        assert!(!fd_is_open(-1));
        assert!(set_cloexec(-1).is_err());
    }
}
