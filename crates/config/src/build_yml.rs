//! `build.yml`: the manifest of a keel package directory (`keel pkg build`), parsed strictly
//! with positions like the rest of this crate.
//!
//! ```yaml
//! image: keel/init                 # required: repository (the tag is computed)
//! org: keel                        # optional: the organisation of an image without one
//!                                  # (LinuxKit's key; default linuxkit)
//! arches: [x86_64, aarch64]        # default: both
//! config: {pid: host}              # optional: the org.mobyproject.config label
//! entrypoint: ["/init"]            # optional image configuration
//! cmd: []
//! env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
//! workdir: /
//! binaries:                        # Rust binaries of the workspace, built per arch
//!   - { package: keel-init, bin: init, path: /init, links: [/sbin/init] }
//! debs: [busybox-static]           # Debian packages (+ their dependency closure), per arch
//! files:                           # from the package directory
//!   - { source: etc, path: /etc }
//!   - { path: /bin/sh, symlink: busybox }
//!   - { path: /var/empty, directory: true, mode: "0755" }
//!   - { path: /etc/motd, contents: "hi\n", mode: "0644" }
//! ```
//!
//! `config:` is checked against the image-spec schema (the same check [`parse_label`] does on
//! an image's label) and kept as the label text: compact JSON with sorted keys.
//!
//! [`parse_label`]: crate::parse_label

use crate::error::{Error, Loc, Spanned};
use crate::schema::{self, Strings, entries, string, strings, unknown_key};
use crate::values;
use crate::yaml::{self, Kind, Node};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type R<T> = Result<T, Error>;

/// The architecture names `arches:` accepts (OCI and `uname -m` spellings).
pub const ARCH_NAMES: &[&str] = &["x86_64", "aarch64", "amd64", "arm64"];

const TOP_KEYS: &[&str] = &[
    "image",
    "org",
    "arches",
    "config",
    "entrypoint",
    "cmd",
    "env",
    "workdir",
    "binaries",
    "debs",
    "remove",
    "files",
];
const BINARY_KEYS: &[&str] = &["package", "bin", "path", "links"];
const FILE_KEYS: &[&str] = &["path", "source", "symlink", "directory", "contents", "mode"];

/// A parsed `build.yml`.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildManifest {
    /// The image repository, e.g. `keel/init` (no tag, no digest).
    pub image: Spanned<String>,
    /// `org:`, the organisation of an `image` that names none (LinuxKit's key).
    pub org: Option<Spanned<String>>,
    /// The architectures as written (each one of [`ARCH_NAMES`]); `None` means both.
    pub arches: Option<Strings>,
    /// The `org.mobyproject.config` label: compact JSON with sorted keys, validated.
    pub label: Option<Spanned<String>>,
    pub entrypoint: Option<Strings>,
    pub cmd: Option<Strings>,
    pub env: Option<Strings>,
    pub workdir: Option<Spanned<String>>,
    pub binaries: Vec<Binary>,
    /// Debian package names (the roots of the dependency closure).
    pub debs: Vec<Spanned<String>>,
    /// Paths the Debian packages install that the image leaves out (each must exist).
    pub remove: Vec<Spanned<String>>,
    pub files: Vec<PkgFile>,
}

/// A `binaries:` entry: a Rust binary of the workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Binary {
    /// The Cargo package (`-p`).
    pub package: Spanned<String>,
    /// The binary target (`--bin`).
    pub bin: Spanned<String>,
    /// Where it goes in the image (absolute).
    pub path: Spanned<String>,
    /// Paths that become symlinks to `path`.
    pub links: Vec<Spanned<String>>,
    pub loc: Loc,
}

/// A `files:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PkgFile {
    /// The path in the image (absolute, without `..`).
    pub path: Spanned<String>,
    pub content: PkgContent,
    /// `mode:` as given (octal); see [`PkgFile::mode`] for the defaults.
    pub mode: Option<Spanned<u32>>,
    pub loc: Loc,
}

/// What a `files:` entry puts at its path.
#[derive(Debug, Clone, PartialEq)]
pub enum PkgContent {
    /// A file or directory tree of the package directory (relative, without `..`).
    Source(Spanned<String>),
    Symlink(Spanned<String>),
    Directory,
    Contents(Spanned<String>),
}

