//! `keel kernel check`: a kernel's configuration, command line and sysctls against the Kernel
//! Self Protection Project's recommended settings, kept as data in `kernel/kspp.yml` and
//! interpreted by one function ([`check`]).

use crate::kconfig::{KernelConfig, parse_version};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The table shipped with keel (`kernel/kspp.yml`).
pub const TABLE: &str = include_str!("../../../kernel/kspp.yml");

/// Why the table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("invalid KSPP table")]
    Parse(#[source] Box<serde_saphyr::Error>),
    #[error("KSPP table row {name}: {reason}")]
    Row { name: String, reason: String },
}

/// What a row checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A `CONFIG_` option.
    Kconfig,
    /// A kernel command-line parameter.
    Cmdline,
    /// A sysctl.
    Sysctl,
}

impl Kind {
    fn parse(text: &str) -> Option<Kind> {
        match text {
            "kconfig" => Some(Kind::Kconfig),
            "cmdline" => Some(Kind::Cmdline),
            "sysctl" => Some(Kind::Sysctl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kconfig => "kconfig",
            Kind::Cmdline => "cmdline",
            Kind::Sysctl => "sysctl",
        }
    }
}

/// One recommended setting (see `kernel/kspp.yml` for the fields).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub kind: Kind,
    pub name: String,
    pub want: String,
    pub group: String,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub or: Vec<String>,
    pub reason: String,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    rows: Vec<Row>,
}

/// An alternative of a row's `or:` list: `kind:name=value`.
struct Setting<'a> {
    kind: Kind,
    name: &'a str,
    want: &'a str,
}

fn parse_setting(text: &str) -> Option<Setting<'_>> {
    let (kind, rest) = text.split_once(':')?;
    let (name, want) = rest.split_once('=')?;
    Some(Setting {
        kind: Kind::parse(kind)?,
        name,
        want,
    })
}

/// Parses and checks a table (`kernel/kspp.yml`'s format).
pub fn parse_table(text: &str) -> Result<Vec<Row>, TableError> {
    let table: Table = serde_saphyr::from_str(text).map_err(|e| TableError::Parse(Box::new(e)))?;
    for row in &table.rows {
        let bad = |reason: String| TableError::Row {
            name: row.name.clone(),
            reason,
        };
        if let Some(arch) = &row.arch
            && arch != "x86_64"
            && arch != "aarch64"
        {
            return Err(bad(format!("unknown arch {arch:?}")));
        }
        if let Some(since) = &row.since
            && parse_version(since).is_none()
        {
            return Err(bad(format!("since {since:?} is not a version")));
        }
        if let Some(alt) = row.or.iter().find(|a| parse_setting(a).is_none()) {
            return Err(bad(format!(
                "or: {alt:?} is not kind:name=value (kconfig, cmdline or sysctl)"
            )));
        }
        if row.reason.trim().is_empty() {
            return Err(bad("no reason".into()));
        }
    }
    Ok(table.rows)
}

/// A kernel command line: the last value of each parameter (flags have none).
#[derive(Debug, Clone, Default)]
pub struct Cmdline(BTreeMap<String, Option<String>>);

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut params = BTreeMap::new();
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some((k, v)) => params.insert(k.to_owned(), Some(v.to_owned())),
                None => params.insert(word.to_owned(), None),
            };
        }
        Cmdline(params)
    }
}

/// What is checked: any of the three may be unknown (a bare `.config` has no command line).
#[derive(Debug, Clone, Copy)]
pub struct System<'a> {
    pub arch: &'a str,
    pub config: Option<&'a KernelConfig>,
    pub cmdline: Option<&'a Cmdline>,
    /// The sysctls the system's files set, the last file's value of each.
    pub sysctls: Option<&'a BTreeMap<String, String>>,
}

/// A row's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "why")]
pub enum Verdict {
    Ok,
    Fail,
    /// Not applicable, and why (another architecture, an older kernel, nothing to check it in).
    #[serde(rename = "n/a")]
    NotApplicable(String),
}

/// One row checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub row: Row,
    pub verdict: Verdict,
    /// What the system has (`absent` when it does not have the setting at all).
    pub have: Option<String>,
    /// The alternative of `or:` that satisfied the row.
    pub via: Option<String>,
}

/// The value `system` has for a setting; the outer `None` when that part of the system is not
/// known, the inner when the setting is absent.
fn have(system: &System<'_>, kind: Kind, name: &str) -> Option<Option<String>> {
    match kind {
        Kind::Kconfig => system.config.map(|c| c.get(name).map(str::to_owned)),
        Kind::Cmdline => system.cmdline.map(|c| {
            c.0.get(name)
                .map(|v| v.clone().unwrap_or_else(|| "present".to_owned()))
        }),
        Kind::Sysctl => system.sysctls.map(|s| s.get(name).cloned()),
    }
}

