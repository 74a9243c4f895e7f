//! The SBOM `keel build` writes beside its outputs (`<name>-sbom.spdx.json`): every image of
//! the build with its digest, the packages of the SBOMs images carry, byte-reproducible, and
//! valid SPDX 2.3 by a third-party validator (spdx-tools' `pyspdxtools`, installed by
//! scripts/setup.sh). `--no-sbom` writes none.

mod common;

use common::*;
use keel_image::{Arch, Reference, Store};
use keel_pkg::spdx::{self, Document, Package, Relationship};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `pyspdxtools`: `$KEEL_PYSPDXTOOLS`, else the one scripts/setup.sh installs under the target
/// directory, else the one on `PATH`. Never skipped: a missing validator fails the test.
fn validator() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("KEEL_PYSPDXTOOLS")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/spdx/bin/pyspdxtools"),
            PathBuf::from("pyspdxtools"),
        ])
        .collect();
    for c in &candidates {
        let works = Command::new(c)
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return c.clone();
        }
    }
    panic!(
        "the SPDX validator pyspdxtools (PyPI spdx-tools) is not installed: run scripts/setup.sh \
         (it installs it into target/tools/spdx), or set KEEL_PYSPDXTOOLS; tried {candidates:?}"
    );
}

/// Validates `path` with `pyspdxtools -i`, panicking with its output if it finds problems.
fn validate(path: &Path) {
    let out = Command::new(validator())
        .arg("-i")
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("is invalid"),
        "pyspdxtools rejects {}:\n{text}\n--- document\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

fn build(w: &Work, dir: &str, extra: &[&str], epoch: Option<&str>) -> Run {
    let mut args = vec![
        "build",
        "--arch",
        "x86_64",
        "-f",
        "kernel+initrd",
        "--dir",
        dir,
    ];
    args.extend(extra);
    args.push("sys.yml");
    let mut cmd = w.keel(&args);
    if let Some(e) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", e);
    }
    run(&mut cmd)
}

fn read_doc(path: &Path) -> Document {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("no SBOM {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap()
}

fn package<'a>(doc: &'a Document, name: &str) -> &'a Package {
    doc.packages
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no package {name} in {:?}", doc.packages))
}

#[test]
fn build_writes_a_valid_reproducible_sbom() {
    let (w, digests) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    build(&w, "out", &[], None).ok();
    let path = w.path("out/sys-sbom.spdx.json");
    validate(&path);
    let doc = read_doc(&path);
    assert_eq!(doc.spdx_version, "SPDX-2.3");
    assert_eq!(doc.name, "sys");
    // LinuxKit's fixed build time when SOURCE_DATE_EPOCH is unset.
    assert_eq!(doc.creation_info.created, "2017-04-18T16:30:00Z");
    let system = package(&doc, "sys");
    assert!(doc.relationships.contains(&Relationship::new(
        spdx::DOCUMENT_ID,
        "DESCRIBES",
        &system.spdx_id
    )));
    for (reference, digest) in [
        (KERNEL, &digests.kernel),
        (INIT, &digests.init),
        (APP, &digests.app),
    ] {
        let image = package(&doc, reference);
        assert_eq!(image.version_info.as_deref(), Some(digest.as_str()));
        assert!(doc.relationships.contains(&Relationship::new(
            &system.spdx_id,
            "CONTAINS",
            &image.spdx_id
        )));
    }
    // The app serves two containers: one image, one package.
    assert_eq!(doc.packages.len(), 4);

    // Byte-reproducible: another build, another directory, the same bytes.
    build(&w, "again", &[], None).ok();
    let first = std::fs::read(&path).unwrap();
    assert_eq!(
        std::fs::read(w.path("again/sys-sbom.spdx.json")).unwrap(),
        first
    );
    // SOURCE_DATE_EPOCH dates it (and so gives another namespace).
    build(&w, "dated", &[], Some("1700000000")).ok();
    let dated = read_doc(&w.path("dated/sys-sbom.spdx.json"));
    assert_eq!(dated.creation_info.created, "2023-11-14T22:13:20Z");
    assert_ne!(dated.document_namespace, doc.document_namespace);
}

