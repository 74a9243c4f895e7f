//! `gcp`: the `raw-efi` disk as `disk.raw` in a `.tar.gz`, the form Google Compute Engine
//! imports.
//!
//! GCE documents `tar --format=oldgnu -czf image.tar.gz disk.raw` and a disk whose size is a
//! whole number of GiB. The tar is written here (not by `keel-rootfs`, whose writer is PAX):
//! one GNU (`ustar  `) header, mode 0644, owner 0:0, mtime `SOURCE_DATE_EPOCH`, the size in
//! octal (base-256 past 8 GiB, as GNU tar does), two zero blocks, padded to GNU tar's
//! 10240-byte record. The gzip stream (no name, mtime 0, OS "unknown") is written by
//! [`GzStream`], which encodes the disk's zeros once instead of a GiB at a time.

use crate::efi::{raw_efi_size, write_raw_efi};
use crate::error::{Error, Result};
use flate2::{Compress, Compression, FlushCompress, Status};
use keel_image::Arch;
use std::io::{self, Write};

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 512;
/// GNU tar's default record: 20 blocks.
const RECORD: u64 = 20 * BLOCK;
/// Compression level: zlib's default.
const LEVEL: u32 = 6;
/// The gzip header's OS byte: "unknown", so the output does not depend on the build host.
const OS_UNKNOWN: u8 = 255;
/// The file GCE looks for in the archive.
pub const DISK_NAME: &str = "disk.raw";

/// The disk size of a `gcp` image for `uki`: `size` if given (a whole number of GiB, at least
/// the `raw-efi` size), else the `raw-efi` size rounded up to a GiB.
pub fn gcp_disk_size(uki: &[u8], arch: Arch, size: Option<u64>) -> Result<u64> {
    let needed = raw_efi_size(uki, arch).div_ceil(GIB) * GIB;
    match size {
        None => Ok(needed),
        Some(s) if s < needed => Err(Error::TooSmall {
            what: "the gcp disk (whole GiB)",
            needed,
            given: s,
        }),
        Some(s) if !s.is_multiple_of(GIB) => Err(Error::InvalidSize(format!(
            "{s} bytes (GCE needs a whole number of GiB)"
        ))),
        Some(s) => Ok(s),
    }
}

/// Writes a `gcp` image (`disk.raw` holding the `raw-efi` disk of `uki`, in a `.tar.gz`) into
/// `out`; returns the disk size. Sizes are checked before anything is written.
pub fn write_gcp(
    out: &mut impl Write,
    uki: &[u8],
    arch: Arch,
    size: Option<u64>,
    epoch: u64,
) -> Result<u64> {
    let size = gcp_disk_size(uki, arch, size)?;
    write_tar_gz(out, uki, arch, size, epoch)?;
    Ok(size)
}

/// The archive of a `raw-efi` disk of `size` bytes (checked by the caller).
fn write_tar_gz(out: &mut impl Write, uki: &[u8], arch: Arch, size: u64, epoch: u64) -> Result<()> {
    let mut gz = GzStream::new(out);
    gz.write_all(&tar_header(DISK_NAME, size, epoch))
        .map_err(Error::Write)?;
    write_raw_efi(&mut gz, uki, arch, Some(size))?;
    let used = BLOCK + size.div_ceil(BLOCK) * BLOCK + 2 * BLOCK;
    let end = used.div_ceil(RECORD) * RECORD;
    let pad = (size.div_ceil(BLOCK) * BLOCK - size) + (end - used) + 2 * BLOCK;
    std::io::copy(&mut std::io::Read::take(std::io::repeat(0), pad), &mut gz)
        .map_err(Error::Write)?;
    gz.finish().map_err(Error::Write)
}

/// Input is compressed in chunks of this size, each ending with a full flush.
const CHUNK: usize = 1 << 16;
static ZERO_CHUNK: [u8; CHUNK] = [0; CHUNK];

