//! Stream decompressors for `.deb` members (`data.tar.xz`, `.zst`, `.gz`) and compressed files
//! inside packages (`.ko.xz`), chosen by file-name suffix.

use std::io::{self, Read};

/// A compression format recognised by suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// xz (`.xz`).
    Xz,
    /// zstd (`.zst`).
    Zstd,
}

impl Compression {
    /// Splits a known compression suffix off `name`: `data.tar.xz` → (`data.tar`, `Xz`);
    /// a name with no known suffix is returned whole with `None`.
    pub fn split_suffix(name: &str) -> (&str, Compression) {
        for (suffix, kind) in [
            (".xz", Compression::Xz),
            (".zst", Compression::Zstd),
            (".gz", Compression::Gzip),
        ] {
            if let Some(stem) = name.strip_suffix(suffix) {
                return (stem, kind);
            }
        }
        (name, Compression::None)
    }

    /// Wraps `reader` in the matching decoder.
    pub fn decoder<'a, R: Read + Send + 'a>(
        self,
        reader: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
            Compression::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new(reader)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            ),
        })
    }

    /// Decompresses a whole buffer.
    pub fn decompress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() * 3);
        self.decoder(data)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn suffixes_split() {
        assert_eq!(
            Compression::split_suffix("data.tar.xz"),
            ("data.tar", Compression::Xz)
        );
        assert_eq!(
            Compression::split_suffix("a.ko.zst"),
            ("a.ko", Compression::Zstd)
        );
        assert_eq!(
            Compression::split_suffix("data.tar"),
            ("data.tar", Compression::None)
        );
    }

    #[test]
    fn xz_and_gzip_round_trip() {
        let text = b"hello keel".repeat(100);
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&text).unwrap();
        let xz = xz.finish().unwrap();
        assert_eq!(Compression::Xz.decompress(&xz).unwrap(), text);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(Compression::Gzip.decompress(&gz).unwrap(), text);
        assert!(Compression::Xz.decompress(&gz).is_err());
    }

    #[test]
    fn zstd_decodes() {
        let text = b"zstd data for keel ".repeat(50);
        let compressed = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(Compression::Zstd.decompress(&compressed).unwrap(), text);
    }
}
