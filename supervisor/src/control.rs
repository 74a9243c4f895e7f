//! The answers to control requests: what PID 1's control-socket handler calls, kept here so
//! every request is testable without a socket or root.

use crate::exec::Execs;
use crate::lifecycle::{Now, Status, Supervisor};
use crate::procs;
use crate::protocol::{InitUsage, LogLine, Request, Response, TimelineStep, Usage};
use keel_guest::chain;
use nix::sys::signal::Signal;
use std::path::Path;

/// Most bytes of log text in one `logs` answer: the oldest lines asked for are left out beyond
/// it, so the answer stays well inside [`crate::server::MAX_RESPONSE`] even when every byte
/// needs JSON escaping (six bytes for one). The ring holds up to 200 lines of 4 KiB.
pub const MAX_LOG_BYTES: usize = 512 * 1024;

/// What PID 1 must do after answering, besides sending the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    PowerOff,
    Reboot,
}

/// What a request may read besides the supervisor.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// `/proc`.
    pub proc_root: &'a Path,
    /// `/sys/fs/cgroup`.
    pub cgroup_root: &'a Path,
    pub timeline: &'a [TimelineStep],
    /// Bytes PID 1 holds for control clients (for `top`).
    pub buffered: usize,
}

/// Answers `request`; a power request is returned for PID 1 to begin the shutdown.
pub fn serve(
    sup: &mut Supervisor,
    execs: &mut Execs,
    request: Request,
    host: Host<'_>,
    now: Now,
) -> (Response, Option<PowerRequest>) {
    let done = |message: String| Response::Done { message };
    let response = match request {
        Request::List => Response::List {
            containers: sup.list(),
        },
        Request::Timeline => Response::Timeline {
            steps: host.timeline.to_vec(),
        },
        Request::Poweroff => {
            return (done("powering off".into()), Some(PowerRequest::PowerOff));
        }
        Request::Reboot => return (done("rebooting".into()), Some(PowerRequest::Reboot)),
        Request::Ps { id } => match sup.find(&id) {
            Err(e) => Response::error(e.to_string()),
            Ok(index) => match sup.records()[index]
                .pid
                .filter(|_| sup.records()[index].shim_pid.is_some())
            {
                None => Response::error(format!("{id} is not running")),
                Some(pid) => match procs::processes(pid, host.proc_root, host.cgroup_root) {
                    Ok(processes) => Response::Ps { processes },
                    Err(e) => Response::error(chain(&e)),
                },
            },
        },
        Request::Logs { id, lines, after } => match sup.find(&id) {
            Err(e) => Response::error(e.to_string()),
            Ok(index) => {
                let ring = &sup.records()[index].logs;
                let tail = ring.tail(after, lines);
                // The newest lines that fit in the budget.
                let mut budget = MAX_LOG_BYTES;
                let keep = tail
                    .iter()
                    .rev()
                    .take_while(|(_, line)| match budget.checked_sub(line.len()) {
                        Some(left) => {
                            budget = left;
                            true
                        }
                        None => false,
                    })
                    .count();
                Response::Logs {
                    lines: tail[tail.len() - keep..]
                        .iter()
                        .map(|&(seq, line)| LogLine {
                            seq,
                            line: line.to_owned(),
                        })
                        .collect(),
                    next: ring.next_seq(),
                }
            }
        },
        Request::Top => Response::Top {
            init: init_usage(host),
            containers: usage(sup, host.cgroup_root),
        },
        Request::Exec { id, command } => match sup.find(&id) {
            Err(e) => Response::error(e.to_string()),
            Ok(_) if command.is_empty() => Response::error("exec needs a command"),
            Ok(index) if sup.records()[index].status != Status::Running => {
                Response::error(format!("{id} is not running"))
            }
            Ok(_) => match execs.start(&id, command) {
                Ok(exec) => Response::Exec { exec },
                Err(e) => Response::error(e.to_string()),
            },
        },
        Request::ExecOutput { exec, after } => match execs.read(exec, after) {
            Ok(c) => Response::ExecOutput {
                output: c.output,
                next: c.next,
                dropped: c.dropped,
                exit_status: c.exit_status,
            },
            Err(e) => Response::error(e.to_string()),
        },
        Request::ExecKill { exec, signal } => match Signal::try_from(signal) {
            Err(_) => Response::error(format!("unknown signal {signal}")),
            Ok(sig) => reply(
                execs.kill(exec, signal),
                format!("sent {sig} to exec {exec}"),
            ),
        },
        Request::Start { id } => reply(sup.start_service(&id), format!("starting {id}")),
        Request::Stop { id } => reply(sup.stop_service(&id, now), format!("stopping {id}")),
        Request::Restart { id } => reply(sup.restart_service(&id, now), format!("restarting {id}")),
        Request::Kill { id, signal } => match Signal::try_from(signal) {
            Err(_) => Response::error(format!("unknown signal {signal}")),
            Ok(sig) => reply(sup.kill(&id, sig), format!("sent {sig} to {id}")),
        },
    };
    (response, None)
}

