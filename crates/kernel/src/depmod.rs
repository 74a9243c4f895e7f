//! What `depmod` would write, for a chosen subset of modules: the dependency closure of the
//! modules a recipe wants, and `modules.dep`, `modules.alias`, `modules.softdep`,
//! `modules.devname` and a filtered `modules.order` limited to that subset. Paths are relative
//! to `lib/modules/<release>/`; module names treat `-` and `_` alike, as the kernel does.

use std::collections::{BTreeMap, BTreeSet};

use log::warn;
use thiserror::Error;

use crate::modinfo::ModInfo;

/// Why a module set could not be computed.
#[derive(Debug, Error)]
pub enum DepmodError {
    /// Requested modules that the kernel does not ship as loadable modules.
    #[error("unknown kernel modules: {}", .0.join(", "))]
    UnknownModules(Vec<String>),
    /// A `modules.dep` line is not `path: [dep ...]`.
    #[error("modules.dep line {line}: expected `path: deps`")]
    BadDepLine {
        /// 1-based line number.
        line: usize,
    },
}

/// The kernel's canonical form of a module name: `virtio-rng` → `virtio_rng`.
pub fn normalise_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path: `kernel/drivers/char/hw_random/virtio-rng.ko[.xz]` → `virtio_rng`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base
        .strip_suffix(".xz")
        .or_else(|| base.strip_suffix(".zst"))
        .or_else(|| base.strip_suffix(".gz"))
        .unwrap_or(base);
    normalise_name(base.strip_suffix(".ko").unwrap_or(base))
}

/// The loadable modules of one kernel, by canonical name.
#[derive(Debug, Default)]
pub struct ModuleDb {
    /// name → (path, modinfo)
    modules: BTreeMap<String, (String, ModInfo)>,
}

impl ModuleDb {
    /// Indexes modules given as (path relative to the release directory, modinfo). When two
    /// files claim one name, the first path in sorted order wins, with a warning.
    pub fn new(modules: impl IntoIterator<Item = (String, ModInfo)>) -> ModuleDb {
        let mut sorted: Vec<_> = modules.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut db = ModuleDb::default();
        for (path, info) in sorted {
            let name = info
                .name
                .as_deref()
                .map(normalise_name)
                .unwrap_or_else(|| module_name(&path));
            if let Some((kept, _)) = db.modules.get(&name) {
                warn!("module {name}: {path} ignored, {kept} has the same name");
                continue;
            }
            db.modules.insert(name, (path, info));
        }
        db
    }

    /// How many modules are indexed.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether no module is indexed.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The path of module `name` (either spelling).
    pub fn path(&self, name: &str) -> Option<&str> {
        self.modules
            .get(&normalise_name(name))
            .map(|(p, _)| p.as_str())
    }

