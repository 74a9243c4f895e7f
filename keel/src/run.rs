//! `keel run qemu`: boot a build's output in QEMU, LinuxKit's flags where they apply.
//!
//! The argument is a `keel build` prefix (`out/minimal` → `minimal-kernel`, `-initrd.img`,
//! `-cmdline`, or `-squashfs.img`) or a file (`.iso`, a disk image, an `.efi`). This module owns
//! finding the artifacts, choosing the accelerator (KVM when a probe boot shows it running the
//! guest kernel, TCG otherwise), the state directory, disks, port forwards, the `--data` volume,
//! the control channel's socket ([`CONTROL_SOCKET`], for `keel ctl`) and the QEMU command line.

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
    #[error("nothing to boot as {media} at {}: {} is missing", target.display(), missing.display())]
    MissingMedia {
        target: PathBuf,
        media: &'static str,
        missing: PathBuf,
    },
    #[error("cannot boot {} for {}: {reason}", path.display(), arch.uname())]
    NotBootable {
        path: PathBuf,
        arch: Arch,
        reason: String,
    },
    #[error("cannot read {}", path.display())]
    ReadTarget {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid --publish {0:?}: expected HOST:GUEST[/tcp|/udp], e.g. 2222:22")]
    Publish(String),
    #[error("invalid --disk {0:?}: expected [file=]PATH[,size=SIZE][,format=FORMAT]")]
    Disk(String),
    #[error("invalid --accel {0:?}: expected auto, kvm or tcg")]
    Accel(String),
    #[error(
        "invalid --device {0:?}: expected DRIVER[,PROP=VALUE]... as qemu's -device takes it, e.g. usb-host,vendorid=0x046d,productid=0xc52b"
    )]
    Device(String),
    #[error(
        "invalid --virtiofs {0:?}: expected [path=]DIR[,tag=TAG][,readonly][,sandbox=namespace|none]"
    )]
    Virtiofs(String),
    #[error(
        "invalid --virtiofs {spec:?}: the tag {tag:?} is {} bytes, over the {MAX_TAG} virtio-fs allows",
        tag.len()
    )]
    VirtiofsTag { spec: String, tag: String },
    #[error("--virtiofs {}: not a directory", dir.display())]
    VirtiofsDir {
        dir: PathBuf,
        #[source]
        source: Option<io::Error>,
    },
    #[error("--virtiofs: the tag {0:?} is given to two directories (give one of them tag=OTHER)")]
    VirtiofsDuplicate(String),
    #[error(
        "--virtiofs: the socket path {} is {} bytes, over the {MAX_SOCKET_PATH} a unix socket allows (use a shorter --state)",
        .0.display(), .0.as_os_str().len()
    )]
    VirtiofsSocket(PathBuf),
    #[error(
        "--virtiofs needs virtiofsd, which is not installed (tried {tried}): install the virtiofsd package (Debian 13, Ubuntu 24.04, Fedora) or `cargo install virtiofsd`, or pass --virtiofsd PATH (or KEEL_VIRTIOFSD)"
    )]
    VirtiofsdMissing { tried: String },
    #[error(
        "virtiofsd for --virtiofs {} (tag {tag}) {what}; its log {}:\n{output}",
        dir.display(), log.display()
    )]
    Virtiofsd {
        dir: PathBuf,
        tag: String,
        what: String,
        log: PathBuf,
        output: String,
    },
    #[error("qemu {what} before connecting to virtiofsd; its log {}:\n{output}", log.display())]
    VirtiofsQemu {
        what: String,
        log: PathBuf,
        output: String,
    },
    #[error(
        "--uefi needs firmware: {0} is missing (install ovmf / qemu-efi-aarch64, or pass --fw)"
    )]
    Firmware(PathBuf),
    #[error(
        "--secure-boot boots a disk or ISO (raw-efi, qcow2-efi, iso-efi, ...): with Secure Boot on, the firmware loads no kernel given on QEMU's command line"
    )]
    SecureBootMedia,
    #[error(
        "--secure-boot: no variable store to enroll the keys in beside {0} (give --fw a *_CODE*.fd with its *_VARS*.fd)"
    )]
    SecureBootVars(PathBuf),
    #[error("swtpm failed ({status}); its log {}:\n{output}", log.display())]
    Tpm {
        status: std::process::ExitStatus,
        log: PathBuf,
        output: String,
    },
    #[error("--secure-boot: cannot enroll the keys")]
    Enroll(#[source] crate::keys::Error),
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
    #[error(transparent)]
    DataFile(keel_rootfs::Error),
    #[error("cannot write the metadata volume {path}")]
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
    /// Debian's firmware that enforces Secure Boot once keys are enrolled, and the variable
    /// store enrolling starts from (x86_64's needs SMM, so that the guest cannot write the variables
    /// behind the firmware's back).
    fn secure_firmware(self) -> (&'static str, &'static str);
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
    fn secure_firmware(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => (
                "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            // Debian's empty AAVMF_VARS.fd is not formatted yet (zeros); its `.ms` store is,
            // and enrolling replaces its keys.
            Arch::Aarch64 => (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.ms.fd",
            ),
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

/// A QEMU device (`--device`, LinuxKit's): what QEMU's `-device` takes, `DRIVER[,PROP=VALUE]...`,
/// e.g. `usb-host,vendorid=0x046d,productid=0xc52b` (after `--device qemu-xhci` for a USB bus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device(String);

impl Device {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Device {
    type Err = Error;
    /// Refuses an empty value and one starting with `-`: a mistyped `--device=-drive,...` must
    /// not reach QEMU as something that reads like another of its options.
    fn from_str(s: &str) -> Result<Self, Error> {
        let driver = s.split(',').next().unwrap_or_default();
        if driver.trim().is_empty() || s.trim_start().starts_with('-') {
            return Err(Error::Device(s.into()));
        }
        Ok(Device(s.into()))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest tag virtio-fs carries (`struct virtio_fs_config`'s `tag[36]`).
pub const MAX_TAG: usize = 36;

/// How virtiofsd isolates itself (its `--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// New mount, pid and network namespaces (a user namespace too when keel is not root) with
    /// the shared directory as their root: virtiofsd cannot reach the rest of the host's files.
    Namespace,
    /// None: for hosts without user namespaces (inside a container, some AppArmor settings).
    None,
}

impl Sandbox {
    fn as_str(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::None => "none",
        }
    }
}

/// A host directory shared with the guest through virtio-fs (`--virtiofs`), served by one
/// virtiofsd: `[path=]DIR[,tag=TAG][,readonly][,sandbox=namespace|none]`. The guest mounts it
/// with `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub dir: PathBuf,
    /// `None`: `virtiofsN`, N being its place among the `--virtiofs` (from 0), as LinuxKit
    /// names them.
    pub tag: Option<String>,
    pub readonly: bool,
    pub sandbox: Sandbox,
}

impl FromStr for Share {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Virtiofs(s.into());
        let mut share = Share {
            dir: PathBuf::new(),
            tag: None,
            readonly: false,
            sandbox: Sandbox::Namespace,
        };
        for (i, part) in split_options(s).iter().enumerate() {
            match part.split_once('=') {
                Some(("path", v)) if !v.is_empty() => share.dir = v.into(),
                Some(("tag", v)) if !v.is_empty() => share.tag = Some(v.into()),
                Some(("sandbox", "namespace")) => share.sandbox = Sandbox::Namespace,
                Some(("sandbox", "none")) => share.sandbox = Sandbox::None,
                None if part == "readonly" => share.readonly = true,
                None if i == 0 && !part.is_empty() => share.dir = part.into(),
                _ => return Err(bad()),
            }
        }
        if share.dir.as_os_str().is_empty() {
            return Err(bad());
        }
        if let Some(tag) = share.tag.as_ref().filter(|t| t.len() > MAX_TAG) {
            return Err(Error::VirtiofsTag {
                spec: s.into(),
                tag: tag.clone(),
            });
        }
        Ok(share)
    }
}

/// `a,b=c` as `["a", "b=c"]`; a comma written twice is one comma in a value, as in QEMU's
/// options (`--virtiofs /srv/a,,b` shares `/srv/a,b`).
fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                parts.last_mut().expect("never empty").push(',');
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

/// A [`Share`] checked and placed: its directory exists, its tag is unique, and its virtiofsd
/// listens on `socket` in the state directory and logs to `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePlan {
    pub dir: PathBuf,
    pub tag: String,
    pub readonly: bool,
    pub sandbox: Sandbox,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// Checks `shares` and places their sockets (`virtiofsN.sock`) and logs (`virtiofsN.log`) in
/// `state`. Refuses a directory that does not exist or is not one, and a tag given twice.
pub fn plan_shares(shares: &[Share], state: &Path) -> Result<Vec<SharePlan>, Error> {
    let mut plans: Vec<SharePlan> = Vec::with_capacity(shares.len());
    for (i, share) in shares.iter().enumerate() {
        let dir = match fs::canonicalize(&share.dir) {
            Ok(dir) if dir.is_dir() => dir,
            Ok(_) => {
                return Err(Error::VirtiofsDir {
                    dir: share.dir.clone(),
                    source: None,
                });
            }
            Err(e) => {
                return Err(Error::VirtiofsDir {
                    dir: share.dir.clone(),
                    source: Some(e),
                });
            }
        };
        // LinuxKit's tags, so guests written for `linuxkit run qemu --virtiofs` mount the same.
        let tag = share.tag.clone().unwrap_or_else(|| format!("virtiofs{i}"));
        if plans.iter().any(|p| p.tag == tag) {
            return Err(Error::VirtiofsDuplicate(tag));
        }
        let socket = state.join(format!("virtiofs{i}.sock"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::VirtiofsSocket(socket));
        }
        plans.push(SharePlan {
            dir,
            tag,
            readonly: share.readonly,
            sandbox: share.sandbox,
            log: state.join(format!("virtiofs{i}.log")),
            socket,
        });
    }
    Ok(plans)
}

/// The id of the shared guest memory virtio-fs needs (vhost-user maps the guest's RAM).
const SHARED_MEMORY: &str = "keel-mem";

/// QEMU's option syntax: a comma in a value is written twice.
fn qemu_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// The QEMU arguments that attach `plans`' vhost-user-fs devices; empty for none. The
/// machine must also get `memory-backend=`[`SHARED_MEMORY`] (see [`command_with`]).
fn share_args(plans: &[SharePlan], mem_mb: u32) -> Vec<String> {
    if plans.is_empty() {
        return Vec::new();
    }
    let mut args = vec![
        "-object".to_string(),
        format!("memory-backend-memfd,id={SHARED_MEMORY},size={mem_mb}M,share=on"),
    ];
    for (i, plan) in plans.iter().enumerate() {
        args.extend([
            "-chardev".to_string(),
            format!(
                "socket,id=keelfs{i},path={}",
                qemu_value(&plan.socket.to_string_lossy())
            ),
            "-device".to_string(),
            format!(
                "vhost-user-fs-pci,chardev=keelfs{i},tag={}",
                qemu_value(&plan.tag)
            ),
        ]);
    }
    args
}

/// Everything `keel run qemu` takes.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: PathBuf,
    /// Which of a prefix's outputs to boot (LinuxKit's `-kernel`, `-squashfs`, `-iso`);
    /// `None`: the first of kernel+initrd, kernel+squashfs, or the file itself.
    pub media: Option<Media>,
    pub arch: Arch,
    pub accel: Accel,
    pub mem_mb: u32,
    pub cpus: u32,
    pub disks: Vec<Disk>,
    pub publish: Vec<Publish>,
    pub uefi: bool,
    pub firmware: Option<PathBuf>,
    /// `--secure-boot --keys DIR`: UEFI with Secure Boot enforcing and this key set enrolled.
    pub secure_boot: Option<crate::keys::KeySet>,
    /// `--tpm`: a TPM 2.0 emulated by swtpm ([`Tpm`]).
    pub tpm: bool,
    pub console_file: Option<PathBuf>,
    pub state: Option<PathBuf>,
    /// The QEMU binary (`--qemu`); `None`: `qemu-system-x86_64` or `qemu-system-aarch64` from
    /// `PATH`.
    pub qemu: Option<PathBuf>,
    /// Extra kernel command line appended to the build's.
    pub append: Option<String>,
    pub networking: bool,
    /// `--device`: QEMU devices, each passed as `-device DEV`.
    pub devices: Vec<Device>,
    /// `--virtiofs`: host directories shared through virtio-fs.
    pub shares: Vec<Share>,
    /// The virtiofsd binary (`--virtiofsd`, `KEEL_VIRTIOFSD`); `None`: `virtiofsd` from `PATH`,
    /// else `/usr/libexec/virtiofsd`.
    pub virtiofsd: Option<PathBuf>,
    /// A second NIC on a cluster's private network ([`crate::cluster`]).
    pub lan: Option<LanNic>,
    pub extra: Vec<String>,
}

/// A NIC on a cluster's private network: QEMU connects it to the switch's socket
/// ([`crate::lan`]) with the MAC the switch's DHCP server knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanNic {
    pub socket: PathBuf,
    pub mac: crate::lan::dhcp::Mac,
}

/// Which output of a build prefix to boot, as LinuxKit's `run qemu -kernel`, `-squashfs` and
/// `-iso` choose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `PREFIX-kernel`, `PREFIX-initrd.img`, `PREFIX-cmdline`.
    KernelInitrd,
    /// `PREFIX-kernel`, `PREFIX-squashfs.img`, `PREFIX-cmdline`.
    KernelSquashfs,
    /// `PREFIX.iso`, or `PREFIX-efi.iso` under UEFI (iso-bios and iso-efi's names).
    Iso,
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
    /// Finds the artifacts for a prefix or a file: the `media` asked for (under UEFI when
    /// `uefi`, which names the EFI ISO), else whatever the prefix has.
    pub fn detect(target: &Path, media: Option<Media>, uefi: bool) -> Result<Boot, Error> {
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
        if let Some(media) = media {
            let (name, needed) = match media {
                Media::KernelInitrd => ("kernel+initrd", vec![kernel.clone(), with("-initrd.img")]),
                Media::KernelSquashfs => (
                    "kernel+squashfs",
                    vec![kernel.clone(), with("-squashfs.img")],
                ),
                Media::Iso if target.is_file() => ("an ISO", vec![target.to_path_buf()]),
                Media::Iso => ("an ISO", vec![with(if uefi { "-efi.iso" } else { ".iso" })]),
            };
            if let Some(missing) = needed.iter().find(|p| !p.is_file()) {
                return Err(Error::MissingMedia {
                    target: target.into(),
                    media: name,
                    missing: missing.clone(),
                });
            }
            match media {
                Media::KernelInitrd => {
                    return Ok(Boot::KernelInitrd {
                        kernel,
                        initrd: with("-initrd.img"),
                        cmdline: cmdline(),
                    });
                }
                Media::KernelSquashfs => {
                    let initrd = with("-squashfs-initrd.img");
                    return Ok(Boot::KernelSquashfs {
                        kernel,
                        squashfs: with("-squashfs.img"),
                        initrd: initrd.is_file().then_some(initrd),
                        cmdline: cmdline(),
                    });
                }
                Media::Iso => return Ok(Boot::Iso(needed[0].clone())),
            }
        }
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

/// The architecture a kernel image is built for, from its header: x86's bzImage (`HdrS` at
/// 0x202), arm64's Image (`ARM\x64` at 0x38), an ELF `vmlinux` (its machine), or arm64's
/// compressed forms (gzip, an EFI zboot image). `None`: not a kernel QEMU can boot.
fn kernel_arch(head: &[u8]) -> Option<Arch> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0x202, b"HdrS") {
        return Some(Arch::X86_64);
    }
    if at(0x38, b"ARM\x64") || at(0, &[0x1f, 0x8b]) || (at(0, b"MZ") && at(4, b"zimg")) {
        return Some(Arch::Aarch64);
    }
    if at(0, b"\x7fELF") {
        return match head.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]])) {
            Some(62) => Some(Arch::X86_64),
            Some(183) => Some(Arch::Aarch64),
            _ => None,
        };
    }
    None
}

