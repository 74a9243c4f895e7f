//! Reading a `.deb` without `dpkg`: the `ar` container, the `control` paragraph from
//! `control.tar.*`, and the data tar from `data.tar.*` as a stream or as entries.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ar;
use crate::compression::Compression;
use crate::control::{Control, ControlError};

/// Why a `.deb` could not be read.
#[derive(Debug, Error)]
pub enum DebError {
    /// The file could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The `.deb` file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A required member is missing.
    #[error("{path}: no {member} member")]
    MissingMember {
        /// The `.deb` file.
        path: PathBuf,
        /// `control.tar.*` or `data.tar.*`.
        member: &'static str,
    },
    /// The member is compressed with something not supported.
    #[error("{path}: unsupported member {member}")]
    UnsupportedMember {
        /// The `.deb` file.
        path: PathBuf,
        /// The member name.
        member: String,
    },
    /// `control.tar.*` has no `control` file.
    #[error("{path}: control.tar has no control file")]
    NoControl {
        /// The `.deb` file.
        path: PathBuf,
    },
    /// The `control` file is malformed.
    #[error("{path}: bad control file")]
    Control {
        /// The `.deb` file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ControlError,
    },
}

/// What kind of file system object a data tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its bytes are in [`DebEntry::data`].
    File,
    /// A directory.
    Dir,
    /// A symbolic link to [`DebEntry::link_target`].
    Symlink,
    /// A hard link to the earlier entry named by [`DebEntry::link_target`].
    HardLink,
    /// Anything else (device nodes, fifos); packages rarely ship these.
    Other,
}

/// One entry of a package's data tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebEntry {
    /// Path relative to `/`, without a leading `./` or `/` and without a trailing `/`.
    pub path: String,
    /// Entry kind.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// File contents (empty unless `kind` is `File`).
    pub data: Vec<u8>,
    /// Link target for symlinks and hard links (hard link targets normalised like `path`).
    pub link_target: Option<String>,
}

/// An opened `.deb`: its control paragraph, and where its data tar is.
#[derive(Debug, Clone)]
pub struct DebContents {
    path: PathBuf,
    control: Control,
    data_offset: u64,
    data_size: u64,
    data_compression: Compression,
}

/// Opens a `.deb`, reads its `control` paragraph and locates its data tar.
pub fn unpack(deb_path: &Path) -> Result<DebContents, DebError> {
    let io_err = |source| DebError::Io {
        path: deb_path.to_owned(),
        source,
    };
    let mut file = File::open(deb_path).map_err(io_err)?;
    let members = ar::members(&mut file).map_err(io_err)?;
    let find =
        |prefix: &'static str| -> Result<(&ar::Member, Compression), DebError> {
            let member = members.iter().find(|m| m.name.starts_with(prefix)).ok_or(
                DebError::MissingMember {
                    path: deb_path.to_owned(),
                    member: prefix,
                },
            )?;
            match Compression::split_suffix(&member.name) {
                (stem, compression) if stem == prefix => Ok((member, compression)),
                _ => Err(DebError::UnsupportedMember {
                    path: deb_path.to_owned(),
                    member: member.name.clone(),
                }),
            }
        };
    let (control_member, control_compression) = find("control.tar")?;
    let (data_member, data_compression) = find("data.tar")?;

    let reader =
        member_reader(&mut file, control_member.offset, control_member.size).map_err(io_err)?;
    let mut archive = tar::Archive::new(control_compression.decoder(reader).map_err(io_err)?);
    let mut control_text = None;
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?;
        if normalise(&path.to_string_lossy()) == "control" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(io_err)?;
            control_text = Some(text);
            break;
        }
    }
    let control_text = control_text.ok_or_else(|| DebError::NoControl {
        path: deb_path.to_owned(),
    })?;
    let control = Control::parse(&control_text).map_err(|source| DebError::Control {
        path: deb_path.to_owned(),
        source,
    })?;
    Ok(DebContents {
        path: deb_path.to_owned(),
        control,
        data_offset: data_member.offset,
        data_size: data_member.size,
        data_compression,
    })
}

fn member_reader(file: &mut File, offset: u64, size: u64) -> io::Result<io::Take<File>> {
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(file.take(size))
}

/// `./usr/bin/x` → `usr/bin/x`, `./` → ``, `lib/` → `lib`.
fn normalise(path: &str) -> String {
    let path = path.trim_start_matches("./").trim_start_matches('/');
    let path = if path == "." { "" } else { path };
    path.trim_end_matches('/').to_owned()
}

impl DebContents {
    /// The `.deb` file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The package's `control` paragraph (`Package`, `Version`, `Depends`, ...).
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The uncompressed data tar as a stream, for any tar consumer.
    pub fn data_tar(&self) -> Result<Box<dyn Read + Send>, DebError> {
        let io_err = |source| DebError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io_err)?;
        let reader = member_reader(&mut file, self.data_offset, self.data_size).map_err(io_err)?;
        self.data_compression.decoder(reader).map_err(io_err)
    }

    /// Every entry of the data tar, in archive order, file contents read into memory. The root
    /// entry (`./`) is skipped.
    pub fn entries(&self) -> Result<Vec<DebEntry>, DebError> {
        let io_err = |source| DebError::Io {
            path: self.path.clone(),
            source,
        };
        let mut archive = tar::Archive::new(self.data_tar()?);
        let mut out = Vec::new();
        for entry in archive.entries().map_err(io_err)? {
            let mut entry = entry.map_err(io_err)?;
            let path = normalise(&entry.path().map_err(io_err)?.to_string_lossy());
            if path.is_empty() {
                continue;
            }
            let header = entry.header();
            let mode = header.mode().map_err(io_err)? & 0o7777;
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => EntryKind::HardLink,
                _ => EntryKind::Other,
            };
            let link_target = match kind {
                EntryKind::Symlink => entry
                    .link_name()
                    .map_err(io_err)?
                    .map(|p| p.to_string_lossy().into_owned()),
                EntryKind::HardLink => entry
                    .link_name()
                    .map_err(io_err)?
                    .map(|p| normalise(&p.to_string_lossy())),
                _ => None,
            };
            let mut data = Vec::new();
            if kind == EntryKind::File {
                entry.read_to_end(&mut data).map_err(io_err)?;
            }
            out.push(DebEntry {
                path,
                kind,
                mode,
                data,
                link_target,
            });
        }
        Ok(out)
    }
}

