//! Container output handling: splitting pipe reads into lines, keeping the last lines of each
//! container in memory (for `keelctl logs`) and writing them to a size-rotated log file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Size of one log file before it is rotated.
pub const LOG_FILE_BYTES: u64 = 1024 * 1024;
/// Log files kept per container: `NAME.log`, `NAME.log.1`, `NAME.log.2`.
pub const LOG_FILES: usize = 3;
/// Buffered bytes written out at once.
const FLUSH_BYTES: usize = 64 * 1024;
/// Lines dropped after a failed open before opening is tried again.
const REOPEN_AFTER: u64 = 1000;

/// Splits a byte stream into lines. A line longer than the limit is cut into pieces, so a
/// container writing without newlines cannot make PID 1 buffer without bound.
#[derive(Debug)]
pub struct LineBuffer {
    partial: Vec<u8>,
    max_line: usize,
}

impl LineBuffer {
    pub fn new(max_line: usize) -> Self {
        LineBuffer {
            partial: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// Feeds `data`, calling `out` with each complete line (without its newline; invalid UTF-8
    /// replaced).
    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(&str)) {
        for &b in data {
            if b == b'\n' {
                self.emit(out);
            } else {
                self.partial.push(b);
                if self.partial.len() >= self.max_line {
                    self.emit(out);
                }
            }
        }
    }

    /// Emits what is left after the stream ended (a last line without newline).
    pub fn finish(&mut self, out: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut dyn FnMut(&str)) {
        let line = String::from_utf8_lossy(&self.partial);
        out(line.trim_end_matches('\r'));
        self.partial.clear();
    }
}

/// The last `capacity` lines of a container's output. Lines are numbered from 0 in the order
/// they came, across restarts, so a reader can follow the stream.
#[derive(Debug, Clone, Default)]
pub struct LogRing {
    lines: VecDeque<String>,
    capacity: usize,
    /// The number the next line gets.
    next: u64,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        LogRing {
            lines: VecDeque::new(),
            capacity,
            next: 0,
        }
    }

    pub fn push(&mut self, line: &str) {
        self.next += 1;
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_owned());
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// The number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The kept lines numbered `after` or later (all when `None`), at most the last `max`,
    /// with their numbers.
    pub fn tail(&self, after: Option<u64>, max: Option<usize>) -> Vec<(u64, &str)> {
        let first = self.next - self.lines.len() as u64;
        let from = after.unwrap_or(first).max(first);
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        let kept: Vec<_> = (first..)
            .zip(self.lines.iter().map(String::as_str))
            .skip(skip)
            .collect();
        let drop = max.map_or(0, |m| kept.len().saturating_sub(m));
        kept.into_iter().skip(drop).collect()
    }
}

/// A container's log file with size-based rotation: when `NAME.log` would grow past
/// `max_bytes` it becomes `NAME.log.1` (the older ones shift, the oldest is removed). Writes are
/// buffered and go to a regular file on tmpfs, which never blocks; a write that fails drops
/// its lines and counts them.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    /// Bytes in the current file, buffered ones included.
    size: u64,
    buf: Vec<u8>,
    /// Lines to drop before opening is tried again after a failure.
    skip: u64,
    /// Lines lost to write errors.
    pub dropped: u64,
}

impl LogFile {
    /// A log file at `path` (opened on the first line, appended to if it exists).
    pub fn new(path: &Path, max_bytes: u64, keep: usize) -> Self {
        LogFile {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            file: None,
            size: 0,
            buf: Vec::new(),
            skip: 0,
            dropped: 0,
        }
    }

    /// Appends `line` and a newline.
    pub fn write_line(&mut self, line: &str) {
        if self.file.is_none() && !self.open() {
            self.dropped += 1;
            return;
        }
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.flush();
            self.rotate();
            if self.file.is_none() && !self.open() {
                self.dropped += 1;
                return;
            }
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.size += len;
        if self.buf.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let Some(file) = self.file.as_mut() else {
            self.buf.clear();
            return;
        };
        if let Err(e) = file.write_all(&self.buf) {
            let lines = self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
            log::warn!("{}: {e}; {lines} lines lost", self.path.display());
            self.dropped += lines;
            self.file = None;
        }
        self.buf.clear();
    }

    fn open(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.size = f.metadata().map_or(0, |m| m.len());
                self.file = Some(f);
                true
            }
            Err(e) => {
                log::warn!("cannot open {}: {e}", self.path.display());
                self.skip = REOPEN_AFTER;
                false
            }
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) {
        self.file = None;
        self.size = 0;
        if self.keep == 1 {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let _ = std::fs::remove_file(self.rotated(self.keep - 1));
        for n in (1..self.keep - 1).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        if let Err(e) = std::fs::rename(&self.path, self.rotated(1)) {
            log::warn!("cannot rotate {}: {e}", self.path.display());
            // Start over rather than grow without bound.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(buf: &mut LineBuffer, chunks: &[&[u8]]) -> Vec<String> {
        let mut v = Vec::new();
        for c in chunks {
            buf.push(c, &mut |l| v.push(l.to_owned()));
        }
        buf.finish(&mut |l| v.push(l.to_owned()));
        v
    }

    #[test]
    fn lines_across_reads() {
        let mut b = LineBuffer::new(100);
        assert_eq!(
            collect(&mut b, &[b"hel", b"lo\r\nwor", b"ld\n\nlast"]),
            ["hello", "world", "", "last"]
        );
    }

    #[test]
    fn long_lines_are_cut() {
        let mut b = LineBuffer::new(4);
        assert_eq!(collect(&mut b, &[b"abcdefghij\n"]), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn ring_keeps_the_last_lines() {
        let mut r = LogRing::new(2);
        for l in ["a", "b", "c"] {
            r.push(l);
        }
        assert_eq!(r.lines().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(r.next_seq(), 3);
    }

    #[test]
    fn ring_tail_follows_by_number() {
        let mut r = LogRing::new(3);
        for l in ["a", "b", "c", "d", "e"] {
            r.push(l);
        }
        assert_eq!(r.tail(None, None), [(2, "c"), (3, "d"), (4, "e")]);
        assert_eq!(r.tail(None, Some(1)), [(4, "e")]);
        assert_eq!(r.tail(Some(4), None), [(4, "e")]);
        assert_eq!(r.tail(Some(0), Some(2)), [(3, "d"), (4, "e")]);
        assert!(r.tail(Some(r.next_seq()), None).is_empty());
        assert!(r.tail(Some(99), None).is_empty());
    }

    #[test]
    fn log_files_rotate_within_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut f = LogFile::new(&path, 100, 3);
        for i in 0..100 {
            f.write_line(&format!("line {i:04} xxxxxxxxxx"));
        }
        f.flush();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["svc.log", "svc.log.1", "svc.log.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 100, "{n}: {len}");
        }
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.ends_with("line 0099 xxxxxxxxxx\n"), "{last}");
        let older = std::fs::read_to_string(dir.path().join("svc.log.1")).unwrap();
        assert!(older.starts_with("line 009"), "{older}");
        assert_eq!(f.dropped, 0);
    }

    #[test]
    fn log_file_errors_drop_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = LogFile::new(&dir.path().join("missing/x.log"), 100, 2);
        f.write_line("a");
        f.write_line("b");
        assert_eq!(f.dropped, 2);
    }
}
