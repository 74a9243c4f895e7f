//! The A/B disk layout: `keel build -f raw-efi --verity --ab --sign-with` writes an ESP holding
//! systemd-boot at the removable-media path (signed with the db key), its `loader/loader.conf`
//! and the signed UKI at `EFI/Linux/keel-1.efi`, then root slots A (this build) and B (empty)
//! and a data partition. Under firmware enforcing Secure Boot the firmware starts systemd-boot
//! (the only binary at the path it boots), systemd-boot starts the UKI through the firmware's
//! LoadImage, which checks it against db, and the loader finds slot A by the root hash: the
//! system runs with its root on the read-only `keel-root` device-mapper device. `keel update`
//! to version 2 writes slot B and its UKI: the next boot runs version 2 from slot B. With that
//! UKI's signature removed, systemd-boot's LoadImage is refused and no kernel starts.

use keel::build::Format;
use keel::keys::KeySet;
use keel::output::{AbSettings, InitrdCompression, RootLayout};
use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build_secured, workspace};
use std::path::PathBuf;
use std::time::Duration;

/// Under TCG, firmware plus systemd-boot plus kernel plus the first container.
const DEADLINE: Duration = Duration::from_secs(300);

/// The partition names of the disk's GPT, in order (the primary table at LBA 2).
fn partition_names(disk: &[u8]) -> Vec<String> {
    disk[1024..1024 + 128 * 128]
        .chunks(128)
        .filter(|e| e[..16].iter().any(|&b| b != 0))
        .map(|e| {
            let units: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        })
        .collect()
}

