//! `keel-attack NAME...`: what a hostile container (uid 0, the settings LinuxKit users write)
//! tries against its host, one attack per name. Each prints `CHECK <name>=refused (<why>)` when
//! the host stopped it and `CHECK <name>=SUCCEEDED (<what>)` when it got through; the VM test
//! (tests/tests/attack.rs) reads those lines. The attacks only probe: a success changes nothing
//! a later check depends on, except where the name says so (fill, forkbomb hold resources
//! until the process exits).

mod sys;

use std::io::{Read, Write};
use std::time::Duration;

/// The outcome of one attempt.
enum Outcome {
    Refused(String),
    Succeeded(String),
    /// Nothing to attack: the test must fail rather than count it refused.
    Untried(String),
}

fn refused(why: impl Into<String>) -> Outcome {
    Outcome::Refused(why.into())
}

fn succeeded(what: impl Into<String>) -> Outcome {
    Outcome::Succeeded(what.into())
}

/// Writing `data` to a file the host owns (a sysctl, SysRq).
fn write_file(path: &str, data: &str) -> Outcome {
    match std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
    {
        Ok(()) => succeeded(format!("wrote {path}")),
        Err(e) => refused(e.to_string()),
    }
}

/// Reading a file that leaks kernel state: refused when it cannot be read or reads empty (a
/// masked path is `/dev/null` bound over it).
fn read_file(path: &str) -> Outcome {
    let mut buf = [0u8; 64];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut buf)) {
        Ok(0) => refused("empty (masked)"),
        Ok(n) => succeeded(format!("read {n} bytes of {path}")),
        Err(e) => refused(e.to_string()),
    }
}

/// Listing a directory that leaks host state: refused when it is missing or empty.
fn list_dir(path: &str) -> Outcome {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if names.is_empty() {
                refused("empty")
            } else {
                succeeded(format!("{path} lists {}", names.join(",")))
            }
        }
        Err(e) => refused(e.to_string()),
    }
}

/// Opening a device node for reading.
fn open_device(path: &str) -> Outcome {
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut [0u8; 1])) {
        Ok(_) => succeeded(format!("opened and read {path}")),
        Err(e) => refused(e.to_string()),
    }
}

/// The guest end of `keel ctl`'s channel (a virtio-serial port, `/dev/vportNpM`, that PID 1
/// holds) through the host's /dev bound in: whoever opens it speaks to PID 1 as the host does.
fn host_channel() -> Outcome {
    let ports: Vec<String> = match std::fs::read_dir("/hostdev") {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("vport"))
            .collect(),
        Err(e) => return Outcome::Untried(format!("/hostdev: {e}")),
    };
    if ports.is_empty() {
        return Outcome::Untried(
            "no /dev/vport* in the guest: is the host channel attached?".into(),
        );
    }
    let mut why = Vec::new();
    for port in &ports {
        let path = format!("/hostdev/{port}");
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(mut f) => {
                return match f.write_all(b"{\"tag\":1,\"body\":{\"request\":\"list\"}}\n") {
                    Ok(()) => succeeded(format!("opened {path} and wrote a request")),
                    Err(e) => refused(format!("{path} opened, write: {e}")),
                };
            }
            Err(e) => why.push(format!("{port}: {e}")),
        }
    }
    refused(why.join("; "))
}

