//! A booted QEMU guest under test: started from a `keel build` prefix, its serial console
//! captured to a file, waited on with deadlines, killed when dropped.

use keel::run::{Accel, Arch, Options};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running guest.
#[derive(Debug)]
pub struct Vm {
    name: String,
    child: Child,
    console: PathBuf,
    _state: tempfile::TempDir,
}

/// How to boot a guest under test.
#[derive(Debug, Clone)]
pub struct Boot {
    pub arch: Arch,
    pub mem_mb: u32,
    pub append: Option<String>,
    pub networking: bool,
}

impl Boot {
    pub fn new(arch: Arch) -> Boot {
        Boot {
            arch,
            mem_mb: 512,
            append: None,
            networking: false,
        }
    }
}

impl Vm {
    /// Boots `prefix` (a `keel build` output prefix) under TCG.
    pub fn boot(name: &str, prefix: &Path, boot: &Boot) -> Vm {
        let state = tempfile::tempdir().expect("temporary state directory");
        let console = state.path().join("console.log");
        let opts = Options {
            target: prefix.into(),
            arch: boot.arch,
            // Tests must not depend on a KVM that may hang: TCG everywhere.
            accel: Accel::Tcg,
            mem_mb: boot.mem_mb,
            cpus: 1,
            disks: vec![],
            publish: vec![],
            uefi: false,
            firmware: None,
            console_file: Some(console.clone()),
            state: Some(state.path().join("state")),
            qemu: None,
            append: Some(
                format!("panic=-1 {}", boot.append.as_deref().unwrap_or(""))
                    .trim()
                    .to_string(),
            ),
            networking: boot.networking,
            extra: vec!["-no-reboot".into()],
        };
        let mut cmd = keel::run::command(&opts, Accel::Tcg).unwrap_or_else(|e| {
            panic!(
                "{name}: cannot prepare qemu for {}: {e:#}",
                prefix.display()
            )
        });
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start qemu (run scripts/setup.sh): {e}"));
        Vm {
            name: name.into(),
            child,
            console,
            _state: state,
        }
    }

    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the console contains `needle`; returns the console. Panics with the console's
    /// tail when the deadline passes or the guest stops first.
    pub fn wait_for(&mut self, needle: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.console();
            if text.contains(needle) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!(
                    "guest stopped ({status}) before printing {needle:?}"
                ));
            }
            if start.elapsed() > deadline {
                self.fail(&format!(
                    "no {needle:?} on the console within {}s",
                    deadline.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for QEMU to exit (the guest powered off); returns the console.
    pub fn wait_exit(&mut self, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.console();
            }
            if start.elapsed() > deadline {
                self.fail(&format!(
                    "guest did not power off within {}s",
                    deadline.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        let text = self.console();
        let tail: String = {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        panic!(
            "{}: {what}\n--- qemu stderr ---\n{stderr}\n--- console (last 60 lines) ---\n{tail}\n---",
            self.name
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