/// A gzip stream (no name, mtime 0, OS "unknown") that skips the work on the disk's zeros:
/// input is cut into 64 KiB chunks, each deflated and ended with a full flush, which resets
/// the compressor, so a chunk's encoding depends on nothing before it. An all-zero chunk
/// is therefore always encoded the same way, and is written from one encoding computed up
/// front: a GiB disk costs a CRC instead of a GiB of deflate, and the bytes stay a function
/// of the input alone.
struct GzStream<W: Write> {
    out: W,
    deflate: Compress,
    crc: crc32fast::Hasher,
    len: u64,
    pending: Vec<u8>,
    zero_chunk: Vec<u8>,
    scratch: Vec<u8>,
}

impl<W: Write> GzStream<W> {
    fn new(out: W) -> Self {
        let mut zero = Vec::new();
        let mut scratch = Vec::with_capacity(2 * CHUNK);
        // Deflating into a Vec cannot fail.
        let _ = deflate_into(
            &mut new_deflate(),
            &ZERO_CHUNK,
            FlushCompress::Full,
            &mut scratch,
            &mut zero,
        );
        GzStream {
            out,
            deflate: new_deflate(),
            crc: crc32fast::Hasher::new(),
            len: 0,
            pending: Vec::with_capacity(CHUNK),
            zero_chunk: zero,
            scratch,
        }
    }

    /// Compresses one whole chunk.
    fn chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.len == 0 {
            self.out.write_all(&GZIP_HEADER)?;
        }
        self.crc.update(chunk);
        self.len += chunk.len() as u64;
        if chunk == &ZERO_CHUNK[..] {
            self.out.write_all(&self.zero_chunk)
        } else {
            deflate_into(
                &mut self.deflate,
                chunk,
                FlushCompress::Full,
                &mut self.scratch,
                &mut self.out,
            )
        }
    }

    /// Compresses what is left, ends the stream and writes the trailer.
    fn finish(mut self) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending);
        if self.len == 0 {
            self.out.write_all(&GZIP_HEADER)?;
        }
        self.crc.update(&rest);
        self.len += rest.len() as u64;
        deflate_into(
            &mut self.deflate,
            &rest,
            FlushCompress::Finish,
            &mut self.scratch,
            &mut self.out,
        )?;
        self.out
            .write_all(&self.crc.clone().finalize().to_le_bytes())?;
        // ISIZE: the length modulo 2^32.
        self.out.write_all(&(self.len as u32).to_le_bytes())?;
        self.out.flush()
    }
}

impl<W: Write> Write for GzStream<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        if !self.pending.is_empty() {
            let take = (CHUNK - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == CHUNK {
                let chunk = std::mem::take(&mut self.pending);
                self.chunk(&chunk)?;
                self.pending = chunk;
                self.pending.clear();
            }
        }
        while buf.len() >= CHUNK {
            self.chunk(&buf[..CHUNK])?;
            buf = &buf[CHUNK..];
        }
        self.pending.extend_from_slice(buf);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Magic, deflate, no flags, mtime 0, no extra flags, OS 255 ("unknown").
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, OS_UNKNOWN];

fn new_deflate() -> Compress {
    Compress::new(Compression::new(LEVEL), false)
}

/// Deflates all of `input` with `flush` at its end, writing the output to `out`.
fn deflate_into(
    deflate: &mut Compress,
    mut input: &[u8],
    flush: FlushCompress,
    scratch: &mut Vec<u8>,
    out: &mut impl Write,
) -> io::Result<()> {
    loop {
        scratch.clear();
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, scratch, flush)
            .map_err(io::Error::other)?;
        input = &input[(deflate.total_in() - before) as usize..];
        out.write_all(scratch)?;
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // A flush is complete when it left room in the output.
            _ => input.is_empty() && scratch.len() < scratch.capacity(),
        };
        if done {
            return Ok(());
        }
    }
}

