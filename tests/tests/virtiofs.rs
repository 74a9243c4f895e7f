//! `keel run --virtiofs` in QEMU on both architectures (`tests/cases/virtiofs.yml`): a host
//! directory served by virtiofsd is mounted in a container, which reads the host's file and
//! writes one back; a `readonly` share refuses the write.

use keel::run::Share;
use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, Checks, build, case, chain};
use std::path::Path;
use std::time::Duration;

/// Generous: TCG boots take 5–25 s alone, and tests share two cores with builds.
const DEADLINE: Duration = Duration::from_secs(300);

#[track_caller]
fn want(checks: &Checks, key: &str, want: &str, console: &str) {
    assert_eq!(
        checks.get("000-share", key),
        Some(want),
        "CHECK {key}\n--- console ---\n{console}"
    );
}

fn share(dir: &Path, options: &str) -> Share {
    format!("{}{options}", dir.display())
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn virtiofs(arch: Arch) {
    let built = build(&[&case("virtiofs.yml")], arch)
        .unwrap_or_else(|e| panic!("virtiofs.yml ({arch}): build failed: {}", chain(&e)));
    let host = tempfile::tempdir().unwrap();
    let (rw, ro) = (host.path().join("rw"), host.path().join("ro"));
    for dir in [&rw, &ro] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("from-host.txt"), format!("hello from {arch}\n")).unwrap();
    }
    let mut how = Boot::new(arch);
    how.virtiofs = vec![
        share(&rw, ",tag=keelrw"),
        share(&ro, ",tag=keelro,readonly"),
    ];
    let mut vm = Vm::boot(&format!("virtiofs.yml ({arch})"), &built.prefix, &how);
    let console = vm.wait_for("000-share| CHECK done=1", DEADLINE);
    let c = Checks::parse(&console);
    want(&c, "mounted_rw", "1", &console);
    want(&c, "fstype", "virtiofs", &console);
    want(&c, "content", &format!("hello from {arch}"), &console);
    want(&c, "wrote", "1", &console);
    want(&c, "mounted_ro", "1", &console);
    want(&c, "ro_content", &format!("hello from {arch}"), &console);
    want(&c, "ro_write", "refused", &console);
    // What the guest wrote is on the host; nothing got through the read-only share.
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest.txt"))
            .ok()
            .as_deref(),
        Some("written by the guest\n"),
        "--- console ---\n{console}"
    );
    assert!(
        !ro.join("from-guest.txt").exists(),
        "the read-only share was written to"
    );
}

#[test]
fn virtiofs_x86_64() {
    virtiofs(Arch::X86_64);
}

#[test]
fn virtiofs_aarch64() {
    virtiofs(Arch::Aarch64);
}
