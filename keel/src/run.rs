//! `keel run qemu`: boot a build's output in QEMU, LinuxKit's flags where they apply.
//!
//! The argument is a `keel build` prefix (`out/minimal` → `minimal-kernel`, `-initrd.img`,
//! `-cmdline`, or `-squashfs.img`) or a file (`.iso`, a disk image, an `.efi`). This module owns
//! finding the artifacts, choosing the accelerator (KVM when it works, TCG otherwise), the state
//! directory, disks, port forwards, the `--data` volume and the QEMU command line.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "nothing to boot at {0}: expected a keel build prefix (PREFIX-kernel + PREFIX-initrd.img or PREFIX-squashfs.img) or an .iso, .efi or disk image"
    )]
    NoArtifacts(PathBuf),
    #[error("invalid --publish {0:?}: expected HOST:GUEST[/tcp|/udp], e.g. 2222:22")]
    Publish(String),
    #[error("invalid --disk {0:?}: expected [file=]PATH[,size=SIZE][,format=FORMAT]")]
    Disk(String),
    #[error("invalid --accel {0:?}: expected auto, kvm or tcg")]
    Accel(String),
    #[error(
        "--uefi needs firmware: {0} is missing (install ovmf / qemu-efi-aarch64, or pass --fw)"
    )]
    Firmware(PathBuf),
    #[error("cannot prepare state directory {path}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("qemu-img create {path} failed: {stderr}")]
    DiskCreate { path: PathBuf, stderr: String },
    #[error("cannot make the --data volume")]
    DataIso(#[source] keel_formats::Error),
    #[error("cannot write the --data volume {path}")]
    DataWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub use keel_image::Arch;

/// QEMU's view of an architecture.
trait QemuArch {
    fn qemu(self) -> &'static str;
    fn console(self) -> &'static str;
    fn default_firmware(self) -> &'static str;
    /// The variable-store template that goes with firmware `code`, if there is one.
    fn firmware_vars(self, code: &Path) -> Option<PathBuf>;
}

impl QemuArch for Arch {
    fn firmware_vars(self, code: &Path) -> Option<PathBuf> {
        let name = code.file_name()?.to_str()?;
        let vars = code.with_file_name(name.replacen("CODE", "VARS", 1));
        (vars != code && vars.is_file()).then_some(vars)
    }
    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }
    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
    fn default_firmware(self) -> &'static str {
        match self {
            Arch::X86_64 => "/usr/share/OVMF/OVMF_CODE_4M.fd",
            Arch::Aarch64 => "/usr/share/AAVMF/AAVMF_CODE.fd",
        }
    }
}

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when the guest architecture is the host's and KVM is found to work, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for Accel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" | "" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(Error::Accel(other.into())),
        }
    }
}

/// A host → guest port forward (user-mode networking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub host: u16,
    pub guest: u16,
    pub udp: bool,
}

impl FromStr for Publish {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Publish(s.into());
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, false),
            Some((p, "udp")) => (p, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let (h, g) = ports.split_once(':').ok_or_else(bad)?;
        Ok(Publish {
            host: h.parse().map_err(|_| bad())?,
            guest: g.parse().map_err(|_| bad())?,
            udp: proto,
        })
    }
}

/// A disk attached to the VM; created (qcow2 by default) when it does not exist and has a size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: Option<PathBuf>,
    pub size: Option<String>,
    pub format: Option<String>,
}

impl FromStr for Disk {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut disk = Disk {
            path: None,
            size: None,
            format: None,
        };
        for (i, part) in s.split(',').enumerate() {
            match part.split_once('=') {
                Some(("file", v)) => disk.path = Some(v.into()),
                Some(("size", v)) => disk.size = Some(v.into()),
                Some(("format", v)) => disk.format = Some(v.into()),
                None if i == 0 && !part.is_empty() => disk.path = Some(part.into()),
                _ => return Err(Error::Disk(s.into())),
            }
        }
        if disk.path.is_none() && disk.size.is_none() {
            return Err(Error::Disk(s.into()));
        }
        Ok(disk)
    }
}