impl PkgFile {
    /// The mode: the given one, else 0755 for directories and 0644 for contents. `None` for
    /// symlinks and for sources without `mode:` (their modes come from the files).
    pub fn mode(&self) -> Option<u32> {
        match (&self.mode, &self.content) {
            (Some(m), _) => Some(m.value),
            (None, PkgContent::Directory) => Some(0o755),
            (None, PkgContent::Contents(_)) => Some(0o644),
            (None, _) => None,
        }
    }
}

/// Why [`load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] Error),
}

/// Reads and parses a `build.yml` file.
pub fn load(path: &Path) -> Result<BuildManifest, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(&path.display().to_string(), &text)?)
}

/// Parses `build.yml` text; `name` is used in error positions.
pub fn parse(name: &str, text: &str) -> R<BuildManifest> {
    let source: Arc<str> = Arc::from(name);
    let root = yaml::parse(&source, text)?
        .filter(|n| !matches!(n.kind, Kind::Null))
        .ok_or_else(|| {
            Loc::new(&source, 1, 1).err("build.yml is empty; it needs at least \"image\"")
        })?;
    let mut image = None;
    let mut m = BuildManifest {
        image: Spanned::new(String::new(), root.loc.clone()),
        org: None,
        arches: None,
        label: None,
        entrypoint: None,
        cmd: None,
        env: None,
        workdir: None,
        binaries: Vec::new(),
        debs: Vec::new(),
        remove: Vec::new(),
        files: Vec::new(),
    };
    for (k, key, v) in entries(&root, "build.yml")? {
        match key {
            "image" => image = Some(image_name(v)?),
            "org" => m.org = Some(org_name(v)?),
            "arches" => m.arches = Some(arches(v)?),
            "config" => m.label = Some(label(v)?),
            "entrypoint" => m.entrypoint = Some(strings(v, key)?),
            "cmd" => m.cmd = Some(strings(v, key)?),
            "env" => {
                let env = strings(v, key)?;
                for e in env.iter() {
                    if !e.contains('=') {
                        return Err(e
                            .loc
                            .err(format!("env entry {:?} is not NAME=VALUE", e.value)));
                    }
                }
                m.env = Some(env);
            }
            "workdir" => m.workdir = Some(string(v)?),
            "binaries" => m.binaries = items(v, key)?.iter().map(binary).collect::<R<_>>()?,
            "debs" => {
                let debs = strings(v, key)?;
                for d in debs.iter() {
                    check_deb_name(d)?;
                }
                m.debs = debs.value;
            }
            "remove" => {
                m.remove = items(v, key)?
                    .iter()
                    .map(|n| image_path(n, "remove path"))
                    .collect::<R<_>>()?;
            }
            "files" => m.files = items(v, key)?.iter().map(file).collect::<R<_>>()?,
            other => return Err(unknown_key(k, other, "build.yml", TOP_KEYS)),
        }
    }
    m.image = image.ok_or_else(|| root.loc.err("build.yml is missing \"image\""))?;
    if let Some(org) = &m.org
        && m.image.contains('/')
    {
        return Err(org.loc.err(format!(
            "org {:?} with an image that names its own organisation ({}): write image: {} and org:, or the image alone",
            org.value,
            m.image.value,
            m.image.rsplit('/').next().unwrap_or_default()
        )));
    }
    check_unique_paths(&m)?;
    Ok(m)
}

fn items<'a>(n: &'a Node, what: &str) -> R<&'a [Node]> {
    match &n.kind {
        Kind::Seq(items) => Ok(items),
        _ => Err(n.loc.err(format!(
            "expected a list for {what}, found {}",
            n.describe()
        ))),
    }
}

fn boolean(n: &Node) -> R<bool> {
    match &n.kind {
        Kind::Scalar { text, plain: true } if text == "true" => Ok(true),
        Kind::Scalar { text, plain: true } if text == "false" => Ok(false),
        _ => Err(n
            .loc
            .err(format!("expected true or false, found {}", n.describe()))),
    }
}

fn image_name(n: &Node) -> R<Spanned<String>> {
    let s = string(n)?;
    let last = s.rsplit('/').next().unwrap_or_default();
    let ok = !s.is_empty()
        && !s.contains('@')
        && !last.contains(':')
        && !last.is_empty()
        && !s.contains(char::is_whitespace);
    if !ok {
        return Err(s.loc.err(format!(
            "invalid image {:?}; expected a repository without tag or digest, such as keel/init",
            s.value
        )));
    }
    Ok(s)
}