/// Asks PID 1 over the control socket (bound into the container) to SIGKILL the container
/// `victim`: refused when the socket cannot be reached or PID 1 answers with an error.
fn control(victim: &str) -> Outcome {
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;
    let mut stream = match UnixStream::connect("/run/keel/ctl/control.sock") {
        Ok(s) => s,
        Err(e) => return refused(format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("{{\"request\":\"kill\",\"id\":\"{victim}\",\"signal\":9}}\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return refused(format!("write: {e}"));
    }
    let mut line = String::new();
    match std::io::BufReader::new(stream).read_line(&mut line) {
        Ok(_) if line.contains("\"response\":\"done\"") => {
            succeeded(format!("killed {victim}: {}", line.trim()))
        }
        Ok(0) => refused("connection closed"),
        Ok(_) => refused(line.trim().to_owned()),
        Err(e) => refused(format!("read: {e}")),
    }
}

/// A syscall's result: refused on any error.
fn syscall(result: Result<(), i32>, what: &str) -> Outcome {
    match result {
        Ok(()) => succeeded(what),
        Err(errno) => refused(sys::errno_name(errno)),
    }
}

/// Writes zeros to the root until something stops it. Refused when the write fails with
/// ENOSPC before `max_mib` (the share of memory the layer may take).
fn fill(max_mib: u64) -> Outcome {
    let block = vec![0u8; 1 << 20];
    let mut file = match std::fs::File::create("/keel-attack-fill") {
        Ok(f) => f,
        Err(e) => return refused(format!("cannot create: {e}")),
    };
    let mut mib = 0u64;
    loop {
        match file.write_all(&block) {
            Ok(()) => mib += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && mib <= max_mib => {
                return refused(format!("ENOSPC after {mib} MiB"));
            }
            Err(e) => return succeeded(format!("{mib} MiB, then {e}")),
        }
        if mib > max_mib {
            return succeeded(format!("wrote {mib} MiB, past {max_mib}"));
        }
    }
}

/// Forks children that wait until the process count stops growing. Refused when fork fails
/// with EAGAIN below `max`; the children are held for `hold` (so the test can check that PID 1
/// and other services still answer) and die with this process (it is its pid namespace's
/// init).
fn forkbomb(max: u64, hold: Duration) -> Outcome {
    let mut children = 0u64;
    let outcome = loop {
        match sys::fork_paused() {
            Ok(()) => children += 1,
            Err(errno) if errno == libc::EAGAIN && children < max => {
                break refused(format!("EAGAIN after {children} processes"));
            }
            Err(errno) => {
                break succeeded(format!(
                    "{children} processes, then {}",
                    sys::errno_name(errno)
                ));
            }
        }
        if children >= max {
            break succeeded(format!("{children} processes"));
        }
    };
    report("forkbomb", &outcome);
    let _ = std::fs::write("/attack/forkbomb-holding", "");
    std::thread::sleep(hold);
    outcome
}

fn report(name: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Refused(why) => println!("CHECK {name}=refused ({why})"),
        Outcome::Succeeded(what) => println!("CHECK {name}=SUCCEEDED ({what})"),
        Outcome::Untried(why) => println!("CHECK {name}=UNTRIED ({why})"),
    }
}

fn attack(name: &str) -> Option<Outcome> {
    Some(match name {
        // Host sysctls: core_pattern runs its helper as host root; modprobe likewise on a
        // module request; kptr_restrict is one of the KSPP settings.
        "core_pattern" => write_file("/proc/sys/kernel/core_pattern", "|/tmp/evil"),
        "modprobe" => write_file("/proc/sys/kernel/modprobe", "/tmp/evil"),
        "kspp_sysctl" => write_file("/proc/sys/kernel/kptr_restrict", "0"),
        "sysrq" => write_file("/proc/sysrq-trigger", "h"),
        "sysfs" => write_file("/sys/kernel/uevent_helper", "/tmp/evil"),
        "kcore" => read_file("/proc/kcore"),
        "keys" => read_file("/proc/keys"),
        "timer_list" => read_file("/proc/timer_list"),
        "firmware" => list_dir("/sys/firmware"),
        // A block device made with mknod, then opened.
        "mknod_block" => match sys::mknod_block("/tmp/keel-attack-vda", 254, 0) {
            Err(errno) => refused(format!("mknod: {}", sys::errno_name(errno))),
            Ok(()) => open_device("/tmp/keel-attack-vda"),
        },
        // The host's /dev bound in without a device grant.
        "devmem" => open_device("/hostdev/mem"),
        "hostdisk" => open_device("/hostdev/vda"),
        "host_channel" => host_channel(),
        // The runtime state of every container, through LinuxKit's common /run bind.
        "state" => list_dir("/run/keel/state"),
        "control" => control("victim"),
        "shim_specs" => list_dir("/run/keel/shim"),
        "unshare_user" => syscall(sys::unshare(libc::CLONE_NEWUSER), "unshare(CLONE_NEWUSER)"),
        "unshare_mount" => syscall(sys::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)"),
        "mount" => syscall(sys::mount_tmpfs("/tmp"), "mounted a tmpfs"),
        "ptrace_pid1" => syscall(sys::ptrace_attach(1), "attached to PID 1"),
        "pid1_mem" => read_file("/proc/1/mem"),
        "module" => syscall(sys::init_module(), "init_module reached the loader"),
        "bpf" => syscall(sys::bpf_map_create(), "created a BPF map"),
        "keyctl" => syscall(sys::add_key(), "added a key to the session keyring"),
        "raw_socket" => syscall(sys::raw_socket(), "opened a raw socket"),
        "fill" => fill(sys::mem_total_mib().map_or(4096, |m| m / 2)),
        "forkbomb" => forkbomb(20_000, Duration::from_secs(30)),
        _ => return None,
    })
}

fn main() {
    let mut unknown = false;
    for name in std::env::args().skip(1) {
        match attack(&name) {
            // forkbomb reports before it holds its children.
            Some(outcome) if name != "forkbomb" => report(&name, &outcome),
            Some(_) => {}
            None => {
                eprintln!("keel-attack: unknown attack {name:?}");
                unknown = true;
            }
        }
    }
    // Keep the console ordered: every line out before the container exits.
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(unknown) * 2);
}
