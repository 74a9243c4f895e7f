//! Driving a keel system's Docker engine (`pkg/docker`) from the host, as a user does: Debian's
//! own `docker` client, over TCP with mutual TLS, with certificates made by `openssl` and
//! handed to the guest as metadata. Shared by `tests/docker.rs` and `tests/swarm.rs`.

use crate::{keel_bin, store_path, workspace};
use keel::run::Arch;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A command's standard output and error, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to its end (a panic if it cannot start).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup.sh)"))
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// Debian's `docker` client: `/usr/bin/docker` of the `docker.io` package pinned for the host's
/// architecture in `pkg/docker/build.lock.json` (it runs here, whatever the guest's), unpacked
/// into `dir` from the store's `.deb` cache (building a system with `pkg/docker` downloaded it:
/// an `@pkg:` image is built for every architecture of its build.yml).
pub fn debian_docker_client(dir: &Path) -> PathBuf {
    let lock = keel_pkg::Lock::read(&workspace().join("pkg/docker"))
        .unwrap_or_else(|e| panic!("pkg/docker: {e}"))
        .expect("pkg/docker/build.lock.json");
    let pin = lock.arches[Arch::host().uname()]
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

/// Certificates in `dir`: a CA (`ca.pem`), the guest's server certificate for 127.0.0.1
/// (`server.pem`, `server-key.pem`), a client certificate of the same CA (`client`), and one of
/// another CA (`rogue`).
pub fn make_certificates(dir: &Path) {
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
        let subject = format!("/CN=keel test {ca}");
        let (k, c) = (format!("{ca}-key.pem"), format!("{ca}.pem"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
        args.extend(key);
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

/// The metadata entries that turn on the engine's TCP API (`docker/tls/{ca,cert,key}.pem`),
/// for `make_certificates`' directory `certs`; `daemon_json` adds `docker/daemon.json`.
pub fn tls_metadata(certs: &Path, daemon_json: Option<&str>) -> serde_json::Value {
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let mut docker = serde_json::json!({
        "tls": {
            "ca.pem": {"content": read("ca.pem")},
            "cert.pem": {"content": read("server.pem")},
            "key.pem": {"perm": "0600", "content": read("server-key.pem")},
        }
    });
    if let Some(daemon) = daemon_json {
        docker["daemon.json"] = serde_json::json!({"content": daemon});
    }
    docker
}

/// `docker` commands against a guest's engine published on a loopback port.
pub struct Docker {
    pub bin: PathBuf,
    pub certs: PathBuf,
    pub port: u16,
}

impl Docker {
    /// A command authenticated by `client` (`NAME.pem` and `NAME-key.pem` in `certs`).
    pub fn as_client(&self, client: &str) -> Command {
        let mut cmd = self.unauthenticated();
        cmd.arg("--tlscert")
            .arg(self.certs.join(format!("{client}.pem")))
            .arg("--tlskey")
            .arg(self.certs.join(format!("{client}-key.pem")));
        cmd
    }

    /// A command with the guest's CA but no client certificate.
    pub fn unauthenticated(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("DOCKER_CONFIG", self.certs.join("docker-config"))
            .arg("--host")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(self.certs.join("ca.pem"));
        cmd
    }

    /// A command as the test's client.
    pub fn cmd(&self) -> Command {
        self.as_client("client")
    }

    /// `docker info` as JSON once the engine answers (`docker version` fails until then;
    /// `docker info` does not), or a panic after `deadline` with the guest's console.
    pub fn wait_ready(&self, console: &Path, deadline: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let out = run(self
                .cmd()
                .args(["version", "--format", "{{.Server.Version}}"]));
            if out.status.success() {
                let info = ok(self.cmd().args(["info", "--format", "{{json .}}"]));
                return serde_json::from_str(&info)
                    .unwrap_or_else(|e| panic!("docker info: {e}: {info}"));
            }
            assert!(
                start.elapsed() < deadline,
                "the engine did not answer within {}s: {}\nconsole:\n{}",
                deadline.as_secs(),
                text(&out),
                std::fs::read_to_string(console).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

/// The tag of keel's busybox image in `store` (the caller holds the store's lock), built when
/// the store has none: `keel pkg build --locked` prints it, and does nothing when it is there.
pub fn busybox_tag(store: &keel_image::Store) -> String {
    ok(Command::new(keel_bin())
        .arg("--cache")
        .arg(store.path())
        .args(["pkg", "build", "--locked", "--quiet"])
        .arg(workspace().join("pkg/busybox")))
    .trim()
    .to_owned()
}