/// Whether `have` is what `want` asks for.
fn meets(kind: Kind, want: &str, have: Option<&str>) -> bool {
    match (kind, want, have) {
        // An absent or unset option is "n".
        (Kind::Kconfig, "n", None) => true,
        (Kind::Cmdline, "present", Some(_)) => true,
        (_, want, Some(have)) => want == have,
        _ => false,
    }
}

/// Checks every row of `table` against `system`.
pub fn check(table: &[Row], system: &System<'_>) -> Vec<Finding> {
    table.iter().map(|row| check_row(row, system)).collect()
}

fn check_row(row: &Row, system: &System<'_>) -> Finding {
    let finding = |verdict, have: Option<String>, via| Finding {
        row: row.clone(),
        verdict,
        have,
        via,
    };
    let na = |why: String| finding(Verdict::NotApplicable(why), None, None);
    if let Some(arch) = &row.arch
        && arch != system.arch
    {
        return na(format!("{arch} only"));
    }
    if let (Some(since), Some(version)) = (
        row.since.as_deref().and_then(parse_version),
        system.config.and_then(KernelConfig::version),
    ) && version < since
    {
        return na(format!(
            "since {}.{}; this kernel is {}.{}",
            since.0, since.1, version.0, version.1
        ));
    }
    for (option, value) in &row.when {
        match system.config {
            Some(c) if c.value(option) != value => {
                return na(format!("CONFIG_{option} is not {value}"));
            }
            None => return na("no kernel configuration to check it against".into()),
            _ => {}
        }
    }
    let own = have(system, row.kind, &row.name);
    if let Some(value) = &own
        && meets(row.kind, &row.want, value.as_deref())
    {
        return finding(Verdict::Ok, value.clone(), None);
    }
    for alt in &row.or {
        let Some(s) = parse_setting(alt) else {
            continue;
        };
        if let Some(value) = have(system, s.kind, s.name)
            && meets(s.kind, s.want, value.as_deref())
        {
            return finding(Verdict::Ok, own.clone().flatten(), Some(alt.clone()));
        }
    }
    match own {
        Some(value) => finding(
            Verdict::Fail,
            Some(value.unwrap_or_else(|| "absent".to_owned())),
            None,
        ),
        None => na(format!(
            "no {} to check it in",
            match row.kind {
                Kind::Kconfig => "kernel configuration",
                Kind::Cmdline => "command line",
                Kind::Sysctl => "system sysctl files",
            }
        )),
    }
}

/// ok / fail / not applicable, per group and in total (the last entry, named `total`).
pub fn counts(findings: &[Finding]) -> Vec<(String, [usize; 3])> {
    let mut groups: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut total = [0; 3];
    for f in findings {
        let i = match f.verdict {
            Verdict::Ok => 0,
            Verdict::Fail => 1,
            Verdict::NotApplicable(_) => 2,
        };
        groups.entry(f.row.group.clone()).or_default()[i] += 1;
        total[i] += 1;
    }
    let mut out: Vec<(String, [usize; 3])> = groups.into_iter().collect();
    out.push(("total".into(), total));
    out
}

