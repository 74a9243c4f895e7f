//! `keelctl`: the console client of keel's supervisor. Talks to PID 1 over the control socket.

use keel_supervisor::client::{self, ClientError};
use keel_supervisor::protocol::ProcessInfo;
use keel_supervisor::{ContainerInfo, Request, Response, TimelineStep};
use nix::sys::signal::Signal;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: keelctl [--socket PATH] [--json] <command> [args]

commands:
  list                     the containers (onboot, services, onshutdown) and their state
  ps NAME                  the processes of a running container
  logs [-f] [-n N] NAME    a container's recent output (-f: follow, -n: last N lines)
  start NAME               start a service that does not run
  stop NAME                stop a service (SIGTERM, SIGKILL after its grace period), keep it down
  restart NAME             stop a service if it runs, then start it
  kill [-s SIG] NAME       send a signal (default TERM) to a container's process
  exec NAME CMD [ARG...]   run CMD inside a running container
  timeline                 the boot timeline
  poweroff | reboot        the orderly shutdown, then power off or reboot
  help                     this text

--json prints JSON instead of tables (for logs -f: one object per line).";

/// How often `logs -f` asks for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);
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

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    /// One request, one answer.
    Call(Request),
    /// `logs`, possibly following.
    Logs {
        id: String,
        lines: Option<usize>,
        follow: bool,
    },
    Exec {
        id: String,
        argv: Vec<String>,
    },
}

#[derive(Debug)]
struct Options {
    socket: PathBuf,
    json: bool,
    command: Command,
}

fn usage_err(what: impl std::fmt::Display) -> String {
    format!("{what}\n{USAGE}")
}

/// A signal by name (`TERM`, `SIGTERM`, case-insensitive) or number.
fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| format!("unknown signal {s}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("unknown signal {s}"))
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
    let command = command(&words)?;
    Ok(Options {
        socket,
        json,
        command,
    })
}

