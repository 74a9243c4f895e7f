//! The raw syscalls the attacks make (libc has no safe wrappers for most of them). Each returns
//! `Err(errno)` on failure.

use std::ffi::CString;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(ret: libc::c_long) -> Result<(), i32> {
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

/// `EPERM`, `EACCES`, ... for a report line.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOENT => "ENOENT",
        libc::EROFS => "EROFS",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EAGAIN => "EAGAIN",
        libc::ENOSPC => "ENOSPC",
        libc::ENOEXEC => "ENOEXEC",
        libc::EFAULT => "EFAULT",
        libc::ESRCH => "ESRCH",
        libc::ENOMEM => "ENOMEM",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

pub fn unshare(flags: libc::c_int) -> Result<(), i32> {
    // SAFETY: unshare takes only flags.
    check(unsafe { libc::unshare(flags) }.into())
}

pub fn mount_tmpfs(target: &str) -> Result<(), i32> {
    let (source, target, fstype) = (c("tmpfs"), c(target), c("tmpfs"));
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; data is
    // null.
    check(
        unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        }
        .into(),
    )
}

pub fn mknod_block(path: &str, major: u32, minor: u32) -> Result<(), i32> {
    let path = c(path);
    // SAFETY: a valid path string; makedev only computes a number.
    check(
        unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(major, minor),
            )
        }
        .into(),
    )
}

pub fn ptrace_attach(pid: libc::pid_t) -> Result<(), i32> {
    // SAFETY: PTRACE_ATTACH takes a pid; the address and data arguments are ignored.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    check(ret)
}

/// `init_module` with a buffer that is no module: the kernel checks the capability (and
/// seccomp the syscall) before it parses anything, so any other error than EPERM means the
/// privilege check let it through.
pub fn init_module() -> Result<(), i32> {
    let image = [0u8; 64];
    let params = c("");
    // SAFETY: a valid buffer of the given length and a NUL-terminated parameter string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            params.as_ptr(),
        )
    };
    match check(ret) {
        Err(libc::EPERM) => Err(libc::EPERM),
        _ => Ok(()),
    }
}

/// `bpf(BPF_MAP_CREATE)` of a small array map.
pub fn bpf_map_create() -> Result<(), i32> {
    // union bpf_attr, map-create part: map_type, key_size, value_size, max_entries.
    let mut attr = [0u8; 128];
    let fields: [u32; 4] = [2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1];
    for (i, f) in fields.iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&f.to_ne_bytes());
    }
    // SAFETY: attr is a readable buffer of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, /* BPF_MAP_CREATE */
            attr.as_ptr(),
            attr.len(),
        )
    };
    if ret >= 0 {
        // SAFETY: ret is a file descriptor this process owns.
        unsafe { libc::close(ret as libc::c_int) };
    }
    check(ret)
}

/// `add_key("user", ...)` into the session keyring: keys are not namespaced per container.
pub fn add_key() -> Result<(), i32> {
    let (kind, desc) = (c("user"), c("keel-attack"));
    let payload = b"x";
    // SAFETY: valid strings and a payload buffer of the length passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            -3, /* KEY_SPEC_SESSION_KEYRING */
        )
    };
    check(ret)
}

pub fn raw_socket() -> Result<(), i32> {
    // SAFETY: socket takes only integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd >= 0 {
        // SAFETY: fd is a descriptor this process owns.
        unsafe { libc::close(fd) };
    }
    check(fd.into())
}

/// Forks a child that waits forever (it dies with its pid namespace's init).
pub fn fork_paused() -> Result<(), i32> {
    // SAFETY: the child only calls async-signal-safe functions (pause, _exit).
    match unsafe { libc::fork() } {
        -1 => Err(errno()),
        0 => loop {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        },
        _ => Ok(()),
    }
}

/// `MemTotal` in MiB.
pub fn mem_total_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}
