//! Output formats: what `keel build --format` writes from an assembled system.
//!
//! Every output is written into an [`AtomicFile`] and all of a build's outputs are committed
//! together at the end, so a failed build leaves nothing behind. Intermediate products (the
//! initrd, the UKI, the BIOS ISO) are made once per build and shared by the formats that need
//! them. Raw disks are streamed, never held in memory, and their empty space is left as holes
//! ([`keel_formats::SparseWriter`]), so `--size 100G` costs what the content does. Disk
//! containers (qcow2, VMDK, dynamic VHD) are converted from a sparse raw disk with `qemu-img`,
//! with its timestamps and random IDs replaced (see `crates/formats`).

use crate::assemble::{Assembled, KernelParts};
use bytes::Bytes;
use keel_image::Arch;
use keel_rootfs::{AtomicFile, Compression, Node, Tree, WriteOptions};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("format {format} needs a kernel: add a kernel section with an image")]
    NoKernel { format: Format },
    #[error("format {0} must be the only format of a build")]
    Alone(Format),
    #[error("formats {0} and {1} both write {2}; build them separately")]
    Clash(Format, Format, String),
    #[error("invalid --size")]
    Size(#[source] keel_formats::Error),
    #[error(
        "--size {given} is larger than the filesystem that holds {} ({fs_size} bytes): the disk image could never be filled; give a size that fits",
        dir.display()
    )]
    SizeTooLarge {
        given: String,
        dir: PathBuf,
        fs_size: u64,
    },
    #[error(
        "{flag} {given} bytes is larger than the filesystem that holds {} ({fs_size} bytes): the disk image could never be filled; give a size that fits",
        dir.display()
    )]
    PartitionTooLarge {
        flag: &'static str,
        given: u64,
        dir: PathBuf,
        fs_size: u64,
    },
    #[error("cannot look at the filesystem of {}", dir.display())]
    Filesystem {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--dir {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("cannot build format {format} for this architecture")]
    Arch {
        format: Format,
        #[source]
        source: keel_formats::Error,
    },
    #[error("cannot make the {format} output")]
    Format {
        format: Format,
        #[source]
        source: keel_formats::Error,
    },
    #[error("format {format} needs a boot tool")]
    Tool {
        format: Format,
        #[source]
        source: crate::tools::Error,
    },
    #[error("cannot make the kernel+squashfs loader initramfs")]
    Loader(#[source] crate::assemble::Error),
    #[error("cannot write {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: keel_rootfs::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--initrd-compression {codec}: the kernel cannot unpack a {codec} initramfs ({} is not set in its configuration); use --initrd-compression auto",
        codec.kernel_option()
    )]
    KernelLacks { codec: Compression },
    #[error(
        "the kernel unpacks neither a gzip nor a zstd initramfs (CONFIG_RD_GZIP and CONFIG_RD_ZSTD are not set in its configuration): build it with one of them"
    )]
    NoDecompressor,
    #[error(
        "--sign-with: format {0} does not boot a keel UKI, so keel has nothing to sign in it; sign uki, raw-efi, qcow2-efi, vhd, dynamic-vhd, vmdk, aws, gcp or iso-efi"
    )]
    Unsignable(Format),
    #[error("cannot sign the UKI")]
    Sign(#[source] crate::keys::Error),
    #[error(
        "--verity: format {0} has no disk to hold a verified root partition; use raw-efi, qcow2-efi, vhd, dynamic-vhd, vmdk or aws"
    )]
    NoVerityDisk(Format),
    #[error("cannot make the verified root")]
    Verity(#[source] keel_rootfs::Error),
    #[error("cannot compute the verified root's hash tree")]
    HashTree(#[source] keel_formats::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// An output format, named as LinuxKit names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `NAME-kernel`, `NAME-initrd.img` (newc cpio, zstd or gzip), `NAME-cmdline`.
    KernelInitrd,
    /// `NAME-kernel`, `NAME-squashfs.img` (the root), `NAME-squashfs-initrd.img` (keel's init
    /// and the kernel's modules, which mount it: Debian's kernels have squashfs and virtio as
    /// modules), `NAME-cmdline`.
    KernelSquashfs,
    /// `NAME.tar`: the whole root filesystem, with `boot/kernel` and `boot/cmdline`.
    Tar,
    /// `NAME-initrd.tar`: `kernel`, `initrd.img`, `cmdline` (and `ucode.cpio`) in one tar.
    TarKernelInitrd,
    /// `NAME.efi`: a unified kernel image (systemd's EFI stub, kernel, initrd, cmdline).
    Uki,
    /// `NAME-efi.img`: a GPT disk whose EFI system partition holds the UKI.
    RawEfi,
    /// `NAME-efi.qcow2`: `raw-efi` as qcow2.
    Qcow2Efi,
    /// `NAME.vhd`: `raw-efi` with a fixed VHD footer.
    Vhd,
    /// `NAME.vhd`: `raw-efi` as a dynamic VHD.
    DynamicVhd,
    /// `NAME.vmdk`: `raw-efi` as a monolithic sparse VMDK.
    Vmdk,
    /// `NAME.raw`: the `raw-efi` disk, for AWS (UEFI boot mode).
    Aws,
    /// `NAME.img.tar.gz`: the `raw-efi` disk (whole GiB) as `disk.raw` in a GNU tar, for GCE.
    Gcp,
    /// `NAME-efi.iso`: an ISO whose El Torito EFI image is an ESP holding the UKI.
    IsoEfi,
    /// `NAME-efi-initrd.iso`: GRUB in the El Torito ESP boots kernel and initrd from the ISO.
    IsoEfiInitrd,
    /// `NAME.iso` (x86_64): isolinux booting kernel and initrd; isohybrid, so also a disk.
    IsoBios,
    /// `NAME-bios.img` (x86_64): the `iso-bios` image as a disk, grown to `--size`.
    RawBios,
    /// `NAME.qcow2` (x86_64): `raw-bios` as qcow2.
    Qcow2Bios,
}

impl Format {
    pub const ALL: [Format; 17] = [
        Format::KernelInitrd,
        Format::KernelSquashfs,
        Format::Tar,
        Format::TarKernelInitrd,
        Format::Uki,
        Format::RawEfi,
        Format::Qcow2Efi,
        Format::Vhd,
        Format::DynamicVhd,
        Format::Vmdk,
        Format::Aws,
        Format::Gcp,
        Format::IsoEfi,
        Format::IsoEfiInitrd,
        Format::IsoBios,
        Format::RawBios,
        Format::Qcow2Bios,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::KernelInitrd => "kernel+initrd",
            Format::KernelSquashfs => "kernel+squashfs",
            Format::Tar => "tar",
            Format::TarKernelInitrd => "tar-kernel-initrd",
            Format::Uki => "uki",
            Format::RawEfi => "raw-efi",
            Format::Qcow2Efi => "qcow2-efi",
            Format::Vhd => "vhd",
            Format::DynamicVhd => "dynamic-vhd",
            Format::Vmdk => "vmdk",
            Format::Aws => "aws",
            Format::Gcp => "gcp",
            Format::IsoEfi => "iso-efi",
            Format::IsoEfiInitrd => "iso-efi-initrd",
            Format::IsoBios => "iso-bios",
            Format::RawBios => "raw-bios",
            Format::Qcow2Bios => "qcow2-bios",
        }
    }

    /// Whether the format boots through a PC BIOS (x86_64 only).
    pub fn is_bios(self) -> bool {
        matches!(self, Format::IsoBios | Format::RawBios | Format::Qcow2Bios)
    }

    /// Whether the format writes the kernel as a file of its own, which a boot loader or
    /// `qemu -kernel` loads as it is (so `--decompress-kernel` can apply), rather than inside a
    /// UKI, an ISO or a disk, whose loaders need the compressed, EFI-stub image.
    pub fn has_bare_kernel(self) -> bool {
        matches!(
            self,
            Format::KernelInitrd | Format::KernelSquashfs | Format::Tar | Format::TarKernelInitrd
        )
    }

    /// Whether the format boots through keel's UKI (on its own, or in an ESP), which
    /// `--sign-with` signs; the others boot a kernel keel does not sign (GRUB, isolinux, QEMU's
    /// `-kernel`) or do not boot at all.
    /// A GPT disk made by [`Products::write_raw`] around the UKI, which `--verity` can give a
    /// verified root partition.
    pub fn is_efi_disk(self) -> bool {
        matches!(
            self,
            Format::RawEfi
                | Format::Qcow2Efi
                | Format::Vhd
                | Format::DynamicVhd
                | Format::Vmdk
                | Format::Aws
        )
    }

    pub fn boots_uki(self) -> bool {
        matches!(
            self,
            Format::Uki
                | Format::RawEfi
                | Format::Qcow2Efi
                | Format::Vhd
                | Format::DynamicVhd
                | Format::Vmdk
                | Format::Aws
                | Format::Gcp
                | Format::IsoEfi
        )
    }

    /// The pinned boot tool image the format needs, if any.
    pub fn tool(self) -> Option<&'static crate::tools::ToolImage> {
        if self.boots_uki() {
            return Some(&crate::tools::EFI_STUB);
        }
        match self {
            Format::IsoEfiInitrd => Some(&crate::tools::GRUB_CD),
            Format::IsoBios | Format::RawBios | Format::Qcow2Bios => Some(&crate::tools::ISOLINUX),
            // A kernel and initrd as files or in a tar need no tool.
            _ => None,
        }
    }

    /// The files a format writes, for output base name `name`.
    pub fn files(self, name: &str) -> Vec<String> {
        match self {
            Format::KernelInitrd => {
                vec![
                    format!("{name}-kernel"),
                    format!("{name}-initrd.img"),
                    format!("{name}-cmdline"),
                ]
            }
            Format::KernelSquashfs => {
                vec![
                    format!("{name}-kernel"),
                    format!("{name}-squashfs.img"),
                    format!("{name}-squashfs-initrd.img"),
                    format!("{name}-cmdline"),
                ]
            }
            Format::Tar => vec![format!("{name}.tar")],
            Format::TarKernelInitrd => vec![format!("{name}-initrd.tar")],
            Format::Uki => vec![format!("{name}.efi")],
            Format::RawEfi => vec![format!("{name}-efi.img")],
            Format::Qcow2Efi => vec![format!("{name}-efi.qcow2")],
            Format::Vhd | Format::DynamicVhd => vec![format!("{name}.vhd")],
            Format::Vmdk => vec![format!("{name}.vmdk")],
            Format::Aws => vec![format!("{name}.raw")],
            Format::Gcp => vec![format!("{name}.img.tar.gz")],
            Format::IsoEfi => vec![format!("{name}-efi.iso")],
            Format::IsoEfiInitrd => vec![format!("{name}-efi-initrd.iso")],
            Format::IsoBios => vec![format!("{name}.iso")],
            Format::RawBios => vec![format!("{name}-bios.img")],
            Format::Qcow2Bios => vec![format!("{name}.qcow2")],
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown format {0:?}; expected one of: {list}", list = Format::ALL.map(Format::name).join(", "))]
pub struct UnknownFormat(String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownFormat> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.into()))
    }
}

