//! Authenticode signatures of EFI binaries (UKIs), checked in Rust: what `sbverify` checks on
//! the host, for the running system, which has no such tool. Only what `sbsign` (and pesign)
//! write is accepted: one PKCS#7 `SignedData` in a `WIN_CERTIFICATE` of type
//! `PKCS_SIGNED_DATA`, SHA-256 throughout, one RSA (PKCS#1 v1.5) signer with signed attributes.
//!
//! The checks, in order: the image's Authenticode digest (its bytes without the checksum, the
//! certificate table's directory entry and the table itself) equals the digest the signed
//! content names; the signed attributes' message digest is that content's; the signature over
//! the signed attributes verifies with the signer certificate's key; and that certificate is
//! one of the trusted ones, byte for byte (keel signs with the db key itself, no chain).

use crate::uki::{self, PeHeaders};
use cms::cert::x509::Certificate;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("it is not signed")]
    Unsigned,
    #[error("it is not a PE image")]
    Pe(#[source] crate::Error),
    #[error("its certificate table is malformed: {0}")]
    Table(&'static str),
    #[error("its signature cannot be parsed: {0}")]
    Der(String),
    #[error("its signature is not what sbsign writes: {0}")]
    Unsupported(&'static str),
    #[error("the image was changed after it was signed (its digest is not the signed one)")]
    Digest,
    #[error("the signature does not verify with the signer's key")]
    Signature,
    #[error("it is signed by {0}, a key this system does not trust")]
    Untrusted(String),
}

/// SHA-256.
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// `SPC_INDIRECT_DATA_OBJID`: Authenticode's signed content.
const SPC_INDIRECT_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// `WIN_CERT_REVISION_2_0`, `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
const WIN_CERT_REVISION: u16 = 0x0200;
const WIN_CERT_PKCS: u16 = 0x0002;

/// `SpcIndirectDataContent`: what was signed, and the image digest it names.
#[derive(der::Sequence)]
struct IndirectData {
    data: der::Any,
    message_digest: DigestInfo,
}

#[derive(der::Sequence)]
struct DigestInfo {
    algorithm: spki::AlgorithmIdentifierOwned,
    digest: OctetString,
}

fn der_err(e: der::Error) -> Error {
    Error::Der(e.to_string())
}

/// The Authenticode SHA-256 digest of `pe`: every byte but the checksum, the certificate
/// table's directory entry and the certificate table (at the end of the file).
fn image_digest(pe: &[u8], h: &PeHeaders) -> Result<[u8; 32], Error> {
    let table = h.cert_table.map_or(pe.len(), |(at, _)| at);
    let bad = || Error::Table("it overlaps the headers");
    if h.checksum + 4 > h.cert_dir || h.cert_dir + 8 > h.size_of_headers.min(table) {
        return Err(bad());
    }
    let mut hash = Sha256::new();
    hash.update(&pe[..h.checksum]);
    hash.update(&pe[h.checksum + 4..h.cert_dir]);
    hash.update(&pe[h.cert_dir + 8..h.size_of_headers]);
    let mut sections = h.sections.clone();
    sections.sort_unstable();
    let mut hashed = h.size_of_headers;
    for (at, len) in sections.into_iter().filter(|&(_, len)| len > 0) {
        let data = pe
            .get(at..at.saturating_add(len))
            .filter(|_| at.saturating_add(len) <= table)
            .ok_or(Error::Table("a section lies past the signed part"))?;
        hash.update(data);
        hashed = hashed.max(at + len);
    }
    // Data after the last section and before the table (sbsign pads to 8 bytes there).
    if hashed < table {
        hash.update(&pe[hashed..table]);
    }
    Ok(hash.finalize().into())
}

/// The DER signature of a signed `pe`, from its certificate table.
fn signature_der<'a>(pe: &'a [u8], h: &PeHeaders) -> Result<&'a [u8], Error> {
    let (at, size) = h.cert_table.ok_or(Error::Unsigned)?;
    let table = pe
        .get(at..at.saturating_add(size))
        .ok_or(Error::Table("it lies past the end of the file"))?;
    if at.saturating_add(size) != pe.len() {
        return Err(Error::Table("it is not at the end of the file"));
    }
    let len = table
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(Error::Table("it is shorter than its header"))?;
    let revision = table.get(4..6).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let kind = table.get(6..8).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if revision != Some(WIN_CERT_REVISION) || kind != Some(WIN_CERT_PKCS) {
        return Err(Error::Unsupported(
            "a certificate that is not PKCS#7 signed data",
        ));
    }
    table
        .get(8..len)
        .ok_or(Error::Table("its length is larger than the table"))
}

