//! The package-directory files `files: source:` entries use: read once, with modes normalised
//! the way git records them (0755 when any execute bit is set, else 0644; directories 0755), so
//! that a checkout's umask does not change the image or its tag.

use crate::error::{Error, Result};
use keel_config::build_yml::{BuildManifest, PkgContent};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One file-system object of the package directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    File { mode: u32, data: Vec<u8> },
    Dir,
    Symlink(PathBuf),
}

/// Every object under each `source:` (the source itself included), keyed by its
/// `/`-separated path relative to the package directory.
pub(crate) type Sources = BTreeMap<String, Input>;

pub(crate) fn collect(dir: &Path, manifest: &BuildManifest) -> Result<Sources> {
    let mut out = Sources::new();
    for f in &manifest.files {
        if let PkgContent::Source(s) = &f.content {
            let rel = s.trim_end_matches('/').trim_start_matches("./");
            walk(dir, rel, &f.loc.to_string(), &mut out)?;
        }
    }
    Ok(out)
}

fn walk(dir: &Path, rel: &str, loc: &str, out: &mut Sources) -> Result<()> {
    if out.contains_key(rel) {
        return Ok(());
    }
    let path = dir.join(rel);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let meta = std::fs::symlink_metadata(&path).map_err(io("read", &path))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(&path).map_err(io("read", &path))?;
        out.insert(rel.to_owned(), Input::Symlink(target));
    } else if ft.is_file() {
        let data = std::fs::read(&path).map_err(io("read", &path))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        out.insert(rel.to_owned(), Input::File { mode, data });
    } else if ft.is_dir() {
        out.insert(rel.to_owned(), Input::Dir);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(io("list", &path))? {
            let entry = entry.map_err(io("list", &path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(Error::UnsupportedSource {
                    loc: loc.to_owned(),
                    path: entry.path(),
                    what: "not UTF-8",
                });
            };
            names.push(name.to_owned());
        }
        names.sort();
        for name in names {
            walk(dir, &format!("{rel}/{name}"), loc, out)?;
        }
    } else {
        return Err(Error::UnsupportedSource {
            loc: loc.to_owned(),
            path,
            what: "a special file",
        });
    }
    Ok(())
}

/// The objects of source `rel`: the source itself (suffix `""`) and everything below it
/// (suffix `/a/b`), in path order.
pub(crate) fn under<'a>(
    sources: &'a Sources,
    rel: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Input)> + 'a {
    let rel = rel.trim_end_matches('/').trim_start_matches("./");
    sources.iter().filter_map(move |(k, v)| {
        let rest = k.strip_prefix(rel)?;
        (rest.is_empty() || rest.starts_with('/')).then_some((rest, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_walked_with_normalised_modes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("etc/sub")).unwrap();
        std::fs::write(d.join("etc/a"), "a").unwrap();
        std::fs::set_permissions(d.join("etc/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(d.join("etc/sub/run"), "#!").unwrap();
        std::fs::set_permissions(
            d.join("etc/sub/run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::os::unix::fs::symlink("a", d.join("etc/link")).unwrap();
        std::fs::write(d.join("etc-other"), "x").unwrap();
        let m = keel_config::build_yml::parse(
            "b.yml",
            "image: x\nfiles:\n  - {source: etc, path: /etc}\n  - {source: etc-other, path: /o}\n",
        )
        .unwrap();
        let s = collect(d, &m).unwrap();
        let keys: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "etc",
                "etc-other",
                "etc/a",
                "etc/link",
                "etc/sub",
                "etc/sub/run"
            ]
        );
        assert_eq!(
            s["etc/a"],
            Input::File {
                mode: 0o644,
                data: b"a".to_vec()
            }
        );
        assert!(matches!(s["etc/sub/run"], Input::File { mode: 0o755, .. }));
        assert_eq!(s["etc/link"], Input::Symlink("a".into()));
        let under: Vec<&str> = under(&s, "etc").map(|(k, _)| k).collect();
        assert_eq!(under, ["", "/a", "/link", "/sub", "/sub/run"]);
    }

    #[test]
    fn missing_sources_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let m = keel_config::build_yml::parse(
            "b.yml",
            "image: x\nfiles:\n  - {source: nope, path: /etc}\n",
        )
        .unwrap();
        let e = collect(dir.path(), &m).unwrap_err();
        assert!(e.to_string().starts_with("cannot read"), "{e}");
        assert!(e.to_string().ends_with("/nope"), "{e}");
    }
}
