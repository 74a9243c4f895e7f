//! `keel run qemu` through the binary, with a stand-in QEMU (a shell script): the VM's life is
//! tied to keel's, and what cannot boot is refused before QEMU starts.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A build prefix whose kernel is an x86_64 bzImage as far as its header goes.
fn prefix(w: &Work) -> PathBuf {
    let mut kernel = vec![0u8; 0x400];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(w.path("sys-kernel"), kernel).unwrap();
    w.write("sys-initrd.img", "initrd");
    w.write("sys-cmdline", "console=ttyS0\n");
    w.path("sys")
}

/// A QEMU that records its arguments in `pidfile.args`, its pid in `pidfile` and then waits
/// for ever.
fn fake_qemu(w: &Work, pidfile: &Path) -> PathBuf {
    let q = w.write(
        "qemu",
        &format!(
            "#!/bin/sh\necho \"$@\" > {0}.args\necho $$ > {0}\nexec sleep 1000\n",
            pidfile.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
    q
}

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_vm_dies_with_keel() {
    for signal in ["TERM", "KILL"] {
        let w = Work::empty();
        let target = prefix(&w);
        let pidfile = w.path("qemu.pid.fake");
        let qemu = fake_qemu(&w, &pidfile);
        let mut keel = w
            .keel([
                "run", "qemu", "--arch", "x86_64", "--accel", "tcg", "--qemu",
            ])
            .arg(&qemu)
            .arg(&target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the stand-in QEMU never started", || {
            std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
        });
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
        assert!(alive(&pid));
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &keel.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        keel.wait().unwrap();
        wait_for(
            &format!("QEMU {pid} outlived keel killed with SIG{signal}"),
            || !alive(&pid),
        );
    }
}

#[test]
fn what_cannot_boot_is_refused_before_qemu_starts() {
    let w = Work::empty();
    let target = prefix(&w);
    let pidfile = w.path("qemu.pid.fake");
    let qemu = fake_qemu(&w, &pidfile);
    // An x86_64 build booted as aarch64.
    let err = run(w
        .keel([
            "run", "qemu", "--arch", "aarch64", "--accel", "tcg", "--qemu",
        ])
        .arg(&qemu)
        .arg(&target))
    .failed();
    assert!(
        err.contains(
            "sys-kernel for aarch64: it is a kernel for x86_64 (boot it with --arch x86_64)"
        ),
        "{err}"
    );
    // An .iso that is not one, and an empty disk image.
    w.write("junk.iso", &"x".repeat(40000));
    w.write("empty.img", "");
    for (file, want) in [
        ("junk.iso", "not an ISO 9660 image"),
        ("empty.img", "the file is empty"),
    ] {
        let err = run(w
            .keel([
                "run", "qemu", "--arch", "x86_64", "--accel", "tcg", "--qemu",
            ])
            .arg(&qemu)
            .arg(w.path(file)))
        .failed();
        assert!(err.contains(want), "{file}: {err}");
    }
    assert!(!pidfile.exists(), "QEMU was started");
}

#[test]
fn a_detached_vm_outlives_keel() {
    let w = Work::empty();
    let target = prefix(&w);
    let pidfile = w.path("qemu.pid.fake");
    let qemu = fake_qemu(&w, &pidfile);
    let out = run(w
        .keel([
            "run",
            "qemu",
            "--detached",
            "--arch",
            "x86_64",
            "--accel",
            "tcg",
            "--qemu",
        ])
        .arg(&qemu)
        .arg(&target))
    .ok();
    let pid = out.stdout.trim().to_owned();
    assert!(pid.parse::<u32>().is_ok(), "{}", out.stdout);
    assert!(
        out.stderr.contains("sys-state/console.log"),
        "{}",
        out.stderr
    );
    // keel has exited; the VM runs on.
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(&pid), "the detached QEMU died with keel");
    let _ = std::process::Command::new("kill").arg(&pid).status();
    // Its console went to the state directory's file, not the terminal.
    let args = std::fs::read_to_string(w.path("qemu.pid.fake.args")).unwrap();
    assert!(
        args.contains("-serial file:") && args.contains("sys-state/console.log"),
        "{args}"
    );
}

#[test]
fn metadata_create_writes_a_cidata_volume() {
    let w = Work::empty();
    run(&mut w.keel(["metadata", "create", "meta.iso", "{\"hostname\":\"box\"}"])).ok();
    let iso = std::fs::read(w.path("meta.iso")).unwrap();
    assert_eq!(&iso[0x8001..0x8006], b"CD001");
    let has = |needle: &[u8]| iso.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"CIDATA") || has(b"cidata"), "no cidata label");
    assert!(
        has(b"{\"hostname\":\"box\"}"),
        "the user data is not in the volume"
    );
    // The same from a file, and a missing file is an error naming it.
    w.write("user-data", "{\"hostname\":\"box\"}");
    run(&mut w.keel([
        "metadata",
        "create",
        "--data-file",
        "user-data",
        "meta2.iso",
    ]))
    .ok();
    assert_eq!(std::fs::read(w.path("meta2.iso")).unwrap(), iso);
    let err = run(&mut w.keel(["metadata", "create", "--data-file", "nope", "m3.iso"])).failed();
    assert!(err.contains("cannot read --data-file nope"), "{err}");
    assert!(!w.path("m3.iso").exists());
}