/// A GNU (`oldgnu`) tar header for a regular file.
fn tar_header(name: &str, size: u64, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    numeric(&mut h[124..136], size);
    numeric(&mut h[136..148], mtime);
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    // Six octal digits, NUL, space: GNU tar's form.
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// Zero-padded octal with a trailing NUL.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let text = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// Octal when it fits, else GNU's base-256 (high bit set, big-endian).
fn numeric(field: &mut [u8], v: u64) {
    if v < 1u64 << (3 * (field.len() - 1)) {
        octal(field, v);
    } else {
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] |= 0x80;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    #[test]
    fn header_fields() {
        let h = tar_header("disk.raw", 10 * GIB, 1_700_000_000);
        assert_eq!(&h[..9], b"disk.raw\0");
        assert_eq!(&h[100..108], b"0000644\0");
        // 10 GiB is past 11 octal digits: base-256.
        assert_eq!(h[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(h[128..136].try_into().unwrap()),
            10 * GIB
        );
        assert_eq!(&h[136..148], b"14524770400\0");
        assert_eq!(&h[257..265], b"ustar  \0");
        let small = tar_header("disk.raw", GIB, 0);
        assert_eq!(&small[124..136], b"10000000000\0");
        let sum: u32 = small
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        let text = std::str::from_utf8(&small[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(text, 8).unwrap(), sum);
    }

    #[test]
    fn sizes() {
        let uki = vec![1u8; 1000];
        assert_eq!(gcp_disk_size(&uki, Arch::X86_64, None).unwrap(), GIB);
        assert_eq!(
            gcp_disk_size(&uki, Arch::X86_64, Some(2 * GIB)).unwrap(),
            2 * GIB
        );
        assert!(matches!(
            gcp_disk_size(&uki, Arch::X86_64, Some(GIB + (1 << 20))),
            Err(Error::InvalidSize(_))
        ));
        let err = gcp_disk_size(&uki, Arch::X86_64, Some(1 << 20)).unwrap_err();
        assert!(err.to_string().contains(&GIB.to_string()), "{err}");
        let mut out = Vec::new();
        assert!(write_gcp(&mut out, &uki, Arch::X86_64, Some(1 << 20), 0).is_err());
        assert!(out.is_empty());
    }

    /// A GiB disk: zeros cost nothing to compress, and the stream decompresses (CRC and
    /// length checked by the decoder) to the whole archive.
    #[test]
    fn a_gib_disk() {
        let mut gz = Vec::new();
        assert_eq!(
            write_gcp(&mut gz, b"uki", Arch::X86_64, None, 0).unwrap(),
            GIB
        );
        assert!(gz.len() < 4 << 20, "{}", gz.len());
        let mut dec = flate2::read::GzDecoder::new(&gz[..]);
        let n = std::io::copy(&mut dec, &mut std::io::sink()).unwrap();
        assert_eq!(n, (BLOCK + GIB + 2 * BLOCK).div_ceil(RECORD) * RECORD);
    }

    /// GNU tar reads the archive back: one `disk.raw`, the raw-efi disk, with the epoch as
    /// its mtime; and the same inputs give the same bytes. (A small disk: GiB sizes are
    /// checked above.)
    #[test]
    fn gnu_tar_reads_it_back() {
        let uki: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut gz = Vec::new();
        let size = 8 << 20;
        write_tar_gz(&mut gz, &uki, Arch::X86_64, size, 1_700_000_000).unwrap();
        // gzip header: no name flag, mtime 0.
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(tar.len() as u64 % RECORD, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.tar");
        std::fs::write(&path, &tar).unwrap();
        let list = Command::new("tar")
            .args(["--utc", "-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&list.stdout);
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        assert_eq!(text.lines().count(), 1, "{text}");
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "-rw-r--r--",
                "root/root",
                &size.to_string(),
                "2023-11-14",
                "22:13",
                "disk.raw"
            ]
        );
        let gz_path = dir.path().join("i.tar.gz");
        std::fs::write(&gz_path, &gz).unwrap();
        let gzip = Command::new("gzip")
            .arg("-t")
            .arg(&gz_path)
            .status()
            .unwrap();
        assert!(gzip.success());
        let mut disk = Vec::new();
        write_raw_efi(&mut disk, &uki, Arch::X86_64, Some(size)).unwrap();
        assert!(tar[512..512 + disk.len()] == disk[..]);
        let mut again = Vec::new();
        write_tar_gz(&mut again, &uki, Arch::X86_64, size, 1_700_000_000).unwrap();
        assert!(again == gz);
    }
}
