//! Secure Boot (issue 16): a system built with `keel build --sign-with` boots under OVMF
//! (x86_64) or AAVMF (aarch64) enforcing Secure Boot with the key set enrolled (`keel run
//! --secure-boot --keys`), and the firmware refuses the same system unsigned, signed by a key
//! it does not trust, or with one byte of its signed command line changed. With a TPM
//! (`--tpm`), PCR 11 read in the guest is what `keel build` predicted.

use keel::build::Format;
use keel::keys::KeySet;
use keel::output::InitrdCompression;
use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build_signed, workspace};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Under TCG, firmware plus kernel plus the first container.
const DEADLINE: Duration = Duration::from_secs(300);
/// What OVMF and AAVMF print when an image's signature is not trusted.
const REFUSED: &str = "Access Denied";

fn secure_vm(name: &str, disk: &Path, arch: Arch, keys: &KeySet) -> Vm {
    Vm::boot(
        name,
        disk,
        &Boot {
            secure_boot: Some(keys.clone()),
            // A CRB TPM on x86_64 (tpm_crb is built into Debian's kernel), TIS on aarch64
            // (the tpm_tis module kernel/debian-6.1 keeps).
            tpm: true,
            ..Boot::new(arch)
        },
    )
}

/// Boots `disk` enforcing `keys` and expects the firmware to refuse it.
fn refused(name: &str, disk: &Path, arch: Arch, keys: &KeySet) {
    let mut vm = secure_vm(name, disk, arch, keys);
    let console = vm.wait_for(REFUSED, DEADLINE);
    assert!(
        !console.contains("Linux version"),
        "{name}: a kernel started\n{console}"
    );
}

/// A copy of `disk` with one byte of the UKI's command line changed.
fn with_cmdline_changed(disk: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(disk).unwrap();
    let needle = b"console=ttyS0";
    let at: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the command line once in the disk: {at:?}");
    // ttyS0 -> ttyS1: a command line that would still boot, were it accepted.
    bytes[at[0] + needle.len() - 1] = b'1';
    let out = dir.join("tampered-efi.img");
    std::fs::write(&out, bytes).unwrap();
    out
}

fn secure_boot(arch: Arch) {
    let keys_dir = tempfile::tempdir().unwrap();
    let ours = KeySet::generate(&keys_dir.path().join("ours"), "keel test").unwrap();
    let theirs = KeySet::generate(&keys_dir.path().join("theirs"), "someone else").unwrap();
    let minimal = workspace().join("images/minimal.yml");
    let pcr = keel_vmtests::case("pcr.yml");
    let build = |keys: Option<&KeySet>| {
        build_signed(
            &[&minimal, &pcr],
            arch,
            &[Format::RawEfi],
            InitrdCompression::Auto,
            keys,
        )
        .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)))
    };
    let signed = build(Some(&ours));
    let unsigned = build(None);
    let disk = |b: &keel_vmtests::Built| PathBuf::from(format!("{}-efi.img", b.prefix.display()));
    let tampered = with_cmdline_changed(&disk(&signed), signed.dir.path());
    // QEMU locks a disk: the untrusted-key boot runs beside the trusted one, on a copy.
    let copy = signed.dir.path().join("copy-efi.img");
    std::fs::copy(disk(&signed), &copy).unwrap();

    std::thread::scope(|s| {
        s.spawn(|| {
            let name = format!("signed {arch}");
            let mut vm = secure_vm(&name, &disk(&signed), arch, &ours);
            let console = vm.wait_for("status| status", DEADLINE);
            assert!(
                console.contains("UEFI Secure Boot is enabled"),
                "{name}: the EFI stub did not see Secure Boot on\n{console}"
            );
            let line = console
                .lines()
                .find(|l| l.starts_with("status| status"))
                .unwrap_or_default();
            assert!(line.contains("running"), "{name}: {line}");
            {
                let json =
                    std::fs::read_to_string(format!("{}-pcr11.json", signed.prefix.display()))
                        .unwrap();
                let json: serde_json::Value = serde_json::from_str(&json).unwrap();
                let predicted = json["sha256"][0]["hash"].as_str().unwrap().to_uppercase();
                assert_eq!(json["sha256"][0]["pcr"], 11);
                let read = console
                    .lines()
                    .find_map(|l| l.split_once("PCR11=").map(|(_, v)| v.trim().to_owned()))
                    .unwrap_or_else(|| panic!("{name}: no PCR11 line\n{console}"));
                assert_eq!(
                    read, predicted,
                    "{name}: PCR 11 is not what keel build predicted"
                );
            }
        });
        s.spawn(|| {
            refused(&format!("unsigned {arch}"), &disk(&unsigned), arch, &ours);
            refused(
                &format!("signed by an untrusted key {arch}"),
                &copy,
                arch,
                &theirs,
            );
            refused(
                &format!("command line changed {arch}"),
                &tampered,
                arch,
                &ours,
            );
        });
    });
}

#[test]
fn secure_boot_x86_64() {
    secure_boot(Arch::X86_64);
}

#[test]
fn secure_boot_aarch64() {
    secure_boot(Arch::Aarch64);
}
