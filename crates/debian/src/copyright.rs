//! Debian's machine-readable copyright files (DEP-5,
//! <https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/>), as packages ship them
//! in `/usr/share/doc/<package>/copyright`: the licences they name, and the SPDX identifiers
//! those names stand for.

use crate::control::Control;

/// Where a package's copyright file is, relative to `/`.
pub fn path(package: &str) -> String {
    format!("usr/share/doc/{package}/copyright")
}

/// One `License:` field: its first line (the short name, or an expression of short names with
/// `and`, `or` and `with ... exception`) and the licence text below it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    pub name: String,
    pub text: String,
}

/// The licences of a machine-readable copyright file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copyright {
    /// The `License:` fields of the `Files:` paragraphs (and of the header), in file order,
    /// each name once.
    pub licenses: Vec<String>,
    /// Stand-alone `License:` paragraphs (and fields that carry text), by name: the text a
    /// short name stands for in this file.
    pub texts: Vec<License>,
}

impl Copyright {
    /// The text this file gives for the licence `name`, if any.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
            .map(|l| l.text.as_str())
    }
}

/// Parses a copyright file. `None` when it is not machine-readable (no `Format:` field naming
/// the copyright-format specification in its first paragraph): older, free-form files name
/// their licences in prose only.
pub fn parse(text: &str) -> Option<Copyright> {
    let paragraphs = Control::parse_all(text).ok()?;
    let header = paragraphs.first()?;
    let format = header
        .get("Format")
        .or_else(|| header.get("Format-Specification"))?;
    if !format.contains("copyright-format") && !format.contains("dep5") {
        return None;
    }
    let mut out = Copyright::default();
    for p in &paragraphs {
        let Some(field) = p.get("License") else {
            continue;
        };
        let (name, body) = field.split_once('\n').unwrap_or((field, ""));
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        // Continuation lines hold `.` for blank lines.
        let body: Vec<&str> = body
            .lines()
            .map(|l| if l.trim() == "." { "" } else { l })
            .collect();
        let body = body.join("\n").trim().to_owned();
        if !body.is_empty() && out.text(name).is_none() {
            out.texts.push(License {
                name: name.to_owned(),
                text: body,
            });
        }
        // Stand-alone licence paragraphs only define texts.
        let standalone = p.get("Files").is_none() && !std::ptr::eq(p, header);
        if !standalone && !out.licenses.iter().any(|l| l == name) {
            out.licenses.push(name.to_owned());
        }
    }
    Some(out)
}

