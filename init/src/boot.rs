//! The early filesystem setup as declarative tables ([`EARLY`], [`OPTIONAL`]) and the one
//! function that interprets them ([`apply`]). Re-running is harmless: existing nodes and busy
//! mount points are accepted, so the same tables work on an initramfs and on a root that
//! already has some of this (squashfs/ISO roots, a restarted init).

use nix::errno::Errno;
use nix::mount::MsFlags;
use std::io;
use std::path::Path;

/// One step of the early setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Mount a filesystem. With `create`, the mount point is made first when missing.
    Mount {
        source: &'static str,
        target: &'static str,
        fstype: &'static str,
        flags: MsFlags,
        data: &'static str,
        create: bool,
    },
    /// A directory with exactly this mode.
    Mkdir { path: &'static str, mode: u32 },
    /// A character device node.
    CharDev {
        path: &'static str,
        mode: u32,
        major: u64,
        minor: u64,
    },
    /// A symbolic link `link` → `target`.
    Symlink {
        target: &'static str,
        link: &'static str,
    },
}

pub const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_RELATIME);
pub const NOSUID_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_RELATIME);

/// A mount of `fstype` (also its source) on `target`, made when missing.
pub const fn mount(
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
) -> Op {
    Op::Mount {
        source: fstype,
        target,
        fstype,
        flags,
        data,
        create: true,
    }
}

/// Marks the mount on `target` unbindable: a recursive bind of a directory above it (a YAML
/// bind of `/run`, `/var/run` or `/`) leaves it out, and a bind of it fails.
const fn unbindable(target: &'static str) -> Op {
    Op::Mount {
        source: "none",
        target,
        fstype: "none",
        flags: MsFlags::MS_UNBINDABLE,
        data: "",
        create: false,
    }
}

const fn optional(fstype: &'static str, target: &'static str) -> Op {
    Op::Mount {
        source: fstype,
        target,
        fstype,
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        create: false,
    }
}

/// The filesystems every system needs (LinuxKit's rc.init list), in order. A failure here is
/// logged as an error; the boot goes on.
pub const EARLY: &[Op] = &[
    mount("proc", "/proc", NOSUID_NODEV_NOEXEC, ""),
    mount("sysfs", "/sys", NOSUID_NODEV_NOEXEC, ""),
    mount("devtmpfs", "/dev", NOSUID_NOEXEC, "mode=0755"),
    Op::CharDev {
        path: "/dev/console",
        mode: 0o600,
        major: 5,
        minor: 1,
    },
    Op::CharDev {
        path: "/dev/null",
        mode: 0o666,
        major: 1,
        minor: 3,
    },
    Op::CharDev {
        path: "/dev/kmsg",
        mode: 0o644,
        major: 1,
        minor: 11,
    },
    Op::Symlink {
        target: "/proc/self/fd",
        link: "/dev/fd",
    },
    Op::Symlink {
        target: "/proc/self/fd/0",
        link: "/dev/stdin",
    },
    Op::Symlink {
        target: "/proc/self/fd/1",
        link: "/dev/stdout",
    },
    Op::Symlink {
        target: "/proc/self/fd/2",
        link: "/dev/stderr",
    },
    mount(
        "devpts",
        "/dev/pts",
        NOSUID_NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    ),
    // devtmpfs usually has a ptmx node already, which works as well as the link.
    Op::Symlink {
        target: "pts/ptmx",
        link: "/dev/ptmx",
    },
    mount("tmpfs", "/dev/shm", NOSUID_NODEV_NOEXEC, "mode=1777"),
    mount("mqueue", "/dev/mqueue", NOSUID_NODEV_NOEXEC, ""),
    mount("tmpfs", "/run", NOSUID_NODEV_NOEXEC, "mode=755,size=10%"),
    mount("tmpfs", "/tmp", NOSUID_NODEV_NOEXEC, "mode=1777,size=10%"),
    mount("tmpfs", "/var", NOSUID_NODEV_NOEXEC, "mode=755,size=50%"),
    Op::Mkdir {
        path: "/var/cache",
        mode: 0o755,
    },
    Op::Mkdir {
        path: "/var/empty",
        mode: 0o555,
    },
    Op::Mkdir {
        path: "/var/lib",
        mode: 0o755,
    },
    Op::Mkdir {
        path: "/var/local",
        mode: 0o755,
    },
    Op::Mkdir {
        path: "/var/lock",
        mode: 0o755,
    },
    Op::Mkdir {
        path: "/var/log",
        mode: 0o755,
    },
    Op::Mkdir {
        path: "/var/opt",
        mode: 0o755,
    },
    Op::Mkdir {
        path: "/var/spool",
        mode: 0o755,
    },
    Op::Mkdir {
        path: "/var/tmp",
        mode: 0o1777,
    },
    Op::Symlink {
        target: "/run",
        link: "/var/run",
    },
    // Root-only: the runtime state below it lets whoever writes it run code as the shim.
    Op::Mkdir {
        path: keel_bundle::RUN_DIR,
        mode: 0o700,
    },
    Op::Mkdir {
        path: keel_bundle::CONTROL_DIR,
        mode: 0o700,
    },
    // The runtime state: its own root-only tmpfs mounts, made unbindable by [`SEALED`].
    mount(
        "tmpfs",
        keel_bundle::STATE_DIR,
        NOSUID_NODEV_NOEXEC,
        "mode=0700",
    ),
    mount(
        "tmpfs",
        keel_bundle::SHIM_DIR,
        NOSUID_NODEV_NOEXEC,
        "mode=0700",
    ),
    mount("cgroup2", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, ""),
];

