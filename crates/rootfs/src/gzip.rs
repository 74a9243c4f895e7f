//! Deterministic gzip: fixed level, zero mtime, no file name, fixed OS byte.

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use std::io::{self, Write};

/// The compression level: zlib's default, a good size/speed balance for initrds.
const LEVEL: u32 = 6;
/// The gzip header's OS byte: 255 ("unknown"), as Go's compress/gzip writes, so the output does
/// not depend on the build host.
const OS_UNKNOWN: u8 = 255;

/// A gzip stream whose bytes depend only on the input. Call [`GzipWriter::finish`] to write
/// the trailer; dropping it instead finishes the stream but ignores errors.
pub struct GzipWriter<W: Write>(GzEncoder<W>);

/// Wraps `w` in a deterministic gzip encoder.
pub fn gzip_writer<W: Write>(w: W) -> GzipWriter<W> {
    GzipWriter(
        GzBuilder::new()
            .mtime(0)
            .operating_system(OS_UNKNOWN)
            .write(w, Compression::new(LEVEL)),
    )
}

impl<W: Write> GzipWriter<W> {
    /// Writes the remaining compressed data and the trailer; returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.0.finish()
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn compress(data: &[u8]) -> Vec<u8> {
        let mut gz = gzip_writer(Vec::new());
        // Uneven chunks: the output must not depend on how the input was split.
        for chunk in data.chunks(777) {
            gz.write_all(chunk).unwrap();
        }
        gz.finish().unwrap()
    }

    #[test]
    fn stable_and_round_trips() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let a = compress(&data);
        let b = compress(&data);
        assert_eq!(a, b);
        // Header: magic, deflate, no flags, zero mtime, OS byte.
        assert_eq!(&a[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[9], OS_UNKNOWN);
        let mut back = Vec::new();
        GzDecoder::new(&a[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(a.len() < data.len() / 2);
    }
}
