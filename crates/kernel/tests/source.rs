//! Kernels from source (`keel_kernel::source`) with a small recipe (`tests/tiny`: tinyconfig and
//! a console, one patch), for both architectures: the real Debian source package, the real
//! compilers (aarch64 cross-compiled), the configuration check, the patch, the image's parts,
//! and byte-identical output from two build trees. The full `virt` recipe is built and booted
//! by the VM tests.

use keel_kernel::decompress::{Decompressed, decompress};
use keel_kernel::source::{BuildOptions, SourceError, SourceRecipe, build};
use std::path::{Path, PathBuf};

fn recipe() -> SourceRecipe {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiny");
    let text = std::fs::read_to_string(dir.join("recipe.yml")).unwrap();
    SourceRecipe::parse(&text, &dir).unwrap()
}

fn debs() -> PathBuf {
    keel_testutil::deb_cache()
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn builds_both_architectures_reproducibly_with_the_patch() {
    let recipe = recipe();
    let work = tempfile::tempdir().unwrap();
    let again = tempfile::tempdir().unwrap();
    for arch in ["x86_64", "aarch64"] {
        let built = build(
            &recipe,
            arch,
            &debs(),
            work.path(),
            &BuildOptions::default(),
        )
        .unwrap();
        let a = &built.artifacts;
        assert!(a.release.ends_with("-keel-tiny"), "{}", a.release);
        let config = String::from_utf8_lossy(&a.config).into_owned();
        assert!(config.contains("CONFIG_LOCALVERSION=\"-keel-tiny\""));
        let vmlinux = match arch {
            "x86_64" => {
                assert_eq!(&a.kernel[0x202..0x206], b"HdrS");
                assert!(config.contains("CONFIG_SERIAL_8250_CONSOLE=y"));
                match decompress(&a.kernel).unwrap() {
                    Decompressed::Unpacked { kernel, .. } => kernel,
                    Decompressed::AsIs => panic!("a bzImage is compressed"),
                }
            }
            _ => {
                assert_eq!(&a.kernel[0x38..0x3c], b"ARM\x64");
                a.kernel.clone()
            }
        };
        // The recipe's patch is in the kernel.
        let banner = b"Linux version (patched by keel) ";
        assert!(
            vmlinux.windows(banner.len()).any(|w| w == banner),
            "{arch}: patch missing"
        );
        assert!(String::from_utf8_lossy(&built.system_map).contains(" T start_kernel"));
        let dev = tar_names(&built.dev_tar);
        assert!(dev.contains(&".config".to_owned()) && dev.contains(&"System.map".to_owned()));
        assert!(
            dev.iter().any(|n| n == "usr/include/linux/bpf.h"),
            "{dev:?}"
        );
        // No modules in this configuration: an empty modules tar.
        assert!(a.modules.is_empty());

        // Another build tree (sharing the unpacked source, which is what costs), the same
        // bytes; once, on x86_64, to keep the fast tier fast.
        if arch == "x86_64" {
            for src in std::fs::read_dir(work.path()).unwrap().flatten() {
                if src.file_name().to_string_lossy().starts_with("src-") {
                    std::os::unix::fs::symlink(src.path(), again.path().join(src.file_name()))
                        .unwrap();
                }
            }
            let second = build(
                &recipe,
                arch,
                &debs(),
                again.path(),
                &BuildOptions::default(),
            )
            .unwrap();
            assert!(
                second.artifacts.kernel == a.kernel,
                "{arch}: kernel differs"
            );
            assert!(second.system_map == built.system_map);
            assert!(second.dev_tar == built.dev_tar);
        }
    }
}

#[test]
fn an_option_kconfig_drops_is_named() {
    let recipe = recipe();
    let work = tempfile::tempdir().unwrap();
    let extra = work.path().join("extra.config");
    // VIRTIO_BLK needs VIRTIO and BLOCK, which tinyconfig leaves out.
    std::fs::write(&extra, "CONFIG_VIRTIO_BLK=y\n").unwrap();
    let opts = BuildOptions {
        fragments: vec![extra],
        ..BuildOptions::default()
    };
    let err = build(&recipe, "x86_64", &debs(), work.path(), &opts).unwrap_err();
    assert!(matches!(err, SourceError::Dropped { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("CONFIG_VIRTIO_BLK=y (from extra.config) is (absent)"),
        "{err}"
    );
}

#[test]
fn bad_recipes_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiny");
    let good = std::fs::read_to_string(dir.join("recipe.yml")).unwrap();
    for (from, to, want) in [
        (
            "base: tinyconfig",
            "base: oldconfig",
            "base \"oldconfig\" is not one of",
        ),
        (
            "[tiny.config]",
            "[../tiny.config]",
            "must be a file of the recipe directory",
        ),
        (
            "banner.patch",
            "missing.patch",
            "patch missing.patch does not exist",
        ),
        (
            "linux-source-6.12,",
            "linux-image-6.12,",
            "is not a linux-source-X package",
        ),
    ] {
        let text = good.replace(from, to);
        let err = SourceRecipe::parse(&text, &dir).unwrap_err().to_string();
        assert!(err.contains(want), "{from} -> {to}: {err}");
    }
    assert!(SourceRecipe::parse(&format!("{good}\ntypo: 1\n"), &dir).is_err());
    // A recipe named by a relative path (`keel kernel build kernel/virt`): its files are made
    // absolute, since the kernel's make runs in the source tree.
    let relative = SourceRecipe::parse(&good, Path::new("tests/tiny")).unwrap();
    assert!(
        relative
            .fragments("x86_64")
            .iter()
            .all(|f| f.is_absolute() && f.is_file())
    );
    assert!(relative.patches.iter().all(|p| p.is_absolute()));
}
