//! The system calls this tool makes: making a block device node, mounting a volume read-only,
//! unmounting it, setting the hostname. Kept here so the rest is testable without privileges.

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use std::path::Path;

pub use nix::Error;

/// Makes a block device node `path` for `major:minor` (mode 0600).
pub fn mknod_block(path: &Path, major: u64, minor: u64) -> Result<(), Error> {
    nix::sys::stat::mknod(
        path,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major, minor),
    )
}

/// Mounts `device` (a filesystem of type `fstype`) read-only, without devices, setuid or
/// executables, on `target`.
pub fn mount_ro(device: &Path, target: &Path, fstype: &str) -> Result<(), Error> {
    nix::mount::mount(
        Some(device),
        target,
        Some(fstype),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

/// Unmounts `target`, lazily if it is busy.
pub fn umount(target: &Path) -> Result<(), Error> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH)
}

/// Sets the hostname of the UTS namespace the process is in.
pub fn sethostname(name: &str) -> Result<(), Error> {
    nix::unistd::sethostname(name)
}