/// An organisation: lower-case letters, digits, `.`, `_`, `-`, and `/` between components
/// (`linuxkit`, `ghcr.io/me`), as a repository's path begins.
fn org_name(n: &Node) -> R<Spanned<String>> {
    let s = string(n)?;
    let ok = !s.is_empty()
        && s.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        });
    if !ok {
        return Err(s.loc.err(format!(
            "invalid org {:?}; expected an organisation such as linuxkit or ghcr.io/me",
            s.value
        )));
    }
    Ok(s)
}

fn arches(n: &Node) -> R<Strings> {
    let list = strings(n, "arches")?;
    if list.is_empty() {
        return Err(list.loc.err("arches is empty; omit it to build for both"));
    }
    for a in list.iter() {
        if !ARCH_NAMES.contains(&a.as_str()) {
            return Err(a.loc.err(format!(
                "unknown architecture {:?}; expected one of: {}",
                a.value,
                ARCH_NAMES.join(", ")
            )));
        }
    }
    Ok(list)
}

/// Validates `config:` as an image spec without name/image and renders it as the label text.
fn label(n: &Node) -> R<Spanned<String>> {
    let (_, _, fields) = schema::image_map(n, "config", true)?;
    let value = serde_json::to_value(&fields).map_err(|source| Error::Json {
        what: "org.mobyproject.config label",
        source,
    })?;
    let text = serde_json::to_string(&sorted(value)).map_err(|source| Error::Json {
        what: "org.mobyproject.config label",
        source,
    })?;
    // What `keel build` will read back must pass the label check too.
    crate::parse_label(&text, "build.yml config")?;
    Ok(Spanned::new(text, n.loc.clone()))
}

/// Sorts object keys recursively (independent of serde_json's map feature flags).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn check_deb_name(d: &Spanned<String>) -> R<()> {
    // Debian policy: lower-case letters, digits, `+`, `-`, `.`; at least two characters,
    // starting with a letter or digit.
    let ok = d.len() >= 2
        && d.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && d.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(d.loc.err(format!(
            "invalid Debian package name {:?}; versions and architectures are pinned in build.lock.json",
            d.value
        )))
    }
}

/// An image path: absolute or relative to `/`, not `/` itself, without `..`.
fn image_path(n: &Node, what: &str) -> R<Spanned<String>> {
    let s = string(n)?;
    let trimmed = s.trim_start_matches('/');
    if trimmed.is_empty() || s.split('/').any(|c| c == "..") {
        return Err(s.loc.err(format!(
            "invalid {what} {:?}; expected a path such as /usr/bin/x, without \"..\"",
            s.value
        )));
    }
    Ok(Spanned::new(format!("/{trimmed}"), s.loc))
}

fn binary(n: &Node) -> R<Binary> {
    let (mut package, mut bin, mut path, mut links) = (None, None, None, Vec::new());
    for (k, key, v) in entries(n, "binary")? {
        match key {
            "package" => package = Some(string(v)?),
            "bin" => bin = Some(string(v)?),
            "path" => path = Some(image_path(v, "path")?),
            "links" => {
                links = items(v, key)?
                    .iter()
                    .map(|l| image_path(l, "link"))
                    .collect::<R<_>>()?;
            }
            other => return Err(unknown_key(k, other, "binary", BINARY_KEYS)),
        }
    }
    let missing = |field: &str| n.loc.err(format!("binary is missing \"{field}\""));
    let package = package.ok_or_else(|| missing("package"))?;
    let bin = bin.ok_or_else(|| missing("bin"))?;
    let path = path.ok_or_else(|| missing("path"))?;
    for s in [&package, &bin] {
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(s.loc.err(format!("invalid Cargo name {:?}", s.value)));
        }
    }
    Ok(Binary {
        package,
        bin,
        path,
        links,
        loc: n.loc.clone(),
    })
}

