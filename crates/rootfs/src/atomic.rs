//! Output files that appear complete or not at all, and what is left of them when the
//! process that wrote them was stopped.
//!
//! A temporary file is `<dest>.tmp-<pid>-XXXXXX` beside its destination. Three ways it goes:
//! committed (renamed onto the destination), dropped (removed), or — when the process is
//! interrupted — removed by [`remove_unfinished`] from a signal watcher, or, after a SIGKILL,
//! by the next run's [`remove_stale`], which knows it by the pid of a process that is gone.

use crate::Error;
use std::collections::BTreeSet;
use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tempfile::NamedTempFile;

/// The mode of committed outputs, fixed so that it does not depend on the umask.
const OUTPUT_MODE: u32 = 0o644;

/// What separates a destination's name from the pid in its temporary files' names.
const TEMP_MARK: &str = ".tmp-";

/// The temporary files of this process that are not committed or dropped yet.
static UNFINISHED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn unfinished() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    UNFINISHED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes every temporary file this process has not committed or dropped: for a signal
/// watcher to call before the process ends (destructors do not run then). Returns how many
/// were removed.
pub fn remove_unfinished() -> usize {
    let paths = std::mem::take(&mut *unfinished());
    paths
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// Removes the temporary files in `dir` that processes now gone left behind (killed with
/// SIGKILL, or by a power cut); another live process's files are kept. Returns the paths
/// removed.
pub fn remove_stale(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// The pid in a temporary file's name (`NAME.tmp-PID-XXXXXX`).
fn temp_owner(name: &str) -> Option<u32> {
    let (_, rest) = name.rsplit_once(TEMP_MARK)?;
    let (pid, random) = rest.split_once('-')?;
    (random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// A temporary file's entry in [`UNFINISHED`], dropped with it.
struct Registered(PathBuf);

impl Registered {
    fn new(path: &Path) -> Self {
        unfinished().insert(path.to_path_buf());
        Registered(path.to_path_buf())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        unfinished().remove(&self.0);
    }
}

/// A file written as `<dest>.tmp-<pid>-XXXXXX` in the destination's directory and renamed
/// onto `dest` by [`AtomicFile::commit`]. Dropped without a commit, the temporary file is
/// removed, so a failed build leaves nothing behind. Writes are buffered.
pub struct AtomicFile {
    dest: PathBuf,
    file: BufWriter<NamedTempFile>,
    _registered: Registered,
}

impl AtomicFile {
    /// Creates the temporary file next to `dest`.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self, Error> {
        let dest = dest.as_ref().to_path_buf();
        let err = |source| Error::File {
            op: "create",
            path: dest.clone(),
            source,
        };
        let name = dest
            .file_name()
            .ok_or_else(|| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut prefix = name.to_os_string();
        prefix.push(format!("{TEMP_MARK}{}-", std::process::id()));
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(6)
            .tempfile_in(dir)
            .map_err(err)?;
        Ok(Self {
            _registered: Registered::new(temp.path()),
            file: BufWriter::with_capacity(1 << 16, temp),
            dest,
        })
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temporary file's path (what is written so far, once flushed).
    pub fn temp_path(&self) -> &Path {
        self.file.get_ref().path()
    }

    /// Flushes, sets mode 0644, syncs, renames onto the destination and syncs its directory.
    pub fn commit(self) -> Result<(), Error> {
        let dest = self.dest;
        let err = |source| Error::File {
            op: "commit",
            path: dest.clone(),
            source,
        };
        let temp = self.file.into_inner().map_err(|e| err(e.into_error()))?;
        let file = temp.as_file();
        file.set_permissions(Permissions::from_mode(OUTPUT_MODE))
            .map_err(err)?;
        file.sync_all().map_err(err)?;
        temp.persist(&dest).map_err(|e| err(e.error))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Seeking (over a disk image's zeros, leaving holes) flushes the buffer first.
impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A directory's entry names, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn commit_renames_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.img");
        fs::write(&dest, b"old").unwrap();
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"new contents").unwrap();
        let listing = names(dir.path());
        assert_eq!(listing.len(), 2);
        assert!(listing[1].starts_with("out.img.tmp-"), "{listing:?}");
        // Until the commit the old file is untouched.
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        f.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new contents");
        assert_eq!(names(dir.path()), ["out.img"]);
        let mode = fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, OUTPUT_MODE);
    }

    #[test]
    fn drop_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(&[7; 100_000]).unwrap();
        drop(f);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn killed_runs_leave_nothing_behind() {
        // (Interrupted runs: tests/interrupted.rs, alone in its process, since
        // remove_unfinished takes every temporary file of the process.)
        let dir = tempfile::tempdir().unwrap();
        // Killed: a later run removes files of processes that are gone, not of live ones.
        let gone = dir.path().join("c.img.tmp-999999999-AbC123");
        let live = dir
            .path()
            .join(format!("d.img.tmp-{}-XyZ789", std::process::id()));
        let other = dir.path().join("notes.tmp-x");
        for p in [&gone, &live, &other] {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(
            remove_stale(dir.path()).unwrap(),
            std::slice::from_ref(&gone)
        );
        assert!(!gone.exists() && live.exists() && other.exists());
        assert_eq!(temp_owner("x.tmp-12-abcdef"), Some(12));
        assert_eq!(temp_owner("x.tmp-12"), None);
        assert!(
            remove_stale(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = AtomicFile::create(dir.path().join("no/such/out"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot create"), "{err}");
    }
}
