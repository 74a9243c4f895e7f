//! Kernel module coldplug: match every device's `modalias` against `modules.alias`, load the
//! matching modules and their dependencies (`modules.dep`) with `finit_module`, plus the
//! modules named in `/etc/modules`. What modprobe + udev would do at boot, without either.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// How deep to walk `/sys/devices` (real trees are ~15 levels).
const MAX_DEPTH: usize = 48;

/// A module's file and its dependencies, by module name.
#[derive(Debug, Clone)]
struct DepEntry {
    path: PathBuf,
    deps: Vec<String>,
}

/// `modules.alias`, `modules.dep` and `modules.builtin` of one kernel.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Alias patterns by the part before the first `:` (`pci`, `virtio`, ...); patterns whose
    /// prefix has a wildcard sit under "".
    aliases: HashMap<String, Vec<(String, String)>>,
    deps: HashMap<String, DepEntry>,
    builtin: HashSet<String>,
}

/// The canonical module name of a path or name: base name, no `.ko*` suffix, `-` as `_`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.find(".ko").map_or(base, |i| &base[..i]);
    base.replace('-', "_")
}

fn bus_of(s: &str) -> &str {
    match s.find(':') {
        Some(i) if !s[..i].contains(['*', '?', '[']) => &s[..i],
        _ => "",
    }
}

impl ModuleIndex {
    /// Parses the three files' contents.
    pub fn parse(alias: &str, dep: &str, builtin: &str) -> Self {
        let mut index = ModuleIndex::default();
        for line in alias.lines() {
            let mut words = line.split_ascii_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index
                    .aliases
                    .entry(bus_of(pattern).to_owned())
                    .or_default()
                    .push((pattern.to_owned(), module_name(module)));
            }
        }
        for line in dep.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let entry = DepEntry {
                path: PathBuf::from(module.trim()),
                deps: deps.split_ascii_whitespace().map(module_name).collect(),
            };
            index.deps.insert(module_name(module.trim()), entry);
        }
        index.builtin = builtin.lines().map(|l| module_name(l.trim())).collect();
        index
    }

    /// Reads the index of the modules in `dir` (`/lib/modules/<release>`).
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let alias = std::fs::read_to_string(dir.join("modules.alias"))?;
        let dep = std::fs::read_to_string(dir.join("modules.dep"))?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        Ok(Self::parse(&alias, &dep, &builtin))
    }

    /// The modules whose alias patterns match `modalias`.
    pub fn matches(&self, modalias: &str) -> Vec<&str> {
        let mut found: Vec<&str> = [bus_of(modalias), ""]
            .iter()
            .filter_map(|bus| self.aliases.get(*bus))
            .flatten()
            .filter(|(pattern, _)| glob_match(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, module)| module.as_str())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Whether `module` is a module of this kernel (loadable or built in).
    pub fn knows(&self, module: &str) -> bool {
        let name = module_name(module);
        self.deps.contains_key(&name) || self.builtin.contains(&name)
    }

    /// Files to load for `module`, dependencies first. Empty for built-in or unknown modules.
    pub fn load_order(&self, module: &str) -> Vec<&Path> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        self.visit(&module_name(module), &mut seen, &mut order);
        order
    }

    fn visit<'a>(&'a self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<&'a Path>) {
        if !seen.insert(name.to_owned()) || self.builtin.contains(name) {
            return;
        }
        let Some(entry) = self.deps.get(name) else {
            return;
        };
        // modules.dep lists the deepest dependency last.
        for dep in entry.deps.iter().rev() {
            self.visit(dep, seen, order);
        }
        order.push(&entry.path);
    }
}

