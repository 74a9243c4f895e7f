//! Bad input through the `keel` binary: every failure exits non-zero, says where the problem is
//! (`FILE:LINE:COLUMN` for YAML, the image and entry for layers, the image and blob for
//! corruption) and leaves no output, no temporary file and no lock file behind.

mod common;

use common::*;
use keel_image::{Arch, Digest};
use std::time::{Duration, Instant};

/// Asserts that nothing was written: `out/` is absent or empty, no lock file, no temp file.
fn assert_nothing_written(w: &Work, yaml_stem: &str) {
    assert_eq!(
        listing(&w.path("out")),
        Vec::<String>::new(),
        "outputs written"
    );
    assert!(
        !w.path(&format!("{yaml_stem}.lock.json")).exists(),
        "a failed build wrote its lock file"
    );
    let stray: Vec<String> = listing(w.root())
        .into_iter()
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}

/// Writes `bad.yml`, builds it for x86_64 into `out/` and expects failure; returns stderr.
fn build_fails(w: &Work, yaml: &str, extra: &[&str]) -> String {
    w.write("bad.yml", yaml);
    let mut args = vec!["build", "--arch", "x86_64", "--dir", "out"];
    args.extend_from_slice(extra);
    args.push("bad.yml");
    let err = run(&mut w.keel(&args)).failed();
    assert_nothing_written(w, "bad");
    err
}

/// The head of a valid system, for appending one bad container.
fn head() -> String {
    format!(
        "kernel:\n  image: {KERNEL}\ninit:\n  - {INIT}\nonboot:\n  - name: a\n    image: {APP}\n"
    )
}