/// How outputs are written.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    pub dir: &'a Path,
    pub name: &'a str,
    pub arch: Arch,
    /// Disk size for disk formats (LinuxKit's `--size`); `None`: as small as the content allows.
    pub size: Option<&'a str>,
    /// The store holding (or to hold) the pinned boot tool images (see [`crate::tools`]).
    pub store: &'a keel_image::Store,
    /// What the root filesystem was made from ([`crate::input_tar::fingerprint`]), recorded
    /// in the `tar` output for `--input-tar`; `None` when that cannot be known.
    pub fingerprint: Option<&'a str>,
    /// How initramfs outputs are compressed (`--initrd-compression`).
    pub initrd_compression: InitrdCompression,
    /// The key set whose `db` key signs the UKI (`--sign-with`).
    pub sign_with: Option<&'a crate::keys::KeySet>,
    /// Write `<name>-pcr11.json` (the UKI's predicted PCR 11) beside a UKI's outputs.
    pub pcr_file: bool,
    /// Where the root filesystem goes (`--verity`, `--ab`).
    pub root: &'a RootLayout,
}

/// Where a build puts the root filesystem.
#[derive(Debug, Clone, Default)]
pub enum RootLayout {
    /// In the initramfs, inside the UKI or beside the kernel (every format's default).
    #[default]
    Initramfs,
    /// `--verity`: a read-only squashfs partition checked by dm-verity, beside the ESP of the
    /// EFI disk formats; the UKI holds only the loader and the root hash.
    Verity,
    /// `--verity --ab`: [`RootLayout::Verity`] in slot A of the A/B layout (two root slots, a
    /// data partition, systemd-boot).
    Ab(AbSettings),
}

