//! A booted QEMU guest under test: started from a `keel build` prefix, its serial console
//! captured to a file (and typed into, for interactive boots), waited on with deadlines,
//! killed when dropped.

use keel::run::{Accel, Arch, Options};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

/// A running guest.
#[derive(Debug)]
pub struct Vm {
    name: String,
    child: Child,
    console: PathBuf,
    /// The serial console's input (interactive boots).
    keyboard: Option<ChildStdin>,
    /// Stopped after QEMU (fields drop after [`Vm::drop`]).
    _virtiofs: keel::run::Virtiofs,
    /// Stopped after QEMU, like the virtiofsd daemons.
    _tpm: Option<keel::run::Tpm>,
    state: tempfile::TempDir,
}

/// How to boot a guest under test.
#[derive(Debug, Clone)]
pub struct Boot {
    pub arch: Arch,
    pub mem_mb: u32,
    pub append: Option<String>,
    pub networking: bool,
    /// The serial console on QEMU's stdin and stdout (as `keel run qemu` gives a user), so a
    /// test can type into it ([`Vm::type_text`]); otherwise QEMU writes it to a file.
    pub interactive: bool,
    /// Host directories shared through virtio-fs, each served by a virtiofsd that keel starts
    /// ([`keel::run::Virtiofs`]) and that ends with the guest.
    pub virtiofs: Vec<keel::run::Share>,
    /// Extra QEMU devices (`keel run qemu --device`), e.g. a NIC whose driver is a module.
    pub devices: Vec<keel::run::Device>,
    /// `keel run qemu --secure-boot --keys`: UEFI enforcing Secure Boot with this key set.
    pub secure_boot: Option<keel::keys::KeySet>,
    /// `keel run qemu --tpm`: a TPM 2.0 emulated by swtpm.
    pub tpm: bool,
    /// More disks (`keel run qemu --disk`), after the boot disk: `/dev/vdb` and on.
    pub disks: Vec<keel::run::Disk>,
    /// A reboot of the guest resets the machine (as `keel run qemu` does) instead of ending
    /// QEMU (the tests' default, so that a reboot loop cannot hide in a test).
    pub reboot: bool,
}

impl Boot {
    pub fn new(arch: Arch) -> Boot {
        Boot {
            arch,
            mem_mb: 512,
            append: None,
            networking: false,
            interactive: false,
            virtiofs: vec![],
            devices: vec![],
            secure_boot: None,
            tpm: false,
            disks: vec![],
            reboot: false,
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
            media: None,
            arch: boot.arch,
            // Tests must not depend on a KVM that may hang: TCG everywhere.
            accel: Accel::Tcg,
            mem_mb: boot.mem_mb,
            cpus: 1,
            disks: boot.disks.clone(),
            publish: vec![],
            uefi: false,
            firmware: None,
            secure_boot: boot.secure_boot.clone(),
            tpm: boot.tpm,
            console_file: (!boot.interactive).then(|| console.clone()),
            state: Some(state.path().join("state")),
            qemu: None,
            append: Some(
                format!("panic=-1 {}", boot.append.as_deref().unwrap_or(""))
                    .trim()
                    .to_string(),
            ),
            networking: boot.networking,
            devices: boot.devices.clone(),
            shares: boot.virtiofs.clone(),
            virtiofsd: (!boot.virtiofs.is_empty()).then(crate::virtiofsd),
            lan: None,
            extra: if boot.reboot {
                vec![]
            } else {
                vec!["-no-reboot".into()]
            },
        };
        let mut cmd = keel::run::command(&opts, Accel::Tcg).unwrap_or_else(|e| {
            panic!(
                "{name}: cannot prepare qemu for {}: {e:#}",
                prefix.display()
            )
        });
        // Not tied to this thread: the test's threads come and go; dropping the Vm stops them.
        let virtiofs = keel::run::Virtiofs::start(&opts, false).unwrap_or_else(|e| {
            panic!(
                "{name}: cannot start virtiofsd: {} (run scripts/setup.sh)",
                crate::chain(&e)
            )
        });
        let tpm = keel::run::Tpm::start(&opts)
            .unwrap_or_else(|e| panic!("{name}: cannot start swtpm: {}", crate::chain(&e)));
        if boot.interactive {
            let file = fs::File::create(&console)
                .unwrap_or_else(|e| panic!("{name}: cannot create {}: {e}", console.display()));
            cmd.stdin(Stdio::piped()).stdout(file);
        } else {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start qemu (run scripts/setup.sh): {e}"));
        Vm {
            name: name.into(),
            keyboard: child.stdin.take(),
            child,
            _virtiofs: virtiofs,
            _tpm: tpm,
            console,
            state,
        }
    }

    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The run's state directory (`keel run`'s `--state`: `ctl.sock` for `keel ctl`).
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    /// How many bytes the console holds so far: a mark for [`Vm::wait_after`].
    pub fn mark(&self) -> usize {
        fs::metadata(&self.console).map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX))
    }

    /// Types `text` on the serial console (an interactive boot's). QEMU's serial port takes
    /// what its FIFO holds: longer text goes in small pieces.
    pub fn type_text(&mut self, text: &str) {
        let Some(keyboard) = self.keyboard.as_mut() else {
            self.fail("typed on a console that is not interactive (Boot::interactive)");
        };
        let mut failed = None;
        for chunk in text.as_bytes().chunks(8) {
            if let Err(e) = keyboard.write_all(chunk).and_then(|()| keyboard.flush()) {
                failed = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(e) = failed {
            self.fail(&format!("cannot type {text:?}: {e}"));
        }
    }

    /// Waits until the console's output after `mark` contains `needle`; returns that output.
    pub fn wait_after(&mut self, mark: usize, needle: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = fs::read(&self.console).unwrap_or_default();
            let after = String::from_utf8_lossy(text.get(mark..).unwrap_or_default()).into_owned();
            if after.contains(needle) {
                return after;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!(
                    "guest stopped ({status}) before printing {needle:?}"
                ));
            }
            if start.elapsed() > deadline {
                self.fail(&format!(
                    "no {needle:?} on the console within {}s; since the mark:\n{after}",
                    deadline.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the console contains `needle`; returns the console. Panics with the console's
    /// tail when the deadline passes or the guest stops first.
    pub fn wait_for(&mut self, needle: &str, deadline: Duration) -> String {
        self.wait_for_any(&[needle], deadline)
    }

    /// Waits until the console contains one of `needles` (for an outcome that shows as one of
    /// several lines); returns the console.
    pub fn wait_for_any(&mut self, needles: &[&str], deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.console();
            if needles.iter().any(|needle| text.contains(needle)) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!(
                    "guest stopped ({status}) before printing any of {needles:?}"
                ));
            }
            if start.elapsed() > deadline {
                self.fail(&format!(
                    "none of {needles:?} on the console within {}s",
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