/// The machine of a PE/COFF (EFI) executable.
pub(crate) fn pe_arch(head: &[u8]) -> Option<Arch> {
    if head.get(..2) != Some(b"MZ".as_slice()) {
        return None;
    }
    let pe = head
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .and_then(|o| usize::try_from(o).ok())?;
    if head.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        return None;
    }
    match head
        .get(pe + 4..pe + 6)
        .map(|m| u16::from_le_bytes([m[0], m[1]]))
    {
        Some(0x8664) => Some(Arch::X86_64),
        Some(0xaa64) => Some(Arch::Aarch64),
        _ => None,
    }
}

/// Whether `head` (a file's first 36 KiB) is a disk image QEMU can boot: a partition table
/// (MBR signature, GPT header) or an image format's header (qcow2, dynamic VHD, VMDK). A fixed
/// VHD has its `conectix` footer at the end instead: see [`check_boot`].
fn disk_kind(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        Some("qcow2")
    } else if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") {
        Some("vmdk")
    } else if at(0, b"conectix") {
        Some("vhd")
    } else if at(512, b"EFI PART") {
        Some("GPT")
    } else if at(510, &[0x55, 0xaa]) {
        Some("MBR")
    } else {
        None
    }
}

/// The last `n` bytes of a file.
fn read_tail(path: &Path, n: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(n)))?;
    let mut tail = Vec::new();
    f.take(n).read_to_end(&mut tail)?;
    Ok(tail)
}

/// The first `n` bytes of a file (fewer if it is shorter) and its length.
fn read_head(path: &Path, n: u64) -> Result<(Vec<u8>, u64), Error> {
    use std::io::Read;
    let read = || -> io::Result<(Vec<u8>, u64)> {
        let f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        let mut head = Vec::new();
        f.take(n).read_to_end(&mut head)?;
        Ok((head, len))
    };
    read().map_err(|source| Error::ReadTarget {
        path: path.into(),
        source,
    })
}

/// Refuses what QEMU would start and then hang on without a word: an empty or garbage file, a
/// kernel or EFI binary of the other architecture, an `.iso` that is no ISO 9660 image.
pub fn check_boot(boot: &Boot, arch: Arch) -> Result<(), Error> {
    let refuse = |path: &Path, reason: String| Error::NotBootable {
        path: path.into(),
        arch,
        reason,
    };
    let (path, what) = match boot {
        Boot::KernelInitrd { kernel, .. } | Boot::KernelSquashfs { kernel, .. } => {
            (kernel, "kernel")
        }
        Boot::Iso(p) => (p, "iso"),
        Boot::Efi(p) => (p, "efi"),
        Boot::Disk(p) => (p, "disk"),
    };
    let (head, len) = read_head(path, 36 * 1024)?;
    if len == 0 {
        return Err(refuse(path, "the file is empty".into()));
    }
    match what {
        "kernel" => match kernel_arch(&head) {
            Some(found) if found == arch => Ok(()),
            Some(found) => Err(refuse(
                path,
                format!(
                    "it is a kernel for {0} (boot it with --arch {0})",
                    found.uname()
                ),
            )),
            None => Err(refuse(
                path,
                "not a kernel image (no bzImage, arm64 Image, ELF or EFI zboot header)".into(),
            )),
        },
        "efi" => match pe_arch(&head) {
            Some(found) if found == arch => Ok(()),
            Some(found) => Err(refuse(
                path,
                format!(
                    "it is an EFI executable for {0} (boot it with --arch {0})",
                    found.uname()
                ),
            )),
            None => Err(refuse(path, "not an EFI (PE) executable".into())),
        },
        "iso" => {
            if head.get(0x8001..0x8006) == Some(b"CD001".as_slice()) {
                Ok(())
            } else {
                Err(refuse(
                    path,
                    "not an ISO 9660 image (no CD001 descriptor)".into(),
                ))
            }
        }
        _ => {
            if disk_kind(&head).is_some() {
                return Ok(());
            }
            let tail = read_tail(path, 512).map_err(|source| Error::ReadTarget {
                path: path.into(),
                source,
            })?;
            if tail.starts_with(b"conectix") {
                return Ok(());
            }
            Err(refuse(
                path,
                "no partition table (MBR, GPT) or disk image header (qcow2, VHD, VMDK); a data disk goes with --disk".into(),
            ))
        }
    }
}

/// The state directory of a run: `--state`, else `<prefix>-state`.
pub fn state_dir(opts: &Options) -> PathBuf {
    opts.state
        .clone()
        .unwrap_or_else(|| default_state_dir(&opts.target))
}

/// The state directory of a run without `--state`: `<target>-state`.
pub fn default_state_dir(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push("-state");
    PathBuf::from(s)
}

/// Creates the state directory (and its parents) if missing. The directory itself is made
/// 0700: it holds the control channel's socket ([`CONTROL_SOCKET`]), and its permissions decide
/// who may use every verb of the guest's PID 1. An existing directory is left as it is.
pub(crate) fn create_state(state: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let failed = |source| Error::State {
        path: state.into(),
        source,
    };
    if state.is_dir() {
        return Ok(());
    }
    if let Some(parent) = state.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(failed)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(state) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && state.is_dir() => Ok(()),
        r => r.map_err(failed),
    }
}

/// The control channel's socket in the state directory: QEMU listens on it and relays to the
/// guest's virtio-serial port [`keel_bundle::HOST_CHANNEL`], which `keel ctl` talks to.
pub const CONTROL_SOCKET: &str = "ctl.sock";

/// Longest unix socket path that can be bound (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The QEMU arguments that attach the control channel at `socket` (a virtio-serial port named
/// [`keel_bundle::HOST_CHANNEL`] relayed to a unix socket QEMU listens on), after removing a
/// stale socket left by an earlier run; `None` (with a warning) when the path is too long to
/// bind.
fn control_channel(socket: &Path) -> Result<Option<[String; 6]>, Error> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        log::warn!(
            "the control socket path {} is {len} bytes, over the {MAX_SOCKET_PATH} a unix socket allows: keel ctl will not be available (use a shorter --state)",
            socket.display()
        );
        return Ok(None);
    }
    match fs::remove_file(socket) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::State {
                path: socket.into(),
                source: e,
            });
        }
        _ => {}
    }
    // QEMU's option syntax: a comma in a value is written twice.
    let path = socket.to_string_lossy().replace(',', ",,");
    Ok(Some([
        "-device".into(),
        "virtio-serial-pci,id=keelctl-bus".into(),
        "-chardev".into(),
        format!("socket,id=keelctl,path={path},server=on,wait=off"),
        "-device".into(),
        format!(
            "virtserialport,bus=keelctl-bus.0,chardev=keelctl,name={}",
            keel_bundle::HOST_CHANNEL
        ),
    ]))
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
    create_state(state)?;
    let path = state.join("data.iso");
    write_metadata_iso(&path, data)?;
    Ok(vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio,readonly=on", path.display()),
    ])
}

/// `keel metadata create FILE DATA` (and `--data`): an ISO 9660 volume labelled
/// [`DATA_LABEL`] holding `data` as `config`, written whole or not at all.
pub fn write_metadata_iso(path: &Path, data: &[u8]) -> Result<(), Error> {
    let iso = keel_formats::data_iso(
        DATA_LABEL,
        &[("config", data)],
        keel_rootfs::source_date_epoch(),
    )
    .map_err(Error::DataIso)?;
    let mut file = keel_rootfs::AtomicFile::create(path).map_err(Error::DataFile)?;
    io::Write::write_all(&mut file, &iso).map_err(|source| Error::DataWrite {
        path: path.into(),
        source,
    })?;
    file.commit().map_err(Error::DataFile)
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
    command_with(opts, accel, true)
}

