//! Layer compression: decompressing gzip, zstd and plain tar layers for reading, and the
//! deterministic gzip used when keel writes layers itself.

use crate::blob::BlobReader;
use crate::digest::{Digest, Hasher};
use flate2::bufread::MultiGzDecoder;
use oci_spec::image::MediaType;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use std::io::{self, BufRead, BufReader, Read, Write};

/// The source a layer is decompressed from: a verifying reader over the stored blob.
pub type LayerSource = BufReader<BlobReader<Box<dyn Read + Send>>>;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames, skippable frames ignored).
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or `None` if the type does not say.
    pub fn from_media_type(media_type: &MediaType) -> Option<Compression> {
        match media_type {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => {
                Some(Compression::None)
            }
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Some(Compression::Gzip)
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Some(Compression::Zstd)
            }
            MediaType::Other(s) => match s.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                    Some(Compression::Gzip)
                }
                "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
                _ => None,
            },
            _ => None,
        }
    }

    /// The compression the first bytes of a blob show (tar when no known magic matches).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A layer whose uncompressed content does not hash to the `rootfs.diff_ids` entry its image
/// config gives it: the config lies about the layer, or the layer is not the one it describes.
///
/// A reader from [`crate::Store::open_image_layer`] returns it wrapped in an [`io::Error`];
/// [`DiffIdMismatch::find`] digs it out of an error chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "layer {layer} of {image} does not match its image config: rootfs.diff_ids says {expected}, the uncompressed layer hashes to {actual}"
)]
pub struct DiffIdMismatch {
    /// The image.
    pub image: String,
    /// The layer blob's digest.
    pub layer: Digest,
    /// The diff ID the config gives.
    pub expected: String,
    /// What the uncompressed layer hashes to.
    pub actual: Digest,
}

impl DiffIdMismatch {
    /// The first `DiffIdMismatch` in `err` or its sources (looking inside `io::Error`s too).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a DiffIdMismatch> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(m) = e.downcast_ref::<DiffIdMismatch>() {
                return Some(m);
            }
            if let Some(inner) = e
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<DiffIdMismatch>())
            {
                return Some(inner);
            }
            cur = e.source();
        }
        None
    }
}

/// The diff ID check of a [`LayerReader`]: hashes what it yields, compares at the end.
struct DiffCheck {
    hasher: Option<Hasher>,
    image: String,
    layer: Digest,
    expected: String,
    failure: Option<DiffIdMismatch>,
}

/// A decompressing reader over one layer blob, yielding the uncompressed tar stream.
///
/// The blob's digest is checked when the compressed stream is exhausted. A tar reader stops at
/// the end-of-archive marker without reading the padding after it, so call
/// [`LayerReader::finish`] once done: it drains the rest and reports a corrupt blob.
pub struct LayerReader {
    decoder: Decoder,
    diff: Option<DiffCheck>,
}

enum Decoder {
    Plain(Box<LayerSource>),
    Gzip(Box<MultiGzDecoder<LayerSource>>),
    Zstd(Box<ZstdReader<LayerSource>>),
}

impl LayerReader {
    /// Decompress `blob` as `media_type` says; unknown media types are sniffed by magic number.
    pub fn new(blob: BlobReader<Box<dyn Read + Send>>, media_type: &MediaType) -> io::Result<Self> {
        let mut source = BufReader::with_capacity(128 * 1024, blob);
        let compression = match Compression::from_media_type(media_type) {
            Some(c) => c,
            None => Compression::sniff(source.fill_buf()?),
        };
        let decoder = match compression {
            Compression::None => Decoder::Plain(Box::new(source)),
            Compression::Gzip => Decoder::Gzip(Box::new(MultiGzDecoder::new(source))),
            Compression::Zstd => Decoder::Zstd(Box::new(ZstdReader::new(source))),
        };
        Ok(LayerReader {
            decoder,
            diff: None,
        })
    }

    /// Also check that the uncompressed stream hashes to `diff_id` (the image config's
    /// `rootfs.diff_ids` entry for this layer): at its end, a read fails with an error carrying
    /// a [`DiffIdMismatch`] if it does not.
    pub fn check_diff_id(mut self, image: String, layer: Digest, diff_id: String) -> Self {
        self.diff = Some(DiffCheck {
            hasher: Some(Hasher::default()),
            image,
            layer,
            expected: diff_id,
            failure: None,
        });
        self
    }

