//! Translation of an OCI `linux.seccomp` profile into BPF programs (with `seccompiler`), and
//! their installation.
//!
//! `seccompiler` gives one match action per filter, while an OCI profile mixes actions. The
//! profile therefore becomes a stack of filters, all installed; the kernel runs every filter
//! and keeps the strictest result (kill > trap > errno > trace > log > allow):
//! - a *default* filter: every rule whose action differs from `defaultAction` → allow,
//!   anything else → `defaultAction` (skipped when `defaultAction` is allow);
//! - one filter per other non-allow action `A`: the rules with action `A` → `A`, anything
//!   else → allow.
//!
//! Syscall names unknown on the target architecture are skipped (logged at debug), like runc
//! does. Anything else that cannot be honoured (notify actions, a listener, unknown
//! architectures-only profiles) is an error, never silently dropped.

use std::collections::BTreeMap;
use std::str::FromStr;

use libcontainer::oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall, Spec,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::sys;

/// Errors compiling or installing a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0} is not supported")]
    UnsupportedAction(LinuxSeccompAction),
    #[error("seccomp filter flag {0} is not supported")]
    UnsupportedFlag(LinuxSeccompFilterFlag),
    #[error("seccomp listenerPath is not supported (no SCMP_ACT_NOTIFY)")]
    Listener,
    #[error("seccomp argument index {0} out of range")]
    ArgIndex(usize),
    #[error("seccomp operator SCMP_CMP_MASKED_EQ needs valueTwo")]
    MaskedEqValue,
    #[error("seccomp is supported on x86_64 and aarch64 only")]
    Arch,
    #[error("cannot build seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot install seccomp filter")]
    Install(#[source] std::io::Error),
}

/// A compiled profile: programs in installation order, and the `seccomp(2)` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    programs: Vec<BpfProgram>,
    flags: libc::c_ulong,
}

impl Compiled {
    /// Number of stacked filters.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    /// Installs every filter on the calling thread. Needs `no_new_privs` or `CAP_SYS_ADMIN`.
    pub fn install(&self) -> Result<(), SeccompError> {
        for program in &self.programs {
            sys::seccomp_set_filter(program, self.flags).map_err(SeccompError::Install)?;
        }
        Ok(())
    }
}

/// The architecture the shim runs on: keel's two (the syscall tables compiled in).
fn target_arch() -> Result<TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        _ => Err(SeccompError::Arch),
    }
}

/// The number of syscall `name` (libseccomp's name, as OCI profiles use) on `arch`, if that
/// architecture has it. The `syscalls` crate's tables match libseccomp's except for aarch64's
/// syscall 79, which it calls `fstatat` where libseccomp (and so every OCI profile) says
/// `newfstatat`; without the alias, stat() would fail under any profile on aarch64.
fn syscall_nr(name: &str, arch: TargetArch) -> Option<i64> {
    let id = match arch {
        TargetArch::x86_64 => syscalls::x86_64::Sysno::from_str(name).ok()?.id(),
        TargetArch::aarch64 => {
            let name = if name == "newfstatat" {
                "fstatat"
            } else {
                name
            };
            syscalls::aarch64::Sysno::from_str(name).ok()?.id()
        }
        TargetArch::riscv64 => return None,
    };
    Some(i64::from(id))
}

/// The action a rule or default turns into.
fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    // EPERM is libseccomp's (and runc's) errno when the profile names none.
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno),
        // libseccomp's SCMP_ACT_KILL is SCMP_ACT_KILL_THREAD.
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno),
        other @ LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction(other));
        }
    })
}

fn condition(arg: &LinuxSeccompArg) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index()).map_err(|_| SeccompError::ArgIndex(arg.index()))?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // libseccomp: value is the mask, valueTwo the datum compared after masking.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().ok_or(SeccompError::MaskedEqValue)?,
        ),
    };
    // libseccomp compares whole 64-bit arguments.
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|_| SeccompError::ArgIndex(arg.index()))
}

