//! keel's default seccomp profile: Docker's default (moby `profiles/seccomp`), kept as data in
//! `seccomp_default.json` and turned here into the OCI `linux.seccomp` object of one container.
//!
//! The profile is an allow-list (everything else fails with `EPERM`) made of four groups:
//! names every container may call, names one architecture adds, names a capability adds
//! (looked up in the container's *bounding* set, as Docker does), and entries with argument
//! filters or another action (`socket` without `AF_ALG`/`AF_VSOCK`, a few `personality`
//! values, `clone` without namespace flags and `clone3` failing with `ENOSYS` unless
//! `CAP_SYS_ADMIN`). The data file's `notes` list where keel differs from Docker.
//!
//! The output is deterministic: one allow entry holding every unconditional name, sorted,
//! then the filtered entries in the data file's order.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall};
use serde::Deserialize;
use serde_json::Value;

/// The profile's data (see the module documentation for its groups).
const DATA: &str = include_str!("seccomp_default.json");

/// Why no profile could be made.
#[derive(Debug, thiserror::Error)]
pub enum DefaultProfileError {
    #[error("no default seccomp profile for architecture {0:?}; expected x86_64 or aarch64")]
    UnknownArch(String),
    #[error("the built-in seccomp profile is malformed")]
    Data(#[source] serde_json::Error),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Data {
    #[serde(default)]
    #[allow(dead_code)] // documentation for the reader of the JSON file
    notes: Vec<String>,
    default_action: LinuxSeccompAction,
    default_errno_ret: u32,
    always: Vec<String>,
    /// keel architecture key (`x86_64`, `aarch64`) → names.
    arch: BTreeMap<String, Vec<String>>,
    /// `CAP_*` → names.
    caps: BTreeMap<String, Vec<String>>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    #[allow(dead_code)] // documentation for the reader of the JSON file
    note: Option<String>,
    names: Vec<String>,
    #[serde(default = "allow")]
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    /// The entry is left out when the bounding set holds any of these.
    #[serde(default)]
    unless_caps: Vec<String>,
}

fn allow() -> LinuxSeccompAction {
    LinuxSeccompAction::ScmpActAllow
}

/// The data file's key and the OCI architecture for an architecture name: keel's (Rust's)
/// `x86_64`/`aarch64`, the OCI image platform's `amd64`/`arm64`, or the OCI `SCMP_ARCH_*`.
fn arch(name: &str) -> Option<(&'static str, Arch)> {
    match name {
        "x86_64" | "amd64" | "SCMP_ARCH_X86_64" => Some(("x86_64", Arch::ScmpArchX86_64)),
        "aarch64" | "arm64" | "SCMP_ARCH_AARCH64" => Some(("aarch64", Arch::ScmpArchAarch64)),
        _ => None,
    }
}

fn data() -> Result<Data, DefaultProfileError> {
    serde_json::from_str(DATA).map_err(DefaultProfileError::Data)
}

/// The `seccomp:` value that turns every filter off, the default profile included.
pub const UNCONFINED: &str = "unconfined";

/// The default profile, in the OCI `linux.seccomp` shape, for a container whose bounding
/// capability set is `caps` (`CAP_*` names) on architecture `arch` (`x86_64` or `aarch64`;
/// `amd64`, `arm64` and `SCMP_ARCH_*` are accepted too).
pub fn default_profile(caps: &[String], arch: &str) -> Result<Value, DefaultProfileError> {
    let profile = default_seccomp(caps, arch)?;
    serde_json::to_value(profile).map_err(DefaultProfileError::Data)
}

/// [`default_profile`] as the typed OCI object.
pub fn default_seccomp(
    caps: &[String],
    arch_name: &str,
) -> Result<LinuxSeccomp, DefaultProfileError> {
    let (key, oci_arch) =
        arch(arch_name).ok_or_else(|| DefaultProfileError::UnknownArch(arch_name.to_owned()))?;
    let data = data()?;
    let held = |cap: &String| caps.iter().any(|c| c.eq_ignore_ascii_case(cap));

    let mut names: BTreeSet<&String> = data.always.iter().collect();
    names.extend(data.arch.get(key).into_iter().flatten());
    for (cap, list) in &data.caps {
        if held(cap) {
            names.extend(list);
        }
    }
    let mut allowed = LinuxSyscall::default();
    allowed
        .set_names(names.into_iter().cloned().collect())
        .set_action(LinuxSeccompAction::ScmpActAllow);

    let mut syscalls = vec![allowed];
    for rule in &data.rules {
        if rule.unless_caps.iter().any(held) {
            continue;
        }
        let mut s = LinuxSyscall::default();
        s.set_names(rule.names.clone())
            .set_action(rule.action)
            .set_errno_ret(rule.errno_ret)
            .set_args((!rule.args.is_empty()).then(|| rule.args.clone()));
        syscalls.push(s);
    }

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(data.default_action)
        .set_default_errno_ret(Some(data.default_errno_ret))
        .set_architectures(Some(vec![oci_arch]))
        .set_syscalls(Some(syscalls));
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

    fn caps(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    fn profile(list: &[&str], arch: &str) -> LinuxSeccomp {
        default_seccomp(&caps(list), arch).unwrap()
    }

    fn entries(p: &LinuxSeccomp) -> &[LinuxSyscall] {
        p.syscalls().as_deref().unwrap()
    }

    /// Allowed whatever the arguments.
    fn allowed(p: &LinuxSeccomp, name: &str) -> bool {
        entries(p).iter().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().is_none()
                && s.names().iter().any(|n| n == name)
        })
    }

