//! `keel kernel check` and `keel kernel diff` through the binary: a `.config` (plain and
//! gzip), a kernel image in the store, and a system whose command line and sysctl files are
//! checked with its kernel.

mod common;

use common::*;
use keel_image::Arch;
use std::io::Write;

const CONFIG: &str = "# Linux/x86 6.1.0 Kernel Configuration\nCONFIG_STRICT_KERNEL_RWX=y\nCONFIG_KEXEC=y\n# CONFIG_MODULES is not set\nCONFIG_SLAB_MERGE_DEFAULT=y\n";

/// The row of `setting` in a text report: (status, have).
fn row(report: &str, kind: &str, setting: &str) -> (String, String) {
    let line = report
        .lines()
        .find(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 3 && w[1] == kind && w[2] == setting
        })
        .unwrap_or_else(|| panic!("no {kind} {setting} in\n{report}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[0].to_owned(), w[4..].join(" "))
}

#[test]
fn check_reads_a_config_file_plain_or_gzip() {
    let w = Work::empty();
    w.write("kernel.config", CONFIG);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(CONFIG.as_bytes()).unwrap();
    std::fs::write(w.path("config.gz"), gz.finish().unwrap()).unwrap();
    for file in ["kernel.config", "config.gz"] {
        let out = run(&mut w.keel(["kernel", "check", "--arch", "x86_64", file])).ok();
        let report = out.stdout;
        assert!(
            report.starts_with(&format!("kernel: {file} (Linux 6.1)")),
            "{report}"
        );
        assert_eq!(
            row(&report, "kconfig", "STRICT_KERNEL_RWX"),
            ("ok".into(), "y".into())
        );
        assert_eq!(
            row(&report, "kconfig", "KEXEC"),
            ("FAIL".into(), "y".into())
        );
        // No modules: nothing to sign.
        assert_eq!(
            row(&report, "kconfig", "MODULE_SIG_FORCE"),
            ("n/a".into(), "(CONFIG_MODULES is not y)".into())
        );
        // A .config alone has no command line or sysctls.
        assert_eq!(
            row(&report, "cmdline", "slab_nomerge"),
            ("n/a".into(), "(no command line to check it in)".into())
        );
        assert!(
            report.contains("KEXEC: kexec replaces the running kernel"),
            "{report}"
        );
        assert!(
            report.lines().last().unwrap().starts_with("total"),
            "{report}"
        );
    }
    // --strict fails on a FAIL; --json carries every finding and the counts.
    let strict = run(&mut w.keel([
        "kernel",
        "check",
        "--strict",
        "--arch",
        "x86_64",
        "kernel.config",
    ]));
    assert_eq!(strict.code, Some(1));
    let json = run(&mut w.keel([
        "kernel",
        "check",
        "--json",
        "--arch",
        "aarch64",
        "kernel.config",
    ]))
    .ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["version"], "6.1");
    let kexec = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "KEXEC")
        .unwrap();
    assert_eq!(kexec["verdict"]["status"], "fail");
    assert_eq!(kexec["have"], "y");
    let ldt = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "MODIFY_LDT_SYSCALL")
        .unwrap();
    assert_eq!(ldt["verdict"]["why"], "x86_64 only");
    let total = v["counts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(total["group"], "total");
    assert!(total["fail"].as_u64().unwrap() >= 2, "{total}");
    // Not a target.
    let err = run(&mut w.keel(["kernel", "check", "no/such/Thing@@"])).failed();
    assert!(
        err.contains("not a system YAML, kernel recipe, kernel image or kernel configuration"),
        "{err}"
    );
}

#[test]
fn diff_names_the_options_that_differ() {
    let w = Work::empty();
    w.write("a.config", CONFIG);
    w.write(
        "b.config",
        &CONFIG.replace(
            "CONFIG_KEXEC=y\n",
            "# CONFIG_KEXEC is not set\nCONFIG_DEVMEM=y\n",
        ),
    );
    let out = run(&mut w.keel(["kernel", "diff", "a.config", "b.config"])).ok();
    assert_eq!(
        out.stdout,
        "CONFIG_DEVMEM: (absent) -> y\nCONFIG_KEXEC: y -> n\n"
    );
    let same = run(&mut w.keel(["kernel", "diff", "a.config", "a.config"])).ok();
    assert_eq!(same.stdout, "");
}