/// Everything `keel run qemu` takes.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: PathBuf,
    pub arch: Arch,
    pub accel: Accel,
    pub mem_mb: u32,
    pub cpus: u32,
    pub disks: Vec<Disk>,
    pub publish: Vec<Publish>,
    pub uefi: bool,
    pub firmware: Option<PathBuf>,
    pub console_file: Option<PathBuf>,
    pub state: Option<PathBuf>,
    /// Extra kernel command line appended to the build's.
    pub append: Option<String>,
    pub networking: bool,
    pub extra: Vec<String>,
}

/// What is being booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    KernelInitrd {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    KernelSquashfs {
        kernel: PathBuf,
        squashfs: PathBuf,
        /// keel's loader initramfs (`PREFIX-squashfs-initrd.img`), which mounts the squashfs.
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    Iso(PathBuf),
    Efi(PathBuf),
    Disk(PathBuf),
}

impl Boot {
    /// Finds the artifacts for a prefix or a file.
    pub fn detect(target: &Path) -> Result<Boot, Error> {
        let with = |suffix: &str| {
            let mut s = target.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        let cmdline = || {
            fs::read_to_string(with("-cmdline"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let kernel = with("-kernel");
        if kernel.is_file() {
            if with("-initrd.img").is_file() {
                return Ok(Boot::KernelInitrd {
                    kernel,
                    initrd: with("-initrd.img"),
                    cmdline: cmdline(),
                });
            }
            if with("-squashfs.img").is_file() {
                let initrd = with("-squashfs-initrd.img");
                return Ok(Boot::KernelSquashfs {
                    kernel,
                    squashfs: with("-squashfs.img"),
                    initrd: initrd.is_file().then_some(initrd),
                    cmdline: cmdline(),
                });
            }
        }
        if target.is_file() {
            return Ok(match target.extension().and_then(|e| e.to_str()) {
                Some("iso") => Boot::Iso(target.into()),
                Some("efi") => Boot::Efi(target.into()),
                _ => Boot::Disk(target.into()),
            });
        }
        Err(Error::NoArtifacts(target.into()))
    }
}

/// The state directory of a run: `--state`, else `<prefix>-state`.
pub fn state_dir(opts: &Options) -> PathBuf {
    opts.state.clone().unwrap_or_else(|| {
        let mut s = opts.target.as_os_str().to_owned();
        s.push("-state");
        PathBuf::from(s)
    })
}

/// Volume label of the `--data` image: cloud-init's NoCloud label, which the metadata package
/// looks for on every block device.
pub const DATA_LABEL: &str = "cidata";

/// LinuxKit's `--data`: writes `data` as the file `config` of an ISO 9660 image labelled
/// [`DATA_LABEL`] to `<state>/data.iso` and returns the QEMU arguments that attach it, for
/// [`Options::extra`]. It is attached as a read-only virtio disk, not a CD-ROM drive: the
/// Debian cloud kernels have the CD drivers (`sr_mod`, `virtio_scsi`, `ahci`) only as modules
/// keel's kernel recipe does not carry, and aarch64's `virt` machine has no IDE; the metadata
/// package finds the volume by its label wherever it is.
pub fn data_volume(state: &Path, data: &[u8]) -> Result<Vec<String>, Error> {
    fs::create_dir_all(state).map_err(|source| Error::State {
        path: state.into(),
        source,
    })?;
    let iso = keel_formats::data_iso(
        DATA_LABEL,
        &[("config", data)],
        keel_rootfs::source_date_epoch(),
    )
    .map_err(Error::DataIso)?;
    let path = state.join("data.iso");
    fs::write(&path, iso).map_err(|source| Error::DataWrite {
        path: path.clone(),
        source,
    })?;
    Ok(vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio,readonly=on", path.display()),
    ])
}

/// Whether `boot` needs UEFI firmware rather than SeaBIOS: aarch64 has no BIOS path at all; on
/// x86_64 a UKI does, an ISO does unless its El Torito catalog has a BIOS entry (`iso-bios`),
/// and a disk does when it has a GPT (`raw-efi` and its conversions; `raw-bios` is MBR only).
fn needs_uefi(boot: &Boot, arch: Arch, state: &Path) -> bool {
    if arch == Arch::Aarch64 {
        return matches!(boot, Boot::Efi(_) | Boot::Disk(_) | Boot::Iso(_));
    }
    match boot {
        Boot::KernelInitrd { .. } | Boot::KernelSquashfs { .. } => false,
        Boot::Efi(_) => true,
        Boot::Iso(iso) => !iso_boots_bios(iso),
        Boot::Disk(disk) => disk_head(disk, state).is_none_or(|head| has_gpt(&head)),
    }
}

/// The El Torito catalog's validation entry names platform 0 (x86 BIOS) for its default entry.
fn iso_boots_bios(iso: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let read_at = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut f = fs::File::open(iso).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    let Some(record) = read_at(17 * 2048, 2048) else {
        return false;
    };
    el_torito_catalog(&record)
        .and_then(|lba| read_at(u64::from(lba) * 2048, 64))
        .is_some_and(|catalog| catalog_boots_bios(&catalog))
}

/// The boot catalog's sector, from an El Torito boot record volume descriptor.
fn el_torito_catalog(record: &[u8]) -> Option<u32> {
    let is_boot_record = record.len() >= 0x4b
        && record[0] == 0
        && &record[1..6] == b"CD001"
        && record[7..30] == *b"EL TORITO SPECIFICATION";
    is_boot_record
        .then(|| u32::from_le_bytes([record[0x47], record[0x48], record[0x49], record[0x4a]]))
}

fn catalog_boots_bios(catalog: &[u8]) -> bool {
    catalog.len() >= 33 && catalog[0] == 1 && catalog[1] == 0 && catalog[32] == 0x88
}

/// The first 1 KiB of a disk image as the guest sees it (through `qemu-img dd` for qcow2,
/// VHD and VMDK containers); `None` if it cannot be read.
fn disk_head(disk: &Path, state: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = vec![0; 1024];
    fs::File::open(disk).ok()?.read_exact(&mut head).ok()?;
    let container = head.starts_with(b"QFI\xfb")
        || head.starts_with(b"KDMV")
        || head.starts_with(b"conectix")
        || head.starts_with(b"# Disk DescriptorFile");
    if !container {
        return Some(head);
    }
    let out = state.join("disk-head.bin");
    let status = Command::new("qemu-img")
        .args(["dd", "-O", "raw", "bs=512", "count=2"])
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", out.display()))
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let head = status.success().then(|| fs::read(&out).ok()).flatten();
    let _ = fs::remove_file(&out);
    head
}

/// A GPT header ("EFI PART") in the second sector.
fn has_gpt(head: &[u8]) -> bool {
    head.get(512..520) == Some(b"EFI PART")
}

/// A stable, locally administered MAC address kept in the state directory.
fn mac_address(state: &Path) -> Result<String, Error> {
    let file = state.join("mac-addr");
    if let Ok(mac) = fs::read_to_string(&file) {
        return Ok(mac.trim().to_string());
    }
    let seed = format!("{}{:?}", state.display(), std::time::SystemTime::now());
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(seed.as_bytes())
    };
    let mac = format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        digest[0], digest[1], digest[2], digest[3], digest[4]
    );
    fs::write(&file, format!("{mac}\n")).map_err(|source| Error::State { path: file, source })?;
    Ok(mac)
}

/// Builds the QEMU command for a run (without spawning it).
pub fn command(opts: &Options, accel: Accel) -> Result<Command, Error> {
    let boot = Boot::detect(&opts.target)?;
    let state = state_dir(opts);
    fs::create_dir_all(&state).map_err(|source| Error::State {
        path: state.clone(),
        source,
    })?;
    let kvm = accel == Accel::Kvm;

    let mut cmd = Command::new(opts.arch.qemu());
    let arg = |cmd: &mut Command, a: &str, b: &str| {
        cmd.arg(a).arg(b);
    };
    match opts.arch {
        Arch::X86_64 => arg(&mut cmd, "-machine", "q35"),
        Arch::Aarch64 => {
            arg(&mut cmd, "-machine", "virt");
            arg(&mut cmd, "-cpu", if kvm { "host" } else { "cortex-a57" });
        }
    }
    arg(&mut cmd, "-accel", if kvm { "kvm" } else { "tcg" });
    arg(&mut cmd, "-m", &opts.mem_mb.to_string());
    arg(&mut cmd, "-smp", &opts.cpus.to_string());
    cmd.arg("-nographic");
    arg(
        &mut cmd,
        "-pidfile",
        &state.join("qemu.pid").to_string_lossy(),
    );
    arg(&mut cmd, "-device", "virtio-rng-pci");
    if let Some(file) = &opts.console_file {
        arg(&mut cmd, "-serial", &format!("file:{}", file.display()));
        // Keep the monitor off stdio when the console goes to a file.
        arg(&mut cmd, "-monitor", "none");
    }

    if opts.uefi || needs_uefi(&boot, opts.arch, &state) {
        let fw = opts
            .firmware
            .clone()
            .unwrap_or_else(|| opts.arch.default_firmware().into());
        if !fw.is_file() {
            return Err(Error::Firmware(fw));
        }
        arg(
            &mut cmd,
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                fw.display()
            ),
        );
        // The variable store must be writable and per VM: a copy in the state directory.
        if let Some(template) = opts.arch.firmware_vars(&fw) {
            let vars = state.join("efivars.fd");
            if !vars.exists() {
                fs::copy(&template, &vars).map_err(|source| Error::State {
                    path: vars.clone(),
                    source,
                })?;
            }
            arg(
                &mut cmd,
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            );
        }
    }

