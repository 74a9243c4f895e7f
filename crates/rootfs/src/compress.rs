//! The codecs an initramfs is compressed with, each deterministic: the same input gives the
//! same bytes on every host and however the writes are split.

use crate::gzip::{GzipWriter, gzip_writer};
use std::fmt;
use std::io::{self, Write};

/// zstd's own default level: several times faster than gzip -6, with a smaller output. Higher
/// levels shrink an initrd by a further 10–30 % at 3–45× the time of every build; the kernel
/// decompresses every level at the same speed.
const ZSTD_LEVEL: i32 = 3;

/// A compression the kernel can undo when it unpacks an initramfs (`CONFIG_RD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compression {
    /// gzip: what every kernel and LinuxKit use.
    Gzip,
    /// zstd: smaller, and faster to make.
    Zstd,
}

impl Compression {
    /// Every codec, in the order keel prefers them least to most.
    pub const ALL: [Compression; 2] = [Compression::Gzip, Compression::Zstd];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The kernel option that builds its decompressor in.
    pub fn kernel_option(self) -> &'static str {
        match self {
            Compression::Gzip => "CONFIG_RD_GZIP",
            Compression::Zstd => "CONFIG_RD_ZSTD",
        }
    }

    /// The codec named `name`, if any.
    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Wraps `w` in this codec's deterministic encoder.
    pub fn writer<W: Write>(self, w: W) -> io::Result<Compressor<W>> {
        Ok(match self {
            Compression::Gzip => Compressor::Gzip(gzip_writer(w)),
            Compression::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
                // The kernel checks the frame's checksum: a corrupted initrd fails to unpack
                // instead of booting a damaged root.
                z.include_checksum(true)?;
                Compressor::Zstd(z)
            }
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compressing writer. Call [`Compressor::finish`] to end the stream.
pub enum Compressor<W: Write> {
    Gzip(GzipWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// Writes the rest of the stream; returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn compress(codec: Compression, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut w = codec.writer(Vec::new()).unwrap();
        for part in data.chunks(chunk) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn zstd_is_stable_whatever_the_write_sizes_and_round_trips() {
        let data = sample();
        let a = compress(Compression::Zstd, &data, 777);
        let b = compress(Compression::Zstd, &data, 65_536);
        assert_eq!(a, b, "zstd output depends on how the input was split");
        assert_eq!(&a[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd frame magic");
        // Frame header descriptor: bit 2 is the content checksum flag.
        assert_ne!(a[4] & 0b100, 0, "the frame carries no checksum");
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&a[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert!(a.len() < compress(Compression::Gzip, &data, 777).len());
    }

    #[test]
    fn a_damaged_zstd_frame_fails_to_decompress() {
        let mut z = compress(Compression::Zstd, &sample(), 4096);
        let last = z.len() - 1;
        z[last] ^= 0xff;
        let mut back = Vec::new();
        let res = zstd::stream::read::Decoder::new(&z[..])
            .unwrap()
            .read_to_end(&mut back);
        assert!(res.is_err(), "a bad checksum went unnoticed");
    }

    #[test]
    fn names_round_trip() {
        for c in Compression::ALL {
            assert_eq!(Compression::from_name(c.name()), Some(c));
            assert!(c.kernel_option().starts_with("CONFIG_RD_"));
        }
        assert_eq!(Compression::from_name("lz4"), None);
    }
}
