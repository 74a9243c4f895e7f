//! The syscalls PID 1 makes that std does not wrap: mounts, root switch, signals, module
//! loading, device-mapper, interface flags, power. The only module with `unsafe`; everything
//! else in the init goes through these small safe functions.

use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// Time since the kernel started, suspend included (CLOCK_BOOTTIME).
pub fn boottime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

/// `mount(2)`.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(source, target, fstype, flags, data)
}

/// The filesystem type magic of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> nix::Result<i64> {
    // The magic's C type differs between libcs (i64 on glibc, u64 on musl).
    #[allow(clippy::unnecessary_cast)]
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 as i64)
}

/// Makes `dir` (a bind mount of the current root) the root: move it onto `/` and chroot into
/// it. Afterwards `/` is a mount with a parent, so `pivot_root` works for containers.
pub fn move_root(dir: &Path) -> nix::Result<()> {
    nix::unistd::chdir(dir)?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")
}

/// `mknod(2)` of a character device.
pub fn mknod_char(path: &Path, mode: u32, major: u64, minor: u64) -> nix::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
}

/// `mknod(2)` of a block device.
pub fn mknod_block(path: &Path, mode: u32, major: u64, minor: u64) -> nix::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(
        path,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
}

/// A device-mapper ioctl (`request`, an `_IOWR(0xfd, ..)` number) on the control device
/// `control`. `buf` is a `struct dm_ioctl` ([`crate::verity::DmIoctl`]) and the data after it;
/// the kernel reads the header's `data_size` bytes from it and writes its answer over them.
pub fn dm_ioctl(control: &File, request: u32, buf: &mut [u8]) -> io::Result<()> {
    use crate::verity::{DM_IOCTL_SIZE, DmIoctl};
    let at = std::mem::offset_of!(DmIoctl, data_size);
    let data_size = buf
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .and_then(|n| usize::try_from(n).ok());
    if buf.len() < DM_IOCTL_SIZE || data_size.is_none_or(|n| n > buf.len()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device-mapper request shorter than its data_size",
        ));
    }
    // The request type is c_int on musl (the number's bits as they are), c_ulong on glibc.
    #[cfg(target_env = "musl")]
    let request = libc::Ioctl::from_ne_bytes(request.to_ne_bytes());
    #[cfg(not(target_env = "musl"))]
    let request = libc::Ioctl::from(request);
    // SAFETY: `buf` is ours, outlives the call, and holds a whole `struct dm_ioctl` and the
    // `data_size` bytes it declares (checked above). The kernel reads at most `data_size`
    // bytes, and writes back its header (305 bytes) or at most the `data_size` the request
    // declared: both within `buf`.
    if unsafe { libc::ioctl(control.as_raw_fd(), request, buf.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks every signal PID 1 handles and returns a signalfd that reads them. Synchronous
/// faults (SIGSEGV and friends) stay unblocked so a bug still shows as a crash.
pub fn signalfd() -> nix::Result<SignalFd> {
    let mut set = SigSet::all();
    for s in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGABRT,
        Signal::SIGTRAP,
        Signal::SIGSYS,
    ] {
        set.remove(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
}

/// Spawns `cmd` with a clean signal state (empty mask, default dispositions: PID 1 blocks
/// everything and Rust ignores SIGPIPE) and, when given, descriptor `keep` duplicated onto
/// descriptor `as_fd` without close-on-exec.
pub fn spawn_clean(cmd: &mut Command, keep: Option<(RawFd, RawFd)>) -> io::Result<Child> {
    let pre_exec = move || -> io::Result<()> {
        // Only async-signal-safe calls here: we are between fork and exec.
        let empty = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None)?;
        for s in Signal::iterator() {
            if s == Signal::SIGKILL || s == Signal::SIGSTOP {
                continue;
            }
            // SAFETY: SIG_DFL installs no handler code; resetting dispositions in the child
            // before exec is the documented use.
            unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) }?;
        }
        match keep {
            None => {}
            Some((keep, as_fd)) if keep == as_fd => {
                // dup2 onto itself keeps close-on-exec: clear the flag instead.
                nix::fcntl::fcntl(
                    keep,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
            }
            Some((keep, as_fd)) => {
                nix::unistd::dup2(keep, as_fd)?;
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe syscalls (sigprocmask, signal, fcntl,
    // dup2) and touches no locks or allocations.
    unsafe { cmd.pre_exec(pre_exec) };
    cmd.spawn()
}

/// Loads a kernel module from an open `.ko` file (`finit_module(2)`).
pub fn load_module(file: &File) -> nix::Result<()> {
    let params = CString::default();
    nix::kmod::finit_module(file, &params, nix::kmod::ModuleInitFlags::empty())
}

/// Sets IFF_UP on network interface `name` (for the loopback device).
pub fn interface_up(name: &str) -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        // c_char is i8 on x86_64 and u8 on aarch64.
        #[allow(clippy::unnecessary_cast)]
        let c = src as libc::c_char;
        *dst = c;
    }
    // SAFETY: SIOCGIFFLAGS reads a NUL-terminated name from and writes flags into the ifreq we
    // own, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets ctrl-alt-del reach PID 1 as SIGINT instead of rebooting at once.
pub fn disable_ctrl_alt_del() -> nix::Result<()> {
    nix::sys::reboot::set_cad_enabled(false)
}

/// Powers off or reboots now. Returns only on failure.
pub fn reboot(power_off: bool) -> nix::Error {
    use nix::sys::reboot::RebootMode;
    let mode = if power_off {
        RebootMode::RB_POWER_OFF
    } else {
        RebootMode::RB_AUTOBOOT
    };
    match nix::sys::reboot::reboot(mode) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Flushes every filesystem.
pub fn sync() {
    nix::unistd::sync();
}

/// Sends `signal` to every process but PID 1.
pub fn kill_all(signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), signal);
}

/// Sends `signal` to `pid`.
pub fn kill(pid: i32, signal: Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

/// Unmounts `target` (lazily when `detach`).
pub fn umount(target: &Path, detach: bool) -> nix::Result<()> {
    let flags = if detach {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    nix::mount::umount2(target, flags)
}

/// `execv(2)` of `path` with this process's arguments after the first; returns only on
/// failure.
pub fn exec(path: &Path) -> nix::Error {
    use std::os::unix::ffi::OsStrExt;
    let Ok(program) = CString::new(path.as_os_str().as_bytes()) else {
        return nix::Error::EINVAL;
    };
    let mut args = vec![program.clone()];
    args.extend(
        std::env::args_os()
            .skip(1)
            .filter_map(|a| CString::new(a.as_bytes()).ok()),
    );
    match nix::unistd::execv(&program, &args) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Puts the terminal on `fd` in the mode a line editor needs: no line discipline editing, no
/// echo, no signals from ctrl-c (it reaches the prompt as a byte), bytes as typed (no CR to
/// NL); output processing stays on, so the kernel's and the logger's `\n` still return the
/// carriage.
pub fn raw_terminal(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::sys::termios::{
        InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, tcgetattr, tcsetattr,
    };
    let mut t = tcgetattr(fd)?;
    t.local_flags
        .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
    t.input_flags
        .remove(InputFlags::ICRNL | InputFlags::INLCR | InputFlags::IGNCR | InputFlags::IXON);
    t.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    tcsetattr(fd, SetArg::TCSANOW, &t)
}

/// Asks the kernel to send SIGIO to this process when `fd` changes state (for a virtio-serial
/// port: when the host end connects or data arrives).
pub fn signal_on_io(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_SETOWN takes an integer argument and touches no memory of ours; `raw` is a
    // descriptor we hold open for the duration of the call.
    if unsafe { libc::fcntl(raw, libc::F_SETOWN, libc::getpid()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL takes an integer argument and touches no memory of ours.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_ASYNC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