fn file(n: &Node) -> R<PkgFile> {
    let mut path = None;
    let mut mode = None;
    let mut kinds: Vec<(&str, PkgContent)> = Vec::new();
    for (k, key, v) in entries(n, "file")? {
        match key {
            "path" => path = Some(image_path(v, "path")?),
            "source" => {
                let s = string(v)?;
                if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
                    return Err(s.loc.err(format!(
                        "invalid source {:?}; expected a path inside the package directory",
                        s.value
                    )));
                }
                kinds.push((key, PkgContent::Source(s)));
            }
            "symlink" => kinds.push((key, PkgContent::Symlink(string(v)?))),
            "contents" => kinds.push((key, PkgContent::Contents(string(v)?))),
            "directory" => {
                if boolean(v)? {
                    kinds.push((key, PkgContent::Directory));
                }
            }
            "mode" => {
                let m = string(v)?;
                mode = Some(Spanned::new(values::parse_octal(&m)?, m.loc));
            }
            other => return Err(unknown_key(k, other, "file", FILE_KEYS)),
        }
    }
    let path = path.ok_or_else(|| n.loc.err("file is missing \"path\""))?;
    let content = match kinds.len() {
        1 => kinds.remove(0).1,
        0 => {
            return Err(n.loc.err(format!(
                "file {:?} has no content; set one of: source, symlink, directory, contents",
                path.value
            )));
        }
        _ => {
            return Err(n.loc.err(format!(
                "file {:?} sets both {} and {}; set only one of: source, symlink, directory, contents",
                path.value, kinds[0].0, kinds[1].0
            )));
        }
    };
    if let (Some(m), PkgContent::Symlink(_)) = (&mode, &content) {
        return Err(m.loc.err("a symlink has no mode"));
    }
    Ok(PkgFile {
        path,
        content,
        mode,
        loc: n.loc.clone(),
    })
}

