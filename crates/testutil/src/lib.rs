//! Fixtures for keel's test suites (dev-dependency only): the caches a test run shares, a real
//! OCI registry server (`docker-registry`, Debian's packaging of distribution/distribution) on
//! loopback, and pushing into it with `skopeo`. Both programs come from `scripts/setup.sh`; a
//! missing one fails the test with a message saying so.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The caches the suites of one test run share (so a kernel or a `.deb` is fetched once per
/// run): `KEEL_TEST_CACHE`, else `<target>/keel-test-cache`. `scripts/test.sh` points it at a
/// fresh directory, so a run sees what a fresh machine sees: a pin that has left Debian's
/// archive fails the day it happens, not on a user's first build.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_TEST_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("keel-test-cache")
}

/// The virtiofsd the virtio-fs tests start: `$KEEL_VIRTIOFSD`, else the one scripts/setup.sh
/// installs under the workspace's target directory. Panics (the test fails, it is not skipped)
/// when it is missing.
pub fn virtiofsd() -> PathBuf {
    let path = std::env::var_os("KEEL_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/virtiofsd/bin/virtiofsd")
        });
    assert!(
        path.is_file(),
        "virtiofsd is not installed at {}: run scripts/setup.sh (it installs it into \
         target/tools/virtiofsd), or set KEEL_VIRTIOFSD",
        path.display()
    );
    path
}

/// The shared `.deb` cache (files named by their sha256, verified when read).
pub fn deb_cache() -> PathBuf {
    cache_root().join("debs")
}

/// The shared image store of the VM tests.
pub fn store_dir() -> PathBuf {
    cache_root().join("store")
}

/// Where Debian installs the registry server.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry server on 127.0.0.1 (a free port) with its storage in a temp dir; killed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the server and waits until it accepts connections (panics after 20 s).
    pub fn start() -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: run scripts/setup.sh (it installs the docker-registry package)"
        );
        let dir = tempfile::tempdir().expect("a temp dir for the registry");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("the registry's config file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes every platform of `name` (a `ref.name` in the OCI layout `layout`) to `dest`
/// (`host/repo:tag`) over plain HTTP.
pub fn skopeo_push(layout: &Path, name: &str, dest: &str) {
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{name}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo ({e}): run scripts/setup.sh"));
    assert!(
        out.status.success(),
        "skopeo push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tar holding one file (mode 0644, mtime 0), for building test images.
pub fn tar_with(path: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(u64::try_from(content.len()).unwrap_or(u64::MAX));
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, path, content)
        .expect("a tar in memory");
    b.into_inner().expect("a tar in memory")
}

/// The file names in `EFI/Linux` of the ESP of an EFI disk keel built (the ESP at 1 MiB), sorted,
/// read by mtools' `mdir` (a reader other than keel's own).
pub fn esp_linux_entries(disk: &Path) -> Vec<String> {
    let esp = format!("{}@@{}", disk.display(), 1 << 20);
    let out = std::process::Command::new("mdir")
        .args(["-b", "-i", &esp, "::/EFI/Linux"])
        .output()
        .expect("mdir runs (mtools)");
    assert!(out.status.success(), "{out:?}");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next().map(str::to_owned))
        .collect();
    names.sort();
    names
}
