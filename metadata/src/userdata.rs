//! User data into a configuration directory, with LinuxKit's `metadata` semantics: the raw
//! bytes always go to `<base>/userdata`; when they are a JSON object, its members become
//! directories and files under `<base>`.
//!
//! An object with a string `content` is a file (`perm`, an octal string, default `0644`). Any
//! other object is a directory (`perm` default `0755`) whose entries are either the members of
//! its `entries` object (LinuxKit's current form) or, without `entries`, its own members other
//! than a string `perm` (the older form LinuxKit's documentation shows,
//! `{"ssh": {"authorized_keys": {"perm": "0600", "content": "..."}}}`). As in LinuxKit, a bad
//! entry is logged and skipped and the rest is still written. Names that could leave `<base>`
//! (`.`, `..`, anything with `/`) are refused.

use serde_json::{Map, Value};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The raw user data's file name under the base directory.
pub const RAW_FILE: &str = "userdata";

const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`write`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Whether the user data was a JSON object (and so expanded into files).
    pub json: bool,
    /// Files written from the JSON document (not counting `userdata`).
    pub files: usize,
    /// Directories made from the JSON document.
    pub dirs: usize,
    /// Entries skipped, each with the reason (also logged).
    pub skipped: Vec<String>,
}

/// Writes `data` to `<base>/userdata` and, when it is a JSON object, its tree under `base`
/// (which must exist). Fails only when `userdata` itself cannot be written.
pub fn write(base: &Path, data: &[u8]) -> Result<Summary, Error> {
    let raw = base.join(RAW_FILE);
    write_file(&raw, data, FILE_MODE).map_err(|source| Error::Write { path: raw, source })?;
    let mut summary = Summary::default();
    let root = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(root)) => root,
        Ok(_) => {
            log::info!("user data is JSON but not an object: kept as {RAW_FILE} only");
            return Ok(summary);
        }
        Err(e) => {
            log::info!("user data is not JSON ({e}): kept as {RAW_FILE} only");
            return Ok(summary);
        }
    };
    summary.json = true;
    for (name, value) in &root {
        entry(base, name, value, &mut summary);
    }
    Ok(summary)
}

/// Writes one named entry under `dir`, recursing into directories.
fn entry(dir: &Path, name: &str, value: &Value, summary: &mut Summary) {
    let target = dir.join(name);
    let skip = |summary: &mut Summary, why: String| {
        let what = format!("{}: {why}", target.display());
        log::warn!("skipped {what}");
        summary.skipped.push(what);
    };
    if !safe_name(name) {
        skip(summary, "not a plain file name".into());
        return;
    }
    let Value::Object(obj) = value else {
        skip(summary, "not an object".into());
        return;
    };
    if let Some(content) = obj.get("content") {
        let Value::String(content) = content else {
            skip(summary, "content is not a string".into());
            return;
        };
        let mode = match perm(obj, FILE_MODE) {
            Ok(m) => m,
            Err(why) => return skip(summary, why),
        };
        match write_file(&target, content.as_bytes(), mode) {
            Ok(()) => summary.files += 1,
            Err(e) => skip(summary, format!("cannot write: {e}")),
        }
        return;
    }
    let mode = match perm(obj, DIR_MODE) {
        Ok(m) => m,
        Err(why) => return skip(summary, why),
    };
    let children: Vec<(&String, &Value)> = match obj.get("entries") {
        Some(Value::Object(entries)) => entries.iter().collect(),
        _ => obj
            .iter()
            .filter(|(k, v)| !(k.as_str() == "perm" && v.is_string()))
            .collect(),
    };
    if let Err(e) = make_dir(&target, mode) {
        skip(summary, format!("cannot create directory: {e}"));
        return;
    }
    summary.dirs += 1;
    for (name, value) in children {
        entry(&target, name, value, summary);
    }
}

/// The entry's `perm` as a mode, or `default` when it has none.
fn perm(obj: &Map<String, Value>, default: u32) -> Result<u32, String> {
    match obj.get("perm") {
        None => Ok(default),
        Some(Value::String(s)) => u32::from_str_radix(s, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| format!("invalid perm {s:?}: expected an octal mode like \"0600\"")),
        Some(other) => Err(format!("perm {other} is not a string")),
    }
}

