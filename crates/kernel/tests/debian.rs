//! Builds the real `kernel/debian-6.1` recipe for both architectures: downloads the pinned
//! Debian packages (cached by digest in the test run's cache, `keel_testutil::deb_cache()`) and
//! checks the kernel binaries and the module selection.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use keel_kernel::{KernelArtifacts, Recipe, build};

fn recipe() -> Recipe {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel/debian-6.1");
    Recipe::load(&dir).unwrap()
}

fn cache() -> PathBuf {
    keel_testutil::deb_cache()
}

fn tar_paths(tar: &[u8]) -> BTreeSet<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn tar_file(tar: &[u8], wanted: &str) -> String {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == wanted {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            return text;
        }
    }
    panic!("{wanted} not in the tar");
}

fn check_modules(artifacts: &KernelArtifacts) {
    let root = format!("lib/modules/{}", artifacts.release);
    let paths = tar_paths(&artifacts.modules_tar);
    let dep = tar_file(&artifacts.modules_tar, &format!("{root}/modules.dep"));
    // virtio_blk is there, with every dependency modules.dep lists for it, and each of those
    // files is in the tar.
    let line = dep
        .lines()
        .find(|l| l.starts_with("kernel/drivers/block/virtio_blk.ko:"))
        .unwrap_or_else(|| panic!("no virtio_blk line in\n{dep}"));
    let deps: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert!(deps.contains(&"kernel/drivers/virtio/virtio.ko"), "{line}");
    assert!(
        deps.contains(&"kernel/drivers/virtio/virtio_ring.ko"),
        "{line}"
    );
    for path in std::iter::once("kernel/drivers/block/virtio_blk.ko").chain(deps) {
        assert!(paths.contains(&format!("{root}/{path}")), "{path} missing");
    }
    // Every module modules.dep mentions ships, and nothing else does.
    let mentioned: BTreeSet<String> = dep
        .split_whitespace()
        .map(|p| format!("{root}/{}", p.trim_end_matches(':')))
        .collect();
    let shipped: BTreeSet<String> = paths
        .iter()
        .filter(|p| p.ends_with(".ko"))
        .cloned()
        .collect();
    assert_eq!(mentioned, shipped);
    // virtio-rng.ko is asked for as virtio_rng; an unrelated module stays out.
    assert!(paths.contains(&format!(
        "{root}/kernel/drivers/char/hw_random/virtio-rng.ko"
    )));
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("/nfs.ko") || p.ends_with("/btrfs.ko"))
    );
    assert!(shipped.len() < 60, "{} modules shipped", shipped.len());
    let alias = tar_file(&artifacts.modules_tar, &format!("{root}/modules.alias"));
    assert!(
        alias
            .lines()
            .any(|l| l.starts_with("alias virtio:d00000002v") && l.ends_with(" virtio_blk"))
    );
    assert!(
        alias
            .lines()
            .any(|l| l.starts_with("alias pci:v00001AF4") && l.ends_with(" virtio_pci"))
    );
    assert!(tar_file(&artifacts.modules_tar, &format!("{root}/modules.builtin")).contains(".ko"));
    assert!(String::from_utf8_lossy(&artifacts.config).contains("CONFIG_VIRTIO_BLK=m"));
}

#[test]
fn builds_x86_64() {
    let recipe = recipe();
    let artifacts = build(&recipe, "x86_64", &cache()).unwrap();
    assert!(
        artifacts.release.ends_with("-cloud-amd64"),
        "{}",
        artifacts.release
    );
    // A bzImage: "HdrS" at 0x202.
    assert_eq!(&artifacts.kernel[0x202..0x206], b"HdrS");
    // --decompress-kernel: Debian compresses with lz4; inside is an x86-64 ELF vmlinux.
    match keel_kernel::decompress::decompress(&artifacts.kernel).unwrap() {
        keel_kernel::decompress::Decompressed::Unpacked { kernel, packing } => {
            assert_eq!(packing, "bzImage/lz4");
            assert_eq!(&kernel[..4], b"\x7fELF");
            assert_eq!(
                u16::from_le_bytes([kernel[18], kernel[19]]),
                62,
                "EM_X86_64"
            );
        }
        other => panic!("{other:?}"),
    }
    check_modules(&artifacts);
    // Debian's configuration against KSPP's table: hardened in places, not in others.
    let config =
        keel_kernel::kconfig::KernelConfig::parse(&String::from_utf8_lossy(&artifacts.config));
    assert_eq!(config.version(), Some((6, 1)));
    let table = keel_kernel::kspp::parse_table(keel_kernel::kspp::TABLE).unwrap();
    let findings = keel_kernel::kspp::check(
        &table,
        &keel_kernel::kspp::System {
            arch: "x86_64",
            config: Some(&config),
            cmdline: None,
            sysctls: None,
        },
    );
    let verdict = |name: &str| {
        findings
            .iter()
            .find(|f| f.row.name == name)
            .map(|f| f.verdict.clone())
            .unwrap()
    };
    use keel_kernel::kspp::Verdict;
    assert_eq!(verdict("STRICT_KERNEL_RWX"), Verdict::Ok);
    assert_eq!(verdict("RANDOMIZE_BASE"), Verdict::Ok);
    assert_eq!(verdict("KEXEC"), Verdict::Fail);
    assert_eq!(verdict("DEVMEM"), Verdict::Fail);
    let again = build(&recipe, "x86_64", &cache()).unwrap();
    assert_eq!(
        again.modules_tar, artifacts.modules_tar,
        "modules tar is not reproducible"
    );
}

