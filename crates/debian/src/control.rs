//! deb822 paragraphs: the `control` file of a package and the records `apt-cache show` prints.

use thiserror::Error;

/// A deb822 parse failure.
#[derive(Debug, Error)]
pub enum ControlError {
    /// A line is neither `Field: value`, a continuation, nor blank.
    #[error("line {line}: expected `Field: value`")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// The text holds no paragraph at all.
    #[error("no fields")]
    Empty,
}

/// One paragraph of fields, in file order. Continuation lines are kept, joined with `\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    fields: Vec<(String, String)>,
}

impl Control {
    /// Parses text holding exactly one paragraph (extra paragraphs are an error-free superset:
    /// only the first is kept, as `dpkg` does for a `control` file).
    pub fn parse(text: &str) -> Result<Control, ControlError> {
        Self::parse_all(text)?
            .into_iter()
            .next()
            .ok_or(ControlError::Empty)
    }

    /// Parses every paragraph (paragraphs are separated by blank lines).
    pub fn parse_all(text: &str) -> Result<Vec<Control>, ControlError> {
        let mut out = Vec::new();
        let mut current = Control::default();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                if !current.fields.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                let Some((_, value)) = current.fields.last_mut() else {
                    return Err(ControlError::BadLine { line: index + 1 });
                };
                value.push('\n');
                value.push_str(line.trim());
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(ControlError::BadLine { line: index + 1 });
            };
            current
                .fields
                .push((name.trim().to_owned(), value.trim().to_owned()));
        }
        if !current.fields.is_empty() {
            out.push(current);
        }
        Ok(out)
    }

    /// The value of a field; names compare case-insensitively, as Debian specifies.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Sets a field, replacing its value when present (names compare case-insensitively), else
    /// appending it: a package's own `control` lacks the archive's `SHA256`, which a pin adds.
    pub fn set(&mut self, name: &str, value: &str) {
        match self
            .fields
            .iter_mut()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            Some((_, old)) => value.clone_into(old),
            None => self.fields.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Every field, in file order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A relationship field (`Depends`, `Pre-Depends`, ...) split at commas: each item is one
    /// requirement as written, e.g. `kmod` or `initramfs-tools (>= 0.120) | linux-initramfs-tool`.
    pub fn relations(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|value| {
                value
                    .split(',')
                    .map(|item| item.split_whitespace().collect::<Vec<_>>().join(" "))
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The package names a relationship field requires, first alternative of each item, without
    /// version constraints or architecture qualifiers: `linux-base (>= 4.3~)` → `linux-base`.
    pub fn relation_names(&self, name: &str) -> Vec<String> {
        self.relations(name)
            .iter()
            .filter_map(|item| {
                let first = item.split('|').next()?.trim();
                let name = first.split([' ', '(', '[', '<']).next()?;
                let name = name.split(':').next()?;
                (!name.is_empty()).then(|| name.to_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Package: linux-image-6.1.0-56-cloud-arm64\n\
Version: 6.1.192-2\n\
depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n\
Description: Linux 6.1 for arm64 cloud\n \
 The Linux kernel 6.1.\n \
 .\n\
\n\
Package: other\n\
Version: 1\n";

    #[test]
    fn parses_paragraphs_and_fields() {
        let all = Control::parse_all(TEXT).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].get("VERSION"), Some("6.1.192-2"));
        assert_eq!(all[1].get("Package"), Some("other"));
        assert_eq!(
            all[0].get("Description"),
            Some("Linux 6.1 for arm64 cloud\nThe Linux kernel 6.1.\n.")
        );
        assert_eq!(Control::parse(TEXT).unwrap(), all[0]);
    }

    #[test]
    fn relations_split() {
        let control = Control::parse(TEXT).unwrap();
        assert_eq!(control.relations("Depends").len(), 3);
        assert_eq!(
            control.relation_names("Depends"),
            ["kmod", "linux-base", "initramfs-tools"]
        );
        assert!(control.relations("Pre-Depends").is_empty());
    }

    #[test]
    fn set_replaces_or_appends() {
        let mut control = Control::parse(TEXT).unwrap();
        control.set("version", "6.1.192-3");
        control.set("SHA256", "ab");
        assert_eq!(control.get("Version"), Some("6.1.192-3"));
        assert_eq!(control.get("sha256"), Some("ab"));
        assert_eq!(control.fields().count(), 5);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Control::parse("Package: a\nno colon here\n"),
            Err(ControlError::BadLine { line: 2 })
        ));
        assert!(matches!(Control::parse("\n\n"), Err(ControlError::Empty)));
        assert!(matches!(
            Control::parse(" continuation first\n"),
            Err(ControlError::BadLine { line: 1 })
        ));
    }
}
