//! Successful builds through the `keel` binary: what the outputs hold, that they are
//! byte-reproducible, the lock file, `keel validate` and `keel cache`.

mod common;

use common::*;
use keel_image::Arch;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `/etc/hosts` as every image gets it.
const HOSTS: &str = "127.0.0.1       localhost\n::1     localhost ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n";
/// LinuxKit's default timestamp, used when `SOURCE_DATE_EPOCH` is unset.
const DEFAULT_EPOCH: u64 = 1_492_533_000;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file of a directory: name → content.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    listing(dir)
        .into_iter()
        .map(|n| {
            let data = read(&dir.join(&n));
            (n, data)
        })
        .collect()
}

fn config_json(initrd: &BTreeMap<String, Member>, bundle: &str) -> serde_json::Value {
    let m = initrd
        .get(&format!("{bundle}/config.json"))
        .unwrap_or_else(|| panic!("no {bundle}/config.json"));
    serde_json::from_slice(&m.data).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reproducibility.

/// One way of running a build: working directory (relative to the workspace), `TZ`, umask and
/// `SOURCE_DATE_EPOCH`.
struct Setting {
    cwd: &'static str,
    tz: &'static str,
    umask: &'static str,
    epoch: Option<&'static str>,
}

/// Builds `sys.yml` for `arch` into `out` (absolute paths, so the working directory does not
/// matter to the arguments): kernel+initrd and tar-kernel-initrd in one build, tar in another.
fn build_all(w: &Work, arch: Arch, out: &str, s: &Setting) {
    let cwd = w.path(s.cwd);
    std::fs::create_dir_all(&cwd).unwrap();
    let yaml = w.path("sys.yml");
    let dir = w.path(out);
    let arch = arch.uname();
    for formats in [
        &["-f", "kernel+initrd", "-f", "tar-kernel-initrd"][..],
        &["-f", "tar"],
    ] {
        let mut args: Vec<std::ffi::OsString> = vec!["build".into(), "--arch".into(), arch.into()];
        args.extend(formats.iter().map(|f| (*f).into()));
        args.push("--dir".into());
        args.push(dir.clone().into_os_string());
        args.push(yaml.clone().into_os_string());
        let mut cmd = w.keel_with_umask(s.umask, &args);
        cmd.current_dir(&cwd).env("TZ", s.tz);
        if let Some(e) = s.epoch {
            cmd.env("SOURCE_DATE_EPOCH", e);
        }
        run(&mut cmd).ok();
    }
}

#[test]
fn outputs_are_byte_reproducible_for_both_architectures() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    let first = Setting {
        cwd: "",
        tz: "UTC",
        umask: "022",
        epoch: None,
    };
    let second = Setting {
        cwd: "elsewhere/deeper",
        tz: "America/St_Johns",
        umask: "077",
        epoch: None,
    };
    let dated = Setting {
        cwd: "",
        tz: "UTC",
        umask: "022",
        epoch: Some("1700000000"),
    };
    for arch in Arch::ALL {
        let a = format!("a-{arch}");
        let b = format!("b-{arch}");
        let c = format!("c-{arch}");
        build_all(&w, arch, &a, &first);
        build_all(&w, arch, &b, &second);
        build_all(&w, arch, &c, &dated);

        let fa = files(&w.path(&a));
        assert_eq!(
            fa.keys().collect::<Vec<_>>(),
            [
                "sys-cmdline",
                "sys-initrd.img",
                "sys-initrd.tar",
                "sys-kernel",
                "sys-sbom.spdx.json",
                "sys.tar"
            ],
            "{arch}"
        );
        let fb = files(&w.path(&b));
        for (name, data) in &fa {
            assert!(
                fb.get(name) == Some(data),
                "{arch}: {name} differs between builds"
            );
            let mode = std::fs::metadata(w.path(&b).join(name)).unwrap();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
                0o644,
                "{arch}: {name} mode depends on the umask"
            );
        }

        // Another SOURCE_DATE_EPOCH: another initrd, with that mtime everywhere.
        let fc = files(&w.path(&c));
        assert_ne!(fa["sys-initrd.img"], fc["sys-initrd.img"], "{arch}");
        assert_ne!(fa["sys.tar"], fc["sys.tar"], "{arch}");
        // The SBOM's creation date is the epoch too.
        assert_ne!(fa["sys-sbom.spdx.json"], fc["sys-sbom.spdx.json"], "{arch}");
        assert_eq!(fa["sys-kernel"], fc["sys-kernel"], "{arch}");
        let (_, dated_members) = parse_newc(&gunzip(&fc["sys-initrd.img"]));
        assert!(dated_members.values().all(|m| m.mtime == 1_700_000_000));
        let (_, members) = parse_newc(&gunzip(&fa["sys-initrd.img"]));
        assert!(members.values().all(|m| m.mtime == DEFAULT_EPOCH));

        // The architecture's own images were used.
        assert_eq!(fa["sys-kernel"], kernel_bytes(arch));
        assert_eq!(members["etc/init-arch"].data, arch.uname().as_bytes());
        assert_eq!(
            members["containers/onboot/000-setup/rootfs/bin/app"].data,
            app_binary("v1", arch)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the outputs hold.

#[test]
fn kernel_initrd_output_holds_the_system() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    let out = run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out", "sys.yml"])).ok();
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(
        listing(&w.path("out")),
        [
            "sys-cmdline",
            "sys-initrd.img",
            "sys-kernel",
            "sys-sbom.spdx.json"
        ]
    );
    assert_eq!(read(&w.path("out/sys-cmdline")), CMDLINE.as_bytes());
    assert_eq!(read(&w.path("out/sys-kernel")), kernel_bytes(Arch::X86_64));

    let cpio = gunzip(&read(&w.path("out/sys-initrd.img")));
    let (order, m) = parse_newc(&cpio);
    // An independent reader agrees: Debian's cpio lists the same entries in the same order.
    std::fs::write(w.path("initrd.cpio"), &cpio).unwrap();
    let listed = std::process::Command::new("cpio")
        .args(["-it", "--quiet", "-F"])
        .arg(w.path("initrd.cpio"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run cpio ({e}): run scripts/setup.sh"));
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        order
    );
    // Every directory comes before its contents.
    for (i, name) in order.iter().enumerate() {
        if let Some((parent, _)) = name.rsplit_once('/') {
            let at = order.iter().position(|n| n == parent);
            assert!(at.is_some_and(|p| p < i), "{name} comes before its parent");
        }
    }
    let file = |p: &str| -> &Member {
        let e = m
            .get(p)
            .unwrap_or_else(|| panic!("{p} is not in the initrd"));
        assert!(e.is_file(), "{p} is not a file");
        e
    };
    let dir = |p: &str| assert!(m.get(p).is_some_and(Member::is_dir), "{p} is not a dir");

    // Init image at the root, without boot/ and with the standard hosts file.
    assert_eq!(file("init").data, b"#!/bin/sh\nexec /sbin/init\n");
    assert!(
        m.keys().all(|k| k != "boot" && !k.starts_with("boot/")),
        "boot/ is in the initrd"
    );
    assert_eq!(file("etc/hosts").text(), HOSTS);
    // Kernel modules from kernel.tar.
    assert_eq!(file("lib/modules/x/modules.dep").data, b"kernel/fake.ko:\n");
    assert_eq!(file("lib/modules/x/kernel/fake.ko").data, b"x86_64");
    assert!(!m.contains_key("kernel") && !m.contains_key("kernel.tar"));

    // The onboot container: read-only (from the label), so the image is under rootfs/.
    let onboot = "containers/onboot/000-setup";
    file(&format!("{onboot}/runtime.json"));
    assert_eq!(
        file(&format!("{onboot}/rootfs/bin/app")).data,
        app_binary("v1", Arch::X86_64)
    );
    let sh = &m[&format!("{onboot}/rootfs/bin/sh")];
    assert!(sh.is_symlink() && sh.data == b"app", "{sh:?}");
    assert_eq!(file(&format!("{onboot}/rootfs/etc/app.conf")).data, b"v1");
    assert_eq!(file(&format!("{onboot}/rootfs/etc/hosts")).text(), HOSTS);
    assert!(!m.contains_key(&format!("{onboot}/rootfs/etc/hostname")));
    for d in ["dev", "proc", "sys", "var/lib/app"] {
        dir(&format!("{onboot}/rootfs/{d}"));
    }
    let c = config_json(&m, onboot);
    assert_eq!(strings(&c["process"]["args"]), ["/bin/app", "setup"]);
    assert!(strings(&c["process"]["env"]).contains(&"APP_MODE=fixture".to_owned()));
    assert!(
        strings(&c["process"]["capabilities"]["bounding"]).contains(&"CAP_NET_ADMIN".to_owned()),
        "{c}"
    );
    assert_eq!(c["root"]["readonly"], true);

    // The service: writable (the YAML overrides the label), an overlay whose lower layer is
    // the onboot container's copy of the same image (one copy per image in the initrd).
    let svc = "containers/services/web";
    let rt: serde_json::Value =
        serde_json::from_slice(&file(&format!("{svc}/runtime.json")).data).unwrap();
    let overlay = rt["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "overlay")
        .unwrap_or_else(|| panic!("no overlay in {rt}"));
    assert!(
        strings(&overlay["options"]).contains(&format!("lowerdir=/{onboot}/rootfs")),
        "{overlay}"
    );
    dir(&format!("{svc}/lower"));
    assert!(
        !m.contains_key(&format!("{svc}/lower/bin/app")),
        "the image is stored twice"
    );
    dir(&format!("{svc}/rootfs"));
    dir(&format!("{svc}/tmp"));
    let c = config_json(&m, svc);
    assert_eq!(strings(&c["process"]["args"]), ["/bin/app", "serve"]);
    assert_eq!(
        strings(&c["process"]["capabilities"]["bounding"]),
        ["CAP_CHOWN"]
    );
    assert_ne!(c["root"]["readonly"], true);
    dir("containers/onshutdown");
}

#[test]
fn tar_and_tar_kernel_initrd_outputs() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    run(&mut w.keel([
        "build",
        "--arch",
        "aarch64",
        "-f",
        "kernel+initrd",
        "-f",
        "tar-kernel-initrd",
        "--dir",
        "out",
        "--name",
        "pack",
        "sys.yml",
    ]))
    .ok();
    run(&mut w.keel([
        "build", "--arch", "aarch64", "-f", "tar", "--dir", "out", "sys.yml",
    ]))
    .ok();
    assert_eq!(
        listing(&w.path("out")),
        [
            "pack-cmdline",
            "pack-initrd.img",
            "pack-initrd.tar",
            "pack-kernel",
            "pack-sbom.spdx.json",
            "sys-sbom.spdx.json",
            "sys.tar"
        ]
    );

    let t = read_tar(&read(&w.path("out/pack-initrd.tar")));
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        ["cmdline", "initrd.img", "kernel"]
    );
    assert_eq!(t["kernel"].data, kernel_bytes(Arch::Aarch64));
    assert_eq!(t["cmdline"].data, CMDLINE.as_bytes());
    assert_eq!(t["initrd.img"].data, read(&w.path("out/pack-initrd.img")));

    let t = read_tar(&read(&w.path("out/sys.tar")));
    assert_eq!(t["boot/kernel"].data, kernel_bytes(Arch::Aarch64));
    assert_eq!(t["boot/cmdline"].data, CMDLINE.as_bytes());
    // The tar is the whole root filesystem: the init image's boot/ stays.
    assert!(t["boot/grub.cfg"].mode & S_IFMT == S_IFREG);
    assert_eq!(t["etc/init-arch"].data, b"aarch64");
    assert_eq!(t["lib/modules/x/kernel/fake.ko"].data, b"aarch64");
    assert_eq!(
        t["containers/onboot/000-setup/rootfs/bin/app"].data,
        app_binary("v1", Arch::Aarch64)
    );
    assert!(t.contains_key("containers/onboot/000-setup/config.json"));
    assert!(t.values().all(|m| m.mtime == DEFAULT_EPOCH));
}

#[test]
fn formats_that_need_a_kernel_or_must_be_alone() {
    let (w, _) = Work::with_fixtures();
    w.write(
        "nokernel.yml",
        &format!("init:\n  - {INIT}\nonboot:\n  - name: a\n    image: {APP}\n"),
    );
    let err = run(&mut w.keel(["build", "--dir", "out", "nokernel.yml"])).failed();
    assert!(err.contains("format kernel+initrd needs a kernel"), "{err}");
    assert_eq!(listing(&w.path("out")), Vec::<String>::new());
    // tar works without a kernel.
    run(&mut w.keel(["build", "-f", "tar", "--dir", "out", "nokernel.yml"])).ok();
    assert_eq!(
        listing(&w.path("out")),
        ["nokernel-sbom.spdx.json", "nokernel.tar"]
    );

    w.write("sys.yml", &system_yaml(APP));
    let err = run(&mut w.keel([
        "build",
        "-f",
        "tar",
        "-f",
        "kernel+initrd",
        "--dir",
        "out2",
        "sys.yml",
    ]))
    .failed();
    assert!(err.contains("format tar must be the only format"), "{err}");
    assert_eq!(listing(&w.path("out2")), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The lock file.

fn app_in_initrd(w: &Work, dir: &str) -> Vec<u8> {
    let m = read_initrd(&w.path(&format!("{dir}/sys-initrd.img")));
    m["containers/onboot/000-setup/rootfs/bin/app"].data.clone()
}

#[test]
fn lock_file_pins_every_reference() {
    let (w, d) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out1", "sys.yml"])).ok();
    let lock_path = w.path("sys.lock.json");
    let pins = read_lock(&lock_path);
    let expected: BTreeMap<String, String> = [(KERNEL, &d.kernel), (INIT, &d.init), (APP, &d.app)]
        .into_iter()
        .map(|(r, d)| (r.to_owned(), d.to_string()))
        .collect();
    assert_eq!(pins, expected);
    let lock_text = read(&lock_path);

    // Move the tag: the build keeps the pinned image and the lock file does not change.
    let v2 = put_app(&w.store(), APP, "v2");
    assert_ne!(v2, d.app);
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out2", "sys.yml"])).ok();
    assert_eq!(app_in_initrd(&w, "out2"), app_binary("v1", Arch::X86_64));
    assert_eq!(read(&lock_path), lock_text);
    // The initrd is the same as before the tag moved.
    assert_eq!(
        read(&w.path("out1/sys-initrd.img")),
        read(&w.path("out2/sys-initrd.img"))
    );

    // Without the lock file the tag's current image is used and pinned.
    std::fs::remove_file(&lock_path).unwrap();
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out3", "sys.yml"])).ok();
    assert_eq!(app_in_initrd(&w, "out3"), app_binary("v2", Arch::X86_64));
    assert_eq!(read_lock(&lock_path)[APP], v2.to_string());

    // A pin for a reference the YAML no longer names is dropped, as Cargo.lock does.
    let stale = "docker.io/library/gone:1";
    let text = String::from_utf8(read(&lock_path)).unwrap().replacen(
        "\"images\": {",
        &format!(
            "\"images\": {{\n    \"{stale}\": \"sha256:{}\",",
            "0".repeat(64)
        ),
        1,
    );
    std::fs::write(&lock_path, text).unwrap();
    assert!(read_lock(&lock_path).contains_key(stale));
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out4", "sys.yml"])).ok();
    let pins = read_lock(&lock_path);
    assert!(!pins.contains_key(stale), "{pins:?}");
    assert_eq!(pins.len(), 3);
}

#[test]
fn locked_build_fails_after_the_tag_moved() {
    let (w, d) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out1", "sys.yml"])).ok();
    // Unchanged: --locked builds.
    run(&mut w.keel([
        "build", "--locked", "--arch", "x86_64", "--dir", "out2", "sys.yml",
    ]))
    .ok();
    let lock_text = read(&w.path("sys.lock.json"));

    let v2 = put_app(&w.store(), APP, "v2");
    let err = run(&mut w.keel([
        "build", "--locked", "--arch", "x86_64", "--dir", "out3", "sys.yml",
    ]))
    .failed();
    assert!(err.contains(APP), "{err}");
    assert!(
        err.contains(d.app.as_str()) && err.contains(v2.as_str()),
        "{err}"
    );
    assert_eq!(listing(&w.path("out3")), Vec::<String>::new());
    assert_eq!(read(&w.path("sys.lock.json")), lock_text);
}

// ---------------------------------------------------------------------------------------------
// keel validate and --dry-run.

/// Splits validate's output into (header, body) sections at lines starting with "# ".
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            out.push((h.to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        } else {
            panic!("output does not start with a header: {text}");
        }
    }
    out
}

#[test]
fn validate_prints_merged_yaml_and_every_config() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    let before = listing(w.root());
    let out = run(&mut w.keel(["validate", "--arch", "x86_64", "sys.yml"])).ok();
    let s = sections(&out.stdout);
    let headers: Vec<&str> = s.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        headers,
        [
            "merged configuration",
            "containers/onboot/000-setup/config.json",
            "containers/onboot/000-setup/runtime.json",
            "containers/services/web/config.json",
            "containers/services/web/runtime.json",
        ]
    );
    assert!(
        s[0].1.contains(CMDLINE) && s[0].1.contains("name: web"),
        "{}",
        s[0].1
    );
    let setup: serde_json::Value = serde_json::from_str(&s[1].1).unwrap();
    assert_eq!(strings(&setup["process"]["args"]), ["/bin/app", "setup"]);
    let web: serde_json::Value = serde_json::from_str(&s[3].1).unwrap();
    assert_eq!(strings(&web["process"]["args"]), ["/bin/app", "serve"]);
    serde_json::from_str::<serde_json::Value>(&s[2].1).unwrap();
    // Nothing written: no outputs, no lock file.
    assert_eq!(listing(w.root()), before);

    // The same from stdin.
    let text = std::fs::read_to_string(w.path("sys.yml")).unwrap();
    let stdin = run_with_stdin(&mut w.keel(["validate", "--arch", "x86_64", "-"]), &text).ok();
    assert_eq!(stdin.stdout, out.stdout);

    // build --dry-run prints the merged YAML only and writes nothing.
    let dry = run(&mut w.keel(["build", "--dry-run", "--dir", "out", "sys.yml"])).ok();
    assert!(
        out.stdout
            .starts_with(&format!("# merged configuration\n{}\n# ", dry.stdout)),
        "{}",
        dry.stdout
    );
    assert_eq!(listing(w.root()), before);
}