fn safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Writes a file with exactly `mode` (not masked by the umask), replacing what was there.
fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    fs::write(path, data)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn make_dir(path: &Path, mode: u32) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
        other => other?,
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn raw_data_is_always_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = write(dir.path(), b"#!/bin/sh\necho hi\n").unwrap();
        assert!(!s.json);
        assert_eq!(read(&dir.path().join("userdata")), "#!/bin/sh\necho hi\n");
        assert_eq!(mode(&dir.path().join("userdata")), 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn json_that_is_not_an_object_writes_no_tree() {
        let dir = tempfile::tempdir().unwrap();
        let s = write(dir.path(), b"[1, 2]").unwrap();
        assert_eq!(s, Summary::default());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn older_form_makes_directories_of_plain_members() {
        let dir = tempfile::tempdir().unwrap();
        let doc = r#"{"ssh": {"authorized_keys": {"perm": "0600", "content": "ssh-ed25519 AAAA k\n"}},
                     "foo": {"bar": {"content": "foobar"}, "baz": {"perm": "0640", "content": "x"}}}"#;
        let s = write(dir.path(), doc.as_bytes()).unwrap();
        assert_eq!((s.json, s.files, s.dirs), (true, 3, 2), "{s:?}");
        let keys = dir.path().join("ssh/authorized_keys");
        assert_eq!(read(&keys), "ssh-ed25519 AAAA k\n");
        assert_eq!(mode(&keys), 0o600);
        assert_eq!(mode(&dir.path().join("ssh")), 0o755);
        assert_eq!(read(&dir.path().join("foo/bar")), "foobar");
        assert_eq!(mode(&dir.path().join("foo/bar")), 0o644);
        assert_eq!(mode(&dir.path().join("foo/baz")), 0o640);
        assert_eq!(read(&dir.path().join("userdata")), doc);
    }

    #[test]
    fn entries_form_nests_and_sets_directory_modes() {
        let dir = tempfile::tempdir().unwrap();
        let doc = r#"{"restricted": {"perm": "0700", "entries": {
                        "password": {"perm": "0600", "content": "secret"},
                        "level2": {"entries": {"file": {"content": "deep"}, "empty": {"entries": {}}}}}},
                      "hostname": {"content": "box"}, "blank": {"content": ""}}"#;
        let s = write(dir.path(), doc.as_bytes()).unwrap();
        assert!(s.skipped.is_empty(), "{s:?}");
        assert_eq!(mode(&dir.path().join("restricted")), 0o700);
        assert_eq!(read(&dir.path().join("restricted/password")), "secret");
        assert_eq!(read(&dir.path().join("restricted/level2/file")), "deep");
        assert!(dir.path().join("restricted/level2/empty").is_dir());
        assert_eq!(read(&dir.path().join("hostname")), "box");
        assert_eq!(read(&dir.path().join("blank")), "");
    }

    #[test]
    fn bad_entries_are_skipped_and_the_rest_written() {
        let dir = tempfile::tempdir().unwrap();
        let doc = r#"{"..": {"x": {"content": "escape"}}, "a/b": {"content": "no"},
                      "bad": {"perm": "0999", "content": "no"}, "num": 3,
                      "typed": {"content": 7}, "good": {"content": "yes"}}"#;
        let s = write(dir.path(), doc.as_bytes()).unwrap();
        assert_eq!(s.skipped.len(), 5, "{s:?}");
        assert_eq!(s.files, 1);
        assert_eq!(read(&dir.path().join("good")), "yes");
        assert!(!dir.path().join("bad").exists());
        assert!(!dir.path().parent().unwrap().join("x").exists());
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["good", "userdata"]);
    }

    #[test]
    fn a_second_run_replaces_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), br#"{"d": {"f": {"content": "one"}}}"#).unwrap();
        write(
            dir.path(),
            br#"{"d": {"f": {"content": "two", "perm": "0600"}}}"#,
        )
        .unwrap();
        assert_eq!(read(&dir.path().join("d/f")), "two");
        assert_eq!(mode(&dir.path().join("d/f")), 0o600);
    }

    #[test]
    fn an_unwritable_base_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(&dir.path().join("missing"), b"x").unwrap_err();
        assert!(err.to_string().contains("userdata"), "{err}");
    }
}
