//! The example systems of `images/`, built and booted under QEMU (TCG), exercised from the host
//! with real clients through `keel run qemu --publish`: `redis-cli` against `redis-os.yml`,
//! `curl` against `nginx.yml`, `ssh` with a key given as user data (`--data`) against
//! `sshd.yml`, every value of the sysctl package read back from the booted guest's
//! `/proc/sys`, `persistent.yml` booted twice on one disk, and the poweroff package. On
//! x86_64 all of them; on aarch64 `redis-os.yml` and `persistent.yml` (`minimal.yml` boots on
//! aarch64 in `formats.rs`).
//!
//! The clients come from `scripts/setup.sh` (`redis-tools`, `curl`, `openssh-client`).

use keel::run::{Accel, Arch, Disk, Options, Publish};
use keel_vmtests::{Checks, build, chain, workspace};
use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One guest at a time: TCG guests are CPU-bound and the machine is shared.
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// How long a TCG guest may take to boot and start its services.
const BOOT_DEADLINE: Duration = Duration::from_secs(240);

/// Keys of the sysctl package that a kernel may lack, which the package then skips: one that
/// appeared after Debian's 6.1 (`dev.tty.legacy_tiocsti`, Linux 6.2), and switches that turn off
/// a feature keel's `virt` kernel does not build at all (kexec, modules, userfaultfd). A key
/// outside this list must read back its value.
const NOT_IN_KERNEL: &[&str] = &[
    "dev.tty.legacy_tiocsti",
    "kernel.kexec_load_disabled",
    "kernel.modules_disabled",
    "vm.unprivileged_userfaultfd",
];

/// How a guest is started: its architecture, port forwards, disks and user data.
struct Setup {
    arch: Arch,
    publish: Vec<Publish>,
    disks: Vec<Disk>,
    /// Given as `keel run qemu --data`.
    data: Option<String>,
}

impl Setup {
    fn new(arch: Arch) -> Setup {
        Setup {
            arch,
            publish: vec![],
            disks: vec![],
            data: None,
        }
    }

    /// Forwards `guest`'s TCP port to a free host port; returns that port.
    fn forward(&mut self, guest: u16) -> u16 {
        let host = free_port();
        self.publish.push(Publish {
            host,
            guest,
            udp: false,
        });
        host
    }
}

/// A booted example, its serial console in a file; QEMU is killed on drop.
struct Guest {
    name: String,
    child: Child,
    console: PathBuf,
    _state: tempfile::TempDir,
}

