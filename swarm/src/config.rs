//! A node's swarm settings, from the metadata the `metadata` package expands into
//! `/run/config/swarm/`: one file per setting, so the same image boots every node.
//!
//! | file | meaning |
//! |---|---|
//! | `role` | `manager` or `worker` |
//! | `manager` | the IPv4 address of the first manager (the one that initialises the swarm) |
//! | `secret` | the cluster's join secret, 16 to 256 bytes: nodes prove it to get a join token |
//! | `interface` | the network interface of the cluster network (default `eth1`) |

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The interface of a `keel run qemu --nodes` cluster's private network.
pub const DEFAULT_INTERFACE: &str = "eth1";
const MIN_SECRET: usize = 16;
const MAX_SECRET: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// What a node is in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The word used in metadata, in the join protocol and by Docker's API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    pub fn parse(word: &str) -> Option<Role> {
        match word {
            "manager" => Some(Role::Manager),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The join secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// One node's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub role: Role,
    pub manager: Ipv4Addr,
    pub secret: Secret,
    pub interface: String,
}

impl NodeConfig {
    /// Reads `dir` (`/run/config/swarm`). Every problem names the file and what is expected.
    pub fn load(dir: &Path) -> Result<NodeConfig, Error> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, Error> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(Error::Read { path, source }),
            }
        };
        let invalid = |name: &str, problem: String| Error::Invalid {
            path: dir.join(name),
            problem,
        };
        let text = |name: &str| -> Result<String, Error> {
            let bytes = read(name)?
                .ok_or_else(|| invalid(name, "missing: the node's metadata must set it".into()))?;
            String::from_utf8(bytes)
                .map(|s| s.trim().to_owned())
                .map_err(|_| invalid(name, "not UTF-8".into()))
        };
        let role_word = text("role")?;
        let role = Role::parse(&role_word)
            .ok_or_else(|| invalid("role", format!("{role_word:?}: expected manager or worker")))?;
        let manager_text = text("manager")?;
        let manager = manager_text.parse::<Ipv4Addr>().map_err(|_| {
            invalid(
                "manager",
                format!("{manager_text:?}: expected the first manager's IPv4 address"),
            )
        })?;
        let mut secret = read("secret")?
            .ok_or_else(|| invalid("secret", "missing: the node's metadata must set it".into()))?;
        // A trailing newline is how editors and `echo` end a file, not part of the secret.
        while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
            secret.pop();
        }
        if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) {
            return Err(invalid(
                "secret",
                format!(
                    "{} bytes: expected {MIN_SECRET} to {MAX_SECRET}",
                    secret.len()
                ),
            ));
        }
        let interface = match read("interface")? {
            None => DEFAULT_INTERFACE.to_owned(),
            Some(_) => text("interface")?,
        };
        let valid_interface = !interface.is_empty()
            && interface.len() < 16
            && interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid_interface {
            return Err(invalid(
                "interface",
                format!("{interface:?}: expected a network interface name"),
            ));
        }
        Ok(NodeConfig {
            role,
            manager,
            secret: Secret::new(secret),
            interface,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents).unwrap();
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("role", "worker\n"),
        ("manager", "192.168.76.11"),
        ("secret", "0123456789abcdef0123\n"),
    ];

    #[test]
    fn reads_a_worker_with_the_default_interface() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), GOOD);
        let config = NodeConfig::load(dir.path()).unwrap();
        assert_eq!(config.role, Role::Worker);
        assert_eq!(config.manager, Ipv4Addr::new(192, 168, 76, 11));
        assert_eq!(config.secret.bytes(), b"0123456789abcdef0123");
        assert_eq!(config.interface, "eth1");
        assert!(!format!("{config:?}").contains("0123456789"));
    }

    #[test]
    fn bad_settings_name_the_file_and_what_is_expected() {
        for (file, contents, expected) in [
            ("role", "leader", "\"leader\": expected manager or worker"),
            (
                "manager",
                "manager.local",
                "expected the first manager's IPv4",
            ),
            ("secret", "short", "5 bytes: expected 16 to 256"),
            (
                "interface",
                "eth1; reboot",
                "expected a network interface name",
            ),
            ("interface", "", "expected a network interface name"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), GOOD);
            write(dir.path(), &[(file, contents)]);
            let err = NodeConfig::load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains(file) && err.contains(expected),
                "{file}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &GOOD[..2]);
        let err = NodeConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("secret: missing"), "{err}");
        let long = "x".repeat(300);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), GOOD);
        write(dir.path(), &[("secret", &long)]);
        assert!(NodeConfig::load(dir.path()).is_err());
    }
}