/// Shell-style pattern match (`*`, `?`, `[...]` with ranges and `!`/`^`), as `fnmatch(3)`
/// without flags, which is what modprobe uses for aliases.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression starting at `pattern[open]`. Returns whether it
/// matched and the index after the `]`, or None when the bracket is not closed.
fn class(pattern: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &lo = pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// Every `modalias` under `root` (`/sys/devices`), without following symlinks.
pub fn device_aliases(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ty) = e.file_type() else { continue };
            if ty.is_dir() && depth < MAX_DEPTH {
                stack.push((e.path(), depth + 1));
            } else if ty.is_file()
                && e.file_name() == "modalias"
                && let Ok(text) = std::fs::read_to_string(e.path())
            {
                let alias = text.trim();
                if !alias.is_empty() {
                    out.push(alias.to_owned());
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Loads modules once each, dependencies first.
pub struct Loader {
    dir: PathBuf,
    index: ModuleIndex,
    done: HashSet<PathBuf>,
    /// Modules loaded by this loader.
    pub loaded: usize,
    /// Modules the kernel refused (logged at debug level: many drivers refuse absent hardware).
    pub failed: usize,
}

impl Loader {
    pub fn new(dir: PathBuf, index: ModuleIndex) -> Self {
        Loader {
            dir,
            index,
            done: HashSet::new(),
            loaded: 0,
            failed: 0,
        }
    }

    /// Loads `module` and its dependencies. Returns whether anything new was loaded.
    pub fn load(&mut self, module: &str) -> bool {
        let order: Vec<PathBuf> = self
            .index
            .load_order(module)
            .into_iter()
            .map(Path::to_owned)
            .collect();
        let mut any = false;
        for rel in order {
            if !self.done.insert(rel.clone()) {
                continue;
            }
            let path = self.dir.join(&rel);
            let result = File::open(&path)
                .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                .and_then(|f| crate::sys::load_module(&f));
            match result {
                Ok(()) => {
                    log::debug!("loaded {}", rel.display());
                    self.loaded += 1;
                    any = true;
                }
                Err(nix::Error::EEXIST) => {}
                Err(e) => {
                    log::debug!("cannot load {}: {e}", rel.display());
                    self.failed += 1;
                }
            }
        }
        any
    }

    /// Loads a module by name, or else every module whose alias matches `name` (what modprobe
    /// does). Returns whether `name` resolved to a known module or a built-in one.
    pub fn load_or_alias(&mut self, name: &str) -> bool {
        if self.index.knows(name) {
            self.load(name);
            return true;
        }
        let modules: Vec<String> = self
            .index
            .matches(name)
            .into_iter()
            .map(str::to_owned)
            .collect();
        for m in &modules {
            self.load(m);
        }
        !modules.is_empty()
    }

    /// Loads the modules matching the devices now present. Returns whether anything new was
    /// loaded (new devices may then have appeared).
    pub fn coldplug(&mut self, devices: &Path) -> bool {
        let mut any = false;
        for alias in device_aliases(devices) {
            let modules: Vec<String> = self
                .index
                .matches(&alias)
                .into_iter()
                .map(str::to_owned)
                .collect();
            for m in modules {
                any |= self.load(&m);
            }
        }
        any
    }
}

/// Module names in `/etc/modules` format: one per line, `#` comments, parameters ignored.
pub fn parse_etc_modules(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_ascii_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modprobe_names_resolve_to_modules_or_aliases() {
        let index = ModuleIndex::parse(ALIAS, DEP, "kernel/fs/ext4/ext4.ko\n");
        assert!(index.knows("overlay") && index.knows("virtio-pci") && index.knows("ext4"));
        assert!(!index.knows("fs-overlay"));
        assert_eq!(index.matches("fs-overlay"), ["overlay"]);
        assert_eq!(index.matches("net-pf-40"), ["vsock"]);
        assert!(index.matches("fs-nope").is_empty());
    }

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!m("pci:v00001AF4d*", "pci:v00008086d00001000"));
        assert!(m("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("x[0-9]y", "x5y") && !m("x[0-9]y", "xay"));
        assert!(m("x[!0-9]y", "xay") && !m("x[^0-9]y", "x1y"));
        assert!(m("x[]a]y", "x]y"));
        assert!(m("x[ab", "x[ab"), "an unclosed bracket is literal");
        assert!(m("*", "") && m("a**", "a") && !m("", "a"));
        assert!(m("acpi*:PNP0C0C:*", "acpi:PNP0C0C:"));
    }

    const DEP: &str = "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/net/failover.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/drivers/net/failover.ko
kernel/drivers/net/failover.ko:
kernel/drivers/acpi/button-x.ko:
kernel/fs/overlayfs/overlay.ko:
";
    const ALIAS: &str = "# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias fs-overlay overlay
alias net-pf-40 vsock
alias acpi*:PNP0C0C:* button_x
alias virtio:d00000002v* virtio_blk
";

    #[test]
    fn matches_and_orders_dependencies() {
        let idx = ModuleIndex::parse(ALIAS, DEP, "kernel/drivers/block/virtio_blk.ko\n");
        assert_eq!(
            idx.matches("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(idx.matches("acpi:PNP0C0C:"), ["button_x"]);
        assert!(
            idx.matches("pci:v00008086d00001234sv0sd0bc0sc0i0")
                .is_empty()
        );
        let order: Vec<_> = idx
            .load_order("virtio_pci")
            .iter()
            .map(|p| module_name(p.to_str().unwrap()))
            .collect();
        assert_eq!(order.last().map(String::as_str), Some("virtio_pci"));
        let pos = |m: &str| order.iter().position(|o| o == m).unwrap();
        assert!(pos("virtio") < pos("virtio_pci_modern_dev"));
        assert_eq!(order.len(), 4);
        let order = idx.load_order("virtio_net");
        assert_eq!(order.len(), 4);
        assert!(order[..2].contains(&Path::new("kernel/drivers/net/failover.ko")));
        assert!(idx.load_order("virtio_blk").is_empty(), "built in");
        assert_eq!(
            idx.load_order("button-x"),
            [Path::new("kernel/drivers/acpi/button-x.ko")]
        );
    }

    #[test]
    fn finds_modaliases_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("pci0000:00/0000:00:01.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v1\n").unwrap();
        std::fs::write(root.path().join("modalias"), "platform:x\n").unwrap();
        std::os::unix::fs::symlink(root.path(), dev.join("loop")).unwrap();
        assert_eq!(device_aliases(root.path()), ["pci:v1", "platform:x"]);
    }

    #[test]
    fn etc_modules() {
        assert_eq!(
            parse_etc_modules("# c\nvirtio_net\n  overlay opt=1 # x\n\n"),
            ["virtio_net", "overlay"]
        );
    }
}
