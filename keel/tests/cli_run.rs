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

/// Kills a process when dropped: a failed assertion must not leave keel or a stand-in QEMU
/// (and so a virtiofsd) running.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// An executable script in the workspace.
fn script(w: &Work, name: &str, text: &str) -> PathBuf {
    let p = w.write(name, text);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A QEMU that connects to every virtio-fs socket it is given (as QEMU does while it creates
/// its devices), then records its arguments and pid like [`fake_qemu`] and waits for ever.
fn connecting_qemu(w: &Work, pidfile: &Path) -> PathBuf {
    script(
        w,
        "qemu-fs",
        &format!(
            "#!/usr/bin/env python3\n\
             import os, socket, sys, time\n\
             args = sys.argv[1:]\n\
             held = []\n\
             for i, a in enumerate(args):\n\
             \x20   if a == '-chardev' and args[i + 1].startswith('socket,id=keelfs'):\n\
             \x20       s = socket.socket(socket.AF_UNIX)\n\
             \x20       s.connect(args[i + 1].split(',path=', 1)[1].replace(',,', ','))\n\
             \x20       held.append(s)\n\
             open('{0}.args', 'w').write(' '.join(args) + '\\n')\n\
             open('{0}', 'w').write('%d\\n' % os.getpid())\n\
             time.sleep(1000)\n",
            pidfile.display()
        ),
    )
}

/// The pid of the virtiofsd serving `sys-state/virtiofsN.sock` (it writes `SOCKET.pid`).
fn virtiofsd_pid(w: &Work, n: usize) -> String {
    let file = w.path(&format!("sys-state/virtiofs{n}.sock.pid"));
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_owned()
}

#[test]
fn shares_and_devices_reach_qemu_and_virtiofsd_dies_with_keel() {
    let w = Work::empty();
    let target = prefix(&w);
    std::fs::create_dir(w.path("shared")).unwrap();
    let pidfile = w.path("qemu.pid.fake");
    let qemu = fake_qemu(&w, &pidfile);
    let stderr = std::fs::File::create(w.path("stderr")).unwrap();
    let mut keel = w
        .keel([
            "run",
            "qemu",
            "--arch",
            "x86_64",
            "--accel",
            "tcg",
            "--virtiofs",
            "shared,tag=data,readonly",
            "--device",
            "virtio-balloon-pci",
            "--device",
            "qemu-xhci,id=usb",
            "--virtiofsd",
        ])
        .arg(keel_testutil::virtiofsd())
        .arg("--qemu")
        .arg(&qemu)
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let _reaper = KillOnDrop(keel.id().to_string());
    wait_for("the stand-in QEMU never started", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let daemon = virtiofsd_pid(&w, 0);
    assert!(alive(&daemon), "virtiofsd is not running");
    let args = std::fs::read_to_string(w.path("qemu.pid.fake.args")).unwrap();
    for want in [
        "-machine q35,memory-backend=keel-mem ",
        "-object memory-backend-memfd,id=keel-mem,size=1024M,share=on ",
        "-chardev socket,id=keelfs0,path=",
        "/sys-state/virtiofs0.sock -device vhost-user-fs-pci,chardev=keelfs0,tag=data ",
        "-device virtio-balloon-pci -device qemu-xhci,id=usb ",
    ] {
        assert!(args.contains(want), "no {want:?} in {args}");
    }
    let said = std::fs::read_to_string(w.path("stderr")).unwrap();
    assert!(
        said.contains("shared as virtiofs tag data (read-only)"),
        "{said}"
    );
    let qemu_pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &keel.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    keel.wait().unwrap();
    wait_for(&format!("QEMU {qemu_pid} outlived keel"), || {
        !alive(&qemu_pid)
    });
    wait_for(&format!("virtiofsd {daemon} outlived keel"), || {
        !alive(&daemon)
    });
}

#[test]
fn a_detached_vm_keeps_its_virtiofsd_until_qemu_exits() {
    let w = Work::empty();
    let target = prefix(&w);
    std::fs::create_dir(w.path("shared")).unwrap();
    let pidfile = w.path("qemu.pid.fake");
    let qemu = connecting_qemu(&w, &pidfile);
    let out = run(w
        .keel([
            "run",
            "qemu",
            "--detached",
            "--arch",
            "x86_64",
            "--accel",
            "tcg",
            "--virtiofs",
            "shared",
            "--qemu",
        ])
        .arg(&qemu)
        .arg(&target)
        .env("KEEL_VIRTIOFSD", keel_testutil::virtiofsd()))
    .ok();
    let pid = out.stdout.trim().to_owned();
    let _reaper = KillOnDrop(pid.clone());
    assert!(
        out.stderr.contains("shared as virtiofs tag virtiofs0\n"),
        "{}",
        out.stderr
    );
    let daemon = virtiofsd_pid(&w, 0);
    // keel has exited; QEMU and its virtiofsd run on.
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(&pid), "the detached QEMU died with keel");
    assert!(alive(&daemon), "the detached VM's virtiofsd died with keel");
    // QEMU's end (its socket closing) is virtiofsd's.
    let _ = std::process::Command::new("kill").arg(&pid).status();
    wait_for(&format!("virtiofsd {daemon} outlived QEMU {pid}"), || {
        !alive(&daemon)
    });
}

#[test]
fn a_detached_qemu_that_fails_takes_its_virtiofsd_along() {
    let w = Work::empty();
    let target = prefix(&w);
    std::fs::create_dir(w.path("shared")).unwrap();
    let qemu = script(
        &w,
        "qemu-fails",
        "#!/bin/sh\necho 'qemu-system-x86_64: no such machine' >&2\nexit 1\n",
    );
    let err = run(w
        .keel([
            "run",
            "qemu",
            "--detached",
            "--arch",
            "x86_64",
            "--accel",
            "tcg",
            "--virtiofs",
            "shared",
            "--qemu",
        ])
        .arg(&qemu)
        .arg(&target)
        .env("KEEL_VIRTIOFSD", keel_testutil::virtiofsd()))
    .failed();
    assert!(
        err.contains("qemu exited (exit status: 1) before connecting to virtiofsd; its log "),
        "{err}"
    );
    assert!(
        err.contains("/sys-state/qemu.log:\nqemu-system-x86_64: no such machine"),
        "{err}"
    );
    let daemon = virtiofsd_pid(&w, 0);
    wait_for(
        &format!("virtiofsd {daemon} outlived a failed QEMU"),
        || !alive(&daemon),
    );
}

#[test]
fn bad_shares_and_devices_are_refused_before_qemu_starts() {
    let w = Work::empty();
    let target = prefix(&w);
    std::fs::create_dir_all(w.path("a/data")).unwrap();
    std::fs::create_dir_all(w.path("b/data")).unwrap();
    w.write("file", "");
    let pidfile = w.path("qemu.pid.fake");
    let qemu = fake_qemu(&w, &pidfile);
    let long = "t".repeat(37);
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--device=-drive,file=/etc/shadow".into()],
            "invalid --device \"-drive,file=/etc/shadow\": expected DRIVER[,PROP=VALUE]...".into(),
        ),
        (
            vec!["--device=".into()],
            "invalid --device \"\"".into(),
        ),
        (
            vec!["--virtiofs".into(), "nope".into()],
            "--virtiofs nope: not a directory: No such file or directory".into(),
        ),
        (
            vec!["--virtiofs".into(), "file".into()],
            "--virtiofs file: not a directory".into(),
        ),
        (
            vec![
                "--virtiofs".into(),
                "a/data".into(),
                "--virtiofs".into(),
                "b/data,tag=virtiofs0".into(),
            ],
            "--virtiofs: the tag \"virtiofs0\" is given to two directories (give one of them tag=OTHER)"
                .into(),
        ),
        (
            vec!["--virtiofs".into(), format!("a,tag={long}")],
            format!("the tag \"{long}\" is 37 bytes, over the 36 virtio-fs allows"),
        ),
        (
            vec!["--virtiofs".into(), "a,ro".into()],
            "invalid --virtiofs \"a,ro\": expected [path=]DIR[,tag=TAG][,readonly][,sandbox=namespace|none]"
                .into(),
        ),
        (
            vec![
                "--virtiofs".into(),
                "a".into(),
                "--virtiofsd".into(),
                "/nonexistent/virtiofsd".into(),
            ],
            "--virtiofs needs virtiofsd, which is not installed (tried /nonexistent/virtiofsd): install the virtiofsd package".into(),
        ),
    ];
    for (flags, want) in cases {
        let out = run(w
            .keel(["run", "qemu", "--arch", "x86_64", "--accel", "tcg"])
            .args(&flags)
            .arg("--qemu")
            .arg(&qemu)
            .arg(&target));
        assert_ne!(out.code, Some(0), "{flags:?}: {}", out.stderr);
        assert!(out.stderr.contains(&want), "{flags:?}: {}", out.stderr);
    }
    assert!(!pidfile.exists(), "QEMU was started");
}

