//! Registry mirrors (`--mirror`, LinuxKit's flag of the same name): pulls from a registry go to
//! its mirror instead, e.g. `docker.io=https://mirror.example` for Docker Hub, or a bare
//! `https://mirror.example` for every registry that has no mirror of its own.
//!
//! A mirror only serves pulls. What it sends is checked exactly as the registry's would be
//! (every manifest and blob against its digest, a pinned reference against its pin), so a
//! mirror can withhold an image but not change a pinned one. There is no fallback to the
//! registry when a mirror fails: a user who names a mirror is often on a network that must not
//! reach the registry, and a silent second request would hide a broken mirror.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Why a `--mirror` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mirror {spec:?}: {reason}")]
pub struct MirrorError {
    /// The value as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// One mirror: `[REGISTRY=]URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The registry it stands in for (normalised: `docker.io` for Docker Hub's names); `None`:
    /// every registry without a mirror of its own.
    pub registry: Option<String>,
    /// `http(s)://host[:port][/path]`, without a trailing `/`.
    pub url: String,
}

impl FromStr for Mirror {
    type Err = MirrorError;

    fn from_str(spec: &str) -> Result<Mirror, MirrorError> {
        let err = |reason| MirrorError {
            spec: spec.to_owned(),
            reason,
        };
        let (registry, url) = match spec.split_once('=') {
            Some((registry, url)) => (Some(registry.trim()), url.trim()),
            None => (None, spec.trim()),
        };
        let registry = match registry {
            Some("") => return Err(err("the registry before '=' is empty")),
            Some(r) if r.contains('/') || r.contains("://") => {
                return Err(err(
                    "the part before '=' must be a registry host (docker.io, ghcr.io:443), not a URL",
                ));
            }
            Some(r) => Some(normalise_registry(r)),
            None => None,
        };
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|_| err("the mirror must be an http:// or https:// URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(err(
                "the mirror must be an http:// or https:// URL, e.g. docker.io=https://mirror.example",
            ));
        }
        if uri.query().is_some() {
            return Err(err("the mirror URL must not have a query"));
        }
        if url.contains('@') {
            return Err(err(
                "the mirror URL must not carry credentials; put them in Docker's config.json",
            ));
        }
        Ok(Mirror {
            registry,
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.registry {
            Some(r) => write!(f, "{r}={}", self.url),
            None => f.write_str(&self.url),
        }
    }
}

/// The mirrors of a pull, by registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors {
    by_registry: BTreeMap<String, String>,
    default: Option<String>,
}

impl Mirrors {
    /// The mirrors in `list`; a later one for the same registry wins (LinuxKit's order: the
    /// environment first, then the command line).
    pub fn new(list: impl IntoIterator<Item = Mirror>) -> Mirrors {
        let mut mirrors = Mirrors::default();
        for m in list {
            match m.registry {
                Some(r) => {
                    mirrors.by_registry.insert(r, m.url);
                }
                None => mirrors.default = Some(m.url),
            }
        }
        mirrors
    }

    /// Parses a space- or comma-separated list (`KEEL_MIRROR`, as LinuxKit's `LINUXKIT_MIRROR`).
    pub fn parse_list(list: &str) -> Result<Vec<Mirror>, MirrorError> {
        list.split([',', ' ', '\t', '\n'])
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }

    /// The mirror URL pulls from `registry` go to, if any.
    pub fn for_registry(&self, registry: &str) -> Option<&str> {
        self.by_registry
            .get(&normalise_registry(registry))
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    /// Whether no mirror is set.
    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty() && self.default.is_none()
    }
}

/// Docker Hub's host names are one registry, as in references.
fn normalise_registry(registry: &str) -> String {
    let registry = registry.to_ascii_lowercase();
    match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => crate::reference::DEFAULT_REGISTRY.to_owned(),
        _ => registry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(s: &str) -> Mirror {
        s.parse().unwrap()
    }

    #[test]
    fn per_registry_and_default_mirrors() {
        let m = Mirrors::new([
            mirror("https://all.example/"),
            mirror("docker.io=http://127.0.0.1:5000"),
            mirror("GHCR.io=https://ghcr-mirror.example/prefix"),
        ]);
        assert_eq!(m.for_registry("docker.io"), Some("http://127.0.0.1:5000"));
        assert_eq!(
            m.for_registry("registry-1.docker.io"),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(
            m.for_registry("ghcr.io"),
            Some("https://ghcr-mirror.example/prefix")
        );
        assert_eq!(m.for_registry("quay.io"), Some("https://all.example"));
        assert!(Mirrors::default().for_registry("docker.io").is_none());
        // The command line comes after the environment and wins.
        let m = Mirrors::new([
            mirror("docker.io=https://env.example"),
            mirror("index.docker.io=https://flag.example"),
        ]);
        assert_eq!(m.for_registry("docker.io"), Some("https://flag.example"));
    }

    #[test]
    fn lists_split_on_commas_and_spaces() {
        let list = Mirrors::parse_list(" docker.io=https://a.example,https://b.example  ").unwrap();
        assert_eq!(
            list.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["docker.io=https://a.example", "https://b.example"]
        );
        assert!(Mirrors::parse_list("").unwrap().is_empty());
    }

    #[test]
    fn bad_mirrors_are_refused_with_the_reason() {
        for (spec, reason) in [
            ("mirror.example", "http:// or https://"),
            ("docker.io=mirror.example:5000", "http:// or https://"),
            ("ftp://mirror.example", "http:// or https://"),
            ("=https://mirror.example", "empty"),
            ("https://docker.io=https://m.example", "registry host"),
            ("docker.io=https://user:pw@m.example", "credentials"),
            ("docker.io=https://m.example/?x=1", "query"),
            ("docker.io=", "http:// or https://"),
        ] {
            let e = spec.parse::<Mirror>().unwrap_err();
            assert_eq!(e.spec, spec);
            assert!(e.to_string().contains(reason), "{spec}: {e}");
        }
    }
}
