//! The client side of the control socket, used by `keelctl`.

use crate::protocol::{Request, Response};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for the answer to one request.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no control socket at {0}: is keel's init running on this system?")]
    NoSocket(PathBuf),
    #[error("permission denied on {0}: keelctl must run as root")]
    PermissionDenied(PathBuf),
    #[error("nothing listens on {0}: keel's init is not serving it")]
    NotListening(PathBuf),
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket i/o")]
    Io(#[source] std::io::Error),
    #[error("the server closed the connection without answering")]
    Closed,
    #[error("invalid response from the server")]
    Decode(#[source] serde_json::Error),
}

/// Sends one request to the server at `path` and returns its response.
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => ClientError::NoSocket(path.to_owned()),
        ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_owned()),
        ErrorKind::ConnectionRefused => ClientError::NotListening(path.to_owned()),
        _ => ClientError::Connect {
            path: path.to_owned(),
            source,
        },
    })?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(ClientError::Io)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(ClientError::Io)?;
    let mut line = serde_json::to_vec(request).map_err(ClientError::Decode)?;
    line.push(b'\n');
    let written = stream.write_all(&line);
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    // A refused client is answered and dropped at once, perhaps before its request was sent:
    // the refusal says more than the broken pipe.
    if reply.is_empty() {
        written.map_err(ClientError::Io)?;
        read.map_err(ClientError::Io)?;
        return Err(ClientError::Closed);
    }
    serde_json::from_str(&reply).map_err(ClientError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(&dir.path().join("nope.sock"), &Request::List).unwrap_err();
        assert!(matches!(err, ClientError::NoSocket(_)));
        assert!(err.to_string().contains("is keel's init running"));
    }

    #[test]
    fn stale_socket_is_not_listening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = call(&path, &Request::List).unwrap_err();
        assert!(matches!(err, ClientError::NotListening(_)), "{err}");
    }
}
