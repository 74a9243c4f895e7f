//! `build.lock.json`: the exact Debian packages (name, version, sha256) a package is built from,
//! per architecture, and the dependency closure that produces them.
//!
//! The lock records, per architecture, the `debs:` it was resolved for and the closure of those
//! packages over `Depends` and `Pre-Depends`. A build uses the pins exactly; an architecture is
//! resolved again only when it is missing, when `debs:` changed, or when asked to.

use crate::error::{Error, Result};
use keel_debian::{Apt, AptError, Control};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// The lock file's name, beside `build.yml`.
pub const LOCK_FILE: &str = "build.lock.json";

/// The whole lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Per architecture (`x86_64`, `aarch64`).
    pub arches: BTreeMap<String, ArchLock>,
}

/// The pins of one architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchLock {
    /// The `debs:` of build.yml this was resolved for, sorted.
    pub debs: Vec<String>,
    /// The closure, sorted by name.
    pub packages: Vec<Pin>,
}

/// One exact package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub name: String,
    pub version: String,
    /// Lower-case hex sha256 of the `.deb`.
    pub sha256: String,
}

impl Lock {
    /// Reads `dir/build.lock.json`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Lock>> {
        let path = dir.join(LOCK_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| Error::Lock { path, source })
    }

    /// The lock as written: pretty JSON, keys and lists sorted, with a final newline.
    pub fn to_text(&self) -> String {
        // Serializing plain strings and maps cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes `dir/build.lock.json` (atomically) unless it already has this content.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(LOCK_FILE);
        let text = self.to_text();
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(());
        }
        let tmp = dir.join(format!(".{LOCK_FILE}.tmp"));
        let io = |action, path: &PathBuf| {
            let path = path.clone();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("write", &path))?;
        log::info!("wrote {}", path.display());
        Ok(())
    }
}

/// Where package candidates come from: the archive through apt, or fixtures in tests.
pub(crate) trait Archive {
    /// The control fields of the version apt would install, `None` when there is none
    /// (unknown or purely virtual names).
    fn candidate(&self, name: &str) -> std::result::Result<Option<Control>, AptError>;
    /// The Debian architecture name, for messages.
    fn arch(&self) -> &str;
}

impl Archive for Apt {
    fn candidate(&self, name: &str) -> std::result::Result<Option<Control>, AptError> {
        match Apt::candidate(self, name) {
            Ok(c) => Ok(Some(c)),
            Err(AptError::UnknownPackage { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn arch(&self) -> &str {
        Apt::arch(self)
    }
}

/// Answers with the kept pins' own control paragraphs and asks the archive for everything
/// else, so that a refresh moves only what has to move: the pins that left the archive, and
/// whatever their new versions need that the lock lacks.
pub(crate) struct Preferring<'a> {
    pub archive: &'a dyn Archive,
    /// Package name → the pinned version's control (with its `Version` and `SHA256`).
    pub kept: BTreeMap<String, Control>,
}

impl Archive for Preferring<'_> {
    fn candidate(&self, name: &str) -> std::result::Result<Option<Control>, AptError> {
        match self.kept.get(name) {
            Some(control) => Ok(Some(control.clone())),
            None => self.archive.candidate(name),
        }
    }

    fn arch(&self) -> &str {
        self.archive.arch()
    }
}

/// How one architecture's pins changed when they were resolved again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinChange {
    /// Same package, another version.
    Moved {
        name: String,
        from: String,
        to: String,
    },
    /// A package the closure did not have.
    Added { name: String, version: String },
    /// A package the closure no longer needs.
    Removed { name: String, version: String },
}

impl std::fmt::Display for PinChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinChange::Moved { name, from, to } => write!(f, "{name} {from} -> {to}"),
            PinChange::Added { name, version } => write!(f, "{name} {version} added"),
            PinChange::Removed { name, version } => write!(f, "{name} {version} removed"),
        }
    }
}

/// What differs between two closures, by package name.
pub fn changes(old: &[Pin], new: &[Pin]) -> Vec<PinChange> {
    let old: BTreeMap<&str, &Pin> = old.iter().map(|p| (p.name.as_str(), p)).collect();
    let new: BTreeMap<&str, &Pin> = new.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut out = Vec::new();
    for (name, pin) in &new {
        match old.get(name) {
            Some(before) if before.version != pin.version || before.sha256 != pin.sha256 => {
                out.push(PinChange::Moved {
                    name: (*name).to_owned(),
                    from: before.version.clone(),
                    to: pin.version.clone(),
                });
            }
            Some(_) => {}
            None => out.push(PinChange::Added {
                name: (*name).to_owned(),
                version: pin.version.clone(),
            }),
        }
    }
    for (name, pin) in &old {
        if !new.contains_key(name) {
            out.push(PinChange::Removed {
                name: (*name).to_owned(),
                version: pin.version.clone(),
            });
        }
    }
    out
}

