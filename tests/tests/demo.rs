//! The newcomer's path (issue 12): the boot command `scripts/demo.sh` ends with, run in a
//! pseudo-terminal as a user's terminal runs it, reaches the console prompt of the default
//! system (images/minimal.yml, `console: inspect`); `list` works there, an admin verb is
//! refused, and ctrl-a x leaves QEMU as the demo says.

use keel_vmtests::{Arch, build, chain, keel_bin, workspace};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(600);
const STEP: Duration = Duration::from_secs(120);

/// What the terminal showed, filled by a reader thread.
struct Screen {
    text: Arc<Mutex<Vec<u8>>>,
}

impl Screen {
    fn len(&self) -> usize {
        self.text.lock().map_or(0, |t| t.len())
    }

    /// Waits until the output after `mark` contains `needle`; returns that output. Fails at
    /// once if `keel` ended.
    fn wait_after(
        &self,
        keel: &mut std::process::Child,
        mark: usize,
        needle: &str,
        deadline: Duration,
    ) -> String {
        let start = Instant::now();
        loop {
            let after = self
                .text
                .lock()
                .map(|t| String::from_utf8_lossy(t.get(mark..).unwrap_or_default()).into_owned())
                .unwrap_or_default();
            if after.contains(needle) {
                return after;
            }
            if let Ok(Some(status)) = keel.try_wait() {
                panic!(
                    "keel run ended ({status}) before {needle:?} showed; the terminal shows:\n{after}"
                );
            }
            assert!(
                start.elapsed() < deadline,
                "no {needle:?} on the demo's terminal within {}s; it shows:\n{after}",
                deadline.as_secs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn demo_boots_to_a_prompt_where_list_works() {
    // The command the demo ends with; if demo.sh changes it, change this test with it.
    let demo = std::fs::read_to_string(workspace().join("scripts/demo.sh")).expect("demo.sh");
    assert!(
        demo.contains(r#"exec "$keel" run qemu --arch "$arch" --mem 512 "$out/minimal""#),
        "scripts/demo.sh no longer ends with the boot command this test runs"
    );
    let built = build(&[&workspace().join("images/minimal.yml")], Arch::X86_64)
        .unwrap_or_else(|e| panic!("minimal.yml: build failed: {}", chain(&e)));

    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = Command::new(keel_bin())
        .args(["run", "qemu", "--arch", "x86_64", "--mem", "512"])
        .arg(&built.prefix)
        // The machines that run the tests have no usable KVM (docs/architecture.md).
        .env("KEEL_QEMU_ACCEL", "tcg")
        .stdin(Stdio::from(slave.try_clone().expect("dup pty")))
        .stdout(Stdio::from(slave.try_clone().expect("dup pty")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("keel run qemu");
    let mut master = std::fs::File::from(pty.master);
    let screen = Screen {
        text: Arc::new(Mutex::new(Vec::new())),
    };
    let text = Arc::clone(&screen.text);
    let mut reader = master.try_clone().expect("dup pty master");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once every slave end is closed (keel and QEMU exited).
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = text.lock() {
                t.extend_from_slice(&buf[..n]);
            }
        }
    });
    let mut type_line = |line: &str| {
        for b in line.bytes() {
            master.write_all(&[b]).expect("type on the pty");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    screen.wait_after(&mut child, 0, "keel console (inspect): type help", BOOT);
    // The prompt comes as the services are launched: `list` until `status` runs.
    let start = Instant::now();
    loop {
        let mark = screen.len();
        type_line("list\r");
        let list = screen.wait_after(&mut child, mark, "\nstatus ", STEP);
        let row = screen.wait_after(
            &mut child,
            mark + list.find("\nstatus ").unwrap_or(0) + 1,
            "\n",
            STEP,
        );
        let row = row.lines().next().unwrap_or("");
        if row.contains("running") {
            break;
        }
        assert!(
            start.elapsed() < STEP,
            "status never running on the demo's console:\n{list}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let mark = screen.len();
    type_line("stop status\r");
    screen.wait_after(&mut child, mark, "permission denied", STEP);

    // ctrl-a x: QEMU quits, and keel with it.
    type_line("\x01x");
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if start.elapsed() > STEP {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if status.is_none() {
        let mut state = built.prefix.clone().into_os_string();
        state.push("-state/qemu.pid");
        if let Ok(pid) = std::fs::read_to_string(&state) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        panic!("ctrl-a x did not end keel run qemu");
    }
}
