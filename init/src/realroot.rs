//! A root on a block device, for the `kernel+squashfs` format. Debian's kernels have virtio and
//! squashfs as modules, so the kernel cannot mount such a root itself: it boots a small
//! initramfs (this binary and the kernel's modules) with `root=DEVICE` on its command line.
//! PID 1 then loads the modules the device needs, waits for it, mounts it read-only, moves it
//! onto `/` and executes the `/sbin/init` it holds, which boots the system as PID 1 from there.
//! With `keel.verity=` instead, the root is a dm-verity device over two GPT partitions
//! ([`crate::verity`]), and nothing else: an unverified root is never a fallback.

use crate::boot::{self, Op};
use crate::sys;
use crate::verity::{self, VerityError, VeritySpec};
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the real root is mounted before it is moved onto `/`.
const MOUNT_DIR: &str = "/.keel-realroot";
/// The init executed in the real root.
const INIT: &str = "/sbin/init";
/// How long the root's devices may take to appear (a slow emulated machine probes virtio late).
pub const ROOT_WAIT: Duration = Duration::from_secs(60);

/// What the loader needs of `/proc/cmdline`; mounted by [`LOADER`] and unmounted again.
pub const LOADER: &[Op] = &[
    boot::mount("proc", "/proc", boot::NOSUID_NODEV_NOEXEC, ""),
    boot::mount("sysfs", "/sys", boot::NOSUID_NODEV_NOEXEC, ""),
    boot::mount("devtmpfs", "/dev", boot::NOSUID_NOEXEC, "mode=0755"),
];

/// `root=` (or the `keel.verity*` knobs) and `rootfstype=` of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    pub source: RootSource,
    pub fstype: String,
}

/// Where the root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// `root=`: a device path.
    Device(PathBuf),
    /// `keel.verity=`: a verified device; takes precedence over `root=`.
    Verity(VeritySpec),
}

impl RootSpec {
    /// The root to switch to, if the command line names one (`rootfstype` defaults to
    /// squashfs, the format that uses this). An error for invalid `keel.verity*` knobs.
    pub fn from_cmdline(text: &str) -> Result<Option<RootSpec>, VerityError> {
        let mut device = None;
        let mut fstype = "squashfs".to_owned();
        for word in text.split_ascii_whitespace() {
            if let Some(d) = word.strip_prefix("root=") {
                device = Some(PathBuf::from(d));
            } else if let Some(t) = word.strip_prefix("rootfstype=") {
                fstype = t.to_owned();
            }
        }
        if let Some(spec) = VeritySpec::from_cmdline(text)? {
            return Ok(Some(RootSpec {
                source: RootSource::Verity(spec),
                fstype,
            }));
        }
        Ok(device.map(|device| RootSpec {
            source: RootSource::Device(device),
            fstype,
        }))
    }

