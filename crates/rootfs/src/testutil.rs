//! Test helpers: hand-built tar layers (including hostile ones the `tar` crate's builder
//! refuses to write) and a small newc cpio reader.

use tar::{EntryType, Header};

/// One raw layer entry.
pub(crate) enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    /// An entry of an arbitrary type flag.
    Typed(&'a str, u8),
    /// A regular file with mode, uid and gid.
    Owned(&'a str, &'a [u8], u32, u32, u32),
}

fn gnu_long(out: &mut Vec<u8>, kind: EntryType, value: &str) {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(value.len() as u64 + 1);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let mut data = value.as_bytes().to_vec();
    data.push(0);
    data.resize(data.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&data);
}

/// Builds an uncompressed tar from raw entries; names and link names are written verbatim
/// (GNU long-name records when over 100 bytes).
pub(crate) fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, data, link, mode, uid, gid): (
            &str,
            EntryType,
            &[u8],
            &str,
            u32,
            u32,
            u32,
        ) = match e {
            E::File(n, d) => (n, EntryType::Regular, d, "", 0o644, 0, 0),
            E::Owned(n, d, m, u, g) => (n, EntryType::Regular, d, "", *m, *u, *g),
            E::Dir(n) => (n, EntryType::Directory, b"", "", 0o755, 0, 0),
            E::Symlink(n, t) => (n, EntryType::Symlink, b"", t, 0o777, 0, 0),
            E::Link(n, t) => (n, EntryType::Link, b"", t, 0o644, 0, 0),
            E::Char(n, _, _) => (n, EntryType::Char, b"", "", 0o600, 0, 0),
            E::Fifo(n) => (n, EntryType::Fifo, b"", "", 0o600, 0, 0),
            E::Typed(n, t) => (n, EntryType::new(*t), b"", "", 0o600, 0, 0),
        };
        if name.len() > 100 {
            gnu_long(&mut out, EntryType::GNULongName, name);
        }
        if link.len() > 100 {
            gnu_long(&mut out, EntryType::GNULongLink, link);
        }
        let mut h = Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let l = link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(u64::from(uid));
        h.set_gid(u64::from(gid));
        h.set_size(data.len() as u64);
        h.set_mtime(12345);
        if let E::Char(_, major, minor) = e {
            h.set_device_major(*major).unwrap();
            h.set_device_minor(*minor).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// One parsed newc entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CpioEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive strictly (magic, alignment, trailer last, nothing after but padding).
pub(crate) fn read_cpio(mut buf: &[u8]) -> Vec<CpioEntry> {
    let total = buf.len();
    assert_eq!(total % 4, 0, "archive not padded to 4 bytes");
    let mut out = Vec::new();
    loop {
        assert_eq!(&buf[..6], b"070701", "bad magic at {}", total - buf.len());
        let field = |i: usize| {
            let s = std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap();
            u32::from_str_radix(s, 16).unwrap()
        };
        let filesize = field(6) as usize;
        let namesize = field(11) as usize;
        assert_eq!(field(7), 0, "devmajor");
        assert_eq!(field(8), 0, "devminor");
        assert_eq!(field(12), 0, "check");
        let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
            .unwrap()
            .to_owned();
        assert_eq!(buf[110 + namesize - 1], 0, "name not NUL-terminated");
        let data_start = (110 + namesize).div_ceil(4) * 4;
        let data = buf[data_start..data_start + filesize].to_vec();
        let entry = CpioEntry {
            name,
            ino: field(0),
            mode: field(1),
            uid: field(2),
            gid: field(3),
            nlink: field(4),
            mtime: field(5),
            rdev: (field(9), field(10)),
            data,
        };
        buf = &buf[(data_start + filesize).div_ceil(4) * 4..];
        if entry.name == "TRAILER!!!" {
            assert!(buf.is_empty(), "data after the trailer");
            return out;
        }
        out.push(entry);
    }
}