/// Builds a minimal `.deb` in memory: `debian-binary`, `control.tar.gz` holding `control`, and
/// `data.tar` compressed with `data_compression`. Meant for fixtures and tests of code that
/// consumes packages.
pub fn build_deb(
    control: &str,
    data_tar: &[u8],
    data_compression: Compression,
) -> io::Result<Vec<u8>> {
    let mut control_tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(control.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    control_tar.append_data(&mut header, "./control", control.as_bytes())?;
    let control_tar = control_tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&control_tar)?;
    let control_gz = gz.finish()?;
    let (name, data) = match data_compression {
        Compression::None => ("data.tar", data_tar.to_vec()),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data_tar)?;
            ("data.tar.gz", gz.finish()?)
        }
        Compression::Xz => {
            let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
            xz.write_all(data_tar)?;
            ("data.tar.xz", xz.finish()?)
        }
        Compression::Zstd => (
            "data.tar.zst",
            ruzstd::encoding::compress_to_vec(
                data_tar,
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        ),
    };
    Ok(ar::write(&[
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", &control_gz),
        (name, &data),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add =
            |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(kind);
                header.set_mode(mode);
                header.set_size(data.len() as u64);
                match link {
                    Some(target) => builder.append_link(&mut header, path, target).unwrap(),
                    None => builder.append_data(&mut header, path, data).unwrap(),
                }
            };
        add("./", tar::EntryType::Directory, 0o755, b"", None);
        add("./bin/", tar::EntryType::Directory, 0o755, b"", None);
        add(
            "./bin/busybox",
            tar::EntryType::Regular,
            0o755,
            b"\x7fELF fake",
            None,
        );
        add(
            "./bin/sh",
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
        add(
            "./bin/ash",
            tar::EntryType::Link,
            0o755,
            b"",
            Some("./bin/busybox"),
        );
        builder.into_inner().unwrap()
    }

    const CONTROL: &str = "Package: tiny\nVersion: 1.0-1\nArchitecture: arm64\nDepends: libc6 (>= 2.36), zlib1g\nDescription: tiny\n test package\n";

    #[test]
    fn unpacks_a_tiny_deb_with_each_compression() {
        let dir = tempfile::tempdir().unwrap();
        for compression in [
            Compression::Xz,
            Compression::Gzip,
            Compression::Zstd,
            Compression::None,
        ] {
            let path = dir.path().join("tiny.deb");
            std::fs::write(&path, build_deb(CONTROL, &data_tar(), compression).unwrap()).unwrap();
            let deb = unpack(&path).unwrap();
            assert_eq!(deb.control().get("Version"), Some("1.0-1"));
            assert_eq!(deb.control().relation_names("Depends"), ["libc6", "zlib1g"]);
            let entries = deb.entries().unwrap();
            let paths: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(
                paths,
                ["bin", "bin/busybox", "bin/sh", "bin/ash"],
                "{compression:?}"
            );
            assert_eq!(entries[0].kind, EntryKind::Dir);
            assert_eq!(entries[1].data, b"\x7fELF fake");
            assert_eq!(entries[1].mode, 0o755);
            assert_eq!(entries[2].kind, EntryKind::Symlink);
            assert_eq!(entries[2].link_target.as_deref(), Some("busybox"));
            assert_eq!(entries[3].kind, EntryKind::HardLink);
            assert_eq!(entries[3].link_target.as_deref(), Some("bin/busybox"));
            // The raw stream is the uncompressed tar itself.
            let mut raw = Vec::new();
            deb.data_tar().unwrap().read_to_end(&mut raw).unwrap();
            assert_eq!(raw, data_tar());
        }
    }

    #[test]
    fn missing_members_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.deb");
        std::fs::write(&path, ar::write(&[("debian-binary", b"2.0\n")])).unwrap();
        let err = unpack(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DebError::MissingMember {
                    member: "control.tar",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::write(&path, b"not a deb at all").unwrap();
        assert!(matches!(unpack(&path), Err(DebError::Io { .. })));
    }

    #[test]
    fn unsupported_compression_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bz.deb");
        let good = build_deb(CONTROL, &data_tar(), Compression::Gzip).unwrap();
        let list = ar::members(&mut io::Cursor::new(&good)).unwrap();
        let member = |i: usize| &good[list[i].offset as usize..][..list[i].size as usize];
        std::fs::write(
            &path,
            ar::write(&[
                ("debian-binary", member(0)),
                ("control.tar.gz", member(1)),
                ("data.tar.bz2", b"x"),
            ]),
        )
        .unwrap();
        assert!(matches!(
            unpack(&path),
            Err(DebError::UnsupportedMember { .. })
        ));
    }
}
