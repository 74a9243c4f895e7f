//! Output formats (issue 6): each disk, ISO and EFI format of `images/minimal.yml` boots under
//! the firmware a user would use (SeaBIOS for BIOS formats, OVMF on x86_64 and AAVMF on
//! aarch64 for EFI ones) and reaches the system's services; `qemu-img` accepts the disk
//! containers; every format is byte-identical when built again with another time zone, umask
//! and working directory.

use keel::build::Format;
use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build_formats, chain, keel_bin, lock_store, store_path, workspace};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Under TCG, firmware plus kernel plus the first container.
const DEADLINE: Duration = Duration::from_secs(300);

fn minimal() -> PathBuf {
    workspace().join("images/minimal.yml")
}

/// Boots `file` and waits for the `status` service's `keelctl list` to show itself running.
fn boots_to_services(name: &str, file: &Path, arch: Arch) {
    let mut vm = Vm::boot(
        name,
        file,
        &Boot {
            mem_mb: 512,
            ..Boot::new(arch)
        },
    );
    let console = vm.wait_for("status| status", DEADLINE);
    let line = console
        .lines()
        .find(|l| l.starts_with("status| status"))
        .unwrap_or_default();
    assert!(line.contains("running"), "{name}: {line}");
}

/// How [`boots_with`] attaches the image.
#[derive(Debug, Clone, Copy)]
enum Media {
    Cdrom,
    /// A virtio disk of this QEMU format.
    Disk(&'static str),
}

/// A QEMU guest started by [`boots_with`], killed when dropped.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `file` with the firmware chosen here rather than guessed from the file name
/// (`keel run` boots every disk under UEFI and x86_64 ISOs under BIOS): SeaBIOS, QEMU's
/// default, when `uefi` is false, else OVMF / AAVMF. Waits like [`boots_to_services`].
fn boots_with(name: &str, file: &Path, arch: Arch, uefi: bool, media: Media) {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let (qemu, machine, code, vars) = match arch {
        Arch::X86_64 => (
            "qemu-system-x86_64",
            &["-machine", "q35"][..],
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        Arch::Aarch64 => (
            "qemu-system-aarch64",
            &["-machine", "virt", "-cpu", "cortex-a57"][..],
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
        ),
    };
    let mut cmd = Command::new(qemu);
    cmd.args(machine)
        .args(["-accel", "tcg", "-m", "512", "-nographic", "-no-reboot"])
        .args(["-monitor", "none", "-device", "virtio-rng-pci", "-serial"])
        .arg(format!("file:{}", console.display()));
    if uefi {
        let copy = dir.path().join("vars.fd");
        std::fs::copy(vars, &copy).unwrap_or_else(|e| panic!("{vars}: {e} (run scripts/setup.sh)"));
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                copy.display()
            ));
    }
    match media {
        Media::Cdrom => cmd.arg("-cdrom").arg(file),
        Media::Disk(format) => cmd
            .arg("-drive")
            .arg(format!("file={},format={format},if=virtio", file.display())),
    };
    let mut guest = Guest(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {qemu} (run scripts/setup.sh): {e}")),
    );
    let start = Instant::now();
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with("status| status")) {
            assert!(line.contains("running"), "{name}: {line}");
            return;
        }
        let stopped = matches!(guest.0.try_wait(), Ok(Some(_)));
        if stopped || start.elapsed() > DEADLINE {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!("{name}: no running status service (stopped: {stopped})\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn qemu_img(args: &[&str], file: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run qemu-img ({e}): run scripts/setup.sh"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "qemu-img {args:?} {}: {text}",
        file.display()
    );
    text
}

fn build(arch: Arch, formats: &[Format]) -> keel_vmtests::Built {
    build_formats(&[&minimal()], arch, formats).unwrap_or_else(|e| panic!("{}", chain(&e)))
}

fn with(prefix: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", prefix.display()))
}

#[test]
fn x86_64_disk_and_efi_formats_boot_under_ovmf() {
    let arch = Arch::X86_64;
    let built = build(
        arch,
        &[
            Format::Uki,
            Format::RawEfi,
            Format::Qcow2Efi,
            Format::Vhd,
            Format::Vmdk,
        ],
    );
    let p = &built.prefix;

    let info = qemu_img(&["info", "--output=json"], &with(p, "-efi.qcow2"));
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    let raw_size = std::fs::metadata(with(p, "-efi.img")).unwrap().len();
    assert!(
        info.contains(&format!("\"virtual-size\": {raw_size}")),
        "{info}"
    );
    qemu_img(&["check"], &with(p, "-efi.qcow2"));
    qemu_img(&["check"], &with(p, ".vmdk"));
    let info = qemu_img(&["info", "--output=json", "-f", "vpc"], &with(p, ".vhd"));
    assert!(
        info.contains(&format!("\"virtual-size\": {raw_size}")),
        "{info}"
    );

    std::thread::scope(|s| {
        s.spawn(|| boots_to_services("raw-efi x86_64", &with(p, "-efi.img"), arch));
        s.spawn(|| boots_to_services("qcow2-efi x86_64", &with(p, "-efi.qcow2"), arch));
    });
    std::thread::scope(|s| {
        s.spawn(|| boots_to_services("vhd x86_64", &with(p, ".vhd"), arch));
        s.spawn(|| boots_to_services("uki x86_64", &with(p, ".efi"), arch));
    });
    boots_to_services("vmdk x86_64", &with(p, ".vmdk"), arch);
}

