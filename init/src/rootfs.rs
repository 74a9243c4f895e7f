//! The root filesystem: getting off the initramfs root (so containers can `pivot_root`), making
//! `/` read-only and shared, enabling cgroup controllers, unmounting at shutdown.

use crate::sys;
use nix::mount::MsFlags;
use std::path::Path;

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Where the initramfs root is bind-mounted before it is moved onto `/`.
const BIND_DIR: &str = "/.keel-root";

/// Why the root could not be switched.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot statfs /")]
    Statfs(#[source] nix::Error),
    #[error("cannot create {BIND_DIR}")]
    Mkdir(#[source] std::io::Error),
    #[error("cannot bind-mount / on {BIND_DIR}")]
    Bind(#[source] nix::Error),
    #[error("cannot move {BIND_DIR} onto /")]
    Move(#[source] nix::Error),
}

/// Whether `/` is an initramfs (rootfs, ramfs or tmpfs).
pub fn on_initramfs() -> bool {
    sys::fs_magic(Path::new("/")).is_ok_and(|m| m == RAMFS_MAGIC || m == TMPFS_MAGIC)
}

/// On an initramfs (rootfs/ramfs/tmpfs) root, rbind `/` onto a directory, move that mount onto
/// `/` and chroot into it: `pivot_root` fails on the initramfs itself. Copies nothing. Returns
/// whether it switched (false on a squashfs/ISO/disk root).
pub fn switch_from_initramfs() -> Result<bool, RootError> {
    let magic = sys::fs_magic(Path::new("/")).map_err(RootError::Statfs)?;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return Ok(false);
    }
    match std::fs::create_dir(BIND_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RootError::Mkdir(e)),
    }
    sys::mount(
        Some("/"),
        Path::new(BIND_DIR),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(RootError::Bind)?;
    sys::move_root(Path::new(BIND_DIR)).map_err(RootError::Move)?;
    Ok(true)
}

/// Remounts `/` read-only (as LinuxKit does) and makes every mount shared, so mounts that
/// containers make with `rshared` binds propagate.
pub fn seal_root() {
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let result = sys::mount(None, Path::new("/"), None, ro | MsFlags::MS_BIND, None)
        .or_else(|_| sys::mount(None, Path::new("/"), None, ro, None));
    if let Err(e) = result {
        log::error!("cannot make / read-only: {e}");
    }
    if let Err(e) = sys::mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None,
    ) {
        log::error!("cannot make / shared: {e}");
    }
}

/// Enables every available controller for the children of the root cgroup.
pub fn enable_cgroup_controllers(cgroup_root: &Path) {
    let Ok(list) = std::fs::read_to_string(cgroup_root.join("cgroup.controllers")) else {
        log::error!("no cgroup2 at {}", cgroup_root.display());
        return;
    };
    for c in list.split_ascii_whitespace() {
        // One write each: a controller that cannot be enabled must not block the others.
        if let Err(e) = std::fs::write(cgroup_root.join("cgroup.subtree_control"), format!("+{c}"))
        {
            log::warn!("cannot enable cgroup controller {c}: {e}");
        }
    }
}

/// Mount points to unmount at shutdown, innermost first: every mount of a filesystem that
/// holds data (disks, overlays), from `/proc/self/mounts` text.
pub fn data_mounts(mounts: &str) -> Vec<String> {
    const DATA: &[&str] = &[
        "ext2", "ext3", "ext4", "btrfs", "xfs", "vfat", "msdos", "overlay", "f2fs", "nfs", "nfs4",
        "cifs",
    ];
    let mut out: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_ascii_whitespace();
            let (_, target, fstype) = (w.next()?, w.next()?, w.next()?);
            DATA.contains(&fstype).then(|| target.replace("\\040", " "))
        })
        .collect();
    out.reverse();
    out
}

/// Unmounts the data filesystems (lazily when busy).
pub fn unmount_data() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in data_mounts(&mounts) {
        let path = Path::new(&target);
        if sys::umount(path, false).is_err()
            && let Err(e) = sys::umount(path, true)
        {
            log::warn!("cannot unmount {target}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_mounts_innermost_first() {
        let text = "rootfs / rootfs rw 0 0
proc /proc proc rw 0 0
/dev/vda1 /var/lib ext4 rw 0 0
overlay /containers/services/x/rootfs overlay rw 0 0
/dev/vdb /var/lib/my\\040disk xfs rw 0 0
";
        assert_eq!(
            data_mounts(text),
            [
                "/var/lib/my disk",
                "/containers/services/x/rootfs",
                "/var/lib"
            ]
        );
    }
}
