//! Secure Boot key sets: `keel keys generate` makes one, `keel build --sign-with` signs the UKI
//! with its `db` key, `keel run --secure-boot --keys` enrolls it in the firmware's variables.
//!
//! A key set is a directory of PEM files: `PK`, `KEK` and `db` (each `.key` and `.crt`,
//! RSA-2048 self-signed certificates, what every UEFI firmware verifies) and `owner.guid`, the
//! owner recorded with each enrolled certificate. The cryptography is done by the tools UEFI
//! users already trust, from Debian: `openssl` makes the keys, `sbsign` (sbsigntool) writes the
//! Authenticode signature, `virt-fw-vars` (python3-virt-firmware) writes the variable store.
//! `sbsign` signs RSA PKCS#1 v1.5 without a signing time, so the same UKI and key give the same
//! bytes. Private keys must be readable by their owner only, as OpenSSH asks of its keys.

use keel_disk::authenticode;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The key pairs of a set, in the order the firmware trusts them: the platform key signs
/// KEK updates, a KEK signs db updates, db signs what boots.
const ROLES: [&str; 3] = ["PK", "KEK", "db"];
const OWNER_FILE: &str = "owner.guid";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{dir}: not a keel key set: {missing} missing (make one with `keel keys generate DIR`)"
    )]
    Incomplete { dir: PathBuf, missing: String },
    #[error("{path}: a private key readable by others (mode {mode:04o}); chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{0}: exists and is not empty; keys are never overwritten (choose a new directory)")]
    Exists(PathBuf),
    #[error("{0}: not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    Owner(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {tool} (install Debian's {package})")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a certificate")]
    Certificate {
        path: PathBuf,
        #[source]
        source: authenticode::Error,
    },
    #[error(transparent)]
    Signature(authenticode::Error),
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        source,
    }
}

/// Runs a host tool to completion; its standard error becomes the error's text.
fn run(tool: &'static str, package: &'static str, args: &[&std::ffi::OsStr]) -> Result<()> {
    run_as(tool, Command::new(tool).args(args), (tool, package))
}