/// [`command`], with or without the control channel (the KVM probe has no use for it).
fn command_with(opts: &Options, accel: Accel, channel: bool) -> Result<Command, Error> {
    let secure = opts.secure_boot.is_some();
    let boot = Boot::detect(&opts.target, opts.media, opts.uefi || secure)?;
    check_boot(&boot, opts.arch)?;
    if secure && !matches!(boot, Boot::Disk(_) | Boot::Iso(_)) {
        return Err(Error::SecureBootMedia);
    }
    let state = state_dir(opts);
    create_state(&state)?;
    let shares = plan_shares(&opts.shares, &state)?;
    let kvm = accel == Accel::Kvm;

    let mut cmd = Command::new(qemu_program(opts));
    let arg = |cmd: &mut Command, a: &str, b: &str| {
        cmd.arg(a).arg(b);
    };
    let machine = match (opts.arch, secure) {
        (Arch::X86_64, false) => "q35",
        (Arch::X86_64, true) => "q35,smm=on",
        (Arch::Aarch64, _) => "virt",
    };
    // virtio-fs needs the guest's memory shared with virtiofsd: both machines take a memory
    // backend for their RAM.
    if shares.is_empty() {
        arg(&mut cmd, "-machine", machine);
    } else {
        arg(
            &mut cmd,
            "-machine",
            &format!("{machine},memory-backend={SHARED_MEMORY}"),
        );
    }
    if opts.arch == Arch::Aarch64 {
        arg(&mut cmd, "-cpu", if kvm { "host" } else { "cortex-a57" });
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
    if channel && let Some(args) = control_channel(&state.join(CONTROL_SOCKET))? {
        cmd.args(args);
    }
    if let Some(file) = &opts.console_file {
        arg(&mut cmd, "-serial", &format!("file:{}", file.display()));
        // Keep the monitor off stdio when the console goes to a file.
        arg(&mut cmd, "-monitor", "none");
    }

    if let Some(keys) = &opts.secure_boot {
        let (code, template) = match &opts.firmware {
            Some(fw) => (
                fw.clone(),
                opts.arch
                    .firmware_vars(fw)
                    .ok_or_else(|| Error::SecureBootVars(fw.clone()))?,
            ),
            None => {
                let (code, vars) = opts.arch.secure_firmware();
                (code.into(), vars.into())
            }
        };
        for file in [&code, &template] {
            if !file.is_file() {
                return Err(Error::Firmware(file.clone()));
            }
        }
        // Enrolled afresh for every run: the store follows the key set given now.
        let vars = state.join("efivars-secure-boot.fd");
        keys.enroll(&template, &vars).map_err(Error::Enroll)?;
        if opts.arch == Arch::X86_64 {
            // Only SMM code may write the variable store's flash.
            arg(
                &mut cmd,
                "-global",
                "driver=cfi.pflash01,property=secure,value=on",
            );
        }
        arg(
            &mut cmd,
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ),
        );
        arg(
            &mut cmd,
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        );
    } else if opts.uefi || needs_uefi(&boot, opts.arch, &state) {
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

    if opts.tpm {
        let socket = state.join(TPM_DIR).join(TPM_SOCKET);
        arg(
            &mut cmd,
            "-chardev",
            &format!("socket,id=keeltpm,path={}", socket.display()),
        );
        arg(&mut cmd, "-tpmdev", "emulator,id=keeltpm0,chardev=keeltpm");
        // What each machine's firmware and kernels expect: CRB on a q35, TIS on the arm virt
        // board.
        let device = match opts.arch {
            Arch::X86_64 => "tpm-crb,tpmdev=keeltpm0",
            Arch::Aarch64 => "tpm-tis-device,tpmdev=keeltpm0",
        };
        arg(&mut cmd, "-device", device);
    }

    let append = |base: &str| -> String {
        let mut line = base.to_string();
        if !line.split_whitespace().any(|w| w.starts_with("console=")) {
            line = format!("console={} {line}", opts.arch.console());
        }
        // Under emulation on a busy host the x86 kernel's IO-APIC timer check can miss its
        // ticks and panic at boot ("IO-APIC + timer doesn't work"): QEMU's emulated timer is
        // sound, so the check is skipped, as cloud images do for virtual machines.
        if accel == Accel::Tcg
            && opts.arch == Arch::X86_64
            && !line
                .split_whitespace()
                .chain(opts.append.iter().flat_map(|a| a.split_whitespace()))
                .any(|w| w == "no_timer_check")
        {
            line = format!("{line} no_timer_check");
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

    cmd.args(share_args(&shares, opts.mem_mb));
    for device in &opts.devices {
        arg(&mut cmd, "-device", device.as_str());
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
    } else if opts.lan.is_none() {
        arg(&mut cmd, "-nic", "none");
    }
    // After the user-mode NIC, so that the guest names it eth1 (eth0 without one).
    if let Some(lan) = &opts.lan {
        arg(
            &mut cmd,
            "-netdev",
            &format!(
                "stream,id=lan0,server=off,addr.type=unix,addr.path={}",
                lan.socket.display()
            ),
        );
        arg(
            &mut cmd,
            "-device",
            &format!("virtio-net-pci,netdev=lan0,mac={}", lan.mac),
        );
    }
    cmd.args(&opts.extra);
    Ok(cmd)
}

/// How long the KVM probe waits for the guest kernel when QEMU loads it itself (`-kernel`):
/// under a working KVM SeaBIOS's option ROM hands over at once and, with the probe's
/// `ignore_loglevel`, the kernel banner follows within a second or two.
pub const PROBE_DIRECT_DEADLINE: Duration = Duration::from_secs(10);

/// How long the KVM probe waits when firmware boots the medium (ISO, disk, UKI): SeaBIOS or
/// OVMF and a bootloader run first, and a `quiet` command line inside the image (which the
/// probe cannot change) may hide the banner until keel-init's first line.
pub const PROBE_FIRMWARE_DEADLINE: Duration = Duration::from_secs(30);

/// Name of the verdict cache in `$TMPDIR`. Versioned: `keel-kvm-probe` (v1) said "ok" as soon
/// as the firmware printed, so its verdicts must never be read again.
const PROBE_CACHE_NAME: &str = "keel-kvm-probe.v2";
const PROBE_CACHE_HEADER: &str = "keel-kvm-probe v2";

/// Where and how long the KVM probe looks; every path injectable for tests.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The KVM device (`/dev/kvm`).
    pub kvm_device: PathBuf,
    /// The verdict cache (`$TMPDIR/keel-kvm-probe.v2`); `None`: probe every time.
    pub cache: Option<PathBuf>,
    /// This host boot (`/proc/sys/kernel/random/boot_id`): a reboot can load another KVM
    /// module, so verdicts of other boots are ignored. Empty: nothing is cached.
    pub boot_id: String,
    /// Deadline for kernel + initrd and kernel + squashfs boots.
    pub direct_deadline: Duration,
    /// Deadline for boots through firmware (ISO, disk, UKI).
    pub firmware_deadline: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            kvm_device: "/dev/kvm".into(),
            cache: Some(std::env::temp_dir().join(PROBE_CACHE_NAME)),
            boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            direct_deadline: PROBE_DIRECT_DEADLINE,
            firmware_deadline: PROBE_FIRMWARE_DEADLINE,
        }
    }
}

/// What a KVM probe boot showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The guest kernel (or keel's PID 1) printed this long after QEMU started: KVM works.
    Kernel(Duration),
    /// No guest kernel output by the deadline; `firmware`: the console was not empty (firmware
    /// or bootloader text, which proves nothing: on a host whose KVM runs only special guest
    /// kernels, e.g. `kvm-pvm`, SeaBIOS prints and the kernel then hangs).
    Silent { deadline: Duration, firmware: bool },
    /// QEMU stopped before the guest kernel printed.
    Exited(String),
}

/// Why an accelerator was picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `--accel kvm|tcg` (or `KEEL_QEMU_ACCEL`).
    Forced,
    /// The guest's architecture is not the host's.
    ForeignArch { guest: Arch, host: Arch },
    /// The KVM device cannot be opened for reading and writing.
    NoKvm {
        device: PathBuf,
        error: io::ErrorKind,
    },
    /// A probe boot under KVM, now or (`cached`: in this file) earlier in this host boot.
    Probe {
        verdict: Verdict,
        cached: Option<PathBuf>,
    },
    /// The probe boot could not be started; the error and its causes.
    ProbeFailed(String),
}

/// The accelerator a run uses and why: `keel run qemu` prints it as one line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub reason: Reason,
}

/// "0.8 s", "10 s".
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accel = self.accel;
        let cached = |c: &Option<PathBuf>| match c {
            Some(file) => format!("; cached for this host boot in {}", file.display()),
            None => String::new(),
        };
        match &self.reason {
            Reason::Forced => write!(f, "using {accel} (--accel {accel})"),
            Reason::ForeignArch { guest, host } => write!(
                f,
                "using {accel}: {} guest on an {} host",
                guest.uname(),
                host.uname()
            ),
            Reason::NoKvm { device, error } => write!(
                f,
                "using {accel}: no usable {} ({})",
                device.display(),
                error.to_string().to_lowercase()
            ),
            Reason::Probe {
                verdict: Verdict::Kernel(after),
                cached: c,
            } => write!(
                f,
                "using {accel} (probe: guest kernel started in {}{})",
                seconds(*after),
                cached(c)
            ),
            Reason::Probe {
                verdict: Verdict::Silent { deadline, firmware },
                cached: c,
            } => write!(
                f,
                "using {accel}: the kvm probe saw {} in {} (/dev/kvm exists but does not run this guest{}); --accel kvm forces it",
                if *firmware {
                    "firmware output but no guest kernel"
                } else {
                    "no guest kernel output"
                },
                seconds(*deadline),
                cached(c)
            ),
            Reason::Probe {
                verdict: Verdict::Exited(status),
                cached: c,
            } => write!(
                f,
                "using {accel}: qemu exited under kvm before the guest kernel printed ({status}{}); --accel kvm forces it",
                cached(c)
            ),
            Reason::ProbeFailed(error) => write!(
                f,
                "using {accel}: the kvm probe could not run ({error}); --accel kvm forces it"
            ),
        }
    }
}

/// Resolves `opts.accel` to what will be used, and why. `Auto` takes KVM only when the guest
/// is of the host's architecture, the KVM device opens, and a probe boot of the same artifacts
/// under KVM shows the guest kernel running (see [`probe_kvm`]); the probe's verdict is cached
/// per host boot, QEMU binary and architecture.
pub fn choose_accel(opts: &Options) -> Choice {
    choose_accel_with(opts, &ProbeSettings::default())
}

/// [`choose_accel`] with the probe's paths and deadlines given.
pub fn choose_accel_with(opts: &Options, settings: &ProbeSettings) -> Choice {
    let tcg = |reason| Choice {
        accel: Accel::Tcg,
        reason,
    };
    if opts.accel != Accel::Auto {
        return Choice {
            accel: opts.accel,
            reason: Reason::Forced,
        };
    }
    let host = Arch::host();
    if opts.arch != host {
        return tcg(Reason::ForeignArch {
            guest: opts.arch,
            host,
        });
    }
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&settings.kvm_device)
    {
        return tcg(Reason::NoKvm {
            device: settings.kvm_device.clone(),
            error: e.kind(),
        });
    }
    let cache = settings
        .cache
        .as_ref()
        .filter(|_| !settings.boot_id.is_empty())
        .map(|file| ProbeCache {
            file: file.clone(),
            boot_id: settings.boot_id.clone(),
            arch: opts.arch,
            qemu: resolve_program(&qemu_program(opts)),
        });
    if let Some(verdict) = cache.as_ref().and_then(ProbeCache::load) {
        let accel = if matches!(verdict, Verdict::Kernel(_)) {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        return Choice {
            accel,
            reason: Reason::Probe {
                verdict,
                cached: cache.map(|c| c.file),
            },
        };
    }
    let deadline = match Boot::detect(
        &opts.target,
        opts.media,
        opts.uefi || opts.secure_boot.is_some(),
    ) {
        Ok(Boot::KernelInitrd { .. } | Boot::KernelSquashfs { .. }) => settings.direct_deadline,
        _ => settings.firmware_deadline,
    };
    match probe_kvm(opts, deadline) {
        Ok(verdict) => {
            if let Some(cache) = &cache {
                cache.store(&verdict);
            }
            Choice {
                accel: if matches!(verdict, Verdict::Kernel(_)) {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                },
                reason: Reason::Probe {
                    verdict,
                    cached: None,
                },
            }
        }
        Err(e) => tcg(Reason::ProbeFailed(crate::build::error_chain(&e))),
    }
}

/// The QEMU binary of a run: `--qemu`, else `qemu-system-<arch>` from `PATH`.
fn qemu_program(opts: &Options) -> PathBuf {
    opts.qemu.clone().unwrap_or_else(|| opts.arch.qemu().into())
}

