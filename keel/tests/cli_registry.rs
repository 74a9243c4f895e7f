//! `keel build` against a real registry server (`docker-registry`, distribution/distribution)
//! on loopback, with the fixture images pushed into it by `skopeo`: pulls into an empty store,
//! pins in the lock file, builds by digest, and `--pull` / `--locked` on a moved tag.

mod common;

use common::*;
use keel_image::{Arch, Digest, Store};

use keel_testutil::{Registry, skopeo_push};

/// `127.0.0.1:PORT/team/NAME`.
fn repo(registry: &Registry, name: &str) -> String {
    format!("{}/team/{name}", registry.host())
}

/// Stores `put`'s image in `src` under a local tag and pushes it to `dest`; returns its digest.
fn publish(
    src: &Store,
    dest: &str,
    local: &str,
    put: impl FnOnce(&Store, &str) -> Digest,
) -> Digest {
    let digest = put(src, local);
    let name = local.parse::<keel_image::Reference>().unwrap().to_string();
    skopeo_push(src.path(), &name, dest);
    digest
}

fn registry_yaml(kernel: &str, init: &str, app: &str) -> String {
    format!(
        "kernel:\n  image: {kernel}\n  cmdline: \"{CMDLINE}\"\ninit:\n  - {init}\n\
         onboot:\n  - name: setup\n    image: {app}\n"
    )
}

fn onboot_app(w: &Work, dir: &str, name: &str) -> Vec<u8> {
    let m = read_initrd(&w.path(&format!("{dir}/{name}-initrd.img")));
    m["containers/onboot/000-setup/rootfs/bin/app"].data.clone()
}

#[test]
fn build_pulls_pins_and_repins_from_a_registry() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let (kernel, init, app) = (
        format!("{}:1", repo(&registry, "kernel")),
        format!("{}:1", repo(&registry, "init")),
        format!("{}:v1", repo(&registry, "app")),
    );
    let dk = publish(&src, &kernel, "src/kernel:1", put_kernel);
    let di = publish(&src, &init, "src/init:1", put_init);
    let d1 = publish(&src, &app, "src/app:1", |s, r| put_app(s, r, "r1"));

    // Into an empty store: everything is pulled, pinned to the registry's digests, built.
    let w = Work::empty();
    w.write("reg.yml", &registry_yaml(&kernel, &init, &app));
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out", "reg.yml"])).ok();
    assert_eq!(
        listing(&w.path("out")),
        [
            "reg-cmdline",
            "reg-initrd.img",
            "reg-kernel",
            "reg-sbom.spdx.json"
        ]
    );
    assert_eq!(onboot_app(&w, "out", "reg"), app_binary("r1", Arch::X86_64));
    let pins = read_lock(&w.path("reg.lock.json"));
    assert_eq!(pins.len(), 3, "{pins:?}");
    assert_eq!(pins[&kernel], dk.to_string());
    assert_eq!(pins[&init], di.to_string());
    assert_eq!(pins[&app], d1.to_string());
    let lock_text = std::fs::read(w.path("reg.lock.json")).unwrap();

    // The other architecture: its manifests are fetched by the pinned digests.
    run(&mut w.keel(["build", "--arch", "aarch64", "--dir", "arm", "reg.yml"])).ok();
    assert_eq!(
        read_initrd(&w.path("arm/reg-initrd.img"))["etc/init-arch"].data,
        b"aarch64"
    );
    assert_eq!(std::fs::read(w.path("reg.lock.json")).unwrap(), lock_text);

    // The tag moves in the registry.
    let d2 = publish(&src, &app, "src/app:2", |s, r| put_app(s, r, "r2"));
    assert_ne!(d1, d2);
    // A plain build keeps the pin.
    run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "same", "reg.yml"])).ok();
    assert_eq!(
        onboot_app(&w, "same", "reg"),
        app_binary("r1", Arch::X86_64)
    );
    // --locked --pull sees the move and refuses, naming the reference and both digests.
    let err = run(&mut w.keel([
        "build", "--locked", "--pull", "--arch", "x86_64", "--dir", "locked", "reg.yml",
    ]))
    .failed();
    assert!(
        err.contains(&format!("{app}: pinned {d1}, resolves to {d2}")),
        "{err}"
    );
    assert_eq!(listing(&w.path("locked")), Vec::<String>::new());
    assert_eq!(std::fs::read(w.path("reg.lock.json")).unwrap(), lock_text);
    // --pull takes the new image and updates the pin (only that one).
    run(&mut w.keel([
        "build", "--pull", "--arch", "x86_64", "--dir", "new", "reg.yml",
    ]))
    .ok();
    assert_eq!(onboot_app(&w, "new", "reg"), app_binary("r2", Arch::X86_64));
    let pins = read_lock(&w.path("reg.lock.json"));
    assert_eq!(pins[&app], d2.to_string());
    assert_eq!(pins[&kernel], dk.to_string());
    assert_eq!(pins[&init], di.to_string());

    // By digest, into another empty store.
    let w2 = Work::empty();
    let by_digest = format!("{}@{d1}", repo(&registry, "app"));
    w2.write("dig.yml", &registry_yaml(&kernel, &init, &by_digest));
    run(&mut w2.keel(["build", "--arch", "x86_64", "--dir", "out", "dig.yml"])).ok();
    assert_eq!(
        onboot_app(&w2, "out", "dig"),
        app_binary("r1", Arch::X86_64)
    );
    assert_eq!(
        read_lock(&w2.path("dig.lock.json"))[&by_digest],
        d1.to_string()
    );
    // The same outputs as the first build by tag, which used the same images.
    assert_eq!(
        std::fs::read(w2.path("out/dig-initrd.img")).unwrap(),
        std::fs::read(w.path("out/reg-initrd.img")).unwrap()
    );
}

