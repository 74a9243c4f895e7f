//! The answers to control requests: what PID 1's control-socket handler calls, kept here so
//! every request is testable without a socket or root.

use crate::lifecycle::{Now, Supervisor};
use crate::procs;
use crate::protocol::{LogLine, Request, Response, TimelineStep};
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
}

/// Answers `request`; a power request is returned for PID 1 to begin the shutdown.
pub fn serve(
    sup: &mut Supervisor,
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

fn reply<E: std::error::Error>(r: Result<(), E>, message: String) -> Response {
    match r {
        Ok(()) => Response::Done { message },
        Err(e) => Response::error(chain(&e)),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
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
        };
        serve(s, r, host, Now::system())
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
}