impl RootLayout {
    /// Whether the root is on a verified partition.
    pub fn is_verity(&self) -> bool {
        !matches!(self, RootLayout::Initramfs)
    }

    /// The A/B settings, for [`RootLayout::Ab`].
    pub fn ab(&self) -> Option<&AbSettings> {
        match self {
            RootLayout::Ab(ab) => Some(ab),
            _ => None,
        }
    }
}

/// The options of `--ab` disks (see `keel_formats::efi`'s module note for the layout).
#[derive(Debug, Clone, Default)]
pub struct AbSettings {
    /// `--image-version`: the UKI's `IMAGE_VERSION` and file name (default `1`).
    pub version: keel_formats::ImageVersion,
    /// `--slot-size` in bytes; `None`: twice the root, rounded up to a MiB.
    pub slot_size: Option<u64>,
    /// `--data-size` in bytes; `None`: 64 MiB.
    pub data_size: Option<u64>,
}

/// How an initramfs is compressed (`--initrd-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitrdCompression {
    /// zstd when the kernel's configuration shows it unpacks zstd (`CONFIG_RD_ZSTD=y`), else
    /// gzip, the codec every kernel has (and the only one LinuxKit writes).
    #[default]
    Auto,
    /// This codec; refused when the kernel's configuration shows it cannot unpack it.
    Use(Compression),
}

impl InitrdCompression {
    /// The codec for `kernel`'s initramfs.
    fn resolve(self, kernel: &KernelParts) -> Result<Compression> {
        let codec = match (self, kernel.decompressors.as_deref()) {
            (InitrdCompression::Auto, None) => Compression::Gzip,
            (InitrdCompression::Auto, Some(has)) => [Compression::Zstd, Compression::Gzip]
                .into_iter()
                .find(|c| has.contains(c))
                .ok_or(Error::NoDecompressor)?,
            (InitrdCompression::Use(codec), Some(has)) if !has.contains(&codec) => {
                return Err(Error::KernelLacks { codec });
            }
            (InitrdCompression::Use(codec), None) => {
                if codec != Compression::Gzip {
                    log::warn!(
                        "the kernel image holds no configuration: nothing shows that it unpacks a {codec} initramfs (it needs {})",
                        codec.kernel_option()
                    );
                }
                codec
            }
            (InitrdCompression::Use(codec), Some(_)) => codec,
        };
        Ok(codec)
    }
}

impl FromStr for InitrdCompression {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(InitrdCompression::Auto),
            _ => Compression::from_name(s)
                .map(InitrdCompression::Use)
                .ok_or_else(|| "expected auto, gzip or zstd".to_owned()),
        }
    }
}

/// A generated file of an output (root-owned, 0644).
fn file_node(data: impl Into<Bytes>) -> Node {
    crate::assemble::file(data, 0o644, "keel")
}

/// `tree` as a `codec`-compressed newc initramfs, after the kernel's microcode archive (which
/// stays uncompressed: the kernel reads it before anything else) if it has one; `path` names
/// the output in errors.
fn initramfs(
    tree: &Tree,
    kernel: &KernelParts,
    codec: Compression,
    opts: &WriteOptions,
    path: PathBuf,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(ucode) = &kernel.ucode {
        out.extend_from_slice(ucode);
    }
    let write_err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let compressed = codec.writer(out).map_err(write_err)?;
    let compressed =
        keel_rootfs::write_cpio(tree, compressed, opts).map_err(|source| Error::Output {
            path: path.clone(),
            source,
        })?;
    compressed.finish().map_err(write_err)
}

/// `<name>-pcr11.json`: the PCR values a UKI's boot produces, in the shape `systemd-measure
/// calculate --json` prints them.
#[derive(Debug, serde::Serialize)]
struct PcrPrediction {
    sha256: Vec<PcrValue>,
}

#[derive(Debug, serde::Serialize)]
struct PcrValue {
    pcr: u32,
    /// Lower-case hex.
    hash: String,
}

/// Products several formats share, each made at most once.
struct Products<'a> {
    assembled: &'a Assembled,
    settings: &'a Settings<'a>,
    opts: WriteOptions,
    /// The initramfs codec, chosen once for the first initramfs.
    codec: Option<Compression>,
    initrd: Option<Vec<u8>>,
    uki: Option<Vec<u8>>,
    /// TPM PCR 11 as the UKI's stub will leave it ([`keel_formats::predict_pcr11`]).
    pcr11: Option<[u8; 32]>,
    iso_bios: Option<Vec<u8>>,
    /// `--verity`'s root filesystem (padded to whole blocks) and its hash tree.
    verity: Option<(Vec<u8>, keel_formats::verity::HashTree)>,
}

