//! The A/B disk layout: `keel build -f raw-efi --verity --ab --sign-with` writes an ESP holding
//! systemd-boot at the removable-media path (signed with the db key), its `loader/loader.conf`
//! and the signed UKI at `EFI/Linux/keel-1.efi`, then root slots A (this build) and B (empty)
//! and a data partition. Under firmware enforcing Secure Boot the firmware starts systemd-boot
//! (the only binary at the path it boots), systemd-boot starts the UKI through the firmware's
//! LoadImage, which checks it against db, and the loader finds slot A by the root hash: the
//! system runs with its root on the read-only `keel-root` device-mapper device. `keel update`
//! to version 2 writes slot B and its UKI: the next boot runs version 2 from slot B. With that
//! UKI's signature removed, systemd-boot's LoadImage is refused and no kernel starts.

use keel::build::Format;
use keel::keys::KeySet;
use keel::output::{AbSettings, InitrdCompression, RootLayout};
use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build_secured, workspace};
use std::path::PathBuf;
use std::time::Duration;

/// Under TCG, firmware plus systemd-boot plus kernel plus the first container.
const DEADLINE: Duration = Duration::from_secs(300);

/// The partition names of the disk's GPT, in order (the primary table at LBA 2).
fn partition_names(disk: &[u8]) -> Vec<String> {
    disk[1024..1024 + 128 * 128]
        .chunks(128)
        .filter(|e| e[..16].iter().any(|&b| b != 0))
        .map(|e| {
            let units: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        })
        .collect()
}

fn ab_boot(arch: Arch) {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = KeySet::generate(&keys_dir.path().join("keys"), "keel test").unwrap();
    let minimal = workspace().join("images/minimal.yml");
    let case = keel_vmtests::case("verity.yml");
    let built = build_secured(
        &[&minimal, &case],
        arch,
        &[Format::RawEfi],
        InitrdCompression::Auto,
        Some(&keys),
        RootLayout::Ab(AbSettings::default()),
    )
    .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)));
    let disk = PathBuf::from(format!("{}-efi.img", built.prefix.display()));
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(
        partition_names(&bytes),
        [
            "EFI system partition",
            "keel-root-a",
            "keel-root-verity-a",
            "keel-root-b",
            "keel-root-verity-b",
            "keel-data"
        ],
        "{arch}"
    );
    drop(bytes);
    // What firmware boots is systemd-boot (the stub has no loader.conf keys); the UKI is only
    // where systemd-boot finds it, so a boot that reaches the root went through systemd-boot.
    let esp = format!("{}@@{}", disk.display(), 1 << 20);
    let mcopy = |path: &str| {
        let out = std::process::Command::new("mcopy")
            .args(["-n", "-i", &esp, path, "-"])
            .output()
            .expect("mcopy runs (mtools)");
        assert!(out.status.success(), "{arch} {path}: {out:?}");
        out.stdout
    };
    let boot_path = match arch {
        Arch::X86_64 => "::/EFI/BOOT/BOOTX64.EFI",
        Arch::Aarch64 => "::/EFI/BOOT/BOOTAA64.EFI",
    };
    assert!(
        mcopy(boot_path).windows(13).any(|w| w == b"auto-firmware"),
        "{arch}: {boot_path} is not systemd-boot"
    );
    let uki = mcopy("::/EFI/Linux/keel-1.efi");
    assert!(uki.windows(15).any(|w| w == b"IMAGE_VERSION=1"), "{arch}");

    let name = format!("A/B {arch}");
    let mut vm = Vm::boot(
        &name,
        &disk,
        &Boot {
            secure_boot: Some(keys.clone()),
            ..Boot::new(arch)
        },
    );
    let console = vm.wait_for("status| status", DEADLINE);
    assert!(
        console.contains("UEFI Secure Boot is enabled"),
        "{name}: the EFI stub did not see Secure Boot on\n{console}"
    );
    assert!(
        console.contains("ROOTDM=keel-root RO=1"),
        "{name}: the root is not the read-only keel-root device\n{console}"
    );
    let line = console
        .lines()
        .find(|l| l.starts_with("status| status"))
        .unwrap_or_default();
    assert!(line.contains("running"), "{name}: {line}");
    assert!(!console.contains("RUNNING=version-2"), "{name}\n{console}");
    drop(vm);

    // keel update to version 2 (another onboot container): slot b, booted next by
    // systemd-boot, the loader finding slot b by its new root hash.
    let second = build_secured(
        &[&minimal, &case, &keel_vmtests::case("version2.yml")],
        arch,
        &[Format::RawEfi],
        InitrdCompression::Auto,
        Some(&keys),
        RootLayout::Ab(AbSettings {
            version: "2".parse().unwrap(),
            ..AbSettings::default()
        }),
    )
    .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)));
    let new = PathBuf::from(format!("{}-efi.img", second.prefix.display()));
    let updated = keel::update::update(&disk, &new, Some(keys.dir()))
        .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)));
    assert_eq!(updated.slot, 'b', "{arch}");
    let name = format!("A/B updated to version 2 {arch}");
    let mut vm = Vm::boot(
        &name,
        &disk,
        &Boot {
            secure_boot: Some(keys.clone()),
            ..Boot::new(arch)
        },
    );
    let console = vm.wait_for("status| status", DEADLINE);
    assert!(
        console.contains("RUNNING=version-2") && console.contains("ROOTDM=keel-root RO=1"),
        "{name}: version 2 does not run from its verified root\n{console}"
    );
    drop(vm);

    // The chain holds past systemd-boot: with the UKI's signature removed, the firmware's
    // LoadImage refuses it and nothing of it runs.
    let uki = mcopy("::/EFI/Linux/keel-2.efi");
    let unsigned = built.dir.path().join("unsigned.efi");
    std::fs::write(&unsigned, &uki).unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{arch}: {cmd:?}: {out:?}");
    };
    run(std::process::Command::new("sbattach")
        .arg("--remove")
        .arg(&unsigned));
    run(std::process::Command::new("mcopy")
        .args(["-o", "-i", &esp])
        .arg(&unsigned)
        .arg("::/EFI/Linux/keel-2.efi"));
    let name = format!("A/B unsigned UKI {arch}");
    let mut vm = Vm::boot(
        &name,
        &disk,
        &Boot {
            secure_boot: Some(keys.clone()),
            ..Boot::new(arch)
        },
    );
    // systemd-boot's own message (it exits, and the firmware moves on to its next option).
    let refused = r"Error loading \EFI\Linux\keel-2.efi: ";
    let console = vm.wait_for_any(&[refused, "Linux version"], DEADLINE);
    let refusal = console
        .lines()
        .find(|l| l.contains(refused))
        .unwrap_or_default();
    assert!(
        !refusal.is_empty() && !console.contains("Linux version"),
        "{name}: an unsigned UKI was not refused\n{console}"
    );
    eprintln!("{name}: {}", refusal.trim());
}

#[test]
fn ab_boots_through_systemd_boot_x86_64() {
    ab_boot(Arch::X86_64);
}

#[test]
fn ab_boots_through_systemd_boot_aarch64() {
    ab_boot(Arch::Aarch64);
}