#[test]
fn validate_without_images_checks_the_yaml_and_names_what_it_skipped() {
    // LinuxKit's usual form: images the store does not have (and no registry to pull from),
    // containers without `command:` (their label gives it).
    let w = Work::empty();
    w.store();
    let sysctl = format!("{DEAD_REGISTRY}/linuxkit/sysctl:v1");
    let getty = format!("{DEAD_REGISTRY}/linuxkit/getty:v1");
    w.write(
        "lk.yml",
        &format!(
            "kernel:\n  image: {KERNEL}\n  cmdline: \"console=ttyS0\"\ninit:\n  - {INIT}\n\
             onboot:\n  - name: sysctl\n    image: {sysctl}\n\
             services:\n  - name: getty\n    image: {getty}\n    env: [INSECURE=true]\n    binds: [/etc/resolv.conf:/etc/resolv.conf]\n"
        ),
    );
    let before = listing(w.root());
    let out = run(&mut w.keel(["validate", "--arch", "x86_64", "lk.yml"])).ok();
    let s = sections(&out.stdout);
    let headers: Vec<&str> = s.iter().map(|(h, _)| h.as_str()).collect();
    let note =
        " (image not in the store: its entrypoint, environment, user and label are not applied)";
    assert_eq!(
        headers,
        [
            "merged configuration".to_string(),
            format!("containers/onboot/000-sysctl/config.json{note}"),
            "containers/onboot/000-sysctl/runtime.json".to_string(),
            format!("containers/services/getty/config.json{note}"),
            "containers/services/getty/runtime.json".to_string(),
        ]
    );
    let getty_spec: serde_json::Value = serde_json::from_str(&s[3].1).unwrap();
    assert!(
        getty_spec["process"]["env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v == "INSECURE=true")),
        "{getty_spec}"
    );
    assert!(
        out.stderr.contains("not in the store")
            && out.stderr.contains(&sysctl)
            && out.stderr.contains(&getty)
            && out.stderr.contains("--require-images"),
        "{}",
        out.stderr
    );
    // Nothing was pulled or written.
    assert_eq!(listing(w.root()), before);

    // A YAML error is still an error without images.
    w.write(
        "bad.yml",
        &format!("onboot:\n  - name: x\n    image: {sysctl}\n    capabilities: [CAP_SYS_ADMN]\n"),
    );
    let err = run(&mut w.keel(["validate", "bad.yml"])).failed();
    assert!(err.contains("bad.yml:4:20: unknown capability"), "{err}");

    // --require-images: every image must be had, as for a build.
    let err = run(&mut w.keel(["validate", "--require-images", "lk.yml"])).failed();
    assert!(
        err.contains("is not in the store and could not be pulled"),
        "{err}"
    );
}

#[test]
fn dry_run_builds_nothing() {
    // A package with Rust binaries: its tag covers the built bytes, so a dry run shows it as
    // unbuilt instead of running cargo (which would fail here: there is no such crate).
    let w = Work::empty();
    w.store();
    w.write(
        "pkg/hi/build.yml",
        "image: test/hi\nbinaries:\n  - {package: no-such-crate, bin: hi, path: /usr/bin/hi}\n",
    );
    w.write(
        "sys.yml",
        &format!("kernel:\n  image: {KERNEL}\ninit:\n  - \"@pkg:pkg/hi\"\n"),
    );
    let before = listing(w.root());
    let out = run(&mut w.keel(["build", "--dry-run", "sys.yml"])).ok();
    assert!(
        out.stdout.contains("docker.io/test/hi:unbuilt") || out.stdout.contains("test/hi:unbuilt"),
        "{}",
        out.stdout
    );
    let out = run(&mut w.keel(["validate", "sys.yml"])).ok();
    assert!(out.stdout.contains("test/hi:unbuilt"), "{}", out.stdout);
    assert_eq!(listing(w.root()), before);
}

#[test]
fn outputs_of_a_2017_file_are_the_default_formats() {
    let (w, _) = Work::with_fixtures();
    w.write(
        "old.yml",
        &format!(
            "{}outputs:\n  - format: kernel+initrd\n  - format: tar-kernel-initrd\n",
            system_yaml(APP)
        ),
    );
    let out = run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out", "old.yml"])).ok();
    assert_eq!(
        listing(&w.path("out")),
        [
            "old-cmdline",
            "old-initrd.img",
            "old-initrd.tar",
            "old-kernel",
            "old-sbom.spdx.json"
        ]
    );
    assert!(out.stderr.contains("outputs"), "{}", out.stderr);
    // -f wins over outputs:.
    run(&mut w.keel([
        "build", "--arch", "x86_64", "-f", "tar", "--dir", "out2", "old.yml",
    ]))
    .ok();
    assert_eq!(listing(&w.path("out2")), ["old-sbom.spdx.json", "old.tar"]);
    // A format keel does not know is an error at its position, and nothing is written.
    w.write(
        "bad.yml",
        &format!("{}outputs:\n  - format: kernel+floppy\n", system_yaml(APP)),
    );
    let err = run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out3", "bad.yml"])).failed();
    assert!(
        err.contains("bad.yml:") && err.contains("unknown format \"kernel+floppy\""),
        "{err}"
    );
    assert_eq!(listing(&w.path("out3")), Vec::<String>::new());
}

#[test]
fn build_writes_one_file_with_o_and_reads_yaml_from_a_url() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    // -o FILE: the one output, nothing else beside it.
    run(&mut w.keel([
        "build",
        "--arch",
        "x86_64",
        "-f",
        "tar",
        "-o",
        "sys-image.tar",
        "sys.yml",
    ]))
    .ok();
    let tar = read(&w.path("sys-image.tar"));
    assert!(read_tar(&tar).contains_key("containers/services/web/config.json"));
    assert!(
        listing(w.root())
            .iter()
            .all(|n| !n.starts_with(".keel-build-")),
        "{:?}",
        listing(w.root())
    );
    // -o -: the same bytes on standard output.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "build", "--arch", "x86_64", "-f", "tar", "-o", "-", "sys.yml",
        ])
        .current_dir(w.root())
        .env("KEEL_CACHE", w.store_dir())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, tar);
    // -o with kernel+initrd (three files) is refused before anything is built.
    let err = run(&mut w.keel(["build", "-o", "x.img", "sys.yml"])).failed();
    assert!(
        err.contains("-o x.img needs exactly one -f FORMAT that writes one file"),
        "{err}"
    );

    // A YAML file on a web server, as `linuxkit build https://…` takes it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/web/sys.yml", listener.local_addr().unwrap());
    let body = system_yaml(APP);
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
        }
    });
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "fromurl", &url])).ok();
    assert!(w.path("fromurl/sys-kernel").is_file());
    // No lock file is written for a URL (there is no directory to put it in).
    assert!(listing(w.root()).iter().all(|n| !n.contains("http")));
}