impl Products<'_> {
    /// The verified root of `--verity`: the root filesystem without `boot/` as squashfs, and
    /// its dm-verity hash tree.
    fn verity_root(&mut self) -> Result<&(Vec<u8>, keel_formats::verity::HashTree)> {
        let verity = match self.verity.take() {
            Some(verity) => verity,
            None => {
                let mut rootfs = self.assembled.tree.clone();
                rootfs.remove("boot");
                let mut data = keel_rootfs::write_squashfs(
                    &rootfs,
                    std::io::Cursor::new(Vec::new()),
                    &self.opts,
                )
                .map_err(Error::Verity)?
                .into_inner();
                data.resize(data.len().next_multiple_of(keel_formats::verity::BLOCK), 0);
                let salt = keel_formats::verity::derive_salt(&data);
                let tree = keel_formats::verity::hash_tree(&data, salt)
                    .map_err(|e| Error::HashTree(e.into()))?;
                log::info!(
                    "verified root: {} bytes, root hash {}",
                    data.len(),
                    hex::encode(tree.root_hash)
                );
                (data, tree)
            }
        };
        Ok(self.verity.insert(verity))
    }

    /// `--size` in bytes, if given.
    fn size(&self) -> Result<Option<u64>> {
        self.settings
            .size
            .map(keel_formats::parse_size)
            .transpose()
            .map_err(Error::Size)
    }

    /// The isohybrid `iso-bios` image, which `raw-bios` and `qcow2-bios` are made from.
    fn iso_bios(&mut self, format: Format) -> Result<&[u8]> {
        if self.iso_bios.is_none() {
            let initrd = self.initrd(format)?.to_vec();
            let kernel = self.kernel(format)?;
            let fail = |source| Error::Format { format, source };
            let isolinux = crate::tools::isolinux(self.settings.store)
                .map_err(|source| Error::Tool { format, source })?;
            let parts = keel_formats::BootParts {
                kernel: &kernel.kernel,
                initrd: &initrd,
                cmdline: &kernel.cmdline,
            };
            let iso = keel_formats::iso_bios(&parts, &isolinux, self.opts.mtime).map_err(fail)?;
            self.iso_bios = Some(iso);
        }
        Ok(self.iso_bios.as_deref().unwrap_or_default())
    }

    /// The initramfs codec (logged once).
    fn codec(&mut self, format: Format) -> Result<Compression> {
        if let Some(codec) = self.codec {
            return Ok(codec);
        }
        let codec = self
            .settings
            .initrd_compression
            .resolve(self.kernel(format)?)?;
        log::info!("initramfs compression: {codec}");
        self.codec = Some(codec);
        Ok(codec)
    }

    fn kernel(&self, format: Format) -> Result<&KernelParts> {
        self.assembled
            .kernel
            .as_ref()
            .ok_or(Error::NoKernel { format })
    }

    /// The root filesystem without `boot/` (never part of an initrd, as in LinuxKit).
    fn initrd(&mut self, format: Format) -> Result<&[u8]> {
        if self.initrd.is_none() {
            let codec = self.codec(format)?;
            let kernel = self.kernel(format)?;
            let mut rootfs = self.assembled.tree.clone();
            rootfs.remove("boot");
            let path = self
                .settings
                .dir
                .join(format!("{}-initrd.img", self.settings.name));
            self.initrd = Some(initramfs(&rootfs, kernel, codec, &self.opts, path)?);
        }
        Ok(self.initrd.as_deref().unwrap_or_default())
    }

    /// The UKI: the kernel, the initramfs and the command line; with `--verity` the
    /// initramfs is the loader alone and the command line names the verified root.
    fn uki(&mut self, format: Format) -> Result<&[u8]> {
        if self.uki.is_none() {
            let (initrd, cmdline) = if self.settings.root.is_verity() {
                let kernel = self.kernel(format)?.clone();
                let codec = self.codec(format)?;
                let mut rootfs = self.assembled.tree.clone();
                rootfs.remove("boot");
                let loader = crate::assemble::loader_tree(&rootfs).map_err(Error::Loader)?;
                let path = self
                    .settings
                    .dir
                    .join(format!("{}-initrd.img", self.settings.name));
                let initrd = initramfs(&loader, &kernel, codec, &self.opts, path)?;
                // --ab: the running system finds its own UKI (to bless it) by this version.
                let version = match self.settings.root.ab() {
                    Some(ab) => format!(" {}={}", keel_formats::ab::VERSION_KNOB, ab.version),
                    None => String::new(),
                };
                let (_, tree) = self.verity_root()?;
                let cmdline = format!("{} {}{version}", kernel.cmdline, tree.cmdline())
                    .trim()
                    .to_owned();
                (initrd, cmdline)
            } else {
                let cmdline = self.kernel(format)?.cmdline.clone();
                (self.initrd(format)?.to_vec(), cmdline)
            };
            let kernel = self.kernel(format)?;
            let fail = |source| Error::Format { format, source };
            let stub = crate::tools::efi_stub(self.settings.store, self.settings.arch)
                .map_err(|source| Error::Tool { format, source })?;
            // --ab: the version systemd-boot sorts by; otherwise the bytes every keel UKI has.
            let os_release = match self.settings.root.ab() {
                Some(ab) => keel_formats::ab_os_release(&ab.version),
                None => "NAME=keel\nID=keel\n".to_owned(),
            };
            let parts = keel_formats::UkiParts {
                kernel: &kernel.kernel,
                initrd: &initrd,
                cmdline: &cmdline,
                os_release: Some(&os_release),
                uname: None,
            };
            let mut uki = keel_formats::build_uki(&stub, &parts).map_err(|e| fail(e.into()))?;
            self.pcr11 = Some(keel_formats::predict_pcr11(&uki).map_err(|e| fail(e.into()))?);
            if let Some(keys) = self.settings.sign_with {
                uki = keys.sign_efi(&uki, self.opts.mtime).map_err(Error::Sign)?;
                log::info!("UKI signed with the db key of {}", keys.dir().display());
            }
            self.uki = Some(uki);
        }
        Ok(self.uki.as_deref().unwrap_or_default())
    }

    /// systemd-boot for `--ab` disks, signed with the db key under `--sign-with` (Secure Boot
    /// then chains firmware, systemd-boot, UKI: systemd-boot loads the UKI through the
    /// firmware, which checks it against db).
    fn boot_manager(&self, format: Format) -> Result<Vec<u8>> {
        let boot = crate::tools::systemd_boot(self.settings.store, self.settings.arch)
            .map_err(|source| Error::Tool { format, source })?;
        match self.settings.sign_with {
            Some(keys) => {
                let signed = keys.sign_efi(&boot, self.opts.mtime).map_err(Error::Sign)?;
                log::info!(
                    "systemd-boot signed with the db key of {}",
                    keys.dir().display()
                );
                Ok(signed)
            }
            None => Ok(boot),
        }
    }

    /// Writes the raw disk of `format` into `out`: `raw-bios` (the isohybrid image grown to
    /// `--size`) for a BIOS format, else `raw-efi` (the UKI in an ESP on a GPT disk; with
    /// `--ab`, systemd-boot and the UKI, two root slots and a data partition). Returns
    /// its size and a seed for the IDs of containers around it: a hash of what the disk is
    /// made from, so that the disk itself need not be read again.
    fn write_raw(&mut self, format: Format, out: &mut impl Write) -> Result<(u64, [u8; 16])> {
        let size = self.size()?;
        let fail = |source| Error::Format { format, source };
        let (size, content) = if format.is_bios() {
            let iso = self.iso_bios(format)?;
            let size = keel_formats::write_raw_bios(out, iso, size).map_err(fail)?;
            (size, keel_formats::gpt::Guid::derive(iso, "raw-bios"))
        } else {
            let arch = self.settings.arch;
            self.uki(format)?;
            if self.settings.root.is_verity() {
                self.verity_root()?;
            }
            let uki = self.uki.as_deref().unwrap_or_default();
            let root = self
                .verity
                .as_ref()
                .map(|(data, tree)| keel_formats::VerityRoot { data, tree });
            let size = match (self.settings.root.ab(), root) {
                (Some(ab), Some(root)) => {
                    let boot_manager = self.boot_manager(format)?;
                    let disk = keel_formats::AbDisk {
                        boot_manager: &boot_manager,
                        uki,
                        version: &ab.version,
                        root,
                        slot_size: ab.slot_size,
                        data_size: ab.data_size.unwrap_or(keel_formats::efi::DEFAULT_DATA_SIZE),
                    };
                    keel_formats::write_ab_efi(out, &disk, arch, size)
                }
                (_, root) => keel_formats::write_raw_efi_with(out, uki, arch, size, root.as_ref()),
            }
            .map_err(fail)?;
            (size, keel_formats::gpt::Guid::derive(uki, "raw-efi"))
        };
        let mut seed = content.bytes().to_vec();
        seed.extend_from_slice(&size.to_le_bytes());
        Ok((size, keel_formats::gpt::Guid::derive(&seed, "disk").bytes()))
    }

    /// The raw disk of `format` written sparsely into `file`; returns what [`Self::write_raw`]
    /// does.
    fn write_raw_sparse(
        &mut self,
        format: Format,
        file: &mut (impl Write + std::io::Seek),
        path: &Path,
    ) -> Result<(u64, [u8; 16])> {
        let mut sparse = keel_formats::SparseWriter::new(file);
        let written = self.write_raw(format, &mut sparse)?;
        sparse.finish().map_err(|source| Error::Write {
            path: path.into(),
            source,
        })?;
        Ok(written)
    }

    /// The raw disk of `format` converted by `qemu-img` into `container`.
    fn converted(&mut self, format: Format, container: keel_formats::Container) -> Result<Vec<u8>> {
        let fail = |source| Error::Format { format, source };
        // The raw disk is scratch, beside the outputs (not in /tmp: a disk may not fit there,
        // and an interrupted build's cleanup finds it with the outputs).
        let scratch =
            self.settings
                .dir
                .join(format!("{}-{}.raw", self.settings.name, format.name()));
        let mut tmp = AtomicFile::create(&scratch).map_err(|source| Error::Output {
            path: scratch.clone(),
            source,
        })?;
        let path = tmp.temp_path().to_path_buf();
        let (_, seed) = self.write_raw_sparse(format, &mut tmp, &path)?;
        let mut out = Vec::new();
        keel_formats::convert(&path, container, self.opts.mtime, &seed, &mut out).map_err(fail)?;
        Ok(out)
    }
}

