//! Image references with Docker-style normalisation (`nginx` → `docker.io/library/nginx:latest`).

use crate::digest::Digest;
use std::fmt;
use std::str::FromStr;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
const HELP: &str = "a valid reference looks like name[:tag][@sha256:<64 hex>], for example \
                    alpine:3.20, docker.io/linuxkit/init:<tag> or localhost:5000/team/app@sha256:…";

/// A normalised image reference: registry, repository path, and a tag and/or a digest.
///
/// A reference with neither tag nor digest gets the tag `latest`. [`fmt::Display`] gives the
/// full normalised form, e.g. `docker.io/library/nginx:latest`, which is also the name under
/// which the store tags images.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A string that is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}; {HELP}")]
pub struct ReferenceError {
    input: String,
    reason: String,
}

impl Reference {
    /// The registry host (with port if any), e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// This reference pinned to `digest` (the tag is kept, for readability).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same reference without its digest (`name:tag@sha256:…` → `name:tag`); a reference
    /// that had only a digest gets the tag `latest`, as if it had been written without one.
    pub fn without_digest(&self) -> Reference {
        Reference {
            tag: Some(self.tag.clone().unwrap_or_else(|| DEFAULT_TAG.to_owned())),
            digest: None,
            ..self.clone()
        }
    }

    /// This reference with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        format!("{}:{tag}", self.name()).parse()
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ReferenceError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(fail("it is empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| fail(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(fail(&format!(
                "tag {tag:?} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            )));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, path.to_owned())
            }
            _ => (DEFAULT_REGISTRY, name.to_owned()),
        };
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
            r => r,
        };
        if !valid_registry(registry) {
            return Err(fail(&format!(
                "registry {registry:?} is not a valid host[:port]"
            )));
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if let Some(bad) = repository.split('/').find(|c| !valid_component(c)) {
            return Err(fail(&format!(
                "path component {bad:?} must be lower-case letters and digits, separated by '.', '_', '__' or '-'"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        // An IPv6 literal such as [::1] has colons inside the brackets.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (registry, None),
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_hexdigit() || c == b':')
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            })
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, as in the distribution reference grammar.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn norm(s: &str) -> String {
        s.parse::<Reference>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn docker_style_normalisation() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(norm("org/x"), "docker.io/org/x:latest");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("index.docker.io/org/x:v1"), "docker.io/org/x:v1");
        assert_eq!(
            norm("linuxkit/init:b5506cc7"),
            "docker.io/linuxkit/init:b5506cc7"
        );
        assert_eq!(norm("ghcr.io/a/b/c:1"), "ghcr.io/a/b/c:1");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("localhost:5000/x:2"), "localhost:5000/x:2");
        assert_eq!(norm("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(norm("[::1]:5000/a:t"), "[::1]:5000/a:t");
        assert_eq!(
            norm("a__b-c---d/f_g.h"),
            "docker.io/a__b-c---d/f_g.h:latest"
        );
    }

    #[test]
    fn digests_and_tags() {
        let r: Reference = format!("alpine@{D}").parse().unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(Digest::as_str), Some(D));

        let r: Reference = format!("localhost:5000/x:1.0@{D}").parse().unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "x");
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.name(), "localhost:5000/x");
        assert_eq!(r.to_string(), format!("localhost:5000/x:1.0@{D}"));

        let pinned = "nginx"
            .parse::<Reference>()
            .unwrap()
            .with_digest(D.parse().unwrap());
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/nginx:latest@{D}")
        );
        assert_eq!(pinned.to_string().parse::<Reference>().unwrap(), pinned);
        assert_eq!(
            pinned.with_tag("2").unwrap().to_string(),
            "docker.io/library/nginx:2"
        );
    }

    #[test]
    fn invalid_references_say_what_is_valid() {
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx@sha256:abc",
            "a//b",
            "/a",
            "a/",
            "a..b/c",
            "bad host:5000/x",
            "localhost:50a00/x/",
            "a_-b",
        ] {
            let err = bad.parse::<Reference>().unwrap_err().to_string();
            assert!(err.contains("a valid reference looks like"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn component_grammar() {
        assert!(valid_component("a"));
        assert!(valid_component("a-b--c"));
        assert!(valid_component("a__b"));
        assert!(!valid_component("a___b"));
        assert!(!valid_component("a._b"));
        assert!(!valid_component("-a"));
        assert!(!valid_component("a."));
    }
}