/// Checks `pe`'s signature and that its signer is one of `trusted` (DER certificates).
pub fn verify(pe: &[u8], trusted: &[Vec<u8>]) -> Result<(), Error> {
    let (cert, _) = check(pe)?;
    if trusted.contains(&cert) {
        Ok(())
    } else {
        Err(Error::Untrusted(subject(&cert)))
    }
}

/// The certificate (DER) whose key signed `pe`, after checking the signature; `None` if `pe` is
/// not signed.
pub fn signer(pe: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    match check(pe) {
        Ok((cert, _)) => Ok(Some(cert)),
        Err(Error::Unsigned) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The DER of a PEM certificate (`-----BEGIN CERTIFICATE-----`, as `keel keys generate` writes
/// `db.crt`).
pub fn certificate_from_pem(pem: &[u8]) -> Result<Vec<u8>, Error> {
    let (label, der_bytes) = der::pem::decode_vec(pem).map_err(|e| Error::Der(e.to_string()))?;
    if label != "CERTIFICATE" {
        return Err(Error::Der(format!("a PEM {label}, not a CERTIFICATE")));
    }
    Certificate::from_der(&der_bytes).map_err(der_err)?;
    Ok(der_bytes)
}

/// A certificate's subject, for messages.
pub fn subject(cert: &[u8]) -> String {
    Certificate::from_der(cert)
        .map(|c| format!("\"{}\"", c.tbs_certificate.subject))
        .unwrap_or_else(|_| "an unreadable certificate".into())
}

/// Checks the signature of `pe`; returns the signer certificate (DER) and the image digest.
fn check(pe: &[u8]) -> Result<(Vec<u8>, [u8; 32]), Error> {
    let h = uki::pe_headers(pe).map_err(Error::Pe)?;
    let der_bytes = signature_der(pe, &h)?;
    // sbsign pads the table to 8 bytes after the DER: read one value, ignore the rest.
    let mut reader = der::SliceReader::new(der_bytes).map_err(der_err)?;
    let info = ContentInfo::decode(&mut reader).map_err(der_err)?;
    if info.content_type != SIGNED_DATA {
        return Err(Error::Unsupported("content that is not signed data"));
    }
    let signed: SignedData = info.content.decode_as().map_err(der_err)?;
    if signed.encap_content_info.econtent_type != SPC_INDIRECT_DATA {
        return Err(Error::Unsupported(
            "signed content that is not Authenticode's",
        ));
    }
    let content = signed
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or(Error::Unsupported("no signed content"))?;
    let indirect: IndirectData = content.decode_as().map_err(der_err)?;
    if indirect.message_digest.algorithm.oid != SHA256 {
        return Err(Error::Unsupported("a digest other than SHA-256"));
    }
    let digest = image_digest(pe, &h)?;
    if indirect.message_digest.digest.as_bytes() != digest {
        return Err(Error::Digest);
    }
    let [signer_info] = signed.signer_infos.0.as_slice() else {
        return Err(Error::Unsupported("not exactly one signer"));
    };
    if signer_info.digest_alg.oid != SHA256 {
        return Err(Error::Unsupported("a signer digest other than SHA-256"));
    }
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or(Error::Unsupported("no signed attributes"))?;
    let attr = |oid| {
        attrs
            .iter()
            .find(|a| a.oid == oid)
            .and_then(|a| a.values.get(0))
            .ok_or(Error::Unsupported("a signed attribute missing"))
    };
    // The signed content's digest: Authenticode hashes the content octets of
    // SpcIndirectDataContent (without its tag and length).
    let content_digest: [u8; 32] = Sha256::digest(content.value()).into();
    let named: OctetString = attr(MESSAGE_DIGEST)?.decode_as().map_err(der_err)?;
    let kind: ObjectIdentifier = attr(CONTENT_TYPE)?.decode_as().map_err(der_err)?;
    if named.as_bytes() != content_digest || kind != SPC_INDIRECT_DATA {
        return Err(Error::Digest);
    }
    let SignerIdentifier::IssuerAndSerialNumber(id) = &signer_info.sid else {
        return Err(Error::Unsupported("a signer named by key identifier"));
    };
    let cert = signed
        .certificates
        .as_ref()
        .into_iter()
        .flat_map(|set| set.0.iter())
        .find_map(|c| match c {
            cms::cert::CertificateChoices::Certificate(c)
                if c.tbs_certificate.issuer == id.issuer
                    && c.tbs_certificate.serial_number == id.serial_number =>
            {
                Some(c)
            }
            _ => None,
        })
        .ok_or(Error::Unsupported(
            "the signer's certificate is not included",
        ))?;
    let alg = &signer_info.signature_algorithm.oid;
    if *alg != RSA && *alg != SHA256_WITH_RSA {
        return Err(Error::Unsupported("a signature that is not RSA"));
    }
    let spki_der = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(der_err)?;
    let key = <rsa::RsaPublicKey as rsa::pkcs8::DecodePublicKey>::from_public_key_der(&spki_der)
        .map_err(|_| Error::Unsupported("a signer key that is not RSA"))?;
    let signed_bytes = attrs.to_der().map_err(der_err)?;
    let hashed = Sha256::digest(&signed_bytes);
    key.verify(
        rsa::Pkcs1v15Sign::new::<Sha256>(),
        &hashed,
        signer_info.signature.as_bytes(),
    )
    .map_err(|_| Error::Signature)?;
    Ok((cert.to_der().map_err(der_err)?, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    }

    /// A key and self-signed certificate made by openssl, as `keel keys generate` makes db.
    fn key_pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (key, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.crt")),
        );
        run(Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        (key, cert)
    }

    fn der_of(cert: &std::path::Path) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    /// sbsign's signatures verify, against the signing certificate only; any change to the
    /// image, or an unsigned one, is refused; sbverify agrees.
    #[test]
    fn sbsign_signatures_verify_and_changes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = key_pair(dir.path(), "db");
        let (_, other) = key_pair(dir.path(), "other");
        let uki = uki::build_uki(
            &uki::tests::fake_stub(),
            &uki::UkiParts {
                kernel: &[7u8; 5000],
                initrd: &[3u8; 3000],
                cmdline: "console=ttyS0",
                os_release: Some("ID=keel\n"),
                uname: None,
            },
        )
        .unwrap();
        let unsigned = dir.path().join("uki.efi");
        std::fs::write(&unsigned, &uki).unwrap();
        let signed_path = dir.path().join("signed.efi");
        run(Command::new("sbsign")
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&cert)
            .arg("--output")
            .arg(&signed_path)
            .arg(&unsigned));
        let signed = std::fs::read(&signed_path).unwrap();
        run(Command::new("sbverify")
            .arg("--cert")
            .arg(&cert)
            .arg(&signed_path));

        let db = der_of(&cert);
        assert_eq!(
            certificate_from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
            db
        );
        assert!(certificate_from_pem(&std::fs::read(&key).unwrap()).is_err());
        assert!(certificate_from_pem(b"not pem").is_err());
        verify(&signed, std::slice::from_ref(&db)).unwrap();
        assert_eq!(signer(&signed).unwrap(), Some(db.clone()));
        let err = verify(&signed, &[der_of(&other)]).unwrap_err();
        assert!(
            matches!(&err, Error::Untrusted(who) if who.contains("CN=db")),
            "{err}"
        );
        assert!(matches!(
            verify(&uki, std::slice::from_ref(&db)),
            Err(Error::Unsigned)
        ));
        assert_eq!(signer(&uki).unwrap(), None);

        // One byte changed, anywhere the digest covers: the headers, a section, the tail.
        for at in [0x90, 0x1000 + 5, signed.len() - 100] {
            let mut changed = signed.clone();
            changed[at] ^= 1;
            let err = verify(&changed, std::slice::from_ref(&db)).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Digest | Error::Signature | Error::Der(_) | Error::Table(_)
                ),
                "byte {at:#x}: {err}"
            );
        }
        // Hostile tables: cut short, pointing past the end.
        for len in [signed.len() - 1, uki.len() + 4] {
            assert!(verify(&signed[..len], std::slice::from_ref(&db)).is_err());
        }
    }
}
