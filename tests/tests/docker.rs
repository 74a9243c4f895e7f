//! `images/docker.yml` (issue 17): the Docker engine of `pkg/docker` booted under QEMU and driven
//! from the host by Debian's own `docker` client (taken from the `docker.io` package that
//! `pkg/docker/build.lock.json` pins) over TCP with mutual TLS, the certificates made by
//! `openssl` and handed to the guest as metadata (`keel run qemu --data-file`). An image is
//! loaded from a tarball (`skopeo` writes keel's busybox image as a `docker save` archive), run,
//! and a volume written; after a power-off and a second boot on the same disk both are still
//! there. Clients without a certificate of the guest's CA are refused.

use keel_vmtests::{Arch, build, chain, keel_bin, lock_store, store_path, workspace};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a TCG guest may take to boot and start the engine.
const BOOT: Duration = Duration::from_secs(600);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup.sh)"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's `docker` client: `/usr/bin/docker` of the `docker.io` package pinned for x86_64 in
/// `pkg/docker/build.lock.json`, from the store's `.deb` cache (building `images/docker.yml`
/// downloaded it).
fn debian_docker_client(dir: &Path) -> PathBuf {
    let lock = keel_pkg::Lock::read(&workspace().join("pkg/docker"))
        .unwrap_or_else(|e| panic!("pkg/docker: {e}"))
        .expect("pkg/docker/build.lock.json");
    let pin = lock.arches["x86_64"]
        .packages
        .iter()
        .find(|p| p.name == "docker.io")
        .expect("docker.io is pinned in pkg/docker/build.lock.json");
    let deb = store_path()
        .join("debs")
        .join(format!("sha256-{}.deb", pin.sha256));
    let tree = dir.join("docker.io");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    let client = tree.join("usr/bin/docker");
    assert!(client.is_file(), "{} has no usr/bin/docker", deb.display());
    client
}

/// Certificates in `dir`: a CA, the guest's server certificate for 127.0.0.1, a client
/// certificate of the same CA, and a client certificate of another CA.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        ok(Command::new("openssl").args(args).current_dir(dir));
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "rogue-ca"] {
        let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
        let subject = format!("/CN=keel test {ca}");
        args.push(&subject);
        args.extend(key);
        let (k, c) = (format!("{ca}-key.pem"), format!("{ca}.pem"));
        args.extend(["-keyout", &k, "-out", &c]);
        openssl(&args);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("rogue", "rogue-ca", "client.ext"),
    ] {
        let (k, csr, c) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut args = vec!["req", "-subj", "/CN=keel"];
        args.extend(key);
        args.extend(["-keyout", &k, "-out", &csr]);
        openssl(&args);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}-key.pem"));
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            ext,
            "-out",
            &c,
        ]);
    }
}

/// The metadata that turns on the TCP API: `docker/tls/{ca,cert,key}.pem`.
fn metadata(dir: &Path) -> PathBuf {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let data = serde_json::json!({
        "docker": {"tls": {
            "ca.pem": {"content": read("ca.pem")},
            "cert.pem": {"content": read("server.pem")},
            "key.pem": {"perm": "0600", "content": read("server-key.pem")},
        }}
    });
    let path = dir.join("metadata.json");
    std::fs::write(&path, data.to_string()).unwrap();
    path
}

/// A `docker` command against the guest, authenticated by `client` (a `NAME.pem` and
/// `NAME-key.pem` in `certs`).
struct Docker {
    bin: PathBuf,
    certs: PathBuf,
    port: u16,
}

impl Docker {
    fn as_client(&self, client: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("DOCKER_CONFIG", self.certs.join("docker-config"))
            .arg("--host")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(self.certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(self.certs.join(format!("{client}.pem")))
            .arg("--tlskey")
            .arg(self.certs.join(format!("{client}-key.pem")));
        cmd
    }

    fn cmd(&self) -> Command {
        self.as_client("client")
    }

    /// `docker info` once the engine answers (`docker version` fails until then; `docker info`
    /// does not), or a panic with the guest's console.
    fn wait_ready(&self, console: &Path) -> String {
        let start = Instant::now();
        loop {
            let out = run(self
                .cmd()
                .args(["version", "--format", "{{.Server.Version}}"]));
            if out.status.success() {
                return ok(self.cmd().args(["info", "--format", "{{json .}}"]));
            }
            assert!(
                start.elapsed() < BOOT,
                "the engine did not answer within {}s: {}\nconsole:\n{}",
                BOOT.as_secs(),
                text(&out),
                std::fs::read_to_string(console).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// A guest booted with `keel run qemu -d`; powered off (or killed) when dropped.
struct Guest {
    state: PathBuf,
}

impl Guest {
    fn boot(prefix: &Path, state: &Path, disk: &Path, port: u16, data: &Path) -> Guest {
        let out = run(Command::new(keel_bin())
            .args(["run", "qemu", "-d", "--accel", "tcg", "--mem", "1536"])
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
    let built = build(&[&workspace().join("images/docker.yml")], Arch::X86_64)
        .unwrap_or_else(|e| panic!("images/docker.yml: build failed: {}", chain(&e)));
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

    // keel's busybox image as a `docker save` archive.
    let busybox = {
        let (_lock, store) = lock_store().unwrap_or_else(|e| panic!("{}", chain(&e)));
        let tag = ok(Command::new(keel_bin())
            .arg("--cache")
            .arg(store.path())
            .args(["pkg", "show-tag"])
            .arg(workspace().join("pkg/busybox")));
        let archive = work.path().join("busybox.tar");
        ok(Command::new("skopeo")
            .args(["copy", "--override-arch", "amd64", "--override-os", "linux"])
            .arg(format!("oci:{}:{}", store.path().display(), tag.trim()))
            .arg(format!(
                "docker-archive:{}:keel-test/busybox:1",
                archive.display()
            )));
        archive
    };

    let disk = work.path().join("docker.qcow2");
    let guest = Guest::boot(
        &built.prefix,
        &work.path().join("boot1"),
        &disk,
        docker.port,
        &data,
    );
    let info = docker.wait_ready(&guest.console());
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["ServerVersion"], "20.10.24+dfsg1", "{info}");
    assert_eq!(info["Driver"], "overlay2", "{info}");
    assert_eq!(info["CgroupVersion"], "2", "{info}");
    assert_eq!(info["DockerRootDir"], "/var/lib/docker", "{info}");

    // Only clients with a certificate of the guest's CA.
    for (what, mut cmd) in [
        ("a certificate of another CA", docker.as_client("rogue")),
        ("no certificate", {
            let mut c = Command::new(&docker.bin);
            c.env("DOCKER_CONFIG", certs.join("docker-config"))
                .arg("--host")
                .arg(format!("tcp://127.0.0.1:{}", docker.port))
                .arg("--tlsverify")
                .arg("--tlscacert")
                .arg(certs.join("ca.pem"));
            c
        }),
    ] {
        let out = run(cmd.arg("info"));
        assert!(
            !out.status.success(),
            "a client with {what} was served:\n{}",
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

    // The same disk, a second boot: the image and the volume are still there.
    guest.power_off();
    drop(guest);
    let guest = Guest::boot(
        &built.prefix,
        &work.path().join("boot2"),
        &disk,
        docker.port,
        &data,
    );
    docker.wait_ready(&guest.console());
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