/// The file a program name runs (searched in `PATH` when it has no `/`), for the cache key: a
/// verdict for one QEMU says nothing about another. The name itself when it is not found.
fn resolve_program(program: &Path) -> PathBuf {
    let found = if program.components().count() > 1 {
        Some(program.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
    };
    found
        .and_then(|p| fs::canonicalize(p).ok())
        .unwrap_or_else(|| program.to_path_buf())
}

/// The probe's verdicts of this host boot, one line each after a header:
/// `BOOT_ID<TAB>ARCH<TAB>QEMU<TAB>ok<TAB>kernel MS` or `...<TAB>no<TAB>silent|firmware MS`
/// (the reason: when the kernel printed, or the deadline that passed without it).
#[derive(Debug, Clone)]
struct ProbeCache {
    file: PathBuf,
    boot_id: String,
    arch: Arch,
    qemu: PathBuf,
}

/// One cache line's fields.
struct CacheEntry {
    boot_id: String,
    arch: String,
    qemu: String,
    verdict: Verdict,
}

impl ProbeCache {
    /// Every entry of a well-formed cache file; `None` when the file is missing or anything in
    /// it is not understood (a v1 file, a torn write, another program's): then it is as if
    /// there were no cache, and the next store replaces it.
    fn entries(&self) -> Option<Vec<CacheEntry>> {
        let text = fs::read_to_string(&self.file).ok()?;
        let mut lines = text.lines();
        if lines.next()? != PROBE_CACHE_HEADER {
            return None;
        }
        lines
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let [boot_id, arch, qemu, ok, detail] = fields[..] else {
                    return None;
                };
                let (kind, ms) = detail.split_once(' ')?;
                let ms = Duration::from_millis(ms.parse().ok()?);
                let verdict = match (ok, kind) {
                    ("ok", "kernel") => Verdict::Kernel(ms),
                    ("no", "silent" | "firmware") => Verdict::Silent {
                        deadline: ms,
                        firmware: kind == "firmware",
                    },
                    _ => return None,
                };
                Some(CacheEntry {
                    boot_id: boot_id.into(),
                    arch: arch.into(),
                    qemu: qemu.into(),
                    verdict,
                })
            })
            .collect()
    }

    fn matches(&self, entry: &CacheEntry) -> bool {
        entry.boot_id == self.boot_id
            && entry.arch == self.arch.uname()
            && Path::new(&entry.qemu) == self.qemu
    }

    /// The cached verdict for this boot, QEMU and architecture.
    fn load(&self) -> Option<Verdict> {
        self.entries()?
            .into_iter()
            .rev()
            .find(|e| self.matches(e))
            .map(|e| e.verdict)
    }

    /// A verdict's last two fields; `None` for one that is never stored.
    fn fields(verdict: &Verdict) -> Option<String> {
        match verdict {
            Verdict::Kernel(after) => Some(format!("ok\tkernel {}", after.as_millis())),
            Verdict::Silent { deadline, firmware } => Some(format!(
                "no\t{} {}",
                if *firmware { "firmware" } else { "silent" },
                deadline.as_millis()
            )),
            Verdict::Exited(_) => None,
        }
    }

    /// Records a verdict. Only a seen kernel is stored as "ok"; a deadline that passed in
    /// silence is stored as "no" (probing again would cost the whole deadline each run); an
    /// early QEMU exit is not stored (it costs nothing to probe again, and may be caused by
    /// this run's arguments rather than by KVM). Best effort: a cache that cannot be written
    /// only means probing again next time.
    fn store(&self, verdict: &Verdict) {
        let Some(line) = Self::fields(verdict) else {
            return;
        };
        let qemu = self.qemu.to_string_lossy();
        if qemu.contains(['\t', '\n']) || self.boot_id.contains(['\t', '\n']) {
            return;
        }
        let mut text = format!("{PROBE_CACHE_HEADER}\n");
        // Keep the other QEMUs' and architectures' verdicts of this boot.
        for e in self.entries().unwrap_or_default() {
            if e.boot_id == self.boot_id
                && !self.matches(&e)
                && let Some(old) = Self::fields(&e.verdict)
            {
                text.push_str(&format!("{}\t{}\t{}\t{old}\n", e.boot_id, e.arch, e.qemu));
            }
        }
        text.push_str(&format!(
            "{}\t{}\t{qemu}\t{line}\n",
            self.boot_id,
            self.arch.uname()
        ));
        // Written aside and renamed, so a concurrent run never reads half a file.
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut tmp| {
            use std::io::Write;
            tmp.write_all(text.as_bytes())?;
            tmp.persist(&self.file).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = written {
            log::debug!(
                "cannot write the kvm probe cache {}: {e}",
                self.file.display()
            );
        }
    }
}

/// Whether the console shows the guest kernel running, not just firmware: the kernel banner
/// (`Linux version `), a printk-timestamped line (`[    0.000000] `), or keel's PID 1, whose
/// every console line carries `keel-init: `. Firmware and bootloader text (SeaBIOS, iPXE,
/// "Booting from ROM..", "Probing EDD", OVMF's BdsDxe, isolinux, GRUB) never matches: on a
/// host whose KVM runs only special guest kernels it is printed and then the guest hangs.
fn kernel_started(console: &[u8]) -> bool {
    let has = |needle: &[u8]| console.windows(needle.len()).any(|w| w == needle);
    has(b"Linux version ") || has(b"keel-init: ") || has_printk_timestamp(console)
}

/// `[` spaces, seconds, `.`, six digits of microseconds, `] `.
fn has_printk_timestamp(text: &[u8]) -> bool {
    text.iter().enumerate().any(|(i, &b)| {
        if b != b'[' {
            return false;
        }
        let rest = &text[i + 1..];
        let rest = &rest[rest.iter().take_while(|&&c| c == b' ').count()..];
        let secs = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        let rest = &rest[secs..];
        secs > 0
            && rest.len() >= 9
            && rest[0] == b'.'
            && rest[1..7].iter().all(u8::is_ascii_digit)
            && &rest[7..9] == b"] "
    })
}

