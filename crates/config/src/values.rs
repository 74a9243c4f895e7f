//! Parsers for the small string languages inside image specs: capability names, binds
//! (`src:dst[:opts]`), tmpfs (`dst[:opts]`), rlimits (`name,soft,hard`), octal modes,
//! namespace choices and durations. Used both to validate at load time and to generate specs.

use crate::error::{Error, Spanned, hint};
use std::time::Duration;

/// The Linux capabilities LinuxKit knows (`CAP_CHOWN` … `CAP_CHECKPOINT_RESTORE`), in kernel order.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The rlimits LinuxKit accepts.
pub const RLIMITS: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// Checks a capability list: `CAP_*` names, or a single `all` / `none`.
pub(crate) fn check_caps(list: &[Spanned<String>]) -> Result<(), Error> {
    for cap in list {
        let lower = cap.to_ascii_lowercase();
        if lower == "all" || lower == "none" {
            if list.len() != 1 {
                return Err(cap.loc.err(format!(
                    "{:?} must be the only entry of a capability list",
                    cap.value
                )));
            }
            continue;
        }
        if !CAPABILITIES.contains(&cap.as_str()) {
            let upper = cap.to_ascii_uppercase();
            let prefixed = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let h = if CAPABILITIES.contains(&prefixed.as_str()) {
                format!(" (did you mean {prefixed}?)")
            } else {
                hint(&prefixed, &CAPABILITIES)
            };
            return Err(cap.loc.err(format!(
                "unknown capability {:?}{h}; expected CAP_* names, \"all\" or \"none\"",
                cap.value
            )));
        }
    }
    Ok(())
}

/// Checks a list merged from a label and `capabilities.add`: `all` or `none` may then appear
/// beside other names (`all` wins, `none` adds nothing).
pub(crate) fn check_caps_merged(list: &[Spanned<String>]) -> Result<(), Error> {
    let named: Vec<Spanned<String>> = list
        .iter()
        .filter(|c| !c.eq_ignore_ascii_case("all") && !c.eq_ignore_ascii_case("none"))
        .cloned()
        .collect();
    check_caps(&named)
}

/// Expands a checked capability list (`all`, `none`) into names.
pub(crate) fn expand_caps(list: &[Spanned<String>]) -> Vec<String> {
    if list.iter().any(|c| c.eq_ignore_ascii_case("all")) {
        return CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    list.iter()
        .filter(|c| !c.eq_ignore_ascii_case("none"))
        .map(|c| c.value.clone())
        .collect()
}

/// Checks a mount destination (of a bind, a tmpfs entry or a `mounts:` entry).
///
/// As in LinuxKit, a relative destination is accepted and written to `config.json` as given:
/// the runtime resolves it against the container's root (LinuxKit's own examples mount at
/// `writeable-host-etc`). keel refuses only what cannot work: an empty destination (LinuxKit
/// passes it on and the runtime fails at boot) and a `..` component (keel creates every mount
/// point in the image at build time, and never outside the container's root).
pub(crate) fn check_destination(dest: &str) -> Result<(), &'static str> {
    if dest.is_empty() {
        return Err("empty destination");
    }
    if dest.split('/').any(|c| c == "..") {
        return Err("the destination must not contain a \"..\" component");
    }
    Ok(())
}

/// A parsed bind: `src:dst[:opt,opt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bind {
    pub source: String,
    pub destination: String,
    /// `rw,rbind,rshared` when none were given, else the given options plus `rbind`.
    pub options: Vec<String>,
}

impl Bind {
    /// Whether the source names a volume rather than a host path.
    pub fn is_volume(&self) -> bool {
        !self.source.starts_with('/')
    }
}