/// The alternatives of one relation item (`a (>= 1) | b:any [amd64]`), names only.
fn alternatives(item: &str) -> Vec<String> {
    item.split('|')
        .filter_map(|alt| {
            let name = alt.trim().split([' ', '(', '[', '<']).next()?;
            let name = name.split(':').next()?;
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// The dependency closure of `roots` over `Pre-Depends` and `Depends`, sorted by name.
///
/// For `a | b` the first alternative is taken, unless one is already selected; an alternative
/// without a candidate (a virtual package) is skipped when another one has one. Version
/// constraints and architecture qualifiers are ignored.
pub(crate) fn closure(archive: &dyn Archive, roots: &[String]) -> Result<Vec<Pin>> {
    let mut selected: BTreeMap<String, Pin> = BTreeMap::new();
    let mut queue: VecDeque<(String, Control)> = VecDeque::new();
    let arch = archive.arch().to_owned();
    let resolve_err = |package: &str| {
        let arch = arch.clone();
        let package = package.to_owned();
        move |source| Error::Resolve {
            package,
            arch,
            source: Box::new(source),
        }
    };
    let add = |name: &str,
               control: Control,
               selected: &mut BTreeMap<String, Pin>,
               queue: &mut VecDeque<(String, Control)>|
     -> Result<()> {
        let field = |f: &'static str| {
            control
                .get(f)
                .map(str::to_owned)
                .ok_or_else(|| Error::Resolve {
                    package: name.to_owned(),
                    arch: arch.clone(),
                    source: Box::new(AptError::MissingField {
                        package: name.to_owned(),
                        field: f,
                    }),
                })
        };
        let pin = Pin {
            name: name.to_owned(),
            version: field("Version")?,
            sha256: field("SHA256")?,
        };
        selected.insert(name.to_owned(), pin);
        queue.push_back((name.to_owned(), control));
        Ok(())
    };
    for root in roots {
        if selected.contains_key(root) {
            continue;
        }
        let control = archive
            .candidate(root)
            .map_err(resolve_err(root))?
            .ok_or_else(|| Error::Resolve {
                package: root.clone(),
                arch: arch.clone(),
                source: Box::new(AptError::UnknownPackage {
                    package: root.clone(),
                    arch: arch.clone(),
                }),
            })?;
        add(root, control, &mut selected, &mut queue)?;
    }
    while let Some((name, control)) = queue.pop_front() {
        let items = control
            .relations("Pre-Depends")
            .into_iter()
            .chain(control.relations("Depends"));
        'items: for item in items {
            let alts = alternatives(&item);
            if alts.iter().any(|a| selected.contains_key(a)) {
                continue;
            }
            for alt in &alts {
                if let Some(c) = archive.candidate(alt).map_err(resolve_err(alt))? {
                    add(alt, c, &mut selected, &mut queue)?;
                    continue 'items;
                }
            }
            return Err(Error::Unsatisfiable {
                package: name,
                dependency: item,
                arch: arch.clone(),
            });
        }
    }
    Ok(selected.into_values().collect())
}

/// The roots as the lock records them: sorted, without duplicates.
pub(crate) fn roots(debs: &[String]) -> Vec<String> {
    debs.iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    struct Fixture {
        packages: HashMap<String, Control>,
        asked: Mutex<Vec<String>>,
    }

    impl Fixture {
        fn new(text: &str) -> Fixture {
            let packages = Control::parse_all(text)
                .unwrap()
                .into_iter()
                .map(|c| (c.get("Package").unwrap().to_owned(), c))
                .collect();
            Fixture {
                packages,
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    impl Archive for Fixture {
        fn candidate(&self, name: &str) -> std::result::Result<Option<Control>, AptError> {
            self.asked.lock().unwrap().push(name.to_owned());
            Ok(self.packages.get(name).cloned())
        }
        fn arch(&self) -> &str {
            "amd64"
        }
    }

    const ARCHIVE: &str = "\
Package: app
Version: 1.0-1
SHA256: aa
Pre-Depends: libc6 (>= 2.36)
Depends: libfoo:any (>= 1.2), mail-transport-agent | postfix, zlib1g | libz-alt, libc6

Package: libc6
Version: 2.36-9
SHA256: cc
Depends: libgcc-s1

Package: libgcc-s1
Version: 12.2.0-14
SHA256: dd
Depends: gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)

Package: gcc-12-base
Version: 12.2.0-14
SHA256: ee

Package: libfoo
Version: 1.2-3
SHA256: ff

Package: postfix
Version: 3.7
SHA256: 11

Package: zlib1g
Version: 1:1.2.13
SHA256: 22

Package: libz-alt
Version: 9
SHA256: 33

Package: broken
Version: 1
SHA256: 44
Depends: nothing-here | virtual-too
";

    fn names(pins: &[Pin]) -> Vec<&str> {
        pins.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn closure_follows_depends_and_pre_depends() {
        let f = Fixture::new(ARCHIVE);
        let pins = closure(&f, &["app".to_owned()]).unwrap();
        // Sorted; the virtual mail-transport-agent falls through to postfix; zlib1g is the
        // first alternative, so libz-alt is never taken.
        assert_eq!(
            names(&pins),
            [
                "app",
                "gcc-12-base",
                "libc6",
                "libfoo",
                "libgcc-s1",
                "postfix",
                "zlib1g"
            ]
        );
        assert_eq!(pins[6].version, "1:1.2.13");
        assert_eq!(pins[0].sha256, "aa");
        let asked = f.asked.lock().unwrap();
        assert!(!asked.contains(&"libz-alt".to_owned()));
        // Each package is looked up once (libc6 is a dependency of three).
        assert_eq!(asked.iter().filter(|a| *a == "libc6").count(), 1);
    }

    #[test]
    fn selected_alternative_satisfies_later_items() {
        let f = Fixture::new(ARCHIVE);
        let pins = closure(&f, &["libz-alt".to_owned(), "app".to_owned()]).unwrap();
        assert!(names(&pins).contains(&"libz-alt"));
        assert!(!names(&pins).contains(&"zlib1g"));
    }

    #[test]
    fn unsatisfiable_dependencies_are_named() {
        let f = Fixture::new(ARCHIVE);
        let e = closure(&f, &["broken".to_owned()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "broken (amd64) depends on \"nothing-here | virtual-too\", which the archive cannot satisfy"
        );
        let e = closure(&f, &["missing".to_owned()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot resolve Debian package missing for amd64"
        );
    }

    #[test]
    fn preferring_keeps_pins_and_moves_only_what_is_gone() {
        // The lock pinned libc6 2.36-8 (kept) and app 0.9 (gone); app's new version also needs
        // libfoo, which the lock did not have.
        let f = Fixture::new(ARCHIVE);
        let mut kept_libc = f.packages["libc6"].clone();
        kept_libc.set("Version", "2.36-8");
        kept_libc.set("SHA256", "c8");
        let p = Preferring {
            archive: &f,
            kept: BTreeMap::from([("libc6".to_owned(), kept_libc)]),
        };
        let new = closure(&p, &["app".to_owned()]).unwrap();
        let libc = new.iter().find(|p| p.name == "libc6").unwrap();
        assert_eq!(
            (libc.version.as_str(), libc.sha256.as_str()),
            ("2.36-8", "c8")
        );
        let old = vec![
            Pin {
                name: "app".into(),
                version: "0.9".into(),
                sha256: "a9".into(),
            },
            libc.clone(),
            Pin {
                name: "oldlib".into(),
                version: "1".into(),
                sha256: "01".into(),
            },
        ];
        let text: Vec<String> = changes(&old, &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                "app 0.9 -> 1.0-1",
                "gcc-12-base 12.2.0-14 added",
                "libfoo 1.2-3 added",
                "libgcc-s1 12.2.0-14 added",
                "postfix 3.7 added",
                "zlib1g 1:1.2.13 added",
                "oldlib 1 removed"
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn alternatives_drop_versions_and_qualifiers() {
        assert_eq!(
            alternatives("a:any (>= 1) | b [amd64] | c <!nocheck>"),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn lock_round_trips_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Lock::read(dir.path()).unwrap(), None);
        let mut lock = Lock::default();
        lock.arches.insert(
            "x86_64".into(),
            ArchLock {
                debs: vec!["a".into()],
                packages: vec![Pin {
                    name: "a".into(),
                    version: "1".into(),
                    sha256: "00".into(),
                }],
            },
        );
        lock.arches.insert("aarch64".into(), ArchLock::default());
        lock.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            text.find("aarch64").unwrap() < text.find("x86_64").unwrap(),
            "{text}"
        );
        assert!(
            text.ends_with("}\n") && text.contains("\n  \"arches\""),
            "{text}"
        );
        assert_eq!(Lock::read(dir.path()).unwrap(), Some(lock));
        std::fs::write(dir.path().join(LOCK_FILE), "{\"arches\": {}, \"x\": 1}").unwrap();
        let e = Lock::read(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with("invalid lock file"), "{e}");
    }

    #[test]
    fn roots_are_sorted_and_unique() {
        let r = roots(&["b".into(), "a".into(), "b".into()]);
        assert_eq!(r, ["a", "b"]);
    }
}