    /// Named by any entry (allowed outright, with argument filters, or another action).
    fn mentioned(p: &LinuxSeccomp, name: &str) -> bool {
        entries(p)
            .iter()
            .any(|s| s.names().iter().any(|n| n == name))
    }

    #[test]
    fn seccomp_data_parses_and_is_tidy() {
        let d = data().unwrap();
        assert_eq!(d.default_action, LinuxSeccompAction::ScmpActErrno);
        assert_eq!(d.default_errno_ret, 1, "EPERM, as Docker");
        let keys: Vec<&str> = d.arch.keys().map(String::as_str).collect();
        assert_eq!(keys, ["aarch64", "x86_64"]);
        let mut lists: Vec<(&str, &Vec<String>)> = vec![("always", &d.always)];
        lists.extend(d.arch.iter().map(|(k, v)| (k.as_str(), v)));
        lists.extend(d.caps.iter().map(|(k, v)| (k.as_str(), v)));
        for (group, list) in lists {
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(&sorted, list, "{group}: keep names sorted and unique");
        }
        // A capability's names must not be allowed to everyone anyway.
        for (cap, list) in &d.caps {
            assert!(cap.starts_with("CAP_"), "{cap}");
            for name in list {
                assert!(!d.always.contains(name), "{name} is in always and {cap}");
            }
        }
        for rule in &d.rules {
            assert!(!rule.names.is_empty());
            for name in &rule.names {
                assert!(
                    !d.always.contains(name),
                    "{name} is in always and in a rule"
                );
            }
        }
    }

    #[test]
    fn seccomp_without_caps_denies_privileged_syscalls() {
        for arch in ARCHES {
            let p = profile(&[], arch);
            assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
            assert_eq!(p.default_errno_ret(), Some(1));
            for name in [
                "mount",
                "umount2",
                "unshare",
                "setns",
                "ptrace",
                "process_vm_readv",
                "bpf",
                "init_module",
                "finit_module",
                "keyctl",
                "add_key",
                "request_key",
                "kexec_load",
                "kexec_file_load",
                "reboot",
                "io_uring_setup",
                "userfaultfd",
                "open_by_handle_at",
                "chroot",
                "syslog",
            ] {
                assert!(!mentioned(&p, name), "{name} must be denied on {arch}");
            }
            for name in [
                "read",
                "write",
                "execve",
                "openat",
                "statx",
                "rseq",
                "faccessat2",
                "close_range",
                "pidfd_open",
                "pidfd_send_signal",
                "newfstatat",
                "futex",
                "exit_group",
            ] {
                assert!(allowed(&p, name), "{name} must be allowed on {arch}");
            }
        }
    }