pub(crate) fn parse_bind(s: &Spanned<String>) -> Result<Bind, Error> {
    let bad = |why: &str| {
        s.loc.err(format!(
            "invalid bind {:?}: {why}; expected SOURCE:DESTINATION[:OPTION,...] (SOURCE a path or a volume name)",
            s.value
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 2 {
        return Err(bad("missing ':'"));
    }
    if parts.len() > 3 {
        return Err(bad("too many ':'"));
    }
    if parts[0].is_empty() {
        return Err(bad("empty source"));
    }
    check_destination(parts[1]).map_err(bad)?;
    let options = match parts.get(2) {
        None => vec!["rw".into(), "rbind".into(), "rshared".into()],
        Some(opts) => {
            let mut o: Vec<String> = opts.split(',').map(str::to_owned).collect();
            if o.iter().any(String::is_empty) {
                return Err(bad("empty option"));
            }
            o.push("rbind".into());
            o
        }
    };
    Ok(Bind {
        source: parts[0].into(),
        destination: parts[1].into(),
        options,
    })
}

/// A parsed tmpfs entry: `dst[:opt,opt]`.
pub(crate) fn parse_tmpfs(s: &Spanned<String>) -> Result<(String, Vec<String>), Error> {
    let bad = |why: &str| {
        s.loc.err(format!(
            "invalid tmpfs {:?}: {why}; expected DESTINATION[:OPTION,...]",
            s.value
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 2 {
        return Err(bad("too many ':'"));
    }
    check_destination(parts[0]).map_err(bad)?;
    let opts = match parts.get(1) {
        Some(o) => o.split(',').map(str::to_owned).collect::<Vec<_>>(),
        None => Vec::new(),
    };
    if opts.iter().any(String::is_empty) {
        return Err(bad("empty option"));
    }
    Ok((parts[0].into(), opts))
}

/// A parsed rlimit: `(RLIMIT_NAME, soft, hard)`; `unlimited` is `u64::MAX`.
pub(crate) fn parse_rlimit(s: &Spanned<String>) -> Result<(String, u64, u64), Error> {
    let parts: Vec<&str> = s.splitn(3, ',').collect();
    if parts.len() != 3 {
        return Err(s.loc.err(format!(
            "invalid rlimit {:?}; expected NAME,SOFT,HARD (for example nofile,1024,4096)",
            s.value
        )));
    }
    let mut name = parts[0].trim().to_ascii_uppercase();
    if !name.starts_with("RLIMIT_") {
        name = format!("RLIMIT_{name}");
    }
    if !RLIMITS.contains(&name.as_str()) {
        return Err(s.loc.err(format!(
            "unknown rlimit {:?}{}; expected one of: {}",
            parts[0].trim(),
            hint(&name, &RLIMITS),
            RLIMITS.join(", ")
        )));
    }
    let value = |t: &str| -> Result<u64, Error> {
        let t = t.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(u64::MAX);
        }
        t.parse().map_err(|_| {
            s.loc.err(format!(
                "invalid rlimit value {t:?} in {:?}; expected a number or \"unlimited\"",
                s.value
            ))
        })
    };
    Ok((name, value(parts[1])?, value(parts[2])?))
}

/// Parses an octal mode string such as `0644` or `755`.
pub(crate) fn parse_octal(s: &Spanned<String>) -> Result<u32, Error> {
    let t = s.trim_start_matches("0o");
    match u32::from_str_radix(t, 8) {
        Ok(m) if !t.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(s.loc.err(format!(
            "invalid mode {:?}; expected an octal string such as \"0644\"",
            s.value
        ))),
    }
}

/// Checks a namespace choice (`net`, `pid`, `ipc`, `uts`, `userns`).
pub(crate) fn check_namespace(key: &str, s: &Spanned<String>) -> Result<(), Error> {
    let v = s.as_str();
    let ok = match key {
        "net" => matches!(v, "host" | "root" | "new" | "none"),
        "userns" => matches!(v, "host" | "root" | "new"),
        _ => matches!(v, "host" | "root" | "new"),
    } || v.starts_with('/');
    if ok {
        return Ok(());
    }
    let choices = if key == "net" {
        "host, root, new, none"
    } else {
        "host, root, new"
    };
    Err(s.loc.err(format!(
        "invalid {key} {v:?}; expected {choices} or the absolute path of a namespace file"
    )))
}

/// The longest `timeout` or `stopGracePeriod` (24 h, the bound the guest enforces too): a longer
/// one is almost certainly a slip, and PID 1 computes deadlines from these values.
pub(crate) const MAX_DURATION: Duration = keel_bundle::Supervision::MAX_DURATION;

/// Parses a duration: integer seconds, or number+unit terms (`500ms`, `30s`, `2m`, `1h`, `1m30s`),
/// at most [`MAX_DURATION`].
pub(crate) fn parse_duration(s: &Spanned<String>) -> Result<Duration, Error> {
    let bad = || {
        s.loc.err(format!(
            "invalid duration {:?}; expected integer seconds or a duration such as 500ms, 30s, 2m, 1h",
            s.value
        ))
    };
    let too_long = || {
        s.loc.err(format!(
            "duration {:?} is longer than the maximum of 24h ({} seconds)",
            s.value,
            MAX_DURATION.as_secs()
        ))
    };
    let t = s.trim();
    if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() {
        // All digits but too big for u64 is still a number, just far too long.
        return match t.parse::<u64>() {
            Ok(secs) if secs <= MAX_DURATION.as_secs() => Ok(Duration::from_secs(secs)),
            _ => Err(too_long()),
        };
    }
    let mut rest = t;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        // A term too large for a Duration is a valid number, just far too long.
        let term = Duration::try_from_secs_f64(num * scale).map_err(|_| too_long())?;
        total = total.checked_add(term).ok_or_else(too_long)?;
    }
    if total > MAX_DURATION {
        return Err(too_long());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Loc;

    fn sp(s: &str) -> Spanned<String> {
        Spanned::new(s.to_string(), Loc::none())
    }

    #[test]
    fn capabilities_count_and_check() {
        assert_eq!(CAPABILITIES.len(), 41);
        assert!(check_caps(&[sp("CAP_NET_ADMIN"), sp("CAP_SYS_ADMIN")]).is_ok());
        assert!(check_caps(&[sp("all")]).is_ok());
        assert!(check_caps(&[sp("all"), sp("CAP_KILL")]).is_err());
        let e = check_caps(&[sp("sys_admin")]).unwrap_err().to_string();
        assert!(e.contains("did you mean CAP_SYS_ADMIN?"), "{e}");
        assert_eq!(expand_caps(&[sp("ALL")]).len(), 41);
        assert!(expand_caps(&[sp("none")]).is_empty());
    }

    #[test]
    fn binds_default_options() {
        let b = parse_bind(&sp("/a:/b")).unwrap();
        assert_eq!(b.options, ["rw", "rbind", "rshared"]);
        let b = parse_bind(&sp("vol:/b:ro,rprivate")).unwrap();
        assert_eq!(b.options, ["ro", "rprivate", "rbind"]);
        assert!(b.is_volume());
        assert!(parse_bind(&sp("/a")).is_err());
        assert!(parse_bind(&sp("/a:/b:c:d")).is_err());
        // Relative destinations pass through unchanged, as in LinuxKit.
        assert_eq!(parse_bind(&sp("/etc:etc")).unwrap().destination, "etc");
        assert_eq!(parse_bind(&sp("/a:./b/c")).unwrap().destination, "./b/c");
        assert!(parse_bind(&sp("/a:")).is_err());
        assert!(parse_bind(&sp("/a:/b/../../c")).is_err());
        assert!(parse_bind(&sp("/a:..")).is_err());
        // `..` inside a name is no parent component.
        assert!(parse_bind(&sp("/a:/b..c")).is_ok());
    }

    #[test]
    fn tmpfs_and_rlimits() {
        assert_eq!(
            parse_tmpfs(&sp("/run:size=1m,mode=755")).unwrap().1,
            ["size=1m", "mode=755"]
        );
        assert_eq!(parse_tmpfs(&sp("run")).unwrap().0, "run");
        assert!(parse_tmpfs(&sp(":size=1m")).is_err());
        assert!(parse_tmpfs(&sp("../run")).is_err());
        assert_eq!(
            parse_rlimit(&sp("nofile, 1024, unlimited")).unwrap(),
            ("RLIMIT_NOFILE".into(), 1024, u64::MAX)
        );
        assert!(
            parse_rlimit(&sp("nofiles,1,1"))
                .unwrap_err()
                .to_string()
                .contains("did you mean RLIMIT_NOFILE")
        );
        assert!(parse_rlimit(&sp("nofile,x,1")).is_err());
        assert!(parse_rlimit(&sp("nofile,1")).is_err());
    }

    #[test]
    fn modes_namespaces_durations() {
        assert_eq!(parse_octal(&sp("0644")).unwrap(), 0o644);
        assert!(parse_octal(&sp("0999")).is_err());
        assert!(check_namespace("net", &sp("none")).is_ok());
        assert!(check_namespace("pid", &sp("none")).is_err());
        assert!(check_namespace("ipc", &sp("/run/ns/ipc")).is_ok());
        assert_eq!(
            parse_duration(&sp("500ms")).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration(&sp("1m30s")).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(parse_duration(&sp("7")).unwrap(), Duration::from_secs(7));
        assert!(parse_duration(&sp("5x")).is_err());
        assert!(parse_duration(&sp("")).is_err());
        assert!(parse_duration(&sp("-5")).is_err());
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration(&sp("24h")).unwrap(), MAX_DURATION);
        assert_eq!(parse_duration(&sp("86400")).unwrap(), MAX_DURATION);
        assert_eq!(parse_duration(&sp("23h59m60s")).unwrap(), MAX_DURATION);
        for text in [
            "86401",
            "24h1ms",
            "18446744073709551615",
            "99999999999999999999999",
            "18446744073709551615s",
            "9999999999999999999999999999999h",
            "1e400h",
            "5124095576030431h5124095576030431h",
        ] {
            let e = parse_duration(&sp(text)).unwrap_err().to_string();
            assert!(
                e.contains("longer than the maximum of 24h") || e.contains("invalid duration"),
                "{text}: {e}"
            );
        }
        let e = parse_duration(&sp("18446744073709551615"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("longer than the maximum of 24h (86400 seconds)"),
            "{e}"
        );
    }
}