fn command(words: &[String]) -> Result<Command, String> {
    let Some((name, rest)) = words.split_first() else {
        return Err(USAGE.to_owned());
    };
    let one = |what: &str| -> Result<String, String> {
        match rest {
            [id] => Ok(id.clone()),
            [] => Err(usage_err(format!("{what} needs a container name"))),
            [_, extra, ..] => Err(usage_err(format!("unexpected argument {extra}"))),
        }
    };
    let none = || match rest.first() {
        Some(extra) => Err(usage_err(format!("unexpected argument {extra}"))),
        None => Ok(()),
    };
    Ok(match name.as_str() {
        "help" => Command::Help,
        "list" => none().map(|()| Command::Call(Request::List))?,
        "timeline" => none().map(|()| Command::Call(Request::Timeline))?,
        "poweroff" => none().map(|()| Command::Call(Request::Poweroff))?,
        "reboot" => none().map(|()| Command::Call(Request::Reboot))?,
        "ps" => Command::Call(Request::Ps { id: one("ps")? }),
        "start" => Command::Call(Request::Start { id: one("start")? }),
        "stop" => Command::Call(Request::Stop { id: one("stop")? }),
        "restart" => Command::Call(Request::Restart {
            id: one("restart")?,
        }),
        "kill" => {
            let (signal, rest) = match rest {
                [flag, sig, rest @ ..] if flag == "-s" || flag == "--signal" => {
                    (parse_signal(sig)?, rest)
                }
                rest => (Signal::SIGTERM as i32, rest),
            };
            match rest {
                [id] => Command::Call(Request::Kill {
                    id: id.clone(),
                    signal,
                }),
                _ => return Err(usage_err("kill needs one container name")),
            }
        }
        "logs" => {
            let (mut lines, mut follow, mut id) = (None, false, None);
            let mut it = rest.iter();
            while let Some(w) = it.next() {
                match w.as_str() {
                    "-f" | "--follow" => follow = true,
                    "-n" | "--lines" => {
                        let n = it.next().map(String::as_str).unwrap_or_default();
                        lines = Some(
                            n.parse::<usize>()
                                .map_err(|_| usage_err(format!("invalid line count {n}")))?,
                        );
                    }
                    other if id.is_none() => id = Some(other.to_owned()),
                    other => return Err(usage_err(format!("unexpected argument {other}"))),
                }
            }
            Command::Logs {
                id: id.ok_or_else(|| usage_err("logs needs a container name"))?,
                lines,
                follow,
            }
        }
        "exec" => match rest {
            [id, argv @ ..] if !argv.is_empty() => Command::Exec {
                id: id.clone(),
                argv: argv.to_vec(),
            },
            _ => return Err(usage_err("exec needs a container name and a command")),
        },
        other => return Err(usage_err(format!("unknown command {other}"))),
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
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Call(request) => {
            let out = render(call(&opts, request)?, opts.json)?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id, lines, follow } => {
            logs(&opts, id, *lines, *follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { id, argv } => exec(&opts, id, argv),
    }
}

fn render(response: Response, json: bool) -> Result<String, String> {
    Ok(match response {
        Response::Error { message } => return Err(message),
        Response::List { containers } if json => to_json(&containers)?,
        Response::List { containers } => list_table(&containers),
        Response::Timeline { steps } if json => to_json(&steps)?,
        Response::Timeline { steps } => timeline_table(&steps),
        Response::Ps { processes } if json => to_json(&processes)?,
        Response::Ps { processes } => ps_table(&processes),
        Response::Logs { lines, .. } if json => to_json(&lines)?,
        Response::Logs { lines, .. } => lines.iter().map(|l| format!("{}\n", l.line)).collect(),
        Response::Done { message } if json => to_json(&serde_json::json!({ "message": message }))?,
        Response::Done { message } => format!("{message}\n"),
    })
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
        for l in &got {
            let text = if opts.json {
                serde_json::to_string(l).map_err(|e| e.to_string())?
            } else {
                l.line.clone()
            };
            // A closed pipe (`keelctl logs -f x | head`) ends the command quietly.
            if writeln!(out, "{text}").is_err() {
                return Ok(());
            }
        }
        if out.flush().is_err() || !follow {
            return Ok(());
        }
        after = Some(next);
        std::thread::sleep(FOLLOW_INTERVAL);
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
        println!("{}", serde_json::json!({ "id": id, "exit_status": code }));
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

fn chain(e: &ClientError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

/// Columns padded like `runc list` (text/tabwriter: minimum width 12, padding 3).
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let widest = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count());
            widest.max().unwrap_or(0).saturating_add(3).max(12)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list_table(containers: &[ContainerInfo]) -> String {
    let mut rows = vec![
        [
            "ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER", "RESTARTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in containers {
        let status = match (c.status.as_str(), c.exit_status, &c.exit_reason) {
            ("running", ..) | (_, None, _) => c.status.clone(),
            (_, Some(code), Some(reason)) => format!("{} ({code}, {reason})", c.status),
            ("stopped" | "failed", Some(code), None) => format!("{} ({code})", c.status),
            _ => c.status.clone(),
        };
        rows.push(vec![
            c.id.clone(),
            c.pid.to_string(),
            status,
            c.bundle.clone(),
            c.created.clone(),
            c.owner.clone(),
            c.restarts.to_string(),
        ]);
    }
    table(&rows)
}

fn ps_table(processes: &[ProcessInfo]) -> String {
    let mut rows = vec![["PID", "COMMAND"].map(String::from).to_vec()];
    for p in processes {
        rows.push(vec![p.pid.to_string(), p.command.clone()]);
    }
    table(&rows)
}

fn timeline_table(steps: &[TimelineStep]) -> String {
    let mut rows = vec![["BOOTTIME", "DELTA", "STEP"].map(String::from).to_vec()];
    let mut previous = steps.first().map_or(0, |s| s.boottime_ms);
    for s in steps {
        let delta = s.boottime_ms.saturating_sub(previous);
        previous = s.boottime_ms;
        rows.push(vec![
            format!("{}.{:03}s", s.boottime_ms / 1000, s.boottime_ms % 1000),
            format!("+{}.{:03}s", delta / 1000, delta % 1000),
            s.step.clone(),
        ]);
    }
    table(&rows)
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
    fn parses_container_commands() {
        let cmd = |a: &[&str]| parse(&args(a)).map(|o| o.command);
        assert_eq!(
            cmd(&["stop", "sshd"]).unwrap(),
            Command::Call(Request::Stop { id: "sshd".into() })
        );
        assert!(
            cmd(&["stop"])
                .unwrap_err()
                .contains("needs a container name")
        );
        assert!(cmd(&["restart", "a", "b"]).is_err());
        assert_eq!(
            cmd(&["kill", "-s", "kill", "web"]).unwrap(),
            Command::Call(Request::Kill {
                id: "web".into(),
                signal: 9
            })
        );
        assert_eq!(
            cmd(&["kill", "web"]).unwrap(),
            Command::Call(Request::Kill {
                id: "web".into(),
                signal: 15
            })
        );
        assert_eq!(
            cmd(&["kill", "-s", "SIGHUP", "web"]).unwrap(),
            Command::Call(Request::Kill {
                id: "web".into(),
                signal: 1
            })
        );
        assert!(cmd(&["kill", "-s", "NOPE", "web"]).is_err());
        assert!(cmd(&["kill", "-s", "999", "web"]).is_err());
        assert_eq!(
            cmd(&["logs", "-f", "-n", "5", "web"]).unwrap(),
            Command::Logs {
                id: "web".into(),
                lines: Some(5),
                follow: true
            }
        );
        assert!(cmd(&["logs", "-n", "many", "web"]).is_err());
        assert_eq!(
            cmd(&["exec", "web", "ls", "-l", "--json"]).unwrap(),
            Command::Exec {
                id: "web".into(),
                argv: args(&["ls", "-l", "--json"])
            }
        );
        assert_eq!(
            cmd(&["--json", "exec", "web", "--", "-x"]).unwrap(),
            Command::Exec {
                id: "web".into(),
                argv: args(&["-x"])
            }
        );
        assert!(cmd(&["exec", "web"]).is_err());
        assert_eq!(
            cmd(&["poweroff"]).unwrap(),
            Command::Call(Request::Poweroff)
        );
    }

    #[test]
    fn renders_each_answer() {
        let ps = Response::Ps {
            processes: vec![ProcessInfo {
                pid: 42,
                command: "sleep 100".into(),
            }],
        };
        let out = render(ps.clone(), false).unwrap();
        assert!(out.lines().nth(1).unwrap().starts_with("42 "), "{out}");
        assert!(out.contains("sleep 100"));
        assert!(render(ps, true).unwrap().contains("\"pid\": 42"));
        let done = Response::Done {
            message: "stopping web".into(),
        };
        assert_eq!(render(done, false).unwrap(), "stopping web\n");
        assert_eq!(
            render(Response::error("no container named x"), false).unwrap_err(),
            "no container named x"
        );
    }

    #[test]
    fn list_renders_aligned_columns() {
        let c = ContainerInfo {
            id: "000-dhcpcd-long-name".into(),
            pid: 0,
            status: "stopped".into(),
            bundle: "/containers/onboot/000-dhcpcd-long-name".into(),
            created: "2026-11-23T06:11:09Z".into(),
            owner: "root".into(),
            restarts: 0,
            kind: "onboot".into(),
            exit_status: Some(1),
            exit_reason: None,
            ready: false,
        };
        let out = list_table(&[c]);
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID                     PID"));
        assert!(lines[1].starts_with("000-dhcpcd-long-name   0 "));
        assert!(lines[1].contains("stopped (1)"));
        let pid_col = lines[0].find("PID").unwrap();
        assert_eq!(&lines[1][pid_col..pid_col + 1], "0");
    }

    #[test]
    fn timeline_shows_deltas() {
        let steps = [
            TimelineStep {
                boottime_ms: 2100,
                step: "init".into(),
            },
            TimelineStep {
                boottime_ms: 2350,
                step: "mounts".into(),
            },
        ];
        let out = timeline_table(&steps);
        assert!(out.contains("2.350s"), "{out}");
        assert!(out.contains("+0.250s"), "{out}");
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
