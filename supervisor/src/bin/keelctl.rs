//! `keelctl`: the console client of keel's supervisor. Talks to PID 1 over the control socket.

use keel_disk::authenticode;
use keel_disk::running::System;
use keel_disk::update::{SLOTS, SignatureError, Step, Update, apply};
use keel_guest::chain;
use keel_supervisor::cli::{self, Command};
use keel_supervisor::client;
use keel_supervisor::{Request, Response};
use std::io::{IsTerminal, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn usage() -> String {
    format!(
        "usage: keelctl [--socket PATH] [--json] <command> [args]\n\n{}\n\n--json prints JSON instead of tables (for logs -f: one object per line).",
        cli::COMMANDS
    )
}

/// The shim `exec` runs (override with `KEEL_SHIM`).
const SHIM_ENV: &str = "KEEL_SHIM";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("keelctl: {message}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct Options {
    socket: PathBuf,
    json: bool,
    command: Command,
}

fn usage_err(what: impl std::fmt::Display) -> String {
    format!("{what}\n{}", usage())
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut socket = PathBuf::from(keel_bundle::CONTROL_SOCKET);
    let mut json = false;
    let mut words: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // Everything after `exec NAME` belongs to the command run in the container.
        if words.len() >= 2 && words[0] == "exec" {
            if !(words.len() == 2 && arg == "--") {
                words.push(arg.clone());
            }
            words.extend(it.by_ref().cloned());
            break;
        }
        match arg.as_str() {
            "--json" => json = true,
            "--socket" => {
                socket = it
                    .next()
                    .ok_or_else(|| usage_err("--socket needs a path"))?
                    .into();
            }
            "-h" | "--help" => words.insert(0, "help".to_owned()),
            "-f" | "--follow" | "-n" | "--lines" | "-s" | "--signal" if !words.is_empty() => {
                words.push(arg.clone());
                if matches!(arg.as_str(), "-n" | "--lines" | "-s" | "--signal") {
                    let value = it
                        .next()
                        .ok_or_else(|| usage_err(format!("{arg} needs a value")))?;
                    words.push(value.clone());
                }
            }
            a if a.starts_with('-') && a.len() > 1 => {
                return Err(usage_err(format!("unknown option {a}")));
            }
            a => words.push(a.to_owned()),
        }
    }
    let command = cli::parse(&words).map_err(usage_err)?;
    Ok(Options {
        socket,
        json,
        command,
    })
}

