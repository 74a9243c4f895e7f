//! Guest behaviour, observed in QEMU on both architectures: the boot sequence and its failure
//! handling (`lifecycle`), and every container setting seen from inside a container
//! (`fields`). The systems are `tests/cases/*.yml`; containers report `CHECK key=value` lines.

use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, Checks, build, case, chain, timeline};
use std::time::Duration;

/// Generous: TCG boots take 5–25 s alone, and tests share two cores with builds.
const DEADLINE: Duration = Duration::from_secs(300);

fn boot(yaml: &str, arch: Arch, networking: bool) -> (Vm, keel_vmtests::Built) {
    let built = build(&[&case(yaml)], arch)
        .unwrap_or_else(|e| panic!("{yaml} ({arch}): build failed: {}", chain(&e)));
    let mut how = Boot::new(arch);
    how.networking = networking;
    let vm = Vm::boot(&format!("{yaml} ({arch})"), &built.prefix, &how);
    (vm, built)
}

/// Asserts `checks` has `want` for `key` of `container`.
#[track_caller]
fn want(checks: &Checks, container: &str, key: &str, want: &str) {
    assert_eq!(
        checks.get(container, key),
        Some(want),
        "{container}: CHECK {key}"
    );
}

fn lifecycle(arch: Arch) {
    let (mut vm, _built) = boot("lifecycle.yml", arch, false);
    // The checker service powers off through SIGTERM to PID 1 once it has reported.
    let console = vm.wait_exit(DEADLINE);
    let checks = Checks::parse(&console);
    let fail =
        |what: &str| -> ! { panic!("lifecycle ({arch}): {what}\n--- console ---\n{console}") };

    // Onboot containers ran in order, each finished before the next started; a failure (exit 3)
    // and a timeout did not stop the boot.
    let steps: Vec<String> = timeline(&console)
        .into_iter()
        .filter(|s| s.starts_with("onboot") || s == "services started")
        .collect();
    let expected = [
        "onboot 000-first start",
        "onboot 000-first end (status 0)",
        "onboot 001-fail start",
        "onboot 001-fail end (status 3)",
        "onboot 002-slow start",
        "onboot 002-slow end (status 137)",
        "onboot 003-last start",
        "onboot 003-last end (status 0)",
        "onboot done",
        "services started",
    ];
    if steps != expected {
        fail(&format!("timeline {steps:#?}, expected {expected:#?}"));
    }
    want(&checks, "000-first", "finished", "1");
    want(&checks, "001-fail", "ran", "1");
    want(&checks, "002-slow", "ran", "1");
    assert_eq!(
        checks.get("002-slow", "finished"),
        None,
        "002-slow outlived its timeout"
    );
    if !console.contains("onboot 002-slow: killed after timeout") {
        fail("no timeout error for 002-slow");
    }
    want(&checks, "003-last", "ran", "1");
    want(&checks, "sleeper", "ran", "1");

    // Bundles that cannot run are logged, and everything else runs.
    for (id, why) in [
        ("badjson", "config.json"),
        ("norootfs", "rootfs"),
        ("nobinary", "/does/not/exist"),
    ] {
        let logged = console.lines().any(|l| {
            l.contains(&format!("error: service {id}: failed to start")) && l.contains(why)
        });
        if !logged {
            fail(&format!(
                "no start failure of {id} mentioning {why:?} logged"
            ));
        }
    }

    // keelctl list --json from a service lists every container with its pid and status.
    let list = checks
        .get("check", "list")
        .unwrap_or_else(|| fail("no keelctl list"));
    let list: serde_json::Value = serde_json::from_str(list)
        .unwrap_or_else(|e| fail(&format!("keelctl list --json is not JSON: {e}")));
    let rows = list
        .as_array()
        .unwrap_or_else(|| fail("keelctl list is not an array"));
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| fail(&format!("{id} missing from keelctl list")))
    };
    for id in [
        "000-first",
        "001-fail",
        "002-slow",
        "003-last",
        "badjson",
        "nobinary",
        "norootfs",
    ] {
        assert_eq!(row(id)["pid"], 0, "{id} does not run");
    }
    assert_eq!(row("000-first")["status"], "stopped");
    assert_eq!(row("001-fail")["exit_status"], 3);
    assert_eq!(row("002-slow")["status"], "failed");
    // Services that cannot start are retried (restart: always) with backoff, so by now they
    // show as failed, waiting to retry, or in a crash loop: never running.
    for id in ["badjson", "nobinary", "norootfs"] {
        let status = row(id)["status"].as_str().unwrap_or_default().to_owned();
        assert!(
            ["failed", "backoff", "crashloop"].contains(&status.as_str()),
            "{id}: {status}"
        );
    }
    for id in ["sleeper", "check"] {
        assert_eq!(row(id)["status"], "running", "{id}");
        assert!(
            row(id)["pid"].as_i64().is_some_and(|p| p > 1),
            "{id} has a pid"
        );
        assert_eq!(row(id)["kind"], "service");
    }
    assert_eq!(
        rows.len(),
        9,
        "exactly the containers of the YAML and files: {rows:#?}"
    );

    // PID 1 keeps oom_score_adj 0 although a service set its own; the root is read-only.
    want(&checks, "check", "pid1_oom", "0");
    // An idle PID 1 sleeps in poll: a few ticks in 2 s at most, where one that spins (as it did
    // on the host channel's port with no host client) uses nearly all 200.
    let ticks: u32 = checks
        .get("check", "pid1_ticks")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| fail("no pid1_ticks"));
    if ticks > 40 {
        fail(&format!(
            "PID 1 used {ticks} of 200 ticks in 2 idle seconds"
        ));
    }
    want(&checks, "check", "sleep_oom", "-300");
    let root = checks.get("check", "pid1_root").unwrap_or_default();
    assert!(
        root.split(',').any(|o| o == "ro"),
        "PID 1's root is read-only: {root}"
    );

    // The orderly shutdown ran to the end.
    let steps = timeline(&console);
    for step in ["shutdown requested", "containers stopped"] {
        if !steps.iter().any(|s| s == step) {
            fail(&format!("no timeline step {step:?}"));
        }
    }
}