/// Refuses a set of formats that cannot be built together, for `arch`, or signed (`signed`:
/// `--sign-with` was given), before anything is fetched or written.
pub fn check(
    formats: &[Format],
    name: &str,
    arch: Arch,
    signed: bool,
    root: &RootLayout,
) -> Result<()> {
    if signed && let Some(unsignable) = formats.iter().find(|f| !f.boots_uki()) {
        return Err(Error::Unsignable(*unsignable));
    }
    if root.is_verity()
        && let Some(diskless) = formats.iter().find(|f| !f.is_efi_disk())
    {
        return Err(Error::NoVerityDisk(*diskless));
    }
    if formats.len() > 1
        && let Some(alone) = formats.iter().find(|f| **f == Format::Tar)
    {
        return Err(Error::Alone(*alone));
    }
    for (i, a) in formats.iter().enumerate() {
        for b in &formats[i + 1..] {
            if let Some(file) = a
                .files(name)
                .into_iter()
                .find(|f| b.files(name).contains(f))
            {
                return Err(Error::Clash(*a, *b, file));
            }
        }
    }
    for &format in formats {
        if format.is_bios() {
            keel_formats::check_bios_arch(format.name(), arch)
                .map_err(|source| Error::Arch { format, source })?;
        }
    }
    Ok(())
}

/// Refuses a `--size` the output directory's filesystem cannot hold, before any image is read:
/// a sparse disk of petabytes would be "written" (seeked through) for hours and never fit.
pub fn check_size(size: &str, dir: &Path) -> Result<()> {
    let bytes = keel_formats::parse_size(size).map_err(Error::Size)?;
    let fs_size = crate::sys::filesystem_size(dir).map_err(|source| Error::Filesystem {
        dir: dir.into(),
        source,
    })?;
    if bytes > fs_size {
        return Err(Error::SizeTooLarge {
            given: size.into(),
            dir: dir.into(),
            fs_size,
        });
    }
    Ok(())
}

/// Refuses an `--ab` `--slot-size` or `--data-size` larger than the output directory's
/// filesystem, before any image is read (as [`check_size`] does for `--size`).
pub fn check_ab_sizes(ab: &AbSettings, dir: &Path) -> Result<()> {
    let sizes = [("--slot-size", ab.slot_size), ("--data-size", ab.data_size)];
    if sizes.iter().all(|(_, s)| s.is_none()) {
        return Ok(());
    }
    let fs_size = crate::sys::filesystem_size(dir).map_err(|source| Error::Filesystem {
        dir: dir.into(),
        source,
    })?;
    for (flag, size) in sizes {
        if let Some(given) = size
            && given > fs_size
        {
            return Err(Error::PartitionTooLarge {
                flag,
                given,
                dir: dir.into(),
                fs_size,
            });
        }
    }
    Ok(())
}

