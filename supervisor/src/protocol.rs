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
}

/// What the server answers, one per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Response {
    List { containers: Vec<ContainerInfo> },
    Timeline { steps: Vec<TimelineStep> },
    Error { message: String },
}

impl Response {
    /// An error response.
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
        }
    }
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