fn ab_boot(arch: Arch) {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = KeySet::generate(&keys_dir.path().join("keys"), "keel test").unwrap();
    let minimal = workspace().join("images/minimal.yml");
    let case = keel_vmtests::case("verity.yml");
    let built = build_secured(
        &[&minimal, &case],
        arch,
        &[Format::RawEfi],
        InitrdCompression::Auto,
        Some(&keys),
        RootLayout::Ab(AbSettings::default()),
    )
    .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)));
    let disk = PathBuf::from(format!("{}-efi.img", built.prefix.display()));
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(
        partition_names(&bytes),
        [
            "EFI system partition",
            "keel-root-a",
            "keel-root-verity-a",
            "keel-root-b",
            "keel-root-verity-b",
            "keel-data"
        ],
        "{arch}"
    );
    drop(bytes);
    // What firmware boots is systemd-boot (the stub has no loader.conf keys); the UKI is only
    // where systemd-boot finds it, so a boot that reaches the root went through systemd-boot.
    let esp = format!("{}@@{}", disk.display(), 1 << 20);
    let mcopy = |path: &str| {
        let out = std::process::Command::new("mcopy")
            .args(["-n", "-i", &esp, path, "-"])
            .output()
            .expect("mcopy runs (mtools)");
        assert!(out.status.success(), "{arch} {path}: {out:?}");
        out.stdout
    };
    let boot_path = match arch {
        Arch::X86_64 => "::/EFI/BOOT/BOOTX64.EFI",
        Arch::Aarch64 => "::/EFI/BOOT/BOOTAA64.EFI",
    };
    assert!(
        mcopy(boot_path).windows(13).any(|w| w == b"auto-firmware"),
        "{arch}: {boot_path} is not systemd-boot"
    );
    let uki = mcopy("::/EFI/Linux/keel-1.efi");
    assert!(uki.windows(15).any(|w| w == b"IMAGE_VERSION=1"), "{arch}");

    let name = format!("A/B {arch}");
    let mut vm = Vm::boot(
        &name,
        &disk,
        &Boot {
            secure_boot: Some(keys.clone()),
            ..Boot::new(arch)
        },
    );
    let console = vm.wait_for("status| status", DEADLINE);
    assert!(
        console.contains("UEFI Secure Boot is enabled"),
        "{name}: the EFI stub did not see Secure Boot on\n{console}"
    );
    assert!(
        console.contains("ROOTDM=keel-root RO=1"),
        "{name}: the root is not the read-only keel-root device\n{console}"
    );
    let line = console
        .lines()
        .find(|l| l.starts_with("status| status"))
        .unwrap_or_default();
    assert!(line.contains("running"), "{name}: {line}");
    assert!(!console.contains("RUNNING=version-2"), "{name}\n{console}");
    drop(vm);

    // keel update to version 2 (another onboot container): slot b, booted next by
    // systemd-boot, the loader finding slot b by its new root hash.
    let second = build_secured(
        &[&minimal, &case, &keel_vmtests::case("version2.yml")],
        arch,
        &[Format::RawEfi],
        InitrdCompression::Auto,
        Some(&keys),
        RootLayout::Ab(AbSettings {
            version: "2".parse().unwrap(),
            ..AbSettings::default()
        }),
    )
    .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)));
    let new = PathBuf::from(format!("{}-efi.img", second.prefix.display()));
    let updated = keel::update::update(&disk, &new, Some(keys.dir()))
        .unwrap_or_else(|e| panic!("{arch}: {}", keel_vmtests::chain(&e)));
    assert_eq!(updated.slot, 'b', "{arch}");
    let name = format!("A/B updated to version 2 {arch}");
    let mut vm = Vm::boot(
        &name,
        &disk,
        &Boot {
            secure_boot: Some(keys.clone()),
            ..Boot::new(arch)
        },
    );
    // On trial (keel update gives it one boot), then made permanent by the boot assessment.
    let console = vm.wait_for("boot assessment: version 2 is good", DEADLINE);
    assert!(
        console.contains("RUNNING=version-2") && console.contains("ROOTDM=keel-root RO=1"),
        "{name}: version 2 does not run from its verified root\n{console}"
    );
    drop(vm);
    assert_eq!(
        keel_testutil::esp_linux_entries(&disk),
        ["keel-1.efi", "keel-2.efi"],
        "{name}"
    );

    // The chain holds past systemd-boot: with the UKI's signature removed, the firmware's
    // LoadImage refuses it and nothing of it runs.
    let uki = mcopy("::/EFI/Linux/keel-2.efi");
    let unsigned = built.dir.path().join("unsigned.efi");
    std::fs::write(&unsigned, &uki).unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{arch}: {cmd:?}: {out:?}");
    };
    run(std::process::Command::new("sbattach")
        .arg("--remove")
        .arg(&unsigned));
    run(std::process::Command::new("mcopy")
        .args(["-o", "-i", &esp])
        .arg(&unsigned)
        .arg("::/EFI/Linux/keel-2.efi"));
    let name = format!("A/B unsigned UKI {arch}");
    let mut vm = Vm::boot(
        &name,
        &disk,
        &Boot {
            secure_boot: Some(keys.clone()),
            ..Boot::new(arch)
        },
    );
    // systemd-boot's own message (it exits, and the firmware moves on to its next option).
    let refused = r"Error loading \EFI\Linux\keel-2.efi: ";
    let console = vm.wait_for_any(&[refused, "Linux version"], DEADLINE);
    let refusal = console
        .lines()
        .find(|l| l.contains(refused))
        .unwrap_or_default();
    assert!(
        !refusal.is_empty() && !console.contains("Linux version"),
        "{name}: an unsigned UKI was not refused\n{console}"
    );
    eprintln!("{name}: {}", refusal.trim());
}

#[test]
fn ab_boots_through_systemd_boot_x86_64() {
    ab_boot(Arch::X86_64);
}

#[test]
fn ab_boots_through_systemd_boot_aarch64() {
    ab_boot(Arch::Aarch64);
}

/// The byte offset of `disk`'s `keel-data` partition (the sixth GPT entry), plus 4 KiB: where
/// the test leaves a marker no update may touch.
fn data_marker_offset(disk: &std::path::Path) -> u64 {
    use std::io::Read;
    let mut head = vec![0u8; 1024 + 128 * 128];
    std::fs::File::open(disk)
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap();
    assert_eq!(partition_names(&head)[5], "keel-data");
    let entry = &head[1024 + 5 * 128..1024 + 6 * 128];
    u64::from_le_bytes(entry[32..40].try_into().unwrap()) * 512 + 4096
}

/// Builds `cases` (after images/minimal.yml, verity.yml and ab-update.yml) as A/B version
/// `version`, signed with `keys`.
fn build_version(
    arch: Arch,
    keys: &KeySet,
    cases: &[&str],
    version: &str,
) -> (keel_vmtests::Built, PathBuf) {
    let minimal = workspace().join("images/minimal.yml");
    let mut files = vec![
        minimal,
        keel_vmtests::case("verity.yml"),
        keel_vmtests::case("ab-update.yml"),
    ];
    files.extend(cases.iter().map(|c| keel_vmtests::case(c)));
    let refs: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    let built = build_secured(
        &refs,
        arch,
        &[Format::RawEfi],
        InitrdCompression::Auto,
        Some(keys),
        RootLayout::Ab(AbSettings {
            version: version.parse().unwrap(),
            // Small, since the updater downloads a whole disk.
            data_size: Some(1 << 20),
            ..AbSettings::default()
        }),
    )
    .unwrap_or_else(|e| panic!("{arch} version {version}: {}", keel_vmtests::chain(&e)));
    let disk = PathBuf::from(format!("{}-efi.img", built.prefix.display()));
    (built, disk)
}

