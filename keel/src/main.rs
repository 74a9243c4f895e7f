//! `keel`: the host tool. Argument parsing and error reporting only; the work is in the library.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use keel::build::{BuildOptions, Format};
use keel::run::{Accel, Device, Disk, Options as RunOptions, Publish, Share};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    about = "Build small, immutable, container-native Linux systems from LinuxKit YAML"
)]
struct Cli {
    /// Image store (an OCI image layout). Default: $XDG_CACHE_HOME/keel or ~/.cache/keel.
    #[arg(long, global = true, env = "KEEL_CACHE", value_name = "DIR")]
    cache: Option<PathBuf>,
    /// More output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less output: warnings and errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Pull through a mirror: REGISTRY=URL (e.g. docker.io=https://mirror.example), or URL for
    /// every registry without its own. Repeatable; also read from KEEL_MIRROR (or LinuxKit's
    /// LINUXKIT_MIRROR), a space- or comma-separated list, which the flags override.
    #[arg(long = "mirror", global = true, value_name = "[REGISTRY=]URL")]
    mirrors: Vec<keel_image::Mirror>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a system from one or more YAML files (merged in order; "-" reads stdin).
    Build(BuildArgs),
    /// Print the merged YAML and every generated config.json, without building.
    Validate(ValidateArgs),
    /// Boot a build's output: `keel run PREFIX` is `keel run qemu PREFIX`.
    #[command(subcommand)]
    Run(RunCommand),
    /// Inspect and manage the image store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Kernel images from the recipes under kernel/.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// The pinned boot tool images (EFI stub, isolinux, GRUB) the disk and ISO formats use.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Packages: directories with a build.yml (see docs/pkg.md).
    #[command(subcommand)]
    Pkg(PkgCommand),
    /// Secure Boot keys for `keel build --sign-with` and `keel run --secure-boot --keys`.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a built UKI, EFI disk or ISO: its signature against a key set's db certificate,
    /// and that it is, byte for byte, what the YAML builds from its lock file's pins.
    Verify(VerifyArgs),
    /// Move a stopped A/B disk (keel build --verity --ab) to the version another A/B build
    /// holds: its root into the slot the disk does not boot now, its UKI beside the running
    /// one, where systemd-boot boots the newest. The data partition is kept.
    Update(UpdateArgs),
    /// Talk to a running VM's PID 1 over its control channel (what keelctl does in the guest).
    Ctl(CtlArgs),
    /// Push an image of the store (every platform it has) to a registry.
    Push {
        /// The image in the store, e.g. keel/busybox:392c156a64fc12f6.
        image: String,
        /// Where to push it (default: the image's own reference).
        destination: Option<String>,
        /// Allow plain HTTP to registries that are not on loopback.
        #[arg(long)]
        insecure_registry: bool,
    },
    /// Print keel's version (and the git commit it was built from, when known).
    Version {
        /// Print just the version number.
        #[arg(long, conflicts_with = "commit")]
        short: bool,
        /// Print just the git commit (empty when unknown).
        #[arg(long)]
        commit: bool,
    },
    /// Metadata (user data) volumes, as `keel run --data` attaches them.
    #[command(subcommand)]
    Metadata(MetadataCommand),
    /// Print a shell completion script, e.g. `keel completion bash > /etc/bash_completion.d/keel`
    /// or `keel completion fish > ~/.config/fish/completions/keel.fish`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The key set whose db certificate must verify the UKI's signature (only db.crt is read).
    /// Without it the signature is not checked.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// The architecture the artifact is for. Default: the one its UKI is built for.
    #[arg(long)]
    arch: Option<keel_image::Arch>,
    /// The --initrd-compression the artifact was built with.
    #[arg(long, value_name = "CODEC", default_value = "auto")]
    initrd_compression: keel::output::InitrdCompression,
    /// Allow plain HTTP to registries that are not on loopback.
    #[arg(long)]
    insecure_registry: bool,
    /// The artifact: a UKI (NAME.efi), an EFI disk (raw, qcow2, vmdk, vhd) or an iso-efi image.
    #[arg(value_name = "ARTIFACT")]
    artifact: PathBuf,
    /// The YAML files it was built from, in the same order; their lock file pins the images.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The new version: a raw A/B disk built with keel build -f raw-efi --verity --ab and a
    /// higher --image-version.
    #[arg(long, value_name = "NEW")]
    to: PathBuf,
    /// The key set whose db certificate must verify the new UKI's signature.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// The raw A/B disk to update (not running: keel writes it directly).
    #[arg(value_name = "DISK")]
    disk: PathBuf,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new key set in DIR (which must not exist, or be empty): PK, KEK and db
    /// (RSA-2048 keys and self-signed certificates, PEM) and owner.guid. Keys are readable by
    /// their owner only; nothing is ever overwritten. Needs openssl.
    Generate {
        dir: PathBuf,
        /// The name in the certificates' subjects ("NAME PK", "NAME KEK", "NAME db").
        #[arg(long, default_value = "keel")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PkgCommand {
    /// Build a package (or kernel recipe) directory into the store; prints its reference.
    Build {
        dir: PathBuf,
        /// Architectures to build (repeatable; a subset of build.yml's arches). Default: all.
        #[arg(long = "arch")]
        arches: Vec<keel_image::Arch>,
        /// Resolve the Debian packages again and rewrite build.lock.json.
        #[arg(long, conflicts_with = "locked")]
        update_lock: bool,
        /// Never change build.lock.json or recipe.yml: a pin that has left Debian's archive is
        /// an error (the reproducible form; `keel pkg update-lock` moves the pins).
        #[arg(long)]
        locked: bool,
        /// Rebuild even when the store already has the package's tag.
        #[arg(long)]
        force: bool,
    },
    /// Print the reference `keel pkg build` builds a package directory to (without --arch:
    /// what "@pkg:DIR" stands for).
    ShowTag {
        dir: PathBuf,
        /// The architectures the build is for, as given to `keel pkg build --arch` (they are
        /// inputs of the tag).
        #[arg(long = "arch")]
        arches: Vec<keel_image::Arch>,
    },
    /// Move the Debian pins of packages (build.lock.json) and kernel recipes (recipe.yml) to
    /// the archive's current versions: what to run when Debian has moved on.
    UpdateLock {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Output format (repeatable): kernel+initrd, kernel+squashfs, tar, tar-kernel-initrd, uki, raw-efi,
    /// qcow2-efi, vhd, dynamic-vhd, vmdk, aws, gcp, iso-efi, iso-efi-initrd, iso-bios,
    /// raw-bios, qcow2-bios.
    /// Default: the YAML's `outputs:` (a 2017-era LinuxKit file), else kernel+initrd.
    #[arg(short = 'f', long = "format", value_name = "FORMAT")]
    formats: Vec<Format>,
    /// Directory the outputs are written to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Base name of the outputs (default: the first YAML file's name without extension).
    #[arg(long)]
    name: Option<String>,
    /// Target architecture: x86_64 (amd64) or aarch64 (arm64). Default: the host's.
    #[arg(long)]
    arch: Option<keel_image::Arch>,
    /// Size of disk outputs, e.g. 1024M or 2G (a bare number is MiB). Default: as small as
    /// the content allows.
    #[arg(long)]
    size: Option<String>,
    /// Print the merged YAML and stop.
    #[arg(long)]
    dry_run: bool,
    /// Resolve image tags from their registries again, updating the lock file.
    #[arg(long)]
    pull: bool,
    /// Refuse to build if the lock file is missing a pin or a pin would change, including the
    /// Debian pins of "@pkg:" packages and kernel recipes (the reproducible form).
    #[arg(long)]
    locked: bool,
    /// Allow plain HTTP to registries that are not on loopback.
    #[arg(long)]
    insecure_registry: bool,
    /// Write the kernel uncompressed (an ELF vmlinux on x86_64, an Image on aarch64), for the
    /// formats that carry it as a file of its own: kernel+initrd, kernel+squashfs, tar,
    /// tar-kernel-initrd.
    #[arg(long)]
    decompress_kernel: bool,
    /// Compress the initramfs with auto, gzip or zstd. auto: zstd when the kernel image's
    /// configuration sets CONFIG_RD_ZSTD (smaller, and faster to build), else gzip
    /// (what LinuxKit writes); a codec the kernel cannot unpack is refused.
    #[arg(long, value_name = "CODEC", default_value = "auto")]
    initrd_compression: keel::output::InitrdCompression,
    /// A previous `keel build -f tar` output to build from, without the images, when it was
    /// made from the same inputs (YAML, pinned image digests, host files, architecture,
    /// SOURCE_DATE_EPOCH); otherwise the images are read as usual, with a warning saying why.
    #[arg(long, value_name = "FILE", conflicts_with = "pull")]
    input_tar: Option<PathBuf>,
    /// Refuse an image whose layers decompress to more than SIZE (each layer, and all of an
    /// image's layers together), e.g. 8G (a bare number is MiB). Default: 4G.
    #[arg(
        long,
        value_name = "SIZE",
        env = "KEEL_MAX_IMAGE_SIZE",
        value_parser = |s: &str| keel_formats::parse_size(s).map_err(|e| e.to_string())
    )]
    max_image_size: Option<u64>,
    /// Write no SBOM (`<name>-sbom.spdx.json`, SPDX 2.3 JSON; see docs/sbom.md).
    #[arg(long)]
    no_sbom: bool,
    /// Sign the UKI with the db key of this Secure Boot key set (`keel keys generate DIR`),
    /// for the formats that boot it: uki, raw-efi, qcow2-efi, vhd, dynamic-vhd, vmdk, aws,
    /// gcp, iso-efi. Any other format is refused. Needs sbsign (Debian's sbsigntool) and faketime.
    #[arg(long, value_name = "DIR")]
    sign_with: Option<PathBuf>,
    /// Put the root on its own read-only squashfs partition checked block by block by
    /// dm-verity, the hash tree in a second partition and the root hash on the UKI's command
    /// line (signed with --sign-with), for the EFI disk formats: raw-efi, qcow2-efi, vhd,
    /// dynamic-vhd, vmdk, aws. The kernel needs dm-verity (a module, or built in).
    #[arg(long)]
    verity: bool,
    /// With --verity: the A/B layout, room for two versions booted through systemd-boot (at the
    /// removable-media path, with loader/loader.conf; signed too with --sign-with). The ESP holds
    /// the UKI at EFI/Linux/keel-VERSION.efi and room for a second; then the root slots
    /// keel-root-a and keel-root-verity-a (this build), keel-root-b and keel-root-verity-b
    /// (empty, for the next version) and keel-data (unformatted: the system formats and mounts
    /// it).
    #[arg(long, requires = "verity")]
    ab: bool,
    /// With --ab: the version in the UKI's os-release (IMAGE_VERSION) and file name, by which
    /// systemd-boot boots the newest: up to 64 of A-Z a-z 0-9 . _ ~ ^ -.
    #[arg(long, value_name = "VERSION", requires = "ab", default_value = "1")]
    image_version: keel_formats::ImageVersion,
    /// With --ab: the size of each root slot (rounded up to a MiB), e.g. 512M; the next
    /// version's root must fit in it. Default: twice this build's root.
    #[arg(
        long,
        value_name = "SIZE",
        requires = "ab",
        value_parser = |s: &str| keel_formats::parse_size(s).map_err(|e| e.to_string())
    )]
    slot_size: Option<u64>,
    /// With --ab: the size of the keel-data partition (rounded up to a MiB), e.g. 1G. Default:
    /// 64M.
    #[arg(
        long,
        value_name = "SIZE",
        requires = "ab",
        value_parser = |s: &str| keel_formats::parse_size(s).map_err(|e| e.to_string())
    )]
    data_size: Option<u64>,
    /// Write the one output file here instead of into --dir ("-": standard output); needs
    /// exactly one -f FORMAT that writes one file (tar, iso-efi, raw-efi, qcow2-efi, ...).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// YAML files (or http(s) URLs), merged in order; "-" is standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
}

