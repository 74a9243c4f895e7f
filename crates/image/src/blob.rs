//! Reading blobs with verification: a reader that hashes what it yields and fails at the end
//! when the content does not match its digest.

use crate::digest::{Digest, Hasher};
use std::io::{self, Read};

/// A blob whose content does not match its digest (or its recorded size).
///
/// The verifying reader returns it wrapped in an [`io::Error`]; [`CorruptBlob::find`] digs it
/// out of an error chain so callers can name the image the blob belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob {digest} is corrupt: expected {digest}, got {actual}")]
pub struct CorruptBlob {
    /// The digest the blob is stored under.
    pub digest: Digest,
    /// What the content actually hashes to (or a description when the size is wrong).
    pub actual: String,
}

impl CorruptBlob {
    /// The first `CorruptBlob` in `err` or its sources (looking inside `io::Error`s too).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a CorruptBlob> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(c) = e.downcast_ref::<CorruptBlob>() {
                return Some(c);
            }
            if let Some(inner) = e
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<CorruptBlob>())
            {
                return Some(inner);
            }
            cur = e.source();
        }
        None
    }
}

/// A reader over one blob that verifies its digest (and size, when known) at end of file.
///
/// The check happens when the underlying content is exhausted: a reader that stops early has
/// verified nothing. After a failure every further read fails the same way.
pub struct BlobReader<R> {
    inner: R,
    expected: Digest,
    size: Option<u64>,
    read: u64,
    hasher: Option<Hasher>,
    failure: Option<CorruptBlob>,
}

impl<R: Read> BlobReader<R> {
    /// Wrap `inner`, whose content must hash to `expected` and, if given, be `size` bytes long.
    pub fn new(inner: R, expected: Digest, size: Option<u64>) -> Self {
        BlobReader {
            inner,
            expected,
            size,
            read: 0,
            hasher: Some(Hasher::default()),
            failure: None,
        }
    }

    /// The digest being verified.
    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// Whether the whole blob has been read and matched its digest.
    pub fn verified(&self) -> bool {
        self.hasher.is_none() && self.failure.is_none()
    }

    fn fail(&mut self, actual: String) -> io::Error {
        let err = CorruptBlob {
            digest: self.expected.clone(),
            actual,
        };
        self.failure = Some(err.clone());
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(io::Error::new(io::ErrorKind::InvalidData, f.clone()));
        }
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            hasher.update(&buf[..n]);
            self.read += n as u64;
            if let Some(size) = self.size
                && self.read > size
            {
                return Err(self.fail(format!("more than the recorded {size} bytes")));
            }
            return Ok(n);
        }
        let actual = self.hasher.take().map(Hasher::finish);
        if let Some(size) = self.size
            && self.read != size
        {
            return Err(self.fail(format!("{} bytes instead of {size}", self.read)));
        }
        match actual {
            Some(actual) if actual != self.expected => Err(self.fail(actual.to_string())),
            _ => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_content_reads_through() {
        let data = b"hello blob";
        let mut r = BlobReader::new(&data[..], Digest::of(data), Some(data.len() as u64));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert!(r.verified());
    }

    #[test]
    fn corrupt_content_fails_at_eof_naming_the_digest() {
        let expected = Digest::of(b"original");
        let mut r = BlobReader::new(&b"tampered"[..], expected.clone(), None);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        let corrupt = CorruptBlob::find(&err).unwrap();
        assert_eq!(corrupt.digest, expected);
        assert_eq!(corrupt.actual, Digest::of(b"tampered").to_string());
        assert!(err.to_string().contains(expected.as_str()), "{err}");
        assert!(!r.verified());
        // Later reads keep failing.
        assert!(r.read(&mut [0; 4]).is_err());
    }

    #[test]
    fn wrong_size_fails() {
        let data = b"abc";
        let mut r = BlobReader::new(&data[..], Digest::of(data), Some(2));
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("more than the recorded 2 bytes"),
            "{err}"
        );
        let mut r = BlobReader::new(&data[..], Digest::of(data), Some(4));
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("3 bytes instead of 4"), "{err}");
    }
}
