//! The shim's raw system calls: every `unsafe` block of the crate lives here.
//!
//! Each wrapper is small and returns `std::io::Result`; callers add context. Safe wrappers
//! from `nix` are used elsewhere; only what `nix` does not offer safely is here.

use std::ffi::CStr;
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

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// `MOUNT_ATTR_RDONLY` from `<linux/mount.h>`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// `struct mount_attr` from `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`: a
/// detached copy of the mount at `path` (and those below it when `recursive`).
pub fn open_tree_clone(path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful open_tree returns a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// `mount_setattr` on the mount tree `tree` (an `open_tree` fd): sets `attr_set` (e.g.
/// [`MOUNT_ATTR_RDONLY`]) and, when not zero, the propagation type (`MS_SHARED`, ...).
pub fn mount_setattr(
    tree: BorrowedFd,
    recursive: bool,
    attr_set: u64,
    propagation: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `attr` is a live `#[repr(C)]` `struct mount_attr` of the size passed and the
    // path an empty NUL-terminated string; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The step of [`attach_in_namespace`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachStep {
    Fork,
    Setns,
    MoveMount,
    Wait,
}

impl std::fmt::Display for AttachStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fork => "fork",
            Self::Setns => "setns",
            Self::MoveMount => "move_mount",
            Self::Wait => "wait",
        })
    }
}

/// Attaches the detached mount tree `tree` on `target` inside the mount namespace `mnt_ns`
/// (an open `/proc/<pid>/ns/mnt`), from a forked child so this process's own namespace is
/// unchanged. The child only makes raw system calls (async-signal-safe after `fork`) and
/// reports a failure's errno through a pipe.
pub fn attach_in_namespace(
    mnt_ns: BorrowedFd,
    tree: BorrowedFd,
    target: &CStr,
) -> Result<(), (AttachStep, io::Error)> {
    let (r, w) = nix::unistd::pipe().map_err(|e| (AttachStep::Fork, io::Error::from(e)))?;
    // SAFETY: the child below calls only async-signal-safe functions (setns, syscall,
    // write, _exit) on values prepared before the fork, then exits without unwinding.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((AttachStep::Fork, io::Error::last_os_error()));
    }
    if pid == 0 {
        let fail = |step: u8| -> ! {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            let mut msg = [0u8; 5];
            msg[0] = step;
            msg[1..].copy_from_slice(&errno.to_ne_bytes());
            // SAFETY: `msg` is a valid buffer; `_exit` never returns and runs no destructors.
            unsafe {
                libc::write(w.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                libc::_exit(1)
            }
        };
        // SAFETY: setns on a namespace fd this process holds open; only this child moves.
        if unsafe { libc::setns(mnt_ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            fail(1);
        }
        // SAFETY: `tree` is an open_tree fd, both paths valid NUL-terminated strings.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc != 0 {
            fail(2);
        }
        // SAFETY: `_exit` ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) }
    }
    drop(w);
    let mut status = 0;
    loop {
        // SAFETY: waits for the child just forked; `status` is a valid out pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err((AttachStep::Wait, err));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let mut msg = [0u8; 5];
    let got = std::io::Read::read(&mut std::fs::File::from(r), &mut msg).unwrap_or(0);
    if got != msg.len() {
        return Err((
            AttachStep::Wait,
            io::Error::other(format!("helper ended with status {status:#x}")),
        ));
    }
    let errno = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
    let step = if msg[0] == 1 {
        AttachStep::Setns
    } else {
        AttachStep::MoveMount
    };
    Err((step, io::Error::from_raw_os_error(errno)))
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

    #[test]
    fn open_tree_clones_or_says_why() {
        let err = open_tree_clone(c"/nonexistent-keel-path", false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        // Cloning needs CAP_SYS_ADMIN; without it the kernel says EPERM.
        match open_tree_clone(c"/", true) {
            Ok(tree) => assert!(fd_is_open(tree.as_raw_fd())),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
    }
}
