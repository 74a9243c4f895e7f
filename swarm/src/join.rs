//! How a node gets a join token from the first manager without the token ever being in the
//! image or the metadata: the metadata carries a cluster secret; the manager hands the current
//! token (worker or manager) to a node that proves it knows the secret, and proves in turn that
//! it knows it too, on TCP port [`PORT`] of the cluster network.
//!
//! One exchange, a line each way, every line bounded:
//!
//! ```text
//! manager → node   keel-swarm/1 <server nonce, 32 bytes hex>
//! node → manager   <role> <client nonce, 32 bytes hex> <HMAC(secret, "join", nonces, role) hex>
//! manager → node   ok <token XOR keystream, hex> <HMAC(secret, "token", nonces, ciphertext) hex>
//!              or  refused
//! ```
//!
//! The keystream is HMAC-SHA256(secret, "key", nonces, counter) blocks, so the token crosses the
//! network encrypted, and the tag (encrypt-then-MAC) shows the node that the answer comes from a
//! holder of the secret: a machine that takes the manager's address on the network can neither
//! learn the token nor hand a node another swarm's. Fresh nonces on both sides make every
//! exchange's proofs and keystream unique.

use crate::config::{Role, Secret};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The manager's token port on the cluster network.
pub const PORT: u16 = 2380;
const GREETING: &str = "keel-swarm/1";
/// No line of the protocol is longer (a token is about 90 characters, 180 in hex).
const MAX_LINE: u64 = 1024;
const MAX_TOKEN: usize = 256;
/// How long either side waits for the other's line.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;
pub type Nonce = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the exchange failed")]
    Io(#[from] std::io::Error),
    #[error("the peer does not speak keel-swarm/1: {0}")]
    Protocol(String),
    #[error("the manager refused the join secret (check swarm/secret in this node's metadata)")]
    Refused,
    #[error(
        "the answer is not from a holder of the join secret (another machine has the manager's address, or the manager's secret differs)"
    )]
    BadTag,
}

/// What the manager hands out: the current tokens, read when a node asks.
pub trait Tokens {
    fn token(&mut self, role: Role) -> Result<String, String>;
}

/// What a node asked for and whether it got it, for the manager's log.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    Token(Role),
    /// A wrong proof: the secret differs (or someone is guessing).
    WrongSecret,
    /// The manager could not read its tokens.
    NoToken(String),
}

fn mac(secret: &Secret, label: &str, parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(secret.bytes()).expect("HMAC accepts any key length");
    mac.update(GREETING.as_bytes());
    mac.update(b"\0");
    mac.update(label.as_bytes());
    for part in parts {
        // Length-prefixed, so no two different sequences of parts hash alike.
        mac.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        mac.update(part);
    }
    mac
}