/// Writes every format into temporary files, then commits them all: either every output
/// appears or none does. Returns the paths written. Temporary files that an earlier, killed
/// build left in the directory are removed first; a directory this call created is removed
/// again when the build fails.
pub fn write(
    assembled: &Assembled,
    formats: &[Format],
    settings: &Settings<'_>,
) -> Result<Vec<PathBuf>> {
    check(
        formats,
        settings.name,
        settings.arch,
        settings.sign_with.is_some(),
        settings.root,
    )?;
    let dir = settings.dir;
    if dir.exists() && !dir.is_dir() {
        return Err(Error::NotADirectory(dir.into()));
    }
    // The directories this call creates (`--dir new/out` may make two), innermost first.
    let created: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    let stale = keel_rootfs::remove_stale(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    for path in stale {
        log::info!(
            "removed {} (left by a build that was killed)",
            path.display()
        );
    }
    let written = write_into(assembled, formats, settings);
    if written.is_err() {
        // Only empty ones: nothing of anyone else's is removed.
        for made in &created {
            let _ = std::fs::remove_dir(made);
        }
    }
    written
}

fn write_into(
    assembled: &Assembled,
    formats: &[Format],
    settings: &Settings<'_>,
) -> Result<Vec<PathBuf>> {
    let dir = settings.dir;
    let mut products = Products {
        assembled,
        settings,
        opts: WriteOptions::from_env(),
        codec: None,
        initrd: None,
        uki: None,
        pcr11: None,
        iso_bios: None,
        verity: None,
    };
    let mut pending: Vec<AtomicFile> = Vec::new();
    let create = |file: &str| -> Result<AtomicFile> {
        let path = dir.join(file);
        AtomicFile::create(&path).map_err(|source| Error::Output { path, source })
    };
    let put = |pending: &mut Vec<AtomicFile>, file: &str, data: &[u8]| -> Result<()> {
        let mut f = create(file)?;
        f.write_all(data).map_err(|source| Error::Write {
            path: dir.join(file),
            source,
        })?;
        pending.push(f);
        Ok(())
    };
    let out_err = |file: &str| {
        let path = dir.join(file);
        move |source| Error::Output { path, source }
    };
    let name = settings.name;

    for &format in formats {
        let file = format.files(name).remove(0);
        let _step = crate::progress::Step::start(format!("writing {file} ({format})"));
        match format {
            Format::KernelInitrd => {
                let k = products.kernel(format)?.clone();
                put(&mut pending, &file, &k.kernel)?;
                put(
                    &mut pending,
                    &format!("{name}-initrd.img"),
                    products.initrd(format)?,
                )?;
                put(
                    &mut pending,
                    &format!("{name}-cmdline"),
                    k.cmdline.as_bytes(),
                )?;
            }
            Format::KernelSquashfs => {
                let k = products.kernel(format)?.clone();
                put(&mut pending, &file, &k.kernel)?;
                let mut rootfs = assembled.tree.clone();
                rootfs.remove("boot");
                let squashfs = format!("{name}-squashfs.img");
                let image = keel_rootfs::write_squashfs(
                    &rootfs,
                    std::io::Cursor::new(Vec::new()),
                    &products.opts,
                )
                .map_err(out_err(&squashfs))?;
                put(&mut pending, &squashfs, image.get_ref())?;
                let loader = crate::assemble::loader_tree(&rootfs).map_err(Error::Loader)?;
                let initrd = format!("{name}-squashfs-initrd.img");
                let codec = products.codec(format)?;
                let bytes = initramfs(&loader, &k, codec, &products.opts, dir.join(&initrd))?;
                put(&mut pending, &initrd, &bytes)?;
                put(
                    &mut pending,
                    &format!("{name}-cmdline"),
                    k.cmdline.as_bytes(),
                )?;
            }
            Format::TarKernelInitrd => {
                let k = products.kernel(format)?.clone();
                let mut t = Tree::new();
                let place = |t: &mut Tree, p: &str, n: Node| t.insert(p, n).map_err(out_err(&file));
                place(&mut t, "kernel", file_node(k.kernel.clone()))?;
                place(
                    &mut t,
                    "initrd.img",
                    file_node(products.initrd(format)?.to_vec()),
                )?;
                place(&mut t, "cmdline", file_node(k.cmdline.clone().into_bytes()))?;
                if let Some(u) = &k.ucode {
                    place(&mut t, "ucode.cpio", file_node(u.clone()))?;
                }
                pending.push(
                    keel_rootfs::write_tar(&t, create(&file)?, &products.opts)
                        .map_err(out_err(&file))?,
                );
            }
            Format::Tar => {
                let mut t = assembled.tree.clone();
                let made_boot = assembled.kernel.is_some() && t.get("boot").is_none();
                // A tree with its own boot/kernel would not read back as it is: no record.
                let reusable = ["boot/kernel", "boot/cmdline", "boot/ucode.cpio"]
                    .iter()
                    .all(|p| t.get(p).is_none());
                let globals = match settings.fingerprint {
                    Some(fp) if reusable => {
                        crate::input_tar::globals(fp, assembled.kernel.as_ref(), made_boot)
                    }
                    _ => Vec::new(),
                };
                if let Some(k) = &assembled.kernel {
                    let place = |t: &mut Tree, p: &str, n: Node| {
                        t.remove(p);
                        t.insert(p, n).map_err(out_err(&file))
                    };
                    place(&mut t, "boot/kernel", file_node(k.kernel.clone()))?;
                    place(
                        &mut t,
                        "boot/cmdline",
                        file_node(k.cmdline.clone().into_bytes()),
                    )?;
                    if let Some(u) = &k.ucode {
                        place(&mut t, "boot/ucode.cpio", file_node(u.clone()))?;
                    }
                }
                pending.push(
                    keel_rootfs::write_tar_with(&t, create(&file)?, &products.opts, &globals)
                        .map_err(out_err(&file))?,
                );
            }
            Format::Uki => put(&mut pending, &file, products.uki(format)?)?,
            Format::RawEfi | Format::Aws | Format::RawBios => {
                let mut f = create(&file)?;
                products.write_raw_sparse(format, &mut f, &dir.join(&file))?;
                pending.push(f);
            }
            Format::Vhd => {
                let mut f = create(&file)?;
                let (size, seed) = products.write_raw_sparse(format, &mut f, &dir.join(&file))?;
                let footer = keel_formats::fixed_vhd_footer(size, products.opts.mtime, &seed);
                f.write_all(&footer).map_err(|source| Error::Write {
                    path: dir.join(&file),
                    source,
                })?;
                pending.push(f);
            }
            Format::Qcow2Efi => {
                let data = products.converted(format, keel_formats::Container::Qcow2)?;
                put(&mut pending, &file, &data)?;
            }
            Format::DynamicVhd => {
                let data = products.converted(format, keel_formats::Container::DynamicVhd)?;
                put(&mut pending, &file, &data)?;
            }
            Format::Vmdk => {
                let data = products.converted(format, keel_formats::Container::Vmdk)?;
                put(&mut pending, &file, &data)?;
            }
            Format::Gcp => {
                let size = products.size()?;
                let arch = settings.arch;
                let mtime = products.opts.mtime;
                let uki = products.uki(format)?;
                // Streamed: the archive of a large disk is mostly compressed zeros.
                let mut f = create(&file)?;
                keel_formats::write_gcp(&mut f, uki, arch, size, mtime)
                    .map_err(|source| Error::Format { format, source })?;
                pending.push(f);
            }
            Format::IsoEfi => {
                let (arch, mtime) = (settings.arch, products.opts.mtime);
                let uki = products.uki(format)?;
                let iso = keel_formats::iso_efi(uki, arch, mtime)
                    .map_err(|source| Error::Format { format, source })?;
                put(&mut pending, &file, &iso)?;
            }
            Format::IsoEfiInitrd => {
                let initrd = products.initrd(format)?.to_vec();
                let kernel = products.kernel(format)?;
                let fail = |source| Error::Format { format, source };
                let grub = crate::tools::grub_cd(settings.store, settings.arch)
                    .map_err(|source| Error::Tool { format, source })?;
                let parts = keel_formats::BootParts {
                    kernel: &kernel.kernel,
                    initrd: &initrd,
                    cmdline: &kernel.cmdline,
                };
                let iso =
                    keel_formats::iso_efi_initrd(&parts, &grub, settings.arch, products.opts.mtime)
                        .map_err(fail)?;
                put(&mut pending, &file, &iso)?;
            }
            Format::IsoBios => put(&mut pending, &file, products.iso_bios(format)?)?,
            Format::Qcow2Bios => {
                let data = products.converted(format, keel_formats::Container::Qcow2)?;
                put(&mut pending, &file, &data)?;
            }
        }
    }
    if let Some(pcr) = products.pcr11 {
        let hash = hex::encode(pcr);
        log::info!("TPM PCR 11 (sha256) once the UKI's stub has measured it: {hash}");
        if settings.pcr_file {
            let json = serde_json::to_vec_pretty(&PcrPrediction {
                sha256: vec![PcrValue { pcr: 11, hash }],
            })
            .map_err(|e| Error::Write {
                path: dir.join(format!("{name}-pcr11.json")),
                source: e.into(),
            })?;
            put(&mut pending, &format!("{name}-pcr11.json"), &json)?;
        }
    }
    let mut written = Vec::new();
    for f in pending {
        let path = f.dest().to_path_buf();
        f.commit().map_err(|source| Error::Output {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_unpacking(decompressors: Option<Vec<Compression>>) -> KernelParts {
        KernelParts {
            kernel: Bytes::new(),
            cmdline: String::new(),
            ucode: None,
            decompressors,
        }
    }

    #[test]
    fn initrd_compression_is_chosen_from_what_the_kernel_unpacks() {
        use Compression::{Gzip, Zstd};
        use InitrdCompression::{Auto, Use};
        let both = kernel_unpacking(Some(vec![Gzip, Zstd]));
        let gzip = kernel_unpacking(Some(vec![Gzip]));
        let zstd = kernel_unpacking(Some(vec![Zstd]));
        let unknown = kernel_unpacking(None);
        let neither = kernel_unpacking(Some(vec![]));
        for (asked, kernel, want) in [
            (Auto, &both, Some(Zstd)),
            (Auto, &gzip, Some(Gzip)),
            (Auto, &zstd, Some(Zstd)),
            (Auto, &unknown, Some(Gzip)),
            (Auto, &neither, None),
            (Use(Gzip), &both, Some(Gzip)),
            (Use(Gzip), &zstd, None),
            (Use(Zstd), &gzip, None),
            (Use(Zstd), &unknown, Some(Zstd)),
            (Use(Gzip), &unknown, Some(Gzip)),
        ] {
            let got = asked.resolve(kernel).ok();
            assert_eq!(got, want, "{asked:?} with {:?}", kernel.decompressors);
        }
        assert_eq!("auto".parse(), Ok(Auto));
        assert_eq!("zstd".parse(), Ok(Use(Zstd)));
        assert!("xz".parse::<InitrdCompression>().is_err());
    }

    #[test]
    fn formats_parse_by_linuxkit_name() {
        assert_eq!(
            "kernel+initrd".parse::<Format>().unwrap(),
            Format::KernelInitrd
        );
        assert_eq!(
            "tar-kernel-initrd".parse::<Format>().unwrap(),
            Format::TarKernelInitrd
        );
        assert_eq!("qcow2-efi".parse::<Format>().unwrap(), Format::Qcow2Efi);
        assert_eq!("iso-bios".parse::<Format>().unwrap(), Format::IsoBios);
        assert_eq!("gcp".parse::<Format>().unwrap(), Format::Gcp);
        assert_eq!(
            "iso-efi-initrd".parse::<Format>().unwrap(),
            Format::IsoEfiInitrd
        );
        assert_eq!(
            "kernel+squashfs".parse::<Format>().unwrap(),
            Format::KernelSquashfs
        );
        let err = "vhdx".parse::<Format>().unwrap_err().to_string();
        assert!(
            err.contains(
                "expected one of: kernel+initrd, kernel+squashfs, tar, tar-kernel-initrd, uki"
            ),
            "{err}"
        );
    }

    #[test]
    fn file_names_follow_linuxkit() {
        assert_eq!(Format::RawEfi.files("m"), ["m-efi.img"]);
        assert_eq!(Format::Qcow2Efi.files("m"), ["m-efi.qcow2"]);
        assert_eq!(Format::Aws.files("m"), ["m.raw"]);
        assert_eq!(Format::DynamicVhd.files("m"), Format::Vhd.files("m"));
        assert_eq!(Format::IsoEfi.files("m"), ["m-efi.iso"]);
        assert_eq!(Format::IsoEfiInitrd.files("m"), ["m-efi-initrd.iso"]);
        assert_eq!(Format::IsoBios.files("m"), ["m.iso"]);
        assert_eq!(Format::RawBios.files("m"), ["m-bios.img"]);
        assert_eq!(Format::Qcow2Bios.files("m"), ["m.qcow2"]);
        assert_eq!(Format::Gcp.files("m"), ["m.img.tar.gz"]);
        assert_eq!(
            Format::KernelSquashfs.files("m"),
            [
                "m-kernel",
                "m-squashfs.img",
                "m-squashfs-initrd.img",
                "m-cmdline"
            ]
        );
        // Every format writes names of its own, but for two pairs that are one or the other.
        for (i, a) in Format::ALL.iter().enumerate() {
            for b in &Format::ALL[i + 1..] {
                let pair = (*a, *b);
                if pair != (Format::Vhd, Format::DynamicVhd)
                    && pair != (Format::KernelInitrd, Format::KernelSquashfs)
                {
                    assert!(
                        a.files("m").iter().all(|f| !b.files("m").contains(f)),
                        "{a} {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn clashing_formats_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let assembled = Assembled {
            tree: Tree::new(),
            kernel: None,
        };
        let store_dir = tempfile::tempdir().unwrap();
        let store = keel_image::Store::open(store_dir.path()).unwrap();
        let settings = Settings {
            dir: dir.path(),
            name: "m",
            arch: Arch::X86_64,
            size: None,
            store: &store,
            fingerprint: None,
            initrd_compression: InitrdCompression::Auto,
            sign_with: None,
            pcr_file: true,
            root: &RootLayout::Initramfs,
        };
        let err = write(&assembled, &[Format::Vhd, Format::DynamicVhd], &settings).unwrap_err();
        assert_eq!(
            err.to_string(),
            "formats vhd and dynamic-vhd both write m.vhd; build them separately"
        );
        let err = write(&assembled, &[Format::RawEfi], &settings).unwrap_err();
        assert_eq!(
            err.to_string(),
            "format raw-efi needs a kernel: add a kernel section with an image"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn signing_refuses_formats_without_a_uki() {
        for format in Format::ALL {
            let checked = check(
                &[Format::Uki, format],
                "m",
                Arch::X86_64,
                true,
                &RootLayout::Initramfs,
            );
            // uki with itself clashes; every other pair is about signing alone.
            if format == Format::Uki {
                continue;
            }
            match checked {
                Ok(()) => assert!(format.boots_uki(), "{format} passed unsigned"),
                Err(Error::Unsignable(f)) => {
                    assert_eq!(f, format);
                    assert!(!format.boots_uki());
                }
                Err(e) => panic!("{format}: {e}"),
            }
            assert!(check(&[format], "m", Arch::X86_64, false, &RootLayout::Initramfs).is_ok());
        }
        let err = check(
            &[Format::KernelInitrd],
            "m",
            Arch::X86_64,
            true,
            &RootLayout::Initramfs,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--sign-with: format kernel+initrd does not boot a keel UKI"),
            "{err}"
        );
    }

    #[test]
    fn verity_needs_an_efi_disk() {
        for format in Format::ALL {
            match check(&[format], "m", Arch::X86_64, false, &RootLayout::Verity) {
                Ok(()) => assert!(format.is_efi_disk() && format.boots_uki(), "{format}"),
                Err(Error::NoVerityDisk(f)) => {
                    assert_eq!(f, format);
                    assert!(!format.is_efi_disk());
                }
                Err(e) => panic!("{format}: {e}"),
            }
        }
        let err = check(
            &[Format::RawEfi, Format::Uki],
            "m",
            Arch::X86_64,
            true,
            &RootLayout::Verity,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--verity: format uki has no disk to hold a verified root partition; use raw-efi, qcow2-efi, vhd, dynamic-vhd, vmdk or aws"
        );
    }

    #[test]
    fn ab_disks_are_efi_disks() {
        let ab = RootLayout::Ab(AbSettings::default());
        assert!(check(&[Format::RawEfi], "m", Arch::X86_64, true, &ab).is_ok());
        // --verity's own check still names the format.
        let err = check(&[Format::IsoEfi], "m", Arch::X86_64, false, &ab).unwrap_err();
        assert!(err.to_string().contains("iso-efi"), "{err}");
    }

    #[test]
    fn bios_formats_are_refused_on_aarch64_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let assembled = Assembled {
            tree: Tree::new(),
            kernel: None,
        };
        let store_dir = tempfile::tempdir().unwrap();
        let store = keel_image::Store::open(store_dir.path()).unwrap();
        let settings = Settings {
            dir: &out,
            name: "m",
            arch: Arch::Aarch64,
            size: None,
            store: &store,
            fingerprint: None,
            initrd_compression: InitrdCompression::Auto,
            sign_with: None,
            pcr_file: true,
            root: &RootLayout::Initramfs,
        };
        for format in [Format::IsoBios, Format::RawBios, Format::Qcow2Bios] {
            let err = write(&assembled, &[Format::IsoEfi, format], &settings).unwrap_err();
            let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert_eq!(
                chain,
                format!(
                    "cannot build format {format} for this architecture: format {format} is not \
                     available for aarch64: it is for x86_64 only"
                )
            );
        }
        assert!(!out.exists());
    }
}
