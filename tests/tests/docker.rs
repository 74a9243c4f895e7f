//! `images/docker.yml` (issue 17): the Docker engine of `pkg/docker` booted under QEMU and driven
//! from the host by Debian's own `docker` client (taken from the `docker.io` package that
//! `pkg/docker/build.lock.json` pins) over TCP with mutual TLS, the certificates made by
//! `openssl` and handed to the guest as metadata (`keel run qemu --data-file`). An image is
//! loaded from a tarball (`skopeo` writes keel's busybox image as a `docker save` archive), run,
//! and a volume written; after a power-off and a second boot on the same disk both are still
//! there. Clients without a certificate of the guest's CA are refused. Once per guest
//! architecture (x86_64 and aarch64, both under TCG); the client is always the host's.

use keel_vmtests::docker::{
    Docker, busybox_tag, debian_docker_client, free_port, make_certificates, ok, run, text,
    tls_metadata,
};
use keel_vmtests::{Arch, build, chain, keel_bin, lock_store, workspace};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a TCG guest may take to boot and start the engine. Enough for aarch64 too: its
/// engine answers at most about 1.5 times later than x86_64's (30-100 s against 25-95 s here,
/// the two booting at once on 2 cores).
const BOOT: Duration = Duration::from_secs(600);

/// The metadata that turns on the engine's TCP API, in a file for `--data-file`.
fn metadata(certs: &Path) -> PathBuf {
    let data = serde_json::json!({"docker": tls_metadata(certs, None)});
    let path = certs.join("metadata.json");
    std::fs::write(&path, data.to_string()).unwrap();
    path
}

/// A guest booted with `keel run qemu -d`; powered off (or killed) when dropped.
struct Guest {
    state: PathBuf,
}

impl Guest {
    fn boot(arch: Arch, prefix: &Path, state: &Path, disk: &Path, port: u16, data: &Path) -> Guest {
        let out = run(Command::new(keel_bin())
            .args(["run", "qemu", "-d", "--accel", "tcg", "--mem", "1536"])
            .args(["--arch", arch.uname()])
            .arg("--state")
            .arg(state)
            .arg("--disk")
            .arg(format!("file={},size=2G", disk.display()))
            .arg("--publish")
            .arg(format!("{port}:2376"))
            .arg("--data-file")
            .arg(data)
            .arg(prefix));
        assert!(out.status.success(), "keel run qemu: {}", text(&out));
        Guest {
            state: state.to_path_buf(),
        }
    }

