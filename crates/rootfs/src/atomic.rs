//! Output files that appear complete or not at all.

use crate::Error;
use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// The mode of committed outputs, fixed so that it does not depend on the umask.
const OUTPUT_MODE: u32 = 0o644;

/// A file written as `<dest>.tmp-XXXXXX` in the destination's directory and renamed onto
/// `dest` by [`AtomicFile::commit`]. Dropped without a commit, the temporary file is removed,
/// so a failed build leaves nothing behind. Writes are buffered.
pub struct AtomicFile {
    dest: PathBuf,
    file: BufWriter<NamedTempFile>,
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
        prefix.push(".tmp-");
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(6)
            .tempfile_in(dir)
            .map_err(err)?;
        Ok(Self {
            file: BufWriter::with_capacity(1 << 16, temp),
            dest,
        })
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
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
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = AtomicFile::create(dir.path().join("no/such/out"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot create"), "{err}");
    }
}