fn fields(arch: Arch) {
    let (mut vm, _built) = boot("fields.yml", arch, true);
    let console = vm.wait_exit(DEADLINE);
    let c = Checks::parse(&console);
    let ids = [
        "000-default",
        "001-caps",
        "002-user",
        "003-netns",
        "004-seccomp",
        "005-masked",
        "006-host",
    ];
    for id in ids {
        if c.get(id, "done") != Some("1") {
            panic!("fields ({arch}): {id} did not report everything\n--- console ---\n{console}");
        }
    }
    const NONE: &str = "0000000000000000";

    // Defaults: no capabilities at all, keel's default seccomp profile (filter mode), no
    // no_new_privs, own pid namespace, host network, runc's masked paths (not /proc/cmdline).
    for set in ["cap_eff", "cap_prm", "cap_bnd", "cap_amb", "cap_inh"] {
        want(&c, "000-default", set, NONE);
    }
    want(&c, "000-default", "nnp", "0");
    want(&c, "000-default", "seccomp", "2");
    want(&c, "000-default", "oom", "0");
    want(&c, "000-default", "uid", "0");
    want(&c, "000-default", "pid", "1");
    want(&c, "000-default", "pid1", "sh");
    want(&c, "000-default", "netdevs", "lo,eth0");
    want(&c, "000-default", "cwd", "/");
    assert_ne!(c.get("000-default", "cmdline_bytes"), Some("0"));
    want(&c, "000-default", "firmware_entries", "0");

    // capabilities: [CAP_NET_ADMIN (12), CAP_SYS_TIME (25)] → bounding, effective, permitted and
    // inheritable; no ambient.
    for set in ["cap_eff", "cap_prm", "cap_bnd", "cap_inh"] {
        want(&c, "001-caps", set, "0000000002001000");
    }
    want(&c, "001-caps", "cap_amb", NONE);
    want(&c, "001-caps", "nnp", "1");
    want(&c, "001-caps", "oom", "-500");
    want(&c, "001-caps", "nofile", "1024/2048");
    want(&c, "001-caps", "foo", "bar baz");
    want(&c, "001-caps", "cwd", "/tmp");
    let root = c.get("001-caps", "root").unwrap_or_default();
    assert!(root.starts_with("ro,"), "readonly: root mount {root}");
    want(
        &c,
        "001-caps",
        "touch",
        "touch: /keel-test: Read-only file system",
    );
    let check = c.get("001-caps", "check_mount").unwrap_or_default();
    assert!(check.starts_with("ro,"), "bind /check is ro: {check}");
    let scratch = c.get("001-caps", "scratch_mount").unwrap_or_default();
    assert!(
        scratch.starts_with("tmpfs rw,") && scratch.contains("size=1024k"),
        "tmpfs /scratch:size=1m: {scratch}"
    );
    want(&c, "001-caps", "mkdir", "ok");

    // uid/gid/additionalGids, and an ambient capability that survives exec as non-root.
    want(&c, "002-user", "uid", "1000");
    want(&c, "002-user", "gid", "1001");
    assert_eq!(
        c.get("002-user", "groups").map(str::trim),
        Some("1002 1003")
    );
    for set in ["cap_eff", "cap_prm", "cap_bnd", "cap_amb"] {
        want(&c, "002-user", set, "0000000000000400");
    }

    // net: new has only lo, and its namespaced sysctl does not leak to the host's namespace.
    want(&c, "003-netns", "netdevs", "lo");
    want(&c, "003-netns", "ip_forward", "1");
    want(&c, "006-host", "ip_forward", "0");

    // seccomp: mkdir(at) denied with EPERM, in filter mode.
    want(&c, "004-seccomp", "seccomp", "2");
    want(&c, "004-seccomp", "nnp", "1");
    want(
        &c,
        "004-seccomp",
        "mkdir",
        "mkdir: can't create directory '/scratch/d': Operation not permitted",
    );

    // maskedPaths: a file reads empty, a directory lists nothing.
    want(&c, "005-masked", "cmdline_bytes", "0");
    want(&c, "005-masked", "firmware_entries", "0");

    // pid: host sees PID 1, whose oom_score_adj stayed 0 and whose root is read-only.
    want(&c, "006-host", "pid1", "init");
    assert_ne!(c.get("006-host", "pid"), Some("1"));
    want(&c, "006-host", "pid1_oom", "0");
    let root = c.get("006-host", "pid1_root").unwrap_or_default();
    assert!(root.starts_with("ro,"), "PID 1's root is read-only: {root}");

    // The last service powered the VM off through PID 1.
    want(&c, "off", "off", "1");
    assert!(timeline(&console).iter().any(|s| s == "containers stopped"));
}

#[test]
fn lifecycle_x86_64() {
    lifecycle(Arch::X86_64);
}

#[test]
fn lifecycle_aarch64() {
    lifecycle(Arch::Aarch64);
}

#[test]
fn fields_x86_64() {
    fields(Arch::X86_64);
}

#[test]
fn fields_aarch64() {
    fields(Arch::Aarch64);
}
