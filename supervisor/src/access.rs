//! Who may ask what of the control socket. Being root is not enough: every container that runs
//! as root would pass. A peer is identified by its cgroup (v2), which a container's processes
//! cannot leave without write access to the host's cgroup tree:
//!
//! - a peer in a container's cgroup (or one below it) is that container, and may make the
//!   requests its `control:` grant allows: `inspect` the read-only ones, `admin` all of them;
//!   a container without a grant is refused;
//! - a peer in PID 1's own cgroup or the root cgroup is on the host (the console, PID 1's own
//!   children) and may make every request;
//! - a peer anywhere else (a cgroup keel does not know, unreadable or garbled cgroup text) is
//!   refused: when keel cannot tell who asks, it says no.
//!
//! The uid check (root only) happens before, in [`crate::server`]. Everything here is pure, so
//! the decision is tested on made-up `/proc/<pid>/cgroup` contents.

use crate::protocol::Request;
use keel_bundle::ControlGrant;

/// Longest `/proc/<pid>/cgroup` text considered; longer text identifies nobody. The kernel
/// limits a cgroup path to a page, so a real file with a few cgroup v1 lines stays far below.
pub const MAX_CGROUP_TEXT: usize = 16 * 1024;

/// A container as the access check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerAccess {
    pub id: String,
    /// Its cgroup (v2) path, normalised by [`normalize_cgroup`].
    pub cgroup: String,
    pub grant: ControlGrant,
}

/// Where a connected peer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// PID 1's own cgroup or the root cgroup.
    Host,
    /// A container's cgroup or one below it.
    Container { id: String, grant: ControlGrant },
    /// Somewhere keel cannot vouch for; the reason.
    Unknown(String),
}

/// The grant a request needs: [`ControlGrant::Inspect`] for requests that only read,
/// [`ControlGrant::Admin`] for the others. Exhaustive on purpose: a new request does not
/// compile until it is placed here.
pub fn needs(request: &Request) -> ControlGrant {
    match request {
        Request::List
        | Request::Timeline
        | Request::Ps { .. }
        | Request::Logs { .. }
        | Request::Top => ControlGrant::Inspect,
        Request::Start { .. }
        | Request::Stop { .. }
        | Request::Restart { .. }
        | Request::Kill { .. }
        | Request::Exec { .. }
        | Request::ExecOutput { .. }
        | Request::ExecKill { .. }
        | Request::Poweroff
        | Request::Reboot => ControlGrant::Admin,
    }
}

/// The request's name, as in the protocol and on keelctl's command line.
pub fn verb(request: &Request) -> &'static str {
    match request {
        Request::List => "list",
        Request::Timeline => "timeline",
        Request::Ps { .. } => "ps",
        Request::Logs { .. } => "logs",
        Request::Start { .. } => "start",
        Request::Stop { .. } => "stop",
        Request::Restart { .. } => "restart",
        Request::Kill { .. } => "kill",
        Request::Top => "top",
        Request::Exec { .. } => "exec",
        Request::ExecOutput { .. } => "exec-output",
        Request::ExecKill { .. } => "exec-kill",
        Request::Poweroff => "poweroff",
        Request::Reboot => "reboot",
    }
}

/// A container's `cgroupsPath` (from its `config.json`) as `/proc/<pid>/cgroup` shows it:
/// absolute (keel's runtime reads a relative one from the root), without empty components or a
/// trailing slash. `None` for what cannot be compared safely: the root itself, `.` or `..`
/// components, systemd's `slice:prefix:name` form, control characters.
pub fn normalize_cgroup(path: &str) -> Option<String> {
    if path.contains(':') || path.chars().any(char::is_control) {
        return None;
    }
    let mut out = String::with_capacity(path.len() + 1);
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return None;
        }
        out.push('/');
        out.push_str(part);
    }
    (!out.is_empty()).then_some(out)
}

/// The cgroup v2 path in the text of a `/proc/<pid>/cgroup` file: its one `0::` line. Cgroup v1
/// lines are ignored. No such line, more than one (cgroup names may hold a newline, so a second
/// line can be forged), a relative path or oversized text are errors.
pub fn cgroup_v2_path(text: &str) -> Result<&str, String> {
    if text.len() > MAX_CGROUP_TEXT {
        return Err(format!("cgroup text longer than {MAX_CGROUP_TEXT} bytes"));
    }
    let mut found = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            if found.is_some() {
                return Err("more than one cgroup v2 line".into());
            }
            found = Some(path);
        }
    }
    let path = found.ok_or("no cgroup v2 line")?;
    if !path.starts_with('/') || path.chars().any(char::is_control) {
        return Err("malformed cgroup v2 path".into());
    }
    Ok(path)
}