#[test]
fn interrupted_and_killed_builds_leave_no_temporary_files() {
    use std::os::unix::process::ExitStatusExt;
    let (w, _) = Work::with_fixtures();
    // An image big enough that writing its tar takes a while: time to interrupt it.
    let big = vec![0u8; 256 << 20];
    let layer = tar_of(&[Entry::File("big", &big)]);
    let reference = format!("{DEAD_REGISTRY}/keel-test/big:1");
    put_image(
        &w.store(),
        &reference,
        &image_config(&["/big"], &[]),
        |_| vec![layer.clone()],
    );
    w.write(
        "big.yml",
        &format!("onboot:\n  - name: big\n    image: {reference}\n"),
    );
    std::fs::create_dir_all(w.path("out")).unwrap();
    let temps = || -> Vec<String> {
        listing(&w.path("out"))
            .into_iter()
            .filter(|n| n.contains(".tmp-"))
            .collect()
    };
    let mut keel = w
        .keel(["build", "-f", "tar", "--dir", "out", "big.yml"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while temps().is_empty() {
        assert!(
            keel.try_wait().unwrap().is_none(),
            "the build ended before its output was started"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary file appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &keel.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = keel.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(15), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed 1 unfinished output file"),
        "{stderr}"
    );
    assert_eq!(temps(), Vec::<String>::new());
    assert_eq!(listing(&w.path("out")), Vec::<String>::new());

    // After a SIGKILL nothing can clean up: the next build removes what a dead process left,
    // and not what a live one is writing.
    let dead = w.path("out/big.tar.tmp-999999999-AbCdEf");
    let live = w.path(&format!("out/other.tar.tmp-{}-AbCdEf", std::process::id()));
    std::fs::write(&dead, b"x").unwrap();
    std::fs::write(&live, b"x").unwrap();
    let out = run(&mut w.keel(["build", "-f", "tar", "--dir", "out", "big.yml"])).ok();
    assert!(
        out.stderr.contains("left by a build that was killed"),
        "{}",
        out.stderr
    );
    assert!(!dead.exists() && live.exists());
    assert!(w.path("out/big.tar").is_file());
}

#[test]
fn a_failed_build_leaves_no_directory_and_a_file_is_no_directory() {
    let (w, _) = Work::with_fixtures();
    // The kernel format without a kernel: fails after the output directory would be made.
    w.write(
        "nokernel.yml",
        &format!("onboot:\n  - name: a\n    image: {APP}\n"),
    );
    run(&mut w.keel(["build", "--dir", "new/out", "nokernel.yml"])).failed();
    assert!(!w.path("new").exists(), "a failed build left its --dir");
    w.write("afile", "x");
    let err = run(&mut w.keel(["build", "-f", "tar", "--dir", "afile", "nokernel.yml"])).failed();
    assert!(err.contains("--dir afile is not a directory"), "{err}");
}

#[test]
fn a_corrupt_store_is_said_to_be_corrupt_and_clean_repairs_it() {
    let (w, _) = Work::with_fixtures();
    std::fs::write(w.store_dir().join("index.json"), "{not json").unwrap();
    let err = build_fails(&w, &system_yaml(APP), &[]);
    assert!(
        err.contains("index.json") && err.contains("is corrupt"),
        "{err}"
    );
    assert!(!err.contains("could not be pulled"), "{err}");
    run(&mut w.keel(["cache", "clean"])).ok();
    run(&mut w.keel(["cache", "ls"])).ok();
}

#[test]
fn a_pinned_digest_whose_tag_moved_is_said_and_refused_when_locked() {
    let (w, d) = Work::with_fixtures();
    // The YAML pins the app's first digest; then the tag moves to another image.
    let pinned = format!("{APP}@{}", d.app);
    put_app(&w.store(), APP, "v2");
    w.write("sys.yml", &system_yaml(&pinned));
    let out = run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out", "sys.yml"])).ok();
    assert!(
        out.stderr.contains("as pinned; the store's") && out.stderr.contains("now points to"),
        "{}",
        out.stderr
    );
    let err = run(&mut w.keel([
        "build", "--locked", "--arch", "x86_64", "--dir", "out2", "sys.yml",
    ]))
    .failed();
    assert!(err.contains("--locked"), "{err}");
    assert_eq!(listing(&w.path("out2")), Vec::<String>::new());
}

#[test]
fn a_size_no_filesystem_holds_is_refused_at_once() {
    let (w, _) = Work::with_fixtures();
    let start = Instant::now();
    let err = build_fails(
        &w,
        &system_yaml(APP),
        &["-f", "raw-efi", "--size", "99999999G"],
    );
    assert!(
        err.contains("--size 99999999G is larger than the filesystem that holds out"),
        "{err}"
    );
    // Refused before any image is read, let alone a byte written.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let err = build_fails(&w, &system_yaml(APP), &["-f", "raw-efi", "--size", "12Q"]);
    assert!(err.contains("invalid --size"), "{err}");
}

#[test]
fn unknown_key_is_reported_with_its_position() {
    let w = Work::empty();
    let err = build_fails(&w, &format!("{}    imagee: x\n", head()), &[]);
    assert!(
        err.contains("bad.yml:8:5: unknown key \"imagee\" in onboot entry (did you mean image?)"),
        "{err}"
    );
    let err = build_fails(&w, "kernal:\n  image: x\n", &[]);
    assert!(
        err.contains("bad.yml:1:1: unknown key \"kernal\" in the top level (did you mean kernel?)"),
        "{err}"
    );
}

#[test]
fn misspelled_capability_suggests_the_right_one() {
    let w = Work::empty();
    let err = build_fails(
        &w,
        &format!(
            "{}    capabilities:\n      - CAP_CHOWN\n      - CAP_SYS_ADMN\n",
            head()
        ),
        &[],
    );
    assert!(
        err.contains(
            "bad.yml:10:9: unknown capability \"CAP_SYS_ADMN\" (did you mean CAP_SYS_ADMIN?)"
        ),
        "{err}"
    );
}

#[test]
fn malformed_binds_are_refused() {
    let w = Work::empty();
    let err = build_fails(&w, &format!("{}    binds: [\"/a\"]\n", head()), &[]);
    assert!(
        err.contains("bad.yml:8:13: invalid bind \"/a\": missing ':'"),
        "{err}"
    );
    let err = build_fails(
        &w,
        &format!("{}    binds:\n      - /ok:/ok\n      - a:b:c:d\n", head()),
        &[],
    );
    assert!(
        err.contains("bad.yml:10:9: invalid bind \"a:b:c:d\""),
        "{err}"
    );
}

#[test]
fn yaml_syntax_error_names_the_position() {
    let w = Work::empty();
    let err = build_fails(&w, "onboot:\n  - name: a\n    image: [x\n", &[]);
    assert!(err.contains("bad.yml:4:1: invalid YAML"), "{err}");
    let err = build_fails(&w, "init:\n\t- x\n", &[]);
    assert!(err.contains("bad.yml:2:2: invalid YAML"), "{err}");
}

#[test]
fn missing_image_fails_fast_naming_position_and_reference() {
    let (w, _) = Work::with_fixtures();
    let missing = format!("{DEAD_REGISTRY}/nope:1");
    let yaml = format!("{}services:\n  - name: s\n    image: {missing}\n", head());
    let start = Instant::now();
    let err = build_fails(&w, &yaml, &[]);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        err.contains(&format!(
            "bad.yml:10:12: image {missing} is not in the store"
        )),
        "{err}"
    );
    // And the store did not gain a tag for it.
    let listed = run(&mut w.keel(["cache", "ls"])).ok().stdout;
    assert!(!listed.contains("nope"), "{listed}");
}

/// Flips one byte of every layer blob of the app image (for x86_64) at `at(len)`; returns the
/// first layer's digest.
fn corrupt_app_layers(w: &Work, at: impl Fn(usize) -> usize) -> Digest {
    let layers = layer_digests(&w.store(), APP, Arch::X86_64);
    for digest in &layers {
        let path = blob_path(&w.store_dir(), digest);
        let mut data = std::fs::read(&path).unwrap();
        let i = at(data.len());
        data[i] ^= 0x55;
        std::fs::write(&path, &data).unwrap();
    }
    layers[0].clone()
}

fn assert_names_image_and_blob(err: &str, digest: &Digest) {
    assert!(err.contains(APP), "the image is not named: {err}");
    assert!(
        err.contains(digest.as_str()),
        "the blob {digest} is not named: {err}"
    );
}

#[test]
fn corrupted_blob_names_image_and_digest() {
    let (w, _) = Work::with_fixtures();
    // Byte 4 is the gzip header's mtime: the layer still decompresses, only its digest is off.
    let digest = corrupt_app_layers(&w, |_| 4);
    let err = build_fails(&w, &format!("{}\n", head()), &[]);
    assert_names_image_and_blob(&err, &digest);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn corrupted_blob_in_compressed_data_names_image_and_digest() {
    let (w, _) = Work::with_fixtures();
    // A byte in the middle of the deflate stream: decompression itself may fail first, and
    // the message must still say which blob of which image is damaged.
    let digest = corrupt_app_layers(&w, |len| len / 2);
    let err = build_fails(&w, &format!("{}\n", head()), &[]);
    assert_names_image_and_blob(&err, &digest);
}

/// A valid two-container system for lock tests, written as `bad.yml`.
fn lock_fixture() -> (Work, Digests) {
    let (w, d) = Work::with_fixtures();
    w.write("bad.yml", &system_yaml(APP));
    (w, d)
}

fn write_lock(w: &Work, pins: &[(&str, &str)]) {
    let images: serde_json::Map<String, serde_json::Value> = pins
        .iter()
        .map(|(r, d)| ((*r).to_owned(), serde_json::Value::from(*d)))
        .collect();
    let text = serde_json::json!({"version": 1, "images": images}).to_string();
    w.write("bad.lock.json", &text);
}

fn build_locked_fails(w: &Work) -> String {
    let lock_before = std::fs::read(w.path("bad.lock.json")).unwrap();
    let err = run(&mut w.keel([
        "build", "--locked", "--arch", "x86_64", "--dir", "out", "bad.yml",
    ]))
    .failed();
    assert_eq!(listing(&w.path("out")), Vec::<String>::new());
    assert_eq!(
        std::fs::read(w.path("bad.lock.json")).unwrap(),
        lock_before,
        "--locked changed the lock file"
    );
    err
}

#[test]
fn locked_build_refuses_a_pin_that_differs_from_the_store() {
    let (w, d) = lock_fixture();
    // An older app, present in the store under another name: the lock pins it, the tag in
    // the store names v1.
    let old = put_app(&w.store(), "127.0.0.1:9/keel-test/app-old:0", "v0");
    write_lock(
        &w,
        &[
            (KERNEL, d.kernel.as_str()),
            (INIT, d.init.as_str()),
            (APP, old.as_str()),
        ],
    );
    let err = build_locked_fails(&w);
    assert!(err.contains(APP), "{err}");
    assert!(
        err.contains(old.as_str()) && err.contains(d.app.as_str()),
        "both digests should be named: {err}"
    );
}

#[test]
fn locked_build_refuses_a_pin_missing_from_the_lock() {
    let (w, d) = lock_fixture();
    write_lock(&w, &[(KERNEL, d.kernel.as_str()), (INIT, d.init.as_str())]);
    let err = build_locked_fails(&w);
    assert!(
        err.contains(&format!("{APP}: not pinned (resolves to {})", d.app)),
        "{err}"
    );
}

#[test]
fn pin_to_an_absent_blob_fails_naming_reference_and_digest() {
    let (w, d) = lock_fixture();
    let absent = Digest::of(b"no such image");
    write_lock(
        &w,
        &[
            (KERNEL, d.kernel.as_str()),
            (INIT, d.init.as_str()),
            (APP, absent.as_str()),
        ],
    );
    let start = Instant::now();
    let err = build_locked_fails(&w);
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(err.contains(APP), "{err}");
    assert!(err.contains(absent.as_str()), "{err}");
    // The first container naming it is the position reported.
    assert!(err.contains("bad.yml:8:12: "), "{err}");
}

#[test]
fn layer_with_dotdot_entry_is_refused() {
    let (w, _) = Work::with_fixtures();
    // A good build first: a failed rebuild must leave its outputs untouched.
    w.write("good.yml", &system_yaml(APP));
    run(&mut w.keel([
        "build", "--arch", "x86_64", "--dir", "prev", "--name", "sys", "good.yml",
    ]))
    .ok();
    let before: Vec<(String, Vec<u8>)> = listing(&w.path("prev"))
        .into_iter()
        .map(|n| {
            let data = std::fs::read(w.path("prev").join(&n)).unwrap();
            (n, data)
        })
        .collect();
    // kernel, initrd, cmdline and the SBOM.
    assert_eq!(
        before.len(),
        4,
        "{:?}",
        before.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );

    put_evil_dotdot(&w.store(), EVIL_DOTDOT);
    let yaml = format!("{}  - name: evil\n    image: {EVIL_DOTDOT}\n", head());
    let err = build_fails(&w, &yaml, &[]);
    assert!(err.contains(EVIL_DOTDOT), "{err}");
    assert!(
        err.contains("entry \"../escaped\" has a '..' component"),
        "{err}"
    );

    w.write("bad.yml", &yaml);
    run(&mut w.keel([
        "build", "--arch", "x86_64", "--dir", "prev", "--name", "sys", "bad.yml",
    ]))
    .failed();
    let after: Vec<(String, Vec<u8>)> = listing(&w.path("prev"))
        .into_iter()
        .map(|n| {
            let data = std::fs::read(w.path("prev").join(&n)).unwrap();
            (n, data)
        })
        .collect();
    assert_eq!(after, before, "a failed build touched earlier outputs");
}

#[test]
fn layer_writing_through_a_symlinked_parent_is_refused() {
    let (w, _) = Work::with_fixtures();
    put_evil_symlink(&w.store(), EVIL_SYMLINK);
    let yaml = format!(
        "{}services:\n  - name: evil\n    image: {EVIL_SYMLINK}\n",
        head()
    );
    let err = build_fails(&w, &yaml, &[]);
    assert!(err.contains(EVIL_SYMLINK), "{err}");
    assert!(
        err.contains("entry \"link/passwd\" lies below symlink \"link\""),
        "{err}"
    );
}

/// Refused before anything is pulled: the YAML names an image no registry can serve.
#[test]
fn bios_formats_are_refused_on_aarch64_before_writing() {
    let w = Work::empty();
    w.write(
        "x.yml",
        "kernel:\n  image: 127.0.0.1:9/team/kernel:1\nonboot: []\n",
    );
    let out = run(&mut w.keel([
        "build", "--arch", "aarch64", "-f", "uki", "-f", "iso-bios", "--dir", "out", "x.yml",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("iso-bios") && out.stderr.contains("x86_64 only"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("127.0.0.1:9"), "{}", out.stderr);
    assert!(!w.path("out").exists());
}

#[test]
fn unknown_format_and_arch_are_usage_errors() {
    let w = Work::empty();
    w.write("x.yml", "onboot: []\n");
    let out = run(&mut w.keel(["build", "-f", "vhdx", "--dir", "out", "x.yml"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("expected one of: kernel+initrd, kernel+squashfs, tar, tar-kernel-initrd"),
        "{}",
        out.stderr
    );
    let out = run(&mut w.keel(["build", "--arch", "riscv64", "--dir", "out", "x.yml"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("riscv64"), "{}", out.stderr);
    assert_eq!(listing(&w.path("out")), Vec::<String>::new());
}

#[test]
fn layers_with_absolute_paths_or_escaping_hard_links_are_refused() {
    let (w, _) = Work::with_fixtures();
    let cases: [(&str, RawEntry<'_>, &str); 3] = [
        (
            "127.0.0.1:9/keel-test/evil-absolute:1",
            (b"/etc/evil", tar::EntryType::Regular, b"", b"x"),
            "entry \"/etc/evil\" has an absolute path",
        ),
        (
            "127.0.0.1:9/keel-test/evil-hardlink:1",
            (b"hl", tar::EntryType::Link, b"../../etc/shadow", b""),
            "hard link \"hl\" escapes the layer with target \"../../etc/shadow\"",
        ),
        (
            "127.0.0.1:9/keel-test/evil-hardlink-abs:1",
            (b"hl", tar::EntryType::Link, b"/etc/shadow", b""),
            "hard link \"hl\" escapes the layer with target \"/etc/shadow\"",
        ),
    ];
    for (reference, entry, expected) in cases {
        put_image(&w.store(), reference, &image_config(&["/ok"], &[]), |_| {
            vec![raw_tar(&[
                (b"ok", tar::EntryType::Regular, b"", b"fine"),
                entry,
            ])]
        });
        let yaml = format!("{}  - name: evil\n    image: {reference}\n", head());
        let err = build_fails(&w, &yaml, &[]);
        assert!(err.contains(reference), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

/// A `--size` below what the content needs fails with the needed size, and not even the other
/// formats of the same build are written.
#[test]
fn too_small_size_names_the_needed_size_and_writes_nothing() {
    let (w, _) = Work::with_fixtures();
    for (format, disk) in [
        ("raw-efi", "raw-efi"),
        ("vmdk", "raw-efi"),
        ("raw-bios", "raw-bios"),
        ("gcp", "gcp"),
    ] {
        let err = build_fails(
            &w,
            &head(),
            &["-f", "kernel+initrd", "-f", format, "--size", "1K"],
        );
        let needed = err
            .split(&format!("the {disk} disk"))
            .nth(1)
            .and_then(|rest| rest.split(" needs ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{format}: no needed size in {err:?}"));
        assert!(needed > 1024, "{format}: {err}");
        assert!(err.contains("but --size is 1024 bytes"), "{err}");
        // The needed size is enough (gcp's whole GiB is left out: gzip of 1 GiB in a debug
        // build is slow, and its size rule is the raw-efi disk's rounded up).
        if format == "gcp" {
            continue;
        }
        assert_eq!(needed % 1024, 0, "{format}: {needed}");
        let size = format!("{}K", needed / 1024);
        let mut args = vec!["build", "--arch", "x86_64", "--dir", "ok", "-f", format];
        w.write("good.yml", &head());
        args.extend(["--size", &size, "good.yml"]);
        run(&mut w.keel(&args)).ok();
    }
}