    /// Transitive dependencies of `name` in `modules.dep` order: the last one must be loaded
    /// first (`modprobe` walks the list backwards).
    fn dependencies(&self, name: &str) -> Vec<&str> {
        fn visit<'a>(
            db: &'a ModuleDb,
            name: &str,
            seen: &mut BTreeSet<String>,
            load_order: &mut Vec<&'a str>,
        ) {
            let Some((_, info)) = db.modules.get(name) else {
                return;
            };
            for dep in &info.depends {
                let dep = normalise_name(dep);
                if !seen.insert(dep.clone()) {
                    continue;
                }
                match db.modules.get(&dep) {
                    Some((path, _)) => {
                        visit(db, &dep, seen, load_order);
                        load_order.push(path);
                    }
                    None => warn!("module {name} depends on {dep}, which is not a module"),
                }
            }
        }
        let mut seen = BTreeSet::from([name.to_owned()]);
        let mut load_order = Vec::new();
        visit(self, name, &mut seen, &mut load_order);
        load_order.reverse();
        load_order
    }

    /// `modules.dep` for every module whose path is in `paths` (all modules when `None`),
    /// sorted by path.
    pub fn modules_dep(&self, paths: Option<&BTreeSet<String>>) -> String {
        let mut lines: Vec<String> = self
            .modules
            .iter()
            .filter(|(_, (path, _))| paths.is_none_or(|p| p.contains(path)))
            .map(|(name, (path, _))| {
                let mut line = format!("{path}:");
                for dep in self.dependencies(name) {
                    line.push(' ');
                    line.push_str(dep);
                }
                line
            })
            .collect();
        lines.sort();
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn selected<'a>(
        &'a self,
        paths: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = (&'a String, &'a ModInfo)> + 'a {
        let mut chosen: Vec<_> = self
            .modules
            .iter()
            .filter(|(_, (path, _))| paths.contains(path))
            .map(|(name, (path, info))| (path, name, info))
            .collect();
        chosen.sort_by(|a, b| a.0.cmp(b.0));
        chosen.into_iter().map(|(_, name, info)| (name, info))
    }

    /// `modules.alias` for the modules at `paths`.
    pub fn modules_alias(&self, paths: &BTreeSet<String>) -> String {
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for (name, info) in self.selected(paths) {
            for alias in &info.aliases {
                out.push_str(&format!("alias {alias} {name}\n"));
            }
        }
        out
    }

    /// `modules.softdep` for the modules at `paths`.
    pub fn modules_softdep(&self, paths: &BTreeSet<String>) -> String {
        let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
        for (name, info) in self.selected(paths) {
            for softdep in &info.softdeps {
                out.push_str(&format!("softdep {name} {softdep}\n"));
            }
        }
        out
    }

    /// `modules.devname` for the modules at `paths`: modules that own a `/dev` node (`loop`'s
    /// `loop-control`, `c10:237`) and must be loaded before it can appear.
    pub fn modules_devname(&self, paths: &BTreeSet<String>) -> String {
        let mut out = String::from("# Device nodes to trigger on-demand module loading.\n");
        for (name, info) in self.selected(paths) {
            let devname = info.aliases.iter().find_map(|a| a.strip_prefix("devname:"));
            let node = info.aliases.iter().find_map(|alias| {
                let (kind, rest) = if let Some(rest) = alias.strip_prefix("char-major-") {
                    ('c', rest)
                } else {
                    ('b', alias.strip_prefix("block-major-")?)
                };
                let (major, minor) = rest.split_once('-')?;
                let major: u32 = major.parse().ok()?;
                let minor: u32 = minor.parse().ok()?;
                Some(format!("{kind}{major}:{minor}"))
            });
            if let (Some(devname), Some(node)) = (devname, node) {
                out.push_str(&format!("{name} {devname} {node}\n"));
            }
        }
        out
    }
}

/// The modules to ship for `wanted` (names, either spelling): each wanted module and everything
/// it depends on, transitively, according to `dep_text` (a `modules.dep`). Returns their paths
/// as written in `modules.dep`, sorted. Every wanted name must be in `dep_text`.
pub fn module_closure(dep_text: &str, wanted: &[String]) -> Result<Vec<String>, DepmodError> {
    // path → deps, and name → path
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, &str> = BTreeMap::new();
    for (index, line) in dep_text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, rest) = line
            .split_once(':')
            .ok_or(DepmodError::BadDepLine { line: index + 1 })?;
        let path = path.trim();
        if path.is_empty() {
            return Err(DepmodError::BadDepLine { line: index + 1 });
        }
        deps.insert(path, rest.split_whitespace().collect());
        by_name.entry(module_name(path)).or_insert(path);
    }
    let mut unknown = Vec::new();
    let mut todo: Vec<&str> = Vec::new();
    for name in wanted {
        match by_name.get(&normalise_name(name)) {
            Some(path) => todo.push(path),
            None => unknown.push(name.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(DepmodError::UnknownModules(unknown));
    }
    let mut closure = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !closure.insert(path.to_owned()) {
            continue;
        }
        // A dependency without its own line still ships; it just has no further deps.
        todo.extend(deps.get(path).into_iter().flatten().copied());
    }
    Ok(closure.into_iter().collect())
}

/// `modules.order` (or any one-path-per-line list) restricted to `paths`, order kept.
pub fn filter_lines(text: &str, paths: &BTreeSet<String>) -> String {
    text.lines()
        .filter(|line| paths.contains(line.trim()))
        .map(|line| format!("{}\n", line.trim()))
        .collect()
}