/// Applied after the root is sealed (which makes every mount shared): the runtime state made
/// unbindable, so that LinuxKit's common binds of `/run`, `/var/run` or `/` into containers
/// (dhcpcd, getty, metadata) leave it out (see docs/security.md).
pub const SEALED: &[Op] = &[
    unbindable(keel_bundle::STATE_DIR),
    unbindable(keel_bundle::SHIM_DIR),
];

/// Pseudo filesystems mounted when the kernel has them (their mount points exist only then).
pub const OPTIONAL: &[Op] = &[
    optional("securityfs", "/sys/kernel/security"),
    optional("debugfs", "/sys/kernel/debug"),
    optional("configfs", "/sys/kernel/config"),
    optional("pstore", "/sys/fs/pstore"),
    optional("bpf", "/sys/fs/bpf"),
    optional("efivarfs", "/sys/firmware/efi/efivars"),
    optional("binfmt_misc", "/proc/sys/fs/binfmt_misc"),
];

/// The side effects the tables need; faked in tests.
pub trait Ops {
    fn exists(&self, path: &Path) -> bool;
    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), Errno>;
    fn mkdir(&mut self, path: &Path, mode: u32) -> io::Result<()>;
    fn mknod_char(&mut self, path: &Path, mode: u32, major: u64, minor: u64) -> Result<(), Errno>;
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()>;
}

/// The real system.
pub struct System;

impl Ops for System {
    fn exists(&self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), Errno> {
        let data = (!data.is_empty()).then_some(data);
        crate::sys::mount(Some(source), target, Some(fstype), flags, data)
    }

    fn mkdir(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)?;
        // The umask may have cut bits (1777 dirs): set the mode exactly.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn mknod_char(&mut self, path: &Path, mode: u32, major: u64, minor: u64) -> Result<(), Errno> {
        crate::sys::mknod_char(path, mode, major, minor)
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }
}