/// Runs `command`, whose failure is `tool`'s; failing to start it at all names `runner` (the
/// program and its Debian package).
fn run_as(
    tool: &'static str,
    command: &mut Command,
    (runner, package): (&'static str, &'static str),
) -> Result<()> {
    let out = command.output().map_err(|source| Error::ToolMissing {
        tool: runner,
        package,
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    // sbverify says why on standard output.
    let said = if out.stderr.iter().all(u8::is_ascii_whitespace) {
        &out.stdout
    } else {
        &out.stderr
    };
    Err(Error::ToolFailed {
        tool,
        status: out.status,
        stderr: String::from_utf8_lossy(said).trim().to_owned(),
    })
}

/// `time` (seconds since the epoch) as libfaketime's absolute, stopped clock:
/// `YYYY-MM-DD hh:mm:ss` in UTC.
fn faketime_clock(time: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(time);
    keel_bundle::time::rfc3339(at)
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// A complete key set on disk.
#[derive(Debug, Clone)]
pub struct KeySet {
    dir: PathBuf,
    owner: String,
}

impl KeySet {
    /// Opens the key set in `dir`: every file present, private keys private, the owner a GUID.
    pub fn open(dir: &Path) -> Result<KeySet> {
        let mut missing = Vec::new();
        for role in ROLES {
            for ext in ["key", "crt"] {
                let name = format!("{role}.{ext}");
                if !dir.join(&name).is_file() {
                    missing.push(name);
                }
            }
        }
        if !dir.join(OWNER_FILE).is_file() {
            missing.push(OWNER_FILE.into());
        }
        if !missing.is_empty() {
            return Err(Error::Incomplete {
                dir: dir.into(),
                missing: missing.join(", "),
            });
        }
        for role in ROLES {
            let key = dir.join(format!("{role}.key"));
            let mode = fs::metadata(&key)
                .map_err(io_err(&key))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Exposed { path: key, mode });
            }
        }
        let owner_path = dir.join(OWNER_FILE);
        let owner = fs::read_to_string(&owner_path).map_err(io_err(&owner_path))?;
        let owner = owner.trim().to_owned();
        if !is_guid(&owner) {
            return Err(Error::Owner(owner_path));
        }
        Ok(KeySet {
            dir: dir.into(),
            owner,
        })
    }

    /// Makes a new key set in `dir` (which must not exist, or be empty), its certificates named
    /// `"{name} PK"`, `"{name} KEK"`, `"{name} db"`. Written beside `dir` and renamed into
    /// place, so an interrupted run leaves no partial set.
    pub fn generate(dir: &Path, name: &str) -> Result<KeySet> {
        if let Ok(mut entries) = fs::read_dir(dir)
            && entries.next().is_some()
        {
            return Err(Error::Exists(dir.into()));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".keel-keys-")
            .tempdir_in(parent)
            .map_err(io_err(parent))?;
        // Private from the start: the keys are written into it.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_err(tmp.path()))?;
        for role in ROLES {
            let key = tmp.path().join(format!("{role}.key"));
            let crt = tmp.path().join(format!("{role}.crt"));
            let subject = format!("/CN={} {role}/", name.replace('/', "\\/"));
            run(
                "openssl",
                "openssl",
                &[
                    "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days",
                    "3650", "-subj",
                ]
                .map(std::ffi::OsStr::new)
                .into_iter()
                .chain([
                    subject.as_ref(),
                    "-keyout".as_ref(),
                    key.as_os_str(),
                    "-out".as_ref(),
                    crt.as_os_str(),
                ])
                .collect::<Vec<_>>(),
            )?;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(io_err(&key))?;
        }
        // Random, as the certificates are: derived from the platform key's certificate.
        let pk = tmp.path().join("PK.crt");
        let seed = fs::read(&pk).map_err(io_err(&pk))?;
        let owner = keel_formats::gpt::Guid::derive(&seed, "keel key set owner").to_string();
        let owner_path = tmp.path().join(OWNER_FILE);
        fs::write(&owner_path, format!("{owner}\n")).map_err(io_err(&owner_path))?;
        let tmp = tmp.keep();
        if let Err(source) = fs::rename(&tmp, dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::Io {
                path: dir.into(),
                source,
            });
        }
        KeySet::open(dir)
    }

    /// The directory holding the set.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The GUID the certificates are enrolled under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn file(&self, role: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{role}.{ext}"))
    }

    /// `efi` (a PE image) with an Authenticode signature by the `db` key appended. `sbsign`
    /// puts the signing time in the signature's signed attributes and has no option to leave
    /// it out, so it runs under `faketime` with the clock stopped at `time` (seconds since the
    /// epoch: the build's `SOURCE_DATE_EPOCH`): the same image and key give the same bytes.
    /// Firmware ignores the signing time (db certificates are checked without a clock).
    pub fn sign_efi(&self, efi: &[u8], time: u64) -> Result<Vec<u8>> {
        let tmp = tempfile::tempdir().map_err(io_err(Path::new("temporary directory")))?;
        let (input, output) = (tmp.path().join("in.efi"), tmp.path().join("out.efi"));
        fs::write(&input, efi).map_err(io_err(&input))?;
        let (key, crt) = (self.file("db", "key"), self.file("db", "crt"));
        let stopped = faketime_clock(time);
        run_as(
            "sbsign",
            Command::new("faketime").args([
                "-f".as_ref(),
                stopped.as_ref(),
                "sbsign".as_ref(),
                "--key".as_ref(),
                key.as_os_str(),
                "--cert".as_ref(),
                crt.as_os_str(),
                "--output".as_ref(),
                output.as_os_str(),
                input.as_os_str(),
            ]),
            ("faketime", "faketime"),
        )?;
        fs::read(&output).map_err(io_err(&output))
    }

    /// Writes `out`: the variable store `template` with this set enrolled (PK, KEK, db, each
    /// under the owner GUID) in place of any keys it had, and Secure Boot on. Only this set is
    /// trusted then: a template's vendor keys (Microsoft's, in Debian's `.ms` stores) are
    /// deleted; its dbx (revocations) stays.
    pub fn enroll(&self, template: &Path, out: &Path) -> Result<()> {
        let (pk, kek, db) = (
            self.file("PK", "crt"),
            self.file("KEK", "crt"),
            self.file("db", "crt"),
        );
        let owner: &std::ffi::OsStr = self.owner.as_ref();
        run(
            "virt-fw-vars",
            "python3-virt-firmware",
            &[
                "--input".as_ref(),
                template.as_os_str(),
                "--output".as_ref(),
                out.as_os_str(),
                "--delete".as_ref(),
                "PK".as_ref(),
                "--delete".as_ref(),
                "KEK".as_ref(),
                "--delete".as_ref(),
                "db".as_ref(),
                "--set-pk".as_ref(),
                owner,
                pk.as_os_str(),
                "--add-kek".as_ref(),
                owner,
                kek.as_os_str(),
                "--add-db".as_ref(),
                owner,
                db.as_os_str(),
                "--secure-boot".as_ref(),
            ],
        )
    }
}

