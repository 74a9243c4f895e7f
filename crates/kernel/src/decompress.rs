//! `--decompress-kernel` (LinuxKit's flag): the uncompressed kernel inside a kernel image.
//!
//! Understood containers: an x86 bzImage (boot protocol 2.08 or later, whose header says where
//! the compressed `vmlinux` is), an arm64 EFI zboot image (`MZ…zimg`), and a bare compressed
//! stream (LinuxKit's arm64 `Image.gz`). Codecs: gzip, xz, lzma, zstd and the legacy lz4 frame
//! the kernel's build writes (Debian's x86_64 kernels use lz4). An image that is already
//! uncompressed (an arm64 `Image`, an ELF `vmlinux`) is returned as [`Decompressed::AsIs`].
//!
//! The input is a kernel image from a store, so every offset is checked against the file and
//! the output is capped at [`MAX_UNCOMPRESSED`]: a hostile image fails with a reason, it does
//! not exhaust memory.

use std::io::Read;

/// The largest uncompressed kernel accepted (a distribution's x86_64 vmlinux is 60–80 MiB).
pub const MAX_UNCOMPRESSED: u64 = 512 << 20;

/// The legacy lz4 frame's magic and the size each of its blocks decompresses to at most.
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Why a kernel could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// Neither a known container nor a compressed stream.
    #[error(
        "not a kernel image keel can decompress (bzImage, EFI zboot, or a gzip/xz/lzma/zstd/lz4 stream)"
    )]
    Unknown,
    /// A container's header points outside the file or is too old.
    #[error("invalid {container} header: {reason}")]
    Header {
        /// "bzImage" or "EFI zboot".
        container: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The compressed payload uses a codec keel does not decode.
    #[error(
        "the {container} payload is compressed with {codec}, which keel cannot decompress (gzip, xz, lzma, zstd and lz4 are supported)"
    )]
    Codec {
        /// Where the payload is.
        container: &'static str,
        /// The codec's name.
        codec: String,
    },
    /// The payload is corrupt or truncated.
    #[error("the {codec} payload is corrupt")]
    Corrupt {
        /// The codec.
        codec: &'static str,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// The payload decompresses to more than [`MAX_UNCOMPRESSED`].
    #[error("the kernel decompresses to more than {} MiB", MAX_UNCOMPRESSED >> 20)]
    TooLarge,
}

/// What [`decompress`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decompressed {
    /// The uncompressed kernel, and how it was packed ("bzImage/lz4", "gzip", ...).
    Unpacked { kernel: Vec<u8>, packing: String },
    /// The image is not compressed (an arm64 `Image` or an ELF): nothing to do.
    AsIs,
}

/// The uncompressed kernel inside `image`.
pub fn decompress(image: &[u8]) -> Result<Decompressed, DecompressError> {
    let at = |offset: usize, magic: &[u8]| image.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"\x7fELF") || (at(0x38, b"ARM\x64") && Codec::of(image).is_none()) {
        return Ok(Decompressed::AsIs);
    }
    if at(0x202, b"HdrS") {
        let payload = bzimage_payload(image)?;
        return unpack("bzImage", payload);
    }
    if at(0, b"MZ") && at(4, b"zimg") {
        return zboot(image);
    }
    if Codec::of(image).is_some() {
        return unpack("", image);
    }
    Err(DecompressError::Unknown)
}

/// The compressed `vmlinux` of a bzImage, from its setup header.
fn bzimage_payload(image: &[u8]) -> Result<&[u8], DecompressError> {
    let header = |reason: String| DecompressError::Header {
        container: "bzImage",
        reason,
    };
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let version = image
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| header("truncated".into()))?;
    if version < 0x0208 {
        return Err(header(format!(
            "boot protocol {}.{:02} has no payload fields (2.08 or later is needed)",
            version >> 8,
            version & 0xff
        )));
    }
    // setup_sects 0 means 4, for the oldest boot loaders' sake.
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let (Some(offset), Some(length)) = (u32_at(0x248), u32_at(0x24c)) else {
        return Err(header("truncated".into()));
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
    image.get(start..end).ok_or_else(|| {
        header(format!(
            "the payload ({length} bytes at {start}) lies outside the {}-byte file",
            image.len()
        ))
    })
}