/// The rules of one OCI syscall entry (empty = match on the number alone). Conditions on
/// distinct arguments are ANDed; several conditions on the same argument become separate
/// rules (ORed), as runc does.
fn rules(syscall: &LinuxSyscall) -> Result<Vec<SeccompRule>, SeccompError> {
    let args = syscall.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Ok(Vec::new());
    }
    let conditions = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    indexes.dedup();
    let groups = if indexes.len() == args.len() {
        vec![conditions]
    } else {
        conditions.into_iter().map(|c| vec![c]).collect()
    };
    groups
        .into_iter()
        .map(|g| SeccompRule::new(g).map_err(SeccompError::Build))
        .collect()
}

/// Adds `rules` for syscall `nr` into a filter's rule map. An entry with no conditions
/// matches the syscall outright, which absorbs any conditional rules for it.
fn add_rules(map: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, rules: &[SeccompRule]) {
    match map.get_mut(&nr) {
        Some(existing) if existing.is_empty() => {}
        Some(_) if rules.is_empty() => {
            map.insert(nr, Vec::new());
        }
        Some(existing) => existing.extend_from_slice(rules),
        None => {
            map.insert(nr, rules.to_vec());
        }
    }
}

/// Compiles `profile` for the native architecture.
pub fn compile(profile: &LinuxSeccomp) -> Result<Compiled, SeccompError> {
    compile_for(profile, target_arch()?)
}

/// Compiles `spec`'s `linux.seccomp`, if it has one: the one translation both the container's
/// init and the commands `keel-shim exec` runs in it get.
pub fn compile_spec(spec: &Spec) -> Result<Option<Compiled>, SeccompError> {
    let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    let compiled = compile(profile)?;
    log::debug!(
        "seccomp profile compiled into {} stacked filters",
        compiled.len()
    );
    Ok(Some(compiled))
}