fn keystream_xor(secret: &Secret, server: &Nonce, client: &Nonce, data: &mut [u8]) {
    for (counter, chunk) in data.chunks_mut(32).enumerate() {
        let counter = u32::try_from(counter).unwrap_or(u32::MAX).to_be_bytes();
        let block = mac(secret, "key", &[server, client, &counter])
            .finalize()
            .into_bytes();
        for (byte, key) in chunk.iter_mut().zip(block.iter()) {
            *byte ^= key;
        }
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes.
fn read_line(reader: &mut impl BufRead) -> Result<String, Error> {
    let mut line = String::new();
    let n = reader.take(MAX_LINE).read_line(&mut line)?;
    if n == 0 {
        return Err(Error::Protocol("the connection closed".into()));
    }
    if !line.ends_with('\n') {
        return Err(Error::Protocol(format!(
            "a line longer than {MAX_LINE} bytes"
        )));
    }
    Ok(line.trim_end().to_owned())
}

fn hex_array(text: &str) -> Option<[u8; 32]> {
    let bytes = hex_bytes(text)?;
    bytes.try_into().ok()
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The manager's side of one exchange on `stream` (already accepted), with `nonce` fresh from
/// the system's random source.
pub fn serve(
    stream: impl Read + Write,
    secret: &Secret,
    nonce: &Nonce,
    tokens: &mut impl Tokens,
) -> Result<Served, Error> {
    let mut reader = BufReader::new(stream);
    writeln!(reader.get_mut(), "{GREETING} {}", hex(nonce))?;
    let line = read_line(&mut reader)?;
    let mut words = line.split(' ');
    let (Some(role), Some(client), Some(proof), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(Error::Protocol("expected: ROLE NONCE PROOF".into()));
    };
    let role = Role::parse(role).ok_or_else(|| Error::Protocol(format!("role {role:?}")))?;
    let client = hex_array(client).ok_or_else(|| Error::Protocol("bad nonce".into()))?;
    let proof = hex_bytes(proof).ok_or_else(|| Error::Protocol("bad proof".into()))?;
    let valid = mac(secret, "join", &[nonce, &client, role.as_str().as_bytes()])
        .verify_slice(&proof)
        .is_ok();
    if !valid {
        writeln!(reader.get_mut(), "refused")?;
        return Ok(Served::WrongSecret);
    }
    let token = match tokens.token(role) {
        Ok(token) if !token.is_empty() && token.len() <= MAX_TOKEN => token,
        Ok(token) => {
            writeln!(reader.get_mut(), "unavailable")?;
            return Ok(Served::NoToken(format!("a token of {} bytes", token.len())));
        }
        Err(problem) => {
            writeln!(reader.get_mut(), "unavailable")?;
            return Ok(Served::NoToken(problem));
        }
    };
    let mut sealed = token.into_bytes();
    keystream_xor(secret, nonce, &client, &mut sealed);
    let tag = mac(secret, "token", &[nonce, &client, &sealed])
        .finalize()
        .into_bytes();
    writeln!(reader.get_mut(), "ok {} {}", hex(&sealed), hex(&tag))?;
    Ok(Served::Token(role))
}

/// The node's side: asks the manager at `addr` for a `role` token, proving `secret`, with
/// `nonce` fresh from the system's random source.
pub fn request(
    addr: SocketAddr,
    secret: &Secret,
    role: Role,
    nonce: &Nonce,
) -> Result<String, Error> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|source| Error::Connect { addr, source })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    exchange(stream, secret, role, nonce)
}

/// [`request`] over an established stream.
pub fn exchange(
    stream: impl Read + Write,
    secret: &Secret,
    role: Role,
    nonce: &Nonce,
) -> Result<String, Error> {
    let mut reader = BufReader::new(stream);
    let greeting = read_line(&mut reader)?;
    let server = greeting
        .strip_prefix(GREETING)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(hex_array)
        .ok_or_else(|| Error::Protocol(format!("greeting {greeting:?}")))?;
    let proof = mac(secret, "join", &[&server, nonce, role.as_str().as_bytes()])
        .finalize()
        .into_bytes();
    writeln!(
        reader.get_mut(),
        "{} {} {}",
        role.as_str(),
        hex(nonce),
        hex(&proof)
    )?;
    let answer = read_line(&mut reader)?;
    let mut words = answer.split(' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("refused"), None, None, None) => Err(Error::Refused),
        (Some("unavailable"), None, None, None) => Err(Error::Protocol(
            "the manager has no token to give yet".into(),
        )),
        (Some("ok"), Some(sealed), Some(tag), None) => {
            let mut sealed =
                hex_bytes(sealed).ok_or_else(|| Error::Protocol("bad token".into()))?;
            let tag = hex_bytes(tag).ok_or_else(|| Error::Protocol("bad tag".into()))?;
            mac(secret, "token", &[&server, nonce, &sealed])
                .verify_slice(&tag)
                .map_err(|_| Error::BadTag)?;
            keystream_xor(secret, &server, nonce, &mut sealed);
            let token = String::from_utf8(sealed)
                .map_err(|_| Error::Protocol("the token is not text".into()))?;
            if token.is_empty() || token.len() > MAX_TOKEN || token.contains(char::is_whitespace) {
                return Err(Error::Protocol("not a join token".into()));
            }
            Ok(token)
        }
        _ => Err(Error::Protocol(format!(
            "answer {:?}",
            answer.chars().take(80).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    struct Fixed;

    impl Tokens for Fixed {
        fn token(&mut self, role: Role) -> Result<String, String> {
            Ok(format!("SWMTKN-1-digest-{role}"))
        }
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    /// One exchange over loopback TCP: the manager's verdict and the node's result.
    fn run(
        manager_secret: &str,
        node_secret: &str,
        role: Role,
    ) -> (Result<Served, Error>, Result<String, Error>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let manager_secret = secret(manager_secret);
        let manager = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            serve(conn, &manager_secret, &[7; 32], &mut Fixed)
        });
        let node = request(addr, &secret(node_secret), role, &[9; 32]);
        (manager.join().unwrap(), node)
    }

    #[test]
    fn a_node_with_the_secret_gets_its_roles_token() {
        for role in [Role::Worker, Role::Manager] {
            let (served, token) = run("cluster secret 0123", "cluster secret 0123", role);
            assert_eq!(served.unwrap(), Served::Token(role));
            assert_eq!(token.unwrap(), format!("SWMTKN-1-digest-{role}"));
        }
    }

    #[test]
    fn an_unreachable_manager_is_named() {
        // A port nothing listens on: bound, its address taken, closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err =
            request(addr, &secret("cluster secret 0123"), Role::Worker, &[9; 32]).unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("cannot reach {addr}"));
    }

    #[test]
    fn a_wrong_secret_is_refused_and_gets_nothing() {
        let (served, token) = run("cluster secret 0123", "another secret 4567", Role::Worker);
        assert_eq!(served.unwrap(), Served::WrongSecret);
        assert!(matches!(token, Err(Error::Refused)), "{token:?}");
    }

    #[test]
    fn the_token_is_not_on_the_wire_in_clear() {
        let s = secret("cluster secret 0123");
        let server: Nonce = [7; 32];
        let client: Nonce = [9; 32];
        let proof = mac(&s, "join", &[&server, &client, b"worker"])
            .finalize()
            .into_bytes();
        let line = format!("worker {} {}\n", hex(&client), hex(&proof));
        let mut input = std::io::Cursor::new(line.into_bytes());
        let mut output = Vec::new();
        let tape = Duplex {
            input: &mut input,
            output: &mut output,
        };
        assert_eq!(
            serve(tape, &s, &server, &mut Fixed).unwrap(),
            Served::Token(Role::Worker)
        );
        let wire = String::from_utf8(output).unwrap();
        assert!(wire.contains("\nok "), "{wire}");
        assert!(!wire.contains("SWMTKN"), "{wire}");
        assert!(!wire.contains(&hex(b"SWMTKN")), "{wire}");
    }

    #[test]
    fn an_impostor_manager_without_the_secret_is_detected() {
        // It answers in the protocol's form, with a token sealed under its own secret.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let impostor = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn);
            let server: Nonce = [1; 32];
            writeln!(reader.get_mut(), "{GREETING} {}", hex(&server)).unwrap();
            let line = read_line(&mut reader).unwrap();
            let client = hex_array(line.split(' ').nth(1).unwrap()).unwrap();
            let own = secret("the impostor's secret");
            let mut sealed = b"SWMTKN-1-rogue".to_vec();
            keystream_xor(&own, &server, &client, &mut sealed);
            let tag = mac(&own, "token", &[&server, &client, &sealed])
                .finalize()
                .into_bytes();
            writeln!(reader.get_mut(), "ok {} {}", hex(&sealed), hex(&tag)).unwrap();
        });
        let token = request(addr, &secret("cluster secret 0123"), Role::Worker, &[9; 32]);
        impostor.join().unwrap();
        assert!(matches!(token, Err(Error::BadTag)), "{token:?}");
    }

    #[test]
    fn hostile_lines_are_protocol_errors() {
        let s = secret("cluster secret 0123");
        for input in [
            &b""[..],
            b"worker\n",
            b"worker zz 00\n",
            b"leader 0000000000000000000000000000000000000000000000000000000000000000 00\n",
            b"worker 00 00 00\n",
            &[b'a'; 4096],
        ] {
            let mut stream = std::io::Cursor::new(input.to_vec());
            let mut output = Vec::new();
            let duplex = Duplex {
                input: &mut stream,
                output: &mut output,
            };
            let served = serve(duplex, &s, &[7; 32], &mut Fixed);
            assert!(
                matches!(served, Err(Error::Protocol(_))),
                "{input:?}: {served:?}"
            );
        }
        for answer in [
            "",
            "hello\n",
            "keel-swarm/1 00\n",
            "keel-swarm/2 0707070707070707070707070707070707070707070707070707070707070707\n",
        ] {
            let mut stream = std::io::Cursor::new(answer.as_bytes().to_vec());
            let mut output = Vec::new();
            let duplex = Duplex {
                input: &mut stream,
                output: &mut output,
            };
            let token = exchange(duplex, &s, Role::Worker, &[9; 32]);
            assert!(
                matches!(token, Err(Error::Protocol(_))),
                "{answer:?}: {token:?}"
            );
        }
    }

    struct Duplex<'a> {
        input: &'a mut std::io::Cursor<Vec<u8>>,
        output: &'a mut Vec<u8>,
    }

    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