    #[test]
    fn seccomp_clone_is_filtered_and_clone3_says_enosys_without_sys_admin() {
        for arch in ARCHES {
            let p = profile(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"], arch);
            assert!(!allowed(&p, "clone"), "only without namespace flags");
            let clone = entries(&p)
                .iter()
                .find(|s| s.names() == &["clone"])
                .unwrap();
            assert_eq!(clone.action(), LinuxSeccompAction::ScmpActAllow);
            let arg = clone.args().as_ref().unwrap()[0];
            assert_eq!(arg.index(), 0);
            assert_eq!(arg.value(), 0x7e02_0000);
            assert_eq!(arg.value_two(), Some(0));
            let clone3 = entries(&p)
                .iter()
                .find(|s| s.names() == &["clone3"])
                .unwrap();
            assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
            assert_eq!(
                clone3.errno_ret(),
                Some(38),
                "ENOSYS: glibc falls back to clone"
            );
        }
    }

    #[test]
    fn seccomp_sys_admin_allows_mounts_and_namespaces() {
        for arch in ARCHES {
            let p = profile(&["CAP_SYS_ADMIN"], arch);
            for name in [
                "mount",
                "umount2",
                "unshare",
                "setns",
                "clone",
                "clone3",
                "bpf",
                "sethostname",
            ] {
                assert!(allowed(&p, name), "{name} on {arch}");
            }
            // The conditional clone entries are gone: clone and clone3 are allowed outright.
            assert!(
                !entries(&p)
                    .iter()
                    .any(|s| s.args().is_some() && s.names().iter().any(|n| n.starts_with("clone")))
            );
            assert!(!mentioned(&p, "ptrace") && !mentioned(&p, "reboot"));
        }
    }

    #[test]
    fn seccomp_other_capabilities_add_their_syscalls() {
        let p = profile(
            &["CAP_SYS_PTRACE", "CAP_SYS_BOOT", "CAP_SYS_MODULE"],
            "x86_64",
        );
        for name in [
            "ptrace",
            "process_vm_writev",
            "kcmp",
            "reboot",
            "init_module",
        ] {
            assert!(allowed(&p, name), "{name}");
        }
        assert!(!mentioned(&p, "mount"));
        // Case does not matter, names do.
        let p = profile(&["cap_syslog"], "x86_64");
        assert!(allowed(&p, "syslog"));
    }

    #[test]
    fn seccomp_arch_specific_names_follow_the_arch() {
        let x86 = profile(&[], "x86_64");
        let arm = profile(&[], "arm64");
        assert!(allowed(&x86, "arch_prctl") && allowed(&x86, "modify_ldt"));
        assert!(!mentioned(&arm, "arch_prctl") && !mentioned(&arm, "modify_ldt"));
        assert!(allowed(&arm, "set_tls") && !mentioned(&x86, "set_tls"));
        assert_eq!(
            x86.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64][..])
        );
        assert_eq!(
            arm.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64][..])
        );
        assert_eq!(profile(&[], "SCMP_ARCH_X86_64"), profile(&[], "amd64"));
        assert!(matches!(
            default_profile(&[], "riscv64"),
            Err(DefaultProfileError::UnknownArch(a)) if a == "riscv64"
        ));
    }

    #[test]
    fn seccomp_output_is_sorted_and_stable() {
        let all = caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF"]);
        let a = default_profile(&all, "x86_64").unwrap();
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(a, default_profile(&reversed, "x86_64").unwrap());
        let names: Vec<&str> = a["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        // The OCI shape: camelCase keys, SCMP_* strings.
        assert_eq!(a["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(a["defaultErrnoRet"], 1);
        assert_eq!(a["architectures"][0], "SCMP_ARCH_X86_64");
        let none = default_profile(&[], "x86_64").unwrap();
        let clone3 = none["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["names"][0] == "clone3")
            .unwrap();
        assert_eq!(clone3["errnoRet"], 38);
        assert!(clone3.get("args").is_none());
        let clone = none["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["names"][0] == "clone")
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["valueTwo"], 0);
    }
}
