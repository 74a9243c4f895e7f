//! Debian pins that have left the archive, through the `keel` binary against Debian's real
//! archive (as `cargo` treats a `Cargo.lock` entry that no longer resolves): a build moves them
//! to the archive's current version with one warning per package and rewrites the pin;
//! `--locked` refuses, naming the package and `keel pkg update-lock`, which moves them.

mod common;

use common::*;
use keel_pkg::{LOCK_FILE, Lock};
use std::path::{Path, PathBuf};

/// A version no Debian archive has.
const GONE: &str = "1:1.35.0-4+keel-gone";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// `pkg/busybox` copied into the workspace, its x86_64 pin pointed at a version the archive
/// does not have. Returns the lock as written.
fn busybox_with_a_gone_pin(w: &Work) -> Lock {
    let dir = w.path("busybox");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo("pkg/busybox/build.yml"), dir.join("build.yml")).unwrap();
    let mut lock = Lock::read(&repo("pkg/busybox")).unwrap().unwrap();
    let pin = lock
        .arches
        .get_mut("x86_64")
        .unwrap()
        .packages
        .iter_mut()
        .find(|p| p.name == "busybox-static")
        .unwrap();
    pin.version = GONE.into();
    pin.sha256 = "1".repeat(64);
    lock.write(&dir).unwrap();
    lock
}

fn x86_pin(lock: &Lock) -> (String, String) {
    let pin = lock.arches["x86_64"]
        .packages
        .iter()
        .find(|p| p.name == "busybox-static")
        .unwrap();
    (pin.version.clone(), pin.sha256.clone())
}

#[test]
fn a_package_pin_that_left_the_archive_moves_unless_locked() {
    let w = Work::empty();
    let written = busybox_with_a_gone_pin(&w);
    let lock_text = std::fs::read(w.path("busybox").join(LOCK_FILE)).unwrap();
    let gone = format!("busybox-static={GONE} (x86_64) no longer in Debian's archive");

    // --locked: refused, nothing changed, nothing stored.
    let err =
        run(&mut w.keel(["pkg", "build", "--locked", "--arch", "x86_64", "busybox"])).failed();
    assert!(err.contains(&gone), "{err}");
    assert!(err.contains("run `keel pkg update-lock busybox`"), "{err}");
    w.write(
        "sys.yml",
        "onboot:\n  - name: sh\n    image: \"@pkg:busybox\"\n    command: [/bin/true]\n",
    );
    let err = run(&mut w.keel([
        "build", "--locked", "--arch", "x86_64", "-f", "tar", "--dir", "out", "sys.yml",
    ]))
    .failed();
    assert!(err.contains(&gone), "{err}");
    assert_eq!(
        std::fs::read(w.path("busybox").join(LOCK_FILE)).unwrap(),
        lock_text
    );
    assert!(!w.path("out/sys.tar").exists());

    // Without --locked: one warning naming the package, the old and the new version; the pin
    // is rewritten; the other architecture's pins are kept as they were.
    let built = run(&mut w.keel(["pkg", "build", "--arch", "x86_64", "busybox"])).ok();
    let now = Lock::read(&w.path("busybox")).unwrap().unwrap();
    let (version, sha256) = x86_pin(&now);
    assert_ne!(version, GONE);
    assert!(sha256.len() == 64 && sha256 != "1".repeat(64), "{sha256}");
    let warning = format!(
        "busybox: busybox-static {GONE} (x86_64) has left Debian's archive; using {version} and updating build.lock.json"
    );
    assert!(built.stderr.contains(&warning), "{}", built.stderr);
    assert_eq!(built.stderr.matches("has left Debian's archive").count(), 1);
    assert_eq!(now.arches["aarch64"], written.arches["aarch64"]);
    let reference = built.stdout.trim().to_owned();
    assert!(
        reference.starts_with("docker.io/keel/busybox:"),
        "{reference}"
    );

    // The refreshed lock now builds under --locked, to the same content-addressed tag.
    let again = run(&mut w.keel(["pkg", "build", "--locked", "--arch", "x86_64", "busybox"])).ok();
    assert_eq!(again.stdout.trim(), reference);

    // `keel pkg update-lock` is the one command that moves pins by hand.
    busybox_with_a_gone_pin(&w);
    let updated = run(&mut w.keel(["pkg", "update-lock", "busybox"])).ok();
    assert!(
        updated
            .stdout
            .contains(&format!("busybox: x86_64: busybox-static {GONE} -> ")),
        "{}",
        updated.stdout
    );
    let after = Lock::read(&w.path("busybox")).unwrap().unwrap();
    assert_eq!(x86_pin(&after).0, version);
}