    fn console(&self) -> PathBuf {
        self.state.join("console.log")
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state.join("qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// `keel ctl STATE poweroff`, then waits for QEMU to end.
    fn power_off(&self) {
        let out = run(Command::new(keel_bin())
            .arg("ctl")
            .arg(&self.state)
            .arg("poweroff"));
        assert!(out.status.success(), "keel ctl poweroff: {}", text(&out));
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(pid) = self
            .pid()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                Instant::now() < deadline,
                "qemu {pid} still runs 120s after poweroff:\n{}",
                std::fs::read_to_string(self.console()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn docker_host_runs_a_loaded_image_and_keeps_it_across_a_reboot() {
    docker_host(Arch::X86_64);
}

#[test]
fn docker_host_runs_a_loaded_image_and_keeps_it_across_a_reboot_on_aarch64() {
    docker_host(Arch::Aarch64);
}

fn docker_host(arch: Arch) {
    let built = build(&[&workspace().join("images/docker.yml")], arch)
        .unwrap_or_else(|e| panic!("images/docker.yml: build for {arch} failed: {}", chain(&e)));
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certificates(&certs);
    let data = metadata(&certs);
    let docker = Docker {
        bin: debian_docker_client(work.path()),
        certs: certs.clone(),
        port: free_port(),
    };
    let client = ok(Command::new(&docker.bin).arg("--version"));
    assert!(client.starts_with("Docker version 20.10."), "{client}");

    // keel's busybox image for the guest's architecture as a `docker save` archive. Built here
    // (`keel pkg build` prints the tag, and does nothing when the store has it) since no image
    // of this test uses it.
    let busybox = {
        let (_lock, store) = lock_store().unwrap_or_else(|e| panic!("{}", chain(&e)));
        let tag = busybox_tag(&store);
        let archive = work.path().join("busybox.tar");
        ok(Command::new("skopeo")
            .args([
                "copy",
                "--override-arch",
                arch.oci_name(),
                "--override-os",
                "linux",
            ])
            .arg(format!("oci:{}:{tag}", store.path().display()))
            .arg(format!(
                "docker-archive:{}:keel-test/busybox:1",
                archive.display()
            )));
        archive
    };

    let disk = work.path().join("docker.qcow2");
    let guest = Guest::boot(
        arch,
        &built.prefix,
        &work.path().join("boot1"),
        &disk,
        docker.port,
        &data,
    );
    let info = docker.wait_ready(&guest.console(), BOOT);
    assert_eq!(info["ServerVersion"], "20.10.24+dfsg1", "{info}");
    assert_eq!(info["Driver"], "overlay2", "{info}");
    assert_eq!(info["CgroupVersion"], "2", "{info}");
    assert_eq!(info["DockerRootDir"], "/var/lib/docker", "{info}");

    // Only clients with a certificate of the guest's CA.
    for (what, mut cmd) in [
        ("a certificate of another CA", docker.as_client("rogue")),
        ("no certificate", docker.unauthenticated()),
    ] {
        // `docker version` fails when the server does not answer (`docker info` does not).
        let out = run(cmd.args(["version", "--format", "{{.Server.Version}}"]));
        assert!(
            !out.status.success() && text(&out).contains("tls"),
            "a client with {what} was not refused by TLS:\n{}",
            text(&out)
        );
    }

    let loaded = ok(docker.cmd().arg("load").arg("-i").arg(&busybox));
    assert!(loaded.contains("keel-test/busybox:1"), "{loaded}");
    ok(docker
        .cmd()
        .args(["run", "--rm", "--entrypoint", "true", "keel-test/busybox:1"]));
    let out = run(docker.cmd().args([
        "run",
        "--rm",
        "--entrypoint",
        "false",
        "keel-test/busybox:1",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let hello = ok(docker.cmd().args([
        "run",
        "--rm",
        "-v",
        "kept:/data",
        "keel-test/busybox:1",
        "-c",
        "echo kept-across-reboots > /data/f && cat /data/f && ip -4 -o addr show eth0",
    ]));
    assert!(hello.contains("kept-across-reboots"), "{hello}");
    assert!(
        hello.contains("inet 172.17."),
        "on the default bridge: {hello}"
    );

    // From the host's control channel: the engine's own client in its container (an exec
    // joins the cgroup the engine moved its processes into), and a restart of the service (its
    // cgroup, with the engine's below it, removed and made again).
    let keel_ctl = |args: &[&str]| {
        ok(Command::new(keel_bin())
            .arg("ctl")
            .arg(&guest.state)
            .args(args))
    };
    let images = keel_ctl(&[
        "exec",
        "docker",
        "docker",
        "image",
        "ls",
        "--format",
        "{{.Repository}}",
    ]);
    assert!(images.lines().any(|l| l == "keel-test/busybox"), "{images}");
    keel_ctl(&["restart", "docker"]);
    docker.wait_ready(&guest.console(), BOOT);
    let console = std::fs::read_to_string(guest.console()).unwrap_or_default();
    assert!(
        !console.contains("could not delete"),
        "a cgroup was left behind:\n{console}"
    );

    // The same disk, a second boot: the image and the volume are still there.
    guest.power_off();
    drop(guest);
    let guest = Guest::boot(
        arch,
        &built.prefix,
        &work.path().join("boot2"),
        &disk,
        docker.port,
        &data,
    );
    docker.wait_ready(&guest.console(), BOOT);
    let images = ok(docker
        .cmd()
        .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert!(
        images.lines().any(|l| l == "keel-test/busybox:1"),
        "{images}"
    );
    let kept = ok(docker.cmd().args([
        "run",
        "--rm",
        "-v",
        "kept:/data",
        "keel-test/busybox:1",
        "-c",
        "cat /data/f",
    ]));
    assert_eq!(kept.trim(), "kept-across-reboots");
    guest.power_off();
}