impl Guest {
    fn boot(name: &str, prefix: &Path, setup: &Setup) -> Guest {
        let state = tempfile::tempdir().expect("temporary state directory");
        let console = state.path().join("console.log");
        let mut opts = Options {
            target: prefix.into(),
            media: None,
            arch: setup.arch,
            accel: Accel::Tcg,
            mem_mb: 512,
            cpus: 1,
            disks: setup.disks.clone(),
            publish: setup.publish.clone(),
            uefi: false,
            firmware: None,
            secure_boot: None,
            tpm: false,
            console_file: Some(console.clone()),
            state: Some(state.path().join("state")),
            qemu: None,
            append: Some("panic=-1".into()),
            networking: true,
            devices: vec![],
            shares: vec![],
            virtiofsd: None,
            lan: None,
            extra: vec!["-no-reboot".into()],
        };
        if let Some(data) = &setup.data {
            let drive = keel::run::data_volume(&keel::run::state_dir(&opts), data.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: cannot make the --data volume: {}", chain(&e)));
            opts.extra.extend(drive);
        }
        let mut cmd = keel::run::command(&opts, Accel::Tcg)
            .unwrap_or_else(|e| panic!("{name}: cannot prepare qemu: {}", chain(&e)));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start qemu (run scripts/setup.sh): {e}"));
        Guest {
            name: name.into(),
            child,
            console,
            _state: state,
        }
    }

    fn console(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Runs `probe` (given the guest) until it returns `Some`, or panics with the console's tail after the
    /// deadline or when QEMU exits first.
    fn until<T>(&mut self, what: &str, mut probe: impl FnMut(&Guest) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("qemu exited ({status}) before {what}"));
            }
            if start.elapsed() > BOOT_DEADLINE {
                self.fail(&format!("no {what} within {}s", BOOT_DEADLINE.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        panic!(
            "{}: {what}\n--- console (last 60 lines) ---\n{tail}\n---",
            self.name
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port that was free on the host a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Runs a host client; its stdout when it exits successfully.
fn client(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/setup.sh): {e}"));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn example(name: &str) -> PathBuf {
    workspace().join("images").join(name)
}

/// The sysctl package's settings: every `key = value` of its `/etc/sysctl.d/*.conf`, applied
/// in name order (a later file wins), values with whitespace runs folded to one space.
fn sysctl_settings() -> BTreeMap<String, String> {
    let dir = workspace().join("pkg/sysctl/etc/sysctl.d");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    let mut settings = BTreeMap::new();
    for f in files {
        let text = fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            if let Some((k, v)) = line.split_once('=') {
                settings.insert(k.trim().to_string(), fold(v));
            }
        }
    }
    settings
}

fn fold(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A YAML merged after an example: an onboot container, run after the example's own, that
/// prints `CHECK <key>=<value>` (or `ABSENT`) for each of `keys` from `/proc/sys`. It has
/// CAP_SYS_ADMIN: some keys (`net.core.bpf_jit_harden`) are readable by an admin only.
fn sysctl_probe(dir: &Path, keys: &[&String]) -> PathBuf {
    let mut script = String::new();
    for k in keys {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        script.push_str(&format!(
            "if [ -e {path} ]; then echo \"CHECK {k}=$(cat {path} | tr '\\t' ' ')\"; \
             else echo 'CHECK {k}=ABSENT'; fi; "
        ));
    }
    let yaml = format!(
        "onboot:\n  - name: sysctl-probe\n    image: \"@pkg:{}\"\n    capabilities: [CAP_SYS_ADMIN]\n    command: [\"/bin/sh\", \"-c\", {}]\n",
        workspace().join("pkg/busybox").display(),
        serde_json::Value::String(script)
    );
    let path = dir.join("sysctl-probe.yml");
    fs::write(&path, yaml).expect("write the probe YAML");
    path
}

#[test]
fn redis_os_answers_redis_cli_and_applies_every_sysctl() {
    let settings = sysctl_settings();
    assert!(
        settings.len() > 40,
        "too few sysctl settings parsed: {settings:?}"
    );
    let keys: Vec<&String> = settings.keys().collect();
    let probe_dir = tempfile::tempdir().expect("temporary directory");
    let probe = sysctl_probe(probe_dir.path(), &keys);
    let built = build(&[&example("redis-os.yml"), &probe], Arch::X86_64)
        .unwrap_or_else(|e| panic!("{}", chain(&e)));

    let _one = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut guest = redis_round_trip("redis-os", &built.prefix, Arch::X86_64);

    // The probe ran before the services started, so its output is already on the console.
    let console = guest.console();
    let checks = Checks::parse(&console);
    let id = checks
        .containers()
        .find(|c| c.ends_with("sysctl-probe"))
        .map(str::to_string)
        .unwrap_or_else(|| guest.fail("the sysctl probe printed nothing"));
    let mut wrong = Vec::new();
    for (key, want) in &settings {
        let got = checks.get(&id, key).map(fold);
        match got.as_deref() {
            Some("ABSENT") if NOT_IN_KERNEL.contains(&key.as_str()) => {}
            Some(v) if v == want => {}
            other => wrong.push(format!("{key}: want {want:?}, guest has {other:?}")),
        }
    }
    if !wrong.is_empty() {
        guest.fail(&format!("sysctl values differ:\n  {}", wrong.join("\n  ")));
    }
}

#[test]
fn nginx_serves_its_page_to_curl() {
    let built =
        build(&[&example("nginx.yml")], Arch::X86_64).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let _one = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut setup = Setup::new(Arch::X86_64);
    let port = setup.forward(80);
    let mut guest = Guest::boot("nginx", &built.prefix, &setup);
    let url = format!("http://127.0.0.1:{port}/");
    let page = guest.until("nginx's page from curl", |_| {
        client("curl", &["-fsS", "--max-time", "5", &url])
    });
    assert!(
        page.contains("Welcome to nginx on keel!"),
        "unexpected page from {url}:\n{page}"
    );
    let missing = format!("http://127.0.0.1:{port}/no-such-page");
    assert_eq!(
        client("curl", &["-fsS", "--max-time", "5", &missing]),
        None,
        "a missing page must fail (404)"
    );
}

#[test]
fn poweroff_package_powers_the_machine_off() {
    let ws = workspace();
    let dir = tempfile::tempdir().expect("temporary directory");
    let yaml = dir.path().join("poweroff.yml");
    let text = format!(
        "kernel:\n  image: \"@pkg:{ws}/kernel/debian-6.1\"\n  cmdline: \"console=ttyS0\"\n\
         init:\n  - \"@pkg:{ws}/pkg/init\"\n\
         onboot:\n  - name: poweroff\n    image: \"@pkg:{ws}/pkg/poweroff\"\n    command: [\"/bin/poweroff\", \"1\"]\n\
         services:\n  - name: idle\n    image: \"@pkg:{ws}/pkg/busybox\"\n    command: [\"/bin/sleep\", \"3600\"]\n",
        ws = ws.display()
    );
    fs::write(&yaml, text).expect("write the poweroff YAML");
    let built = build(&[&yaml], Arch::X86_64).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let _one = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut vm = keel_vmtests::vm::Vm::boot(
        "poweroff",
        &built.prefix,
        &keel_vmtests::vm::Boot::new(Arch::X86_64),
    );
    let console = vm.wait_exit(BOOT_DEADLINE);
    assert!(
        console.contains("poweroff: asking PID 1 to power off"),
        "the poweroff container did not run:\n{console}"
    );
}

#[test]
fn persistent_keeps_its_counter_across_boots() {
    persistent_twice(Arch::X86_64);
}

#[test]
fn sshd_takes_the_key_from_metadata_and_runs_keelctl() {
    let built =
        build(&[&example("sshd.yml")], Arch::X86_64).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let keys = tempfile::tempdir().expect("temporary directory");
    let key = ssh_key(keys.path(), "user");
    let stranger = ssh_key(keys.path(), "stranger");
    let public = fs::read_to_string(key.with_extension("pub")).expect("read the public key");
    let data = serde_json::json!({
        "ssh": {"authorized_keys": {"perm": "0600", "content": public}},
        "hostname": {"content": "keel-sshd-test"},
    });

    let _one = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut setup = Setup::new(Arch::X86_64);
    let port = setup.forward(22);
    setup.data = Some(data.to_string());
    let mut guest = Guest::boot("sshd", &built.prefix, &setup);
    let script = "keelctl list && echo MODE=$(busybox stat -c %a /run/config/ssh/authorized_keys) \
                  && echo HOST=$(busybox cat /proc/sys/kernel/hostname)";
    let out = guest.until("`keelctl list` over ssh", |_| {
        ssh(&key, port, script).filter(|o| o.contains("HOST="))
    });
    let state = |id: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .map(|l| {
                // ID, PID, then the status (one or two words) up to the bundle path.
                let status: Vec<&str> = l
                    .split_whitespace()
                    .skip(2)
                    .take_while(|w| !w.starts_with('/'))
                    .collect();
                status.join(" ")
            })
    };
    assert_eq!(state("sshd").as_deref(), Some("running"), "{out}");
    assert_eq!(state("getty").as_deref(), Some("running"), "{out}");
    assert_eq!(
        state("001-metadata").as_deref(),
        Some("stopped (0)"),
        "{out}"
    );
    assert!(
        out.contains("MODE=600"),
        "authorized_keys mode is not the data's perm:\n{out}"
    );
    assert!(
        out.contains("HOST=keel-sshd-test"),
        "hostname from metadata not set:\n{out}"
    );
    assert_eq!(
        ssh(&stranger, port, "true"),
        None,
        "a key that is not in the metadata must be refused"
    );
    let console = guest.console();
    assert!(
        console.contains("metadata: hostname set to keel-sshd-test"),
        "the metadata package did not report the hostname"
    );
}

#[test]
fn redis_os_answers_redis_cli_on_aarch64() {
    let built = build(&[&example("redis-os.yml")], Arch::Aarch64)
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let _one = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    redis_round_trip("redis-os (aarch64)", &built.prefix, Arch::Aarch64);
}

#[test]
fn persistent_keeps_its_counter_across_boots_on_aarch64() {
    persistent_twice(Arch::Aarch64);
}

/// Boots a Redis example and checks `redis-cli` PING and a SET/GET round trip; the caller holds
/// [`BOOT_LOCK`].
fn redis_round_trip(name: &str, prefix: &Path, arch: Arch) -> Guest {
    let mut setup = Setup::new(arch);
    let port = setup.forward(6379);
    let mut guest = Guest::boot(name, prefix, &setup);
    let p = port.to_string();
    let pong = guest.until("PONG from redis-cli PING", |_| {
        client("redis-cli", &["-p", &p, "PING"]).filter(|o| o == "PONG")
    });
    assert_eq!(pong, "PONG");
    let value = format!("keel-{port}");
    let set = client("redis-cli", &["-p", &p, "SET", "keel:test", &value]);
    assert_eq!(set.as_deref(), Some("OK"), "{name}: SET failed");
    let got = client("redis-cli", &["-p", &p, "GET", "keel:test"]);
    assert_eq!(
        got.as_deref(),
        Some(value.as_str()),
        "{name}: GET did not return what SET stored"
    );
    guest
}

/// Boots `persistent.yml` twice on one data disk: formatted on the first boot only, and the
/// counter the first boot wrote is read back by the second.
fn persistent_twice(arch: Arch) {
    let built =
        build(&[&example("persistent.yml")], arch).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let disk_dir = tempfile::tempdir().expect("temporary directory");
    let mut setup = Setup::new(arch);
    setup.disks.push(Disk {
        path: Some(disk_dir.path().join("data.qcow2")),
        size: Some("64M".into()),
        format: None,
    });
    let _one = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    for boot in 1..=2 {
        let mut guest = Guest::boot(
            &format!("persistent ({arch}) boot {boot}"),
            &built.prefix,
            &setup,
        );
        let boots = guest.until("the counter's report", |g| {
            let checks = Checks::parse(&g.console());
            checks.get("003-counter", "boots").map(str::to_string)
        });
        assert_eq!(
            boots,
            boot.to_string(),
            "{arch} boot {boot} read a wrong counter from the data disk"
        );
        let console = guest.console();
        let formatted = console.contains("format: making ext4 labelled keel-data");
        assert_eq!(
            formatted,
            boot == 1,
            "the disk must be formatted on the first boot only ({arch})"
        );
        // `guest` is dropped here: QEMU is killed; the counter was synced before it reported.
    }
}

/// A new passwordless ed25519 key pair made by `ssh-keygen`; the private key's path.
fn ssh_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen (run scripts/setup.sh): {e}"));
    assert!(status.success(), "ssh-keygen failed");
    key
}

/// Runs `command` as root in the guest with the real `ssh` client and only `key`; its output
/// when it succeeds.
fn ssh(key: &Path, port: u16, command: &str) -> Option<String> {
    let key = key.display().to_string();
    let port = port.to_string();
    client(
        "ssh",
        &[
            "-i",
            &key,
            "-p",
            &port,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            command,
        ],
    )
}