    let append = |base: &str| -> String {
        let mut line = base.to_string();
        if !line.split_whitespace().any(|w| w.starts_with("console=")) {
            line = format!("console={} {line}", opts.arch.console());
        }
        if let Some(extra) = &opts.append {
            line = format!("{line} {extra}");
        }
        line.trim().to_string()
    };
    match &boot {
        Boot::KernelInitrd {
            kernel,
            initrd,
            cmdline,
        } => {
            arg(&mut cmd, "-kernel", &kernel.to_string_lossy());
            arg(&mut cmd, "-initrd", &initrd.to_string_lossy());
            arg(&mut cmd, "-append", &append(cmdline));
        }
        Boot::KernelSquashfs {
            kernel,
            squashfs,
            initrd,
            cmdline,
        } => {
            arg(&mut cmd, "-kernel", &kernel.to_string_lossy());
            if let Some(initrd) = initrd {
                arg(&mut cmd, "-initrd", &initrd.to_string_lossy());
            }
            arg(
                &mut cmd,
                "-drive",
                &format!(
                    "file={},format=raw,if=virtio,readonly=on",
                    squashfs.display()
                ),
            );
            arg(
                &mut cmd,
                "-append",
                &append(&format!("root=/dev/vda {cmdline}")),
            );
        }
        Boot::Iso(iso) => arg(&mut cmd, "-cdrom", &iso.to_string_lossy()),
        // The firmware loads a UKI given as the kernel; its cmdline and initrd are inside.
        Boot::Efi(efi) => arg(&mut cmd, "-kernel", &efi.to_string_lossy()),
        Boot::Disk(disk) => {
            let format = match disk.extension().and_then(|e| e.to_str()) {
                Some("qcow2") => "qcow2",
                Some("vhd") => "vpc",
                Some("vmdk") => "vmdk",
                _ => "raw",
            };
            arg(
                &mut cmd,
                "-drive",
                &format!("file={},format={format},if=virtio", disk.display()),
            );
        }
    }

