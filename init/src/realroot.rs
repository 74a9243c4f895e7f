//! A root on a block device, for the `kernel+squashfs` format. Debian's kernels have virtio and
//! squashfs as modules, so the kernel cannot mount such a root itself: it boots a small
//! initramfs (this binary and the kernel's modules) with `root=DEVICE` on its command line.
//! PID 1 then loads the modules the device needs, waits for it, mounts it read-only, moves it
//! onto `/` and executes the `/sbin/init` it holds, which boots the system as PID 1 from there.

use crate::boot::{self, Op};
use crate::sys;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the real root is mounted before it is moved onto `/`.
const MOUNT_DIR: &str = "/.keel-realroot";
/// The init executed in the real root.
const INIT: &str = "/sbin/init";
/// How long `root=` may take to appear (a slow emulated machine probes virtio late).
const ROOT_WAIT: Duration = Duration::from_secs(60);

/// What the loader needs of `/proc/cmdline`; mounted by [`LOADER`] and unmounted again.
pub const LOADER: &[Op] = &[
    boot::mount("proc", "/proc", boot::NOSUID_NODEV_NOEXEC, ""),
    boot::mount("sysfs", "/sys", boot::NOSUID_NODEV_NOEXEC, ""),
    boot::mount("devtmpfs", "/dev", boot::NOSUID_NOEXEC, "mode=0755"),
];

/// `root=` and `rootfstype=` of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    pub device: PathBuf,
    pub fstype: String,
}

impl RootSpec {
    /// The root to switch to, if the command line names one (`rootfstype` defaults to
    /// squashfs, the format that uses this).
    pub fn from_cmdline(text: &str) -> Option<RootSpec> {
        let mut device = None;
        let mut fstype = "squashfs".to_owned();
        for word in text.split_ascii_whitespace() {
            if let Some(d) = word.strip_prefix("root=") {
                device = Some(PathBuf::from(d));
            } else if let Some(t) = word.strip_prefix("rootfstype=") {
                fstype = t.to_owned();
            }
        }
        device.map(|device| RootSpec { device, fstype })
    }
}

/// Why the real root could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RealRootError {
    #[error("root={0}: only a device path such as /dev/vda is supported")]
    NotAPath(PathBuf),
    #[error("root device {} did not appear within {}s", .0.display(), ROOT_WAIT.as_secs())]
    NoDevice(PathBuf),
    #[error("cannot create {MOUNT_DIR}")]
    Mkdir(#[source] std::io::Error),
    #[error("cannot mount {} ({fstype}) read-only", device.display())]
    Mount {
        device: PathBuf,
        fstype: String,
        #[source]
        source: nix::Error,
    },
    #[error("the root on {} has no {INIT}", .0.display())]
    NoInit(PathBuf),
    #[error("cannot move {MOUNT_DIR} onto /")]
    Move(#[source] nix::Error),
    #[error("cannot execute {INIT}")]
    Exec(#[source] nix::Error),
}

/// Mounts `spec`'s device and executes its init; returns only on failure, with the initramfs
/// still the root and its [`LOADER`] mounts undone. `load_modules` runs coldplug.
pub fn switch(spec: &RootSpec, load_modules: &dyn Fn()) -> RealRootError {
    let err = match mount_root(spec, load_modules) {
        Ok(()) => return exec_init(),
        Err(e) => e,
    };
    unmount_loader();
    err
}

fn mount_root(spec: &RootSpec, load_modules: &dyn Fn()) -> Result<(), RealRootError> {
    if !spec.device.starts_with("/dev/") {
        return Err(RealRootError::NotAPath(spec.device.clone()));
    }
    load_modules();
    let start = Instant::now();
    let mut polls = 0u32;
    while !spec.device.exists() {
        if start.elapsed() > ROOT_WAIT {
            return Err(RealRootError::NoDevice(spec.device.clone()));
        }
        std::thread::sleep(Duration::from_millis(100));
        polls += 1;
        // Buses probed late show devices whose drivers are modules too.
        if polls.is_multiple_of(20) {
            load_modules();
        }
    }
    log::info!(
        "root {} appeared after {} ms",
        spec.device.display(),
        start.elapsed().as_millis()
    );
    match std::fs::create_dir(MOUNT_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RealRootError::Mkdir(e)),
    }
    let device = spec.device.to_string_lossy();
    sys::mount(
        Some(&device),
        Path::new(MOUNT_DIR),
        Some(&spec.fstype),
        MsFlags::MS_RDONLY,
        None,
    )
    .map_err(|source| RealRootError::Mount {
        device: spec.device.clone(),
        fstype: spec.fstype.clone(),
        source,
    })?;
    let unmount = |e| {
        if let Err(u) = sys::umount(Path::new(MOUNT_DIR), true) {
            log::warn!("cannot unmount {MOUNT_DIR}: {u}");
        }
        e
    };
    if !Path::new(MOUNT_DIR)
        .join(INIT.trim_start_matches('/'))
        .exists()
    {
        return Err(unmount(RealRootError::NoInit(spec.device.clone())));
    }
    // The real init mounts its own; these must not be stacked below them.
    unmount_loader();
    sys::move_root(Path::new(MOUNT_DIR)).map_err(|e| unmount(RealRootError::Move(e)))
}

/// Undoes the [`LOADER`] mounts.
pub fn unmount_loader() {
    for op in LOADER.iter().rev() {
        if let Op::Mount { target, .. } = op
            && let Err(e) = sys::umount(Path::new(target), true)
        {
            log::debug!("cannot unmount {target}: {e}");
        }
    }
}

/// Executes the real root's init as this process (PID 1); returns only on failure.
fn exec_init() -> RealRootError {
    log::info!("switching to the real root's {INIT}");
    RealRootError::Exec(sys::exec(Path::new(INIT)))
}

/// Mounts what the loader needs; the errors are logged by the caller.
pub fn mount_loader() -> Vec<boot::BootError> {
    boot::apply(&mut boot::System, LOADER).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_type_come_from_the_command_line() {
        assert_eq!(RootSpec::from_cmdline("console=ttyS0 quiet"), None);
        assert_eq!(
            RootSpec::from_cmdline("root=/dev/vda console=ttyS0\n"),
            Some(RootSpec {
                device: "/dev/vda".into(),
                fstype: "squashfs".into()
            })
        );
        assert_eq!(
            RootSpec::from_cmdline("rootfstype=erofs root=/dev/vdb"),
            Some(RootSpec {
                device: "/dev/vdb".into(),
                fstype: "erofs".into()
            })
        );
    }
}
