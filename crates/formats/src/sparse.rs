//! Writing disk images sparsely: a disk of `--size` bytes is mostly zeros, which become holes
//! in the output file instead of written blocks (and never sit in memory).

use std::io::{self, Seek, SeekFrom, Write};

/// A writer that turns all-zero writes into seeks. The disk writers emit their zeros as runs
/// of zero buffers, so those runs become holes; the bytes read back are the same.
/// [`SparseWriter::finish`] must be called: a trailing hole only exists once the last byte is
/// written.
pub struct SparseWriter<W: Write + Seek> {
    out: W,
    /// Zero bytes accepted but not yet skipped over.
    hole: u64,
    written: u64,
}

impl<W: Write + Seek> SparseWriter<W> {
    /// Writes from `out`'s current position.
    pub fn new(out: W) -> Self {
        SparseWriter {
            out,
            hole: 0,
            written: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    fn skip_hole(&mut self) -> io::Result<()> {
        if self.hole > 0 {
            let hole = i64::try_from(self.hole).map_err(io::Error::other)?;
            self.out.seek(SeekFrom::Current(hole))?;
            self.hole = 0;
        }
        Ok(())
    }

    /// Ends a trailing hole by writing its last byte, and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.hole > 0 {
            self.hole -= 1;
            self.skip_hole()?;
            self.out.write_all(&[0])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Whether `buf` is all zeros, compared a block at a time with `memcmp` (a byte loop is several
/// times slower, and a 100 GiB disk is 100 GiB of zeros to look at).
fn is_zero(buf: &[u8]) -> bool {
    static ZERO: [u8; 4096] = [0; 4096];
    buf.chunks(ZERO.len()).all(|c| c == &ZERO[..c.len()])
}

impl<W: Write + Seek> Write for SparseWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if is_zero(buf) {
            self.hole += buf.len() as u64;
        } else {
            self.skip_hole()?;
            self.out.write_all(buf)?;
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub use keel_disk::gpt::write_zeros;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zeros_become_holes_and_read_back_as_zeros() {
        let mut file = tempfile::tempfile().unwrap();
        let mut w = SparseWriter::new(&mut file);
        w.write_all(b"head").unwrap();
        io::copy(&mut io::repeat(0).take(8 << 20), &mut w).unwrap();
        w.write_all(b"middle").unwrap();
        io::copy(&mut io::repeat(0).take(8 << 20), &mut w).unwrap();
        assert_eq!(w.len(), 4 + 6 + (16 << 20));
        w.finish().unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 4 + 6 + (16 << 20));
        // 16 MiB of zeros take (next to) no blocks: they are holes.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut data).unwrap();
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[4 + (8 << 20)..10 + (8 << 20)], b"middle");
        assert!(data[4..4 + (8 << 20)].iter().all(|&b| b == 0));
        assert!(data[10 + (8 << 20)..].iter().all(|&b| b == 0));
    }

    #[test]
    fn writes_the_same_bytes_as_a_plain_writer() {
        let mut plain = Vec::new();
        let mut file = io::Cursor::new(Vec::new());
        let mut w = SparseWriter::new(&mut file);
        for (i, chunk) in [&[0u8; 100][..], b"abc", &[0; 7], b"\0x\0", &[0; 3]]
            .iter()
            .enumerate()
        {
            w.write_all(chunk).unwrap();
            plain.extend_from_slice(chunk);
            assert_eq!(w.len(), plain.len() as u64, "{i}");
        }
        w.finish().unwrap();
        assert_eq!(file.into_inner(), plain);
    }
}