    /// Whether this root is verified (dm-verity).
    pub fn verified(&self) -> bool {
        matches!(self.source, RootSource::Verity(_))
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
    #[error(transparent)]
    Verity(#[from] VerityError),
    #[error("the root on {} has no {INIT}", .0.display())]
    NoInit(PathBuf),
    #[error("cannot look for {INIT} on {}", .device.display())]
    FindInit {
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move {MOUNT_DIR} onto /")]
    Move(#[source] nix::Error),
    #[error("cannot execute {INIT}")]
    Exec(#[source] nix::Error),
}

/// Mounts `spec`'s device and executes its init; returns only on failure, with the initramfs
/// still the root and its [`LOADER`] mounts undone. `load_modules` runs coldplug,
/// `load_module` loads one module by name.
pub fn switch(
    spec: &RootSpec,
    load_modules: &dyn Fn(),
    load_module: &dyn Fn(&str),
) -> RealRootError {
    let err = match mount_root(spec, load_modules, load_module) {
        Ok(()) => return exec_init(),
        Err(e) => e,
    };
    unmount_loader();
    err
}

/// Polls `ready` every 100 ms until it returns true, or false after [`ROOT_WAIT`]; runs
/// `load_modules` again every 2 s.
pub fn wait_for(load_modules: &dyn Fn(), mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut polls = 0u32;
    while !ready() {
        if start.elapsed() > ROOT_WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
        polls += 1;
        // Buses probed late show devices whose drivers are modules too.
        if polls.is_multiple_of(20) {
            load_modules();
        }
    }
    true
}

/// The device `root=` names, once it is there.
fn wait_for_device(device: &Path, load_modules: &dyn Fn()) -> Result<PathBuf, RealRootError> {
    if !device.starts_with("/dev/") {
        return Err(RealRootError::NotAPath(device.to_owned()));
    }
    load_modules();
    let start = Instant::now();
    if !wait_for(load_modules, || device.exists()) {
        return Err(RealRootError::NoDevice(device.to_owned()));
    }
    log::info!(
        "root {} appeared after {} ms",
        device.display(),
        start.elapsed().as_millis()
    );
    Ok(device.to_owned())
}

fn mount_root(
    spec: &RootSpec,
    load_modules: &dyn Fn(),
    load_module: &dyn Fn(&str),
) -> Result<(), RealRootError> {
    let device = match &spec.source {
        RootSource::Device(device) => wait_for_device(device, load_modules)?,
        RootSource::Verity(v) => verity::open_root(v, load_modules, load_module)?,
    };
    match std::fs::create_dir(MOUNT_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RealRootError::Mkdir(e)),
    }
    sys::mount(
        Some(&device.to_string_lossy()),
        Path::new(MOUNT_DIR),
        Some(&spec.fstype),
        MsFlags::MS_RDONLY,
        None,
    )
    .map_err(|source| {
        let (device, fstype) = (device.clone(), spec.fstype.clone());
        match spec.source {
            RootSource::Device(_) => RealRootError::Mount {
                device,
                fstype,
                source,
            },
            RootSource::Verity(_) => RealRootError::Verity(VerityError::Mount {
                device,
                fstype,
                errno: source,
            }),
        }
    })?;
    let unmount = |e| {
        if let Err(u) = sys::umount(Path::new(MOUNT_DIR), true) {
            log::warn!("cannot unmount {MOUNT_DIR}: {u}");
        }
        e
    };
    // A block that fails verification reads as an I/O error: say so rather than "no init".
    match Path::new(MOUNT_DIR)
        .join(INIT.trim_start_matches('/'))
        .try_exists()
    {
        Ok(true) => {}
        Ok(false) => return Err(unmount(RealRootError::NoInit(device))),
        Err(source) => return Err(unmount(RealRootError::FindInit { device, source })),
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
        assert_eq!(RootSpec::from_cmdline("console=ttyS0 quiet").unwrap(), None);
        assert_eq!(
            RootSpec::from_cmdline("root=/dev/vda console=ttyS0\n").unwrap(),
            Some(RootSpec {
                source: RootSource::Device("/dev/vda".into()),
                fstype: "squashfs".into()
            })
        );
        assert_eq!(
            RootSpec::from_cmdline("rootfstype=erofs root=/dev/vdb").unwrap(),
            Some(RootSpec {
                source: RootSource::Device("/dev/vdb".into()),
                fstype: "erofs".into()
            })
        );
    }

    #[test]
    fn verity_takes_precedence_and_never_falls_back() {
        let hash = "ab".repeat(32);
        let text = format!(
            "root=/dev/vda keel.verity={hash} keel.verity_salt=00 keel.verity_blocks=8 rootfstype=erofs"
        );
        let spec = RootSpec::from_cmdline(&text).unwrap().unwrap();
        assert!(spec.verified());
        assert_eq!(spec.fstype, "erofs");
        // An invalid verity knob is an error, not a reason to use root=.
        assert!(RootSpec::from_cmdline("root=/dev/vda keel.verity_blocks=8").is_err());
        assert!(RootSpec::from_cmdline("root=/dev/vda keel.verity=x").is_err());
    }
}
