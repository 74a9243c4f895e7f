//! VM tests of inspection (issue 12): the console prompt and `keel ctl`, on both architectures.
//!
//! - `admin_*` boots tests/cases/inspect.yml (`console: admin`) with its serial console on
//!   QEMU's stdio, types every verb at the prompt, checks that `exec` runs with the container's
//!   uid and capabilities, then drives the host channel with the `keel ctl` binary: list, logs,
//!   exec, a `logs -f` killed mid-stream (PID 1 keeps answering, its buffers drain), poweroff.
//! - `inspect_level_aarch64` boots the default system (images/minimal.yml, `console: inspect`):
//!   the read-only verbs work, every other one is refused, and the prompt goes on. On x86_64
//!   tests/tests/demo.rs does the same through the demo's own boot command in a pty.

use keel_vmtests::vm::{Boot, Vm};
use keel_vmtests::{Arch, build, case, chain, keel_bin, workspace};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Boot to the prompt under TCG (aarch64 is emulated on shared cores: slow).
const BOOT: Duration = Duration::from_secs(600);
/// One command's answer.
const STEP: Duration = Duration::from_secs(120);
const PROMPT: &str = "keel> ";

/// Types `line` and Enter at the prompt; returns the console after it once `expect` shows.
fn at_prompt(vm: &mut Vm, line: &str, expect: &str) -> String {
    let mark = vm.mark();
    vm.type_text(&format!("{line}\r"));
    vm.wait_after(mark, expect, STEP)
}

/// Like [`at_prompt`], waiting for the next prompt after `expect`.
fn command(vm: &mut Vm, line: &str, expect: &str) -> String {
    let mark = vm.mark();
    vm.type_text(&format!("{line}\r"));
    let out = vm.wait_after(mark, expect, STEP);
    let from = mark + out.find(expect).unwrap_or(0);
    vm.wait_after(from, PROMPT, STEP);
    out
}

/// Asks `list` at the prompt until `id`'s row shows `status`.
fn until_listed(vm: &mut Vm, id: &str, status: &str) -> String {
    until_row(vm, id, status, |row| row.contains(status))
}