/// Whether `path` is `dir` or lies below it (`/a/b` is below `/a`, `/ab` is not).
fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Where a peer whose `/proc/<pid>/cgroup` reads `cgroup_text` runs. `host_cgroup` is PID 1's
/// own cgroup v2 path (`None` when unknown: only the root cgroup is the host then). The
/// container with the longest matching cgroup wins, so a container nested in another's cgroup
/// is itself.
pub fn origin(
    cgroup_text: &str,
    host_cgroup: Option<&str>,
    containers: &[ContainerAccess],
) -> Origin {
    let path = match cgroup_v2_path(cgroup_text) {
        Ok(p) => p.trim_end_matches('/'),
        Err(why) => return Origin::Unknown(why),
    };
    let path = if path.is_empty() { "/" } else { path };
    if path == "/" || host_cgroup.is_some_and(|h| h.trim_end_matches('/') == path) {
        return Origin::Host;
    }
    match containers
        .iter()
        .filter(|c| within(path, &c.cgroup))
        .max_by_key(|c| c.cgroup.len())
    {
        Some(c) => Origin::Container {
            id: c.id.clone(),
            grant: c.grant,
        },
        None => Origin::Unknown(format!("cgroup {} belongs to no container", shorten(path))),
    }
}

/// Why `origin` may not connect at all: a container without a grant, or an unknown peer.
pub fn admit(origin: &Origin) -> Result<(), String> {
    match origin {
        Origin::Host => Ok(()),
        Origin::Container { grant, .. } if !grant.is_none() => Ok(()),
        Origin::Container { id, .. } => Err(format!(
            "permission denied: container {id} was not granted control"
        )),
        Origin::Unknown(why) => Err(format!(
            "permission denied: cannot tell which container the client runs in ({why})"
        )),
    }
}

/// Whether `origin` may make `request`; the refusal message otherwise.
pub fn decide(origin: &Origin, request: &Request) -> Result<(), String> {
    admit(origin)?;
    match origin {
        Origin::Container { id, grant } if *grant < needs(request) => Err(format!(
            "permission denied: container {id} has control: {}; {} needs control: {}",
            grant.as_str(),
            verb(request),
            needs(request).as_str()
        )),
        // PID 1 running a command in any container is the console's and the host's: a
        // granted container would reach every other container through it (privileged ones
        // included). Its own keelctl runs the shim itself, with its own privileges.
        Origin::Container { id, .. } if is_exec(request) => Err(format!(
            "permission denied: container {id} may not ask PID 1 to exec; run keelctl exec, which uses the container's own privileges"
        )),
        _ => Ok(()),
    }
}

fn is_exec(request: &Request) -> bool {
    matches!(
        request,
        Request::Exec { .. } | Request::ExecOutput { .. } | Request::ExecKill { .. }
    )
}

