//! `keelctl update http://…`: the update fetched over plain HTTP/1.1 into a file before it is
//! read. Plain HTTP is enough because nothing fetched is trusted: the update is checked (its
//! UKI signed by the running version's key, its root hashing to that UKI's root hash, a newer
//! version) before anything is written, so whoever sits on the network can withhold or corrupt
//! it, or offer an older signed version, and each of those is refused. No TLS, redirects,
//! proxies or chunked bodies: a server that needs them gets an error saying so.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0}: not an http:// URL (https is not supported: the update is verified, use http or a file)"
    )]
    Url(String),
    #[error("cannot connect to {0}")]
    Connect(String, #[source] io::Error),
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: String },
    #[error("{url}: {what}")]
    Response { url: String, what: String },
    #[error("{url}: the body ended after {got} of {want} bytes")]
    Short { url: String, got: u64, want: u64 },
    #[error("{url}: cannot read the answer")]
    Read {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the download")]
    Write(#[source] io::Error),
}

/// An `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

impl std::str::FromStr for Url {
    type Err = Error;

    fn from_str(s: &str) -> Result<Url, Error> {
        let bad = || Error::Url(s.chars().take(200).collect());
        let rest = s.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, 80),
        };
        // No credentials, no spaces or control characters to smuggle into the request line.
        let clean = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b'@');
        if !clean(host) || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        Ok(Url {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// The longest status line and header block read.
const MAX_HEAD: u64 = 64 * 1024;

/// Fetches `url` into `out` (at most `max` bytes), each read and write waiting at most
/// `timeout`; returns the body's length.
pub fn fetch(url: &Url, out: &mut impl Write, max: u64, timeout: Duration) -> Result<u64, Error> {
    let shown = url.to_string();
    let read_err = |source| Error::Read {
        url: shown.clone(),
        source,
    };
    let response = |what: String| Error::Response {
        url: shown.clone(),
        what,
    };
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| Error::Connect(format!("{}:{}", url.host, url.port), e))?
        .next()
        .ok_or_else(|| {
            Error::Connect(
                format!("{}:{}", url.host, url.port),
                io::Error::new(io::ErrorKind::NotFound, "no address"),
            )
        })?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| Error::Connect(format!("{}:{}", url.host, url.port), e))?;
    stream.set_read_timeout(Some(timeout)).map_err(read_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(read_err)?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keelctl\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        url.path, url.host
    )
    .map_err(read_err)?;

    let mut reader = BufReader::new(stream);
    let mut head = (&mut reader).take(MAX_HEAD);
    let mut line = String::new();
    let mut next_line = |line: &mut String| -> Result<(), Error> {
        line.clear();
        head.read_line(line).map_err(read_err)?;
        if !line.ends_with('\n') {
            return Err(response(
                "the answer's head is cut short or too long".into(),
            ));
        }
        Ok(())
    };
    next_line(&mut line)?;
    let status = line.trim_end().to_owned();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(response(format!(
            "not an HTTP answer: {:?}",
            truncate(&status)
        )));
    }
    if code != "200" {
        return Err(Error::Status {
            url: shown.clone(),
            status: truncate(&status).to_owned(),
        });
    }
    let mut length = None;
    loop {
        next_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(response(format!(
                "a malformed header {:?}",
                truncate(header)
            )));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<u64>().map_err(|_| {
                response(format!("a malformed Content-Length {:?}", truncate(value)))
            })?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(response(format!(
                "a {value} body, which keelctl does not read: serve the file with a Content-Length"
            )));
        }
    }
    let want = length.ok_or_else(|| response("no Content-Length".into()))?;
    if want > max {
        return Err(response(format!(
            "{want} bytes, more than keelctl takes ({max})"
        )));
    }
    let got = io::copy(&mut (&mut reader).take(want), out).map_err(|e| {
        if e.kind() == io::ErrorKind::WriteZero {
            Error::Write(e)
        } else {
            read_err(e)
        }
    })?;
    if got != want {
        return Err(Error::Short {
            url: shown,
            got,
            want,
        });
    }
    out.flush().map_err(Error::Write)?;
    Ok(got)
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server on loopback that answers one request with `answer`, and the URL to ask it.
    fn serve(answer: Vec<u8>) -> (Url, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let _ = conn.write_all(&answer);
            String::from_utf8_lossy(&request).into_owned()
        });
        let url = format!("http://127.0.0.1:{port}/v2/disk.img")
            .parse()
            .unwrap();
        (url, server)
    }

    fn get(answer: &[u8]) -> Result<Vec<u8>, Error> {
        let (url, server) = serve(answer.to_vec());
        let mut out = Vec::new();
        let r = fetch(&url, &mut out, 1 << 20, Duration::from_secs(10)).map(|_| out);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /v2/disk.img HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            "{request:?}"
        );
        r
    }

    #[test]
    fn a_file_is_fetched() {
        let body = get(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello").unwrap();
        assert_eq!(body, b"hello");
    }

    #[test]
    fn bad_answers_are_errors() {
        for (answer, expected) in [
            (
                &b"HTTP/1.0 404 Not Found\r\n\r\n"[..],
                "answered HTTP/1.0 404 Not Found",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                "ended after 5 of 9",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\nbody", "no Content-Length"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "a chunked body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
                "more than keelctl takes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "malformed Content-Length",
            ),
            (b"SSH-2.0-OpenSSH\r\n", "not an HTTP answer"),
            (
                b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                "malformed header",
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "cut short"),
        ] {
            let err = get(answer).unwrap_err().to_string();
            assert!(err.contains(expected), "{answer:?}: {err}");
        }
        // A head without an end is cut off at MAX_HEAD.
        let mut endless = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 70 * 1024));
        let err = get(&endless).unwrap_err().to_string();
        assert!(err.contains("cut short or too long"), "{err}");
    }

    #[test]
    fn urls_are_checked() {
        let url: Url = "http://10.0.2.2:8000/images/v2.img".parse().unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("10.0.2.2", 8000, "/images/v2.img")
        );
        let url: Url = "http://updates.example".parse().unwrap();
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        for bad in [
            "https://updates.example/v2.img",
            "ftp://x/y",
            "http://",
            "http://user:pw@host/x",
            "http://host:99999/x",
            "http://host/a b",
            "http://host/a\r\nX-Injected: 1",
        ] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
    }
}