fn compile_for(profile: &LinuxSeccomp, arch: TargetArch) -> Result<Compiled, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(SeccompError::Listener);
    }
    let mut flags: libc::c_ulong = 0;
    for flag in profile.flags().as_deref().unwrap_or_default() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The payload is single-threaded at exec: TSYNC changes nothing.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            other => return Err(SeccompError::UnsupportedFlag(*other)),
        };
    }
    if let Some(archs) = profile.architectures() {
        // seccompiler filters only the native ABI; syscalls from any other ABI (x86, x32,
        // arm compat) are killed, which is stricter than listing them.
        log::debug!("seccomp: architectures {archs:?}: only the native one is allowed");
    }

    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // The default filter's rules, and the per-action filters' rules. A Vec of pairs keeps
    // a deterministic order (SeccompAction is not Ord).
    let mut allow_rules = BTreeMap::new();
    let mut per_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    for syscall in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        let rules = rules(syscall)?;
        for name in syscall.names() {
            let Some(nr) = syscall_nr(name, arch) else {
                log::debug!("seccomp: syscall {name} unknown on {arch:?}, skipped");
                continue;
            };
            if act == default {
                continue;
            }
            add_rules(&mut allow_rules, nr, &rules);
            if act == SeccompAction::Allow {
                continue;
            }
            let slot = match per_action.iter().position(|(a, _)| *a == act) {
                Some(i) => i,
                None => {
                    per_action.push((act.clone(), BTreeMap::new()));
                    per_action.len() - 1
                }
            };
            add_rules(&mut per_action[slot].1, nr, &rules);
        }
    }

    let mut filters = Vec::new();
    if default != SeccompAction::Allow {
        filters.push(
            SeccompFilter::new(allow_rules, default, SeccompAction::Allow, arch)
                .map_err(SeccompError::Build)?,
        );
    }
    for (act, map) in per_action {
        filters.push(
            SeccompFilter::new(map, SeccompAction::Allow, act, arch)
                .map_err(SeccompError::Build)?,
        );
    }
    let programs = filters
        .into_iter()
        .map(BpfProgram::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(SeccompError::Build)?;
    Ok(Compiled { programs, flags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn allow_by_default_with_one_errno_rule() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mount","umount2"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        );
        let c = compile(&p).unwrap();
        // No default filter (allow), one errno filter.
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn errno_default_with_allow_list_and_mixed_actions() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[
                {"names":["read","write","exit_group","no_such_syscall"],"action":"SCMP_ACT_ALLOW"},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},
                         {"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                {"names":["ptrace"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        );
        let c = compile(&p).unwrap();
        // default filter + errno(38) + kill-process.
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn same_errno_as_default_adds_no_filter() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                {"names":["mount"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn notify_and_listener_are_refused() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mount"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(matches!(
            compile(&p),
            Err(SeccompError::UnsupportedAction(_))
        ));
        let p = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#);
        assert!(matches!(compile(&p), Err(SeccompError::Listener)));
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(compile(&p).is_err());
    }

    #[test]
    fn masked_eq_needs_value_two() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["clone"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":0,"value":2114060288,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        assert!(matches!(compile(&p), Err(SeccompError::MaskedEqValue)));
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["clone"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn bad_arg_index_is_refused() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":9,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(matches!(compile(&p), Err(SeccompError::ArgIndex(9))));
    }

    #[test]
    fn same_argument_twice_becomes_alternatives() {
        let s: LinuxSyscall = serde_json::from_str(
            r#"{"names":["personality"],"action":"SCMP_ACT_ALLOW",
                "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},
                        {"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}"#,
        )
        .unwrap();
        assert_eq!(rules(&s).unwrap().len(), 2);
        let s: LinuxSyscall = serde_json::from_str(
            r#"{"names":["socket"],"action":"SCMP_ACT_ALLOW",
                "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},
                        {"index":1,"value":1,"op":"SCMP_CMP_EQ"}]}"#,
        )
        .unwrap();
        assert_eq!(rules(&s).unwrap().len(), 1);
    }

    #[test]
    fn unconditional_entry_absorbs_conditional_ones() {
        let cond = SeccompRule::new(vec![
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 1).unwrap(),
        ])
        .unwrap();
        let mut map = BTreeMap::new();
        add_rules(&mut map, 5, std::slice::from_ref(&cond));
        add_rules(&mut map, 5, std::slice::from_ref(&cond));
        assert_eq!(map[&5].len(), 2);
        add_rules(&mut map, 5, &[]);
        assert!(map[&5].is_empty());
        add_rules(&mut map, 5, std::slice::from_ref(&cond));
        assert!(map[&5].is_empty());
    }

    #[test]
    fn known_names_resolve() {
        for arch in [TargetArch::x86_64, TargetArch::aarch64] {
            assert!(syscall_nr("read", arch).is_some());
            assert!(syscall_nr("openat", arch).is_some());
            assert!(syscall_nr("definitely_not_a_syscall", arch).is_none());
        }
        // Each architecture's own table, whatever the host.
        assert_eq!(syscall_nr("read", TargetArch::x86_64), Some(0));
        assert_eq!(syscall_nr("read", TargetArch::aarch64), Some(63));
        assert_eq!(syscall_nr("open", TargetArch::aarch64), None);
        assert_eq!(syscall_nr("arch_prctl", TargetArch::x86_64), Some(158));
    }

    #[test]
    fn newfstatat_is_libseccomps_name_on_both_arches() {
        assert_eq!(syscall_nr("newfstatat", TargetArch::x86_64), Some(262));
        assert_eq!(syscall_nr("newfstatat", TargetArch::aarch64), Some(79));
    }

    fn default_profile(caps: &[&str], arch: &str) -> LinuxSeccomp {
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        let value = keel_config::seccomp_default::default_profile(&caps, arch).unwrap();
        serde_json::from_value(value).unwrap()
    }

    /// keel's default profile compiles for both architectures, whatever the capabilities.
    #[test]
    fn default_profile_translates_on_both_arches() {
        let all = [
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_SYS_BOOT",
            "CAP_SYS_MODULE",
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_SYSLOG",
            "CAP_SYS_TIME",
            "CAP_SYS_RAWIO",
        ];
        for (name, arch) in [
            ("x86_64", TargetArch::x86_64),
            ("aarch64", TargetArch::aarch64),
        ] {
            // The default filter, plus clone3's ENOSYS filter without CAP_SYS_ADMIN.
            let none = compile_for(&default_profile(&[], name), arch).unwrap();
            assert_eq!(none.len(), 2, "{name}");
            let admin = compile_for(&default_profile(&["CAP_SYS_ADMIN"], name), arch).unwrap();
            assert_eq!(admin.len(), 1, "{name}");
            let every = compile_for(&default_profile(&all, name), arch).unwrap();
            assert_eq!(every.len(), 1, "{name}");
            assert_ne!(none, admin);
            // The kernel refuses programs over BPF_MAXINSNS; aarch64 cannot be installed here.
            for c in [&none, &admin, &every] {
                for p in &c.programs {
                    assert!(p.len() <= 4096, "{name}: {} instructions", p.len());
                }
            }
        }
    }

    /// Runs `check` in a forked child after installing `c` there; the child's exit code is
    /// `check`'s (2 if the filter could not be installed).
    fn in_filtered_child(c: &Compiled, check: fn() -> i32) -> i32 {
        use nix::sys::wait::{WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};
        // SAFETY: the child only makes raw syscalls (no allocation, no locks) and _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) has no memory arguments.
                let _ = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = match c.install() {
                    Err(_) => 2,
                    Ok(()) => check(),
                };
                // SAFETY: _exit is always safe to call in a forked child.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            },
        }
    }

    /// The errno of a raw syscall returning -1, or 0 when it succeeded.
    fn errno_of(ret: libc::c_long) -> i32 {
        if ret == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    }

    /// The default profile, installed, behaves as Docker's: privileged calls fail with
    /// EPERM, clone3 with ENOSYS (so libc falls back to clone), ordinary calls work.
    #[test]
    fn default_profile_denies_in_a_child() {
        let c = compile(&default_profile(&[], std::env::consts::ARCH)).unwrap();
        fn check() -> i32 {
            // SAFETY: every call below passes no pointers (or null ones the kernel checks
            // after seccomp has decided).
            let results = unsafe {
                [
                    // (got, want)
                    (errno_of(libc::syscall(libc::SYS_getppid)), 0),
                    (errno_of(libc::syscall(libc::SYS_unshare, 0)), libc::EPERM),
                    (
                        errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_clone3, 0, 0)),
                        libc::ENOSYS,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_socket, libc::AF_VSOCK, 1, 0)),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_io_uring_setup, 1, 0)),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_socket, libc::AF_UNIX, 1, 0)),
                        0,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_personality, 0xffff_ffff_u32)),
                        0,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_personality, 0x0040_0000)),
                        libc::EPERM,
                    ),
                ]
            };
            for (i, (got, want)) in results.into_iter().enumerate() {
                if got != want {
                    return 10 + i32::try_from(i).unwrap_or(0);
                }
            }
            0
        }
        assert_eq!(in_filtered_child(&c, check), 0);
    }

    /// Installs a filter in a forked child and checks the syscall really fails there.
    #[test]
    fn installed_filter_denies_in_a_child() {
        use nix::sys::wait::{WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":42}]}"#,
        );
        let c = compile(&p).unwrap();
        // SAFETY: the child only makes raw syscalls (no allocation, no locks) and _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) has no memory arguments.
                let _ = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = match c.install() {
                    Err(_) => 2,
                    Ok(()) => {
                        // SAFETY: getppid has no arguments.
                        let r = unsafe { libc::syscall(libc::SYS_getppid) };
                        let e = std::io::Error::last_os_error().raw_os_error();
                        if r == -1 && e == Some(42) { 0 } else { 1 }
                    }
                };
                // SAFETY: _exit is always safe to call in a forked child.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }
}
