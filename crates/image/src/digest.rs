//! Content digests: the validated `sha256:<64 hex>` form every blob in the store is named by.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A SHA-256 content digest, always `sha256:` followed by 64 lower-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// A string that is not a valid `sha256:<64 hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256: followed by 64 lower-case hex digits")]
pub struct DigestError(String);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hash(Sha256::digest(data).into())
    }

    /// The digest with this raw SHA-256 value.
    pub fn from_hash(hash: [u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The 64 hex digits, without the `sha256:` prefix (the blob's file name in a layout).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:…` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest as the `oci-spec` type.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        // A validated sha256 digest is always a valid OCI digest; parse cannot fail.
        oci_spec::image::Digest::from_str(&self.0)
            .unwrap_or_else(|_| unreachable!("validated digest {} rejected by oci-spec", self.0))
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if valid {
            Ok(Digest(s.to_owned()))
        } else {
            Err(DigestError(s.to_owned()))
        }
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, Self::Error> {
        d.as_ref().parse()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Incremental SHA-256 over a stream of bytes.
#[derive(Default, Clone)]
pub(crate) struct Hasher(Sha256);

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub(crate) fn finish(self) -> Digest {
        Digest::from_hash(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_data() {
        assert_eq!(Digest::of(b"").as_str(), EMPTY);
        let mut h = Hasher::default();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finish(), Digest::of(b"abc"));
        assert_ne!(Digest::of(b"abc"), Digest::of(b"abd"));
    }

    #[test]
    fn valid_digest_parses() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d.to_oci().to_string(), EMPTY);
        assert_eq!(Digest::try_from(&d.to_oci()).unwrap(), d);
    }

    #[test]
    fn invalid_digests_are_refused() {
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let bad = [
            "",
            "sha256:",
            "sha256:abc",
            &EMPTY[7..],
            &upper,
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
        ];
        for s in bad {
            let err = s.parse::<Digest>().unwrap_err();
            assert!(err.to_string().contains("64 lower-case hex"), "{s}: {err}");
        }
    }
}