/// What each container's cgroup says about it.
fn usage(sup: &Supervisor, cgroup_root: &Path) -> Vec<Usage> {
    sup.records()
        .iter()
        .zip(sup.list())
        .map(|(r, info)| {
            let dir = r
                .cgroups_path
                .as_deref()
                .map(|p| cgroup_root.join(p.trim_start_matches('/')));
            let read = |file: &str| -> Option<String> {
                let dir = dir.as_ref()?;
                procs::read_small(&dir.join(file)).ok()
            };
            Usage {
                id: info.id,
                status: info.status,
                restarts: info.restarts,
                cpu_usec: read("cpu.stat").and_then(|t| field(&t, "usage_usec")),
                memory_bytes: read("memory.current").and_then(|t| t.trim().parse().ok()),
                pids: read("pids.current").and_then(|t| t.trim().parse().ok()),
            }
        })
        .collect()
}

/// PID 1's own memory from `smaps_rollup` (kB there), and what it buffers for clients.
fn init_usage(host: Host<'_>) -> InitUsage {
    let rollup = procs::read_small(&host.proc_root.join("self/smaps_rollup")).unwrap_or_default();
    let kib = |name: &str| field(&rollup, name).map_or(0, |k| k.saturating_mul(1024));
    InitUsage {
        rss_bytes: kib("Rss:"),
        pss_bytes: kib("Pss:"),
        buffered_bytes: u64::try_from(host.buffered).unwrap_or(u64::MAX),
    }
}

