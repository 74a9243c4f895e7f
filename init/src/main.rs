//! keel's PID 1: early mounts, root switch, kernel modules, hostname and loopback, then the
//! supervisor loop (onboot containers, services, the control socket) until a power off or
//! reboot is asked for. It never exits and never panics on bad input: errors are logged and the
//! boot goes on; a fault it cannot handle syncs and reboots.

mod assess;
mod boot;
mod channel;
mod cmdline;
mod console;
mod logger;
mod modules;
mod net;
mod power;
mod queued;
mod realroot;
mod rootfs;
mod run;
mod shim;
mod sys;
mod verity;

use cmdline::Cmdline;
use keel_supervisor::{Kind, Settings, Supervisor};
use run::{Init, PowerAction, Timeline};
use std::path::{Path, PathBuf};

fn main() {
    logger::init();
    // The kernel runs /sbin/modprobe (a link to this binary) to load modules on demand, e.g.
    // `fs-overlay` when the first overlay is mounted: answer from the same index coldplug uses.
    let argv0 = std::env::args().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "modprobe")
    {
        std::process::exit(modprobe(std::env::args().skip(1)));
    }
    if nix::unistd::getpid().as_raw() != 1 {
        log::error!("keel-init must run as PID 1");
        std::process::exit(1);
    }
    // A bug must not end in "Attempted to kill init": log, sync and reboot instead. The guest
    // profile aborts on panic; the hook still runs first.
    std::panic::set_hook(Box::new(|info| {
        log::error!("fatal: {info}");
        sys::sync();
        let e = sys::reboot(false);
        log::error!("reboot(2) failed: {e}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }));
    let mut timeline = Timeline::default();
    timeline.mark("init started");
    let action = boot(timeline);
    finish(action)
}

/// An error and its causes on one line (the guest programs' one helper).
pub use keel_guest::chain;

fn boot(mut timeline: Timeline) -> PowerAction {
    switch_to_real_root();
    // Signals first, so nothing sent during the boot is lost.
    let signals = match sys::signalfd() {
        Ok(s) => s,
        Err(e) => {
            log::error!("fatal: cannot set up signal handling: {e}");
            return PowerAction::Reboot;
        }
    };
    match rootfs::switch_from_initramfs() {
        Ok(true) => timeline.mark("root switched"),
        Ok(false) => log::info!("root is not an initramfs: no switch"),
        Err(e) => log::error!("{}", chain(&e)),
    }
    let (errors, _) = boot::apply(&mut boot::System, boot::EARLY);
    for e in &errors {
        log::error!("{}", chain(e));
    }
    logger::reopen();
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    logger::set_debug(cmdline.debug);
    for knob in &cmdline.unknown {
        log::warn!("unknown or invalid kernel parameter {knob}");
    }
    let (errors, skipped) = boot::apply(&mut boot::System, boot::OPTIONAL);
    for e in &errors {
        log::debug!("{}", chain(e));
    }
    log::debug!("{skipped} optional filesystems absent");
    rootfs::enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    rootfs::seal_root();
    for e in &boot::apply(&mut boot::System, boot::SEALED).0 {
        log::error!("{}", chain(e));
    }
    if let Err(e) = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n") {
        log::warn!("cannot set printk_devkmsg: {e}");
    }
    if let Err(e) = sys::disable_ctrl_alt_del() {
        log::warn!("cannot route ctrl-alt-del to init: {e}");
    }
    timeline.mark("mounts done");

    load_modules();
    timeline.mark("modules loaded");
    net::setup();
    timeline.mark("network up");

    let mut sup = Supervisor::new(Settings {
        onboot_timeout: cmdline.onboot_timeout,
        ..Settings::default()
    });
    let containers = Path::new("/").join(keel_bundle::CONTAINERS_DIR);
    for kind in [Kind::Onboot, Kind::Service, Kind::Onshutdown] {
        for bundle in keel_supervisor::discover(&containers, kind) {
            sup.add(bundle);
        }
    }
    Init::new(sup, timeline, cmdline, signals).run()
}

/// On an initramfs that holds no system (no `/containers`: the `kernel+squashfs` format's
/// loader) with `root=` or `keel.verity=` on the command line, boots the system from that
/// device instead: mounts it and executes its init. Returns when there is nothing to switch to,
/// or on failure (logged), with the initramfs still the root; a verified root's failure never
/// falls back to `root=`.
fn switch_to_real_root() {
    if !rootfs::on_initramfs() || Path::new("/").join(keel_bundle::CONTAINERS_DIR).exists() {
        return;
    }
    for e in realroot::mount_loader() {
        log::error!("{}", chain(&e));
    }
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    const UNVERIFIED: &str = "will not boot from an unverified root: staying on the initramfs";
    let spec = match realroot::RootSpec::from_cmdline(&text) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            realroot::unmount_loader();
            return;
        }
        Err(e) => {
            realroot::unmount_loader();
            log::error!("verity: {}; {UNVERIFIED}", chain(&e));
            return;
        }
    };
    let err = realroot::switch(&spec, &load_modules, &load_module);
    if spec.verified() {
        log::error!("verity: {}; {UNVERIFIED}", chain(&err));
    } else {
        log::error!("{}; staying on the initramfs", chain(&err));
    }
}