#[test]
fn builds_aarch64() {
    let artifacts = build(&recipe(), "aarch64", &cache()).unwrap();
    assert!(
        artifacts.release.ends_with("-cloud-arm64"),
        "{}",
        artifacts.release
    );
    // An arm64 Image ("ARMd" at 0x38), possibly with an EFI stub ("MZ").
    let kernel = &artifacts.kernel;
    assert!(&kernel[0x38..0x3c] == b"ARMd" || &kernel[..2] == b"MZ");
    // Debian's arm64 Image is not compressed: --decompress-kernel keeps it.
    assert_eq!(
        keel_kernel::decompress::decompress(kernel).unwrap(),
        keel_kernel::decompress::Decompressed::AsIs
    );
    check_modules(&artifacts);
}

#[test]
fn resolves_the_meta_package_to_a_pin() {
    let pin =
        keel_kernel::resolve_meta_package("linux-image-cloud-arm64", "aarch64", &cache()).unwrap();
    assert!(
        pin.name.starts_with("linux-image-") && pin.name.ends_with("-cloud-arm64"),
        "{pin:?}"
    );
    assert_eq!(pin.arch, "arm64");
    assert_eq!(pin.sha256.len(), 64);
    // The recipe's pin is this package, or an older upload of the same series.
    let recipe = recipe().package("aarch64").unwrap();
    assert_eq!(
        recipe.name.split('-').take(3).collect::<Vec<_>>(),
        pin.name.split('-').take(3).collect::<Vec<_>>()
    );
}

/// `kernel/debian-6.1-docker` is `debian-6.1` with more modules: the same pinned packages (so a
/// refresh of one pin is a refresh of both), every module of the smaller list, and the
/// netfilter, VXLAN and IPVS modules the Docker engine and swarm mode use, with their
/// dependencies.
#[test]
fn docker_recipe_is_debian_61_with_the_engines_modules() {
    let base = recipe();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel/debian-6.1-docker");
    let docker = Recipe::load(&dir).unwrap();
    assert_eq!(docker.x86_64, base.x86_64, "x86_64 pins differ");
    assert_eq!(docker.aarch64, base.aarch64, "aarch64 pins differ");
    for module in &base.modules {
        assert!(
            docker.modules.contains(module),
            "{module} of debian-6.1 is not in debian-6.1-docker"
        );
    }
    let artifacts = build(&docker, "x86_64", &cache()).unwrap();
    let root = format!("lib/modules/{}", artifacts.release);
    let dep = tar_file(&artifacts.modules_tar, &format!("{root}/modules.dep"));
    for module in [
        "kernel/net/bridge/br_netfilter.ko",
        "kernel/net/ipv4/netfilter/iptable_nat.ko",
        "kernel/net/netfilter/xt_MASQUERADE.ko",
        "kernel/net/netfilter/xt_REDIRECT.ko",
        "kernel/net/netfilter/ipvs/ip_vs.ko",
        "kernel/net/netfilter/xt_ipvs.ko",
        "kernel/drivers/net/vxlan/vxlan.ko",
    ] {
        let line = dep
            .lines()
            .find(|l| l.starts_with(&format!("{module}:")))
            .unwrap_or_else(|| panic!("{module} is not shipped"));
        for needed in line.split_whitespace().skip(1) {
            assert!(
                dep.lines().any(|l| l.starts_with(&format!("{needed}:"))),
                "{module} needs {needed}, which is not shipped"
            );
        }
    }
    // The kernel asks for IPVS by its generic netlink family's alias.
    let alias = tar_file(&artifacts.modules_tar, &format!("{root}/modules.alias"));
    assert!(
        alias
            .lines()
            .any(|l| l.contains("IPVS") && l.ends_with(" ip_vs")),
        "{alias}"
    );
}
