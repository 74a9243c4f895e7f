//! `binds: [/dev:/dev]` in QEMU on both architectures (`tests/cases/devbind.yml`): two
//! containers bind the guest's `/dev` at once, one read-only, and see its device nodes.

use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, Checks, build, case, chain};
use std::time::Duration;

/// Generous: TCG boots take 5–25 s alone, and tests share two cores with builds.
const DEADLINE: Duration = Duration::from_secs(300);

#[track_caller]
fn want(checks: &Checks, container: &str, key: &str, want: &str, console: &str) {
    assert_eq!(
        checks.get(container, key),
        Some(want),
        "{container}: CHECK {key}\n--- console ---\n{console}"
    );
}

fn devbind(arch: Arch) {
    let built = build(&[&case("devbind.yml")], arch)
        .unwrap_or_else(|e| panic!("devbind.yml ({arch}): build failed: {}", chain(&e)));
    let mut vm = Vm::boot(
        &format!("devbind.yml ({arch})"),
        &built.prefix,
        &Boot::new(arch),
    );
    // Both must start: a /dev bind used to fail libcontainer's device setup on EEXIST.
    vm.wait_for("devrw| CHECK done=1", DEADLINE);
    let console = vm.wait_for("devro| CHECK done=1", DEADLINE);
    let c = Checks::parse(&console);
    let tty = match arch {
        Arch::X86_64 => "ttyS0",
        Arch::Aarch64 => "ttyAMA0",
    };
    for id in ["devrw", "devro"] {
        // The guest's serial console: a host device node no default device list has.
        want(&c, id, "console", tty, &console);
    }
    want(&c, "devrw", "kmsg", "1", &console);
    want(&c, "devrw", "fd", "1", &console);
    // The container's /dev is the guest's devtmpfs, not a tmpfs filled by libcontainer.
    want(&c, "devrw", "dev", "devtmpfs,devtmpfs,rw", &console);
    want(&c, "devro", "dev", "devtmpfs,devtmpfs,ro", &console);
    want(&c, "devro", "readonly", "1", &console);
}

#[test]
fn devbind_x86_64() {
    devbind(Arch::X86_64);
}

#[test]
fn devbind_aarch64() {
    devbind(Arch::Aarch64);
}