/// An arm64 EFI zboot image: `MZ`, `zimg`, payload offset and size, codec name.
fn zboot(image: &[u8]) -> Result<Decompressed, DecompressError> {
    let header = |reason: String| DecompressError::Header {
        container: "EFI zboot",
        reason,
    };
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| header("truncated".into()))
    };
    let (offset, size) = (u32_at(8)?, u32_at(12)?);
    let name = image
        .get(0x18..0x38)
        .ok_or_else(|| header("truncated".into()))?;
    let name = String::from_utf8_lossy(name.split(|&b| b == 0).next().unwrap_or_default());
    let payload = image
        .get(offset..offset.saturating_add(size))
        .ok_or_else(|| {
            header(format!(
                "the payload ({size} bytes at {offset}) lies outside the {}-byte file",
                image.len()
            ))
        })?;
    match Codec::of(payload) {
        Some(_) => unpack("EFI zboot", payload),
        None => Err(DecompressError::Codec {
            container: "EFI zboot",
            codec: name.into_owned(),
        }),
    }
}

/// The codecs, by their magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Gzip,
    Xz,
    Lzma,
    Zstd,
    Lz4Legacy,
}

impl Codec {
    fn of(data: &[u8]) -> Option<Codec> {
        let starts = |magic: &[u8]| data.starts_with(magic);
        if starts(&[0x1f, 0x8b]) {
            Some(Codec::Gzip)
        } else if starts(b"\xfd7zXZ\0") {
            Some(Codec::Xz)
        } else if starts(&[0x5d, 0, 0]) {
            Some(Codec::Lzma)
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Codec::Zstd)
        } else if starts(&LZ4_LEGACY_MAGIC) {
            Some(Codec::Lz4Legacy)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Xz => "xz",
            Codec::Lzma => "lzma",
            Codec::Zstd => "zstd",
            Codec::Lz4Legacy => "lz4",
        }
    }

    /// The first stream of `data`, decoded. The kernel's build appends the uncompressed size to
    /// some payloads; each decoder stops at the end of its stream, so that trailer is ignored.
    fn decode(self, data: &[u8]) -> Result<Vec<u8>, DecompressError> {
        let corrupt = |source| DecompressError::Corrupt {
            codec: self.name(),
            source,
        };
        let reader: Box<dyn Read + '_> = match self {
            Codec::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
            Codec::Xz => Box::new(liblzma::read::XzDecoder::new(data)),
            Codec::Lzma => Box::new(liblzma::read::XzDecoder::new_stream(
                data,
                liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                    .map_err(|e| corrupt(e.into()))?,
            )),
            Codec::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new(data)
                    .map_err(|e| corrupt(std::io::Error::other(e.to_string())))?,
            ),
            Codec::Lz4Legacy => return lz4_legacy(data).map_err(corrupt),
        };
        let mut out = Vec::new();
        reader
            .take(MAX_UNCOMPRESSED + 1)
            .read_to_end(&mut out)
            .map_err(corrupt)?;
        if out.len() as u64 > MAX_UNCOMPRESSED {
            return Err(DecompressError::TooLarge);
        }
        Ok(out)
    }
}

fn unpack(container: &'static str, payload: &[u8]) -> Result<Decompressed, DecompressError> {
    let codec = Codec::of(payload).ok_or_else(|| DecompressError::Codec {
        container,
        codec: format!(
            "an unknown format (magic {:02x?})",
            &payload[..payload.len().min(4)]
        ),
    })?;
    let kernel = codec.decode(payload)?;
    let packing = if container.is_empty() {
        codec.name().to_owned()
    } else {
        format!("{container}/{}", codec.name())
    };
    Ok(Decompressed::Unpacked { kernel, packing })
}