/// Python's `http.server` serving one file as `/update.img` on the host's loopback `port` (the
/// guest's 10.0.2.2), until dropped.
struct HttpServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    fn serve(file: &std::path::Path, port: u16) -> HttpServer {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(file, dir.path().join("update.img")).unwrap();
        let child = std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir.path())
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs (scripts/setup.sh)");
        let mut server = HttpServer { child, _dir: dir };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || server.child.try_wait().unwrap().is_some()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no HTTP server on port {port} (is it taken?)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An A/B system updates itself: `keelctl update` in the guest writes version 2 into slot B
/// from a second disk; after the reboot systemd-boot tries it once and PID 1's boot assessment
/// sees every service ready and makes it permanent. Version 3, whose service never stays up,
/// is downloaded from the host over HTTP, tried once, rejected by the assessment, the machine
/// reboots by itself and systemd-boot boots version 2 again, where `keelctl version` says why 3
/// failed (and `keelctl update` refuses to install it again). QEMU killed while an update
/// writes its slot: the next boot runs the version it ran before.
///
/// The updater reboots the machine after an update with the update's disk still attached, so
/// the new version's partitions are on two disks under the GUIDs the loader looks for: the
/// loader takes the one on the disk systemd-boot was started from (`LoaderDevicePartUUID`).
fn ab_update_in_guest(arch: Arch) {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = KeySet::generate(&keys_dir.path().join("keys"), "keel test").unwrap();
    let (_v1, disk) = build_version(arch, &keys, &[], "1");
    let (_v2, v2) = build_version(arch, &keys, &["version2.yml"], "2");
    let (_v3, v3) = build_version(arch, &keys, &["never-ready.yml"], "3");
    // Version 4: version 1's root under a newer version, for the update that is cut short.
    let (_v4, v4) = build_version(arch, &keys, &[], "4");
    let boot = |second: Option<&PathBuf>| Boot {
        secure_boot: Some(keys.clone()),
        reboot: true,
        // The updater's download (and DHCP in every boot, so that none waits for a NIC).
        networking: true,
        disks: second
            .map(|p| keel::run::Disk {
                path: Some(p.clone()),
                size: None,
                format: Some("raw".into()),
            })
            .into_iter()
            .collect(),
        ..Boot::new(arch)
    };
    // Boots `second` attached: the updater installs it and reboots into it, that disk still
    // attached. Returns the VM, once the new version's boot assessment has its verdict.
    let install = |name: &str, second: &PathBuf, version: &str, verdict: &str| {
        let mut vm = Vm::boot(name, &disk, &boot(Some(second)));
        let console = vm.wait_for(
            &format!("boot assessment: version {version} {verdict}"),
            DEADLINE * 2,
        );
        let slot = if version == "3" { 'a' } else { 'b' };
        assert!(
            console.contains(&format!(
                "updater| update: slot {slot} holds version {version}"
            )) && console.contains(&format!(
                "boot assessment: version {version} (slot {slot}) is on trial"
            )),
            "{name}: version {version} was not installed and tried\n{console}"
        );
        // Both disks hold the new root's partitions; systemd-boot's variable names the first.
        assert!(
            console.contains("verity: the root's partitions are on vda and vdb: using vda"),
            "{name}: the loader did not choose the disk it was booted from\n{console}"
        );
        (vm, console)
    };

    // A marker in the data partition, which no update may touch.
    const MARKER: &[u8] = b"keel data marker";
    let marker_at = data_marker_offset(&disk);
    let marker = |write: bool| {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        f.seek(SeekFrom::Start(marker_at)).unwrap();
        if write {
            f.write_all(MARKER).unwrap();
        }
        f.seek(SeekFrom::Start(marker_at)).unwrap();
        let mut got = vec![0u8; MARKER.len()];
        f.read_exact(&mut got).unwrap();
        got
    };
    assert_eq!(marker(true), MARKER);

    // 1. Version 1 installs version 2 and reboots; the next boot tries it and makes it
    // permanent.
    let name = format!("A/B in-guest update to 2 {arch}");
    let (vm, console) = install(&name, &v2, "2", "is good");
    assert!(
        console.contains("updater| running: version 1 from slot a")
            && console.contains("signed by")
            && console.contains("boot assessment: version 2 (slot b) is on trial (keel-2+0-1.efi)")
            && console.contains("RUNNING=version-2"),
        "{name}: version 2 did not boot on trial\n{console}"
    );
    drop(vm);
    assert_eq!(
        keel_testutil::esp_linux_entries(&disk),
        ["keel-1.efi", "keel-2.efi"],
        "{name}"
    );

    // 2. Version 3 never gets its service up: downloaded, tried once, rejected, back on 2 by
    // itself.
    let name = format!("A/B in-guest update to a failing 3 {arch}");
    let port = match arch {
        Arch::X86_64 => 18317,
        Arch::Aarch64 => 18318,
    };
    let server = HttpServer::serve(&v3, port);
    let mut vm = Vm::boot(&name, &disk, &boot(None));
    let failed = vm.wait_for("boot assessment: version 3 failed", DEADLINE * 2);
    assert!(
        failed.contains(&format!(
            "updater| update: fetching http://10.0.2.2:{port}/update.img into /tmp/"
        )) && failed.contains("updater| update: slot a holds version 3")
            && failed.contains("boot assessment: version 3 (slot a) is on trial"),
        "{name}: version 3 was not downloaded, installed and tried\n{failed}"
    );
    let mark = vm.mark();
    let back = vm.wait_after(mark, "updater| next boot: version 2", DEADLINE);
    assert!(
        failed.contains("not every one of the services broken ran and was ready for 5 s within 60 s") // never-ready.yml's health:
            && failed.contains("service broken is"),
        "{name}: version 3's failure does not name its service\n{failed}"
    );
    assert!(
        back.contains("boot assessment: version 2 (slot b) is permanent")
            && back.contains("updater| running: version 2 from slot b"),
        "{name}: not back on version 2\n{back}"
    );
    let why = back
        .lines()
        .find(|l| l.contains("updater| slot a: version 3"))
        .unwrap_or_default();
    assert!(
        why.contains("bad: failed its boot assessment") && why.contains("service broken is"),
        "{name}: keelctl version does not say why 3 failed: {why:?}\n{back}"
    );
    eprintln!("{name}: {}", why.trim());
    // The host still serves version 3: the updater's `keelctl update` refuses it now.
    let refused = vm.wait_after(mark, "version 3 failed its boot assessment", DEADLINE);
    assert!(
        refused.contains("updater| keelctl: "),
        "{name}: the updater's refusal\n{refused}"
    );
    drop(vm);
    drop(server);
    assert_eq!(
        keel_testutil::esp_linux_entries(&disk),
        ["keel-2.efi", "keel-3+0-1.efi"],
        "{name}"
    );
    // The same update code refuses version 3 on the host too.
    let err = keel::update::update(&disk, &v3, Some(keys.dir())).unwrap_err();
    let err = keel_vmtests::chain(&err);
    assert!(
        err.contains("version 3 failed its boot assessment") && err.contains("service broken is"),
        "{name}: {err}"
    );

    // 3. QEMU killed while version 4 is written into slot a: the next boot runs version 2.
    let name = format!("A/B update cut short {arch}");
    let mut vm = Vm::boot(&name, &disk, &boot(Some(&v4)));
    vm.wait_for("updater| update: writing slot a", DEADLINE);
    drop(vm);
    let entries = keel_testutil::esp_linux_entries(&disk);
    assert!(
        entries.contains(&"keel-2.efi".to_owned())
            && !entries.iter().any(|e| e.starts_with("keel-4")),
        "{name}: the kill came after the update was complete: {entries:?}"
    );
    let mut vm = Vm::boot(&name, &disk, &boot(None));
    let console = vm.wait_for("updater| running: version 2 from slot b", DEADLINE);
    assert!(
        console.contains("boot assessment: version 2 (slot b) is permanent"),
        "{name}\n{console}"
    );
    drop(vm);
    assert_eq!(marker(false), MARKER, "the data partition changed");
}

#[test]
fn ab_updates_itself_and_falls_back_x86_64() {
    ab_update_in_guest(Arch::X86_64);
}

#[test]
fn ab_updates_itself_and_falls_back_aarch64() {
    ab_update_in_guest(Arch::Aarch64);
}
