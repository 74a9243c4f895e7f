//! `keelctl`: the console client of keel's supervisor. Talks to PID 1 over the control socket.

use keel_supervisor::client::{self, ClientError};
use keel_supervisor::{ContainerInfo, Request, Response, TimelineStep};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: keelctl [--socket PATH] <command> [--json]

commands:
  list       the containers (onboot, services, onshutdown) and their state
  timeline   the boot timeline
  help       this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("keelctl: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    socket: PathBuf,
    command: String,
    json: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut socket = PathBuf::from(keel_bundle::CONTROL_SOCKET);
    let mut command = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--socket" => {
                socket = it
                    .next()
                    .ok_or_else(|| format!("--socket needs a path\n{USAGE}"))?
                    .into();
            }
            "-h" | "--help" => command = Some("help".to_owned()),
            a if a.starts_with('-') => return Err(format!("unknown option {a}\n{USAGE}")),
            a if command.is_none() => command = Some(a.to_owned()),
            a => return Err(format!("unexpected argument {a}\n{USAGE}")),
        }
    }
    let command = command.ok_or_else(|| USAGE.to_owned())?;
    Ok(Options {
        socket,
        command,
        json,
    })
}

fn run(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    let request = match opts.command.as_str() {
        "help" => {
            println!("{USAGE}");
            return Ok(());
        }
        "list" => Request::List,
        "timeline" => Request::Timeline,
        other => return Err(format!("unknown command {other}\n{USAGE}")),
    };
    let response = client::call(&opts.socket, &request).map_err(|e| chain(&e))?;
    let out = match response {
        Response::Error { message } => return Err(message),
        Response::List { containers } if opts.json => to_json(&containers)?,
        Response::List { containers } => list_table(&containers),
        Response::Timeline { steps } if opts.json => to_json(&steps)?,
        Response::Timeline { steps } => timeline_table(&steps),
    };
    print!("{out}");
    Ok(())
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
        let status = match (c.status.as_str(), c.exit_status) {
            ("stopped" | "failed", Some(code)) => format!("{} ({code})", c.status),
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
        assert_eq!((o.command.as_str(), o.json), ("list", true));
        assert_eq!(o.socket, PathBuf::from(keel_bundle::CONTROL_SOCKET));
        let o = parse(&args(&["--socket", "/tmp/x", "timeline"])).unwrap();
        assert_eq!(o.socket, PathBuf::from("/tmp/x"));
        assert!(!o.json);
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["list", "extra"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
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
    }
}