#[test]
fn validate_merges_files_in_order() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    w.write(
        "extra.yml",
        &format!("services:\n  - name: extra\n    image: {APP}\n    command: [/bin/app, extra]\n"),
    );
    let out = run(&mut w.keel(["validate", "--arch", "x86_64", "sys.yml", "extra.yml"])).ok();
    let s = sections(&out.stdout);
    let configs: Vec<&str> = s
        .iter()
        .map(|(h, _)| h.as_str())
        .filter(|h| h.ends_with("/config.json"))
        .collect();
    assert_eq!(
        configs,
        [
            "containers/onboot/000-setup/config.json",
            "containers/services/web/config.json",
            "containers/services/extra/config.json",
        ]
    );
    let merged = &s[0].1;
    let (web, extra) = (
        merged.find("name: web").unwrap(),
        merged.find("name: extra").unwrap(),
    );
    assert!(web < extra, "{merged}");

    // Built, the merged system has both services.
    run(&mut w.keel([
        "build",
        "--arch",
        "x86_64",
        "--dir",
        "out",
        "sys.yml",
        "extra.yml",
    ]))
    .ok();
    let m = read_initrd(&w.path("out/sys-initrd.img"));
    let c = config_json(&m, "containers/services/extra");
    assert_eq!(strings(&c["process"]["args"]), ["/bin/app", "extra"]);
    assert!(m.contains_key("containers/services/web/config.json"));

    // A service defined twice: both positions are named.
    w.write(
        "dup.yml",
        &format!("services:\n  - name: web\n    image: {APP}\n"),
    );
    let err = run(&mut w.keel(["validate", "sys.yml", "dup.yml"])).failed();
    assert!(
        err.contains(
            "dup.yml:2:11: duplicate service name \"web\"; first defined at sys.yml:11:11"
        ),
        "{err}"
    );
    let err = run(&mut w.keel(["build", "--dir", "out-dup", "sys.yml", "dup.yml"])).failed();
    assert!(
        err.contains("dup.yml:2:11: duplicate service name"),
        "{err}"
    );
    assert_eq!(listing(&w.path("out-dup")), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// keel cache.

/// `keel cache ls` as reference → digest.
fn cache_ls(w: &Work) -> BTreeMap<String, String> {
    let out = run(&mut w.keel(["cache", "ls"])).ok().stdout;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["REFERENCE", "DIGEST"]);
    lines
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 2, "{l}");
            (cols[0].to_owned(), cols[1].to_owned())
        })
        .collect()
}