    for (i, disk) in opts.disks.iter().enumerate() {
        let format = disk.format.clone().unwrap_or_else(|| "qcow2".into());
        let path = disk
            .path
            .clone()
            .unwrap_or_else(|| state.join(format!("disk{i}.{format}")));
        if !path.exists() {
            let size = disk.size.clone().unwrap_or_else(|| "1G".into());
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", &format])
                .arg(&path)
                .arg(&size)
                .output()
                .map_err(|source| Error::Spawn {
                    program: "qemu-img".into(),
                    source,
                })?;
            if !out.status.success() {
                return Err(Error::DiskCreate {
                    path,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
                });
            }
        }
        arg(
            &mut cmd,
            "-drive",
            &format!("file={},format={format},if=virtio", path.display()),
        );
    }

    if opts.networking {
        let mut netdev = "user,id=net0".to_string();
        for p in &opts.publish {
            let proto = if p.udp { "udp" } else { "tcp" };
            netdev.push_str(&format!(
                ",hostfwd={proto}:127.0.0.1:{}-:{}",
                p.host, p.guest
            ));
        }
        arg(&mut cmd, "-netdev", &netdev);
        arg(
            &mut cmd,
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={}", mac_address(&state)?),
        );
    } else {
        arg(&mut cmd, "-nic", "none");
    }
    cmd.args(&opts.extra);
    Ok(cmd)
}

