//! The `virt` and `metal` kernels (kernel/virt, kernel/metal, built from Debian's kernel source)
//! on both architectures: `images/minimal.yml` boots on each to its services, `metal`'s signed
//! modules load, and `keel kernel check` finds no failing KSPP item beyond the ones the recipes
//! document.
//!
//! Building `virt` or `metal` from source takes 10 to 15 minutes per architecture on a 2-core
//! machine, more than a CI run can give them beside the other tests; the fast tier builds a small recipe from
//! the same source instead (crates/kernel/tests/source.rs). This test is the documented local
//! command: `cargo test -p keel-vmtests --features full-kernels --test virt`.

use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build, case, chain, keel_bin, lock_store, store_path, workspace};
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(300);

/// KSPP items `virt` fails on purpose, per architecture (see kernel/virt/*.config): lockdown
/// is forced to integrity, not confidentiality, which would also refuse the BPF and perf reads
/// of kernel memory that security experiments need (`lockdown=confidentiality` on the command
/// line turns it on); `init_on_free` is off by default, since zeroing all memory at boot costs
/// more than a second under emulation (`init_on_free=1` turns it on); arm64's BTI for the
/// kernel and the shadow call stack need Clang.
fn accepted_failures(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Aarch64 => &[
            "LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY",
            "INIT_ON_FREE_DEFAULT_ON",
            "ARM64_BTI_KERNEL",
            "SHADOW_CALL_STACK",
        ],
        Arch::X86_64 => &[
            "LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY",
            "INIT_ON_FREE_DEFAULT_ON",
        ],
    }
}

/// Boots images/minimal.yml on the source recipe `recipe` (with `tests/cases/<recipe>-kernel.yml`)
/// with `devices` attached, checks that the services run on that kernel and that it fails no
/// KSPP kconfig item but the accepted ones; returns the console.
fn boots_on(recipe: &str, arch: Arch, devices: &[&str]) -> String {
    let minimal = workspace().join("images/minimal.yml");
    let built =
        build(&[&minimal, &case(&format!("{recipe}-kernel.yml"))], arch).unwrap_or_else(|e| {
            panic!(
                "minimal.yml on {recipe} ({arch}): build failed: {}",
                chain(&e)
            )
        });
    let mut boot = Boot::new(arch);
    boot.devices = devices.iter().map(|d| d.parse().unwrap()).collect();
    let mut vm = Vm::boot(&format!("{recipe} {arch}"), &built.prefix, &boot);
    let console = vm.wait_for("status| status", DEADLINE);
    assert!(
        console.contains(&format!("-keel-{recipe}")),
        "not the {recipe} kernel:\n{console}"
    );
    let line = console
        .lines()
        .find(|l| l.starts_with("status| status"))
        .unwrap_or_default();
    assert!(line.contains("running"), "{line}\n{console}");

    let (_lock, _store) = lock_store().unwrap_or_else(|e| panic!("{}", chain(&e)));
    let out = Command::new(keel_bin())
        .args(["-q", "kernel", "check", "--json", "--arch", arch.uname()])
        .arg(workspace().join("kernel").join(recipe))
        .env("KEEL_CACHE", store_path())
        .output()
        .expect("keel runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["verdict"]["status"] == "fail" && f["kind"] == "kconfig")
        .filter_map(|f| f["name"].as_str())
        .filter(|name| !accepted_failures(arch).contains(name))
        .collect();
    assert!(
        failed.is_empty(),
        "{arch}: {recipe} fails KSPP items {failed:?}"
    );
    console
}

#[test]
fn minimal_boots_on_virt_x86_64() {
    let console = boots_on("virt", Arch::X86_64, &[]);
    assert!(console.contains("no modules for this kernel"), "{console}");
}

#[test]
fn minimal_boots_on_virt_aarch64() {
    let console = boots_on("virt", Arch::Aarch64, &[]);
    assert!(console.contains("no modules for this kernel"), "{console}");
}

/// `metal` with an Intel e1000 NIC, whose driver is a signed module: PID 1's coldplug loads it
/// and the kernel, which refuses unsigned modules (`MODULE_SIG_FORCE`), accepts every module.
fn metal_loads_its_signed_modules(arch: Arch) {
    let console = boots_on("metal", arch, &["e1000"]);
    let line = console
        .lines()
        .find(|l| l.contains("modules: ") && l.contains(" loaded, "))
        .unwrap_or_else(|| panic!("no module summary:\n{console}"));
    let loaded: usize = line
        .split("modules: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(loaded >= 1, "{line}");
    assert!(line.contains(", 0 refused"), "{line}\n{console}");
    assert!(
        console.contains("e1000"),
        "the e1000 driver did not load:\n{console}"
    );
}

#[test]
fn metal_loads_its_signed_modules_x86_64() {
    metal_loads_its_signed_modules(Arch::X86_64);
}

#[test]
fn metal_loads_its_signed_modules_aarch64() {
    metal_loads_its_signed_modules(Arch::Aarch64);
}