/// `kernel+squashfs`: the loader initramfs mounts the squashfs root (`root=/dev/vda`, which
/// `keel run qemu` adds) and the system boots from it, on both architectures.
#[test]
fn kernel_squashfs_boots_on_both_architectures() {
    let built: Vec<_> = [Arch::X86_64, Arch::Aarch64]
        .into_iter()
        .map(|arch| (arch, build(arch, &[Format::KernelSquashfs])))
        .collect();
    std::thread::scope(|s| {
        for (arch, b) in &built {
            assert!(with(&b.prefix, "-squashfs.img").is_file());
            assert!(!with(&b.prefix, "-initrd.img").exists());
            s.spawn(move || {
                boots_to_services(&format!("kernel+squashfs {arch}"), &b.prefix, *arch)
            });
        }
    });
}

#[test]
fn aarch64_efi_formats_boot_under_aavmf() {
    let arch = Arch::Aarch64;
    let built = build(arch, &[Format::Uki, Format::RawEfi]);
    let p = &built.prefix;
    std::thread::scope(|s| {
        s.spawn(|| boots_to_services("raw-efi aarch64", &with(p, "-efi.img"), arch));
        s.spawn(|| boots_to_services("uki aarch64", &with(p, ".efi"), arch));
    });
}

#[test]
fn x86_64_bios_and_iso_formats_boot() {
    let arch = Arch::X86_64;
    let built = build(
        arch,
        &[
            Format::IsoBios,
            Format::IsoEfi,
            Format::IsoEfiInitrd,
            Format::RawBios,
            Format::Qcow2Bios,
            Format::Gcp,
        ],
    );
    let p = &built.prefix;

    let raw_size = std::fs::metadata(with(p, "-bios.img")).unwrap().len();
    // raw-bios is the isohybrid iso-bios image itself (no --size).
    assert!(
        std::fs::read(with(p, ".iso")).unwrap() == std::fs::read(with(p, "-bios.img")).unwrap()
    );
    let info = qemu_img(&["info", "--output=json"], &with(p, ".qcow2"));
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {raw_size}")),
        "{info}"
    );
    qemu_img(&["check"], &with(p, ".qcow2"));

    // gcp: one disk.raw of whole GiB in a GNU tar, as GCE imports it.
    let list = Command::new("tar")
        .args(["--utc", "-tvzf"])
        .arg(with(p, ".img.tar.gz"))
        .output()
        .expect("tar runs");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "{text}");
    assert_eq!(fields[5], "disk.raw");
    assert_eq!(fields[2].parse::<u64>().unwrap() % (1 << 30), 0, "{text}");

    std::thread::scope(|s| {
        s.spawn(|| {
            boots_with(
                "iso-bios x86_64",
                &with(p, ".iso"),
                arch,
                false,
                Media::Cdrom,
            )
        });
        s.spawn(|| {
            boots_with(
                "iso-efi x86_64",
                &with(p, "-efi.iso"),
                arch,
                true,
                Media::Cdrom,
            )
        });
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            let disk = with(p, "-bios.img");
            boots_with("raw-bios x86_64", &disk, arch, false, Media::Disk("raw"));
        });
        s.spawn(|| {
            let disk = with(p, ".qcow2");
            boots_with(
                "qcow2-bios x86_64",
                &disk,
                arch,
                false,
                Media::Disk("qcow2"),
            );
        });
    });
    let iso = with(p, "-efi-initrd.iso");
    boots_with("iso-efi-initrd x86_64", &iso, arch, true, Media::Cdrom);
}

#[test]
fn aarch64_iso_formats_boot_and_bios_formats_are_refused() {
    let arch = Arch::Aarch64;
    for format in [Format::IsoBios, Format::RawBios, Format::Qcow2Bios] {
        let err = build_formats(&[&minimal()], arch, &[format]).unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains(&format!(
                "format {format} is not available for aarch64: it is for x86_64 only"
            )),
            "{text}"
        );
    }
    let built = build(arch, &[Format::IsoEfi, Format::IsoEfiInitrd]);
    let p = &built.prefix;
    std::thread::scope(|s| {
        s.spawn(|| {
            let iso = with(p, "-efi.iso");
            boots_with("iso-efi aarch64", &iso, arch, true, Media::Cdrom);
        });
        s.spawn(|| {
            let iso = with(p, "-efi-initrd.iso");
            boots_with("iso-efi-initrd aarch64", &iso, arch, true, Media::Cdrom);
        });
    });
}

