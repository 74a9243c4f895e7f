//! The few calls of Docker's Engine API the agent makes, over the engine's unix socket: the
//! node's swarm state (`GET /info`), `POST /swarm/init`, `POST /swarm/join` and the join tokens
//! (`GET /swarm`). Requests are HTTP/1.0, so the engine answers without chunked encoding and
//! closes the connection after the body.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Docker's swarm port, where managers listen and nodes join.
pub const SWARM_PORT: u16 = 2377;
/// An answer larger than this is refused (`GET /info` is a few KiB).
const MAX_RESPONSE: u64 = 4 << 20;
/// Init and join wait for the swarm's first raft round; under emulation that takes a while.
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the engine at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {endpoint}: the connection failed")]
    Io {
        method: &'static str,
        endpoint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {endpoint}: malformed answer: {problem}")]
    Malformed {
        method: &'static str,
        endpoint: &'static str,
        problem: String,
    },
    #[error("{method} {endpoint}: the engine answered {status}: {message}")]
    Status {
        method: &'static str,
        endpoint: &'static str,
        status: u16,
        message: String,
    },
}

/// `GET /info`, the part read here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    pub swarm: SwarmInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmInfo {
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub local_node_state: String,
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct InitRequest {
    listen_addr: String,
    advertise_addr: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct JoinRequest {
    listen_addr: String,
    advertise_addr: String,
    remote_addrs: Vec<String>,
    join_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Swarm {
    join_tokens: JoinTokens,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    message: String,
}

/// The engine behind one unix socket.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
}

impl Engine {
    pub fn new(socket: &Path) -> Engine {
        Engine {
            socket: socket.to_path_buf(),
        }
    }

    pub fn info(&self) -> Result<Info, Error> {
        let body = self.call("GET", "/info", None)?;
        parse("GET", "/info", &body)
    }

    /// Makes this node the swarm's first manager, listening and advertising on `addr`.
    pub fn init(&self, addr: Ipv4Addr) -> Result<(), Error> {
        let request = InitRequest {
            listen_addr: format!("{addr}:{SWARM_PORT}"),
            advertise_addr: addr.to_string(),
        };
        self.call("POST", "/swarm/init", Some(&to_json(&request)))
            .map(drop)
    }

    /// Joins the swarm of the manager at `manager` with `token`, advertising `addr`.
    pub fn join(&self, addr: Ipv4Addr, manager: Ipv4Addr, token: &str) -> Result<(), Error> {
        let request = JoinRequest {
            listen_addr: format!("{addr}:{SWARM_PORT}"),
            advertise_addr: addr.to_string(),
            remote_addrs: vec![format!("{manager}:{SWARM_PORT}")],
            join_token: token.to_owned(),
        };
        self.call("POST", "/swarm/join", Some(&to_json(&request)))
            .map(drop)
    }

    /// The current join tokens (a manager only).
    pub fn join_tokens(&self) -> Result<JoinTokens, Error> {
        let body = self.call("GET", "/swarm", None)?;
        parse::<Swarm>("GET", "/swarm", &body).map(|s| s.join_tokens)
    }

    fn call(
        &self,
        method: &'static str,
        endpoint: &'static str,
        body: Option<&str>,
    ) -> Result<Vec<u8>, Error> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| Error::Connect {
            path: self.socket.clone(),
            source,
        })?;
        let io = |source| Error::Io {
            method,
            endpoint,
            source,
        };
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {endpoint} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut answer)
            .map_err(io)?;
        if answer.len() as u64 > MAX_RESPONSE {
            return Err(Error::Malformed {
                method,
                endpoint,
                problem: format!("longer than {MAX_RESPONSE} bytes"),
            });
        }
        let (status, body) = split_response(&answer).map_err(|problem| Error::Malformed {
            method,
            endpoint,
            problem,
        })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ErrorBody>(body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned());
            return Err(Error::Status {
                method,
                endpoint,
                status,
                message,
            });
        }
        Ok(body.to_vec())
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings: serialising them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(
    method: &'static str,
    endpoint: &'static str,
    body: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Malformed {
        method,
        endpoint,
        problem: e.to_string(),
    })
}

/// An HTTP/1.x response's status code and body (everything after the blank line).
fn split_response(answer: &[u8]) -> Result<(u16, &[u8]), String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&answer[..end]).map_err(|_| "headers are not UTF-8")?;
    let status_line = head.lines().next().unwrap_or("");
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("status line {status_line:?}"));
    }
    let status = words
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    Ok((status, &answer[end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// An engine that answers one request with `answer` and hands back what it was sent.
    fn fake_engine(answer: &'static [u8]) -> (tempfile::TempDir, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("docker.sock")).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = vec![0; 4096];
            let n = conn.read(&mut request).unwrap();
            conn.write_all(answer).unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        (dir, handle)
    }

    #[test]
    fn reads_the_swarm_state() {
        let (dir, engine) = fake_engine(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Swarm\":{\"LocalNodeState\":\"active\",\"NodeID\":\"abc\"},\"Name\":\"n\"}",
        );
        let info = Engine::new(&dir.path().join("docker.sock")).info().unwrap();
        assert_eq!(info.swarm.local_node_state, "active");
        assert_eq!(info.swarm.node_id, "abc");
        assert!(engine.join().unwrap().starts_with("GET /info HTTP/1.0\r\n"));
    }

    #[test]
    fn join_sends_the_token_and_addresses_as_typed_json() {
        let (dir, engine) = fake_engine(b"HTTP/1.0 200 OK\r\n\r\n");
        Engine::new(&dir.path().join("docker.sock"))
            .join(
                Ipv4Addr::new(192, 168, 76, 12),
                Ipv4Addr::new(192, 168, 76, 11),
                "SWMTKN-1-x",
            )
            .unwrap();
        let request = engine.join().unwrap();
        let body = request.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["RemoteAddrs"][0], "192.168.76.11:2377");
        assert_eq!(json["AdvertiseAddr"], "192.168.76.12");
        assert_eq!(json["JoinToken"], "SWMTKN-1-x");
        assert!(request.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn an_engine_error_carries_its_message() {
        let (dir, _engine) = fake_engine(
            b"HTTP/1.0 503 Service Unavailable\r\n\r\n{\"message\":\"This node is not a swarm manager.\"}",
        );
        let err = Engine::new(&dir.path().join("docker.sock"))
            .join_tokens()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "GET /swarm: the engine answered 503: This node is not a swarm manager."
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for answer in [
            &b""[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.0 abc\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nnot json",
            b"HTTP/1.0 200 OK\r\n",
        ] {
            let (dir, _engine) = fake_engine(answer);
            let err = Engine::new(&dir.path().join("docker.sock"))
                .info()
                .unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{answer:?}: {err}");
        }
        let missing = Engine::new(Path::new("/nonexistent/docker.sock")).info();
        assert!(matches!(missing, Err(Error::Connect { .. })));
    }
}