    /// Read whatever is left (decompressed and compressed) so the blob's digest is checked.
    pub fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        let source = match &mut self.decoder {
            Decoder::Plain(s) => &mut **s,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zstd(d) => &mut d.src,
        };
        io::copy(source, &mut io::sink())?;
        Ok(())
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mismatch = |m: &DiffIdMismatch| io::Error::new(io::ErrorKind::InvalidData, m.clone());
        if let Some(m) = self.diff.as_ref().and_then(|d| d.failure.as_ref()) {
            return Err(mismatch(m));
        }
        let n = match &mut self.decoder {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }?;
        let Some(check) = self.diff.as_mut() else {
            return Ok(n);
        };
        if n > 0 {
            if let Some(h) = check.hasher.as_mut() {
                h.update(&buf[..n]);
            }
        } else if !buf.is_empty()
            && let Some(actual) = check.hasher.take().map(Hasher::finish)
            && actual.as_str() != check.expected
        {
            let m = DiffIdMismatch {
                image: check.image.clone(),
                layer: check.layer.clone(),
                expected: check.expected.clone(),
                actual,
            };
            let err = mismatch(&m);
            check.failure = Some(m);
            return Err(err);
        }
        Ok(n)
    }
}

/// A multi-frame zstd decoder (ruzstd's streaming decoder handles a single frame only).
struct ZstdReader<R> {
    src: R,
    dec: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(src: R) -> Self {
        ZstdReader {
            src,
            dec: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.dec.can_collect() < buf.len() && !self.dec.is_finished() {
                    self.dec
                        .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(buf.len()))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
                let n = self.dec.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.in_frame = false;
            }
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.dec.reset(&mut self.src) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped =
                        io::copy(&mut (&mut self.src).take(length.into()), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }
}

/// A layer compressed the way keel writes them: gzip, fixed level, zero mtime, no file name.
pub(crate) struct GzippedLayer {
    pub(crate) data: Vec<u8>,
    pub(crate) diff_id: Digest,
}

/// Gzip an uncompressed tar deterministically and compute its diff ID.
pub(crate) fn gzip_layer(tar: &[u8]) -> io::Result<GzippedLayer> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(6));
    enc.write_all(tar)?;
    Ok(GzippedLayer {
        data: enc.finish()?,
        diff_id: Digest::of(tar),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(data: &[u8]) -> BlobReader<Box<dyn Read + Send>> {
        BlobReader::new(
            Box::new(io::Cursor::new(data.to_vec())),
            Digest::of(data),
            Some(data.len() as u64),
        )
    }

    fn payload() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn decode(data: &[u8], media_type: &MediaType) -> Vec<u8> {
        let mut r = LayerReader::new(blob(data), media_type).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        r.finish().unwrap();
        out
    }

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        let p = payload();
        let a = gzip_layer(&p).unwrap();
        let b = gzip_layer(&p).unwrap();
        assert_eq!(a.data, b.data);
        assert_eq!(a.diff_id, Digest::of(&p));
        assert_eq!(&a.data[4..8], &[0, 0, 0, 0], "mtime must be zero");
        assert_eq!(decode(&a.data, &MediaType::ImageLayerGzip), p);
        // Sniffed when the media type says nothing about compression.
        assert_eq!(decode(&a.data, &MediaType::Other("x".into())), p);
    }

    #[test]
    fn zstd_multi_frame_with_skippable_frame() {
        let p = payload();
        let (first, second) = p.split_at(12345);
        let mut z =
            ruzstd::encoding::compress_to_vec(first, ruzstd::encoding::CompressionLevel::Fastest);
        // A skippable frame (magic 0x184D2A50, 4-byte length, payload) between two frames.
        z.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        z.extend_from_slice(&3u32.to_le_bytes());
        z.extend_from_slice(b"abc");
        z.extend(ruzstd::encoding::compress_to_vec(
            second,
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        assert_eq!(decode(&z, &MediaType::ImageLayerZstd), p);
        assert_eq!(
            decode(&z, &MediaType::Other("application/octet-stream".into())),
            p
        );
    }

    #[test]
    fn plain_and_docker_media_types() {
        let p = payload();
        assert_eq!(decode(&p, &MediaType::ImageLayer), p);
        let docker = MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into());
        assert_eq!(
            Compression::from_media_type(&docker),
            Some(Compression::Gzip)
        );
        assert_eq!(decode(&gzip_layer(&p).unwrap().data, &docker), p);
    }

    #[test]
    fn finish_detects_corruption_after_an_early_stop() {
        let p = payload();
        let gz = gzip_layer(&p).unwrap().data;
        let expected = Digest::of(&gz);
        // Change the header's mtime: the decompressed stream is intact, so only the digest
        // check can catch it.
        let mut gz = gz;
        gz[4] = 1;
        let blob = BlobReader::new(
            Box::new(io::Cursor::new(gz)) as Box<dyn Read + Send>,
            expected.clone(),
            None,
        );
        let mut r = LayerReader::new(blob, &MediaType::ImageLayerGzip).unwrap();
        let mut head = [0u8; 100];
        r.read_exact(&mut head).unwrap();
        let err = r.finish().unwrap_err();
        let corrupt = crate::CorruptBlob::find(&err).unwrap_or_else(|| panic!("{err}"));
        assert_eq!(corrupt.digest, expected);
    }
}
