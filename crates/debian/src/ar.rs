//! The tiny subset of the Unix `ar` format a `.deb` uses: a magic line, then members with a
//! fixed 60-byte header and 2-byte aligned data. Only member names and positions are read here.

use std::io::{self, Read, Seek, SeekFrom};

const MAGIC: &[u8; 8] = b"!<arch>\n";
const HEADER_LEN: u64 = 60;

/// One member of an archive: where its data is in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Lists the members of the `ar` archive in `file`. Format errors are `InvalidData`.
pub(crate) fn members<R: Read + Seek>(file: &mut R) -> io::Result<Vec<Member>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let end = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .map_err(|_| bad("not an ar archive"))?;
    if &magic != MAGIC {
        return Err(bad("not an ar archive"));
    }
    let mut out = Vec::new();
    let mut pos = MAGIC.len() as u64;
    while pos < end {
        let mut header = [0u8; HEADER_LEN as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut header)
            .map_err(|_| bad("truncated ar member header"))?;
        if &header[58..60] != b"`\n" {
            return Err(bad("bad ar member header"));
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_owned();
        let size: u64 = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad("bad ar member size"))?;
        let offset = pos + HEADER_LEN;
        if offset.checked_add(size).is_none_or(|e| e > end) {
            return Err(bad("truncated ar member"));
        }
        out.push(Member { name, offset, size });
        pos = offset + size + (size & 1);
    }
    Ok(out)
}

/// Writes an `ar` archive (used by tests here and in other crates' tests through
/// [`crate::deb::build_deb`]).
pub(crate) fn write(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (name, data) in members {
        let header = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name,
            0,
            0,
            0,
            "100644",
            data.len()
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trip() {
        let bytes = write(&[
            ("debian-binary", b"2.0\n"),
            ("odd", b"abc"),
            ("last/", b"xy"),
        ]);
        let list = members(&mut Cursor::new(&bytes)).unwrap();
        let names: Vec<_> = list.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["debian-binary", "odd", "last"]);
        let odd = &list[1];
        assert_eq!(&bytes[odd.offset as usize..][..odd.size as usize], b"abc");
        assert_eq!(&bytes[list[2].offset as usize..][..2], b"xy");
    }

    #[test]
    fn rejects_non_ar_and_truncation() {
        assert!(members(&mut Cursor::new(b"PK\x03\x04 not ar")).is_err());
        let mut bytes = write(&[("a", b"0123456789")]);
        bytes.truncate(bytes.len() - 4);
        assert!(members(&mut Cursor::new(&bytes)).is_err());
    }
}