#[test]
fn a_kernel_pin_that_left_the_archive_moves_to_the_newest_of_its_flavour() {
    let w = Work::empty();
    // Share the run's .deb cache: the kernel package is the largest download of the suite.
    let debs = keel_testutil::deb_cache();
    std::fs::create_dir_all(&debs).unwrap();
    std::fs::create_dir_all(w.store_dir()).unwrap();
    std::os::unix::fs::symlink(&debs, w.store_dir().join("debs")).unwrap();

    let recipe = std::fs::read_to_string(repo("kernel/debian-6.1/recipe.yml")).unwrap();
    let pinned = keel_kernel::Recipe::parse(&recipe, Path::new("recipe.yml")).unwrap();
    let x86 = pinned.x86_64.clone().unwrap();
    // The way a kernel leaves the archive: its whole ABI package goes.
    let (gone_name, gone_version) = ("linux-image-6.1.0-1-cloud-amd64", "6.1.4-1");
    let x86_line = recipe.lines().find(|l| l.contains(&x86.sha256)).unwrap();
    let gone_line = x86_line
        .replace(&x86.name, gone_name)
        .replace(
            &format!("\"{}\"", x86.version),
            &format!("\"{gone_version}\""),
        )
        .replace(&x86.sha256, &"1".repeat(64));
    let text = recipe.replace(x86_line, &gone_line);
    w.write("kernel/recipe.yml", &text);

    let err =
        run(&mut w.keel(["kernel", "build", "--locked", "--arch", "x86_64", "kernel"])).failed();
    assert!(
        err.contains(&format!(
            "{gone_name}={gone_version} (x86_64) is no longer in Debian's archive; run `keel pkg update-lock kernel`"
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(w.path("kernel/recipe.yml")).unwrap(),
        text
    );

    let built = run(&mut w.keel(["kernel", "build", "--arch", "x86_64", "kernel"])).ok();
    let moved = keel_kernel::Recipe::load(&w.path("kernel")).unwrap();
    let new = moved.x86_64.clone().unwrap();
    let flavour = keel_kernel::flavour_metapackage(gone_name).unwrap();
    assert_eq!(flavour, "linux-image-cloud-amd64");
    assert!(
        new.name.ends_with("-cloud-amd64") && new.name != gone_name,
        "{new:?}"
    );
    assert!(
        built.stderr.contains(&format!(
            "kernel: {gone_name}={gone_version} (x86_64) has left Debian's archive; using {}={}",
            new.name, new.version
        )),
        "{}",
        built.stderr
    );
    // Only that pin changed: comments and the other architecture are as they were.
    assert_eq!(moved.aarch64, pinned.aarch64);
    let written = std::fs::read_to_string(w.path("kernel/recipe.yml")).unwrap();
    assert_eq!(written.lines().count(), recipe.lines().count());
    assert!(written.starts_with(recipe.lines().next().unwrap()));
    assert!(
        built.stdout.trim().starts_with("docker.io/keel/kernel:"),
        "{}",
        built.stdout
    );
    // The image carries its SBOM: the Debian package it was made from, with its licence.
    let store = w.store();
    let reference: keel_image::Reference = built.stdout.trim().parse().unwrap();
    let image = store.image(&reference, keel_image::Arch::X86_64).unwrap();
    let index: keel_pkg::spdx::Index =
        serde_json::from_slice(&store.read_blob(&image.digest).unwrap()).unwrap();
    let attestation = index
        .manifests
        .iter()
        .find(|m| {
            m.annotation(keel_pkg::spdx::REFERENCE_DIGEST_ANNOTATION)
                == Some(image.manifest_digest.as_str())
        })
        .expect("an attestation of the x86_64 manifest");
    let manifest: keel_pkg::spdx::Manifest = serde_json::from_slice(
        &store
            .read_blob(&attestation.digest.parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let statement: keel_pkg::spdx::Statement = serde_json::from_slice(
        &store
            .read_blob(&manifest.layers[0].digest.parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let deb = statement
        .predicate
        .packages
        .iter()
        .find(|p| p.name == new.name)
        .unwrap_or_else(|| panic!("{:?}", statement.predicate.packages));
    assert_eq!(deb.version_info.as_deref(), Some(new.version.as_str()));
    assert_eq!(deb.checksums[0].checksum_value, new.sha256);
    assert!(
        deb.license_declared
            .as_deref()
            .is_some_and(|l| l.starts_with("GPL-2.0-only")),
        "{:?}",
        deb.license_declared
    );
}