fn call(opts: &Options, request: &Request) -> Result<Response, String> {
    match client::call(&opts.socket, request).map_err(|e| chain(&e))? {
        Response::Error { message } => Err(message),
        r => Ok(r),
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let opts = parse(args)?;
    match &opts.command {
        Command::Help => {
            println!("{}", usage());
            Ok(ExitCode::SUCCESS)
        }
        Command::Call(request) => {
            let out = cli::render(call(&opts, request)?, opts.json)?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id, lines, follow } => {
            logs(&opts, id, *lines, *follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top => {
            print!("{}", top(&opts)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { id, argv } => exec(&opts, id, argv),
        Command::Version => version(&opts),
        Command::Update { source } => match source.to_str() {
            Some(url) if url.contains("://") => update_from(url),
            _ => update(source),
        },
    }
}

/// `version`: the running slot and version, and what each slot holds, read from the boot disk
/// (keelctl needs to read it: root on the system, or a container granted the disk).
fn version(opts: &Options) -> Result<ExitCode, String> {
    let system = System::this_machine().map_err(|e| chain(&e))?;
    let status = system.status().map_err(|e| chain(&e))?;
    if opts.json {
        let text = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        println!(
            "running: version {} from slot {} of {}",
            system.version,
            SLOTS[system.slot],
            system.disk.display()
        );
        print!("{status}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The largest update `keelctl update http://…` downloads.
const MAX_DOWNLOAD: u64 = 32 << 30;

/// `update URL`: the download, into a temporary file (in `TMPDIR`, else `/var/tmp`, which is
/// on disk where `/tmp` may be memory), then [`update`] of that file.
fn update_from(url: &str) -> Result<ExitCode, String> {
    let url: keel_supervisor::download::Url = url.parse().map_err(|e| chain(&e))?;
    let dir = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let mut file = tempfile_in(&dir)?;
    println!("update: fetching {url} into {}", file.0.display());
    let len = keel_supervisor::download::fetch(
        &url,
        &mut file.1,
        MAX_DOWNLOAD,
        std::time::Duration::from_secs(60),
    )
    .map_err(|e| chain(&e))?;
    println!("update: fetched {len} bytes");
    update(&file.0.clone())
}

/// A new file in `dir`, removed when dropped.
struct TempFile(PathBuf, std::fs::File);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in(dir: &Path) -> Result<TempFile, String> {
    let pid = std::process::id();
    for n in 0..100u32 {
        let path = dir.join(format!("keel-update-{pid}-{n}.img"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok(TempFile(path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create a file in {}: {e}", dir.display())),
        }
    }
    Err(format!("cannot create a file in {}", dir.display()))
}

/// `update FILE`: checks the version FILE holds, then writes it into the slot the system does
/// not run from, to be tried once on the next boot (see `keel_disk::update`).
fn update(source: &Path) -> Result<ExitCode, String> {
    let system = System::this_machine().map_err(|e| chain(&e))?;
    // PID 1 renames the running UKI when its trial ends: no second writer on the ESP meanwhile,
    // and no update from a version that may yet be rolled back.
    let entry = system.entry().map_err(|e| chain(&e))?;
    if system.on_trial(&entry).map_err(|e| chain(&e))? {
        return Err(format!(
            "version {} is on trial (its boot assessment is not over): update once it is permanent (keelctl version)",
            system.version
        ));
    }
    // The new version must be signed by the key that signed the running one: the firmware
    // accepted that key, and will check the new UKI against the same db at the next boot.
    let running = system.uki().map_err(|e| chain(&e))?;
    let trusted = authenticode::signer(&running)
        .map_err(|e| format!("the running version's UKI: {}", chain(&e)))?;
    let verify = |uki: &[u8]| -> Result<(), SignatureError> {
        match &trusted {
            Some(cert) => Ok(authenticode::verify(uki, std::slice::from_ref(cert))?),
            None => Ok(()),
        }
    };
    let new = Update::read(source, Some(&verify)).map_err(|e| chain(&e))?;
    let signature = match &trusted {
        Some(cert) => format!("signed by {}", authenticode::subject(cert)),
        None => "not signed, as the running version is not".to_owned(),
    };
    println!(
        "update: {} holds version {}, checked: its UKI is {signature}, its root hashes to its UKI's root hash",
        source.display(),
        new.version.entry.version
    );
    let mut progress = |step: Step| {
        let line = match step {
            Step::RemoveStale { slot } => format!("removing the UKIs of slot {slot}"),
            Step::WriteSlot { slot, bytes } => format!("writing slot {slot} ({bytes} bytes)"),
            Step::SetGuids { slot } => format!("naming slot {slot} by the new root hash"),
            Step::PutUki { slot } => format!("putting the UKI of slot {slot} on the ESP"),
        };
        println!("update: {line}");
        let _ = std::io::stdout().flush();
    };
    let updated =
        apply(&system.disk, &new, Some(&system.root_hash), &mut progress).map_err(|e| chain(&e))?;
    println!(
        "update: slot {} holds version {}; the next boot tries it once, and it stays only if it passes its boot assessment (else version {} boots again)",
        updated.slot, updated.version, updated.previous
    );
    Ok(ExitCode::SUCCESS)
}

/// `top`: two samples a second apart, so CPU shows as a share of one CPU.
fn top(opts: &Options) -> Result<String, String> {
    let sample = || match call(opts, &Request::Top)? {
        Response::Top { init, containers } => Ok((init, containers, std::time::Instant::now())),
        other => Err(format!("unexpected answer {other:?}")),
    };
    let (_, before, then) = sample()?;
    std::thread::sleep(cli::TOP_SAMPLE);
    let (init, now, at) = sample()?;
    cli::top_view(init, &before, now, at - then, opts.json)
}

/// `logs`: the last lines, then (with `-f`) new ones as they come, until the connection fails.
fn logs(opts: &Options, id: &str, lines: Option<usize>, follow: bool) -> Result<(), String> {
    let mut after = None;
    loop {
        let request = Request::Logs {
            id: id.to_owned(),
            lines: if after.is_none() { lines } else { None },
            after,
        };
        let (got, next) = match call(opts, &request)? {
            Response::Logs { lines, next } => (lines, next),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let mut out = std::io::stdout().lock();
        let terminal = out.is_terminal();
        for l in &got {
            let text = cli::log_line(l, opts.json, terminal)?;
            // A closed pipe (`keelctl logs -f x | head`) ends the command quietly.
            if writeln!(out, "{text}").is_err() {
                return Ok(());
            }
        }
        if out.flush().is_err() || !follow {
            return Ok(());
        }
        after = Some(next);
        std::thread::sleep(cli::FOLLOW_INTERVAL);
    }
}

/// `exec`: checks with PID 1 that the container runs, then runs
/// `keel-shim exec <id> -- CMD...`, which joins its namespaces and cgroup through
/// libcontainer; the command's stdio is keelctl's own. Exits with the command's status.
fn exec(opts: &Options, id: &str, argv: &[String]) -> Result<ExitCode, String> {
    let containers = match call(opts, &Request::List)? {
        Response::List { containers } => containers,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let c = containers
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| format!("no container named {id}"))?;
    if c.status != "running" {
        return Err(format!("{id} is not running ({})", c.status));
    }
    if !Path::new(keel_bundle::STATE_DIR).join(id).exists() {
        join_host_mounts()?;
    }
    let shim = std::env::var_os(SHIM_ENV).unwrap_or_else(|| keel_bundle::SHIM_PATH.into());
    let status = std::process::Command::new(&shim)
        .arg("exec")
        .arg(id)
        .arg("--")
        .args(argv)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", PathBuf::from(&shim).display()))?;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    if opts.json {
        println!("{}", cli::exec_summary(id, code));
    }
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}

/// Joins PID 1's mount namespace. The runtime state `exec` needs is mounted unbindable, so no
/// container sees it; a keelctl in a host-equivalent container (`pid: host` and
/// `CAP_SYS_ADMIN`, as getty and sshd are) can join the host's mounts, where it and the shim
/// are — which such a container could do anyway. Anyone else gets an error saying so.
fn join_host_mounts() -> Result<(), String> {
    let refuse = |e: &dyn std::fmt::Display| {
        format!(
            "exec needs the host's runtime state, which is not visible here; run it from the console, the host (keel ctl) or a container with pid: host and CAP_SYS_ADMIN ({e})"
        )
    };
    let ns = std::fs::File::open("/proc/1/ns/mnt").map_err(|e| refuse(&e))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| refuse(&e))?;
    // setns leaves the working directory in the old tree; the shim does not care, but a
    // relative path in the command would.
    std::env::set_current_dir("/").map_err(|e| refuse(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_commands_and_flags() {
        let o = parse(&args(&["list", "--json"])).unwrap();
        assert_eq!(o.command, Command::Call(Request::List));
        assert!(o.json);
        assert_eq!(o.socket, PathBuf::from(keel_bundle::CONTROL_SOCKET));
        let o = parse(&args(&["--socket", "/tmp/x", "timeline"])).unwrap();
        assert_eq!(o.socket, PathBuf::from("/tmp/x"));
        assert!(!o.json);
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["list", "extra"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
        assert!(parse(&args(&["frobnicate"])).is_err());
    }

    #[test]
    fn missing_socket_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let err = run(&args(&["--socket", sock.to_str().unwrap(), "list"])).unwrap_err();
        assert!(err.contains("no control socket"), "{err}");
        let err = run(&args(&[
            "--socket",
            sock.to_str().unwrap(),
            "exec",
            "x",
            "ls",
        ]))
        .unwrap_err();
        assert!(err.contains("no control socket"), "{err}");
    }
}