/// Asks `list` until `id`'s row satisfies `done`; returns the row. `what` names the wait.
fn until_row(vm: &mut Vm, id: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let list = command(vm, "list", &format!("\n{id} "));
        let row = list.lines().find(|l| l.starts_with(id)).unwrap_or("");
        if done(row) {
            return row.to_owned();
        }
        assert!(start.elapsed() < STEP, "{id} never {what}:\n{list}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The PID column of a `list` row.
fn pid_of(row: &str) -> String {
    row.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

/// Waits until `id` runs as another process than `old_pid` (a restart is done).
fn until_running_anew(vm: &mut Vm, id: &str, old_pid: &str) {
    until_row(vm, id, "running anew", |row| {
        row.contains("running") && pid_of(row) != old_pid && pid_of(row) != "0"
    });
}

/// `keel ctl` with `args` against the guest's state directory.
fn ctl(vm: &Vm, args: &[&str]) -> Output {
    let state = vm.state_dir();
    let mut cmd = Command::new(keel_bin());
    cmd.arg("ctl").arg("--timeout").arg("120");
    let (flags, rest): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| *a == &"--json");
    cmd.args(flags).arg(&state).args(rest);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", keel_bin().display()));
    eprintln!(
        "keel ctl {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The highest `tick N` in `text`.
fn last_tick(text: &str) -> u64 {
    text.split("tick ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// The `PID 1:` line of `top` (its resident memory and what it buffers for clients).
fn pid1_line(top: &str) -> String {
    top.lines()
        .find(|l| l.starts_with("PID 1:"))
        .unwrap_or_else(|| panic!("no PID 1 line in top:\n{top}"))
        .to_string()
}

/// PID 1's resident bytes from its `top` line (`PID 1: 908.0 KiB resident ...`).
fn pid1_resident(line: &str) -> f64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let unit = |u: &str| match u {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unknown unit {other:?} in {line:?}"),
    };
    match words.as_slice() {
        ["PID", "1:", n, u, "resident", ..] => n.parse::<f64>().expect("a number") * unit(u),
        _ => panic!("unexpected PID 1 line {line:?}"),
    }
}

fn admin(arch: Arch) {
    let built = build(&[&case("inspect.yml")], arch)
        .unwrap_or_else(|e| panic!("inspect.yml ({arch}): build failed: {}", chain(&e)));
    let mut how = Boot::new(arch);
    how.interactive = true;
    let mut vm = Vm::boot(&format!("inspect ({arch})"), &built.prefix, &how);
    vm.wait_for("keel console (admin): type help", BOOT);

    // Every verb at the prompt.
    command(&mut vm, "help", "this console may use every command");
    // The prompt comes when the services are launched; they run a moment later.
    until_listed(&mut vm, "worker", "running");
    until_listed(&mut vm, "victim", "running");
    // Running is not yet printed: follow the worker's log to its first tick (ctrl-c ends it),
    // so the one-shot `logs` has something to show however early the prompt came.
    at_prompt(&mut vm, "logs -f worker", "tick 1");
    let mark = vm.mark();
    vm.type_text("\x03");
    vm.wait_after(mark, PROMPT, STEP);
    let logs = command(&mut vm, "logs worker", "tick 1");
    command(&mut vm, "ps worker", "sleep");
    let own = logs
        .lines()
        .find_map(|l| {
            l.split_once("CHECK own=")
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("worker's own privileges not in its logs:\n{logs}"));
    assert!(own.contains("Uid: 1000"), "{own}");
    // The escape sequence the worker printed reaches the console escaped.
    assert!(logs.contains("CHECK escape=\\x1b[31mred"), "{logs:?}");
    assert!(
        !logs.contains("\x1b[31m"),
        "raw escape on the console: {logs:?}"
    );

    // logs -f follows until ctrl-c, then stops.
    let n = last_tick(&logs);
    at_prompt(&mut vm, "logs -f worker", &format!("tick {}", n + 3));
    let mark = vm.mark();
    vm.type_text("\x03");
    vm.wait_after(mark, PROMPT, STEP);
    std::thread::sleep(Duration::from_secs(3));
    let mark = vm.mark();
    command(&mut vm, "timeline", "services started");
    let after = vm.wait_after(mark, PROMPT, STEP);
    assert!(
        !after.contains("tick "),
        "logs -f went on after ctrl-c: {after}"
    );

    // top refreshes until q.
    let top = at_prompt(&mut vm, "top", "(ctrl-c or q");
    assert!(top.contains("worker") && top.contains("PID 1:"), "{top}");
    let mark = vm.mark();
    vm.type_text("q");
    vm.wait_after(mark, PROMPT, STEP);

    // Lifecycle verbs on the victim.
    command(&mut vm, "stop victim", "stopping victim");
    until_listed(&mut vm, "victim", "stopped");
    command(&mut vm, "start victim", "starting victim");
    let row = until_listed(&mut vm, "victim", "running");
    command(&mut vm, "restart victim", "restarting victim");
    // `running` alone may still be the old process on its way out.
    until_running_anew(&mut vm, "victim", &pid_of(&row));
    let row = until_listed(&mut vm, "victim", "running");
    command(&mut vm, "kill -s HUP victim", "to victim");
    // SIGHUP ends the victim (it traps it: as its pid namespace's init it would ignore it
    // otherwise); the restart policy (always) brings it back.
    until_running_anew(&mut vm, "victim", &pid_of(&row));

    // exec runs with the worker's own uid, capabilities, seccomp and no_new_privs.
    let script = "echo EXEC=$(grep -E '^(Uid|Gid|CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status | xargs)";
    let exec = command(
        &mut vm,
        &format!("exec worker sh -c \"{script}\""),
        "EXEC=Uid",
    );
    let got = exec
        .lines()
        .find_map(|l| {
            l.split_once("EXEC=Uid")
                .map(|(_, v)| format!("Uid{}", v.trim_end()))
        })
        .unwrap_or_default();
    assert_eq!(
        got, own,
        "exec's privileges differ from the worker's:\n{exec}"
    );
    command(&mut vm, "exec worker sh -c \"exit 3\"", "[exit status 3]");
    at_prompt(&mut vm, "exec worker sleep 1000", "exec worker sleep 1000");
    std::thread::sleep(Duration::from_secs(2));
    let mark = vm.mark();
    vm.type_text("\x03");
    vm.wait_after(mark, PROMPT, STEP);

    // keel ctl from the host: the same verbs over the virtio-serial channel.
    let out = ctl(&vm, &["list"]);
    assert!(out.status.success() && stdout(&out).contains("worker"));
    let out = ctl(&vm, &["--json", "list"]);
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("keel ctl --json list: {e}"));
    assert!(
        list.as_array().is_some_and(|a| a
            .iter()
            .any(|c| c["id"] == "worker" && c["status"] == "running")),
        "{list}"
    );
    let out = ctl(&vm, &["logs", "worker"]);
    assert!(out.status.success() && stdout(&out).contains("tick "));
    let out = ctl(&vm, &["exec", "worker", "id"]);
    assert!(out.status.success() && stdout(&out).contains("uid=1000"));
    let out = ctl(&vm, &["exec", "worker", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "keel ctl exec's exit status");
    let out = ctl(&vm, &["timeline"]);
    assert!(stdout(&out).contains("services started"));

    // A follower killed mid-stream: PID 1 drops the stream and goes on answering.
    let before = pid1_line(&stdout(&ctl(&vm, &["top"])));
    let mut follower = Command::new(keel_bin())
        .args(["ctl", "--timeout", "120"])
        .arg(vm.state_dir())
        .args(["logs", "-f", "worker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("keel ctl logs -f");
    let started = Instant::now();
    let mut seen = String::new();
    if let Some(mut out) = follower.stdout.take() {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while last_tick(&seen) == 0 && started.elapsed() < STEP {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    }
    assert!(
        last_tick(&seen) > 0,
        "keel ctl logs -f printed no tick: {seen}"
    );
    follower.kill().expect("kill keel ctl");
    let _ = follower.wait();
    let out = ctl(&vm, &["list"]);
    assert!(
        out.status.success(),
        "PID 1 answers after the follower died"
    );
    let after = pid1_line(&stdout(&ctl(&vm, &["top"])));
    eprintln!("inspect ({arch}): before the killed follower: {before}; after: {after}");
    // Nothing of the dead client is kept: PID 1 is no larger than a page cache's worth of
    // noise (its memory is a few hundred KiB; a kept stream would be MiB).
    assert!(
        pid1_resident(&after) <= pid1_resident(&before) + 256.0 * 1024.0,
        "PID 1 grew after a killed follower: {before} -> {after}"
    );
    assert!(after.contains(", 0 B buffered"), "{after}");
    // The console still answers too.
    command(&mut vm, "list", "worker");

    let out = ctl(&vm, &["poweroff"]);
    assert!(out.status.success(), "keel ctl poweroff");
    let console = vm.wait_exit(STEP);
    assert!(console.contains("power"), "{console}");
}

/// The default system's `console: inspect`: reads work, everything else is refused.
fn inspect_level(arch: Arch) {
    let yaml = workspace().join("images/minimal.yml");
    let built = build(&[&yaml], arch)
        .unwrap_or_else(|e| panic!("minimal.yml ({arch}): build failed: {}", chain(&e)));
    let mut how = Boot::new(arch);
    how.interactive = true;
    let mut vm = Vm::boot(&format!("minimal ({arch})"), &built.prefix, &how);
    vm.wait_for("keel console (inspect): type help", BOOT);
    refusals(&mut vm);
}

/// At an `inspect` prompt: the read-only verbs answer, every other verb is refused and the
/// prompt goes on. Shared with the demo's pty test.
pub fn refusals(vm: &mut Vm) {
    command(vm, "help", "this console may only read");
    until_listed(vm, "status", "running");
    command(vm, "timeline", "services started");
    command(vm, "logs status", "000-hello");
    for verb in [
        "stop status",
        "start status",
        "restart status",
        "kill status",
        "exec status id",
        "poweroff",
        "reboot",
    ] {
        command(vm, verb, "permission denied");
    }
    let list = command(vm, "list", "status");
    assert!(
        list.contains("running"),
        "still running after refusals: {list}"
    );
}

#[test]
fn admin_x86_64() {
    admin(Arch::X86_64);
}

#[test]
fn admin_aarch64() {
    admin(Arch::Aarch64);
}

#[test]
fn inspect_level_aarch64() {
    inspect_level(Arch::Aarch64);
}