/// A QEMU that writes its pid where `-pidfile` says, as QEMU does (and its arguments beside it,
/// in `qemu.pid.args`), and stays a shell (its command line, which names the state directory,
/// is how `keel run ls` and `stop` know it).
fn pidfile_qemu(w: &Work) -> PathBuf {
    let q = w.write(
        "qemu-pidfile",
        "#!/bin/sh\nall=\"$*\"\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = -pidfile ]; then echo \"$all\" > \"$2.args\"; echo $$ > \"$2\"; fi\n  shift\ndone\nwhile :; do sleep 1; done\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
    q
}

#[test]
fn a_detached_vm_is_listed_and_stopped() {
    let w = Work::empty();
    let target = prefix(&w);
    let qemu = pidfile_qemu(&w);
    let out = run(w
        .keel([
            "run", "qemu", "-d", "--arch", "x86_64", "--accel", "tcg", "--qemu",
        ])
        .arg(&qemu)
        .arg(&target))
    .ok();
    let pid = out.stdout.trim().to_owned();
    wait_for("the stand-in QEMU writes its pidfile", || {
        w.path("sys-state/qemu.pid").is_file()
    });
    let state = std::fs::canonicalize(w.path("sys-state")).unwrap();

    let listed = run(&mut w.keel(["run", "ls"])).ok();
    assert!(
        listed.stdout.contains(&format!("{} ", state.display())) && listed.stdout.contains("1/1"),
        "{}",
        listed.stdout
    );
    // No guest answers the control channel here: stop ends the process after the timeout.
    let stopped = run(w.keel(["run", "stop", "--timeout", "1"]).arg(&target)).ok();
    assert!(
        stopped.stderr.contains("stopped 1 VM(s)"),
        "{}",
        stopped.stderr
    );
    wait_for("the VM ends", || !alive(&pid));
    let listed = run(&mut w.keel(["run", "ls", "--json"])).ok();
    assert_eq!(listed.stdout, "", "an ended run is not listed");
    let again = run(w.keel(["run", "stop"]).arg(&target)).failed();
    assert!(again.contains("nothing keel started runs in"), "{again}");

    // --all: whatever is listed.
    let out = run(w
        .keel([
            "run", "qemu", "-d", "--arch", "x86_64", "--accel", "tcg", "--qemu",
        ])
        .arg(&qemu)
        .arg(&target))
    .ok();
    let pid = out.stdout.trim().to_owned();
    wait_for("the stand-in QEMU writes its pidfile again", || {
        std::fs::read_to_string(w.path("sys-state/qemu.pid")).is_ok_and(|p| p.trim() == pid)
    });
    let stopped = run(&mut w.keel(["run", "stop", "--all", "--timeout", "1"])).ok();
    assert!(
        stopped.stderr.contains("stopped 1 VM(s)"),
        "{}",
        stopped.stderr
    );
    wait_for("the VM ends", || !alive(&pid));
}

#[test]
fn nodes_that_cannot_work_are_refused_before_anything_starts() {
    let w = Work::empty();
    let target = prefix(&w);
    let qemu = pidfile_qemu(&w);
    for (args, expected) in [
        (&["--nodes", "0"][..], "--nodes 0: expected 1 to 200"),
        (&["--nodes", "201"][..], "--nodes 201: expected 1 to 200"),
        (
            &["--nodes", "2", "--disk", "file=one.qcow2"][..],
            "names one file, which every node would write",
        ),
        (
            &["--nodes", "2", "--console-file", "c.log"][..],
            "each node's console goes to STATE/nodeN/console.log",
        ),
        (
            &["--nodes", "2", "--node-data", "x=y"][..],
            "invalid --node-data \"x=y\"",
        ),
    ] {
        let out = run(w
            .keel([
                "run", "qemu", "-d", "--arch", "x86_64", "--accel", "tcg", "--qemu",
            ])
            .arg(&qemu)
            .args(args)
            .arg(&target))
        .failed();
        assert!(out.contains(expected), "{args:?}: {out}");
        assert!(
            !w.path("sys-state").exists(),
            "{args:?} left a state directory"
        );
    }
}

#[test]
fn each_node_gets_its_own_state_network_card_and_metadata() {
    let w = Work::empty();
    let target = prefix(&w);
    let qemu = pidfile_qemu(&w);
    w.write("one.json", "{\"role\": {\"content\": \"manager\"}}");
    let out = run(w
        .keel([
            "run",
            "qemu",
            "--nodes",
            "2",
            "-d",
            "--arch",
            "x86_64",
            "--accel",
            "tcg",
            "--publish",
            "8080:80",
            "--disk",
            "size=1G",
            "--data",
            "{}",
            "--qemu",
        ])
        .arg(&qemu)
        .arg("--node-data")
        .arg(format!("1={}", w.path("one.json").display()))
        .arg(&target))
    .ok();
    assert!(out.stderr.contains("node2 192.168.76.12"), "{}", out.stderr);
    let state = std::fs::canonicalize(w.path("sys-state")).unwrap();
    for n in 1..=2 {
        wait_for("the stand-in QEMUs start", || {
            state.join(format!("node{n}/qemu.pid.args")).is_file()
        });
    }
    let args =
        |n: u32| std::fs::read_to_string(state.join(format!("node{n}/qemu.pid.args"))).unwrap();
    let (one, two) = (args(1), args(2));
    let socket = state.join("lan.sock");
    for (n, args) in [(1, &one), (2, &two)] {
        assert!(
            args.contains(&format!("addr.path={}", socket.display()))
                && args.contains(&format!("netdev=lan0,mac=02:6b:65:4c:00:0{n}")),
            "node{n}: {args}"
        );
        let node = state.join(format!("node{n}"));
        assert!(
            args.contains(&format!("{}/disk0.qcow2", node.display()))
                && args.contains(&format!("{}/data.iso", node.display())),
            "node{n}: its own disk and metadata: {args}"
        );
    }
    assert!(one.contains("hostfwd=tcp:127.0.0.1:8080-:80"), "{one}");
    assert!(!two.contains("hostfwd"), "only node 1 publishes: {two}");
    // node 1's metadata is its own.
    let iso = |n: u32| std::fs::read(state.join(format!("node{n}/data.iso"))).unwrap();
    let has =
        |data: &[u8], needle: &str| data.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has(&iso(1), "manager") && !has(&iso(2), "manager"));

    // The switch runs (the stand-ins never connect; it would end after two minutes).
    let lan = keel::cluster::read_record(&state)
        .unwrap()
        .lan_pid
        .to_string();
    assert!(alive(&lan), "the switch is not running");
    let listed = run(&mut w.keel(["run", "ls"])).ok();
    assert!(
        listed.stdout.contains("2/2") && listed.stdout.contains("192.168.76.12"),
        "{}",
        listed.stdout
    );

    // A stopped node starts again as it started: the same QEMU command line (disk, metadata,
    // network card), from the recorded command, run from another directory.
    let node2 = |record: &keel::cluster::Record| record.nodes[1].pid.to_string();
    let old = node2(&keel::cluster::read_record(&state).unwrap());
    assert!(run(std::process::Command::new("kill").args(["-9", &old])).code == Some(0));
    wait_for("node 2's stand-in ends", || !alive(&old));
    std::fs::remove_file(state.join("node2/qemu.pid.args")).unwrap();
    let refused = run(w.keel(["run", "start", "--node", "1"]).arg(&target)).failed();
    assert!(
        refused.contains("node 1 is running: stop it first with keel ctl")
            && refused.contains("node1 poweroff"),
        "{refused}"
    );
    let refused = run(w.keel(["run", "start", "--node", "3"]).arg(&target)).failed();
    assert!(refused.contains("has no node 3"), "{refused}");
    let started = run(w
        .keel(["run", "start"])
        .arg(&state)
        .current_dir(std::env::temp_dir()))
    .ok();
    assert!(
        started.stderr.contains("node2 192.168.76.12") && started.stderr.contains("started again"),
        "{}",
        started.stderr
    );
    let new = node2(&keel::cluster::read_record(&state).unwrap());
    assert_ne!(new, old);
    assert!(alive(&new), "node 2 is not running again");
    wait_for("node 2's stand-in starts again", || {
        state.join("node2/qemu.pid.args").is_file()
    });
    assert_eq!(args(2), two, "node 2's QEMU command line changed");
    let again = run(w.keel(["run", "start"]).arg(&target)).ok();
    assert!(again.stderr.contains("every node of"), "{}", again.stderr);

    let stopped = run(w.keel(["run", "stop", "--timeout", "1"]).arg(&target)).ok();
    assert!(
        stopped.stderr.contains("stopped 2 VM(s)"),
        "{}",
        stopped.stderr
    );
    wait_for("the switch ends with its nodes", || !alive(&lan));
    let gone = run(w.keel(["run", "start", "--node", "2"]).arg(&target)).failed();
    assert!(gone.contains("has ended with its last node"), "{gone}");
}