/// The legacy lz4 frame (`lz4 -l`): the magic, then blocks of a little-endian compressed size
/// and that many bytes, each decompressing to at most 8 MiB; a repeated magic starts another
/// frame. Four bytes left over are the size the kernel's build appends: checked when present.
fn lz4_legacy(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let mut out = Vec::new();
    let mut rest = &data[LZ4_LEGACY_MAGIC.len()..];
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while rest.len() >= 4 {
        let word = [rest[0], rest[1], rest[2], rest[3]];
        rest = &rest[4..];
        if word == LZ4_LEGACY_MAGIC {
            continue;
        }
        let size = u32::from_le_bytes(word) as usize;
        if rest.is_empty() {
            // The appended uncompressed size.
            if size != out.len() {
                return Err(invalid(format!(
                    "the trailer says {size} bytes, the blocks gave {}",
                    out.len()
                )));
            }
            break;
        }
        let chunk = rest.get(..size).ok_or_else(|| {
            invalid(format!(
                "a {size}-byte block in the last {} bytes",
                rest.len()
            ))
        })?;
        rest = &rest[size..];
        let n = lz4_flex::block::decompress_into(chunk, &mut block)
            .map_err(|e| invalid(e.to_string()))?;
        if (out.len() + n) as u64 > MAX_UNCOMPRESSED {
            return Err(invalid(format!("more than {} MiB", MAX_UNCOMPRESSED >> 20)));
        }
        out.extend_from_slice(&block[..n]);
    }
    if !rest.is_empty() {
        return Err(invalid(format!("{} stray bytes at the end", rest.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn vmlinux() -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        v.extend((0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()));
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(data).unwrap();
        xz.finish().unwrap()
    }

    fn lzma(data: &[u8]) -> Vec<u8> {
        let options = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
        let stream = liblzma::stream::Stream::new_lzma_encoder(&options).unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// The legacy lz4 frame, with the size trailer the kernel's build appends.
    fn lz4(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            out.extend(u32::try_from(block.len()).unwrap().to_le_bytes());
            out.extend(block);
        }
        out.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
        out
    }

    /// A bzImage: 2 setup sectors after the boot sector, then the payload at offset 0x40 of
    /// the protected-mode part, with the size trailer after it.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut k = vec![0u8; 3 * 512 + 0x40];
        k[0x1f1] = 2;
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        k[0x24c..0x250].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        k.extend(payload);
        k.extend([0xcc; 64]); // the decompressor's code after the payload
        k
    }

    fn unpacked(image: &[u8]) -> (Vec<u8>, String) {
        match decompress(image).unwrap() {
            Decompressed::Unpacked { kernel, packing } => (kernel, packing),
            Decompressed::AsIs => panic!("not unpacked"),
        }
    }

    #[test]
    fn bzimages_of_every_codec() {
        let v = vmlinux();
        for (payload, packing) in [
            (gzip(&v), "bzImage/gzip"),
            (xz(&v), "bzImage/xz"),
            (lz4(&v), "bzImage/lz4"),
            (lzma(&v), "bzImage/lzma"),
            (
                ruzstd::encoding::compress_to_vec(
                    &v[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
                "bzImage/zstd",
            ),
        ] {
            assert_eq!(
                unpacked(&bzimage(&payload)),
                (v.clone(), packing.to_owned())
            );
        }
    }

    #[test]
    fn bare_streams_zboot_and_uncompressed_images() {
        let v = vmlinux();
        assert_eq!(unpacked(&gzip(&v)), (v.clone(), "gzip".to_owned()));
        let mut zimg = vec![0u8; 0x40];
        zimg[..2].copy_from_slice(b"MZ");
        zimg[4..8].copy_from_slice(b"zimg");
        let payload = gzip(&v);
        zimg[8..12].copy_from_slice(&0x40u32.to_le_bytes());
        zimg[12..16].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        zimg[0x18..0x1c].copy_from_slice(b"gzip");
        zimg.extend(&payload);
        assert_eq!(unpacked(&zimg), (v.clone(), "EFI zboot/gzip".to_owned()));
        // Already uncompressed: an ELF, an arm64 Image.
        assert_eq!(decompress(&v).unwrap(), Decompressed::AsIs);
        let mut image = vec![0u8; 0x40];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(decompress(&image).unwrap(), Decompressed::AsIs);
    }

    #[test]
    fn hostile_images_fail_with_the_reason() {
        let v = vmlinux();
        let reason = |image: &[u8]| decompress(image).unwrap_err().to_string();
        assert!(
            reason(b"garbage").contains("not a kernel image"),
            "{}",
            reason(b"garbage")
        );
        // The payload offset points past the end.
        let mut k = bzimage(&gzip(&v));
        k[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reason(&k).contains("outside"), "{}", reason(&k));
        // An old boot protocol.
        let mut k = bzimage(&gzip(&v));
        k[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        assert!(reason(&k).contains("2.08"), "{}", reason(&k));
        // bzip2 is not decoded.
        let k = bzimage(b"BZh91AY&SY");
        assert!(reason(&k).contains("unknown format"), "{}", reason(&k));
        // A truncated stream.
        let gz = gzip(&v);
        assert!(reason(&gz[..gz.len() / 2]).contains("gzip payload is corrupt"));
        let l = lz4(&v);
        let e = reason(&bzimage(&l[..l.len() - 100]));
        assert!(e.contains("lz4 payload is corrupt"), "{e}");
        // A wrong size trailer.
        let mut l = lz4(&v);
        let n = l.len();
        l[n - 4..].copy_from_slice(&7u32.to_le_bytes());
        let e = format!("{:?}", decompress(&bzimage(&l)).unwrap_err());
        assert!(e.contains("trailer says 7 bytes"), "{e}");
        // A bomb: more than the limit of zeros.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_UNCOMPRESSED >> 20) {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(matches!(decompress(&bomb), Err(DecompressError::TooLarge)));
    }
}
