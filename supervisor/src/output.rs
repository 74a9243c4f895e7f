//! Container output handling: splitting pipe reads into lines and keeping the last lines of
//! each container in memory (for `keelctl logs`).

use std::collections::VecDeque;

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

/// The last `capacity` lines of a container's output.
#[derive(Debug, Clone, Default)]
pub struct LogRing {
    lines: VecDeque<String>,
    capacity: usize,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        LogRing {
            lines: VecDeque::new(),
            capacity,
        }
    }

    pub fn push(&mut self, line: &str) {
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
    }
}