/// `s` cut to a length fit for a log line.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn containers() -> Vec<ContainerAccess> {
        let c = |id: &str, cgroup: &str, grant| ContainerAccess {
            id: id.into(),
            cgroup: cgroup.into(),
            grant,
        };
        vec![
            c("web", "/keel/services/web", ControlGrant::Inspect),
            c("getty", "/keel/services/getty", ControlGrant::Admin),
            c("plain", "/keel/services/plain", ControlGrant::None),
            c("docker", "/podruntime/docker", ControlGrant::None),
            c("nested", "/podruntime/docker/inner", ControlGrant::Admin),
        ]
    }

    fn every_request() -> Vec<Request> {
        let id = || "web".to_string();
        vec![
            Request::List,
            Request::Timeline,
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
            Request::Top,
            Request::Exec {
                id: id(),
                command: vec!["id".into()],
            },
            Request::ExecOutput { exec: 1, after: 0 },
            Request::ExecKill { exec: 1, signal: 2 },
            Request::Poweroff,
            Request::Reboot,
        ]
    }

    /// The requests `cgroup_text` may make, by verb.
    fn allowed(cgroup_text: &str) -> Vec<&'static str> {
        let o = origin(cgroup_text, Some("/init.scope"), &containers());
        every_request()
            .iter()
            .filter(|r| decide(&o, r).is_ok())
            .map(verb)
            .collect()
    }

    const READ: [&str; 5] = ["list", "timeline", "ps", "logs", "top"];
    /// What an admin container may ask: everything but making PID 1 exec.
    const ADMIN: [&str; 11] = [
        "list", "timeline", "ps", "logs", "start", "stop", "restart", "kill", "top", "poweroff",
        "reboot",
    ];
    const ALL: [&str; 14] = [
        "list",
        "timeline",
        "ps",
        "logs",
        "start",
        "stop",
        "restart",
        "kill",
        "top",
        "exec",
        "exec-output",
        "exec-kill",
        "poweroff",
        "reboot",
    ];

    #[test]
    fn grants_allow_their_verbs() {
        assert_eq!(allowed("0::/keel/services/web\n"), READ);
        assert_eq!(allowed("0::/keel/services/getty\n"), ADMIN);
        assert!(allowed("0::/keel/services/plain\n").is_empty());
        // The host: the root cgroup and PID 1's own.
        assert_eq!(allowed("0::/\n"), ALL);
        assert_eq!(allowed("0::/init.scope\n"), ALL);
        // Cgroup v1 lines beside the v2 one change nothing.
        assert_eq!(
            allowed("12:pids:/\n4:memory:/\n0::/keel/services/web\n1:name=systemd:/\n"),
            READ
        );
    }

    #[test]
    fn child_cgroups_are_their_container_and_prefixes_are_not() {
        assert_eq!(allowed("0::/keel/services/web/worker/deep\n"), READ);
        assert_eq!(allowed("0::/keel/services/web/\n"), READ);
        for stranger in [
            "0::/keel/services/web2\n",
            "0::/keel/services/we\n",
            "0::/keel/services/web-admin\n",
            "0::/keel/services\n",
            "0::/keel\n",
            "0::/init.scope/child\n",
            "0::/podruntime/dockerx\n",
        ] {
            assert!(allowed(stranger).is_empty(), "{stranger}");
        }
        // The longest match wins: a container nested in another's cgroup is itself.
        assert_eq!(allowed("0::/podruntime/docker/inner/x\n"), ADMIN);
        assert!(allowed("0::/podruntime/docker/other\n").is_empty());
    }

    #[test]
    fn hostile_cgroup_text_is_refused() {
        let long_path = format!("0::/keel/services/web/{}\n", "a".repeat(MAX_CGROUP_TEXT));
        let many_lines = "1:cpu:/\n".repeat(MAX_CGROUP_TEXT / 8 + 1) + "0::/\n";
        for garbage in [
            "",
            "\n\n",
            "garbage",
            "\0\0\0",
            "0::",
            "0::relative/path\n",
            "0:/keel/services/getty\n",
            "1:cpu:/\n",
            "0::/keel/services/web\n0::/\n",
            "0::/keel/services/plain/x\n0::/keel/services/getty\n",
            "0::/keel/services/web\r/x\n",
            long_path.as_str(),
            many_lines.as_str(),
        ] {
            let o = origin(garbage, Some("/"), &containers());
            assert!(matches!(o, Origin::Unknown(_)), "{garbage:?}: {o:?}");
            for r in every_request() {
                assert!(decide(&o, &r).is_err(), "{garbage:?}");
            }
        }
        // A newline in a child cgroup's name cannot pose as the host or another container.
        let forged = "0::/keel/services/web/x\n0::/\n";
        assert!(matches!(
            origin(forged, None, &containers()),
            Origin::Unknown(_)
        ));
        let truncated = "0::/keel/services/web/x\nrest\n";
        assert_eq!(allowed(truncated), READ);
    }

    #[test]
    fn refusals_say_why() {
        let c = containers();
        let web = origin("0::/keel/services/web\n", None, &c);
        assert_eq!(
            decide(&web, &Request::Stop { id: "db".into() }).unwrap_err(),
            "permission denied: container web has control: inspect; stop needs control: admin"
        );
        let plain = origin("0::/keel/services/plain\n", None, &c);
        assert_eq!(
            admit(&plain).unwrap_err(),
            "permission denied: container plain was not granted control"
        );
        let lost = origin("0::/elsewhere\n", None, &c);
        assert_eq!(
            admit(&lost).unwrap_err(),
            "permission denied: cannot tell which container the client runs in \
             (cgroup /elsewhere belongs to no container)"
        );
        let long = format!("0::/{}\n", "x".repeat(5000));
        let msg = admit(&origin(&long, None, &c)).unwrap_err();
        assert!(msg.len() < 400, "{msg}");
        // Without PID 1's own cgroup only the root cgroup is the host.
        assert_eq!(origin("0::/\n", None, &c), Origin::Host);
        assert!(matches!(
            origin("0::/init.scope\n", None, &c),
            Origin::Unknown(_)
        ));
    }

    #[test]
    fn cgroups_paths_are_normalised() {
        assert_eq!(
            normalize_cgroup("/keel/services/web").as_deref(),
            Some("/keel/services/web")
        );
        assert_eq!(
            normalize_cgroup("podruntime//docker/").as_deref(),
            Some("/podruntime/docker")
        );
        for bad in [
            "",
            "/",
            "//",
            "/a/../b",
            "/a/./b",
            "system.slice:keel:web",
            "/a\nb",
        ] {
            assert_eq!(normalize_cgroup(bad), None, "{bad:?}");
        }
    }
}
