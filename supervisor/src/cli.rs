//! The command words shared by every client of PID 1 — `keelctl` in the guest, the console
//! prompt PID 1 serves, and `keel ctl` on the host — and how their answers print: one parser
//! and one renderer, so a verb means and shows the same everywhere.

use crate::protocol::{
    ContainerInfo, InitUsage, LogLine, ProcessInfo, Request, Response, TimelineStep, Usage,
};
use nix::sys::signal::Signal;
use std::time::Duration;

/// How often `logs -f` asks for new lines.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);
/// How often a running `exec` is asked for output.
pub const EXEC_INTERVAL: Duration = Duration::from_millis(100);
/// The time between the two samples of a one-shot `top` (CPU is measured across it).
pub const TOP_SAMPLE: Duration = Duration::from_secs(1);

/// What `exec --json` prints when the command ended.
#[derive(Debug, serde::Serialize)]
pub struct ExecSummary<'a> {
    pub id: &'a str,
    pub exit_status: i32,
}

/// [`ExecSummary`] as one line of JSON.
pub fn exec_summary(id: &str, exit_status: i32) -> String {
    serde_json::to_string(&ExecSummary { id, exit_status })
        .unwrap_or_else(|_| format!("{{\"exit_status\":{exit_status}}}"))
}

/// `top` as a client prints it from two samples `elapsed` apart (CPU is the share of one CPU
/// between them): the table, or the second sample as JSON.
pub fn top_view(
    init: InitUsage,
    before: &[Usage],
    now: Vec<Usage>,
    elapsed: std::time::Duration,
    json: bool,
) -> Result<String, String> {
    if json {
        return render(
            Response::Top {
                init,
                containers: now,
            },
            true,
        );
    }
    Ok(top_table(&init, &now, Some((before, elapsed))))
}

/// One line of `logs` as a client prints it: JSON, or the container's text, escaped
/// ([`sanitize`]) when it goes to a terminal (a file or a pipe gets what the container wrote).
pub fn log_line(line: &LogLine, json: bool, terminal: bool) -> Result<String, String> {
    if json {
        serde_json::to_string(line).map_err(|e| e.to_string())
    } else if terminal {
        Ok(sanitize(&line.line).into_owned())
    } else {
        Ok(line.line.clone())
    }
}

/// The commands, as every client's help lists them.
pub const COMMANDS: &str = "commands:
  list                     the containers (onboot, services, onshutdown) and their state
  ps NAME                  the processes of a running container
  logs [-f] [-n N] NAME    a container's recent output (-f: follow, -n: last N lines)
  top                      CPU, memory and processes per container, and PID 1's memory
  start NAME               start a service that does not run
  stop NAME                stop a service (SIGTERM, SIGKILL after its grace period), keep it down
  restart NAME             stop a service if it runs, then start it
  kill [-s SIG] NAME       send a signal (default TERM) to a container's process
  exec NAME CMD [ARG...]   run CMD inside a running container, with the container's privileges
  timeline                 the boot timeline
  version                  the A/B slots: the version running, the other slot's, the next boot
  update FILE|URL          write the version FILE (or http:// URL) holds (an --ab disk image)
                           into the other slot, to be tried on the next boot
  poweroff | reboot        the orderly shutdown, then power off or reboot
  help                     this text";

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// One request, one answer.
    Call(Request),
    /// `logs`, possibly following.
    Logs {
        id: String,
        lines: Option<usize>,
        follow: bool,
    },
    /// `top`: two samples, CPU use between them.
    Top,
    Exec {
        id: String,
        argv: Vec<String>,
    },
    /// `version`: read from the boot disk by keelctl itself, not asked of PID 1.
    Version,
    /// `update FILE`: written to the boot disk by keelctl itself.
    Update {
        source: std::path::PathBuf,
    },
}

/// A signal by name (`TERM`, `SIGTERM`, case-insensitive) or number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
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

/// The words a client passes on: the verb, its options and arguments (`--` after `exec NAME`
/// ends the options). Errors are short, for the caller to follow with its usage.
pub fn parse(words: &[String]) -> Result<Command, String> {
    let Some((name, rest)) = words.split_first() else {
        return Err("no command given".to_owned());
    };
    let one = |what: &str| -> Result<String, String> {
        match rest {
            [id] => Ok(id.clone()),
            [] => Err(format!("{what} needs a container name")),
            [_, extra, ..] => Err(format!("unexpected argument {extra}")),
        }
    };
    let none = || match rest.first() {
        Some(extra) => Err(format!("unexpected argument {extra}")),
        None => Ok(()),
    };
    Ok(match name.as_str() {
        "help" => Command::Help,
        "list" => none().map(|()| Command::Call(Request::List))?,
        "timeline" => none().map(|()| Command::Call(Request::Timeline))?,
        "top" => none().map(|()| Command::Top)?,
        "version" => none().map(|()| Command::Version)?,
        "update" => match rest {
            [source] => Command::Update {
                source: source.into(),
            },
            [] => return Err("update needs the file of the new version".to_owned()),
            [_, extra, ..] => return Err(format!("unexpected argument {extra}")),
        },
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
                _ => return Err("kill needs one container name".to_owned()),
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
                                .map_err(|_| format!("invalid line count {n}"))?,
                        );
                    }
                    other if id.is_none() => id = Some(other.to_owned()),
                    other => return Err(format!("unexpected argument {other}")),
                }
            }
            Command::Logs {
                id: id.ok_or_else(|| "logs needs a container name".to_owned())?,
                lines,
                follow,
            }
        }
        "exec" => match rest {
            [id, sep, argv @ ..] if sep == "--" && !argv.is_empty() => Command::Exec {
                id: id.clone(),
                argv: argv.to_vec(),
            },
            [id, argv @ ..] if !argv.is_empty() => Command::Exec {
                id: id.clone(),
                argv: argv.to_vec(),
            },
            _ => return Err("exec needs a container name and a command".to_owned()),
        },
        other => return Err(format!("unknown command {other}")),
    })
}