#[test]
fn cache_export_rm_import_round_trip() {
    let (w, d) = Work::with_fixtures();
    let ls = cache_ls(&w);
    let expected: BTreeMap<String, String> = [(KERNEL, &d.kernel), (INIT, &d.init), (APP, &d.app)]
        .into_iter()
        .map(|(r, d)| (r.to_owned(), d.to_string()))
        .collect();
    assert_eq!(ls, expected);

    run(&mut w.keel(["cache", "export", APP, "-o", "app.tar"])).ok();
    let exported = read_tar(&read(&w.path("app.tar")));
    assert!(
        exported.contains_key("oci-layout") && exported.contains_key("index.json"),
        "{:?}",
        exported.keys().collect::<Vec<_>>()
    );
    assert!(exported.contains_key(&format!("blobs/sha256/{}", d.app.hex())));

    let layers = layer_digests(&w.store(), APP, Arch::X86_64);
    let blobs_before = listing(&w.store_dir().join("blobs/sha256")).len();
    let out = run(&mut w.keel(["cache", "rm", APP])).ok().stdout;
    assert!(out.starts_with(&format!("removed {APP} (")), "{out}");
    let freed: usize = out
        .trim_end()
        .trim_start_matches(&format!("removed {APP} ("))
        .trim_end_matches(" blobs freed)")
        .parse()
        .unwrap();
    let blobs_after = listing(&w.store_dir().join("blobs/sha256")).len();
    assert!(freed > layers.len(), "{out}");
    assert_eq!(freed, blobs_before - blobs_after, "{out}");
    assert!(!cache_ls(&w).contains_key(APP));
    for l in &layers {
        assert!(!blob_path(&w.store_dir(), l).exists());
    }
    // Removing it again is an error.
    let err = run(&mut w.keel(["cache", "rm", APP])).failed();
    assert!(err.contains("is not in the store"), "{err}");
    // The build cannot find it any more.
    w.write("sys.yml", &system_yaml(APP));
    let err = run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out", "sys.yml"])).failed();
    assert!(err.contains(APP), "{err}");

    let out = run(&mut w.keel(["cache", "import", "app.tar"])).ok().stdout;
    assert!(out.lines().any(|l| l == APP), "{out}");
    assert_eq!(cache_ls(&w), expected);
    for l in &layers {
        assert!(blob_path(&w.store_dir(), l).exists());
    }
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out", "sys.yml"])).ok();
    assert_eq!(app_in_initrd(&w, "out"), app_binary("v1", Arch::X86_64));
}

/// A large `--size` costs neither memory nor disk: the empty space of a disk image is written
/// as holes (the build used to hold the whole disk in memory), and the formats around the raw
/// disk still see every byte of it.
#[test]
fn large_disks_are_written_sparsely() {
    use std::os::unix::fs::MetadataExt;
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    let size: u64 = 16 << 30;
    run(&mut w.keel([
        "build",
        "--arch",
        "x86_64",
        "--dir",
        "out",
        "--size",
        "16G",
        "-f",
        "raw-efi",
        "-f",
        "vhd",
        "-f",
        "qcow2-efi",
        "-f",
        "raw-bios",
        "sys.yml",
    ]))
    .ok();
    for (file, len) in [
        ("sys-efi.img", size),
        ("sys-bios.img", size),
        ("sys.vhd", size + 512),
    ] {
        let meta = std::fs::metadata(w.path(&format!("out/{file}"))).unwrap();
        assert_eq!(meta.len(), len, "{file}");
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "{file}: {} blocks",
            meta.blocks()
        );
    }
    // The GPT's backup header is in the last sector, past the hole.
    let disk = std::fs::File::open(w.path("out/sys-efi.img")).unwrap();
    let mut last = [0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&disk, &mut last, size - 512).unwrap();
    assert_eq!(&last[..8], b"EFI PART");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(w.path("out/sys-efi.qcow2"))
        .output()
        .expect("qemu-img runs (scripts/setup.sh installs it)");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "{info}"
    );
}

/// `--decompress-kernel`: a kernel shipped compressed (LinuxKit's arm64 `Image.gz`) is written
/// uncompressed by the formats that carry it as a file; the others refuse the flag, and a kernel
/// keel cannot decompress fails the build, naming it.
#[test]
fn decompress_kernel() {
    use std::io::Write;
    let (w, _) = Work::with_fixtures();
    let vmlinux = |arch: Arch| format!("\x7fELF {} vmlinux\n", arch.uname()).repeat(500);
    put_image(
        &w.store(),
        "test/kernel-gz:1",
        &image_config(&[], &[]),
        |arch| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(vmlinux(arch).as_bytes()).unwrap();
            vec![tar_of(&[
                Entry::File("kernel", &gz.finish().unwrap()),
                Entry::File("kernel.tar", &tar_of(&[])),
            ])]
        },
    );
    let yaml = system_yaml(APP).replace(KERNEL, "test/kernel-gz:1");
    w.write("gz.yml", &yaml);
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let out = format!("out-{}", arch.uname());
        run(&mut w.keel([
            "build",
            "--decompress-kernel",
            "--arch",
            arch.uname(),
            "--dir",
            &out,
            "gz.yml",
        ]))
        .ok();
        assert_eq!(
            read(&w.path(&format!("{out}/gz-kernel"))),
            vmlinux(arch).as_bytes()
        );
    }
    run(&mut w.keel([
        "build",
        "--decompress-kernel",
        "-f",
        "tar",
        "--dir",
        "tar",
        "gz.yml",
    ]))
    .ok();
    let tar = read_tar(&read(&w.path("tar/gz.tar")));
    assert_eq!(tar["boot/kernel"].data, vmlinux(Arch::host()).as_bytes());
    // Without the flag the kernel is written as the image has it.
    run(&mut w.keel(["build", "--dir", "plain", "gz.yml"])).ok();
    assert_eq!(&read(&w.path("plain/gz-kernel"))[..2], [0x1f, 0x8b]);

    // A format whose loader needs the compressed image refuses the flag before building.
    let err = run(&mut w.keel([
        "build",
        "--decompress-kernel",
        "-f",
        "kernel+initrd",
        "-f",
        "iso-efi",
        "--dir",
        "iso",
        "gz.yml",
    ]))
    .failed();
    assert!(
        err.contains("--decompress-kernel: format iso-efi boots the kernel through a loader"),
        "{err}"
    );
    assert_eq!(listing(&w.path("iso")), Vec::<String>::new());
    // A kernel that is not a compressed image: the error names the image, nothing is written.
    w.write("fake.yml", &system_yaml(APP));
    let err =
        run(&mut w.keel(["build", "--decompress-kernel", "--dir", "fake", "fake.yml"])).failed();
    assert!(
        err.contains(&format!("cannot decompress the kernel of {KERNEL}"))
            && err.contains("not a kernel image keel can decompress"),
        "{err}"
    );
    assert_eq!(listing(&w.path("fake")), Vec::<String>::new());
}