/// Debian's short licence names (copyright-format 1.0, "License specification") and the SPDX
/// identifiers they stand for. Names compare case-insensitively; SPDX identifiers written as
/// they are also map to themselves (newer copyright files use them).
const SHORT_NAMES: &[(&str, &str)] = &[
    ("AGPL-3", "AGPL-3.0-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("Apache-1.0", "Apache-1.0"),
    ("Apache-1.1", "Apache-1.1"),
    ("Apache-2", "Apache-2.0"),
    ("Apache-2.0", "Apache-2.0"),
    ("Apache-2.0+", "Apache-2.0"),
    // Debian's "Artistic" is Perl's (/usr/share/common-licenses/Artistic).
    ("Artistic", "Artistic-1.0-Perl"),
    ("Artistic-1.0", "Artistic-1.0"),
    ("Artistic-2.0", "Artistic-2.0"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("BSL-1.0", "BSL-1.0"),
    ("bzip2-1.0.6", "bzip2-1.0.6"),
    ("CC-BY-3.0", "CC-BY-3.0"),
    ("CC-BY-4.0", "CC-BY-4.0"),
    ("CC-BY-SA-3.0", "CC-BY-SA-3.0"),
    ("CC-BY-SA-4.0", "CC-BY-SA-4.0"),
    ("CC0", "CC0-1.0"),
    ("CC0-1.0", "CC0-1.0"),
    ("CDDL-1.0", "CDDL-1.0"),
    ("curl", "curl"),
    ("EPL-1.0", "EPL-1.0"),
    ("EPL-2.0", "EPL-2.0"),
    ("Expat", "MIT"),
    ("FSFAP", "FSFAP"),
    ("FSFUL", "FSFUL"),
    ("FSFULLR", "FSFULLR"),
    ("FTL", "FTL"),
    ("GFDL-1.2", "GFDL-1.2-only"),
    ("GFDL-1.2+", "GFDL-1.2-or-later"),
    ("GFDL-1.3", "GFDL-1.3-only"),
    ("GFDL-1.3+", "GFDL-1.3-or-later"),
    ("GPL-1", "GPL-1.0-only"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-2.0", "GPL-2.0-only"),
    ("GPL-2.0+", "GPL-2.0-or-later"),
    ("GPL-2.0-only", "GPL-2.0-only"),
    ("GPL-2.0-or-later", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("GPL-3.0", "GPL-3.0-only"),
    ("GPL-3.0+", "GPL-3.0-or-later"),
    ("GPL-3.0-only", "GPL-3.0-only"),
    ("GPL-3.0-or-later", "GPL-3.0-or-later"),
    ("ISC", "ISC"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.0", "LGPL-2.0-only"),
    ("LGPL-2.0+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-2.1-only", "LGPL-2.1-only"),
    ("LGPL-2.1-or-later", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("LGPL-3.0", "LGPL-3.0-only"),
    ("LGPL-3.0+", "LGPL-3.0-or-later"),
    ("LPPL-1.3c", "LPPL-1.3c"),
    ("MIT", "MIT"),
    ("MPL-1.1", "MPL-1.1"),
    ("MPL-2.0", "MPL-2.0"),
    ("OpenSSL", "OpenSSL"),
    ("PSF-2", "PSF-2.0"),
    ("Python-2.0", "Python-2.0"),
    ("QPL-1.0", "QPL-1.0"),
    ("Unicode-DFS-2016", "Unicode-DFS-2016"),
    ("Unlicense", "Unlicense"),
    ("W3C", "W3C"),
    ("X11", "X11"),
    ("Zlib", "Zlib"),
    ("ZPL-1.1", "ZPL-1.1"),
    ("ZPL-2.0", "ZPL-2.0"),
    ("ZPL-2.1", "ZPL-2.1"),
];

/// The SPDX identifier of one Debian short licence name (without operators), if it has one.
pub fn spdx_id(short_name: &str) -> Option<&'static str> {
    let name = short_name.trim();
    SHORT_NAMES
        .iter()
        .find(|(debian, _)| debian.eq_ignore_ascii_case(name))
        .map(|(_, spdx)| *spdx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP5: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: hello\n\
\n\
Files: *\n\
Copyright: 1992 Someone\n\
License: GPL-2+\n\
\n\
Files: lib/*\n\
Copyright: 2001 Other\n\
License: BSD-3-clause or Expat\n\
\n\
Files: debian/*\n\
License: GPL-2+\n\
\n\
License: GPL-2+\n This program is free software;\n .\n see /usr/share/common-licenses/GPL-2.\n";

    #[test]
    fn machine_readable_files_give_their_licences() {
        let c = parse(DEP5).unwrap();
        assert_eq!(c.licenses, ["GPL-2+", "BSD-3-clause or Expat"]);
        assert_eq!(
            c.text("gpl-2+"),
            Some("This program is free software;\n\nsee /usr/share/common-licenses/GPL-2.")
        );
        assert_eq!(c.text("Expat"), None);
    }

    #[test]
    fn free_form_files_are_not_parsed() {
        assert_eq!(
            parse("This is hello, written by someone.\n\nGPL-2.\n"),
            None
        );
        assert_eq!(parse(""), None);
    }

    #[test]
    fn short_names_map_to_spdx() {
        assert_eq!(spdx_id("GPL-2+"), Some("GPL-2.0-or-later"));
        assert_eq!(spdx_id("bsd-3-clause"), Some("BSD-3-Clause"));
        assert_eq!(spdx_id("Expat"), Some("MIT"));
        assert_eq!(spdx_id("public-domain"), None);
        assert_eq!(path("hello"), "usr/share/doc/hello/copyright");
    }
}