/// The certificate of `role` (`PK`, `KEK`, `db`) in the key set in `dir`: all a verifier
/// needs, so the private keys need not be there.
pub fn certificate(dir: &Path, role: &str) -> Result<PathBuf> {
    let cert = dir.join(format!("{role}.crt"));
    if cert.is_file() {
        Ok(cert)
    } else {
        Err(Error::Incomplete {
            dir: dir.into(),
            missing: format!("{role}.crt"),
        })
    }
}

/// Checks that `efi` carries an Authenticode signature by `cert` (a PEM certificate), with
/// the check `keelctl update` runs on a live system (`keel_disk::authenticode`, tested against
/// `sbverify`).
pub fn verify_efi(cert: &Path, efi: &[u8]) -> Result<()> {
    let pem = fs::read(cert).map_err(io_err(cert))?;
    let der = authenticode::certificate_from_pem(&pem).map_err(|source| Error::Certificate {
        path: cert.into(),
        source,
    })?;
    authenticode::verify(efi, &[der]).map_err(Error::Signature)
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_version_4_text() {
        let g = keel_formats::gpt::Guid::derive(b"seed", "keel key set owner").to_string();
        assert!(is_guid(&g), "{g}");
        assert_eq!(&g[14..15], "4");
        assert!(!is_guid("0123"));
        assert!(!is_guid("0123456g-0123-0123-0123-0123456789ab"));
    }

    #[test]
    fn generate_open_sign_and_refuse() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keys");
        let set = KeySet::generate(&dir, "keel test").unwrap();
        assert!(is_guid(set.owner()));
        // Nothing else left beside it.
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keys"]);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Never overwritten.
        let again = KeySet::generate(&dir, "x").unwrap_err().to_string();
        assert!(again.contains("exists and is not empty"), "{again}");

        // A private key others can read is refused, naming it.
        let db = dir.join("db.key");
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = KeySet::open(&dir).unwrap_err().to_string();
        assert!(
            exposed.contains("db.key") && exposed.contains("0644"),
            "{exposed}"
        );
        fs::set_permissions(&db, fs::Permissions::from_mode(0o600)).unwrap();

        // A missing file is named.
        fs::rename(dir.join("KEK.crt"), root.path().join("KEK.crt")).unwrap();
        let missing = KeySet::open(&dir).unwrap_err().to_string();
        assert!(missing.contains("KEK.crt missing"), "{missing}");
        fs::rename(root.path().join("KEK.crt"), dir.join("KEK.crt")).unwrap();

        // A forged owner is refused.
        fs::write(dir.join(OWNER_FILE), "$(reboot)\n").unwrap();
        let owner = KeySet::open(&dir).unwrap_err().to_string();
        assert!(owner.contains("not a GUID"), "{owner}");
        fs::write(dir.join(OWNER_FILE), format!("{}\n", set.owner())).unwrap();

        // sbsign refuses what is not a PE image, and says so.
        let set = KeySet::open(&dir).unwrap();
        let err = set.sign_efi(b"not a PE image", 0).unwrap_err().to_string();
        assert!(err.starts_with("sbsign failed"), "{err}");
    }

    #[test]
    fn the_signing_clock_is_the_build_time_in_utc() {
        assert_eq!(faketime_clock(0), "1970-01-01 00:00:00");
        assert_eq!(faketime_clock(1_764_000_000), "2025-11-24 16:00:00");
    }
}