/// Long steps show a progress line on a terminal, naming the step; not when stderr is not a
/// terminal, and not with -q.
#[test]
fn progress_is_shown_on_a_terminal_only() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    let step = "writing sys-kernel (kernel+initrd)";
    let shown = run(&mut w.keel_on_terminal(&["build", "--dir", "tty", "sys.yml"])).ok();
    assert!(shown.stdout.contains(step), "{}", shown.stdout);
    // The line is cleared, and the log lines after it are whole.
    assert!(shown.stdout.contains("\x1b[2K"), "{:?}", shown.stdout);
    assert!(
        shown.stdout.contains("wrote tty/sys-kernel"),
        "{}",
        shown.stdout
    );
    let quiet = run(&mut w.keel_on_terminal(&["build", "-q", "--dir", "quiet", "sys.yml"])).ok();
    assert!(!quiet.stdout.contains(step), "{}", quiet.stdout);
    let piped = run(&mut w.keel(["build", "--dir", "piped", "sys.yml"])).ok();
    assert!(!piped.stderr.contains(step), "{}", piped.stderr);
    assert!(
        piped.stderr.contains("wrote piped/sys-kernel"),
        "{}",
        piped.stderr
    );
    assert_eq!(
        read(&w.path("tty/sys-initrd.img")),
        read(&w.path("piped/sys-initrd.img"))
    );
}

/// The initramfs is zstd when the kernel image's configuration says the kernel unpacks zstd,
/// gzip otherwise; both hold the same cpio; a codec the kernel lacks is refused before anything
/// is written; a rebuild from the tar compresses as the build from the images did.
#[test]
fn initrd_compression_follows_the_kernel() {
    const BOTH: &str = "127.0.0.1:9/keel-test/kernel-zstd:1";
    const GZIP_ONLY: &str = "127.0.0.1:9/keel-test/kernel-gzip:1";
    let (w, _) = Work::with_fixtures();
    put_kernel_with_config(
        &w.store(),
        BOTH,
        Some("CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n"),
    );
    put_kernel_with_config(
        &w.store(),
        GZIP_ONLY,
        Some("CONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\n"),
    );
    let yaml = |kernel: &str| system_yaml(APP).replace(KERNEL, kernel);
    w.write("both.yml", &yaml(BOTH));
    w.write("gzip.yml", &yaml(GZIP_ONLY));
    w.write("none.yml", &yaml(KERNEL));
    let build = |yaml: &str, dir: &str, extra: &[&str]| {
        let mut args = vec!["build", "--arch", "x86_64", "--no-sbom", "--dir", dir];
        args.extend(extra);
        args.push(yaml);
        run(&mut w.keel(&args))
    };
    const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
    const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
    // Debian's zstd, as a user would read the initrd.
    let unzstd = |path: &str| {
        let out = std::process::Command::new("zstd")
            .args(["-dc", "--"])
            .arg(w.path(path))
            .output()
            .unwrap_or_else(|e| panic!("cannot run zstd ({e}): run scripts/setup.sh"));
        assert!(out.status.success(), "zstd -dc {path}: {out:?}");
        out.stdout
    };

    let auto = build("both.yml", "auto", &[]).ok();
    assert!(
        auto.stderr.contains("initramfs compression: zstd"),
        "{}",
        auto.stderr
    );
    let zstd_initrd = read(&w.path("auto/both-initrd.img"));
    assert!(zstd_initrd.starts_with(ZSTD_MAGIC), "not zstd");
    build("both.yml", "gz", &["--initrd-compression", "gzip"]).ok();
    let gzip_initrd = read(&w.path("gz/both-initrd.img"));
    assert!(gzip_initrd.starts_with(GZIP_MAGIC), "not gzip");
    let cpio = unzstd("auto/both-initrd.img");
    assert_eq!(
        cpio,
        gunzip(&gzip_initrd),
        "the codecs hold different trees"
    );
    assert!(parse_newc(&cpio).1.contains_key("init"));
    // Reproducible.
    build("both.yml", "again", &["--initrd-compression", "zstd"]).ok();
    assert_eq!(read(&w.path("again/both-initrd.img")), zstd_initrd);

    // A kernel without zstd gets gzip, and refuses a zstd initrd it could not unpack.
    build("gzip.yml", "gzip-auto", &[]).ok();
    assert!(read(&w.path("gzip-auto/gzip-initrd.img")).starts_with(GZIP_MAGIC));
    let err = build("gzip.yml", "refused", &["--initrd-compression", "zstd"]).failed();
    assert!(
        err.contains("cannot unpack a zstd initramfs") && err.contains("CONFIG_RD_ZSTD is not set"),
        "{err}"
    );
    assert!(listing(&w.path("refused")).is_empty(), "output left behind");
    // No configuration: gzip unless asked, and a warning when asked for zstd.
    build("none.yml", "none-auto", &[]).ok();
    assert!(read(&w.path("none-auto/none-initrd.img")).starts_with(GZIP_MAGIC));
    let asked = build("none.yml", "none-zstd", &["--initrd-compression", "zstd"]).ok();
    assert!(
        asked.stderr.contains("holds no configuration"),
        "{}",
        asked.stderr
    );
    assert!(read(&w.path("none-zstd/none-initrd.img")).starts_with(ZSTD_MAGIC));
    let usage = build("both.yml", "bad", &["--initrd-compression", "lz4"]);
    assert_eq!(usage.code, Some(2), "{usage:?}");
    assert!(
        usage.stderr.contains("expected auto, gzip or zstd"),
        "{usage:?}"
    );

    // From the tar (the images gone): the same zstd initrd as from the images.
    build("both.yml", "tar", &["-f", "tar"]).ok();
    run(&mut w.keel(["cache", "rm", BOTH, INIT, APP])).ok();
    let again = build("both.yml", "from-tar", &["--input-tar", "tar/both.tar"]).ok();
    assert!(
        again.stderr.contains("building from tar/both.tar"),
        "{}",
        again.stderr
    );
    assert_eq!(read(&w.path("from-tar/both-initrd.img")), zstd_initrd);
    // A record naming a codec keel does not know is refused, not guessed around.
    let tar = read(&w.path("tar/both.tar"));
    let record = b"KEEL.kernel-decompressors=gzip zstd\n";
    let at = tar
        .windows(record.len())
        .position(|w| w == record)
        .expect("the tar records the kernel's decompressors");
    let mut forged = tar.clone();
    forged[at + record.len() - 5..at + record.len() - 1].copy_from_slice(b"lzma");
    std::fs::write(w.path("forged.tar"), &forged).unwrap();
    let err = build("both.yml", "forged", &["--input-tar", "forged.tar"]).failed();
    assert!(
        err.contains("records kernel decompressors \"gzip lzma\""),
        "{err}"
    );
    assert!(listing(&w.path("forged")).is_empty(), "output left behind");
}

