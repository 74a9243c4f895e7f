//! The control protocol spoken over [`keel_bundle::CONTROL_SOCKET`]: one JSON [`Request`] per
//! line from `keelctl`, one JSON [`Response`] per line back. Shared by the server (in PID 1) and
//! the client so both sides always agree on the shapes.

use serde::{Deserialize, Serialize};

/// Longest request line the server accepts (bytes, newline excluded). Longer requests get an
/// error response and the connection is closed.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every container the supervisor knows, in boot order.
    List,
    /// The boot timeline recorded by PID 1.
    Timeline,
    /// The processes in a running container's cgroup.
    Ps { id: String },
    /// A container's recent output: lines numbered from `after` on (all kept lines when
    /// absent), at most the last `lines` of them.
    Logs {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// Start a service that does not run.
    Start { id: String },
    /// Stop a service and keep it down.
    Stop { id: String },
    /// Stop a service (if it runs) and start it again.
    Restart { id: String },
    /// Send a signal (by number) to a container's process.
    Kill { id: String, signal: i32 },
    /// CPU, memory and processes per container from their cgroups, and PID 1's own memory.
    Top,
    /// Runs a command in a running container with the container's own process settings, the
    /// way `keelctl exec` does, but started by PID 1: stdin is empty and the output is kept
    /// for [`Request::ExecOutput`]. Answered with [`Response::Exec`].
    Exec { id: String, command: Vec<String> },
    /// An exec's output from byte `after` on, and its exit status once it ended.
    ExecOutput {
        exec: u64,
        #[serde(default)]
        after: u64,
    },
    /// Sends a signal (by number) to an exec's process (ctrl-c of `keel ctl exec`).
    ExecKill { exec: u64, signal: i32 },
    /// The orderly shutdown, then power off.
    Poweroff,
    /// The orderly shutdown, then reboot.
    Reboot,
}

/// What the server answers, one per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Response {
    List {
        containers: Vec<ContainerInfo>,
    },
    Timeline {
        steps: Vec<TimelineStep>,
    },
    Ps {
        processes: Vec<ProcessInfo>,
    },
    /// `next` is the number the next line will get: pass it as `after` to follow.
    Logs {
        lines: Vec<LogLine>,
        next: u64,
    },
    Top {
        init: InitUsage,
        containers: Vec<Usage>,
    },
    /// An exec was started; ask for its output with this number.
    Exec {
        exec: u64,
    },
    /// Output bytes `[after, next)` (lossy UTF-8); `dropped` bytes before them were lost to the
    /// output bound; `exit_status` once the process ended and all its output was sent.
    ExecOutput {
        output: String,
        next: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        dropped: u64,
        exit_status: Option<i32>,
    },
    /// The request was carried out (or, for stops and shutdown, begun).
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One row of `top`: what a container's cgroup says (absent when it has no cgroup or the file
/// cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub id: String,
    pub status: String,
    pub restarts: u32,
    /// `cpu.stat` `usage_usec`.
    pub cpu_usec: Option<u64>,
    /// `memory.current`.
    pub memory_bytes: Option<u64>,
    /// `pids.current`.
    pub pids: Option<u64>,
}

/// PID 1's own footprint (`/proc/self/smaps_rollup`) and what its control clients hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitUsage {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    /// Bytes buffered for control clients (requests read, answers not yet sent).
    pub buffered_bytes: u64,
}

/// A request or answer on the host channel (`keel ctl`, a virtio-serial port): the channel
/// has no connections the guest can see, so each answer carries its request's tag and a client
/// skips answers to requests that are not its own (left by a client killed mid-request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tagged<T> {
    pub tag: u64,
    pub body: T,
}

/// One row of `keelctl list` (also its `--json` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInfo {
    pub id: String,
    /// The container's process id (0 when it does not run, like `runc list`).
    pub pid: i32,
    /// `pending`, `creating`, `created`, `running`, `stopped` or `failed`.
    pub status: String,
    pub bundle: String,
    /// When it was last started (RFC 3339, UTC); empty if never.
    pub created: String,
    pub owner: String,
    pub restarts: u32,
    /// `onboot`, `service` or `onshutdown`.
    pub kind: String,
    /// Exit status of the last run (128+signal when killed); absent while it never ended.
    pub exit_status: Option<i32>,
    /// Why the last run ended when the status alone does not say: `oom-killed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    /// Whether services depending on it may start (see `keel.readiness`).
    pub ready: bool,
}

/// One process of a container (`keelctl ps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    pub pid: i32,
    /// Its command line, arguments separated by spaces (`[comm]` when it has none).
    pub command: String,
}

/// One line of container output, with its number in the container's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub seq: u64,
    /// `TIMESTAMP STREAM text`, as in `/var/log/<id>.log`.
    pub line: String,
}

/// One step of the boot timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineStep {
    /// Milliseconds since the kernel started (CLOCK_BOOTTIME).
    pub boottime_ms: u64,
    pub step: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        assert_eq!(
            serde_json::to_string(&Request::List).unwrap(),
            r#"{"request":"list"}"#
        );
        let r: Request = serde_json::from_str(r#"{"request":"timeline"}"#).unwrap();
        assert_eq!(r, Request::Timeline);
        assert!(serde_json::from_str::<Request>(r#"{"request":"explode"}"#).is_err());
        let r: Request = serde_json::from_str(r#"{"request":"logs","id":"x","lines":5}"#).unwrap();
        assert_eq!(
            r,
            Request::Logs {
                id: "x".into(),
                lines: Some(5),
                after: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Kill {
                id: "sshd".into(),
                signal: 9
            })
            .unwrap(),
            r#"{"request":"kill","id":"sshd","signal":9}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"stop"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"request":"stop","id":"a","x":1}"#).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::List {
            containers: vec![ContainerInfo {
                id: "getty".into(),
                pid: 42,
                status: "running".into(),
                bundle: "/containers/services/getty".into(),
                created: "2026-01-01T00:00:00Z".into(),
                owner: "root".into(),
                restarts: 1,
                kind: "service".into(),
                exit_status: None,
                exit_reason: None,
                ready: true,
            }],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"response":"list","containers":[{"id":"getty""#));
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), r);
        let e = Response::error("boom");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"response":"error","message":"boom"}"#
        );
    }
}
