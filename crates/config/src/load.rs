//! Loading: YAML sources → templates expanded → typed per source → merged in order → validated.
//!
//! Merge rules (LinuxKit's `AppendConfig`): later non-empty kernel scalars win (`tar` and
//! `ucode` when present at all), and `init`, `onboot`, `onshutdown`, `services`, `files` and
//! `volumes` append (so do the formats of LinuxKit 2017's `outputs`, each kept once).
//! Validation then checks what needs the whole merged config: unique service and volume
//! names, uid/gid names, volume binds, and keel's `dependsOn` graph.

use crate::error::{Error, Loc, Spanned};
use crate::schema::{self, Config, Id, ImageFields, ImageSpec, Section};
use crate::values;
use crate::yaml::{self, Kind};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One YAML input.
#[derive(Debug, Clone)]
pub struct Source {
    /// A path, or `-` for stdin; used in error positions.
    pub name: String,
    pub text: String,
    /// The directory `@pkg:` templates and relative `files: source:` paths start from; `None`
    /// (stdin) rejects `@pkg:`.
    pub dir: Option<PathBuf>,
}

impl Source {
    /// Reads a file; `dir` is its parent directory.
    pub fn from_file(path: &Path) -> std::io::Result<Source> {
        let text = std::fs::read_to_string(path)?;
        let dir = path.parent().map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        });
        Ok(Source {
            name: path.display().to_string(),
            text,
            dir,
        })
    }
}

/// Resolves `@pkg:<dir>` to an image reference (for example by computing the package's tag).
pub type PkgResolver<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// Parses, merges and validates `sources` in order.
pub fn load(sources: &[Source], pkg: PkgResolver<'_>) -> Result<Config, Error> {
    let mut config = Config::default();
    for s in sources {
        let c = parse_source(s, pkg)?;
        config.append(c);
    }
    config.validate()?;
    Ok(config)
}

/// Parses one source without cross-source validation.
fn parse_source(s: &Source, pkg: PkgResolver<'_>) -> Result<Config, Error> {
    let file: Arc<str> = Arc::from(s.name.as_str());
    let Some(mut root) = yaml::parse(&file, &s.text)? else {
        return Ok(Config::default());
    };
    if matches!(root.kind, Kind::Null) {
        return Ok(Config::default());
    }
    root.visit_scalars(&mut |text, loc| expand_template(text, loc, s.dir.as_deref(), pkg))?;
    schema::config(&root, s.dir.as_ref())
}

fn expand_template(
    text: &mut String,
    loc: &Loc,
    dir: Option<&Path>,
    pkg: PkgResolver<'_>,
) -> Result<(), Error> {
    let Some(rel) = text.strip_prefix("@pkg:") else {
        return Ok(());
    };
    let Some(dir) = dir else {
        return Err(loc.err(format!(
            "cannot resolve {text:?}: @pkg: templates need a YAML file on disk, not stdin"
        )));
    };
    let path = dir.join(rel);
    match pkg(&path) {
        Ok(r) => {
            *text = r;
            Ok(())
        }
        Err(why) => Err(loc.err(format!(
            "cannot resolve {text:?} ({}): {why}",
            path.display()
        ))),
    }
}

/// Parses an image's `org.mobyproject.config` label (JSON, or any YAML). Errors name the image.
///
/// The label comes from whatever image was pulled, so it gets the same bounds as a YAML file
/// (nesting depth, nodes and text with aliases expanded): a hostile label fails fast.
pub fn parse_label(text: &str, image: &str) -> Result<ImageFields, Error> {
    let file: Arc<str> = Arc::from(format!("{image} label").as_str());
    let Some(root) = yaml::parse(&file, text)? else {
        return Ok(ImageFields::default());
    };
    let (_, _, fields) = schema::image_map(&root, "org.mobyproject.config label", true)?;
    Ok(fields)
}

/// Container names → allocated ids.
pub type IdMap = BTreeMap<String, u32>;