#[test]
fn missing_tag_in_a_live_registry_is_reported() {
    let registry = Registry::start();
    let w = Work::with_fixtures().0;
    let missing = format!("{}:nope", repo(&registry, "app"));
    w.write("m.yml", &registry_yaml(KERNEL, INIT, &missing));
    let err = run(&mut w.keel(["build", "--arch", "x86_64", "--dir", "out", "m.yml"])).failed();
    assert!(
        err.contains(&format!("m.yml:8:12: image {missing} is not in the store")),
        "{err}"
    );
    assert!(err.contains("404"), "{err}");
    assert_eq!(listing(&w.path("out")), Vec::<String>::new());
    assert!(!w.path("m.lock.json").exists());
}

/// `keel push` sends an image of the store (both platforms) to a registry; skopeo reads back
/// the same index, and `keel build` in another store pulls it from there.
#[test]
fn push_to_a_registry() {
    let registry = Registry::start();
    let (w, _) = Work::with_fixtures();
    let local = "127.0.0.1:9/team/app:v1";
    let digest = put_app(&w.store(), local, "v1");
    let dest = format!("{}:v1", repo(&registry, "pushed"));
    let out = run(&mut w.keel(["push", local, &dest])).ok();
    assert_eq!(out.stdout.trim(), format!("{dest}@{digest}"));

    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo runs (scripts/setup.sh installs it)");
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(Digest::of(&raw.stdout), digest);

    // An image that is not in the store is a clear error.
    let err = run(&mut w.keel(["push", "127.0.0.1:9/team/nope:1", &dest])).failed();
    assert!(err.contains("not in the store"), "{err}");
}

