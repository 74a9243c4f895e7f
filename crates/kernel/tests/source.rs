//! Kernels from source (`keel_kernel::source`) with a small recipe (`tests/tiny`: tinyconfig, a
//! console, one signed module, one patch), for both architectures: the real Debian source
//! package, the real compilers (aarch64 cross-compiled), the configuration check, the patch,
//! module signing, the image's parts (with the out-of-tree module build tree), and
//! byte-identical output from two build trees with one key. The full `virt` and `metal` recipes
//! are built and booted by the VM tests.

use keel_kernel::decompress::{Decompressed, decompress};
use keel_kernel::source::{BuildOptions, SourceError, SourceRecipe, build, ensure_signing_key};
use std::path::{Path, PathBuf};

fn recipe() -> SourceRecipe {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiny");
    let text = std::fs::read_to_string(dir.join("recipe.yml")).unwrap();
    SourceRecipe::parse(&text, &dir).unwrap()
}

/// Build options with a signing key made in `dir` (the tiny recipe signs its module).
fn signed(dir: &Path) -> BuildOptions {
    let key = dir.join("signing.pem");
    ensure_signing_key(&key, "keel test key").unwrap();
    BuildOptions {
        signing_key: Some(key),
        ..BuildOptions::default()
    }
}

fn tar_files(tar: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    use std::io::Read as _;
    tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, mode, data)
        })
        .collect()
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
    assert!(recipe.signs_modules());
    let tmp = tempfile::tempdir().unwrap();
    // Not made beforehand, as in a fresh store: the build makes it.
    let work = tmp.path().join("kernel-work");
    let again = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let opts = signed(keys.path());
    for arch in ["x86_64", "aarch64"] {
        let built = build(&recipe, arch, &debs(), &work, &opts).unwrap();
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
        // The one module, signed: the kernel's signature trailer ends it.
        let modules = tar_files(&a.modules_tar);
        let module = modules
            .iter()
            .find(|(name, _, _)| name.ends_with("/crc-ccitt.ko"))
            .unwrap_or_else(|| panic!("{arch}: no crc-ccitt.ko in {:?}", a.modules));
        assert!(
            module.2.ends_with(b"~Module signature appended~\n"),
            "{arch}: module not signed"
        );
        assert!(
            modules
                .iter()
                .any(|(name, _, data)| name.ends_with("/modules.dep")
                    && String::from_utf8_lossy(data).contains("crc-ccitt.ko:")),
            "{arch}: no modules.dep"
        );
        // The out-of-tree module build tree, with its host programs executable and built for
        // the build machine, where modules are built (ELF machine 62: x86-64, 183: AArch64).
        let dev_files = tar_files(&built.dev_tar);
        let modpost = dev_files
            .iter()
            .find(|(name, _, _)| name == "build/scripts/mod/modpost")
            .unwrap_or_else(|| panic!("{arch}: no build/scripts/mod/modpost"));
        assert_eq!(modpost.1 & 0o111, 0o111, "{arch}: modpost not executable");
        let machine = u16::from_le_bytes([modpost.2[18], modpost.2[19]]);
        let host = if cfg!(target_arch = "x86_64") {
            62
        } else {
            183
        };
        assert_eq!(machine, host, "{arch}");
        // Nothing names the build machine's directories (they differ from tree to tree).
        let work_dir = work.to_string_lossy().into_owned();
        let naming: Vec<&str> = dev_files
            .iter()
            .filter(|(_, _, data)| {
                data.windows(work_dir.len())
                    .any(|w| w == work_dir.as_bytes())
            })
            .map(|(name, _, _)| name.as_str())
            .collect();
        assert!(
            naming.is_empty(),
            "{arch}: these name the build tree {work_dir}: {naming:?}"
        );
        for needed in [
            "build/Makefile",
            "build/Module.symvers",
            "build/include/linux/module.h",
        ] {
            assert!(
                dev_files.iter().any(|(name, _, _)| name == needed),
                "{arch}: no {needed}"
            );
        }

        // Another build tree (sharing the unpacked source, which is what costs), the same
        // bytes; once, on x86_64, to keep the fast tier fast.
        if arch == "x86_64" {
            for src in std::fs::read_dir(&work).unwrap().flatten() {
                if src.file_name().to_string_lossy().starts_with("src-") {
                    std::os::unix::fs::symlink(src.path(), again.path().join(src.file_name()))
                        .unwrap();
                }
            }
            let second = build(&recipe, arch, &debs(), again.path(), &opts).unwrap();
            assert!(
                second.artifacts.kernel == a.kernel,
                "{arch}: kernel differs"
            );
            assert!(
                second.artifacts.modules_tar == a.modules_tar,
                "{arch}: modules differ"
            );
            assert!(second.system_map == built.system_map);
            let (one, two) = (tar_files(&built.dev_tar), tar_files(&second.dev_tar));
            let differ: Vec<&str> = one
                .iter()
                .zip(&two)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0.as_str())
                .collect();
            assert!(
                one.len() == two.len() && differ.is_empty(),
                "{arch}: kernel-dev.tar differs ({} and {} files): {differ:?}",
                one.len(),
                two.len()
            );
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
        ..signed(work.path())
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
fn a_recipe_that_signs_modules_needs_a_key() {
    let work = tempfile::tempdir().unwrap();
    let err = build(
        &recipe(),
        "x86_64",
        &debs(),
        work.path(),
        &BuildOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no signing key was given"), "{err}");
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
            "[tiny.config, modules.config]",
            "[../../tiny.config]",
            "must be a file of the recipe directory or of a sibling recipe",
        ),
        (
            "[tiny.config, modules.config]",
            "[/etc/passwd]",
            "must be a file of the recipe directory or of a sibling recipe",
        ),
        (
            "[tiny.config, modules.config]",
            "[../tiny/missing.config]",
            "config fragment ../tiny/missing.config does not exist",
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
    // A sibling recipe's fragment (kernel/metal builds on kernel/virt's).
    let sibling = good.replace("[tiny.config, modules.config]", "[../tiny/tiny.config]");
    let parsed = SourceRecipe::parse(&sibling, &dir).unwrap();
    assert!(parsed.fragments("aarch64")[0].ends_with("tiny/tiny.config"));
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