/// An image whose index carries an SPDX attestation (as `keel pkg build` and BuildKit attach
/// them) brings its packages into the build's SBOM, under its own package.
#[test]
fn sboms_images_carry_are_merged() {
    let (w, _) = Work::with_fixtures();
    let store: Store = w.store();
    let reference = "127.0.0.1:9/keel-test/attested:1";
    let mut manifests = Vec::new();
    for arch in Arch::ALL {
        let layer = tar_of(&[
            Entry::Dir("bin"),
            Entry::File("bin/app", &app_binary("attested", arch)),
        ]);
        let desc = store
            .write_image(arch, image_config(&["/bin/app"], &[]), &[layer])
            .unwrap();
        let mut doc = Document::new("attested", 0, vec!["Tool: test".into()]);
        let mut p = Package::new("libfoo1", "SPDXRef-deb-libfoo1".into());
        p.version_info = Some("1:2.0-1+b1".into());
        p.download_location =
            "https://deb.debian.org/debian/pool/main/libf/libfoo/libfoo1_2.0-1+b1_amd64.deb".into();
        p.license_declared = Some("GPL-2.0-or-later AND LicenseRef-public-domain".into());
        p.checksums.push(spdx::Checksum {
            algorithm: "SHA256".into(),
            checksum_value: "ab".repeat(32),
        });
        p.external_refs.push(spdx::ExternalRef::purl(
            "pkg:deb/debian/libfoo1@1%3A2.0-1%2Bb1?arch=amd64".into(),
        ));
        doc.packages.push(p);
        doc.relationships.push(Relationship::new(
            spdx::DOCUMENT_ID,
            "DESCRIBES",
            "SPDXRef-deb-libfoo1",
        ));
        doc.has_extracted_licensing_infos
            .push(spdx::ExtractedLicense {
                license_id: "LicenseRef-public-domain".into(),
                extracted_text: "Nobody owns this.".into(),
                name: Some("public-domain".into()),
            });
        manifests.push((arch, desc, doc));
    }
    let index = spdx::write_index_with_sboms(&store, reference, manifests).unwrap();
    store
        .tag(&reference.parse::<Reference>().unwrap(), index)
        .unwrap();
    w.write("sys.yml", &system_yaml(reference));
    build(&w, "out", &[], None).ok();
    let path = w.path("out/sys-sbom.spdx.json");
    validate(&path);
    let doc = read_doc(&path);
    let image = package(&doc, reference);
    let lib = package(&doc, "libfoo1");
    assert_eq!(lib.version_info.as_deref(), Some("1:2.0-1+b1"));
    assert!(doc.relationships.contains(&Relationship::new(
        &image.spdx_id,
        "CONTAINS",
        &lib.spdx_id
    )));
    assert_eq!(doc.has_extracted_licensing_infos.len(), 1);
    assert_eq!(
        doc.has_extracted_licensing_infos[0].extracted_text,
        "Nobody owns this."
    );

    // Pulled from a registry into an empty store, the attestation comes along.
    let registry = keel_testutil::Registry::start();
    let remote = format!("{}/keel-test/attested:1", registry.host());
    keel_testutil::skopeo_push(store.path(), reference, &remote);
    let (w2, _) = Work::with_fixtures();
    w2.write("sys.yml", &system_yaml(&remote));
    build(&w2, "out", &[], None).ok();
    let path = w2.path("out/sys-sbom.spdx.json");
    validate(&path);
    let pulled = read_doc(&path);
    let image = package(&pulled, &remote);
    let lib = package(&pulled, "libfoo1");
    assert!(pulled.relationships.contains(&Relationship::new(
        &image.spdx_id,
        "CONTAINS",
        &lib.spdx_id
    )));
    assert!(
        pulled
            .creation_info
            .comment
            .as_deref()
            .is_none_or(|c| !c.contains(&remote)),
        "the attestation was not kept: {:?}",
        pulled.creation_info.comment
    );
}

#[test]
fn no_sbom_writes_none() {
    let (w, _) = Work::with_fixtures();
    w.write("sys.yml", &system_yaml(APP));
    build(&w, "out", &["--no-sbom"], None).ok();
    assert!(w.path("out/sys-kernel").exists());
    assert!(!w.path("out/sys-sbom.spdx.json").exists());
    assert_eq!(
        listing(&w.path("out")),
        ["sys-cmdline", "sys-initrd.img", "sys-kernel"]
    );
}