impl Config {
    /// Appends `other` (a later source) to this config.
    pub fn append(&mut self, other: Config) {
        // A later `health:` replaces an earlier one as a whole.
        if other.health.is_some() {
            self.health = other.health;
        }
        // A later `console:` replaces an earlier one as a whole.
        if other.console.is_some() {
            self.console = other.console;
        }
        if let Some(k) = other.kernel {
            let mine = self.kernel.get_or_insert_with(Default::default);
            let non_empty = |v: &Option<Spanned<String>>| v.as_ref().is_some_and(|s| !s.is_empty());
            if non_empty(&k.image) {
                mine.image = k.image;
            }
            if non_empty(&k.cmdline) {
                mine.cmdline = k.cmdline;
            }
            if non_empty(&k.binary) {
                mine.binary = k.binary;
            }
            if k.tar.is_some() {
                mine.tar = k.tar;
            }
            if k.ucode.is_some() {
                mine.ucode = k.ucode;
            }
        }
        self.init.extend(other.init);
        self.onboot.extend(other.onboot);
        self.onshutdown.extend(other.onshutdown);
        self.services.extend(other.services);
        self.files.extend(other.files);
        self.volumes.extend(other.volumes);
        schema::append_outputs(&mut self.outputs, other.outputs);
    }

    /// Every image spec with its section and index in that section.
    pub fn containers(&self) -> impl Iterator<Item = (Section, usize, &ImageSpec)> {
        fn tag(
            s: Section,
            list: &[ImageSpec],
        ) -> impl Iterator<Item = (Section, usize, &ImageSpec)> {
            list.iter().enumerate().map(move |(i, c)| (s, i, c))
        }
        tag(Section::Onboot, &self.onboot)
            .chain(tag(Section::Onshutdown, &self.onshutdown))
            .chain(tag(Section::Services, &self.services))
    }

    /// uid/gid allocation: each onboot, then onshutdown, then service container name gets the
    /// next id from 100 (a repeated name keeps its first id).
    pub fn ids(&self) -> IdMap {
        let mut ids = IdMap::new();
        let mut next = 100;
        for (_, _, c) in self.containers() {
            if !ids.contains_key(c.name.as_str()) {
                ids.insert(c.name.value.clone(), next);
                next += 1;
            }
        }
        ids
    }

    /// The merged configuration as YAML (for `keel validate` and `files: metadata: yaml`).
    pub fn to_yaml(&self) -> Result<String, Error> {
        // JSON text keeps struct field order (name, image, ...); JSON is YAML, so the
        // positioned parser reads it back in that order. The parser's limits apply: a merged
        // config past them is an error, not an empty document.
        let file: Arc<str> = Arc::from("<config>");
        let json = serde_json::to_string(self).map_err(|source| Error::Json {
            what: "config YAML",
            source,
        })?;
        Ok(match yaml::parse(&file, &json)? {
            Some(node) => yaml::emit(&node),
            None => "{}\n".into(),
        })
    }

    /// The merged configuration as pretty JSON (`files: metadata: json`).
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            what: "config JSON",
            source,
        })
    }

    /// Checks what needs the whole merged config.
    pub fn validate(&self) -> Result<(), Error> {
        let mut seen: HashMap<&str, &Loc> = HashMap::new();
        for s in &self.services {
            if let Some(first) = seen.insert(s.name.as_str(), &s.name.loc) {
                return Err(s.name.loc.err(format!(
                    "duplicate service name {:?}; first defined at {first}",
                    s.name.value
                )));
            }
        }
        let mut vols: HashMap<&str, &Loc> = HashMap::new();
        for v in &self.volumes {
            if let Some(first) = vols.insert(v.name.as_str(), &v.name.loc) {
                return Err(v.name.loc.err(format!(
                    "duplicate volume name {:?}; first defined at {first}",
                    v.name.value
                )));
            }
        }
        let ids = self.ids();
        for (section, _, c) in self.containers() {
            let f = &c.fields;
            for id in [&f.uid, &f.gid].into_iter().flatten() {
                resolve_id(id, &ids)?;
            }
            for id in f.additional_gids.iter().flat_map(|l| l.iter()) {
                resolve_id(id, &ids)?;
            }
            for b in f.binds.iter().chain(&f.binds_add).flat_map(|l| l.iter()) {
                check_volume_bind_in(b, &self.volumes)?;
            }
            check_section_fields(section, c, &self.services)?;
        }
        for file in &self.files {
            for id in [&file.uid, &file.gid].into_iter().flatten() {
                resolve_id(id, &ids)?;
            }
        }
        if let Some(names) = self.health.as_ref().and_then(|h| h.services.as_ref()) {
            let services: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            for name in names.iter() {
                if !services.contains(&name.as_str()) {
                    return Err(name.loc.err(format!(
                        "health.services names {:?}, which is not a service{}",
                        name.value,
                        crate::error::hint(&name.value, &services)
                    )));
                }
            }
        }
        check_cycles(&self.services)
    }
}