/// The boot tool images are pinned by digest, so a store can get them from any registry that
/// mirrors them: pulled by digest into a store that cannot download Debian packages, they are
/// used as they are.
#[test]
fn tool_images_travel_by_digest() {
    let registry = Registry::start();
    let (w, _) = Work::with_fixtures();
    let built = run(&mut w.keel(["tools", "build", "efi-stub"])).ok();
    let pinned: keel_image::Reference = built.stdout.trim().parse().unwrap();
    let digest = pinned.digest().unwrap().to_string();
    let local = format!("keel/tools/efi-stub:{}", pinned.tag().unwrap());
    let mirror = format!("{}/mirror/efi-stub", registry.host());
    let out = run(&mut w.keel(["push", &local, &format!("{mirror}:1")])).ok();
    assert!(out.stdout.trim().ends_with(&digest), "{out:?}");

    let (w2, _) = Work::with_fixtures();
    // A file where the package cache would go: any download would fail.
    std::fs::write(w2.store_dir().join("debs"), "").unwrap();
    let listed = run(&mut w2.keel(["tools", "list"])).ok().stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.contains("efi-stub") && l.contains("\tmissing\t")),
        "{listed}"
    );
    w2.write("sys.yml", &system_yaml(APP));
    let err = run(&mut w2.keel([
        "build", "-f", "uki", "--arch", "x86_64", "--dir", "out", "sys.yml",
    ]))
    .failed();
    assert!(
        err.contains("making tool image keel/tools/efi-stub"),
        "{err}"
    );
    assert!(err.contains("systemd-boot-efi"), "{err}");
    assert!(!w2.path("out").exists());
    run(&mut w2.keel([
        "cache",
        "pull",
        "--arch",
        "x86_64",
        &format!("{mirror}@{digest}"),
    ]))
    .ok();
    let listed = run(&mut w2.keel(["tools", "list"])).ok().stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.contains("efi-stub") && l.contains("\tpresent\t")),
        "{listed}"
    );
    run(&mut w2.keel([
        "build", "-f", "uki", "--arch", "x86_64", "--dir", "out", "sys.yml",
    ]))
    .ok();
    let uki = std::fs::read(w2.path("out/sys.efi")).unwrap();
    assert_eq!(&uki[..2], b"MZ");
}

/// `--mirror` and `KEEL_MIRROR`: LinuxKit's names (`linuxkit/…` on Docker Hub) pulled through a
/// loopback mirror; the lock file keeps the names of the YAML.
#[test]
fn build_through_a_mirror() {
    let registry = Registry::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let (kernel, init, app) = (
        "linuxkit/kernel:1",
        "linuxkit/init:1",
        "ghcr.io/team/app:v1",
    );
    let on_mirror = |name: &str| format!("{}/{name}", registry.host());
    let dk = publish(&src, &on_mirror(kernel), "src/kernel:1", put_kernel);
    publish(&src, &on_mirror(init), "src/init:1", put_init);
    publish(&src, &on_mirror("team/app:v1"), "src/app:1", |s, r| {
        put_app(s, r, "m1")
    });
    let mirror = format!("http://{}", registry.host());

    let w = Work::empty();
    w.write("m.yml", &registry_yaml(kernel, init, app));
    // Docker Hub from the environment, ghcr.io from the flag.
    run(w
        .keel([
            "build",
            "--mirror",
            &format!("ghcr.io={mirror}"),
            "--arch",
            "x86_64",
            "--dir",
            "out",
            "m.yml",
        ])
        .env("KEEL_MIRROR", format!("docker.io={mirror}")))
    .ok();
    assert_eq!(onboot_app(&w, "out", "m"), app_binary("m1", Arch::X86_64));
    let pins = read_lock(&w.path("m.lock.json"));
    assert_eq!(pins.len(), 3, "{pins:?}");
    assert_eq!(
        pins.get("docker.io/linuxkit/kernel:1"),
        Some(&dk.to_string()),
        "{pins:?}"
    );

    // A bad mirror is refused before anything is pulled, naming the value.
    let w = Work::empty();
    w.write("m.yml", &registry_yaml(kernel, init, app));
    let bad = run(&mut w.keel([
        "build",
        "--mirror",
        "mirror.example",
        "--dir",
        "out",
        "m.yml",
    ]));
    // A usage error, as clap reports one.
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    let err = bad.stderr;
    assert!(
        err.contains("invalid mirror \"mirror.example\"") && err.contains("https://"),
        "{err}"
    );
    let err = run(w
        .keel(["build", "--dir", "out", "m.yml"])
        .env("KEEL_MIRROR", "docker.io=ftp://x"))
    .failed();
    assert!(
        err.contains("KEEL_MIRROR") && err.contains("ftp://x"),
        "{err}"
    );
    assert_eq!(listing(&w.path("out")), Vec::<String>::new());
}