/// The number after `name` on the line that starts with it (`usage_usec 1234`, `Rss:  12 kB`).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn reply<E: std::error::Error>(r: Result<(), E>, message: String) -> Response {
    match r {
        Ok(()) => Response::Done { message },
        Err(e) => Response::error(chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundles::{Bundle, Kind};
    use crate::lifecycle::{Action, Settings};
    use keel_bundle::{Runtime, ShimEvent};
    use std::path::PathBuf;

    fn system() -> Supervisor {
        let mut s = Supervisor::new(Settings::default());
        s.add(Bundle {
            id: "web".into(),
            kind: Kind::Service,
            dir: PathBuf::from("/containers/services/web"),
            runtime: Ok(Runtime::default()),
            cgroups_path: None,
        });
        s.boot();
        s.take_actions();
        s
    }

    fn ask(s: &mut Supervisor, r: Request) -> (Response, Option<PowerRequest>) {
        let host = Host {
            proc_root: Path::new("/nonexistent/proc"),
            cgroup_root: Path::new("/nonexistent/cgroup"),
            timeline: &[],
            buffered: 0,
        };
        serve(s, &mut Execs::default(), r, host, Now::system())
    }

    fn error(r: (Response, Option<PowerRequest>)) -> String {
        match r {
            (Response::Error { message }, None) => message,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let mut s = system();
        let id = || "ghost".to_string();
        for r in [
            Request::Ps { id: id() },
            Request::Logs {
                id: id(),
                lines: None,
                after: None,
            },
            Request::Start { id: id() },
            Request::Stop { id: id() },
            Request::Restart { id: id() },
            Request::Kill {
                id: id(),
                signal: 9,
            },
        ] {
            assert_eq!(error(ask(&mut s, r)), "no container named ghost");
        }
        assert_eq!(
            error(ask(
                &mut s,
                Request::Kill {
                    id: "web".into(),
                    signal: 4242
                }
            )),
            "unknown signal 4242"
        );
    }

    #[test]
    fn container_requests_reach_the_supervisor() {
        let mut s = system();
        s.spawned(0, 10, Now::system());
        s.shim_event(10, ShimEvent::Started { pid: 11 });
        for i in 0..5 {
            s.output(0, &format!("line {i}"));
        }
        let (r, _) = ask(
            &mut s,
            Request::Logs {
                id: "web".into(),
                lines: Some(2),
                after: None,
            },
        );
        let Response::Logs { lines, next } = r else {
            panic!("{r:?}")
        };
        assert_eq!(next, 5);
        let text: Vec<_> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["line 3", "line 4"]);
        // Ps reads /proc: here it does not exist, and the error says what was read.
        let msg = error(ask(&mut s, Request::Ps { id: "web".into() }));
        assert!(
            msg.starts_with("cannot read the cgroup of process 11"),
            "{msg}"
        );
        let (r, _) = ask(
            &mut s,
            Request::Kill {
                id: "web".into(),
                signal: 1,
            },
        );
        assert_eq!(
            r,
            Response::Done {
                message: "sent SIGHUP to web".into()
            }
        );
        assert!(s.take_actions().contains(&Action::Signal {
            pid: 11,
            signal: Signal::SIGHUP
        }));
        let (r, _) = ask(&mut s, Request::Stop { id: "web".into() });
        assert!(matches!(r, Response::Done { .. }));
        let (r, power) = ask(&mut s, Request::Reboot);
        assert!(matches!(r, Response::Done { .. }));
        assert_eq!(power, Some(PowerRequest::Reboot));
        assert_eq!(
            ask(&mut s, Request::Poweroff).1,
            Some(PowerRequest::PowerOff)
        );
        let (r, _) = ask(&mut s, Request::List);
        assert!(matches!(r, Response::List { containers } if containers[0].id == "web"));
    }

    #[test]
    fn a_logs_answer_keeps_the_newest_lines_within_its_budget() {
        let mut s = system();
        let line = "\u{1}".repeat(4000);
        for _ in 0..200 {
            s.output(0, &line);
        }
        let (r, _) = ask(
            &mut s,
            Request::Logs {
                id: "web".into(),
                lines: None,
                after: None,
            },
        );
        let Response::Logs { lines, next } = r else {
            panic!("{r:?}")
        };
        assert_eq!(next, 200);
        assert_eq!(lines.len(), MAX_LOG_BYTES / 4000);
        assert_eq!(lines.last().map(|l| l.seq), Some(199));
        let encoded = serde_json::to_vec(&Response::Logs { lines, next }).unwrap();
        assert!(
            encoded.len() < crate::server::MAX_RESPONSE,
            "{}",
            encoded.len()
        );
    }

    #[test]
    fn top_reads_cgroups_and_smaps_rollup() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cgroup/keel/services/web");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(cg.join("memory.current"), "4096\n").unwrap();
        std::fs::write(cg.join("pids.current"), "3\n").unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::write(
            dir.path().join("proc/self/smaps_rollup"),
            "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:                1200 kB\nPss:                 800 kB\n",
        )
        .unwrap();
        let mut s = Supervisor::new(Settings::default());
        s.add(Bundle {
            kind: Kind::Service,
            id: "web".into(),
            dir: PathBuf::from("/containers/services/web"),
            runtime: Ok(Runtime::default()),
            cgroups_path: Some("/keel/services/web".into()),
        });
        let host = Host {
            proc_root: &dir.path().join("proc"),
            cgroup_root: &dir.path().join("cgroup"),
            timeline: &[],
            buffered: 10,
        };
        let (r, _) = serve(
            &mut s,
            &mut Execs::default(),
            Request::Top,
            host,
            Now::system(),
        );
        let Response::Top { init, containers } = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (init.rss_bytes, init.pss_bytes, init.buffered_bytes),
            (1200 * 1024, 800 * 1024, 10)
        );
        assert_eq!(containers.len(), 1);
        let web = &containers[0];
        assert_eq!(
            (web.cpu_usec, web.memory_bytes, web.pids),
            (Some(1500), Some(4096), Some(3))
        );
    }

    #[test]
    fn exec_needs_a_running_container() {
        let mut s = system();
        let mut execs = Execs::default();
        let host = Host {
            proc_root: Path::new("/nonexistent/proc"),
            cgroup_root: Path::new("/nonexistent/cgroup"),
            timeline: &[],
            buffered: 0,
        };
        let exec = |s: &mut Supervisor, e: &mut Execs, id: &str, argv: &[&str]| {
            let r = Request::Exec {
                id: id.into(),
                command: argv.iter().map(|a| a.to_string()).collect(),
            };
            serve(s, e, r, host, Now::system()).0
        };
        let r = exec(&mut s, &mut execs, "nope", &["id"]);
        assert!(
            matches!(r, Response::Error { ref message } if message.contains("nope")),
            "{r:?}"
        );
        let first = s.list()[0].id.clone();
        let r = exec(&mut s, &mut execs, &first, &["id"]);
        assert!(
            matches!(r, Response::Error { ref message } if message.contains("not running")),
            "{r:?}"
        );
        let r = exec(&mut s, &mut execs, &first, &[]);
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
        assert!(execs.take_pending().is_empty());
        let r = serve(
            &mut s,
            &mut execs,
            Request::ExecOutput { exec: 5, after: 0 },
            host,
            Now::system(),
        )
        .0;
        assert!(
            matches!(r, Response::Error { ref message } if message.contains("no exec 5")),
            "{r:?}"
        );
    }
}