/// Sysctl files (`etc/sysctl.d/*.conf` and the like) applied in order: `key = value` lines,
/// `#` and `;` comments, a `-` prefix (ignore errors) dropped, `/` in keys read as `.`.
pub fn sysctls<'a>(files: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for text in files {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let key = k.trim().trim_start_matches('-').replace('/', ".");
                out.insert(key, v.trim().to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_is_valid() {
        let rows = parse_table(TABLE).unwrap();
        assert!(rows.len() > 80, "{}", rows.len());
        for kind in [Kind::Kconfig, Kind::Cmdline, Kind::Sysctl] {
            assert!(rows.iter().any(|r| r.kind == kind));
        }
    }

    #[test]
    fn bad_tables_name_the_row() {
        let e = parse_table(
            "rows:\n  - {kind: kconfig, name: X, want: y, group: g, arch: riscv, reason: r}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("row X: unknown arch"), "{e}");
        let e = parse_table(
            "rows:\n  - {kind: kconfig, name: X, want: y, group: g, or: [X=y], reason: r}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not kind:name=value"), "{e}");
        assert!(
            parse_table("rows:\n  - {kind: nope, name: X, want: y, group: g, reason: r}\n")
                .is_err()
        );
        assert!(
            parse_table(
                "rows:\n  - {kind: kconfig, name: X, want: y, group: g, reason: r, typo: 1}\n"
            )
            .is_err()
        );
    }

    fn table() -> Vec<Row> {
        parse_table(
            "rows:\n\
             - {kind: kconfig, name: STRICT_KERNEL_RWX, want: y, group: mem, reason: r}\n\
             - {kind: kconfig, name: DEVMEM, want: n, group: surface, reason: r}\n\
             - {kind: kconfig, name: KEXEC, want: n, group: surface, reason: r}\n\
             - {kind: kconfig, name: LIST_HARDENED, want: y, group: mem, since: '6.6', reason: r}\n\
             - {kind: kconfig, name: MODULE_SIG_FORCE, want: y, group: mod, when: {MODULES: y}, reason: r}\n\
             - {kind: kconfig, name: RANDOMIZE_MEMORY, want: y, group: mem, arch: x86_64, reason: r}\n\
             - {kind: kconfig, name: INIT_ON_ALLOC_DEFAULT_ON, want: y, group: heap, or: ['cmdline:init_on_alloc=1'], reason: r}\n\
             - {kind: cmdline, name: slab_nomerge, want: present, group: heap, reason: r}\n\
             - {kind: cmdline, name: pti, want: 'on', group: cpu, reason: r}\n\
             - {kind: sysctl, name: kernel.kptr_restrict, want: '2', group: leaks, reason: r}\n",
        )
        .unwrap()
    }

    fn verdicts(findings: &[Finding]) -> Vec<(String, String)> {
        findings
            .iter()
            .map(|f| {
                let v = match &f.verdict {
                    Verdict::Ok => f.via.clone().map_or("ok".into(), |v| format!("ok via {v}")),
                    Verdict::Fail => format!("fail (have {})", f.have.clone().unwrap_or_default()),
                    Verdict::NotApplicable(why) => format!("n/a: {why}"),
                };
                (f.row.name.clone(), v)
            })
            .collect()
    }

    #[test]
    fn rows_are_ok_fail_or_not_applicable_with_the_reason() {
        let config = KernelConfig::parse(
            "# Linux/arm64 6.1.0 Kernel Configuration\nCONFIG_STRICT_KERNEL_RWX=y\n\
             # CONFIG_DEVMEM is not set\nCONFIG_KEXEC=y\nCONFIG_MODULES=y\n",
        );
        let cmdline = Cmdline::parse("console=ttyAMA0 init_on_alloc=1 slab_nomerge pti=off pti=on");
        let sysctls = sysctls([
            "kernel.kptr_restrict = 1\n",
            "# later file\n-kernel/kptr_restrict=2\n",
        ]);
        let system = System {
            arch: "aarch64",
            config: Some(&config),
            cmdline: Some(&cmdline),
            sysctls: Some(&sysctls),
        };
        let found = verdicts(&check(&table(), &system));
        let want: Vec<(String, String)> = [
            ("STRICT_KERNEL_RWX", "ok"),
            ("DEVMEM", "ok"),
            ("KEXEC", "fail (have y)"),
            ("LIST_HARDENED", "n/a: since 6.6; this kernel is 6.1"),
            ("MODULE_SIG_FORCE", "fail (have absent)"),
            ("RANDOMIZE_MEMORY", "n/a: x86_64 only"),
            ("INIT_ON_ALLOC_DEFAULT_ON", "ok via cmdline:init_on_alloc=1"),
            ("slab_nomerge", "ok"),
            ("pti", "ok"),
            ("kernel.kptr_restrict", "ok"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(found, want);

        // Only a .config: the command line and sysctls are not applicable, and a kernel
        // without modules needs no module signing.
        let no_modules =
            KernelConfig::parse("CONFIG_STRICT_KERNEL_RWX=y\n# CONFIG_MODULES is not set\n");
        let system = System {
            arch: "x86_64",
            config: Some(&no_modules),
            cmdline: None,
            sysctls: None,
        };
        let findings = check(&table(), &system);
        let found = verdicts(&findings);
        assert_eq!(found[4].1, "n/a: CONFIG_MODULES is not y");
        assert_eq!(found[5].1, "fail (have absent)");
        assert_eq!(found[7].1, "n/a: no command line to check it in");
        assert_eq!(found[9].1, "n/a: no system sysctl files to check it in");
        let counts = counts(&findings);
        assert_eq!(counts.last().unwrap(), &("total".to_owned(), [3, 3, 4]));
    }
}
