//! `keel-metadata` (the `metadata` package's `/usr/bin/metadata`): LinuxKit's `metadata`
//! tool for the `cdrom` provider. It finds a volume labelled `cidata` or a CD-ROM drive
//! holding `user-data` or `config` (what `keel run qemu --data` attaches), copies the user
//! data into `/run/config` (raw as `userdata`, a JSON document expanded into files, see
//! [`userdata`]), records the provider in `/run/config/provider` and sets the hostname from
//! `/run/config/hostname` when there is one. Finding no user data is not an error.
//!
//! Usage: `metadata [cdrom]` (the providers to try; only `cdrom` exists in keel).
//! This module owns the command line, the order of the steps and the logging.

mod probe;
mod sys;
mod userdata;

use keel_guest::chain;
use probe::Devices;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the user data goes (LinuxKit's `ConfigPath`).
const CONFIG_DIR: &str = "/run/config";
/// Where a candidate volume is mounted while it is read (the container's own tmpfs).
const MOUNTPOINT: &str = "/tmp/keel-metadata";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("unknown metadata provider {0:?}: keel supports only cdrom")]
    Provider(String),
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list block devices")]
    Devices(#[source] io::Error),
    #[error(transparent)]
    UserData(#[from] userdata::Error),
}

fn main() -> ExitCode {
    keel_guest::init_logger("metadata", log::LevelFilter::Info, keel_guest::Console::No);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dirs = Dirs {
        config: CONFIG_DIR.into(),
        mountpoint: MOUNTPOINT.into(),
    };
    match run(&args, &dirs, &Devices::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Where the user data goes and where volumes are mounted to be read.
struct Dirs {
    config: PathBuf,
    mountpoint: PathBuf,
}

fn run(providers: &[String], dirs: &Dirs, devices: &Devices) -> Result<(), Error> {
    if let Some(p) = providers.iter().find(|p| p.as_str() != "cdrom") {
        return Err(Error::Provider(p.clone()));
    }
    let (config, mountpoint) = (dirs.config.as_path(), dirs.mountpoint.as_path());
    fs::create_dir_all(config).map_err(|source| Error::Dir {
        path: config.into(),
        source,
    })?;
    fs::create_dir_all(mountpoint).map_err(|source| Error::Dir {
        path: mountpoint.into(),
        source,
    })?;
    let candidates = devices
        .candidates(|name| ensure_node(devices, name))
        .map_err(Error::Devices)?;
    let found = candidates.iter().find_map(|c| {
        let node = devices.node(&c.name);
        log::info!("trying {} ({})", node.display(), c.fs.kernel_name());
        read_volume(&node, mountpoint, c.fs.kernel_name()).map(|data| (node, data))
    });
    let Some((node, data)) = found else {
        log::info!("no user data found");
        return Ok(());
    };
    log::info!("{} bytes of user data from {}", data.len(), node.display());
    let provider = config.join("provider");
    if let Err(e) = fs::write(&provider, format!("CDROM {}", node.display())) {
        log::warn!("cannot write {}: {e}", provider.display());
    }
    let summary = userdata::write(config, &data)?;
    if summary.json {
        log::info!(
            "wrote {} files and {} directories under {}",
            summary.files,
            summary.dirs,
            config.display()
        );
    }
    set_hostname(config);
    Ok(())
}

/// Makes the device's node when the container's `/dev` lacks it; whether it exists now.
fn ensure_node(devices: &Devices, name: &str) -> bool {
    let node = devices.node(name);
    if node.exists() {
        return true;
    }
    let Some((major, minor)) = devices.numbers(name) else {
        return false;
    };
    match sys::mknod_block(&node, major, minor) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot make {}: {e}", node.display());
            false
        }
    }
}

/// The user data of one volume, mounted read-only for the time of reading it.
fn read_volume(node: &Path, mountpoint: &Path, fstype: &str) -> Option<Vec<u8>> {
    if let Err(e) = sys::mount_ro(node, mountpoint, fstype) {
        log::warn!("cannot mount {}: {e}", node.display());
        return None;
    }
    let data = probe::userdata_file(mountpoint).and_then(|f| match fs::read(&f) {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn!("cannot read {}: {e}", f.display());
            None
        }
    });
    if let Err(e) = sys::umount(mountpoint) {
        log::warn!("cannot unmount {}: {e}", mountpoint.display());
    }
    if data.is_none() {
        log::info!("{} holds no user-data or config file", node.display());
    }
    data
}

/// LinuxKit's special case: `/run/config/hostname` becomes the hostname.
fn set_hostname(config: &Path) {
    let Ok(name) = fs::read_to_string(config.join("hostname")) else {
        return;
    };
    let name = name.trim();
    if name.is_empty() {
        return;
    }
    match sys::sethostname(name) {
        Ok(()) => log::info!("hostname set to {name}"),
        Err(e) => log::warn!("cannot set hostname {name:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cdrom_provider_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (dirs, devices) = fake(dir.path());
        let err = run(&["cdrom".into(), "aws".into()], &dirs, &devices).unwrap_err();
        assert!(matches!(err, Error::Provider(ref p) if p == "aws"), "{err}");
        assert!(!dirs.config.exists());
    }

    #[test]
    fn no_volume_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (dirs, devices) = fake(dir.path());
        fs::create_dir_all(devices.sys.join("vda")).unwrap();
        run(&[], &dirs, &devices).unwrap();
        assert!(dirs.config.is_dir());
        assert_eq!(fs::read_dir(&dirs.config).unwrap().count(), 0);
    }

    #[test]
    fn missing_sysfs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (dirs, devices) = fake(dir.path());
        let err = run(&["cdrom".into()], &dirs, &devices).unwrap_err();
        assert!(matches!(err, Error::Devices(_)), "{err}");
        assert!(
            chain(&err).starts_with("cannot list block devices: "),
            "{err}"
        );
    }

    fn fake(root: &Path) -> (Dirs, Devices) {
        let dirs = Dirs {
            config: root.join("config"),
            mountpoint: root.join("mnt"),
        };
        let devices = Devices {
            sys: root.join("sys"),
            dev: root.join("dev"),
        };
        (dirs, devices)
    }
}