/// `modprobe [-q] [-b] [--] NAME...` as the kernel's `request_module` calls it: each name is a
/// module or an alias (`fs-overlay`, `net-pf-40`, a modalias). Exit status 0 when every name
/// resolved to something loaded or built in, 1 otherwise.
fn modprobe(args: impl Iterator<Item = String>) -> i32 {
    let names: Vec<String> = args.filter(|a| !a.starts_with('-')).collect();
    let dir = PathBuf::from("/lib/modules").join(sys::kernel_release());
    let index = match modules::ModuleIndex::read(&dir) {
        Ok(i) => i,
        Err(e) => {
            log::debug!("modprobe: no module index in {}: {e}", dir.display());
            return 1;
        }
    };
    let mut loader = modules::Loader::new(dir, index);
    let mut status = 0;
    for name in &names {
        if !loader.load_or_alias(name) {
            log::debug!("modprobe: nothing provides {name}");
            status = 1;
        }
    }
    status
}

/// The running kernel's module loader; None (logged) when it has no modules.
fn module_loader() -> Option<modules::Loader> {
    let dir = PathBuf::from("/lib/modules").join(sys::kernel_release());
    let index = match modules::ModuleIndex::read(&dir) {
        Ok(i) => i,
        // A kernel with everything built in (keel's `virt`) ships no modules at all.
        Err(_) if !dir.exists() => {
            log::info!(
                "no modules for this kernel ({} is absent): nothing to load",
                dir.display()
            );
            return None;
        }
        Err(e) => {
            log::warn!("no module index in {}: {e}", dir.display());
            return None;
        }
    };
    Some(modules::Loader::new(dir, index))
}

/// Loads module `name` and its dependencies, for what no device asks for (`dm_verity`).
fn load_module(name: &str) {
    let Some(mut loader) = module_loader() else {
        return;
    };
    if !loader.load_or_alias(name) {
        log::warn!("this kernel has no module {name}");
    }
}

/// Coldplug plus `/etc/modules`, then re-scans while new modules made new devices appear
/// (virtio_pci exposes the virtio devices whose drivers load next).
fn load_modules() {
    let Some(mut loader) = module_loader() else {
        return;
    };
    let devices = Path::new("/sys/devices");
    let mut again = loader.coldplug(devices);
    if let Ok(text) = std::fs::read_to_string("/etc/modules") {
        for m in modules::parse_etc_modules(&text) {
            again |= loader.load(&m);
        }
    }
    for _ in 0..3 {
        if !again {
            break;
        }
        again = loader.coldplug(devices);
    }
    log::info!(
        "modules: {} loaded, {} refused by the kernel",
        loader.loaded,
        loader.failed
    );
}

/// Unmounts data filesystems, syncs and powers off or reboots. Never returns.
fn finish(action: PowerAction) -> ! {
    rootfs::unmount_data();
    sys::sync();
    log::info!(
        "{}",
        match action {
            PowerAction::PowerOff => "powering off",
            PowerAction::Reboot => "rebooting",
        }
    );
    let e = sys::reboot(action == PowerAction::PowerOff);
    log::error!("reboot(2) failed: {e}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
