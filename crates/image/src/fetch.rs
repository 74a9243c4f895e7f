//! Fetching one small document over HTTP(S) (`keel build https://…/linuxkit.yml`), with the
//! same TLS roots and user agent as registry requests, a size limit and a deadline.

use std::io::Read;
use std::time::Duration;

/// Why a document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {url}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("cannot fetch {url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("cannot fetch {url}: it is larger than {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("cannot read {url}")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} is not an http:// or https:// URL")]
    Scheme { url: String },
}

/// Whether `text` names an HTTP(S) document rather than a file.
pub fn is_url(text: &str) -> bool {
    text.starts_with("https://") || text.starts_with("http://")
}

/// GETs `url` (following redirects), refusing a body over `max` bytes and a transfer that takes
/// longer than `deadline` in all.
pub fn fetch(url: &str, max: u64, deadline: Duration) -> Result<Vec<u8>, FetchError> {
    if !is_url(url) {
        return Err(FetchError::Scheme { url: url.into() });
    }
    let http = |source| FetchError::Http {
        url: url.into(),
        source: Box::new(source),
    };
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
        .timeout_global(Some(deadline))
        .build()
        .new_agent();
    let mut response = agent.get(url).call().map_err(http)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(FetchError::Status {
            url: url.into(),
            status,
        });
    }
    let mut body = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(max.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|source| FetchError::Read {
            url: url.into(),
            source,
        })?;
    if u64::try_from(body.len()).unwrap_or(u64::MAX) > max {
        return Err(FetchError::TooLarge {
            url: url.into(),
            max,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback answering `status` with `body`.
    fn serve(status: &str, body: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = status.to_owned();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        format!("http://{addr}/linuxkit.yml")
    }

    #[test]
    fn fetches_within_limits() {
        let url = serve("200 OK", b"kernel: {}\n".to_vec());
        assert_eq!(
            fetch(&url, 100, Duration::from_secs(10)).unwrap(),
            b"kernel: {}\n"
        );
        let url = serve("404 Not Found", b"no".to_vec());
        let e = fetch(&url, 100, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().ends_with("the server answered 404"), "{e}");
        let url = serve("200 OK", vec![b'#'; 1000]);
        let e = fetch(&url, 100, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("larger than 100 bytes"), "{e}");
        assert!(fetch("ftp://x/y", 1, Duration::from_secs(1)).is_err());
        assert!(is_url("https://example.com/a.yml") && !is_url("a.yml"));
    }
}