/// `--input-tar`: a previous `tar` output rebuilds the system, in any format, without its
/// images, byte-identical to a build from the images; a tar made from other inputs (or not by
/// keel) is not used, and the build says why.
#[test]
fn input_tar_rebuilds_without_the_images() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    let build = |args: &[&str]| {
        let mut all = vec!["build", "--arch", "x86_64"];
        all.extend(args);
        all.push("sys.yml");
        run(&mut w.keel(&all))
    };
    build(&["-f", "tar", "--dir", "first"]).ok();
    build(&["-f", "kernel+initrd", "-f", "iso-efi", "--dir", "fresh"]).ok();
    // The images leave the store.
    run(&mut w.keel(["cache", "rm", KERNEL, INIT, APP])).ok();
    let err = build(&["-f", "tar", "--dir", "none"]).failed();
    assert!(err.contains("not in the store"), "{err}");

    let again = build(&[
        "-f",
        "tar",
        "--input-tar",
        "first/sys.tar",
        "--dir",
        "again",
    ])
    .ok();
    assert!(
        again.stderr.contains("building from first/sys.tar"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("no SBOM"), "{}", again.stderr);
    assert_eq!(
        read(&w.path("again/sys.tar")),
        read(&w.path("first/sys.tar"))
    );
    assert_eq!(listing(&w.path("again")), ["sys.tar"]);
    // Other formats from it, as a build from the images writes them.
    build(&[
        "-f",
        "kernel+initrd",
        "-f",
        "iso-efi",
        "--input-tar",
        "first/sys.tar",
        "--dir",
        "converted",
    ])
    .ok();
    for file in ["sys-kernel", "sys-initrd.img", "sys-cmdline", "sys-efi.iso"] {
        assert_eq!(
            read(&w.path(&format!("converted/{file}"))),
            read(&w.path(&format!("fresh/{file}"))),
            "{file}"
        );
    }

    // Another YAML: the tar is not used, and the build says why (here, then fails for want of
    // the images).
    w.write(
        "sys.yml",
        &format!(
            "{}files:\n  - path: etc/extra\n    contents: x\n",
            system_yaml(APP)
        ),
    );
    let err = build(&[
        "-f",
        "tar",
        "--input-tar",
        "first/sys.tar",
        "--dir",
        "other",
    ])
    .failed();
    assert!(
        err.contains("not using --input-tar first/sys.tar: it was made from other inputs"),
        "{err}"
    );
    // A tar keel did not write (tar-kernel-initrd's holds no root filesystem record).
    w.write("sys.yml", &system_yaml(APP));
    let (w2, _) = Work::with_fixtures();
    w2.write("sys.yml", &system_yaml(APP));
    run(&mut w2.keel([
        "build",
        "--arch",
        "x86_64",
        "-f",
        "tar-kernel-initrd",
        "--dir",
        "o",
        "sys.yml",
    ]))
    .ok();
    std::fs::copy(w2.path("o/sys-initrd.tar"), w.path("foreign.tar")).unwrap();
    let err = build(&[
        "-f",
        "tar",
        "--input-tar",
        "foreign.tar",
        "--dir",
        "foreign",
    ])
    .failed();
    assert!(err.contains("it has no KEEL.input record"), "{err}");
    // --pull re-resolves every tag: refused with --input-tar.
    let bad = build(&["--pull", "--input-tar", "first/sys.tar", "--dir", "pull"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
}

/// `--sign-with`: the UKI carries an Authenticode signature by the key set's db key, which
/// Debian's `sbverify` accepts with db's certificate and refuses with another; the same inputs
/// and key give the same bytes; `NAME-pcr11.json` predicts PCR 11, signed or not; formats without a UKI, a key others can read and a key sbsign
/// cannot use are refused, leaving nothing behind.
#[test]
fn sign_with_signs_the_uki_reproducibly() {
    use std::os::unix::fs::PermissionsExt;
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    run(&mut w.keel(["keys", "generate", "keys"])).ok();
    let build = |dir: &str, extra: &[&str]| {
        let mut args = vec!["build", "--arch", "x86_64", "--no-sbom", "--dir", dir];
        args.extend_from_slice(extra);
        args.push("sys.yml");
        run(&mut w.keel(args))
    };
    build("one", &["-f", "uki", "--sign-with", "keys"]).ok();
    // A second later: a signature stamped with the wall clock would differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build("two", &["-f", "uki", "--sign-with", "keys"]).ok();
    build("plain", &["-f", "uki"]).ok();
    let signed = read(&w.path("one/sys.efi"));
    assert!(
        signed == read(&w.path("two/sys.efi")),
        "signing is not reproducible"
    );
    assert!(signed != read(&w.path("plain/sys.efi")));
    let sbverify = |cert: &str| {
        std::process::Command::new("sbverify")
            .arg("--cert")
            .arg(w.path(cert))
            .arg(w.path("one/sys.efi"))
            .output()
            .expect("sbverify runs (scripts/setup.sh installs sbsigntool)")
    };
    let good = sbverify("keys/db.crt");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        !sbverify("keys/PK.crt").status.success(),
        "PK verified a db signature"
    );

    let err = build("none", &["-f", "kernel+initrd", "--sign-with", "keys"]).failed();
    assert!(
        err.contains("format kernel+initrd does not boot a keel UKI"),
        "{err}"
    );
    assert!(listing(&w.path("none")).is_empty());

    std::fs::set_permissions(
        w.path("keys/db.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let err = build("exposed", &["-f", "uki", "--sign-with", "keys"]).failed();
    assert!(
        err.contains("db.key: a private key readable by others (mode 0640)"),
        "{err}"
    );
    assert!(listing(&w.path("exposed")).is_empty());

    w.write(
        "keys/db.key",
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    std::fs::set_permissions(
        w.path("keys/db.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let err = build("broken", &["-f", "raw-efi", "--sign-with", "keys"]).failed();
    assert!(err.contains("cannot sign the UKI: sbsign failed"), "{err}");
    assert!(
        listing(&w.path("broken")).is_empty(),
        "{:?}",
        listing(&w.path("broken"))
    );
}

/// `keel verify`: a signed UKI and the same UKI in a raw-efi disk verify against the key set
/// and the YAML; another key set, a YAML that builds something else, one changed byte and an
/// unsigned UKI with `--keys` are each refused, naming what is wrong.
#[test]
fn verify_checks_the_signature_and_rebuilds_from_the_yaml() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    run(&mut w.keel(["keys", "generate", "keys"])).ok();
    run(&mut w.keel(["keys", "generate", "other"])).ok();
    let build = |dir: &str, extra: &[&str], yaml: &str| {
        let mut args = vec!["build", "--arch", "x86_64", "--no-sbom", "--dir", dir];
        args.extend_from_slice(extra);
        args.push(yaml);
        run(&mut w.keel(args)).ok();
    };
    build(
        "out",
        &[
            "-f",
            "uki",
            "-f",
            "raw-efi",
            "-f",
            "qcow2-efi",
            "-f",
            "iso-efi",
            "--sign-with",
            "keys",
        ],
        "sys.yml",
    );
    build("plain", &["-f", "uki"], "sys.yml");
    let verify = |keys: Option<&str>, artifact: &str, yaml: &str| {
        let mut args = vec!["verify", "--arch", "x86_64"];
        if let Some(k) = keys {
            args.extend(["--keys", k]);
        }
        args.extend([artifact, yaml]);
        run(&mut w.keel(args))
    };
    let pcr = String::from_utf8(read(&w.path("out/sys-pcr11.json"))).unwrap();
    for artifact in [
        "out/sys.efi",
        "out/sys-efi.img",
        "out/sys-efi.qcow2",
        "out/sys-efi.iso",
    ] {
        let ok = verify(Some("keys"), artifact, "sys.yml").ok();
        assert!(ok.stdout.contains("signed: verified with"), "{}", ok.stdout);
        let line = ok.stdout.lines().find(|l| l.contains("PCR 11")).unwrap();
        let hash = line.rsplit(' ').next().unwrap();
        assert!(pcr.contains(hash), "{line} / {pcr}");
    }

    let err = verify(Some("other"), "out/sys.efi", "sys.yml").failed();
    assert!(
        err.contains("the signature of the UKI does not verify with"),
        "{err}"
    );
    let err = verify(Some("keys"), "plain/sys.efi", "sys.yml").failed();
    assert!(err.contains("the UKI is not signed"), "{err}");
    // Unsigned and no keys: the rebuild alone.
    let ok = verify(None, "plain/sys.efi", "sys.yml").ok();
    assert!(ok.stdout.contains("signed: no"), "{}", ok.stdout);

    // Another command line: the YAML no longer builds this UKI.
    let text = std::fs::read_to_string(w.path("sys.yml")).unwrap();
    let changed = text.replacen("cmdline: \"", "cmdline: \"quiet ", 1);
    assert_ne!(changed, text, "the fixture YAML has a cmdline");
    w.write("changed.yml", &changed);
    std::fs::copy(w.path("sys.lock.json"), w.path("changed.lock.json")).unwrap();
    let err = verify(Some("keys"), "out/sys.efi", "changed.yml").failed();
    assert!(
        err.contains(
            "not what changed.yml builds from its lock file: the UKIs' sections .cmdline differ"
        ),
        "{err}"
    );

    // One byte of the initramfs changed in the signed file: the signature breaks first.
    let mut uki = read(&w.path("out/sys.efi"));
    let at = uki.len() / 2;
    uki[at] ^= 1;
    std::fs::write(w.path("tampered.efi"), &uki).unwrap();
    let err = verify(Some("keys"), "tampered.efi", "sys.yml").failed();
    assert!(
        err.contains("the signature of the UKI does not verify"),
        "{err}"
    );
    // Without --keys the rebuild finds it.
    let err = verify(None, "tampered.efi", "sys.yml").failed();
    assert!(err.contains("differ"), "{err}");

    // The architecture comes from the UKI; an --arch that disagrees is refused.
    let ok = run(&mut w.keel(["verify", "out/sys-efi.img", "sys.yml"])).ok();
    assert!(
        ok.stdout.starts_with("ok: out/sys-efi.img (x86_64)"),
        "{}",
        ok.stdout
    );
    let err = run(&mut w.keel(["verify", "--arch", "aarch64", "out/sys.efi", "sys.yml"])).failed();
    assert!(err.contains("a UKI for x86_64, not for aarch64"), "{err}");

    // A file that claims to be qcow2 and is not: qemu-img's refusal, naming the file.
    std::fs::write(w.path("fake.qcow2"), b"QFI\xfbnot really a qcow2 image").unwrap();
    let err = verify(None, "fake.qcow2", "sys.yml").failed();
    assert!(
        err.contains("fake.qcow2: cannot convert the disk to raw to read it"),
        "{err}"
    );
    std::fs::write(w.path("junk.bin"), b"junk").unwrap();
    let err = verify(None, "junk.bin", "sys.yml").failed();
    assert!(
        err.contains("not a UKI (.efi), an EFI disk (raw, qcow2, vmdk, vhd) or an iso-efi image"),
        "{err}"
    );
}

/// `--verity`: the root on its own squashfs partition with a dm-verity hash tree beside it and
/// the root hash on the signed UKI's command line; byte-identical twice, accepted by `keel
/// verify`, which names the partition a changed byte is in. Formats without a disk are refused
/// before anything is written.
#[test]
fn verity_disks_are_reproducible_and_verified() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    run(&mut w.keel(["keys", "generate", "keys"])).ok();
    let build = |dir: &str, format: &str| {
        run(&mut w.keel([
            "build",
            "--arch",
            "x86_64",
            "--no-sbom",
            "--dir",
            dir,
            "-f",
            format,
            "--verity",
            "--sign-with",
            "keys",
            "sys.yml",
        ]))
    };
    build("a", "raw-efi").ok();
    build("b", "raw-efi").ok();
    let disk = read(&w.path("a/sys-efi.img"));
    assert!(disk == read(&w.path("b/sys-efi.img")), "two builds differ");

    let err = build("c", "uki").failed();
    assert!(
        err.contains("--verity: format uki has no disk to hold a verified root partition"),
        "{err}"
    );
    assert!(!w.path("c").exists(), "a refused build wrote its directory");

    // The partitions, as a user would list them.
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(w.path("a/sys-efi.img"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["EFI system partition", "keel-root", "keel-root-verity"]
    );
    let start = |i: usize| usize::try_from(parts[i]["start"].as_u64().unwrap() * 512).unwrap();

    // The root hash on the UKI's command line is the one veritysetup computes.
    let uki = {
        let needle = b"keel.verity=";
        let at = disk
            .windows(needle.len())
            .position(|win| win == needle)
            .expect("keel.verity= in the UKI");
        String::from_utf8_lossy(&disk[at + needle.len()..at + needle.len() + 64]).into_owned()
    };
    let size = |i: usize| usize::try_from(parts[i]["size"].as_u64().unwrap() * 512).unwrap();
    std::fs::write(w.path("root.img"), &disk[start(1)..start(1) + size(1)]).unwrap();
    std::fs::write(w.path("hash.img"), &disk[start(2)..start(2) + size(2)]).unwrap();
    let check = Command::new("veritysetup")
        .arg("verify")
        .arg(w.path("root.img"))
        .arg(w.path("hash.img"))
        .arg(&uki)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let verify = |artifact: &str| {
        run(&mut w.keel([
            "verify", "--arch", "x86_64", "--keys", "keys", artifact, "sys.yml",
        ]))
    };
    let ok = verify("a/sys-efi.img").ok();
    assert!(ok.stdout.contains("verified root:"), "{}", ok.stdout);
    for (partition, what) in [(1, "the root partitions"), (2, "the hash-tree partitions")] {
        let mut changed = disk.clone();
        changed[start(partition) + 4096 + 7] ^= 1;
        std::fs::write(w.path("changed-efi.img"), &changed).unwrap();
        let err = verify("changed-efi.img").failed();
        assert!(err.contains(&format!("{what} differ")), "{err}");
    }
}

/// `--ab`: systemd-boot (signed with the db key under `--sign-with`) at the removable-media
/// path, `loader/loader.conf` and the signed UKI at `EFI/Linux/keel-<version>.efi` in the ESP;
/// then slots A and B and the data partition, in that order; byte-identical twice. `--ab`
/// without `--verity`, a bad `--image-version` and a `--slot-size` the root does not fit in
/// are refused before anything is written.
#[test]
fn ab_disks_boot_through_systemd_boot() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    run(&mut w.keel(["keys", "generate", "keys"])).ok();
    let build = |dir: &str, extra: &[&str]| {
        let mut args = vec![
            "build",
            "--arch",
            "x86_64",
            "--no-sbom",
            "--dir",
            dir,
            "-f",
            "raw-efi",
        ];
        args.extend_from_slice(extra);
        args.push("sys.yml");
        run(&mut w.keel(args))
    };
    let ab = ["--verity", "--ab", "--sign-with", "keys"];
    build("a", &ab).ok();
    build("b", &ab).ok();
    let disk = read(&w.path("a/sys-efi.img"));
    assert!(disk == read(&w.path("b/sys-efi.img")), "two builds differ");

    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(w.path("a/sys-efi.img"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "EFI system partition",
            "keel-root-a",
            "keel-root-verity-a",
            "keel-root-b",
            "keel-root-verity-b",
            "keel-data"
        ]
    );
    assert_eq!(parts[5]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[5]["size"].as_u64().unwrap() * 512, 64 << 20);
    assert_eq!(parts[1]["size"], parts[3]["size"]);
    assert_eq!(parts[2]["size"], parts[4]["size"]);

    // The ESP's files, as mtools reads them.
    let esp = format!(
        "{}@@{}",
        w.path("a/sys-efi.img").display(),
        parts[0]["start"].as_u64().unwrap() * 512
    );
    let copy = |from: &str, to: &str| {
        let out = Command::new("mcopy")
            .args(["-n", "-i", &esp, from])
            .arg(w.path(to))
            .output()
            .expect("mcopy runs (mtools)");
        assert!(out.status.success(), "{from}: {out:?}");
    };
    copy("::/EFI/BOOT/BOOTX64.EFI", "systemd-boot.efi");
    copy("::/loader/loader.conf", "loader.conf");
    copy("::/EFI/Linux/keel-1.efi", "keel-1.efi");
    let conf = std::fs::read_to_string(w.path("loader.conf")).unwrap();
    assert!(conf.starts_with("timeout 0\n"), "{conf}");
    assert!(conf.contains("default keel-*\n"), "{conf}");
    let boot = read(&w.path("systemd-boot.efi"));
    assert!(
        boot.windows(13).any(|w| w == b"auto-firmware"),
        "BOOTX64.EFI is not systemd-boot"
    );
    let uki = read(&w.path("keel-1.efi"));
    assert!(uki.windows(15).any(|w| w == b"IMAGE_VERSION=1"));
    for file in ["systemd-boot.efi", "keel-1.efi"] {
        let out = Command::new("sbverify")
            .args(["--cert", "keys/db.crt"])
            .arg(file)
            .current_dir(w.path(""))
            .output()
            .expect("sbverify runs (scripts/setup.sh installs sbsigntool)");
        assert!(out.status.success(), "{file}: {out:?}");
    }

    // keel verify: systemd-boot and the UKI signed and rebuilt, the slot's partitions compared.
    let verify = |keys: bool, artifact: &str| {
        let mut args = vec!["verify", "--arch", "x86_64"];
        if keys {
            args.extend(["--keys", "keys"]);
        }
        args.extend([artifact, "sys.yml"]);
        run(&mut w.keel(args))
    };
    let ok = verify(true, "a/sys-efi.img").ok();
    assert!(
        ok.stdout.contains("A/B disk: systemd-boot"),
        "{}",
        ok.stdout
    );
    assert!(ok.stdout.contains("verified root:"), "{}", ok.stdout);
    // systemd-boot with one byte changed: its signature breaks; without keys, the rebuild
    // names it.
    let mut changed = boot.clone();
    let at = changed.len() / 3;
    changed[at] ^= 1;
    std::fs::write(w.path("changed-boot.efi"), &changed).unwrap();
    std::fs::copy(w.path("a/sys-efi.img"), w.path("changed-efi.img")).unwrap();
    let esp_changed = format!(
        "{}@@{}",
        w.path("changed-efi.img").display(),
        parts[0]["start"].as_u64().unwrap() * 512
    );
    let out = Command::new("mcopy")
        .args(["-o", "-i", &esp_changed])
        .arg(w.path("changed-boot.efi"))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = verify(true, "changed-efi.img").failed();
    assert!(
        err.contains("the signature of systemd-boot does not verify"),
        "{err}"
    );
    let err = verify(false, "changed-efi.img").failed();
    assert!(
        err.contains("the boot managers (systemd-boot) differ"),
        "{err}"
    );

    // Another version: the UKI's name and os-release follow it.
    build("v", &["--verity", "--ab", "--image-version", "2.0~rc1"]).ok();
    let esp = format!("{}@@{}", w.path("v/sys-efi.img").display(), 1 << 20);
    let out = Command::new("mdir")
        .args(["-b", "-i", &esp, "::/EFI/Linux"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("keel-2.0~rc1.efi"),
        "{out:?}"
    );

    // Usage errors (status 2), from the flags' parsers.
    let usage = |extra: &[&str]| {
        let bad = build("c", extra);
        assert_eq!(bad.code, Some(2), "{}", bad.stderr);
        bad.stderr
    };
    let err = usage(&["--ab"]);
    assert!(err.contains("--verity"), "{err}");
    let err = usage(&["--verity", "--ab", "--image-version", "1/2"]);
    assert!(
        err.contains(
            "invalid value '1/2' for '--image-version <VERSION>': invalid image version \"1/2\""
        ),
        "{err}"
    );
    let err = usage(&["--verity", "--image-version", "2"]);
    assert!(err.contains("--ab"), "{err}");
    let err = build("c", &["--verity", "--ab", "--slot-size", "1K"]).failed();
    assert!(
        err.contains("--slot-size of 1024 bytes cannot hold the verified root"),
        "{err}"
    );
    assert!(!w.path("c").exists(), "a refused build wrote its directory");
}

/// `keel update --to NEW DISK` on A/B disks: the new version's root goes into the slot the disk
/// does not boot, that slot's GUIDs become its root hash's, its UKI joins the ESP (the replaced
/// slot's UKI leaves), the data partition is untouched; a version that is not newer, an update
/// whose root was changed after its build and one signed by another key are refused, leaving
/// the disk as it was.
#[test]
fn update_writes_the_other_slot() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    // Each version's root differs: another onboot container.
    for v in ["2", "3"] {
        let text = std::fs::read_to_string(w.path("sys.yml")).unwrap();
        let more = text.replace(
            "onboot:\n",
            &format!("onboot:\n  - name: v{v}\n    image: {APP}\n    command: [/bin/app, v{v}]\n"),
        );
        assert_ne!(more, text);
        w.write(&format!("sys{v}.yml"), &more);
    }
    run(&mut w.keel(["keys", "generate", "keys"])).ok();
    run(&mut w.keel(["keys", "generate", "other"])).ok();
    let build = |dir: &str, yaml: &str, version: &str, keys: &str| {
        run(&mut w.keel([
            "build",
            "--arch",
            "x86_64",
            "--no-sbom",
            "--dir",
            dir,
            "-f",
            "raw-efi",
            "--verity",
            "--ab",
            "--image-version",
            version,
            "--sign-with",
            keys,
            yaml,
        ]))
        .ok();
    };
    build("v1", "sys.yml", "1", "keys");
    build("v2", "sys2.yml", "2", "keys");
    build("v3", "sys3.yml", "3", "keys");
    build("v3other", "sys3.yml", "3", "other");
    let disk = w.path("v1/sys-efi.img");
    let table = |path: &Path| -> Vec<serde_json::Value> {
        let out = Command::new("sfdisk")
            .arg("--json")
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        t["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .clone()
    };
    // A marker in the data partition, which no update may touch.
    let parts = table(&disk);
    let data_at = parts[5]["start"].as_u64().unwrap() * 512;
    let mut bytes = read(&disk);
    let at = usize::try_from(data_at).unwrap() + 4096;
    bytes[at..at + 6].copy_from_slice(b"marker");
    std::fs::write(&disk, &bytes).unwrap();
    let update = |new: &str, keys: &str| {
        run(&mut w.keel(["update", "--keys", keys, "--to", new, "v1/sys-efi.img"]))
    };
    let guid_of = |hash: &str| {
        let text = |h: &str| {
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
            .to_uppercase()
        };
        (text(&hash[..32]), text(&hash[32..]))
    };
    let root_hash = |out: &str| {
        let at = out.find("root hash ").expect("the root hash is printed") + 10;
        out[at..at + 64].to_owned()
    };

    let ok = update("v2/sys2-efi.img", "keys").ok();
    assert!(
        ok.stdout.contains("slot b now holds version 2"),
        "{}",
        ok.stdout
    );
    let (root_b, hash_b) = guid_of(&root_hash(&ok.stdout));
    let parts = table(&disk);
    assert_eq!(parts[3]["uuid"], root_b.as_str());
    assert_eq!(parts[4]["uuid"], hash_b.as_str());
    // Version 2 is on trial: one boot (systemd-boot's counter), kept only if blessed.
    assert_eq!(
        keel_testutil::esp_linux_entries(&disk),
        ["keel-1.efi", "keel-2+1-0.efi"]
    );
    let bytes = read(&disk);
    assert_eq!(&bytes[at..at + 6], b"marker", "the data partition changed");
    // Slot b verifies against the new root hash, as the kernel will check it.
    let slice = |i: usize, name: &str| {
        let (start, size) = (
            parts[i]["start"].as_u64().unwrap() * 512,
            parts[i]["size"].as_u64().unwrap() * 512,
        );
        let (start, size) = (
            usize::try_from(start).unwrap(),
            usize::try_from(size).unwrap(),
        );
        std::fs::write(w.path(name), &bytes[start..start + size]).unwrap();
        w.path(name)
    };
    let check = Command::new("veritysetup")
        .arg("verify")
        .arg(slice(3, "root-b"))
        .arg(slice(4, "hash-b"))
        .arg(root_hash(&ok.stdout))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    // Refusals leave the disk as it is.
    let before = read(&disk);
    let err = update("v2/sys2-efi.img", "keys").failed();
    assert!(
        err.contains("version 2 is not newer than version 2"),
        "{err}"
    );
    let err = update("v3other/sys3-efi.img", "keys").failed();
    assert!(err.contains("its UKI's signature does not verify"), "{err}");
    let mut changed = read(&w.path("v3/sys3-efi.img"));
    let root_a = usize::try_from(
        table(&w.path("v3/sys3-efi.img"))[1]["start"]
            .as_u64()
            .unwrap()
            * 512,
    )
    .unwrap();
    changed[root_a + 100] ^= 1;
    std::fs::write(w.path("changed-efi.img"), &changed).unwrap();
    let err = update("changed-efi.img", "keys").failed();
    assert!(
        err.contains("does not hash to the root hash on its UKI's command line"),
        "{err}"
    );
    assert!(read(&disk) == before, "a refused update changed the disk");

    // The next update goes to slot a, and version 1's UKI leaves with its root.
    let ok = update("v3/sys3-efi.img", "keys").ok();
    assert!(
        ok.stdout.contains("slot a now holds version 3"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("slot b keeps version 2"),
        "{}",
        ok.stdout
    );
    assert_eq!(
        keel_testutil::esp_linux_entries(&disk),
        ["keel-2+1-0.efi", "keel-3+1-0.efi"]
    );
    let (root_a, _) = guid_of(&root_hash(&ok.stdout));
    assert_eq!(table(&disk)[1]["uuid"], root_a.as_str());
    assert_eq!(&read(&disk)[at..at + 6], b"marker");
}