/// How an answer prints: a table or text, or pretty JSON; an error answer is `Err`.
pub fn render(response: Response, json: bool) -> Result<String, String> {
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
        Response::Top { init, containers } if json => {
            to_json(&serde_json::json!({ "init": init, "containers": containers }))?
        }
        Response::Top { init, containers } => top_table(&init, &containers, None),
        Response::Exec { exec } if json => to_json(&serde_json::json!({ "exec": exec }))?,
        Response::Exec { exec } => format!("exec {exec} started\n"),
        Response::ExecOutput { output, .. } if !json => output,
        r @ Response::ExecOutput { .. } => to_json(&r)?,
        Response::Done { message } if json => to_json(&serde_json::json!({ "message": message }))?,
        Response::Done { message } => format!("{message}\n"),
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

/// Columns padded like `runc list` (text/tabwriter: minimum width 12, padding 3).
pub fn table(rows: &[Vec<String>]) -> String {
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

pub fn list_table(containers: &[ContainerInfo]) -> String {
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

pub fn ps_table(processes: &[ProcessInfo]) -> String {
    let mut rows = vec![["PID", "COMMAND"].map(String::from).to_vec()];
    for p in processes {
        rows.push(vec![p.pid.to_string(), p.command.clone()]);
    }
    table(&rows)
}

pub fn timeline_table(steps: &[TimelineStep]) -> String {
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

/// `top`'s table. With an earlier sample of the same containers and the time between the two,
/// CPU is shown as a share of one CPU over that time; without, as CPU time used since start.
pub fn top_table(
    init: &InitUsage,
    containers: &[Usage],
    earlier: Option<(&[Usage], std::time::Duration)>,
) -> String {
    let mut rows = vec![
        ["ID", "STATUS", "CPU", "MEMORY", "PIDS", "RESTARTS"]
            .map(String::from)
            .to_vec(),
    ];
    let unknown = || "-".to_owned();
    for u in containers {
        let cpu = match (u.cpu_usec, earlier) {
            (Some(now), Some((before, elapsed))) => {
                let then = before
                    .iter()
                    .find(|b| b.id == u.id)
                    .and_then(|b| b.cpu_usec)
                    .unwrap_or(0);
                let micros = u128::from(now.saturating_sub(then));
                let window = elapsed.as_micros().max(1);
                // Tenths of a percent, in integers.
                let permille = micros.saturating_mul(1000) / window;
                format!("{}.{}%", permille / 10, permille % 10)
            }
            (Some(now), None) => format!("{}.{:03}s", now / 1_000_000, now % 1_000_000 / 1000),
            (None, _) => unknown(),
        };
        rows.push(vec![
            u.id.clone(),
            u.status.clone(),
            cpu,
            u.memory_bytes.map_or_else(unknown, bytes),
            u.pids.map_or_else(unknown, |p| p.to_string()),
            u.restarts.to_string(),
        ]);
    }
    let mut out = table(&rows);
    out.push_str(&format!(
        "PID 1: {} resident ({} proportional), {} buffered for control clients\n",
        bytes(init.rss_bytes),
        bytes(init.pss_bytes),
        bytes(init.buffered_bytes)
    ));
    out
}

/// `text` with every control character but newline and tab shown as `\xNN` (C0, DEL and the
/// C1 range): what a container wrote cannot move the cursor, retitle or reprogram the
/// operator's terminal.
pub fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c != '\n' && c != '\t' && c.is_control();
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Bytes in binary units with one decimal (`12.5 MiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scaled = u128::from(n) * 10 / 1024;
    while scaled >= 10 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    format!("{}.{} {}", scaled / 10, scaled % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_container_commands() {
        let cmd = |a: &[&str]| parse(&args(a));
        assert_eq!(cmd(&["version"]).unwrap(), Command::Version);
        assert!(cmd(&["version", "x"]).is_err());
        assert_eq!(
            cmd(&["update", "/dev/vdb"]).unwrap(),
            Command::Update {
                source: "/dev/vdb".into()
            }
        );
        assert!(cmd(&["update"]).unwrap_err().contains("needs the file"));
        assert!(cmd(&["update", "a", "b"]).is_err());
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
            cmd(&["exec", "web", "--", "-x"]).unwrap(),
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
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            sanitize("\x1b]0;title\x07\x1b[2J\r\u{9b}31m\x7f"),
            "\\x1b]0;title\\x07\\x1b[2J\\x0d\\x9b31m\\x7f"
        );
    }

    #[test]
    fn top_shows_shares_and_units() {
        let usage = |cpu| Usage {
            id: "web".into(),
            status: "running".into(),
            restarts: 2,
            cpu_usec: Some(cpu),
            memory_bytes: Some(3 * 1024 * 1024 + 512 * 1024),
            pids: Some(4),
        };
        let init = InitUsage {
            rss_bytes: 2048,
            pss_bytes: 1024,
            buffered_bytes: 0,
        };
        let before = [usage(1_000_000)];
        let out = top_table(
            &init,
            &[usage(1_250_000)],
            Some((&before, std::time::Duration::from_secs(1))),
        );
        assert!(out.contains("25.0%"), "{out}");
        assert!(out.contains("3.5 MiB"), "{out}");
        assert!(out.contains("PID 1: 2.0 KiB resident"), "{out}");
        let out = top_table(&init, &[usage(1_250_000)], None);
        assert!(out.contains("1.250s"), "{out}");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