/// The numeric id of a uid/gid value (a name resolves through the allocation map).
pub fn resolve_id(id: &Spanned<Id>, ids: &IdMap) -> Result<u32, Error> {
    match &id.value {
        Id::Num(n) => Ok(*n),
        Id::Name(n) if n.is_empty() || n == "root" => Ok(0),
        Id::Name(n) => ids.get(n).copied().ok_or_else(|| {
            let names: Vec<&str> = ids.keys().map(String::as_str).collect();
            id.loc.err(format!(
                "unknown uid/gid name {n:?}{}; expected a number, \"root\" or a container name",
                crate::error::hint(n, &names)
            ))
        }),
    }
}

/// Parses a bind; a source that is a volume name must name a declared volume (a read-only one
/// bound `ro`) and is rewritten to the volume's merged directory.
pub(crate) fn check_volume_bind_in(
    b: &Spanned<String>,
    volumes: &[schema::Volume],
) -> Result<values::Bind, Error> {
    let mut bind = values::parse_bind(b)?;
    if !bind.is_volume() {
        return Ok(bind);
    }
    let Some(v) = volumes.iter().find(|v| v.name.as_str() == bind.source) else {
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        return Err(b.loc.err(format!(
            "bind source {:?} is neither an absolute path nor a declared volume{}",
            bind.source,
            crate::error::hint(&bind.source, &names)
        )));
    };
    if v.is_readonly() && !bind.options.iter().any(|o| o == "ro") {
        return Err(b.loc.err(format!(
            "volume {:?} is read-only; bind it with the \"ro\" option ({}:{}:ro)",
            bind.source, bind.source, bind.destination
        )));
    }
    bind.source = format!(
        "/{}/{}/{}/merged",
        keel_bundle::CONTAINERS_DIR,
        keel_bundle::VOLUMES,
        bind.source
    );
    Ok(bind)
}