#[test]
fn dynamic_vhd_is_a_valid_container() {
    let built = build(Arch::X86_64, &[Format::DynamicVhd, Format::RawEfi]);
    let p = &built.prefix;
    let raw_size = std::fs::metadata(with(p, "-efi.img")).unwrap().len();
    let info = qemu_img(&["info", "--output=json", "-f", "vpc"], &with(p, ".vhd"));
    assert!(
        info.contains(&format!("\"virtual-size\": {raw_size}")),
        "{info}"
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(with(p, ".vhd"))
        .arg(with(p, "-efi.img"))
        .output()
        .expect("qemu-img runs");
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
}

/// Every format, both architectures, built twice by the `keel` binary with different
/// time zones, umasks and working directories: identical bytes.
#[test]
fn formats_are_byte_reproducible() {
    // Build once through the library so every image is in the shared store. Debian's kernels
    // unpack zstd (CONFIG_RD_ZSTD), so that is what the initrd is.
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let built = build(arch, &[Format::KernelInitrd]);
        let initrd = std::fs::read(with(&built.prefix, "-initrd.img")).unwrap();
        assert_eq!(
            initrd[..4],
            [0x28, 0xb5, 0x2f, 0xfd],
            "{arch}: not a zstd initrd"
        );
    }
    let (_lock, _store) = lock_store().unwrap_or_else(|e| panic!("{}", chain(&e)));
    let yaml = minimal();
    assert!(
        keel_bin().is_file(),
        "{} is missing: cargo build -p keel (cargo test --workspace builds it)",
        keel_bin().display()
    );
    for (arch, formats) in [
        ("x86_64", "-f uki -f raw-efi -f qcow2-efi -f vhd -f vmdk"),
        ("x86_64", "-f dynamic-vhd -f aws -f kernel+squashfs"),
        (
            "x86_64",
            "-f iso-bios -f iso-efi -f iso-efi-initrd -f raw-bios -f qcow2-bios -f gcp",
        ),
        ("aarch64", "-f uki -f raw-efi -f qcow2-efi -f vhd -f vmdk"),
        (
            "aarch64",
            "-f iso-efi -f iso-efi-initrd -f gcp -f kernel+squashfs",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let run = |sub: &str, tz: &str, umask: &str, cwd: &Path| {
            let dir = out.path().join(sub);
            let script = format!(
                "umask {umask}; exec {} build --arch {arch} {formats} --name m --dir {} {}",
                keel_bin().display(),
                dir.display(),
                yaml.display()
            );
            let status = Command::new("sh")
                .args(["-c", &script])
                .current_dir(cwd)
                .env("TZ", tz)
                .env("KEEL_CACHE", store_path())
                .env_remove("SOURCE_DATE_EPOCH")
                .status()
                .expect("sh runs");
            assert!(status.success(), "{script}");
            dir
        };
        let a = run("a", "UTC", "022", &workspace());
        let b = run("b", "Asia/Tokyo", "077", out.path());
        let mut names: Vec<_> = std::fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert!(names.len() >= 2, "{names:?}");
        for n in names {
            let (x, y) = (
                std::fs::read(a.join(&n)).unwrap(),
                std::fs::read(b.join(&n)).unwrap(),
            );
            assert!(
                x == y,
                "{arch} {}: the two builds differ",
                n.to_string_lossy()
            );
        }
    }
}

/// `--decompress-kernel` (LinuxKit's flag): Debian's x86_64 bzImage becomes its ELF vmlinux,
/// which QEMU boots directly (PVH entry), to the system's services. The initrd is gzip here,
/// as LinuxKit writes it (`--initrd-compression gzip`); every other VM test boots zstd.
#[test]
fn decompressed_kernel_boots() {
    let out = tempfile::tempdir().unwrap();
    {
        let (_lock, _store) = lock_store().unwrap_or_else(|e| panic!("{}", chain(&e)));
        let status = Command::new(keel_bin())
            .args([
                "build",
                "--decompress-kernel",
                "--initrd-compression",
                "gzip",
                "--arch",
                "x86_64",
                "--name",
                "m",
            ])
            .arg("--dir")
            .arg(out.path())
            .arg(minimal())
            .env("KEEL_CACHE", store_path())
            .status()
            .expect("keel runs");
        assert!(status.success());
    }
    let prefix = out.path().join("m");
    let kernel = std::fs::read(with(&prefix, "-kernel")).unwrap();
    assert_eq!(&kernel[..4], b"\x7fELF", "not an ELF vmlinux");
    let initrd = std::fs::read(with(&prefix, "-initrd.img")).unwrap();
    assert_eq!(initrd[..2], [0x1f, 0x8b], "not a gzip initrd");
    boots_to_services("decompressed kernel x86_64", &prefix, Arch::X86_64);
}
