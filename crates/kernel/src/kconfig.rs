//! A kernel's build configuration (`.config`, `boot/config-*`): the value of every `CONFIG_`
//! option, the kernel version its header names, and the differences between two of them.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed `.config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Option (without `CONFIG_`) → value as written (`y`, `m`, a number, a string without its
    /// quotes), or `n` for `# CONFIG_X is not set`.
    values: BTreeMap<String, String>,
    version: Option<(u32, u32)>,
}

impl KernelConfig {
    /// Parses `.config` text. Lines that are neither an assignment nor a "not set" comment are
    /// ignored, as the kernel's own tools do.
    pub fn parse(text: &str) -> KernelConfig {
        let mut config = KernelConfig::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# CONFIG_") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    config.values.insert(name.to_owned(), "n".to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("CONFIG_") {
                if let Some((name, value)) = rest.split_once('=') {
                    let value = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value);
                    config.values.insert(name.to_owned(), value.to_owned());
                }
            } else if config.version.is_none() && line.ends_with("Kernel Configuration") {
                // "# Linux/x86 6.1.0 Kernel Configuration"
                config.version = line.split_whitespace().find_map(parse_version);
            }
        }
        config
    }

    /// The option's value as written; `None` when the option is not in the file at all (not
    /// even as "is not set": this kernel does not have it, or it depends on something unset).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The option's effective value: `n` when it is not set or absent.
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("n")
    }

    /// Every option the file names, with its value (`n` for "is not set").
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The kernel version (major, minor) the header names.
    pub fn version(&self) -> Option<(u32, u32)> {
        self.version
    }

    /// How `other` differs from this configuration, by option name.
    pub fn diff(&self, other: &KernelConfig) -> Vec<Change> {
        let mut names: Vec<&String> = self.values.keys().chain(other.values.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let (a, b) = (self.get(name), other.get(name));
                // "is not set" and absent mean the same to the kernel.
                (a.unwrap_or("n") != b.unwrap_or("n")).then(|| Change {
                    name: name.clone(),
                    from: a.map(str::to_owned),
                    to: b.map(str::to_owned),
                })
            })
            .collect()
    }
}

/// `6.1.0` → (6, 1).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// One option that differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub name: String,
    /// The first configuration's value; `None`: absent.
    pub from: Option<String>,
    /// The second's.
    pub to: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".to_owned());
        write!(
            f,
            "CONFIG_{}: {} -> {}",
            self.name,
            show(&self.from),
            show(&self.to)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.0 Kernel Configuration\n#\nCONFIG_CC_VERSION_TEXT=\"gcc (Debian 12.2.0-14) 12.2.0\"\nCONFIG_MODULES=y\nCONFIG_VIRTIO_BLK=m\n# CONFIG_DEVMEM is not set\nCONFIG_PANIC_TIMEOUT=-1\n";

    #[test]
    fn values_version_and_not_set() {
        let c = KernelConfig::parse(TEXT);
        assert_eq!(c.version(), Some((6, 1)));
        assert_eq!(c.get("MODULES"), Some("y"));
        assert_eq!(c.get("VIRTIO_BLK"), Some("m"));
        assert_eq!(c.get("DEVMEM"), Some("n"));
        assert_eq!(c.get("PANIC_TIMEOUT"), Some("-1"));
        assert_eq!(
            c.get("CC_VERSION_TEXT"),
            Some("gcc (Debian 12.2.0-14) 12.2.0")
        );
        assert_eq!(c.get("KEXEC"), None);
        assert_eq!(c.value("KEXEC"), "n");
    }

    #[test]
    fn diff_names_what_changed() {
        let a = KernelConfig::parse(TEXT);
        let b = KernelConfig::parse(
            &TEXT
                .replace("CONFIG_VIRTIO_BLK=m", "CONFIG_VIRTIO_BLK=y")
                .replace("# CONFIG_DEVMEM is not set\n", "")
                .replace("CONFIG_MODULES=y\n", "CONFIG_MODULES=y\nCONFIG_KEXEC=y\n"),
        );
        let changes: Vec<String> = a.diff(&b).iter().map(ToString::to_string).collect();
        // DEVMEM went from "not set" to absent: the same to the kernel.
        assert_eq!(
            changes,
            ["CONFIG_KEXEC: (absent) -> y", "CONFIG_VIRTIO_BLK: m -> y"]
        );
        assert!(a.diff(&a).is_empty());
    }
}