/// Boots the run's artifacts under KVM with the console in a file and watches it until the
/// guest kernel shows (see [`kernel_started`]), QEMU exits, or `deadline` passes; QEMU is then
/// killed and reaped. Disks and networking are left out: the probe must not touch the run's
/// state. For direct kernel boots `ignore_loglevel` is appended, so a `quiet` command line
/// cannot hide the banner; firmware boots keep the image's own command line.
pub fn probe_kvm(opts: &Options, deadline: Duration) -> Result<Verdict, Error> {
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
    // No virtiofsd serves the probe, and a passed-through device is the run's to claim.
    probe.shares.clear();
    probe.devices.clear();
    probe.append = Some(
        format!("{} ignore_loglevel", opts.append.as_deref().unwrap_or(""))
            .trim()
            .to_string(),
    );
    let mut cmd = command_with(&probe, Accel::Kvm, false)?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: qemu_program(opts).display().to_string(),
            source,
        })?;
    let verdict = loop {
        let console = fs::read(&log).unwrap_or_default();
        if kernel_started(&console) {
            break Verdict::Kernel(start.elapsed());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                // It may have printed just before exiting.
                let console = fs::read(&log).unwrap_or_default();
                break if kernel_started(&console) {
                    Verdict::Kernel(start.elapsed())
                } else {
                    Verdict::Exited(status.to_string())
                };
            }
            Ok(None) => {}
            Err(e) => break Verdict::Exited(e.to_string()),
        }
        if start.elapsed() >= deadline {
            break Verdict::Silent {
                deadline,
                firmware: !console.is_empty(),
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A hung guest never exits by itself.
    let _ = child.kill();
    let _ = child.wait();
    log::debug!("kvm probe: {verdict:?}");
    Ok(verdict)
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

/// How long a virtiofsd may take to listen on its socket.
pub const VIRTIOFSD_DEADLINE: Duration = Duration::from_secs(10);

/// How long a detached QEMU may take to connect to its virtiofsd daemons (it does so while it
/// creates its devices, before the guest runs).
pub const VIRTIOFS_CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Where virtiofsd is installed by distributions that put it outside `PATH` (Debian, Fedora).
const LIBEXEC_VIRTIOFSD: &str = "/usr/libexec/virtiofsd";

/// The virtiofsd of a run: `--virtiofsd` (or `KEEL_VIRTIOFSD`), else `virtiofsd` from `PATH`,
/// else [`LIBEXEC_VIRTIOFSD`].
pub fn find_virtiofsd(opts: &Options) -> Result<PathBuf, Error> {
    if let Some(given) = &opts.virtiofsd {
        return if given.is_file() {
            Ok(given.clone())
        } else {
            Err(Error::VirtiofsdMissing {
                tried: given.display().to_string(),
            })
        };
    }
    let in_path = resolve_program(Path::new("virtiofsd"));
    if in_path.is_file() {
        return Ok(in_path);
    }
    let libexec = PathBuf::from(LIBEXEC_VIRTIOFSD);
    if libexec.is_file() {
        return Ok(libexec);
    }
    Err(Error::VirtiofsdMissing {
        tried: format!("virtiofsd in PATH, {LIBEXEC_VIRTIOFSD}"),
    })
}

/// What `/proc/net/unix` (`table`) shows of the sockets bound to `path`: one listening, and
/// connections accepted on it or waiting to be (they carry the listener's path; a client's
/// own end has none).
fn unix_socket_state(table: &str, path: &str) -> (bool, bool) {
    // Each line: "Num: RefCount Protocol Flags Type St Inode Path"; __SO_ACCEPTCON in Flags
    // marks a listener.
    const ACCEPTING: u32 = 0x0001_0000;
    let (mut listening, mut connected) = (false, false);
    for line in table.lines().skip(1) {
        let Some(head) = line.strip_suffix(path).and_then(|h| h.strip_suffix(' ')) else {
            continue;
        };
        let fields: Vec<&str> = head.split_ascii_whitespace().collect();
        let Some(flags) = fields
            .get(3)
            .filter(|_| fields.len() == 7)
            .and_then(|f| u32::from_str_radix(f, 16).ok())
        else {
            continue;
        };
        if flags & ACCEPTING != 0 {
            listening = true;
        } else {
            connected = true;
        }
    }
    (listening, connected)
}

/// The last lines of a log file, for an error.
fn log_tail(path: &Path) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.trim().is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

/// One share's virtiofsd.
#[derive(Debug)]
struct Daemon {
    plan: SharePlan,
    child: std::process::Child,
}

impl Daemon {
    fn failed(&self, what: String) -> Error {
        Error::Virtiofsd {
            dir: self.plan.dir.clone(),
            tag: self.plan.tag.clone(),
            what,
            log: self.plan.log.clone(),
            output: log_tail(&self.plan.log),
        }
    }
}

/// The virtiofsd daemons of a run, one per `--virtiofs`. Dropping this stops them (each is
/// given a moment to end by itself, as virtiofsd does when QEMU disconnects);
/// [`Virtiofs::release`] leaves them to the VM.
#[derive(Debug, Default)]
pub struct Virtiofs {
    daemons: Vec<Daemon>,
}

impl Virtiofs {
    /// Starts one virtiofsd per share, each on its socket in the state directory with its
    /// output in its log there, and waits until every one listens. `die_with_keel`: they get
    /// SIGTERM when keel's thread that started them ends (a `keel run` in the foreground);
    /// otherwise they run in their own process group, out of the terminal's reach, and end when
    /// the QEMU they serve does (`--detached`). Nothing is started, and no virtiofsd looked for,
    /// without shares.
    pub fn start(opts: &Options, die_with_keel: bool) -> Result<Virtiofs, Error> {
        let mut started = Virtiofs::default();
        if opts.shares.is_empty() {
            return Ok(started);
        }
        let state = state_dir(opts);
        create_state(&state)?;
        let plans = plan_shares(&opts.shares, &state)?;
        let program = find_virtiofsd(opts)?;
        for plan in plans {
            // Waiting for the socket must not be fooled by one an earlier run left.
            match fs::remove_file(&plan.socket) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::State {
                        path: plan.socket.clone(),
                        source: e,
                    });
                }
                _ => {}
            }
            let log = fs::File::create(&plan.log).map_err(|source| Error::State {
                path: plan.log.clone(),
                source,
            })?;
            let log_err = log.try_clone().map_err(|source| Error::State {
                path: plan.log.clone(),
                source,
            })?;
            let mut cmd = Command::new(&program);
            cmd.arg("--socket-path")
                .arg(&plan.socket)
                .arg("--shared-dir")
                .arg(&plan.dir)
                .args(["--sandbox", plan.sandbox.as_str()]);
            if plan.readonly {
                cmd.arg("--readonly");
            }
            cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
            if die_with_keel {
                crate::sys::die_with_parent(&mut cmd, nix::sys::signal::Signal::SIGTERM);
            } else {
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
            let child = cmd.spawn().map_err(|source| Error::Spawn {
                program: program.display().to_string(),
                source,
            })?;
            started.daemons.push(Daemon { plan, child });
        }
        started.wait(VIRTIOFSD_DEADLINE, None)?;
        Ok(started)
    }

    /// The shares being served.
    pub fn shares(&self) -> impl Iterator<Item = &SharePlan> {
        self.daemons.iter().map(|d| &d.plan)
    }

    /// Waits until every daemon listens (`qemu` `None`), or until `qemu` has connected to
    /// every one; fails when a daemon or QEMU exits first or the deadline passes. Where
    /// `/proc/net/unix` cannot be read, the socket files are all there is to go by.
    fn wait(
        &mut self,
        deadline: Duration,
        mut qemu: Option<(&mut std::process::Child, &Path)>,
    ) -> Result<(), Error> {
        use std::os::unix::fs::FileTypeExt;
        let start = Instant::now();
        loop {
            if let Some((child, log)) = qemu.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::VirtiofsQemu {
                    what: format!("exited ({status})"),
                    log: log.to_path_buf(),
                    output: log_tail(log),
                });
            }
            let table = fs::read_to_string("/proc/net/unix").ok();
            let mut ready = true;
            for daemon in &mut self.daemons {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    let when = if qemu.is_some() {
                        "before qemu connected"
                    } else {
                        "before listening"
                    };
                    return Err(daemon.failed(format!("exited ({status}) {when}")));
                }
                let path = daemon.plan.socket.to_string_lossy();
                ready &= match (&table, qemu.is_some()) {
                    (Some(table), false) => unix_socket_state(table, &path).0,
                    (Some(table), true) => unix_socket_state(table, &path).1,
                    (None, _) => fs::symlink_metadata(&daemon.plan.socket)
                        .is_ok_and(|m| m.file_type().is_socket()),
                };
            }
            if ready {
                return Ok(());
            }
            if start.elapsed() >= deadline {
                if let Some((_, log)) = qemu {
                    return Err(Error::VirtiofsQemu {
                        what: format!("did not connect within {}", seconds(deadline)),
                        log: log.to_path_buf(),
                        output: log_tail(log),
                    });
                }
                let late = self.daemons.iter().find(|d| {
                    table
                        .as_deref()
                        .is_none_or(|t| !unix_socket_state(t, &d.plan.socket.to_string_lossy()).0)
                });
                if let Some(d) = late {
                    return Err(d.failed(format!(
                        "did not listen on {} within {}",
                        d.plan.socket.display(),
                        seconds(deadline)
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `qemu` (started with these daemons' sockets, its output in `qemu_log`) has
    /// connected to every one: a detached QEMU that fails to start must not leave them behind.
    pub fn wait_connected(
        &mut self,
        qemu: &mut std::process::Child,
        qemu_log: &Path,
        deadline: Duration,
    ) -> Result<(), Error> {
        if self.daemons.is_empty() {
            return Ok(());
        }
        self.wait(deadline, Some((qemu, qemu_log)))
    }

    /// Leaves the daemons running: they end when the QEMU they serve disconnects.
    pub fn release(mut self) {
        self.daemons.clear();
    }

    /// Stops the daemons: each is given 2 s to end by itself (virtiofsd does when QEMU
    /// disconnects), then SIGTERM, then SIGKILL. Returns the failures of those that ended by
    /// themselves unsuccessfully, with their logs.
    pub fn stop(&mut self) -> Vec<Error> {
        let mut failures = Vec::new();
        let settle = Instant::now() + Duration::from_secs(2);
        for mut daemon in std::mem::take(&mut self.daemons) {
            let own = loop {
                match daemon.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < settle => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break None,
                }
            };
            match own {
                Some(status) if !status.success() => {
                    failures.push(daemon.failed(format!("failed ({status})")));
                }
                Some(_) => {}
                None => {
                    let _ = crate::sys::terminate(&daemon.child);
                    let until = Instant::now() + Duration::from_secs(2);
                    while matches!(daemon.child.try_wait(), Ok(None)) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = daemon.child.kill();
                    let _ = daemon.child.wait();
                }
            }
        }
        failures
    }
}

impl Drop for Virtiofs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Tells which tag each share has, for the guest's `mount -t virtiofs TAG DIR`.
fn announce(virtiofs: &Virtiofs) {
    for share in virtiofs.shares() {
        eprintln!(
            "keel: sharing {} as virtiofs tag {}{}",
            share.dir.display(),
            share.tag,
            if share.readonly { " (read-only)" } else { "" }
        );
    }
}

/// The directory of a run's TPM state, in the state directory, and swtpm's socket in it.
const TPM_DIR: &str = "tpm";
const TPM_SOCKET: &str = "swtpm.sock";

/// `--tpm`: a TPM 2.0 that swtpm emulates for the VM, its state (seeds, keys, NV indices) kept
/// in `<state>/tpm` across boots as a machine keeps its TPM's. swtpm ends when QEMU disconnects
/// (`--terminate`); dropping this ends it sooner, for a QEMU that never came;
/// [`Tpm::release`] leaves it to the VM.
#[derive(Debug)]
pub struct Tpm {
    pid_file: PathBuf,
    released: bool,
}

impl Tpm {
    /// Starts swtpm for `opts` (nothing without `--tpm`) and returns once its socket exists.
    pub fn start(opts: &Options) -> Result<Option<Tpm>, Error> {
        use std::os::unix::fs::DirBuilderExt;
        if !opts.tpm {
            return Ok(None);
        }
        let state = state_dir(opts);
        create_state(&state)?;
        let dir = state.join(TPM_DIR);
        let failed = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::State { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(failed(&dir))?;
        // swtpm --daemon works from /: every path it gets is absolute.
        let dir = dir.canonicalize().map_err(failed(&dir))?;
        let (socket, pid_file, log) = (
            dir.join(TPM_SOCKET),
            dir.join("swtpm.pid"),
            dir.join("swtpm.log"),
        );
        match fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed(&socket)(e)),
            _ => {}
        }
        let out = Command::new("swtpm")
            .args(["socket", "--tpm2", "--terminate", "--daemon", "--tpmstate"])
            .arg(format!("dir={}", dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--pid")
            .arg(format!("file={}", pid_file.display()))
            .arg("--log")
            .arg(format!("file={}", log.display()))
            .output()
            .map_err(|source| Error::Spawn {
                program: "swtpm (install Debian's swtpm)".into(),
                source,
            })?;
        if !out.status.success() {
            let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            output.push_str(&log_tail(&log));
            return Err(Error::Tpm {
                status: out.status,
                log,
                output,
            });
        }
        Ok(Some(Tpm {
            pid_file,
            released: false,
        }))
    }

    /// Leaves swtpm to the VM (`--detached`): it ends when QEMU does.
    pub fn release(mut self) {
        self.released = true;
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Only a swtpm: the pid may be another process's by now.
        let pid = fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(pid) = pid
            && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "swtpm")
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Boots and waits for QEMU to exit; returns its exit code.
pub fn run(opts: &Options) -> Result<i32, Error> {
    let choice = choose_accel(opts);
    // Always shown (not a log record, so no -v or KEEL_LOG can hide it): which accelerator a
    // boot uses decides whether it takes seconds or minutes, and a wrong guess looks like a hang.
    eprintln!("keel: {choice}");
    log::debug!("booting {}", opts.target.display());
    let mut cmd = command(opts, choice.accel)?;
    // The VM belongs to this terminal: it ends with keel, however keel ends (ctrl-c in
    // another window, SIGTERM, SIGKILL), and so do its virtiofsd daemons. `--detached` is for
    // VMs that outlive it.
    crate::sys::die_with_parent(&mut cmd, nix::sys::signal::Signal::SIGTERM);
    let mut virtiofs = Virtiofs::start(opts, true)?;
    announce(&virtiofs);
    let _tpm = Tpm::start(opts)?;
    let status = cmd.status().map_err(|source| Error::Spawn {
        program: qemu_program(opts).display().to_string(),
        source,
    })?;
    for failure in virtiofs.stop() {
        log::error!("{}", crate::build::error_chain(&failure));
    }
    Ok(status.code().unwrap_or(1))
}

/// A new log file at `path` as a background process's standard output and error.
pub(crate) fn log_outputs(path: &Path) -> Result<(fs::File, fs::File), Error> {
    let failed = |source| Error::State {
        path: path.to_owned(),
        source,
    };
    let log = fs::File::create(path).map_err(failed)?;
    let log_err = log.try_clone().map_err(failed)?;
    Ok((log, log_err))
}

/// A VM started by [`run_detached`].
#[derive(Debug)]
pub struct Detached {
    pub pid: u32,
    /// The state directory: `ctl.sock` for `keel ctl`, `qemu.pid`, `qemu.log`.
    pub state: PathBuf,
    /// Where the serial console goes.
    pub console: PathBuf,
}

/// `keel run qemu --detached`: starts QEMU in its own process group with the console in a
/// file (`--console-file`, else `<state>/console.log`) and QEMU's own messages in
/// `<state>/qemu.log`, and returns at once. `keel ctl` drives it; `keel ctl TARGET poweroff`
/// (or killing the pid in `<state>/qemu.pid`) stops it.
pub fn run_detached(opts: &Options) -> Result<Detached, Error> {
    use std::os::unix::process::CommandExt;
    let state = state_dir(opts);
    create_state(&state)?;
    // Absolute, so that QEMU's command line names it wherever `keel run ls` and `keel run
    // stop` are run from (they tell a VM from a process that reused its pid by it).
    let state = fs::canonicalize(&state).map_err(|source| Error::State {
        path: state.clone(),
        source,
    })?;
    let console = opts
        .console_file
        .clone()
        .unwrap_or_else(|| state.join("console.log"));
    let opts = Options {
        console_file: Some(console.clone()),
        state: Some(state.clone()),
        ..opts.clone()
    };
    let choice = choose_accel(&opts);
    eprintln!("keel: {choice}");
    let mut cmd = command(&opts, choice.accel)?;
    // The daemons outlive keel with the VM: each ends when QEMU disconnects from it, that is
    // when QEMU exits. Until QEMU has connected to all of them they are keel's to stop.
    let mut virtiofs = Virtiofs::start(&opts, false)?;
    announce(&virtiofs);
    let tpm = Tpm::start(&opts)?;
    let log_path = state.join("qemu.log");
    let (log, log_err) = log_outputs(&log_path)?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Not in the terminal's process group: ctrl-c there does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: qemu_program(&opts).display().to_string(),
            source,
        })?;
    if let Err(e) = virtiofs.wait_connected(&mut child, &log_path, VIRTIOFS_CONNECT_DEADLINE) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    virtiofs.release();
    if let Some(tpm) = tpm {
        tpm.release();
    }
    Ok(Detached {
        pid: child.id(),
        state,
        console,
    })
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

    #[test]
    fn device_parses() {
        for ok in [
            "virtio-balloon-pci",
            "usb-host,vendorid=0x046d,productid=0xc52b",
            "e1000,netdev=n1,mac=52:54:00:12:34:56",
        ] {
            assert_eq!(ok.parse::<Device>().unwrap().as_str(), ok);
        }
        // Empty, no driver, or what reads like another QEMU option.
        for bad in ["", " ", ",id=x", "-drive", " -drive,file=/etc/shadow", "-"] {
            match bad.parse::<Device>() {
                Err(e @ Error::Device(_)) => assert!(
                    e.to_string()
                        .starts_with(&format!("invalid --device {bad:?}")),
                    "{e}"
                ),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn share_parses() {
        let s: Share = "/srv/data".parse().unwrap();
        assert_eq!(
            s,
            Share {
                dir: "/srv/data".into(),
                tag: None,
                readonly: false,
                sandbox: Sandbox::Namespace
            }
        );
        let s: Share = "path=d,tag=web,readonly,sandbox=none".parse().unwrap();
        assert_eq!(
            s,
            Share {
                dir: "d".into(),
                tag: Some("web".into()),
                readonly: true,
                sandbox: Sandbox::None
            }
        );
        assert_eq!(
            "readonly,path=d".parse::<Share>().unwrap().dir,
            Path::new("d")
        );
        // A comma in the directory's name is written twice, as QEMU has it.
        let s: Share = "a,,b,,,readonly".parse().unwrap();
        assert_eq!((s.dir.as_path(), s.readonly), (Path::new("a,b,"), true));
        for bad in [
            "",
            "tag=x",
            "d,bogus",
            "d,tag=",
            "d,sandbox=chroot",
            "d,readonly=yes",
            "d,,,",
        ] {
            match bad.parse::<Share>() {
                Err(e @ Error::Virtiofs(_)) => assert!(
                    e.to_string()
                        .starts_with(&format!("invalid --virtiofs {bad:?}")),
                    "{e}"
                ),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = "t".repeat(MAX_TAG + 1);
        let err = format!("d,tag={long}").parse::<Share>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid --virtiofs \"d,tag={long}\": the tag \"{long}\" is 37 bytes, over the 36 virtio-fs allows"
            )
        );
        let fits = "t".repeat(MAX_TAG);
        assert!(format!("d,tag={fits}").parse::<Share>().is_ok());
    }

    #[test]
    fn shares_are_checked_and_placed_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mk = |name: &str| {
            let d = dir.path().join(name);
            fs::create_dir_all(&d).unwrap();
            d
        };
        let share = |spec: String| spec.parse::<Share>().unwrap();
        let data = mk("data");
        let plans = plan_shares(
            &[
                share(format!("{}", data.display())),
                share(format!("{},tag=web,readonly", mk("www").display())),
                share(format!("{}", data.display())),
                share(format!("{}/data/..", dir.path().display())),
            ],
            &state,
        )
        .unwrap();
        let tags: Vec<&str> = plans.iter().map(|p| p.tag.as_str()).collect();
        // LinuxKit's virtiofsN by place; a directory may be shared twice; `..` is resolved.
        assert_eq!(tags, ["virtiofs0", "web", "virtiofs2", "virtiofs3"]);
        assert!(plans[1].readonly && !plans[0].readonly);
        assert_eq!(plans[0].socket, state.join("virtiofs0.sock"));
        assert_eq!(plans[3].log, state.join("virtiofs3.log"));
        assert_eq!(plans[3].dir, fs::canonicalize(dir.path()).unwrap());

        // A tag twice, whether given or defaulted.
        let other = mk("other/data");
        for specs in [
            vec![
                format!("{}", data.display()),
                format!("{},tag=virtiofs0", other.display()),
            ],
            vec![
                format!("{},tag=x", data.display()),
                format!("{},tag=x", other.display()),
            ],
        ] {
            let shares: Vec<Share> = specs.into_iter().map(share).collect();
            let err = plan_shares(&shares, &state).unwrap_err();
            assert!(
                matches!(err, Error::VirtiofsDuplicate(_))
                    && err.to_string().starts_with("--virtiofs: the tag ")
                    && err.to_string().contains("is given to two directories"),
                "{err}"
            );
        }
        // What is no directory.
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        for missing in [dir.path().join("nope"), file] {
            let err = plan_shares(&[share(missing.display().to_string())], &state).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("--virtiofs {}: not a directory", missing.display())
            );
        }
        // A state directory too deep for the socket.
        let deep = dir.path().join("s".repeat(100));
        let err = plan_shares(&[share(data.display().to_string())], &deep).unwrap_err();
        assert!(matches!(err, Error::VirtiofsSocket(_)), "{err}");
        assert!(err.to_string().contains("use a shorter --state"), "{err}");
    }

    #[test]
    fn shares_and_devices_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = fake_build(dir.path());
        let data = dir.path().join("da,ta");
        fs::create_dir(&data).unwrap();
        let state = dir.path().join("sys-state");
        for (arch, machine) in [(Arch::X86_64, "q35"), (Arch::Aarch64, "virt")] {
            fs::write(format!("{}-kernel", prefix.display()), kernel_header(arch)).unwrap();
            let o = Options {
                arch,
                mem_mb: 768,
                shares: vec![
                    format!("{},readonly", data.display().to_string().replace(',', ",,"))
                        .parse()
                        .unwrap(),
                    format!("{},tag=t,,wo", dir.path().display())
                        .parse()
                        .unwrap(),
                ],
                devices: vec![
                    "qemu-xhci".parse().unwrap(),
                    "usb-host,vendorid=0x1,productid=0x2".parse().unwrap(),
                ],
                ..opts(prefix.clone())
            };
            let cmd = command(&o, Accel::Tcg).unwrap();
            let args: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let after = |flag: &str| -> Vec<&str> {
                args.windows(2)
                    .filter(|w| w[0] == flag)
                    .map(|w| w[1].as_str())
                    .collect()
            };
            // The guest's RAM is a shared memfd (vhost-user maps it) of -m's size.
            assert_eq!(
                after("-machine"),
                [format!("{machine},memory-backend=keel-mem")]
            );
            assert_eq!(after("-m"), ["768"]);
            assert_eq!(
                after("-object"),
                ["memory-backend-memfd,id=keel-mem,size=768M,share=on"]
            );
            let sock = |i: usize| {
                state
                    .join(format!("virtiofs{i}.sock"))
                    .display()
                    .to_string()
            };
            assert_eq!(
                after("-chardev")[1..],
                [
                    format!("socket,id=keelfs0,path={}", sock(0)),
                    format!("socket,id=keelfs1,path={}", sock(1)),
                ]
            );
            let devices = after("-device");
            let at = devices
                .iter()
                .position(|d| d.starts_with("vhost-user-fs-pci"))
                .unwrap();
            assert_eq!(
                devices[at..at + 4],
                [
                    "vhost-user-fs-pci,chardev=keelfs0,tag=virtiofs0",
                    // A comma in a value is doubled for QEMU.
                    "vhost-user-fs-pci,chardev=keelfs1,tag=t,,wo",
                    "qemu-xhci",
                    "usb-host,vendorid=0x1,productid=0x2",
                ]
            );
            // QEMU's own arguments after -- stay last.
            assert_eq!(args.last().map(String::as_str), Some("-s"));
        }
        // Without shares: no shared memory, the machine as it was.
        let cmd = command(&opts(prefix.clone()), Accel::Tcg).unwrap();
        let joined: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        let joined = joined.join(" ");
        assert!(joined.contains("-machine virt -cpu"), "{joined}");
        assert!(!joined.contains("memory-backend"), "{joined}");
        assert!(!joined.contains("vhost-user"), "{joined}");
        // A share that is not there stops the run before QEMU.
        let err = command(
            &Options {
                shares: vec!["/nonexistent/keel-share".parse().unwrap()],
                ..opts(prefix)
            },
            Accel::Tcg,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--virtiofs /nonexistent/keel-share: not a directory"
        );
    }

    #[test]
    fn unix_sockets_are_read_from_proc_net_unix() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 468652 /s/virtiofs0.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 469155 /s/virtiofs0.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01  4686 /t/s/virtiofs1.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 469156\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 468653 @/s/virtiofs2.sock\n";
        assert_eq!(unix_socket_state(table, "/s/virtiofs0.sock"), (true, true));
        // A longer path that ends the same is another socket; so is an abstract one.
        assert_eq!(
            unix_socket_state(table, "/s/virtiofs1.sock"),
            (false, false)
        );
        assert_eq!(unix_socket_state(table, "s/virtiofs1.sock"), (false, false));
        assert_eq!(
            unix_socket_state(table, "/t/s/virtiofs1.sock"),
            (true, false)
        );
        assert_eq!(
            unix_socket_state(table, "/s/virtiofs2.sock"),
            (false, false)
        );
        assert_eq!(unix_socket_state("", "/s/virtiofs0.sock"), (false, false));
    }

    #[test]
    fn a_virtiofsd_that_fails_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = fake_build(dir.path());
        let script = dir.path().join("virtiofsd.txt");
        fs::write(
            &script,
            "#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\necho 'Error entering sandbox: EPERM' >&2\nexit 1\n",
        )
        .unwrap();
        let fake = dir.path().join("virtiofsd");
        let installed = Command::new("install")
            .args(["-m", "755"])
            .arg(&script)
            .arg(&fake)
            .status()
            .unwrap();
        assert!(installed.success());
        let o = Options {
            shares: vec![
                format!("{},tag=t,readonly", dir.path().display())
                    .parse()
                    .unwrap(),
            ],
            virtiofsd: Some(fake),
            lan: None,
            state: Some(dir.path().join("state")),
            ..opts(prefix.clone())
        };
        let err = Virtiofs::start(&o, false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "virtiofsd for --virtiofs {} (tag t) exited (exit status: 1) before listening; its log {}:",
                fs::canonicalize(dir.path()).unwrap().display(),
                dir.path().join("state/virtiofs0.log").display()
            )),
            "{text}"
        );
        assert!(text.ends_with("Error entering sandbox: EPERM"), "{text}");
        let args = fs::read_to_string(dir.path().join("args")).unwrap();
        assert_eq!(
            args.trim(),
            format!(
                "--socket-path {} --shared-dir {} --sandbox namespace --readonly",
                dir.path().join("state/virtiofs0.sock").display(),
                fs::canonicalize(dir.path()).unwrap().display()
            )
        );
        // A virtiofsd that is not there.
        let o = Options {
            virtiofsd: Some(dir.path().join("nope")),
            lan: None,
            ..o
        };
        let err = Virtiofs::start(&o, false).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "--virtiofs needs virtiofsd, which is not installed (tried {}): ",
                dir.path().join("nope").display()
            )),
            "{err}"
        );
        // No shares: nothing is looked for.
        assert_eq!(
            Virtiofs::start(&opts(prefix), false)
                .unwrap()
                .shares()
                .count(),
            0
        );
    }

    /// LinuxKit's `-kernel`, `-squashfs` and `-iso` pick one output of a prefix that has
    /// several; one that is missing is named.
    #[test]
    fn media_flags_choose_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(format!("m{s}"));
        for f in [
            "-kernel",
            "-initrd.img",
            "-squashfs.img",
            "-cmdline",
            ".iso",
        ] {
            fs::write(p(f), "x").unwrap();
        }
        let prefix = p("");
        assert!(matches!(
            Boot::detect(&prefix, None, false).unwrap(),
            Boot::KernelInitrd { .. }
        ));
        assert!(matches!(
            Boot::detect(&prefix, Some(Media::KernelSquashfs), false).unwrap(),
            Boot::KernelSquashfs { squashfs, .. } if squashfs == p("-squashfs.img")
        ));
        assert_eq!(
            Boot::detect(&prefix, Some(Media::Iso), false).unwrap(),
            Boot::Iso(p(".iso"))
        );
        // Under UEFI the ISO is iso-efi's, which this prefix lacks.
        let err = Boot::detect(&prefix, Some(Media::Iso), true).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "nothing to boot as an ISO at {}: {} is missing",
                prefix.display(),
                p("-efi.iso").display()
            )
        );
        fs::remove_file(p("-initrd.img")).unwrap();
        let err = Boot::detect(&prefix, Some(Media::KernelInitrd), false).unwrap_err();
        assert!(err.to_string().contains("m-initrd.img is missing"), "{err}");
        // Without a flag, the next output the prefix has.
        assert!(matches!(
            Boot::detect(&prefix, None, false).unwrap(),
            Boot::KernelSquashfs { .. }
        ));
    }

    fn opts(target: PathBuf) -> Options {
        Options {
            target,
            media: None,
            arch: Arch::Aarch64,
            accel: Accel::Tcg,
            mem_mb: 512,
            cpus: 1,
            disks: vec![],
            publish: vec!["8080:80".parse().unwrap()],
            uefi: false,
            firmware: None,
            secure_boot: None,
            tpm: false,
            console_file: None,
            state: None,
            qemu: None,
            append: Some("keel.debug".into()),
            networking: true,
            devices: vec![],
            shares: vec![],
            virtiofsd: None,
            lan: None,
            extra: vec!["-s".into()],
        }
    }

    /// SeaBIOS's and iPXE's text on a q35 serial console: what a guest prints under a KVM that
    /// cannot run its kernel (kvm-pvm) before it hangs for ever.
    const FIRMWARE_TEXT: &str = "SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n\r\n\
        iPXE (http://ipxe.org) 00:02.0 C000 PCI2.10 PnP PMM+3EFD0C00+3EF30C00 C000\r\n\r\n\
        Booting from ROM..\r\nProbing EDD (edd=off to disable)... ok\r\n";

    /// The header of a kernel image for `arch` (all [`check_boot`] reads).
    fn kernel_header(arch: Arch) -> Vec<u8> {
        let mut k = vec![0u8; 0x400];
        match arch {
            Arch::X86_64 => k[0x202..0x206].copy_from_slice(b"HdrS"),
            Arch::Aarch64 => k[0x38..0x3c].copy_from_slice(b"ARM\x64"),
        }
        k
    }

    /// A kernel + initrd build prefix for x86_64 (QEMU is faked: only the kernel's header is
    /// read).
    fn fake_build(dir: &Path) -> PathBuf {
        let prefix = dir.join("sys");
        fs::write(
            format!("{}-kernel", prefix.display()),
            kernel_header(Arch::X86_64),
        )
        .unwrap();
        for (suffix, body) in [("-initrd.img", "i"), ("-cmdline", "quiet\n")] {
            fs::write(format!("{}{suffix}", prefix.display()), body).unwrap();
        }
        prefix
    }

    /// A fake QEMU in `dir`: records its arguments (`args`) and pid (`pid`), finds the console
    /// file in `-serial file:PATH` and runs `body` with it in `$console`.
    fn fake_qemu(dir: &Path, body: &str) -> PathBuf {
        let d = dir.display();
        let script = format!(
            "#!/bin/sh\necho \"$@\" > '{d}/args'\necho $$ > '{d}/pid'\nconsole=\n\
             while [ $# -gt 0 ]; do\n  case \"$1\" in -serial) console=\"${{2#file:}}\"; shift ;; esac\n  shift\ndone\n\
             [ -n \"$console\" ] || exit 99\n{body}\n"
        );
        let source = dir.join("fake-qemu.txt");
        fs::write(&source, script).unwrap();
        // Installed by a child process, never opened for writing here: a writable descriptor
        // that another test thread's fork inherits would make exec fail with ETXTBSY.
        let qemu = dir.join("fake-qemu");
        let installed = Command::new("install")
            .args(["-m", "755"])
            .arg(&source)
            .arg(&qemu)
            .status()
            .unwrap();
        assert!(installed.success());
        qemu
    }

    /// Prints firmware text, then hangs.
    fn firmware_then_hang() -> String {
        format!(
            "printf '{}' > \"$console\"\nexec sleep 3600",
            FIRMWARE_TEXT.replace('\n', "\\n").replace('\r', "\\r")
        )
    }

    /// Prints firmware text, then the kernel banner, then runs on.
    fn firmware_then_kernel() -> String {
        format!(
            "{}\nsleep 0.3\nprintf 'Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\\r\\n' >> \"$console\"\nexec sleep 3600",
            firmware_then_hang().trim_end_matches("exec sleep 3600")
        )
    }

    const EXIT_AT_ONCE: &str = "exit 1";

    /// Probe settings in `dir`: a stand-in KVM device the probe can open, a cache file, a
    /// fixed boot id and 2 s deadlines.
    fn probe_settings(dir: &Path) -> ProbeSettings {
        let kvm = dir.join("kvm");
        fs::write(&kvm, "").unwrap();
        ProbeSettings {
            kvm_device: kvm,
            cache: Some(dir.join("keel-kvm-probe.v2")),
            boot_id: "0118d66d-beb3-4cf3-a462-3275ec04088b".into(),
            direct_deadline: Duration::from_secs(2),
            firmware_deadline: Duration::from_secs(2),
        }
    }

    fn auto_opts(dir: &Path, qemu: &Path) -> Options {
        Options {
            arch: Arch::host(),
            accel: Accel::Auto,
            qemu: Some(qemu.into()),
            ..opts(fake_build(dir))
        }
    }

    fn gone(pid_file: &Path) -> bool {
        let pid = fs::read_to_string(pid_file).unwrap();
        // The pid may in theory be reused: then it must not be the fake's `sleep 3600`.
        fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .map_or(true, |c| c != b"sleep\x003600\x00")
    }

    #[test]
    fn firmware_text_is_not_a_working_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), &firmware_then_hang());
        let settings = probe_settings(dir.path());
        let opts = auto_opts(dir.path(), &qemu);
        let start = Instant::now();
        let choice = choose_accel_with(&opts, &settings);
        let took = start.elapsed();
        assert_eq!(
            choice,
            Choice {
                accel: Accel::Tcg,
                reason: Reason::Probe {
                    verdict: Verdict::Silent {
                        deadline: Duration::from_secs(2),
                        firmware: true
                    },
                    cached: None
                }
            }
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(6),
            "{took:?}"
        );
        assert!(
            gone(&dir.path().join("pid")),
            "the hung fake qemu was not killed"
        );
        let args = fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(args.contains("-accel kvm"), "{args}");
        assert!(
            args.contains("-append console=") && args.contains("ignore_loglevel"),
            "{args}"
        );
        assert!(
            !args.contains(
                &opts
                    .target
                    .with_file_name("sys-state")
                    .display()
                    .to_string()
            ),
            "{args}"
        );
        assert_eq!(
            choice.to_string(),
            "using tcg: the kvm probe saw firmware output but no guest kernel in 2 s \
             (/dev/kvm exists but does not run this guest); --accel kvm forces it"
        );
        // "no" is kept (probing again costs the whole deadline), never "ok".
        let cache = fs::read_to_string(settings.cache.as_ref().unwrap()).unwrap();
        assert!(cache.starts_with("keel-kvm-probe v2\n"), "{cache}");
        assert!(!cache.contains("\tok\t"), "{cache}");
        assert!(cache.contains("\tno\tfirmware 2000\n"), "{cache}");
        let again = choose_accel_with(&opts, &settings);
        assert_eq!(again.accel, Accel::Tcg);
        assert!(
            again.to_string().contains("cached for this host boot in"),
            "{again}"
        );
    }

    #[test]
    fn a_kernel_banner_is_a_working_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), &firmware_then_kernel());
        let settings = probe_settings(dir.path());
        let opts = auto_opts(dir.path(), &qemu);
        let choice = choose_accel_with(&opts, &settings);
        let Reason::Probe {
            verdict: Verdict::Kernel(after),
            cached: None,
        } = choice.reason
        else {
            panic!("{choice:?}")
        };
        assert_eq!(choice.accel, Accel::Kvm);
        assert!(after < Duration::from_secs(2), "{after:?}");
        assert!(
            choice
                .to_string()
                .starts_with("using kvm (probe: guest kernel started in "),
            "{choice}"
        );
        assert!(
            gone(&dir.path().join("pid")),
            "the fake qemu was not killed"
        );
        let cache = fs::read_to_string(settings.cache.as_ref().unwrap()).unwrap();
        assert!(cache.contains("\tok\tkernel "), "{cache}");
        // The next run takes the cached verdict and does not probe.
        fs::remove_file(dir.path().join("args")).unwrap();
        let again = choose_accel_with(&opts, &settings);
        assert_eq!(again.accel, Accel::Kvm);
        assert!(
            matches!(
                again.reason,
                Reason::Probe {
                    cached: Some(_),
                    ..
                }
            ),
            "{again:?}"
        );
        assert!(
            !dir.path().join("args").exists(),
            "probed again despite the cache"
        );
    }

    #[test]
    fn a_qemu_that_exits_is_not_a_working_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), EXIT_AT_ONCE);
        let settings = probe_settings(dir.path());
        let start = Instant::now();
        let choice = choose_accel_with(&auto_opts(dir.path(), &qemu), &settings);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(choice.accel, Accel::Tcg);
        assert_eq!(
            choice.reason,
            Reason::Probe {
                verdict: Verdict::Exited("exit status: 1".into()),
                cached: None
            }
        );
        // Cheap to probe again, and maybe not KVM's fault: not cached.
        assert!(!settings.cache.as_ref().unwrap().exists());
    }

    #[test]
    fn stale_or_malformed_caches_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), EXIT_AT_ONCE);
        let settings = probe_settings(dir.path());
        let opts = auto_opts(dir.path(), &qemu);
        let file = settings.cache.clone().unwrap();
        let boot = &settings.boot_id;
        let key = format!(
            "{boot}\t{}\t{}",
            Arch::host().uname(),
            resolve_program(&qemu).display()
        );
        for text in [
            // v1: "BOOT_ID ok", written when the firmware printed.
            format!("{boot} ok\n"),
            format!("{key}\tok\tkernel 800\n"),
            format!("keel-kvm-probe v2\n{key}\tok\n"),
            format!("keel-kvm-probe v2\n{key}\tok\tkernel soon\n"),
            format!("keel-kvm-probe v2\n{key}\tok\tsilent 2000\n"),
            format!("keel-kvm-probe v2\n{key}\tok\tkernel 800\ngarbage\n"),
        ] {
            fs::write(&file, &text).unwrap();
            let choice = choose_accel_with(&opts, &settings);
            assert!(
                matches!(
                    choice.reason,
                    Reason::Probe {
                        verdict: Verdict::Exited(_),
                        cached: None
                    }
                ),
                "{text:?} was believed: {choice:?}"
            );
        }
        // keel no longer reads the v1 file at all.
        let default = ProbeSettings::default().cache.unwrap();
        assert_eq!(default.file_name().unwrap(), "keel-kvm-probe.v2");
    }

    #[test]
    fn a_cached_ok_counts_only_for_its_qemu_arch_and_boot() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), EXIT_AT_ONCE);
        let settings = probe_settings(dir.path());
        let opts = auto_opts(dir.path(), &qemu);
        let file = settings.cache.clone().unwrap();
        let boot = &settings.boot_id;
        let host = Arch::host().uname();
        let other_arch = if host == "x86_64" {
            "aarch64"
        } else {
            "x86_64"
        };
        let this_qemu = resolve_program(&qemu).display().to_string();
        for line in [
            format!("{boot}\t{host}\t/usr/bin/qemu-system-{host}\tok\tkernel 800"),
            format!("{boot}\t{other_arch}\t{this_qemu}\tok\tkernel 800"),
            format!("00000000-0000-0000-0000-000000000000\t{host}\t{this_qemu}\tok\tkernel 800"),
        ] {
            fs::write(&file, format!("keel-kvm-probe v2\n{line}\n")).unwrap();
            let choice = choose_accel_with(&opts, &settings);
            assert!(
                matches!(
                    choice.reason,
                    Reason::Probe {
                        verdict: Verdict::Exited(_),
                        cached: None
                    }
                ),
                "{line:?} was believed: {choice:?}"
            );
        }
        // The same entry for this QEMU is taken without a probe boot.
        fs::write(
            &file,
            format!("keel-kvm-probe v2\n{boot}\t{host}\t{this_qemu}\tok\tkernel 800\n"),
        )
        .unwrap();
        fs::remove_file(dir.path().join("args")).unwrap();
        let choice = choose_accel_with(&opts, &settings);
        assert_eq!(choice.accel, Accel::Kvm);
        assert_eq!(
            choice.to_string(),
            format!(
                "using kvm (probe: guest kernel started in 0.8 s; cached for this host boot in {})",
                file.display()
            )
        );
        assert!(!dir.path().join("args").exists());
    }

    #[test]
    fn a_new_verdict_keeps_other_qemus_and_drops_other_boots() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), &firmware_then_hang());
        let settings = probe_settings(dir.path());
        let file = settings.cache.clone().unwrap();
        let boot = &settings.boot_id;
        let host = Arch::host().uname();
        let other = format!("{boot}\t{host}\t/opt/qemu/bin/qemu-system-{host}\tok\tkernel 500");
        let old_boot = format!("11111111-0000-0000-0000-000000000000\t{host}\t/x\tok\tkernel 500");
        fs::write(&file, format!("keel-kvm-probe v2\n{other}\n{old_boot}\n")).unwrap();
        let choice = choose_accel_with(&auto_opts(dir.path(), &qemu), &settings);
        assert_eq!(choice.accel, Accel::Tcg);
        let cache = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = cache.lines().collect();
        assert_eq!(lines.len(), 3, "{cache}");
        assert_eq!(lines[1], other);
        assert!(lines[2].ends_with("\tno\tfirmware 2000"), "{cache}");
    }

    #[test]
    fn kernel_markers_are_not_firmware_text() {
        for firmware in [
            FIRMWARE_TEXT,
            "BdsDxe: loading Boot0001 \"UEFI QEMU DVD-ROM QM00003 \" from PciRoot(0x0)/Pci(0x1F,0x2)\r\n\
             BdsDxe: starting Boot0001\r\n",
            "ISOLINUX 6.04 20200816 ETCD Copyright (C) 1994-2015 H. Peter Anvin et al\r\n",
            "Welcome to GRUB!\r\n",
            "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path\r\n",
            "[0.5] x [   1.23] y [ .123456] z [   1.1234567] ",
            "",
        ] {
            assert!(!kernel_started(firmware.as_bytes()), "{firmware:?}");
        }
        for kernel in [
            "Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)",
            "[    0.000000] Command line: console=ttyS0",
            "SeaBIOS\r\n[   12.345678] virtio_blk virtio1: [vda] 1024 512-byte logical blocks",
            "[    1.234567] keel-init: timeline: init started",
            "keel-init: timeline: init started",
        ] {
            assert!(kernel_started(kernel.as_bytes()), "{kernel:?}");
        }
    }

    #[test]
    fn the_choice_line_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = probe_settings(dir.path());
        let mut o = auto_opts(dir.path(), Path::new("/nonexistent/qemu"));
        for accel in [Accel::Tcg, Accel::Kvm] {
            o.accel = accel;
            assert_eq!(
                choose_accel_with(&o, &settings).to_string(),
                format!("using {accel} (--accel {accel})")
            );
        }
        o.accel = Accel::Auto;
        settings.kvm_device = dir.path().join("no-kvm");
        assert_eq!(
            choose_accel_with(&o, &settings).to_string(),
            format!(
                "using tcg: no usable {} (entity not found)",
                settings.kvm_device.display()
            )
        );
        o.arch = if Arch::host() == Arch::X86_64 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        assert_eq!(
            choose_accel_with(&o, &settings).to_string(),
            format!(
                "using tcg: {} guest on an {} host",
                o.arch.uname(),
                Arch::host().uname()
            )
        );
        // A QEMU that cannot be started: TCG, and the error in the line.
        o.arch = Arch::host();
        settings = probe_settings(dir.path());
        let choice = choose_accel_with(&o, &settings);
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(
            choice.to_string().starts_with(
                "using tcg: the kvm probe could not run (cannot run /nonexistent/qemu: "
            ),
            "{choice}"
        );
        // And --qemu is what the run itself starts.
        assert_eq!(
            command(&o, Accel::Tcg).unwrap().get_program(),
            "/nonexistent/qemu"
        );
    }

    #[test]
    fn tpm_is_swtpm_on_the_machines_interface_and_ends_with_its_guard() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = vec![0u8; 4096];
        disk[510..512].copy_from_slice(&[0x55, 0xAA]);
        let mut o = opts(dir.path().join("bios.img"));
        fs::write(&o.target, &disk).unwrap();
        o.state = Some(dir.path().join("state"));
        o.tpm = true;
        for (arch, device) in [
            (Arch::X86_64, "-device tpm-crb,tpmdev=keeltpm0"),
            (Arch::Aarch64, "-device tpm-tis-device,tpmdev=keeltpm0"),
        ] {
            o.arch = arch;
            let joined = command(&o, Accel::Tcg)
                .unwrap()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            assert!(joined.contains(device), "{joined}");
            let socket = dir.path().join("state/tpm/swtpm.sock");
            assert!(
                joined.contains(&format!("socket,id=keeltpm,path={}", socket.display())),
                "{joined}"
            );
        }
        let tpm = Tpm::start(&o)
            .expect("swtpm starts (scripts/setup.sh installs it)")
            .unwrap();
        let socket = dir.path().join("state/tpm/swtpm.sock");
        assert!(socket.exists());
        let pid: i32 = fs::read_to_string(dir.path().join("state/tpm/swtpm.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(tpm);
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.contains(") Z ")) {
            assert!(Instant::now() < deadline, "swtpm {pid} outlived its guard");
            std::thread::sleep(Duration::from_millis(20));
        }
        // No --tpm, no swtpm.
        o.tpm = false;
        assert!(Tpm::start(&o).unwrap().is_none());
    }

    #[test]
    fn secure_boot_enrolls_the_keys_and_boots_only_disks() {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::keys::KeySet::generate(&dir.path().join("keys"), "t").unwrap();
        // A kernel+initrd prefix: the firmware would not load it.
        let prefix = dir.path().join("sys");
        fs::write(
            format!("{}-kernel", prefix.display()),
            kernel_header(Arch::X86_64),
        )
        .unwrap();
        fs::write(format!("{}-initrd.img", prefix.display()), "i").unwrap();
        let mut o = opts(prefix);
        o.arch = Arch::X86_64;
        o.secure_boot = Some(keys.clone());
        o.state = Some(dir.path().join("state"));
        let err = command(&o, Accel::Tcg).unwrap_err();
        assert!(matches!(err, Error::SecureBootMedia), "{err}");

        let mut disk = vec![0u8; 4096];
        disk[510..512].copy_from_slice(&[0x55, 0xAA]);
        disk[512..520].copy_from_slice(b"EFI PART");
        o.target = dir.path().join("efi.img");
        fs::write(&o.target, &disk).unwrap();
        for arch in [Arch::X86_64, Arch::Aarch64] {
            o.arch = arch;
            let cmd = command(&o, Accel::Tcg).unwrap();
            let joined = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            let vars = dir.path().join("state/efivars-secure-boot.fd");
            let (code, _) = arch.secure_firmware();
            assert!(
                joined.contains(&format!("readonly=on,file={code}")),
                "{joined}"
            );
            assert!(
                joined.contains(&format!("file={}", vars.display())),
                "{joined}"
            );
            if arch == Arch::X86_64 {
                assert!(joined.contains("-machine q35,smm=on"), "{joined}");
                assert!(
                    joined.contains("-global driver=cfi.pflash01,property=secure,value=on"),
                    "{joined}"
                );
            }
            // The store holds the set's certificates and no one else's.
            let printed = Command::new("virt-fw-vars")
                .arg("--input")
                .arg(&vars)
                .args(["--print", "--verbose"])
                .output()
                .expect("virt-fw-vars runs (scripts/setup.sh installs python3-virt-firmware)");
            let printed = String::from_utf8_lossy(&printed.stdout);
            for role in ["PK", "KEK", "db"] {
                assert!(
                    printed.contains(&format!("CN=t {role}")),
                    "{arch}: {printed}"
                );
            }
            assert!(!printed.contains("Microsoft"), "{arch}: {printed}");
        }
    }

    #[test]
    fn emulated_x86_guests_skip_the_io_apic_timer_check() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = fake_build(dir.path());
        let append = |arch: Arch, accel: Accel, extra: Option<&str>| {
            let mut o = opts(prefix.clone());
            o.arch = arch;
            o.append = extra.map(str::to_owned);
            let cmd = command(&o, accel).unwrap();
            let args: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let at = args.iter().position(|a| a == "-append").unwrap();
            args[at + 1].clone()
        };
        assert_eq!(
            append(Arch::X86_64, Accel::Tcg, None),
            "console=ttyS0 quiet no_timer_check"
        );
        assert_eq!(
            append(Arch::X86_64, Accel::Kvm, None),
            "console=ttyS0 quiet"
        );
        // Given once, whoever gives it.
        assert_eq!(
            append(Arch::X86_64, Accel::Tcg, Some("no_timer_check")),
            "console=ttyS0 quiet no_timer_check"
        );
    }

    #[test]
    fn kernel_initrd_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("sys");
        fs::write(
            format!("{}-kernel", prefix.display()),
            kernel_header(Arch::Aarch64),
        )
        .unwrap();
        for (suffix, body) in [("-initrd.img", "i"), ("-cmdline", "quiet\n")] {
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
        let socket = dir.path().join("sys-state/ctl.sock");
        assert!(
            joined.contains(&format!(
                "-device virtio-serial-pci,id=keelctl-bus -chardev socket,id=keelctl,path={},server=on,wait=off -device virtserialport,bus=keelctl-bus.0,chardev=keelctl,name=org.keel.ctl.0",
                socket.display()
            )),
            "{joined}"
        );
    }

    #[test]
    fn the_control_channel_is_attached_on_both_arches() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let prefix = fake_build(dir.path());
        let state = dir.path().join("sys-state");
        for arch in [Arch::X86_64, Arch::Aarch64] {
            // A socket left by an earlier run is removed for QEMU to bind anew.
            fs::create_dir_all(&state).unwrap();
            let stale = state.join(CONTROL_SOCKET);
            drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
            fs::write(format!("{}-kernel", prefix.display()), kernel_header(arch)).unwrap();
            let cmd = command(
                &Options {
                    arch,
                    ..opts(prefix.clone())
                },
                Accel::Tcg,
            )
            .unwrap();
            let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
            assert!(!stale.exists(), "{arch:?}: the stale socket is still there");
            let at = args
                .iter()
                .position(|a| a == "virtio-serial-pci,id=keelctl-bus")
                .unwrap();
            assert_eq!(args[at - 1], "-device");
            assert_eq!(
                args[at + 2],
                format!(
                    "socket,id=keelctl,path={},server=on,wait=off",
                    stale.display()
                )
            );
            assert_eq!(
                args[at + 4],
                format!(
                    "virtserialport,bus=keelctl-bus.0,chardev=keelctl,name={}",
                    keel_bundle::HOST_CHANNEL
                )
            );
            fs::remove_dir_all(&state).unwrap();
        }
        // The state directory keel creates is the socket's gate: only its owner gets in.
        command(&opts(prefix), Accel::Tcg).unwrap();
        let mode = fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    #[test]
    fn what_cannot_boot_is_refused_before_qemu_starts() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            p
        };
        let refused = |boot: Boot, arch: Arch| match check_boot(&boot, arch) {
            Err(Error::NotBootable { reason, .. }) => reason,
            other => panic!("{boot:?} for {arch:?}: {other:?}"),
        };
        let kernel = |p: PathBuf| Boot::KernelInitrd {
            kernel: p,
            initrd: PathBuf::new(),
            cmdline: String::new(),
        };
        // Kernels: the header says the architecture.
        let x86 = file("x86", &kernel_header(Arch::X86_64));
        let arm = file("arm", &kernel_header(Arch::Aarch64));
        check_boot(&kernel(x86.clone()), Arch::X86_64).unwrap();
        check_boot(&kernel(arm.clone()), Arch::Aarch64).unwrap();
        assert_eq!(
            refused(kernel(x86), Arch::Aarch64),
            "it is a kernel for x86_64 (boot it with --arch x86_64)"
        );
        assert!(refused(kernel(arm), Arch::X86_64).contains("--arch aarch64"));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[18] = 183;
        check_boot(&kernel(file("vmlinux", &elf)), Arch::Aarch64).unwrap();
        assert!(refused(kernel(file("junk", b"hello")), Arch::X86_64).contains("not a kernel"));
        assert_eq!(
            refused(kernel(file("empty", b"")), Arch::X86_64),
            "the file is empty"
        );
        // EFI executables: the PE machine.
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        let efi = file("boot.efi", &pe);
        check_boot(&Boot::Efi(efi.clone()), Arch::Aarch64).unwrap();
        assert!(refused(Boot::Efi(efi), Arch::X86_64).contains("EFI executable for aarch64"));
        // ISOs and disks: their magic.
        let mut iso = vec![0u8; 0x9000];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        check_boot(&Boot::Iso(file("ok.iso", &iso)), Arch::X86_64).unwrap();
        assert!(
            refused(Boot::Iso(file("bad.iso", &[7u8; 40000])), Arch::X86_64).contains("ISO 9660")
        );
        let mut mbr = vec![0u8; 1024];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        check_boot(&Boot::Disk(file("disk.img", &mbr)), Arch::X86_64).unwrap();
        check_boot(
            &Boot::Disk(file("disk.qcow2", b"QFI\xfb\0\0\0\x03")),
            Arch::X86_64,
        )
        .unwrap();
        let mut vhd = vec![0u8; 2048];
        vhd[1536..1544].copy_from_slice(b"conectix");
        check_boot(&Boot::Disk(file("fixed.vhd", &vhd)), Arch::X86_64).unwrap();
        assert!(
            refused(Boot::Disk(file("data.img", &[0u8; 4096])), Arch::X86_64).contains("--disk")
        );
        assert_eq!(
            refused(Boot::Disk(file("zero.img", b"")), Arch::X86_64),
            "the file is empty"
        );
    }

    #[test]
    fn an_unbindable_socket_path_leaves_the_channel_out() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = fake_build(dir.path());
        let long = dir.path().join("s".repeat(120));
        let cmd = command(
            &Options {
                state: Some(long.clone()),
                arch: Arch::X86_64,
                ..opts(prefix)
            },
            Accel::Tcg,
        )
        .unwrap();
        let joined: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        let joined = joined.join(" ");
        assert!(long.is_dir());
        assert!(!joined.contains("keelctl"), "{joined}");
        assert!(!joined.contains("virtio-serial"), "{joined}");
        // A comma in the path is doubled, as QEMU's option syntax wants.
        let args = control_channel(&dir.path().join("a,b/ctl.sock"))
            .unwrap()
            .unwrap();
        assert!(args[3].contains("/a,,b/ctl.sock,server=on"), "{}", args[3]);
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