/// Names of the built-in modules listed in a `modules.builtin`.
pub fn builtin_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| module_name(l.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, depends: &[&str], aliases: &[&str]) -> ModInfo {
        ModInfo {
            name: Some(name.to_owned()),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            softdeps: Vec::new(),
        }
    }

    fn db() -> ModuleDb {
        ModuleDb::new([
            (
                "kernel/net/bridge/bridge.ko".into(),
                info("bridge", &["llc", "stp"], &["rtnl-link-bridge"]),
            ),
            ("kernel/net/802/stp.ko".into(), info("stp", &["llc"], &[])),
            ("kernel/net/llc/llc.ko".into(), info("llc", &[], &[])),
            ("kernel/drivers/char/hw_random/virtio-rng.ko".into(), {
                let mut i = info(
                    "virtio_rng",
                    &["virtio", "virtio_ring"],
                    &["virtio:d00000004v*"],
                );
                i.name = None;
                i
            }),
            (
                "kernel/drivers/virtio/virtio.ko".into(),
                info("virtio", &["virtio_ring"], &[]),
            ),
            (
                "kernel/drivers/virtio/virtio_ring.ko".into(),
                info("virtio_ring", &[], &[]),
            ),
            (
                "kernel/drivers/block/loop.ko".into(),
                info(
                    "loop",
                    &[],
                    &[
                        "devname:loop-control",
                        "char-major-10-237",
                        "block-major-7-*",
                    ],
                ),
            ),
            (
                "kernel/lib/libcrc32c.ko".into(),
                ModInfo {
                    softdeps: vec!["pre: crc32c".into()],
                    ..info("libcrc32c", &[], &[])
                },
            ),
        ])
    }

    #[test]
    fn dep_lines_list_the_deepest_dependency_last() {
        let text = db().modules_dep(None);
        assert!(
            text.contains(
                "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        ));
        assert!(text.contains("kernel/net/llc/llc.ko:\n"));
        assert_eq!(text.lines().count(), 8);
    }

    #[test]
    fn closure_follows_dependencies_and_either_spelling() {
        let text = db().modules_dep(None);
        let closure = module_closure(&text, &["virtio-rng".into(), "bridge".into()]).unwrap();
        assert_eq!(
            closure,
            [
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/802/stp.ko",
                "kernel/net/bridge/bridge.ko",
                "kernel/net/llc/llc.ko",
            ]
        );
        let only_llc = module_closure(&text, &["llc".into()]).unwrap();
        assert_eq!(only_llc, ["kernel/net/llc/llc.ko"]);
    }

    #[test]
    fn closure_names_unknown_modules() {
        let text = db().modules_dep(None);
        let err =
            module_closure(&text, &["bridge".into(), "nosuch".into(), "nvme".into()]).unwrap_err();
        assert!(matches!(&err, DepmodError::UnknownModules(names) if names == &["nosuch", "nvme"]));
        assert!(err.to_string().contains("nosuch, nvme"));
        assert!(matches!(
            module_closure("kernel/a.ko: x\nbroken line\n", &[]),
            Err(DepmodError::BadDepLine { line: 2 })
        ));
    }

    #[test]
    fn generated_files_cover_only_the_subset() {
        let db = db();
        let paths: BTreeSet<String> = module_closure(
            &db.modules_dep(None),
            &["bridge".into(), "loop".into(), "libcrc32c".into()],
        )
        .unwrap()
        .into_iter()
        .collect();
        let dep = db.modules_dep(Some(&paths));
        assert_eq!(dep.lines().count(), 5, "{dep}");
        assert!(!dep.contains("virtio"));
        let alias = db.modules_alias(&paths);
        assert!(alias.contains("alias rtnl-link-bridge bridge\n"));
        assert!(alias.contains("alias char-major-10-237 loop\n"));
        assert!(!alias.contains("virtio"));
        assert_eq!(
            db.modules_softdep(&paths).lines().nth(1),
            Some("softdep libcrc32c pre: crc32c")
        );
        assert_eq!(
            db.modules_devname(&paths).lines().nth(1),
            Some("loop loop-control c10:237")
        );
        let order =
            "kernel/net/llc/llc.ko\nkernel/drivers/virtio/virtio.ko\nkernel/net/bridge/bridge.ko\n";
        assert_eq!(
            filter_lines(order, &paths),
            "kernel/net/llc/llc.ko\nkernel/net/bridge/bridge.ko\n"
        );
    }

    #[test]
    fn names_are_canonical() {
        assert_eq!(module_name("kernel/x/virtio-rng.ko.xz"), "virtio_rng");
        assert_eq!(
            module_name("kernel/crypto/crc32c_generic.ko"),
            "crc32c_generic"
        );
        assert!(
            builtin_names("kernel/crypto/crc32c_generic.ko\nkernel/a/b-c.ko\n").contains("b_c")
        );
        assert_eq!(
            db().path("virtio-rng"),
            Some("kernel/drivers/char/hw_random/virtio-rng.ko")
        );
    }
}