/// A system: its kernel image's configuration, its YAML's command line, and the sysctl files
/// of its root and containers, the last file's value winning.
#[test]
fn check_a_system_with_its_command_line_and_sysctls() {
    let (w, _) = Work::with_fixtures();
    put_image(
        &w.store(),
        "test/kernel-config:1",
        &image_config(&[], &[]),
        |_| {
            vec![tar_of(&[
                Entry::File("kernel", &kernel_bytes(Arch::X86_64)),
                Entry::File("kernel.tar", &tar_of(&[])),
                Entry::File("config", CONFIG.as_bytes()),
            ])]
        },
    );
    let yaml = system_yaml(APP)
        .replace(KERNEL, "test/kernel-config:1")
        .replace(CMDLINE, "console=ttyS0 slab_nomerge pti=on")
        + "files:\n  - path: etc/sysctl.d/10-a.conf\n    contents: \"kernel.kptr_restrict = 1\\n\"\n  - path: etc/sysctl.d/20-b.conf\n    contents: \"kernel/kptr_restrict=2\\n\"\n";
    w.write("sys.yml", &yaml);
    let out = run(&mut w.keel(["kernel", "check", "--arch", "x86_64", "sys.yml"])).ok();
    let report = out.stdout;
    assert!(
        report.contains("sysctl files: etc/sysctl.d/10-a.conf, etc/sysctl.d/20-b.conf"),
        "{report}"
    );
    assert_eq!(row(&report, "cmdline", "pti"), ("ok".into(), "on".into()));
    assert_eq!(
        row(&report, "kconfig", "SLAB_MERGE_DEFAULT"),
        ("ok".into(), "via cmdline:slab_nomerge=present".into())
    );
    assert_eq!(
        row(&report, "cmdline", "mitigations"),
        ("FAIL".into(), "absent".into())
    );
    assert_eq!(
        row(&report, "sysctl", "kernel.kptr_restrict"),
        ("ok".into(), "2".into())
    );
    assert_eq!(
        row(&report, "sysctl", "fs.suid_dumpable"),
        ("FAIL".into(), "absent".into())
    );
    // A kernel image without a configuration is named.
    w.write("plain.yml", &system_yaml(APP));
    let err = run(&mut w.keel(["kernel", "check", "plain.yml"])).failed();
    assert!(err.contains("holds no configuration"), "{err}");
}

/// `kernel/metal` signs its modules: its tag covers the signing key (the store's, made on first
/// use, or `KEEL_KERNEL_SIGNING_KEY`), a missing key file is named, and a dry run, which has
/// no store, shows the tag as unbuilt.
#[test]
fn a_signing_recipe_is_tagged_with_its_key() {
    let w = Work::empty();
    let metal = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/metal");
    let metal = metal.to_str().unwrap();
    let tag = |w: &Work, key: Option<&std::path::Path>| {
        let mut cmd = w.keel(["pkg", "show-tag", metal]);
        if let Some(key) = key {
            cmd.env("KEEL_KERNEL_SIGNING_KEY", key);
        }
        run(&mut cmd).ok().stdout.trim().to_owned()
    };
    let store_key = w.store_dir().join("kernel-keys/module-signing.pem");
    let first = tag(&w, None);
    assert!(first.contains("keel/kernel:"), "{first}");
    assert!(store_key.is_file(), "no key made in the store");
    assert_eq!(tag(&w, None), first, "the store's key changed");
    // Another key, another image.
    let other = w.path("other.pem");
    keel_kernel::source::ensure_signing_key(&other, "other").unwrap();
    let with_other = tag(&w, Some(&other));
    assert!(with_other.contains("keel/kernel:") && with_other != first);
    // A key file that is not there.
    let err = run(w
        .keel(["pkg", "show-tag", metal])
        .env("KEEL_KERNEL_SIGNING_KEY", w.path("missing.pem")))
    .failed();
    assert!(
        err.contains("missing.pem: no such file (KEEL_KERNEL_SIGNING_KEY"),
        "{err}"
    );
    // A dry run names no key.
    w.write(
        "metal.yml",
        &format!("kernel:\n  image: \"@pkg:{metal}\"\n  cmdline: console=ttyS0\ninit: []\n"),
    );
    let out = run(&mut w.keel(["build", "--dry-run", "metal.yml"])).ok();
    assert!(
        out.stdout.contains("keel/kernel:unbuilt") || out.stderr.contains("keel/kernel:unbuilt"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}