fn check_section_fields(
    section: Section,
    c: &ImageSpec,
    services: &[ImageSpec],
) -> Result<(), Error> {
    let f = &c.fields;
    if section != Section::Services {
        let only = |loc: &Loc, key: &str| {
            Err(loc.err(format!(
                "{key} applies only to services, not to {} containers",
                section.as_str()
            )))
        };
        if let Some(r) = &f.restart {
            return only(&r.loc, "restart");
        }
        if let Some(d) = &f.depends_on {
            return only(&d.loc, "dependsOn");
        }
        if let Some(r) = &f.readiness {
            return only(&r.loc, "readiness");
        }
    } else if let Some(t) = &f.timeout {
        return Err(t.loc.err("timeout applies only to onboot and onshutdown containers; use stopGracePeriod for services"));
    }
    for d in f.depends_on.iter().flat_map(|l| l.iter()) {
        if d.as_str() == c.name.as_str() {
            return Err(d
                .loc
                .err(format!("service {:?} depends on itself", d.value)));
        }
        if !services.iter().any(|s| s.name.as_str() == d.as_str()) {
            let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            return Err(d.loc.err(format!(
                "dependsOn names unknown service {:?}{}; expected one of: {}",
                d.value,
                crate::error::hint(d, &names),
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// Rejects dependency cycles, naming the cycle.
fn check_cycles(services: &[ImageSpec]) -> Result<(), Error> {
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let deps = |i: usize| -> Vec<usize> {
        services[i]
            .fields
            .depends_on
            .iter()
            .flat_map(|l| l.iter())
            .filter_map(|d| index.get(d.as_str()).copied())
            .collect()
    };
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; services.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        state: &mut [u8],
        stack: &mut Vec<usize>,
        deps: &dyn Fn(usize) -> Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        stack.push(i);
        for d in deps(i) {
            if state[d] == 1 {
                let start = stack.iter().position(|&s| s == d).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(d);
                return Some(cycle);
            }
            if state[d] == 0
                && let Some(c) = visit(d, state, stack, deps)
            {
                return Some(c);
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    for i in 0..services.len() {
        if state[i] == 0
            && let Some(cycle) = visit(i, &mut state, &mut stack, &deps)
        {
            let names: Vec<&str> = cycle.iter().map(|&c| services[c].name.as_str()).collect();
            let first = &services[cycle[0]];
            let loc = first
                .fields
                .depends_on
                .as_ref()
                .map(|d| &d.loc)
                .unwrap_or(&first.loc);
            return Err(loc.err(format!("dependency cycle: {}", names.join(" -> "))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_pkg(_: &Path) -> Result<String, String> {
        Err("no packages here".into())
    }

    fn src(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
            dir: Some(PathBuf::from("/cfg")),
        }
    }

    fn ok(text: &str) -> Config {
        load(&[src("t.yml", text)], &no_pkg).unwrap()
    }

    fn err(text: &str) -> String {
        load(&[src("t.yml", text)], &no_pkg)
            .unwrap_err()
            .to_string()
    }

    const HEAD: &str = "onboot:\n  - name: a\n    image: alpine\n";

    #[test]
    fn syntax_error() {
        assert_eq!(
            err("onboot: [\n"),
            "t.yml:2:1: invalid YAML: while parsing a node, did not find expected node content"
        );
    }

    #[test]
    fn unknown_keys() {
        let e = err("onboot:\n  - name: a\n    imagee: alpine\n");
        assert!(e.starts_with("t.yml:3:5: unknown key \"imagee\" in onboot entry (did you mean image?); expected one of: name, image, capabilities, "), "{e}");
        assert!(err("kernal: {}\n").starts_with(
            "t.yml:1:1: unknown key \"kernal\" in the top level (did you mean kernel?)"
        ));
        assert!(
            err("kernel:\n  cmdlin: x\n")
                .starts_with("t.yml:2:3: unknown key \"cmdlin\" in kernel")
        );
        let e = err(&format!(
            "{HEAD}    resources:\n      memory:\n        limt: 5\n"
        ));
        assert!(
            e.starts_with("t.yml:6:9: unknown key \"limt\" in memory (did you mean limit?)"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            err(&format!("{HEAD}    readonly: yes please\n")),
            "t.yml:4:15: expected true or false, found \"yes please\""
        );
        assert_eq!(
            err(&format!("{HEAD}    capabilities: CAP_KILL\n")),
            "t.yml:4:19: expected a list for capabilities (a list of strings), found \"CAP_KILL\""
        );
        assert_eq!(
            err(&format!("{HEAD}    oomScoreAdj: \"5\"\n")),
            "t.yml:4:18: expected an integer, found the string \"5\""
        );
        assert_eq!(
            err(&format!("{HEAD}    oomScoreAdj: 5000\n")),
            "t.yml:4:18: oomScoreAdj 5000 is out of range -1000..1000"
        );
    }

    #[test]
    fn bad_capability() {
        let e = err(
            "onboot:\n  - name: a\n    image: alpine\n    capabilities:\n      - CAP_SYS_ADMN\n",
        );
        assert_eq!(
            e,
            "t.yml:5:9: unknown capability \"CAP_SYS_ADMN\" (did you mean CAP_SYS_ADMIN?); expected CAP_* names, \"all\" or \"none\""
        );
    }

    #[test]
    fn bad_bind_tmpfs_rlimit_mode() {
        assert_eq!(
            err(&format!("{HEAD}    binds: [/a]\n")),
            "t.yml:4:13: invalid bind \"/a\": missing ':'; expected SOURCE:DESTINATION[:OPTION,...] (SOURCE a path or a volume name)"
        );
        assert_eq!(
            err(&format!("{HEAD}    tmpfs: [\"/a:b:c\"]\n")),
            "t.yml:4:13: invalid tmpfs \"/a:b:c\": too many ':'; expected DESTINATION[:OPTION,...]"
        );
        assert!(
            err(&format!("{HEAD}    rlimits: [\"nofile,1\"]\n"))
                .starts_with("t.yml:4:15: invalid rlimit \"nofile,1\"; expected NAME,SOFT,HARD")
        );
        assert_eq!(
            err("files:\n  - path: x\n    contents: y\n    mode: \"0999\"\n"),
            "t.yml:4:11: invalid mode \"0999\"; expected an octal string such as \"0644\""
        );
        assert_eq!(
            err(&format!(
                "{HEAD}    devices:\n      - {{path: /dev/x, type: c, major: 1, minor: 2, mode: rw}}\n"
            )),
            "t.yml:5:59: invalid mode \"rw\"; expected an octal string such as \"0644\""
        );
    }

    #[test]
    fn bad_volume_name_and_binds() {
        assert_eq!(
            err("volumes:\n  - name: My_Vol\n"),
            "t.yml:2:11: invalid volume name \"My_Vol\"; expected lower-case letters, digits, '_' and '-'"
        );
        assert_eq!(
            err("volumes:\n  - name: v\n  - name: v\n"),
            "t.yml:3:11: duplicate volume name \"v\"; first defined at t.yml:2:11"
        );
        let ro = "volumes:\n  - name: data\n    readonly: true\n";
        assert_eq!(
            err(&format!("{ro}{HEAD}    binds: [\"data:/data\"]\n")),
            "t.yml:7:13: volume \"data\" is read-only; bind it with the \"ro\" option (data:/data:ro)"
        );
        assert!(
            ok(&format!("{ro}{HEAD}    binds: [\"data:/data:ro\"]\n")).volumes[0].is_readonly()
        );
        assert!(
            err(&format!("{ro}{HEAD}    binds: [\"dta:/data\"]\n"))
                .starts_with("t.yml:7:13: bind source \"dta\" is neither an absolute path nor a declared volume (did you mean data?)")
        );
    }

    #[test]
    fn duplicate_services_across_files() {
        let a = src("a.yml", "services:\n  - name: getty\n    image: g\n");
        let b = src(
            "b.yml",
            "services:\n  - name: x\n    image: x\n  - name: getty\n    image: g2\n",
        );
        let e = load(&[a, b], &no_pkg).unwrap_err().to_string();
        assert_eq!(
            e,
            "b.yml:4:11: duplicate service name \"getty\"; first defined at a.yml:2:11"
        );
    }

    #[test]
    fn unknown_uid_name() {
        assert_eq!(
            err(&format!("{HEAD}    uid: b\n")),
            "t.yml:4:10: unknown uid/gid name \"b\"; expected a number, \"root\" or a container name"
        );
        assert_eq!(
            err("files:\n  - path: x\n    contents: y\n    gid: nobody\n"),
            "t.yml:4:10: unknown uid/gid name \"nobody\"; expected a number, \"root\" or a container name"
        );
    }

    #[test]
    fn file_content_kinds() {
        assert_eq!(
            err("files:\n  - path: x\n    contents: y\n    source: /z\n"),
            "t.yml:2:5: file \"x\" sets both contents and source; set only one of: directory, symlink, contents, source, metadata"
        );
        assert!(err("files:\n  - path: x\n").starts_with("t.yml:2:5: file \"x\" has no content"));
        assert_eq!(
            err("files:\n  - path: x\n    metadata: toml\n"),
            "t.yml:3:15: invalid metadata \"toml\"; expected yaml or json"
        );
    }

    #[test]
    fn extension_fields_are_checked() {
        assert_eq!(
            err(&format!("{HEAD}    restart: never\n")),
            "t.yml:4:14: restart applies only to services, not to onboot containers"
        );
        let svc = "services:\n  - name: a\n    image: x\n    dependsOn: [b]\n  - name: b\n    image: x\n    dependsOn: [c]\n  - name: c\n    image: x\n    dependsOn: [a]\n";
        assert_eq!(err(svc), "t.yml:4:16: dependency cycle: a -> b -> c -> a");
        assert_eq!(
            err(
                "services:\n  - name: a\n    image: x\n    dependsOn: [bb]\n  - name: b\n    image: x\n"
            ),
            "t.yml:4:17: dependsOn names unknown service \"bb\" (did you mean b?); expected one of: a, b"
        );
        assert!(
            err("services:\n  - name: a\n    image: x\n    timeout: 5s\n")
                .starts_with("t.yml:4:14: timeout applies only to onboot")
        );
        assert_eq!(
            err(&format!("{HEAD}    timeout: soon\n")),
            "t.yml:4:14: invalid duration \"soon\"; expected integer seconds or a duration such as 500ms, 30s, 2m, 1h"
        );
        assert!(
            err("services:\n  - name: a\n    image: x\n    readiness: {udp: 5}\n")
                .starts_with("t.yml:4:17: unknown key \"udp\" in readiness")
        );
    }

    #[test]
    fn missing_required_fields() {
        assert_eq!(
            err("onboot:\n  - image: x\n"),
            "t.yml:2:5: onboot entry is missing \"name\""
        );
        assert_eq!(
            err("services:\n  - name: s\n"),
            "t.yml:2:5: service \"s\" is missing \"image\""
        );
        assert_eq!(
            err("onboot:\n  - name: a/b\n    image: x\n")
                .split(';')
                .next()
                .unwrap(),
            "t.yml:2:11: invalid name \"a/b\""
        );
    }

    #[test]
    fn merge_rules() {
        let a = src(
            "a.yml",
            "kernel:\n  image: k1\n  cmdline: c1\ninit: [i1]\nservices:\n  - name: s1\n    image: x\n",
        );
        let b = src(
            "b.yml",
            "kernel:\n  image: k2\n  cmdline: \"\"\n  tar: none\ninit: [i2]\nservices:\n  - name: s2\n    image: x\n",
        );
        let c = load(&[a, b], &no_pkg).unwrap();
        let k = c.kernel.as_ref().unwrap();
        assert_eq!(k.image.as_deref().map(String::as_str), Some("k2"));
        assert_eq!(k.cmdline(), "c1");
        assert_eq!(k.tar(), None);
        assert_eq!(k.binary(), "kernel");
        assert_eq!(
            c.init.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
            ["i1", "i2"]
        );
        assert_eq!(c.services.len(), 2);
    }

    #[test]
    fn id_allocation_order() {
        let c = ok(
            "services:\n  - {name: s, image: x}\nonshutdown:\n  - {name: d, image: x}\nonboot:\n  - {name: a, image: x}\n  - {name: b, image: x}\n",
        );
        let ids = c.ids();
        assert_eq!(
            (ids["a"], ids["b"], ids["d"], ids["s"]),
            (100, 101, 102, 103)
        );
    }

    #[test]
    fn pkg_templates() {
        let resolve = |p: &Path| -> Result<String, String> {
            Ok(format!(
                "pkg/{}:tag",
                p.file_name().unwrap().to_string_lossy()
            ))
        };
        let c = load(
            &[src(
                "t.yml",
                "onboot:\n  - name: a\n    image: \"@pkg:../pkg/dhcpcd\"\n",
            )],
            &resolve,
        )
        .unwrap();
        assert_eq!(c.onboot[0].image.as_str(), "pkg/dhcpcd:tag");
        let stdin = Source {
            name: "-".into(),
            text: "init: [\"@pkg:x\"]\n".into(),
            dir: None,
        };
        let e = load(&[stdin], &resolve).unwrap_err().to_string();
        assert_eq!(
            e,
            "-:1:8: cannot resolve \"@pkg:x\": @pkg: templates need a YAML file on disk, not stdin"
        );
        let e = err("init: [\"@pkg:x\"]\n");
        assert_eq!(
            e,
            "t.yml:1:8: cannot resolve \"@pkg:x\" (/cfg/x): no packages here"
        );
    }

    #[test]
    fn trust_and_empty_sections_are_accepted() {
        let c = ok("trust:\n  org: [linuxkit]\nonboot:\nservices: []\n");
        assert!(c.onboot.is_empty());
        assert!(
            err("trust:\n  orgs: []\n").starts_with("t.yml:2:3: unknown key \"orgs\" in trust")
        );
    }

    #[test]
    fn label_errors_name_the_image() {
        let e = parse_label(r#"{"name": "x"}"#, "linuxkit/getty:v1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "linuxkit/getty:v1 label:1:2: name cannot be set in the org.mobyproject.config label"
        );
        let e = parse_label(r#"{"capabilities": ["CAP_NOPE"]}"#, "img")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("img label:1:19: unknown capability \"CAP_NOPE\""),
            "{e}"
        );
        let f = parse_label(
            r#"{"pid": "host", "readonly": true, "binds": ["/a:/b"]}"#,
            "img",
        )
        .unwrap();
        assert_eq!(f.pid.as_deref().map(String::as_str), Some("host"));
        assert!(f.readonly.as_ref().is_some_and(|r| **r));
    }

    #[test]
    fn hostile_labels_fail_fast_with_a_position() {
        // A YAML label of nine anchors with nine aliases each (9^9 nodes expanded).
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let aliases = vec![format!("*a{}", i - 1); 9].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{aliases}]\n"));
        }
        let deep_json = format!("{}1{}", r#"{"a": "#.repeat(10_000), "}".repeat(10_000));
        let deep_binds = format!("binds:\n{}x\n", "  - ".repeat(10_000));
        for (text, at, why) in [
            (bomb.as_str(), "evil:1 label:6:", "document too large"),
            // The scanner's own limit on flow nesting (255) fires first: it looks ahead.
            (
                &deep_json,
                "evil:1 label:1:",
                "invalid YAML: recursion limit exceeded",
            ),
            (
                &deep_binds,
                "evil:1 label:2:",
                "nesting deeper than 128 levels",
            ),
        ] {
            let start = std::time::Instant::now();
            let e = parse_label(text, "evil:1").unwrap_err().to_string();
            assert!(e.starts_with(at) && e.contains(why), "{e}");
            assert!(start.elapsed() < std::time::Duration::from_secs(2));
        }
        // A label with a few aliases is still read.
        let f = parse_label("binds: &b [\"/a:/a\"]\nbinds.add: *b\n", "img").unwrap();
        assert_eq!(f.binds.as_ref().map(|b| b.len()), Some(1));
        assert_eq!(f.binds_add, f.binds);
    }

    #[test]
    fn yaml_round_trip_is_stable() {
        let text = "kernel:\n  image: k\n  cmdline: console=ttyS0\nonboot:\n  - name: a\n    image: alpine\n    capabilities.add: [CAP_NET_ADMIN]\n    uid: 0\n    gid: a\n    mounts:\n      - type: proc\nfiles:\n  - path: etc/x\n    contents: |\n      hello\n    mode: \"0644\"\n";
        let c = ok(text);
        let y = c.to_yaml().unwrap();
        let again = ok(&y);
        assert_eq!(again, c);
        assert_eq!(again.to_yaml().unwrap(), y);
        assert!(
            y.contains("capabilities.add:\n      - CAP_NET_ADMIN\n"),
            "{y}"
        );
        assert!(c.to_json().unwrap().contains("\"mode\": \"0644\""));
    }

    #[test]
    fn console_settings_parse_and_merge() {
        use keel_bundle::{ConsoleSettings, ControlGrant};
        let c = ok("console: inspect\n");
        assert_eq!(
            c.console.unwrap().value,
            ConsoleSettings {
                prompt: ControlGrant::Inspect,
                raw: false
            }
        );
        let c = ok("console:\n  prompt: admin\n  raw: true\n");
        let settings = c.console.clone().unwrap().value;
        assert_eq!((settings.prompt, settings.raw), (ControlGrant::Admin, true));
        // What `keel validate` prints reads back the same.
        assert_eq!(ok(&c.to_yaml().unwrap()).console.unwrap().value, settings);
        assert_eq!(
            ok("console: off\n").console.unwrap().value.prompt,
            ControlGrant::None
        );
        let e = err("console: root\n");
        assert!(
            e.starts_with("t.yml:1:10: invalid console prompt \"root\""),
            "{e}"
        );
        let e = err("console:\n  promt: admin\n");
        assert!(e.contains("unknown key \"promt\" in console"), "{e}");
        assert!(err("console:\n  raw: maybe\n").contains("true or false"));
    }

    #[test]
    fn health_parses_merges_and_prints_back() {
        use std::time::Duration;
        let c = ok("health:\n  timeout: 2m\n  stable: 5\n");
        let h = c.health.clone().unwrap().value.settings();
        assert_eq!(h.timeout, Some(Duration::from_secs(120)));
        assert_eq!(h.stable, Some(Duration::from_secs(5)));
        // What `keel validate` prints reads back the same (durations as written).
        let y = c.to_yaml().unwrap();
        assert!(y.contains("timeout: 2m"), "{y}");
        assert_eq!(ok(&y).health.unwrap().value.settings(), h);
        let only = ok("health:\n  stable: 500ms\n")
            .health
            .unwrap()
            .value
            .settings();
        assert_eq!(
            (only.timeout, only.stable),
            (None, Some(Duration::from_millis(500)))
        );
        let e = err("health:\n  stabel: 5\n");
        assert!(e.contains("unknown key \"stabel\" in health"), "{e}");
        let e = err("health:\n  timeout: forever\n");
        assert!(e.starts_with("t.yml:2:12:"), "{e}");
        assert!(err("health:\n  timeout: 25h\n").starts_with("t.yml:2:12:"));
        assert!(err("health: 5\n").starts_with("t.yml:1:9:"));
    }

    #[test]
    fn health_services_must_be_services() {
        let services =
            "services:\n  - name: web\n    image: nginx\n  - name: db\n    image: redis\n";
        let c = ok(&format!("{services}health:\n  services: [db]\n"));
        let h = c.health.clone().unwrap().value.settings();
        assert_eq!(h.services, Some(vec!["db".to_owned()]));
        assert_eq!(h.timeout, None);
        let y = c.to_yaml().unwrap();
        assert_eq!(ok(&y).health.unwrap().value.settings(), h, "{y}");
        let e = err(&format!("{services}health:\n  services: [db, wbe]\n"));
        assert!(
            e.starts_with("t.yml:7:18: health.services names \"wbe\", which is not a service")
                && e.contains("did you mean web"),
            "{e}"
        );
        // An onboot container is not a service: the assessment watches services only.
        let e = err(&format!("{HEAD}{services}health:\n  services: [a]\n"));
        assert!(e.contains("names \"a\", which is not a service"), "{e}");
        let e = err(&format!("{services}health:\n  services: []\n"));
        assert!(e.starts_with("t.yml:7:13: health.services is empty"), "{e}");
        assert!(err("health:\n  services: db\n").contains("a list of strings"));
    }
}
