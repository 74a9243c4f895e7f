//! The `virt` and `metal` kernels (kernel/virt, kernel/metal, built from Debian's kernel source)
//! on both architectures: `images/minimal.yml` boots on each to its services, `metal`'s signed
//! modules load while an unsigned one and one signed by another key are refused, and
//! `keel kernel check` finds no failing KSPP item beyond the ones the recipes
//! document.
//!
//! Building `virt` or `metal` from source takes 10 to 15 minutes per architecture on a 2-core
//! machine, more than a CI run can give them beside the other tests; the fast tier builds a small recipe from
//! the same source instead (crates/kernel/tests/source.rs). This test is the documented local
//! command: `cargo test -p keel-vmtests --features full-kernels --test virt`.

use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, Checks, build, case, chain, keel_bin, lock_store, store_path, workspace};
use std::path::{Path, PathBuf};
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

/// The kernel's appended-signature trailer: the signature, a 12-byte `struct module_signature`
/// whose last four bytes are the signature's length (big-endian), then this magic.
const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// `module` without its appended signature.
fn strip_signature(module: &[u8]) -> Vec<u8> {
    let body = module
        .strip_suffix(SIGNATURE_MAGIC)
        .expect("metal's modules are signed");
    let (rest, info) = body.split_at(body.len() - 12);
    let sig_len = u32::from_be_bytes(info[8..12].try_into().unwrap());
    let sig_len = usize::try_from(sig_len).unwrap();
    rest[..rest.len() - sig_len].to_vec()
}

/// A file of `metal`'s last build for `arch` in the test store: the staged modules and the
/// build tree's host tools.
fn metal_work(arch: Arch, sub: &str) -> PathBuf {
    store_path()
        .join("kernel-work")
        .join(format!("{sub}-metal-{}", arch.uname()))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `unsigned.ko` (a `metal` module with its signature cut off) and `foreign.ko` (the
/// same module signed by a key the kernel does not trust, with the kernel's own `sign-file`)
/// into `dir`.
fn hostile_modules(arch: Arch, dir: &Path) {
    let modules = metal_work(arch, "staging").join("modules/lib/modules");
    let release = std::fs::read_dir(&modules)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (metal not built in this store?)",
                modules.display()
            )
        })
        .flatten()
        .next()
        .expect("one release")
        .path();
    let signed = std::fs::read(release.join("kernel/drivers/net/mdio.ko")).unwrap();
    std::fs::write(dir.join("unsigned.ko"), strip_signature(&signed)).unwrap();
    let (key, cert) = (dir.join("foreign.key"), dir.join("foreign.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=not the store's key", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    run_ok(
        Command::new(metal_work(arch, "build").join("scripts/sign-file"))
            .arg("sha512")
            .args([&key, &cert])
            .arg(dir.join("unsigned.ko"))
            .arg(dir.join("foreign.ko")),
    );
}

/// `metal` refuses a module without a signature and one signed by another key
/// (`MODULE_SIG_FORCE`), to a container that may load modules (CAP_SYS_MODULE), and loads the
/// same module signed by the store's key: the refusals are the signature's doing.
fn metal_refuses_unsigned_and_foreign_modules(arch: Arch) {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace();
    let cmdline = std::fs::read_to_string(case("metal-kernel.yml")).unwrap();
    let cmdline = cmdline
        .lines()
        .find_map(|l| l.trim().strip_prefix("cmdline: "))
        .expect("metal-kernel.yml's cmdline");
    let yaml = dir.path().join("modsig.yml");
    std::fs::write(
        &yaml,
        format!(
            r#"kernel:
  image: "@pkg:{ws}/kernel/metal"
  cmdline: {cmdline}
init:
  - "@pkg:{ws}/pkg/init"
onboot:
  - name: modsig
    image: "@pkg:{ws}/pkg/busybox"
    capabilities: [CAP_SYS_MODULE]
    binds: ["/modsig:/modsig:ro", "/lib/modules:/lib/modules:ro"]
    command:
      - /bin/sh
      - -c
      - |
        try() {{ if busybox insmod "$2" 2>/tmp/err; then echo "CHECK $1=loaded"; else echo "CHECK $1=refused: $(cat /tmp/err)"; fi; }}
        try unsigned /modsig/unsigned.ko
        try foreign /modsig/foreign.ko
        try signed /lib/modules/$(uname -r)/kernel/drivers/net/mdio.ko
files:
  - {{path: modsig/unsigned.ko, source: unsigned.ko, mode: "0644"}}
  - {{path: modsig/foreign.ko, source: foreign.ko, mode: "0644"}}
"#,
            ws = ws.display()
        ),
    )
    .unwrap();
    // The kernel image first (built into the store if missing), then the modules of that build.
    let kernel_only = dir.path().join("kernel.yml");
    std::fs::write(
        &kernel_only,
        format!(
            "kernel:\n  image: \"@pkg:{}/kernel/metal\"\ninit:\n  - \"@pkg:{}/pkg/init\"\n",
            ws.display(),
            ws.display()
        ),
    )
    .unwrap();
    build(&[&kernel_only], arch)
        .unwrap_or_else(|e| panic!("metal ({arch}): build failed: {}", chain(&e)));
    hostile_modules(arch, dir.path());
    let built = build(&[&yaml], arch)
        .unwrap_or_else(|e| panic!("modsig.yml ({arch}): build failed: {}", chain(&e)));
    let mut vm = Vm::boot(&format!("modsig {arch}"), &built.prefix, &Boot::new(arch));
    let console = vm.wait_for("modsig| CHECK signed=", DEADLINE);
    let checks = Checks::parse(&console);
    for name in ["unsigned", "foreign"] {
        let got = checks.get("000-modsig", name).unwrap_or("no report");
        assert!(
            got.starts_with("refused") && got.contains("Key was rejected"),
            "{arch}: the {name} module: {got}\n{console}"
        );
    }
    // The kernel says why, and the two reasons differ.
    for reason in ["unsigned module", "module with unavailable key"] {
        assert!(
            console.contains(&format!("Loading of {reason} is rejected")),
            "{arch}: the kernel did not reject a {reason}\n{console}"
        );
    }
    let got = checks.get("000-modsig", "signed").unwrap_or("no report");
    assert_eq!(got, "loaded", "{arch}: the signed module\n{console}");
}

#[test]
fn metal_refuses_unsigned_and_foreign_modules_x86_64() {
    metal_refuses_unsigned_and_foreign_modules(Arch::X86_64);
}

#[test]
fn metal_refuses_unsigned_and_foreign_modules_aarch64() {
    metal_refuses_unsigned_and_foreign_modules(Arch::Aarch64);
}