/// Whether KVM can run a guest of `arch` here: the host's architecture, `/dev/kvm` usable, and
/// a probe boot of the same artifacts prints on the console within a few seconds (on some hosts
/// `/dev/kvm` exists but guests hang). The verdict is cached per host boot.
pub fn kvm_works(opts: &Options) -> bool {
    if opts.arch != Arch::host()
        || fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        return false;
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = std::env::temp_dir().join("keel-kvm-probe");
    if let Ok(text) = fs::read_to_string(&cache)
        && let Some((id, verdict)) = text.split_once(' ')
        && id == boot_id.trim()
    {
        return verdict.trim() == "ok";
    }
    let verdict = probe_kvm(opts).unwrap_or(false);
    let _ = fs::write(
        &cache,
        format!(
            "{} {}\n",
            boot_id.trim(),
            if verdict { "ok" } else { "hangs" }
        ),
    );
    verdict
}

fn probe_kvm(opts: &Options) -> Result<bool, Error> {
    let dir = tempfile::tempdir().map_err(|source| Error::State {
        path: std::env::temp_dir(),
        source,
    })?;
    let log = dir.path().join("console");
    let mut probe = opts.clone();
    probe.console_file = Some(log.clone());
    probe.state = Some(dir.path().join("state"));
    probe.disks.clear();
    probe.networking = false;
    let mut cmd = command(&probe, Accel::Kvm)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: opts.arch.qemu().into(),
            source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut printed = false;
    while Instant::now() < deadline {
        if fs::metadata(&log).map(|m| m.len() > 0).unwrap_or(false) {
            printed = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    log::debug!(
        "kvm probe: {}",
        if printed {
            "guest printed, kvm works"
        } else {
            "no output, using tcg"
        }
    );
    Ok(printed)
}

/// Resolves `Accel::Auto` to what will be used.
pub fn choose_accel(opts: &Options) -> Accel {
    match opts.accel {
        Accel::Auto if kvm_works(opts) => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        other => other,
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Boots and waits for QEMU to exit; returns its exit code.
pub fn run(opts: &Options) -> Result<i32, Error> {
    let accel = choose_accel(opts);
    log::info!("booting {} with {accel}", opts.target.display());
    let mut cmd = command(opts, accel)?;
    let status = cmd.status().map_err(|source| Error::Spawn {
        program: opts.arch.qemu().into(),
        source,
    })?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_parses() {
        assert_eq!(
            "2222:22".parse::<Publish>().unwrap(),
            Publish {
                host: 2222,
                guest: 22,
                udp: false
            }
        );
        assert_eq!(
            "53:53/udp".parse::<Publish>().unwrap(),
            Publish {
                host: 53,
                guest: 53,
                udp: true
            }
        );
        for bad in ["22", "a:b", "1:2/sctp", "70000:1"] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_parses() {
        let d: Disk = "file=data.qcow2,size=2G".parse().unwrap();
        assert_eq!(d.path.as_deref(), Some(Path::new("data.qcow2")));
        assert_eq!(d.size.as_deref(), Some("2G"));
        let d: Disk = "disk.img".parse().unwrap();
        assert_eq!(d.path.as_deref(), Some(Path::new("disk.img")));
        let d: Disk = "size=1G".parse().unwrap();
        assert!(d.path.is_none());
        assert!("bogus=1".parse::<Disk>().is_err());
        assert!("".parse::<Disk>().is_err());
    }

    fn opts(target: PathBuf) -> Options {
        Options {
            target,
            arch: Arch::Aarch64,
            accel: Accel::Tcg,
            mem_mb: 512,
            cpus: 1,
            disks: vec![],
            publish: vec!["8080:80".parse().unwrap()],
            uefi: false,
            firmware: None,
            console_file: None,
            state: None,
            append: Some("keel.debug".into()),
            networking: true,
            extra: vec!["-s".into()],
        }
    }

    #[test]
    fn kernel_initrd_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("sys");
        for (suffix, body) in [
            ("-kernel", "k"),
            ("-initrd.img", "i"),
            ("-cmdline", "quiet\n"),
        ] {
            fs::write(format!("{}{suffix}", prefix.display()), body).unwrap();
        }
        let cmd = command(&opts(prefix.clone()), Accel::Tcg).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert_eq!(cmd.get_program(), "qemu-system-aarch64");
        assert!(
            joined.contains("-machine virt -cpu cortex-a57 -accel tcg"),
            "{joined}"
        );
        assert!(
            joined.contains("-append console=ttyAMA0 quiet keel.debug"),
            "{joined}"
        );
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:8080-:80"),
            "{joined}"
        );
        assert!(joined.ends_with(" -s"), "{joined}");
        let mac = fs::read_to_string(dir.path().join("sys-state/mac-addr")).unwrap();
        assert!(joined.contains(&format!("mac={}", mac.trim())), "{joined}");
    }

    #[test]
    fn firmware_follows_the_boot_media() {
        let mut record = vec![0u8; 2048];
        record[1..6].copy_from_slice(b"CD001");
        record[6] = 1;
        record[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
        record[0x47..0x4b].copy_from_slice(&20u32.to_le_bytes());
        assert_eq!(el_torito_catalog(&record), Some(20));
        record[0] = 1; // a primary volume descriptor, not a boot record
        assert_eq!(el_torito_catalog(&record), None);

        let mut catalog = vec![0u8; 64];
        catalog[0] = 1;
        catalog[32] = 0x88;
        assert!(catalog_boots_bios(&catalog));
        catalog[1] = 0xEF;
        assert!(!catalog_boots_bios(&catalog));

        let dir = tempfile::tempdir().unwrap();
        let mut disk = vec![0u8; 4096];
        disk[510..512].copy_from_slice(&[0x55, 0xAA]);
        let mbr = dir.path().join("bios.img");
        fs::write(&mbr, &disk).unwrap();
        disk[512..520].copy_from_slice(b"EFI PART");
        let gpt = dir.path().join("efi.img");
        fs::write(&gpt, &disk).unwrap();
        let state = dir.path();
        assert!(!needs_uefi(&Boot::Disk(mbr.clone()), Arch::X86_64, state));
        assert!(needs_uefi(&Boot::Disk(gpt.clone()), Arch::X86_64, state));
        assert!(needs_uefi(&Boot::Disk(mbr.clone()), Arch::Aarch64, state));
        // A qcow2 container is looked into, not at.
        let qcow2 = dir.path().join("bios.qcow2");
        let converted = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&mbr)
            .arg(&qcow2)
            .status()
            .is_ok_and(|s| s.success());
        if converted {
            assert!(!needs_uefi(&Boot::Disk(qcow2), Arch::X86_64, state));
        } else {
            eprintln!("qemu-img missing: container probe not checked (run scripts/setup.sh)");
        }
    }

    #[test]
    fn data_volume_is_a_cidata_iso_holding_config() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let data = br#"{"ssh": {"authorized_keys": {"perm": "0600", "content": "k"}}}"#;
        let args = data_volume(&state, data).unwrap();
        let iso = state.join("data.iso");
        assert_eq!(
            args,
            [
                "-drive".to_string(),
                format!("file={},format=raw,if=virtio,readonly=on", iso.display())
            ]
        );
        let bytes = fs::read(&iso).unwrap();
        // The primary volume descriptor (sector 16) and its volume identifier.
        let pvd = &bytes[16 * 2048..17 * 2048];
        assert_eq!(&pvd[..6], b"\x01CD001");
        assert_eq!(
            String::from_utf8_lossy(&pvd[40..72]).trim_end(),
            DATA_LABEL.to_uppercase()
        );
        assert!(
            bytes.windows(data.len()).any(|w| w == data),
            "the data is not in the image"
        );
    }

    #[test]
    fn nothing_to_boot_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = command(&opts(dir.path().join("missing")), Accel::Tcg).unwrap_err();
        assert!(err.to_string().starts_with("nothing to boot at"), "{err}");
    }
}