/// What went wrong with one step.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot create {path}")]
    Create {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Runs `table` in order, tolerating what already exists. Returns the steps that failed (the
/// rest still ran) and how many were skipped because their mount point does not exist.
pub fn apply(ops: &mut dyn Ops, table: &[Op]) -> (Vec<BootError>, usize) {
    let mut errors = Vec::new();
    let mut skipped = 0;
    for op in table {
        match *op {
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                create,
            } => {
                let path = Path::new(target);
                if !ops.exists(path) {
                    if !create {
                        skipped += 1;
                        continue;
                    }
                    if let Err(source) = ops.mkdir(path, 0o755) {
                        errors.push(BootError::Create {
                            path: target,
                            source,
                        });
                        continue;
                    }
                }
                match ops.mount(source, path, fstype, flags, data) {
                    // Already mounted (a second run, or the kernel did it).
                    Ok(()) | Err(Errno::EBUSY) => {}
                    Err(source) => errors.push(BootError::Mount {
                        fstype,
                        target,
                        source,
                    }),
                }
            }
            Op::Mkdir { path, mode } => {
                if let Err(source) = ops.mkdir(Path::new(path), mode) {
                    errors.push(BootError::Create { path, source });
                }
            }
            Op::CharDev {
                path,
                mode,
                major,
                minor,
            } => match ops.mknod_char(Path::new(path), mode, major, minor) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => errors.push(BootError::Create {
                    path,
                    source: e.into(),
                }),
            },
            Op::Symlink { target, link } => match ops.symlink(Path::new(target), Path::new(link)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => errors.push(BootError::Create { path: link, source }),
            },
        }
    }
    (errors, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Records calls; paths in `existing` exist, mounts on `busy` return EBUSY, mounts of
    /// `broken` types fail.
    #[derive(Default)]
    struct Fake {
        existing: BTreeSet<String>,
        busy: BTreeSet<String>,
        broken: BTreeSet<String>,
        calls: Vec<String>,
    }

    impl Ops for Fake {
        fn exists(&self, path: &Path) -> bool {
            self.existing.contains(path.to_str().unwrap())
        }
        fn mount(
            &mut self,
            _source: &str,
            target: &Path,
            fstype: &str,
            _flags: MsFlags,
            data: &str,
        ) -> Result<(), Errno> {
            let t = target.to_str().unwrap().to_owned();
            self.calls.push(format!("mount {fstype} {t} {data}"));
            if self.busy.contains(&t) {
                return Err(Errno::EBUSY);
            }
            if self.broken.contains(fstype) {
                return Err(Errno::ENODEV);
            }
            self.existing.insert(t);
            Ok(())
        }
        fn mkdir(&mut self, path: &Path, mode: u32) -> io::Result<()> {
            self.calls
                .push(format!("mkdir {} {mode:o}", path.display()));
            self.existing.insert(path.to_str().unwrap().to_owned());
            Ok(())
        }
        fn mknod_char(&mut self, path: &Path, _: u32, _: u64, _: u64) -> Result<(), Errno> {
            let p = path.to_str().unwrap().to_owned();
            self.calls.push(format!("mknod {p}"));
            if !self.existing.insert(p) {
                return Err(Errno::EEXIST);
            }
            Ok(())
        }
        fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
            let l = link.to_str().unwrap().to_owned();
            self.calls
                .push(format!("symlink {l} -> {}", target.display()));
            if !self.existing.insert(l) {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            Ok(())
        }
    }

    #[test]
    fn early_table_creates_mount_points_and_mounts_in_order() {
        let mut fake = Fake::default();
        let (errors, skipped) = apply(&mut fake, EARLY);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(skipped, 0);
        let pos = |s: &str| fake.calls.iter().position(|c| c == s).unwrap();
        assert!(pos("mkdir /proc 755") < pos("mount proc /proc "));
        assert!(pos("mount devtmpfs /dev mode=0755") < pos("mknod /dev/console"));
        assert!(pos("mount tmpfs /var mode=755,size=50%") < pos("mkdir /var/log 755"));
        assert!(pos("mount sysfs /sys ") < pos("mount cgroup2 /sys/fs/cgroup "));
        assert!(fake.calls.contains(&"mkdir /var/tmp 1777".to_owned()));
    }

    #[test]
    fn second_run_is_harmless_and_failures_are_collected() {
        let mut fake = Fake::default();
        apply(&mut fake, EARLY);
        fake.busy = fake.existing.clone();
        fake.broken.insert("mqueue".into());
        fake.busy.remove("/dev/mqueue");
        let (errors, _) = apply(&mut fake, EARLY);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].to_string(), "cannot mount mqueue on /dev/mqueue");
        // Everything after the failure still ran.
        assert!(fake.calls.last().unwrap().starts_with("mount cgroup2"));
    }

    #[test]
    fn optional_mounts_skip_missing_points() {
        let mut fake = Fake::default();
        fake.existing.insert("/sys/fs/bpf".into());
        let (errors, skipped) = apply(&mut fake, OPTIONAL);
        assert!(errors.is_empty());
        assert_eq!(skipped, OPTIONAL.len() - 1);
        assert_eq!(fake.calls, ["mount bpf /sys/fs/bpf "]);
    }
}
