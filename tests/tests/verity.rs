//! A verified root (issue 16): `keel build --verity --sign-with` puts the root on a squashfs
//! partition checked by dm-verity, its hash tree on a second partition and the root hash on
//! the signed UKI's command line. Two builds are byte-identical. Under firmware enforcing
//! Secure Boot, with one byte of the root partition changed, the loader refuses the root and
//! says why on the console, and nothing from it runs; the byte restored, the same disk boots
//! with its root on the read-only `keel-root` device-mapper device.

use keel::build::Format;
use keel::keys::KeySet;
use keel::output::{InitrdCompression, RootLayout};
use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build_secured, workspace};
use std::path::PathBuf;
use std::time::Duration;

/// Under TCG, firmware plus kernel plus the first container.
const DEADLINE: Duration = Duration::from_secs(300);

/// Where the disk's second GPT partition (the root: the ESP is the first) starts, in bytes.
fn root_offset(disk: &[u8]) -> usize {
    let entry = &disk[1024 + 128..1024 + 256];
    let name: Vec<u8> = "keel-root"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(
        &entry[56..56 + name.len()],
        name.as_slice(),
        "the second partition is the root"
    );
    let lba = u64::from_le_bytes(entry[32..40].try_into().unwrap());
    usize::try_from(lba * 512).unwrap()
}

fn verified_root(arch: Arch) {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = KeySet::generate(&keys_dir.path().join("keys"), "keel test").unwrap();
    let minimal = workspace().join("images/minimal.yml");
    let case = keel_vmtests::case("verity.yml");
    let build = || {
        build_secured(
            &[&minimal, &case],
            arch,
            &[Format::RawEfi],
            InitrdCompression::Auto,
            Some(&keys),
            RootLayout::Verity,
        )
        .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)))
    };
    let disk = |b: &keel_vmtests::Built| PathBuf::from(format!("{}-efi.img", b.prefix.display()));
    let built = build();
    let original = std::fs::read(disk(&built)).unwrap();
    let again = build();
    assert!(
        std::fs::read(disk(&again)).unwrap() == original,
        "{arch}: two builds differ"
    );
    let boot = |name: &str| {
        Vm::boot(
            name,
            &disk(&built),
            &Boot {
                secure_boot: Some(keys.clone()),
                ..Boot::new(arch)
            },
        )
    };

    // One byte of the root's first block (squashfs's superblock, read first) changed.
    let at = root_offset(&original) + 5;
    let mut bytes = original.clone();
    bytes[at] ^= 0x40;
    std::fs::write(disk(&built), &bytes).unwrap();
    {
        let name = format!("changed root {arch}");
        let mut vm = boot(&name);
        let console = vm.wait_for("will not boot from an unverified root", DEADLINE);
        let refusal = console
            .lines()
            .find(|l| l.contains("will not boot from an unverified root"))
            .unwrap_or_default();
        assert!(
            refusal.contains("verity: cannot mount the verified root")
                && refusal.contains("does not match the root hash"),
            "{name}: the refusal does not say why: {refusal}\n{console}"
        );
        eprintln!("{name}: {refusal}");
        assert!(
            console.contains("UEFI Secure Boot is enabled"),
            "{name}: the EFI stub did not see Secure Boot on\n{console}"
        );
        // Nothing from the changed root runs.
        std::thread::sleep(Duration::from_secs(10));
        let console = vm.console();
        assert!(
            !console.contains("hello from") && !console.contains("ROOTDM="),
            "{name}: a container ran from a root that failed verification\n{console}"
        );
    }

    std::fs::write(disk(&built), &original).unwrap();
    let name = format!("verified root {arch}");
    let mut vm = boot(&name);
    let console = vm.wait_for("status| status", DEADLINE);
    assert!(
        console.contains("ROOTDM=keel-root RO=1"),
        "{name}: the root is not the read-only keel-root device\n{console}"
    );
    let line = console
        .lines()
        .find(|l| l.starts_with("status| status"))
        .unwrap_or_default();
    assert!(line.contains("running"), "{name}: {line}");
    for line in console.lines().filter(|l| l.contains("verity: ")) {
        eprintln!("{name}: {line}");
    }
}

#[test]
fn verified_root_x86_64() {
    verified_root(Arch::X86_64);
}

#[test]
fn verified_root_aarch64() {
    verified_root(Arch::Aarch64);
}