#[derive(Debug, Args)]
#[command(after_help = keel_supervisor::cli::COMMANDS)]
struct CtlArgs {
    /// Print JSON instead of tables (for logs: one object per line).
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each answer.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "10",
        value_parser = |s: &str| keel::ctl::parse_timeout(s).map_err(|e| e.to_string())
    )]
    timeout: std::time::Duration,
    /// The VM: its control socket, its state directory, or the build prefix it was booted
    /// from (PREFIX-state/ctl.sock).
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// The command and its arguments (see below).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// Architecture whose images are used for the specs. Default: the host's.
    #[arg(long)]
    arch: Option<keel_image::Arch>,
    /// Allow plain HTTP to registries that are not on loopback.
    #[arg(long)]
    insecure_registry: bool,
    /// Build and pull every image (as `keel build` does) and check each container against its
    /// image's configuration and label; a missing image is an error. Without it, nothing is
    /// built or pulled: images not in the store are listed and checked from the YAML alone.
    #[arg(long)]
    require_images: bool,
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
}

/// `keel run [BACKEND] ...`: without a backend, the platform's default (QEMU), as `linuxkit
/// run` does. A prefix that is itself named like a backend is written `./qemu`.
#[derive(Debug, Subcommand)]
enum MetadataCommand {
    /// Write an ISO 9660 volume labelled cidata holding the user data as `config` (what
    /// LinuxKit's metadata package and keel's read at boot); attach it with `--disk FILE`.
    Create {
        /// The ISO to write.
        file: PathBuf,
        /// The user data; or use --data-file.
        #[arg(conflicts_with = "data_file", required_unless_present = "data_file")]
        data: Option<String>,
        /// Read the user data from this file.
        #[arg(long, value_name = "FILE")]
        data_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    /// Boot in QEMU: a build prefix (out/minimal) or a file (.iso, .efi, disk image).
    Qemu(Box<QemuArgs>),
    /// List the VMs and clusters `keel run -d` started that still run.
    Ls {
        /// One JSON object per run.
        #[arg(long)]
        json: bool,
    },
    /// Stop what `keel run -d` started: every node of a cluster, or the one VM. Each guest is
    /// asked to power off; what still runs after --timeout is ended.
    Stop {
        /// The build prefix or state directory it was started with.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        target: Option<PathBuf>,
        /// Stop everything `keel run ls` lists.
        #[arg(long)]
        all: bool,
        /// Seconds each guest gets to power off.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Start stopped nodes of a cluster again, as `keel run qemu --nodes` started them (same
    /// options, disks, metadata and address), on its network that still runs.
    Start {
        /// The build prefix or state directory the cluster was started with.
        target: PathBuf,
        /// The node to start (1-based); repeatable. Default: every node that is not running.
        #[arg(long = "node", value_name = "I")]
        nodes: Vec<u32>,
    },
    /// The switch of a cluster's private network (started by `keel run qemu --nodes`, with the
    /// bound socket as standard input).
    #[command(hide = true)]
    Lan {
        /// MAC=ADDRESS: the address the network's DHCP server gives that MAC. Repeatable.
        #[arg(long = "lease", value_name = "MAC=ADDRESS")]
        leases: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct QemuArgs {
    /// Guest architecture. Default: the host's.
    #[arg(long)]
    arch: Option<keel_image::Arch>,
    /// Start N VMs of this build on a private network (192.168.76.0/24 from the network's own
    /// DHCP server; node I gets .(10+I) on its second NIC, eth1), in the background with -d:
    /// each with its own state directory (STATE/nodeI), disks, metadata and console
    /// (STATE/nodeI/console.log); --publish goes to node 1. See docs/cluster.md.
    #[arg(long, value_name = "N")]
    nodes: Option<u32>,
    /// I=FILE: node I's metadata, instead of --data's. Repeatable.
    #[arg(long = "node-data", value_name = "I=FILE", requires = "nodes")]
    node_data: Vec<String>,
    /// Start the VM in the background and return: the console goes to --console-file (default
    /// <state>/console.log); `keel ctl PREFIX poweroff` stops it. Without it the VM ends with
    /// keel.
    #[arg(long, short = 'd')]
    detached: bool,
    /// Accelerator: auto (KVM when a probe boot shows the guest kernel running under it, else
    /// TCG), kvm or tcg. The choice and its reason are printed on stderr.
    #[arg(long, default_value = "auto", env = "KEEL_QEMU_ACCEL")]
    accel: Accel,
    /// Memory in MB.
    #[arg(long, default_value_t = 1024)]
    mem: u32,
    /// Number of CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Attach a disk: [file=]PATH[,size=SIZE][,format=FORMAT]; created if missing. Repeatable.
    #[arg(long = "disk")]
    disks: Vec<Disk>,
    /// Forward a host port to the guest: HOST:GUEST[/tcp|/udp]. Repeatable.
    #[arg(long)]
    publish: Vec<Publish>,
    /// Add a QEMU device, as QEMU's -device takes it: DRIVER[,PROP=VALUE]..., e.g.
    /// `--device qemu-xhci --device usb-host,vendorid=0x046d,productid=0xc52b`. Repeatable.
    #[arg(long = "device", value_name = "DEV")]
    devices: Vec<Device>,
    /// Share a host directory with the guest through virtio-fs, served by virtiofsd:
    /// [path=]DIR[,tag=TAG][,readonly][,sandbox=namespace|none]. The guest mounts it with
    /// `mount -t virtiofs TAG MOUNTPOINT`; TAG defaults to virtiofsN, N counting the --virtiofs
    /// from 0 (as LinuxKit names them). Repeatable.
    #[arg(long = "virtiofs", value_name = "DIR[,tag=TAG][,readonly]")]
    shares: Vec<Share>,
    /// The virtiofsd binary for --virtiofs (default: virtiofsd from PATH, else
    /// /usr/libexec/virtiofsd).
    #[arg(long, value_name = "PATH", env = "KEEL_VIRTIOFSD")]
    virtiofsd: Option<PathBuf>,
    /// Boot with UEFI firmware.
    #[arg(long)]
    uefi: bool,
    /// Boot the prefix's ISO: PREFIX.iso, or PREFIX-efi.iso with --uefi (LinuxKit's -iso).
    #[arg(long, group = "media")]
    iso: bool,
    /// Boot the prefix's kernel+initrd (LinuxKit's -kernel; what a prefix with both boots).
    #[arg(long, group = "media")]
    kernel: bool,
    /// Boot the prefix's kernel+squashfs (LinuxKit's -squashfs).
    #[arg(long, group = "media")]
    squashfs: bool,
    /// UEFI firmware file (default: OVMF or AAVMF from Debian).
    #[arg(long)]
    fw: Option<PathBuf>,
    /// Boot a disk or ISO under UEFI with Secure Boot enforcing and the key set of --keys
    /// enrolled (PK, KEK, db): what a signed build (`keel build --sign-with`) boots and an
    /// unsigned one is refused by. Needs virt-fw-vars (Debian's python3-virt-firmware).
    #[arg(long, requires = "keys")]
    secure_boot: bool,
    /// The Secure Boot key set (`keel keys generate DIR`) to enroll with --secure-boot.
    #[arg(long, value_name = "DIR", requires = "secure_boot")]
    keys: Option<PathBuf>,
    /// Attach a TPM 2.0 emulated by swtpm (Debian's swtpm), its state kept in STATE/tpm across
    /// boots. With a UKI, PCR 11 then holds what `keel build` predicted (NAME-pcr11.json).
    #[arg(long)]
    tpm: bool,
    /// Write the console to this file instead of the terminal.
    #[arg(long)]
    console_file: Option<PathBuf>,
    /// State directory (default: PREFIX-state).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The QEMU binary (default: qemu-system-x86_64 or qemu-system-aarch64 from PATH).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Append to the kernel command line.
    #[arg(long)]
    append: Option<String>,
    /// Networking: user (default) or none.
    #[arg(long, default_value = "user")]
    networking: String,
    /// User data for the metadata package: attached as a volume labelled cidata holding a
    /// file `config` (LinuxKit's --data).
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Like --data, with the contents of FILE.
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    target: PathBuf,
    /// Extra arguments for QEMU, after "--".
    #[arg(last = true)]
    qemu_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// List the images in the store.
    Ls,
    /// Remove images from the store (and blobs nothing else uses). Nothing is removed when one
    /// of them is not in the store.
    Rm {
        #[arg(required = true, value_name = "REFERENCE")]
        references: Vec<String>,
    },
    /// Empty the store: every image, every blob and the cached Debian packages.
    Clean,
    /// Import OCI layouts, OCI archives or docker-archive tarballs.
    Import { paths: Vec<PathBuf> },
    /// Export an image as an OCI archive.
    Export {
        reference: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Pull an image into the store.
    Pull {
        reference: String,
        #[arg(long)]
        arch: Option<keel_image::Arch>,
        #[arg(long)]
        insecure_registry: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ToolsCommand {
    /// List them: pinned reference, architectures, whether the store has them, what for.
    #[command(alias = "ls")]
    List,
    /// Make them in the store from their pinned Debian packages (a build does this when it
    /// needs one); prints their references.
    Build {
        /// Which (efi-stub, isolinux, grub-cd). Default: all.
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KernelCommand {
    /// Build a kernel image from a recipe directory (e.g. kernel/debian-6.1) into the store.
    Build {
        recipe: PathBuf,
        /// Architectures to build (repeatable). Default: x86_64 and aarch64.
        #[arg(long = "arch")]
        arches: Vec<keel_image::Arch>,
        /// Never change recipe.yml: a pinned kernel that has left Debian's archive is an error.
        #[arg(long)]
        locked: bool,
        /// A source recipe only: one more configuration fragment, merged after the recipe's
        /// (repeatable). The image gets its own tag.
        #[arg(long = "config-fragment", value_name = "FILE")]
        fragments: Vec<PathBuf>,
        /// A source recipe only: one more patch, applied after the recipe's (repeatable).
        #[arg(long = "patch", value_name = "FILE")]
        patches: Vec<PathBuf>,
        /// Parallel compile jobs for a source recipe. Default: the number of CPUs.
        #[arg(long, default_value_t = 0)]
        jobs: usize,
    },
    /// Compare a kernel with the Kernel Self Protection Project's recommended settings
    /// (kernel/kspp.yml): a system YAML (its kernel's configuration, command line and
    /// sysctl files), a kernel recipe directory, a kernel image, or a .config file.
    Check {
        target: String,
        /// The architecture whose settings apply. Default: the host's.
        #[arg(long)]
        arch: Option<keel_image::Arch>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
        /// Exit with status 1 when a setting fails.
        #[arg(long)]
        strict: bool,
        /// Allow plain HTTP to registries that are not on loopback.
        #[arg(long)]
        insecure_registry: bool,
    },
    /// The configuration options that differ between two kernels (recipes, images, systems or
    /// .config files).
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        arch: Option<keel_image::Arch>,
        /// Allow plain HTTP to registries that are not on loopback.
        #[arg(long)]
        insecure_registry: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_default_backend(std::env::args_os().collect()));
    let level = log_level(cli.quiet, cli.verbose);
    let logger = env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .format_target(false)
        .parse_env("KEEL_LOG")
        .build();
    log::set_max_level(logger.filter());
    // Cannot fail: no logger was set before.
    let _ = log::set_boxed_logger(Box::new(keel::progress::Logger(logger)));
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("keel: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log level of -q and -v (KEEL_LOG overrides it).
fn log_level(quiet: bool, verbose: u8) -> log::LevelFilter {
    match (quiet, verbose) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    }
}

/// The git commit keel was built from: set `KEEL_GIT_COMMIT` when building to record it.
const GIT_COMMIT: Option<&str> = option_env!("KEEL_GIT_COMMIT");

/// `keel version`, like `linuxkit version`.
fn version_text(short: bool, commit: bool) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let git = GIT_COMMIT.filter(|c| !c.is_empty());
    if short {
        return format!("{version}\n");
    }
    if commit {
        return format!("{}\n", git.unwrap_or_default());
    }
    let mut text = format!("keel version {version}\n");
    if let Some(git) = git {
        text += &format!("commit: {git}\n");
    }
    text += &format!(
        "platform: {}-{}\n",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    text
}

/// `keel completion SHELL`.
fn completion(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "keel", out);
}

/// How registries are reached: `--insecure-registry` and the mirrors of `LINUXKIT_MIRROR`,
/// `KEEL_MIRROR` and `--mirror`, in that order (a later mirror for a registry wins).
fn registry(flags: &[keel_image::Mirror], insecure: bool) -> Result<keel_image::PullOptions> {
    let mut mirrors = Vec::new();
    for var in ["LINUXKIT_MIRROR", "KEEL_MIRROR"] {
        if let Ok(list) = std::env::var(var) {
            mirrors.extend(
                keel_image::Mirrors::parse_list(&list).with_context(|| format!("in {var}"))?,
            );
        }
    }
    mirrors.extend(flags.iter().cloned());
    Ok(keel_image::PullOptions {
        insecure,
        mirrors: keel_image::Mirrors::new(mirrors),
        ..keel_image::PullOptions::default()
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Only the commands that use the store need to find it (`keel ctl` and `run` do not).
    let open_store = || -> Result<keel_image::Store> {
        let store_path = match &cli.cache {
            Some(path) => path.clone(),
            None => keel_image::Store::default_path()?,
        };
        keel_image::Store::open(&store_path)
            .with_context(|| format!("cannot open image store {}", store_path.display()))
    };
    let mirrors = cli.mirrors;
    match cli.command {
        Command::Build(args) => {
            keel::remove_unfinished_outputs_on_termination()
                .context("cannot handle termination signals")?;
            // -o: build into a private directory beside the destination (the same
            // filesystem, so the final rename is atomic), then move the one file.
            let scratch = match &args.output {
                None => None,
                Some(output) => Some(output_scratch(output, &args.formats)?),
            };
            let opts = BuildOptions {
                files: args.files,
                formats: args.formats,
                dir: scratch
                    .as_ref()
                    .map_or(args.dir, |d| d.path().to_path_buf()),
                name: args.name,
                arch: args.arch.unwrap_or_else(keel_image::Arch::host),
                size: args.size,
                dry_run: args.dry_run,
                pull: args.pull,
                locked: args.locked,
                registry: registry(&mirrors, args.insecure_registry)?,
                max_image_size: args
                    .max_image_size
                    .unwrap_or(keel_rootfs::DEFAULT_MAX_IMAGE_SIZE),
                // -o writes one file: the SBOM would have nowhere to go.
                sbom: !args.no_sbom && args.output.is_none(),
                decompress_kernel: args.decompress_kernel,
                initrd_compression: args.initrd_compression,
                input_tar: args.input_tar,
                sign_with: args
                    .sign_with
                    .as_deref()
                    .map(keel::keys::KeySet::open)
                    .transpose()?,
                pcr_file: args.output.is_none(),
                root: match (args.verity, args.ab) {
                    (false, _) => keel::output::RootLayout::Initramfs,
                    (true, false) => keel::output::RootLayout::Verity,
                    (true, true) => keel::output::RootLayout::Ab(keel::output::AbSettings {
                        version: args.image_version,
                        slot_size: args.slot_size,
                        data_size: args.data_size,
                    }),
                },
            };
            let written = keel::build::build(&open_store()?, &opts)?;
            if let (Some(output), Some(_scratch)) = (&args.output, &scratch) {
                deliver(&written, output)?;
            }
        }
        Command::Update(args) => {
            if args.keys.is_none() {
                log::warn!(
                    "no --keys: the new version's signature is not checked (its root still is, against its own command line)"
                );
            }
            let updated = keel::update::update(&args.disk, &args.to, args.keys.as_deref())?;
            println!(
                "{}: slot {} now holds version {} (root hash {}); systemd-boot boots it next, slot {} keeps version {}",
                args.disk.display(),
                updated.slot,
                updated.version,
                hex::encode(updated.root_hash),
                if updated.slot == 'a' { 'b' } else { 'a' },
                updated.previous
            );
        }
        Command::Verify(args) => {
            let opts = keel::verify::VerifyOptions {
                artifact: args.artifact,
                files: args.files,
                arch: args.arch,
                keys: args.keys,
                initrd_compression: args.initrd_compression,
                registry: registry(&mirrors, args.insecure_registry)?,
            };
            let verified = keel::verify::verify(&open_store()?, &opts)?;
            println!(
                "ok: {} ({})",
                opts.artifact.display(),
                verified.arch.uname()
            );
            match (&verified.signed_by, verified.signed) {
                (Some(cert), _) => println!("  signed: verified with {}", cert.display()),
                (None, true) => println!("  signed: not checked (no --keys)"),
                (None, false) => println!("  signed: no"),
            }
            println!(
                "  built from {} with the images its lock file pins: identical",
                opts.files.join(" ")
            );
            if verified.ab {
                println!(
                    "  A/B disk: systemd-boot and the UKI in EFI/Linux are the ones the YAML builds"
                );
            }
            if verified.verity {
                println!(
                    "  verified root: the root and hash-tree partitions are the ones the YAML builds, their root hash on the UKI's command line"
                );
            }
            println!("  PCR 11 (sha256): {}", hex::encode(verified.pcr11));
        }
        Command::Keys(KeysCommand::Generate { dir, name }) => {
            let keys = keel::keys::KeySet::generate(&dir, &name)?;
            println!("{}", keys.dir().display());
        }
        Command::Validate(args) => {
            let validation = keel::build::validate(
                &open_store()?,
                &args.files,
                args.arch.unwrap_or_else(keel_image::Arch::host),
                &registry(&mirrors, args.insecure_registry)?,
                args.require_images,
            )?;
            print!("{}", validation.text);
            if !validation.skipped.is_empty() {
                log::warn!(
                    "not in the store, so checked from the YAML alone (not against the image's configuration and org.mobyproject.config label): {}; `keel validate --require-images` builds and pulls them",
                    validation.skipped.join(", ")
                );
            }
        }
        Command::Run(RunCommand::Qemu(qemu)) => return run_qemu(*qemu),
        Command::Run(RunCommand::Ls { json }) => run_ls(json)?,
        Command::Run(RunCommand::Stop {
            target,
            all,
            timeout,
        }) => {
            let states = match target {
                Some(target) => vec![keel::cluster::state_of(&target)],
                None if all => keel::cluster::list().into_iter().map(|r| r.state).collect(),
                None => Vec::new(),
            };
            for state in states {
                let stopped = keel::cluster::stop(&state, Duration::from_secs(timeout))?;
                eprintln!("keel: stopped {stopped} VM(s) in {}", state.display());
            }
        }
        Command::Run(RunCommand::Lan { leases }) => run_lan(&leases)?,
        Command::Run(RunCommand::Start { target, nodes }) => run_start(&target, &nodes)?,
        Command::Cache(cmd) => keel::cache::run(&open_store()?, cache_command(cmd, &mirrors)?)?,
        Command::Pkg(PkgCommand::Build {
            dir,
            arches,
            update_lock,
            locked,
            force,
        }) => {
            let opts = keel_pkg::PkgOptions {
                arches: (!arches.is_empty()).then_some(arches),
                update_lock,
                locked,
                force,
                ..keel_pkg::PkgOptions::default()
            };
            let reference = keel::pkg::build(&open_store()?, &dir, opts)?;
            println!("{reference}");
        }
        Command::Push {
            image,
            destination,
            insecure_registry,
        } => {
            let source: keel_image::Reference = image.parse()?;
            let dest: keel_image::Reference = match destination {
                Some(d) => d.parse()?,
                None => source.clone(),
            };
            let options = keel_image::PullOptions {
                insecure: insecure_registry,
                ..Default::default()
            };
            let desc = open_store()?.push(&source, &dest, &options)?;
            println!("{dest}@{}", desc.digest());
        }
        Command::Pkg(PkgCommand::UpdateLock { dirs }) => {
            let store = open_store()?;
            for dir in &dirs {
                let changes = keel::pkg::update_lock(&store, dir)
                    .with_context(|| format!("cannot update the pins of {}", dir.display()))?;
                if changes.is_empty() {
                    println!("{}: up to date", dir.display());
                }
                for change in changes {
                    println!("{}: {change}", dir.display());
                }
            }
        }
        Command::Pkg(PkgCommand::ShowTag { dir, arches }) => {
            let opts = keel_pkg::PkgOptions {
                arches: (!arches.is_empty()).then_some(arches),
                ..keel_pkg::PkgOptions::default()
            };
            println!("{}", keel::pkg::build_tag(&open_store()?, &dir, opts)?);
        }
        Command::Tools(ToolsCommand::List) => print!("{}", keel::tools::list(&open_store()?)),
        Command::Tools(ToolsCommand::Build { names }) => {
            let tools = if names.is_empty() {
                keel::tools::ALL.to_vec()
            } else {
                names
                    .iter()
                    .map(|n| keel::tools::find(n))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let store = open_store()?;
            for tool in tools {
                println!("{}", tool.ensure(&store)?);
            }
        }
        Command::Kernel(KernelCommand::Build {
            recipe,
            arches,
            locked,
            fragments,
            patches,
            jobs,
        }) => {
            let arches = if arches.is_empty() {
                vec![keel_image::Arch::X86_64, keel_image::Arch::Aarch64]
            } else {
                arches
            };
            let variant = keel::kernel::Variant {
                fragments,
                patches,
                jobs,
                signing_key: None,
            };
            let reference =
                keel::kernel::build_variant(&open_store()?, &recipe, &arches, locked, &variant)?;
            println!("{reference}");
        }
        Command::Kernel(KernelCommand::Check {
            target,
            arch,
            json,
            strict,
            insecure_registry,
        }) => {
            let arch = arch.unwrap_or_else(keel_image::Arch::host);
            let registry = registry(&mirrors, insecure_registry)?;
            let checked = keel::hardening::inspect(&open_store()?, &target, arch, &registry)?;
            let findings = keel::hardening::check(&checked, arch)?;
            if json {
                print!("{}", keel::hardening::render_json(&checked, &findings));
            } else {
                print!("{}", keel::hardening::render(&checked, &findings));
            }
            let failed = findings
                .iter()
                .any(|f| f.verdict == keel_kernel::kspp::Verdict::Fail);
            if strict && failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Kernel(KernelCommand::Diff {
            a,
            b,
            arch,
            insecure_registry,
        }) => {
            let arch = arch.unwrap_or_else(keel_image::Arch::host);
            let registry = registry(&mirrors, insecure_registry)?;
            let store = open_store()?;
            let first = keel::hardening::inspect(&store, &a, arch, &registry)?;
            let second = keel::hardening::inspect(&store, &b, arch, &registry)?;
            for change in first.config.diff(&second.config) {
                println!("{change}");
            }
        }
        Command::Ctl(args) => return ctl(&args),
        Command::Version { short, commit } => print!("{}", version_text(short, commit)),
        Command::Completion { shell } => completion(shell, &mut std::io::stdout().lock()),
        Command::Metadata(MetadataCommand::Create {
            file,
            data,
            data_file,
        }) => {
            let data = match (data, data_file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("cannot read --data-file {}", path.display()))?,
                (None, None) => anyhow::bail!("keel metadata create needs DATA or --data-file"),
            };
            keel::run::write_metadata_iso(&file, &data)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The backends `keel run` knows (LinuxKit's word for them), and its other verbs.
const RUN_BACKENDS: &[&str] = &["qemu", "ls", "stop", "start", "lan"];

/// `keel run PREFIX` means `keel run qemu PREFIX`, as `linuxkit run` picks the platform's
/// default backend: inserts `qemu` after `run` when what follows is not a backend or a request
/// for help. Done on the words, before parsing, so that no environment variable (which clap
/// counts as a given argument) changes what a command line means.
fn with_default_backend(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    // The first word that is not a global option (or the value of --cache) is the command.
    let mut i = 1;
    while let Some(word) = args.get(i).and_then(|w| w.to_str()) {
        if word == "--cache" || word == "--mirror" {
            i += 2;
        } else if word.starts_with('-') && word != "-" {
            i += 1;
        } else {
            break;
        }
    }
    if args.get(i).and_then(|w| w.to_str()) != Some("run") {
        return args;
    }
    let next = args.get(i + 1).and_then(|w| w.to_str());
    let explicit =
        next.is_some_and(|w| RUN_BACKENDS.contains(&w) || matches!(w, "help" | "-h" | "--help"));
    if next.is_some() && !explicit {
        args.insert(i + 1, "qemu".into());
    }
    args
}

/// The private directory a `-o FILE` build writes into: beside FILE, or in the temporary
/// directory for `-o -`. Refuses formats that do not write exactly one file.
fn output_scratch(output: &Path, formats: &[Format]) -> Result<tempfile::TempDir> {
    let one_file = matches!(formats, [format] if format.files("x").len() == 1);
    if !one_file {
        anyhow::bail!(
            "-o {} needs exactly one -f FORMAT that writes one file (e.g. -f tar, -f iso-efi, -f raw-efi); kernel+initrd writes three: use --dir",
            output.display()
        );
    }
    let parent = if output == Path::new("-") {
        std::env::temp_dir()
    } else {
        match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    tempfile::Builder::new()
        .prefix(".keel-build-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot make a build directory in {}", parent.display()))
}

/// Moves a `-o` build's one file to `output` (or copies it to standard output for `-`).
fn deliver(written: &[PathBuf], output: &Path) -> Result<()> {
    let [file] = written else {
        anyhow::bail!("the build wrote {} files; -o takes one", written.len());
    };
    if output == Path::new("-") {
        let mut from =
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut stdout = std::io::stdout().lock();
        std::io::copy(&mut from, &mut stdout).context("cannot write to standard output")?;
        return Ok(());
    }
    std::fs::rename(file, output)
        .with_context(|| format!("cannot move the output to {}", output.display()))
}

/// `keel run qemu` (and `keel run` without a backend).
/// What `keel run qemu`'s arguments ask for.
struct QemuPlan {
    opts: RunOptions,
    data: Option<Vec<u8>>,
    nodes: Option<u32>,
    node_data: Vec<String>,
    detached: bool,
}

fn qemu_plan(args: QemuArgs) -> Result<QemuPlan> {
    let detached = args.detached;
    let (nodes, node_data) = (args.nodes, args.node_data);
    let data = match (args.data, &args.data_file) {
        (Some(text), _) => Some(text.into_bytes()),
        (None, Some(file)) => Some(
            std::fs::read(file)
                .with_context(|| format!("cannot read --data-file {}", file.display()))?,
        ),
        (None, None) => None,
    };
    let opts = RunOptions {
        target: args.target,
        media: if args.iso {
            Some(keel::run::Media::Iso)
        } else if args.squashfs {
            Some(keel::run::Media::KernelSquashfs)
        } else if args.kernel {
            Some(keel::run::Media::KernelInitrd)
        } else {
            None
        },
        arch: args.arch.unwrap_or_else(keel_image::Arch::host),
        accel: args.accel,
        mem_mb: args.mem,
        cpus: args.cpus,
        disks: args.disks,
        publish: args.publish,
        uefi: args.uefi,
        firmware: args.fw,
        secure_boot: match (&args.keys, args.secure_boot) {
            (Some(dir), true) => Some(keel::keys::KeySet::open(dir)?),
            _ => None,
        },
        tpm: args.tpm,
        console_file: args.console_file,
        state: args.state,
        qemu: args.qemu,
        append: args.append,
        networking: match args.networking.as_str() {
            "user" => true,
            "none" => false,
            other => anyhow::bail!("invalid --networking {other:?}: expected user or none"),
        },
        devices: args.devices,
        shares: args.shares,
        virtiofsd: args.virtiofsd,
        lan: None,
        extra: args.qemu_args,
    };
    Ok(QemuPlan {
        opts,
        data,
        nodes,
        node_data,
        detached,
    })
}

/// A cluster's options from its plan (`--node-data` files read).
fn cluster_options(
    plan: QemuPlan,
    nodes: u32,
    invocation: Option<keel::cluster::Invocation>,
) -> Result<keel::cluster::Options> {
    let mut by_node = std::collections::BTreeMap::new();
    for spec in &plan.node_data {
        let (node, file) = spec
            .split_once('=')
            .and_then(|(n, f)| Some((n.parse::<u32>().ok()?, f)))
            .with_context(|| format!("invalid --node-data {spec:?}: expected I=FILE"))?;
        let bytes = std::fs::read(file)
            .with_context(|| format!("cannot read --node-data {node}={file}"))?;
        by_node.insert(node, bytes);
    }
    Ok(keel::cluster::Options {
        run: plan.opts,
        nodes,
        data: plan.data,
        node_data: by_node,
        keel: std::env::current_exe().context("cannot find the keel binary")?,
        invocation,
    })
}

fn run_qemu(args: QemuArgs) -> Result<ExitCode> {
    let plan = qemu_plan(args)?;
    let detached = plan.detached;
    if let Some(nodes) = plan.nodes {
        let invocation = keel::cluster::Invocation {
            args: std::env::args().skip(1).collect(),
            cwd: std::env::current_dir().context("cannot read the current directory")?,
        };
        let cluster = cluster_options(plan, nodes, Some(invocation))?;
        let record = keel::cluster::start(&cluster)?;
        for node in &record.nodes {
            eprintln!(
                "keel: {} {} (pid {}): console {}; keel ctl {}",
                node.name,
                node.addr,
                node.pid,
                node.console.display(),
                node.state.display()
            );
        }
        if detached {
            eprintln!(
                "keel: {} node(s) started in the background; stop them with keel run stop {}",
                record.nodes.len(),
                record.state.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("keel: ctrl-c stops every node");
        keel::cluster::wait(&record, Duration::from_secs(30))?;
        return Ok(ExitCode::SUCCESS);
    }
    let QemuPlan { mut opts, data, .. } = plan;
    if let Some(data) = data {
        let drive = keel::run::data_volume(&keel::run::state_dir(&opts), &data)?;
        opts.extra.splice(0..0, drive);
    }
    if detached {
        let vm = keel::run::run_detached(&opts)?;
        keel::cluster::note_run(&vm.state);
        println!("{}", vm.pid);
        eprintln!(
            "keel: started in the background (pid {}); console: {}; stop it with keel ctl {} poweroff",
            vm.pid,
            vm.console.display(),
            vm.state.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let code = keel::run::run(&opts)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `keel run start`: the cluster's recorded command parsed again, in the directory it ran in,
/// and the nodes started with those options.
fn run_start(target: &Path, nodes: &[u32]) -> Result<()> {
    let state = keel::cluster::state_of(target);
    let record = keel::cluster::read_record(&state)?;
    let invocation = record
        .invocation
        .clone()
        .ok_or_else(|| keel::cluster::Error::NoInvocation(state.clone()))?;
    std::env::set_current_dir(&invocation.cwd).with_context(|| {
        format!(
            "cannot enter {}, where the cluster was started",
            invocation.cwd.display()
        )
    })?;
    let words = std::iter::once("keel".to_owned())
        .chain(invocation.args.clone())
        .map(std::ffi::OsString::from)
        .collect();
    let cli = Cli::try_parse_from(with_default_backend(words))
        .context("cannot parse the cluster's recorded command again")?;
    let Command::Run(RunCommand::Qemu(args)) = cli.command else {
        anyhow::bail!("the cluster's recorded command is not keel run qemu");
    };
    let plan = qemu_plan(*args)?;
    let count = plan.nodes.unwrap_or(1);
    let opts = cluster_options(plan, count, Some(invocation))?;
    let started = keel::cluster::restart(&opts, &record.state, nodes)?;
    if started.is_empty() {
        eprintln!("keel: every node of {} is running", record.state.display());
    }
    for node in started {
        let record = keel::cluster::read_record(&record.state)?;
        let n = &record.nodes[usize::try_from(node - 1).unwrap_or(0)];
        eprintln!(
            "keel: {} {} (pid {}) started again: console {}; keel ctl {}",
            n.name,
            n.addr,
            n.pid,
            n.console.display(),
            n.state.display()
        );
    }
    Ok(())
}

/// `keel run ls`.
fn run_ls(json: bool) -> Result<()> {
    let runs = keel::cluster::list();
    let mut out = std::io::stdout().lock();
    if json {
        for run in &runs {
            serde_json::to_writer(&mut out, run).context("cannot write to standard output")?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(out, "{:<48} {:<7} ADDRESSES", "STATE", "NODES")?;
    for run in &runs {
        let addrs: Vec<String> = run.addrs.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "{:<48} {:<7} {}",
            run.state.display(),
            format!("{}/{}", run.running, run.nodes),
            if addrs.is_empty() {
                "-".to_owned()
            } else {
                addrs.join(" ")
            }
        )?;
    }
    Ok(())
}

/// `keel run lan`: the switch of a cluster's network, on the socket it was handed as its
/// standard input, until the last node has gone.
fn run_lan(leases: &[String]) -> Result<()> {
    let mut server = keel::cluster::network(0);
    for lease in leases {
        let (mac, addr) = lease
            .split_once('=')
            .with_context(|| format!("invalid --lease {lease:?}: expected MAC=ADDRESS"))?;
        let mac = mac
            .parse()
            .with_context(|| format!("invalid --lease {lease:?}"))?;
        let addr = addr.parse().with_context(|| {
            format!("invalid --lease {lease:?}: {addr:?} is not an IPv4 address")
        })?;
        server.leases.insert(mac, addr);
    }
    let listener = keel::lan::listener_from_stdin().context(
        "standard input is not a listening socket: `keel run lan` is started by `keel run qemu --nodes`",
    )?;
    keel::lan::Switch::new(listener, server)?.serve()?;
    Ok(())
}

/// `keel ctl`: needs no image store.
fn ctl(args: &CtlArgs) -> Result<ExitCode> {
    let mut opts = keel::ctl::Options::parse(&args.command, args.json, args.timeout)?;
    opts.terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let code = keel::ctl::run(&args.target, &opts, &mut std::io::stdout().lock())?;
    Ok(ExitCode::from(code))
}

fn cache_command(
    cmd: CacheCommand,
    mirrors: &[keel_image::Mirror],
) -> Result<keel::cache::Command> {
    use keel::cache::Command as C;
    Ok(match cmd {
        CacheCommand::Ls => C::List,
        CacheCommand::Rm { references } => C::Remove(references),
        CacheCommand::Clean => C::Clean,
        CacheCommand::Import { paths } => C::Import(paths),
        CacheCommand::Export { reference, output } => C::Export { reference, output },
        CacheCommand::Pull {
            reference,
            arch,
            insecure_registry,
        } => C::Pull {
            reference,
            arch: arch.unwrap_or_else(keel_image::Arch::host),
            registry: registry(mirrors, insecure_registry)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl_args(args: &[&str]) -> CtlArgs {
        let cli = Cli::try_parse_from(["keel", "ctl"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Ctl(args) => args,
            other => panic!("{other:?}"),
        }
    }

    /// The words as `main` parses them (after [`with_default_backend`]).
    fn words(args: &[&str]) -> Vec<std::ffi::OsString> {
        with_default_backend(
            std::iter::once("keel")
                .chain(args.iter().copied())
                .map(Into::into)
                .collect(),
        )
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(words(args)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(args: &[&str]) -> clap::Error {
        Cli::try_parse_from(words(args)).unwrap_err()
    }

    /// The QEMU arguments `keel run ARGS` boots with, whichever form it is written in.
    fn qemu_args(args: &[&str]) -> QemuArgs {
        let Command::Run(RunCommand::Qemu(q)) = parse(args).command else {
            panic!("{args:?}")
        };
        *q
    }

    #[test]
    fn run_without_a_backend_is_run_qemu() {
        for args in [&["run", "out/minimal"][..], &["run", "qemu", "out/minimal"]] {
            let q = qemu_args(args);
            assert_eq!(q.target, PathBuf::from("out/minimal"), "{args:?}");
            assert_eq!((q.mem, q.cpus), (1024, 1), "{args:?}");
        }
        let q = qemu_args(&[
            "run", "--mem", "512", "--cpus", "2", "--uefi", "out/x", "--", "-s", "-S",
        ]);
        assert_eq!((q.mem, q.cpus, q.uefi), (512, 2, true));
        assert_eq!(q.target, PathBuf::from("out/x"));
        assert_eq!(q.qemu_args, ["-s", "-S"]);
        let q = qemu_args(&[
            "run",
            "qemu",
            "--disk",
            "d.img,size=1G",
            "out/x",
            "--",
            "-s",
        ]);
        assert_eq!(q.disks.len(), 1);
        assert_eq!(q.qemu_args, ["-s"]);
        // LinuxKit's --virtiofs and --device, repeatable, before the prefix.
        let q = qemu_args(&[
            "run",
            "--virtiofs",
            "/srv",
            "--device",
            "qemu-xhci",
            "--virtiofs",
            "data,tag=d,readonly",
            "--device",
            "usb-host,hostbus=1,hostaddr=2",
            "out/x",
        ]);
        assert_eq!(q.target, PathBuf::from("out/x"));
        let tags: Vec<_> = q.shares.iter().map(|s| s.tag.as_deref()).collect();
        assert_eq!(tags, [None, Some("d")]);
        let devices: Vec<_> = q.devices.iter().map(Device::as_str).collect();
        assert_eq!(devices, ["qemu-xhci", "usb-host,hostbus=1,hostaddr=2"]);
        let err = parse_err(&["run", "--device=-drive,file=x", "out/x"]);
        assert!(err.to_string().contains("invalid --device"), "{err}");
        // LinuxKit's -iso / -kernel / -squashfs choose one output; only one of them.
        let q = qemu_args(&["run", "--iso", "--uefi", "out/x"]);
        assert!(q.iso && q.uefi && !q.kernel && !q.squashfs);
        let err = parse_err(&["run", "--iso", "--squashfs", "out/x"]);
        assert!(err.to_string().contains("cannot be used with"), "{err}");
        // A global --mirror's value is not taken for the command.
        let q = qemu_args(&["--mirror", "https://m.example", "run", "out/x"]);
        assert_eq!(q.target, PathBuf::from("out/x"));
        // The backend is inserted only where none is written, after any global options.
        let shown = |args: &[&str]| -> Vec<String> {
            words(args)
                .iter()
                .map(|w| w.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(shown(&["run", "out/x"]), ["keel", "run", "qemu", "out/x"]);
        assert_eq!(
            shown(&["run", "qemu", "out/x"]),
            ["keel", "run", "qemu", "out/x"]
        );
        assert_eq!(
            shown(&["--cache", "run", "-v", "run", "--mem", "9", "x"]),
            [
                "keel", "--cache", "run", "-v", "run", "qemu", "--mem", "9", "x"
            ]
        );
        assert_eq!(shown(&["run", "--help"]), ["keel", "run", "--help"]);
        assert_eq!(shown(&["build", "run"]), ["keel", "build", "run"]);
        // A prefix named like the backend is written as a path.
        assert_eq!(
            qemu_args(&["run", "./qemu"]).target,
            PathBuf::from("./qemu")
        );
        // Nothing to boot is an error.
        parse_err(&["run"]);
        parse_err(&["run", "qemu"]);
        parse_err(&["run", "out/x", "out/y"]);
        parse_err(&["run", "--data", "a", "--data-file", "b", "x"]);
    }

    #[test]
    fn quiet_means_warnings() {
        let cli = parse(&["-q", "cache", "ls"]);
        assert!(cli.quiet);
        assert_eq!(log_level(cli.quiet, cli.verbose), log::LevelFilter::Warn);
        let cli = parse(&["cache", "ls", "--quiet"]);
        assert_eq!(log_level(cli.quiet, cli.verbose), log::LevelFilter::Warn);
        let cli = parse(&["cache", "ls"]);
        assert_eq!(log_level(cli.quiet, cli.verbose), log::LevelFilter::Info);
        let cli = parse(&["-vv", "cache", "ls"]);
        assert_eq!(log_level(cli.quiet, cli.verbose), log::LevelFilter::Trace);
        assert!(Cli::try_parse_from(["keel", "-q", "-v", "cache", "ls"]).is_err());
    }

    #[test]
    fn version_is_linuxkits_format() {
        assert!(matches!(
            parse(&["version"]).command,
            Command::Version {
                short: false,
                commit: false
            }
        ));
        let long = version_text(false, false);
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            long.starts_with(&format!("keel version {version}\n")),
            "{long}"
        );
        assert!(
            long.ends_with(&format!(
                "platform: {}-{}\n",
                std::env::consts::ARCH,
                std::env::consts::OS
            )),
            "{long}"
        );
        assert_eq!(
            long.contains("commit: "),
            GIT_COMMIT.is_some_and(|c| !c.is_empty())
        );
        assert_eq!(version_text(true, false), format!("{version}\n"));
        assert_eq!(
            version_text(false, true),
            format!("{}\n", GIT_COMMIT.unwrap_or_default())
        );
        assert!(Cli::try_parse_from(["keel", "version", "--short", "--commit"]).is_err());
        // `keel --version` is clap's: "keel VERSION".
        let e = Cli::try_parse_from(["keel", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(e.to_string(), format!("keel {version}\n"));
    }

    #[test]
    fn completion_scripts_cover_the_commands() {
        for (shell, marker) in [
            ("bash", "complete -F _keel"),
            ("zsh", "#compdef keel"),
            ("fish", "complete -c keel"),
        ] {
            let Command::Completion { shell: parsed } = parse(&["completion", shell]).command
            else {
                panic!("{shell}");
            };
            let mut out = Vec::new();
            completion(parsed, &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains(marker), "{shell}: {script}");
            for word in [
                "build",
                "run",
                "cache",
                "clean",
                "show-tag",
                "completion",
                "quiet",
            ] {
                assert!(script.contains(word), "{shell} lacks {word}");
            }
        }
        assert!(Cli::try_parse_from(["keel", "completion", "tcsh"]).is_err());
        assert!(Cli::try_parse_from(["keel", "completion"]).is_err());
    }

    #[test]
    fn cache_and_pkg_commands_parse() {
        assert!(matches!(
            parse(&["cache", "clean"]).command,
            Command::Cache(CacheCommand::Clean)
        ));
        let Command::Cache(CacheCommand::Rm { references }) =
            parse(&["cache", "rm", "a:1", "b:2"]).command
        else {
            panic!()
        };
        assert_eq!(references, ["a:1", "b:2"]);
        assert!(Cli::try_parse_from(["keel", "cache", "rm"]).is_err());
        let Command::Pkg(PkgCommand::ShowTag { dir, arches }) =
            parse(&["pkg", "show-tag", "--arch", "x86_64", "pkg/init"]).command
        else {
            panic!()
        };
        assert_eq!(dir, PathBuf::from("pkg/init"));
        assert_eq!(arches, [keel_image::Arch::X86_64]);
    }

    #[test]
    fn ctl_takes_the_words_after_the_target() {
        let a = ctl_args(&[
            "--json",
            "--timeout",
            "2.5",
            "out/minimal",
            "logs",
            "-f",
            "web",
        ]);
        assert!(a.json);
        assert_eq!(a.timeout, std::time::Duration::from_millis(2500));
        assert_eq!(a.target, PathBuf::from("out/minimal"));
        assert_eq!(a.command, ["logs", "-f", "web"]);
        let a = ctl_args(&["vm.sock", "exec", "web", "ls", "-l", "--json", "-v"]);
        assert!(!a.json);
        assert_eq!(a.timeout, keel::ctl::DEFAULT_TIMEOUT);
        assert_eq!(a.command, ["exec", "web", "ls", "-l", "--json", "-v"]);
        assert!(Cli::try_parse_from(["keel", "ctl", "out/minimal"]).is_err());
        assert!(Cli::try_parse_from(["keel", "ctl", "--timeout", "0", "x", "list"]).is_err());
    }
}
