//! Builds the real `pkg/busybox` package for both architectures from Debian's archive (the
//! `.deb` files are cached by digest in the test run's cache, `keel_testutil::deb_cache()`; the
//! lock file is used as committed) and checks the image, its reproducibility, the lock's sha256
//! check, and what happens to a pin that has left the archive.

use std::io::Read;
use std::path::{Path, PathBuf};

use keel_image::oci::ImageIndex;
use keel_image::{Arch, Reference, Store};
use keel_pkg::{LOCK_FILE, Lock, PkgOptions};

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pkg/busybox")
}

fn cache() -> PathBuf {
    keel_testutil::deb_cache()
}

fn opts() -> PkgOptions {
    PkgOptions {
        deb_cache: Some(cache()),
        ..PkgOptions::default()
    }
}

/// The contents of `path` in the image's only layer, and the entry's mode.
fn layer_file(store: &Store, r: &Reference, arch: Arch, path: &str) -> (Vec<u8>, u32) {
    let image = store.image(r, arch).unwrap();
    assert_eq!(image.layers().len(), 1);
    let mut reader = store.open_layer(&image.layers()[0]).unwrap();
    let mut tar = Vec::new();
    reader.read_to_end(&mut tar).unwrap();
    reader.finish().unwrap();
    for entry in tar::Archive::new(tar.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == path {
            let mode = entry.header().mode().unwrap();
            let mut data = Vec::new();
            if entry.header().entry_type() == tar::EntryType::Symlink {
                data = entry.link_name_bytes().unwrap().into_owned();
            } else {
                entry.read_to_end(&mut data).unwrap();
            }
            return (data, mode);
        }
    }
    panic!("{path} not in the {arch} layer");
}

#[test]
fn busybox_builds_for_both_arches_reproducibly() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s1, s2) = (
        Store::open(d1.path()).unwrap(),
        Store::open(d2.path()).unwrap(),
    );
    let r = keel_pkg::build(&s1, &package(), &opts()).unwrap();
    assert_eq!(r.repository(), "keel/busybox");
    assert_eq!(keel_pkg::build(&s2, &package(), &opts()).unwrap(), r);
    let (i1, i2) = (
        s1.resolve(&r).unwrap().unwrap(),
        s2.resolve(&r).unwrap().unwrap(),
    );
    assert_eq!(i1.digest(), i2.digest(), "two builds differ");

    let digest = i1.digest().as_ref().parse().unwrap();
    let index: ImageIndex = serde_json::from_slice(&s1.read_blob(&digest).unwrap()).unwrap();
    // One manifest per architecture, each followed by its SBOM attestation.
    assert_eq!(index.manifests().len(), 4);
    let sbom_index: keel_pkg::spdx::Index =
        serde_json::from_slice(&s1.read_blob(&digest).unwrap()).unwrap();
    let attestations: Vec<_> = sbom_index
        .manifests
        .iter()
        .filter(|m| {
            m.annotation(keel_pkg::spdx::REFERENCE_TYPE_ANNOTATION)
                == Some(keel_pkg::spdx::ATTESTATION_MANIFEST)
        })
        .collect();
    assert_eq!(attestations.len(), 2);
    let manifest: keel_pkg::spdx::Manifest = serde_json::from_slice(
        &s1.read_blob(&attestations[0].digest.parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let statement: keel_pkg::spdx::Statement = serde_json::from_slice(
        &s1.read_blob(&manifest.layers[0].digest.parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let busybox = statement
        .predicate
        .packages
        .iter()
        .find(|p| p.name == "busybox-static")
        .expect("busybox-static in the SBOM");
    assert_eq!(busybox.checksums[0].algorithm, "SHA256");
    assert!(
        busybox
            .download_location
            .starts_with("https://deb.debian.org/debian/pool/main/b/busybox/busybox-static_"),
        "{}",
        busybox.download_location
    );

    let lock = Lock::read(&package())
        .unwrap()
        .expect("the build writes the lock");
    for (arch, machine) in [(Arch::X86_64, 62u16), (Arch::Aarch64, 183)] {
        let pins = &lock.arches[arch.uname()].packages;
        assert!(pins.iter().any(|p| p.name == "busybox-static"), "{pins:?}");
        let (elf, mode) = layer_file(&s1, &r, arch, "bin/busybox");
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), machine, "{arch}");
        assert_eq!(mode, 0o755);
        assert_eq!(layer_file(&s1, &r, arch, "bin/sh").0, b"busybox");
        let image = s1.image(&r, arch).unwrap();
        let config = image.config.config().as_ref().unwrap();
        assert_eq!(
            config.entrypoint().as_deref(),
            Some(&["/bin/sh".to_owned()][..])
        );
    }

    // A lock whose sha256 does not match what the archive serves is refused, naming the package.
    let tampered = tempfile::tempdir().unwrap();
    std::fs::copy(
        package().join("build.yml"),
        tampered.path().join("build.yml"),
    )
    .unwrap();
    let mut lock = lock.clone();
    for arch in lock.arches.values_mut() {
        for pin in &mut arch.packages {
            if pin.name == "busybox-static" {
                pin.sha256 = "0".repeat(64);
            }
        }
    }
    lock.write(tampered.path()).unwrap();
    assert!(tampered.path().join(LOCK_FILE).exists());
    let d3 = tempfile::tempdir().unwrap();
    let s3 = Store::open(d3.path()).unwrap();
    let e = keel_pkg::build(&s3, tampered.path(), &opts()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot fetch Debian package busybox-static="),
        "{e}"
    );
    let cause = std::error::Error::source(&e)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(cause.contains("sha256 mismatch"), "{e}: {cause}");
    assert!(s3.resolve(&r).unwrap().is_none());
}

/// `remove:` leaves out what a package installs; a path that no package installs is an error
/// naming the line, and nothing is written to the store.
#[test]
fn remove_leaves_out_package_paths_and_refuses_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    std::fs::copy(package().join(LOCK_FILE), pkg.join(LOCK_FILE)).unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let yml = |remove: &str| {
        std::fs::write(
            pkg.join("build.yml"),
            format!("image: keel/trimmed\narches: [x86_64]\ndebs: [busybox-static]\nremove: [{remove}]\n"),
        )
        .unwrap();
    };
    yml("/usr/share/doc/busybox-static");
    let r = keel_pkg::build(&store, &pkg, &opts()).unwrap();
    let image = store.image(&r, Arch::X86_64).unwrap();
    let mut reader = store.open_layer(&image.layers()[0]).unwrap();
    let mut tar = Vec::new();
    reader.read_to_end(&mut tar).unwrap();
    reader.finish().unwrap();
    let paths: Vec<String> = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(paths.iter().any(|p| p == "bin/busybox"), "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("usr/share/doc/busybox-static")),
        "{paths:?}"
    );

    yml("/usr/bin/not-in-busybox");
    let err = keel_pkg::build(&store, &pkg, &opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("build.yml:4:")
            && err.contains(
                "remove /usr/bin/not-in-busybox: no Debian package of this image installs it"
            ),
        "{err}"
    );
}
