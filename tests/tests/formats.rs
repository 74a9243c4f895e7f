//! Output formats (issue 6): each disk and EFI format of `images/minimal.yml` boots under the
//! firmware a user would use (OVMF on x86_64, AAVMF on aarch64) and reaches the system's
//! services; `qemu-img` accepts the disk containers; every format is byte-identical when built
//! again with another time zone, umask and working directory.

use keel::build::Format;
use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build_formats, chain, keel_bin, lock_store, store_path, workspace};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
    // Build once through the library so every image is in the shared store.
    drop(build(Arch::X86_64, &[Format::KernelInitrd]));
    drop(build(Arch::Aarch64, &[Format::KernelInitrd]));
    let (_lock, _store) = lock_store().unwrap_or_else(|e| panic!("{}", chain(&e)));
    let yaml = minimal();
    assert!(
        keel_bin().is_file(),
        "{} is missing: cargo build -p keel (cargo test --workspace builds it)",
        keel_bin().display()
    );
    for (arch, formats) in [
        ("x86_64", "-f uki -f raw-efi -f qcow2-efi -f vhd -f vmdk"),
        ("x86_64", "-f dynamic-vhd -f aws"),
        ("aarch64", "-f uki -f raw-efi -f qcow2-efi -f vhd -f vmdk"),
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