/// Two entries (binaries, links, files) may not claim the same image path.
fn check_unique_paths(m: &BuildManifest) -> R<()> {
    let mut seen: std::collections::HashMap<&str, &Loc> = std::collections::HashMap::new();
    let paths = m
        .binaries
        .iter()
        .flat_map(|b| std::iter::once(&b.path).chain(&b.links))
        .chain(m.files.iter().map(|f| &f.path));
    for p in paths {
        if let Some(first) = seen.insert(p.as_str(), &p.loc) {
            return Err(p
                .loc
                .err(format!("path {:?} is already used at {first}", p.value)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("build.yml", text).unwrap_err().to_string()
    }

    const FULL: &str = r#"
image: keel/init
arches: [x86_64, arm64]
config:
  readonly: true
  pid: host
  capabilities: [CAP_SYS_ADMIN]
entrypoint: ["/init"]
cmd: []
env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
workdir: /
binaries:
  - { package: keel-init, bin: init, path: /init, links: [/sbin/init] }
debs: [busybox-static]
files:
  - { source: etc, path: /etc }
  - { path: /bin/sh, symlink: busybox }
  - { path: var/empty, directory: true, mode: "0700" }
  - { path: /etc/motd, contents: "hi\n" }
"#;

    #[test]
    fn remove_takes_image_paths() {
        let m = parse(
            "build.yml",
            "image: x\ndebs: [busybox-static]\nremove: [/usr/share/doc, usr/bin/x]\n",
        )
        .unwrap();
        let paths: Vec<&str> = m.remove.iter().map(|p| p.as_str()).collect();
        assert_eq!(paths, ["/usr/share/doc", "/usr/bin/x"]);
        for bad in ["[/]", "[/usr/../etc]", "/usr/bin/x"] {
            let text = format!("image: x\ndebs: [busybox-static]\nremove: {bad}\n");
            let err = parse("build.yml", &text).unwrap_err().to_string();
            assert!(err.starts_with("build.yml:3:"), "{bad}: {err}");
        }
    }

    #[test]
    fn full_manifest_parses() {
        let m = parse("build.yml", FULL).unwrap();
        assert_eq!(m.image.as_str(), "keel/init");
        let arches: Vec<&str> = m
            .arches
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| a.as_str())
            .collect();
        assert_eq!(arches, ["x86_64", "arm64"]);
        // Sorted keys, compact, typed per the schema.
        assert_eq!(
            m.label.as_ref().unwrap().as_str(),
            r#"{"capabilities":["CAP_SYS_ADMIN"],"pid":"host","readonly":true}"#
        );
        assert_eq!(m.cmd.as_ref().unwrap().len(), 0);
        assert_eq!(m.binaries[0].links[0].as_str(), "/sbin/init");
        assert_eq!(m.debs[0].as_str(), "busybox-static");
        assert_eq!(m.files.len(), 4);
        assert!(matches!(&m.files[0].content, PkgContent::Source(s) if s.as_str() == "etc"));
        assert_eq!(m.files[0].mode(), None);
        assert_eq!(m.files[2].path.as_str(), "/var/empty");
        assert_eq!(m.files[2].mode(), Some(0o700));
        assert_eq!(m.files[3].mode(), Some(0o644));
    }

    #[test]
    fn minimal_manifest_has_defaults() {
        let m = parse("b.yml", "image: x/y\n").unwrap();
        assert!(m.arches.is_none() && m.label.is_none() && m.entrypoint.is_none());
        assert!(m.binaries.is_empty() && m.debs.is_empty() && m.files.is_empty());
    }

    #[test]
    fn unknown_keys_have_positions() {
        assert_eq!(
            err("image: x/y\nimagee: z\n"),
            "build.yml:2:1: unknown key \"imagee\" in build.yml (did you mean image?); expected one of: image, org, arches, config, entrypoint, cmd, env, workdir, binaries, debs, remove, files"
        );
        let e = err("image: x/y\nfiles:\n  - {path: /a, contents: x, owner: 0}\n");
        assert!(
            e.starts_with("build.yml:3:29: unknown key \"owner\" in file"),
            "{e}"
        );
        let e = err("image: x/y\nbinaries:\n  - {package: a, bin: b, path: /b, link: []}\n");
        assert!(
            e.starts_with("build.yml:3:36: unknown key \"link\" in binary"),
            "{e}"
        );
    }

    #[test]
    fn config_is_checked_like_a_label() {
        let e = err("image: x/y\nconfig:\n  pid: host\n  capabilitys: []\n");
        assert!(
            e.starts_with("build.yml:4:3: unknown key \"capabilitys\""),
            "{e}"
        );
        let e = err("image: x/y\nconfig:\n  name: x\n");
        assert!(e.starts_with("build.yml:3:3: name cannot be set"), "{e}");
        let e = err("image: x/y\nconfig:\n  capabilities: [CAP_NOPE]\n");
        assert!(e.starts_with("build.yml:3:18:"), "{e}");
    }

    #[test]
    fn bad_values_have_positions() {
        assert!(err("arches: [x86_64]\n").contains("missing \"image\""));
        assert!(err("").contains("empty"));
        assert!(err("image: x/y:1\n").starts_with("build.yml:1:8: invalid image"));
        assert!(
            err("image: x\narches: [riscv64]\n")
                .starts_with("build.yml:2:10: unknown architecture")
        );
        assert!(err("image: x\narches: []\n").starts_with("build.yml:2:9: arches is empty"));
        assert!(
            err("image: x\ndebs: [busybox=1.0]\n").starts_with("build.yml:2:8: invalid Debian")
        );
        assert!(err("image: x\nenv: [PATH]\n").starts_with("build.yml:2:7: env entry"));
        let e = err("image: x\norg: Me\n");
        assert!(e.starts_with("build.yml:2:6: invalid org \"Me\""), "{e}");
        assert!(err("image: x\norg: a//b\n").contains("invalid org"));
        let e = err("image: keel/x\norg: me\n");
        assert!(
            e.starts_with("build.yml:2:6: org \"me\" with an image that names its own")
                && e.contains("write image: x and org:"),
            "{e}"
        );
        let m = parse("build.yml", "image: x\norg: ghcr.io/me\n").unwrap();
        assert_eq!(m.org.unwrap().value, "ghcr.io/me");
        let e = err("image: x\nfiles:\n  - {path: /a, source: ../etc}\n");
        assert!(e.starts_with("build.yml:3:24: invalid source"), "{e}");
        let e = err("image: x\nfiles:\n  - {path: /a/../b, contents: x}\n");
        assert!(e.starts_with("build.yml:3:12: invalid path"), "{e}");
        let e = err("image: x\nfiles:\n  - {path: /a, contents: x, symlink: y}\n");
        assert!(
            e.starts_with("build.yml:3:5: file \"/a\" sets both contents and symlink"),
            "{e}"
        );
        let e = err("image: x\nfiles:\n  - {path: /a}\n");
        assert!(e.contains("has no content"), "{e}");
        let e = err("image: x\nfiles:\n  - {path: /a, contents: x, mode: \"999\"}\n");
        assert!(e.starts_with("build.yml:3:35: invalid mode"), "{e}");
        let e = err("image: x\nbinaries:\n  - {package: a, path: /b}\n");
        assert!(
            e.starts_with("build.yml:3:5: binary is missing \"bin\""),
            "{e}"
        );
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let e = err(
            "image: x\nbinaries:\n  - {package: a, bin: b, path: /init, links: [/sbin/init]}\nfiles:\n  - {path: sbin/init, contents: x}\n",
        );
        assert!(
            e.starts_with("build.yml:5:12: path \"/sbin/init\" is already used at build.yml:3:"),
            "{e}"
        );
    }

    #[test]
    fn load_reports_missing_files() {
        let e = load(Path::new("/nonexistent/build.yml")).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/build.yml"));
    }
}
